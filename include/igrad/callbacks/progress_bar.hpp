#pragma once
/// @file callbacks/progress_bar.hpp
/// @brief A progress bar for `Trainer::fit` that redraws itself on a terminal and prints one line
/// per epoch elsewhere (log files, CI).

#include <igrad/callbacks/callback.hpp>
#include <igrad/detail/progress_line.hpp>
#include <igrad/exceptions.hpp>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief Shows epoch, batch, running losses, accuracy and the time left.
///
/// On a terminal (`isatty`) the line is redrawn in place every few batches, with the batches
/// done out of the epoch's total and the epoch's time left; otherwise only the epoch summaries
/// are printed, so logs stay readable. Each summary ends with the time the run still needs (the
/// mean epoch time of this `fit` times the epochs left), and the last one with the total.
/// The epoch's total is known from the start when the loader is a sized range (or given to the
/// constructor); over a LibTorch data loader it is learnt in the first epoch.
class ProgressBar {
 public:
  /// @brief A bar on `stream` (stderr by default); `batches_per_epoch` sizes the first epoch's
  /// bar when known (later epochs learn it from the first).
  explicit ProgressBar(std::FILE* stream = stderr, std::optional<int64_t> batches_per_epoch = {})
      : line_(stream), total_(batches_per_epoch) {}

  /// @brief Forces terminal (redraw) or plain (line per epoch) output.
  ProgressBar& interactive(bool on) {
    line_.set_terminal(on);
    return *this;
  }

  /// @brief Starts the run's clock.
  void on_train_begin(TrainerState&) {
    epochs_run_ = 0;
    epoch_seconds_ = 0;
  }

  /// @brief Resets the running means.
  void on_epoch_begin(TrainerState& state) {
    start_ = std::chrono::steady_clock::now();
    sum_l_ = sum_lc_ = sum_lr_ = sum_acc_ = seen_ = 0;
    if (state.batches_per_epoch) total_ = state.batches_per_epoch;
  }

  /// @brief Accumulates and, on a terminal, redraws.
  void on_batch_end(TrainerState& state, const StepResult& r) {
    const double n = static_cast<double>(r.batch_size);
    sum_l_ += r.loss * n;
    sum_lc_ += r.classification_loss * n;
    sum_lr_ += r.regulariser_loss * n;
    sum_acc_ += r.accuracy * n;
    seen_ += n;
    line_.redraw([&] { return line(state); });
  }

  /// @brief Prints the epoch summary, with the time the run still needs.
  void on_epoch_end(TrainerState& state, EpochLog& log) {
    std::string extra;
    for (const auto& [name, value] : log.metrics)
      extra += igrad::detail::format(" {}={:.4g}", name, value);
    ++epochs_run_;
    epoch_seconds_ += log.seconds;
    const int64_t left = state.epochs - (state.epoch + 1);
    const std::string timing =
        left > 0 ? igrad::detail::format(", ETA {}", duration(epoch_seconds_ / epochs_run_ * left))
                 : igrad::detail::format(", {} in all", duration(epoch_seconds_));
    line_.print_line(igrad::detail::format(
        "epoch {}/{}: L={:.4f} L_C={:.4f} L_R={:.4f} acc={:.2f}% ({:.1f} s{}){}", state.epoch + 1,
        state.epochs, log.loss, log.classification_loss, log.regulariser_loss, 100 * log.accuracy,
        log.seconds, timing, extra));
  }

  /// @brief `seconds` as "42 s", "3 min 05 s" or "2 h 07 min".
  static std::string duration(double seconds) { return detail::format_duration(seconds); }

 private:
  std::string line(const TrainerState& state) const {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const std::string bar = detail::progress_bar_text(state.batch, total_);
    std::string eta;
    if (total_ && *total_ > 0) {
      if (state.batch > 0)
        eta =
            igrad::detail::format(" ETA {}", duration(elapsed / static_cast<double>(state.batch) *
                                                      static_cast<double>(*total_ - state.batch)));
    }
    return igrad::detail::format("epoch {}/{} {}{}{} L={:.4f} L_C={:.4f} L_R={:.4f} acc={:.1f}%{}",
                                 state.epoch + 1, state.epochs, bar, state.batch,
                                 total_ ? igrad::detail::format("/{}", *total_) : std::string(),
                                 sum_l_ / seen_, sum_lc_ / seen_, sum_lr_ / seen_,
                                 100 * sum_acc_ / seen_, eta);
  }

  detail::ProgressLine line_;
  std::optional<int64_t> total_;
  std::chrono::steady_clock::time_point start_{};
  double sum_l_ = 0, sum_lc_ = 0, sum_lr_ = 0, sum_acc_ = 0, seen_ = 0;
  int64_t epochs_run_ = 0;
  double epoch_seconds_ = 0;
};

/// @}
}  // namespace igrad

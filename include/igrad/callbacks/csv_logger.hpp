#pragma once
/// @file callbacks/csv_logger.hpp
/// @brief Writes the training curves (per step and per epoch) as CSV.

#include <igrad/callbacks/callback.hpp>
#include <igrad/exceptions.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief Logs each epoch (and, optionally, each step) to CSV files.
///
/// Epoch file columns: `epoch,loss,classification_loss,regulariser_loss,accuracy,seconds`
/// followed by the `EpochLog::metrics` names of the first epoch (a resumed run appends with the
/// columns of the file's header). Step file columns:
/// `step,epoch,loss,classification_loss,regulariser_loss,accuracy`.
///
/// The files are opened in `on_train_begin`, before the first step: a path that cannot be
/// written fails there (`Error`), not after an epoch of training.
class CsvLogger {
 public:
  /// @brief Epoch rows go to `epoch_path`; step rows to `step_path` when it is not empty.
  explicit CsvLogger(std::filesystem::path epoch_path, std::filesystem::path step_path = {})
      : epoch_path_(std::move(epoch_path)), step_path_(std::move(step_path)) {}

  /// @brief Opens the files, creating parent directories: truncated for a new run, appended to
  /// when the trainer resumes (its first epoch is not 0), so a resumed run keeps one log with
  /// the columns of its header.
  void on_train_begin(TrainerState& state) {
    const bool resume = state.epoch > 0;
    columns_.clear();
    header_written_ = false;
    if (resume) columns_from_header();
    header_written_ = open(epochs_, epoch_path_, resume);
    if (!step_path_.empty() && !open(steps_, step_path_, resume))
      steps_ << "step,epoch,loss,classification_loss,regulariser_loss,accuracy\n";
  }
  /// @brief Writes a step row.
  void on_batch_end(TrainerState& state, const StepResult& r) {
    if (!steps_.is_open()) return;
    steps_ << igrad::detail::format("{},{},{:.9g},{:.9g},{:.9g},{:.9g}\n", state.global_step,
                                    state.epoch, r.loss, r.classification_loss, r.regulariser_loss,
                                    r.accuracy);
  }
  /// @brief Writes an epoch row (the header with the first one).
  void on_epoch_end(TrainerState&, EpochLog& log) {
    if (!header_written_) {
      epochs_ << fixed_header;
      for (const auto& [name, value] : log.metrics) {
        epochs_ << ',' << name;
        columns_.push_back(name);
      }
      epochs_ << '\n';
      header_written_ = true;
    }
    epochs_ << igrad::detail::format("{},{:.9g},{:.9g},{:.9g},{:.9g},{:.4f}", log.epoch, log.loss,
                                     log.classification_loss, log.regulariser_loss, log.accuracy,
                                     log.seconds);
    for (const auto& name : columns_) {
      const auto it = log.metrics.find(name);
      epochs_ << ','
              << (it == log.metrics.end() ? std::string()
                                          : igrad::detail::format("{:.9g}", it->second));
    }
    epochs_ << '\n';
    epochs_.flush();
    if (steps_.is_open()) steps_.flush();
  }

 private:
  static constexpr std::string_view fixed_header =
      "epoch,loss,classification_loss,regulariser_loss,accuracy,seconds";

  /// The metric columns of an existing epoch file's header (none when it is empty or absent).
  void columns_from_header() {
    std::ifstream in(epoch_path_);
    std::string header;
    if (!in || !std::getline(in, header) || header.empty()) return;
    detail::require<DataError>(header.rfind(fixed_header, 0) == 0,
                               "CsvLogger cannot append to '{}': its header is '{}'; expected "
                               "one that starts with '{}'",
                               epoch_path_.string(), header, fixed_header);
    std::string_view rest(header);
    rest.remove_prefix(fixed_header.size());
    while (!rest.empty()) {
      rest.remove_prefix(1);  // the comma
      const auto comma = rest.find(',');
      columns_.emplace_back(rest.substr(0, comma));
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma);
    }
  }

  /// Opens `path` (appending when `append`); true when it already holds a header line.
  static bool open(std::ofstream& out, const std::filesystem::path& path, bool append) {
    bool has_content = false;
    try {
      if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
      has_content = append && std::filesystem::exists(path) && std::filesystem::file_size(path) > 0;
    } catch (const std::filesystem::filesystem_error& e) {
      throw Error(igrad::detail::format("CsvLogger cannot write '{}': {}; expected a writable path",
                                        path.string(), e.code().message()));
    }
    if (out.is_open()) out.close();  // the same logger in a second fit
    out.clear();
    out.open(path, append ? std::ios::app : std::ios::trunc);
    detail::require<Error>(out.good(), "CsvLogger cannot write '{}'; expected a writable path",
                           path.string());
    return has_content;
  }

  std::filesystem::path epoch_path_, step_path_;
  std::ofstream epochs_, steps_;
  bool header_written_ = false;
  std::vector<std::string> columns_;
};

/// @}
}  // namespace igrad

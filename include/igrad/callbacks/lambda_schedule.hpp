#pragma once
/// @file callbacks/lambda_schedule.hpp
/// @brief A training callback that sets λ per epoch from a schedule.

#include <igrad/callbacks/callback.hpp>
#include <igrad/exceptions.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <utility>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief Sets the trainer's λ (the weight of `L_R`) at the start of each epoch to
/// `schedule(epoch)` (0-based epoch index), through `TrainerState::set_lambda`.
///
/// It sets the first epoch's λ in `on_train_begin`, so a schedule giving a negative or
/// non-finite value fails (`InvalidArgument`) before any step; every later value is checked too.
/// The epoch index is the trainer's, which counts on over `fit` calls (and after a resume):
/// @snippet doc_snippets.cpp lambda_schedule
class LambdaSchedule {
 public:
  /// @brief λ of each epoch from `schedule(epoch)`.
  explicit LambdaSchedule(std::function<double(int64_t)> schedule)
      : schedule_(std::move(schedule)) {
    detail::require(static_cast<bool>(schedule_), "LambdaSchedule needs a schedule; got none");
  }

  /// @brief λ = 0 for `delay` epochs, then rising linearly to `lambda` over `epochs` epochs
  /// (epoch `delay + k` gets `lambda * (k + 1) / epochs`), then `lambda`.
  static LambdaSchedule warmup(double lambda, int64_t epochs, int64_t delay = 0) {
    detail::require(std::isfinite(lambda) && lambda >= 0,
                    "LambdaSchedule::warmup lambda is {}; expected a finite value >= 0", lambda);
    detail::require(epochs >= 1 && delay >= 0,
                    "LambdaSchedule::warmup over {} epochs after {}; expected epochs >= 1 and "
                    "delay >= 0",
                    epochs, delay);
    return LambdaSchedule([=](int64_t epoch) {
      if (epoch < delay) return 0.0;
      const auto k = std::min(epoch - delay + 1, epochs);
      return lambda * static_cast<double>(k) / static_cast<double>(epochs);
    });
  }

  /// @brief Sets the first epoch's λ (validating the schedule before any step).
  void on_train_begin(TrainerState& state) { apply(state); }
  /// @brief Sets the epoch's λ.
  void on_epoch_begin(TrainerState& state) { apply(state); }

 private:
  void apply(TrainerState& state) {
    const double value = schedule_(state.epoch);
    detail::require(std::isfinite(value) && value >= 0,
                    "LambdaSchedule gives lambda = {} for epoch {}; expected a finite value >= 0",
                    value, state.epoch);
    state.set_lambda(value);
  }

  std::function<double(int64_t)> schedule_;
};

/// @}
}  // namespace igrad

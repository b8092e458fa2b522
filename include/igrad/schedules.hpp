#pragma once
/// @file schedules.hpp
/// @brief Learning-rate schedules for `Trainer::fit`: linear warm-up, multi-step decay and cosine
/// annealing (LibTorch 1.13 ships only `StepLR`), applied by the `LearningRateScheduler` callback.
///
/// A schedule is a pure function of the training position — the number of steps done
/// (`global_step`) and the current epoch — returning the factor that multiplies the base
/// learning rate. It keeps no state of its own: a run resumed from a checkpoint (which stores the
/// next epoch and the global step, and which `Trainer::resume_at` hands back to `fit`) gets
/// exactly the learning rates of the uninterrupted run.
/// The schedule after a warm-up counts its steps from the warm-up's end, so a cosine that is to
/// reach its minimum at the end of training spans the steps after the warm-up:
/// @snippet doc_snippets.cpp learning_rate_schedule

#include <igrad/callbacks/callback.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numbers>
#include <utility>
#include <vector>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief A learning-rate schedule: `factor(step, epoch)` multiplies the base learning rate for
/// the step that follows `step` steps done, in epoch `epoch` (both 0-based).
struct LrSchedule {
  /// The factor for a position; finite and >= 0.
  std::function<double(int64_t step, int64_t epoch)> factor;

  /// @brief The factor at (`step`, `epoch`); throws `InvalidArgument` for negative positions.
  double operator()(int64_t step, int64_t epoch) const {
    detail::require(step >= 0 && epoch >= 0,
                    "learning-rate schedule asked at step {}, epoch {}; expected counts >= 0",
                    step, epoch);
    return factor(step, epoch);
  }
};

/// @brief The base learning rate throughout (factor 1).
inline LrSchedule constant_lr() {
  return {[](int64_t, int64_t) { return 1.0; }};
}

/// @brief Multi-step decay: the factor is `gamma^k` where k is the number of `milestones`
/// (epochs, any order) that are <= the current epoch, as PyTorch's `MultiStepLR`.
inline LrSchedule multi_step(std::vector<int64_t> milestones, double gamma = 0.1) {
  for (auto m : milestones)
    detail::require(m >= 0, "multi_step milestone {}; expected epochs >= 0", m);
  detail::require(std::isfinite(gamma) && gamma > 0, "multi_step gamma {}; expected a finite "
                                                     "value > 0", gamma);
  return {[milestones = std::move(milestones), gamma](int64_t, int64_t epoch) {
    const auto passed = std::count_if(milestones.begin(), milestones.end(),
                                      [&](int64_t m) { return m <= epoch; });
    return std::pow(gamma, static_cast<double>(passed));
  }};
}

/// @brief Cosine annealing over `total_steps` steps from factor 1 to `min_factor`:
/// `min + (1 − min)·(1 + cos(π·t / T))/2` with `t = min(step, T)` (so the factor stays at
/// `min_factor` after T), as PyTorch's `CosineAnnealingLR` stepped once per batch, without
/// restarts.
inline LrSchedule cosine_annealing(int64_t total_steps, double min_factor = 0.0) {
  detail::require(total_steps >= 1, "cosine_annealing over {} steps; expected >= 1", total_steps);
  detail::require(std::isfinite(min_factor) && min_factor >= 0 && min_factor <= 1,
                  "cosine_annealing min_factor {}; expected a value in [0, 1]", min_factor);
  return {[total_steps, min_factor](int64_t step, int64_t) {
    const double t = static_cast<double>(std::min(step, total_steps)) /
                     static_cast<double>(total_steps);
    return min_factor + (1 - min_factor) * (1 + std::cos(std::numbers::pi * t)) / 2;
  }};
}

/// @brief Linear warm-up over the first `warmup_steps` steps from `start_factor` towards 1
/// (`start + (1 − start)·step / warmup_steps`), then `after`, which sees the steps counted from
/// the end of the warm-up and the same epoch (as PyTorch's `SequentialLR` of `LinearLR` and
/// `after`).
inline LrSchedule linear_warmup(int64_t warmup_steps, LrSchedule after = constant_lr(),
                                double start_factor = 0.0) {
  detail::require(warmup_steps >= 0, "linear_warmup over {} steps; expected >= 0", warmup_steps);
  detail::require(std::isfinite(start_factor) && start_factor >= 0 && start_factor <= 1,
                  "linear_warmup start_factor {}; expected a value in [0, 1]", start_factor);
  detail::require(static_cast<bool>(after.factor), "linear_warmup: the schedule after the "
                                                   "warm-up is empty; expected a schedule");
  return {[warmup_steps, after = std::move(after), start_factor](int64_t step, int64_t epoch) {
    if (step < warmup_steps)
      return start_factor +
             (1 - start_factor) * static_cast<double>(step) / static_cast<double>(warmup_steps);
    return after(step - warmup_steps, epoch);
  }};
}

/// @brief Callback: sets every parameter group's learning rate to `base_lr · schedule(step,
/// epoch)` before each step of `fit` (at the start of training, of each epoch, and after each
/// batch). Works with any LibTorch optimizer.
///
/// The base learning rate is given rather than read from the optimizer, because an optimizer
/// loaded from a checkpoint holds the scheduled rate of the moment it was saved.
class LearningRateScheduler {
 public:
  /// @brief Applies `schedule` to `base_lr` (finite, > 0).
  LearningRateScheduler(LrSchedule schedule, double base_lr)
      : schedule_(std::move(schedule)), base_lr_(base_lr) {
    detail::require(static_cast<bool>(schedule_.factor), "LearningRateScheduler got an empty "
                                                         "schedule; expected a schedule");
    detail::require(std::isfinite(base_lr) && base_lr > 0,
                    "LearningRateScheduler base learning rate {}; expected a finite value > 0",
                    base_lr);
  }
  /// @brief Sets the rate of the first step (after a resume: of the step it resumes at).
  void on_train_begin(TrainerState& state) { apply(state); }
  /// @brief Sets the rate at an epoch boundary (multi-step schedules change there).
  void on_epoch_begin(TrainerState& state) { apply(state); }
  /// @brief Sets the rate of the next step.
  void on_batch_end(TrainerState& state, const StepResult&) { apply(state); }
  /// @brief The learning rate set last.
  double learning_rate() const { return learning_rate_; }

 private:
  void apply(TrainerState& state) {
    const double factor = schedule_(state.global_step, state.epoch);
    detail::require(std::isfinite(factor) && factor >= 0,
                    "the learning-rate schedule gave the factor {} at step {}; expected a finite "
                    "value >= 0", factor, state.global_step);
    learning_rate_ = base_lr_ * factor;
    for (auto& group : state.optimizer->param_groups()) group.options().set_lr(learning_rate_);
  }

  LrSchedule schedule_;
  double base_lr_;
  double learning_rate_ = 0;
};

/// @}
}  // namespace igrad

#pragma once
/// @file callbacks/callback.hpp
/// @brief What a training callback sees, and how `Trainer::fit` calls it.

#include <igrad/concepts.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>

#include <torch/torch.h>

#include <concepts>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief The outcome of one training step.
struct StepResult {
  double loss = 0;                 ///< L = L_C + λ L_R
  double classification_loss = 0; ///< L_C (batch-mean cross-entropy)
  double regulariser_loss = 0;     ///< L_R (batch-mean error between the gradients)
  double accuracy = 0;             ///< fraction of the batch classified correctly
  int64_t batch_size = 0;          ///< N
};

/// @brief Sample-weighted means over one epoch, plus whatever callbacks add to `metrics`.
struct EpochLog {
  int64_t epoch = 0;               ///< 0-based epoch index
  double loss = 0;                 ///< mean L
  double classification_loss = 0;  ///< mean L_C
  double regulariser_loss = 0;     ///< mean L_R
  double accuracy = 0;             ///< training accuracy
  int64_t samples = 0;             ///< samples seen
  double seconds = 0;              ///< wall time of the epoch's steps
  /// Extra named figures (validation accuracy, explanation metrics, ...) added by callbacks in
  /// `on_epoch_end`; later callbacks (CSV log, early stopping) read them.
  std::map<std::string, double> metrics;
};

/// @brief What a callback may change in the trainer that runs it: λ, and the optimizer (e.g. its
/// learning rate or its parameters' gradients). `Trainer` implements it; `TrainerState::trainer`
/// points to it during `fit`. Type-erased so that a callback need not know the trainer's policies.
class TrainerControl {
 public:
  /// @brief Destroys the interface.
  virtual ~TrainerControl() = default;
  /// @brief The current λ of `L = L_C + λ L_R`.
  virtual double lambda() const = 0;
  /// @brief Changes λ from the next step on; must be finite and >= 0 (`InvalidArgument`).
  virtual void set_lambda(double lambda) = 0;
  /// @brief The optimizer that updates the parameters.
  virtual torch::optim::Optimizer& optimizer() const = 0;
  /// @brief Successful steps so far.
  virtual int64_t steps() const = 0;
};

/// @brief What callbacks see of the training run.
///
/// How `fit` calls callbacks (see `Callback`), in argument order: `on_train_begin` runs before
/// the first step, so validate there (paths, held-out data, metric keys with `claim_metric`) and
/// bad settings fail before any training is lost. `on_epoch_begin` returning `true` stops before
/// that epoch runs. `on_after_backward(TrainerState&)` (void) runs in each step after the
/// backward pass to the parameters and before `optimizer.step()`: the optimizer's parameters
/// hold their `.grad`, to be read or changed (`GradientClipping`, averaging across processes).
/// A callback with only that member is accepted too. Also shipped: `ExplanationMonitor`,
/// `LambdaSchedule` (through `set_lambda`), `GradientClipping`.
///
/// An aggregate; `fit` fills it. `epochs` is the epoch index this `fit` ends at (its first epoch
/// is `Trainer::next_epoch()`), so "epoch 3/4" and the Checkpoint's last save read the same on a
/// run continued by a second `fit`.
struct TrainerState {
  AnyModel model;                              ///< the model being trained
  torch::optim::Optimizer* optimizer;          ///< its optimizer
  int64_t epochs = 0;                          ///< the epoch index this fit stops before
  int64_t epoch = 0;                           ///< current epoch (0-based)
  int64_t batch = 0;                           ///< batches done in the current epoch
  int64_t global_step = 0;                     ///< steps done since the trainer was made
  std::optional<int64_t> batches_per_epoch{};  ///< known after the first epoch
  TrainerControl* trainer = nullptr;           ///< the trainer running the callbacks (λ, optimizer)
  /// Which callback writes each `EpochLog::metrics` key (see `claim_metric`).
  std::map<std::string, std::string> metric_owners{};

  /// @brief The trainer's current λ. Throws `InvalidArgument` outside `fit` (no trainer).
  double lambda() const { return control().lambda(); }
  /// @brief Sets the trainer's λ from the next step on (finite, >= 0).
  void set_lambda(double value) { control().set_lambda(value); }
  /// @brief Declares that `owner` writes `EpochLog::metrics[key]`. Call it from
  /// `on_train_begin`, which runs before the first step: a key claimed by two owners throws
  /// `InvalidArgument` there, instead of one silently overwriting the other every epoch.
  void claim_metric(const std::string& key, const std::string& owner) {
    const auto [it, inserted] = metric_owners.emplace(key, owner);
    detail::require(inserted,
                    "EpochLog::metrics['{}'] would be written by both {} and {}; expected one "
                    "writer per key (give one of them another metric prefix)",
                    key, it->second, owner);
  }

 private:
  TrainerControl& control() const {
    detail::require(trainer != nullptr,
                    "this TrainerState has no trainer; expected a state passed by Trainer::fit");
    return *trainer;
  }
};

/// @}

namespace detail {

/// Calls `f()`; true when it returns a bool that is true.
template <class F>
bool invoke_stop(F&& f) {
  if constexpr (std::is_same_v<std::invoke_result_t<F>, bool>) {
    return std::forward<F>(f)();
  } else {
    std::forward<F>(f)();
    return false;
  }
}

template <class... Cs>
bool run_callbacks_begin(TrainerState& s, Cs&... cs) {
  static_assert((Callback<Cs> && ...),
                "igrad::Trainer::fit: each callback needs at least one of on_train_begin, "
                "on_epoch_begin, on_after_backward, on_batch_end, on_epoch_end, on_train_end "
                "(see igrad::Callback)");
  bool stop = false;
  ((stop |= [&] {
     if constexpr (requires { cs.on_train_begin(s); })
       return invoke_stop([&] { return cs.on_train_begin(s); });
     return false;
   }()),
   ...);
  return stop;
}
template <class... Cs>
bool run_callbacks_epoch_begin(TrainerState& s, Cs&... cs) {
  bool stop = false;
  ((stop |= [&] {
     if constexpr (requires { cs.on_epoch_begin(s); })
       return invoke_stop([&] { return cs.on_epoch_begin(s); });
     return false;
   }()),
   ...);
  return stop;
}
template <class... Cs>
void run_callbacks_after_backward(TrainerState& s, Cs&... cs) {
  (
      [&] {
        if constexpr (detail::calls_on_after_backward<Cs>) cs.on_after_backward(s);
      }(),
      ...);
}
template <class... Cs>
bool run_callbacks_batch_end(TrainerState& s, const StepResult& r, Cs&... cs) {
  bool stop = false;
  ((stop |= [&] {
     if constexpr (requires { cs.on_batch_end(s, r); })
       return invoke_stop([&] { return cs.on_batch_end(s, r); });
     return false;
   }()),
   ...);
  return stop;
}
template <class... Cs>
bool run_callbacks_epoch_end(TrainerState& s, EpochLog& l, Cs&... cs) {
  bool stop = false;
  ((stop |= [&] {
     if constexpr (requires { cs.on_epoch_end(s, l); })
       return invoke_stop([&] { return cs.on_epoch_end(s, l); });
     return false;
   }()),
   ...);
  return stop;
}
template <class... Cs>
void run_callbacks_end(TrainerState& s, Cs&... cs) {
  (
      [&] {
        if constexpr (requires { cs.on_train_end(s); }) cs.on_train_end(s);
      }(),
      ...);
}

}  // namespace detail
}  // namespace igrad

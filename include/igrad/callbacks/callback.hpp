#pragma once
/// @file callbacks/callback.hpp
/// @brief What a training callback sees, and how `Trainer::fit` calls it.

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

/// @brief What callbacks see of the training run.
struct TrainerState {
  AnyModel model;                              ///< the model being trained
  torch::optim::Optimizer* optimizer;          ///< its optimizer
  int64_t epochs = 0;                          ///< epochs requested
  int64_t epoch = 0;                           ///< current epoch (0-based)
  int64_t batch = 0;                           ///< batches done in the current epoch
  int64_t global_step = 0;                     ///< steps done since the trainer was made
  std::optional<int64_t> batches_per_epoch;    ///< known after the first epoch
};

/// @brief A training callback: any type with any subset of these members (detected with
/// `requires`); a member returning `bool` stops training by returning `true`.
///
/// - `on_train_begin(TrainerState&)`
/// - `on_epoch_begin(TrainerState&)`
/// - `on_after_backward(TrainerState&)`: after each step's backward to the parameters, before
///   `optimizer.step()` (where data-parallel training averages the gradients across ranks)
/// - `on_batch_end(TrainerState&, const StepResult&)`
/// - `on_epoch_end(TrainerState&, EpochLog&)`
/// - `on_train_end(TrainerState&)`
///
/// Shipped: `ProgressBar`, `CsvLogger`, `EarlyStopping`, `Checkpoint`. A callback of your own:
/// @code
/// struct StopAtAccuracy {
///   double goal;
///   bool on_epoch_end(igrad::TrainerState&, igrad::EpochLog& log) { return log.accuracy >= goal; }
/// };
/// trainer.fit(loader, 20, igrad::ProgressBar(), StopAtAccuracy{0.9});
/// @endcode
template <class C>
concept Callback = requires(C& c, TrainerState& s, const StepResult& r, EpochLog& l) {
  requires requires { c.on_train_begin(s); } || requires { c.on_epoch_begin(s); } ||
      requires { c.on_after_backward(s); } || requires { c.on_batch_end(s, r); } ||
      requires { c.on_epoch_end(s, l); } ||
      requires { c.on_train_end(s); };
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
                "on_epoch_begin, on_after_backward, on_batch_end, on_epoch_end, on_train_end (see "
                "igrad::Callback)");
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
        if constexpr (requires { cs.on_after_backward(s); }) cs.on_after_backward(s);
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

/// The range of batches behind a loader: dereferences a (smart) pointer to a data loader.
template <class Loader>
decltype(auto) batches(Loader& loader) {
  if constexpr (requires { loader->begin(); }) {
    return (*loader);
  } else {
    return (loader);
  }
}

/// `{data, target}` of a batch: a stacked `Example<>` or a vector of examples.
template <class Batch>
std::pair<torch::Tensor, torch::Tensor> unpack_batch(const Batch& batch) {
  if constexpr (requires { batch.data; batch.target; }) {
    return {batch.data, batch.target};
  } else {
    std::vector<torch::Tensor> data, target;
    data.reserve(batch.size());
    target.reserve(batch.size());
    for (const auto& example : batch) {
      data.push_back(example.data);
      target.push_back(example.target);
    }
    return {torch::stack(data), torch::stack(target).view({-1})};
  }
}

}  // namespace detail
}  // namespace igrad

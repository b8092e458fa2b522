#pragma once
/// @file trainer.hpp
/// @brief The interpretable-gradient Trainer (seed paper, Algorithm 1; SPEC §2).

#include <igrad/callbacks/callback.hpp>
#include <igrad/cam/explain.hpp>
#include <igrad/detail/batch_norm_double_backward.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/errors/error_functions.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics/faithfulness.hpp>
#include <igrad/model.hpp>
#include <igrad/rules/backprop_rules.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <optional>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

namespace igrad {

/// @defgroup trainer_group Training
/// @brief Training with the interpretable-gradient regulariser.
/// @{

/// @brief Hyper-parameters of a `Trainer`, with chained setters: `TrainerOptions().lambda(7.5e-3)`.
struct TrainerOptions {
  /// Weight λ of the regulariser in `L = L_C + λ L_R`. 0 trains plainly (same update as an
  /// ordinary training step) and still reports `L_R`. The seed paper's best CIFAR-100 value for
  /// the cosine error is 7.5e-3.
  TORCH_ARG(double, lambda) = 7.5e-3;
  /// Compute and report `L_R` when λ = 0 (costs two input-gradient passes per step).
  TORCH_ARG(bool, report_regulariser) = true;
};

/// @brief The regularised loss `L = L_C + λ L_R` of a batch, before the parameter update.
struct RegularisedLoss {
  torch::Tensor total;           ///< L (differentiable in the parameters)
  torch::Tensor classification;  ///< L_C
  torch::Tensor regulariser;     ///< L_R (differentiable when λ ≠ 0)
  torch::Tensor logits;          ///< the forward pass's logits [N, K]
};

/// @brief Trains a classifier with the interpretable-gradient loss of Torres Figueroa et al.
/// (VISAPP 2024): the standard input gradient is pulled toward the gradient under rule `R`.
///
/// \f[ L = L_C + \lambda \frac1N \sum_i E\big(\partial L_C / \partial x_i,\ \partial_R L_C / \partial x_i\big) \f]
///
/// One step is one forward pass, the standard input gradient with `create_graph`, the input
/// gradient under `R` (detached: the teacher), and the backward of `L`.
///
/// @tparam E the error function (`ErrorFunction`), e.g. `CosineError`.
/// @tparam R the teacher's backprop rule (`BackpropRule`), e.g. `GuidedReLU`.
/// @tparam C the CAM method (`CamMethod`) that reports interpretability during `fit`: after
///   `held_out(x, targets)`, each epoch's log gets `cam_mean` and `cam_top20_mass` of C's maps
///   on that batch (see `MapStatistics`) and their faithfulness `cam_average_drop`,
///   `cam_average_increase`, `cam_average_gain` (SPEC §5, in %), before the callbacks'
///   `on_epoch_end` run.
///
/// The model and the optimizer must outlive the trainer. Everything runs on the model's device.
template <ErrorFunction E = CosineError, BackpropRule R = GuidedReLU, CamMethod C = GradCam>
class Trainer {
 public:
  /// The error function type.
  using error_function = E;
  /// The teacher's backprop rule.
  using backprop_rule = R;
  /// The CAM method that reports interpretability.
  using cam_method_type = C;

  /// @brief A trainer for `model`, updating its parameters with `optimizer`.
  Trainer(AnyModel model, torch::optim::Optimizer& optimizer, TrainerOptions options = {},
          E error = E(), R rule = R(), C cam = C())
      : model_(std::move(model)),
        optimizer_(&optimizer),
        options_(options),
        error_(std::move(error)),
        rule_(std::move(rule)),
        cam_(std::move(cam)) {
    detail::require(std::isfinite(options_.lambda()) && options_.lambda() >= 0,
                    "TrainerOptions::lambda is {}; expected a finite value >= 0",
                    options_.lambda());
  }

  /// @brief The options.
  const TrainerOptions& options() const { return options_; }
  /// @brief Changes λ (e.g. for a schedule); must be finite and >= 0.
  void set_lambda(double lambda) {
    detail::require(std::isfinite(lambda) && lambda >= 0,
                    "lambda is {}; expected a finite value >= 0", lambda);
    options_.lambda(lambda);
  }
  /// @brief The error function.
  const E& error_function_policy() const { return error_; }
  /// @brief The teacher's backprop rule.
  const R& rule() const { return rule_; }
  /// @brief The CAM method.
  const C& cam_method() const { return cam_; }
  /// @brief Reports the interpretability of `inputs` `[N, C, H, W]` (targets `[N]`, or the
  /// predicted classes when undefined) in each epoch's `EpochLog::metrics` during `fit`, with the
  /// CAM method C in evaluation mode: `cam_mean`, `cam_top20_mass`, and Average Drop / Increase /
  /// Gain as `cam_average_drop`, `cam_average_increase`, `cam_average_gain`. Give the dataset's
  /// `normalization` so that the maps mask the images in pixel space (SPEC §5).
  /// Returns the trainer for chaining.
  Trainer& held_out(torch::Tensor inputs, torch::Tensor targets = {}, CamOptions options = {},
                    std::optional<DatasetNormalization> normalization = std::nullopt) {
    detail::require(inputs.defined() && inputs.dim() == 4 && inputs.size(0) > 0,
                    "held-out inputs have shape {}; expected [N, C, H, W]",
                    detail::shape_string(inputs));
    held_out_inputs_ = std::move(inputs);
    held_out_targets_ = std::move(targets);
    held_out_options_ = std::move(options);
    held_out_normalization_ = std::move(normalization);
    return *this;
  }
  /// @brief Maps of the CAM method C for a batch (`explain<C>` with the trainer's policy).
  torch::Tensor explain(const torch::Tensor& x, const torch::Tensor& targets = {},
                        const CamOptions& options = {}) const {
    return igrad::explain<C>(model_, x, targets, options, cam_);
  }
  /// @brief The model handle.
  const AnyModel& model() const { return model_; }
  /// @brief The optimizer.
  torch::optim::Optimizer& optimizer() const { return *optimizer_; }

  /// @brief The loss of a batch, without updating anything but batch-norm statistics.
  ///
  /// `x` is `[N, ...]` on any device (moved to the model's), `targets` `[N]` class indices.
  /// Throws `InvalidArgument` for bad input (and restores the model's buffers when the forward
  /// pass ran).
  RegularisedLoss loss(const torch::Tensor& x, const torch::Tensor& targets) {
    auto [input, labels] = prepare(x, targets);
    BufferSnapshot snapshot(model_);
    try {
      return compute_loss(input, labels);
    } catch (...) {
      snapshot.restore();
      throw;
    }
  }

  /// @brief One iteration of Algorithm 1: forward, both input gradients, update from `∂L/∂θ`.
  ///
  /// Throws `InvalidArgument` for bad input and `NumericalError` when the loss is not finite;
  /// in both cases the parameters, buffers and optimizer state are left as they were.
  StepResult step(const torch::Tensor& x, const torch::Tensor& targets) {
    return step_with(x, targets, [] {});
  }

  /// @brief Number of successful steps so far.
  int64_t steps() const { return steps_; }

  /// @brief Trains for `epochs` passes over `loader`, calling the callbacks (see `Callback`).
  ///
  /// `loader` is a LibTorch data loader (`std::unique_ptr` from `make_data_loader`) or any range
  /// of batches; a batch is a `torch::data::Example<>` (after `Stack`) or a vector of them.
  /// The model is in training mode during the epochs and returns to its previous mode after.
  /// Stops early when a callback returns `true`. Returns the epoch logs.
  template <class Loader, class... Callbacks>
  std::vector<EpochLog> fit(Loader&& loader, int64_t epochs, Callbacks&&... callbacks) {
    detail::require(epochs >= 0, "epochs is {}; expected a count >= 0", epochs);
    TrainerState state{model_, optimizer_, epochs};
    state.global_step = steps_;
    state.epoch = first_epoch_;  // > 0 when resuming: callbacks such as CsvLogger then append
    TrainingModeGuard mode(model_, true);
    std::vector<EpochLog> logs;
    bool stop = detail::run_callbacks_begin(state, callbacks...);
    for (int64_t epoch = first_epoch_; epoch < epochs && !stop; ++epoch) {
      state.epoch = epoch;
      state.batch = 0;
      model_.train(true);
      stop = detail::run_callbacks_epoch_begin(state, callbacks...);
      EpochLog log;
      log.epoch = epoch;
      const auto start = std::chrono::steady_clock::now();
      double weight = 0;
      for (auto&& batch : detail::batches(loader)) {
        auto [data, target] = detail::unpack_batch(batch);
        const auto r = step_with(
            data, target, [&] { detail::run_callbacks_after_backward(state, callbacks...); });
        const double n = static_cast<double>(r.batch_size);
        log.loss += r.loss * n;
        log.classification_loss += r.classification_loss * n;
        log.regulariser_loss += r.regulariser_loss * n;
        log.accuracy += r.accuracy * n;
        weight += n;
        ++state.batch;
        state.global_step = steps_;
        if (detail::run_callbacks_batch_end(state, r, callbacks...)) {
          stop = true;
          break;
        }
      }
      if (weight > 0) {
        log.loss /= weight;
        log.classification_loss /= weight;
        log.regulariser_loss /= weight;
        log.accuracy /= weight;
      }
      log.samples = static_cast<int64_t>(weight);
      log.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      state.batches_per_epoch = state.batch;
      if (held_out_inputs_.defined()) report_held_out(log);
      if (detail::run_callbacks_epoch_end(state, log, callbacks...)) stop = true;
      logs.push_back(log);
      first_epoch_ = epoch + 1;
    }
    detail::run_callbacks_end(state, callbacks...);
    return logs;
  }

  /// @brief The first epoch the next `fit` runs (after a resumed checkpoint, its next epoch).
  int64_t next_epoch() const { return first_epoch_; }
  /// @brief Sets the epoch `fit` starts from (used when resuming) and the step counter.
  void resume_at(int64_t epoch, int64_t steps) {
    detail::require(epoch >= 0 && steps >= 0, "resume_at({}, {}); expected counts >= 0", epoch,
                    steps);
    first_epoch_ = epoch;
    steps_ = steps;
  }

 private:
  /// Copies of the buffers taken before a forward pass, put back when the step is refused.
  class BufferSnapshot {
   public:
    explicit BufferSnapshot(const AnyModel& model) {
      torch::NoGradGuard no_grad;
      for (auto& b : model.buffers()) {
        buffers_.push_back(b);
        copies_.push_back(b.clone());
      }
    }
    void restore() {
      torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < buffers_.size(); ++i) buffers_[i].copy_(copies_[i]);
    }

   private:
    std::vector<torch::Tensor> buffers_, copies_;
  };

  /// `step`, with `after_backward()` called between the backward to the parameters and the
  /// optimizer's update (`fit` runs the callbacks' `on_after_backward` there).
  template <class AfterBackward>
  StepResult step_with(const torch::Tensor& x, const torch::Tensor& targets,
                       AfterBackward&& after_backward) {
    auto [input, labels] = prepare(x, targets);
    BufferSnapshot snapshot(model_);
    RegularisedLoss l;
    try {
      l = compute_loss(input, labels);
      detail::require<NumericalError>(
          std::isfinite(l.total.template item<double>()),
          "the loss is not finite (L_C = {}, L_R = {}); the step was refused and the model left "
          "unchanged. Expected finite losses: lower the learning rate or lambda",
          l.classification.template item<double>(), l.regulariser.template item<double>());
    } catch (...) {
      snapshot.restore();
      throw;
    }
    optimizer_->zero_grad();
    backward_to_parameters(l.total);
    after_backward();
    optimizer_->step();
    ++steps_;
    StepResult result;
    result.loss = l.total.template item<double>();
    result.classification_loss = l.classification.template item<double>();
    result.regulariser_loss = l.regulariser.defined() ? l.regulariser.template item<double>() : 0.0;
    result.accuracy = l.logits.argmax(1).eq(labels).to(torch::kDouble).mean().template item<double>();
    result.batch_size = input.size(0);
    return result;
  }

  /// C's maps of the held-out batch: their statistics and faithfulness into the epoch log.
  void report_held_out(EpochLog& log) const {
    const auto maps = igrad::explain<C>(model_, held_out_inputs_, held_out_targets_,
                                        held_out_options_, cam_);
    add_map_statistics(log.metrics, maps);
    torch::Tensor classes = held_out_targets_;
    if (!classes.defined()) {
      torch::NoGradGuard no_grad;
      TrainingModeGuard evaluation(model_, false);
      classes = model_(held_out_inputs_.to(model_.device())).argmax(1);
    }
    const auto f = faithfulness(model_, held_out_inputs_, maps, classes,
                                MaskingOptions().normalization(held_out_normalization_));
    log.metrics["cam_average_drop"] = f.average_drop;
    log.metrics["cam_average_increase"] = f.average_increase;
    log.metrics["cam_average_gain"] = f.average_gain;
  }

  std::pair<torch::Tensor, torch::Tensor> prepare(const torch::Tensor& x,
                                                  const torch::Tensor& targets) const {
    detail::require(x.defined() && x.dim() >= 2,
                    "input batch has shape {}; expected [N, ...] with at least 2 dimensions "
                    "(e.g. [N, C, H, W] images)",
                    detail::shape_string(x));
    detail::require(x.size(0) > 0, "input batch is empty (shape {}); expected N >= 1 samples",
                    detail::shape_string(x));
    detail::require(x.is_floating_point(), "input batch has dtype {}; expected floating point",
                    std::string(c10::toString(x.scalar_type())));
    detail::require(targets.defined() && targets.dim() == 1 && targets.size(0) == x.size(0),
                    "targets have shape {} for an input batch of {} samples; expected [{}] "
                    "class indices",
                    detail::shape_string(targets), x.size(0), x.size(0));
    detail::require(!targets.is_floating_point(),
                    "targets have dtype {}; expected integer class indices",
                    std::string(c10::toString(targets.scalar_type())));
    detail::require_finite(x, "input batch");
    const auto device = model_.device();
    return {x.to(device, model_.dtype()), targets.to(device, torch::kLong)};
  }

  RegularisedLoss compute_loss(const torch::Tensor& x, const torch::Tensor& labels) {
    torch::AutoGradMode enable_grad(true);
    const auto input = x.detach().requires_grad_(true);
    RegularisedLoss l;
    l.logits = forward_checked(input);
    detail::require(l.logits.dim() == 2 && l.logits.size(0) == input.size(0),
                    "model output has shape {}; expected logits [{}, K]",
                    detail::shape_string(l.logits), input.size(0));
    detail::require_labels(labels, input.size(0), l.logits.size(1));
    l.classification = torch::nn::functional::cross_entropy(l.logits, labels);
    const double lambda = options_.lambda();
    if (lambda == 0.0 && !options_.report_regulariser()) {
      l.regulariser = torch::zeros({}, l.classification.options());
      l.total = l.classification;
      return l;
    }
    const bool regularise = lambda != 0.0;
    // Student: differentiable only when it contributes to the update; its batch norms, ReLUs and
    // max-pools get cheaper exact second-order paths (detail/batch_norm_double_backward.hpp).
    torch::Tensor standard;
    {
      std::optional<detail::ScopedBatchNormDoubleBackward> fast_batch_norm;
      std::optional<detail::ScopedPiecewiseLinearDoubleBackward> fast_piecewise_linear;
      if (regularise) {
        fast_batch_norm.emplace(std::vector<torch::Tensor>{l.classification});
        fast_piecewise_linear.emplace(std::vector<torch::Tensor>{l.classification});
      }
      // Asking for the batch norms' affine gradients too costs nothing (their kernel computes
      // the sums for dx anyway) and spares the second-order path computing them again.
      std::vector<torch::Tensor> wanted{input};
      if (fast_batch_norm)
        wanted.insert(wanted.end(), fast_batch_norm->affine_parameters().begin(),
                      fast_batch_norm->affine_parameters().end());
      standard = torch::autograd::grad({l.classification}, wanted, {}, /*retain_graph=*/true,
                                       /*create_graph=*/regularise, /*allow_unused=*/true)[0];
    }
    // Teacher: the same gradient under rule R, detached.
    const auto teacher = gradient<R>({l.classification}, {input}, {}, /*retain_graph=*/true,
                                     /*create_graph=*/false, rule_)[0].detach();
    l.regulariser = torch::Tensor(error_(standard, teacher)).mean();
    if (regularise) {
      l.total = l.classification + lambda * l.regulariser;
    } else {
      l.regulariser = l.regulariser.detach();
      l.total = l.classification;
    }
    return l;
  }

  /// `loss.backward()` restricted to the parameters (the model's and the optimizer's) that
  /// require a gradient: the step's input is a leaf too, and an unrestricted backward would also
  /// compute its gradient, a transposed convolution of the first layer that nothing reads.
  void backward_to_parameters(const torch::Tensor& loss) const {
    std::vector<torch::Tensor> leaves;
    std::unordered_set<const void*> seen;
    const auto add = [&](const torch::Tensor& p) {
      if (p.defined() && p.requires_grad() && seen.insert(p.unsafeGetTensorImpl()).second)
        leaves.push_back(p);
    };
    for (const auto& p : model_.parameters()) add(p);
    for (const auto& group : optimizer_->param_groups())
      for (const auto& p : group.params()) add(p);
    if (leaves.empty())
      loss.backward();
    else
      loss.backward(/*gradient=*/{}, /*retain_graph=*/false, /*create_graph=*/false, leaves);
  }

  torch::Tensor forward_checked(const torch::Tensor& input) const {
    try {
      return model_.forward(input);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw InvalidArgument(fmt::format(
          "the model rejected an input batch of shape {}; expected the input size the model was "
          "built for. LibTorch said: {}",
          detail::shape_string(input), detail::first_line(e.what())));
    }
  }

  AnyModel model_;
  torch::optim::Optimizer* optimizer_;
  TrainerOptions options_;
  E error_;
  R rule_;
  C cam_;
  torch::Tensor held_out_inputs_, held_out_targets_;
  CamOptions held_out_options_;
  std::optional<DatasetNormalization> held_out_normalization_;
  int64_t steps_ = 0;
  int64_t first_epoch_ = 0;
};

/// @}
}  // namespace igrad

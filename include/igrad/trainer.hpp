#pragma once
/// @file trainer.hpp
/// @brief The interpretable-gradient Trainer (seed paper, Algorithm 1; SPEC §2): a loop of
/// training steps over `regularised_loss` with callbacks.
///
/// It includes no CAM method and no metric: the held-out explanation report is the
/// `ExplanationMonitor<C>` callback (callbacks/explanation_monitor.hpp).

#include <igrad/callbacks/callback.hpp>
#include <igrad/cam/cam_method.hpp>
#include <igrad/concepts.hpp>
#include <igrad/detail/batches.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/errors/error_functions.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>
#include <igrad/regularised_loss.hpp>
#include <igrad/rules/backprop_rules.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <concepts>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace igrad {

struct GradCam;               // cam/gradient_methods.hpp
struct DatasetNormalization;  // metrics/masking.hpp

namespace detail {
/// A callback's `on_train_begin` and `on_epoch_end`, type-erased (the deprecated held-out report).
struct ErasedEpochCallback {
  std::function<void(TrainerState&)> on_train_begin;
  std::function<void(TrainerState&, EpochLog&)> on_epoch_end;
};
/// Defined in callbacks/explanation_monitor.hpp: what the Trainer's CAM-method members need, so
/// that trainer.hpp itself does not include the CAM methods and the metrics.
template <class C>
struct TrainerCamSupport;
}  // namespace detail

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

namespace detail {
/// `CamMethod` for a complete type. An incomplete one (the default `GradCam` is only declared
/// here, so that `trainer.hpp` need not include the CAM methods) is checked where the trainer
/// uses it; a complete type that is not a CAM method is rejected as soon as it is named.
template <class C>
concept CamMethodWhenComplete = !requires { sizeof(C); } || CamMethod<C>;
}  // namespace detail

/// @brief Trains a classifier with the interpretable-gradient loss of Torres Figueroa et al.
/// (VISAPP 2024): the standard input gradient is pulled toward the gradient under rule `R`.
///
/// \f[ L = L_C + \lambda \frac1N \sum_i E\big(\partial L_C / \partial x_i,\ \partial_R L_C / \partial x_i\big) \f]
///
/// A step is `regularised_loss` (one forward pass, the standard input gradient with
/// `create_graph`, the input gradient under `R`, detached: the teacher) inside a
/// `BufferTransaction`, then `backward_to_parameters` and the optimizer's update. `fit` is a loop
/// of steps calling the callbacks (see `Callback`).
///
/// @tparam E the error function (`ErrorFunction`), e.g. `CosineError`.
/// @tparam R the teacher's backprop rule (`BackpropRule`), e.g. `GuidedReLU`.
/// @tparam C the CAM method of the convenience members `explain`, `cam_method` and the
///   deprecated `held_out`; not used by training. These members need its definition
///   (`<igrad/cam.hpp>`) and `<igrad/callbacks/explanation_monitor.hpp>` (both in `igrad.hpp`);
///   nothing else of C is instantiated, so trainer.hpp includes neither.
///
/// The model and the optimizer must outlive the trainer. Everything runs on the model's device.
template <ErrorFunction E = CosineError, BackpropRule R = GuidedReLU,
          detail::CamMethodWhenComplete C = GradCam>
class Trainer : public TrainerControl {
 public:
  /// The error function type.
  using error_function = E;
  /// The teacher's backprop rule.
  using backprop_rule = R;
  /// The CAM method of `explain` and the deprecated `held_out`.
  using cam_method_type = C;

  /// @brief A trainer for `model`, updating its parameters with `optimizer`.
  Trainer(AnyModel model, torch::optim::Optimizer& optimizer, TrainerOptions options = {},
          E error = E(), R rule = R())
      : model_(std::move(model)),
        optimizer_(&optimizer),
        options_(options),
        error_(std::move(error)),
        rule_(std::move(rule)) {
    detail::require(std::isfinite(options_.lambda()) && options_.lambda() >= 0,
                    "TrainerOptions::lambda is {}; expected a finite value >= 0",
                    options_.lambda());
  }
  /// @brief The same, with the CAM method's settings for `explain` and `held_out`.
  template <class Cam>
    requires std::same_as<std::remove_cvref_t<Cam>, C>
  Trainer(AnyModel model, torch::optim::Optimizer& optimizer, TrainerOptions options, E error,
          R rule, Cam&& cam)
      : Trainer(std::move(model), optimizer, options, std::move(error), std::move(rule)) {
    cam_ = std::make_shared<C>(std::forward<Cam>(cam));
  }

  /// @brief The options.
  const TrainerOptions& options() const { return options_; }
  /// @brief The current λ.
  double lambda() const override { return options_.lambda(); }
  /// @brief Changes λ from the next step on (e.g. from a `LambdaSchedule` callback); must be
  /// finite and >= 0.
  void set_lambda(double lambda) override {
    detail::require(std::isfinite(lambda) && lambda >= 0,
                    "lambda is {}; expected a finite value >= 0", lambda);
    options_.lambda(lambda);
  }
  /// @brief The error function.
  const E& error_function_policy() const { return error_; }
  /// @brief The teacher's backprop rule.
  const R& rule() const { return rule_; }
  /// @brief The CAM method (needs its definition, e.g. `<igrad/cam.hpp>`).
  const C& cam_method() const {
    if (!cam_) cam_ = std::make_shared<C>();
    return *cam_;
  }
  /// @brief Reports the interpretability of `inputs` in each epoch's `EpochLog::metrics` during
  /// `fit` with the CAM method C: `cam_mean`, `cam_top20_mass`, `cam_average_drop`,
  /// `cam_average_increase`, `cam_average_gain`. Returns the trainer for chaining.
  /// @deprecated Pass `ExplanationMonitor<C>(inputs, targets, options, C())
  ///   .normalization(normalization)` to `fit` instead; this member builds that monitor and runs
  ///   it before the other callbacks. Like the monitor, it checks the held-out set and the
  ///   model's features/head split before the first step. Needs
  ///   `<igrad/callbacks/explanation_monitor.hpp>`.
  template <class Normalization = DatasetNormalization>  // not deduced: delays its completeness
  Trainer& held_out(torch::Tensor inputs, torch::Tensor targets = {}, CamOptions options = {},
                    std::optional<std::type_identity_t<Normalization>> normalization = std::nullopt) {
    held_out_ = detail::TrainerCamSupport<C>::held_out_report(
        std::move(inputs), std::move(targets), std::move(options), std::move(normalization),
        cam_method());
    return *this;
  }
  /// @brief Maps of the CAM method C for a batch (`explain<C>` with the trainer's policy).
  torch::Tensor explain(const torch::Tensor& x, const torch::Tensor& targets = {},
                        const CamOptions& options = {}) const {
    return detail::TrainerCamSupport<C>::explain(model_, x, targets, options, cam_method());
  }
  /// @brief The model handle.
  const AnyModel& model() const { return model_; }
  /// @brief The optimizer.
  torch::optim::Optimizer& optimizer() const override { return *optimizer_; }

  /// @brief The loss of a batch, without updating anything but batch-norm statistics:
  /// `regularised_loss` with the trainer's model, λ and policies.
  ///
  /// `x` is `[N, ...]` on any device (moved to the model's), `targets` `[N]` class indices.
  /// Throws `InvalidArgument` for bad input (and restores the model's buffers when the forward
  /// pass ran).
  RegularisedLoss loss(const torch::Tensor& x, const torch::Tensor& targets) {
    return regularised_loss(model_, x, targets, options_.lambda(), error_, rule_,
                            options_.report_regulariser());
  }

  /// @brief One iteration of Algorithm 1: forward, both input gradients, update from `∂L/∂θ`.
  ///
  /// Throws `InvalidArgument` for bad input and `NumericalError` when the loss is not finite;
  /// in both cases the parameters, buffers and optimizer state are left as they were.
  StepResult step(const torch::Tensor& x, const torch::Tensor& targets) {
    return step(x, targets, [] {});
  }

  /// @brief One step that calls `after_backward()` between the backward pass to the parameters
  /// and `optimizer().step()`, when the optimizer's parameters hold this step's `.grad`: to
  /// clip, scale or average them (the direct-call form of `on_after_backward`).
  ///
  /// When `after_backward` throws, the exception propagates and the parameters, buffers and
  /// optimizer state are as they were (the `.grad` hold this step's gradients).
  /// @snippet doc_snippets.cpp step_after_backward
  template <std::invocable F>
  StepResult step(const torch::Tensor& x, const torch::Tensor& targets, F&& after_backward) {
    // Training mode for the whole step, never interleaved with other threads' explanations.
    TrainingModeGuard training(model_, true);
    auto [input, labels] = detail::checked_batch(model_, x, targets);
    BufferTransaction transaction(model_);
    const auto l = detail::regularised_loss_of_checked(model_, input, labels, options_.lambda(),
                                                       error_, rule_,
                                                       options_.report_regulariser());
    // Read once: they decide whether the step is taken, and are its result.
    const double total = l.total.template item<double>();
    const double classification = l.classification.template item<double>();
    const double regulariser = l.regulariser.template item<double>();
    detail::require<NumericalError>(
        std::isfinite(total),
        "the loss is not finite (L_C = {}, L_R = {}); the step was refused and the model left "
        "unchanged. Expected finite losses: lower the learning rate or lambda{}",
        classification, regulariser,
        std::isfinite(classification) && !std::isfinite(regulariser)
            ? std::string_view("; L_C is finite, so the input gradients or the error function "
                               "gave it: LibTorch's own gradients are checked by "
                               "igrad::testing::convolution_gradient_batch_error "
                               "(docs/reliability.md)")
            : std::string_view());
    optimizer_->zero_grad();
    backward_to_parameters(l.total, model_, optimizer_);
    std::forward<F>(after_backward)();
    optimizer_->step();
    transaction.commit();
    ++steps_;
    StepResult result;
    result.loss = total;
    result.classification_loss = classification;
    result.regulariser_loss = regulariser;
    result.accuracy =
        l.logits.argmax(1).eq(labels).to(torch::kDouble).mean().template item<double>();
    result.batch_size = input.size(0);
    return result;
  }

  /// @brief Number of successful steps so far.
  int64_t steps() const override { return steps_; }

  /// @brief Trains for `epochs` more passes over `loader`, calling the callbacks (see
  /// `Callback`): epochs `next_epoch()` to `next_epoch() + epochs - 1`.
  ///
  /// A second `fit` on the same trainer continues: it runs its own `epochs`, numbered after the
  /// first's (so a `CsvLogger` appends). To finish a run resumed from a checkpoint at a total
  /// epoch count, use `resume_at` then `fit_to`. (In igrad 0.1.0, `fit` ran up to epoch index
  /// `epochs`, so a second `fit(loader, n)` silently ran nothing; see CHANGELOG.md.)
  ///
  /// `loader` is a LibTorch data loader (`std::unique_ptr` from `make_data_loader`) or any range
  /// of batches; a batch is a `torch::data::Example<>` (after `Stack`) or a vector of them.
  /// The model is in training mode during the epochs and returns to its previous mode after.
  /// Every check that can fail without training (the held-out report, callbacks'
  /// `on_train_begin`: paths, metric keys) runs before the first step. Stops early when a
  /// callback returns `true` (from `on_epoch_begin`: before that epoch). Returns the epoch logs.
  template <class Loader, class... Callbacks>
  std::vector<EpochLog> fit(Loader&& loader, int64_t epochs, Callbacks&&... callbacks) {
    detail::require(epochs >= 0, "epochs is {}; expected a count >= 0", epochs);
    return run_epochs(loader, first_epoch_ + epochs, callbacks...);
  }

  /// @brief Trains up to epoch index `epochs` (exclusive): epochs `next_epoch()` to
  /// `epochs - 1`, none when `next_epoch() >= epochs`. The explicit form of resuming:
  /// @snippet doc_snippets.cpp resume
  template <class Loader, class... Callbacks>
  std::vector<EpochLog> fit_to(Loader&& loader, int64_t epochs, Callbacks&&... callbacks) {
    detail::require(epochs >= 0, "epochs is {}; expected an epoch index >= 0", epochs);
    return run_epochs(loader, epochs, callbacks...);
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
  /// The loop of `fit` and `fit_to`: epochs `first_epoch_` to `end - 1`.
  template <class Loader, class... Callbacks>
  std::vector<EpochLog> run_epochs(Loader& loader, int64_t end, Callbacks&... callbacks) {
    TrainerState state{model_, optimizer_, end};
    state.global_step = steps_;
    state.epoch = first_epoch_;  // > 0 when continuing: callbacks such as CsvLogger then append
    state.trainer = this;
    // A sized range of batches tells its length before the first epoch (progress totals).
    if constexpr (detail::is_sized_range<decltype(detail::batches(loader))>)
      state.batches_per_epoch = static_cast<int64_t>(std::ranges::size(detail::batches(loader)));
    TrainingModeGuard mode(model_, true);
    std::vector<EpochLog> logs;
    // Validation first: nothing below trains before every callback accepted its settings.
    if (held_out_.on_train_begin) held_out_.on_train_begin(state);
    bool stop = detail::run_callbacks_begin(state, callbacks...);
    for (int64_t epoch = first_epoch_; epoch < end && !stop; ++epoch) {
      state.epoch = epoch;
      state.batch = 0;
      model_.train(true);
      if (detail::run_callbacks_epoch_begin(state, callbacks...)) break;
      EpochLog log;
      log.epoch = epoch;
      const auto start = std::chrono::steady_clock::now();
      double weight = 0;
      for (auto&& batch : detail::batches(loader)) {
        auto [data, target] = detail::unpack_batch(batch);
        const auto r =
            step(data, target, [&] { detail::run_callbacks_after_backward(state, callbacks...); });
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
      if (held_out_.on_epoch_end) held_out_.on_epoch_end(state, log);
      if (detail::run_callbacks_epoch_end(state, log, callbacks...)) stop = true;
      logs.push_back(log);
      first_epoch_ = epoch + 1;
    }
    detail::run_callbacks_end(state, callbacks...);
    return logs;
  }

  AnyModel model_;
  torch::optim::Optimizer* optimizer_;
  TrainerOptions options_;
  E error_;
  R rule_;
  mutable std::shared_ptr<C> cam_;  // made on first use: C may be incomplete here
  detail::ErasedEpochCallback held_out_;
  int64_t steps_ = 0;
  int64_t first_epoch_ = 0;
};

/// @}
}  // namespace igrad

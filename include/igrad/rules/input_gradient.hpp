#pragma once
/// @file rules/input_gradient.hpp
/// @brief Input gradients of a model under a backprop rule.

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/detail/torch_errors.hpp>
#include <igrad/model.hpp>
#include <igrad/rules/backprop_rules.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

namespace igrad {

/// @addtogroup rules_group
/// @{

/// @brief Which scalar an input gradient differentiates.
enum class GradientOf {
  loss,          ///< the batch-mean cross-entropy `L_C` (the training signal, SPEC §2)
  target_logit,  ///< each sample's target logit `y^c` (the explanation signal, SPEC §4)
};

/// @brief Options of `input_gradient`.
struct InputGradientOptions {
  /// Differentiate the loss (default) or each sample's target logit.
  TORCH_ARG(GradientOf, of) = GradientOf::loss;
  /// Keep the result differentiable (double backpropagation).
  TORCH_ARG(bool, create_graph) = false;
};

/// @brief The gradient `∂s/∂x` of a batch under backprop rule `R`, shape of `x`.
///
/// `targets` are class indices `[N]`; when undefined, the predicted classes are used. Neither the
/// parameters' `.grad` nor the model's mode are touched (the caller chooses the mode; hold a
/// `TrainingModeGuard` when other threads share the model). Throws `InvalidArgument` for bad input
/// — malformed or non-finite `x`, targets of the wrong shape, dtype or range, images whose channel
/// count or size the model rejects (never a raw `c10::Error`) — and `GraphError` when a
/// non-standard rule finds no rectifier site.
template <BackpropRule R = StandardReLU>
torch::Tensor input_gradient(const AnyModel& model, const torch::Tensor& x,
                             torch::Tensor targets = {},
                             const InputGradientOptions& options = {}) {
  detail::require(x.defined() && x.dim() >= 2, "input has shape {}; expected a batch [N, ...]",
                  detail::shape_string(x));
  detail::require(x.size(0) > 0, "input batch is empty; expected at least one sample");
  detail::require(x.is_floating_point(), "input has dtype {}; expected a floating-point tensor",
                  std::string(c10::toString(x.scalar_type())));
  detail::require_finite(x, "input");
  torch::AutoGradMode enable_grad(true);
  auto input = x.detach().requires_grad_(true);
  const auto logits =
      detail::call_model_checked(model, [&] { return model.forward(input); }, "forward", input);
  detail::require(logits.dim() == 2 && logits.size(0) == x.size(0),
                  "model output has shape {}; expected logits [{}, K]",
                  detail::shape_string(logits), x.size(0));
  if (!targets.defined()) targets = logits.detach().argmax(1);
  detail::require_labels(targets, x.size(0), logits.size(1));
  targets = targets.to(logits.device(), torch::kLong);
  return detail::translate_torch_errors("input_gradient", "batch", [&] {
    const auto score = options.of() == GradientOf::loss
                           ? torch::nn::functional::cross_entropy(logits, targets)
                           : logits.gather(1, targets.view({-1, 1})).sum();
    return gradient<R>({score}, {input}, {}, /*retain_graph=*/options.create_graph(),
                       options.create_graph())[0];
  });
}

/// @}
}  // namespace igrad

#pragma once
/// @file detail/batch_norm_double_backward.hpp
/// @brief A cheaper exact second-order path through training-mode batch normalisation.
///
/// The regulariser differentiates the input gradient `δx` once more. For a training-mode batch
/// norm, `δx` passes through `dx = γ r (dy − mean(dy) − x̂ mean(dy x̂))` (per channel, `r` the
/// inverse standard deviation, `x̂ = (x − μ) r`), and LibTorch's generic double backward of that
/// formula is a long chain of full-size element-wise operations: it dominated the regularised
/// step (PERF-NOTES §2). Only the input-gradient output of the first-order backward is needed
/// here, so its derivative reduces to five per-channel reductions and two fused outputs, written
/// out below. The first-order value itself is LibTorch's, reused unchanged: only the graph
/// behind it is replaced. The core tests check the result against finite differences.

#include <igrad/rules/backprop_rules.hpp>

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/generated/Functions.h>
#include <torch/torch.h>

#include <memory>
#include <vector>

namespace igrad::detail {

/// Autograd function `(dy, x, γ) ↦ dx`, the input gradient of training-mode batch norm, whose
/// value is computed by LibTorch and whose derivative is the closed form above.
struct BatchNormInputGradient : torch::autograd::Function<BatchNormInputGradient> {
  /// `dx` is LibTorch's first-order result; `mean` and `invstd` are the batch statistics.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& dy,
                               const torch::Tensor& x, const torch::Tensor& gamma,
                               const torch::Tensor& dx, const torch::Tensor& mean,
                               const torch::Tensor& invstd) {
    ctx->save_for_backward({dy, x, gamma, mean, invstd});
    return dx.detach();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& dy = saved[0];
    const auto& x = saved[1];
    const auto& gamma = saved[2];
    const auto& g_bar = grads[0];
    // Per-channel shapes broadcast along dimension 1 of x.
    std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
    shape[1] = x.size(1);
    std::vector<int64_t> reduce;
    for (int64_t d = 0; d < x.dim(); ++d)
      if (d != 1) reduce.push_back(d);
    const auto r = saved[4].view(shape);
    const auto z = (x - saved[3].view(shape)) * r;
    const auto gm = gamma.defined() ? gamma.view(shape) : torch::ones_like(r);
    auto mean_of = [&](const torch::Tensor& t) { return t.mean(reduce, /*keepdim=*/true); };
    const auto mean_g = mean_of(g_bar);
    const auto mean_gz = mean_of(g_bar * z);
    const auto mean_gdy = mean_of(g_bar * dy);
    const auto mean_dy = mean_of(dy);
    const auto c = mean_of(dy * z);
    // K: the derivative of L with respect to r, divided by γ·m.
    const auto k = mean_gdy - mean_dy * mean_g - c * mean_gz;
    const auto a = gm * r;
    // d̄y = γ r (ḡ − mean(ḡ) − x̂ mean(ḡ x̂))
    const auto dy_bar = a * (g_bar - mean_g - z * mean_gz);
    // x̄ = γ r² (−c ḡ − mean(ḡx̂) dy + c mean(ḡ) + mean(ḡx̂) mean(dy) + (2 c mean(ḡx̂) − K) x̂)
    const auto a2 = a * r;
    const auto x_bar = a2 * (c * mean_g + mean_gz * mean_dy - c * g_bar - mean_gz * dy +
                             (2 * c * mean_gz - k) * z);
    torch::Tensor gamma_bar;
    if (gamma.defined()) {
      const double m = static_cast<double>(x.numel() / x.size(1));
      gamma_bar = (r * k * m).view({-1});
    }
    return {dy_bar, x_bar, gamma_bar, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

/// Post-hook: replaces the first-order input gradient of a training-mode batch norm by the same
/// value carrying `BatchNormInputGradient`'s cheaper derivative.
class BatchNormInputGradientHook final : public torch::autograd::FunctionPostHook {
 public:
  explicit BatchNormInputGradientHook(torch::autograd::generated::NativeBatchNormBackward0* node)
      : node_(node) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& grad_inputs,
      const torch::autograd::variable_list& grad_outputs) override {
    if (grad_inputs.empty() || !grad_inputs[0].defined() || grad_outputs.empty() ||
        !grad_outputs[0].defined() || !torch::GradMode::is_enabled())
      return grad_inputs;
    const auto self = node_->shared_from_this();
    const auto x = node_->input_.unpack();
    const auto gamma = node_->weight_.unpack();
    const auto mean = node_->result1_.unpack(self).detach();
    const auto invstd = node_->result2_.unpack(self).detach();
    auto result = grad_inputs;
    result[0] = BatchNormInputGradient::apply(grad_outputs[0], x, gamma, grad_inputs[0].detach(),
                                              mean, invstd);
    return result;
  }

 private:
  torch::autograd::generated::NativeBatchNormBackward0* node_;
};

/// RAII: for one differentiable backward call (`create_graph`), gives every training-mode batch
/// norm in the graph behind `roots` the cheaper second-order path; removes the hooks after.
class ScopedBatchNormDoubleBackward {
 public:
  explicit ScopedBatchNormDoubleBackward(const std::vector<torch::Tensor>& roots) {
    visit_graph(roots, [&](torch::autograd::Node* node) {
      if (auto* bn = dynamic_cast<torch::autograd::generated::NativeBatchNormBackward0*>(node);
          bn != nullptr && bn->training) {
        nodes_.push_back(node);
        keys_.push_back(node->add_post_hook(std::make_unique<BatchNormInputGradientHook>(bn)));
      }
    });
  }
  ~ScopedBatchNormDoubleBackward() {
    for (size_t i = 0; i < keys_.size(); ++i) nodes_[i]->del_post_hook(keys_[i]);
  }
  ScopedBatchNormDoubleBackward(const ScopedBatchNormDoubleBackward&) = delete;
  ScopedBatchNormDoubleBackward& operator=(const ScopedBatchNormDoubleBackward&) = delete;

 private:
  std::vector<torch::autograd::Node*> nodes_;
  std::vector<std::uintptr_t> keys_;
};

}  // namespace igrad::detail

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

#include <igrad/detail/autograd_graph.hpp>

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/autograd/generated/Functions.h>
#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <tuple>
#include <vector>

namespace igrad::detail {

/// Autograd function `(dy, x, γ) ↦ dx`, the input gradient of training-mode batch norm, whose
/// value is computed by LibTorch and whose derivative is the closed form below.
///
/// With `P(v) = v − mean(v) − x̂ mean(v x̂)` (per channel), `dx = γ r P(dy)`. For an upstream
/// gradient `ḡ`, with `c = mean(dy x̂)`, `K = mean(ḡ dy) − mean(dy) mean(ḡ) − c mean(ḡ x̂)`:
/// \f[ \bar{dy} = γ r P(ḡ), \quad \bar x = −r c\,\bar{dy} − r\,\mathrm{mean}(ḡ x̂)\,dx − γ r^2 K x̂,
///     \quad \bar γ = m\,r K \f]
/// LibTorch's own fused batch-norm backward, applied to `ḡ` with all three outputs, gives
/// `γ r P(ḡ)`, `Σ ḡ x̂` and `Σ ḡ` in one kernel; `Σ dy x̂` and `Σ dy` are the batch norm's own
/// weight and bias gradients of the first-order pass (computed again from `dy` when that pass did
/// not return them). What is left is one product-reduction and three fused multiply-adds.
struct BatchNormInputGradient : torch::autograd::Function<BatchNormInputGradient> {
  /// `dx` is LibTorch's first-order result; `mean` and `invstd` are the batch statistics;
  /// `sum_dy_xhat` and `sum_dy` are Σ dy x̂ and Σ dy per channel.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& dy,
                               const torch::Tensor& x, const torch::Tensor& gamma,
                               const torch::Tensor& dx, const torch::Tensor& mean,
                               const torch::Tensor& invstd, const torch::Tensor& sum_dy_xhat,
                               const torch::Tensor& sum_dy) {
    ctx->save_for_backward({dy, x, gamma, dx, mean, invstd, sum_dy_xhat, sum_dy});
    return dx.detach();
  }

  /// The derivative with respect to `dy`, `x` and `γ` (the statistics are functions of `x`,
  /// accounted for in the closed form, and get no gradient of their own).
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &dy = saved[0], &x = saved[1], &gamma = saved[2], &dx = saved[3];
    const auto &mean = saved[4], &invstd = saved[5];
    const auto g_bar = grads[0].contiguous(x.suggest_memory_format());
    std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1), reduce;
    shape[1] = x.size(1);
    for (int64_t d = 0; d < x.dim(); ++d)
      if (d != 1) reduce.push_back(d);
    const double m = static_cast<double>(x.numel() / x.size(1));
    const auto mu = mean.view(shape), r = invstd.view(shape);
    const auto gm = gamma.view(shape);
    // d̄y = γ r P(ḡ), with Σ ḡ x̂ and Σ ḡ, in one fused kernel.
    const auto [dy_bar, sum_gz, sum_g] = torch::native_batch_norm_backward(
        g_bar, x, gamma, /*running_mean=*/{}, /*running_var=*/{}, mean, invstd, /*train=*/true,
        /*eps=*/0.0, {true, true, true});
    const auto mean_gz = sum_gz.view(shape) / m, mean_g = sum_g.view(shape) / m;
    const auto c = saved[6].view(shape) / m, mean_dy = saved[7].view(shape) / m;
    const auto k = (g_bar * dy).mean(reduce, /*keepdim=*/true) - mean_dy * mean_g - c * mean_gz;
    // x̄ = −r c d̄y − r mean(ḡx̂) dx − γ r³ K (x − μ)
    const auto z_coefficient = gm * r * r * r * k;
    auto x_bar = torch::addcmul(z_coefficient * mu, dy_bar, -r * c);
    x_bar.addcmul_(dx, -r * mean_gz);
    x_bar.addcmul_(x, -z_coefficient);
    const auto gamma_bar = (r * k * m).view({-1});
    return {dy_bar,          x_bar,           gamma_bar,       torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

/// Post-hook: replaces the first-order input gradient of a training-mode batch norm by the same
/// value carrying `BatchNormInputGradient`'s cheaper derivative. `Node` is LibTorch's native
/// batch-norm backward (CPU) or cuDNN's (CUDA with an affine batch norm): both save the input,
/// the weight and the batch mean and inverse standard deviation under the same names.
template <class Node>
class BatchNormInputGradientHook final : public torch::autograd::FunctionPostHook {
 public:
  explicit BatchNormInputGradientHook(Node* node) : node_(node) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& grad_inputs,
      const torch::autograd::variable_list& grad_outputs) override {
    if (grad_inputs.empty() || !grad_inputs[0].defined() || grad_outputs.empty() ||
        !grad_outputs[0].defined() || !torch::GradMode::is_enabled())
      return grad_inputs;
    const auto self = node_->shared_from_this();
    const auto x = node_->input_.unpack();
    // A batch norm without affine weight acts as γ = 1 (LibTorch's kernels want a weight to
    // return the per-channel sums).
    auto gamma = node_->weight_.unpack();
    if (!gamma.defined()) gamma = torch::ones({x.size(1)}, x.options());
    const auto mean = node_->result1_.unpack(self).detach();
    const auto invstd = node_->result2_.unpack(self).detach();
    // Σ dy x̂ and Σ dy per channel are the batch norm's weight and bias gradients: the node
    // returned them when the backward call asked for them (its kernel reduces them for dx
    // anyway); otherwise LibTorch's kernel computes them here.
    torch::Tensor sum_dy_xhat, sum_dy;
    if (grad_inputs.size() >= 3 && grad_inputs[1].defined() && grad_inputs[2].defined()) {
      sum_dy_xhat = grad_inputs[1].detach();
      sum_dy = grad_inputs[2].detach();
    } else {
      std::tie(std::ignore, sum_dy_xhat, sum_dy) = torch::native_batch_norm_backward(
          grad_outputs[0].detach(), x, gamma, {}, {}, mean, invstd, /*train=*/true, /*eps=*/0.0,
          {false, true, true});
    }
    auto result = grad_inputs;
    result[0] = BatchNormInputGradient::apply(grad_outputs[0], x, gamma, grad_inputs[0].detach(),
                                              mean, invstd, sum_dy_xhat, sum_dy);
    return result;
  }

 private:
  Node* node_;
};

/// RAII: for one differentiable backward call (`create_graph`), gives every training-mode batch
/// norm in the graph behind `roots` the cheaper second-order path; removes the hooks after.
template <class Instantiation = void>
class BasicScopedBatchNormDoubleBackward {
 public:
  explicit BasicScopedBatchNormDoubleBackward(const std::vector<torch::Tensor>& roots) {
    visit_graph(roots, [&](torch::autograd::Node* node) {
      hook_if<torch::autograd::generated::NativeBatchNormBackward0>(node);
      hook_if<torch::autograd::generated::CudnnBatchNormBackward0>(node);
    });
  }
  /// The number of batch norms given the cheaper path (for tests and diagnostics).
  std::size_t hooked() const { return hooks_.size(); }
  /// The affine weights and biases of those batch norms. Adding them to the inputs of the
  /// differentiable backward call makes each batch-norm node return Σ dy x̂ and Σ dy, which its
  /// kernel computes anyway and the second-order path needs; otherwise the path computes them
  /// again from `dy`.
  const std::vector<torch::Tensor>& affine_parameters() const { return affine_parameters_; }

 private:
  template <class BatchNormNode>
  void hook_if(torch::autograd::Node* node) {
    auto* bn = dynamic_cast<BatchNormNode*>(node);
    if (bn == nullptr || !bn->training) return;
    hooks_.add(node, std::make_unique<BatchNormInputGradientHook<BatchNormNode>>(bn));
    // Edges 1 and 2 lead to the weight's and the bias's gradient accumulators when both are
    // trainable leaves.
    const auto leaf = [&](std::size_t edge) -> torch::Tensor {
      if (edge >= node->num_outputs()) return {};
      auto* accumulator =
          dynamic_cast<torch::autograd::AccumulateGrad*>(node->next_edge(edge).function.get());
      return accumulator != nullptr ? accumulator->variable : torch::Tensor();
    };
    const auto weight = leaf(1), bias = leaf(2);
    const auto listed = [&](const torch::Tensor& p) {  // a batch norm applied more than once
      return std::any_of(affine_parameters_.begin(), affine_parameters_.end(),
                         [&](const torch::Tensor& q) { return q.is_same(p); });
    };
    if (weight.defined() && bias.defined() && !listed(weight)) {
      affine_parameters_.push_back(weight);
      affine_parameters_.push_back(bias);
    }
  }

  ScopedPostHooks hooks_;
  std::vector<torch::Tensor> affine_parameters_;
};
/// `BasicScopedBatchNormDoubleBackward<>`: a template only so that its hooks (and the autograd
/// Functions they apply) are instantiated where a regularised loss is, not in every file that
/// includes igrad.
using ScopedBatchNormDoubleBackward = BasicScopedBatchNormDoubleBackward<>;

/// Autograd function `(g, mask source) ↦ dx` for a ReLU's first-order backward
/// `dx = g · [result > 0]`: the value is LibTorch's, the derivative goes to `g` alone.
/// LibTorch's own double backward also returns an all-zero gradient for the ReLU's output (the
/// mask is piecewise constant), which it materialises and adds into the forward graph's
/// gradients: full-size work that changes nothing.
struct ReluInputGradient : torch::autograd::Function<ReluInputGradient> {
  /// `result` is the ReLU's (detached) output, `dx` LibTorch's first-order result.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               [[maybe_unused]] const torch::Tensor& g,
                               const torch::Tensor& result, const torch::Tensor& dx) {
    ctx->save_for_backward({result});
    return dx.detach();
  }
  /// `ḡ · [result > 0]` for `g`; nothing for the constants.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto result = ctx->get_saved_variables()[0];
    return {torch::threshold_backward(grads[0], result, 0), torch::Tensor(), torch::Tensor()};
  }
};

/// Autograd function `(g, indices) ↦ dx` for a max-pool's first-order backward (`dx` scatters
/// `g` to the arg-max positions): the value is LibTorch's, the derivative (gathering `ḡ` at the
/// arg-max positions) goes to `g` alone. LibTorch's own double backward also returns an all-zero,
/// input-sized gradient for the pooled input, materialised and added for nothing.
struct MaxPoolInputGradient : torch::autograd::Function<MaxPoolInputGradient> {
  /// `indices` are the pool's arg-max positions (flat over H·W), `dx` LibTorch's result.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               [[maybe_unused]] const torch::Tensor& g,
                               const torch::Tensor& indices, const torch::Tensor& dx) {
    ctx->save_for_backward({indices});
    return dx.detach();
  }
  /// `ḡ` read at the arg-max positions, shaped like the pool's output.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto indices = ctx->get_saved_variables()[0];
    const auto gathered =
        grads[0].contiguous().flatten(-2).gather(-1, indices.contiguous().flatten(-2));
    return {gathered.view(indices.sizes()), torch::Tensor(), torch::Tensor()};
  }
};

/// A ReLU backward node saving its output as `result_` (LibTorch's generated name).
template <class Node>
concept SavesReluResult = requires(Node& node) { node.result_; };
/// A max-pool backward node saving its arg-max indices as `result1_`.
template <class Node>
concept SavesPoolIndices = requires(Node& node) { node.result1_; };

/// Post-hook on a ReLU's (`ReluBackward0`) or a 2-D max-pool's (`MaxPool2DWithIndicesBackward0`)
/// backward node: during a differentiable backward, replaces its input gradient by the same value
/// carrying the derivative above.
template <class Node>
class PiecewiseLinearInputGradientHook final : public torch::autograd::FunctionPostHook {
 public:
  explicit PiecewiseLinearInputGradientHook(Node* node) : node_(node) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& grad_inputs,
      const torch::autograd::variable_list& grad_outputs) override {
    if (grad_inputs.empty() || !grad_inputs[0].defined() || grad_outputs.empty() ||
        !grad_outputs[0].defined() || !grad_outputs[0].requires_grad() ||
        !torch::GradMode::is_enabled())
      return grad_inputs;
    const auto self = node_->shared_from_this();
    auto result = grad_inputs;
    if constexpr (SavesReluResult<Node>) {
      result[0] = ReluInputGradient::apply(grad_outputs[0], node_->result_.unpack(self).detach(),
                                           grad_inputs[0].detach());
    } else if constexpr (SavesPoolIndices<Node>) {
      result[0] = MaxPoolInputGradient::apply(
          grad_outputs[0], node_->result1_.unpack(self).detach(), grad_inputs[0].detach());
    }
    return result;
  }

 private:
  Node* node_;
};

/// RAII: for one differentiable backward call (`create_graph`), gives every ReLU and 2-D max-pool
/// in the graph behind `roots` the leaner second-order path; removes the hooks after.
template <class Instantiation = void>
class BasicScopedPiecewiseLinearDoubleBackward {
 public:
  explicit BasicScopedPiecewiseLinearDoubleBackward(const std::vector<torch::Tensor>& roots) {
    visit_graph(roots, [&](torch::autograd::Node* node) {
      hook_if<torch::autograd::generated::ReluBackward0>(node);
      hook_if<torch::autograd::generated::MaxPool2DWithIndicesBackward0>(node);
    });
  }
  /// The number of nodes given the leaner path (for tests and diagnostics).
  std::size_t hooked() const { return hooks_.size(); }

 private:
  // Should a LibTorch version save these under other names, its nodes keep its own path.
  template <class PiecewiseNode>
  void hook_if(torch::autograd::Node* node) {
    if constexpr (!SavesReluResult<PiecewiseNode> && !SavesPoolIndices<PiecewiseNode>) return;
    if (auto* typed = dynamic_cast<PiecewiseNode*>(node); typed != nullptr)
      hooks_.add(node, std::make_unique<PiecewiseLinearInputGradientHook<PiecewiseNode>>(typed));
  }

  ScopedPostHooks hooks_;
};
/// `BasicScopedPiecewiseLinearDoubleBackward<>` (a template for the reason above).
using ScopedPiecewiseLinearDoubleBackward = BasicScopedPiecewiseLinearDoubleBackward<>;

}  // namespace igrad::detail


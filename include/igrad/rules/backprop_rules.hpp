#pragma once
/// @file rules/backprop_rules.hpp
/// @brief Backprop rules at rectifier sites (standard, guided, deconvnet), applied to the
/// autograd graph of any model without editing it.
///
/// A rule is applied only for the duration of one backward call: igrad walks the graph from the
/// differentiated outputs, attaches a post-hook to every rectifier node (`ReluBackward*`, and
/// `HardtanhBackward*` with lower bound 0, which covers ReLU6), runs the backward and removes the
/// hooks again — also when the backward throws. Other backward calls on the same graph, earlier or
/// later, and other threads with other graphs, never see the rule.

#include <igrad/concepts.hpp>
#include <igrad/detail/autograd_graph.hpp>
#include <igrad/exceptions.hpp>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/generated/Functions.h>
#include <torch/torch.h>

#include <concepts>
#include <cstdint>
#include <memory>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

namespace igrad {

/// @defgroup rules_group Backprop rules
/// @brief How gradients pass a rectifier `v = ReLU(u)` (SPEC §1).
/// @{

/// @brief Ordinary backprop: `δu = 1[u>0] · δv`.
struct StandardReLU {
  static constexpr bool is_standard = true;     ///< nothing to attach
  static constexpr const char* name = "StandardReLU";  ///< display name
  /// @brief Returns the ordinary gradient unchanged.
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor& /*upstream*/) const {
    return masked;
  }
};

/// @brief Guided backpropagation (Springenberg et al. 2015): `δu = 1[u>0] · max(δv, 0)`.
struct GuidedReLU {
  static constexpr bool is_standard = false;  ///< attaches hooks
  static constexpr const char* name = "GuidedReLU";  ///< display name
  /// @brief `1[u>0]·max(δv,0)`, which equals `max(1[u>0]·δv, 0)`.
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor& /*upstream*/) const {
    return masked.clamp_min(0);
  }
};

/// @brief Deconvnet rule (Zeiler & Fergus 2014): `δu = max(δv, 0)`, ignoring the forward mask.
struct DeconvReLU {
  static constexpr bool is_standard = false;  ///< attaches hooks
  static constexpr const char* name = "DeconvReLU";  ///< display name
  /// @brief `max(δv, 0)`.
  torch::Tensor operator()(const torch::Tensor& /*masked*/, const torch::Tensor& upstream) const {
    return upstream.clamp_min(0);
  }
};

/// @}

namespace detail {

/// Post-hook that replaces a rectifier node's result by the rule's.
template <class R>
class RuleHook final : public torch::autograd::FunctionPostHook {
 public:
  explicit RuleHook(R rule) : rule_(std::move(rule)) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& grad_inputs,
      const torch::autograd::variable_list& grad_outputs) override {
    if (grad_inputs.empty() || !grad_inputs[0].defined() || grad_outputs.empty() ||
        !grad_outputs[0].defined())
      return grad_inputs;
    torch::autograd::variable_list result = grad_inputs;
    result[0] = rule_(grad_inputs[0], grad_outputs[0]);
    return result;
  }

 private:
  R rule_;
};

/// RAII: attaches a rule's hooks to the rectifier nodes of a graph, removes them on destruction.
template <class R>
class ScopedRule {
 public:
  ScopedRule(const std::vector<torch::Tensor>& roots, const R& rule) {
    if constexpr (!R::is_standard) {
      for (auto* node : find_rectifier_nodes(roots))
        hooks_.add(node, std::make_unique<RuleHook<R>>(rule));
    }
  }
  /// Number of rectifier sites the rule acts on.
  std::size_t sites() const { return hooks_.size(); }

 private:
  ScopedPostHooks hooks_;
};

}  // namespace detail

/// @addtogroup rules_group
/// @{

/// @brief Number of rectifier sites (ReLU, ReLU6) in the autograd graph behind `outputs`.
inline std::size_t count_rectifier_sites(const std::vector<torch::Tensor>& outputs) {
  return detail::find_rectifier_nodes(outputs).size();
}

/// @brief `torch::autograd::grad` under a backprop rule.
///
/// Computes the gradients of `outputs` (weighted by `grad_outputs`, ones by default for scalars)
/// with respect to `inputs`, passing every rectifier site with rule `R`. The rule holds for this
/// call only. Throws `GraphError` when `R` is not the standard rule and the graph has no
/// rectifier site, since the result would silently be the standard gradient.
template <BackpropRule R = StandardReLU>
std::vector<torch::Tensor> gradient(const std::vector<torch::Tensor>& outputs,
                                    const std::vector<torch::Tensor>& inputs,
                                    const std::vector<torch::Tensor>& grad_outputs = {},
                                    bool retain_graph = false, bool create_graph = false,
                                    const R& rule = R()) {
  detail::ScopedRule<R> scope(outputs, rule);
  if constexpr (!R::is_standard) {
    detail::require<GraphError>(
        scope.sites() > 0,
        "{} found no rectifier site (ReLU, ReLU6) in the autograd graph; expected a model with at "
        "least one, or use StandardReLU for an ordinary gradient",
        R::name);
  }
  return torch::autograd::grad(outputs, inputs, grad_outputs, retain_graph, create_graph,
                               /*allow_unused=*/false);
}

/// @}
}  // namespace igrad

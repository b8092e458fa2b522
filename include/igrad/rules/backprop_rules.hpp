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

/// Whether an autograd node is the backward of a rectifier site (SPEC §1).
inline bool is_rectifier_node(const torch::autograd::Node& node) {
  const std::string name = node.name();
  if (name.rfind("ReluBackward", 0) == 0) return true;
  if (name.rfind("HardtanhBackward", 0) == 0 && name.find("BackwardBackward") == std::string::npos) {
    // Only hardtanh(0, max) is a rectifier (ReLU6 is hardtanh(0, 6)); hardtanh(-1, 1) is not.
    if (const auto* h = dynamic_cast<const torch::autograd::generated::HardtanhBackward0*>(&node))
      return h->min_val.toDouble() == 0.0;
    return false;
  }
  return false;
}

/// Calls `visit(node)` once for every autograd node reachable from the roots' gradient functions.
template <class Visitor>
void visit_graph(const std::vector<torch::Tensor>& roots, Visitor&& visit) {
  std::vector<torch::autograd::Node*> stack;
  std::unordered_set<torch::autograd::Node*> seen;
  for (const auto& root : roots)
    if (root.defined() && root.grad_fn()) stack.push_back(root.grad_fn().get());
  while (!stack.empty()) {
    auto* node = stack.back();
    stack.pop_back();
    if (!seen.insert(node).second) continue;
    visit(node);
    for (const auto& edge : node->next_edges())
      if (edge.function) stack.push_back(edge.function.get());
  }
}

/// Every rectifier node reachable from the roots' gradient functions, each once.
inline std::vector<torch::autograd::Node*> find_rectifier_nodes(
    const std::vector<torch::Tensor>& roots) {
  std::vector<torch::autograd::Node*> found;
  visit_graph(roots, [&](torch::autograd::Node* node) {
    if (is_rectifier_node(*node)) found.push_back(node);
  });
  return found;
}

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

/// RAII: post-hooks attached to autograd nodes, removed on destruction (also on exceptions), so
/// that a hook acts on one backward call only and the model's graph is left as it was.
class ScopedPostHooks {
 public:
  ScopedPostHooks() = default;
  ScopedPostHooks(const ScopedPostHooks&) = delete;
  ScopedPostHooks& operator=(const ScopedPostHooks&) = delete;
  ~ScopedPostHooks() {
    for (std::size_t i = 0; i < keys_.size(); ++i) nodes_[i]->del_post_hook(keys_[i]);
  }
  /// Attaches `hook` to `node` until this object is destroyed.
  void add(torch::autograd::Node* node, std::unique_ptr<torch::autograd::FunctionPostHook> hook) {
    keys_.push_back(node->add_post_hook(std::move(hook)));
    nodes_.push_back(node);
  }
  /// Number of hooks attached.
  std::size_t size() const { return keys_.size(); }

 private:
  std::vector<torch::autograd::Node*> nodes_;
  std::vector<std::uintptr_t> keys_;
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

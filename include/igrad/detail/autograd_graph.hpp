#pragma once
/// @file detail/autograd_graph.hpp
/// @brief Walking an autograd graph and attaching post-hooks to its nodes for one backward call:
/// shared by the backprop rules (rules/backprop_rules.hpp) and the leaner double backward of the
/// regulariser (detail/batch_norm_double_backward.hpp), which sits below the rules.

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/generated/Functions.h>
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace igrad::detail {

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

}  // namespace igrad::detail

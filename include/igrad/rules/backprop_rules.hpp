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
#include <igrad/rules/rectifier_sites.hpp>

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

/// @brief DeepLIFT's Rescale rule for ReLU networks (Shrikumar et al. 2017; captum's `DeepLift`
/// nonlinearity rule): the multiplier of a rectifier site is the ratio of the differences from
/// the reference instead of the derivative,
/// \f[ \delta u = \delta v \cdot \frac{\mathrm{ReLU}(u) - \mathrm{ReLU}(u_{ref})}{u - u_{ref}}
///     \quad\text{where } |u - u_{ref}| \ge \varepsilon, \qquad
///     \delta u = 1[u > 0]\, \delta v \text{ (the gradient) elsewhere,} \f]
/// ε = `eps` (captum's default 1e-10); ReLU6 sites use their own output the same way.
///
/// It needs each site's input in the differentiated forward and in a reference forward, which
/// the two-argument call of `BackpropRule` does not give: it provides the optional site call
/// `operator()(const RectifierSite&)`, which `igrad::gradient` uses whenever a rule has one, and
/// for which it requires the forwards to have been recorded and paired (`RectifierRecording`,
/// `ReferenceSites`; `GraphError` otherwise). `igrad::DeepLift` does all this. The two-argument
/// call, kept for the concept, is the rule's limit `u_ref → u`: the ordinary gradient.
/// With the ReLU sites as the network's only nonlinearities (linear, convolution, batch norm
/// in evaluation mode, average pooling), `(x − x_ref) ⊙ gradient` sums exactly to
/// `y^c(x) − y^c(x_ref)` (summation-to-delta). Other nonlinearities, max-pooling among them,
/// pass their ordinary gradient (captum has rules for some of them).
struct DeepLiftRescale {
  static constexpr bool is_standard = false;            ///< attaches hooks
  static constexpr const char* name = "DeepLiftRescale";  ///< display name
  double eps = 1e-10;  ///< below this `|u − u_ref|` the multiplier is the gradient
  /// @brief Without the site's values: the gradient, `masked`.
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor& /*upstream*/) const {
    return masked;
  }
  /// @brief The Rescale multiplier times `δv` where `|u − u_ref| ≥ eps`, the gradient elsewhere.
  torch::Tensor operator()(const RectifierSite& site) const {
    const auto delta_in = site.input - site.reference_input;
    const auto delta_out = site.output - site.reference_output;
    const auto small = delta_in.abs() < eps;
    const auto ratio = delta_out / torch::where(small, torch::ones_like(delta_in), delta_in);
    return torch::where(small, site.masked, site.upstream * ratio);
  }
};

/// @}

namespace detail {

/// A rule with the optional site call `rule(const RectifierSite&)` (see `DeepLiftRescale`).
template <class R>
concept has_site_call = requires(const R& rule, const RectifierSite& site) {
  { rule(site) } -> std::convertible_to<torch::Tensor>;
};

/// Post-hook that replaces a rectifier node's result by a site rule's, given the site's values.
template <class R>
class SiteRuleHook final : public torch::autograd::FunctionPostHook {
 public:
  SiteRuleHook(R rule, RecordedSite site, RecordedSite reference)
      : rule_(std::move(rule)), site_(std::move(site)), reference_(std::move(reference)) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& grad_inputs,
      const torch::autograd::variable_list& grad_outputs) override {
    if (grad_inputs.empty() || !grad_inputs[0].defined() || grad_outputs.empty() ||
        !grad_outputs[0].defined())
      return grad_inputs;
    torch::autograd::variable_list result = grad_inputs;
    const auto& masked = grad_inputs[0];
    const auto on = [&](const torch::Tensor& t) { return t.to(masked.device(), masked.scalar_type()); };
    const auto input = on(site_.input), output = on(site_.output);
    const auto reference_input = on(reference_.input), reference_output = on(reference_.output);
    result[0] = rule_(RectifierSite{masked, grad_outputs[0], input, output, reference_input,
                                    reference_output});
    return result;
  }

 private:
  R rule_;
  RecordedSite site_, reference_;
};

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
      for (auto* node : find_rectifier_nodes(roots)) {
        if constexpr (has_site_call<R>) {
          const auto* pairing = active_pairing();
          const auto pair = pairing != nullptr ? pairing->find(node) : std::nullopt;
          if (!pair) {
            ++unrecorded_;
            continue;
          }
          hooks_.add(node, std::make_unique<SiteRuleHook<R>>(rule, *pair->first, *pair->second));
        } else {
          hooks_.add(node, std::make_unique<RuleHook<R>>(rule));
        }
      }
    }
  }
  /// Number of rectifier sites the rule acts on.
  std::size_t sites() const { return hooks_.size(); }
  /// Number of rectifier sites a site rule found no recorded values for (left unhooked).
  std::size_t unrecorded() const { return unrecorded_; }

 private:
  ScopedPostHooks hooks_;
  std::size_t unrecorded_ = 0;
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
/// rectifier site, since the result would silently be the standard gradient. A rule with a site
/// call (`DeepLiftRescale`) gets each site's recorded values (`ReferenceSites`); `GraphError`
/// when a site has none.
template <BackpropRule R = StandardReLU>
std::vector<torch::Tensor> gradient(const std::vector<torch::Tensor>& outputs,
                                    const std::vector<torch::Tensor>& inputs,
                                    const std::vector<torch::Tensor>& grad_outputs = {},
                                    bool retain_graph = false, bool create_graph = false,
                                    const R& rule = R()) {
  detail::ScopedRule<R> scope(outputs, rule);
  if constexpr (detail::has_site_call<R>) {
    detail::require<GraphError>(
        scope.unrecorded() == 0,
        "{} needs the values of each rectifier site in the differentiated forward and in a "
        "reference forward, and {} of {} sites have none; expected both forwards recorded "
        "(igrad::RectifierRecording) and paired (igrad::ReferenceSites) on this thread, as "
        "igrad::DeepLift does",
        R::name, scope.unrecorded(), scope.unrecorded() + scope.sites());
  }
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

#pragma once
/// @file testing/conformance.hpp
/// @brief Run-time checks of the laws of `igrad/concepts.hpp`, for a user's own policies and
/// models as for igrad's.
///
/// A concept checks what the compiler can see (members, signatures, constant flags); the laws it
/// documents — output shapes, finiteness at zero, batch independence, leaving the model's
/// gradients and buffers alone, a rule acting inside its call only — need a call. Each
/// `check_*` function calls the policy on small inputs, tests every law, and returns a
/// `ConformanceReport` naming each law broken in one sentence. It throws nothing: an exception
/// from the policy is itself reported. Use it in a test:
/// @snippet custom_policies.cpp conformance
///
/// The checks run on the model's device and leave the model as they found it (mode, parameters,
/// their `.grad`, buffers). They are not included by `<igrad/igrad.hpp>`.

#include <igrad/cam/explain.hpp>
#include <igrad/concepts.hpp>
#include <igrad/errors/error_functions.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>
#include <igrad/rules/backprop_rules.hpp>
#include <igrad/saliency/saliency_methods.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/arg.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace igrad::testing {

/// @defgroup testing_group Conformance checks
/// @brief The laws of igrad's concepts, checked at run time.
/// @{

/// @brief What a conformance check found: the laws a policy broke, one sentence each.
struct ConformanceReport {
  std::string policy;                   ///< the policy's `name`
  std::vector<std::string> violations;  ///< one sentence per broken law; empty when it conforms

  /// @brief Whether every law held.
  bool ok() const { return violations.empty(); }
  /// @brief Same as ok().
  explicit operator bool() const { return ok(); }
  /// @brief "<name>: conforms" or "<name> breaks N law(s): ..." on one line per law.
  std::string summary() const {
    if (ok()) return igrad::detail::format("{}: conforms", policy);
    std::string text = igrad::detail::format("{} breaks {} law(s):", policy, violations.size());
    for (const auto& v : violations) text += "\n  - " + v;
    return text;
  }
};

/// @brief Options of the conformance checks, with chained setters.
struct ConformanceOptions {
  /// Two results are "equal" when they differ by at most `tolerance · max(1, max |result|)`.
  TORCH_ARG(double, tolerance) = 1e-5;
  /// Check that a batch gives the results of its images one by one. Methods that draw noise for
  /// the whole batch at once (igrad's SmoothGrad-CAM++, SS-CAM and SmoothGrad with a seed) give
  /// other draws to an image alone, so their tests turn this off.
  TORCH_ARG(bool, batch_consistency) = true;
  /// Seed of the random test inputs (never the global RNG).
  TORCH_ARG(uint64_t, seed) = 0;
};

namespace detail {

/// Collects violations while a check runs.
class LawBook {
 public:
  explicit LawBook(std::string policy) { report_.policy = std::move(policy); }
  /// Records `sentence` unless `holds`.
  void expect(bool holds, std::string sentence) {
    if (!holds) report_.violations.push_back(std::move(sentence));
  }
  /// Runs `body`; an exception it throws is the violation of law `law`.
  template <class Body>
  void run(const char* law, Body&& body) {
    try {
      std::forward<Body>(body)();
    } catch (const std::exception& e) {
      report_.violations.push_back(
          igrad::detail::format("{}: threw \"{}\"", law, igrad::detail::first_line(e.what())));
    }
  }
  ConformanceReport take() { return std::move(report_); }

 private:
  ConformanceReport report_;
};

/// Largest absolute difference, in double; infinity for tensors of different shapes.
inline double difference(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined() || !b.defined() || a.sizes() != b.sizes())
    return std::numeric_limits<double>::infinity();
  if (a.numel() == 0) return 0.0;
  return (a.detach().to(torch::kDouble) - b.detach().to(torch::kDouble))
      .abs()
      .max()
      .template item<double>();
}

/// Whether `a` and `b` agree within the options' tolerance, scaled by `a`'s magnitude.
inline bool close(const torch::Tensor& a, const torch::Tensor& b, const ConformanceOptions& o) {
  const double scale =
      a.defined() && a.numel() > 0 ? std::max(1.0, a.detach().abs().max().template item<double>()) : 1.0;
  return difference(a, b) <= o.tolerance() * scale;
}

/// Standard normal values `[shape]` in double from a seeded CPU generator.
inline torch::Tensor random_normal(at::IntArrayRef shape, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn(shape, generator, torch::dtype(torch::kDouble));
}

/// A snapshot of what a method must not touch: the model's mode, parameters, their `.grad`, and
/// buffers. Sets every parameter's `.grad` to a sentinel while it lives, and restores everything
/// on destruction, so the check leaves the user's model as it was.
class ModelGuard {
 public:
  explicit ModelGuard(const AnyModel& model) : model_(model), training_(model.is_training()) {
    torch::NoGradGuard no_grad;
    for (auto p : model_.parameters()) {
      params_.push_back(p);
      values_.push_back(p.detach().clone());
      grads_.push_back(p.grad().defined() ? p.grad().detach().clone() : torch::Tensor());
      if (p.requires_grad()) p.mutable_grad() = torch::full_like(p, 0.5).detach();
    }
    for (auto b : model_.buffers()) {
      buffers_.push_back(b);
      buffer_values_.push_back(b.detach().clone());
    }
  }
  ModelGuard(const ModelGuard&) = delete;
  ModelGuard& operator=(const ModelGuard&) = delete;
  ~ModelGuard() {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      params_[i].detach().copy_(values_[i]);
      params_[i].mutable_grad() = grads_[i];
    }
    for (std::size_t i = 0; i < buffers_.size(); ++i) buffers_[i].detach().copy_(buffer_values_[i]);
    model_.train(training_);
  }
  /// The laws "no .grad, parameter, buffer or mode touched" after a call named `what`.
  void check(LawBook& book, const std::string& what) const {
    bool grads = true, values = true, buffers = true;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const auto& g = params_[i].grad();
      if (params_[i].requires_grad())
        grads = grads && g.defined() && torch::equal(g, torch::full_like(params_[i], 0.5));
      values = values && torch::equal(params_[i].detach(), values_[i]);
    }
    for (std::size_t i = 0; i < buffers_.size(); ++i)
      buffers = buffers && torch::equal(buffers_[i].detach(), buffer_values_[i]);
    book.expect(grads,
                igrad::detail::format("{} changed a parameter's .grad; expected it untouched (take "
                                      "gradients with torch::autograd::grad or igrad::gradient)",
                                      what));
    book.expect(values, igrad::detail::format(
                            "{} changed a parameter; expected the model unchanged", what));
    book.expect(buffers,
                igrad::detail::format("{} changed a buffer (e.g. batch-norm statistics); expected "
                                      "the model to run in evaluation mode",
                                      what));
    book.expect(model_.is_training(), igrad::detail::format("{} left the model in evaluation mode; "
                                                            "expected its mode restored",
                                                            what));
  }

 private:
  AnyModel model_;
  bool training_;
  std::vector<torch::Tensor> params_, values_, grads_, buffers_, buffer_values_;
};

/// The law both kinds of method share: two calls on the same batch give the same result, and
/// (with `ConformanceOptions::batch_consistency`) a batch gives what its inputs give one by one.
/// `run(inputs, targets)` computes a result (undefined targets: the predictions); `differ_twice`
/// and `differ_alone` say what broke each law, `call` names the entry point.
template <class Run>
void check_deterministic_and_batch_independent(LawBook& book, const ModelGuard& guard,
                                               const AnyModel& model, const torch::Tensor& x,
                                               const ConformanceOptions& options,
                                               const std::string& differ_twice,
                                               const std::string& differ_alone,
                                               const std::string& call, Run&& run) {
  book.run("deterministic and batch-independent", [&] {
    const auto first = run(x, torch::Tensor());
    const auto second = run(x, torch::Tensor());
    book.expect(close(first, second, options), differ_twice);
    if (options.batch_consistency()) {
      torch::Tensor targets;
      {
        torch::NoGradGuard no_grad;
        TrainingModeGuard evaluation(model, false);
        targets = model.forward(x.to(model.device(), model.dtype())).argmax(1);
      }
      std::vector<torch::Tensor> alone;
      for (int64_t i = 0; i < x.size(0); ++i)
        alone.push_back(run(x.slice(0, i, i + 1), targets.slice(0, i, i + 1)));
      book.expect(close(first, torch::cat(alone), options), differ_alone);
    }
    guard.check(book, call);
  });
}

}  // namespace detail

/// @brief Checks the laws of `ErrorFunction` for `error` (see the concept): `[N]` floating-point
/// errors, sample i depending on sample i only (N = 3 against N = 1), differentiability in the
/// student, finite values and derivatives when either gradient is zero, lower meaning closer
/// (`E(δ', δ') ≤ E(−δ', δ')`), arguments unchanged. Inputs are `[3, 2, 5, 5]` gradient images in
/// double and in float.
template <ErrorFunction E>
ConformanceReport check_error_function(const E& error = E(), const ConformanceOptions& options = {}) {
  detail::LawBook book(E::name);
  const auto standard = detail::random_normal({3, 2, 5, 5}, options.seed());
  const auto guided = detail::random_normal({3, 2, 5, 5}, options.seed() + 1);
  const int64_t n = standard.size(0);

  book.run("[N] errors", [&] {
    for (const auto dtype : {torch::kDouble, torch::kFloat}) {
      const auto s = standard.to(dtype), g = guided.to(dtype);
      const auto s_copy = s.clone(), g_copy = g.clone();
      const auto errors = apply_error(error, s, g);  // throws unless [N], floating
      book.expect(torch::equal(s, s_copy) && torch::equal(g, g_copy),
                  "it changed an argument; expected both gradients left as they were");
      book.expect(igrad::detail::all_finite(errors), "it returned non-finite errors for finite "
                                                     "gradients; expected finite values");
    }
  });
  book.run("per-sample errors", [&] {
    const auto batch = apply_error(error, standard, guided);
    std::vector<torch::Tensor> alone;
    for (int64_t i = 0; i < n; ++i)
      alone.push_back(apply_error(error, standard.slice(0, i, i + 1), guided.slice(0, i, i + 1)));
    book.expect(detail::close(batch, torch::cat(alone), options),
                "the errors of a batch differ from those of its samples one by one; expected "
                "sample i's error to depend on sample i only");
  });
  book.run("differentiable in the student", [&] {
    const auto s = standard.clone().requires_grad_(true);
    const auto errors = apply_error(error, s, guided);
    book.expect(errors.requires_grad(), "its result does not depend differentiably on the "
                                        "standard gradient; expected a differentiable error");
    if (errors.requires_grad()) {
      const auto grad = torch::autograd::grad({errors.sum()}, {s}, {}, false, false, true)[0];
      book.expect(grad.defined() && igrad::detail::all_finite(grad),
                  "its derivative in the standard gradient is undefined or not finite");
    }
  });
  book.run("finite at zero gradients", [&] {
    const auto zero = torch::zeros_like(standard);
    const std::pair<torch::Tensor, torch::Tensor> cases[] = {
        {zero, guided}, {standard, zero}, {zero, zero}};
    const char* names[] = {"a zero standard gradient", "a zero guided gradient",
                           "two zero gradients"};
    for (int k = 0; k < 3; ++k) {
      const auto s = cases[k].first.clone().requires_grad_(true);
      const auto errors = apply_error(error, s, cases[k].second);
      bool finite = igrad::detail::all_finite(errors);
      if (finite && errors.requires_grad()) {
        const auto grad = torch::autograd::grad({errors.sum()}, {s}, {}, false, false, true)[0];
        finite = !grad.defined() || igrad::detail::all_finite(grad);
      }
      book.expect(finite,
                  igrad::detail::format("the error or its derivative is not finite for {}; "
                                        "expected finite values (clamp each norm on its own, "
                                        "before any square root)",
                                        names[k]));
    }
  });
  book.run("lower means closer", [&] {
    const auto agree = apply_error(error, guided, guided);
    const auto disagree = apply_error(error, -guided, guided);
    const double slack = options.tolerance() * std::max(1.0, agree.abs().max().template item<double>());
    book.expect((agree <= disagree + slack).all().template item<bool>(),
                "E(δ', δ') > E(−δ', δ') for some sample; expected a lower error for a student "
                "that agrees with its teacher");
  });
  return book.take();
}

/// @brief Checks the laws of `BackpropRule` for `rule` (see the concept): a finite result of
/// `masked`'s shape with the arguments unchanged; `is_standard` only for a rule that returns
/// `masked`; `igrad::gradient<R>` through a ReLU and a ReLU6 site equal to the rule applied to
/// `1[site active] · δv` and `δv`; and ordinary gradients of the same graph before and after
/// the call standard, with no hook left on the graph.
template <BackpropRule R>
ConformanceReport check_backprop_rule(const R& rule = R(), const ConformanceOptions& options = {}) {
  detail::LawBook book(R::name);
  const auto u = detail::random_normal({4, 6}, options.seed()) * 3.0;  // both sides of 0 and 6
  const auto upstream = detail::random_normal({4, 6}, options.seed() + 1);
  const auto relu_mask = (u > 0).to(torch::kDouble);
  const auto relu6_mask = ((u > 0) & (u < 6)).to(torch::kDouble);

  book.run("shape and arguments", [&] {
    const auto masked = relu_mask * upstream;
    const auto masked_copy = masked.clone(), upstream_copy = upstream.clone();
    torch::Tensor result = rule(masked, upstream);
    book.expect(result.defined() && result.sizes() == masked.sizes(),
                igrad::detail::format(
                    "it returned shape {} for masked gradients of shape {}; expected "
                    "the same shape",
                    igrad::detail::shape_string(result), igrad::detail::shape_string(masked)));
    book.expect(result.defined() && igrad::detail::all_finite(result),
                "it returned non-finite values for finite gradients");
    book.expect(torch::equal(masked, masked_copy) && torch::equal(upstream, upstream_copy),
                "it changed an argument in place; expected masked and upstream unchanged (the "
                "autograd engine still holds them)");
    if constexpr (R::is_standard) {
      book.expect(detail::close(result, masked, options),
                  "is_standard is true but the rule changes the gradient; expected "
                  "is_standard = true only for a rule that returns masked unchanged (igrad "
                  "attaches nothing for such a rule)");
    }
  });
  const auto site_law = [&](bool relu6) {
    const auto input = u.clone().requires_grad_(true);
    const auto v = relu6 ? torch::hardtanh(input, 0.0, 6.0) : torch::relu(input);
    const auto y = (v * upstream).sum();
    const auto mask = relu6 ? relu6_mask : relu_mask;
    const auto ordinary = mask * upstream;
    const auto before = torch::autograd::grad({y}, {input}, {}, /*retain_graph=*/true)[0];
    const auto ruled = igrad::gradient<R>({y}, {input}, {}, /*retain_graph=*/true, false, rule)[0];
    const auto after = torch::autograd::grad({y}, {input}, {}, /*retain_graph=*/true)[0];
    torch::Tensor expected = rule(ordinary, upstream);
    const char* site = relu6 ? "ReLU6" : "ReLU";
    book.expect(
        detail::close(ruled, expected, options),
        igrad::detail::format("igrad::gradient<{}> through a {} site differs from the rule applied "
                              "to (1[site active]·δv, δv); expected them equal",
                              R::name, site));
    book.expect(
        detail::close(before, ordinary, options) && detail::close(after, ordinary, options),
        igrad::detail::format("an ordinary gradient of the same {} graph, before or after "
                              "igrad::gradient<{}>, is not standard; expected the rule to act "
                              "inside its call only",
                              site, R::name));
    bool hooks_left = false;
    for (auto* node : igrad::detail::find_rectifier_nodes({y}))
      hooks_left = hooks_left || !node->post_hooks().empty();
    book.expect(!hooks_left,
                igrad::detail::format("a hook stayed on the {} graph after the call", site));
  };
  book.run("ReLU site", [&] { site_law(false); });
  book.run("ReLU6 site", [&] { site_law(true); });
  return book.take();
}

/// @brief Checks the laws of `FeatureClassifier` for a model with a split: `features(x)` is a
/// 4-D feature map `[N, K, h, w]` and `head(features(x)) == forward(x)` (in evaluation mode).
inline ConformanceReport check_feature_split(const AnyModel& model, const torch::Tensor& x,
                                             const ConformanceOptions& options = {}) {
  detail::LawBook book("model");
  book.expect(model.has_feature_split(), "the model has no features/head split");
  if (!model.has_feature_split()) return book.take();
  book.run("features and head", [&] {
    detail::ModelGuard guard(model);
    TrainingModeGuard evaluation(model, false);
    torch::NoGradGuard no_grad;
    const auto input = x.to(model.device(), model.dtype());
    const auto a = model.features(input);
    book.expect(
        a.dim() == 4 && a.size(0) == input.size(0),
        igrad::detail::format("features(x) has shape {} for an input of shape {}; expected a "
                              "feature map [N, K, h, w]",
                              igrad::detail::shape_string(a), igrad::detail::shape_string(input)));
    book.expect(detail::close(model.forward(input), model.head(a), options),
                "head(features(x)) differs from forward(x); expected forward = head ∘ features");
  });
  return book.take();
}

/// @brief Checks the laws of `CamMethod` for `method` on `model` and images `x` `[N, C, H, W]`
/// (N ≥ 2; the predicted classes are the targets): the raw map `[N, h, w]`, finite; `explain`'s
/// maps `[N, H, W]` in [0, 1]; a batch equal to its images one by one; the same maps twice; no
/// parameter, `.grad`, buffer, input or mode changed. The model is put in training mode during
/// the check (so that a method that forgot evaluation mode changes the batch-norm statistics) and
/// restored after.
template <CamMethod C>
ConformanceReport check_cam_method(const AnyModel& model, const torch::Tensor& x,
                                   const ConformanceOptions& options = {},
                                   const CamOptions& cam_options = {}, const C& method = C()) {
  detail::LawBook book(C::name);
  const int64_t n = x.size(0);
  detail::ModelGuard guard(model);
  model.train(true);
  const auto input_copy = x.clone();
  book.run("raw map [N, h, w]", [&] {
    torch::Tensor raw;
    {
      TrainingModeGuard evaluation(model, false);
      const auto batch = igrad::detail::prepare_batch(model, x, {}, true, C::name, true);
      const CamRequest request{model, batch.input, batch.targets, cam_options, batch.activations};
      raw = method(request);
    }
    book.expect(raw.defined() && raw.dim() == 3 && raw.size(0) == n,
                igrad::detail::format("it returned a map of shape {}; expected [{}, h, w]",
                                      igrad::detail::shape_string(raw), n));
    book.expect(raw.defined() && igrad::detail::all_finite(raw), "it returned a non-finite map");
    guard.check(book, "calling it");
  });
  book.run("explain", [&] {
    const auto maps = explain<C>(model, x, {}, cam_options, method);
    book.expect(maps.dim() == 3 && maps.size(0) == n && maps.size(1) == x.size(2) &&
                    maps.size(2) == x.size(3),
                igrad::detail::format("explain returned shape {}; expected [{}, {}, {}]",
                                      igrad::detail::shape_string(maps), n, x.size(2), x.size(3)));
    book.expect(maps.min().template item<double>() >= 0 && maps.max().template item<double>() <= 1,
                "explain returned values outside [0, 1]");
    guard.check(book, "explain");
  });
  detail::check_deterministic_and_batch_independent(
      book, guard, model, x, options,
      "two calls on the same batch gave different maps; expected the same maps (draw noise from "
      "CamOptions::seed or generator)",
      "the maps of a batch differ from those of its images one by one; expected each image's map "
      "to depend on that image only",
      "explain_raw",
      [&](const torch::Tensor& inputs, const torch::Tensor& targets) {
        return explain_raw<C>(model, inputs, targets, cam_options, method);
      });
  book.expect(torch::equal(x, input_copy), "the input batch changed; expected it untouched");
  return book.take();
}

/// @brief Checks the laws of `SaliencyMethod` for `method` on `model` and inputs `x` `[N, ...]`
/// (N ≥ 2; the predicted classes are the targets): finite input-shaped attributions; a batch
/// equal to its inputs one by one; the same result twice; no parameter, `.grad`, buffer, input
/// or mode changed (the model is in training mode during the check and restored after).
template <SaliencyMethod S>
ConformanceReport check_saliency_method(const AnyModel& model, const torch::Tensor& x,
                                        const ConformanceOptions& options = {},
                                        const SaliencyOptions& saliency_options = {},
                                        const S& method = S()) {
  detail::LawBook book(S::name);
  detail::ModelGuard guard(model);
  model.train(true);
  const auto input_copy = x.clone();
  book.run("input-shaped attributions", [&] {
    torch::Tensor result;
    {
      TrainingModeGuard evaluation(model, false);
      const auto batch = igrad::detail::prepare_batch(model, x, {}, false, S::name);
      const SaliencyRequest request{model, batch.input, batch.targets, saliency_options};
      result = method(request);
    }
    book.expect(
        result.defined() && result.sizes() == x.sizes(),
        igrad::detail::format("it returned attributions of shape {}; expected the input's shape {}",
                              igrad::detail::shape_string(result), igrad::detail::shape_string(x)));
    book.expect(result.defined() && igrad::detail::all_finite(result),
                "it returned non-finite attributions");
    guard.check(book, "calling it");
  });
  detail::check_deterministic_and_batch_independent(
      book, guard, model, x, options,
      "two calls on the same batch gave different attributions; expected the same result (draw "
      "noise from SaliencyOptions::seed or generator)",
      "the attributions of a batch differ from those of its inputs one by one; expected each "
      "input's attributions to depend on that input only",
      "attribute",
      [&](const torch::Tensor& inputs, const torch::Tensor& targets) {
        return attribute<S>(model, inputs, targets, saliency_options, method);
      });
  book.expect(torch::equal(x, input_copy), "the input batch changed; expected it untouched");
  return book.take();
}

/// @}
}  // namespace igrad::testing

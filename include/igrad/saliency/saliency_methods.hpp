#pragma once
/// @file saliency/saliency_methods.hpp
/// @brief Input-space saliency (SPEC §4): attributions of the class logit `y^c` to the input
/// pixels, computed with igrad's backprop rules (`input_gradient<R>`), and their reduction to
/// `[N, H, W]` maps.

#include <igrad/cam/cam_method.hpp>
#include <igrad/concepts.hpp>
#include <igrad/rules/input_gradient.hpp>
#include <igrad/saliency/quadrature.hpp>

#include <boost/hana.hpp>
#include <torch/arg.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <concepts>

namespace igrad {

/// @addtogroup saliency_group
/// @{

/// @brief Hyper-parameters of the input-space methods, with chained setters:
/// `SaliencyOptions().steps(200).integration(Integration::riemann_trapezoid)`.
struct SaliencyOptions {
  /// SmoothGrad: number m of noisy copies (SPEC §4: 25).
  TORCH_ARG(int64_t, samples) = 25;
  /// SmoothGrad: noise σ as a fraction of each image's range, `σ = level (max x − min x)`.
  TORCH_ARG(double, noise_level) = 0.15;
  /// SmoothGrad: seed of the noise when no `generator` is given (the global RNG is never used).
  TORCH_ARG(uint64_t, seed) = 0;
  /// SmoothGrad: a CPU generator to draw the noise from instead of `seed` (it advances).
  TORCH_ARG(c10::optional<torch::Generator>, generator) = c10::nullopt;
  /// Integrated gradients: number n of points on the path (captum's default: 50).
  TORCH_ARG(int64_t, steps) = 50;
  /// Integrated gradients: the quadrature rule (captum's default: Gauss–Legendre).
  TORCH_ARG(Integration, integration) = Integration::gauss_legendre;
  /// Integrated gradients: the baseline x_b, input-shaped or broadcastable; zero when undefined.
  TORCH_ARG(torch::Tensor, baseline) = {};
  /// Most inputs per forward pass (integrated gradients batches its path points, SmoothGrad its
  /// noisy copies, up to this many images at once).
  TORCH_ARG(int64_t, batch_size) = 64;
};

/// @brief What an input-space method receives: the model in evaluation mode, the batch on the
/// model's device and dtype (detached), one target per sample, and the options.
struct SaliencyRequest {
  AnyModel model;           ///< the model, in evaluation mode for the call
  torch::Tensor input;      ///< x `[N, ...]`, detached, on the model's device and dtype
  torch::Tensor targets;    ///< class indices `[N]` (long), on the model's device
  SaliencyOptions options;  ///< the caller's options
};

/// @brief `∂y^c/∂x` of each sample's target logit at `x` (the request's targets), under backprop
/// rule `R` — `input_gradient<R>` with `GradientOf::target_logit`, detached.
template <BackpropRule R>
torch::Tensor target_input_gradient(const SaliencyRequest& request, const torch::Tensor& x,
                                    const torch::Tensor& targets = {}) {
  return input_gradient<R>(request.model, x, targets.defined() ? targets : request.targets,
                           InputGradientOptions().of(GradientOf::target_logit))
      .detach();
}

/// @brief The gradient of the class logit, `∂y^c/∂x` (Simonyan et al. 2014).
struct Gradient {
  static constexpr const char* name = "Gradient";  ///< display name
  /// @brief Input-shaped attributions.
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return target_input_gradient<StandardReLU>(request, request.input);
  }
};

/// @brief Guided backpropagation (Springenberg et al. 2015): `∂_G y^c/∂x` with `GuidedReLU` at
/// every rectifier site. `GraphError` for a model without rectifiers.
struct GuidedBackprop {
  static constexpr const char* name = "Guided Backprop";  ///< display name
  /// @brief Input-shaped attributions.
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return target_input_gradient<GuidedReLU>(request, request.input);
  }
};

/// @brief Deconvnet (Zeiler & Fergus 2014): `DeconvReLU` at every rectifier site.
/// `GraphError` for a model without rectifiers.
struct Deconvnet {
  static constexpr const char* name = "Deconvnet";  ///< display name
  /// @brief Input-shaped attributions.
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return target_input_gradient<DeconvReLU>(request, request.input);
  }
};

/// @brief SmoothGrad (Smilkov et al. 2017): the mean gradient over m noisy copies `x + ε`,
/// `ε ~ N(0, σ²)`, `σ = noise_level · (max x − min x)` per image; defaults m = 25, level 0.15.
/// Noise comes from `SaliencyOptions::generator` or `seed` (drawn on the CPU).
struct SmoothGrad {
  static constexpr const char* name = "SmoothGrad";  ///< display name
  /// @brief Input-shaped attributions.
  torch::Tensor operator()(const SaliencyRequest& request) const {
    const auto& o = request.options;
    detail::require(o.samples() > 0, "SaliencyOptions::samples is {}; expected at least 1",
                    o.samples());
    detail::require(o.noise_level() >= 0 && std::isfinite(o.noise_level()),
                    "SaliencyOptions::noise_level is {}; expected a finite value >= 0",
                    o.noise_level());
    detail::require(o.batch_size() > 0, "SaliencyOptions::batch_size is {}; expected >= 1",
                    o.batch_size());
    const auto& x = request.input;
    const int64_t n = x.size(0);
    auto generator = detail::noise_generator(o.generator(), o.seed());
    const auto flat = x.flatten(1);
    std::vector<int64_t> per_sample(static_cast<size_t>(x.dim()), 1);
    per_sample[0] = n;
    const auto sigma =
        (o.noise_level() * (std::get<0>(flat.max(1)) - std::get<0>(flat.min(1)))).view(per_sample);
    // Copies per forward pass: as many whole noisy batches as batch_size allows (at least one).
    const int64_t copies_per_pass = std::max<int64_t>(1, o.batch_size() / n);
    auto total = torch::zeros_like(x);
    for (int64_t start = 0; start < o.samples(); start += copies_per_pass) {
      const int64_t copies = std::min(copies_per_pass, o.samples() - start);
      std::vector<int64_t> repeat(static_cast<size_t>(x.dim()), 1);
      repeat[0] = copies;
      std::vector<int64_t> noise_shape(x.sizes().begin(), x.sizes().end());
      noise_shape[0] = copies * n;
      const auto noisy = x.repeat(repeat) + sigma.repeat(repeat) *
                                                detail::standard_normal(generator, noise_shape, x);
      const auto g = target_input_gradient<StandardReLU>(request, noisy,
                                                         request.targets.repeat({copies}));
      auto copies_shape = x.sizes().vec();
      copies_shape.insert(copies_shape.begin(), copies);
      total += g.view(copies_shape).sum(0);
    }
    return total / static_cast<double>(o.samples());
  }
};

/// @brief Integrated gradients (Sundararajan et al. 2017):
/// \f[ \mathrm{IG}(x) = (x - x_b) \odot \int_0^1 \frac{\partial y^c}{\partial x}
///     \big(x_b + t (x - x_b)\big)\, dt \approx (x - x_b) \odot \sum_j w_j\, \nabla y^c(x_b + t_j (x - x_b)), \f]
/// zero baseline by default, n = 50 Gauss–Legendre nodes on [0, 1] by default (as captum);
/// Riemann and trapezoid rules through `SaliencyOptions::integration`. Completeness:
/// `Σ IG ≈ y^c(x) − y^c(x_b)`. Path points are batched by `SaliencyOptions::batch_size`.
struct IntegratedGradients {
  static constexpr const char* name = "Integrated Gradients";  ///< display name
  /// @brief Input-shaped attributions.
  torch::Tensor operator()(const SaliencyRequest& request) const {
    const auto& o = request.options;
    detail::require(o.batch_size() > 0, "SaliencyOptions::batch_size is {}; expected >= 1",
                    o.batch_size());
    const auto& x = request.input;
    const int64_t n = x.size(0);
    const auto baseline = o.baseline().defined()
                              ? o.baseline().to(x.device(), x.scalar_type()).expand_as(x)
                              : torch::zeros_like(x);
    const auto rule = quadrature_rule(o.integration(), o.steps());
    const auto delta = x - baseline;
    const int64_t points = static_cast<int64_t>(rule.nodes.size());
    const int64_t points_per_pass = std::max<int64_t>(1, o.batch_size() / n);
    auto integral = torch::zeros_like(x);
    std::vector<int64_t> point_shape(static_cast<size_t>(x.dim()) + 1, 1);
    point_shape[0] = -1;
    for (int64_t start = 0; start < points; start += points_per_pass) {
      const int64_t end = std::min(points, start + points_per_pass);
      const std::vector<double> t(rule.nodes.begin() + start, rule.nodes.begin() + end);
      const std::vector<double> w(rule.weights.begin() + start, rule.weights.begin() + end);
      const auto ts = torch::tensor(t, torch::dtype(torch::kDouble))
                          .to(x.device(), x.scalar_type()).view(point_shape);
      const auto ws = torch::tensor(w, torch::dtype(torch::kDouble))
                          .to(x.device(), x.scalar_type()).view(point_shape);
      const auto path = (baseline.unsqueeze(0) + ts * delta.unsqueeze(0)).flatten(0, 1);
      const auto g = target_input_gradient<StandardReLU>(request, path,
                                                         request.targets.repeat({end - start}));
      auto path_shape = x.sizes().vec();
      path_shape.insert(path_shape.begin(), end - start);
      integral += (ws * g.view(path_shape)).sum(0);
    }
    return delta * integral;
  }
};

namespace detail {

/// Checks and prepares a saliency call; the model must already be in evaluation mode.
template <class S>
torch::Tensor run_saliency(const AnyModel& model, const torch::Tensor& x,
                           const torch::Tensor& targets, const SaliencyOptions& options,
                           const S& method) {
  const auto batch = prepare_batch(model, x, targets, /*require_image=*/false, S::name);
  const SaliencyRequest request{model, batch.input, batch.targets, options};
  torch::Tensor result = method(request);
  require<GraphError>(result.defined() && result.sizes() == batch.input.sizes(),
                      "{} returned attributions of shape {}; expected the input's shape {}",
                      S::name, shape_string(result), shape_string(batch.input));
  return result.detach().to(x.device(), x.scalar_type());
}

}  // namespace detail

/// @brief Input-shaped attributions of method `S` for a batch, on the input's device and dtype.
///
/// `targets` are `[N]` class indices (the predictions when undefined); the score is the target
/// logit. The model runs in evaluation mode for the call and returns to its previous mode; the
/// parameters' `.grad` are not touched. Throws `InvalidArgument` for malformed input or targets
/// out of range, `GraphError` when a guided / deconvnet rule finds no rectifier.
template <SaliencyMethod S>
torch::Tensor attribute(const AnyModel& model, const torch::Tensor& x,
                        const torch::Tensor& targets = {}, const SaliencyOptions& options = {},
                        const S& method = S()) {
  TrainingModeGuard evaluation(model, false);
  return detail::run_saliency(model, x, targets, options, method);
}

/// @brief Reduces attributions `[N, C, H, W]` to maps `[N, H, W]` in [0, 1] for pictures and
/// metrics: the largest absolute value over the channels, then per-image min–max
/// `(m − min)/(max − min + 1e-7)` (an all-zero attribution gives an all-zero map).
inline torch::Tensor saliency_map(const torch::Tensor& attributions) {
  detail::require(attributions.defined() && attributions.dim() == 4,
                  "attributions have shape {}; expected [N, C, H, W]",
                  detail::shape_string(attributions));
  return detail::min_max_per_sample(attributions.detach().abs().amax(1));
}

/// @brief Saliency maps `[N, H, W]` in [0, 1] of input-space method `S`:
/// `saliency_map(attribute<S>(model, x, targets, options))`, so input-space methods and CAM
/// methods share one calling convention. `x` must be `[N, C, H, W]`.
template <SaliencyMethod S>
torch::Tensor explain(const AnyModel& model, const torch::Tensor& x,
                      const torch::Tensor& targets = {}, const SaliencyOptions& options = {},
                      const S& method = S()) {
  detail::require(x.defined() && x.dim() == 4, "{}: input has shape {}; expected [N, C, H, W]",
                  S::name, detail::shape_string(x));
  return saliency_map(attribute<S>(model, x, targets, options, method));
}

/// @brief The five input-space methods igrad ships, as a Hana type list.
inline constexpr auto all_saliency_methods =
    boost::hana::tuple_t<Gradient, GuidedBackprop, Deconvnet, SmoothGrad, IntegratedGradients>;

/// @}
}  // namespace igrad

#pragma once
/// @file saliency/saliency_methods.hpp
/// @brief Input-space saliency (SPEC §4): attributions of the class logit `y^c` to the input
/// pixels, computed with igrad's backprop rules (`input_gradient<R>`), and their reduction to
/// `[N, H, W]` maps.
///
/// Each method's `operator()` is a template only so that its body is compiled where the method
/// is called (see cam/cam_method.hpp, which explains why).

#include <igrad/concepts.hpp>
#include <igrad/detail/batched_jobs.hpp>
#include <igrad/detail/maps.hpp>
#include <igrad/detail/model_calls.hpp>
#include <igrad/detail/noise.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/detail/torch_errors.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>
#include <igrad/rules/input_gradient.hpp>
#include <igrad/saliency/quadrature.hpp>

#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>
#include <torch/arg.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace igrad {

/// @addtogroup saliency_group
/// @{

/// @brief Hyper-parameters of the input-space methods, with chained setters:
/// `SaliencyOptions().steps(200).integration(Integration::riemann_trapezoid)`.
struct SaliencyOptions {
  /// SmoothGrad, SmoothGradSquared, VarGrad: number m of noisy copies (SPEC §4: 25).
  TORCH_ARG(int64_t, samples) = 25;
  /// SmoothGrad, SmoothGradSquared, VarGrad: noise σ as a fraction of each image's range,
  /// `σ = level (max x − min x)` (captum's `stdevs` is the absolute σ: docs/reference.md).
  TORCH_ARG(double, noise_level) = 0.15;
  /// SmoothGrad and its noise modes: seed of the noise when no `generator` is given (the global RNG is never used).
  TORCH_ARG(uint64_t, seed) = 0;
  /// SmoothGrad and its noise modes: a CPU generator to draw the noise from instead of `seed` (it advances).
  TORCH_ARG(c10::optional<torch::Generator>, generator) = c10::nullopt;
  /// Integrated gradients: number n of points on the path (captum's default: 50).
  TORCH_ARG(int64_t, steps) = 50;
  /// Integrated gradients: the quadrature rule (captum's default: Gauss–Legendre).
  TORCH_ARG(Integration, integration) = Integration::gauss_legendre;
  /// The baseline (reference) x_b of Integrated Gradients, Occlusion, Feature Ablation and
  /// DeepLIFT (and of Gradient SHAP when no `baseline_distribution` is given): input-shaped or
  /// broadcastable (one image, a scalar...); zero when undefined (captum's default).
  TORCH_ARG(torch::Tensor, baseline) = {};
  /// Occlusion: the sliding window's shape, either over every dimension of one input (captum's
  /// `sliding_window_shapes`, e.g. `{1, 4, 4}` for `[C, H, W]`) or, for images `[N, C, H, W]`,
  /// `{h, w}` spanning all channels. igrad's default (captum has none): 4 × 4 over all channels.
  TORCH_ARG(std::vector<int64_t>, occlusion_window) = std::vector<int64_t>{4, 4};
  /// Occlusion: the window's step in each of the window's dimensions (same length as
  /// `occlusion_window`). igrad's default is 2 (half the default window); captum's is 1.
  TORCH_ARG(std::vector<int64_t>, occlusion_strides) = std::vector<int64_t>{2, 2};
  /// Feature Ablation: integer group ids, input-shaped or broadcastable (`[H, W]`, `[1, 1, H, W]`,
  /// `[N, 1, H, W]`...); the pixels sharing an id are ablated together (a superpixel or grid
  /// mask). Undefined: every input element is its own feature (captum's default).
  TORCH_ARG(torch::Tensor, feature_mask) = {};
  /// Gradient SHAP: number of random samples per input (captum's `n_samples`, default 5).
  TORCH_ARG(int64_t, shap_samples) = 5;
  /// Gradient SHAP: absolute standard deviation of the Gaussian noise added to the input
  /// (captum's `stdevs`, default 0: no noise).
  TORCH_ARG(double, shap_stdev) = 0.0;
  /// Gradient SHAP: the distribution of baselines `[B, ...]` (B images of the input's shape), one
  /// drawn uniformly per sample; when undefined, `baseline` (zero by default) is the only one.
  TORCH_ARG(torch::Tensor, baseline_distribution) = {};
  /// DeepLIFT: where `|u − u_ref| <` this at a rectifier site, the multiplier falls back to the
  /// ordinary gradient (captum's `eps`, default 1e-10).
  TORCH_ARG(double, deeplift_eps) = 1e-10;
  /// Most inputs per forward/backward pass: the chunk size. Every method passes at most this
  /// many inputs through the model at once (images, noisy copies of SmoothGrad, path points of
  /// integrated gradients, Gradient SHAP's samples, occluded or ablated copies, DeepLIFT's
  /// input and its reference in two passes), so the autograd graph, and the peak memory, do not grow with the batch; small
  /// batches are filled with several copies or path points per pass. Results do not depend on it
  /// beyond floating-point rounding (SmoothGrad's noise is drawn one whole-batch copy at a time
  /// whatever the chunk).
  TORCH_ARG(int64_t, batch_size) = 64;
  /// Called as `progress(done, total)` after each pass, counting the inputs passed through the
  /// model: N for the gradient methods, N · samples for SmoothGrad and its noise modes, N · steps
  /// for integrated gradients, N · shap_samples for Gradient SHAP, N plus one per window or
  /// group and image for Occlusion and Feature Ablation.
  TORCH_ARG(std::function<void(int64_t, int64_t)>, progress) = nullptr;
};

/// @brief What an input-space method receives: the model in evaluation mode, the batch on the
/// model's device and dtype (detached), one target per sample, and the options.
struct SaliencyRequest {
  AnyModel model;           ///< the model, in evaluation mode for the call
  torch::Tensor input;      ///< x `[N, ...]`, detached, on the model's device and dtype
  torch::Tensor targets;    ///< class indices `[N]` (long), on the model's device
  SaliencyOptions options;  ///< the caller's options
};

namespace detail {

/// Counts the inputs a saliency call has differentiated and tells `SaliencyOptions::progress`.
class SaliencyProgress {
 public:
  SaliencyProgress(const SaliencyOptions& options, int64_t total)
      : report_(options.progress()), total_(total) {}
  /// Records `inputs` more differentiated inputs.
  void advance(int64_t inputs) {
    done_ += inputs;
    if (report_) report_(done_, total_);
  }

 private:
  std::function<void(int64_t, int64_t)> report_;
  int64_t total_ = 0;
  int64_t done_ = 0;
};

/// Checks `SaliencyOptions::batch_size`.
inline int64_t saliency_chunk(const SaliencyOptions& options) {
  require(options.batch_size() > 0, "SaliencyOptions::batch_size is {}; expected >= 1",
          options.batch_size());
  return options.batch_size();
}

/// `∂y^c/∂x` under rule `R` of `inputs` `[M, ...]` for `targets` `[M]`, `chunk` rows per
/// backward pass (each row's gradient depends on that row alone in eval mode), detached;
/// `progress` (may be null) advances after each pass.
template <BackpropRule R>
torch::Tensor chunked_target_gradient(const AnyModel& model, const torch::Tensor& inputs,
                                      const torch::Tensor& targets, int64_t chunk,
                                      SaliencyProgress* progress) {
  const int64_t rows = inputs.size(0);
  const auto options = InputGradientOptions().of(GradientOf::target_logit);
  if (rows <= chunk) {
    auto g = input_gradient<R>(model, inputs, targets, options).detach();
    if (progress != nullptr) progress->advance(rows);
    return g;
  }
  auto result = torch::empty_like(inputs);
  for_each_batch(rows, chunk, "SaliencyOptions::batch_size", [&](int64_t start, int64_t end) {
    result.slice(0, start, end)
        .copy_(input_gradient<R>(model, inputs.slice(0, start, end), targets.slice(0, start, end),
                                 options));
    if (progress != nullptr) progress->advance(end - start);
  });
  return result;
}

/// The attributions of the gradient-type methods (Gradient, Guided Backprop, Deconvnet): `∂y^c/∂x`
/// under rule `R`, `SaliencyOptions::batch_size` inputs per pass, each pass reported.
template <BackpropRule R>
torch::Tensor rule_attributions(const SaliencyRequest& request) {
  SaliencyProgress progress(request.options, request.input.size(0));
  return chunked_target_gradient<R>(request.model, request.input, request.targets,
                                    saliency_chunk(request.options), &progress);
}

}  // namespace detail

/// @brief `∂y^c/∂x` of each sample's target logit at `x` (the request's targets), under backprop
/// rule `R` — `input_gradient<R>` with `GradientOf::target_logit`, detached, computed
/// `SaliencyOptions::batch_size` samples at a time so that its memory stays bounded.
template <BackpropRule R>
torch::Tensor target_input_gradient(const SaliencyRequest& request, const torch::Tensor& x,
                                    const torch::Tensor& targets = {}) {
  return detail::chunked_target_gradient<R>(request.model, x,
                                            targets.defined() ? targets : request.targets,
                                            detail::saliency_chunk(request.options), nullptr);
}

/// @brief The gradient of the class logit, `∂y^c/∂x` (Simonyan et al. 2014).
struct Gradient {
  static constexpr const char* name = "Gradient";  ///< display name
  /// @brief Input-shaped attributions.
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return detail::rule_attributions<StandardReLU>(request);
  }
};

/// @brief Guided backpropagation (Springenberg et al. 2015): `∂_G y^c/∂x` with `GuidedReLU` at
/// every rectifier site. `GraphError` for a model without rectifiers.
struct GuidedBackprop {
  static constexpr const char* name = "Guided Backprop";  ///< display name
  /// @brief Input-shaped attributions.
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return detail::rule_attributions<GuidedReLU>(request);
  }
};

/// @brief Deconvnet (Zeiler & Fergus 2014): `DeconvReLU` at every rectifier site.
/// `GraphError` for a model without rectifiers.
struct Deconvnet {
  static constexpr const char* name = "Deconvnet";  ///< display name
  /// @brief Input-shaped attributions.
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return detail::rule_attributions<DeconvReLU>(request);
  }
};

/// @brief Input × Gradient (Shrikumar et al. 2016; captum's `InputXGradient`): `x ⊙ ∂y^c/∂x`,
/// the gradient of the class logit weighted by the input, element by element.
struct InputXGradient {
  static constexpr const char* name = "Input x Gradient";  ///< display name
  /// @brief Input-shaped attributions.
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    detail::SaliencyProgress progress(request.options, request.input.size(0));
    return request.input *
           detail::chunked_target_gradient<StandardReLU>(request.model, request.input,
                                                         request.targets,
                                                         detail::saliency_chunk(request.options),
                                                         &progress);
  }
};

namespace detail {

/// The first two raw moments over the noisy copies of the gradients, `(1/m) Σ_k g_k` and
/// `(1/m) Σ_k g_k²`, from which SmoothGrad, SmoothGrad² and VarGrad are formed.
struct NoisyGradientMoments {
  torch::Tensor mean;          ///< `(1/m) Σ_k g_k`, input-shaped
  torch::Tensor mean_squares;  ///< `(1/m) Σ_k g_k²`, input-shaped; undefined unless asked for
};

/// The gradients `g_k = ∂y^c/∂x (x + ε_k)` over m = `samples` noisy copies of the batch,
/// `ε_k ~ N(0, σ²)`, `σ = noise_level · (max x − min x)` per image, averaged (and their squares
/// when `squares`). The noise is drawn on the CPU, one whole-batch input-shaped draw per copy in
/// copy order, so that it does not depend on the chunk size; images are then differentiated
/// `batch_size` at a time, with as many noisy copies per pass as fit when the batch is smaller
/// than a chunk. `method` names the caller in error messages.
inline NoisyGradientMoments noisy_gradient_moments(const SaliencyRequest& request,
                                                   const char* method, bool squares) {
  const auto& o = request.options;
  require(o.samples() > 0, "{}: SaliencyOptions::samples is {}; expected at least 1", method,
          o.samples());
  const auto& x = request.input;
  const auto sigma = noise_scale(x, o.noise_level(),
                                 igrad::detail::format("{}: SaliencyOptions::noise_level", method));
  const int64_t chunk = saliency_chunk(o);
  const int64_t n = x.size(0);
  auto generator = noise_generator(o.generator(), o.seed());
  const int64_t images_per_pass = std::min(n, chunk);
  const int64_t copies_per_pass = std::max<int64_t>(1, chunk / images_per_pass);
  SaliencyProgress progress(o, n * o.samples());
  auto total = torch::zeros_like(x);
  auto total_squares = squares ? torch::zeros_like(x) : torch::Tensor();
  for (int64_t first_copy = 0; first_copy < o.samples(); first_copy += copies_per_pass) {
    const int64_t copies = std::min(copies_per_pass, o.samples() - first_copy);
    std::vector<torch::Tensor> noise;
    for (int64_t c = 0; c < copies; ++c) {
      noise.push_back(standard_normal(generator, x.sizes(), x));
    }
    for (int64_t start = 0; start < n; start += images_per_pass) {
      const int64_t end = std::min(n, start + images_per_pass);
      const auto images = x.slice(0, start, end);
      const auto scale = sigma.slice(0, start, end);
      std::vector<torch::Tensor> noisy;
      for (const auto& e : noise) noisy.push_back(images + scale * e.slice(0, start, end));
      const auto g = chunked_target_gradient<StandardReLU>(
          request.model, torch::cat(noisy, 0), request.targets.slice(0, start, end).repeat({copies}),
          chunk, &progress);
      auto copies_shape = images.sizes().vec();
      copies_shape.insert(copies_shape.begin(), copies);
      const auto per_copy = g.view(copies_shape);
      total.slice(0, start, end).add_(per_copy.sum(0));
      if (squares) total_squares.slice(0, start, end).add_(per_copy.square().sum(0));
    }
  }
  const auto m = static_cast<double>(o.samples());
  return {total / m, squares ? total_squares / m : torch::Tensor()};
}

}  // namespace detail

/// @brief SmoothGrad (Smilkov et al. 2017): the mean gradient over m noisy copies `x + ε`,
/// `ε ~ N(0, σ²)`, `σ = noise_level · (max x − min x)` per image; defaults m = 25, level 0.15.
/// Noise comes from `SaliencyOptions::generator` or `seed` (drawn on the CPU, one input-shaped
/// draw per copy, so it does not depend on `batch_size`).
struct SmoothGrad {
  static constexpr const char* name = "SmoothGrad";  ///< display name
  /// @brief Input-shaped attributions.
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return detail::noisy_gradient_moments(request, name, /*squares=*/false).mean;
  }
};

/// @brief SmoothGrad² (Hooker et al. 2019; captum `NoiseTunnel` `nt_type="smoothgrad_sq"`): the
/// mean squared gradient over m noisy copies, `(1/m) Σ_k (∂y^c/∂x (x + ε_k))²`. Same noise,
/// options (`samples`, `noise_level`, `seed`, `generator`) and draws as `SmoothGrad`, so with the
/// same options its copies are SmoothGrad's copies.
struct SmoothGradSquared {
  static constexpr const char* name = "SmoothGrad Squared";  ///< display name
  /// @brief Input-shaped attributions (non-negative).
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return detail::noisy_gradient_moments(request, name, /*squares=*/true).mean_squares;
  }
};

/// @brief VarGrad (Adebayo et al. 2018; captum `NoiseTunnel` `nt_type="vargrad"`): the variance
/// of the gradient over m noisy copies, `(1/m) Σ_k g_k² − ((1/m) Σ_k g_k)²` (the population
/// variance, divisor m, as captum), clamped at 0 against rounding. Same noise and options as
/// `SmoothGrad`.
struct VarGrad {
  static constexpr const char* name = "VarGrad";  ///< display name
  /// @brief Input-shaped attributions (non-negative).
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    const auto moments = detail::noisy_gradient_moments(request, name, /*squares=*/true);
    return (moments.mean_squares - moments.mean.square()).clamp_min(0);
  }
};

namespace detail {

/// Whether `t` broadcasts to `x`'s shape (trailing dimensions equal or 1, no more dimensions).
inline bool broadcasts_to(const torch::Tensor& t, const torch::Tensor& x) {
  bool broadcasts = t.dim() <= x.dim();
  for (int64_t i = 1; broadcasts && i <= t.dim(); ++i) {
    const int64_t size = t.size(t.dim() - i);
    broadcasts = size == 1 || size == x.size(x.dim() - i);
  }
  return broadcasts;
}

/// A baseline for `x`: zero when undefined, else `baseline` checked (real, finite, broadcastable
/// to `x`) and expanded to `x`'s shape, device and dtype. `method` and `option` name the caller
/// and the setting in error messages.
inline torch::Tensor checked_baseline(const torch::Tensor& baseline, const torch::Tensor& x,
                                      std::string_view method,
                                      std::string_view option = "SaliencyOptions::baseline") {
  if (!baseline.defined()) return torch::zeros_like(x);
  const bool broadcasts = broadcasts_to(baseline, x);
  std::vector<int64_t> one_image = x.sizes().vec();
  one_image[0] = 1;
  require(broadcasts,
          "{}: the baseline ({}) has shape {}, which does not broadcast to the input's shape {}; "
          "expected that shape, one image {} or any shape that broadcasts to it",
          method, option, shape_string(baseline), shape_string(x),
          shape_string(torch::empty(one_image)));
  require(!baseline.is_complex(), "{}: the baseline ({}) has dtype {}; expected a real tensor",
          method, option, std::string(c10::toString(baseline.scalar_type())));
  require_finite(baseline, igrad::detail::format("the {} baseline ({})", method, option));
  return baseline.to(x.device(), x.scalar_type()).expand_as(x);
}

/// The integrated-gradients baseline for `x` (`checked_baseline` under that method's name).
inline torch::Tensor integration_baseline(const torch::Tensor& baseline, const torch::Tensor& x) {
  return checked_baseline(baseline, x, "Integrated Gradients");
}

}  // namespace detail

/// @brief Integrated gradients (Sundararajan et al. 2017):
/// \f[ \mathrm{IG}(x) = (x - x_b) \odot \int_0^1 \frac{\partial y^c}{\partial x}
///     \big(x_b + t (x - x_b)\big)\, dt \approx (x - x_b) \odot \sum_j w_j\, \nabla y^c(x_b + t_j (x - x_b)), \f]
/// zero baseline by default, n = 50 Gauss–Legendre nodes on [0, 1] by default (as captum);
/// Riemann and trapezoid rules through `SaliencyOptions::integration`. Completeness:
/// `Σ IG ≈ y^c(x) − y^c(x_b)`. At most `SaliencyOptions::batch_size` path points go through the
/// model at once. The baseline must be finite and broadcast to the input (`[N, C, H, W]`,
/// `[C, H, W]`, `[1, C, H, W]`, a scalar...); `InvalidArgument` says so otherwise.
struct IntegratedGradients {
  static constexpr const char* name = "Integrated Gradients";  ///< display name
  /// @brief Input-shaped attributions.
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    const auto& o = request.options;
    const int64_t chunk = detail::saliency_chunk(o);
    const auto& x = request.input;
    const int64_t n = x.size(0);
    const auto baseline = detail::integration_baseline(o.baseline(), x);
    const auto rule = quadrature_rule(o.integration(), o.steps());
    const auto delta = x - baseline;
    const int64_t points = static_cast<int64_t>(rule.nodes.size());
    // Images `chunk` at a time, with as many path points per pass as fit in a chunk.
    const int64_t images_per_pass = std::min(n, chunk);
    const int64_t points_per_pass = std::max<int64_t>(1, chunk / images_per_pass);
    detail::SaliencyProgress progress(o, n * points);
    auto integral = torch::zeros_like(x);
    std::vector<int64_t> point_shape(static_cast<size_t>(x.dim()) + 1, 1);
    point_shape[0] = -1;
    for (int64_t first = 0; first < points; first += points_per_pass) {
      const int64_t last = std::min(points, first + points_per_pass);
      const std::vector<double> t(rule.nodes.begin() + first, rule.nodes.begin() + last);
      const std::vector<double> w(rule.weights.begin() + first, rule.weights.begin() + last);
      const auto ts = torch::tensor(t, torch::dtype(torch::kDouble))
                          .to(x.device(), x.scalar_type()).view(point_shape);
      const auto ws = torch::tensor(w, torch::dtype(torch::kDouble))
                          .to(x.device(), x.scalar_type()).view(point_shape);
      for (int64_t start = 0; start < n; start += images_per_pass) {
        const int64_t end = std::min(n, start + images_per_pass);
        const auto from = baseline.slice(0, start, end);
        const auto path = (from.unsqueeze(0) + ts * delta.slice(0, start, end).unsqueeze(0))
                              .flatten(0, 1);
        const auto g = detail::chunked_target_gradient<StandardReLU>(
            request.model, path, request.targets.slice(0, start, end).repeat({last - first}),
            chunk, &progress);
        auto path_shape = from.sizes().vec();
        path_shape.insert(path_shape.begin(), last - first);
        integral.slice(0, start, end).add_((ws * g.view(path_shape)).sum(0));
      }
    }
    return delta * integral;
  }
};

namespace detail {

/// The target logits `y^c` of `inputs` `[M, ...]` for `targets` `[M]`, without a graph, `chunk`
/// rows per forward pass; `progress` (may be null) advances after each pass.
inline torch::Tensor chunked_target_scores(const AnyModel& model, const torch::Tensor& inputs,
                                           const torch::Tensor& targets, int64_t chunk,
                                           SaliencyProgress* progress) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for_each_batch(inputs.size(0), chunk, "SaliencyOptions::batch_size", [&](int64_t start, int64_t end) {
    parts.push_back(gather_targets(checked_forward(model, inputs.slice(0, start, end)),
                                   targets.slice(0, start, end)));
    if (progress != nullptr) progress->advance(end - start);
  });
  return torch::cat(parts, 0);
}

/// The perturbations of one image: `count` masks of the image's shape (1 where the baseline
/// replaces the input, else 0), built `[first, last)` at a time so that only one chunk's masks
/// exist at once.
struct PerturbationSet {
  int64_t count = 0;                                                ///< number of masks
  std::function<torch::Tensor(int64_t first, int64_t last)> masks;  ///< `[last − first, ...]`
};

/// What a perturbation method accumulates per image: `total = Σ_j d_j m_j` and
/// `weights = Σ_j m_j`, both input-shaped.
struct PerturbationSums {
  torch::Tensor total;    ///< the output drops summed onto the masked elements
  torch::Tensor weights;  ///< how many masks covered each element
};

/// The engine of Occlusion and Feature Ablation (captum's `FeatureAblation` loop): for each image
/// i and each of its masks m_j, the drop of the target logit when the masked elements take the
/// baseline's values, `d_ij = y^c(x_i) − y^c(x_i + m_j ⊙ (b_i − x_i))`, summed onto the masked
/// elements. Perturbed inputs of consecutive images share forward passes of at most
/// `SaliencyOptions::batch_size` rows; `progress` counts the forwarded inputs (N originals plus
/// every perturbed one).
template <class MasksOf>
PerturbationSums perturbation_sums(const SaliencyRequest& request, const torch::Tensor& baseline,
                                   MasksOf&& masks_of) {
  const auto& x = request.input;
  const int64_t n = x.size(0);
  const int64_t chunk = saliency_chunk(request.options);
  std::vector<PerturbationSet> sets;
  int64_t perturbed = 0;
  for (int64_t i = 0; i < n; ++i) {
    sets.push_back(masks_of(i));
    perturbed += sets.back().count;
  }
  SaliencyProgress progress(request.options, n + perturbed);
  const auto original =
      chunked_target_scores(request.model, x, request.targets, chunk, &progress);
  PerturbationSums sums{torch::zeros_like(x), torch::zeros_like(x)};
  struct Piece {
    int64_t image;
    torch::Tensor masks;  // [k, ...image shape], x's device and dtype
  };
  std::vector<Piece> pending;
  int64_t filled = 0;
  const auto flush = [&] {
    if (pending.empty()) return;
    std::vector<torch::Tensor> inputs, targets;
    for (const auto& piece : pending) {
      const auto image = x[piece.image], reference = baseline[piece.image];
      inputs.push_back(image + piece.masks * (reference - image));
      targets.push_back(request.targets.slice(0, piece.image, piece.image + 1)
                            .expand({piece.masks.size(0)}));
    }
    torch::Tensor scores;
    {
      torch::NoGradGuard no_grad;
      scores = gather_targets(checked_forward(request.model, torch::cat(inputs, 0)),
                              torch::cat(targets, 0));
    }
    progress.advance(filled);
    int64_t offset = 0;
    for (const auto& piece : pending) {
      const int64_t k = piece.masks.size(0);
      std::vector<int64_t> drop_shape(static_cast<size_t>(x.dim()), 1);
      drop_shape[0] = k;
      const auto drop = (original[piece.image] - scores.slice(0, offset, offset + k))
                            .view(drop_shape);
      sums.total[piece.image].add_((drop * piece.masks).sum(0));
      sums.weights[piece.image].add_(piece.masks.sum(0));
      offset += k;
    }
    pending.clear();
    filled = 0;
  };
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t first = 0; first < sets[i].count;) {
      const int64_t take = std::min(sets[i].count - first, chunk - filled);
      pending.push_back({i, sets[i].masks(first, first + take).to(x.device(), x.scalar_type())});
      filled += take;
      first += take;
      if (filled == chunk) flush();
    }
  }
  flush();
  return sums;
}

/// The shape of one input of `x` `[N, ...]`.
inline std::vector<int64_t> one_input_shape(const torch::Tensor& x) {
  return std::vector<int64_t>(x.sizes().begin() + 1, x.sizes().end());
}

}  // namespace detail

/// @brief Occlusion (Zeiler & Fergus 2014; captum's `Occlusion`): a window slides over the input
/// with the given strides; each position is replaced by the baseline, and the drop of the target
/// logit is credited to every element under the window. An element's attribution is the mean
/// drop over the windows that cover it:
/// \f[ a_k = \frac{\sum_j [k \in W_j]\, \big(y^c(x) - y^c(x_{W_j \leftarrow b})\big)}
///                {\sum_j [k \in W_j]}. \f]
/// Window positions as captum: along a dimension of size D with window w and stride s, the
/// window starts at `0, s, 2s, …`, `⌈(D − w)/s⌉ + 1` times, the last one cut at the border, so
/// that every element is covered (s ≤ w is required where w < D). Options:
/// `occlusion_window` (`{h, w}` over all channels, or one size per input dimension as captum),
/// `occlusion_strides`, `baseline` (zero by default), `batch_size` (perturbed inputs per
/// forward). igrad's default window is 4 × 4 with stride 2 (captum: no default window, stride
/// 1). `InvalidArgument` for a window or stride that does not fit the input.
struct Occlusion {
  static constexpr const char* name = "Occlusion";  ///< display name
  /// @brief Input-shaped attributions.
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    const auto& o = request.options;
    const auto& x = request.input;
    const auto shape = detail::one_input_shape(x);
    const auto dims = static_cast<int64_t>(shape.size());
    auto window = o.occlusion_window();
    auto strides = o.occlusion_strides();
    detail::require(window.size() == strides.size(),
                    "Occlusion: SaliencyOptions::occlusion_window has {} sizes and "
                    "occlusion_strides {}; expected one stride per window dimension",
                    window.size(), strides.size());
    if (x.dim() == 4 && window.size() == 2) {  // {h, w}: spanning every channel
      window.insert(window.begin(), x.size(1));
      strides.insert(strides.begin(), 1);
    }
    detail::require(static_cast<int64_t>(window.size()) == dims,
                    "Occlusion: SaliencyOptions::occlusion_window has {} sizes for inputs of shape "
                    "{}; expected {} (one per input dimension){}",
                    window.size(), detail::shape_string(x), dims,
                    x.dim() == 4 ? ", or 2 ({h, w} over all channels)" : "");
    std::vector<int64_t> counts(shape.size());
    int64_t windows = 1;
    for (int64_t d = 0; d < dims; ++d) {
      const auto w = window[d], s = strides[d], size = shape[d];
      detail::require(w >= 1 && w <= size,
                      "Occlusion: the window's size {} in input dimension {} (of size {}); "
                      "expected 1 to {}",
                      w, d + 1, size, size);
      detail::require(s >= 1 && (s <= w || w == size),
                      "Occlusion: the stride {} in input dimension {} with window size {}; "
                      "expected 1 to {} (a larger stride would leave elements uncovered)",
                      s, d + 1, w, w);
      counts[d] = (size - w + s - 1) / s + 1;
      windows *= counts[d];
    }
    const auto masks = [shape, window, strides, counts](int64_t first, int64_t last) {
      std::vector<int64_t> block_shape = shape;
      block_shape.insert(block_shape.begin(), last - first);
      auto block = torch::zeros(block_shape);
      for (int64_t j = first; j < last; ++j) {
        auto view = block[j - first];
        int64_t rest = j;
        for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
          const int64_t start = (rest % counts[d]) * strides[d];
          rest /= counts[d];
          view = view.narrow(d, start, std::min(window[d], shape[d] - start));
        }
        view.fill_(1);
      }
      return block;
    };
    const auto baseline = detail::checked_baseline(o.baseline(), x, name);
    const auto sums = detail::perturbation_sums(request, baseline, [&](int64_t) {
      return detail::PerturbationSet{windows, masks};
    });
    return sums.total / sums.weights;
  }
};

/// @brief Feature Ablation (captum's `FeatureAblation`): the input's elements are grouped by a
/// feature mask; each group in turn is replaced by the baseline, and the drop of the target
/// logit is credited to every element of the group:
/// \f[ a_k = y^c(x) - y^c(x_{G(k) \leftarrow b}), \f]
/// `G(k)` the group of element k. Options: `feature_mask` (integer ids, input-shaped or
/// broadcastable, e.g. `[H, W]` for a superpixel or grid mask shared by every image and channel,
/// or `[N, ...]` one per image; by default every element is its own group, as captum),
/// `baseline` (zero by default), `batch_size` (perturbed inputs per forward). One forward per
/// group and image. `InvalidArgument` for a mask that is not integer or does not broadcast.
struct FeatureAblation {
  static constexpr const char* name = "Feature Ablation";  ///< display name
  /// @brief Input-shaped attributions.
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    const auto& o = request.options;
    const auto& x = request.input;
    torch::Tensor ids;  // [N, ...] long, on the CPU
    if (!o.feature_mask().defined()) {
      ids = torch::arange(x[0].numel(), torch::kLong).view(detail::one_input_shape(x))
                .unsqueeze(0).expand(x.sizes());
    } else {
      const auto& mask = o.feature_mask();
      detail::require(!mask.is_floating_point() && !mask.is_complex() &&
                          mask.scalar_type() != torch::kBool,
                      "Feature Ablation: SaliencyOptions::feature_mask has dtype {}; expected "
                      "integer group ids",
                      std::string(c10::toString(mask.scalar_type())));
      detail::require(detail::broadcasts_to(mask, x),
                      "Feature Ablation: SaliencyOptions::feature_mask has shape {}, which does "
                      "not broadcast to the input's shape {}; expected that shape, one image's, or "
                      "e.g. [H, W] shared by all images and channels",
                      detail::shape_string(mask), detail::shape_string(x));
      ids = mask.to(torch::kCPU, torch::kLong).expand(x.sizes());
    }
    const auto shape = detail::one_input_shape(x);
    const auto baseline = detail::checked_baseline(o.baseline(), x, name);
    const auto sums = detail::perturbation_sums(request, baseline, [&](int64_t i) {
      const auto flat = ids[i].reshape({-1});
      const auto groups = std::get<0>(torch::unique_consecutive(std::get<0>(flat.sort())));
      return detail::PerturbationSet{
          groups.size(0), [flat, groups, shape](int64_t first, int64_t last) {
            auto block_shape = shape;
            block_shape.insert(block_shape.begin(), last - first);
            return (flat.unsqueeze(0) == groups.slice(0, first, last).unsqueeze(1))
                .to(torch::kFloat)
                .view(block_shape);
          }};
    });
    return sums.total;
  }
};

/// @brief Gradient SHAP (Lundberg & Lee 2017; captum's `GradientShap`): the expected gradient
/// times the input's difference from a baseline, over baselines drawn from a distribution,
/// points drawn uniformly on the straight line between them, and Gaussian noise on the input:
/// \f[ \phi(x) = \frac{1}{m} \sum_{k=1}^{m} \nabla y^c\big(b_k + t_k (\tilde x_k - b_k)\big)
///     \odot (\tilde x_k - b_k), \quad \tilde x_k = x + \varepsilon_k,\;
///     \varepsilon_k \sim N(0, \sigma^2),\; t_k \sim U(0, 1),\; b_k \sim \mathcal{B}. \f]
/// Completeness holds in expectation: `E Σ φ = E y^c(x̃) − E y^c(b)`, exactly `y^c(x) − E
/// y^c(b)` on a linear model without noise. Options, with captum's defaults: `shap_samples` m =
/// 5, `shap_stdev` σ = 0 (absolute, as captum's `stdevs`), `baseline_distribution` `[B, ...]`
/// (or the single `baseline`, zero by default), `seed` / `generator`. Draws are made on the CPU,
/// per sample k in order (noise, baseline index, t for the whole batch), so they do not depend
/// on `batch_size`; a batch draws other numbers than its images one by one.
struct GradientShap {
  static constexpr const char* name = "Gradient SHAP";  ///< display name
  /// @brief Input-shaped attributions.
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    const auto& o = request.options;
    const auto& x = request.input;
    detail::require(o.shap_samples() >= 1,
                    "Gradient SHAP: SaliencyOptions::shap_samples is {}; expected at least 1",
                    o.shap_samples());
    detail::require(o.shap_stdev() >= 0 && std::isfinite(o.shap_stdev()),
                    "Gradient SHAP: SaliencyOptions::shap_stdev is {}; expected a finite value >= 0",
                    o.shap_stdev());
    const int64_t n = x.size(0), samples = o.shap_samples();
    torch::Tensor distribution;  // [B, ...]: shared by every image
    torch::Tensor per_image;     // [N, ...]: one fixed baseline per image
    if (o.baseline_distribution().defined()) {
      const auto& d = o.baseline_distribution();
      detail::require(d.dim() == x.dim() && d.size(0) >= 1 &&
                          d.sizes().slice(1) == x.sizes().slice(1),
                      "Gradient SHAP: SaliencyOptions::baseline_distribution has shape {}; "
                      "expected [B, ...] with B >= 1 baselines of one input's shape (input {})",
                      detail::shape_string(d), detail::shape_string(x));
      detail::require(!d.is_complex(),
                      "Gradient SHAP: SaliencyOptions::baseline_distribution has dtype {}; "
                      "expected a real tensor",
                      std::string(c10::toString(d.scalar_type())));
      detail::require_finite(d, "the Gradient SHAP baselines (SaliencyOptions::baseline_distribution)");
      distribution = d.to(x.device(), x.scalar_type());
    } else {
      per_image = detail::checked_baseline(o.baseline(), x, name);
    }
    const int64_t chunk = detail::saliency_chunk(o);
    auto generator = detail::noise_generator(o.generator(), o.seed());
    std::vector<int64_t> per_sample_shape(static_cast<size_t>(x.dim()), 1);
    per_sample_shape[0] = n;
    detail::SaliencyProgress progress(o, n * samples);
    auto total = torch::zeros_like(x);
    // Copies in groups that fill a chunk, as SmoothGrad; the draws are made copy by copy.
    const int64_t copies_per_pass = std::max<int64_t>(1, chunk / n);
    for (int64_t first = 0; first < samples; first += copies_per_pass) {
      const int64_t copies = std::min(copies_per_pass, samples - first);
      std::vector<torch::Tensor> points, differences;
      for (int64_t k = 0; k < copies; ++k) {
        auto noisy = x;
        if (o.shap_stdev() > 0)
          noisy = x + o.shap_stdev() * detail::standard_normal(generator, x.sizes(), x);
        torch::Tensor reference = per_image;
        if (distribution.defined()) {
          const auto index = torch::randint(distribution.size(0), {n}, generator,
                                            torch::dtype(torch::kLong));
          reference = distribution.index_select(0, index.to(x.device()));
        }
        const auto t = torch::rand({n}, generator, torch::dtype(torch::kDouble))
                           .to(x.device(), x.scalar_type()).view(per_sample_shape);
        differences.push_back(noisy - reference);
        points.push_back(reference + t * differences.back());
      }
      const auto g = detail::chunked_target_gradient<StandardReLU>(
          request.model, torch::cat(points, 0), request.targets.repeat({copies}), chunk, &progress);
      total.add_((g * torch::cat(differences, 0)).view([&] {
        auto shape = x.sizes().vec();
        shape.insert(shape.begin(), copies);
        return shape;
      }()).sum(0));
    }
    return total / static_cast<double>(samples);
  }
};

/// @brief DeepLIFT with the Rescale rule (Shrikumar et al. 2017; captum's `DeepLift` on ReLU
/// networks): the difference from the reference times the gradient in which every rectifier
/// site passes the multiplier `(ReLU(u) − ReLU(u_ref)) / (u − u_ref)` instead of its derivative
/// (`DeepLiftRescale`):
/// \f[ \mathrm{DL}(x) = (x - x_{ref}) \odot \frac{\partial_{\mathrm{Rescale}}\, y^c}{\partial x}. \f]
/// The reference `x_ref` is `SaliencyOptions::baseline` (zero by default, as captum); where
/// `|u − u_ref| < deeplift_eps` (1e-10, captum's `eps`) a site passes its gradient. Each pass
/// runs the reference forward and the input forward of at most `batch_size` inputs, recording
/// their rectifier sites (`RectifierRecording`) and pairing them in call order
/// (`ReferenceSites`). Summation-to-delta, `Σ DL = y^c(x) − y^c(x_ref)`, holds exactly when the
/// ReLUs are the network's only nonlinearities (see `DeepLiftRescale`; other nonlinearities, such
/// as max-pooling, pass their gradient, where captum has rules of its own). A model without
/// rectifiers gets `(x − x_ref) ⊙ ∂y^c/∂x`, exact for a linear model. `GraphError` when the two
/// forwards do not run the same rectifier sites.
struct DeepLift {
  static constexpr const char* name = "DeepLIFT";  ///< display name
  /// @brief Input-shaped attributions.
  template <class Deferred = void>
  torch::Tensor operator()(const SaliencyRequest& request) const {
    const auto& o = request.options;
    const auto& x = request.input;
    detail::require(o.deeplift_eps() >= 0 && std::isfinite(o.deeplift_eps()),
                    "DeepLIFT: SaliencyOptions::deeplift_eps is {}; expected a finite value >= 0",
                    o.deeplift_eps());
    const auto baseline = detail::checked_baseline(o.baseline(), x, name);
    detail::SaliencyProgress progress(o, x.size(0));
    auto result = torch::empty_like(x);
    detail::for_each_batch(
        x.size(0), detail::saliency_chunk(o), "SaliencyOptions::batch_size",
        [&](int64_t start, int64_t end) {
          const auto reference = baseline.slice(0, start, end).contiguous();
          RectifierRecording reference_sites;
          {
            torch::NoGradGuard no_grad;
            detail::checked_forward(request.model, reference);
          }
          reference_sites.stop();
          torch::AutoGradMode enable_grad(true);
          const auto input = x.slice(0, start, end).detach().requires_grad_(true);
          RectifierRecording sites;
          const auto logits = detail::checked_forward(request.model, input);
          sites.stop();
          for (const auto* recording : {&reference_sites, &sites})
            detail::require<GraphError>(recording->problem().empty(), "DeepLIFT: {}",
                                        recording->problem());
          const auto score =
              detail::gather_targets(logits, request.targets.slice(0, start, end)).sum();
          torch::Tensor g;
          if (sites.size() == 0 && count_rectifier_sites({score}) == 0) {
            g = gradient<StandardReLU>({score}, {input})[0];
          } else {
            ReferenceSites pairs(sites, reference_sites);
            g = gradient<DeepLiftRescale>({score}, {input}, {}, false, false,
                                          DeepLiftRescale{o.deeplift_eps()})[0];
          }
          result.slice(0, start, end).copy_((input.detach() - reference) * g);
          progress.advance(end - start);
        });
    return result;
  }
};

namespace detail {

/// Checks and prepares a saliency call; the model must already be in evaluation mode.
template <class S>
torch::Tensor run_saliency(const AnyModel& model, const torch::Tensor& x,
                           const torch::Tensor& targets, const SaliencyOptions& options,
                           const S& method) {
  const auto batch = prepare_batch(model, x, targets, /*require_image=*/false, S::name,
                                   /*feature_map=*/false, saliency_chunk(options));
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
/// parameters' `.grad` are not touched.
///
/// Threads: the call holds the model's evaluation-mode lease (`TrainingModeGuard(model,
/// false)`) for its whole duration. Calls on several threads share one model safely and overlap
/// (eval mode throughout; the last to finish restores the mode the first found). A scope that
/// holds the model in training mode through `TrainingModeGuard` (`Trainer::step`, `fit`) on
/// another thread is never interleaved with it: the call waits for that scope to end, and the
/// scope waits for the call. Called on the thread that holds the training scope (a callback), it
/// switches to eval mode and back. Mode switches made directly on the module
/// (`module->train()`) bypass the lease and are not guarded.
///
/// Memory and time: the shipped methods pass at most `SaliencyOptions::batch_size` inputs
/// through the model at once (so peak memory does not grow with N beyond a few input-sized tensors) and
/// report each pass to `SaliencyOptions::progress`.
///
/// Throws `InvalidArgument` for malformed input, targets of the wrong shape, dtype or range, an
/// baseline that does not broadcast to the input, other bad options (each named), images whose channel
/// count or size the model rejects, or any other LibTorch error inside the method (named in the
/// message; never a raw `c10::Error`); `GraphError` when a guided / deconvnet rule finds no
/// rectifier, or when DeepLIFT's input and reference forwards run different rectifier sites.
template <SaliencyMethod S>
torch::Tensor attribute(const AnyModel& model, const torch::Tensor& x,
                        const torch::Tensor& targets = {}, const SaliencyOptions& options = {},
                        const S& method = S()) {
  TrainingModeGuard evaluation(model, false);
  return detail::translate_torch_errors(S::name, "SaliencyOptions::batch_size", [&] {
    return detail::run_saliency(model, x, targets, options, method);
  });
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
/// methods share one calling convention. `x` must be `[N, C, H, W]`. Same guarantees (threads,
/// memory, progress) and errors as `attribute`.
template <SaliencyMethod S>
torch::Tensor explain(const AnyModel& model, const torch::Tensor& x,
                      const torch::Tensor& targets = {}, const SaliencyOptions& options = {},
                      const S& method = S()) {
  detail::require_images(x, igrad::detail::format("{}: the input images", S::name),
                         detail::ImageValues::any);
  return saliency_map(attribute<S>(model, x, targets, options, method));
}

/// @brief The input-space methods igrad ships, as a Hana type list.
inline constexpr auto all_saliency_methods =
    boost::hana::tuple_t<Gradient, GuidedBackprop, Deconvnet, InputXGradient, SmoothGrad,
                         SmoothGradSquared, VarGrad, IntegratedGradients, Occlusion,
                         FeatureAblation, GradientShap, DeepLift>;

/// @}
}  // namespace igrad

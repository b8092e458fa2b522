#pragma once
/// @file saliency/saliency_methods.hpp
/// @brief Input-space saliency (SPEC §4): attributions of the class logit `y^c` to the input
/// pixels, computed with igrad's backprop rules (`input_gradient<R>`), and their reduction to
/// `[N, H, W]` maps.

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
  /// Integrated gradients: the baseline x_b, input-shaped or broadcastable; zero when undefined.
  TORCH_ARG(torch::Tensor, baseline) = {};
  /// Most inputs per forward/backward pass: the chunk size. Every method differentiates at most
  /// this many inputs at once (images, noisy copies of SmoothGrad, path points of integrated
  /// gradients), so the autograd graph, and the peak memory, do not grow with the batch; small
  /// batches are filled with several copies or path points per pass. Results do not depend on it
  /// beyond floating-point rounding (SmoothGrad's noise is drawn one whole-batch copy at a time
  /// whatever the chunk).
  TORCH_ARG(int64_t, batch_size) = 64;
  /// Called as `progress(done, total)` after each pass, counting differentiated inputs: N for
  /// the gradient methods, N · samples for SmoothGrad and its noise modes, N · steps for integrated gradients.
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
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return detail::rule_attributions<StandardReLU>(request);
  }
};

/// @brief Guided backpropagation (Springenberg et al. 2015): `∂_G y^c/∂x` with `GuidedReLU` at
/// every rectifier site. `GraphError` for a model without rectifiers.
struct GuidedBackprop {
  static constexpr const char* name = "Guided Backprop";  ///< display name
  /// @brief Input-shaped attributions.
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return detail::rule_attributions<GuidedReLU>(request);
  }
};

/// @brief Deconvnet (Zeiler & Fergus 2014): `DeconvReLU` at every rectifier site.
/// `GraphError` for a model without rectifiers.
struct Deconvnet {
  static constexpr const char* name = "Deconvnet";  ///< display name
  /// @brief Input-shaped attributions.
  torch::Tensor operator()(const SaliencyRequest& request) const {
    return detail::rule_attributions<DeconvReLU>(request);
  }
};

/// @brief Input × Gradient (Shrikumar et al. 2016; captum's `InputXGradient`): `x ⊙ ∂y^c/∂x`,
/// the gradient of the class logit weighted by the input, element by element.
struct InputXGradient {
  static constexpr const char* name = "Input x Gradient";  ///< display name
  /// @brief Input-shaped attributions.
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
  const auto sigma =
      noise_scale(x, o.noise_level(), fmt::format("{}: SaliencyOptions::noise_level", method));
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
  torch::Tensor operator()(const SaliencyRequest& request) const {
    const auto moments = detail::noisy_gradient_moments(request, name, /*squares=*/true);
    return (moments.mean_squares - moments.mean.square()).clamp_min(0);
  }
};

namespace detail {

/// The integrated-gradients baseline for `x`: zero when undefined, else `baseline` checked
/// (finite, broadcastable to `x`) and expanded to `x`'s shape, device and dtype.
inline torch::Tensor integration_baseline(const torch::Tensor& baseline, const torch::Tensor& x) {
  if (!baseline.defined()) return torch::zeros_like(x);
  bool broadcasts = baseline.dim() <= x.dim();
  for (int64_t i = 1; broadcasts && i <= baseline.dim(); ++i) {
    const int64_t size = baseline.size(baseline.dim() - i);
    broadcasts = size == 1 || size == x.size(x.dim() - i);
  }
  std::vector<int64_t> one_image = x.sizes().vec();
  one_image[0] = 1;
  require(broadcasts,
          "Integrated Gradients: the baseline (SaliencyOptions::baseline) has shape {}, which does "
          "not broadcast to the input's shape {}; expected that shape, one image {} or any shape "
          "that broadcasts to it",
          shape_string(baseline), shape_string(x), shape_string(torch::empty(one_image)));
  require(!baseline.is_complex(),
          "Integrated Gradients: the baseline has dtype {}; expected a real tensor",
          std::string(c10::toString(baseline.scalar_type())));
  require_finite(baseline, "the Integrated Gradients baseline (SaliencyOptions::baseline)");
  return baseline.to(x.device(), x.scalar_type()).expand_as(x);
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
/// Memory and time: the shipped methods differentiate at most `SaliencyOptions::batch_size`
/// inputs per pass (so peak memory does not grow with N beyond a few input-sized tensors) and
/// report each pass to `SaliencyOptions::progress`.
///
/// Throws `InvalidArgument` for malformed input, targets of the wrong shape, dtype or range, an
/// Integrated Gradients baseline that does not broadcast to the input, images whose channel
/// count or size the model rejects, or any other LibTorch error inside the method (named in the
/// message; never a raw `c10::Error`); `GraphError` when a guided / deconvnet rule finds no
/// rectifier.
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
  detail::require_images(x, fmt::format("{}: the input images", S::name),
                         detail::ImageValues::any);
  return saliency_map(attribute<S>(model, x, targets, options, method));
}

/// @brief The eight input-space methods igrad ships, as a Hana type list.
inline constexpr auto all_saliency_methods =
    boost::hana::tuple_t<Gradient, GuidedBackprop, Deconvnet, InputXGradient, SmoothGrad,
                         SmoothGradSquared, VarGrad, IntegratedGradients>;

/// @}
}  // namespace igrad

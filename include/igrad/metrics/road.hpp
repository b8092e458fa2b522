#pragma once
/// @file metrics/road.hpp
/// @brief ROAD, RemOve And Debias (Rong et al. 2022, as pytorch-grad-cam ships it): remove the
/// most or least relevant pixels, fill them by noisy linear imputation, and see how the class
/// score changes (docs/reference.md §5).

#include <igrad/detail/batched_jobs.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics/masking.hpp>
#include <igrad/model.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/arg.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace igrad {

/// @addtogroup metrics_group
/// @{

/// @brief Options of `noisy_linear_imputation`, with chained setters.
struct ImputationOptions {
  /// Standard deviation of the Gaussian noise added to each imputed value, in the units of the
  /// images as given (pytorch-grad-cam: 0.01, absolute); 0 for plain linear imputation.
  TORCH_ARG(double, noise) = 0.01;
  /// Seed of the CPU generator the noise is drawn from (never the global generator).
  TORCH_ARG(uint64_t, seed) = 0;
  /// Conjugate-gradient stopping rule: residual norm at most `tolerance` times the right-hand
  /// side's, per image and channel.
  TORCH_ARG(double, tolerance) = 1e-10;
  /// Conjugate-gradient iterations allowed; 0 means `2·H·W + 100` (exact arithmetic needs at
  /// most H·W).
  TORCH_ARG(int64_t, max_iterations) = 0;
};

namespace detail {

/// The weights of the 8 neighbours in noisy linear imputation (Rong et al. 2022): 1/6 for the
/// four edge neighbours, 1/12 for the four diagonal ones (they sum to 1), as a depthwise 3×3
/// kernel `[C, 1, 3, 3]` with a zero centre.
inline torch::Tensor imputation_kernel(int64_t channels, const torch::TensorOptions& options) {
  const double e = 1.0 / 6, d = 1.0 / 12;
  const auto kernel =
      torch::tensor({d, e, d, e, 0.0, e, d, e, d}, options.dtype(torch::kDouble)).view({1, 1, 3, 3});
  return kernel.expand({channels, 1, 3, 3}).contiguous().to(options.dtype());
}

}  // namespace detail

/// @brief Noisy linear imputation (Rong et al. 2022; pytorch-grad-cam's `NoisyLinearImputer`):
/// each removed pixel takes the weighted mean of its in-image neighbours, removed ones included,
/// then Gaussian noise is added to it.
///
/// For the removed pixels `i` (`removed[n, i]` true) the values `u` solve, per image and channel,
/// \f[ \Big(\sum_{j \in N(i)} w_{ij}\Big)\, u_i - \sum_{j \in N(i),\ \mathrm{removed}} w_{ij}\, u_j
///     = \sum_{j \in N(i),\ \mathrm{kept}} w_{ij}\, x_j, \f]
/// `N(i)` the 8-neighbours inside the image, `w = 1/6` for edge and `1/12` for diagonal
/// neighbours; then `x̃_i = u_i + noise · ε_i`, `ε ~ N(0, 1)`. Kept pixels are returned unchanged.
/// The system is symmetric positive definite whenever some pixel is kept (every removed region
/// then touches a kept pixel); igrad solves it matrix-free by conjugate gradients in double
/// (pytorch-grad-cam builds a sparse matrix and calls a direct solver: the same solution to the
/// tolerance). An image with every pixel removed has no kept value to interpolate: it gets each
/// channel's mean (pytorch-grad-cam's solver fails on that singular system).
///
/// The noise pattern `ε` `[C, H, W]` is drawn once from a CPU generator seeded with
/// `options.seed()` and shared by every image of the batch, so an image's result does not depend
/// on the batch it comes in (pytorch-grad-cam draws per image). Imputation works in the units of
/// the images as given (normalised, if they are, as in pytorch-grad-cam); the linear part is
/// equivariant under per-channel affine normalisation, the noise scale is not.
///
/// `images` `[N, C, H, W]`, `removed` `[N, H, W]` (bool, or 0/1 values). Throws
/// `InvalidArgument` for bad shapes, non-finite images, a negative or non-finite noise or
/// tolerance; `NumericalError` if conjugate gradients do not converge.
inline torch::Tensor noisy_linear_imputation(const torch::Tensor& images,
                                             const torch::Tensor& removed,
                                             const ImputationOptions& options = {}) {
  detail::require_images(images, "noisy_linear_imputation: the images");
  detail::require(removed.defined() && removed.dim() == 3 && removed.size(0) == images.size(0) &&
                      removed.size(1) == images.size(2) && removed.size(2) == images.size(3),
                  "noisy_linear_imputation: the removal mask has shape {} for images of shape {}; "
                  "expected [{}, {}, {}]",
                  detail::shape_string(removed), detail::shape_string(images), images.size(0),
                  images.size(2), images.size(3));
  detail::require(options.noise() >= 0 && std::isfinite(options.noise()),
                  "ImputationOptions::noise is {}; expected a finite value >= 0", options.noise());
  detail::require(options.tolerance() > 0 && std::isfinite(options.tolerance()),
                  "ImputationOptions::tolerance is {}; expected a finite value > 0",
                  options.tolerance());
  detail::require(options.max_iterations() >= 0,
                  "ImputationOptions::max_iterations is {}; expected >= 0 (0: automatic)",
                  options.max_iterations());
  torch::NoGradGuard no_grad;
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  if (n == 0 || h * w == 0) return images.detach().clone();
  const auto x = images.detach().to(torch::kDouble);
  const auto m = (removed.to(x.device()) != 0).to(torch::kDouble).unsqueeze(1).expand_as(x);
  const auto kernel = detail::imputation_kernel(c, x.options());
  const auto neighbours = [&](const torch::Tensor& v) {
    return torch::conv2d(v, kernel, {}, /*stride=*/1, /*padding=*/1, /*dilation=*/1, c);
  };
  const auto degree = neighbours(torch::ones({1, c, h, w}, x.options()));  // in-image weight sum
  const auto apply = [&](const torch::Tensor& u) { return m * (degree * u - neighbours(m * u)); };
  const auto dot = [](const torch::Tensor& a, const torch::Tensor& b) {
    return (a * b).sum({2, 3}, /*keepdim=*/true);
  };

  // Conjugate gradients, one independent system per image and channel.
  const auto b = m * neighbours(x * (1 - m));
  auto u = torch::zeros_like(x);
  auto r = b.clone();
  auto p = r.clone();
  auto rs = dot(r, r);
  const auto threshold = dot(b, b) * (options.tolerance() * options.tolerance());
  const int64_t limit = options.max_iterations() > 0 ? options.max_iterations() : 2 * h * w + 100;
  bool converged = false;
  for (int64_t iteration = 0; iteration <= limit; ++iteration) {
    if ((rs <= threshold).all().item<bool>()) {
      converged = true;
      break;
    }
    if (iteration == limit) break;
    const auto ap = apply(p);
    const auto pap = dot(p, ap);
    const auto alpha = torch::where(pap > 0, rs / pap.clamp_min(1e-300), torch::zeros_like(rs));
    u = u + alpha * p;
    r = r - alpha * ap;
    const auto rs_next = dot(r, r);
    const auto beta = torch::where(rs > 0, rs_next / rs.clamp_min(1e-300), torch::zeros_like(rs));
    p = r + beta * p;
    rs = rs_next;
  }
  detail::require<NumericalError>(
      converged, "noisy_linear_imputation: conjugate gradients did not reach the relative "
                 "tolerance {} in {} iterations; expected a solvable system (raise "
                 "ImputationOptions::max_iterations or the tolerance)",
      options.tolerance(), limit);

  // With nothing kept the system is singular (u = 0 solves it): use each channel's mean instead.
  const auto nothing_kept = m.flatten(1).amin(1).eq(1).view({n, 1, 1, 1});
  u = torch::where(nothing_kept, x.mean({2, 3}, /*keepdim=*/true).expand_as(x), u);
  if (options.noise() > 0) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed());
    const auto epsilon =
        torch::randn({c, h, w}, generator, torch::dtype(torch::kDouble)).to(x.device());
    u = u + options.noise() * epsilon;
  }
  return torch::where(m > 0, u, x).to(images.scalar_type());
}

/// @brief Options of `road`, with chained setters.
struct RoadOptions {
  /// The percentiles p of each order; the result averages over them (pytorch-grad-cam's
  /// `ROADCombined`: 10, 20, …, 90). Each in [0, 100].
  TORCH_ARG(std::vector<double>, percentiles) =
      std::vector<double>{10, 20, 30, 40, 50, 60, 70, 80, 90};
  /// The imputation's noise and solver settings; its seed is offset by the percentile's index
  /// (and by the number of percentiles for the least-relevant-first order).
  TORCH_ARG(ImputationOptions, imputation) = {};
  /// The score compared (pytorch-grad-cam's tutorial uses the softmax target).
  TORCH_ARG(ModelScore, score) = ModelScore::probability;
  /// Ground-truth classes (default) or the model's predictions on the unmodified image.
  TORCH_ARG(TargetClass, target) = TargetClass::label;
  /// Imputed images per forward pass.
  TORCH_ARG(int64_t, batch_size) = 64;
};

/// @brief Per-image ROAD scores, `[N]` doubles each (in the units of `RoadOptions::score`).
struct RoadScores {
  /// MoRF: mean over p of `s(x with the pixels at or above the p-th percentile imputed) − s(x)`;
  /// lower (a larger drop) is better.
  torch::Tensor most_relevant_first;
  /// LeRF: the same, removing the pixels at or above the p-th percentile of `−map`; higher (a
  /// smaller drop) is better.
  torch::Tensor least_relevant_first;
  /// `(LeRF − MoRF) / 2` (pytorch-grad-cam's `ROADCombined`); higher is better.
  torch::Tensor combined;
};

namespace detail {

/// The p-th percentile of each row of `values` `[N, P]` (double), with linear interpolation
/// between order statistics as `numpy.percentile` computes it: `[N, 1]`.
inline torch::Tensor row_percentile(const torch::Tensor& values, double percentile) {
  const auto sorted = std::get<0>(values.sort(1));
  const int64_t count = values.size(1);
  const double position = percentile / 100.0 * static_cast<double>(count - 1);
  const auto below = static_cast<int64_t>(std::floor(position));
  const auto above = std::min(below + 1, count - 1);
  const double fraction = position - static_cast<double>(below);
  const auto low = sorted.select(1, below), high = sorted.select(1, above);
  return (low + (high - low) * fraction).unsqueeze(1);
}

}  // namespace detail

/// @brief ROAD of saliency maps (Rong et al. 2022), as pytorch-grad-cam's
/// `ROADMostRelevantFirstAverage`, `ROADLeastRelevantFirstAverage` and `ROADCombined` define it.
///
/// For each percentile p: MoRF keeps the pixels whose map value is below the p-th percentile of
/// the image's map (linear interpolation, as numpy) and imputes the rest with
/// `noisy_linear_imputation`; LeRF does the same with `−map` (pytorch-grad-cam uses `1 − map`:
/// the same pixels for maps in [0, 1]). The score difference `s_c(x̃) − s_c(x)` is averaged over
/// the percentiles. Maps may have any sign or scale (only their order matters).
///
/// `x` `[N, C, H, W]`, `maps` `[N, H, W]`, `labels` `[N]` (ignored with
/// `TargetClass::predicted`). The model runs in eval mode (its mode is restored), without
/// gradients, on its own device; results are on the CPU. An image's value does not depend on
/// the batch it comes in. Throws `InvalidArgument` for bad shapes, labels, percentiles or
/// options.
inline RoadScores road(const AnyModel& model, const torch::Tensor& x, const torch::Tensor& maps,
                       const torch::Tensor& labels, const RoadOptions& options = {}) {
  detail::require_images(x, "road: the images");
  const int64_t n = x.size(0);
  detail::require(n > 0, "road: the images have shape {}, an empty batch; expected at least one "
                         "image", detail::shape_string(x));
  const auto m = detail::checked_attribution_maps(maps, x, "road");
  detail::require(!options.percentiles().empty(),
                  "RoadOptions::percentiles is empty; expected at least one percentile in "
                  "[0, 100]");
  for (const double p : options.percentiles())
    detail::require(p >= 0 && p <= 100, "RoadOptions::percentiles has {}; expected values in "
                                        "[0, 100]", p);
  detail::require(options.batch_size() >= 1, "RoadOptions::batch_size is {}; expected >= 1",
                  options.batch_size());
  torch::NoGradGuard no_grad;
  TrainingModeGuard eval_mode(model, false);
  torch::Tensor classes, original;
  {
    std::vector<torch::Tensor> parts;
    detail::for_each_batch(n, options.batch_size(), "RoadOptions::batch_size",
                           [&](int64_t start, int64_t end) {
                             parts.push_back(detail::class_scores(model, x.slice(0, start, end),
                                                                  options.score()));
                           });
    const auto scores = torch::cat(parts);
    if (options.target() == TargetClass::predicted) {
      classes = scores.argmax(1);
    } else {
      detail::require_labels(labels, n, scores.size(1), "road: the labels");
      classes = labels.to(x.device(), torch::kLong);
    }
    original = detail::probability_of(scores, classes);
  }
  const auto flat = m.flatten(1);
  const auto mean_drop = [&](const torch::Tensor& relevance, uint64_t seed_offset) {
    auto total = torch::zeros({n}, x.options().dtype(torch::kDouble));
    const auto& percentiles = options.percentiles();
    for (std::size_t k = 0; k < percentiles.size(); ++k) {
      const auto threshold = detail::row_percentile(relevance, percentiles[k]);
      const auto removed = (relevance >= threshold).view({n, x.size(2), x.size(3)});
      auto imputation = options.imputation();
      imputation.seed(imputation.seed() + seed_offset + k);
      detail::for_each_batch(
          n, options.batch_size(), "RoadOptions::batch_size", [&](int64_t start, int64_t end) {
            const auto imputed = noisy_linear_imputation(x.slice(0, start, end),
                                                         removed.slice(0, start, end), imputation);
            const auto s = detail::class_scores(model, imputed, options.score());
            total.slice(0, start, end) +=
                detail::probability_of(s, classes.slice(0, start, end)) -
                original.slice(0, start, end);
          });
    }
    return (total / static_cast<double>(percentiles.size())).cpu();
  };
  RoadScores result;
  result.most_relevant_first = mean_drop(flat, 0);
  result.least_relevant_first = mean_drop(-flat, options.percentiles().size());
  result.combined = (result.least_relevant_first - result.most_relevant_first) / 2;
  return result;
}

/// @}
}  // namespace igrad

#pragma once
/// @file metrics/perturbation.hpp
/// @brief Whether an explanation predicts how the model's output moves when the image is
/// perturbed: faithfulness correlation (Bhatt et al. 2020, as Quantus defines it) and infidelity
/// (Yeh et al. 2019, as captum defines it) (docs/reference.md §5).

#include <igrad/detail/batched_jobs.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics/masking.hpp>
#include <igrad/model.hpp>
#include <igrad/normalization.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/arg.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace igrad {

/// @addtogroup metrics_group
/// @{

/// @brief What a removed pixel is replaced by in `faithfulness_correlation`.
enum class PerturbationBaseline {
  /// The image's smallest value over all channels and pixels (Quantus' `"black"`, its default).
  image_minimum,
  /// The image's mean over all channels and pixels (Quantus' `"mean"`).
  image_mean,
  /// Black in pixel space: 0 de-normalised with `FaithfulnessCorrelationOptions::normalization`
  /// (igrad's masking convention, SPEC §5); 0 itself without a normalisation.
  black_pixels,
};

/// @brief Options of `faithfulness_correlation`, with chained setters.
struct FaithfulnessCorrelationOptions {
  /// Random subsets per image (Quantus' `nr_runs`, 100).
  TORCH_ARG(int64_t, runs) = 100;
  /// Pixels per subset (Quantus' `subset_size`, 224); at most H·W.
  TORCH_ARG(int64_t, subset_size) = 224;
  /// What the subset's pixels are replaced by.
  TORCH_ARG(PerturbationBaseline, baseline) = PerturbationBaseline::image_minimum;
  /// The dataset's normalisation, for `PerturbationBaseline::black_pixels`.
  TORCH_ARG(std::optional<DatasetNormalization>, normalization) = std::nullopt;
  /// The output compared (Quantus' default `softmax = False`: logits).
  TORCH_ARG(ModelScore, score) = ModelScore::logit;
  /// Ground-truth classes (default) or the model's predictions on the unmodified image.
  TORCH_ARG(TargetClass, target) = TargetClass::label;
  /// Seed of the CPU generator the subsets are drawn from (never the global generator).
  TORCH_ARG(uint64_t, seed) = 0;
  /// Perturbed images per forward pass.
  TORCH_ARG(int64_t, batch_size) = 64;
};

namespace detail {

/// Checks the images, finds the scored class of each (and its score on `x`): `{classes, scores}`.
inline std::pair<torch::Tensor, torch::Tensor> scored_classes(
    const AnyModel& model, const torch::Tensor& x, const torch::Tensor& labels, ModelScore score,
    TargetClass target, int64_t batch_size, std::string_view option, std::string_view what) {
  std::vector<torch::Tensor> parts;
  for_each_batch(x.size(0), batch_size, option, [&](int64_t start, int64_t end) {
    parts.push_back(class_scores(model, x.slice(0, start, end), score));
  });
  const auto scores = torch::cat(parts);
  torch::Tensor classes;
  if (target == TargetClass::predicted) {
    classes = scores.argmax(1);
  } else {
    require_labels(labels, x.size(0), scores.size(1), std::string(what) + ": the labels");
    classes = labels.to(x.device(), torch::kLong);
  }
  return {classes, probability_of(scores, classes)};
}

/// Pearson's correlation of each row pair of `a`, `b` `[N, R]` (double); 0 where either row is
/// constant (the correlation is undefined there: no linear association can be shown).
inline torch::Tensor row_pearson(const torch::Tensor& a, const torch::Tensor& b) {
  const auto da = a - a.mean(1, /*keepdim=*/true), db = b - b.mean(1, /*keepdim=*/true);
  const auto denominator = (da.pow(2).sum(1) * db.pow(2).sum(1)).sqrt();
  const auto numerator = (da * db).sum(1);
  return torch::where(denominator > 0, numerator / denominator.clamp_min(1e-300),
                      torch::zeros_like(numerator));
}

}  // namespace detail

/// @brief Faithfulness correlation of each image's map (Bhatt et al. 2020; Quantus
/// `FaithfulnessCorrelation`), `[N]` doubles in [−1, 1], higher is better:
/// \f[ \mathrm{FC}_i = \rho_{r=1..R}\Big(\sum_{k \in S_r} a_{i,k},\;
///     s_c(x_i) - s_c(x_i \text{ with } S_r \text{ replaced by the baseline})\Big) \f]
/// with ρ Pearson's correlation over R random subsets `S_r` of `subset_size` pixels each.
///
/// Conventions: a subset is a set of pixels (every channel of a pixel is replaced; Quantus draws
/// among the C·H·W entries of the map broadcast over channels, the same for one-channel images).
/// The R subsets are drawn once, without replacement within a subset, from a CPU generator seeded
/// with `options.seed()`, and shared by every image, so an image's value does not depend on the
/// batch it comes in (Quantus draws per image). Where the attribution sums or the score changes
/// are constant over the runs the correlation is undefined: igrad reports 0 (Quantus, NaN).
/// Quantus' default max-normalisation of the map does not change ρ. Maps may have any sign.
///
/// `x` `[N, C, H, W]`, `maps` `[N, H, W]`, `labels` `[N]` (ignored with
/// `TargetClass::predicted`). The model runs in eval mode (restored after), without gradients.
/// Results are on the CPU. Throws `InvalidArgument` for bad shapes, labels or options
/// (`subset_size` outside [1, H·W], `runs < 2`).
inline torch::Tensor faithfulness_correlation(const AnyModel& model, const torch::Tensor& x,
                                              const torch::Tensor& maps,
                                              const torch::Tensor& labels,
                                              const FaithfulnessCorrelationOptions& options = {}) {
  detail::require_images(x, "faithfulness_correlation: the images");
  const int64_t n = x.size(0), c = x.size(1), pixels = x.size(2) * x.size(3);
  detail::require(n > 0, "faithfulness_correlation: the images have shape {}, an empty batch; "
                         "expected at least one image", detail::shape_string(x));
  const auto a = detail::checked_attribution_maps(maps, x, "faithfulness_correlation").flatten(1);
  detail::require(options.runs() >= 2, "FaithfulnessCorrelationOptions::runs is {}; expected >= 2 "
                                       "(a correlation needs two points)", options.runs());
  detail::require(options.subset_size() >= 1 && options.subset_size() <= pixels,
                  "FaithfulnessCorrelationOptions::subset_size is {} for images of {} pixels; "
                  "expected a value in [1, {}]", options.subset_size(), pixels, pixels);
  detail::require(options.batch_size() >= 1,
                  "FaithfulnessCorrelationOptions::batch_size is {}; expected >= 1",
                  options.batch_size());
  torch::NoGradGuard no_grad;
  TrainingModeGuard eval_mode(model, false);
  const auto scored = detail::scored_classes(
      model, x, labels, options.score(), options.target(), options.batch_size(),
      "FaithfulnessCorrelationOptions::batch_size", "faithfulness_correlation");
  const auto& classes = scored.first;
  const auto& original = scored.second;

  const auto xd = x.detach().to(torch::kDouble);
  torch::Tensor baseline;  // broadcastable to [N, C, H, W]
  switch (options.baseline()) {
    case PerturbationBaseline::image_minimum:
      baseline = xd.flatten(1).amin(1).view({n, 1, 1, 1});
      break;
    case PerturbationBaseline::image_mean:
      baseline = xd.mean({1, 2, 3}, /*keepdim=*/true);
      break;
    case PerturbationBaseline::black_pixels:
      if (options.normalization()) {
        const auto [mean, std] = detail::normalization_tensors(*options.normalization(), c, xd);
        baseline = -mean / std;
      } else {
        baseline = torch::zeros({1, 1, 1, 1}, xd.options());
      }
      break;
  }

  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed());
  std::vector<torch::Tensor> subsets;  // R masks [H·W] of 0/1
  for (int64_t r = 0; r < options.runs(); ++r) {
    const auto chosen = torch::randperm(pixels, generator, torch::dtype(torch::kLong))
                            .slice(0, 0, options.subset_size());
    subsets.push_back(
        torch::zeros({pixels}, torch::kDouble).index_fill_(0, chosen, 1.0).to(x.device()));
  }
  const auto subset_matrix = torch::stack(subsets, 1);  // [H·W, R]
  const auto attribution_sums = a.matmul(subset_matrix);  // [N, R]
  auto score_changes = torch::empty({n, options.runs()}, xd.options());
  for (int64_t r = 0; r < options.runs(); ++r) {
    const auto keep = (1 - subsets[static_cast<std::size_t>(r)]).view({1, 1, x.size(2), x.size(3)});
    detail::for_each_batch(
        n, options.batch_size(), "FaithfulnessCorrelationOptions::batch_size",
        [&](int64_t start, int64_t end) {
          const auto chunk = xd.slice(0, start, end);
          const auto fill = baseline.size(0) == n ? baseline.slice(0, start, end) : baseline;
          const auto perturbed = (chunk * keep + fill * (1 - keep)).to(x.scalar_type());
          const auto s = detail::class_scores(model, perturbed, options.score());
          score_changes.slice(0, start, end).select(1, r) =
              original.slice(0, start, end) -
              detail::probability_of(s, classes.slice(0, start, end));
        });
  }
  return detail::row_pearson(attribution_sums, score_changes).cpu();
}

/// @brief Options of `infidelity`, with chained setters.
struct InfidelityOptions {
  /// Perturbations per image (captum's `n_perturb_samples`, 10).
  TORCH_ARG(int64_t, samples) = 10;
  /// Standard deviation of the Gaussian perturbations `I`, in the units of the images as given
  /// (captum's documented example: 0.003).
  TORCH_ARG(double, noise_std) = 0.003;
  /// Rescale the attributions by the least-squares factor β before scoring (captum's
  /// `normalize`, default false there). On by default in igrad: CAM maps are min–max scaled, so
  /// their absolute scale carries no meaning.
  TORCH_ARG(bool, normalize) = true;
  /// The output compared (captum: the forward function's output, usually logits).
  TORCH_ARG(ModelScore, score) = ModelScore::logit;
  /// Ground-truth classes (default) or the model's predictions on the unmodified image.
  TORCH_ARG(TargetClass, target) = TargetClass::label;
  /// Seed of the CPU generator the perturbations are drawn from (never the global generator).
  TORCH_ARG(uint64_t, seed) = 0;
  /// Perturbed images per forward pass.
  TORCH_ARG(int64_t, batch_size) = 64;
};

/// @brief Infidelity of each image's map (Yeh et al. 2019; captum `infidelity`), `[N]` doubles
/// ≥ 0, lower is better:
/// \f[ \mathrm{INFD}_i = \frac{1}{n}\sum_{j=1}^{n}\Big(\beta_i\, I_j \cdot a_i
///     - \big(s_c(x_i) - s_c(x_i - I_j)\big)\Big)^2, \qquad I_j \sim N(0, \sigma^2)^{C\times H\times W}, \f]
/// `I · a = Σ_{c,h,w} I_{chw} a_{hw}` (the map broadcast over channels). With `normalize`,
/// `β_i = Σ_j (I_j·a_i) Δ_ij / Σ_j (I_j·a_i)²` (0 when the denominator is 0), as captum; without,
/// β = 1.
///
/// The n perturbations are drawn once, in double on the CPU, from a generator seeded with
/// `options.seed()`, and shared by every image (captum draws per image through the user's
/// perturbation function), so an image's value does not depend on its batch.
///
/// `x` `[N, C, H, W]`, `maps` `[N, H, W]` (any sign), `labels` `[N]`. The model runs in eval
/// mode (restored after), without gradients. Results are on the CPU. Throws `InvalidArgument`
/// for bad shapes, labels, `samples < 1` or a negative noise.
inline torch::Tensor infidelity(const AnyModel& model, const torch::Tensor& x,
                                const torch::Tensor& maps, const torch::Tensor& labels,
                                const InfidelityOptions& options = {}) {
  detail::require_images(x, "infidelity: the images");
  const int64_t n = x.size(0);
  detail::require(n > 0, "infidelity: the images have shape {}, an empty batch; expected at least "
                         "one image", detail::shape_string(x));
  const auto a = detail::checked_attribution_maps(maps, x, "infidelity");
  detail::require(options.samples() >= 1, "InfidelityOptions::samples is {}; expected >= 1",
                  options.samples());
  detail::require(options.noise_std() >= 0 && std::isfinite(options.noise_std()),
                  "InfidelityOptions::noise_std is {}; expected a finite value >= 0",
                  options.noise_std());
  detail::require(options.batch_size() >= 1, "InfidelityOptions::batch_size is {}; expected >= 1",
                  options.batch_size());
  torch::NoGradGuard no_grad;
  TrainingModeGuard eval_mode(model, false);
  const auto scored = detail::scored_classes(
      model, x, labels, options.score(), options.target(), options.batch_size(),
      "InfidelityOptions::batch_size", "infidelity");
  const auto& classes = scored.first;
  const auto& original = scored.second;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed());
  const auto xd = x.detach().to(torch::kDouble);
  auto explained = torch::empty({n, options.samples()}, xd.options());  // I_j · a_i
  auto changes = torch::empty({n, options.samples()}, xd.options());    // Δ_ij
  for (int64_t j = 0; j < options.samples(); ++j) {
    const auto perturbation =
        (torch::randn(x.sizes().slice(1), generator, torch::dtype(torch::kDouble)) *
         options.noise_std())
            .to(x.device());
    explained.select(1, j) = (a * perturbation.sum(0)).sum({1, 2});
    detail::for_each_batch(n, options.batch_size(), "InfidelityOptions::batch_size",
                           [&](int64_t start, int64_t end) {
                             const auto perturbed =
                                 (xd.slice(0, start, end) - perturbation).to(x.scalar_type());
                             const auto s = detail::class_scores(model, perturbed, options.score());
                             changes.slice(0, start, end).select(1, j) =
                                 original.slice(0, start, end) -
                                 detail::probability_of(s, classes.slice(0, start, end));
                           });
  }
  auto beta = torch::ones({n, 1}, xd.options());
  if (options.normalize()) {
    const auto numerator = (explained * changes).sum(1, /*keepdim=*/true);
    const auto denominator = explained.pow(2).sum(1, /*keepdim=*/true);
    beta = torch::where(denominator > 0, numerator / denominator.clamp_min(1e-300),
                        torch::zeros_like(numerator));
  }
  return (beta * explained - changes).pow(2).mean(1).cpu();
}

/// @}
}  // namespace igrad

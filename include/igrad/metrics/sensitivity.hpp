#pragma once
/// @file metrics/sensitivity.hpp
/// @brief Max-sensitivity (Yeh et al. 2019; captum `sensitivity_max`): how much an explanation
/// changes, at most, when the image is perturbed a little (docs/reference.md §5).

#include <igrad/detail/batched_jobs.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics/evaluate.hpp>
#include <igrad/metrics/masking.hpp>
#include <igrad/model.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/arg.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace igrad {

/// @addtogroup metrics_group
/// @{

/// @brief Options of `max_sensitivity`, with chained setters.
struct SensitivityOptions {
  /// n, the number of perturbations (captum's `n_perturb_samples`, default 10).
  TORCH_ARG(int64_t, samples) = 10;
  /// r, the radius of the L∞ ball the perturbations are drawn in (captum's `perturb_radius`,
  /// default 0.02), in the units of the images as given (normalised, if they are).
  TORCH_ARG(double, radius) = 0.02;
  /// Seed of the CPU generator the perturbations are drawn from (never the global generator).
  TORCH_ARG(uint64_t, seed) = 0;
  /// Images per explainer call.
  TORCH_ARG(int64_t, batch_size) = 64;
};

/// @brief Max-sensitivity of an explainer on each image, `[N]` doubles:
/// \f[ \mathrm{SENS}_i = \max_{j=1..n} \frac{\lVert e(x_i + \delta_j) - e(x_i) \rVert_2}
///     {\lVert e(x_i) \rVert_2},\qquad \delta_j \sim U[-r, r]^{C \times H \times W} \f]
/// with `e` the explainer's maps for the class `targets[i]` (undefined: the model's predicted
/// class on `x_i`, kept for the perturbed images) and the norm the Frobenius norm of the map.
/// Lower is more robust. An image whose map is zero everywhere gets the unnormalised
/// `max_j ‖e(x_i + δ_j)‖` (captum's convention).
///
/// The n perturbations are drawn once, in order, in double on the CPU from a generator seeded
/// with `options.seed()`, and the same `δ_j` perturb every image: an image's value does not
/// depend on the batch it comes in (captum draws independent noise per image). The model runs
/// in eval mode (its mode is restored). Throws `InvalidArgument` for an empty batch, bad
/// targets, `samples < 1` or a negative radius; `NumericalError` when the explainer returns
/// NaN maps.
inline torch::Tensor max_sensitivity(const AnyModel& model, const Explainer& explainer,
                                     const torch::Tensor& x, const torch::Tensor& targets = {},
                                     const SensitivityOptions& options = {}) {
  detail::require(static_cast<bool>(explainer.maps),
                  "max_sensitivity(): the explainer '{}' has no maps function", explainer.name);
  detail::require_images(x, "max_sensitivity: the images");
  const int64_t n = x.size(0);
  detail::require(n > 0, "max_sensitivity: the images have shape {}, an empty batch; expected at "
                         "least one image", detail::shape_string(x));
  detail::require(options.samples() >= 1, "SensitivityOptions::samples is {}; expected >= 1",
                  options.samples());
  detail::require(options.radius() >= 0 && std::isfinite(options.radius()),
                  "SensitivityOptions::radius is {}; expected a finite value >= 0",
                  options.radius());
  detail::require(options.batch_size() >= 1, "SensitivityOptions::batch_size is {}; expected >= 1",
                  options.batch_size());
  TrainingModeGuard eval_mode(model, false);
  torch::Tensor classes;
  {
    torch::NoGradGuard no_grad;
    const auto probabilities = detail::class_probabilities(model, x.slice(0, 0, 1));
    if (targets.defined()) {
      detail::require_labels(targets, n, probabilities.size(1), "max_sensitivity: the targets");
      classes = targets.to(x.device(), torch::kLong);
    } else {
      std::vector<torch::Tensor> predicted;
      detail::for_each_batch(n, options.batch_size(), "SensitivityOptions::batch_size",
                             [&](int64_t start, int64_t end) {
                               predicted.push_back(detail::class_probabilities(
                                   model, x.slice(0, start, end)).argmax(1));
                             });
      classes = torch::cat(predicted).to(x.device());
    }
  }
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed());
  std::vector<torch::Tensor> perturbations;
  for (int64_t j = 0; j < options.samples(); ++j)
    perturbations.push_back(((torch::rand(x.sizes().slice(1), generator,
                                          torch::dtype(torch::kDouble)) * 2 - 1) *
                             options.radius())
                                .to(x.device(), x.scalar_type()));

  const auto explain = [&](const torch::Tensor& images, const torch::Tensor& chunk_classes,
                           const char* what) {
    const auto maps = explainer.maps(model, images, chunk_classes);
    detail::require(maps.defined() && maps.dim() >= 2 && maps.size(0) == images.size(0) &&
                        maps.is_floating_point(),
                    "the explainer '{}' returned maps of shape {} for {} images; expected "
                    "floating-point [N, H, W] maps, one per image",
                    explainer.name, detail::shape_string(maps), images.size(0));
    detail::require<NumericalError>(detail::all_finite(maps),
                                    "the explainer '{}' returned NaN or infinite maps ({}); "
                                    "expected finite maps", explainer.name, what);
    return maps.detach().to(torch::kCPU, torch::kDouble).flatten(1);
  };
  std::vector<torch::Tensor> parts;
  detail::for_each_batch(
      n, options.batch_size(), "SensitivityOptions::batch_size", [&](int64_t start, int64_t end) {
        const auto images = x.slice(0, start, end);
        const auto chunk_classes = classes.slice(0, start, end);
        const auto original = explain(images, chunk_classes, "the images as given");
        auto largest = torch::zeros({end - start}, torch::kDouble);
        for (const auto& delta : perturbations) {
          const auto perturbed = explain(images + delta, chunk_classes, "a perturbed image");
          detail::require(perturbed.sizes() == original.sizes(),
                          "the explainer '{}' returned maps of {} values for a perturbed image "
                          "and {} for the image; expected the same shape",
                          explainer.name, perturbed.size(1), original.size(1));
          largest = torch::maximum(largest, (perturbed - original).norm(2, {1}));
        }
        const auto norm = original.norm(2, {1});
        parts.push_back(torch::where(norm > 0, largest / norm.clamp_min(1e-300), largest));
      });
  return torch::cat(parts);
}

/// @}
}  // namespace igrad

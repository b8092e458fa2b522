#pragma once
/// @file cam/cam_method.hpp
/// @brief The `CamMethod` concept, the options and request every CAM method receives, the
/// post-processing of SPEC §4, and the building blocks methods are written from.
///
/// A CAM method is a small policy type: given a `CamRequest` (the model in evaluation mode, the
/// input batch, one target class per sample and the options) it returns the map *before*
/// post-processing, `[N, h, w]`. `igrad::explain<C>` does everything around it — validation,
/// evaluation mode, default targets, device and dtype, ReLU, min–max scaling and upsampling — so
/// that every method is called the same way and batches give the same maps as single images.

#include <igrad/concepts.hpp>
#include <igrad/detail/batched_jobs.hpp>
#include <igrad/detail/maps.hpp>
#include <igrad/detail/model_calls.hpp>
#include <igrad/detail/noise.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/detail/torch_errors.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>
#include <igrad/rules/backprop_rules.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <concepts>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace igrad {

/// @defgroup cam_group Class activation maps
/// @brief The CAM family (SPEC §4): methods, options, post-processing and `explain`.
/// @{

/// @brief Which class score the masked forward passes of Score-CAM, SS-CAM and IS-CAM compare.
enum class CamScore {
  probability,  ///< softmax probability `P(c | x)` (Score-CAM paper; igrad's default)
  logit,        ///< the logit `y^c` (the seed paper's eq. (6))
};

/// @brief Which Score-CAM convention to compute.
enum class ScoreCamConvention {
  /// SPEC §4: masks upsampled with `align_corners = false`, `a_k = s_c(x ∘ M_k) − s_c(0)`.
  igrad,
  /// pytorch-grad-cam's ScoreCAM: masks upsampled with `align_corners = true`, weights
  /// `softmax_k` of the masked logits, no baseline (`CamOptions::score` is then ignored).
  pytorch_grad_cam,
};

/// @brief Which Guided Grad-CAM convention to compute.
enum class GuidedGradCamConvention {
  /// SPEC §4: the post-processed Grad-CAM map (ReLU, min–max) upsampled bilinearly
  /// (`align_corners = false`) times the guided-backprop gradient.
  igrad,
  /// captum's `GuidedGradCam`: the raw, signed Grad-CAM map `Σ_k α_k A^k` (no ReLU, no scaling)
  /// upsampled to the input size by nearest neighbour (`F.interpolate`'s default `nearest`),
  /// times the guided-backprop gradient.
  captum,
};

/// @brief Hyper-parameters of the CAM methods, with chained setters:
/// `CamOptions().batch_size(64).seed(3)`. Each method reads the fields it needs.
struct CamOptions {
  /// Number of masked (or ablated) inputs per forward pass of Score-CAM, SS-CAM, IS-CAM,
  /// Ablation-CAM and the CAM head probe, and images per optimisation batch of Opti-CAM. Bounds
  /// their memory: jobs are batched across channels and images together.
  TORCH_ARG(int64_t, batch_size) = 32;
  /// Called as `progress(done, total)` after each batch of masked forward passes.
  TORCH_ARG(std::function<void(int64_t, int64_t)>, progress) = nullptr;
  /// Score of the masked forward passes (Score-CAM, SS-CAM, IS-CAM).
  TORCH_ARG(CamScore, score) = CamScore::probability;
  /// Score-CAM convention (SPEC §4); the other methods ignore it.
  TORCH_ARG(ScoreCamConvention, score_cam_convention) = ScoreCamConvention::igrad;
  /// Guided Grad-CAM convention (`GuidedGradCam`, `guided_grad_cam_attributions`); the other
  /// methods ignore it.
  TORCH_ARG(GuidedGradCamConvention, guided_grad_cam_convention) = GuidedGradCamConvention::igrad;
  /// Seed of the noise of SmoothGrad-CAM++ and SS-CAM when no `generator` is given. The global
  /// RNG is never used, so results do not depend on what ran before.
  TORCH_ARG(uint64_t, seed) = 0;
  /// A CPU generator to draw the noise from instead of `seed` (it advances).
  TORCH_ARG(c10::optional<torch::Generator>, generator) = c10::nullopt;
  /// SmoothGrad-CAM++: number m of noisy copies (Omeiza et al. 2019: 8).
  TORCH_ARG(int64_t, smooth_samples) = 8;
  /// SmoothGrad-CAM++: noise σ as a fraction of each image's range, `σ = level (max x − min x)`.
  TORCH_ARG(double, noise_level) = 0.15;
  /// SS-CAM: noisy masks per channel. 35 as in torch-cam's SSCAM (Wang et al. 2020b's code).
  TORCH_ARG(int64_t, sscam_samples) = 35;
  /// SS-CAM: standard deviation of the Gaussian noise added to each [0,1] mask (torch-cam: 2.0).
  TORCH_ARG(double, sscam_sigma) = 2.0;
  /// IS-CAM: number m of mask scales `j/m`, j = 1..m (Naidu et al. 2020's code: 10).
  TORCH_ARG(int64_t, iscam_steps) = 10;
  /// Opti-CAM: Adam steps per image (Zhang et al. 2024: 50).
  TORCH_ARG(int64_t, opticam_steps) = 50;
  /// Opti-CAM: Adam learning rate (Zhang et al. 2024: 0.1).
  TORCH_ARG(double, opticam_learning_rate) = 0.1;
};

/// @brief What a CAM method receives: the model in evaluation mode, the batch on the model's
/// device and dtype (detached), one target class per sample, and the options.
struct CamRequest {
  AnyModel model;         ///< the model, in evaluation mode for the duration of the call
  torch::Tensor input;    ///< x `[N, C, H, W]`, detached, on the model's device and dtype
  torch::Tensor targets;  ///< class indices `[N]` (long), on the model's device
  CamOptions options;     ///< the caller's options
  /// The feature map `A = features(input)` `[N, K, h, w]`, detached, computed once per batch by
  /// `explain` (which needs the logits anyway); undefined in a request built by hand, in which
  /// case `request_features` computes it.
  torch::Tensor activations;
};

/// @brief The feature map, its gradient and the target scores of a batch (SPEC §4).
struct FeatureGradients {
  torch::Tensor activations;  ///< A `[N, K, h, w]`, detached
  torch::Tensor gradients;    ///< g = ∂y^c/∂A `[N, K, h, w]` (standard rule), detached
  torch::Tensor scores;       ///< y^c `[N]`, the target logits, detached
};

/// @}

namespace detail {

/// Checks a method's result: `[N, h, w]`, finite.
inline void require_raw_map(const torch::Tensor& raw, int64_t n, std::string_view method) {
  require<GraphError>(raw.defined() && raw.dim() == 3 && raw.size(0) == n,
                      "{} returned a map of shape {}; expected [{}, h, w]", method,
                      shape_string(raw), n);
  require<NumericalError>(all_finite(raw), "{} produced a non-finite map; expected finite values",
                          method);
}

/// Runs `total` jobs in batches of `CamOptions::batch_size`: `run(start, end)` handles jobs
/// [start, end); the progress callback hears about each batch.
template <class Run>
void run_in_batches(int64_t total, const CamOptions& options, Run&& run) {
  for_each_batch(total, options.batch_size(), "CamOptions::batch_size", std::forward<Run>(run),
                 options.progress());
}

/// The score `s_c` of masked forward passes: probability or logit of each row's target.
inline torch::Tensor class_score(const torch::Tensor& logits, const torch::Tensor& targets,
                                 CamScore score) {
  return score == CamScore::probability ? gather_targets(logits.softmax(1), targets)
                                        : gather_targets(logits, targets);
}

}  // namespace detail

/// @addtogroup cam_group
/// @{

/// @brief SPEC §4's post-processing of raw maps `[N, h, w]`: ReLU → per-image min–max
/// `(m − min)/(max − min + 1e-7)` → bilinear upsampling to `height × width`
/// (`align_corners = false`) → per-image min–max again. Result in [0, 1]; an all-zero map stays
/// zero (never NaN).
inline torch::Tensor normalize_cam(const torch::Tensor& raw, int64_t height, int64_t width) {
  detail::require(raw.defined() && raw.dim() == 3, "maps have shape {}; expected [N, h, w]",
                  detail::shape_string(raw));
  detail::require(height > 0 && width > 0, "target size {}x{}; expected positive sizes", height,
                  width);
  const auto scaled = detail::min_max_per_sample(torch::relu(raw));
  return detail::min_max_per_sample(detail::resize_maps(scaled, height, width));
}

/// @brief The feature map `A = features(x)` `[N, K, h, w]`, detached, of the request's input
/// (computed once by `explain` and reused), or of another `input` batch when given.
inline torch::Tensor request_features(const CamRequest& request, const torch::Tensor& input = {}) {
  if (!input.defined() && request.activations.defined()) return request.activations;
  torch::NoGradGuard no_grad;
  return detail::checked_features(request.model, input.defined() ? input : request.input);
}

/// @brief The feature map `A`, the gradient `g = ∂y^c/∂A` of each sample's target logit, and the
/// target logits, for an input batch (default: the request's input).
///
/// The gradient is taken with `torch::autograd::grad` with respect to a detached copy of `A`
/// only, so the parameters' `.grad` are never touched, and since the model is in evaluation mode
/// each sample's gradient depends on that sample alone.
inline FeatureGradients feature_gradients(const CamRequest& request,
                                          const torch::Tensor& input = {}) {
  torch::AutoGradMode enable_grad(true);
  // The gradient stops at A: no graph through the features.
  auto activations = request_features(request, input);
  activations = activations.detach().requires_grad_(true);
  const auto logits = detail::checked_head(request.model, activations);
  const auto scores = detail::gather_targets(logits, request.targets);
  auto gradient = igrad::gradient<StandardReLU>({scores.sum()}, {activations})[0];
  return {activations.detach(), gradient.detach(), scores.detach()};
}

/// @brief `Σ_k weights[n, k] · A[n, k]`: a map `[N, h, w]` from channel weights `[N, K]`.
inline torch::Tensor weighted_feature_sum(const torch::Tensor& weights,
                                          const torch::Tensor& activations) {
  return (weights.view({weights.size(0), weights.size(1), 1, 1}) * activations).sum(1);
}

/// @}
}  // namespace igrad

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
///
/// Why igrad's own methods declare `operator()` as `template <class Deferred = void>`, a template
/// that is never given an argument: its body, and the LibTorch templates that body uses, are then
/// compiled only in the files that call the method, not in every file that includes igrad
/// (README, "Per-area headers and compile time"). It is called like a plain member function; only
/// taking its address needs the argument (`&igrad::GradCam::operator()<>`). Methods written by
/// users need no such thing.

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

#include <array>
#include <concepts>
#include <cstddef>
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

/// @brief Which FEM convention to compute (the two anchors differ).
enum class FemConvention {
  /// Fuad et al. 2020 (and xplique's `FEM`): the binary masks weighted by the channel means,
  /// \f$ \sum_k \mu_k \mathbb 1[A^k > \mu_k + k\sigma_k] \f$.
  paper,
  /// pytorch-grad-cam's `FEM`: the activations weighted by the fraction of their pixels above the
  /// threshold, \f$ \sum_k \mathrm{mean}_{ij}(\mathbb 1[A^k_{ij} > \mu_k + k\sigma_k])\, A^k \f$.
  pytorch_grad_cam,
};

/// @brief The kernel of KPCA-CAM's kernel PCA (scikit-learn's `KernelPCA` kernels).
enum class KpcaKernel {
  linear,   ///< \f$ \langle a, b\rangle \f$ (KPCA-CAM then equals Eigen-CAM up to sign)
  poly,     ///< \f$ (\gamma \langle a, b\rangle + c_0)^d \f$
  rbf,      ///< \f$ \exp(-\gamma \lVert a - b\rVert^2) \f$
  sigmoid,  ///< \f$ \tanh(\gamma \langle a, b\rangle + c_0) \f$ (pytorch-grad-cam's default)
  cosine,   ///< \f$ \langle a, b\rangle / (\lVert a\rVert \lVert b\rVert) \f$
};

/// @brief How the sign of a principal component (arbitrary in an eigen-decomposition) is fixed
/// by the projection methods (Eigen-CAM, EigenGrad-CAM, KPCA-CAM, `EigenSmooth`).
enum class ProjectionSign {
  /// igrad: the projection correlates positively with the channel sum of the decomposed maps.
  correlate_with_sum,
  /// scikit-learn's `svd_flip`: the entry of largest absolute value is positive (KPCA-CAM in
  /// pytorch-grad-cam, through `KernelPCA`).
  largest_entry_positive,
};

/// @brief A differentiable class score of the gradient methods: `score(logits [N, classes],
/// targets [N])` → `[N]`, each row depending on its own logits only.
using CamTargetScore = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>;

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
  /// The score `y^c` whose gradient the gradient methods weight (`feature_gradients`; the methods
  /// for which `cam_uses_target_score` is true): the target logit when empty (SPEC §4).
  /// `igrad::rest_score` is Shapley-CAM's recommended ReST score; Finer-CAM sets its own.
  TORCH_ARG(CamTargetScore, target_score) = nullptr;
  /// FEM: k of the k-sigma threshold `μ_k + k σ_k` (pytorch-grad-cam and xplique: 2).
  TORCH_ARG(double, fem_k) = 2.0;
  /// FEM convention (the paper's, or pytorch-grad-cam's).
  TORCH_ARG(FemConvention, fem_convention) = FemConvention::paper;
  /// Finer-CAM: α, how much of the similar classes' scores is subtracted (pytorch-grad-cam: 1).
  TORCH_ARG(double, finer_cam_alpha) = 1.0;
  /// Finer-CAM: how many of the most similar classes are compared (pytorch-grad-cam's
  /// `comparison_categories = [1, 2, 3]`: the 3 nearest).
  TORCH_ARG(int64_t, finer_cam_comparisons) = 3;
  /// `AugSmooth`: the brightness factors of the test-time augmentation (pytorch-grad-cam's
  /// `tta.Multiply(factors=[0.9, 1, 1.1])`).
  TORCH_ARG(std::vector<double>, aug_smooth_factors) = std::vector<double>{0.9, 1.0, 1.1};
  /// `AugSmooth`: whether each factor is also applied to the horizontally flipped image
  /// (pytorch-grad-cam's `tta.HorizontalFlip()`).
  TORCH_ARG(bool, aug_smooth_flip) = true;
  /// KPCA-CAM: the kernel (pytorch-grad-cam: sigmoid).
  TORCH_ARG(KpcaKernel, kpca_kernel) = KpcaKernel::sigmoid;
  /// KPCA-CAM: γ of the poly, rbf and sigmoid kernels; 0 means scikit-learn's default 1/K
  /// (K = channels).
  TORCH_ARG(double, kpca_gamma) = 0.0;
  /// KPCA-CAM: c₀ of the poly and sigmoid kernels (scikit-learn: 1).
  TORCH_ARG(double, kpca_coef0) = 1.0;
  /// KPCA-CAM: degree d of the poly kernel (scikit-learn: 3).
  TORCH_ARG(int64_t, kpca_degree) = 3;
  /// KPCA-CAM: sign convention of the component (igrad's, or scikit-learn's `svd_flip`).
  TORCH_ARG(ProjectionSign, kpca_sign) = ProjectionSign::correlate_with_sum;
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

/// @brief Cai et al. 2024's ReST score (Residual Softmax Target-class), Shapley-CAM's
/// recommendation: \f$ y^c + \log \mathrm{softmax}(y)_c \f$ per row, i.e. pytorch-grad-cam's
/// `ClassifierOutputReST` (`y_c − cross_entropy(y, c)`). Use it with
/// `CamOptions().target_score(igrad::rest_score)`.
inline torch::Tensor rest_score(const torch::Tensor& logits, const torch::Tensor& targets) {
  return detail::gather_targets(logits, targets) +
         detail::gather_targets(logits.log_softmax(1), targets);
}

/// @brief The score each sample's gradient is taken of: `CamOptions::target_score` of the
/// logits, or the target logit `y^c` (SPEC §4) when none is set. Checks its shape `[N]`.
inline torch::Tensor target_scores(const CamRequest& request, const torch::Tensor& logits) {
  if (!request.options.target_score()) return detail::gather_targets(logits, request.targets);
  auto scores = request.options.target_score()(logits, request.targets);
  detail::require(scores.defined() && scores.dim() == 1 && scores.size(0) == logits.size(0),
                  "CamOptions::target_score returned shape {}; expected one score per sample [{}]",
                  detail::shape_string(scores), logits.size(0));
  return scores;
}

/// @brief Whether method `C` differentiates `CamOptions::target_score` (through
/// `feature_gradients`): the methods Finer-CAM can be built on. Specialise it to `true` for a
/// method of your own written from `feature_gradients`.
template <class C>
inline constexpr bool cam_uses_target_score = false;

/// @brief The feature map `A`, the gradient `g = ∂y^c/∂A` of each sample's target score (the
/// target logit, or `CamOptions::target_score`), and the target scores, for an input batch
/// (default: the request's input).
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
  const auto scores = target_scores(request, logits);
  auto gradient = igrad::gradient<StandardReLU>({scores.sum()}, {activations})[0];
  return {activations.detach(), gradient.detach(), scores.detach()};
}

/// @brief `weights[n, k] · A[n, k]`: the weighted channel maps `[N, K, h, w]` from channel
/// weights `[N, K]` (what `EigenSmooth` decomposes).
inline torch::Tensor weighted_channel_maps(const torch::Tensor& weights,
                                           const torch::Tensor& activations) {
  return weights.view({weights.size(0), weights.size(1), 1, 1}) * activations;
}

/// @brief `Σ_k weights[n, k] · A[n, k]`: a map `[N, h, w]` from channel weights `[N, K]`.
inline torch::Tensor weighted_feature_sum(const torch::Tensor& weights,
                                          const torch::Tensor& activations) {
  return weighted_channel_maps(weights, activations).sum(1);
}

/// @brief A CAM method whose map is a sum over channels of per-channel maps, and which returns
/// those maps `[N, K, h, w]` from `channel_maps(request)` (the "weighted activations" of
/// pytorch-grad-cam: `w_k A^k` for the weighted-sum methods, `g^k ⊙ A^k` for HiRes-CAM...).
/// `EigenSmooth<C>` needs it.
template <class C>
concept ChannelMapsCamMethod = CamMethod<C> && requires(const C& method, const CamRequest& r) {
  { method.channel_maps(r) } -> std::convertible_to<at::Tensor>;
};

namespace detail {

/// The compile-time name `a + b + c` of a wrapper method, NUL-terminated (`Size` = total length).
template <std::size_t Size>
constexpr std::array<char, Size + 1> join_names(std::string_view a, std::string_view b,
                                               std::string_view c = {}) {
  std::array<char, Size + 1> joined{};
  std::size_t at = 0;
  for (const auto part : {a, b, c})
    for (const char ch : part) joined[at++] = ch;
  return joined;
}

/// Fixes the sign of projections `[N, hw]` (double): `correlate_with_sum` flips a row whose
/// Pearson covariance with `reference` `[N, hw]` is negative; `largest_entry_positive` flips a
/// row whose largest-magnitude entry (the first, on ties) is negative.
inline torch::Tensor fix_projection_sign(const torch::Tensor& projection,
                                         const torch::Tensor& reference, ProjectionSign sign) {
  torch::Tensor flip;
  if (sign == ProjectionSign::correlate_with_sum) {
    flip = ((projection - projection.mean(1, true)) * (reference - reference.mean(1, true)))
               .sum(1, /*keepdim=*/true) < 0;
  } else {
    const auto largest = projection.abs().argmax(1, /*keepdim=*/true);
    flip = projection.gather(1, largest) < 0;
  }
  return torch::where(flip, -projection, projection);
}

/// The projection of each image's maps `[N, K, h, w]`, arranged as an `hw × K` matrix with its
/// columns centred, on its first principal direction (first right-singular vector), `[N, h, w]`,
/// with the sign chosen so that it correlates positively with the channel sum of the maps.
/// Computed in double: the principal direction of a nearly degenerate spectrum is fragile.
inline torch::Tensor first_principal_projection(const torch::Tensor& maps) {
  const int64_t n = maps.size(0), h = maps.size(2), w = maps.size(3);
  const auto matrix = maps.flatten(2).transpose(1, 2).to(torch::kDouble);  // [N, hw, K]
  const auto centred = matrix - matrix.mean(1, /*keepdim=*/true);
  const auto [u, s, vh] = torch::linalg_svd(centred, /*full_matrices=*/false);
  const auto direction = vh.select(1, 0);                                      // [N, K]
  const auto projection = torch::bmm(centred, direction.unsqueeze(2)).squeeze(2);  // [N, hw]
  const auto total = maps.sum(1).flatten(1).to(torch::kDouble);
  return fix_projection_sign(projection, total, ProjectionSign::correlate_with_sum)
      .view({n, h, w})
      .to(maps.scalar_type());
}

}  // namespace detail

/// @}
}  // namespace igrad

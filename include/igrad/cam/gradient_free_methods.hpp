#pragma once
/// @file cam/gradient_free_methods.hpp
/// @brief CAM methods that need no gradient of the class score: CAM, Score-CAM, SS-CAM, IS-CAM,
/// Ablation-CAM, Eigen-CAM, and Opti-CAM (which optimises its own weights) (SPEC §4).
///
/// Each method's `operator()` is a template only so that its body is compiled where the method
/// is called (see cam/cam_method.hpp).

#include <igrad/cam/cam_method.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace igrad {

/// @addtogroup cam_group
/// @{

/// @brief CAM (Zhou et al. 2016): \f$ M = \sum_k W_{c,k} A^k \f$ for a head that is global
/// average pooling followed by a linear layer.
///
/// The head's weights are not read from a module (the model is type-erased and its head may be
/// any callable); they are recovered by probing: `b = head(0)` and `W_{·,k} = head(E_k) − b`
/// where `E_k` is the feature map that is 1 on channel k and 0 elsewhere. igrad then checks that
/// the head really is GAP + Linear on the maps it explains: `head(A) == W · GAP(A) + b` up to
/// floating-point tolerance. A head that is not (a flatten + Linear head, a non-linear head)
/// fails that identity and `GraphError` says so, instead of returning a wrong map.
struct Cam {
  static constexpr const char* name = "CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    torch::NoGradGuard no_grad;
    const auto a = request_features(request);
    const int64_t k = a.size(1), h = a.size(2), w = a.size(3);
    const auto bias = detail::checked_head(request.model, torch::zeros({1, k, h, w}, a.options()));
    std::vector<torch::Tensor> columns;
    detail::run_in_batches(k, request.options, [&](int64_t start, int64_t end) {
      const auto channels = torch::arange(start, end, a.options().dtype(torch::kLong));
      const auto probe = torch::one_hot(channels, k)
                             .to(a.scalar_type())
                             .view({end - start, k, 1, 1})
                             .expand({end - start, k, h, w})
                             .contiguous();
      columns.push_back(detail::checked_head(request.model, probe) - bias);
    });
    const auto weight = torch::cat(columns, 0).t();  // [classes, K]
    const auto logits = detail::checked_head(request.model, a);
    const auto predicted = torch::mm(a.mean({2, 3}), weight.t()) + bias;
    const double tolerance =
        (a.scalar_type() == torch::kDouble ? 1e-9 : 1e-4) *
        (1.0 + logits.abs().max().item<double>() + predicted.abs().max().item<double>());
    const double mismatch = (logits - predicted).abs().max().item<double>();
    detail::require<GraphError>(
        mismatch <= tolerance,
        "CAM needs a head that is global average pooling followed by a linear layer, but "
        "head(A) differs from W·GAP(A) + b by {:.3g} (tolerance {:.3g}); use Grad-CAM for other "
        "heads",
        mismatch, tolerance);
    const auto class_weights = weight.index_select(0, request.targets);  // [N, K]
    return weighted_channel_maps(class_weights, a);
  }
};

namespace detail {

/// The channels `A[i, k]` of the listed (image, channel) pairs upsampled to the input size and
/// min–max scaled to [0, 1] per mask: Score-CAM's masks `M_k`, `[B, 1, H, W]`.
inline torch::Tensor score_cam_masks(const torch::Tensor& activations, const torch::Tensor& image,
                                     const torch::Tensor& channel, int64_t height, int64_t width,
                                     bool align_corners) {
  const auto selected = activations.index({image, channel});  // [B, h, w]
  return min_max_per_sample(resize_maps(selected, height, width, align_corners)).unsqueeze(1);
}

/// `s_c(0)`: the score of each sample's target for the zero input (Score-CAM's baseline).
inline torch::Tensor zero_input_score(const CamRequest& request, CamScore score) {
  const auto logits = checked_forward(request.model, torch::zeros_like(request.input));
  return class_score(logits, request.targets, score);
}

/// Scores `s_c` of `samples` masked inputs per (image, channel) pair, `[N, K, samples]`: job
/// `((i K) + k) samples + j` is scored as `model(make(x_i, M_ik, j, job))`. Jobs are batched
/// across images, channels and samples by `CamOptions::batch_size`.
template <class MakeInput>
torch::Tensor masked_scores(const CamRequest& request, const torch::Tensor& activations,
                            int64_t samples, bool align_corners, CamScore score,
                            MakeInput&& make) {
  const auto& x = request.input;
  const int64_t n = activations.size(0), k = activations.size(1);
  const int64_t height = x.size(2), width = x.size(3);
  auto scores = torch::empty({n * k * samples}, x.options());
  run_in_batches(n * k * samples, request.options, [&](int64_t start, int64_t end) {
    const auto job = torch::arange(start, end, x.options().dtype(torch::kLong));
    const auto pair = job.div(samples, "floor");
    const auto sample = job.remainder(samples);
    const auto image = pair.div(k, "floor");
    const auto channel = pair.remainder(k);
    const auto masks = score_cam_masks(activations, image, channel, height, width, align_corners);
    const auto inputs = make(x.index_select(0, image), masks, sample);
    const auto logits = checked_forward(request.model, inputs);
    scores.slice(0, start, end).copy_(class_score(logits, request.targets.index_select(0, image),
                                                  score));
  });
  return scores.view({n, k, samples});
}

}  // namespace detail

/// @brief Score-CAM (Wang et al. 2020; seed eq. (6)):
/// \f[ a_k = s_c(x \circ M_k) - s_c(x_b), \qquad M = \sum_k a_k A^k, \f]
/// `M_k` = A^k upsampled bilinearly (`align_corners = false`) and min–max scaled to [0, 1],
/// `x_b` = the zero input, `s` = softmax probability (`CamOptions::score` = logit gives the seed's
/// eq. (6)). `ScoreCamConvention::pytorch_grad_cam` reproduces pytorch-grad-cam instead.
/// The N·K masked forward passes are batched by `CamOptions::batch_size`; pairs whose channel is
/// zero everywhere (zero mask, hence the zero input) reuse the zero input's score.
struct ScoreCam {
  static constexpr const char* name = "Score-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    torch::NoGradGuard no_grad;
    const auto a = request_features(request);
    const bool pytorch_grad_cam =
        request.options.score_cam_convention() == ScoreCamConvention::pytorch_grad_cam;
    const CamScore score = pytorch_grad_cam ? CamScore::logit : request.options.score();
    const auto& x = request.input;
    const int64_t n = a.size(0), k = a.size(1);
    // A channel that is zero everywhere upsamples and min–max scales to the zero mask, so its
    // masked input is the zero input, whose score is computed once per image: only the other
    // (image, channel) pairs need a forward pass. Dead ReLU channels are common in trained
    // networks, so this saves work without changing any map.
    const auto zero_scores = detail::zero_input_score(request, score);  // [N]
    auto masked = zero_scores.unsqueeze(1).expand({n, k}).contiguous().view(-1);
    const auto nonzero_pairs = torch::nonzero(a.flatten(2).abs().amax(2).view(-1) != 0).view(-1);
    detail::run_in_batches(nonzero_pairs.numel(), request.options, [&](int64_t start, int64_t end) {
      const auto pair = nonzero_pairs.slice(0, start, end);
      const auto image = pair.div(k, "floor");
      const auto channel = pair.remainder(k);
      const auto masks = detail::score_cam_masks(a, image, channel, x.size(2), x.size(3),
                                                 /*align_corners=*/pytorch_grad_cam);
      const auto logits = detail::checked_forward(request.model, x.index_select(0, image) * masks);
      masked.index_put_({pair},
                        detail::class_score(logits, request.targets.index_select(0, image), score));
    });
    const auto scores = masked.view({n, k});
    const auto weights =
        pytorch_grad_cam ? scores.softmax(1) : scores - zero_scores.unsqueeze(1);
    return weighted_channel_maps(weights, a);
  }
};

/// @brief SS-CAM, Smoothed Score-CAM (Wang et al. 2020b), noise on the masks (the paper's
/// SS-CAM(1)): \f[ a_k = \frac1m \sum_{j=1}^m s_c\big(x \circ (M_k + \varepsilon_j)\big) - s_c(x_b),
/// \quad \varepsilon_j \sim N(0, \sigma^2) \text{ (input-shaped)}, \qquad M = \sum_k a_k A^k. \f]
///
/// Defaults from the authors' code as packaged in torch-cam's `SSCAM`: m = 35
/// (`CamOptions::sscam_samples`), σ = 2.0 (`CamOptions::sscam_sigma`). Unlike torch-cam, igrad
/// keeps Score-CAM's baseline term `s_c(x_b)` of SPEC §4 so that SS-CAM with σ = 0 equals
/// Score-CAM. The N·K·m masked forward passes are batched by `CamOptions::batch_size`; the noise
/// comes from `CamOptions::generator` / `seed` (the same seed and batch size give the same map).
struct SSCam {
  static constexpr const char* name = "SS-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    const auto& o = request.options;
    detail::require(o.sscam_samples() > 0, "CamOptions::sscam_samples is {}; expected at least 1",
                    o.sscam_samples());
    detail::require(o.sscam_sigma() >= 0 && std::isfinite(o.sscam_sigma()),
                    "CamOptions::sscam_sigma is {}; expected a finite value >= 0", o.sscam_sigma());
    torch::NoGradGuard no_grad;
    const auto a = request_features(request);
    auto generator = detail::noise_generator(o.generator(), o.seed());
    const double sigma = o.sscam_sigma();
    const auto scores = detail::masked_scores(
        request, a, o.sscam_samples(), false, o.score(),
        [&](const torch::Tensor& x, const torch::Tensor& m, const torch::Tensor&) {
          return x * (m + sigma * detail::standard_normal(generator, x.sizes(), x));
        });
    const auto weights =
        scores.mean(2) - detail::zero_input_score(request, o.score()).unsqueeze(1);
    return weighted_channel_maps(weights, a);
  }
};

/// @brief IS-CAM, Integrated Score-CAM (Naidu et al. 2020): Score-CAM's score integrated over
/// the mask's scale,
/// \f[ a_k = \frac1m \sum_{j=1}^m s_c\big(x \circ \tfrac{j}{m} M_k\big) - s_c(x_b), \qquad
///     M = \sum_k a_k A^k, \f]
/// m = 10 (`CamOptions::iscam_steps`) as in the authors' code. igrad averages the scores of the
/// scaled masks — the Riemann sum of the paper's integral; torch-cam's `ISCAM` instead scores
/// cumulative sums of the scaled inputs and drops the baseline. Batched like Score-CAM.
struct ISCam {
  static constexpr const char* name = "IS-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    const auto& o = request.options;
    detail::require(o.iscam_steps() > 0, "CamOptions::iscam_steps is {}; expected at least 1",
                    o.iscam_steps());
    torch::NoGradGuard no_grad;
    const auto a = request_features(request);
    const double m = static_cast<double>(o.iscam_steps());
    const auto scores = detail::masked_scores(
        request, a, o.iscam_steps(), false, o.score(),
        [&](const torch::Tensor& x, const torch::Tensor& masks, const torch::Tensor& step) {
          const auto scale = (step.to(x.scalar_type()) + 1.0) / m;
          return x * masks * scale.view({-1, 1, 1, 1});
        });
    const auto weights =
        scores.mean(2) - detail::zero_input_score(request, o.score()).unsqueeze(1);
    return weighted_channel_maps(weights, a);
  }
};

/// @brief Ablation-CAM (Desai & Ramaswamy 2020):
/// \f[ \alpha_k = \frac{y^c - y^c_{|A^k = 0}}{y^c}, \qquad M = \sum_k \alpha_k A^k, \f]
/// where `y^c_{|A^k=0}` is the head's logit with channel k of the feature map set to zero.
/// The N·K ablated head passes are batched by `CamOptions::batch_size`. A logit of exactly zero
/// is replaced by 1e-7 in the denominator (keeping the weights finite).
struct AblationCam {
  static constexpr const char* name = "Ablation-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    torch::NoGradGuard no_grad;
    const auto a = request_features(request);
    const int64_t n = a.size(0), k = a.size(1);
    const auto score = detail::gather_targets(detail::checked_head(request.model, a),
                                              request.targets);
    auto ablated = torch::empty({n * k}, a.options());
    detail::run_in_batches(n * k, request.options, [&](int64_t start, int64_t end) {
      const auto job = torch::arange(start, end, a.options().dtype(torch::kLong));
      const auto image = job.div(k, "floor");
      const auto channel = job.remainder(k);
      const auto keep = 1 - torch::one_hot(channel, k).to(a.scalar_type()).view({-1, k, 1, 1});
      const auto logits = detail::checked_head(request.model, a.index_select(0, image) * keep);
      ablated.slice(0, start, end)
          .copy_(detail::gather_targets(logits, request.targets.index_select(0, image)));
    });
    const auto denominator = torch::where(score == 0, torch::full_like(score, 1e-7), score);
    const auto weights = (score.unsqueeze(1) - ablated.view({n, k})) / denominator.unsqueeze(1);
    return weighted_channel_maps(weights, a);
  }
};

/// @brief Eigen-CAM (Muhammad & Yeasin 2020): the projection of each image's feature map,
/// arranged as an `hw × K` matrix with its columns centred, on its first principal direction
/// (first right-singular vector). The sign, arbitrary in an SVD, is chosen so that the map
/// correlates positively with `Σ_k A^k`. Class-agnostic: the targets are not used.
struct EigenCam {
  static constexpr const char* name = "Eigen-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    torch::NoGradGuard no_grad;
    return detail::first_principal_projection(request_features(request));
  }
};

/// @brief FEM, the Feature Explanation Method (Fuad et al. 2020): each channel thresholded by the
/// k-sigma rule, \f$ T_k = \mu_k + k\,\sigma_k \f$ (mean and population standard deviation
/// of \f$ A^k \f$ over its pixels), and the binary masks weighted by the channel means,
/// \f[ M = \sum_k \mu_k\, \mathbb 1\big[A^k > T_k\big]. \f]
/// k = `CamOptions::fem_k` = 2 (pytorch-grad-cam's and xplique's default). With
/// `FemConvention::pytorch_grad_cam` the map is pytorch-grad-cam's `FEM` instead:
/// \f$ M = \sum_k \mathrm{mean}_{ij}\big(\mathbb 1[A^k_{ij} > T_k]\big)\, A^k \f$.
/// The comparison is strict in both (as pytorch-grad-cam; xplique uses ≥), so a constant channel
/// contributes nothing. Class-agnostic: the targets are not used.
struct Fem {
  static constexpr const char* name = "FEM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]`: `μ_k 1[A^k > T_k]` (paper) or `w_k A^k`
  /// (pytorch-grad-cam).
  torch::Tensor channel_maps(const CamRequest& request) const {
    const double k = request.options.fem_k();
    detail::require(std::isfinite(k), "CamOptions::fem_k is {}; expected a finite value", k);
    torch::NoGradGuard no_grad;
    const auto a = request_features(request);
    const auto mean = a.mean({2, 3}, /*keepdim=*/true);
    // Population standard deviation (numpy's np.std, ddof = 0), as pytorch-grad-cam.
    const auto deviation = (a - mean).square().mean({2, 3}, /*keepdim=*/true).sqrt();
    const auto above = (a > mean + k * deviation).to(a.scalar_type());
    if (request.options.fem_convention() == FemConvention::pytorch_grad_cam)
      return above.mean({2, 3}, /*keepdim=*/true) * a;
    return mean * above;
  }
};

/// @brief Opti-CAM (Zhang et al. 2024): channel weights optimised per image,
/// \f[ S = \sum_k \mathrm{softmax}(w)_k A^k, \qquad
///     w^\star = \arg\max_w\, y^c\big(x \circ \mathrm{norm}(\mathrm{Up}(S))\big), \f]
/// `Up` = bilinear upsampling (`align_corners = false`), `norm` = per-image min–max as in the
/// post-processing. Adam from w = 0 (uniform weights), learning rate 0.1, 50 steps
/// (`CamOptions::opticam_learning_rate`, `opticam_steps`). Images are optimised
/// `CamOptions::batch_size` at a time; each has its own weights (the objective is a sum of
/// per-image terms and Adam is element-wise, so batching does not couple them). Only `w` is
/// differentiated (`torch::autograd::grad`): the parameters' `.grad` stay untouched.
struct OptiCam {
  static constexpr const char* name = "Opti-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: S for the optimised weights.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `softmax(w*)_k A^k` `[N, K, h, w]` whose sum is the map.
  torch::Tensor channel_maps(const CamRequest& request) const {
    const auto& o = request.options;
    detail::require(o.opticam_steps() >= 0, "CamOptions::opticam_steps is {}; expected >= 0",
                    o.opticam_steps());
    detail::require(o.opticam_learning_rate() > 0 && std::isfinite(o.opticam_learning_rate()),
                    "CamOptions::opticam_learning_rate is {}; expected a finite value > 0",
                    o.opticam_learning_rate());
    torch::Tensor a;
    {
      torch::NoGradGuard no_grad;
      a = request_features(request);
    }
    const auto& x = request.input;
    const int64_t n = a.size(0), height = x.size(2), width = x.size(3);
    std::vector<torch::Tensor> maps;
    CamOptions per_image = o;
    per_image.progress(nullptr);
    detail::run_in_batches(n, per_image, [&](int64_t start, int64_t end) {
      const auto features = a.slice(0, start, end);
      const auto input = x.slice(0, start, end);
      const auto targets = request.targets.slice(0, start, end);
      auto weights = torch::zeros({end - start, a.size(1)}, a.options()).requires_grad_(true);
      torch::optim::Adam adam({weights},
                              torch::optim::AdamOptions(o.opticam_learning_rate()));
      for (int64_t step = 0; step < o.opticam_steps(); ++step) {
        torch::AutoGradMode enable_grad(true);
        const auto saliency = weighted_feature_sum(weights.softmax(1), features);
        const auto mask = detail::min_max_per_sample(detail::resize_maps(saliency, height, width));
        const auto logits = detail::checked_forward(request.model, input * mask.unsqueeze(1));
        const auto objective = detail::gather_targets(logits, targets).sum();
        weights.mutable_grad() = torch::autograd::grad({-objective}, {weights})[0];
        adam.step();
      }
      torch::NoGradGuard no_grad;
      maps.push_back(weighted_channel_maps(weights.detach().softmax(1), features));
      if (o.progress()) o.progress()(end, n);
    });
    return torch::cat(maps, 0);
  }
};

/// @}
}  // namespace igrad

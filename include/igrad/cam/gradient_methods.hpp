#pragma once
/// @file cam/gradient_methods.hpp
/// @brief CAM methods weighted by the gradient `g = ∂y^c/∂A`: Grad-CAM, Grad-CAM++,
/// SmoothGrad-CAM++, XGrad-CAM, Layer-CAM, HiRes-CAM (SPEC §4).
///
/// Each method's `operator()` is a template only so that its body is compiled where the method
/// is called (see cam/cam_method.hpp).

#include <igrad/cam/cam_method.hpp>

#include <torch/torch.h>

namespace igrad {

/// @addtogroup cam_group
/// @{

/// @brief Grad-CAM (Selvaraju et al. 2017; seed eq. (2)):
/// \f[ \alpha_k = \frac{1}{hw}\sum_{ij} g^k_{ij}, \qquad M = \sum_k \alpha_k A^k. \f]
struct GradCam {
  static constexpr const char* name = "Grad-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    const auto fg = feature_gradients(request);
    return weighted_channel_maps(fg.gradients.mean({2, 3}), fg.activations);
  }
};

namespace detail {

/// Grad-CAM++ channel weights from the feature map and the first three gradient moments
/// (equal to g, g², g³ for one input; averages over noisy inputs for SmoothGrad-CAM++):
/// `α = g² / (2g² + Σ_ab A_ab · g³ + 1e-6)`, 0 where g² = 0; `w_k = Σ_ij α_ij ReLU(g_ij)`.
inline torch::Tensor grad_cam_plus_plus_weights(const torch::Tensor& activations,
                                                const torch::Tensor& g1, const torch::Tensor& g2,
                                                const torch::Tensor& g3) {
  const auto activation_sum = activations.sum({2, 3}, /*keepdim=*/true);
  auto alpha = g2 / (2 * g2 + activation_sum * g3 + 1e-6);
  alpha = torch::where(g2 != 0, alpha, torch::zeros_like(alpha));
  return (alpha * torch::relu(g1)).sum({2, 3});
}

}  // namespace detail

/// @brief Grad-CAM++ (Chattopadhay et al. 2018; seed eqs. (3)(4)):
/// \f[ \alpha^k_{ij} = \frac{(g^k_{ij})^2}{2 (g^k_{ij})^2 + \sum_{ab} A^k_{ab} (g^k_{ij})^3 + 10^{-6}},
///     \qquad w_k = \sum_{ij} \alpha^k_{ij}\,\mathrm{ReLU}(g^k_{ij}), \f]
/// with α = 0 where g = 0 (the exponential-score closed form used by the authors' code).
struct GradCamPlusPlus {
  static constexpr const char* name = "Grad-CAM++";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    const auto fg = feature_gradients(request);
    const auto& g = fg.gradients;
    const auto g2 = g * g;
    return weighted_channel_maps(
        detail::grad_cam_plus_plus_weights(fg.activations, g, g2, g2 * g), fg.activations);
  }
};

/// @brief SmoothGrad-CAM++ (Omeiza et al. 2019; seed eq. (5)): Grad-CAM++ with g, g² and g³
/// each averaged over m noisy inputs `x + ε`, `ε ~ N(0, σ²)`.
///
/// Defaults m = `CamOptions::smooth_samples` = 8, `σ = noise_level · (max x − min x)` with
/// `noise_level` = 0.15, per image. The feature map `A` (the map's channels and the Σ_ab A_ab of
/// the denominator) is the clean input's. The noise is drawn on the CPU from
/// `CamOptions::generator` or `CamOptions::seed`, never from the global RNG.
struct SmoothGradCamPlusPlus {
  static constexpr const char* name = "SmoothGrad-CAM++";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    const auto& o = request.options;
    detail::require(o.smooth_samples() > 0,
                    "CamOptions::smooth_samples is {}; expected at least 1", o.smooth_samples());
    const auto& x = request.input;
    const auto sigma = detail::noise_scale(x, o.noise_level(), "CamOptions::noise_level");
    const auto clean = feature_gradients(request);
    auto generator = detail::noise_generator(o.generator(), o.seed());
    torch::Tensor g1 = torch::zeros_like(clean.gradients), g2 = torch::zeros_like(g1),
                  g3 = torch::zeros_like(g1);
    for (int64_t s = 0; s < o.smooth_samples(); ++s) {
      const auto noisy = x + sigma * detail::standard_normal(generator, x.sizes(), x);
      const auto g = feature_gradients(request, noisy).gradients;
      const auto g_squared = g * g;
      g1 += g;
      g2 += g_squared;
      g3 += g_squared * g;
      if (o.progress()) o.progress()(s + 1, o.smooth_samples());
    }
    const double m = static_cast<double>(o.smooth_samples());
    return weighted_channel_maps(
        detail::grad_cam_plus_plus_weights(clean.activations, g1 / m, g2 / m, g3 / m),
        clean.activations);
  }
};

/// @brief XGrad-CAM (Fu et al. 2020):
/// \f[ \alpha_k = \frac{\sum_{ij} A^k_{ij} g^k_{ij}}{\sum_{ab} A^k_{ab} + 10^{-7}}, \qquad
///     M = \sum_k \alpha_k A^k. \f]
struct XGradCam {
  static constexpr const char* name = "XGrad-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    const auto fg = feature_gradients(request);
    const auto& a = fg.activations;
    const auto weights = (a * fg.gradients).sum({2, 3}) / (a.sum({2, 3}) + 1e-7);
    return weighted_channel_maps(weights, a);
  }
};

/// @brief Layer-CAM (Jiang et al. 2021): \f$ M = \sum_k \mathrm{ReLU}(g^k) \odot A^k \f$.
struct LayerCam {
  static constexpr const char* name = "Layer-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    const auto fg = feature_gradients(request);
    return torch::relu(fg.gradients) * fg.activations;
  }
};

/// @brief HiRes-CAM (Draelos & Carin 2020): \f$ M = \sum_k g^k \odot A^k \f$; equals Grad-CAM
/// when the gradient is spatially constant (a GAP + Linear head).
struct HiResCam {
  static constexpr const char* name = "HiRes-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `[N, K, h, w]` whose sum is the map (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const {
    const auto fg = feature_gradients(request);
    return fg.gradients * fg.activations;
  }
};

/// @cond INTERNAL
template <>
inline constexpr bool cam_uses_target_score<GradCam> = true;
template <>
inline constexpr bool cam_uses_target_score<GradCamPlusPlus> = true;
template <>
inline constexpr bool cam_uses_target_score<SmoothGradCamPlusPlus> = true;
template <>
inline constexpr bool cam_uses_target_score<XGradCam> = true;
template <>
inline constexpr bool cam_uses_target_score<LayerCam> = true;
template <>
inline constexpr bool cam_uses_target_score<HiResCam> = true;
/// @endcond

/// @}
}  // namespace igrad

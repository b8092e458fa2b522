#pragma once
/// @file cam/guided_grad_cam.hpp
/// @brief Guided Grad-CAM (Selvaraju et al. 2017): Grad-CAM times the guided-backprop gradient.
///
/// Each method's `operator()` is a template only so that its body is compiled where the method
/// is called (see cam/cam_method.hpp).

#include <igrad/cam/cam_method.hpp>
#include <igrad/cam/gradient_methods.hpp>
#include <igrad/rules/input_gradient.hpp>

#include <torch/torch.h>

namespace igrad {

/// @addtogroup cam_group
/// @{

namespace detail {

/// Nearest-neighbour upsampling of `[N, h, w]` maps to `[N, H, W]` as PyTorch's
/// `F.interpolate(mode="nearest")` does it: output pixel i reads input pixel floor(i · h / H).
inline torch::Tensor upsample_nearest(const torch::Tensor& maps, int64_t height, int64_t width) {
  namespace F = torch::nn::functional;
  return F::interpolate(maps.unsqueeze(1), F::InterpolateFuncOptions()
                                               .size(std::vector<int64_t>{height, width})
                                               .mode(torch::kNearest))
      .squeeze(1);
}

/// The input-shaped Guided Grad-CAM product `[N, C, H, W]` of a request, in the convention
/// `CamOptions::guided_grad_cam_convention` names.
inline torch::Tensor guided_grad_cam_product(const CamRequest& request) {
  const auto& x = request.input;
  const auto raw = GradCam{}(request);
  const auto grad_cam =
      request.options.guided_grad_cam_convention() == GuidedGradCamConvention::captum
          ? upsample_nearest(raw, x.size(2), x.size(3))
          : normalize_cam(raw, x.size(2), x.size(3));
  // The guided gradient builds a graph through the whole model: CamOptions::batch_size
  // images at a time bound its memory (each image's gradient depends on it alone).
  auto guided = torch::empty_like(x);
  run_in_batches(x.size(0), request.options, [&](int64_t start, int64_t end) {
    guided.slice(0, start, end)
        .copy_(input_gradient<GuidedReLU>(request.model, x.slice(0, start, end),
                                          request.targets.slice(0, start, end),
                                          InputGradientOptions().of(GradientOf::target_logit))
                   .detach());
  });
  return (grad_cam.unsqueeze(1) * guided).detach();
}

}  // namespace detail

/// @brief Guided Grad-CAM (Selvaraju et al. 2017): the Grad-CAM map, post-processed and
/// upsampled bilinearly to the input size (`align_corners = false`), times the guided-backprop
/// gradient `∂_G y^c / ∂x` (GuidedReLU at every rectifier site, SPEC §1).
///
/// The product is input-shaped `[N, C, H, W]` (`guided_grad_cam_attributions` returns it); as a
/// map it is reduced over the channels by the largest absolute value (the same reduction as
/// `saliency_map`), so the raw map is at input resolution and non-negative. With
/// `CamOptions().guided_grad_cam_convention(GuidedGradCamConvention::captum)` the Grad-CAM
/// factor is captum's instead (raw, signed, nearest-upsampled). The guided gradient is computed
/// `CamOptions::batch_size` images at a time. Throws `GraphError` for a model without rectifier
/// sites, since guided backprop would silently be the plain gradient there.
struct GuidedGradCam {
  static constexpr const char* name = "Guided Grad-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, H, W]` (input resolution).
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return detail::guided_grad_cam_product(request).abs().amax(1);
  }
};

/// @}
}  // namespace igrad

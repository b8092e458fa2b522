#pragma once
/// @file cam/guided_grad_cam.hpp
/// @brief Guided Grad-CAM (Selvaraju et al. 2017): Grad-CAM times the guided-backprop gradient.

#include <igrad/cam/cam_method.hpp>
#include <igrad/cam/gradient_methods.hpp>
#include <igrad/rules/input_gradient.hpp>

#include <torch/torch.h>

namespace igrad {

/// @addtogroup cam_group
/// @{

/// @brief Guided Grad-CAM (Selvaraju et al. 2017): the Grad-CAM map, post-processed and
/// upsampled bilinearly to the input size (`align_corners = false`), times the guided-backprop
/// gradient `∂_G y^c / ∂x` (GuidedReLU at every rectifier site, SPEC §1).
///
/// The product is input-shaped `[N, C, H, W]`; as a map it is reduced over the channels by the
/// largest absolute value (the same reduction as `saliency_map`), so the raw map is at input
/// resolution and non-negative. The guided gradient is computed `CamOptions::batch_size` images
/// at a time. Throws `GraphError` for a model without rectifier sites, since
/// guided backprop would silently be the plain gradient there.
struct GuidedGradCam {
  static constexpr const char* name = "Guided Grad-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, H, W]` (input resolution).
  torch::Tensor operator()(const CamRequest& request) const {
    const auto& x = request.input;
    const auto grad_cam = normalize_cam(GradCam{}(request), x.size(2), x.size(3));
    // The guided gradient builds a graph through the whole model: CamOptions::batch_size
    // images at a time bound its memory (each image's gradient depends on it alone).
    auto guided = torch::empty_like(x);
    detail::run_in_batches(x.size(0), request.options, [&](int64_t start, int64_t end) {
      guided.slice(0, start, end)
          .copy_(input_gradient<GuidedReLU>(request.model, x.slice(0, start, end),
                                            request.targets.slice(0, start, end),
                                            InputGradientOptions().of(GradientOf::target_logit))
                     .detach());
    });
    return (grad_cam.unsqueeze(1) * guided).abs().amax(1).detach();
  }
};

/// @}
}  // namespace igrad

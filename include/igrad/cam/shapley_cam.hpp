#pragma once
/// @file cam/shapley_cam.hpp
/// @brief Shapley-CAM (Cai et al. 2024): Grad-CAM's weights corrected by a Hessian-vector
/// product, from a double backward pass.
///
/// Each method's `operator()` is a template only so that its body is compiled where the method
/// is called (see cam/cam_method.hpp).

#include <igrad/cam/cam_method.hpp>

#include <torch/torch.h>

namespace igrad {

/// @addtogroup cam_group
/// @{

/// @brief Shapley-CAM (Cai et al. 2024, "CAMs as Shapley Value-based Explainers";
/// pytorch-grad-cam's `ShapleyCAM`): the channel weights are the spatial mean of the gradient
/// minus half the Hessian-vector product with the activations,
/// \f[ w_k = \frac{1}{hw} \sum_{ij} \Big( g - \tfrac12\, H A \Big)^k_{ij}, \qquad
///     H = \frac{\partial^2 s}{\partial A^2}, \qquad M = \sum_k w_k A^k, \f]
/// a second-order estimate of each channel's Shapley value. `s` is the score pytorch-grad-cam
/// differentiates, the target's `ClassifierOutputTarget`, i.e. the logit `y^c`; the authors
/// recommend their ReST score `y^c + log softmax(y)_c`, which is
/// `CamOptions().target_score(igrad::rest_score)`. With a logit and a head that is linear in A
/// (GAP + Linear, as igrad's models), H = 0 and Shapley-CAM is Grad-CAM; with ReST (or a
/// non-linear head) it differs.
///
/// The product `H A` is `torch::autograd::grad` of `g` (built with `create_graph`) with respect
/// to a detached copy of A, with `A` as the vector: only A is differentiated, so the parameters'
/// `.grad` are never touched. A gradient that does not depend on A (H = 0) gives `H A = 0`.
struct ShapleyCam {
  static constexpr const char* name = "Shapley-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`: the channel maps summed.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    return channel_maps(request).sum(1);
  }
  /// @brief The channel maps `w_k A^k` `[N, K, h, w]`.
  torch::Tensor channel_maps(const CamRequest& request) const {
    torch::AutoGradMode enable_grad(true);
    const auto activations = request_features(request).detach().requires_grad_(true);
    const auto scores = target_scores(request, detail::checked_head(request.model, activations));
    const auto gradient = igrad::gradient<StandardReLU>({scores.sum()}, {activations}, {},
                                                        /*retain_graph=*/true,
                                                        /*create_graph=*/true)[0];
    torch::Tensor hessian_product;
    if (gradient.requires_grad())
      hessian_product = torch::autograd::grad({gradient}, {activations}, {activations.detach()},
                                              /*retain_graph=*/false, /*create_graph=*/false,
                                              /*allow_unused=*/true)[0];
    torch::NoGradGuard no_grad;
    auto correction = gradient.detach();
    if (hessian_product.defined()) correction = correction - 0.5 * hessian_product.detach();
    return weighted_channel_maps(correction.mean({2, 3}), activations.detach());
  }
};

/// @cond INTERNAL
template <>
inline constexpr bool cam_uses_target_score<ShapleyCam> = true;
/// @endcond

/// @}
}  // namespace igrad

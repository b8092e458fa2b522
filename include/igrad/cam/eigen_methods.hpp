#pragma once
/// @file cam/eigen_methods.hpp
/// @brief CAM methods that project feature maps on a principal component: EigenGrad-CAM (PCA of
/// `g ∘ A`) and KPCA-CAM (kernel PCA of `A`). Eigen-CAM itself is in gradient_free_methods.hpp.
///
/// Each method's `operator()` is a template only so that its body is compiled where the method
/// is called (see cam/cam_method.hpp).

#include <igrad/cam/cam_method.hpp>

#include <torch/torch.h>

#include <cmath>

namespace igrad {

/// @addtogroup cam_group
/// @{

/// @brief EigenGrad-CAM (pytorch-grad-cam's `EigenGradCAM`; Eigen-CAM, Muhammad & Yeasin 2020,
/// applied to the gradient-weighted activations): the projection of each image's
/// \f$ g \circ A \f$, arranged as an `hw × K` matrix with its columns centred, on its first
/// principal direction,
/// \f[ M = (G - \bar G)\, v_1, \qquad G_{ij,k} = g^k_{ij} A^k_{ij}, \f]
/// \f$ v_1 \f$ the first right-singular vector of \f$ G - \bar G \f$. The sign, arbitrary in an
/// SVD (pytorch-grad-cam leaves it to LAPACK), follows igrad's Eigen-CAM convention: the map
/// correlates positively with the channel sum of the decomposed matrix, here
/// \f$ \sum_k g^k \odot A^k \f$ (the HiRes-CAM map). `g` is the gradient of the target score
/// (`CamOptions::target_score`, the logit by default).
struct EigenGradCam {
  static constexpr const char* name = "EigenGrad-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    const auto fg = feature_gradients(request);
    torch::NoGradGuard no_grad;
    return detail::first_principal_projection(fg.gradients * fg.activations);
  }
};

namespace detail {

/// The kernel matrices `[N, P, P]` of row vectors `x` `[N, P, K]` (scikit-learn's definitions).
inline torch::Tensor kpca_kernel_matrix(const torch::Tensor& x, const CamOptions& o) {
  const double channels = static_cast<double>(x.size(2));
  const double gamma = o.kpca_gamma() == 0 ? 1.0 / channels : o.kpca_gamma();
  const auto inner = torch::bmm(x, x.transpose(1, 2));
  switch (o.kpca_kernel()) {
    case KpcaKernel::linear: return inner;
    case KpcaKernel::poly:
      return (gamma * inner + o.kpca_coef0()).pow(static_cast<double>(o.kpca_degree()));
    case KpcaKernel::rbf: {
      const auto squared = x.square().sum(2);
      const auto distance =
          (squared.unsqueeze(2) + squared.unsqueeze(1) - 2 * inner).clamp_min(0);
      return torch::exp(-gamma * distance);
    }
    case KpcaKernel::sigmoid: return torch::tanh(gamma * inner + o.kpca_coef0());
    case KpcaKernel::cosine: {
      // A zero row has no direction: scikit-learn's normalize leaves it zero, so does this.
      const auto norm = x.norm(2, 2, /*keepdim=*/true);
      const auto unit = x / torch::where(norm == 0, torch::ones_like(norm), norm);
      return torch::bmm(unit, unit.transpose(1, 2));
    }
  }
  return inner;
}

}  // namespace detail

/// @brief KPCA-CAM (Karmani et al. 2024, pytorch-grad-cam's `KPCA_CAM`): Eigen-CAM with kernel
/// PCA. Each image's feature map, arranged as an `hw × K` matrix X with its columns centred,
/// gives the kernel matrix \f$ \mathcal K_{pq} = \kappa(x_p, x_q) \f$ over its pixels, centred in
/// feature space, \f$ \tilde{\mathcal K} = \mathcal K - 1\mathcal K - \mathcal K 1 +
/// 1\mathcal K 1 \f$ (1 = the matrix of entries 1/hw); the map is the first kernel principal
/// component's scores,
/// \f[ M = \sqrt{\lambda_1}\, u_1, \f]
/// \f$ (\lambda_1, u_1) \f$ the largest eigenpair of \f$ \tilde{\mathcal K} \f$ (λ clipped at 0),
/// as scikit-learn's `KernelPCA(n_components=1).fit_transform`. Defaults are those pytorch-grad-cam
/// passes to scikit-learn: sigmoid kernel \f$ \tanh(\gamma\langle a,b\rangle + c_0) \f$,
/// \f$ \gamma = 1/K \f$, \f$ c_0 = 1 \f$ (`CamOptions::kpca_kernel`, `kpca_gamma`, `kpca_coef0`,
/// `kpca_degree`). The sign follows igrad's Eigen-CAM convention (the map correlates positively
/// with \f$ \sum_k A^k \f$); `CamOptions().kpca_sign(ProjectionSign::largest_entry_positive)` is
/// scikit-learn's `svd_flip`, which pytorch-grad-cam inherits. Dense eigen-decomposition in
/// double (scikit-learn switches to ARPACK above 200 pixels: the same component, up to its
/// tolerance). Class-agnostic: the targets are not used.
struct KpcaCam {
  static constexpr const char* name = "KPCA-CAM";  ///< display name
  /// @brief The map before post-processing, `[N, h, w]`.
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    const auto& o = request.options;
    detail::require(std::isfinite(o.kpca_gamma()) && o.kpca_gamma() >= 0,
                    "CamOptions::kpca_gamma is {}; expected a finite value > 0, or 0 for 1/K",
                    o.kpca_gamma());
    detail::require(std::isfinite(o.kpca_coef0()), "CamOptions::kpca_coef0 is {}; expected a "
                    "finite value", o.kpca_coef0());
    detail::require(o.kpca_degree() >= 1, "CamOptions::kpca_degree is {}; expected at least 1",
                    o.kpca_degree());
    torch::NoGradGuard no_grad;
    const auto a = request_features(request);
    const int64_t n = a.size(0), h = a.size(2), w = a.size(3);
    const auto matrix = a.flatten(2).transpose(1, 2).to(torch::kDouble);  // [N, hw, K]
    const auto centred = matrix - matrix.mean(1, /*keepdim=*/true);
    const auto kernel = detail::kpca_kernel_matrix(centred, o);
    const auto kernel_centred = kernel - kernel.mean(1, true) - kernel.mean(2, true) +
                                kernel.mean({1, 2}, true);
    // Symmetrised against rounding; eigenvalues in ascending order: the last is the largest.
    const auto [values, vectors] =
        torch::linalg_eigh(0.5 * (kernel_centred + kernel_centred.transpose(1, 2)), "L");
    const auto top = values.select(1, -1).clamp_min(0);                  // [N]
    const auto component = vectors.select(2, -1) * top.sqrt().unsqueeze(1);  // [N, hw]
    const auto total = a.sum(1).flatten(1).to(torch::kDouble);
    return detail::fix_projection_sign(component, total, o.kpca_sign())
        .view({n, h, w})
        .to(a.scalar_type());
  }
};

/// @cond INTERNAL
template <>
inline constexpr bool cam_uses_target_score<EigenGradCam> = true;
/// @endcond

/// @}
}  // namespace igrad

#pragma once
/// @file cam/smoothing.hpp
/// @brief pytorch-grad-cam's two smoothings as wrapper policies: `EigenSmooth<C>` (first
/// principal component of the channel maps instead of their sum) and `AugSmooth<C>` (test-time
/// augmentation).
///
/// Why wrappers rather than `CamOptions` flags: a flag would be silently ignored by the methods
/// that cannot honour it (pytorch-grad-cam's Eigen-CAM, FEM and KPCA-CAM ignore `eigen_smooth`
/// without a word), whereas `EigenSmooth<C>` only compiles for a method that exposes its channel
/// maps (`ChannelMapsCamMethod`). A wrapper is also a `CamMethod` of its own, with its own name,
/// so smoothed and unsmoothed variants sit side by side in one ablation or evaluation table
/// (`hana::tuple_t<GradCam, EigenSmooth<GradCam>, AugSmooth<GradCam>>`), and the two compose
/// (`AugSmooth<EigenSmooth<GradCam>>` is pytorch-grad-cam's `aug_smooth=True, eigen_smooth=True`).

#include <igrad/cam/cam_method.hpp>

#include <torch/torch.h>

#include <cmath>
#include <string_view>
#include <vector>

namespace igrad {

/// @addtogroup cam_group
/// @{

/// @brief pytorch-grad-cam's `eigen_smooth`: the projection of method `C`'s channel maps
/// \f$ W^k \f$ (`C::channel_maps`, e.g. \f$ w_k A^k \f$), arranged as an `hw × K` matrix with
/// its columns centred, on their first principal direction, instead of their sum
/// \f$ \sum_k W^k \f$. Sign as igrad's Eigen-CAM: the map correlates positively with
/// \f$ \sum_k W^k \f$, the unsmoothed map (pytorch-grad-cam leaves it to LAPACK).
/// @tparam C a CAM method that exposes its channel maps
template <ChannelMapsCamMethod C>
struct EigenSmooth {
 private:
  static constexpr std::string_view base_name_ = C::name;
  static constexpr std::string_view suffix_ = " (eigen smooth)";
  static constexpr auto name_storage_ =
      detail::join_names<base_name_.size() + suffix_.size()>(base_name_, suffix_);

 public:
  /// display name: "<C's name> (eigen smooth)"
  static constexpr const char* name = name_storage_.data();

  C method{};  ///< the smoothed method

  /// @brief The map before post-processing, `[N, h, w]`.
  torch::Tensor operator()(const CamRequest& request) const {
    const auto maps = method.channel_maps(request);
    torch::NoGradGuard no_grad;
    return detail::first_principal_projection(maps.detach());
  }
};

/// @brief pytorch-grad-cam's `aug_smooth` (test-time augmentation with ttach): method `C` run on
/// each augmented image, each map post-processed (`normalize_cam`) and de-augmented, and the
/// maps averaged:
/// \f[ M = \frac{1}{|T|} \sum_{t \in T} t^{-1}\big(\mathrm{norm}(C(t(x)))\big), \f]
/// T = {identity, horizontal flip} × {x ↦ f x : f ∈ `CamOptions::aug_smooth_factors`}, pytorch-grad-cam's
/// `tta.Compose([HorizontalFlip(), Multiply(factors=[0.9, 1, 1.1])])` (6 passes;
/// `CamOptions::aug_smooth_flip(false)` drops the flips). Only the flip is undone on a map
/// (ttach's `Multiply` leaves masks as they are). The map is at input resolution;
/// `explain_raw` returns the average as pytorch-grad-cam does, `explain` min–max scales it again.
/// Every pass explains the request's targets (the prediction on the original image by default);
/// pytorch-grad-cam with `targets=None` re-predicts on each augmented image instead, so pass the
/// targets explicitly to compare.
/// @tparam C the CAM method to smooth
template <CamMethod C>
struct AugSmooth {
 private:
  static constexpr std::string_view base_name_ = C::name;
  static constexpr std::string_view suffix_ = " (aug smooth)";
  static constexpr auto name_storage_ =
      detail::join_names<base_name_.size() + suffix_.size()>(base_name_, suffix_);

 public:
  /// display name: "<C's name> (aug smooth)"
  static constexpr const char* name = name_storage_.data();

  C method{};  ///< the smoothed method

  /// @brief The map before post-processing, `[N, H, W]` (input resolution), in [0, 1].
  torch::Tensor operator()(const CamRequest& request) const {
    const auto& factors = request.options.aug_smooth_factors();
    detail::require(!factors.empty(), "CamOptions::aug_smooth_factors is empty; expected at "
                    "least one factor (pytorch-grad-cam: 0.9, 1, 1.1)");
    for (const double f : factors)
      detail::require(std::isfinite(f) && f > 0,
                      "CamOptions::aug_smooth_factors holds {}; expected finite factors > 0", f);
    const auto& x = request.input;
    const int64_t n = x.size(0), height = x.size(2), width = x.size(3);
    std::vector<bool> flips{false};
    if (request.options.aug_smooth_flip()) flips.push_back(true);
    auto total = torch::zeros({n, height, width}, x.options());
    for (const bool flip : flips) {
      for (const double f : factors) {
        CamRequest augmented = request;
        augmented.input = (flip ? x.flip({3}) : x) * f;
        // The feature map `explain` computed is the original image's: reuse it for that pass.
        if (flip || f != 1.0) augmented.activations = torch::Tensor();
        const auto raw = method(augmented);
        detail::require_raw_map(raw, n, name);
        torch::NoGradGuard no_grad;
        auto map = normalize_cam(raw.detach(), height, width);
        total += flip ? map.flip({2}) : map;
      }
    }
    return total / static_cast<double>(flips.size() * factors.size());
  }
};

/// @}
}  // namespace igrad

#pragma once
/// @file cam/finer_cam.hpp
/// @brief Finer-CAM (Zhang et al. 2025): a gradient CAM method explaining the target's score
/// against its most similar classes.

#include <igrad/cam/cam_method.hpp>
#include <igrad/cam/gradient_methods.hpp>

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string_view>
#include <type_traits>

namespace igrad {

/// @addtogroup cam_group
/// @{

/// @brief The Finer-CAM score of each row (pytorch-grad-cam's `FinerWeightedTarget`):
/// \f[ s = \frac{\sum_{j \in J} p_j\, (y^c - \alpha\, y^j)}{\sum_{j \in J} p_j + 10^{-9}}, \qquad
///     p = \mathrm{softmax}(y), \f]
/// J = the `comparisons` classes other than c whose logits are closest to `y^c` (smallest
/// `|y^j − y^c|`, ties by the lower index). J is chosen on the values of the logits; `s` is
/// differentiated through everything else, the weights `p_j` included, as pytorch-grad-cam does.
/// Throws `InvalidArgument` when there are fewer than `comparisons` other classes.
inline torch::Tensor finer_cam_score(const torch::Tensor& logits, const torch::Tensor& targets,
                                     double alpha, int64_t comparisons) {
  const int64_t classes = logits.size(1);
  detail::require(comparisons <= classes - 1,
                  "CamOptions::finer_cam_comparisons is {} but the model has {} classes; "
                  "expected at most {} (the classes other than the target)",
                  comparisons, classes, classes - 1);
  torch::Tensor similar;
  {
    torch::NoGradGuard no_grad;
    const auto values = logits.detach();
    auto distance = (values - detail::gather_targets(values, targets).unsqueeze(1)).abs();
    distance.scatter_(1, targets.view({-1, 1}),
                      std::numeric_limits<double>::infinity());  // never the target itself
    // The optional<bool> spelled out: a plain `true` would bind to sort(dim, descending).
    similar = std::get<1>(torch::sort(distance, c10::optional<bool>(true), /*dim=*/1,
                                      /*descending=*/false))
                  .slice(1, 0, comparisons);
  }
  const auto weights = logits.softmax(1).gather(1, similar);  // [N, m]
  const auto target = detail::gather_targets(logits, targets).unsqueeze(1);
  return (weights * (target - alpha * logits.gather(1, similar))).sum(1) /
         (weights.sum(1) + 1e-9);
}

/// @brief Finer-CAM (Zhang et al. 2025, "Finer-CAM: Spotting the Difference Reveals Finer
/// Details for Visual Explanation"; pytorch-grad-cam's `FinerCAM`): the base method `Base`
/// (Grad-CAM by default, as pytorch-grad-cam) explaining `finer_cam_score` — the target's logit
/// minus α times the logits of its most similar classes, weighted by their probabilities —
/// instead of the target's logit, so that features shared with look-alike classes cancel.
///
/// Options: α = `CamOptions::finer_cam_alpha` (1), the number of compared classes
/// `CamOptions::finer_cam_comparisons` (3: pytorch-grad-cam's `comparison_categories = [1, 2,
/// 3]`, the three nearest). The target is the given class (the prediction by default, as
/// pytorch-grad-cam's `target_idx = None`); pytorch-grad-cam ranks the target itself first
/// (distance 0) and compares ranks 1–3, igrad excludes the target explicitly, which differs only
/// when another class ties with it exactly. `Base` must differentiate `CamOptions::target_score`
/// (`cam_uses_target_score<Base>`): Grad-CAM, Grad-CAM++, SmoothGrad-CAM++, XGrad-CAM,
/// Layer-CAM, HiRes-CAM, EigenGrad-CAM, Shapley-CAM. Finer-CAM sets that option itself; one
/// given by the caller is replaced.
/// @tparam Base the CAM method run on the Finer score
template <CamMethod Base = GradCam>
struct FinerCam {
  static_assert(cam_uses_target_score<Base>,
                "igrad::FinerCam<Base> needs a Base that differentiates CamOptions::target_score "
                "(igrad::cam_uses_target_score<Base>): a gradient method such as GradCam");

 private:
  static constexpr std::string_view base_name_ = Base::name;
  static constexpr std::string_view prefix_ = "Finer-CAM (";
  static constexpr bool default_base_ = std::is_same_v<Base, GradCam>;
  static constexpr std::size_t size_ = default_base_ ? 9 : prefix_.size() + base_name_.size() + 1;
  static constexpr auto name_storage_ =
      default_base_ ? detail::join_names<size_>("Finer-CAM", "")
                    : detail::join_names<size_>(prefix_, base_name_, ")");

 public:
  /// display name: "Finer-CAM", or "Finer-CAM (<base>)" for another base method
  static constexpr const char* name = name_storage_.data();

  Base base{};  ///< the base method (stateful bases keep their state)

  /// @brief The map before post-processing, `[N, h, w]`: the base method's map of the Finer score.
  torch::Tensor operator()(const CamRequest& request) const { return base(finer_request(request)); }

  /// @brief The base method's channel maps of the Finer score (for `EigenSmooth`).
  torch::Tensor channel_maps(const CamRequest& request) const
    requires ChannelMapsCamMethod<Base>
  {
    return base.channel_maps(finer_request(request));
  }

 private:
  static CamRequest finer_request(const CamRequest& request) {
    const double alpha = request.options.finer_cam_alpha();
    const int64_t comparisons = request.options.finer_cam_comparisons();
    detail::require(std::isfinite(alpha), "CamOptions::finer_cam_alpha is {}; expected a finite "
                    "value", alpha);
    detail::require(comparisons >= 1,
                    "CamOptions::finer_cam_comparisons is {}; expected at least 1", comparisons);
    CamRequest finer = request;
    finer.options.target_score([alpha, comparisons](const torch::Tensor& logits,
                                                    const torch::Tensor& targets) {
      return finer_cam_score(logits, targets, alpha, comparisons);
    });
    return finer;
  }
};

/// @}
}  // namespace igrad

#pragma once
/// @file cam/stages.hpp
/// @brief Explaining several stages of a model, and fusing their maps into one with
/// pytorch-grad-cam's (mean) or torchcam's (max) convention (docs/reference.md §4).

#include <igrad/cam/explain.hpp>
#include <igrad/detail/maps.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace igrad {

/// @addtogroup cam_group
/// @{

/// @brief How `fuse_cams` combines the maps of several layers.
enum class CamFusion {
  /// pytorch-grad-cam (several `target_layers`): each map min–max scaled
  /// (`(m − min) / (max − min + 1e-7)`) and resized to the output size, the mean over layers,
  /// then min–max scaled again.
  mean,
  /// torchcam (`fuse_cams`): each map min–max scaled (`(m − min) / (max − min + 1e-8)`), resized
  /// to the output size, and the element-wise maximum over layers, not rescaled.
  max,
};

/// @brief Fuses raw maps of the same images from several layers (`explain_raw` outputs,
/// `[N, h_l, w_l]`, any resolutions) into one map `[N, height, width]` per image.
///
/// `size` is the output `{height, width}`; none means the largest of the maps' resolutions
/// (torchcam's default; `explain_fused` passes the input's). Resizing is bilinear with
/// `align_corners = false` (torchcam's `F.interpolate`; pytorch-grad-cam's `cv2.resize`
/// interpolates the same way when upsampling). With `CamFusion::max` and the default size the
/// result is torchcam's number for number; with `CamFusion::mean` and the input size,
/// pytorch-grad-cam's. One map is returned scaled as its convention scales each layer. Throws
/// `InvalidArgument` for no map, maps that are not `[N, h, w]` for one N, or non-finite values.
inline torch::Tensor fuse_cams(const std::vector<torch::Tensor>& raw_maps, CamFusion fusion,
                               std::optional<std::pair<int64_t, int64_t>> size = std::nullopt) {
  detail::require(!raw_maps.empty(), "fuse_cams() got no maps; expected the maps of at least one "
                                     "layer");
  int64_t height = 0, width = 0;
  for (const auto& m : raw_maps) {
    detail::require(m.defined() && m.dim() == 3 && m.size(0) == raw_maps.front().size(0) &&
                        m.is_floating_point(),
                    "fuse_cams(): a map has shape {}; expected floating-point [N, h, w] maps with "
                    "the same N ({}) for every layer",
                    detail::shape_string(m), raw_maps.front().defined() ? raw_maps.front().size(0) : 0);
    detail::require(detail::all_finite(m), "fuse_cams(): a map contains NaN or infinite values; "
                                           "expected finite maps");
    height = std::max(height, m.size(1));
    width = std::max(width, m.size(2));
  }
  if (size) {
    detail::require(size->first >= 1 && size->second >= 1,
                    "fuse_cams(): output size {}x{}; expected at least 1x1", size->first,
                    size->second);
    std::tie(height, width) = *size;
  }
  const double epsilon = fusion == CamFusion::mean ? 1e-7 : 1e-8;
  std::vector<torch::Tensor> scaled;
  for (const auto& m : raw_maps) {
    const auto flat = m.detach().flatten(1);
    const auto low = std::get<0>(flat.min(1, /*keepdim=*/true));
    const auto shifted = flat - low;
    const auto high = std::get<0>(shifted.max(1, /*keepdim=*/true));
    scaled.push_back(
        detail::resize_maps((shifted / (high + epsilon)).view(m.sizes()), height, width));
  }
  const auto stacked = torch::stack(scaled);  // [L, N, height, width]
  if (fusion == CamFusion::max) return std::get<0>(stacked.max(0));
  const auto mean = torch::relu(stacked).mean(0);
  const auto flat = mean.flatten(1);
  const auto low = std::get<0>(flat.min(1, /*keepdim=*/true));
  const auto shifted = flat - low;
  return (shifted / (std::get<0>(shifted.max(1, /*keepdim=*/true)) + 1e-7)).view(mean.sizes());
}

/// @brief The maps of method `C` for each stage: `explain<C>` on each stage's model (SPEC §4
/// post-processing, `[N, H, W]` in [0, 1] each), in the order of `stages`.
///
/// `stages` come from `model_stages` (a `StagedClassifier`, e.g. `models::ResNet18`) or
/// `models::sequential_stages`. Targets default to the model's predictions (the same for every
/// stage, since each stage's model computes the same forward pass). Same guarantees and errors as
/// `explain`; `InvalidArgument` for no stage.
template <CamMethod C>
std::vector<torch::Tensor> explain_stages(const std::vector<ModelStage>& stages,
                                          const torch::Tensor& x,
                                          const torch::Tensor& targets = {},
                                          const CamOptions& options = {}, const C& method = C()) {
  detail::require(!stages.empty(), "explain_stages() got no stage; expected at least one "
                                   "(model_stages, models::sequential_stages)");
  std::vector<torch::Tensor> maps;
  for (const auto& stage : stages) maps.push_back(explain<C>(stage.model, x, targets, options, method));
  return maps;
}

/// @brief One map per image fused over the stages: `fuse_cams` of `explain_raw<C>` on each
/// stage, at the input's resolution `[N, H, W]`, in [0, 1].
///
/// `CamFusion::mean` gives pytorch-grad-cam's map for the same method with the stages as
/// `target_layers`; `CamFusion::max` torchcam's fusion, resized to the input (torchcam fuses at
/// the largest layer's resolution: call `fuse_cams` on the raw maps without a size for that).
/// Same guarantees and errors as `explain_stages`.
template <CamMethod C>
torch::Tensor explain_fused(const std::vector<ModelStage>& stages, const torch::Tensor& x,
                            CamFusion fusion, const torch::Tensor& targets = {},
                            const CamOptions& options = {}, const C& method = C()) {
  detail::require(!stages.empty(), "explain_fused() got no stage; expected at least one "
                                   "(model_stages, models::sequential_stages)");
  std::vector<torch::Tensor> raw;
  for (const auto& stage : stages)
    raw.push_back(explain_raw<C>(stage.model, x, targets, options, method));
  return fuse_cams(raw, fusion, std::make_pair(x.size(2), x.size(3)));
}

/// @}
}  // namespace igrad

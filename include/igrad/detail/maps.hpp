#pragma once
/// @file detail/maps.hpp
/// @brief Per-sample min–max scaling and bilinear resizing of maps, shared by the CAM
/// post-processing and the saliency maps (SPEC §4).

#include <torch/torch.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace igrad::detail {

/// `(m − min)/(max − min + 1e-7)` per leading index (SPEC §4); an all-zero map stays zero.
inline torch::Tensor min_max_per_sample(const torch::Tensor& maps) {
  const auto flat = maps.flatten(1);
  const auto low = std::get<0>(flat.min(1, /*keepdim=*/true));
  const auto high = std::get<0>(flat.max(1, /*keepdim=*/true));
  return ((flat - low) / (high - low + 1e-7)).view(maps.sizes());
}

/// Bilinear resize of `[N, h, w]` maps to `[N, height, width]`.
inline torch::Tensor resize_maps(const torch::Tensor& maps, int64_t height, int64_t width,
                                 bool align_corners = false) {
  namespace F = torch::nn::functional;
  if (maps.size(1) == height && maps.size(2) == width) return maps;
  return F::interpolate(maps.unsqueeze(1), F::InterpolateFuncOptions()
                                               .size(std::vector<int64_t>{height, width})
                                               .mode(torch::kBilinear)
                                               .align_corners(align_corners))
      .squeeze(1);
}

}  // namespace igrad::detail

#pragma once
/// @file viz/colormap.hpp
/// @brief Colormaps and overlays of saliency maps on their images, as 8-bit RGB tensors.

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <array>

namespace igrad {

/// @defgroup viz_group Pictures
/// @brief Colormaps, overlays and PNG grids of explanations.
/// @{

/// @brief The colormaps igrad draws maps with.
enum class Colormap {
  /// matplotlib's viridis (perceptually uniform, colour-blind safe), as the degree-6 polynomial
  /// fit of its RGB curves (within 4/255 of matplotlib's table; 3/255 off at t = 0).
  viridis,
  /// MATLAB's jet, the piecewise-linear `clamp(1.5 − |4t − k|)` curves (k = 3, 2, 1 for R, G, B),
  /// as in most CAM papers' figures.
  jet,
};

/// @brief Colours a map `[H, W]` with values in [0, 1] (clamped): `uint8 [H, W, 3]` on the CPU.
inline torch::Tensor apply_colormap(const torch::Tensor& map, Colormap colormap = Colormap::viridis) {
  detail::require(map.defined() && map.dim() == 2, "map has shape {}; expected [H, W]",
                  detail::shape_string(map));
  const auto t = map.detach().to(torch::kCPU, torch::kDouble).clamp(0, 1);
  std::array<torch::Tensor, 3> rgb;
  if (colormap == Colormap::viridis) {
    // Coefficients c0..c6 of each channel's polynomial in t (a least-squares fit of matplotlib's
    // viridis table, public domain, by Matt Zucker).
    static constexpr double coefficients[3][7] = {
        {0.2777273272234177, 0.1050930431085774, -0.3308618287255563, -4.634230498983486,
         6.228269936347081, 4.776384997670288, -5.435455855934631},
        {0.005407344544966578, 1.404613529898575, 0.214847559468213, -5.799100973351585,
         14.17993336680509, -13.74514537774601, 4.645852612178535},
        {0.3340998053353061, 1.384590162594685, 0.09509516302823659, -19.33244095627987,
         56.69055260068105, -65.35303263337234, 26.3124352495832}};
    for (int c = 0; c < 3; ++c) {
      auto value = torch::full_like(t, coefficients[c][6]);
      for (int power = 5; power >= 0; --power) value = value * t + coefficients[c][power];
      rgb[static_cast<size_t>(c)] = value;
    }
  } else {
    for (int c = 0; c < 3; ++c)
      rgb[static_cast<size_t>(c)] = (1.5 - (4 * t - (3 - c)).abs()).clamp(0, 1);
  }
  return (torch::stack({rgb[0], rgb[1], rgb[2]}, 2).clamp(0, 1) * 255).round().to(torch::kUInt8);
}

/// @brief An image `[C, H, W]` (C = 1 or 3) or `[H, W]` as `uint8 [H, W, 3]` for display, its
/// values min–max scaled to [0, 255] (so normalised inputs display without knowing the
/// normalisation; a constant image is black).
inline torch::Tensor image_to_rgb8(const torch::Tensor& image) {
  detail::require(image.defined() && (image.dim() == 2 || (image.dim() == 3 &&
                                                           (image.size(0) == 1 || image.size(0) == 3))),
                  "image has shape {}; expected [H, W], [1, H, W] or [3, H, W]",
                  detail::shape_string(image));
  auto chw = image.detach().to(torch::kCPU, torch::kDouble);
  if (chw.dim() == 2) chw = chw.unsqueeze(0);
  if (chw.size(0) == 1) chw = chw.expand({3, chw.size(1), chw.size(2)});
  const double low = chw.min().item<double>(), high = chw.max().item<double>();
  const auto scaled = high > low ? (chw - low) / (high - low) : torch::zeros_like(chw);
  return (scaled.permute({1, 2, 0}) * 255).round().to(torch::kUInt8).contiguous();
}

/// @brief The map `[H, W]` in [0, 1] coloured and blended over its image `[C, H, W]`:
/// `(1 − alpha) · image + alpha · colour(map)`, `uint8 [H, W, 3]`. Image and map must have the
/// same height and width.
inline torch::Tensor overlay(const torch::Tensor& image, const torch::Tensor& map,
                             double alpha = 0.5, Colormap colormap = Colormap::viridis) {
  detail::require(alpha >= 0 && alpha <= 1, "alpha is {}; expected a value in [0, 1]", alpha);
  const auto background = image_to_rgb8(image);
  const auto colours = apply_colormap(map, colormap);
  detail::require(background.size(0) == colours.size(0) && background.size(1) == colours.size(1),
                  "image is {}x{} but map is {}x{}; expected the same size", background.size(0),
                  background.size(1), colours.size(0), colours.size(1));
  const auto blended = (1 - alpha) * background.to(torch::kDouble) +
                       alpha * colours.to(torch::kDouble);
  return blended.round().clamp(0, 255).to(torch::kUInt8);
}

/// @}
}  // namespace igrad

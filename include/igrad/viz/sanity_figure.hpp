#pragma once
/// @file viz/sanity_figure.hpp
/// @brief The figure of the model parameter randomisation test: a few images' maps as the
/// layers are randomised, and the mean rank correlation curve under them.

#include <igrad/exceptions.hpp>
#include <igrad/metrics/sanity.hpp>
#include <igrad/viz/colormap.hpp>
#include <igrad/viz/figure.hpp>
#include <igrad/viz/plot.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace igrad {

/// @addtogroup viz_group
/// @{

/// @brief Options of `randomisation_figure`, with chained setters.
struct RandomisationFigureOptions {
  /// Rows: the first this many images of the result.
  TORCH_ARG(int64_t, images) = 4;
  /// Map columns after the original: this many steps at most, evenly spaced, the last step
  /// (every layer randomised, when cascading) always shown.
  TORCH_ARG(int64_t, max_columns) = 8;
  /// Integer magnification of every cell (nearest neighbour), for small images such as 28×28.
  TORCH_ARG(int64_t, scale) = 1;
  /// Colormap of the maps.
  TORCH_ARG(Colormap, colormap) = Colormap::viridis;
  /// Height in pixels of the rank correlation plot under the maps.
  TORCH_ARG(int64_t, plot_height) = 240;
};

namespace detail {

/// The steps a figure shows: at most `columns` of `steps`, evenly spaced, the last included.
inline std::vector<int64_t> figure_steps(int64_t steps, int64_t columns) {
  std::vector<int64_t> chosen;
  const int64_t shown = std::min(steps, columns);
  for (int64_t j = 0; j < shown; ++j) {
    const int64_t step =
        shown == 1 ? steps - 1
                   : static_cast<int64_t>(std::llround(static_cast<double>(j) *
                                                       static_cast<double>(steps - 1) /
                                                       static_cast<double>(shown - 1)));
    if (chosen.empty() || chosen.back() != step) chosen.push_back(step);
  }
  return chosen;
}

/// Maps `[N, H, W]` (or `[N, C, H, W]`, channels summed in absolute value) for display: absolute
/// values divided by each map's maximum (an all-zero map stays zero).
inline torch::Tensor display_maps(const torch::Tensor& maps) {
  auto m = maps.detach().to(torch::kDouble).abs();
  if (m.dim() == 4) m = m.sum(1);
  const auto peak = m.flatten(1).amax(1).clamp_min(1e-300).view({-1, 1, 1});
  return (m / peak).to(torch::kFloat);
}

}  // namespace detail

/// @brief The figure of a `model_randomisation` result, `uint8 [H', W', 3]`: a title, then one
/// row per image — the image, its original map, and its map after some of the steps, each
/// column labelled by the layer randomised at that step — then the mean Spearman correlation
/// (and the mean SSIM, when computed) against the number of layers randomised, on an axis that
/// spans at least [0, 1].
///
/// `images` are the `[N, C, H, W]` images the result was computed on (the first
/// `options.images()` are shown); the result must have been computed with
/// `RandomisationOptions().keep_maps(true)` and maps of the images' size. Maps are shown as
/// absolute values scaled by each map's maximum. Throws `InvalidArgument` otherwise.
inline torch::Tensor randomisation_figure(const torch::Tensor& images,
                                          const RandomisationResult& result,
                                          const RandomisationFigureOptions& options = {}) {
  detail::require_images(images, "randomisation_figure: the images");
  detail::require(!result.layers.empty() && result.maps.size() == result.layers.size(),
                  "randomisation_figure: the result holds {} steps and the maps of {}; expected "
                  "a result of model_randomisation computed with RandomisationOptions()"
                  ".keep_maps(true)",
                  result.layers.size(), result.maps.size());
  detail::require(result.original_maps.defined() &&
                      result.original_maps.size(0) == images.size(0),
                  "randomisation_figure: {} images for maps of shape {}; expected the images the "
                  "result was computed on",
                  images.size(0), detail::shape_string(result.original_maps));
  detail::require(options.images() >= 1 && options.max_columns() >= 1,
                  "randomisation_figure: images {} and max_columns {}; expected both >= 1",
                  options.images(), options.max_columns());
  const int64_t rows = std::min(options.images(), images.size(0));
  const auto steps = detail::figure_steps(static_cast<int64_t>(result.layers.size()),
                                          options.max_columns());
  std::vector<torch::Tensor> columns{detail::display_maps(result.original_maps.slice(0, 0, rows))};
  std::vector<std::string> labels{"original"};
  for (const int64_t step : steps) {
    const auto k = static_cast<std::size_t>(step);
    columns.push_back(detail::display_maps(result.maps[k].slice(0, 0, rows)));
    labels.push_back(result.layers[k]);
  }
  const auto shown = images.slice(0, 0, rows).detach().to(torch::kCPU, torch::kFloat);
  const auto grid = explanation_grid(
      shown, columns,
      ExplanationGridOptions().scale(options.scale()).colormap(options.colormap())
          .column_labels(labels));

  const auto curve = [](std::string label, const std::vector<double>& values, Rgb color) {
    Series series{std::move(label), {}, values, color};
    for (std::size_t s = 0; s < values.size(); ++s) series.x.push_back(static_cast<double>(s + 1));
    return series;
  };
  std::vector<Series> curves{curve("mean Spearman", result.mean_spearman, Series{}.color)};
  if (!result.mean_ssim.empty()) curves.push_back(curve("mean SSIM", result.mean_ssim, {255, 127, 14}));
  const auto plot = line_plot(
      curves, PlotOptions()
                   .width(std::max<int64_t>(grid.size(1), 320))
                   .height(options.plot_height())
                   .x_label("layers randomised, output first")
                   .y_include({0.0, 1.0}));  // figures of several methods share a scale
  auto figure = torch::full({grid.size(0) + plot.size(0), plot.size(1), 3}, 255, torch::kUInt8);
  figure.slice(0, 0, grid.size(0)).slice(1, 0, grid.size(1)).copy_(grid);
  figure.slice(0, grid.size(0)).copy_(plot);
  return with_title(figure, "parameter randomisation: " + result.method, 1);
}

/// @brief `write_png(path, randomisation_figure(images, result, options))`.
inline void write_randomisation_figure(const std::string& path, const torch::Tensor& images,
                                       const RandomisationResult& result,
                                       const RandomisationFigureOptions& options = {}) {
  write_png(path, randomisation_figure(images, result, options));
}

/// @}
}  // namespace igrad

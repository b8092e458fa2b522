#pragma once
/// @file viz/plot.hpp
/// @brief Text and line plots drawn into `uint8 [H, W, 3]` pictures, for training curves and
/// figure titles (written with `write_png`).
///
/// Text uses stb's vector font (`stb_easy_font.h`, Debian's libstb-dev), rasterised here because
/// it describes characters as axis-aligned quads.

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <stb/stb_easy_font.h>
#include <torch/arg.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace igrad {

/// @addtogroup viz_group
/// @{

/// @brief An RGB colour.
using Rgb = std::array<uint8_t, 3>;

/// @brief Draws `text` into `picture` (`uint8 [H, W, 3]`, CPU) with its top-left corner at
/// (`x`, `y`), each font unit `scale` pixels. Characters outside the picture are clipped.
/// Returns the text's width in pixels.
inline int draw_text(torch::Tensor& picture, int x, int y, const std::string& text,
                     Rgb color = {0, 0, 0}, int scale = 1) {
  detail::require(picture.defined() && picture.dim() == 3 && picture.size(2) == 3 &&
                      picture.scalar_type() == torch::kUInt8 && picture.device().is_cpu(),
                  "draw_text: picture has shape {}; expected a CPU uint8 [H, W, 3] tensor",
                  detail::shape_string(picture));
  detail::require(scale >= 1, "draw_text: scale is {}; expected >= 1", scale);
  std::vector<char> buffer(text.size() * 300 + 64);  // stb's documented ~270 bytes a character
  std::string copy = text;
  const int quads = stb_easy_font_print(0, 0, copy.data(), nullptr, buffer.data(),
                                        static_cast<int>(buffer.size()));
  const int height = static_cast<int>(picture.size(0)), width = static_cast<int>(picture.size(1));
  auto pixels = picture.accessor<uint8_t, 3>();
  // Each vertex: x, y, z as floats then 4 colour bytes; 4 vertices a quad.
  constexpr size_t stride = 3 * sizeof(float) + 4;
  for (int q = 0; q < quads; ++q) {
    float corners[2][2];
    for (int v = 0; v < 4; v += 2) {
      const char* vertex = buffer.data() + (static_cast<size_t>(q) * 4 + static_cast<size_t>(v)) * stride;
      std::memcpy(corners[v / 2], vertex, 2 * sizeof(float));
    }
    const int x0 = x + static_cast<int>(std::lround(corners[0][0] * scale));
    const int y0 = y + static_cast<int>(std::lround(corners[0][1] * scale));
    const int x1 = x + static_cast<int>(std::lround(corners[1][0] * scale));
    const int y1 = y + static_cast<int>(std::lround(corners[1][1] * scale));
    for (int py = std::max(0, std::min(y0, y1)); py < std::min(height, std::max(y0, y1)); ++py)
      for (int px = std::max(0, std::min(x0, x1)); px < std::min(width, std::max(x0, x1)); ++px)
        for (int c = 0; c < 3; ++c) pixels[py][px][c] = color[static_cast<size_t>(c)];
  }
  std::string measure = text;
  return stb_easy_font_width(measure.data()) * scale;
}

/// @brief Adds a white band with `title` above a picture; returns the taller picture.
inline torch::Tensor with_title(const torch::Tensor& picture, const std::string& title,
                                int scale = 2) {
  detail::require(picture.defined() && picture.dim() == 3 && picture.size(2) == 3,
                  "with_title: picture has shape {}; expected uint8 [H, W, 3]",
                  detail::shape_string(picture));
  const int band = 10 * scale + 8;
  auto out = torch::full({picture.size(0) + band, picture.size(1), 3}, 255, torch::kUInt8);
  out.slice(0, band).copy_(picture.to(torch::kCPU));
  draw_text(out, 4, 4, title, {0, 0, 0}, scale);
  return out;
}

/// @brief One curve of a line plot.
struct Series {
  std::string label;      ///< legend text
  std::vector<double> x;  ///< abscissae
  std::vector<double> y;  ///< ordinates (same length as `x`)
  Rgb color{31, 119, 180};  ///< line colour
};

/// @brief Options of `line_plot`.
struct PlotOptions {
  /// Picture width in pixels.
  TORCH_ARG(int64_t, width) = 640;
  /// Picture height in pixels.
  TORCH_ARG(int64_t, height) = 360;
  /// Title drawn above the axes.
  TORCH_ARG(std::string, title) = "";
  /// Label of the horizontal axis.
  TORCH_ARG(std::string, x_label) = "";
  /// Smooth each curve with a centred moving average of this many points (1: raw).
  TORCH_ARG(int64_t, smoothing) = 1;
  /// Ordinates the y axis spans besides the data's (e.g. {0, 1}, so that plots of correlations
  /// share a scale); none by default.
  TORCH_ARG(std::vector<double>, y_include) = {};
};

/// @brief A line plot of the series on shared axes, with min/max tick labels and a legend;
/// `uint8 [height, width, 3]`. Non-finite points are skipped.
inline torch::Tensor line_plot(const std::vector<Series>& series, const PlotOptions& options = {}) {
  detail::require(!series.empty(), "line_plot: no series; expected at least one");
  detail::require(options.width() >= 200 && options.height() >= 120,
                  "line_plot: size {}x{}; expected at least 200x120", options.width(),
                  options.height());
  detail::require(options.smoothing() >= 1, "line_plot: smoothing {}; expected >= 1",
                  options.smoothing());
  std::vector<std::vector<double>> smoothed;
  double x_min = std::numeric_limits<double>::infinity(), x_max = -x_min, y_min = x_min,
         y_max = -x_min;
  for (const auto& s : series) {
    detail::require(s.x.size() == s.y.size(), "line_plot: series '{}' has {} x and {} y values; "
                    "expected as many of each", s.label, s.x.size(), s.y.size());
    std::vector<double> y(s.y.size());
    const auto half = static_cast<std::ptrdiff_t>(options.smoothing() / 2);
    for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(y.size()); ++i) {
      double sum = 0;
      int count = 0;
      for (auto j = std::max<std::ptrdiff_t>(0, i - half);
           j <= std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(y.size()) - 1, i + half); ++j)
        if (std::isfinite(s.y[static_cast<size_t>(j)])) {
          sum += s.y[static_cast<size_t>(j)];
          ++count;
        }
      y[static_cast<size_t>(i)] = count ? sum / count : std::nan("");
    }
    for (size_t i = 0; i < y.size(); ++i) {
      if (!std::isfinite(y[i]) || !std::isfinite(s.x[i])) continue;
      x_min = std::min(x_min, s.x[i]);
      x_max = std::max(x_max, s.x[i]);
      y_min = std::min(y_min, y[i]);
      y_max = std::max(y_max, y[i]);
    }
    smoothed.push_back(std::move(y));
  }
  detail::require(std::isfinite(x_min), "line_plot: no finite point to draw");
  for (const double y : options.y_include()) {
    y_min = std::min(y_min, y);
    y_max = std::max(y_max, y);
  }
  if (x_max == x_min) x_max = x_min + 1;
  if (y_max == y_min) y_max = y_min + 1;
  const int width = static_cast<int>(options.width()), height = static_cast<int>(options.height());
  auto picture = torch::full({height, width, 3}, 255, torch::kUInt8);
  const int left = 70, right = width - 12, top = options.title().empty() ? 12 : 34,
            bottom = height - 40;
  auto pixels = picture.accessor<uint8_t, 3>();
  auto put = [&](int px, int py, const Rgb& c) {
    if (px >= 0 && px < width && py >= 0 && py < height)
      for (int k = 0; k < 3; ++k) pixels[py][px][k] = c[static_cast<size_t>(k)];
  };
  const Rgb axis{0, 0, 0}, grid{225, 225, 225};
  for (int i = 1; i < 4; ++i) {
    const int gy = top + (bottom - top) * i / 4;
    for (int px = left; px <= right; ++px) put(px, gy, grid);
  }
  for (int px = left; px <= right; ++px) put(px, bottom, axis), put(px, top, axis);
  for (int py = top; py <= bottom; ++py) put(left, py, axis), put(right, py, axis);
  auto to_px = [&](double x) { return left + (x - x_min) / (x_max - x_min) * (right - left); };
  auto to_py = [&](double y) { return bottom - (y - y_min) / (y_max - y_min) * (bottom - top); };
  for (size_t s = 0; s < series.size(); ++s) {
    const auto& xs = series[s].x;
    const auto& ys = smoothed[s];
    for (size_t i = 1; i < xs.size(); ++i) {
      if (!std::isfinite(ys[i - 1]) || !std::isfinite(ys[i])) continue;
      const double x0 = to_px(xs[i - 1]), y0 = to_py(ys[i - 1]), x1 = to_px(xs[i]), y1 = to_py(ys[i]);
      const int steps = static_cast<int>(std::ceil(std::max(std::abs(x1 - x0), std::abs(y1 - y0)))) + 1;
      for (int k = 0; k <= steps; ++k) {
        const double t = static_cast<double>(k) / steps;
        const int px = static_cast<int>(std::lround(x0 + t * (x1 - x0)));
        const int py = static_cast<int>(std::lround(y0 + t * (y1 - y0)));
        put(px, py, series[s].color);
        put(px, py + 1, series[s].color);  // two pixels thick
      }
    }
  }
  draw_text(picture, 4, top - 3, igrad::detail::format("{:.3g}", y_max), axis, 1);
  draw_text(picture, 4, bottom - 6, igrad::detail::format("{:.3g}", y_min), axis, 1);
  draw_text(picture, left - 2, bottom + 6, igrad::detail::format("{:.4g}", x_min), axis, 1);
  const std::string x_end = igrad::detail::format("{:.4g}", x_max);
  draw_text(picture, right - 6 * static_cast<int>(x_end.size()), bottom + 6, x_end, axis, 1);
  if (!options.x_label().empty())
    draw_text(picture, (left + right) / 2 - 3 * static_cast<int>(options.x_label().size()),
              bottom + 20, options.x_label(), axis, 1);
  if (!options.title().empty()) draw_text(picture, left, 6, options.title(), axis, 2);
  int legend_y = top + 6;
  for (const auto& s : series) {
    for (int px = right - 150; px < right - 132; ++px) put(px, legend_y + 3, s.color), put(px, legend_y + 4, s.color);
    draw_text(picture, right - 128, legend_y, s.label, axis, 1);
    legend_y += 14;
  }
  return picture;
}

/// @}
}  // namespace igrad

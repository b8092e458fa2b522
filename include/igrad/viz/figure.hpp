#pragma once
/// @file viz/figure.hpp
/// @brief Grids of pictures and PNG output (through Debian's compiled stb).

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/viz/colormap.hpp>
#include <igrad/viz/plot.hpp>

// The implementation lives in the compiled libstb that igrad links (Stb::Stb): no
// STB_IMAGE_WRITE_IMPLEMENTATION here, so that any number of translation units can include this.
#include <stb/stb_image_write.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <vector>

namespace igrad {

/// @addtogroup viz_group
/// @{

/// @brief Tiles `uint8 [H, W, 3]` pictures into one picture: `cells[r][c]` at row r, column c,
/// each cell centred in a slot as large as the largest picture, `padding` pixels of `background`
/// between and around slots. Rows may have different lengths (missing cells stay background).
inline torch::Tensor make_grid(const std::vector<std::vector<torch::Tensor>>& cells,
                               int64_t padding = 2, uint8_t background = 255) {
  detail::require(!cells.empty(), "the grid has no rows; expected at least one picture");
  detail::require(padding >= 0, "padding is {}; expected >= 0", padding);
  int64_t cell_h = 0, cell_w = 0, columns = 0;
  for (const auto& row : cells) {
    columns = std::max<int64_t>(columns, static_cast<int64_t>(row.size()));
    for (const auto& cell : row) {
      detail::require(cell.defined() && cell.dim() == 3 && cell.size(2) == 3 &&
                          cell.scalar_type() == torch::kUInt8,
                      "a grid cell has shape {} and dtype {}; expected uint8 [H, W, 3] (see "
                      "igrad::overlay, igrad::apply_colormap, igrad::image_to_rgb8)",
                      detail::shape_string(cell),
                      cell.defined() ? std::string(c10::toString(cell.scalar_type())) : "none");
      cell_h = std::max(cell_h, cell.size(0));
      cell_w = std::max(cell_w, cell.size(1));
    }
  }
  detail::require(columns > 0, "the grid's rows are empty; expected at least one picture");
  const auto rows = static_cast<int64_t>(cells.size());
  auto grid = torch::full({rows * (cell_h + padding) + padding, columns * (cell_w + padding) + padding, 3},
                          background, torch::kUInt8);
  for (int64_t r = 0; r < rows; ++r) {
    const auto& row = cells[static_cast<size_t>(r)];
    for (int64_t c = 0; c < static_cast<int64_t>(row.size()); ++c) {
      const auto cell = row[static_cast<size_t>(c)].to(torch::kCPU);
      const int64_t top = padding + r * (cell_h + padding) + (cell_h - cell.size(0)) / 2;
      const int64_t left = padding + c * (cell_w + padding) + (cell_w - cell.size(1)) / 2;
      grid.slice(0, top, top + cell.size(0)).slice(1, left, left + cell.size(1)).copy_(cell);
    }
  }
  return grid;
}

/// @brief Writes a `uint8 [H, W, 3]` picture as PNG. Throws `Error` naming the path when the
/// file cannot be written.
inline void write_png(const std::string& path, const torch::Tensor& rgb) {
  detail::require(rgb.defined() && rgb.dim() == 3 && rgb.size(2) == 3 &&
                      rgb.scalar_type() == torch::kUInt8,
                  "write_png({}): picture has shape {}; expected uint8 [H, W, 3]", path,
                  detail::shape_string(rgb));
  const auto pixels = rgb.to(torch::kCPU).contiguous();
  const int height = static_cast<int>(pixels.size(0)), width = static_cast<int>(pixels.size(1));
  const int written = stbi_write_png(path.c_str(), width, height, 3, pixels.data_ptr<uint8_t>(),
                                     width * 3);
  detail::require<Error>(written != 0,
                         "could not write the PNG file '{}'; expected a writable path (does the "
                         "folder exist?)",
                         path);
}

/// @brief Options of `write_explanation_grid`.
struct ExplanationGridOptions {
  /// Put the image itself in a first column.
  TORCH_ARG(bool, show_image) = true;
  /// Weight of the coloured map over the image.
  TORCH_ARG(double, alpha) = 0.5;
  /// Colormap of the maps.
  TORCH_ARG(Colormap, colormap) = Colormap::viridis;
  /// Pixels between cells.
  TORCH_ARG(int64_t, padding) = 2;
  /// Integer magnification of every cell (nearest neighbour), for small images such as 28×28.
  TORCH_ARG(int64_t, scale) = 1;
  /// Labels written above the map columns, one per entry of `columns` (empty: no labels). The
  /// image column, when shown, is labelled `image_label`.
  TORCH_ARG(std::vector<std::string>, column_labels) = {};
  /// Label of the image column when `column_labels` is given.
  TORCH_ARG(std::string, image_label) = "image";
};

/// @brief A figure of explanations: one row per image, one column per map set (methods or
/// models), each cell the map overlaid on its image; the picture `uint8 [H', W', 3]`.
///
/// `images` is `[N, C, H, W]`; each entry of `columns` is `[N, H, W]` maps in [0, 1]. With
/// `column_labels`, a white band above the grid names each column.
inline torch::Tensor explanation_grid(const torch::Tensor& images,
                                      const std::vector<torch::Tensor>& columns,
                                      const ExplanationGridOptions& options = {}) {
  detail::require(images.defined() && images.dim() == 4 && images.size(0) > 0,
                  "images have shape {}; expected [N, C, H, W]", detail::shape_string(images));
  detail::require(options.scale() >= 1, "scale is {}; expected >= 1", options.scale());
  detail::require(options.column_labels().empty() ||
                      options.column_labels().size() == columns.size(),
                  "{} column labels for {} columns of maps; expected one label per column (or "
                  "none)",
                  options.column_labels().size(), columns.size());
  for (const auto& maps : columns)
    detail::require(maps.defined() && maps.dim() == 3 && maps.size(0) == images.size(0) &&
                        maps.size(1) == images.size(2) && maps.size(2) == images.size(3),
                    "a column of maps has shape {}; expected [{}, {}, {}] like the images",
                    detail::shape_string(maps), images.size(0), images.size(2), images.size(3));
  const auto enlarge = [&](const torch::Tensor& rgb) {
    if (options.scale() == 1) return rgb;
    return rgb.repeat_interleave(options.scale(), 0).repeat_interleave(options.scale(), 1);
  };
  std::vector<std::vector<torch::Tensor>> cells;
  for (int64_t i = 0; i < images.size(0); ++i) {
    std::vector<torch::Tensor> row;
    if (options.show_image()) row.push_back(enlarge(image_to_rgb8(images[i])));
    for (const auto& maps : columns)
      row.push_back(enlarge(overlay(images[i], maps[i], options.alpha(), options.colormap())));
    cells.push_back(std::move(row));
  }
  auto grid = make_grid(cells, options.padding());
  if (options.column_labels().empty()) return grid;

  std::vector<std::string> labels;
  if (options.show_image()) labels.push_back(options.image_label());
  labels.insert(labels.end(), options.column_labels().begin(), options.column_labels().end());
  const int64_t cell_width = images.size(3) * options.scale();
  const int text_scale = cell_width >= 96 ? 2 : 1;  // stb's font is ~6 units a character
  const int64_t band = 10 * text_scale + 4;
  auto labelled = torch::full({grid.size(0) + band, grid.size(1), 3}, 255, torch::kUInt8);
  labelled.slice(0, band).copy_(grid);
  for (std::size_t c = 0; c < labels.size(); ++c) {
    std::string measure = labels[c];
    const int width = stb_easy_font_width(measure.data()) * text_scale;
    const int64_t centre = options.padding() + static_cast<int64_t>(c) * (cell_width + options.padding()) +
                           cell_width / 2;
    draw_text(labelled, static_cast<int>(std::max<int64_t>(0, centre - width / 2)), 2, labels[c],
              {0, 0, 0}, text_scale);
  }
  return labelled;
}

/// @brief `write_png(path, explanation_grid(images, columns, options))`.
inline void write_explanation_grid(const std::string& path, const torch::Tensor& images,
                                   const std::vector<torch::Tensor>& columns,
                                   const ExplanationGridOptions& options = {}) {
  write_png(path, explanation_grid(images, columns, options));
}

/// @}
}  // namespace igrad

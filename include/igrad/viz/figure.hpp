#pragma once
/// @file viz/figure.hpp
/// @brief Grids of pictures and PNG output (through Debian's compiled stb).

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/viz/colormap.hpp>

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
};

/// @brief A figure of explanations: one row per image, one column per map set (methods or
/// models), each cell the map overlaid on its image; the picture `uint8 [H', W', 3]`.
///
/// `images` is `[N, C, H, W]`; each entry of `columns` is `[N, H, W]` maps in [0, 1].
inline torch::Tensor explanation_grid(const torch::Tensor& images,
                                      const std::vector<torch::Tensor>& columns,
                                      const ExplanationGridOptions& options = {}) {
  detail::require(images.defined() && images.dim() == 4 && images.size(0) > 0,
                  "images have shape {}; expected [N, C, H, W]", detail::shape_string(images));
  detail::require(options.scale() >= 1, "scale is {}; expected >= 1", options.scale());
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
  return make_grid(cells, options.padding());
}

/// @brief `write_png(path, explanation_grid(images, columns, options))`.
inline void write_explanation_grid(const std::string& path, const torch::Tensor& images,
                                   const std::vector<torch::Tensor>& columns,
                                   const ExplanationGridOptions& options = {}) {
  write_png(path, explanation_grid(images, columns, options));
}

/// @}
}  // namespace igrad

#pragma once
/// @file metrics/pointing.hpp
/// @brief Localisation metrics (SPEC §5): the pointing game with a tolerance radius (Zhang et al.
/// 2016) and the energy-based pointing game (Wang et al. 2020), against ground-truth boxes or masks.

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics/masking.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace igrad {

/// @addtogroup metrics_group
/// @{

/// @brief Options of the pointing games, with chained setters.
///
/// **Regions.** Ground truth is either boxes `[N, 4]` or masks `[N, H, W]`. A box is
/// `(x0, y0, x1, y1)` in pixel indices, x = column, y = row. By default the end is *exclusive*
/// (the box covers columns `x0 … x1−1` and rows `y0 … y1−1`, like a slice `[y0:y1, x0:x1]`);
/// `box_end_inclusive(true)` reads `x1`, `y1` as the last covered column and row. A mask marks the
/// region with non-zero values.
///
/// **Tolerance.** The original pointing game counts a hit when the map's maximum lies within
/// 15 px of the region at 224×224 input; igrad scales the radius with the image height,
/// `radius = 15 · H / 224` (1.875 px at 28×28, 4.29 px at 64×64), unless a radius in pixels is
/// given. A hit means: some region pixel lies at Euclidean distance ≤ radius from the maximum.
struct PointingOptions {
  /// Tolerance radius in pixels; none means `15 · H / 224`.
  TORCH_ARG(std::optional<double>, tolerance) = std::nullopt;
  /// Read boxes' `x1`, `y1` as inclusive (last covered pixel) instead of exclusive (one past).
  TORCH_ARG(bool, box_end_inclusive) = false;
};

/// @brief The tolerance radius in pixels for images of height `height`.
inline double pointing_tolerance(int64_t height, const PointingOptions& options = {}) {
  if (options.tolerance()) {
    detail::require(std::isfinite(*options.tolerance()) && *options.tolerance() >= 0,
                    "pointing tolerance is {} px; expected a finite radius >= 0",
                    *options.tolerance());
    return *options.tolerance();
  }
  return 15.0 * static_cast<double>(height) / 224.0;
}

/// @brief Boolean masks `[N, H, W]` of boxes `[N, 4]` (x0, y0, x1, y1; see `PointingOptions`).
///
/// Boxes must hold whole numbers, lie inside the image and be non-empty; they may be on any
/// device (the masks are on the boxes' device).
inline torch::Tensor boxes_to_masks(const torch::Tensor& boxes, int64_t height, int64_t width,
                                    bool end_inclusive = false) {
  detail::require(boxes.defined() && boxes.dim() == 2 && boxes.size(1) == 4,
                  "boxes have shape {}; expected [N, 4] boxes (x0, y0, x1, y1)",
                  detail::shape_string(boxes));
  detail::require_finite(boxes, "boxes");
  detail::require(!boxes.is_floating_point() || boxes.eq(boxes.round()).all().item<bool>(),
                  "boxes hold fractional coordinates; expected whole pixel indices");
  auto b = boxes.to(torch::kLong);
  if (end_inclusive) b = b + torch::tensor({0, 0, 1, 1}, b.options());  // now exclusive
  const auto x0 = b.select(1, 0), y0 = b.select(1, 1), x1 = b.select(1, 2), y1 = b.select(1, 3);
  if (b.size(0) > 0) {
    const bool inside = (x0.ge(0) & y0.ge(0) & x1.le(width) & y1.le(height)).all().item<bool>();
    const bool nonempty = (x0.lt(x1) & y0.lt(y1)).all().item<bool>();
    detail::require(inside && nonempty,
                    "a box lies outside the {}x{} image or is empty; expected 0 <= x0 {} x1 {} {} "
                    "and 0 <= y0 {} y1 {} {} ({} ends)",
                    height, width, end_inclusive ? "<=" : "<", end_inclusive ? "<" : "<=", width,
                    end_inclusive ? "<=" : "<", end_inclusive ? "<" : "<=", height,
                    end_inclusive ? "inclusive" : "exclusive");
  }
  const auto options = b.options();
  const auto rows = torch::arange(height, options).view({1, height, 1});
  const auto cols = torch::arange(width, options).view({1, 1, width});
  const auto v = [](const torch::Tensor& t) { return t.view({-1, 1, 1}); };
  return rows.ge(v(y0)) & rows.lt(v(y1)) & cols.ge(v(x0)) & cols.lt(v(x1));
}

namespace detail {

/// The ground-truth region as boolean masks `[N, H, W]` on the maps' device, from boxes `[N, 4]`
/// or masks `[N, H, W]`; every region must be non-empty.
inline torch::Tensor region_masks(const torch::Tensor& maps, const torch::Tensor& regions,
                                  const PointingOptions& options) {
  require(regions.defined(), "the ground-truth regions are undefined; expected boxes [N, 4] or "
                             "masks [N, H, W]");
  const int64_t n = maps.size(0), h = maps.size(1), w = maps.size(2);
  torch::Tensor masks;
  if (regions.dim() == 2) {
    require(regions.size(0) == n,
            "{} boxes for {} maps; expected one box per map", regions.size(0), n);
    masks = boxes_to_masks(regions, h, w, options.box_end_inclusive());
  } else {
    require(regions.dim() == 3 && regions.size(0) == n && regions.size(1) == h &&
                regions.size(2) == w,
            "the ground-truth regions have shape {} for maps of shape {}; expected boxes [{}, 4] "
            "or masks [{}, {}, {}]",
            shape_string(regions), shape_string(maps), n, n, h, w);
    require_finite(regions, "the ground-truth masks");
    masks = regions.ne(0);
    require(n == 0 || masks.flatten(1).any(1).all().item<bool>(),
            "a ground-truth mask is empty; expected at least one pixel in every region");
  }
  return masks.to(maps.device());
}

}  // namespace detail

/// @brief Pointing-game hits `[N]` (bool): whether each map's maximum lies within the tolerance
/// radius of its region. Ties go to the first maximum in row-major order.
///
/// `maps` `[N, H, W]` in [0, 1]; `regions` boxes `[N, 4]` or masks `[N, H, W]`. On the maps' device.
inline torch::Tensor pointing_hits(const torch::Tensor& maps, const torch::Tensor& regions,
                                   const PointingOptions& options = {}) {
  detail::require_rank(maps, 3, "the saliency maps", "[N, H, W]");
  const auto m = detail::checked_maps(maps, maps.size(0), maps.size(1), maps.size(2),
                                      maps.device(), "themselves");
  const auto masks = detail::region_masks(m, regions, options);
  const int64_t n = m.size(0), h = m.size(1), w = m.size(2);
  const double radius = pointing_tolerance(h, options);
  const auto flat = m.reshape({n, h * w});
  const auto index_options = torch::TensorOptions().dtype(torch::kLong).device(m.device());
  const auto indices = torch::arange(h * w, index_options).expand({n, h * w});
  // First maximum in row-major order, independent of how argmax breaks ties on each backend.
  const auto first_max =
      torch::where(flat.eq(std::get<0>(flat.max(1, /*keepdim=*/true))), indices,
                   torch::full_like(indices, h * w))
          .amin(1);
  const auto row = torch::div(first_max, w, /*rounding_mode=*/"floor").view({n, 1, 1});
  const auto col = first_max.remainder(w).view({n, 1, 1});
  const auto rows = torch::arange(h, index_options).view({1, h, 1});
  const auto cols = torch::arange(w, index_options).view({1, 1, w});
  const auto distance2 = (rows - row).pow(2) + (cols - col).pow(2);  // [N, H, W], exact integers
  return (masks & distance2.to(torch::kDouble).le(radius * radius)).flatten(1).any(1);
}

/// @brief Energy-based pointing game `[N]` (double, in [0, 1]): `Σ_{in region} S / Σ S`; an
/// all-zero map points nowhere and scores 0.
inline torch::Tensor energy_pointing(const torch::Tensor& maps, const torch::Tensor& regions,
                                     const PointingOptions& options = {}) {
  detail::require_rank(maps, 3, "the saliency maps", "[N, H, W]");
  const auto m = detail::checked_maps(maps, maps.size(0), maps.size(1), maps.size(2),
                                      maps.device(), "themselves").to(torch::kDouble);
  const auto masks = detail::region_masks(m, regions, options);
  const auto total = m.flatten(1).sum(1);
  const auto inside = (m * masks.to(torch::kDouble)).flatten(1).sum(1);
  return torch::where(total > 0, inside / total, torch::zeros_like(total));
}

/// @brief The pointing games over a set of images, in %.
struct PointingResult {
  double pointing_game = 0;         ///< hits / N · 100 (higher is better)
  double energy_pointing_game = 0;  ///< mean energy inside the region · 100 (higher is better)
  int64_t images = 0;               ///< N
};

/// @brief Accumulates both pointing games over a stream of batches (exact for any batch split).
class PointingAccumulator {
 public:
  /// @brief An empty accumulator using `options` for every batch.
  explicit PointingAccumulator(PointingOptions options = {}) : options_(std::move(options)) {}

  /// @brief Adds one batch of maps `[N, H, W]` and regions (boxes `[N, 4]` or masks `[N, H, W]`).
  void add(const torch::Tensor& maps, const torch::Tensor& regions) {
    torch::NoGradGuard no_grad;
    const auto hits = pointing_hits(maps, regions, options_);
    const auto energy = energy_pointing(maps, regions, options_);
    detail::accumulate_in_order(hits_, hits.to(torch::kDouble));
    detail::accumulate_in_order(energy_, energy);
    images_ += hits.size(0);
  }

  /// @brief Both games over every image added; throws `InvalidArgument` when none was.
  PointingResult result() const {
    detail::require(images_ > 0, "pointing game of an empty dataset; expected at least one image "
                                 "to have been added");
    const double scale = 100.0 / static_cast<double>(images_);
    return {hits_ * scale, energy_ * scale, images_};
  }
  /// @brief The number of images added so far.
  int64_t images() const { return images_; }

 private:
  PointingOptions options_;
  double hits_ = 0, energy_ = 0;
  int64_t images_ = 0;
};

/// @}
}  // namespace igrad

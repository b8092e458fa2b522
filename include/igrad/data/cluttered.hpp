#pragma once
/// @file data/cluttered.hpp
/// @brief Cluttered Fashion-MNIST (SPEC §6): each test item at a seeded random place on a larger
/// canvas among clutter cut from other items, with its bounding box and mask as the
/// localisation ground truth (pointing game, energy-based pointing game).

#include <igrad/data/fashion_mnist.hpp>
#include <igrad/data/image_dataset.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace igrad::detail {

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny generator whose output is the same on every
/// platform, unlike the `std::` distributions, so a seed names the same data set everywhere.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t state) : state_(state) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// An integer in [low, high] (both included); the modulo bias is below 2^-50 for these ranges.
  int64_t uniform(int64_t low, int64_t high) {
    return low + static_cast<int64_t>(next() % static_cast<std::uint64_t>(high - low + 1));
  }
  /// The generator of sample `index` of the data set seeded with `seed`: independent of the
  /// order in which samples are drawn, and of every other RNG.
  static SplitMix64 for_sample(std::uint64_t seed, std::uint64_t index) {
    SplitMix64 mix(index ^ 0xD1B54A32D192ED03ull);
    return SplitMix64(SplitMix64(seed).next() ^ mix.next());
  }

 private:
  std::uint64_t state_;
};

}  // namespace igrad::detail

namespace igrad::data {

/// @addtogroup data_group
/// @{

/// @brief How to build the cluttered set, with chained setters:
/// `ClutteredOptions().canvas_size(64).seed(7)`.
struct ClutteredOptions {
  /// Side of the square canvas in pixels (at least the source images' side).
  TORCH_ARG(int64_t, canvas_size) = 64;
  /// Seed of the placements and the clutter; sample i depends only on (seed, i).
  TORCH_ARG(std::uint64_t, seed) = 0;
  /// Number of clutter patches per canvas (0: the item alone on the canvas).
  TORCH_ARG(int64_t, clutter_count) = 4;
  /// Smallest side of a clutter patch.
  TORCH_ARG(int64_t, clutter_min_size) = 8;
  /// Largest side of a clutter patch (at most the source images' side).
  TORCH_ARG(int64_t, clutter_max_size) = 12;
};

/// @brief One localisation sample.
struct LocalizationExample {
  torch::Tensor image;  ///< `[C, S, S]` float, normalised like the source dataset
  torch::Tensor label;  ///< 0-D int64 class of the item
  /// `[4]` int64 `(x0, y0, x1, y1)`: the tight box of the item's non-zero pixels, x0/y0
  /// included, x1/y1 excluded (pixel (x, y) is inside iff x0 <= x < x1 and y0 <= y < y1).
  torch::Tensor box;
  torch::Tensor mask;   ///< `[S, S]` bool: the item's non-zero pixels
};

/// @brief A batch of localisation samples.
struct LocalizationBatch {
  torch::Tensor images;  ///< `[N, C, S, S]` float
  torch::Tensor labels;  ///< `[N]` int64
  torch::Tensor boxes;   ///< `[N, 4]` int64, `(x0, y0, x1, y1)` as in `LocalizationExample::box`
  torch::Tensor masks;   ///< `[N, S, S]` bool
};

/// @brief Stacks localisation samples into a batch.
inline LocalizationBatch collate(const std::vector<LocalizationExample>& examples) {
  detail::require(!examples.empty(), "collate() got no samples; expected at least one");
  std::vector<torch::Tensor> images, labels, boxes, masks;
  for (const auto& e : examples) {
    images.push_back(e.image);
    labels.push_back(e.label);
    boxes.push_back(e.box);
    masks.push_back(e.mask);
  }
  return {torch::stack(images), torch::stack(labels), torch::stack(boxes), torch::stack(masks)};
}

/// @brief Cluttered Fashion-MNIST: item i of a source dataset (the Fashion-MNIST test set by
/// default) pasted at a seeded random place of an S×S canvas (S = 64 by default), with clutter.
///
/// Construction of sample i, from a generator seeded by (seed, i) alone — so the same seed and
/// index give the same sample whatever the access order or thread, and the global RNG is never
/// touched:
/// 1. the item (28×28) goes to a uniformly drawn position on the zero canvas;
/// 2. its ground truth is the tight box of its non-zero pixels and the mask of those pixels;
/// 3. `clutter_count` patches are cut from other items (uniformly drawn, never item i): a square
///    of side s ∈ [clutter_min_size, clutter_max_size] taken inside that item's own tight box
///    (so that the patch holds garment texture, not background), pasted with a pixel-wise
///    maximum at a uniformly drawn place that does not overlap the item's box. A patch that
///    finds no free place in 64 draws is skipped. Patches are clothing fragments of the same
///    texture statistics as the item, yet never a whole item, so the class evidence stays
///    inside the box.
///
/// The canvas is converted to floats in [0, 1] and normalised with the source's normalisation
/// (Fashion-MNIST's mean and std by default), so a model trained on 28×28 Fashion-MNIST with
/// global average pooling classifies it directly.
class ClutteredFashionMnist
    : public torch::data::datasets::Dataset<ClutteredFashionMnist, LocalizationExample> {
 public:
  /// @brief Clutters the Fashion-MNIST test set from its default directory.
  explicit ClutteredFashionMnist(const ClutteredOptions& options = {})
      : ClutteredFashionMnist(FashionMnist(FashionMnistOptions().split(Split::test)), options) {}

  /// @brief Clutters the items of `source` (any dataset of at least 2 images); the canvas is
  /// normalised with `source.normalization()`.
  explicit ClutteredFashionMnist(ImageDataset source, const ClutteredOptions& options = {})
      : source_(std::move(source)), options_(options) {
    const int64_t height = source_.pixels().size(2), width = source_.pixels().size(3);
    detail::require(source_.count() >= 2,
                    "the cluttered set's source holds {} images; expected at least 2 (clutter "
                    "comes from other items)",
                    source_.count());
    detail::require(options_.canvas_size() >= std::max(height, width),
                    "ClutteredOptions::canvas_size is {}; expected at least the source images' "
                    "side ({})",
                    options_.canvas_size(), std::max(height, width));
    detail::require(options_.clutter_count() >= 0,
                    "ClutteredOptions::clutter_count is {}; expected >= 0", options_.clutter_count());
    detail::require(1 <= options_.clutter_min_size() &&
                        options_.clutter_min_size() <= options_.clutter_max_size() &&
                        options_.clutter_max_size() <= std::min(height, width),
                    "clutter sizes [{}, {}]; expected 1 <= min <= max <= {} (the source images' "
                    "side)",
                    options_.clutter_min_size(), options_.clutter_max_size(),
                    std::min(height, width));
    // The tight boxes of all items, computed once: rows/columns holding a non-zero pixel.
    const auto nonzero = source_.pixels().ne(0).any(1);  // [N, h, w]
    boxes_.reserve(static_cast<std::size_t>(source_.count()));
    const auto rows = nonzero.any(2), cols = nonzero.any(1);
    auto row = rows.accessor<bool, 2>();
    auto col = cols.accessor<bool, 2>();
    for (int64_t i = 0; i < source_.count(); ++i) {
      int64_t x0 = width, x1 = 0, y0 = height, y1 = 0;
      for (int64_t x = 0; x < width; ++x)
        if (col[i][x]) x0 = std::min(x0, x), x1 = x + 1;
      for (int64_t y = 0; y < height; ++y)
        if (row[i][y]) y0 = std::min(y0, y), y1 = y + 1;
      if (x1 == 0) x0 = 0, y0 = 0, x1 = width, y1 = height;  // a blank item: its whole frame
      boxes_.push_back({x0, y0, x1, y1});
    }
  }

  /// @brief Sample `index` (deterministic in (seed, index)).
  LocalizationExample get(size_t index) override {
    const auto i = static_cast<int64_t>(index);
    detail::require(i >= 0 && i < source_.count(), "sample index {} is out of range; expected "
                    "[0, {})", i, source_.count());
    auto rng = detail::SplitMix64::for_sample(options_.seed(), index);
    const auto& pixels = source_.pixels();
    const int64_t channels = pixels.size(1), height = pixels.size(2), width = pixels.size(3);
    const int64_t side = options_.canvas_size();
    auto canvas = torch::zeros({channels, side, side}, torch::kUInt8);
    auto mask = torch::zeros({side, side}, torch::kBool);

    const int64_t ox = rng.uniform(0, side - width), oy = rng.uniform(0, side - height);
    const auto item = pixels[i];
    canvas.slice(1, oy, oy + height).slice(2, ox, ox + width).copy_(item);
    mask.slice(0, oy, oy + height).slice(1, ox, ox + width).copy_(item.ne(0).any(0));
    const auto& item_box = boxes_[static_cast<std::size_t>(i)];
    const std::array<int64_t, 4> box = {ox + item_box[0], oy + item_box[1], ox + item_box[2],
                                        oy + item_box[3]};

    for (int64_t k = 0; k < options_.clutter_count(); ++k) {
      int64_t other = rng.uniform(0, source_.count() - 2);
      if (other >= i) ++other;
      const int64_t s = rng.uniform(options_.clutter_min_size(), options_.clutter_max_size());
      const auto& b = boxes_[static_cast<std::size_t>(other)];
      // Inside the other item's tight box when it is large enough, else clamped to its frame.
      const int64_t cx =
          std::clamp(rng.uniform(b[0], std::max(b[0], b[2] - s)), int64_t{0}, width - s);
      const int64_t cy =
          std::clamp(rng.uniform(b[1], std::max(b[1], b[3] - s)), int64_t{0}, height - s);
      for (int attempt = 0; attempt < 64; ++attempt) {
        const int64_t px = rng.uniform(0, side - s), py = rng.uniform(0, side - s);
        const bool overlaps = px < box[2] && box[0] < px + s && py < box[3] && box[1] < py + s;
        if (overlaps) continue;
        auto target = canvas.slice(1, py, py + s).slice(2, px, px + s);
        target.copy_(torch::maximum(
            target, pixels[other].slice(1, cy, cy + s).slice(2, cx, cx + s)));
        break;
      }
    }
    auto image = source_.normalization().normalize(canvas.to(torch::kFloat).div_(255.0));
    return {image, source_.labels()[i], torch::tensor({box[0], box[1], box[2], box[3]}), mask};
  }

  /// @brief Number of samples (that of the source).
  torch::optional<size_t> size() const override { return static_cast<size_t>(source_.count()); }
  /// @brief Number of samples, as a signed count.
  int64_t count() const { return source_.count(); }

  /// @brief Samples `[begin, end)` stacked into a batch.
  LocalizationBatch batch(int64_t begin, int64_t end) {
    detail::require(0 <= begin && begin < end && end <= count(),
                    "batch range [{}, {}) for {} samples; expected 0 <= begin < end <= {}", begin,
                    end, count(), count());
    std::vector<LocalizationExample> examples;
    for (int64_t i = begin; i < end; ++i) examples.push_back(get(static_cast<size_t>(i)));
    return collate(examples);
  }

  /// @brief The normalisation of the images (the source's), for metrics that mask in pixel space.
  const Normalization& normalization() const { return source_.normalization(); }
  /// @brief The options.
  const ClutteredOptions& options() const { return options_; }
  /// @brief The source dataset the items and the clutter come from.
  const ImageDataset& source() const { return source_; }

 private:
  ImageDataset source_;
  ClutteredOptions options_;
  std::vector<std::array<int64_t, 4>> boxes_;  // tight boxes of the source items, item coordinates
};

/// @}
}  // namespace igrad::data

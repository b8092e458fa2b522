#pragma once
/// @file data/augment.hpp
/// @brief Batched data augmentation — random crop with padding and horizontal flip, the seed
/// paper's CIFAR recipe — computed on the images' own device, as functions and as `torch::data`
/// batch transforms.
///
/// The transforms take a loader's batch before `Stack` (LibTorch 1.13's `map` cannot chain a
/// transform after `Stack`: its type check needs the batch type's `value_type`); each stacks the
/// batch's images, transforms them in one batched operation, and hands the examples on:
/// @snippet doc_snippets.cpp augment
/// On a GPU, call the functions on a batch already moved there (`random_crop(x.to(device), 4)`):
/// every operation, random draws included, runs on the batch's device. Draws come from LibTorch's
/// default generator of that device, so `torch::manual_seed` makes them reproducible (with a
/// loader of 0 workers; workers draw in the order they run).

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace igrad::data {

/// @addtogroup data_group
/// @{

/// @brief Crops each image of `images` `[N, C, H, W]` at a given offset of its zero-padded copy:
/// the image is padded by `padding` pixels of value `fill` on every side, and image n's output is
/// the H×W window whose top-left corner is (row `offsets[n][0]`, column `offsets[n][1]`) of the
/// padded image, each offset in [0, 2·padding]. Offset (padding, padding) returns the image.
///
/// `fill` is in the images' own units: with normalised images 0 is the dataset mean; pass
/// `−mean/std` for black.
inline torch::Tensor crop_with_padding(const torch::Tensor& images, int64_t padding,
                                       const torch::Tensor& offsets, double fill = 0.0) {
  detail::require_images(images, "crop_with_padding: images", detail::ImageValues::any);
  detail::require(padding >= 0, "crop_with_padding: padding {}; expected >= 0", padding);
  const int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  detail::require(offsets.defined() && offsets.dim() == 2 && offsets.size(0) == n &&
                             offsets.size(1) == 2 && !offsets.is_floating_point(),
                         "crop_with_padding: offsets have shape {}; expected integer [{}, 2] "
                         "(row, column)",
                         offsets.defined() ? detail::shape_string(offsets) : "undefined", n);
  if (n == 0) return images.clone();
  const auto o = offsets.to(images.device(), torch::kLong);
  detail::require(o.min().item<int64_t>() >= 0 && o.max().item<int64_t>() <= 2 * padding,
                         "crop_with_padding: offsets range over [{}, {}]; expected [0, {}] for "
                         "padding {}", o.min().item<int64_t>(), o.max().item<int64_t>(),
                         2 * padding, padding);
  const auto padded = torch::constant_pad_nd(images, {padding, padding, padding, padding}, fill);
  const auto long_options = o.options();
  const auto rows = o.select(1, 0).view({n, 1}) + torch::arange(h, long_options).view({1, h});
  const auto cols = o.select(1, 1).view({n, 1}) + torch::arange(w, long_options).view({1, w});
  using torch::indexing::Slice;
  // Advanced indexing: batch [N,1,1,1], channels [1,C,1,1], rows [N,1,H,1], columns [N,1,1,W].
  return padded.index({torch::arange(n, long_options).view({n, 1, 1, 1}),
                       torch::arange(images.size(1), long_options).view({1, -1, 1, 1}),
                       rows.view({n, 1, h, 1}), cols.view({n, 1, 1, w})});
}

/// @brief Random crop with padding: each image gets offsets drawn uniformly from
/// {0, …, 2·padding}² (independently per image, on the images' device); see `crop_with_padding`.
inline torch::Tensor random_crop(const torch::Tensor& images, int64_t padding, double fill = 0.0) {
  detail::require_images(images, "random_crop: images", detail::ImageValues::any);
  detail::require(padding >= 0, "random_crop: padding {}; expected >= 0", padding);
  const auto offsets = torch::randint(0, 2 * padding + 1, {images.size(0), 2},
                                      torch::TensorOptions().dtype(torch::kLong).device(images.device()));
  return crop_with_padding(images, padding, offsets, fill);
}

/// @brief Mirrors left-right the images of `images` `[N, C, H, W]` where `flip` `[N]` (bool) is
/// true; the others are returned as they are.
inline torch::Tensor horizontal_flip(const torch::Tensor& images, const torch::Tensor& flip) {
  detail::require_images(images, "horizontal_flip: images", detail::ImageValues::any);
  detail::require(flip.defined() && flip.dim() == 1 && flip.size(0) == images.size(0),
                         "horizontal_flip: the flip mask has shape {}; expected [{}]",
                         flip.defined() ? detail::shape_string(flip) : "undefined",
                         images.size(0));
  return torch::where(flip.to(images.device(), torch::kBool).view({-1, 1, 1, 1}), images.flip({3}),
                      images);
}

/// @brief Mirrors each image left-right with probability `probability` (drawn per image on the
/// images' device).
inline torch::Tensor random_horizontal_flip(const torch::Tensor& images, double probability = 0.5) {
  detail::require_images(images, "random_horizontal_flip: images", detail::ImageValues::any);
  detail::require(std::isfinite(probability) && probability >= 0 && probability <= 1,
                         "random_horizontal_flip: probability {}; expected a value in [0, 1]",
                         probability);
  const auto draws = torch::rand({images.size(0)}, images.options().dtype(torch::kFloat));
  return horizontal_flip(images, draws.lt(probability));
}

/// @brief A loader's batch before `Stack`: its examples.
using ExampleBatch = std::vector<torch::data::Example<>>;

namespace augment_detail {
/// Stacks the batch's images, applies `transform` to them at once, and puts each result back.
template <class F>
ExampleBatch transform_stacked(ExampleBatch batch, F&& transform) {
  if (batch.empty()) return batch;
  std::vector<torch::Tensor> images;
  images.reserve(batch.size());
  for (const auto& e : batch) images.push_back(e.data);
  const auto out = std::forward<F>(transform)(torch::stack(images));
  for (size_t i = 0; i < batch.size(); ++i) batch[i].data = out[static_cast<int64_t>(i)];
  return batch;
}
}  // namespace augment_detail

/// @brief `torch::data` batch transform: `random_crop` of a batch's images (targets kept).
class RandomCrop : public torch::data::transforms::BatchTransform<ExampleBatch, ExampleBatch> {
 public:
  /// @brief Pads by `padding` pixels of value `fill`, then crops at a random offset.
  explicit RandomCrop(int64_t padding = 4, double fill = 0.0) : padding_(padding), fill_(fill) {
    detail::require(padding >= 0, "RandomCrop: padding {}; expected >= 0", padding);
  }
  /// @brief Crops every image of the batch.
  ExampleBatch apply_batch(ExampleBatch batch) override {
    return augment_detail::transform_stacked(std::move(batch), [this](const torch::Tensor& x) {
      return random_crop(x, padding_, fill_);
    });
  }

 private:
  int64_t padding_;
  double fill_;
};

/// @brief `torch::data` batch transform: `random_horizontal_flip` of a batch's images.
class RandomHorizontalFlip
    : public torch::data::transforms::BatchTransform<ExampleBatch, ExampleBatch> {
 public:
  /// @brief Flips each image with probability `probability`.
  explicit RandomHorizontalFlip(double probability = 0.5) : probability_(probability) {
    detail::require(std::isfinite(probability) && probability >= 0 && probability <= 1,
                           "RandomHorizontalFlip: probability {}; expected a value in [0, 1]",
                           probability);
  }
  /// @brief Flips the batch's images.
  ExampleBatch apply_batch(ExampleBatch batch) override {
    return augment_detail::transform_stacked(std::move(batch), [this](const torch::Tensor& x) {
      return random_horizontal_flip(x, probability_);
    });
  }

 private:
  double probability_;
};

/// @}
}  // namespace igrad::data

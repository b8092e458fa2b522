#pragma once
/// @file data/image_dataset.hpp
/// @brief An in-memory image classification dataset for LibTorch's data loaders, and the
/// per-channel normalisation that metrics undo before masking images in pixel space.

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/normalization.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace igrad::data {

/// @addtogroup data_group
/// @{

/// @brief Images and labels held in memory, usable with `torch::data::make_data_loader`.
///
/// The pixels are kept as bytes (`[N, C, H, W]` `uint8`, a quarter of the float size: CIFAR's
/// 50 000 training images take 150 MB instead of 600 MB) and converted on access to floats in
/// [0, 1], normalised when the dataset was built with a normalisation. Copies share the tensors.
/// `slice` and `train_validation_split` give deterministic subsets without copying.
class ImageDataset : public torch::data::datasets::Dataset<ImageDataset> {
 public:
  /// @brief A dataset over `pixels` (`[N, C, H, W]` uint8) and `labels` (`[N]` integers).
  ImageDataset(torch::Tensor pixels, torch::Tensor labels, Normalization normalization = {},
               int64_t classes = 0)
      : pixels_(std::move(pixels)),
        labels_(std::move(labels)),
        normalization_(std::move(normalization)),
        classes_(classes) {
    detail::require_rank(pixels_, 4, "dataset pixels", "[N, C, H, W]");
    detail::require(pixels_.scalar_type() == torch::kUInt8,
                    "dataset pixels have dtype {}; expected uint8 bytes in [0, 255]",
                    std::string(c10::toString(pixels_.scalar_type())));
    labels_ = labels_.to(torch::kLong);
    detail::require(labels_.dim() == 1 && labels_.size(0) == pixels_.size(0),
                    "dataset labels have shape {} for {} images; expected [{}]",
                    detail::shape_string(labels_), pixels_.size(0), pixels_.size(0));
    detail::require(normalization_.is_identity() ||
                        static_cast<int64_t>(normalization_.mean.size()) == pixels_.size(1),
                    "normalisation has {} channels for images with {}; expected one per channel",
                    normalization_.mean.size(), pixels_.size(1));
  }

  /// @brief Sample `index`: image `[C, H, W]` float and its label (0-D int64).
  torch::data::Example<> get(size_t index) override {
    const auto i = checked(static_cast<int64_t>(index));
    return {images(i, i + 1)[0], labels_[i]};
  }

  /// @brief Several samples at once (one conversion for the whole batch).
  std::vector<torch::data::Example<>> get_batch(c10::ArrayRef<size_t> indices) override {
    std::vector<int64_t> rows;
    rows.reserve(indices.size());
    for (auto i : indices) rows.push_back(checked(static_cast<int64_t>(i)));
    const auto index = torch::tensor(rows, torch::kLong);
    const auto batch = to_float(pixels_.index_select(0, index));
    const auto targets = labels_.index_select(0, index);
    std::vector<torch::data::Example<>> examples;
    examples.reserve(rows.size());
    for (int64_t k = 0; k < static_cast<int64_t>(rows.size()); ++k)
      examples.push_back({batch[k], targets[k]});
    return examples;
  }

  /// @brief Number of samples.
  torch::optional<size_t> size() const override { return static_cast<size_t>(pixels_.size(0)); }
  /// @brief Number of samples, as a signed count.
  int64_t count() const { return pixels_.size(0); }

  /// @brief All images `[N, C, H, W]` float (normalised when the dataset normalises). This
  /// allocates N·C·H·W floats; use `images(begin, end)` for chunks.
  torch::Tensor images() const { return to_float(pixels_); }
  /// @brief Images `[begin, end)` as `[end − begin, C, H, W]` float.
  torch::Tensor images(int64_t begin, int64_t end) const {
    check_range(begin, end);
    return to_float(pixels_.slice(0, begin, end));
  }
  /// @brief All labels `[N]` int64.
  const torch::Tensor& labels() const { return labels_; }
  /// @brief The raw pixels `[N, C, H, W]` uint8 in [0, 255].
  const torch::Tensor& pixels() const { return pixels_; }
  /// @brief The normalisation applied by `get` and `images` (identity when switched off).
  const Normalization& normalization() const { return normalization_; }
  /// @brief Number of classes (0 when unknown).
  int64_t classes() const { return classes_; }

  /// @brief Samples `[begin, end)` as a dataset sharing this one's tensors.
  ImageDataset slice(int64_t begin, int64_t end) const {
    check_range(begin, end);
    return ImageDataset(pixels_.slice(0, begin, end), labels_.slice(0, begin, end),
                        normalization_, classes_);
  }

 private:
  torch::Tensor to_float(const torch::Tensor& bytes) const {
    return normalization_.normalize(bytes.to(torch::kFloat).div_(255.0));
  }
  int64_t checked(int64_t i) const {
    detail::require(i >= 0 && i < count(), "sample index {} is out of range; expected [0, {})", i,
                    count());
    return i;
  }
  void check_range(int64_t begin, int64_t end) const {
    detail::require(0 <= begin && begin <= end && end <= count(),
                    "range [{}, {}) is not within the dataset's {} samples; expected "
                    "0 <= begin <= end <= {}",
                    begin, end, count(), count());
  }

  torch::Tensor pixels_, labels_;
  Normalization normalization_;
  int64_t classes_;
};

/// @brief A training set split into the part to train on and a held-out validation part.
struct TrainValidationSplit {
  ImageDataset train;       ///< the first N − k samples
  ImageDataset validation;  ///< the last k samples
};

/// @brief Holds out the last `validation_size` samples of `dataset` (deterministic, no shuffle:
/// every run and every λ of a sweep validates on the same images).
inline TrainValidationSplit train_validation_split(const ImageDataset& dataset,
                                                   int64_t validation_size) {
  detail::require(validation_size >= 0 && validation_size < dataset.count(),
                  "validation size {} for a dataset of {} samples; expected 0 <= k < {}",
                  validation_size, dataset.count(), dataset.count());
  const int64_t cut = dataset.count() - validation_size;
  return {dataset.slice(0, cut), dataset.slice(cut, dataset.count())};
}

/// @brief Which part of a dataset to load.
enum class Split {
  train,  ///< the training files
  test    ///< the test files
};

/// @}
}  // namespace igrad::data

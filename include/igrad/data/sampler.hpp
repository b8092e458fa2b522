#pragma once
/// @file data/sampler.hpp
/// @brief A random sampler that makes resuming from a checkpoint exact whatever the order in
/// which the data loader and the checkpoint are set up.

#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace igrad::data {

/// @addtogroup data_group
/// @{

/// @brief Shuffles like LibTorch's `RandomSampler` — a `randperm` from the default CPU generator
/// each time the loader starts an epoch — but draws nothing when it is constructed.
///
/// LibTorch's `RandomSampler` draws a permutation in its constructor as well, so a loader built
/// after `igrad::load_checkpoint` (which restores the generator) consumes one permutation and
/// every resumed epoch differs from the uninterrupted run; one built before it does not. With
/// this sampler both orders resume exactly. Other draws from the default generator between
/// `load_checkpoint` and `fit` (random augmentation set-up, `torch::randn`) still shift the
/// shuffle, with either sampler: make them before loading the checkpoint.
/// @snippet doc_snippets.cpp resumable_sampler
class ResumableRandomSampler : public torch::data::samplers::Sampler<> {
 public:
  /// @brief A sampler over `size` indices; nothing is drawn until the first epoch.
  explicit ResumableRandomSampler(int64_t size) : size_(size) {
    detail::require(size >= 0, "ResumableRandomSampler over {} indices; expected >= 0", size);
  }

  /// @brief Draws the permutation of the next epoch (the data loader calls it as each epoch
  /// starts), optionally over a new number of indices.
  void reset(torch::optional<size_t> new_size = torch::nullopt) override {
    if (new_size.has_value()) size_ = static_cast<int64_t>(*new_size);
    indices_ = torch::randperm(size_, torch::kInt64);
    index_ = 0;
  }

  /// @brief The next `batch_size` indices of the permutation; none at its end.
  torch::optional<std::vector<size_t>> next(size_t batch_size) override {
    if (!indices_.defined()) reset();
    const auto remaining = indices_.numel() - index_;
    if (remaining <= 0 || batch_size == 0) return torch::nullopt;
    const auto count = std::min<int64_t>(remaining, static_cast<int64_t>(batch_size));
    const auto* data = indices_.data_ptr<int64_t>() + index_;
    std::vector<size_t> batch(data, data + count);
    index_ += count;
    return batch;
  }

  /// @brief Writes the current permutation and position.
  void save(torch::serialize::OutputArchive& archive) const override {
    archive.write("size", torch::tensor(size_));
    archive.write("index", torch::tensor(index_));
    if (indices_.defined()) archive.write("indices", indices_);
  }

  /// @brief Reads what `save` wrote.
  void load(torch::serialize::InputArchive& archive) override {
    torch::Tensor size, index, indices;
    archive.read("size", size);
    archive.read("index", index);
    size_ = size.item<int64_t>();
    index_ = index.item<int64_t>();
    if (archive.try_read("indices", indices)) indices_ = indices.to(torch::kInt64).contiguous();
  }

  /// @brief Position in the current permutation.
  int64_t index() const { return index_; }

 private:
  int64_t size_;
  torch::Tensor indices_;
  int64_t index_ = 0;
};

/// @}
}  // namespace igrad::data

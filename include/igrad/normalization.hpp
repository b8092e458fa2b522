#pragma once
/// @file normalization.hpp
/// @brief The one per-channel normalisation type, `igrad::DatasetNormalization` (also spelt
/// `igrad::data::Normalization`): what datasets apply to their images and what the metrics undo
/// to mask in pixel space (SPEC §5).

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <cmath>
#include <concepts>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace igrad {

/// @addtogroup metrics_group
/// @{

/// @brief Per-channel normalisation `x = (pixel − mean_c) / std_c` of images with pixels in
/// [0, 1].
///
/// Datasets expose theirs (`ImageDataset::normalization()`), and the metrics take it: masking a
/// normalised value by 0 gives the dataset mean, not black, so with a normalisation the metrics
/// de-normalise, multiply by the map, and re-normalise. Either one value per channel, or a single
/// value for every channel (e.g. Fashion-MNIST: mean 0.2860, std 0.3530); both empty is the
/// identity. Converts implicitly from any type with `mean` and `std` vectors.
struct DatasetNormalization {
  std::vector<double> mean;  ///< per-channel mean, or one value for all channels
  std::vector<double> std;   ///< per-channel standard deviation (> 0), or one value

  /// @brief The identity (no normalisation).
  DatasetNormalization() = default;
  /// @brief A normalisation from its per-channel (or common) mean and std.
  DatasetNormalization(std::vector<double> mean_values, std::vector<double> std_values)
      : mean(std::move(mean_values)), std(std::move(std_values)) {}
  /// @brief Copies the mean and std of another normalisation type.
  template <class Other>
    requires(!std::same_as<Other, DatasetNormalization>) && requires(const Other& other) {
      { other.mean } -> std::convertible_to<std::vector<double>>;
      { other.std } -> std::convertible_to<std::vector<double>>;
    }
  DatasetNormalization(const Other& other)  // NOLINT(google-explicit-constructor): same data
      : mean(other.mean), std(other.std) {}

  /// @brief Whether this is the identity (no values given).
  bool is_identity() const { return mean.empty() && std.empty(); }

  /// @brief Mean and std as `[C, 1, 1]` tensors on `like`'s device and dtype (float for an
  /// integer `like`), checked: one value per channel or one for all, finite, std > 0. The
  /// identity gives zeros and ones.
  std::pair<torch::Tensor, torch::Tensor> channel_tensors(int64_t channels,
                                                          const torch::Tensor& like) const {
    const auto options =
        like.options().dtype(like.is_floating_point() ? like.scalar_type() : torch::kFloat);
    if (is_identity())
      return {torch::zeros({channels, 1, 1}, options), torch::ones({channels, 1, 1}, options)};
    const auto check = [&](const std::vector<double>& v, std::string_view what) {
      detail::require(v.size() == 1 || static_cast<int64_t>(v.size()) == channels,
                      "the normalisation's {} has {} values for images with {} channel(s); "
                      "expected one value per channel, or a single value for all",
                      what, v.size(), channels);
      for (double value : v)
        detail::require(std::isfinite(value),
                        "the normalisation's {} holds {}; expected finite values", what, value);
    };
    check(mean, "mean");
    check(std, "std");
    for (double s : std)
      detail::require(s > 0, "the normalisation's std holds {}; expected values > 0", s);
    const auto shaped = [&](const std::vector<double>& v) {
      auto t = torch::tensor(v, torch::TensorOptions().dtype(torch::kDouble)).to(options);
      return t.numel() == 1 ? t.view({1, 1, 1}).expand({channels, 1, 1}).contiguous()
                            : t.view({channels, 1, 1});
    };
    return {shaped(mean), shaped(std)};
  }

  /// @brief `(x − mean) / std` on `[N, C, H, W]` or `[C, H, W]` images with pixels in [0, 1].
  torch::Tensor normalize(const torch::Tensor& x) const {
    if (is_identity()) return x;
    const auto [m, s] = channel_tensors(channels_of(x), x);
    return (x - m) / s;
  }

  /// @brief `x · std + mean`: back to pixels in [0, 1].
  torch::Tensor denormalize(const torch::Tensor& x) const {
    if (is_identity()) return x;
    const auto [m, s] = channel_tensors(channels_of(x), x);
    return x * s + m;
  }

 private:
  static int64_t channels_of(const torch::Tensor& x) {
    detail::require(x.defined() && (x.dim() == 3 || x.dim() == 4),
                    "images have shape {}; expected [C, H, W] or [N, C, H, W]",
                    detail::shape_string(x));
    return x.size(x.dim() - 3);
  }
};

/// @}

namespace data {
/// @brief The data module's name of the one normalisation type (see `igrad::DatasetNormalization`).
using Normalization = DatasetNormalization;
}  // namespace data

}  // namespace igrad

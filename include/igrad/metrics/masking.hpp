#pragma once
/// @file metrics/masking.hpp
/// @brief What every metric shares: the dataset's normalisation, normalisation-aware masking,
/// the choice of class, input validation and class probabilities (SPEC §5).

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>

#include <fmt/format.h>
#include <torch/arg.h>
#include <torch/torch.h>

#include <cmath>
#include <concepts>
#include <cstdint>
#include <optional>
#include <utility>
#include <string>
#include <string_view>
#include <vector>

namespace igrad {

/// @defgroup metrics_group Metrics
/// @brief Faithfulness (Average Drop / Increase / Gain), causal (insertion / deletion) and
/// localisation (pointing game) metrics of saliency maps, and the evaluation table (SPEC §5).
/// @{

/// @brief The per-channel normalisation a dataset's images went through: `x = (pixel − mean) / std`.
///
/// Metrics that mask an image must multiply *pixels* by the map, not normalised values (masking a
/// normalised value by 0 gives the dataset mean, not black). With a normalisation the metrics
/// de-normalise, multiply by the map, and re-normalise. Either one value per channel, or a single
/// value for every channel (e.g. Fashion-MNIST: mean 0.2860, std 0.3530); both empty is the
/// identity. Converts implicitly from any type with `mean` and `std` vectors, such as the data
/// module's `igrad::Normalization`, so `options.normalization(dataset.normalization())` works.
struct DatasetNormalization {
  std::vector<double> mean;  ///< per-channel mean, or one value for all channels
  std::vector<double> std;   ///< per-channel standard deviation (> 0), or one value

  /// @brief The identity (no normalisation).
  DatasetNormalization() = default;
  /// @brief A normalisation from its per-channel (or common) mean and std.
  DatasetNormalization(std::vector<double> mean_values, std::vector<double> std_values)
      : mean(std::move(mean_values)), std(std::move(std_values)) {}
  /// @brief Copies the mean and std of another normalisation type (e.g. `igrad::Normalization`).
  template <class Other>
    requires(!std::same_as<Other, DatasetNormalization>) && requires(const Other& other) {
      { other.mean } -> std::convertible_to<std::vector<double>>;
      { other.std } -> std::convertible_to<std::vector<double>>;
    }
  DatasetNormalization(const Other& other)  // NOLINT(google-explicit-constructor): same data
      : mean(other.mean), std(other.std) {}
};

/// @brief Which class a metric scores for each image.
enum class TargetClass {
  label,      ///< the given class indices (the ground truth, SPEC §5's default)
  predicted,  ///< the model's prediction on the unmasked image (given indices are ignored)
};

/// @brief The options every metric shares: normalisation and class choice.
struct MaskingOptions {
  /// The dataset's normalisation; none means the images are masked as they are.
  TORCH_ARG(std::optional<DatasetNormalization>, normalization) = std::nullopt;
  /// Ground-truth classes (default) or the model's predictions.
  TORCH_ARG(TargetClass, target) = TargetClass::label;
};

namespace detail {

/// Mean and std shaped `[1, C, 1, 1]` on `like`'s device and dtype, checked against `channels`.
inline std::pair<torch::Tensor, torch::Tensor> normalization_tensors(
    const DatasetNormalization& n, int64_t channels, const torch::Tensor& like) {
  if (n.mean.empty() && n.std.empty())  // the identity
    return {torch::zeros({1, channels, 1, 1}, like.options()),
            torch::ones({1, channels, 1, 1}, like.options())};
  const auto check = [&](const std::vector<double>& v, std::string_view what) {
    require(v.size() == 1 || static_cast<int64_t>(v.size()) == channels,
            "the normalisation's {} has {} values for images with {} channel(s); expected one "
            "value per channel, or a single value for all",
            what, v.size(), channels);
    for (double value : v)
      require(std::isfinite(value), "the normalisation's {} holds {}; expected finite values",
              what, value);
  };
  check(n.mean, "mean");
  check(n.std, "std");
  for (double s : n.std)
    require(s > 0, "the normalisation's std holds {}; expected values > 0", s);
  const auto shaped = [&](const std::vector<double>& v) {
    auto t = torch::tensor(v, torch::TensorOptions().dtype(torch::kDouble))
                 .to(like.device(), like.scalar_type());
    return t.numel() == 1 ? t.view({1, 1, 1, 1}).expand({1, channels, 1, 1}).contiguous()
                          : t.view({1, channels, 1, 1});
  };
  return {shaped(n.mean), shaped(n.std)};
}

/// Checks a batch of images `[N, C, H, W]`: defined, 4-D, floating point, finite.
inline void require_images(const torch::Tensor& x, std::string_view what = "images") {
  require_rank(x, 4, what, "[N, C, H, W]");
  require(x.is_floating_point(), "{} have dtype {}; expected a floating-point tensor", what,
          std::string(c10::toString(x.scalar_type())));
  require_finite(x, what);
}

/// The maps as `[N, H, W]` (a `[N, 1, H, W]` map is accepted and squeezed), checked to be
/// `[n, height, width]` on `device`, finite, within [0, 1]; `against` says what fixed the size.
inline torch::Tensor checked_maps(const torch::Tensor& maps, int64_t n, int64_t height,
                                  int64_t width, torch::Device device, std::string_view against) {
  require(maps.defined(), "the saliency maps are undefined; expected [N, H, W] maps in [0, 1]");
  auto m = maps;
  if (m.dim() == 4 && m.size(1) == 1) m = m.squeeze(1);
  require(m.dim() == 3,
          "the saliency maps have shape {}; expected [N, H, W] (or [N, 1, H, W]) maps in [0, 1]",
          shape_string(maps));
  require(m.size(0) == n && m.size(1) == height && m.size(2) == width,
          "the saliency maps have shape {} for {}; expected maps of shape [{}, {}, {}] (one map "
          "per image, at the image's resolution)",
          shape_string(maps), against, n, height, width);
  require(m.is_floating_point(), "the saliency maps have dtype {}; expected a floating-point "
          "tensor with values in [0, 1]", std::string(c10::toString(m.scalar_type())));
  require(m.device() == device,
          "the saliency maps are on {} and the images on {}; expected both on the same device",
          m.device().str(), device.str());
  require_finite(m, "the saliency maps");
  if (m.numel() > 0) {
    const double low = m.min().item<double>(), high = m.max().item<double>();
    require(low >= 0 && high <= 1,
            "the saliency maps range over [{}, {}]; expected values in [0, 1] (min-max scale "
            "them first)", low, high);
  }
  return m;
}

/// The maps checked against a batch of images `x` `[N, C, H, W]` (see above).
inline torch::Tensor checked_maps(const torch::Tensor& maps, const torch::Tensor& x) {
  return checked_maps(maps, x.size(0), x.size(2), x.size(3), x.device(),
                      "images of shape " + shape_string(x));
}

/// The dtype the model computes in: its first parameter's, or `fallback` (the images' own) for a
/// model without parameters. Masked images are computed in double and rounded to this once.
inline torch::ScalarType model_input_dtype(const AnyModel& model, torch::ScalarType fallback) {
  const auto parameters = model.parameters();
  return parameters.empty() ? fallback : parameters.front().scalar_type();
}

/// The model's logits of `input`, with LibTorch's errors (e.g. a convolution that takes fewer
/// channels than the images have, issue 14) turned into an `InvalidArgument` that names the shape
/// the model got and, where its first convolution shows it, the channels it takes.
inline torch::Tensor metric_forward(const AnyModel& model, const torch::Tensor& input) {
  try {
    return model.forward(input);
  } catch (const c10::Error& e) {  // LibTorch's checks only: igrad's own errors pass through
    std::string expected = "images of the size and channels the model was built for";
    for (const auto& p : model.parameters()) {
      if (p.dim() != 4) continue;  // the first 4-D parameter: the first convolution's weight
      if (p.size(1) != input.size(1))
        expected = fmt::format("images with {} channel(s): the model's first convolution takes {} "
                               "channel(s)", p.size(1), p.size(1));
      break;
    }
    throw InvalidArgument(fmt::format("the model rejected images of shape {}; expected {}. "
                                      "LibTorch said: {}", shape_string(input), expected,
                                      first_line(e.what_without_backtrace())));
  }
}

/// Softmax probabilities `[N, K]` (double, on `x`'s device) of a batch; checks that the logits
/// are `[N, K]`. The model runs on its own device and dtype (a CUDA model scores CPU images).
inline torch::Tensor class_probabilities(const AnyModel& model, const torch::Tensor& x) {
  const auto parameters = model.parameters();
  const auto input = parameters.empty()
                         ? x
                         : x.to(parameters.front().device(), parameters.front().scalar_type());
  const auto logits = metric_forward(model, input);
  require(logits.defined() && logits.dim() == 2 && logits.size(0) == x.size(0),
          "the model returned logits of shape {} for a batch of {}; expected [{}, K]",
          shape_string(logits), x.size(0), x.size(0));
  return torch::softmax(logits.to(torch::kDouble), 1).to(x.device());
}

/// The class each image is scored for: the checked labels, or the argmax of `probabilities`.
inline torch::Tensor chosen_classes(const torch::Tensor& probabilities, const torch::Tensor& labels,
                                    TargetClass target) {
  if (target == TargetClass::predicted) return probabilities.argmax(1);
  require_labels(labels, probabilities.size(0), probabilities.size(1), "class indices");
  return labels.to(probabilities.device(), torch::kLong);
}

/// `P(c_i | x_i)` for each row: picks column `classes[i]` of `probabilities`.
inline torch::Tensor probability_of(const torch::Tensor& probabilities,
                                    const torch::Tensor& classes) {
  return probabilities.gather(1, classes.view({-1, 1})).view(-1);
}

/// Adds `terms` (any device) to `sum` one after another in index order, in double: the result
/// does not depend on how a dataset was split into batches.
inline void accumulate_in_order(double& sum, const torch::Tensor& terms) {
  const auto host = terms.detach().to(torch::kCPU, torch::kDouble).contiguous();
  const double* values = host.data_ptr<double>();
  for (int64_t i = 0; i < host.numel(); ++i) sum += values[i];
}

}  // namespace detail

namespace detail {

/// `x ∘ S` in double (see `mask_images`), for the caller to round once to the dtype it needs.
inline torch::Tensor mask_images_in_double(
    const torch::Tensor& x, const torch::Tensor& maps,
    const std::optional<DatasetNormalization>& normalization) {
  require_images(x);
  const auto m = checked_maps(maps, x).to(torch::kDouble).unsqueeze(1);
  const auto xd = x.to(torch::kDouble);
  if (!normalization) return xd * m;
  const auto [mean, std] = normalization_tensors(*normalization, x.size(1), xd);
  // ((x·std + mean)·S − mean)/std, written as x + pixel·(S − 1)/std so that S = 1 gives back x
  // bit for bit (a map of ones must leave p unchanged: AD = AI = AG = 0 exactly).
  return xd + (xd * std + mean) * (m - 1) / std;
}

}  // namespace detail

/// @brief Multiplies each image by its map in pixel space: `x ∘ S`.
///
/// `x` is `[N, C, H, W]`, `maps` `[N, H, W]` (every channel of a pixel gets the same factor).
/// With a normalisation the images are de-normalised (`pixel = x · std + mean`), multiplied, and
/// re-normalised, so a map of 0 gives black pixels, not the dataset mean. The arithmetic is done
/// in double and the result rounded once to `x`'s dtype (SPEC §5: in float32, a few ulp of
/// rounding show in Average Drop at small p); a map of ones gives back `x` exactly. Runs on `x`'s
/// device.
inline torch::Tensor mask_images(const torch::Tensor& x, const torch::Tensor& maps,
                                 const std::optional<DatasetNormalization>& normalization = {}) {
  return detail::mask_images_in_double(x, maps, normalization).to(x.scalar_type());
}

/// @}
}  // namespace igrad

#pragma once
/// @file metrics/masking.hpp
/// @brief What every metric shares: the dataset's normalisation, normalisation-aware masking,
/// the choice of class, input validation and class probabilities (SPEC §5).

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/detail/torch_errors.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>
#include <igrad/normalization.hpp>

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

/// @brief Which class a metric scores for each image.
enum class TargetClass {
  label,      ///< the given class indices (the ground truth, SPEC §5's default)
  predicted,  ///< the model's prediction on the unmasked image (given indices are ignored)
};

/// @brief Which output of the model a perturbation metric compares (ROAD, faithfulness
/// correlation, infidelity).
enum class ModelScore {
  probability,  ///< the softmax probability `P(c | x)`
  logit,        ///< the logit `y^c`
};

/// @brief The options every metric shares: normalisation and class choice.
struct MaskingOptions {
  /// The dataset's normalisation; none means the images are masked as they are.
  TORCH_ARG(std::optional<DatasetNormalization>, normalization) = std::nullopt;
  /// Ground-truth classes (default) or the model's predictions.
  TORCH_ARG(TargetClass, target) = TargetClass::label;
};

namespace detail {

/// Mean and std shaped `[1, C, 1, 1]` on `like`'s device and dtype, checked against `channels`
/// (`DatasetNormalization::channel_tensors`).
inline std::pair<torch::Tensor, torch::Tensor> normalization_tensors(
    const DatasetNormalization& n, int64_t channels, const torch::Tensor& like) {
  const auto [mean, std] = n.channel_tensors(channels, like);
  return {mean.view({1, channels, 1, 1}), std.view({1, channels, 1, 1})};
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

/// The model's logits of `input`; LibTorch's errors (e.g. a convolution that takes fewer
/// channels than the images have, issue 14) become an `InvalidArgument` (`call_model_checked`).
inline torch::Tensor metric_forward(const AnyModel& model, const torch::Tensor& input) {
  return call_model_checked(model, [&] { return model.forward(input); }, "forward", input,
                            "images");
}

/// The logits `[N, K]` of a batch, as the model computes them (its own device and dtype: a CUDA
/// model scores CPU images); checks that they are `[N, K]`.
inline torch::Tensor checked_logits(const AnyModel& model, const torch::Tensor& x) {
  const auto parameters = model.parameters();
  const auto input = parameters.empty()
                         ? x
                         : x.to(parameters.front().device(), parameters.front().scalar_type());
  const auto logits = metric_forward(model, input);
  require(logits.defined() && logits.dim() == 2 && logits.size(0) == x.size(0),
          "the model returned logits of shape {} for a batch of {}; expected [{}, K]",
          shape_string(logits), x.size(0), x.size(0));
  return logits;
}

/// Softmax probabilities `[N, K]` (double, on `x`'s device) of a batch.
inline torch::Tensor class_probabilities(const AnyModel& model, const torch::Tensor& x) {
  return torch::softmax(checked_logits(model, x).to(torch::kDouble), 1).to(x.device());
}

/// The score `[N, K]` (double, on `x`'s device) the model gives each class of a batch: softmax
/// probabilities or logits.
inline torch::Tensor class_scores(const AnyModel& model, const torch::Tensor& x, ModelScore score) {
  if (score == ModelScore::probability) return class_probabilities(model, x);
  return checked_logits(model, x).to(x.device(), torch::kDouble);
}

/// Finite maps `[N, H, W]` (a `[N, 1, H, W]` map is squeezed) matching images `x`, any sign or
/// scale (attributions as well as [0, 1] maps), as doubles on `x`'s device; `what` names the
/// caller in the message.
inline torch::Tensor checked_attribution_maps(const torch::Tensor& maps, const torch::Tensor& x,
                                              std::string_view what) {
  require(maps.defined(), "{}: the maps are undefined; expected [N, H, W] maps", what);
  auto m = maps;
  if (m.dim() == 4 && m.size(1) == 1) m = m.squeeze(1);
  require(m.dim() == 3 && m.size(0) == x.size(0) && m.size(1) == x.size(2) &&
              m.size(2) == x.size(3),
          "{}: the maps have shape {} for images of shape {}; expected [{}, {}, {}] (one map per "
          "image, at the image's resolution)",
          what, shape_string(maps), shape_string(x), x.size(0), x.size(2), x.size(3));
  require(m.is_floating_point(), "{}: the maps have dtype {}; expected a floating-point tensor",
          what, std::string(c10::toString(m.scalar_type())));
  require(all_finite(m), "{}: the maps contain NaN or infinite values; expected finite values",
          what);
  return m.detach().to(x.device(), torch::kDouble);
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

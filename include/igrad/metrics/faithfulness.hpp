#pragma once
/// @file metrics/faithfulness.hpp
/// @brief Average Drop, Average Increase and Average Gain (SPEC §5), accumulated exactly over
/// any split of a dataset into batches.

#include <igrad/metrics/masking.hpp>

#include <torch/torch.h>

#include <cstdint>

namespace igrad {

/// @addtogroup metrics_group
/// @{

/// @brief The three faithfulness metrics over a set of images, in %.
///
/// With `p_i = P(c | x_i)` and `o_i = P(c | x_i ∘ S_i)` (softmax probabilities):
/// \f[ AD = \frac{100}{N}\sum_i \frac{\max(0, p_i - o_i)}{p_i},\quad
///     AI = \frac{100}{N}\sum_i 1[o_i > p_i],\quad
///     AG = \frac{100}{N}\sum_i \frac{\max(0, o_i - p_i)}{1 - p_i} \f]
/// A term whose denominator is 0 (`p = 0` for AD, `p = 1` for AG) has a numerator of 0 and counts
/// as 0.
struct FaithfulnessResult {
  double average_drop = 0;      ///< AD in % (lower is better)
  double average_increase = 0;  ///< AI in % (higher is better)
  double average_gain = 0;      ///< AG in % (higher is better)
  int64_t images = 0;           ///< N, the number of images averaged over
};

/// @brief Per-image probabilities behind the faithfulness metrics.
struct FaithfulnessScores {
  torch::Tensor classes;    ///< `[N]` the class scored for each image
  torch::Tensor original;   ///< `[N]` `p_i = P(c | x_i)` (double)
  torch::Tensor masked;     ///< `[N]` `o_i = P(c | x_i ∘ S_i)` (double)
};

/// @brief `p_i` and `o_i` of a batch: the model scores each image and its masked copy.
///
/// `x` `[N, C, H, W]`, `maps` `[N, H, W]` in [0, 1] on `x`'s device, `classes` `[N]` class
/// indices (ignored, and may be undefined, with `TargetClass::predicted`). Runs in eval mode
/// (the model's mode is restored) without gradients, on `x`'s device.
inline FaithfulnessScores faithfulness_scores(const AnyModel& model, const torch::Tensor& x,
                                              const torch::Tensor& maps,
                                              const torch::Tensor& classes,
                                              const MaskingOptions& options = {}) {
  torch::NoGradGuard no_grad;  // before masking: maps that carry a graph must not extend it
  detail::require_images(x);
  // Masked in double and rounded once, to the dtype the model computes in (SPEC §5).
  const auto masked_images =
      detail::mask_images_in_double(x, maps, options.normalization())
          .to(detail::model_input_dtype(model, x.scalar_type()));
  TrainingModeGuard eval_mode(model, false);
  const auto probabilities = detail::class_probabilities(model, x);
  const auto c = detail::chosen_classes(probabilities, classes, options.target());
  const auto masked_probabilities = detail::class_probabilities(model, masked_images);
  return {c, detail::probability_of(probabilities, c),
          detail::probability_of(masked_probabilities, c)};
}

/// @brief Accumulates Average Drop / Increase / Gain over a stream of batches.
///
/// Each image's three terms are added in double, one image after another, and divided by N only
/// in `result()`, so one batch of 12 and batches of 5 + 5 + 2 give the same numbers.
/// @snippet doc_snippets.cpp faithfulness_accumulator
class FaithfulnessAccumulator {
 public:
  /// @brief An empty accumulator using `options` for every batch.
  explicit FaithfulnessAccumulator(MaskingOptions options = {}) : options_(std::move(options)) {}

  /// @brief Scores one batch (see `faithfulness_scores`) and adds its terms.
  void add(const AnyModel& model, const torch::Tensor& x, const torch::Tensor& maps,
           const torch::Tensor& classes) {
    add_scores(faithfulness_scores(model, x, maps, classes, options_));
  }

  /// @brief Adds precomputed per-image probabilities `p` (original) and `o` (masked), `[N]` each.
  void add_scores(const FaithfulnessScores& scores) {
    const auto p = scores.original.to(torch::kDouble);
    const auto o = scores.masked.to(torch::kDouble);
    detail::require(p.dim() == 1 && o.sizes() == p.sizes(),
                    "the probabilities have shapes {} and {}; expected two [N] tensors",
                    detail::shape_string(p), detail::shape_string(o));
    const auto zero = torch::zeros_like(p);
    const auto drop = torch::clamp_min(p - o, 0);
    const auto gain = torch::clamp_min(o - p, 0);
    // A zero numerator makes the term 0 even where its denominator is 0 (p = 0 or p = 1).
    detail::accumulate_in_order(drop_, torch::where(drop > 0, drop / p, zero));
    detail::accumulate_in_order(increase_, (o > p).to(torch::kDouble));
    detail::accumulate_in_order(gain_, torch::where(gain > 0, gain / (1 - p), zero));
    images_ += p.size(0);
  }

  /// @brief The metrics over every image added so far; throws `InvalidArgument` when none was.
  FaithfulnessResult result() const {
    detail::require(images_ > 0, "Average Drop / Increase / Gain of an empty dataset; expected "
                                 "at least one image to have been added");
    const double scale = 100.0 / static_cast<double>(images_);
    return {drop_ * scale, increase_ * scale, gain_ * scale, images_};
  }

  /// @brief The number of images added so far.
  int64_t images() const { return images_; }
  /// @brief Forgets every image added.
  void reset() { drop_ = increase_ = gain_ = 0, images_ = 0; }

 private:
  MaskingOptions options_;
  double drop_ = 0, increase_ = 0, gain_ = 0;
  int64_t images_ = 0;
};

/// @brief Average Drop / Increase / Gain of one batch (or a whole dataset held in memory).
inline FaithfulnessResult faithfulness(const AnyModel& model, const torch::Tensor& x,
                                       const torch::Tensor& maps, const torch::Tensor& classes,
                                       const MaskingOptions& options = {}) {
  FaithfulnessAccumulator accumulator(options);
  accumulator.add(model, x, maps, classes);
  return accumulator.result();
}

/// @}
}  // namespace igrad

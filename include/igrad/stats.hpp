#pragma once
/// @file stats.hpp
/// @brief Confidence intervals for comparing two models on the same test images: the paired,
/// seed-stratified bootstrap the study runner (`examples/study.cpp`) reports.
///
/// A study trains a baseline and a treated (regularised) model for each seed and scores both on
/// the same test images. For seed `s` and image `i` the paired difference is
/// `d_si = treated_si − baseline_si`; the estimate is the mean over seeds of the per-seed means,
/// `D = (1/S) Σ_s (1/n_s) Σ_i d_si`. Its interval comes from a bootstrap that resamples the test
/// images with replacement *within each seed* (the same draw for both models: paired) and takes
/// the percentiles of the resampled `D`. It measures how much `D` depends on which test images
/// were drawn, for these trained models; the spread between seeds is reported beside it
/// (`PairedDifference::per_seed`), since three seeds are too few to resample.

#include <igrad/exceptions.hpp>

#include <torch/arg.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace igrad::stats {

/// @addtogroup metrics_group
/// @{

/// @brief The `q`-quantile (`q` in [0, 1]) of `values` by linear interpolation between order
/// statistics (Hyndman & Fan's type 7, NumPy's default): position `q·(n − 1)` in the sorted values.
inline double quantile(std::vector<double> values, double q) {
  igrad::detail::require(!values.empty(), "quantile of no values; expected at least one");
  igrad::detail::require(q >= 0 && q <= 1, "quantile q = {}; expected a value in [0, 1]", q);
  for (double v : values)
    igrad::detail::require(std::isfinite(v), "quantile of a non-finite value ({}); expected finite values",
                    v);
  std::sort(values.begin(), values.end());
  const double position = q * static_cast<double>(values.size() - 1);
  const auto below = static_cast<size_t>(std::floor(position));
  const size_t above = std::min(below + 1, values.size() - 1);
  const double fraction = position - static_cast<double>(below);
  return values[below] + fraction * (values[above] - values[below]);
}

/// @brief Options of `paired_bootstrap`, with chained setters.
struct BootstrapOptions {
  /// Number of bootstrap resamples.
  TORCH_ARG(int64_t, resamples) = 2000;
  /// Coverage of the interval (0.95: the 2.5 % and 97.5 % percentiles).
  TORCH_ARG(double, confidence) = 0.95;
  /// Seed of the resampling stream: the same data and seed give the same interval.
  TORCH_ARG(uint64_t, seed) = 0;
};

/// @brief Whether a treated model is detectably better, worse, or neither on one quantity.
enum class Verdict {
  better,             ///< the interval excludes 0 on the better side
  worse,              ///< the interval excludes 0 on the worse side
  indistinguishable,  ///< the interval contains 0
};

/// @brief The name of a verdict ("better", "worse", "indistinguishable").
inline std::string to_string(Verdict verdict) {
  switch (verdict) {
    case Verdict::better: return "better";
    case Verdict::worse: return "worse";
    default: return "indistinguishable";
  }
}

/// @brief A paired mean difference treated − baseline with its bootstrap interval.
struct PairedDifference {
  double mean = 0;   ///< `D`, the mean over seeds of the per-seed mean differences
  double lower = 0;  ///< lower end of the confidence interval
  double upper = 0;  ///< upper end of the confidence interval
  std::vector<double> per_seed;  ///< each seed's mean difference, in the order given
  int64_t samples = 0;           ///< paired values over all seeds

  /// @brief Better / worse / indistinguishable, given whether larger values are better.
  Verdict verdict(bool larger_is_better) const {
    if (lower > 0) return larger_is_better ? Verdict::better : Verdict::worse;
    if (upper < 0) return larger_is_better ? Verdict::worse : Verdict::better;
    return Verdict::indistinguishable;
  }
  /// @brief Whether the interval contains `value` (ends included).
  bool contains(double value) const { return lower <= value && value <= upper; }
};

namespace detail {

/// An index in [0, n) from a 64-bit draw, by the multiply-shift map (Lemire): unlike
/// `std::uniform_int_distribution`, the same on every standard library.
inline size_t draw_index(std::mt19937_64& rng, size_t n) {
  return static_cast<size_t>((static_cast<unsigned __int128>(rng()) * n) >> 64);
}

}  // namespace detail

/// @brief Paired, seed-stratified bootstrap of the mean difference `treated − baseline`.
///
/// `baseline[s]` and `treated[s]` hold seed `s`'s per-image values (same images, same order, so
/// equal lengths within a seed; seeds may differ in length). Each resample draws, for every seed,
/// `n_s` image indices with replacement and applies the same indices to both models. Throws
/// `InvalidArgument` on empty, unequal or non-finite input.
inline PairedDifference paired_bootstrap(const std::vector<std::vector<double>>& baseline,
                                         const std::vector<std::vector<double>>& treated,
                                         const BootstrapOptions& options = {}) {
  igrad::detail::require(!baseline.empty() && baseline.size() == treated.size(),
          "paired_bootstrap got {} baseline and {} treated seeds; expected the same number, at "
          "least one", baseline.size(), treated.size());
  igrad::detail::require(options.resamples() >= 1, "paired_bootstrap: {} resamples; expected at least 1",
          options.resamples());
  igrad::detail::require(options.confidence() > 0 && options.confidence() < 1,
          "paired_bootstrap: confidence {}; expected a value in (0, 1)", options.confidence());
  std::vector<std::vector<double>> differences(baseline.size());
  PairedDifference result;
  for (size_t s = 0; s < baseline.size(); ++s) {
    igrad::detail::require(!baseline[s].empty() && baseline[s].size() == treated[s].size(),
            "seed {} has {} baseline and {} treated values; expected the same number, at least "
            "one (the same images for both models)", s, baseline[s].size(), treated[s].size());
    auto& d = differences[s];
    d.resize(baseline[s].size());
    double sum = 0;
    for (size_t i = 0; i < d.size(); ++i) {
      igrad::detail::require(std::isfinite(baseline[s][i]) && std::isfinite(treated[s][i]),
              "seed {} image {} has a non-finite value (baseline {}, treated {}); expected "
              "finite values", s, i, baseline[s][i], treated[s][i]);
      d[i] = treated[s][i] - baseline[s][i];
      sum += d[i];
    }
    result.per_seed.push_back(sum / static_cast<double>(d.size()));
    result.samples += static_cast<int64_t>(d.size());
  }
  const double seeds = static_cast<double>(differences.size());
  for (double m : result.per_seed) result.mean += m / seeds;

  std::mt19937_64 rng(options.seed());
  std::vector<double> estimates(static_cast<size_t>(options.resamples()));
  for (auto& estimate : estimates) {
    double total = 0;
    for (const auto& d : differences) {
      double sum = 0;
      for (size_t k = 0; k < d.size(); ++k) sum += d[detail::draw_index(rng, d.size())];
      total += sum / static_cast<double>(d.size());
    }
    estimate = total / seeds;
  }
  const double tail = (1 - options.confidence()) / 2;
  result.lower = quantile(estimates, tail);
  result.upper = quantile(estimates, 1 - tail);
  return result;
}

/// @}
}  // namespace igrad::stats

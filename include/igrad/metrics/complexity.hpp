#pragma once
/// @file metrics/complexity.hpp
/// @brief How concentrated an explanation is, per image: Sparseness (the Gini index of the
/// absolute attribution, Chalasani et al. 2020) and Complexity (the entropy of the fractional
/// contributions, Bhatt et al. 2020), as Quantus defines them (docs/reference.md §5).

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string_view>

namespace igrad {

/// @addtogroup metrics_group
/// @{

namespace detail {

/// The absolute values of `maps` `[N, ...]` as `[N, P]` doubles, checked: defined, at least 2-D,
/// at least one image and one value each, floating point, finite. `what` names the caller.
inline torch::Tensor absolute_attributions(const torch::Tensor& maps, std::string_view what) {
  require(maps.defined() && maps.dim() >= 2,
          "{}: the maps have shape {}; expected [N, H, W] (one map per image)", what,
          shape_string(maps));
  require(maps.size(0) > 0, "{}: the maps have shape {}, an empty batch; expected at least one "
          "map", what, shape_string(maps));
  require(maps.numel() > 0, "{}: the maps have shape {}, no values; expected at least one value "
          "per map", what, shape_string(maps));
  require(maps.is_floating_point(), "{}: the maps have dtype {}; expected a floating-point "
          "tensor", what, std::string(c10::toString(maps.scalar_type())));
  require(all_finite(maps), "{}: the maps contain NaN or infinite values; expected finite "
          "values", what);
  return maps.detach().to(torch::kDouble).flatten(1).abs();
}

}  // namespace detail

/// @brief Sparseness of each map: the Gini index of its absolute values (Chalasani et al. 2020,
/// Quantus `Sparseness`), `[N]` doubles in [0, 1 − 1/P].
///
/// With `a` the P values `|S_k| + offset` of a map sorted in ascending order:
/// \f[ G = \frac{\sum_{k=1}^{P} (2k - P - 1)\, a_{(k)}}{P \sum_k a_{(k)}} \f]
/// 0 for a constant map, `1 − 1/P` for a one-hot map: higher is sparser. A map that is zero
/// everywhere (0/0) counts as constant: 0, the limit of a constant map `ε·1`. Quantus adds
/// `offset = 1e-7` to every value (to avoid that 0/0); igrad's default is 0, the exact index;
/// pass `1e-7` to match Quantus number for number.
///
/// `maps` `[N, ...]` (each map flattened); signed attributions are taken in absolute value.
/// Throws `InvalidArgument` for an empty batch, an empty map, NaN or infinite values, or a
/// negative or non-finite `offset`.
inline torch::Tensor sparseness(const torch::Tensor& maps, double offset = 0) {
  detail::require(offset >= 0 && std::isfinite(offset),
                  "sparseness: offset is {}; expected a finite value >= 0 (Quantus: 1e-7)", offset);
  const auto a = std::get<0>((detail::absolute_attributions(maps, "sparseness") + offset).sort(1));
  const int64_t p = a.size(1);
  const auto k = torch::arange(1, p + 1, a.options());
  const auto numerator = ((2 * k - static_cast<double>(p) - 1) * a).sum(1);
  const auto denominator = static_cast<double>(p) * a.sum(1);
  return torch::where(denominator > 0, numerator / denominator.clamp_min(1e-300),
                      torch::zeros_like(numerator));
}

/// @brief Complexity of each map: the Shannon entropy (natural log) of its fractional
/// contributions (Bhatt et al. 2020, Quantus `Complexity`), `[N]` doubles in [0, ln P].
///
/// \f[ p_k = \frac{|S_k|}{\sum_j |S_j|},\qquad C = -\sum_k p_k \ln p_k \quad (0 \ln 0 = 0) \f]
/// 0 for a one-hot map, `ln P` for a constant map: lower is more concentrated. A map that is
/// zero everywhere counts as constant: `ln P` (Quantus returns NaN there).
///
/// Throws `InvalidArgument` for an empty batch, an empty map, NaN or infinite values.
inline torch::Tensor complexity(const torch::Tensor& maps) {
  const auto a = detail::absolute_attributions(maps, "complexity");
  const int64_t p = a.size(1);
  const auto total = a.sum(1, /*keepdim=*/true);
  const auto fractions = torch::where(total > 0, a / total.clamp_min(1e-300),
                                      torch::full_like(a, 1.0 / static_cast<double>(p)));
  return -torch::xlogy(fractions, fractions).sum(1);
}

/// @brief Mean Sparseness and Complexity over a set of maps.
struct ComplexityResult {
  double sparseness = 0;  ///< mean Gini index (higher: sparser)
  double complexity = 0;  ///< mean entropy in nats (lower: more concentrated)
  int64_t images = 0;     ///< the number of maps averaged over
};

/// @brief Accumulates the per-image Sparseness and Complexity of a stream of batches; the sums
/// are kept in double, image after image, so any split into batches gives the same means.
class ComplexityAccumulator {
 public:
  /// @brief An empty accumulator; `sparseness_offset` is passed to `sparseness`.
  explicit ComplexityAccumulator(double sparseness_offset = 0) : offset_(sparseness_offset) {}

  /// @brief Adds the maps `[N, ...]` of a batch.
  void add(const torch::Tensor& maps) {
    // On the host: the maps of a CUDA model stay on its device until here.
    const auto s = sparseness(maps, offset_).cpu().contiguous();
    const auto c = complexity(maps).cpu().contiguous();
    for (int64_t i = 0; i < s.size(0); ++i) {
      sparseness_ += s.data_ptr<double>()[i];
      complexity_ += c.data_ptr<double>()[i];
    }
    images_ += s.size(0);
  }

  /// @brief The means over every map added; throws `InvalidArgument` when none was.
  ComplexityResult result() const {
    detail::require(images_ > 0, "Sparseness / Complexity of an empty dataset; expected at least "
                                 "one map to have been added");
    const auto n = static_cast<double>(images_);
    return {sparseness_ / n, complexity_ / n, images_};
  }

  /// @brief The number of maps added so far.
  int64_t images() const { return images_; }

 private:
  double offset_;
  double sparseness_ = 0, complexity_ = 0;
  int64_t images_ = 0;
};

/// @}
}  // namespace igrad

#pragma once
/// @file errors/error_functions.hpp
/// @brief Error functions `E(δ, δ')` between the standard gradient (student) and the guided
/// gradient (teacher), SPEC §3.
///
/// Every function flattens each sample's gradient image to `p` values and returns one value per
/// sample (`[N]`). Norms in denominators are clamped one by one at 1e-12, and computed so that an
/// exactly-zero gradient gives finite values and finite derivatives.

#include <igrad/concepts.hpp>
#include <igrad/detail/tensor_checks.hpp>

#include <torch/torch.h>

#include <concepts>

namespace igrad {

/// @defgroup error_functions_group Error functions
/// @brief How far the standard input gradient is from the guided one (SPEC §3).
/// @{

namespace detail {

/// Smallest denominator norm (SPEC §3): each norm is clamped on its own.
inline constexpr double norm_floor = 1e-12;

/// Flattens both gradients to `[N, p]` after checking they match.
inline std::pair<torch::Tensor, torch::Tensor> flatten_pair(const torch::Tensor& standard,
                                                            const torch::Tensor& guided,
                                                            const char* who) {
  require(standard.defined() && guided.defined(), "{}: a gradient is undefined", who);
  require(standard.dim() >= 1 && standard.sizes() == guided.sizes(),
          "{}: gradients have shapes {} and {}; expected two tensors [N, ...] of the same shape",
          who, shape_string(standard), shape_string(guided));
  return {standard.reshape({standard.size(0), -1}), guided.reshape({guided.size(0), -1})};
}

/// Per-row L2 norm clamped below at 1e-12, with a finite derivative at zero.
inline torch::Tensor clamped_l2(const torch::Tensor& rows) {
  return rows.square().sum(1).clamp_min(norm_floor * norm_floor).sqrt();
}

/// Per-row L1 norm clamped below at 1e-12.
inline torch::Tensor clamped_l1(const torch::Tensor& rows) {
  return rows.abs().sum(1).clamp_min(norm_floor);
}

}  // namespace detail

/// @brief Sigmoid masking, seed eq. (11): \f[ E = -\sum_k \delta'_k\,\sigma(\delta_k) \f]
struct SigmoidMasking {
  static constexpr const char* name = "SigmoidMasking";  ///< display name
  /// @brief Per-sample errors `[N]`.
  torch::Tensor operator()(const torch::Tensor& standard, const torch::Tensor& guided) const {
    auto [s, g] = detail::flatten_pair(standard, guided, name);
    return -(g * torch::sigmoid(s)).sum(1);
  }
};

/// @brief Centred sigmoid masking, seed eq. (12):
/// \f[ E = -\sum_k \delta'_k\,\sigma(\delta_k - \mu_\delta), \quad \mu_\delta = \tfrac1p \sum_k \delta_k \f]
struct CenteredSigmoidMasking {
  static constexpr const char* name = "CenteredSigmoidMasking";  ///< display name
  /// @brief Per-sample errors `[N]`.
  torch::Tensor operator()(const torch::Tensor& standard, const torch::Tensor& guided) const {
    auto [s, g] = detail::flatten_pair(standard, guided, name);
    return -(g * torch::sigmoid(s - s.mean(1, /*keepdim=*/true))).sum(1);
  }
};

/// @brief Histogram intersection of the L1-normalised magnitudes (SPEC §3, value in [−1, 0]):
/// \f[ E = -\sum_k \min\left(\frac{|\delta_k|}{\|\delta\|_1}, \frac{|\delta'_k|}{\|\delta'\|_1}\right) \f]
struct HistogramIntersection {
  static constexpr const char* name = "HistogramIntersection";  ///< display name
  /// @brief Per-sample errors `[N]`.
  torch::Tensor operator()(const torch::Tensor& standard, const torch::Tensor& guided) const {
    auto [s, g] = detail::flatten_pair(standard, guided, name);
    const auto hs = s.abs() / detail::clamped_l1(s).unsqueeze(1);
    const auto hg = g.abs() / detail::clamped_l1(g).unsqueeze(1);
    return -torch::minimum(hs, hg).sum(1);
  }
};

/// @brief Negative cosine similarity, seed eq. (14):
/// \f[ E = -\frac{\langle\delta, \delta'\rangle}{\max(\|\delta\|_2, 10^{-12})\,\max(\|\delta'\|_2, 10^{-12})} \f]
struct CosineError {
  static constexpr const char* name = "CosineError";  ///< display name
  /// @brief Per-sample errors `[N]`.
  torch::Tensor operator()(const torch::Tensor& standard, const torch::Tensor& guided) const {
    auto [s, g] = detail::flatten_pair(standard, guided, name);
    return -(s * g).sum(1) / (detail::clamped_l2(s) * detail::clamped_l2(g));
  }
};

/// @brief Mean absolute error: \f[ E = \tfrac1p \sum_k |\delta_k - \delta'_k| \f]
struct MeanAbsoluteError {
  static constexpr const char* name = "MeanAbsoluteError";  ///< display name
  /// @brief Per-sample errors `[N]`.
  torch::Tensor operator()(const torch::Tensor& standard, const torch::Tensor& guided) const {
    auto [s, g] = detail::flatten_pair(standard, guided, name);
    return (s - g).abs().mean(1);
  }
};

/// @brief Mean squared error: \f[ E = \tfrac1p \sum_k (\delta_k - \delta'_k)^2 \f]
struct MeanSquaredError {
  static constexpr const char* name = "MeanSquaredError";  ///< display name
  /// @brief Per-sample errors `[N]`.
  torch::Tensor operator()(const torch::Tensor& standard, const torch::Tensor& guided) const {
    auto [s, g] = detail::flatten_pair(standard, guided, name);
    return (s - g).square().mean(1);
  }
};

/// @brief The per-sample errors `error(standard, guided)`, checked: the one way igrad calls an
/// error function, so that a function breaking the `[N]` law fails at the call with a message
/// instead of silently changing the loss's scale.
///
/// `standard` and `guided` must be defined `[N, ...]` tensors of the same shape. Throws
/// `InvalidArgument` when they are not, or when the function returns anything but `N`
/// floating-point values `[N]` (a scalar, `[N, p]`, `[N, 1]`, ...): the regulariser is the mean
/// of one error per sample (SPEC §2), so any other shape would weight the loss differently.
template <ErrorFunction E>
torch::Tensor apply_error(const E& error, const torch::Tensor& standard,
                          const torch::Tensor& guided) {
  detail::require(standard.defined() && guided.defined() && standard.dim() >= 1 &&
                      standard.sizes() == guided.sizes(),
                  "{}: gradients have shapes {} and {}; expected two tensors [N, ...] of the same "
                  "shape",
                  E::name, detail::shape_string(standard), detail::shape_string(guided));
  const int64_t n = standard.size(0);
  torch::Tensor errors = error(standard, guided);
  detail::require(errors.defined() && errors.dim() == 1 && errors.size(0) == n,
                  "the error function {} returned a tensor of shape {} for gradients of shape {}; "
                  "expected the per-sample errors [{}] (reduce each sample's gradient image to one "
                  "value: the trainer takes their mean)",
                  E::name, detail::shape_string(errors), detail::shape_string(standard), n);
  detail::require(errors.is_floating_point(),
                  "the error function {} returned dtype {}; expected floating-point errors",
                  E::name, std::string(c10::toString(errors.scalar_type())));
  return errors;
}

/// @}
}  // namespace igrad

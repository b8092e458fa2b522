#pragma once
/// @file saliency/quadrature.hpp
/// @brief Quadrature rules on [0, 1] for integrated gradients: Gauss–Legendre (computed here,
/// by Newton's method on the Legendre polynomial) and the Riemann / trapezoid rules.

#include <igrad/exceptions.hpp>

#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

namespace igrad {

/// @defgroup saliency_group Input-space saliency
/// @brief Gradient, guided backprop, deconvnet, input × gradient, SmoothGrad, SmoothGrad²,
/// VarGrad, integrated gradients, occlusion, feature ablation, Gradient SHAP and DeepLIFT
/// (SPEC §4, docs/reference.md §4).
/// @{

/// @brief How integrated gradients approximate the path integral over t ∈ [0, 1].
enum class Integration {
  gauss_legendre,    ///< n-point Gauss–Legendre (exact for polynomials of degree ≤ 2n − 1)
  riemann_left,      ///< t_j = j/n, j = 0..n−1, weights 1/n
  riemann_right,     ///< t_j = (j+1)/n, weights 1/n
  riemann_middle,    ///< t_j = (j+½)/n, weights 1/n
  riemann_trapezoid, ///< t_j = j/(n−1), j = 0..n−1, weights 1/(n−1) halved at both ends
};

/// @brief Nodes and weights of a quadrature rule on [0, 1]: `∫₀¹ f ≈ Σ_j weights[j] f(nodes[j])`.
struct QuadratureRule {
  std::vector<double> nodes;    ///< t_j in [0, 1], ascending
  std::vector<double> weights;  ///< w_j, summing to 1
};

/// @brief The n-point Gauss–Legendre rule mapped to [0, 1].
///
/// The nodes are the roots of the Legendre polynomial `P_n`, found by Newton's method from
/// Tricomi's initial guesses `cos(π (i + 3/4) / (n + 1/2))`, with `P_n` and `P_n'` from the
/// three-term recurrence; the weights are `2 / ((1 − x²) P_n'(x)²)`. Both are then mapped from
/// [−1, 1] to [0, 1] (`t = (1 + x)/2`, `w/2`). Accurate to about 1e-15 for n up to several
/// hundred.
inline QuadratureRule gauss_legendre(int64_t n) {
  detail::require(n >= 1, "Gauss-Legendre needs n >= 1 nodes; got {}", n);
  QuadratureRule rule;
  rule.nodes.resize(static_cast<size_t>(n));
  rule.weights.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double x = std::cos(std::numbers::pi * (static_cast<double>(i) + 0.75) /
                        (static_cast<double>(n) + 0.5));
    double derivative = 1;
    for (int iteration = 0; iteration < 100; ++iteration) {
      double previous = 1, current = x;  // P_0, P_1
      for (int64_t k = 2; k <= n; ++k) {
        const double next = ((2.0 * k - 1.0) * x * current - (k - 1.0) * previous) / k;
        previous = current;
        current = next;
      }
      derivative = static_cast<double>(n) * (x * current - previous) / (x * x - 1.0);
      const double step = current / derivative;
      x -= step;
      if (std::abs(step) < 1e-16) break;
    }
    // x runs from the largest root to the smallest: fill [0, 1] in ascending order.
    const auto slot = static_cast<size_t>(n - 1 - i);
    rule.nodes[slot] = (1.0 + x) / 2.0;
    rule.weights[slot] = 1.0 / ((1.0 - x * x) * derivative * derivative);
  }
  return rule;
}

/// @brief The n-point rule of the given kind on [0, 1] (`riemann_trapezoid` needs n ≥ 2).
inline QuadratureRule quadrature_rule(Integration kind, int64_t n) {
  detail::require(n >= 1, "the integration needs n >= 1 steps; got {}", n);
  if (kind == Integration::gauss_legendre) return gauss_legendre(n);
  detail::require(kind != Integration::riemann_trapezoid || n >= 2,
                  "the trapezoid rule needs n >= 2 steps; got {}", n);
  QuadratureRule rule;
  const double count = static_cast<double>(n);
  for (int64_t j = 0; j < n; ++j) {
    const double jj = static_cast<double>(j);
    switch (kind) {
      case Integration::riemann_left: rule.nodes.push_back(jj / count); break;
      case Integration::riemann_right: rule.nodes.push_back((jj + 1) / count); break;
      case Integration::riemann_middle: rule.nodes.push_back((jj + 0.5) / count); break;
      default: rule.nodes.push_back(jj / (count - 1)); break;
    }
    if (kind == Integration::riemann_trapezoid) {
      rule.weights.push_back((j == 0 || j == n - 1 ? 0.5 : 1.0) / (count - 1));
    } else {
      rule.weights.push_back(1.0 / count);
    }
  }
  return rule;
}

/// @}
}  // namespace igrad

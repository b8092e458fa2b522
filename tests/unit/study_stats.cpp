// The study's statistics (include/igrad/stats.hpp): quantiles against hand computation, and the
// paired seed-stratified bootstrap on cases whose answer is known — identical models, a planted
// difference, and the interval width the normal approximation predicts.
#include <igrad/exceptions.hpp>
#include <igrad/stats.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

using igrad::stats::BootstrapOptions;
using igrad::stats::paired_bootstrap;
using igrad::stats::Verdict;

namespace {

/// n values alternating +a, −a (mean 0, population standard deviation a) shifted by `shift`.
std::vector<double> alternating(size_t n, double a, double shift = 0) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = shift + (i % 2 == 0 ? a : -a);
  return v;
}

std::vector<double> plus(const std::vector<double>& x, const std::vector<double>& y) {
  std::vector<double> z(x.size());
  for (size_t i = 0; i < x.size(); ++i) z[i] = x[i] + y[i];
  return z;
}

}  // namespace

TEST_CASE("stats quantile interpolates between order statistics (type 7)") {
  const std::vector<double> v{4, 1, 3, 2};  // sorted 1 2 3 4, positions q·3
  CHECK(igrad::stats::quantile(v, 0.0) == 1.0);
  CHECK(igrad::stats::quantile(v, 1.0) == 4.0);
  CHECK(igrad::stats::quantile(v, 0.5) == doctest::Approx(2.5));   // between 2 and 3
  CHECK(igrad::stats::quantile(v, 0.25) == doctest::Approx(1.75));  // 1 + 0.75·(2 − 1)
  CHECK(igrad::stats::quantile({7.0}, 0.3) == 7.0);
  CHECK_THROWS_AS(igrad::stats::quantile({}, 0.5), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::stats::quantile(v, 1.5), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::stats::quantile({1.0, std::nan("")}, 0.5), igrad::InvalidArgument);
}

TEST_CASE("stats paired bootstrap of identical models is exactly 0 and indistinguishable") {
  std::vector<std::vector<double>> scores{{0.1, 0.9, 0.4, 0.7}, {0.3, 0.3, 0.8}, {1, 2, 3, 4, 5}};
  const auto d = paired_bootstrap(scores, scores, BootstrapOptions().resamples(500).seed(3));
  CHECK(d.mean == 0.0);
  CHECK(d.lower == 0.0);
  CHECK(d.upper == 0.0);
  CHECK(d.contains(0.0));
  CHECK(d.verdict(true) == Verdict::indistinguishable);
  CHECK(d.verdict(false) == Verdict::indistinguishable);
  CHECK(d.samples == 12);
  REQUIRE(d.per_seed.size() == 3);
  for (double m : d.per_seed) CHECK(m == 0.0);
}

TEST_CASE("stats paired bootstrap: differences that average 0 give an interval around 0") {
  // Baselines differ between seeds and images; the treated model differs from its baseline by
  // +1 / −1 alternately: no mean difference, so the interval must straddle 0.
  std::vector<std::vector<double>> base, treated;
  for (int s = 0; s < 3; ++s) {
    base.push_back(alternating(300, 0.2 * (s + 1), 10.0 * s));
    treated.push_back(plus(base.back(), alternating(300, 1.0)));
  }
  const auto d = paired_bootstrap(base, treated);
  CHECK(d.mean == doctest::Approx(0.0).epsilon(1e-12));
  CHECK(d.lower < 0.0);
  CHECK(d.upper > 0.0);
  CHECK(d.verdict(true) == Verdict::indistinguishable);
}

TEST_CASE("stats paired bootstrap detects a planted difference and names its side") {
  // Treated = baseline + 0.5 ± 1: the mean difference is 0.5 with a standard error of
  // 1 / sqrt(3 · 300) ≈ 0.033, so the interval lies far above 0.
  std::vector<std::vector<double>> base, treated;
  for (int s = 0; s < 3; ++s) {
    base.push_back(alternating(300, 3.0, s));
    treated.push_back(plus(base.back(), alternating(300, 1.0, 0.5)));
  }
  const auto d = paired_bootstrap(base, treated);
  CHECK(d.mean == doctest::Approx(0.5));
  for (double m : d.per_seed) CHECK(m == doctest::Approx(0.5));
  CHECK(d.lower > 0.35);
  CHECK(d.upper < 0.65);
  CHECK(d.contains(0.5));
  CHECK(d.verdict(true) == Verdict::better);   // e.g. insertion: larger is better
  CHECK(d.verdict(false) == Verdict::worse);   // e.g. Average Drop: smaller is better
  // The mirror image: treated lower than baseline.
  const auto m = paired_bootstrap(treated, base);
  CHECK(m.mean == doctest::Approx(-0.5));
  CHECK(m.verdict(false) == Verdict::better);
}

TEST_CASE("stats paired bootstrap interval matches the normal approximation's width") {
  // Known answer: two seeds of n = 800 differences ±1 (variance 1 each) give a stratified
  // estimate (m1 + m2) / 2 with variance (1/4)(1/800 + 1/800) = 1/1600, so a 95 % interval of
  // half-width 1.96 / 40 = 0.049. Bootstrap percentiles agree to within a few per cent here.
  std::vector<std::vector<double>> base(2, std::vector<double>(800, 0.0));
  std::vector<std::vector<double>> treated{alternating(800, 1.0), alternating(800, 1.0)};
  const auto d = paired_bootstrap(base, treated, BootstrapOptions().resamples(4000).seed(11));
  const double expected_half_width = 1.959964 * std::sqrt(0.25 * (1.0 / 800 + 1.0 / 800));
  CHECK((d.upper - d.lower) / 2 == doctest::Approx(expected_half_width).epsilon(0.08));
  CHECK(d.mean == 0.0);
  // A narrower confidence gives a narrower interval (the 80 % z is 1.2816).
  const auto d80 = paired_bootstrap(base, treated,
                                    BootstrapOptions().resamples(4000).seed(11).confidence(0.8));
  CHECK((d80.upper - d80.lower) / 2 ==
        doctest::Approx(expected_half_width * 1.281552 / 1.959964).epsilon(0.08));
}

TEST_CASE("stats paired bootstrap is reproducible from its seed and weights seeds equally") {
  // Seed means 1 (two images) and 4 (four images): the estimate is (1 + 4) / 2, not the pooled
  // mean of the six differences (18 / 6 = 3).
  const std::vector<std::vector<double>> base{{0, 0}, {0, 0, 0, 0}};
  const std::vector<std::vector<double>> treated{{0, 2}, {4, 1, 7, 4}};
  const auto a = paired_bootstrap(base, treated, BootstrapOptions().seed(5));
  const auto b = paired_bootstrap(base, treated, BootstrapOptions().seed(5));
  CHECK(a.mean == doctest::Approx(2.5));
  REQUIRE(a.per_seed.size() == 2);
  CHECK(a.per_seed[0] == doctest::Approx(1.0));
  CHECK(a.per_seed[1] == doctest::Approx(4.0));
  CHECK(a.lower == b.lower);
  CHECK(a.upper == b.upper);
  // Every resample mean lies between the smallest and largest possible stratified means.
  CHECK(a.lower >= (0 + 1) / 2.0);
  CHECK(a.upper <= (2 + 7) / 2.0);
}

TEST_CASE("stats paired bootstrap rejects unpaired or non-finite input") {
  using igrad::InvalidArgument;
  CHECK_THROWS_AS(paired_bootstrap({}, {}), InvalidArgument);
  CHECK_THROWS_AS(paired_bootstrap({{1, 2}}, {{1, 2}, {3}}), InvalidArgument);
  CHECK_THROWS_AS(paired_bootstrap({{1, 2}}, {{1}}), InvalidArgument);
  CHECK_THROWS_AS(paired_bootstrap({{}}, {{}}), InvalidArgument);
  CHECK_THROWS_AS(paired_bootstrap({{1, std::numeric_limits<double>::infinity()}}, {{1, 2}}),
                  InvalidArgument);
  CHECK_THROWS_AS(paired_bootstrap({{1}}, {{1}}, BootstrapOptions().resamples(0)), InvalidArgument);
  CHECK_THROWS_AS(paired_bootstrap({{1}}, {{1}}, BootstrapOptions().confidence(1.0)),
                  InvalidArgument);
}

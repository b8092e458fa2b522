// Error functions (SPEC §3): hand-made values, finite-difference gradients, zero gradients.
#include "test_support.hpp"

#include <cmath>

using namespace igrad_test;

namespace {
// Two samples, 4 values each, shaped like gradient images [N, 1, 2, 2].
torch::Tensor student() {
  return torch::tensor({{1.0, -2.0, 0.5, 0.0}, {0.3, 0.3, -0.1, 2.0}}, torch::kDouble).view({2, 1, 2, 2});
}
torch::Tensor teacher() {
  return torch::tensor({{2.0, 0.0, 1.0, -1.0}, {0.0, 0.5, 0.5, 1.0}}, torch::kDouble).view({2, 1, 2, 2});
}
double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
}  // namespace

TEST_CASE("errors: each error function on hand-made tensors") {
  const auto s = student(), g = teacher();
  SUBCASE("SigmoidMasking") {
    const auto e = igrad::SigmoidMasking{}(s, g);
    CHECK(e[0].item<double>() == doctest::Approx(-(2 * sigmoid(1) + 1 * sigmoid(0.5) - sigmoid(0))));
    CHECK(e[1].item<double>() ==
          doctest::Approx(-(0.5 * sigmoid(0.3) + 0.5 * sigmoid(-0.1) + sigmoid(2.0))));
  }
  SUBCASE("CenteredSigmoidMasking") {
    const auto e = igrad::CenteredSigmoidMasking{}(s, g);
    const double mu0 = (1 - 2 + 0.5 + 0) / 4.0;
    CHECK(e[0].item<double>() ==
          doctest::Approx(-(2 * sigmoid(1 - mu0) + sigmoid(0.5 - mu0) - sigmoid(0 - mu0))));
  }
  SUBCASE("HistogramIntersection") {
    const auto e = igrad::HistogramIntersection{}(s, g);
    // |s0|/3.5 = [2/7, 4/7, 1/7, 0]; |g0|/4 = [.5, 0, .25, .25] -> min sum = 2/7 + 1/7
    CHECK(e[0].item<double>() == doctest::Approx(-3.0 / 7.0));
    CHECK(igrad::HistogramIntersection{}(g, g)[0].item<double>() == doctest::Approx(-1.0));
  }
  SUBCASE("CosineError") {
    const auto e = igrad::CosineError{}(s, g);
    // <s0,g0> = 2 + 0.5 = 2.5; |s0| = sqrt(5.25); |g0| = sqrt(6)
    CHECK(e[0].item<double>() == doctest::Approx(-2.5 / (std::sqrt(5.25) * std::sqrt(6.0))));
    CHECK(igrad::CosineError{}(g, 3 * g)[1].item<double>() == doctest::Approx(-1.0));
    CHECK(igrad::CosineError{}(g, -g)[0].item<double>() == doctest::Approx(1.0));
  }
  SUBCASE("MeanAbsoluteError") {
    const auto e = igrad::MeanAbsoluteError{}(s, g);
    CHECK(e[0].item<double>() == doctest::Approx((1 + 2 + 0.5 + 1) / 4.0));
  }
  SUBCASE("MeanSquaredError") {
    const auto e = igrad::MeanSquaredError{}(s, g);
    CHECK(e[0].item<double>() == doctest::Approx((1 + 4 + 0.25 + 1) / 4.0));
  }
}

TEST_CASE_TEMPLATE_DEFINE("errors: conformance of an error function", E, error_conformance) {
  static_assert(igrad::ErrorFunction<E>);
  const E error{};
  SUBCASE("one value per sample") {
    CHECK(error(student(), teacher()).sizes() == torch::IntArrayRef{2});
  }
  SUBCASE("autograd gradient matches central finite differences (double)") {
    const auto g = teacher();
    const auto s = student().requires_grad_(true);
    // Weighted sum so that both samples' errors matter with different weights.
    const auto weights = torch::tensor({1.0, -0.7}, torch::kDouble);
    const auto value = (error(s, g) * weights).sum();
    const auto analytic = torch::autograd::grad({value}, {s})[0];
    const auto numeric = finite_difference(
        [&](const torch::Tensor& v) { return (error(v, g) * weights).sum().item().toDouble(); },
        student());
    CHECK(max_abs_diff(analytic, numeric) < 1e-6);
  }
  SUBCASE("zero gradients give finite values and finite derivatives") {
    const auto zero = torch::zeros({2, 1, 2, 2}, torch::kDouble).requires_grad_(true);
    for (const auto& other : {teacher(), torch::zeros({2, 1, 2, 2}, torch::kDouble)}) {
      const auto value = error(zero, other).sum();
      CHECK(std::isfinite(value.item().toDouble()));
      const auto grad = torch::autograd::grad({value}, {zero})[0];
      CHECK(torch::isfinite(grad).all().item().toBool());
    }
  }
}
TEST_CASE_TEMPLATE_INVOKE(error_conformance, igrad::SigmoidMasking, igrad::CenteredSigmoidMasking,
                          igrad::HistogramIntersection, igrad::CosineError,
                          igrad::MeanAbsoluteError, igrad::MeanSquaredError);

TEST_CASE("errors: every shipped error function refuses mismatched shapes clearly") {
  igrad::for_each_policy(igrad::all_error_functions, [](auto type) {
    using E = typename decltype(type)::type;
    CAPTURE(E::name);
    CHECK_THROWS_WITH_AS(E{}(student(), teacher().view({2, 4})),
                         doctest::Contains("expected two tensors [N, ...] of the same shape"),
                         igrad::InvalidArgument);
  });
}

TEST_CASE("errors: a tiny-but-meaningful cosine is not swamped by the norm clamp") {
  // Norms around 1e-7 each: their product 1e-14 is below the floor, each norm is not.
  const auto s = torch::tensor({{1e-7, 0.0}}, torch::kDouble);
  const auto g = torch::tensor({{1e-7, 1e-7}}, torch::kDouble);
  CHECK(igrad::CosineError{}(s, g)[0].item<double>() == doctest::Approx(-1 / std::sqrt(2.0)));
}

namespace {
// A user-written error function: satisfying the concept is all it takes.
struct CorrelationError {
  static constexpr const char* name = "CorrelationError";
  torch::Tensor operator()(const torch::Tensor& standard, const torch::Tensor& guided) const {
    const auto s = standard.flatten(1), g = guided.flatten(1);
    const auto sc = s - s.mean(1, true), gc = g - g.mean(1, true);
    return -(sc * gc).sum(1) /
           (sc.square().sum(1).clamp_min(1e-24).sqrt() * gc.square().sum(1).clamp_min(1e-24).sqrt());
  }
};
}  // namespace
static_assert(igrad::ErrorFunction<CorrelationError>);
static_assert(!igrad::ErrorFunction<int>);
TEST_CASE_TEMPLATE_INVOKE(error_conformance, CorrelationError);

TEST_CASE("errors: a user-written error function drives the Trainer") {
  torch::manual_seed(1);
  TinyConv model;
  torch::optim::SGD optimizer(model->parameters(), 0.05);
  igrad::Trainer<CorrelationError, igrad::GuidedReLU> trainer(model, optimizer,
                                                              igrad::TrainerOptions().lambda(1.0));
  const auto r = trainer.step(torch::randn({4, 1, 6, 6}), torch::tensor({0, 1, 2, 0}));
  CHECK(std::isfinite(r.loss));
  CHECK(r.regulariser_loss >= -1.0);
  CHECK(r.regulariser_loss <= 1.0);
}

namespace {
// Near misses of igrad::ErrorFunction: each compiles as a type, none may pass for an error function.
struct RuntimeNamedError {  // name is not a compile-time constant
  static inline const char* name = "RuntimeNamedError";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor&) const { return s.flatten(1).sum(1); }
};
struct MemberNamedError {  // name is a data member
  const char* name = "MemberNamedError";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor&) const { return s.flatten(1).sum(1); }
};
struct MutableCallError {  // the call operator is not const
  static constexpr const char* name = "MutableCallError";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor&) { return s.flatten(1).sum(1); }
};
// Breaks the [N] law: one number for the whole batch, which would change the loss's scale.
struct ScalarError {
  static constexpr const char* name = "ScalarError";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor& g) const {
    return (s - g).square().mean();
  }
};
// Breaks the [N] law: one error per pixel, [N, p].
struct PerPixelError {
  static constexpr const char* name = "PerPixelError";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor& g) const {
    return (s - g).flatten(1).square();
  }
};
}  // namespace
static_assert(!igrad::ErrorFunction<RuntimeNamedError>);
static_assert(!igrad::ErrorFunction<MemberNamedError>);
static_assert(!igrad::ErrorFunction<MutableCallError>);
static_assert(igrad::ErrorFunction<ScalarError>);  // the shape law is checked at the call
// A rule maps two tensors to a tensor too; its is_standard flag is what tells it apart (issue 14).
static_assert(!igrad::ErrorFunction<igrad::GuidedReLU>);
static_assert(!igrad::ErrorFunction<igrad::StandardReLU>);
static_assert(!igrad::ErrorFunction<igrad::DeconvReLU>);
static_assert(!igrad::BackpropRule<igrad::CosineError>);

TEST_CASE("errors: apply_error passes the shipped functions' [N] errors through unchanged") {
  const auto s = student(), g = teacher();
  igrad::for_each_policy(igrad::all_error_functions, [&](auto type) {
    using E = typename decltype(type)::type;
    CAPTURE(E::name);
    CHECK(torch::equal(igrad::apply_error(E{}, s, g), E{}(s, g)));
  });
}

TEST_CASE("errors: apply_error refuses a result that is not one error per sample") {
  const auto s = student(), g = teacher();  // N = 2
  CHECK_THROWS_WITH_AS(igrad::apply_error(ScalarError{}, s, g),
                       doctest::Contains("ScalarError returned a tensor of shape [] for gradients "
                                         "of shape [2, 1, 2, 2]; expected the per-sample errors [2]"),
                       igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::apply_error(PerPixelError{}, s, g),
                       doctest::Contains("shape [2, 4]"), igrad::InvalidArgument);
  // N = 1: a scalar is still not [1].
  CHECK_THROWS_AS(igrad::apply_error(ScalarError{}, s.slice(0, 0, 1), g.slice(0, 0, 1)),
                  igrad::InvalidArgument);
  CHECK_THROWS_WITH_AS(igrad::apply_error(CorrelationError{}, s, g.view({2, 4})),
                       doctest::Contains("expected two tensors [N, ...] of the same shape"),
                       igrad::InvalidArgument);
}

TEST_CASE("errors: the Trainer refuses an error function that returns a scalar, model unchanged") {
  torch::manual_seed(2);
  TinyConv model(3, /*batch_norm=*/true);
  torch::optim::SGD optimizer(model->parameters(), 0.05);
  igrad::Trainer<ScalarError, igrad::GuidedReLU> trainer(model, optimizer,
                                                         igrad::TrainerOptions().lambda(1.0));
  std::vector<torch::Tensor> before;
  for (const auto& t : model->parameters()) before.push_back(t.detach().clone());
  for (const auto& t : model->buffers()) before.push_back(t.detach().clone());
  CHECK_THROWS_WITH_AS(trainer.step(torch::randn({4, 1, 6, 6}), torch::tensor({0, 1, 2, 0})),
                       doctest::Contains("expected the per-sample errors [4]"),
                       igrad::InvalidArgument);
  std::vector<torch::Tensor> after;
  for (const auto& t : model->parameters()) after.push_back(t.detach());
  for (const auto& t : model->buffers()) after.push_back(t.detach());
  REQUIRE(after.size() == before.size());
  for (std::size_t i = 0; i < after.size(); ++i) CHECK(torch::equal(after[i], before[i]));
}

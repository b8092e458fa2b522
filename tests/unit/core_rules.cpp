// Backprop rules (SPEC §1): hand-computed gradients, rectifier sites, isolation.
#include "test_support.hpp"

#include <atomic>
#include <thread>

using namespace igrad_test;

namespace {

// Weights chosen so that the three hidden units are active, active with a negative upstream
// gradient, and inactive: every branch of every rule matters.
TinyMlp hand_model(Rectifier r) {
  TinyMlp m(r);
  m->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  m->first->weight.copy_(torch::tensor({{1.0, -1.0, 0.0, 2.0}, {0.5, 1.0, -1.0, 0.0},
                                        {-1.0, 0.0, 1.0, 1.0}}, torch::kDouble));
  m->first->bias.copy_(torch::tensor({0.1, -0.2, 0.3}, torch::kDouble));
  m->second->weight.copy_(torch::tensor({{1.0, -2.0, 0.5}, {-1.0, 1.0, 2.0}}, torch::kDouble));
  m->second->bias.zero_();
  return m;
}

const auto logit_of = igrad::InputGradientOptions().of(igrad::GradientOf::target_logit);

}  // namespace

TEST_CASE("rules: hand-computed input gradients of the target logit at every rectifier kind") {
  // u = [1.1, 1.8, -1.45], dy0/dv = [1, -2, 0.5].
  const auto x = torch::tensor({{1.0, 0.5, -1.0, 0.25}}, torch::kDouble);
  const auto target = torch::tensor({0});
  for (auto r : {Rectifier::relu, Rectifier::relu_inplace, Rectifier::module_relu,
                 Rectifier::module_relu_inplace, Rectifier::relu6}) {
    CAPTURE(static_cast<int>(r));
    auto m = hand_model(r);
    const auto standard = igrad::input_gradient<igrad::StandardReLU>(m, x, target, logit_of);
    const auto guided = igrad::input_gradient<igrad::GuidedReLU>(m, x, target, logit_of);
    const auto deconv = igrad::input_gradient<igrad::DeconvReLU>(m, x, target, logit_of);
    // standard: du = [1, -2, 0];   W1^T du
    CHECK(max_abs_diff(standard, torch::tensor({{0.0, -3.0, 2.0, 2.0}}, torch::kDouble)) < 1e-12);
    // guided: du = [1, 0, 0]
    CHECK(max_abs_diff(guided, torch::tensor({{1.0, -1.0, 0.0, 2.0}}, torch::kDouble)) < 1e-12);
    // deconv: du = max(dv, 0) = [1, 0, 0.5], the inactive third unit passes too
    CHECK(max_abs_diff(deconv, torch::tensor({{0.5, -1.0, 0.5, 2.5}}, torch::kDouble)) < 1e-12);
  }
}

TEST_CASE("rules: ReLU6 sites use the mask 0 < u < 6") {
  // u = [8.1, 1.8, -1.7]: the first unit is saturated under ReLU6, active under ReLU.
  const auto x = torch::tensor({{4.0, 0.0, 0.0, 2.0}}, torch::kDouble);
  const auto target = torch::tensor({0});
  auto m6 = hand_model(Rectifier::relu6);
  auto m = hand_model(Rectifier::relu);
  CHECK(max_abs_diff(igrad::input_gradient(m6, x, target, logit_of),
                     torch::tensor({{-1.0, -2.0, 2.0, 0.0}}, torch::kDouble)) < 1e-12);
  CHECK(max_abs_diff(igrad::input_gradient<igrad::GuidedReLU>(m6, x, target, logit_of),
                     torch::zeros({1, 4}, torch::kDouble)) < 1e-12);
  CHECK(max_abs_diff(igrad::input_gradient(m, x, target, logit_of),
                     torch::tensor({{0.0, -3.0, 2.0, 2.0}}, torch::kDouble)) < 1e-12);
}

TEST_CASE("rules: the loss gradient equals the chain rule written out by hand, batched") {
  auto m = hand_model(Rectifier::relu);
  const auto x = torch::tensor({{1.0, 0.5, -1.0, 0.25}, {-0.5, 2.0, 0.5, 1.0}}, torch::kDouble);
  const auto t = torch::tensor({0, 1});
  const auto grad = igrad::input_gradient<igrad::GuidedReLU>(m, x, t);
  torch::NoGradGuard no_grad;
  const auto w1 = m->first->weight, w2 = m->second->weight;
  const auto u = x.matmul(w1.t()) + m->first->bias;
  const auto y = u.clamp_min(0).matmul(w2.t());
  const auto dy = (y.softmax(1) - torch::one_hot(t, 2).to(torch::kDouble)) / 2.0;
  const auto dv = dy.matmul(w2);
  const auto du = (u > 0).to(torch::kDouble) * dv.clamp_min(0);
  CHECK(max_abs_diff(grad, du.matmul(w1)) < 1e-12);
}

TEST_CASE("rules: rectifier sites are counted, guided and deconv refuse a graph without one") {
  auto tanh_model = hand_model(Rectifier::none);
  const auto x = torch::randn({2, 4}, torch::kDouble);
  const auto t = torch::tensor({0, 1});
  CHECK_NOTHROW(igrad::input_gradient(tanh_model, x, t));
  CHECK_THROWS_AS(igrad::input_gradient<igrad::GuidedReLU>(tanh_model, x, t), igrad::GraphError);
  CHECK_THROWS_WITH(igrad::input_gradient<igrad::DeconvReLU>(tanh_model, x, t),
                    doctest::Contains("no rectifier site"));
  auto relu_model = hand_model(Rectifier::relu);
  CHECK(igrad::count_rectifier_sites({relu_model(x.clone().requires_grad_(true))}) == 1);
  TinyConv conv;
  CHECK(igrad::count_rectifier_sites({conv(torch::randn({1, 1, 6, 6}))}) == 1);
  // hardtanh(-1, 1) is not a rectifier
  auto h = torch::hardtanh(torch::randn({3}, torch::requires_grad()), -1, 1);
  CHECK(igrad::count_rectifier_sites({h}) == 0);
}

TEST_CASE("rules: a guided backward leaves the graph standard for the next backward") {
  auto m = hand_model(Rectifier::relu);
  const auto x = torch::tensor({{1.0, 0.5, -1.0, 0.25}}, torch::kDouble).requires_grad_(true);
  const auto y = m(x).select(1, 0).sum();
  const auto before = torch::autograd::grad({y}, {x}, {}, true)[0];
  const auto guided = igrad::gradient<igrad::GuidedReLU>({y}, {x}, {}, true)[0];
  const auto after = torch::autograd::grad({y}, {x}, {}, true)[0];
  CHECK(max_abs_diff(before, after) == 0.0);
  CHECK(max_abs_diff(guided, before) > 0.5);
  for (auto* node : igrad::detail::find_rectifier_nodes({y})) CHECK(node->post_hooks().empty());
}

namespace {
struct ThrowingRule {
  static constexpr bool is_standard = false;
  static constexpr const char* name = "ThrowingRule";
  torch::Tensor operator()(const torch::Tensor&, const torch::Tensor&) const {
    throw std::runtime_error("rule failed on purpose");
  }
};
static_assert(igrad::BackpropRule<ThrowingRule>);
static_assert(!igrad::BackpropRule<int>);
}  // namespace

TEST_CASE("rules: an exception inside a guided pass leaves nothing switched on") {
  auto m = hand_model(Rectifier::relu);
  const auto x = torch::tensor({{1.0, 0.5, -1.0, 0.25}}, torch::kDouble).requires_grad_(true);
  const auto y = m(x).select(1, 0).sum();
  CHECK_THROWS(igrad::gradient<ThrowingRule>({y}, {x}, {}, true));
  for (auto* node : igrad::detail::find_rectifier_nodes({y})) CHECK(node->post_hooks().empty());
  const auto standard = torch::autograd::grad({y}, {x}, {}, true)[0];
  CHECK(max_abs_diff(standard, torch::tensor({{0.0, -3.0, 2.0, 2.0}}, torch::kDouble)) < 1e-12);
}

TEST_CASE("rules: two threads, one guided and one standard, both get their own gradients") {
  torch::manual_seed(3);
  TinyConv a, b;
  const auto xa = torch::randn({4, 1, 6, 6}), xb = torch::randn({4, 1, 6, 6});
  const auto t = torch::tensor({0, 1, 2, 0});
  const auto ref_guided = igrad::input_gradient<igrad::GuidedReLU>(a, xa, t);
  const auto ref_standard = igrad::input_gradient(b, xb, t);
  REQUIRE(max_abs_diff(ref_guided, igrad::input_gradient(a, xa, t)) > 0);
  std::atomic<int> wrong{0};
  auto run = [&](auto rule, TinyConv model, torch::Tensor x, torch::Tensor ref) {
    using R = decltype(rule);
    for (int i = 0; i < 200; ++i)
      if (!torch::equal(igrad::input_gradient<R>(model, x, t), ref)) ++wrong;
  };
  std::thread guided(run, igrad::GuidedReLU{}, a, xa, ref_guided);
  std::thread standard(run, igrad::StandardReLU{}, b, xb, ref_standard);
  guided.join();
  standard.join();
  CHECK(wrong.load() == 0);
}

TEST_CASE("rules: input_gradient leaves parameter .grad and the model's mode alone") {
  TinyConv m;
  m->eval();
  const auto x = torch::randn({2, 1, 6, 6});
  igrad::input_gradient<igrad::GuidedReLU>(m, x, torch::tensor({0, 2}));
  for (const auto& p : m->parameters()) CHECK_FALSE(p.grad().defined());
  CHECK_FALSE(m->is_training());
  CHECK_THROWS_WITH_AS(igrad::input_gradient(m, x, torch::tensor({0, 3})),
                       doctest::Contains("expected class indices in [0, 3)"),
                       igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::input_gradient(m, x, torch::tensor({0})), igrad::InvalidArgument);
}

namespace {
// Near misses of igrad::BackpropRule (issue 15): before, each of them passed the concept and
// failed deep inside the library (or, for the run-time flag, in an `if constexpr`).
struct RuntimeFlagRule {  // is_standard is not a constant expression
  static inline bool is_standard = false;
  static constexpr const char* name = "RuntimeFlagRule";
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor&) const { return masked; }
};
struct MemberFlagRule {  // is_standard is a data member
  bool is_standard = false;
  static constexpr const char* name = "MemberFlagRule";
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor&) const { return masked; }
};
struct IntFlagRule {  // is_standard is not a bool
  static constexpr int is_standard = 0;
  static constexpr const char* name = "IntFlagRule";
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor&) const { return masked; }
};
struct RuntimeNameRule {  // name is not a compile-time constant
  static constexpr bool is_standard = false;
  static inline const char* name = "RuntimeNameRule";
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor&) const { return masked; }
};
struct NoDefaultRule {  // not default-constructible
  static constexpr bool is_standard = false;
  static constexpr const char* name = "NoDefaultRule";
  explicit NoDefaultRule(double l) : leak(l) {}
  double leak;
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor&) const { return masked; }
};
}  // namespace
static_assert(!igrad::BackpropRule<RuntimeFlagRule>);
static_assert(!igrad::BackpropRule<MemberFlagRule>);
static_assert(!igrad::BackpropRule<IntFlagRule>);
static_assert(!igrad::BackpropRule<RuntimeNameRule>);
static_assert(!igrad::BackpropRule<NoDefaultRule>);
static_assert(igrad::BackpropRule<igrad::StandardReLU> && igrad::BackpropRule<igrad::GuidedReLU> &&
              igrad::BackpropRule<igrad::DeconvReLU>);
// Rules and error functions are disjoint (issue 14: Trainer<GuidedReLU, GuidedReLU> compiled).
static_assert(!igrad::ErrorFunction<igrad::GuidedReLU> && !igrad::BackpropRule<igrad::CosineError>);

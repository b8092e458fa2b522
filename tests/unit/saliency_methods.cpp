// Input-space saliency (SPEC §4): gradients against finite differences, guided backprop and
// deconvnet against a model whose rectifier is a hand-written autograd function, SmoothGrad,
// integrated gradients (completeness, the linear case), Gauss–Legendre exactness.
#include "test_support.hpp"

#include <igrad/saliency.hpp>

#include <cmath>

using namespace igrad_test;

namespace {

/// ReLU whose backward is a chosen rule, written directly as an autograd function: an
/// independent formulation of the guided / deconvnet gradients.
template <bool Guided>
struct RuleRelu : torch::autograd::Function<RuleRelu<Guided>> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& u) {
    ctx->save_for_backward({u});
    return u.clamp_min(0);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto u = ctx->get_saved_variables()[0];
    const auto positive = grads[0].clamp_min(0);
    return {Guided ? positive * (u > 0).to(u.scalar_type()) : positive};
  }
};

/// TinyConv's computation with its rectifier replaced by `RuleRelu`.
torch::Tensor forward_with_rule(TinyConv& net, const torch::Tensor& x, bool guided) {
  auto a = net->conv(x);
  a = guided ? RuleRelu<true>::apply(a) : RuleRelu<false>::apply(a);
  return net->head(torch::max_pool2d(a, 2));
}

TinyConv make_net(uint64_t seed = 4) {
  torch::manual_seed(seed);
  TinyConv net(3);
  net->to(torch::kDouble);
  net->eval();
  return net;
}

torch::Tensor images(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({n, 1, 6, 6}, torch::kDouble);
}

double target_logit(TinyConv& net, const torch::Tensor& x, int64_t i, int64_t c) {
  return net->forward(x.slice(0, i, i + 1))[0][c].item<double>();
}

/// x [N, 4] -> Linear(4, 3): the gradient of a logit is the weight row, everywhere.
struct LinearNetImpl : torch::nn::Module {
  LinearNetImpl() { fc = register_module("fc", torch::nn::Linear(4, 3)); }
  torch::Tensor forward(torch::Tensor x) { return fc(x.flatten(1)); }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(LinearNet);

}  // namespace

TEST_CASE("saliency: Gauss-Legendre nodes and weights integrate degree 2n-1 exactly, degree 2n not") {
  const auto two = igrad::gauss_legendre(2);
  CHECK(two.nodes[0] == doctest::Approx(0.5 - 0.5 / std::sqrt(3.0)).epsilon(1e-14));
  CHECK(two.nodes[1] == doctest::Approx(0.5 + 0.5 / std::sqrt(3.0)).epsilon(1e-14));
  CHECK(two.weights[0] == doctest::Approx(0.5).epsilon(1e-14));
  const auto three = igrad::gauss_legendre(3);  // nodes 1/2 ± √(3/20), weights 5/18, 4/9, 5/18
  CHECK(three.nodes[0] == doctest::Approx(0.5 - std::sqrt(0.15)).epsilon(1e-14));
  CHECK(three.nodes[1] == doctest::Approx(0.5).epsilon(1e-14));
  CHECK(three.weights[1] == doctest::Approx(4.0 / 9.0).epsilon(1e-14));
  CHECK(three.weights[2] == doctest::Approx(5.0 / 18.0).epsilon(1e-14));
  for (int64_t n : {1, 2, 5, 10, 50}) {
    CAPTURE(n);
    const auto rule = igrad::gauss_legendre(n);
    const auto integrate = [&](int64_t degree) {
      double sum = 0;
      for (size_t j = 0; j < rule.nodes.size(); ++j)
        sum += rule.weights[j] * std::pow(rule.nodes[j], static_cast<double>(degree));
      return sum;
    };
    // ∫₀¹ t^d dt = 1/(d+1), and a polynomial with every degree up to 2n−1 (here 7 (t − 0.3)^{2n−1} + 1).
    CHECK(integrate(2 * n - 1) == doctest::Approx(1.0 / static_cast<double>(2 * n)).epsilon(1e-12));
    double mixed = 0;
    for (size_t j = 0; j < rule.nodes.size(); ++j)
      mixed += rule.weights[j] * (7 * std::pow(rule.nodes[j] - 0.3, static_cast<double>(2 * n - 1)) + 1);
    const double exact = 7 * (std::pow(0.7, 2.0 * n) - std::pow(-0.3, 2.0 * n)) / (2.0 * n) + 1;
    CHECK(mixed == doctest::Approx(exact).epsilon(1e-12));
    if (n <= 5) CHECK(std::abs(integrate(2 * n) - 1.0 / static_cast<double>(2 * n + 1)) > 1e-6);
    for (size_t j = 0; j < rule.nodes.size(); ++j) {
      CHECK(rule.nodes[j] > 0);
      CHECK(rule.nodes[j] < 1);
      if (j > 0) CHECK(rule.nodes[j] > rule.nodes[j - 1]);
    }
  }
  const auto trapezoid = igrad::quadrature_rule(igrad::Integration::riemann_trapezoid, 5);
  CHECK(trapezoid.nodes.back() == 1.0);
  CHECK(trapezoid.weights.front() == doctest::Approx(0.125));
  CHECK(trapezoid.weights[1] == doctest::Approx(0.25));
  CHECK_THROWS_AS(igrad::gauss_legendre(0), igrad::InvalidArgument);
}

TEST_CASE("saliency: Gradient equals finite differences of the target logit") {
  auto net = make_net();
  const auto x = images(2, 5);
  const auto t = torch::tensor({2, 0}, torch::kLong);
  const auto attributions = igrad::attribute<igrad::Gradient>(net, x, t);
  CHECK(attributions.sizes() == x.sizes());
  for (int64_t i = 0; i < 2; ++i) {
    const auto fd = finite_difference(
        [&](const torch::Tensor& xi) { return net->forward(xi.unsqueeze(0))[0][t[i]].item<double>(); }, x[i]);
    CHECK(max_abs_diff(attributions[i], fd) < 1e-6);
  }
}

TEST_CASE("saliency: GuidedBackprop and Deconvnet equal the gradient through a rule-ReLU autograd function") {
  auto net = make_net(8);
  const auto x = images(3, 6);
  const auto t = torch::tensor({0, 1, 2}, torch::kLong);
  for (bool guided : {true, false}) {
    CAPTURE(guided);
    const auto attributions = guided ? igrad::attribute<igrad::GuidedBackprop>(net, x, t)
                                     : igrad::attribute<igrad::Deconvnet>(net, x, t);
    const auto input = x.clone().requires_grad_(true);
    const auto y = forward_with_rule(net, input, guided).gather(1, t.view({-1, 1})).sum();
    const auto expected = torch::autograd::grad({y}, {input})[0];
    CHECK(max_abs_diff(attributions, expected) < 1e-12);
    CHECK(max_abs_diff(attributions, igrad::attribute<igrad::Gradient>(net, x, t)) > 1e-6);
  }
}

TEST_CASE("saliency: SmoothGrad is the gradient for a linear model and without noise, seeded") {
  torch::manual_seed(3);
  LinearNet linear;
  linear->to(torch::kDouble);
  const auto x = torch::randn({2, 1, 2, 2}, torch::kDouble);
  const auto t = torch::tensor({1, 2}, torch::kLong);
  const auto smooth = igrad::attribute<igrad::SmoothGrad>(linear, x, t, igrad::SaliencyOptions().samples(7).batch_size(4));
  for (int64_t i = 0; i < 2; ++i)
    CHECK(max_abs_diff(smooth[i].view({4}), linear->fc->weight[t[i].item<int64_t>()]) < 1e-12);

  auto net = make_net(9);
  const auto xs = images(2, 10);
  const auto quiet = igrad::attribute<igrad::SmoothGrad>(net, xs, {}, igrad::SaliencyOptions().noise_level(0).samples(3));
  CHECK(max_abs_diff(quiet, igrad::attribute<igrad::Gradient>(net, xs)) < 1e-12);
  const auto options = igrad::SaliencyOptions().samples(5).seed(4).batch_size(3);
  torch::manual_seed(100);
  const auto first = igrad::attribute<igrad::SmoothGrad>(net, xs, {}, options);
  torch::manual_seed(200);
  CHECK(torch::equal(first, igrad::attribute<igrad::SmoothGrad>(net, xs, {}, options)));
  CHECK(max_abs_diff(first, igrad::attribute<igrad::SmoothGrad>(net, xs, {}, igrad::SaliencyOptions(options).seed(5))) > 1e-8);
}

TEST_CASE("saliency: integrated gradients satisfy completeness and are exact for a linear model") {
  auto net = make_net(12);
  const auto x = images(3, 13) * 2;
  const auto t = torch::tensor({0, 1, 2}, torch::kLong);
  const auto zeros = torch::zeros_like(x);
  for (auto rule : {igrad::Integration::gauss_legendre, igrad::Integration::riemann_trapezoid,
                    igrad::Integration::riemann_middle}) {
    CAPTURE(static_cast<int>(rule));
    const auto ig = igrad::attribute<igrad::IntegratedGradients>(
        net, x, t, igrad::SaliencyOptions().integration(rule).steps(rule == igrad::Integration::gauss_legendre ? 50 : 2000).batch_size(600));
    CHECK(ig.sizes() == x.sizes());
    for (int64_t i = 0; i < 3; ++i) {
      const double difference = target_logit(net, x, i, i) - target_logit(net, zeros, i, i);
      CHECK(std::abs(ig[i].sum().item<double>() - difference) <= 0.01 * std::abs(difference) + 1e-9);
    }
  }
  // A non-zero baseline: completeness against y(x) − y(x_b).
  const auto baseline = torch::full_like(x, 0.3);
  const auto ig = igrad::attribute<igrad::IntegratedGradients>(net, x, t, igrad::SaliencyOptions().baseline(baseline).steps(2000).batch_size(600));
  for (int64_t i = 0; i < 3; ++i) {
    const double difference = target_logit(net, x, i, i) - target_logit(net, baseline, i, i);
    CHECK(std::abs(ig[i].sum().item<double>() - difference) <= 0.01 * std::abs(difference) + 1e-9);
  }
  torch::manual_seed(3);
  LinearNet linear;
  linear->to(torch::kDouble);
  const auto v = torch::randn({2, 1, 2, 2}, torch::kDouble);
  const auto exact = igrad::attribute<igrad::IntegratedGradients>(linear, v, torch::tensor({0, 2}),
                                                                   igrad::SaliencyOptions().steps(3));
  CHECK(max_abs_diff(exact[0].view({4}), v[0].view({4}) * linear->fc->weight[0]) < 1e-12);
  CHECK(max_abs_diff(exact[1].view({4}), v[1].view({4}) * linear->fc->weight[2]) < 1e-12);
}

TEST_CASE("saliency: batches equal singles, dtype follows the input, .grad and mode untouched") {
  torch::manual_seed(14);
  TinyConv net(3, /*batch_norm=*/true);
  net->to(torch::kDouble);
  net->train();
  auto params = net->parameters();
  params[1].mutable_grad() = torch::ones_like(params[1]);
  const auto x = images(3, 15);
  const auto t = torch::tensor({1, 0, 2}, torch::kLong);
  const auto ig = igrad::attribute<igrad::IntegratedGradients>(net, x, t, igrad::SaliencyOptions().steps(10));
  const auto guided = igrad::attribute<igrad::GuidedBackprop>(net, x, t);
  for (int64_t i = 0; i < 3; ++i) {
    const auto xi = x.slice(0, i, i + 1);
    const auto ti = t.slice(0, i, i + 1);
    CHECK(max_abs_diff(ig[i], igrad::attribute<igrad::IntegratedGradients>(net, xi, ti, igrad::SaliencyOptions().steps(10))[0]) < 1e-12);
    CHECK(max_abs_diff(guided[i], igrad::attribute<igrad::GuidedBackprop>(net, xi, ti)[0]) < 1e-12);
  }
  CHECK(net->is_training());
  CHECK(torch::equal(params[1].grad(), torch::ones_like(params[1])));
  CHECK_FALSE(params[0].grad().defined());
  const auto single = igrad::attribute<igrad::Gradient>(net, x.to(torch::kFloat), t);
  CHECK((single.scalar_type() == torch::kFloat));
  CHECK_FALSE(single.requires_grad());
}

TEST_CASE("saliency: saliency_map is abs-max over channels then min-max, zero stays zero") {
  const auto attributions = torch::tensor({{{{1.0, -4.0}}, {{-2.0, 0.5}}}, {{{0.0, 0.0}}, {{0.0, 0.0}}}});
  // [2, 2, 1, 2]: image 0 abs-max over channels = [2, 4] → min-max = [0, 2/(2+1e-7)].
  const auto maps = igrad::saliency_map(attributions);
  CHECK(maps.sizes() == torch::IntArrayRef({2, 1, 2}));
  CHECK(maps[0][0][0].item<double>() == doctest::Approx(0.0));
  CHECK(maps[0][0][1].item<double>() == doctest::Approx(1.0).epsilon(1e-6));
  CHECK(maps[1].eq(0).all().item<bool>());
  auto net = make_net(16);
  const auto x = images(2, 17);
  const auto via_explain = igrad::explain<igrad::SmoothGrad>(net, x, {}, igrad::SaliencyOptions().samples(2));
  CHECK(via_explain.sizes() == torch::IntArrayRef({2, 6, 6}));
  CHECK(via_explain.min().item<double>() >= 0);
  CHECK(via_explain.max().item<double>() <= 1);
}

TEST_CASE("saliency: misuse and the shipped list") {
  auto net = make_net();
  CHECK_THROWS_AS(igrad::attribute<igrad::Gradient>(net, images(2, 1), torch::tensor({0, 5})), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::attribute<igrad::Gradient>(net, torch::randn({2, 1, 9, 9}, torch::kDouble)), igrad::InvalidArgument);
  torch::manual_seed(1);
  TinyMlp smooth_model(Rectifier::none);  // no rectifier: guided backprop would be a plain gradient
  CHECK_THROWS_AS(igrad::attribute<igrad::GuidedBackprop>(smooth_model, torch::randn({2, 4})), igrad::GraphError);
  CHECK_THROWS_AS(igrad::attribute<igrad::IntegratedGradients>(
                      net, images(1, 2), {}, igrad::SaliencyOptions().integration(igrad::Integration::riemann_trapezoid).steps(1)),
                  igrad::InvalidArgument);
  int count = 0;
  boost::hana::for_each(igrad::all_saliency_methods, [&](auto type) {
    using S = typename decltype(type)::type;
    static_assert(igrad::SaliencyMethod<S> && !igrad::CamMethod<S>);
    const auto a = igrad::attribute<S>(net, images(2, 18), {}, igrad::SaliencyOptions().samples(2).steps(4));
    CHECK(a.sizes() == torch::IntArrayRef({2, 1, 6, 6}));
    ++count;
  });
  CHECK(count == 12);
}

// ---------------------------------------------------------------------------------------------
// Input × Gradient, SmoothGrad² and VarGrad (captum's InputXGradient and NoiseTunnel modes).

namespace {

/// `∂y^{t_i}/∂x` of each image of `x` on its own, one backward per image: an independent
/// formulation of the target gradient.
torch::Tensor gradients_one_by_one(TinyConv& net, const torch::Tensor& x, const torch::Tensor& t) {
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < x.size(0); ++i) {
    const auto input = x.slice(0, i, i + 1).clone().requires_grad_(true);
    const auto y = net->forward(input)[0][t[i].item<int64_t>()];
    rows.push_back(torch::autograd::grad({y}, {input})[0]);
  }
  return torch::cat(rows, 0);
}

}  // namespace

TEST_CASE("saliency: Input x Gradient is x times the weight row for a linear model, per image") {
  torch::manual_seed(21);
  LinearNet linear;
  linear->to(torch::kDouble);
  const auto x = torch::randn({3, 1, 2, 2}, torch::kDouble);
  const auto t = torch::tensor({2, 0, 1}, torch::kLong);
  const auto a = igrad::attribute<igrad::InputXGradient>(linear, x, t, igrad::SaliencyOptions().batch_size(2));
  for (int64_t i = 0; i < 3; ++i) {
    const auto row = linear->fc->weight[t[i].item<int64_t>()];
    for (int64_t k = 0; k < 4; ++k)
      CHECK(a[i].view({4})[k].item<double>() ==
            doctest::Approx(x[i].view({4})[k].item<double>() * row[k].item<double>()).epsilon(1e-12));
  }
  // A ReLU network: x ⊙ (per-image autograd gradient), batch equal to single images, the model's
  // mode and parameters' .grad untouched even when called in training mode.
  auto net = make_net(22);
  net->train();
  const auto xs = images(4, 23);
  const auto ts = torch::tensor({0, 1, 2, 1}, torch::kLong);
  const auto batch = igrad::attribute<igrad::InputXGradient>(net, xs, ts, igrad::SaliencyOptions().batch_size(3));
  CHECK(net->is_training());
  for (const auto& p : net->parameters()) CHECK_FALSE(p.grad().defined());
  net->eval();
  CHECK(max_abs_diff(batch, xs * gradients_one_by_one(net, xs, ts)) < 1e-12);
  CHECK(max_abs_diff(batch, igrad::attribute<igrad::Gradient>(net, xs, ts)) > 1e-6);
  for (int64_t i = 0; i < 4; ++i)
    CHECK(max_abs_diff(batch[i], igrad::attribute<igrad::InputXGradient>(net, xs.slice(0, i, i + 1), ts.slice(0, i, i + 1))[0]) < 1e-12);
}

TEST_CASE("saliency: SmoothGrad squared and VarGrad equal the moments of hand-drawn noisy gradients") {
  // Linear model: every copy's gradient is the weight row, so SmoothGrad² = W_c², VarGrad = 0.
  torch::manual_seed(24);
  LinearNet linear;
  linear->to(torch::kDouble);
  const auto x = torch::randn({2, 1, 2, 2}, torch::kDouble);
  const auto t = torch::tensor({1, 2}, torch::kLong);
  const auto options = igrad::SaliencyOptions().samples(6).seed(3);
  const auto squared = igrad::attribute<igrad::SmoothGradSquared>(linear, x, t, options);
  const auto variance = igrad::attribute<igrad::VarGrad>(linear, x, t, options);
  for (int64_t i = 0; i < 2; ++i)
    CHECK(max_abs_diff(squared[i].view({4}), linear->fc->weight[t[i].item<int64_t>()].square()) < 1e-12);
  CHECK(variance.abs().max().item<double>() < 1e-12);

  // ReLU network: draw the copies here as documented (one whole-batch standard normal draw per
  // copy, float, from a CPU generator seeded with `seed`; σ = level · (max x − min x) per
  // image), take each copy's gradient image by image, and form the moments by hand.
  auto net = make_net(25);
  const auto xs = images(3, 26) * 2;
  const auto ts = torch::tensor({2, 0, 1}, torch::kLong);
  const int64_t m = 5;
  const double level = 0.2;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(7);
  std::vector<torch::Tensor> copies;
  for (int64_t k = 0; k < m; ++k) {
    const auto e = torch::randn(xs.sizes(), generator, torch::dtype(torch::kFloat)).to(torch::kDouble);
    auto noisy = xs.clone();
    for (int64_t i = 0; i < 3; ++i) {
      const double sigma = level * (xs[i].max().item<double>() - xs[i].min().item<double>());
      noisy[i] += sigma * e[i];
    }
    copies.push_back(gradients_one_by_one(net, noisy, ts));
  }
  auto sum = torch::zeros_like(xs), sum_squares = torch::zeros_like(xs);
  for (const auto& g : copies) {
    sum += g;
    sum_squares += g * g;
  }
  const auto mean = sum / m, mean_squares = sum_squares / m;
  auto spread = torch::zeros_like(xs);  // Σ (g − mean)² / m, the two-pass variance
  for (const auto& g : copies) spread += (g - mean) * (g - mean);
  spread /= m;
  CHECK(spread.max().item<double>() > 1e-6);  // the noise does move the gradient

  net->train();
  for (const int64_t chunk : {1, 4, 64}) {
    CAPTURE(chunk);
    const auto o = igrad::SaliencyOptions().samples(m).noise_level(level).seed(7).batch_size(chunk);
    CHECK(max_abs_diff(igrad::attribute<igrad::SmoothGrad>(net, xs, ts, o), mean) < 1e-12);
    CHECK(max_abs_diff(igrad::attribute<igrad::SmoothGradSquared>(net, xs, ts, o), mean_squares) < 1e-12);
    CHECK(max_abs_diff(igrad::attribute<igrad::VarGrad>(net, xs, ts, o), spread) < 1e-12);
  }
  CHECK(net->is_training());
  for (const auto& p : net->parameters()) CHECK_FALSE(p.grad().defined());

  // An explicit generator is used (and advances); bad options are igrad exceptions.
  auto given = at::make_generator<at::CPUGeneratorImpl>(7);
  const auto with_generator = igrad::SaliencyOptions().samples(m).noise_level(level).generator(given);
  CHECK(max_abs_diff(igrad::attribute<igrad::VarGrad>(net, xs, ts, with_generator), spread) < 1e-12);
  CHECK(max_abs_diff(igrad::attribute<igrad::VarGrad>(net, xs, ts, with_generator), spread) > 1e-8);
  CHECK_THROWS_AS(igrad::attribute<igrad::SmoothGradSquared>(net, xs, ts, igrad::SaliencyOptions().samples(0)), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::attribute<igrad::VarGrad>(net, xs, ts, igrad::SaliencyOptions().noise_level(-1)), igrad::InvalidArgument);
  const auto maps = igrad::explain<igrad::VarGrad>(net, xs, ts, igrad::SaliencyOptions().samples(3));
  CHECK(maps.sizes() == torch::IntArrayRef({3, 6, 6}));
}

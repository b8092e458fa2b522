// captum's remaining attributions (issue 16): Occlusion and Feature Ablation against explicit
// loops over windows and groups, Gradient SHAP's completeness in expectation, DeepLIFT's Rescale
// rule against a hand computation and summation-to-delta; batches against singles, the laws of
// SaliencyMethod, and bad options.
#include "test_support.hpp"

#include <igrad/saliency.hpp>
#include <igrad/testing/conformance.hpp>

#include <cmath>
#include <string>
#include <vector>

using namespace igrad_test;

namespace {

TinyConv conv_net(uint64_t seed = 4, bool batch_norm = false) {
  torch::manual_seed(seed);
  TinyConv net(3, batch_norm);
  net->to(torch::kDouble);
  net->eval();
  return net;
}

torch::Tensor random_images(int64_t n, uint64_t seed, int64_t size = 6) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn({n, 1, size, size}, generator, torch::dtype(torch::kDouble));
}

/// x [N, C, H, W] -> flatten -> Linear(C·H·W, 3): `∂y^c/∂x` is the weight row everywhere.
struct FlatLinearImpl : torch::nn::Module {
  explicit FlatLinearImpl(int64_t inputs) { fc = register_module("fc", torch::nn::Linear(inputs, 3)); }
  torch::Tensor forward(torch::Tensor x) { return fc(x.flatten(1)); }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(FlatLinear);

FlatLinear flat_linear(int64_t inputs, uint64_t seed = 3) {
  torch::manual_seed(seed);
  FlatLinear net(inputs);
  net->to(torch::kDouble);
  return net;
}

/// The target logit of one image `[C, H, W]`, one forward of its own.
template <class Net>
double logit_of(Net& net, const torch::Tensor& image, int64_t target) {
  torch::NoGradGuard no_grad;
  return net->forward(image.unsqueeze(0))[0][target].template item<double>();
}

template <class F>
std::string igrad_error(F&& call) {
  try {
    call();
  } catch (const igrad::InvalidArgument& e) {
    return e.what();
  } catch (...) {
    return "another exception";
  }
  return "no exception";
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Occlusion

TEST_CASE("Occlusion equals the mean output drop over the windows covering each pixel, written as loops") {
  auto net = conv_net();
  const auto x = random_images(2, 7);
  const auto targets = torch::tensor({1, 2});
  struct Case { int64_t window, stride; double baseline; };
  for (const auto& c : {Case{2, 1, 0.0}, Case{3, 2, 0.5}, Case{4, 3, -1.0}, Case{6, 1, 0.0}}) {
    CAPTURE(c.window);
    CAPTURE(c.stride);
    const auto options = igrad::SaliencyOptions()
                             .occlusion_window({c.window, c.window})
                             .occlusion_strides({c.stride, c.stride})
                             .baseline(torch::tensor(c.baseline, torch::kDouble))
                             .batch_size(5);
    const auto got = igrad::attribute<igrad::Occlusion>(net, x, targets, options);
    // Window starts 0, s, 2s, ... until one reaches the last w elements (the last one may be cut).
    std::vector<int64_t> starts;
    for (int64_t p = 0;; p += c.stride) {
      starts.push_back(p);
      if (p + c.window >= 6) break;
    }
    for (int64_t i = 0; i < 2; ++i) {
      const auto image = x[i];
      const int64_t t = targets[i].item<int64_t>();
      const double full = logit_of(net, image, t);
      std::vector<double> sum(36, 0.0), count(36, 0.0);
      for (const int64_t r : starts) {
        for (const int64_t q : starts) {
          auto occluded = image.clone();
          for (int64_t a = r; a < std::min<int64_t>(r + c.window, 6); ++a)
            for (int64_t b = q; b < std::min<int64_t>(q + c.window, 6); ++b) occluded[0][a][b] = c.baseline;
          const double drop = full - logit_of(net, occluded, t);
          for (int64_t a = r; a < std::min<int64_t>(r + c.window, 6); ++a)
            for (int64_t b = q; b < std::min<int64_t>(q + c.window, 6); ++b) {
              sum[a * 6 + b] += drop;
              count[a * 6 + b] += 1;
            }
        }
      }
      for (int64_t k = 0; k < 36; ++k) {
        REQUIRE(count[k] > 0);
        CHECK(got[i][0][k / 6][k % 6].item<double>() == doctest::Approx(sum[k] / count[k]).epsilon(1e-9));
      }
    }
  }
}

TEST_CASE("Occlusion with a one-element window on a linear model is w times (x minus the baseline)") {
  auto net = flat_linear(2 * 3 * 3);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(2);
  const auto x = torch::randn({2, 2, 3, 3}, generator, torch::dtype(torch::kDouble));
  const auto baseline = torch::randn({2, 3, 3}, generator, torch::dtype(torch::kDouble));
  const auto targets = torch::tensor({0, 2});
  // captum's form: one size per input dimension.
  const auto got = igrad::attribute<igrad::Occlusion>(
      net, x, targets,
      igrad::SaliencyOptions().occlusion_window({1, 1, 1}).occlusion_strides({1, 1, 1}).baseline(baseline));
  for (int64_t i = 0; i < 2; ++i) {
    const auto w = net->fc->weight[targets[i].item<int64_t>()].view({2, 3, 3});
    CHECK(max_abs_diff(got[i], w * (x[i] - baseline)) < 1e-12);
  }
  // {h, w} spans the channels: a 1x1 window ablates both channels of a pixel at once.
  const auto spanning = igrad::attribute<igrad::Occlusion>(
      net, x, targets, igrad::SaliencyOptions().occlusion_window({1, 1}).occlusion_strides({1, 1}));
  for (int64_t i = 0; i < 2; ++i) {
    const auto w = net->fc->weight[targets[i].item<int64_t>()].view({2, 3, 3});
    const auto per_pixel = (w * x[i]).sum(0, /*keepdim=*/true).expand({2, 3, 3});
    CHECK(max_abs_diff(spanning[i], per_pixel) < 1e-12);
  }
}

// ---------------------------------------------------------------------------------------------
// Feature Ablation

TEST_CASE("Feature Ablation with the default mask on a linear model is w times (x minus the baseline)") {
  auto net = flat_linear(2 * 3 * 3, 5);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(8);
  const auto x = torch::randn({3, 2, 3, 3}, generator, torch::dtype(torch::kDouble));
  const auto targets = torch::tensor({2, 0, 1});
  const auto got = igrad::attribute<igrad::FeatureAblation>(
      net, x, targets, igrad::SaliencyOptions().baseline(torch::tensor(0.25, torch::kDouble)).batch_size(7));
  for (int64_t i = 0; i < 3; ++i) {
    const auto w = net->fc->weight[targets[i].item<int64_t>()].view({2, 3, 3});
    CHECK(max_abs_diff(got[i], w * (x[i] - 0.25)) < 1e-12);
  }
}

TEST_CASE("Feature Ablation with a grid mask credits each group's output drop to its pixels, written as loops") {
  auto net = conv_net(9);
  const auto x = random_images(3, 4);
  const auto targets = torch::tensor({0, 1, 2});
  // 2x3 blocks, ids deliberately not contiguous or ordered.
  auto grid = torch::empty({6, 6}, torch::kLong);
  for (int64_t a = 0; a < 6; ++a)
    for (int64_t b = 0; b < 6; ++b) grid[a][b] = 40 - 7 * ((a / 2) * 2 + b / 3);
  const auto options = igrad::SaliencyOptions().feature_mask(grid).batch_size(4);
  const auto got = igrad::attribute<igrad::FeatureAblation>(net, x, targets, options);
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t t = targets[i].item<int64_t>();
    const double full = logit_of(net, x[i], t);
    for (int64_t a = 0; a < 6; ++a) {
      for (int64_t b = 0; b < 6; ++b) {
        auto ablated = x[i].clone();
        const auto id = grid[a][b].item<int64_t>();
        for (int64_t p = 0; p < 6; ++p)
          for (int64_t q = 0; q < 6; ++q)
            if (grid[p][q].item<int64_t>() == id) ablated[0][p][q] = 0.0;
        CHECK(got[i][0][a][b].item<double>() == doctest::Approx(full - logit_of(net, ablated, t)).epsilon(1e-9));
      }
    }
  }
  // A mask per image: each image's attributions are those of its own mask alone.
  auto per_image = torch::stack({grid, grid.t().contiguous(), torch::zeros({6, 6}, torch::kLong)}).unsqueeze(1);
  const auto batch = igrad::attribute<igrad::FeatureAblation>(
      net, x, targets, igrad::SaliencyOptions().feature_mask(per_image).batch_size(3));
  for (int64_t i = 0; i < 3; ++i) {
    const auto single = igrad::attribute<igrad::FeatureAblation>(
        net, x.slice(0, i, i + 1), targets.slice(0, i, i + 1),
        igrad::SaliencyOptions().feature_mask(per_image[i]));
    CHECK(max_abs_diff(batch.slice(0, i, i + 1), single) < 1e-12);
  }
  // One group: every pixel gets the drop to the all-baseline image.
  const double whole = logit_of(net, x[2], 2) - logit_of(net, torch::zeros({1, 6, 6}, torch::kDouble), 2);
  CHECK(max_abs_diff(batch[2], torch::full({1, 6, 6}, whole, torch::kDouble)) < 1e-12);
}

// ---------------------------------------------------------------------------------------------
// Gradient SHAP

TEST_CASE("Gradient SHAP on a linear model is w times (x minus the baseline) and complete in expectation") {
  auto net = flat_linear(1 * 4 * 4, 6);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(12);
  const auto x = torch::randn({2, 1, 4, 4}, generator, torch::dtype(torch::kDouble));
  const auto baseline = torch::randn({1, 4, 4}, generator, torch::dtype(torch::kDouble));
  const auto targets = torch::tensor({1, 0});
  // One baseline, no noise: exact whatever the random points.
  const auto exact = igrad::attribute<igrad::GradientShap>(
      net, x, targets, igrad::SaliencyOptions().baseline(baseline).shap_samples(7).seed(3));
  for (int64_t i = 0; i < 2; ++i) {
    const auto w = net->fc->weight[targets[i].item<int64_t>()].view({1, 4, 4});
    CHECK(max_abs_diff(exact[i], w * (x[i] - baseline)) < 1e-12);
  }
  // A distribution of baselines, with noise: Σφ ≈ y^c(x) − E y^c(b) with many samples.
  const auto distribution = torch::randn({3, 1, 4, 4}, generator, torch::dtype(torch::kDouble));
  const auto many = igrad::attribute<igrad::GradientShap>(
      net, x, targets,
      igrad::SaliencyOptions().baseline_distribution(distribution).shap_samples(4000).shap_stdev(0.1).seed(5));
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t t = targets[i].item<int64_t>();
    double expected_baseline = 0;
    for (int64_t j = 0; j < 3; ++j) expected_baseline += logit_of(net, distribution[j], t) / 3.0;
    const double delta = logit_of(net, x[i], t) - expected_baseline;
    // The spread of one sample's sum: |w·(b_j − b_k)| and |w·ε| are O(1); 4000 samples: O(0.02).
    CHECK(std::abs(many[i].sum().item<double>() - delta) < 0.08);
  }
}

TEST_CASE("Gradient SHAP on a small ReLU net is complete in expectation over many samples") {
  torch::manual_seed(21);
  TinyMlp net(Rectifier::relu);
  net->to(torch::kDouble);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(13);
  const auto x = torch::randn({2, 4}, generator, torch::dtype(torch::kDouble)) * 2;
  const auto distribution = torch::randn({2, 4}, generator, torch::dtype(torch::kDouble)) * 2;
  const auto targets = torch::tensor({0, 1});
  const auto phi = igrad::attribute<igrad::GradientShap>(
      net, x, targets,
      igrad::SaliencyOptions().baseline_distribution(distribution).shap_samples(20000).seed(2).batch_size(4096));
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t t = targets[i].item<int64_t>();
    torch::NoGradGuard no_grad;
    const double fx = net->forward(x.slice(0, i, i + 1))[0][t].item<double>();
    const double fb = net->forward(distribution).select(1, t).mean().item<double>();
    CAPTURE(fx);
    CAPTURE(fb);
    // E_t[∇f(b + t(x − b))·(x − b)] = f(x) − f(b) for piecewise-linear f: the only error is
    // Monte Carlo, O(spread / sqrt(20000)).
    CHECK(std::abs(phi[i].sum().item<double>() - (fx - fb)) < 0.03 * (1 + std::abs(fx - fb)));
  }
}

// ---------------------------------------------------------------------------------------------
// The laws, chunking, and bad options, for the new methods

TEST_CASE("Occlusion, Feature Ablation and Gradient SHAP keep the SaliencyMethod laws and do not depend on batch_size") {
  auto net = conv_net(17, /*batch_norm=*/true);
  {
    // Non-trivial running statistics, so that a forward in training mode would show.
    net->train();
    torch::NoGradGuard no_grad;
    net->forward(random_images(8, 3) * 2 + 1);
  }
  const auto x = random_images(3, 5);
  const auto options = igrad::SaliencyOptions().occlusion_window({3, 3}).shap_samples(3);
  const auto laws = igrad::testing::ConformanceOptions().tolerance(1e-9);
  const auto occlusion = igrad::testing::check_saliency_method<igrad::Occlusion>(net, x, laws, options);
  INFO(occlusion.summary());
  CHECK(occlusion.ok());
  const auto ablation = igrad::testing::check_saliency_method<igrad::FeatureAblation>(net, x, laws, options);
  INFO(ablation.summary());
  CHECK(ablation.ok());
  const auto shap = igrad::testing::check_saliency_method<igrad::GradientShap>(
      net, x, igrad::testing::ConformanceOptions(laws).batch_consistency(false), options);
  INFO(shap.summary());
  CHECK(shap.ok());
  CHECK(net->is_training());
  const auto t = torch::tensor({0, 1, 2});
  const auto whole_occlusion = igrad::attribute<igrad::Occlusion>(net, x, t, igrad::SaliencyOptions(options).batch_size(1000));
  const auto whole_ablation = igrad::attribute<igrad::FeatureAblation>(net, x, t, igrad::SaliencyOptions(options).batch_size(1000));
  const auto whole_shap = igrad::attribute<igrad::GradientShap>(net, x, t, igrad::SaliencyOptions(options).batch_size(1000));
  for (const int64_t chunk : {1, 2, 7}) {
    CAPTURE(chunk);
    const auto o = igrad::SaliencyOptions(options).batch_size(chunk);
    CHECK(max_abs_diff(igrad::attribute<igrad::Occlusion>(net, x, t, o), whole_occlusion) < 1e-12);
    CHECK(max_abs_diff(igrad::attribute<igrad::FeatureAblation>(net, x, t, o), whole_ablation) < 1e-12);
    CHECK(max_abs_diff(igrad::attribute<igrad::GradientShap>(net, x, t, o), whole_shap) < 1e-12);
  }
}

TEST_CASE("Occlusion, Feature Ablation and Gradient SHAP reject bad options with igrad errors") {
  auto net = conv_net();
  const auto x = random_images(2, 1);
  using O = igrad::SaliencyOptions;
  const auto occlusion = [&](const O& o) { return igrad_error([&] { igrad::attribute<igrad::Occlusion>(net, x, {}, o); }); };
  CHECK(has(occlusion(O().occlusion_window({3, 3, 3, 3}).occlusion_strides({1, 1, 1, 1})), "occlusion_window"));
  CHECK(has(occlusion(O().occlusion_window({3, 3}).occlusion_strides({1})), "one stride per window dimension"));
  CHECK(has(occlusion(O().occlusion_window({7, 2})), "expected 1 to 6"));
  CHECK(has(occlusion(O().occlusion_window({0, 2})), "expected 1 to 6"));
  CHECK(has(occlusion(O().occlusion_window({2, 2}).occlusion_strides({3, 1})), "uncovered"));
  CHECK(has(occlusion(O().occlusion_window({2, 2}).occlusion_strides({0, 1})), "stride 0"));
  CHECK(has(occlusion(O().baseline(torch::zeros({2, 5}))), "baseline"));
  CHECK(has(occlusion(O().baseline(torch::tensor(std::nan("")))), "baseline"));
  const auto ablation = [&](const O& o) { return igrad_error([&] { igrad::attribute<igrad::FeatureAblation>(net, x, {}, o); }); };
  CHECK(has(ablation(O().feature_mask(torch::zeros({6, 6}))), "integer group ids"));
  CHECK(has(ablation(O().feature_mask(torch::zeros({6, 6}, torch::kBool))), "integer group ids"));
  CHECK(has(ablation(O().feature_mask(torch::zeros({5, 6}, torch::kLong))), "does not broadcast"));
  const auto shap = [&](const O& o) { return igrad_error([&] { igrad::attribute<igrad::GradientShap>(net, x, {}, o); }); };
  CHECK(has(shap(O().shap_samples(0)), "shap_samples"));
  CHECK(has(shap(O().shap_stdev(-1)), "shap_stdev"));
  CHECK(has(shap(O().shap_stdev(std::nan(""))), "shap_stdev"));
  CHECK(has(shap(O().baseline_distribution(torch::zeros({3, 1, 5, 6}))), "baseline_distribution"));
  CHECK(has(shap(O().baseline_distribution(torch::zeros({1, 6, 6}))), "baseline_distribution"));
  CHECK(has(shap(O().baseline_distribution(torch::full({2, 1, 6, 6}, std::nan("")))), "baseline_distribution"));
  CHECK(has(shap(O().batch_size(0)), "batch_size"));
}

// ---------------------------------------------------------------------------------------------
// DeepLIFT (Rescale)

namespace {

/// DeepLIFT-Rescale of TinyMlp written by hand: u = W1 x + b1, the multiplier
/// m_j = (g(u_j) − g(u_ref,j)) / (u_j − u_ref,j) (the derivative where u_j = u_ref,j), with g the
/// site's rectifier, and DL_i = (x_i − x_ref,i) Σ_j W2[c, j] m_j W1[j, i].
torch::Tensor hand_deeplift(TinyMlp& net, const torch::Tensor& x, const torch::Tensor& reference,
                            const torch::Tensor& targets, bool relu6) {
  const auto w1 = net->first->weight.detach(), b1 = net->first->bias.detach();
  const auto w2 = net->second->weight.detach();
  const auto g = [&](double u) { return relu6 ? std::clamp(u, 0.0, 6.0) : std::max(u, 0.0); };
  const auto derivative = [&](double u) { return (u > 0 && (!relu6 || u < 6)) ? 1.0 : 0.0; };
  auto result = torch::zeros_like(x);
  for (int64_t n = 0; n < x.size(0); ++n) {
    const int64_t c = targets[n].item<int64_t>();
    for (int64_t i = 0; i < 4; ++i) {
      double chain = 0;
      for (int64_t j = 0; j < 3; ++j) {
        double u = b1[j].item<double>(), u_ref = b1[j].item<double>();
        for (int64_t k = 0; k < 4; ++k) {
          u += w1[j][k].item<double>() * x[n][k].item<double>();
          u_ref += w1[j][k].item<double>() * reference[n][k].item<double>();
        }
        const double m = u == u_ref ? derivative(u) : (g(u) - g(u_ref)) / (u - u_ref);
        chain += w2[c][j].item<double>() * m * w1[j][i].item<double>();
      }
      result[n][i] = (x[n][i].item<double>() - reference[n][i].item<double>()) * chain;
    }
  }
  return result;
}

/// Whether some hidden unit of TinyMlp changes sign between x and the reference: there the
/// Rescale multiplier differs from both derivatives, so the check below can tell them apart.
bool crosses_zero(TinyMlp& net, const torch::Tensor& x, const torch::Tensor& reference) {
  torch::NoGradGuard no_grad;
  const auto u = net->first(x), u_ref = net->first(reference);
  return ((u > 0) != (u_ref > 0)).any().item<bool>();
}

}  // namespace

TEST_CASE("DeepLIFT on a one-hidden-layer ReLU net equals the hand computation and sums to the output difference") {
  for (const auto rectifier : {Rectifier::relu, Rectifier::relu_inplace, Rectifier::module_relu,
                               Rectifier::module_relu_inplace, Rectifier::relu6}) {
    CAPTURE(static_cast<int>(rectifier));
    torch::manual_seed(31);
    TinyMlp net(rectifier);
    net->to(torch::kDouble);
    auto generator = at::make_generator<at::CPUGeneratorImpl>(17);
    // Large inputs, so that ReLU6 sites saturate too.
    const auto x = torch::randn({5, 4}, generator, torch::dtype(torch::kDouble)) * 6;
    const auto reference = torch::randn({5, 4}, generator, torch::dtype(torch::kDouble)) * 2;
    const auto targets = torch::tensor({0, 1, 1, 0, 1});
    REQUIRE(crosses_zero(net, x, reference));
    const auto got = igrad::attribute<igrad::DeepLift>(
        net, x, targets, igrad::SaliencyOptions().baseline(reference).batch_size(2));
    const bool relu6 = rectifier == Rectifier::relu6;
    CHECK(max_abs_diff(got, hand_deeplift(net, x, reference, targets, relu6)) < 1e-10);
    torch::NoGradGuard no_grad;
    const auto delta = (net->forward(x) - net->forward(reference)).gather(1, targets.view({-1, 1})).view({-1});
    CHECK(max_abs_diff(got.sum(1), delta) < 1e-10);
  }
}

TEST_CASE("DeepLIFT on a linear model is w times (x minus the reference) and sums to the output difference") {
  auto net = flat_linear(1 * 3 * 3, 4);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(6);
  const auto x = torch::randn({2, 1, 3, 3}, generator, torch::dtype(torch::kDouble));
  const auto reference = torch::randn({1, 3, 3}, generator, torch::dtype(torch::kDouble));
  const auto targets = torch::tensor({2, 1});
  const auto got = igrad::attribute<igrad::DeepLift>(net, x, targets, igrad::SaliencyOptions().baseline(reference));
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t t = targets[i].item<int64_t>();
    const auto w = net->fc->weight[t].view({1, 3, 3});
    CHECK(max_abs_diff(got[i], w * (x[i] - reference)) < 1e-12);
    CHECK(got[i].sum().item<double>() == doctest::Approx(logit_of(net, x[i], t) - logit_of(net, reference, t)).epsilon(1e-10));
  }
}

TEST_CASE("DeepLIFT of an input equal to its reference is zero and finite, the eps fallback instead of 0/0") {
  torch::manual_seed(2);
  TinyMlp net(Rectifier::relu);
  net->to(torch::kDouble);
  const auto x = torch::randn({3, 4}, torch::kDouble);
  const auto got = igrad::attribute<igrad::DeepLift>(net, x, {}, igrad::SaliencyOptions().baseline(x));
  CHECK(torch::isfinite(got).all().item<bool>());
  CHECK(got.abs().max().item<double>() == 0.0);
}

TEST_CASE("DeepLiftRescale through gradient needs recorded and paired forwards, and equals DeepLift when given them") {
  torch::manual_seed(8);
  TinyMlp net(Rectifier::module_relu_inplace);
  net->to(torch::kDouble);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(4);
  const auto x = torch::randn({3, 4}, generator, torch::dtype(torch::kDouble)) * 3;
  const auto reference = torch::randn({3, 4}, generator, torch::dtype(torch::kDouble));
  const auto targets = torch::tensor({1, 0, 1});
  REQUIRE(crosses_zero(net, x, reference));
  // Without a recording: a GraphError that says what is missing, not a silent gradient.
  {
    const auto input = x.clone().requires_grad_(true);
    const auto y = net->forward(input).gather(1, targets.view({-1, 1})).sum();
    try {
      igrad::gradient<igrad::DeepLiftRescale>({y}, {input});
      FAIL("expected a GraphError");
    } catch (const igrad::GraphError& e) {
      CHECK(has(e.what(), "RectifierRecording"));
    }
  }
  // The low-level route of the documentation.
  igrad::RectifierRecording reference_sites;
  {
    torch::NoGradGuard no_grad;
    net->forward(reference);
  }
  reference_sites.stop();
  igrad::RectifierRecording sites;
  const auto input = x.clone().requires_grad_(true);
  const auto y = net->forward(input).gather(1, targets.view({-1, 1})).sum();
  sites.stop();
  CHECK(sites.size() == 1);
  CHECK(reference_sites.size() == 1);
  // The recorded input is u before the in-place ReLU overwrote it: it has negative entries.
  CHECK(sites.sites()[0].input.min().item<double>() < 0);
  torch::Tensor by_hand;
  {
    igrad::ReferenceSites pairs(sites, reference_sites);
    by_hand = (x - reference) * igrad::gradient<igrad::DeepLiftRescale>({y}, {input}, {}, /*retain_graph=*/true)[0];
  }
  const auto method = igrad::attribute<igrad::DeepLift>(net, x, targets, igrad::SaliencyOptions().baseline(reference));
  CHECK(max_abs_diff(by_hand, method) < 1e-12);
  CHECK(max_abs_diff(method, hand_deeplift(net, x, reference, targets, false)) < 1e-10);
  // The pairing is gone with its scope: the same graph needs it again.
  CHECK_THROWS_AS(igrad::gradient<igrad::DeepLiftRescale>({y}, {input}), igrad::GraphError);
  // Recordings whose sites differ in shape are rejected.
  igrad::RectifierRecording two_rows;
  {
    torch::NoGradGuard no_grad;
    net->forward(reference.slice(0, 0, 2));
  }
  two_rows.stop();
  CHECK_THROWS_AS(igrad::ReferenceSites(sites, two_rows), igrad::GraphError);
  // Nothing is recorded outside a recording.
  CHECK(igrad::detail::active_recording() == nullptr);
}

namespace {

/// A ReLU that runs only for inputs with a positive sum: data-dependent control flow, so the
/// input and a zero reference run different rectifier sites.
struct BranchingNetImpl : torch::nn::Module {
  BranchingNetImpl() { fc = register_module("fc", torch::nn::Linear(4, 2)); }
  torch::Tensor forward(torch::Tensor x) {
    auto u = fc(x);
    if (x.sum().item<double>() > 0) u = torch::relu(u);
    return u;
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(BranchingNet);

}  // namespace

TEST_CASE("DeepLIFT reports forwards that run different rectifier sites as a GraphError") {
  torch::manual_seed(3);
  BranchingNet net;
  net->to(torch::kDouble);
  const auto x = torch::ones({1, 4}, torch::kDouble);
  try {
    igrad::attribute<igrad::DeepLift>(net, x, torch::tensor({0}));
    FAIL("expected a GraphError");
  } catch (const igrad::GraphError& e) {
    CHECK(has(e.what(), "1 rectifier sites and the reference forward 0"));
  }
  // Both forwards without the ReLU: the gradient times the difference, as for a linear model.
  const auto negative = -torch::ones({1, 4}, torch::kDouble);
  const auto got = igrad::attribute<igrad::DeepLift>(net, negative, torch::tensor({1}));
  CHECK(max_abs_diff(got[0], net->fc->weight[1].detach() * negative[0]) < 1e-12);
}

TEST_CASE("DeepLIFT keeps the SaliencyMethod laws, does not depend on batch_size and rejects a bad eps") {
  auto net = conv_net(19, /*batch_norm=*/true);
  {
    net->train();
    torch::NoGradGuard no_grad;
    net->forward(random_images(8, 6) * 2 + 1);
  }
  const auto x = random_images(3, 9);
  const auto options = igrad::SaliencyOptions().baseline(torch::tensor(0.3, torch::kDouble));
  const auto report = igrad::testing::check_saliency_method<igrad::DeepLift>(
      net, x, igrad::testing::ConformanceOptions().tolerance(1e-9), options);
  INFO(report.summary());
  CHECK(report.ok());
  const auto t = torch::tensor({2, 0, 1});
  const auto whole = igrad::attribute<igrad::DeepLift>(net, x, t, igrad::SaliencyOptions(options).batch_size(100));
  CHECK(torch::isfinite(whole).all().item<bool>());
  for (const int64_t chunk : {1, 2}) {
    CHECK(max_abs_diff(igrad::attribute<igrad::DeepLift>(net, x, t, igrad::SaliencyOptions(options).batch_size(chunk)), whole) < 1e-12);
  }
  CHECK(has(igrad_error([&] { igrad::attribute<igrad::DeepLift>(net, x, {}, igrad::SaliencyOptions().deeplift_eps(-1)); }), "deeplift_eps"));
  CHECK(has(igrad_error([&] { igrad::attribute<igrad::DeepLift>(net, x, {}, igrad::SaliencyOptions().baseline(torch::zeros({4, 1, 6, 6}))); }), "baseline"));
}

// The CAM family (SPEC §4): each method against an independent formulation (explicit loops over
// channels and pixels, written from the papers' formulas with direct module calls), the
// post-processing, batching, safety inside training, misuse, and a conformance suite over every
// shipped method.
#include "test_support.hpp"

#include <igrad/cam.hpp>

#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

using namespace igrad_test;
namespace F = torch::nn::functional;

namespace {

/// conv3x3(1→4) [→ BN] → ReLU → max-pool 2 = features [N, 4, 4, 4] for 8×8 inputs;
/// head = global average pooling → Linear(4, 3): the head CAM needs.
struct GapNetImpl : torch::nn::Module {
  explicit GapNetImpl(bool batch_norm = false) {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)));
    if (batch_norm) bn = register_module("bn", torch::nn::BatchNorm2d(4));
    fc = register_module("fc", torch::nn::Linear(4, 3));
  }
  torch::Tensor features(torch::Tensor x) {
    auto a = conv(x);
    if (bn) a = bn(a);
    return torch::max_pool2d(torch::relu(a), 2);
  }
  torch::Tensor head(torch::Tensor a) { return fc(a.mean({2, 3})); }
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(GapNet);

/// A model whose "feature map" is flattened: not 4-D.
struct FlatFeaturesImpl : torch::nn::Module {
  FlatFeaturesImpl() { fc = register_module("fc", torch::nn::Linear(64, 3)); }
  torch::Tensor features(torch::Tensor x) { return torch::relu(x.flatten(1)); }
  torch::Tensor head(torch::Tensor a) { return fc(a); }
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(FlatFeatures);

/// features as GapNet (3×3 maps for 6×6 inputs); head = conv1x1 → ReLU → flatten → Linear:
/// the gradient ∂y^c/∂A varies over pixels AND with the input (unlike a linear head).
struct DeepHeadImpl : torch::nn::Module {
  DeepHeadImpl() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)));
    mix = register_module("mix", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 1)));
    fc = register_module("fc", torch::nn::Linear(36, 3));
  }
  torch::Tensor features(torch::Tensor x) { return torch::max_pool2d(torch::relu(conv(x)), 2); }
  torch::Tensor head(torch::Tensor a) { return fc(torch::relu(mix(a)).flatten(1)); }
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
  torch::nn::Conv2d conv{nullptr}, mix{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(DeepHead);

DeepHead make_deep_head(uint64_t seed = 5) {
  torch::manual_seed(seed);
  DeepHead net;
  net->to(torch::kDouble);
  net->eval();
  return net;
}

GapNet make_gap_net(bool batch_norm = false, uint64_t seed = 3) {
  torch::manual_seed(seed);
  GapNet net(batch_norm);
  net->to(torch::kDouble);
  net->eval();
  return net;
}

TinyConv make_tiny_conv(uint64_t seed = 4) {
  torch::manual_seed(seed);
  TinyConv net(3);
  net->to(torch::kDouble);
  net->eval();
  return net;
}

torch::Tensor images(int64_t n, int64_t size = 8, uint64_t seed = 7) {
  torch::manual_seed(seed);
  return torch::randn({n, 1, size, size}, torch::kDouble);
}

/// A and g = ∂y^c/∂A for ONE sample, computed with direct module calls and autograd.
template <class Net>
std::pair<torch::Tensor, torch::Tensor> reference_a_and_g(Net& net, const torch::Tensor& x_i,
                                                          int64_t c) {
  auto a = net->features(x_i.unsqueeze(0)).detach().requires_grad_(true);
  auto y = net->head(a)[0][c];
  auto g = torch::autograd::grad({y}, {a})[0];
  return {a.detach()[0], g[0]};
}

/// Σ_k w_k A^k by an explicit loop.
torch::Tensor loop_weighted_sum(const torch::Tensor& w, const torch::Tensor& a) {
  auto map = torch::zeros({a.size(1), a.size(2)}, a.options());
  for (int64_t k = 0; k < a.size(0); ++k) map += w[k].item<double>() * a[k];
  return map;
}

/// Min–max of one map to [0, 1] with the 1e-7 guard, for the reference Score-CAM masks.
torch::Tensor min_max(const torch::Tensor& m) {
  return (m - m.min()) / (m.max() - m.min() + 1e-7);
}

const auto kTargets = torch::tensor({0, 2, 1}, torch::kLong);

}  // namespace

TEST_CASE("cam: CAM is Σ_k W_ck A^k with the Linear layer's weights, and Grad-CAM equals it up to scale") {
  auto net = make_gap_net();
  const auto x = images(3);
  const auto raw_cam = igrad::explain_raw<igrad::Cam>(net, x, kTargets);
  const auto raw_grad_cam = igrad::explain_raw<igrad::GradCam>(net, x, kTargets);
  const auto raw_hires = igrad::explain_raw<igrad::HiResCam>(net, x, kTargets);
  for (int64_t i = 0; i < 3; ++i) {
    const auto a = net->features(x[i].unsqueeze(0)).detach()[0];
    const auto expected = torch::relu(loop_weighted_sum(net->fc->weight[kTargets[i].item<int64_t>()], a));
    CHECK(max_abs_diff(raw_cam[i], expected) < 1e-12);
    // g = W_c / hw everywhere: Grad-CAM = CAM / hw, and HiRes-CAM (Σ_k g ⊙ A^k) = Grad-CAM.
    CHECK(max_abs_diff(raw_grad_cam[i] * 16.0, expected) < 1e-12);
    CHECK(max_abs_diff(raw_hires[i] * 16.0, expected) < 1e-12);
  }
  CHECK(max_abs_diff(igrad::explain<igrad::Cam>(net, x, kTargets),
                     igrad::explain<igrad::GradCam>(net, x, kTargets)) < 1e-6);
}

TEST_CASE("cam: Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM, HiRes-CAM match explicit loops") {
  auto net = make_deep_head();  // non-linear head: the gradient varies over pixels and inputs
  const auto x = images(3, 6);
  const auto grad_cam = igrad::explain_raw<igrad::GradCam>(net, x, kTargets);
  const auto plus_plus = igrad::explain_raw<igrad::GradCamPlusPlus>(net, x, kTargets);
  const auto xgrad = igrad::explain_raw<igrad::XGradCam>(net, x, kTargets);
  const auto layer = igrad::explain_raw<igrad::LayerCam>(net, x, kTargets);
  const auto hires = igrad::explain_raw<igrad::HiResCam>(net, x, kTargets);
  for (int64_t i = 0; i < 3; ++i) {
    auto [a, g] = reference_a_and_g(net, x[i], kTargets[i].item<int64_t>());
    const int64_t K = a.size(0), h = a.size(1), w = a.size(2);
    std::vector<double> alpha_grad(K), alpha_pp(K), alpha_x(K);
    auto layer_map = torch::zeros({h, w}, torch::kDouble), hires_map = torch::zeros({h, w}, torch::kDouble);
    for (int64_t k = 0; k < K; ++k) {
      double sum_g = 0, sum_a = 0, sum_ag = 0;
      for (int64_t p = 0; p < h; ++p)
        for (int64_t q = 0; q < w; ++q) {
          sum_g += g[k][p][q].item<double>();
          sum_a += a[k][p][q].item<double>();
          sum_ag += a[k][p][q].item<double>() * g[k][p][q].item<double>();
        }
      alpha_grad[k] = sum_g / static_cast<double>(h * w);
      alpha_x[k] = sum_ag / (sum_a + 1e-7);
      double weight = 0;
      for (int64_t p = 0; p < h; ++p)
        for (int64_t q = 0; q < w; ++q) {
          const double gij = g[k][p][q].item<double>();
          const double aij = a[k][p][q].item<double>();
          const double alpha = gij == 0 ? 0 : gij * gij / (2 * gij * gij + sum_a * gij * gij * gij + 1e-6);
          weight += alpha * std::max(gij, 0.0);
          layer_map[p][q] += std::max(gij, 0.0) * aij;
          hires_map[p][q] += gij * aij;
        }
      alpha_pp[k] = weight;
    }
    CHECK(max_abs_diff(grad_cam[i], torch::relu(loop_weighted_sum(torch::tensor(alpha_grad, torch::kDouble), a))) < 1e-12);
    CHECK(max_abs_diff(plus_plus[i], torch::relu(loop_weighted_sum(torch::tensor(alpha_pp, torch::kDouble), a))) < 1e-12);
    CHECK(max_abs_diff(xgrad[i], torch::relu(loop_weighted_sum(torch::tensor(alpha_x, torch::kDouble), a))) < 1e-12);
    CHECK(max_abs_diff(layer[i], torch::relu(layer_map)) < 1e-12);
    CHECK(max_abs_diff(hires[i], torch::relu(hires_map)) < 1e-12);
  }
  // The loops are not vacuous: the methods differ from one another on this model.
  CHECK(max_abs_diff(grad_cam, hires) > 1e-6);
  CHECK(max_abs_diff(layer, hires) > 1e-6);
}

TEST_CASE("cam: Score-CAM, IS-CAM and Ablation-CAM match explicit per-channel loops") {
  auto net = make_tiny_conv(9);
  const auto x = images(2, 6, 11);
  const auto t = torch::tensor({1, 2}, torch::kLong);
  // Second pass: channel 1 is dead (zero everywhere), which Score-CAM scores without a forward
  // pass of its own; the maps must not change.
  for (bool dead_channel : {false, true}) {
  if (dead_channel) {
    torch::NoGradGuard no_grad;
    net->conv->bias[1].fill_(-1e3);
    REQUIRE(net->features(x).select(1, 1).abs().max().item<double>() == 0.0);
  }
  for (auto score : {igrad::CamScore::probability, igrad::CamScore::logit}) {
    CAPTURE(static_cast<int>(score));
    CAPTURE(dead_channel);
    const auto s = [&](const torch::Tensor& input, int64_t c) {
      const auto logits = net->forward(input.unsqueeze(0))[0];
      return score == igrad::CamScore::probability ? logits.softmax(0)[c].item<double>()
                                                   : logits[c].item<double>();
    };
    const auto options = igrad::CamOptions().score(score).batch_size(5).iscam_steps(4);
    const auto score_cam = igrad::explain_raw<igrad::ScoreCam>(net, x, t, options);
    const auto is_cam = igrad::explain_raw<igrad::ISCam>(net, x, t, options);
    for (int64_t i = 0; i < 2; ++i) {
      const int64_t c = t[i].item<int64_t>();
      const auto a = net->features(x[i].unsqueeze(0)).detach()[0];
      const double baseline = s(torch::zeros_like(x[i]), c);
      std::vector<double> w_score, w_is;
      for (int64_t k = 0; k < a.size(0); ++k) {
        const auto up = F::interpolate(a[k].view({1, 1, 3, 3}),
                                       F::InterpolateFuncOptions().size(std::vector<int64_t>{6, 6})
                                           .mode(torch::kBilinear).align_corners(false))[0][0];
        const auto mask = min_max(up);
        w_score.push_back(s(x[i] * mask, c) - baseline);
        double integral = 0;
        for (int j = 1; j <= 4; ++j) integral += s(x[i] * (j / 4.0) * mask, c) / 4.0;
        w_is.push_back(integral - baseline);
      }
      CHECK(max_abs_diff(score_cam[i], torch::relu(loop_weighted_sum(torch::tensor(w_score, torch::kDouble), a))) < 1e-10);
      CHECK(max_abs_diff(is_cam[i], torch::relu(loop_weighted_sum(torch::tensor(w_is, torch::kDouble), a))) < 1e-10);
    }
  }
  }
  // Ablation-CAM: α_k = (y^c − y^c with channel k zeroed) / y^c.
  const auto ablation = igrad::explain_raw<igrad::AblationCam>(net, x, t, igrad::CamOptions().batch_size(4));
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t c = t[i].item<int64_t>();
    const auto a = net->features(x[i].unsqueeze(0)).detach()[0];
    const double y = net->head(a.unsqueeze(0))[0][c].item<double>();
    std::vector<double> w;
    for (int64_t k = 0; k < a.size(0); ++k) {
      auto ablated = a.clone();
      ablated[k].zero_();
      w.push_back((y - net->head(ablated.unsqueeze(0))[0][c].item<double>()) / y);
    }
    CHECK(max_abs_diff(ablation[i], torch::relu(loop_weighted_sum(torch::tensor(w, torch::kDouble), a))) < 1e-10);
  }
}

TEST_CASE("cam: the pytorch-grad-cam Score-CAM convention: align_corners masks, softmax over masked logits") {
  auto net = make_tiny_conv(9);
  const auto x = images(1, 6, 12);
  const auto t = torch::tensor({2}, torch::kLong);
  const auto raw = igrad::explain_raw<igrad::ScoreCam>(
      net, x, t, igrad::CamOptions().score_cam_convention(igrad::ScoreCamConvention::pytorch_grad_cam));
  const auto a = net->features(x).detach()[0];
  std::vector<double> logits;
  for (int64_t k = 0; k < a.size(0); ++k) {
    const auto up = F::interpolate(a[k].view({1, 1, 3, 3}),
                                   F::InterpolateFuncOptions().size(std::vector<int64_t>{6, 6})
                                       .mode(torch::kBilinear).align_corners(true))[0][0];
    logits.push_back(net->forward((x[0] * min_max(up)).unsqueeze(0))[0][2].item<double>());
  }
  double total = 0;
  for (double l : logits) total += std::exp(l);
  std::vector<double> w;
  for (double l : logits) w.push_back(std::exp(l) / total);
  CHECK(max_abs_diff(raw[0], torch::relu(loop_weighted_sum(torch::tensor(w, torch::kDouble), a))) < 1e-10);
}

TEST_CASE("cam: SS-CAM with zero noise is Score-CAM, its noise follows the seed, not the global RNG") {
  auto net = make_tiny_conv(9);
  const auto x = images(2, 6, 13);
  const auto t = torch::tensor({0, 1}, torch::kLong);
  const auto score_cam = igrad::explain_raw<igrad::ScoreCam>(net, x, t);
  const auto quiet = igrad::explain_raw<igrad::SSCam>(net, x, t, igrad::CamOptions().sscam_sigma(0).sscam_samples(3));
  CHECK(max_abs_diff(score_cam, quiet) < 1e-12);
  const auto options = igrad::CamOptions().sscam_samples(4).seed(5);
  torch::manual_seed(1);
  const auto first = igrad::explain_raw<igrad::SSCam>(net, x, t, options);
  torch::manual_seed(2);
  const auto again = igrad::explain_raw<igrad::SSCam>(net, x, t, options);
  const auto other = igrad::explain_raw<igrad::SSCam>(net, x, t, igrad::CamOptions().sscam_samples(4).seed(6));
  CHECK(torch::equal(first, again));
  CHECK(max_abs_diff(first, other) > 1e-8);
  CHECK(max_abs_diff(first, score_cam) > 1e-8);
}

TEST_CASE("cam: SmoothGrad-CAM++ with zero noise is Grad-CAM++, an explicit generator is used and advances") {
  auto net = make_deep_head(9);
  const auto x = images(2, 6, 14);
  const auto pp = igrad::explain_raw<igrad::GradCamPlusPlus>(net, x, kTargets.slice(0, 0, 2));
  const auto quiet = igrad::explain_raw<igrad::SmoothGradCamPlusPlus>(
      net, x, kTargets.slice(0, 0, 2), igrad::CamOptions().noise_level(0).smooth_samples(3));
  CHECK(max_abs_diff(pp, quiet) < 1e-10);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(42);
  const auto options = igrad::CamOptions().generator(generator);
  const auto first = igrad::explain_raw<igrad::SmoothGradCamPlusPlus>(net, x, {}, options);
  const auto second = igrad::explain_raw<igrad::SmoothGradCamPlusPlus>(net, x, {}, options);
  CHECK(max_abs_diff(first, second) > 1e-10);  // the generator advanced
  const auto replay = igrad::explain_raw<igrad::SmoothGradCamPlusPlus>(
      net, x, {}, igrad::CamOptions().generator(at::make_generator<at::CPUGeneratorImpl>(42)));
  CHECK(torch::equal(first, replay));
}

TEST_CASE("cam: Eigen-CAM is the projection on the first principal direction (power iteration)") {
  auto net = make_gap_net(false, 21);
  const auto x = images(2, 8, 22);
  const auto raw = igrad::explain_raw<igrad::EigenCam>(net, x);
  for (int64_t i = 0; i < 2; ++i) {
    const auto a = net->features(x[i].unsqueeze(0)).detach()[0];  // [K, h, w]
    const auto m = a.flatten(1).t();                                // [hw, K]
    const auto centred = m - m.mean(0, true);
    const auto covariance = centred.t().mm(centred);
    auto v = torch::ones({a.size(0), 1}, torch::kDouble);
    for (int iteration = 0; iteration < 2000; ++iteration) {
      v = covariance.mm(v);
      v = v / v.norm();
    }
    auto projection = centred.mm(v).view({-1});
    const auto total = a.sum(0).view({-1});
    if (((projection - projection.mean()) * (total - total.mean())).sum().item<double>() < 0)
      projection = -projection;
    CHECK(max_abs_diff(raw[i], torch::relu(projection).view({a.size(1), a.size(2)})) < 1e-8);
  }
}

TEST_CASE("cam: Opti-CAM starts from uniform weights and its optimisation raises the masked logit") {
  auto net = make_gap_net(false, 31);
  const auto x = images(2, 8, 32);
  const auto t = torch::tensor({0, 2}, torch::kLong);
  const auto a = net->features(x).detach();
  const auto uniform = igrad::explain_raw<igrad::OptiCam>(net, x, t, igrad::CamOptions().opticam_steps(0));
  CHECK(max_abs_diff(uniform, torch::relu(a.mean(1))) < 1e-12);
  const auto optimised = igrad::explain_raw<igrad::OptiCam>(net, x, t);
  // The objective y^c(x ∘ norm(Up(S))) computed directly for both maps.
  const auto objective = [&](const torch::Tensor& s, int64_t i) {
    const auto up = F::interpolate(s[i].view({1, 1, 4, 4}), F::InterpolateFuncOptions().size(std::vector<int64_t>{8, 8})
                                                              .mode(torch::kBilinear).align_corners(false))[0][0];
    return net->forward((x[i] * min_max(up)).unsqueeze(0))[0][t[i].item<int64_t>()].item<double>();
  };
  for (int64_t i = 0; i < 2; ++i) CHECK(objective(optimised, i) > objective(uniform, i) + 1e-6);
}

TEST_CASE("cam: Guided Grad-CAM is the upsampled Grad-CAM times the guided gradient") {
  auto net = make_tiny_conv(9);
  const auto x = images(2, 6, 15);
  const auto t = torch::tensor({0, 1}, torch::kLong);
  const auto raw = igrad::explain_raw<igrad::GuidedGradCam>(net, x, t);
  const auto grad_cam = igrad::explain<igrad::GradCam>(net, x, t);
  const auto guided = igrad::input_gradient<igrad::GuidedReLU>(
      net, x, t, igrad::InputGradientOptions().of(igrad::GradientOf::target_logit));
  CHECK(raw.sizes() == torch::IntArrayRef({2, 6, 6}));
  CHECK(max_abs_diff(raw, (grad_cam.unsqueeze(1) * guided).abs().amax(1)) < 1e-12);
}

TEST_CASE("cam: captum's Guided Grad-CAM convention is the raw signed Grad-CAM, nearest-upsampled, times guided backprop") {
  torch::manual_seed(21);
  GapNet net;
  net->to(torch::kDouble);
  const auto x = torch::randn({2, 1, 9, 9}, torch::kDouble);  // features 4x4: 9/4 is not whole
  const auto t = torch::tensor({2, 0}, torch::kLong);
  // Grad-CAM's raw map, signed: α_k = mean_ij ∂y^c/∂A^k_ij, Σ_k α_k A^k.
  const auto a = net->features(x).detach().requires_grad_(true);
  const auto logits = net->head(a);
  const auto score = logits.gather(1, t.view({2, 1})).sum();
  const auto g = torch::autograd::grad({score}, {a})[0];
  const auto raw = (g.mean({2, 3}, true) * a.detach()).sum(1);  // [2, 4, 4]
  // Nearest neighbour as PyTorch's F.interpolate: output pixel i reads input pixel floor(i·4/9).
  auto up = torch::zeros({2, 9, 9}, torch::kDouble);
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t i = 0; i < 9; ++i)
      for (int64_t j = 0; j < 9; ++j) up[n][i][j] = raw[n][i * 4 / 9][j * 4 / 9];
  // Guided backprop written out: a hook clamps the gradient reaching the ReLU's output at 0,
  // and the ReLU's own backward applies 1[u > 0].
  const auto input = x.clone().requires_grad_(true);
  auto rectified = torch::relu(net->conv(input));
  rectified.register_hook([](torch::Tensor grad) { return grad.clamp_min(0); });
  const auto guided_logits = net->fc(torch::max_pool2d(rectified, 2).mean({2, 3}));
  const auto guided =
      torch::autograd::grad({guided_logits.gather(1, t.view({2, 1})).sum()}, {input})[0];
  const auto expected = guided * up.unsqueeze(1);

  const auto captum = igrad::CamOptions().guided_grad_cam_convention(
      igrad::GuidedGradCamConvention::captum);
  const auto attributions = igrad::guided_grad_cam_attributions(net, x, t, captum);
  CHECK(attributions.sizes() == torch::IntArrayRef({2, 1, 9, 9}));
  CHECK(max_abs_diff(attributions, expected) < 1e-12);
  CHECK(attributions.lt(0).any().item<bool>() == expected.lt(0).any().item<bool>());  // signed
  CHECK(max_abs_diff(igrad::explain_raw<igrad::GuidedGradCam>(net, x, t, captum),
                     expected.abs().amax(1)) < 1e-12);
  // igrad's own convention: the post-processed map, upsampled bilinearly.
  const auto igrad_attributions = igrad::guided_grad_cam_attributions(net, x, t);
  CHECK(max_abs_diff(igrad_attributions,
                     igrad::explain<igrad::GradCam>(net, x, t).unsqueeze(1) * guided) < 1e-12);
}

TEST_CASE("cam: post-processing is ReLU, min-max, bilinear upsampling, min-max, zero stays zero") {
  const auto raw = torch::tensor({{{-1.0, 1.0}, {3.0, 5.0}}, {{0.0, 0.0}, {0.0, 0.0}}}, torch::kDouble);
  const auto maps = igrad::normalize_cam(raw, 4, 4);
  CHECK(maps.sizes() == torch::IntArrayRef({2, 4, 4}));
  CHECK(torch::equal(maps[1], torch::zeros({4, 4}, torch::kDouble)));
  CHECK_FALSE(torch::isnan(maps).any().item<bool>());
  // Hand computation: ReLU → [[0,1],[3,5]] → /5 (+1e-7) → bilinear 2→4 (half-pixel centres):
  // corner (0,0) is the source value 0, and the next pixel (0,1) is 0.75·0 + 0.25·0.2 = 0.05.
  const double scale = 5.0 / (5.0 + 1e-7);
  const auto up00 = 0.0, up01 = 0.25 * 0.2 * scale, up33 = 1.0 * scale;
  const double low = up00, high = up33;
  CHECK(maps[0][0][0].item<double>() == doctest::Approx((up00 - low) / (high - low + 1e-7)));
  CHECK(maps[0][0][1].item<double>() == doctest::Approx((up01 - low) / (high - low + 1e-7)).epsilon(1e-9));
  CHECK(maps.min().item<double>() >= 0);
  CHECK(maps.max().item<double>() <= 1);
}

TEST_CASE("cam: batch equals single images, with BatchNorm, and the train mode is restored") {
  auto net = make_gap_net(true, 41);
  {  // give the BN non-trivial running statistics
    torch::NoGradGuard no_grad;
    net->train();
    for (int i = 0; i < 3; ++i) net->forward(images(8, 8, 50 + i) * 2 + 1);
  }
  net->train();  // explanations must switch to eval and back
  const auto x = images(3, 8, 42);
  const auto batch_maps = igrad::explain<igrad::GradCamPlusPlus>(net, x, kTargets);
  const auto batch_score = igrad::explain<igrad::ScoreCam>(net, x, kTargets, igrad::CamOptions().batch_size(5));
  CHECK(net->is_training());
  for (int64_t i = 0; i < 3; ++i) {
    const auto xi = x.slice(0, i, i + 1);
    const auto ti = kTargets.slice(0, i, i + 1);
    CHECK(max_abs_diff(batch_maps[i], igrad::explain<igrad::GradCamPlusPlus>(net, xi, ti)[0]) < 1e-10);
    CHECK(max_abs_diff(batch_score[i], igrad::explain<igrad::ScoreCam>(net, xi, ti)[0]) < 1e-10);
  }
  CHECK(net->is_training());
}

TEST_CASE("cam: one feature pass per batch, the gradient methods add one head pass with a graph") {
  auto net = make_gap_net(true, 45);
  const auto x = images(3, 8, 46);
  struct Counts {
    int forward = 0, features = 0, head = 0, head_with_grad = 0;
  };
  auto counts = std::make_shared<Counts>();
  auto f = igrad::AnyModel(net).functions();
  const auto forward = f.forward, features = f.features, head = f.head;
  f.forward = [=](const torch::Tensor& v) { ++counts->forward; return forward(v); };
  f.features = [=](const torch::Tensor& v) { ++counts->features; return features(v); };
  f.head = [=](const torch::Tensor& v) {
    ++counts->head;
    counts->head_with_grad += torch::GradMode::is_enabled();
    return head(v);
  };
  const igrad::AnyModel counted(f);
  const auto check_gradient_method = [&](auto type) {
    using C = typename decltype(type)::type;
    CAPTURE(std::string(C::name));
    *counts = {};
    const auto maps = igrad::explain<C>(counted, x);
    CHECK(counts->forward == 0);
    CHECK(counts->features == 1);
    CHECK(counts->head == 2);  // the logits (targets), then the target scores' graph
    CHECK(counts->head_with_grad == 1);
    CHECK(max_abs_diff(maps, igrad::explain<C>(net, x)) == 0);
  };
  boost::hana::for_each(boost::hana::tuple_t<igrad::GradCam, igrad::GradCamPlusPlus,
                                             igrad::XGradCam, igrad::LayerCam, igrad::HiResCam>,
                        check_gradient_method);
  *counts = {};
  igrad::explain<igrad::ScoreCam>(counted, x, {}, igrad::CamOptions().batch_size(64));
  CHECK(counts->features == 1);  // the masked inputs go through forward, the map once through features
  CHECK(counts->forward == 1 + 1);  // the zero baseline, then 3 images × 4 channels in one batch
}

TEST_CASE("cam: default targets are the eval-mode predictions, maps follow the input's dtype") {
  auto net = make_gap_net(false, 43);
  const auto x = images(3, 8, 44);
  const auto predicted = net->forward(x).argmax(1);
  CHECK(torch::equal(igrad::explain<igrad::GradCam>(net, x), igrad::explain<igrad::GradCam>(net, x, predicted)));
  const auto maps = igrad::explain<igrad::GradCam>(net, x.to(torch::kFloat));  // double model
  CHECK((maps.scalar_type() == torch::kFloat));
  CHECK((maps.device() == x.device()));
  CHECK_FALSE(maps.requires_grad());
}

TEST_CASE("cam: misuse gives igrad exceptions with clear messages") {
  auto tiny = make_tiny_conv();
  const auto x = images(2, 6);
  CHECK_THROWS_AS(igrad::explain<igrad::GradCam>(tiny, x, torch::tensor({0, 3})), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::explain<igrad::GradCam>(tiny, x.view({2, 36})), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::explain<igrad::GradCam>(tiny, images(2, 10)), igrad::InvalidArgument);  // 10×10: fc rejects
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::Cam>(tiny, x), doctest::Contains("global average pooling"),
                       igrad::GraphError);
  CHECK_THROWS_AS(igrad::explain<igrad::GradCam>(igrad::AnyModel(TinyMlp()), torch::randn({2, 1, 2, 2})), igrad::GraphError);
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::GradCam>(FlatFeatures(), torch::randn({2, 1, 8, 8})),
                       doctest::Contains("4-D feature map"), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::explain<igrad::ScoreCam>(tiny, x, {}, igrad::CamOptions().batch_size(0)),
                  igrad::InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Conformance: every shipped method, one suite.

namespace {
/// A one-element tensor as a double (avoids `.template item<double>()` in templates).
inline double scalar(const torch::Tensor& t) { return t.item().toDouble(); }

template <class C>
constexpr bool is_noisy = std::is_same_v<C, igrad::SmoothGradCamPlusPlus> || std::is_same_v<C, igrad::SSCam>;
}

TEST_CASE_TEMPLATE_DEFINE("cam conformance", C, cam_conformance) {
  static_assert(igrad::CamMethod<C>);
  CAPTURE(C::name);
  auto net = make_gap_net(true, 61);
  net->train();
  const auto x = images(3, 8, 62);
  const auto options = igrad::CamOptions().seed(9).batch_size(7).smooth_samples(3).sscam_samples(3)
                           .iscam_steps(3).opticam_steps(5);
  // A gradient already stored on one parameter, none on the others: both must stay as they are.
  auto params = net->parameters();
  params[0].mutable_grad() = torch::full_like(params[0], 0.5);
  const auto stored = params[0].grad().clone();
  const auto buffers_before = net->buffers()[0].clone();
  int64_t progress_calls = 0;
  auto counted = options;
  counted.progress([&](int64_t done, int64_t total) {
    CHECK(done <= total);
    ++progress_calls;
  });

  const auto maps = igrad::explain<C>(net, x, kTargets, counted);
  CHECK(maps.sizes() == torch::IntArrayRef({3, 8, 8}));
  CHECK((maps.scalar_type() == torch::kDouble));
  CHECK(scalar(torch::isfinite(maps).all()) == 1.0);
  CHECK(scalar(maps.min()) >= 0);
  CHECK(scalar(maps.max()) <= 1);
  CHECK_FALSE(maps.requires_grad());
  CHECK(net->is_training());
  CHECK(torch::equal(params[0].grad(), stored));
  for (size_t p = 1; p < params.size(); ++p) CHECK_FALSE(params[p].grad().defined());
  CHECK(torch::equal(net->buffers()[0], buffers_before));
  if constexpr (std::is_same_v<C, igrad::ScoreCam> || std::is_same_v<C, igrad::SSCam> ||
                std::is_same_v<C, igrad::ISCam> || std::is_same_v<C, igrad::AblationCam>)
    CHECK(progress_calls > 1);  // batched: 3 images × 4 channels (× samples) in batches of 7

  // Determinism with a fixed seed, and raw maps on request.
  CHECK(torch::equal(maps, igrad::explain<C>(net, x, kTargets, options)));
  const auto raw = igrad::explain_raw<C>(net, x, kTargets, options);
  CHECK(raw.dim() == 3);
  CHECK(scalar(raw.min()) >= 0);
  CHECK(max_abs_diff(igrad::normalize_cam(raw, 8, 8), maps) < 1e-12);

  // A batch gives the maps of its images (the noise of noisy methods is drawn per call).
  if constexpr (!is_noisy<C>) {
    for (int64_t i = 0; i < 3; ++i)
      CHECK(max_abs_diff(maps[i], igrad::explain<C>(net, x.slice(0, i, i + 1), kTargets.slice(0, i, i + 1), options)[0]) < 1e-8);
  }
}

TEST_CASE_TEMPLATE_INVOKE(cam_conformance, igrad::Cam, igrad::GradCam, igrad::GradCamPlusPlus,
                          igrad::SmoothGradCamPlusPlus, igrad::ScoreCam, igrad::SSCam, igrad::ISCam,
                          igrad::XGradCam, igrad::LayerCam, igrad::HiResCam, igrad::EigenCam,
                          igrad::AblationCam, igrad::OptiCam, igrad::GuidedGradCam);

TEST_CASE("cam: all_cam_methods lists the twenty methods, each a CamMethod") {
  std::vector<std::string> names;
  boost::hana::for_each(igrad::all_cam_methods, [&](auto type) {
    using C = typename decltype(type)::type;
    static_assert(igrad::CamMethod<C>);
    names.emplace_back(C::name);
  });
  CHECK(names.size() == 20);
  // igrad's methods defer their operator()'s compilation with a defaulted template parameter
  // (cam/cam_method.hpp); its address is still taken as documented there.
  static_assert(std::is_same_v<decltype(&igrad::GradCam::operator()<>),
                               torch::Tensor (igrad::GradCam::*)(const igrad::CamRequest&) const>);
  static_assert(!igrad::CamMethod<int>);
  static_assert(!igrad::CamMethod<igrad::GuidedReLU>);
}

// FullGrad (Srinivas & Fleuret 2019, pytorch-grad-cam's FullGrad): the map against an explicit
// formulation written here (every layer's output computed by hand, its gradient by autograd, the
// per-channel scaling and resizing by loops), the completeness identity on the raw terms,
// batch-equals-singles, the CamMethod laws, and misuse.
#include "test_support.hpp"

#include <igrad/cam.hpp>
#include <igrad/testing/conformance.hpp>

#include <vector>

using namespace igrad_test;
namespace F = torch::nn::functional;

namespace {

/// conv3x3(1→3, bias) → BN(3) → ReLU → conv3x3(3→4, stride 2, bias) = features [N, 4, 4, 4] for
/// 8×8 inputs; head GAP → Linear(4, 3). Piecewise linear, with a bias in every layer.
struct BiasNetImpl : torch::nn::Module {
  explicit BiasNetImpl(bool inplace_relu = false, bool running_stats = true)
      : inplace(inplace_relu) {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 3, 3).padding(1)));
    bn = register_module(
        "bn", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(3).track_running_stats(running_stats)));
    conv2 = register_module(
        "conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3).stride(2).padding(1)));
    fc = register_module("fc", torch::nn::Linear(4, 3));
  }
  torch::Tensor features(torch::Tensor x) {
    auto u = bn(conv1(x));
    u = inplace ? torch::relu_(u) : torch::relu(u);
    return conv2(u);
  }
  torch::Tensor head(torch::Tensor a) { return fc(a.mean({2, 3})); }
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
  bool inplace;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(BiasNet);

/// A BiasNet in double with non-trivial batch-norm statistics and affine parameters, in training
/// mode (as a model is in the middle of training).
BiasNet bias_net(bool inplace_relu = false) {
  torch::manual_seed(3);
  BiasNet net(inplace_relu);
  net->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  net->bn->running_mean.copy_(torch::tensor({0.3, -0.2, 0.1}, torch::kDouble));
  net->bn->running_var.copy_(torch::tensor({0.5, 2.0, 1.3}, torch::kDouble));
  net->bn->weight.copy_(torch::tensor({1.5, -0.7, 0.9}, torch::kDouble));
  net->bn->bias.copy_(torch::tensor({0.2, 0.4, -0.3}, torch::kDouble));
  return net;
}

torch::Tensor images(int64_t n) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(17);
  return torch::randn({n, 1, 8, 8}, generator, torch::dtype(torch::kDouble));
}

/// Each [h, w] slice of `maps` [N, K, h, w] scaled to (m − min)/(max − min + 1e-7) and resized
/// bilinearly to 8×8, summed over k, written with loops over images and channels.
torch::Tensor scaled_channel_sum(const torch::Tensor& maps) {
  auto result = torch::zeros({maps.size(0), 8, 8}, maps.options());
  for (int64_t n = 0; n < maps.size(0); ++n) {
    for (int64_t k = 0; k < maps.size(1); ++k) {
      auto m = maps[n][k].abs();
      const double low = m.min().item<double>(), high = m.max().item<double>();
      m = (m - low) / (high - low + 1e-7);
      if (m.size(0) != 8)
        m = F::interpolate(m.view({1, 1, m.size(0), m.size(1)}),
                           F::InterpolateFuncOptions()
                               .size(std::vector<int64_t>{8, 8})
                               .mode(torch::kBilinear)
                               .align_corners(false))
                .view({8, 8});
      result[n] += m;
    }
  }
  return result;
}

/// Everything FullGrad needs for one net, computed by hand: the layers' outputs, their biases,
/// the gradients of the target logits with respect to them, the logits.
struct HandTerms {
  torch::Tensor input_term, conv1_term, bn_term, conv2_term, logits, head_bias;
};

HandTerms hand_terms(BiasNet& net, const torch::Tensor& x_in, const torch::Tensor& targets) {
  const auto& bn = net->bn;
  auto x = x_in.detach().requires_grad_(true);
  const auto z1 = F::conv2d(x, net->conv1->weight, F::Conv2dFuncOptions().bias(net->conv1->bias).padding(1));
  const auto scale = bn->weight / (bn->running_var + 1e-5).sqrt();
  const auto z2 = (z1 - bn->running_mean.view({1, 3, 1, 1})) * scale.view({1, 3, 1, 1}) +
                  bn->bias.view({1, 3, 1, 1});
  const auto z3 = F::conv2d(torch::relu(z2), net->conv2->weight,
                            F::Conv2dFuncOptions().bias(net->conv2->bias).stride(2).padding(1));
  const auto logits = torch::matmul(z3.mean({2, 3}), net->fc->weight.t()) + net->fc->bias;
  const auto score = logits.gather(1, targets.view({-1, 1})).sum();
  const auto g = torch::autograd::grad({score}, {x, z1, z2, z3});
  const auto bn_bias = (bn->bias - bn->running_mean * scale).detach();
  return {(x * g[0]).detach(),
          (net->conv1->bias.detach().view({1, 3, 1, 1}) * g[1]).detach(),
          (bn_bias.view({1, 3, 1, 1}) * g[2]).detach(),
          (net->conv2->bias.detach().view({1, 4, 1, 1}) * g[3]).detach(),
          logits.detach(),
          net->fc->bias.detach().index_select(0, targets)};
}

igrad::CamRequest request_for(BiasNet& net, const torch::Tensor& x, const torch::Tensor& targets) {
  return {net, x, targets, igrad::CamOptions(), {}};
}

}  // namespace

TEST_CASE("cam fullgrad: the map equals an explicit formulation on conv-BN-ReLU-conv-GAP-linear") {
  for (const bool inplace : {false, true}) {
    CAPTURE(inplace);
    auto net = bias_net(inplace);
    const auto x = images(3);
    const auto targets = torch::tensor({0, 2, 1}, torch::kLong);
    net->eval();
    const auto hand = hand_terms(net, x, targets);
    // pytorch-grad-cam: |x ⊙ ∇x| per input channel, and |b ⊙ ∇z| per channel of each layer with
    // a bias (conv1, the batch norm, conv2), each scaled and resized, all summed.
    const auto expected = scaled_channel_sum(hand.input_term) + scaled_channel_sum(hand.conv1_term) +
                          scaled_channel_sum(hand.bn_term) + scaled_channel_sum(hand.conv2_term);
    net->train();
    const auto raw = igrad::explain_raw<igrad::FullGrad>(net, x, targets);
    REQUIRE(raw.sizes() == torch::IntArrayRef({3, 8, 8}));
    CHECK(max_abs_diff(raw, expected) < 1e-9);
    // explain's post-processing is pytorch-grad-cam's final scale_cam_image.
    const auto maps = igrad::explain<igrad::FullGrad>(net, x, targets);
    const auto flat = expected.flatten(1);
    const auto low = std::get<0>(flat.min(1, true)), high = std::get<0>(flat.max(1, true));
    CHECK(max_abs_diff(maps.flatten(1), (flat - low) / (high - low + 1e-7)) < 1e-6);
    CHECK(net->is_training());
  }
}

TEST_CASE("cam fullgrad: the raw terms are the hand-computed ones and complete the score") {
  for (const bool inplace : {false, true}) {
    CAPTURE(inplace);
    auto net = bias_net(inplace);
    net->eval();
    const auto x = images(2);
    const auto targets = torch::tensor({1, 0}, torch::kLong);
    const auto hand = hand_terms(net, x, targets);
    const auto terms = igrad::full_grad_terms(request_for(net, x, targets));
    // One term per layer with a bias, in call order: conv1, the batch norm, conv2 (the
    // convolution calls below aten::conv2d are not counted again).
    REQUIRE(terms.bias_terms.size() == 3);
    CHECK(terms.batch_norm == std::vector<bool>{false, true, false});
    CHECK(max_abs_diff(terms.input_term, hand.input_term) < 1e-12);
    CHECK(max_abs_diff(terms.bias_terms[0], hand.conv1_term) < 1e-12);
    CHECK(max_abs_diff(terms.bias_terms[1], hand.bn_term) < 1e-12);
    CHECK(max_abs_diff(terms.bias_terms[2], hand.conv2_term) < 1e-12);
    // Completeness (FullGrad's paper, Prop. 2) for this piecewise-linear net: Σ x ⊙ ∇x plus Σ of
    // every bias-gradient term (the final linear layer's is its bias b_c) is the target logit.
    auto total = terms.input_term.flatten(1).sum(1) + hand.head_bias;
    for (const auto& term : terms.bias_terms) total = total + term.flatten(1).sum(1);
    const auto logits = hand.logits.gather(1, targets.view({-1, 1})).view({-1});
    CHECK(max_abs_diff(total, logits) < 1e-10);
    CHECK(max_abs_diff(terms.scores, logits) < 1e-12);
  }
}

TEST_CASE("cam fullgrad: a batch gives the maps of its images one by one") {
  auto net = bias_net();
  const auto x = images(3);
  const auto targets = torch::tensor({2, 0, 1}, torch::kLong);
  const auto batch =
      igrad::explain_raw<igrad::FullGrad>(net, x, targets, igrad::CamOptions().batch_size(2));
  for (int64_t i = 0; i < 3; ++i) {
    const auto single =
        igrad::explain_raw<igrad::FullGrad>(net, x.slice(0, i, i + 1), targets.slice(0, i, i + 1));
    CHECK(max_abs_diff(batch.slice(0, i, i + 1), single) < 1e-10);
  }
}

TEST_CASE("cam fullgrad: keeps the CamMethod laws and touches no grad, mode or buffer") {
  auto net = bias_net(/*inplace_relu=*/true);
  const auto report = igrad::testing::check_cam_method<igrad::FullGrad>(
      net, images(3), igrad::testing::ConformanceOptions().tolerance(1e-8));
  INFO(report.summary());
  CHECK(report.ok());
  for (const auto& p : net->parameters()) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("cam fullgrad: without bias layers the map is the input-gradient term alone") {
  torch::manual_seed(5);
  auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3).padding(1).bias(false));
  auto fc = torch::nn::Linear(torch::nn::LinearOptions(2, 3));
  conv->to(torch::kDouble);
  fc->to(torch::kDouble);
  igrad::AnyModel::Functions functions;
  functions.forward = [&](const torch::Tensor& x) { return fc(torch::relu(conv(x)).mean({2, 3})); };
  functions.features = [&](const torch::Tensor& x) { return torch::relu(conv(x)); };
  functions.head = [&](const torch::Tensor& a) { return fc(a.mean({2, 3})); };
  functions.parameters = [&] {
    auto p = conv->parameters();
    for (const auto& q : fc->parameters()) p.push_back(q);
    return p;
  };
  functions.buffers = [] { return std::vector<torch::Tensor>{}; };
  bool training = false;
  functions.train = [&](bool on) { training = on; };
  functions.is_training = [&] { return training; };
  const igrad::AnyModel model(functions);
  const auto x = images(2);
  const auto targets = torch::tensor({0, 2}, torch::kLong);
  auto leaf = x.clone().requires_grad_(true);
  const auto score = model.forward(leaf).gather(1, targets.view({-1, 1})).sum();
  const auto gradient = torch::autograd::grad({score}, {leaf})[0];
  const auto expected = scaled_channel_sum((x * gradient).detach());
  CHECK(max_abs_diff(igrad::explain_raw<igrad::FullGrad>(model, x, targets), expected) < 1e-10);
}

TEST_CASE("cam fullgrad: errors on bad input and on batch norms without running statistics") {
  auto net = bias_net();
  const auto targets = torch::tensor({0}, torch::kLong);
  CHECK_THROWS_AS(igrad::explain<igrad::FullGrad>(net, torch::randn({1, 3, 8, 8}, torch::kDouble), targets),
                  igrad::InvalidArgument);
  auto bad = images(1);
  bad[0][0][2][2] = std::nan("");
  CHECK_THROWS_AS(igrad::explain<igrad::FullGrad>(net, bad, targets), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::explain<igrad::FullGrad>(net, images(1), torch::tensor({7}, torch::kLong)),
                  igrad::InvalidArgument);
  // A batch norm without running statistics normalises with the batch's: no fixed bias.
  torch::manual_seed(3);
  BiasNet batch_stats(false, /*running_stats=*/false);
  batch_stats->to(torch::kDouble);
  const auto before = batch_stats->bn->weight.clone();
  CHECK_THROWS_WITH_AS(igrad::explain<igrad::FullGrad>(batch_stats, images(2), torch::tensor({0, 1})),
                       doctest::Contains("batch statistics"), igrad::GraphError);
  CHECK(torch::equal(before, batch_stats->bn->weight));
}

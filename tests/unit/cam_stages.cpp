// Several stages of a model explained, and fused (issue 16, item 2): the stage wiring against
// Grad-CAM computed by hand with autograd at each stage, and the two fusion conventions against
// explicit loops with a bilinear resize written here.
#include <igrad/cam.hpp>
#include <igrad/models/adapters.hpp>
#include <igrad/models/resnet.hpp>
#include <igrad/models/small_cnn.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace {

using Grid = std::vector<std::vector<double>>;

Grid grid_of(const torch::Tensor& map) {
  const auto m = map.to(torch::kDouble).contiguous();
  Grid g(static_cast<size_t>(m.size(0)), std::vector<double>(static_cast<size_t>(m.size(1))));
  for (int64_t r = 0; r < m.size(0); ++r)
    for (int64_t c = 0; c < m.size(1); ++c) g[r][c] = m[r][c].item<double>();
  return g;
}

/// Bilinear resize with half-pixel centres (align_corners = false), written from its definition.
Grid bilinear(const Grid& in, size_t out_h, size_t out_w) {
  const auto source = [](size_t i, size_t in_size, size_t out_size) {
    const double s = (static_cast<double>(i) + 0.5) * static_cast<double>(in_size) /
                         static_cast<double>(out_size) - 0.5;
    return std::max(s, 0.0);
  };
  Grid out(out_h, std::vector<double>(out_w));
  for (size_t r = 0; r < out_h; ++r)
    for (size_t c = 0; c < out_w; ++c) {
      const double sr = source(r, in.size(), out_h), sc = source(c, in[0].size(), out_w);
      const auto r0 = static_cast<size_t>(sr), c0 = static_cast<size_t>(sc);
      const size_t r1 = std::min(r0 + 1, in.size() - 1), c1 = std::min(c0 + 1, in[0].size() - 1);
      const double fr = sr - static_cast<double>(r0), fc = sc - static_cast<double>(c0);
      out[r][c] = (1 - fr) * ((1 - fc) * in[r0][c0] + fc * in[r0][c1]) +
                  fr * ((1 - fc) * in[r1][c0] + fc * in[r1][c1]);
    }
  return out;
}

/// `(g − min) / (max − min + eps)` over the whole grid.
Grid scaled(Grid g, double eps) {
  double low = 1e300, high = -1e300;
  for (const auto& row : g)
    for (double v : row) low = std::min(low, v), high = std::max(high, v);
  for (auto& row : g)
    for (double& v : row) v = (v - low) / (high - low + eps);
  return g;
}

/// Grad-CAM at a feature map computed by hand: `ReLU(Σ_k mean_ij(∂y^c/∂A_k) A_k)` with `logits` a
/// function of the map `a`.
torch::Tensor hand_grad_cam(const torch::Tensor& a_in, const std::function<torch::Tensor(const torch::Tensor&)>& rest,
                            const torch::Tensor& targets) {
  const auto a = a_in.detach().requires_grad_(true);
  const auto logits = rest(a);
  const auto score = logits.gather(1, targets.view({-1, 1})).sum();
  const auto g = torch::autograd::grad({score}, {a})[0];
  return torch::relu((g.mean({2, 3}, true) * a.detach()).sum(1));
}

torch::nn::Sequential small_sequential() {
  torch::manual_seed(11);
  return torch::nn::Sequential(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3).padding(1)), torch::nn::ReLU(),
      torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 3, 3).padding(1)), torch::nn::ReLU(),
      torch::nn::MaxPool2d(2), torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3).padding(1)),
      torch::nn::ReLU(), torch::nn::AdaptiveAvgPool2d(1), torch::nn::Flatten(),
      torch::nn::Linear(4, 3));
}

/// Stages without a head for stage 0: reports 2 stages but returns one map.
struct BrokenStagesImpl : torch::nn::Module {
  BrokenStagesImpl() { fc = register_module("fc", torch::nn::Linear(4, 2)); }
  torch::Tensor forward(const torch::Tensor& x) { return fc(x.mean({2, 3}).repeat({1, 4})); }
  int64_t stage_count() const { return count; }
  std::vector<torch::Tensor> stages(const torch::Tensor& x) { return {x}; }
  torch::Tensor head_from(int64_t, const torch::Tensor& a) { return forward(a); }
  torch::nn::Linear fc{nullptr};
  int64_t count = 2;
};
TORCH_MODULE(BrokenStages);

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const igrad::Error& e) {
    return e.what();
  }
  return "(no igrad error)";
}

}  // namespace

static_assert(igrad::StagedClassifier<igrad::models::ResNet18>);
static_assert(!igrad::StagedClassifier<igrad::models::SmallCNN>);

TEST_CASE("stages: a Sequential cut at several indices, each stage's Grad-CAM by hand") {
  auto seq = small_sequential();
  const auto stages = igrad::models::sequential_stages(seq, {2, 4, 7});
  REQUIRE(stages.size() == 3);
  CHECK(stages[1].name == "layers [0, 4)");
  torch::manual_seed(12);
  const auto x = torch::randn({3, 1, 8, 8});
  const auto y = torch::tensor({0, 2, 1}, torch::kLong);
  const std::vector<size_t> splits{2, 4, 7};
  // The layers applied one by one with functional calls (not the Sequential's own forward).
  const auto run = [&](size_t begin, size_t end, torch::Tensor v) {
    for (size_t l = begin; l < end; ++l) {
      const auto layer = seq->ptr(l);
      if (auto* conv = layer->as<torch::nn::Conv2dImpl>()) v = torch::conv2d(v, conv->weight, conv->bias, 1, 1);
      else if (layer->as<torch::nn::ReLUImpl>()) v = torch::relu(v);
      else if (layer->as<torch::nn::MaxPool2dImpl>()) v = torch::max_pool2d(v, 2);
      else if (layer->as<torch::nn::AdaptiveAvgPool2dImpl>()) v = v.mean({2, 3}, true);
      else if (layer->as<torch::nn::FlattenImpl>()) v = v.flatten(1);
      else {
        auto* linear = layer->as<torch::nn::LinearImpl>();
        v = torch::addmm(linear->bias, v, linear->weight.t());
      }
    }
    return v;
  };
  for (size_t s = 0; s < 3; ++s) {
    const auto a = run(0, splits[s], x);
    const auto rest = [&](const torch::Tensor& in) { return run(splits[s], seq->size(), in); };
    const auto expected = hand_grad_cam(a, rest, y);
    const auto raw = igrad::explain_raw<igrad::GradCam>(stages[s].model, x, y);
    CHECK(torch::allclose(raw, expected, 1e-5, 1e-6));
  }
  const auto maps = igrad::explain_stages<igrad::GradCam>(stages, x, y);
  REQUIRE(maps.size() == 3);
  for (size_t s = 0; s < 3; ++s) {
    CHECK(maps[s].sizes() == torch::IntArrayRef({3, 8, 8}));
    CHECK(torch::allclose(maps[s], igrad::explain<igrad::GradCam>(stages[s].model, x, y)));
  }
}

TEST_CASE("stages: ResNet-18's four stages, each explained at its own map") {
  torch::manual_seed(13);
  igrad::models::ResNet18 net(
      igrad::models::ResNet18Options().classes(3).in_channels(1).base_width(2));
  net->eval();
  const auto x = torch::randn({2, 1, 16, 16});
  const auto y = torch::tensor({1, 2}, torch::kLong);
  const auto maps = net->stages(x);
  REQUIRE(maps.size() == 4);
  CHECK(torch::allclose(maps[3], net->features(x)));
  CHECK(maps[1].sizes() == torch::IntArrayRef({2, 4, 8, 8}));
  for (int64_t s = 0; s < 4; ++s) CHECK(torch::allclose(net->head_from(s, maps[s]), net->forward(x), 1e-5, 1e-6));

  net->train();
  const auto stages = igrad::model_stages(net);
  REQUIRE(stages.size() == 4);
  CHECK(stages[0].name == "stage 1");
  for (int64_t s = 0; s < 4; ++s) {
    torch::Tensor expected;
    {
      net->eval();
      const auto a = net->stages(x)[static_cast<size_t>(s)];
      expected = hand_grad_cam(a, [&](const torch::Tensor& in) { return net->head_from(s, in); }, y);
      net->train();
    }
    const auto raw = igrad::explain_raw<igrad::GradCam>(stages[static_cast<size_t>(s)].model, x, y);
    CHECK(torch::allclose(raw, expected, 1e-5, 1e-6));
    CHECK(net->is_training());  // the mode is restored after each stage
  }
  for (const auto& p : net->parameters()) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("stages: fusion as pytorch-grad-cam (mean) and torchcam (max), against explicit loops") {
  torch::manual_seed(14);
  const auto coarse = torch::rand({2, 2, 2}, torch::kDouble) * 3;
  const auto fine = torch::rand({2, 4, 4}, torch::kDouble);
  const auto mean = igrad::fuse_cams({coarse, fine}, igrad::CamFusion::mean, std::make_pair(4L, 4L));
  const auto max = igrad::fuse_cams({coarse, fine}, igrad::CamFusion::max);  // largest size: 4x4
  REQUIRE(mean.sizes() == torch::IntArrayRef({2, 4, 4}));
  REQUIRE(max.sizes() == torch::IntArrayRef({2, 4, 4}));
  for (int64_t i = 0; i < 2; ++i) {
    const auto a7 = bilinear(scaled(grid_of(coarse[i]), 1e-7), 4, 4);
    const auto b7 = bilinear(scaled(grid_of(fine[i]), 1e-7), 4, 4);
    const auto a8 = bilinear(scaled(grid_of(coarse[i]), 1e-8), 4, 4);
    const auto b8 = bilinear(scaled(grid_of(fine[i]), 1e-8), 4, 4);
    Grid average(4, std::vector<double>(4));
    for (size_t r = 0; r < 4; ++r)
      for (size_t c = 0; c < 4; ++c) average[r][c] = (a7[r][c] + b7[r][c]) / 2;
    const auto expected_mean = scaled(average, 1e-7);
    for (size_t r = 0; r < 4; ++r)
      for (size_t c = 0; c < 4; ++c) {
        CHECK(mean[i][r][c].item<double>() == doctest::Approx(expected_mean[r][c]).epsilon(1e-12));
        CHECK(max[i][r][c].item<double>() ==
              doctest::Approx(std::max(a8[r][c], b8[r][c])).epsilon(1e-12));
      }
  }
  // A size of its own: 6x5 from both.
  CHECK(igrad::fuse_cams({coarse, fine}, igrad::CamFusion::max, std::make_pair(6L, 5L)).sizes() ==
        torch::IntArrayRef({2, 6, 5}));
}

TEST_CASE("stages: explain_fused fuses the stages' raw maps, a batch as its images one by one") {
  auto seq = small_sequential();
  const auto stages = igrad::models::sequential_stages(seq, {2, 7});
  torch::manual_seed(15);
  const auto x = torch::randn({3, 1, 8, 8});
  const auto y = torch::tensor({2, 0, 1}, torch::kLong);
  for (const auto fusion : {igrad::CamFusion::mean, igrad::CamFusion::max}) {
    const auto fused = igrad::explain_fused<igrad::GradCamPlusPlus>(stages, x, fusion, y);
    const auto expected = igrad::fuse_cams(
        {igrad::explain_raw<igrad::GradCamPlusPlus>(stages[0].model, x, y),
         igrad::explain_raw<igrad::GradCamPlusPlus>(stages[1].model, x, y)},
        fusion, std::make_pair(8L, 8L));
    CHECK(torch::allclose(fused, expected));
    CHECK(fused.min().item<double>() >= 0);
    CHECK(fused.max().item<double>() <= 1);
    for (int64_t i = 0; i < 3; ++i) {
      const auto alone = igrad::explain_fused<igrad::GradCamPlusPlus>(
          stages, x.slice(0, i, i + 1), fusion, y.slice(0, i, i + 1));
      CHECK(torch::allclose(alone[0], fused[i], 1e-5, 1e-6));
    }
  }
}

TEST_CASE("stages: misuse gives clear igrad errors") {
  auto seq = small_sequential();
  CHECK(error_of([&] { igrad::models::sequential_stages(seq, {}); }).find("no split index") !=
        std::string::npos);
  CHECK(error_of([&] { igrad::models::sequential_stages(seq, {4, 2}); })
            .find("expected strictly increasing") != std::string::npos);
  CHECK(error_of([&] { igrad::models::sequential_stages(seq, {2, 10}); })
            .find("expected 0 < split < 10") != std::string::npos);
  CHECK(error_of([&] { igrad::fuse_cams({}, igrad::CamFusion::mean); }).find("got no maps") !=
        std::string::npos);
  CHECK(error_of([&] {
          igrad::fuse_cams({torch::rand({2, 3, 3}), torch::rand({3, 3, 3})}, igrad::CamFusion::max);
        }).find("the same N (2)") != std::string::npos);
  CHECK(error_of([&] {
          igrad::explain_stages<igrad::GradCam>({}, torch::rand({1, 1, 8, 8}));
        }).find("got no stage") != std::string::npos);
  BrokenStages broken;
  const auto stages = igrad::model_stages(broken);
  CHECK(error_of([&] {
          igrad::explain<igrad::GradCam>(stages[0].model, torch::rand({1, 4, 5, 5}));
        }).find("returned 1 feature maps; expected stage_count() = 2") != std::string::npos);
  broken->count = 0;
  CHECK(error_of([&] { igrad::model_stages(broken); }).find("reports 0 stages") !=
        std::string::npos);
}

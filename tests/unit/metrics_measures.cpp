// Metrics (SPEC §5): Average Drop / Increase / Gain, insertion / deletion, pointing games, each on
// hand-made cases whose answers are computed here from the definitions; batch-split invariance;
// device; misuse.
#include <igrad/metrics.hpp>
#include <igrad/metrics/evaluate_cams.hpp>
#include <igrad/viz/sanity_figure.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <doctest/doctest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

/// A tiny conv net (conv 3×3 → ReLU → max-pool 2 → Linear) on 1×6×6 inputs, optionally with batch
/// norm. Defined here rather than taken from test_support.hpp so that the metrics tests build
/// from <igrad/metrics.hpp> alone.
struct SmallConvImpl : torch::nn::Module {
  explicit SmallConvImpl(int64_t classes = 3, bool batch_norm = false) {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 3, 3).padding(1)));
    if (batch_norm) bn = register_module("bn", torch::nn::BatchNorm2d(3));
    fc = register_module("fc", torch::nn::Linear(3 * 3 * 3, classes));
  }
  torch::Tensor forward(torch::Tensor x) {
    auto a = conv(x);
    if (bn) a = bn(a);
    return fc(torch::max_pool2d(torch::relu(a), 2).flatten(1));
  }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(SmallConv);

/// Largest absolute difference between two tensors, as a double.
double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

/// Two classes with logits `[a · w(x), 0]`, so `P(class 0) = σ(a · w(x))`: `w` is the mean of the
/// input, or — when a pixel is chosen — that pixel's value (channel 0). No parameters; records
/// whether it last ran in training mode.
struct ProbeImpl : torch::nn::Module {
  explicit ProbeImpl(double slope, int64_t row = -1, int64_t col = -1)
      : a(slope), r(row), c(col) {}
  torch::Tensor forward(torch::Tensor x) {
    ran_in_training = is_training();
    const auto w = r < 0 ? x.mean({1, 2, 3}) : x.select(1, 0).select(1, r).select(1, c);
    return torch::stack({a * w, torch::zeros_like(w)}, 1);
  }
  double a;
  int64_t r, c;
  bool ran_in_training = false;
};
TORCH_MODULE(Probe);

/// Two classes with logits `[mean(x), 0]`; keeps the last batch it was given.
struct RecorderImpl : torch::nn::Module {
  torch::Tensor forward(torch::Tensor x) {
    last = x.clone();
    const auto m = x.mean({1, 2, 3});
    return torch::stack({m, torch::zeros_like(m)}, 1);
  }
  torch::Tensor last;
};
TORCH_MODULE(Recorder);

torch::Tensor constant_images(const std::vector<double>& values, int64_t c = 1, int64_t h = 4,
                              int64_t w = 4) {
  auto x = torch::empty({static_cast<int64_t>(values.size()), c, h, w}, torch::kDouble);
  for (size_t i = 0; i < values.size(); ++i) x[static_cast<int64_t>(i)].fill_(values[i]);
  return x;
}

torch::Tensor labels(std::vector<int64_t> v) { return torch::tensor(v, torch::kLong); }

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const igrad::InvalidArgument& e) {
    return e.what();
  }
  return "(no igrad::InvalidArgument)";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST_CASE("metrics: Average Drop / Increase / Gain on hand-made probabilities") {
  Probe probe(2.0);
  igrad::AnyModel model(probe);
  SUBCASE("a constant map s scales the mean: o = σ(2 s v), hand-computed AD, AI, AG") {
    // image 0: v = 1, s = 0.5, class 0: p = σ(2), o = σ(1) — a drop.
    // image 1: v = 1, s = 0.5, class 1: p = σ(−2), o = σ(−1) — an increase and a gain.
    // image 2: v = −1, s = 1, class 0: o = p — nothing.
    const auto x = constant_images({1, 1, -1});
    auto maps = torch::ones({3, 4, 4}, torch::kDouble);
    maps.slice(0, 0, 2).fill_(0.5);
    const auto r = igrad::faithfulness(model, x, maps, labels({0, 1, 0}));
    const double drop0 = (sigmoid(2) - sigmoid(1)) / sigmoid(2);
    const double gain1 = (sigmoid(-1) - sigmoid(-2)) / (1 - sigmoid(-2));
    CHECK(r.images == 3);
    CHECK(r.average_drop == doctest::Approx(100.0 / 3 * drop0).epsilon(1e-12));
    CHECK(r.average_increase == doctest::Approx(100.0 / 3).epsilon(1e-12));
    CHECK(r.average_gain == doctest::Approx(100.0 / 3 * gain1).epsilon(1e-12));
  }
  SUBCASE("normalisation-aware masking: black in pixel space, not the dataset mean") {
    // mean 0.5, std 0.25: x = 2 is pixel 1.0; s = 0.5 gives pixel 0.5 = normalised 0 -> o = σ(0).
    const auto x = constant_images({2});
    const auto maps = torch::full({1, 4, 4}, 0.5, torch::kDouble);
    const auto opts = igrad::MaskingOptions().normalization(igrad::DatasetNormalization({0.5}, {0.25}));
    const auto scores = igrad::faithfulness_scores(model, x, maps, labels({0}), opts);
    CHECK(scores.original[0].item<double>() == doctest::Approx(sigmoid(4)));
    CHECK(scores.masked[0].item<double>() == doctest::Approx(0.5));
    const auto r = igrad::faithfulness(model, x, maps, labels({0}), opts);
    CHECK(r.average_drop == doctest::Approx(100 * (sigmoid(4) - 0.5) / sigmoid(4)));
    // Without the normalisation the same call masks normalised values: o = σ(2 · 2 · 0.5).
    CHECK(igrad::faithfulness_scores(model, x, maps, labels({0})).masked[0].item<double>() ==
          doctest::Approx(sigmoid(2)));
  }
  SUBCASE("any type with mean / std vectors converts (e.g. the data module's Normalization)") {
    struct OtherNormalization {
      std::vector<double> mean, std;
    };
    const auto x = constant_images({2});
    const auto maps = torch::full({1, 4, 4}, 0.5, torch::kDouble);
    const auto converted = igrad::faithfulness_scores(
        model, x, maps, labels({0}), igrad::MaskingOptions().normalization(OtherNormalization{{0.5}, {0.25}}));
    CHECK(converted.masked[0].item<double>() == doctest::Approx(0.5));
    // Empty mean and std are the identity: the same as no normalisation, o = σ(2 · 2 · 0.5).
    const auto identity = igrad::faithfulness_scores(
        model, x, maps, labels({0}), igrad::MaskingOptions().normalization(OtherNormalization{}));
    CHECK(identity.masked[0].item<double>() == doctest::Approx(sigmoid(2)));
  }
  SUBCASE("mask_images de-normalises, multiplies, re-normalises per channel") {
    auto x = torch::zeros({1, 2, 1, 2}, torch::kDouble);
    x[0][0].fill_(1.0);   // channel 0: pixel 1 · 0.5 + 0.2 = 0.7
    x[0][1].fill_(-1.0);  // channel 1: pixel −1 · 2 + 3 = 1
    const auto maps = torch::tensor({0.0, 0.5}, torch::kDouble).view({1, 1, 2});
    const auto y = igrad::mask_images(x, maps, igrad::DatasetNormalization({0.2, 3.0}, {0.5, 2.0}));
    CHECK(y[0][0][0][0].item<double>() == doctest::Approx((0.0 - 0.2) / 0.5));
    CHECK(y[0][0][0][1].item<double>() == doctest::Approx((0.35 - 0.2) / 0.5));
    CHECK(y[0][1][0][0].item<double>() == doctest::Approx((0.0 - 3.0) / 2.0));
    CHECK(y[0][1][0][1].item<double>() == doctest::Approx((0.5 - 3.0) / 2.0));
  }
  SUBCASE("predicted class on request") {
    // v = −1: the model predicts class 1 (p = σ(2)); s = 0.5 gives o = σ(1): a drop.
    const auto x = constant_images({-1});
    const auto maps = torch::full({1, 4, 4}, 0.5, torch::kDouble);
    const auto r = igrad::faithfulness(model, x, maps, {},
                                       igrad::MaskingOptions().target(igrad::TargetClass::predicted));
    CHECK(r.average_drop == doctest::Approx(100 * (sigmoid(2) - sigmoid(1)) / sigmoid(2)));
    CHECK(r.average_increase == 0);
  }
}

TEST_CASE("metrics: a map of ones leaves p unchanged, so AD = AI = AG = 0") {
  torch::manual_seed(3);
  SmallConv net(4, /*batch_norm=*/true);
  igrad::AnyModel model(net);
  const auto x = torch::randn({6, 1, 6, 6});
  const auto y = labels({0, 1, 2, 3, 0, 1});
  const auto ones = torch::ones({6, 6, 6});
  for (const auto& norm : {std::optional<igrad::DatasetNormalization>{},
                           std::optional<igrad::DatasetNormalization>{
                               igrad::DatasetNormalization({0.2860}, {0.3530})}}) {
    const auto r = igrad::faithfulness(model, x, ones, y, igrad::MaskingOptions().normalization(norm));
    CHECK(r.average_drop == 0.0);
    CHECK(r.average_increase == 0.0);
    CHECK(r.average_gain == 0.0);
  }
}

TEST_CASE("metrics: accumulators give the same result for any batch split") {
  torch::manual_seed(5);
  SmallConv net(3);
  igrad::AnyModel model(net);
  const auto x = torch::randn({12, 1, 6, 6});
  const auto maps = torch::rand({12, 6, 6});
  const auto y = torch::randint(0, 3, {12}, torch::kLong);
  const auto boxes = torch::tensor({1, 1, 4, 5}, torch::kLong).repeat({12, 1});
  const auto norm = igrad::DatasetNormalization({0.2860}, {0.3530});

  igrad::FaithfulnessAccumulator f_one(igrad::MaskingOptions().normalization(norm)),
      f_split(igrad::MaskingOptions().normalization(norm));
  const auto causal = igrad::CausalOptions().normalization(norm).batch_size(17);
  igrad::CausalAccumulator i_one(igrad::CausalMetric::insertion, causal),
      i_split(igrad::CausalMetric::insertion, causal);
  igrad::PointingAccumulator p_one, p_split;
  f_one.add(model, x, maps, y);
  i_one.add(model, x, maps, y);
  p_one.add(maps, boxes);
  for (auto [a, b] : {std::pair{0, 5}, std::pair{5, 10}, std::pair{10, 12}}) {
    f_split.add(model, x.slice(0, a, b), maps.slice(0, a, b), y.slice(0, a, b));
    i_split.add(model, x.slice(0, a, b), maps.slice(0, a, b), y.slice(0, a, b));
    p_split.add(maps.slice(0, a, b), boxes.slice(0, a, b));
  }
  // Per-image values may differ in the last bit between batch sizes of a conv net; the sums are
  // taken in index order in double, so the results agree to rounding of single images.
  const auto one = f_one.result(), split = f_split.result();
  CHECK(one.images == 12);
  CHECK(split.images == 12);
  CHECK(split.average_drop == doctest::Approx(one.average_drop).epsilon(1e-6));
  CHECK(split.average_increase == doctest::Approx(one.average_increase).epsilon(1e-6));
  CHECK(split.average_gain == doctest::Approx(one.average_gain).epsilon(1e-6));
  CHECK(i_split.result() == doctest::Approx(i_one.result()).epsilon(1e-6));
  CHECK(max_abs_diff(i_split.mean_curve(), i_one.mean_curve()) < 1e-6);
  CHECK(p_split.result().pointing_game == p_one.result().pointing_game);
  CHECK(p_split.result().energy_pointing_game == p_one.result().energy_pointing_game);

  SUBCASE("given the same per-image probabilities, the sums are bit-identical") {
    const auto p = torch::rand({12}, torch::kDouble) * 0.98 + 0.01;
    const auto o = torch::rand({12}, torch::kDouble);
    igrad::FaithfulnessAccumulator whole, parts;
    whole.add_scores({{}, p, o});
    for (auto [a, b] : {std::pair{0, 5}, std::pair{5, 10}, std::pair{10, 12}})
      parts.add_scores({{}, p.slice(0, a, b), o.slice(0, a, b)});
    CHECK(parts.result().average_drop == whole.result().average_drop);
    CHECK(parts.result().average_increase == whole.result().average_increase);
    CHECK(parts.result().average_gain == whole.result().average_gain);
  }
}

TEST_CASE("metrics: the model runs in eval mode and its mode is restored") {
  Probe probe(1.0);
  igrad::AnyModel model(probe);
  probe->train(true);
  const auto x = constant_images({1, 2});
  const auto maps = torch::full({2, 4, 4}, 0.5, torch::kDouble);
  igrad::faithfulness(model, x, maps, labels({0, 1}));
  CHECK_FALSE(probe->ran_in_training);
  CHECK(probe->is_training());
  probe->ran_in_training = true;
  igrad::deletion(model, x, maps, labels({0, 1}));
  CHECK_FALSE(probe->ran_in_training);
  CHECK(probe->is_training());
}

TEST_CASE("metrics: masking is computed in double and rounded once to float32 (issue 18)") {
  // In float32 the masked image carried 1–2 ulp of rounding, which moved Average Drop by 1e-4 on
  // an image whose label probability was 0.12. The masked image must be the double-precision
  // definition rounded once to the images' dtype, and the model must see exactly that image.
  torch::manual_seed(18);
  SmallConv net(3);  // float32 parameters
  igrad::AnyModel model(net);
  const double mean = 0.2860, sd = 0.3530;
  const auto norm = igrad::DatasetNormalization({mean}, {sd});
  const auto x = torch::randn({8, 1, 6, 6});  // float32, normalised
  const auto maps = torch::rand({8, 6, 6}, torch::kDouble);
  // SPEC §5 in double: de-normalise, multiply by S, re-normalise; then one rounding to float32.
  const auto xd = x.to(torch::kDouble);
  const auto expected = (((xd * sd + mean) * maps.unsqueeze(1) - mean) / sd).to(torch::kFloat);
  const auto masked = igrad::mask_images(x, maps, norm);
  CHECK((masked.scalar_type() == torch::kFloat));
  CHECK(masked.equal(expected));
  // Without a normalisation: x · S in double, rounded once.
  CHECK(igrad::mask_images(x, maps).equal((xd * maps.unsqueeze(1)).to(torch::kFloat)));
  // S = 1 still gives x back bit for bit.
  CHECK(igrad::mask_images(x, torch::ones({8, 6, 6}, torch::kDouble), norm).equal(x));

  // Small p: each image is scored for its least likely class (p < 1/3 with three classes); o is
  // the float32 model's probability of the once-rounded image, bit for bit.
  torch::NoGradGuard no_grad;
  const auto probabilities = torch::softmax(net->forward(x).to(torch::kDouble), 1);
  const auto y = probabilities.argmin(1);
  REQUIRE(probabilities.gather(1, y.view({-1, 1})).max().item<double>() < 1.0 / 3);
  const auto scores =
      igrad::faithfulness_scores(model, x, maps, y, igrad::MaskingOptions().normalization(norm));
  const auto o = torch::softmax(net->forward(expected).to(torch::kDouble), 1)
                     .gather(1, y.view({-1, 1}))
                     .view(-1);
  CHECK(scores.masked.equal(o));
}

TEST_CASE("metrics: images with more channels than the model takes give an igrad error") {
  // Issue 14: 3-channel images on a 1-channel model raised LibTorch's conv2d error.
  SmallConv net(3);  // its first convolution takes 1 channel
  igrad::AnyModel model(net);
  const auto x = torch::rand({2, 3, 6, 6});
  const auto maps = torch::full({2, 6, 6}, 0.5);
  const auto y = labels({0, 1});
  const auto expect_channels = [](const std::string& message) {
    INFO(message);
    CHECK(message.find("[2, 3, 6, 6]") != std::string::npos);
    CHECK(message.find("takes 1 channel") != std::string::npos);
  };
  expect_channels(error_of([&] { igrad::faithfulness(model, x, maps, y); }));
  expect_channels(error_of([&] { igrad::deletion(model, x, maps, y); }));
  expect_channels(error_of([&] { igrad::insertion(model, x, maps, y); }));
  expect_channels(error_of([&] { igrad::faithfulness_scores(model, x, maps, y); }));
  // The model is left in the mode it had.
  CHECK(net->is_training());
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("metrics: the trapezoid area normalised to [0, 1]") {
  // (Σ s_j − (s_0 + s_n)/2) / n, by hand.
  CHECK(igrad::trapezoid_auc(std::vector<double>{1, 1, 0, 0}) == doctest::Approx(1.5 / 3));
  CHECK(igrad::trapezoid_auc(std::vector<double>{0, 1}) == doctest::Approx(0.5));
  CHECK(igrad::trapezoid_auc(std::vector<double>{1, 0, 0, 0, 0}) == doctest::Approx(0.125));
  CHECK(igrad::trapezoid_auc(std::vector<double>{1, 1, 1, 1}) == doctest::Approx(1.0));
  const auto curves = torch::tensor({1.0, 1.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0}).view({2, 4});
  const auto auc = igrad::trapezoid_auc(curves);
  CHECK(auc[0].item<double>() == doctest::Approx(0.5));
  CHECK(auc[1].item<double>() == doctest::Approx((2.5 - 0.5) / 3));
  CHECK(error_of([] { igrad::trapezoid_auc(std::vector<double>{1}); }).find("at least 2") !=
        std::string::npos);
}

TEST_CASE("metrics: deletion and insertion curves of models with known probabilities") {
  const double a = 3.0;
  SUBCASE("deletion from a mean-reading model: s_j = σ(a (16 − 4j) / 16)") {
    Probe probe(a);
    const auto x = constant_images({1});
    const auto maps = torch::rand({1, 4, 4}, torch::kDouble);
    const auto c = igrad::deletion(probe, x, maps, labels({0}));
    REQUIRE(c.probabilities.sizes() == torch::IntArrayRef{1, 5});
    std::vector<double> expected;
    for (int j = 0; j <= 4; ++j) expected.push_back(sigmoid(a * (16.0 - 4 * j) / 16));
    for (int j = 0; j <= 4; ++j)
      CHECK(c.probabilities[0][j].item<double>() == doctest::Approx(expected[j]));
    const double hand = (expected[0] + expected[1] + expected[2] + expected[3] + expected[4] -
                         (expected[0] + expected[4]) / 2) / 4;
    CHECK(c.auc[0].item<double>() == doctest::Approx(hand));
    CHECK(c.mean_auc() == doctest::Approx(hand));
    CHECK(c.pixels.equal(torch::tensor({0, 4, 8, 12, 16}, torch::kLong)));
    CHECK(c.fractions()[1].item<double>() == doctest::Approx(0.25));
  }
  SUBCASE("a step that does not divide H·W: counts 0, 5, 10, 15, 16") {
    Probe probe(a);
    const auto c = igrad::deletion(probe, constant_images({1}), torch::rand({1, 4, 4}, torch::kDouble),
                                   labels({1}), igrad::CausalOptions().pixels_per_step(5));
    const std::vector<double> counts{0, 5, 10, 15, 16};
    for (int j = 0; j <= 4; ++j)  // class 1: P = 1 − σ(a m) = σ(−a m)
      CHECK(c.probabilities[0][j].item<double>() == doctest::Approx(sigmoid(-a * (16 - counts[j]) / 16)));
  }
  SUBCASE("ranking: ties go to the lower row-major index (a constant map deletes row by row)") {
    Probe probe(a, /*row=*/2, /*col=*/1);  // reads pixel (2, 1): deleted at step 3
    const auto c = igrad::deletion(probe, constant_images({1}), torch::zeros({1, 4, 4}, torch::kDouble),
                                   labels({0}));
    const std::vector<double> expected{sigmoid(a), sigmoid(a), sigmoid(a), 0.5, 0.5};
    for (int j = 0; j <= 4; ++j)
      CHECK(c.probabilities[0][j].item<double>() == doctest::Approx(expected[j]));
    CHECK(c.auc[0].item<double>() == doctest::Approx((2.5 * sigmoid(a) + 0.75) / 4));
  }
  SUBCASE("ranking: the most salient pixel goes first, all channels together") {
    Probe probe(a, /*row=*/3, /*col=*/3);
    auto maps = torch::zeros({1, 4, 4}, torch::kDouble);
    maps[0][3][3] = 1.0;  // the last pixel in index order, the first by saliency
    // Two channels: if channels were ranked separately, channel 0 of pixel (3, 3) could lag.
    const auto x = constant_images({1}, /*c=*/2);
    const auto del = igrad::deletion(probe, x, maps, labels({0}), igrad::CausalOptions().pixels_per_step(1));
    CHECK(del.probabilities.size(1) == 17);
    CHECK(del.probabilities[0][0].item<double>() == doctest::Approx(sigmoid(a)));
    CHECK(del.probabilities[0][1].item<double>() == doctest::Approx(0.5));
    CHECK(del.auc[0].item<double>() == doctest::Approx((sigmoid(a) + 15 * 0.5 + 0.5 - (sigmoid(a) + 0.5) / 2) / 16));
    // Insertion into zeros: the pixel arrives at step 1 and stays.
    const auto ins = igrad::insertion(probe, x, maps, labels({0}),
                                      igrad::CausalOptions().pixels_per_step(1).insertion_substrate(
                                          igrad::Substrate::zeros));
    CHECK(ins.probabilities[0][0].item<double>() == doctest::Approx(0.5));
    CHECK(ins.probabilities[0][1].item<double>() == doctest::Approx(sigmoid(a)));
    CHECK(ins.probabilities[0][16].item<double>() == doctest::Approx(sigmoid(a)));
    CHECK(ins.auc[0].item<double>() == doctest::Approx((0.5 + 16 * sigmoid(a) - (0.5 + sigmoid(a)) / 2) / 16));
  }
  SUBCASE("insertion into the blurred copy of a constant image is flat (the blur keeps constants)") {
    Probe probe(a);
    const auto c = igrad::insertion(probe, constant_images({0.7}), torch::rand({1, 4, 4}, torch::kDouble),
                                    labels({0}));
    for (int j = 0; j <= 4; ++j)
      CHECK(c.probabilities[0][j].item<double>() == doctest::Approx(sigmoid(a * 0.7)));
  }
  SUBCASE("deletion substrates in normalised space: zeros is the mean, black is pixel 0") {
    Probe probe(a);
    const auto norm = igrad::DatasetNormalization({0.5}, {0.25});
    const auto x = constant_images({2});  // pixel 1
    const auto maps = torch::rand({1, 4, 4}, torch::kDouble);
    const auto zeros = igrad::deletion(probe, x, maps, labels({0}), igrad::CausalOptions().normalization(norm));
    CHECK(zeros.probabilities[0][4].item<double>() == doctest::Approx(0.5));  // all normalised 0
    const auto black = igrad::deletion(probe, x, maps, labels({0}),
                                       igrad::CausalOptions().normalization(norm).deletion_substrate(
                                           igrad::Substrate::black));
    CHECK(black.probabilities[0][4].item<double>() == doctest::Approx(sigmoid(a * -2.0)));  // (0 − 0.5)/0.25
    CHECK(black.probabilities[0][2].item<double>() == doctest::Approx(sigmoid(a * 0.0)));  // half 2, half −2
  }
  SUBCASE("several images, classes and chunk sizes: identical curves, one class per image") {
    Probe probe(a);
    const auto x = constant_images({1, 0.5, -1});
    const auto maps = torch::rand({3, 4, 4}, torch::kDouble);
    const auto y = labels({0, 1, 1});
    const auto reference = igrad::deletion(probe, x, maps, y, igrad::CausalOptions().batch_size(1000));
    for (int64_t chunk : {1, 3, 7}) {
      const auto c = igrad::deletion(probe, x, maps, y, igrad::CausalOptions().batch_size(chunk));
      CHECK(c.probabilities.equal(reference.probabilities));
    }
    for (int j = 0; j <= 4; ++j) {
      CHECK(reference.probabilities[1][j].item<double>() == doctest::Approx(sigmoid(-a * 0.5 * (16 - 4 * j) / 16)));
      CHECK(reference.probabilities[2][j].item<double>() == doctest::Approx(sigmoid(a * (16 - 4 * j) / 16)));
    }
  }
}

TEST_CASE("metrics: the causal accumulator's mean area and mean curve") {
  // Images v = 1 and v = −1, class 0: σ(a m) + σ(−a m) = 1, so every point of the mean curve is 0.5.
  Probe probe(2.0);
  igrad::CausalAccumulator acc(igrad::CausalMetric::deletion);
  const auto curves = acc.add(probe, constant_images({1}), torch::rand({1, 4, 4}, torch::kDouble), labels({0}));
  CHECK(curves.probabilities[0][0].item<double>() == doctest::Approx(sigmoid(2)));
  acc.add(probe, constant_images({-1}), torch::rand({1, 4, 4}, torch::kDouble), labels({0}));
  CHECK(acc.images() == 2);
  CHECK(acc.result() == doctest::Approx(0.5));
  const auto mean = acc.mean_curve();
  REQUIRE(mean.size(0) == 5);
  for (int j = 0; j <= 4; ++j) CHECK(mean[j].item<double>() == doctest::Approx(0.5));
  CHECK(acc.pixels().equal(torch::tensor({0, 4, 8, 12, 16}, torch::kLong)));
  // Curves of another length cannot be averaged with these.
  CHECK(error_of([&] {
          acc.add(probe, constant_images({1}), torch::rand({1, 4, 4}, torch::kDouble), labels({0}));
          igrad::CausalAccumulator other(igrad::CausalMetric::deletion, igrad::CausalOptions().pixels_per_step(1));
          other.add(probe, constant_images({1}), torch::rand({1, 4, 4}, torch::kDouble), labels({0}));
          other.add_curves(curves);
        }).find("one size and one step") != std::string::npos);
}

TEST_CASE("metrics: the separable Gaussian blur") {
  SUBCASE("a delta spreads as the outer product of the normalised 1-D kernel") {
    auto x = torch::zeros({1, 1, 11, 11}, torch::kDouble);
    x[0][0][5][5] = 1.0;
    const auto y = igrad::gaussian_blur(x, 3, 1.0, igrad::BlurPadding::zeros);
    const double z = 1 + 2 * std::exp(-0.5);
    CHECK(y[0][0][5][5].item<double>() == doctest::Approx(1 / (z * z)));
    CHECK(y[0][0][5][6].item<double>() == doctest::Approx(std::exp(-0.5) / (z * z)));
    CHECK(y[0][0][4][6].item<double>() == doctest::Approx(std::exp(-1.0) / (z * z)));
    CHECK(y[0][0][5][7].item<double>() == 0.0);
    CHECK(y.sum().item<double>() == doctest::Approx(1.0));
  }
  SUBCASE("RISE's default kernel 11, σ 5") {
    auto x = torch::zeros({1, 1, 21, 21}, torch::kDouble);
    x[0][0][10][10] = 1.0;
    const auto y = igrad::gaussian_blur(x);
    double z = 0;
    for (int k = -5; k <= 5; ++k) z += std::exp(-k * k / 50.0);
    CHECK(y[0][0][10][10].item<double>() == doctest::Approx(1 / (z * z)));
    CHECK(y[0][0][10][15].item<double>() == doctest::Approx(std::exp(-0.5) / (z * z)));
    CHECK(y[0][0][10][16].item<double>() == 0.0);
  }
  SUBCASE("replicate and reflect keep a constant image; zeros darkens the border") {
    const auto x = torch::full({2, 3, 8, 8}, 0.3, torch::kDouble);
    CHECK(max_abs_diff(igrad::gaussian_blur(x, 11, 5, igrad::BlurPadding::replicate), x) < 1e-12);
    CHECK(max_abs_diff(igrad::gaussian_blur(x, 5, 2, igrad::BlurPadding::reflect), x) < 1e-12);
    CHECK(igrad::gaussian_blur(x, 5, 2, igrad::BlurPadding::zeros)[0][0][0][0].item<double>() < 0.3);
    const auto small = torch::full({1, 1, 4, 4}, 0.3, torch::kDouble);  // 5-px padding > 3
    CHECK(error_of([&] { igrad::gaussian_blur(small, 11, 5, igrad::BlurPadding::reflect); })
              .find("reflect padding") != std::string::npos);
    CHECK(error_of([&] { igrad::gaussian_blur(x, 4, 5); }).find("odd") != std::string::npos);
  }
}

TEST_CASE("metrics: RISE's blur convention, against a folded kernel and an explicit 2-D convolution") {
  // The 1-D kernel by another formulation than the library's: scipy's reflect extension of an
  // n-sample line is mirror-symmetric and periodic with period 2n, so the unit point at c has
  // copies at c + 2nt and −1 − c + 2nt; a_i adds the Gaussian weight of every copy within the
  // radius R = ⌊4σ + 0.5⌋ of i.
  const auto folded_kernel = [](int n, double sigma) {
    const int radius = static_cast<int>(4 * sigma + 0.5), c = n / 2;
    double z = 0;
    for (int j = -radius; j <= radius; ++j) z += std::exp(-j * j / (2 * sigma * sigma));
    std::vector<double> a(static_cast<size_t>(n), 0.0);
    for (int i = 0; i < n; ++i)
      for (int t = -4; t <= 4; ++t)
        for (int copy : {c + 2 * n * t, -1 - c + 2 * n * t})
          if (std::abs(copy - i) <= radius)
            a[static_cast<size_t>(i)] += std::exp(-(copy - i) * (copy - i) / (2 * sigma * sigma)) / z;
    return a;
  };
  SUBCASE("the kernel of RISE's gkern(11, 5), with two values by hand") {
    double z = 0;
    for (int j = -20; j <= 20; ++j) z += std::exp(-j * j / 50.0);
    const auto a = folded_kernel(11, 5.0);
    // a_0 collects offsets 5, −6, 16, −17; the centre 0 and ±11.
    CHECK(a[0] == doctest::Approx((std::exp(-0.5) + std::exp(-0.72) + std::exp(-5.12) + std::exp(-5.78)) / z).epsilon(1e-14));
    CHECK(a[5] == doctest::Approx((1 + 2 * std::exp(-2.42)) / z).epsilon(1e-14));
    const auto k = igrad::rise_blur_kernel(11, 5.0);
    REQUIRE(k.size(0) == 11);
    double sum = 0;
    for (int i = 0; i < 11; ++i) {
      CHECK(k[i].item<double>() == doctest::Approx(a[static_cast<size_t>(i)]).epsilon(1e-12));
      sum += k[i].item<double>();
    }
    CHECK(sum == doctest::Approx(1.0).epsilon(1e-12));
    // Flatter than the sampled Gaussian of the default convention (its centre is 1 / Σ_{|k|≤5}).
    double sampled = 0;
    for (int j = -5; j <= 5; ++j) sampled += std::exp(-j * j / 50.0);
    CHECK(k[5].item<double>() < 1 / sampled);
  }
  SUBCASE("a narrow Gaussian does not reach the border: the truncated sampled Gaussian") {
    const auto k = igrad::rise_blur_kernel(11, 0.5);  // R = 2
    const double z = 1 + 2 * std::exp(-2.0) + 2 * std::exp(-8.0);
    CHECK(k[5].item<double>() == doctest::Approx(1 / z).epsilon(1e-14));
    CHECK(k[6].item<double>() == doctest::Approx(std::exp(-2.0) / z).epsilon(1e-14));
    CHECK(k[3].item<double>() == doctest::Approx(std::exp(-8.0) / z).epsilon(1e-14));
    CHECK(k[8].item<double>() == 0.0);
    CHECK(error_of([] { igrad::rise_blur_kernel(4, 5.0); }).find("odd") != std::string::npos);
  }
  SUBCASE("insertion starts from the explicit 2-D convolution, zero-padded in normalised space") {
    torch::manual_seed(11);
    const int64_t channels = 2, h = 7, w = 9;
    const auto x = torch::randn({1, channels, h, w}, torch::kDouble);
    const auto a = folded_kernel(11, 5.0);
    auto expected = torch::zeros({channels, h, w}, torch::kDouble);
    const auto xa = x.accessor<double, 4>();
    auto ea = expected.accessor<double, 3>();
    for (int64_t ch = 0; ch < channels; ++ch)
      for (int64_t row = 0; row < h; ++row)
        for (int64_t col = 0; col < w; ++col)
          for (int64_t u = 0; u < 11; ++u)
            for (int64_t v = 0; v < 11; ++v) {
              const int64_t r = row + u - 5, s = col + v - 5;
              if (r >= 0 && r < h && s >= 0 && s < w)  // outside: 0 in normalised space
                ea[ch][row][col] += a[static_cast<size_t>(u)] * a[static_cast<size_t>(v)] * xa[0][ch][r][s];
            }
    Recorder recorder;
    // A normalisation is given, and RISE's convention does not use it for the blur.
    const auto options = igrad::CausalOptions()
                             .normalization(igrad::DatasetNormalization({0.1, 0.2}, {0.5, 0.3}))
                             .blur_convention(igrad::BlurConvention::rise)
                             .pixels_per_step(h * w);
    igrad::insertion(recorder, x, torch::rand({1, h, w}, torch::kDouble), labels({0}), options);
    REQUIRE(recorder->last.size(0) == 2);  // the substrate (point 0), then the image (point 1)
    CHECK(max_abs_diff(recorder->last[0], expected) < 1e-12);
    CHECK(recorder->last[1].equal(x[0]));
    // The default convention starts elsewhere (sampled kernel, replicate padding in pixel space).
    igrad::insertion(recorder, x, torch::rand({1, h, w}, torch::kDouble), labels({0}),
                     igrad::CausalOptions(options).blur_convention(igrad::BlurConvention::sampled));
    CHECK(max_abs_diff(recorder->last[0], expected) > 1e-3);
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("metrics: pointing game with a tolerance of 15 px at 224 px, scaled") {
  CHECK(igrad::pointing_tolerance(224) == doctest::Approx(15.0));
  CHECK(igrad::pointing_tolerance(28) == doctest::Approx(1.875));
  CHECK(igrad::pointing_tolerance(64, igrad::PointingOptions().tolerance(3.0)) == 3.0);

  // 28×28, radius 1.875 px; box columns 10..14 and rows 10..14 (x1 = y1 = 15 exclusive).
  const auto box = torch::tensor({10, 10, 15, 15}, torch::kLong).view({1, 4});
  const auto peak = [](int64_t row, int64_t col) {
    auto m = torch::full({1, 28, 28}, 0.1);
    m[0][row][col] = 1.0;
    return m;
  };
  const auto hit = [&](int64_t row, int64_t col, const igrad::PointingOptions& o = {},
                       const torch::Tensor& b = {}) {
    return igrad::pointing_hits(peak(row, col), b.defined() ? b : box, o)[0].item<bool>();
  };
  CHECK(hit(12, 12));        // inside
  CHECK(hit(12, 15));        // 1 px right of the last column
  CHECK_FALSE(hit(12, 16));  // 2 px > 1.875
  CHECK(hit(15, 15));        // diagonal: 1² + 1² = 2 <= 3.52
  CHECK_FALSE(hit(16, 15));  // 1² + 2² = 5 > 3.52
  CHECK_FALSE(hit(12, 15, igrad::PointingOptions().tolerance(0.0)));
  CHECK(hit(12, 14, igrad::PointingOptions().tolerance(0.0)));

  SUBCASE("box ends: exclusive by default, inclusive on request") {
    const auto b = torch::tensor({10, 10, 14, 14}, torch::kLong).view({1, 4});
    const auto exact = igrad::PointingOptions().tolerance(0.0);
    CHECK_FALSE(hit(12, 14, exact, b));  // column 14 is past an exclusive end
    CHECK(hit(12, 14, igrad::PointingOptions().tolerance(0.0).box_end_inclusive(true), b));
    const auto inclusive = igrad::boxes_to_masks(b, 28, 28, true);
    const auto exclusive = igrad::boxes_to_masks(b, 28, 28, false);
    CHECK(inclusive.sum().item<int64_t>() == 25);
    CHECK(exclusive.sum().item<int64_t>() == 16);
    CHECK(exclusive[0][13][13].item<bool>());
    CHECK_FALSE(exclusive[0][14][13].item<bool>());
  }
  SUBCASE("masks work like boxes") {
    const auto masks = igrad::boxes_to_masks(box, 28, 28);
    CHECK(igrad::pointing_hits(peak(12, 15), masks)[0].item<bool>());
    CHECK_FALSE(igrad::pointing_hits(peak(12, 16), masks)[0].item<bool>());
  }
  SUBCASE("ties: the first maximum in row-major order") {
    const auto flat = torch::full({1, 28, 28}, 0.5);
    CHECK(igrad::pointing_hits(flat, torch::tensor({0, 0, 1, 1}).view({1, 4}),
                               igrad::PointingOptions().tolerance(0.0))[0].item<bool>());
    CHECK_FALSE(igrad::pointing_hits(flat, box)[0].item<bool>());
  }
  SUBCASE("accumulated in %") {
    igrad::PointingAccumulator acc;
    acc.add(torch::cat({peak(12, 12), peak(12, 16), peak(15, 15)}), box.repeat({3, 1}));
    acc.add(peak(0, 0), box);
    CHECK(acc.result().pointing_game == doctest::Approx(50.0));
    CHECK(acc.result().images == 4);
  }
}

TEST_CASE("metrics: energy-based pointing game") {
  // 4×4 map: 1 in the 2×2 box (rows 1..2, cols 0..1), 0.5 elsewhere -> 4 / (4 + 12 · 0.5) = 0.4.
  auto map = torch::full({1, 4, 4}, 0.5, torch::kDouble);
  map.slice(1, 1, 3).slice(2, 0, 2).fill_(1.0);
  const auto box = torch::tensor({0, 1, 2, 3}).view({1, 4});
  CHECK(igrad::energy_pointing(map, box)[0].item<double>() == doctest::Approx(0.4));
  CHECK(igrad::energy_pointing(map, igrad::boxes_to_masks(box, 4, 4))[0].item<double>() ==
        doctest::Approx(0.4));
  CHECK(igrad::energy_pointing(torch::zeros({1, 4, 4}), box)[0].item<double>() == 0.0);
  igrad::PointingAccumulator acc;
  acc.add(torch::cat({map, torch::ones({1, 4, 4}, torch::kDouble)}), box.repeat({2, 1}));
  CHECK(acc.result().energy_pointing_game == doctest::Approx(100 * (0.4 + 4.0 / 16) / 2));
}

TEST_CASE("metrics: everything follows the input's device") {
  const auto device = torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  torch::manual_seed(11);
  SmallConv net(3);
  net->to(device, torch::kDouble);
  igrad::AnyModel model(net);
  const auto x = torch::randn({4, 1, 6, 6}, torch::kDouble);
  const auto maps = torch::rand({4, 6, 6}, torch::kDouble);
  const auto y = labels({0, 1, 2, 0});
  const auto box = torch::tensor({1, 1, 4, 4}).repeat({4, 1});
  const auto f_here = igrad::faithfulness(model, x.to(device), maps.to(device), y.to(device));
  const auto curves = igrad::insertion(model, x.to(device), maps.to(device), y.to(device));
  // Compare device types: torch::Device(kCUDA) has no index, a tensor's device has one.
  CHECK(curves.probabilities.device().type() == device.type());
  CHECK(curves.auc.device().type() == device.type());
  CHECK(igrad::pointing_hits(maps.to(device), box).device().type() == device.type());
  CHECK(igrad::energy_pointing(maps.to(device), box).device().type() == device.type());
  // Same numbers as a hand-rolled CPU computation of p and o.
  net->to(torch::kCPU);
  torch::NoGradGuard no_grad;
  const auto p = torch::softmax(net->forward(x), 1).gather(1, y.view({-1, 1})).view(-1);
  const auto o = torch::softmax(net->forward(x * maps.unsqueeze(1)), 1).gather(1, y.view({-1, 1})).view(-1);
  const auto drop = (torch::clamp_min(p - o, 0) / p).mean().item<double>() * 100;
  CHECK(f_here.average_drop == doctest::Approx(drop).epsilon(1e-9));
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("metrics: misuse gives clear igrad errors") {
  Probe probe(1.0);
  igrad::AnyModel model(probe);
  const auto x = constant_images({1, 2});
  const auto y = labels({0, 1});
  const auto maps = torch::full({2, 4, 4}, 0.5, torch::kDouble);
  const auto contains = [](const std::string& message, const std::string& part) {
    INFO(message);
    CHECK(message.find(part) != std::string::npos);
  };
  contains(error_of([&] { igrad::faithfulness(model, x, torch::full({2, 5, 4}, 0.5, torch::kDouble), y); }),
           "expected maps of shape [2, 4, 4]");
  contains(error_of([&] { igrad::faithfulness(model, x, maps.slice(0, 0, 1), y); }),
           "expected maps of shape [2, 4, 4]");
  contains(error_of([&] { igrad::faithfulness(model, x, maps * 3, y); }), "expected values in [0, 1]");
  contains(error_of([&] { igrad::faithfulness(model, x, maps - 1, y); }), "expected values in [0, 1]");
  auto nan_maps = maps.clone();
  nan_maps[1][2][2] = std::nan("");
  contains(error_of([&] { igrad::deletion(model, x, nan_maps, y); }), "NaN or infinite");
  contains(error_of([&] { igrad::faithfulness(model, x, maps, labels({0, 2})); }),
           "expected class indices in [0, 2)");
  contains(error_of([&] { igrad::insertion(model, x, maps, labels({-1, 0})); }),
           "expected class indices in [0, 2)");
  contains(error_of([&] { igrad::faithfulness(model, x, maps, labels({0})); }), "one per sample");
  contains(error_of([] { igrad::FaithfulnessAccumulator().result(); }), "empty dataset");
  contains(error_of([] { igrad::CausalAccumulator(igrad::CausalMetric::deletion).result(); }),
           "empty dataset");
  contains(error_of([] { igrad::PointingAccumulator().result(); }), "empty dataset");
  contains(error_of([&] { igrad::deletion(model, x.slice(0, 0, 0), maps.slice(0, 0, 0), y.slice(0, 0, 0)); }),
           "empty batch");
  contains(error_of([&] {
             igrad::faithfulness(model, x, maps, y,
                                 igrad::MaskingOptions().normalization(igrad::DatasetNormalization({0.1, 0.2}, {1.0, 1.0})));
           }),
           "expected one value per channel");
  contains(error_of([&] {
             igrad::faithfulness(model, x, maps, y,
                                 igrad::MaskingOptions().normalization(igrad::DatasetNormalization({0.1}, {0.0})));
           }),
           "expected values > 0");
  contains(error_of([&] { igrad::deletion(model, x, maps, y, igrad::CausalOptions().pixels_per_step(0)); }),
           "expected at least 1");
  const auto m28 = torch::full({1, 28, 28}, 0.5);
  contains(error_of([&] { igrad::pointing_hits(m28, torch::tensor({20, 20, 30, 25}).view({1, 4})); }),
           "outside the 28x28 image");
  contains(error_of([&] { igrad::pointing_hits(m28, torch::tensor({5, 5, 5, 9}).view({1, 4})); }),
           "or is empty");
  contains(error_of([&] { igrad::pointing_hits(m28, torch::tensor({1, 1, 3, 3}).view({1, 4}).repeat({2, 1})); }),
           "one box per map");
  contains(error_of([&] { igrad::energy_pointing(m28, torch::zeros({1, 28, 28})); }), "mask is empty");
  contains(error_of([&] { igrad::energy_pointing(m28, torch::ones({1, 27, 28})); }), "expected boxes [1, 4]");
  contains(error_of([&] { igrad::pointing_hits(m28, torch::tensor({1.5, 1.0, 3.0, 3.0}).view({1, 4})); }),
           "whole pixel indices");
  contains(error_of([&] { igrad::faithfulness(model, torch::ones({2, 4, 4}, torch::kDouble), maps, y); }),
           "[N, C, H, W]");
}

// ---------------------------------------------------------------------------------------------
// Sparseness, Complexity, Spearman's rank correlation and the model parameter randomisation test
// (Adebayo et al. 2018): each against a formulation written here.

namespace {

/// Gini index by its pairwise definition `Σ_i Σ_j |a_i − a_j| / (2 P Σ a)`, not the sorted form.
double gini_pairwise(const std::vector<double>& a) {
  double differences = 0, total = 0;
  for (double u : a) {
    total += u;
    for (double v : a) differences += std::abs(u - v);
  }
  return total == 0 ? 0.0 : differences / (2.0 * static_cast<double>(a.size()) * total);
}

/// `−Σ p ln p` of `p = |a| / Σ|a|`, by a loop.
double entropy_loop(const std::vector<double>& a) {
  double total = 0;
  for (double v : a) total += std::abs(v);
  double h = 0;
  for (double v : a) {
    const double p = std::abs(v) / total;
    if (p > 0) h -= p * std::log(p);
  }
  return h;
}

std::vector<double> values_of(const torch::Tensor& t) {
  const auto flat = t.detach().to(torch::kDouble).flatten().contiguous();
  return {flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel()};
}

/// Ranks by counting: `1 + #{v_j < v_i} + #{j ≠ i: v_j = v_i} / 2` (the average rank of a tie).
std::vector<double> ranks_by_counting(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    double below = 0, equal = 0;
    for (size_t j = 0; j < v.size(); ++j) {
      if (v[j] < v[i]) below += 1;
      if (j != i && v[j] == v[i]) equal += 1;
    }
    r[i] = 1 + below + equal / 2;
  }
  return r;
}

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  double ma = 0, mb = 0;
  for (size_t i = 0; i < a.size(); ++i) ma += a[i], mb += b[i];
  ma /= static_cast<double>(a.size()), mb /= static_cast<double>(b.size());
  double c = 0, va = 0, vb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    c += (a[i] - ma) * (b[i] - mb);
    va += (a[i] - ma) * (a[i] - ma);
    vb += (b[i] - mb) * (b[i] - mb);
  }
  return c / std::sqrt(va * vb);
}

/// The conv net with one more Linear layer, registered last and never used: randomising it
/// cannot change any explanation.
struct WithSpareImpl : torch::nn::Module {
  WithSpareImpl() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 3, 3).padding(1)));
    fc = register_module("fc", torch::nn::Linear(3 * 3 * 3, 3));
    spare = register_module("spare", torch::nn::Linear(4, 4));
  }
  torch::Tensor forward(torch::Tensor x) {
    return fc(torch::max_pool2d(torch::relu(conv(x)), 2).flatten(1));
  }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::Linear fc{nullptr}, spare{nullptr};
};
TORCH_MODULE(WithSpare);

/// |∂y_c/∂x| summed over channels, divided by its maximum: an explainer written here with
/// `autograd::grad`, so that it touches no parameter's `.grad`.
igrad::Explainer gradient_explainer() {
  return {"Gradient", [](const igrad::AnyModel& model, const torch::Tensor& x,
                         const torch::Tensor& targets) {
            const auto input = x.detach().clone().requires_grad_(true);
            const auto score = model.forward(input).gather(1, targets.view({-1, 1})).sum();
            const auto g = torch::autograd::grad({score}, {input})[0].abs().sum(1);
            return g / g.flatten(1).amax(1).clamp_min(1e-12).view({-1, 1, 1});
          }};
}

/// A map that ignores the model: the first channel of the image, min-max scaled.
igrad::Explainer image_explainer() {
  return {"Image", [](const igrad::AnyModel&, const torch::Tensor& x, const torch::Tensor&) {
            const auto m = x.select(1, 0);
            const auto low = m.flatten(1).amin(1).view({-1, 1, 1});
            const auto high = m.flatten(1).amax(1).view({-1, 1, 1});
            return (m - low) / (high - low).clamp_min(1e-12);
          }};
}

/// Snapshot of a module: parameter and buffer values, their `.grad`, and the mode.
struct ModuleSnapshot {
  explicit ModuleSnapshot(const torch::nn::Module& m) : training(m.is_training()) {
    for (const auto& p : m.parameters()) {
      values.push_back(p.detach().clone());
      grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    }
    for (const auto& b : m.buffers()) values.push_back(b.detach().clone());
  }
  bool same_as(const ModuleSnapshot& other) const {
    if (training != other.training || values.size() != other.values.size()) return false;
    for (size_t i = 0; i < values.size(); ++i)
      if (!torch::equal(values[i], other.values[i])) return false;
    for (size_t i = 0; i < grads.size(); ++i)
      if (grads[i].defined() != other.grads[i].defined() ||
          (grads[i].defined() && !torch::equal(grads[i], other.grads[i])))
        return false;
    return true;
  }
  bool training;
  std::vector<torch::Tensor> values, grads;
};

}  // namespace

TEST_CASE("metrics: Sparseness is the Gini index of the absolute map") {
  const int64_t n = 16;
  auto one_hot = torch::zeros({1, 4, 4}, torch::kDouble);
  one_hot[0][2][1] = 0.7;
  CHECK(igrad::sparseness(one_hot)[0].item<double>() == doctest::Approx(1.0 - 1.0 / n).epsilon(1e-15));
  CHECK(igrad::sparseness(torch::full({1, 4, 4}, 0.3))[0].item<double>() == doctest::Approx(0).epsilon(1e-15));
  // An all-zero map counts as constant (0/0 -> 0), never NaN.
  CHECK(igrad::sparseness(torch::zeros({1, 4, 4}))[0].item<double>() == 0.0);
  // {0, 1, 2, 3}: Σ|a_i − a_j| = 20 over ordered pairs, 2 · 4 · 6 = 48 -> 5/12.
  CHECK(igrad::sparseness(torch::tensor({0.0, 1.0, 2.0, 3.0}, torch::kDouble).view({1, 2, 2}))[0].item<double>() ==
        doctest::Approx(5.0 / 12).epsilon(1e-14));
  torch::manual_seed(3);
  const auto maps = torch::randn({3, 5, 7}, torch::kDouble);  // signed: taken in absolute value
  const auto s = igrad::sparseness(maps);
  const auto with_offset = igrad::sparseness(maps, 1e-7);
  REQUIRE(s.sizes() == torch::IntArrayRef({3}));
  for (int64_t i = 0; i < 3; ++i) {
    auto a = values_of(maps[i].abs());
    CHECK(s[i].item<double>() == doctest::Approx(gini_pairwise(a)).epsilon(1e-12));
    for (double& v : a) v += 1e-7;  // Quantus' offset
    CHECK(with_offset[i].item<double>() == doctest::Approx(gini_pairwise(a)).epsilon(1e-12));
  }
  CHECK(torch::equal(igrad::sparseness(-maps), s));
  CHECK(igrad::sparseness(maps.to(torch::kFloat)).dtype() == torch::kDouble);
}

TEST_CASE("metrics: Complexity is the entropy of the fractional contributions") {
  auto one_hot = torch::zeros({1, 4, 4}, torch::kDouble);
  one_hot[0][0][3] = -2.0;
  CHECK(igrad::complexity(one_hot)[0].item<double>() == 0.0);
  CHECK(igrad::complexity(torch::full({1, 4, 4}, 0.3))[0].item<double>() == doctest::Approx(std::log(16.0)).epsilon(1e-12));
  CHECK(igrad::complexity(torch::zeros({1, 4, 4}))[0].item<double>() == doctest::Approx(std::log(16.0)).epsilon(1e-12));
  // Two values 1 and 3: p = 1/4, 3/4.
  auto two = torch::zeros({1, 2, 2}, torch::kDouble);
  two[0][0][0] = 1.0, two[0][1][1] = 3.0;
  CHECK(igrad::complexity(two)[0].item<double>() ==
        doctest::Approx(-(0.25 * std::log(0.25) + 0.75 * std::log(0.75))).epsilon(1e-14));
  torch::manual_seed(4);
  const auto maps = torch::randn({3, 6, 5}, torch::kDouble);
  const auto c = igrad::complexity(maps);
  for (int64_t i = 0; i < 3; ++i)
    CHECK(c[i].item<double>() == doctest::Approx(entropy_loop(values_of(maps[i]))).epsilon(1e-12));
}

TEST_CASE("metrics: the Sparseness / Complexity accumulator is split-invariant and evaluate adds the columns on request") {
  torch::manual_seed(5);
  const auto maps = torch::rand({5, 4, 4}, torch::kDouble);
  igrad::ComplexityAccumulator whole, split;
  whole.add(maps);
  split.add(maps.slice(0, 0, 2));
  split.add(maps.slice(0, 2, 5));
  double s = 0, c = 0;
  for (int64_t i = 0; i < 5; ++i) {
    s += gini_pairwise(values_of(maps[i])) / 5;
    c += entropy_loop(values_of(maps[i])) / 5;
  }
  CHECK(whole.result().sparseness == doctest::Approx(s).epsilon(1e-12));
  CHECK(whole.result().complexity == doctest::Approx(c).epsilon(1e-12));
  CHECK(split.result().sparseness == whole.result().sparseness);
  CHECK(split.result().complexity == whole.result().complexity);
  CHECK(whole.result().images == 5);

  SmallConv net(3);
  net->to(torch::kDouble);
  igrad::AnyModel model(net);
  const auto x = torch::rand({5, 1, 6, 6}, torch::kDouble);
  const auto y = labels({0, 1, 2, 0, 1});
  const auto options = igrad::EvaluationOptions().causal(false).progress(false).batch_size(2);
  const auto plain = igrad::evaluate(model, {image_explainer()}, {x, y}, options);
  CHECK(plain.metrics() == std::vector<std::string>{"AD", "AI", "AG"});
  const auto table = igrad::evaluate(model, {image_explainer()}, {x, y},
                                     igrad::EvaluationOptions(options).complexity_metrics(true));
  CHECK(table.metrics() == std::vector<std::string>{"AD", "AI", "AG", "Sparseness", "Complexity"});
  const auto shown = image_explainer().maps(model, x, y);
  double s_image = 0, c_image = 0;
  for (int64_t i = 0; i < 5; ++i) {
    s_image += gini_pairwise(values_of(shown[i])) / 5;
    c_image += entropy_loop(values_of(shown[i])) / 5;
  }
  CHECK(table.at("Image", "Sparseness") == doctest::Approx(s_image).epsilon(1e-12));
  CHECK(table.at("Image", "Complexity") == doctest::Approx(c_image).epsilon(1e-12));
  CHECK(table.at("Image", "AD") == plain.at("Image", "AD"));
}

TEST_CASE("metrics: Spearman's rank correlation against hand-ranked maps with ties") {
  // a = [1, 2, 2, 3] ranks [1, 2.5, 2.5, 4]; b = [4, 1, 3, 3] ranks [4, 1, 2.5, 2.5]:
  // deviations from 2.5: [−1.5, 0, 0, 1.5] and [1.5, −1.5, 0, 0] -> −2.25 / 4.5 = −0.5.
  const auto a = torch::tensor({1.0, 2.0, 2.0, 3.0}, torch::kDouble).view({1, 2, 2});
  const auto b = torch::tensor({4.0, 1.0, 3.0, 3.0}, torch::kDouble).view({1, 2, 2});
  CHECK(igrad::spearman_correlation(a, b)[0].item<double>() == doctest::Approx(-0.5).epsilon(1e-15));
  CHECK(igrad::spearman_correlation(a, a * 10 + 1)[0].item<double>() == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(igrad::spearman_correlation(a, -a)[0].item<double>() == doctest::Approx(-1.0).epsilon(1e-15));
  // Constant maps: 1 when both are, 0 when one is.
  const auto flat = torch::full({1, 2, 2}, 0.5, torch::kDouble);
  CHECK(igrad::spearman_correlation(flat, flat)[0].item<double>() == 1.0);
  CHECK(igrad::spearman_correlation(flat, a)[0].item<double>() == 0.0);
  // Random maps with many ties, per image, against ranks by counting.
  torch::manual_seed(6);
  const auto u = torch::randint(0, 4, {3, 5, 5}).to(torch::kDouble);
  const auto v = torch::randint(0, 4, {3, 5, 5}).to(torch::kDouble);
  const auto rho = igrad::spearman_correlation(u, v);
  for (int64_t i = 0; i < 3; ++i)
    CHECK(rho[i].item<double>() ==
          doctest::Approx(pearson(ranks_by_counting(values_of(u[i])), ranks_by_counting(values_of(v[i])))).epsilon(1e-12));
  CHECK_THROWS_AS(igrad::spearman_correlation(a, b.view({1, 4})), igrad::InvalidArgument);
}

TEST_CASE("metrics: model randomisation, layer by layer from the output, on a copy") {
  torch::manual_seed(8);
  WithSpare net;
  const auto x = torch::randn({3, 1, 6, 6});
  const auto y = labels({0, 1, 2});
  CHECK(igrad::randomisation_layers(net) == std::vector<std::string>{"spare", "fc", "conv"});
  // Not Cloneable: a fresh model of the same architecture receives the weights.
  const auto make = [] { return WithSpare(); };

  SUBCASE("a layer that does not influence the map gives correlation 1, the others less") {
    const auto r = igrad::model_randomisation(net, make, gradient_explainer(), x, y);
    CHECK(r.method == "Gradient");
    CHECK(r.layers == std::vector<std::string>{"spare", "fc", "conv"});
    REQUIRE(r.spearman.sizes() == torch::IntArrayRef({3, 3}));
    for (int64_t i = 0; i < 3; ++i) CHECK(r.spearman[0][i].item<double>() == 1.0);
    CHECK(r.mean_spearman[0] == 1.0);
    CHECK(r.mean_spearman[1] < 0.99);
    CHECK(r.mean_spearman[2] < 0.99);
    const auto unaffected = igrad::model_randomisation(net, make, image_explainer(), x, y);
    for (double m : unaffected.mean_spearman) CHECK(m == 1.0);
  }
  SUBCASE("each step's correlations are Spearman's of the kept maps, by counting") {
    const auto r = igrad::model_randomisation(net, make, gradient_explainer(), x, y,
                                              igrad::RandomisationOptions().keep_maps(true));
    REQUIRE(r.maps.size() == 3);
    for (size_t step = 0; step < 3; ++step) {
      double mean = 0;
      for (int64_t i = 0; i < 3; ++i) {
        const double expected = pearson(ranks_by_counting(values_of(r.original_maps[i])),
                                        ranks_by_counting(values_of(r.maps[step][i])));
        if (step > 0) CHECK(r.spearman[static_cast<int64_t>(step)][i].item<double>() == doctest::Approx(expected).epsilon(1e-12));
        mean += r.spearman[static_cast<int64_t>(step)][i].item<double>() / 3;
      }
      CHECK(r.mean_spearman[step] == doctest::Approx(mean).epsilon(1e-14));
    }
    // The original maps are the explainer's on the model itself.
    CHECK(max_abs_diff(r.original_maps, gradient_explainer().maps(igrad::AnyModel(net), x, y)) < 1e-6);
  }
  SUBCASE("the weights are redrawn uniformly in ±1/√fan_in from the seeded generator, cascading or independently") {
    // An explainer that records the copy's parameters (conv.weight, conv.bias, fc.weight, ...).
    std::vector<std::vector<torch::Tensor>> seen;
    igrad::Explainer recorder{"Recorder", [&](const igrad::AnyModel& model, const torch::Tensor& in,
                                              const torch::Tensor&) {
                                std::vector<torch::Tensor> ps;
                                for (const auto& p : model.parameters()) ps.push_back(p.detach().clone());
                                seen.push_back(ps);
                                return image_explainer().maps(model, in, {});
                              }};
    // Draws by the documented rule, in order spare (weight, bias), fc, conv; fan_in = numel/size(0).
    auto generator = at::make_generator<at::CPUGeneratorImpl>(uint64_t{42});
    const auto draw = [&](const torch::Tensor& like, double fan_in) {
      return ((torch::rand(like.sizes(), generator, torch::dtype(torch::kDouble)) * 2 - 1) / std::sqrt(fan_in))
          .to(torch::kFloat);
    };
    const auto spare_w = draw(net->spare->weight, 4), spare_b = draw(net->spare->bias, 4);
    const auto fc_w = draw(net->fc->weight, 27), fc_b = draw(net->fc->bias, 27);
    const auto conv_w = draw(net->conv->weight, 9), conv_b = draw(net->conv->bias, 9);
    // model.parameters(): conv.weight, conv.bias, fc.weight, fc.bias, spare.weight, spare.bias.
    igrad::model_randomisation(net, make, recorder, x, y);
    REQUIRE(seen.size() == 4);
    CHECK(torch::equal(seen[0][0], net->conv->weight));
    CHECK(torch::equal(seen[1][4], spare_w));
    CHECK(torch::equal(seen[1][5], spare_b));
    CHECK(torch::equal(seen[1][2], net->fc->weight));
    CHECK(torch::equal(seen[2][2], fc_w));
    CHECK(torch::equal(seen[2][3], fc_b));
    CHECK(torch::equal(seen[2][4], spare_w));  // cascading: spare stays randomised
    CHECK(torch::equal(seen[2][0], net->conv->weight));
    CHECK(torch::equal(seen[3][0], conv_w));
    CHECK(torch::equal(seen[3][1], conv_b));
    CHECK(torch::equal(seen[3][2], fc_w));
    seen.clear();
    igrad::model_randomisation(net, make, recorder, x, y,
                               igrad::RandomisationOptions().order(igrad::RandomisationOrder::independent));
    REQUIRE(seen.size() == 4);
    CHECK(torch::equal(seen[2][2], fc_w));
    CHECK(torch::equal(seen[2][4], net->spare->weight));  // independent: spare restored
    CHECK(torch::equal(seen[3][0], conv_w));
    CHECK(torch::equal(seen[3][2], net->fc->weight));
    seen.clear();
    igrad::model_randomisation(net, make, recorder, x, y, igrad::RandomisationOptions().seed(7));
    CHECK(!torch::equal(seen[2][2], fc_w));
  }
  SUBCASE("the user's model is unchanged: parameters, buffers, .grad, mode, global random stream") {
    SmallConv bn_net(3, true);
    bn_net->train();
    bn_net->forward(torch::randn({4, 1, 6, 6}));  // non-trivial running statistics
    bn_net->fc->weight.mutable_grad() = torch::full_like(bn_net->fc->weight, 0.25);
    const ModuleSnapshot before(*bn_net);
    torch::manual_seed(123);
    const auto expected_draw = torch::rand({4});
    torch::manual_seed(123);
    const auto r = igrad::model_randomisation(bn_net, [] { return SmallConv(3, true); },
                                              gradient_explainer(), x, y);
    CHECK(torch::equal(torch::rand({4}), expected_draw));
    CHECK(ModuleSnapshot(*bn_net).same_as(before));
    CHECK(bn_net->is_training());
    CHECK(r.layers == std::vector<std::string>{"fc", "bn", "conv"});
    // A Cloneable model (Sequential) takes the overload without make_model.
    torch::nn::Sequential seq(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3)),
                              torch::nn::ReLU(), torch::nn::Flatten(),
                              torch::nn::Linear(2 * 4 * 4, 3));
    const ModuleSnapshot seq_before(*seq);
    const auto s = igrad::model_randomisation(seq, gradient_explainer(), x, y);
    CHECK(s.layers == std::vector<std::string>{"3", "0"});
    CHECK(ModuleSnapshot(*seq).same_as(seq_before));
    CHECK(s.mean_spearman[0] < 0.99);
    // A module seen through an adapter: the clone is wrapped by as_model; same draws, same numbers.
    const auto adapted = igrad::model_randomisation(
        seq.ptr(),
        [](const std::shared_ptr<torch::nn::Module>& m) {
          return igrad::AnyModel(torch::nn::Sequential(std::dynamic_pointer_cast<torch::nn::SequentialImpl>(m)));
        },
        gradient_explainer(), x, y);
    CHECK(ModuleSnapshot(*seq).same_as(seq_before));
    CHECK(adapted.layers == s.layers);
    CHECK(torch::equal(adapted.spearman, s.spearman));
  }
  SUBCASE("a batch gives the same numbers as its images one at a time") {
    const auto whole = igrad::model_randomisation(net, make, gradient_explainer(), x, y);
    const auto chunked = igrad::model_randomisation(net, make, gradient_explainer(), x, y,
                                                    igrad::RandomisationOptions().batch_size(2));
    CHECK(max_abs_diff(whole.spearman, chunked.spearman) < 1e-12);
    for (int64_t i = 0; i < 3; ++i) {
      const auto single = igrad::model_randomisation(net, make, gradient_explainer(), x.slice(0, i, i + 1),
                                                     y.slice(0, i, i + 1));
      CHECK(max_abs_diff(single.spearman.select(1, 0), whole.spearman.select(1, i)) < 1e-6);
    }
    // Without targets, the predicted classes.
    torch::Tensor predicted;
    {
      torch::NoGradGuard no_grad;
      predicted = net->forward(x).argmax(1);
    }
    const auto implicit = igrad::model_randomisation(net, make, gradient_explainer(), x);
    const auto explicit_ = igrad::model_randomisation(net, make, gradient_explainer(), x, predicted);
    CHECK(torch::equal(implicit.spearman, explicit_.spearman));
  }
  SUBCASE("bad input gives igrad errors") {
    const auto contains = [](const std::string& message, const std::string& part) {
      INFO(message);
      CHECK(message.find(part) != std::string::npos);
    };
    contains(error_of([&] { igrad::model_randomisation(net, make, gradient_explainer(), x.slice(0, 0, 0)); }),
             "empty batch");
    Probe probe(1.0);
    contains(error_of([&] { igrad::model_randomisation(probe, [] { return Probe(1.0); }, image_explainer(), x); }),
             "no parameters");
    contains(error_of([&] { igrad::model_randomisation(net, gradient_explainer(), x, y); }),
             "Cloneable");
    contains(error_of([&] { igrad::model_randomisation(net, [] { return WithSpare(); }, gradient_explainer(), x, labels({0, 1, 3})); }),
             "expected class indices in [0, 3)");
    SmallConv with_bn(3, true);
    contains(error_of([&] { igrad::model_randomisation(with_bn, [] { return SmallConv(3); }, gradient_explainer(), x, y); }),
             "same architecture");
    igrad::Explainer nan_maps{"NaN", [](const igrad::AnyModel&, const torch::Tensor& in, const torch::Tensor&) {
                                return torch::full({in.size(0), 6, 6}, std::nan(""));
                              }};
    CHECK_THROWS_AS(igrad::model_randomisation(net, make, nan_maps, x, y), igrad::NumericalError);
    CHECK_THROWS_AS(igrad::sparseness(torch::full({1, 2, 2}, std::nan(""))), igrad::InvalidArgument);
    CHECK_THROWS_AS(igrad::complexity(torch::zeros({0, 2, 2})), igrad::InvalidArgument);
    CHECK_THROWS_AS(igrad::ComplexityAccumulator().result(), igrad::InvalidArgument);
  }
}

TEST_CASE("metrics: the randomisation figure has the grid of maps over the correlation curve") {
  torch::manual_seed(9);
  SmallConv net(3, true);
  const auto x = torch::randn({3, 1, 6, 6});
  const auto r = igrad::model_randomisation(net, [] { return SmallConv(3, true); }, gradient_explainer(), x,
                                            labels({0, 1, 2}), igrad::RandomisationOptions().keep_maps(true));
  const auto path = (std::filesystem::temp_directory_path() / "igrad_randomisation_figure.png").string();
  std::filesystem::remove(path);
  igrad::write_randomisation_figure(path, x, r, igrad::RandomisationFigureOptions().scale(4));
  // Columns: image, original, 3 steps, cells 24 px, padding 2, a 14 px label band (text scale 1);
  // 3 rows; the plot is max(grid width, 320) wide and 240 high; the title band 18 px.
  const int64_t grid_width = 5 * (24 + 2) + 2, grid_height = 3 * (24 + 2) + 2 + 14;
  const int64_t width = std::max<int64_t>(grid_width, 320), height = 18 + grid_height + 240;
  std::ifstream png(path, std::ios::binary);
  REQUIRE(png.good());
  unsigned char header[24] = {};
  png.read(reinterpret_cast<char*>(header), 24);
  const auto big_endian = [&](int at) {
    return (int64_t{header[at]} << 24) | (int64_t{header[at + 1]} << 16) | (int64_t{header[at + 2]} << 8) |
           int64_t{header[at + 3]};
  };
  CHECK(big_endian(16) == width);
  CHECK(big_endian(20) == height);
  png.close();
  std::filesystem::remove(path);
  const auto no_maps = igrad::model_randomisation(net, [] { return SmallConv(3, true); }, gradient_explainer(), x,
                                                  labels({0, 1, 2}));
  CHECK_THROWS_AS(igrad::randomisation_figure(x, no_maps), igrad::InvalidArgument);
}

TEST_CASE("metrics: max-sensitivity is the largest relative change of the map under the drawn perturbations") {
  torch::manual_seed(10);
  SmallConv net(3);
  igrad::AnyModel model(net);
  auto x = torch::randn({3, 1, 6, 6});
  x[2].zero_();  // a map of zeros: the unnormalised change
  const auto y = labels({0, 1, 2});
  // e(x) = the image's first channel, and every input the explainer is given, recorded.
  std::vector<torch::Tensor> inputs;
  igrad::Explainer identity{"Identity", [&](const igrad::AnyModel&, const torch::Tensor& in,
                                            const torch::Tensor&) {
                              inputs.push_back(in.detach().clone());
                              return in.select(1, 0).clone();
                            }};
  const auto options = igrad::SensitivityOptions().samples(4).radius(0.1).seed(3);
  net->train();
  const auto s = igrad::max_sensitivity(model, identity, x, y, options);
  CHECK(net->is_training());
  REQUIRE(inputs.size() == 5);
  REQUIRE(s.sizes() == torch::IntArrayRef({3}));
  for (int64_t i = 0; i < 3; ++i) {
    double largest = 0, norm = 0;
    for (double v : values_of(x[i][0])) norm += v * v;
    norm = std::sqrt(norm);
    for (size_t j = 1; j < inputs.size(); ++j) {
      const auto delta = values_of(inputs[j][i][0]), base = values_of(x[i][0]);
      const auto first_image_delta = values_of(inputs[j][0] - x[0]);
      double squared = 0;
      for (size_t k = 0; k < delta.size(); ++k) {
        const double d = delta[k] - base[k];
        CHECK(std::abs(d) <= 0.1 + 1e-6);                          // in the L∞ ball
        CHECK(d == doctest::Approx(first_image_delta[k]).epsilon(1e-5));  // the same δ_j for every image
        squared += d * d;
      }
      largest = std::max(largest, std::sqrt(squared));
    }
    CHECK(s[i].item<double>() == doctest::Approx(norm > 0 ? largest / norm : largest).epsilon(1e-12));
  }
  CHECK(s[2].item<double>() > 0);
  // A batch gives the numbers of its images one at a time.
  const auto chunked = igrad::max_sensitivity(model, identity, x, y, igrad::SensitivityOptions(options).batch_size(1));
  CHECK(torch::equal(chunked, s));
  const auto single = igrad::max_sensitivity(model, identity, x.slice(0, 1, 2), y.slice(0, 1, 2), options);
  CHECK(single[0].item<double>() == s[1].item<double>());
  // A map that ignores the image does not move.
  igrad::Explainer constant{"Constant", [](const igrad::AnyModel&, const torch::Tensor& in, const torch::Tensor&) {
                              return torch::ones({in.size(0), 6, 6});
                            }};
  CHECK(igrad::max_sensitivity(model, constant, x, y).abs().max().item<double>() == 0.0);
  // Misuse.
  CHECK_THROWS_AS(igrad::max_sensitivity(model, identity, x, y, igrad::SensitivityOptions().samples(0)),
                  igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::max_sensitivity(model, identity, x, y, igrad::SensitivityOptions().radius(-1)),
                  igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::max_sensitivity(model, identity, x.slice(0, 0, 0)), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::max_sensitivity(model, identity, x, labels({0, 1, 5})), igrad::InvalidArgument);
  igrad::Explainer nan_maps{"NaN", [](const igrad::AnyModel&, const torch::Tensor& in, const torch::Tensor&) {
                              return torch::full({in.size(0), 6, 6}, std::nan(""));
                            }};
  CHECK_THROWS_AS(igrad::max_sensitivity(model, nan_maps, x, y), igrad::NumericalError);
}

namespace {

/// A feature/head model (conv → ReLU = features; GAP → Linear = head) with an unused Linear
/// registered last, for the CAM methods.
struct SplitWithSpareImpl : torch::nn::Module {
  SplitWithSpareImpl() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)));
    fc = register_module("fc", torch::nn::Linear(4, 3));
    spare = register_module("spare", torch::nn::Linear(2, 2));
  }
  torch::Tensor features(const torch::Tensor& x) { return torch::relu(conv(x)); }
  torch::Tensor head(const torch::Tensor& a) { return fc(a.mean({2, 3})); }
  torch::Tensor forward(const torch::Tensor& x) { return head(features(x)); }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::Linear fc{nullptr}, spare{nullptr};
};
TORCH_MODULE(SplitWithSpare);

}  // namespace

TEST_CASE("metrics: model randomisation of igrad's Grad-CAM keeps the copy's features/head split") {
  torch::manual_seed(12);
  SplitWithSpare net;
  const auto x = torch::randn({2, 1, 6, 6});
  const auto y = labels({0, 2});
  const auto explainers = igrad::cam_explainers(boost::hana::tuple_t<igrad::GradCam>);
  const ModuleSnapshot before(*net);
  const auto r = igrad::model_randomisation(net, [] { return SplitWithSpare(); }, explainers.front(), x, y);
  CHECK(ModuleSnapshot(*net).same_as(before));
  CHECK(r.method == "Grad-CAM");
  CHECK(r.layers == std::vector<std::string>{"spare", "fc", "conv"});
  CHECK(r.mean_spearman[0] == 1.0);  // the unused layer
  CHECK(r.mean_spearman[1] < 0.99);  // Grad-CAM's weights come from fc
  // The original maps are Grad-CAM's on the model itself.
  CHECK(max_abs_diff(r.original_maps, igrad::explain<igrad::GradCam>(igrad::AnyModel(net), x, y)) < 1e-6);
}

TEST_CASE("metrics: SSIM over 7x7 windows as scikit-image computes it, and per randomisation step") {
  torch::manual_seed(13);
  const auto a = torch::rand({2, 8, 9}, torch::kDouble);
  const auto b = torch::rand({2, 8, 9}, torch::kDouble) * 0.5;
  const auto s = igrad::structural_similarity(a, b);
  for (int64_t i = 0; i < 2; ++i) {
    const auto ai = a[i].contiguous(), bi = b[i].contiguous();
    const auto u = ai.accessor<double, 2>();
    const auto v = bi.accessor<double, 2>();
    double low = 1e300, high = -1e300;
    for (int64_t r = 0; r < 8; ++r)
      for (int64_t c = 0; c < 9; ++c)
        low = std::min(low, std::min(u[r][c], v[r][c])), high = std::max(high, std::max(u[r][c], v[r][c]));
    const double c1 = std::pow(0.01 * (high - low), 2), c2 = std::pow(0.03 * (high - low), 2);
    double total = 0;
    int windows = 0;
    for (int64_t r0 = 0; r0 + 7 <= 8; ++r0)
      for (int64_t q0 = 0; q0 + 7 <= 9; ++q0) {
        double mu = 0, mv = 0;
        for (int64_t r = r0; r < r0 + 7; ++r)
          for (int64_t c = q0; c < q0 + 7; ++c) mu += u[r][c] / 49, mv += v[r][c] / 49;
        double vu = 0, vv = 0, cuv = 0;
        for (int64_t r = r0; r < r0 + 7; ++r)
          for (int64_t c = q0; c < q0 + 7; ++c) {
            vu += (u[r][c] - mu) * (u[r][c] - mu) / 48;
            vv += (v[r][c] - mv) * (v[r][c] - mv) / 48;
            cuv += (u[r][c] - mu) * (v[r][c] - mv) / 48;
          }
        total += (2 * mu * mv + c1) * (2 * cuv + c2) / ((mu * mu + mv * mv + c1) * (vu + vv + c2));
        ++windows;
      }
    CHECK(windows == 6);
    CHECK(s[i].item<double>() == doctest::Approx(total / windows).epsilon(1e-10));
  }
  CHECK(igrad::structural_similarity(a, a).eq(1.0).all().item<bool>());
  CHECK(igrad::structural_similarity(torch::full({1, 7, 7}, 0.5), torch::full({1, 7, 7}, 0.5))[0].item<double>() == 1.0);
  CHECK_THROWS_AS(igrad::structural_similarity(torch::rand({1, 6, 9}), torch::rand({1, 6, 9})), igrad::InvalidArgument);

  SplitWithSpare net;
  const auto x = torch::randn({2, 1, 8, 8});
  const auto r = igrad::model_randomisation(net, [] { return SplitWithSpare(); }, gradient_explainer(), x,
                                            labels({0, 1}), igrad::RandomisationOptions().ssim(true).keep_maps(true));
  REQUIRE(r.ssim.sizes() == torch::IntArrayRef({3, 2}));
  CHECK(r.mean_ssim[0] == 1.0);  // the unused layer
  const auto by_max = [](const torch::Tensor& m) {
    return m.to(torch::kDouble) / m.to(torch::kDouble).flatten(1).amax(1).view({-1, 1, 1});
  };
  for (int64_t step = 1; step < 3; ++step) {
    const auto expected = igrad::structural_similarity(by_max(r.original_maps), by_max(r.maps[static_cast<size_t>(step)]));
    CHECK(max_abs_diff(r.ssim[step], expected) < 1e-12);
    CHECK(r.mean_ssim[static_cast<size_t>(step)] == doctest::Approx(expected.mean().item<double>()).epsilon(1e-12));
  }
  CHECK_THROWS_AS(igrad::model_randomisation(net, [] { return SplitWithSpare(); }, gradient_explainer(),
                                             torch::randn({1, 1, 6, 6}), labels({0}), igrad::RandomisationOptions().ssim(true)),
                  igrad::InvalidArgument);
}

// Perturbation metrics: noisy linear imputation and ROAD (Rong et al. 2022, pytorch-grad-cam's
// conventions), faithfulness correlation (Quantus) and infidelity (captum). Each is checked
// against an independent formulation written here: a dense linear system built with explicit
// loops, numpy's percentile rule, closed forms on linear models, and the perturbed images the
// model was actually given.
#include <igrad/metrics.hpp>
#include <igrad/study.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace {

std::vector<double> values_of(const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kCPU, torch::kDouble).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

/// A linear classifier over the flattened image, `logits = x.flatten(1) · W` (`W` `[C·H·W, K]`,
/// double), as an AnyModel that records every batch it is given and the mode it ran in.
struct LinearProbe {
  explicit LinearProbe(torch::Tensor w) : weights(std::move(w)) {}
  torch::Tensor weights;
  std::vector<torch::Tensor> inputs;
  bool training = false;
  bool ran_in_training = false;

  igrad::AnyModel model() {
    igrad::AnyModel::Functions f;
    f.forward = [this](const torch::Tensor& x) {
      inputs.push_back(x.detach().clone());
      ran_in_training = training;
      return x.flatten(1).to(weights.scalar_type()).matmul(weights);
    };
    f.parameters = [this] { return std::vector<torch::Tensor>{weights}; };
    f.buffers = [] { return std::vector<torch::Tensor>{}; };
    f.train = [this](bool on) { training = on; };
    f.is_training = [this] { return training; };
    return igrad::AnyModel(std::move(f));
  }
};

/// Linear imputation written out: the dense system of pytorch-grad-cam's `NoisyLinearImputer`
/// (one equation per removed pixel, weights 1/6 and 1/12 over in-image neighbours), built with
/// loops and solved by `torch::linalg_solve`, for one image `[C, H, W]` and mask `[H, W]`.
torch::Tensor dense_imputation(const torch::Tensor& image, const torch::Tensor& removed) {
  const int64_t c = image.size(0), h = image.size(1), w = image.size(2);
  std::vector<int64_t> index(static_cast<size_t>(h * w), -1);
  int64_t unknowns = 0;
  for (int64_t i = 0; i < h * w; ++i)
    if (removed.flatten()[i].item<bool>()) index[static_cast<size_t>(i)] = unknowns++;
  auto a = torch::zeros({unknowns, unknowns}, torch::kDouble);
  auto b = torch::zeros({unknowns, c}, torch::kDouble);
  const auto x = image.to(torch::kDouble);
  for (int64_t r = 0; r < h; ++r)
    for (int64_t q = 0; q < w; ++q) {
      const int64_t row = index[static_cast<size_t>(r * w + q)];
      if (row < 0) continue;
      for (int64_t dr = -1; dr <= 1; ++dr)
        for (int64_t dq = -1; dq <= 1; ++dq) {
          if (dr == 0 && dq == 0) continue;
          const int64_t rr = r + dr, qq = q + dq;
          if (rr < 0 || rr >= h || qq < 0 || qq >= w) continue;
          const double weight = (dr == 0 || dq == 0) ? 1.0 / 6 : 1.0 / 12;
          a[row][row] += weight;
          const int64_t column = index[static_cast<size_t>(rr * w + qq)];
          if (column >= 0) {
            a[row][column] -= weight;
          } else {
            for (int64_t ch = 0; ch < c; ++ch) b[row][ch] += weight * x[ch][rr][qq];
          }
        }
    }
  const auto solution = torch::linalg_solve(a, b);  // [unknowns, C]
  auto out = x.clone();
  for (int64_t i = 0; i < h * w; ++i) {
    const int64_t row = index[static_cast<size_t>(i)];
    if (row < 0) continue;
    for (int64_t ch = 0; ch < c; ++ch) out[ch][i / w][i % w] = solution[row][ch];
  }
  return out;
}

/// numpy.percentile's default (linear) rule, written from its definition.
double numpy_percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double position = p / 100.0 * static_cast<double>(v.size() - 1);
  const auto low = static_cast<size_t>(std::floor(position));
  const size_t high = std::min(low + 1, v.size() - 1);
  return v[low] + (v[high] - v[low]) * (position - static_cast<double>(low));
}

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

TEST_CASE("perturbation: linear imputation solves pytorch-grad-cam's system, keeps kept pixels") {
  torch::manual_seed(3);
  const auto x = torch::randn({2, 2, 5, 6}, torch::kDouble);
  auto removed = torch::rand({2, 5, 6}) < 0.5;
  removed[1][0][0] = true;  // a corner: fewer in-image neighbours
  removed[1][4][5] = false;
  const auto imputed =
      igrad::noisy_linear_imputation(x, removed, igrad::ImputationOptions().noise(0));
  for (int64_t i = 0; i < 2; ++i) {
    const auto expected = dense_imputation(x[i], removed[i]);
    CHECK(values_of((imputed[i] - expected).abs().max())[0] < 1e-8);
    const auto kept = (~removed[i]).unsqueeze(0).expand_as(x[i]);
    CHECK(torch::equal(imputed[i].masked_select(kept), x[i].masked_select(kept)));
  }
  // float images come back as float, imputed in double and rounded once.
  const auto single =
      igrad::noisy_linear_imputation(x.to(torch::kFloat), removed, igrad::ImputationOptions().noise(0));
  CHECK((single.scalar_type() == torch::kFloat));
  CHECK(values_of((single.to(torch::kDouble) - imputed).abs().max())[0] < 1e-6);
}

TEST_CASE("perturbation: linear imputation reproduces a linear ramp inside the image") {
  // Symmetric neighbour weights average a linear function to itself away from the border.
  auto x = torch::empty({1, 1, 8, 9}, torch::kDouble);
  for (int64_t r = 0; r < 8; ++r)
    for (int64_t q = 0; q < 9; ++q) x[0][0][r][q] = 0.3 * r - 0.7 * q + 2;
  auto removed = torch::zeros({1, 8, 9}, torch::kBool);
  removed.slice(1, 2, 6).slice(2, 3, 7).fill_(true);
  const auto imputed =
      igrad::noisy_linear_imputation(x, removed, igrad::ImputationOptions().noise(0));
  CHECK(values_of((imputed - x).abs().max())[0] < 1e-8);
}

TEST_CASE("perturbation: imputation noise is one seeded pattern, the same in any batch") {
  torch::manual_seed(4);
  const auto x = torch::randn({3, 1, 6, 6}, torch::kDouble);
  const auto removed = torch::rand({3, 6, 6}) < 0.6;
  const auto options = igrad::ImputationOptions().noise(0.5).seed(9);
  const auto batch = igrad::noisy_linear_imputation(x, removed, options);
  const auto plain = igrad::noisy_linear_imputation(x, removed, igrad::ImputationOptions().noise(0));
  for (int64_t i = 0; i < 3; ++i) {
    const auto alone = igrad::noisy_linear_imputation(x.slice(0, i, i + 1),
                                                      removed.slice(0, i, i + 1), options);
    CHECK(torch::allclose(alone[0], batch[i], 0, 1e-8));
  }
  // The noise sits on removed pixels only, and is the same draw for every image.
  const auto noise = batch - plain;
  CHECK(values_of(noise.masked_select(~removed.unsqueeze(1)).abs().max())[0] == 0);
  const auto both = removed[0] & removed[1];
  CHECK(torch::allclose(noise[0][0].masked_select(both), noise[1][0].masked_select(both), 0,
                        1e-12));
  double sum = 0, squares = 0;
  const auto drawn = values_of(noise.masked_select(removed.unsqueeze(1)));
  for (double v : drawn) sum += v, squares += v * v;
  CHECK(drawn.size() > 40);
  CHECK(std::sqrt(squares / drawn.size() - std::pow(sum / drawn.size(), 2)) ==
        doctest::Approx(0.5).epsilon(0.35));
  // Everything removed: each channel's mean (the singular system has no kept value to spread).
  const auto all = igrad::noisy_linear_imputation(
      x.slice(0, 0, 1), torch::ones({1, 6, 6}, torch::kBool), igrad::ImputationOptions().noise(0));
  CHECK(torch::allclose(all, x.slice(0, 0, 1).mean().expand({1, 1, 6, 6}), 0, 1e-12));
}

TEST_CASE("perturbation: ROAD on a linear model, against numpy percentiles and a dense solve") {
  torch::manual_seed(5);
  const int64_t n = 3, h = 5, w = 5;
  const auto x = torch::randn({n, 1, h, w}, torch::kDouble);
  LinearProbe probe{torch::randn({h * w, 4}, torch::kDouble)};
  const auto model = probe.model();
  auto maps = torch::rand({n, h, w}, torch::kDouble);
  maps[2].fill_(0.5);  // a constant map: MoRF removes everything, LeRF everything too
  const auto y = torch::tensor({0, 3, 1}, torch::kLong);
  const std::vector<double> percentiles{10, 35, 80};
  const auto options = igrad::RoadOptions()
                           .percentiles(percentiles)
                           .score(igrad::ModelScore::logit)
                           .imputation(igrad::ImputationOptions().noise(0))
                           .batch_size(2);
  probe.training = true;
  const auto result = igrad::road(model, x, maps, y, options);
  CHECK(probe.training);
  CHECK_FALSE(probe.ran_in_training);
  for (int64_t i = 0; i < n; ++i) {
    const auto map = values_of(maps[i]);
    std::vector<double> negated(map.size());
    std::transform(map.begin(), map.end(), negated.begin(), [](double v) { return -v; });
    const double original = values_of(x[i].flatten().matmul(probe.weights.select(1, y[i].item<int64_t>())))[0];
    const auto drop = [&](const std::vector<double>& relevance) {
      double total = 0;
      for (double p : percentiles) {
        const double threshold = numpy_percentile(relevance, p);
        auto removed = torch::zeros({h, w}, torch::kBool);
        for (int64_t k = 0; k < h * w; ++k)
          if (relevance[static_cast<size_t>(k)] >= threshold) removed[k / w][k % w] = true;
        const auto imputed = removed.all().item<bool>()
                                 ? x[i].mean().expand({1, h, w})
                                 : dense_imputation(x[i], removed);
        total += values_of(imputed.flatten().matmul(probe.weights.select(1, y[i].item<int64_t>())))[0] -
                 original;
      }
      return total / static_cast<double>(percentiles.size());
    };
    const double morf = drop(map), lerf = drop(negated);
    CHECK(result.most_relevant_first[i].item<double>() == doctest::Approx(morf).epsilon(1e-7));
    CHECK(result.least_relevant_first[i].item<double>() == doctest::Approx(lerf).epsilon(1e-7));
    CHECK(result.combined[i].item<double>() == doctest::Approx((lerf - morf) / 2).epsilon(1e-7));
  }
}

TEST_CASE("perturbation: ROAD does not depend on the batch split, and predicted classes work") {
  torch::manual_seed(6);
  const auto x = torch::randn({4, 2, 6, 6}, torch::kDouble);
  LinearProbe probe{torch::randn({2 * 36, 3}, torch::kDouble)};
  const auto model = probe.model();
  const auto maps = torch::rand({4, 6, 6}, torch::kDouble);
  const auto y = torch::tensor({0, 1, 2, 0}, torch::kLong);
  const auto all = igrad::road(model, x, maps, y, igrad::RoadOptions().batch_size(4));
  const auto split = igrad::road(model, x, maps, y, igrad::RoadOptions().batch_size(3));
  // Equal up to the solver's tolerance (a batch iterates until its slowest system converges).
  CHECK(torch::allclose(all.combined, split.combined, 0, 1e-8));
  for (int64_t i = 0; i < 4; ++i) {
    const auto alone = igrad::road(model, x.slice(0, i, i + 1), maps.slice(0, i, i + 1),
                                   y.slice(0, i, i + 1));
    CHECK(alone.combined[0].item<double>() == doctest::Approx(all.combined[i].item<double>()).epsilon(1e-8));
  }
  // Predicted classes: the same as passing the argmax as labels.
  const auto predicted = x.flatten(1).matmul(probe.weights).argmax(1);
  const auto by_prediction = igrad::road(model, x, maps, torch::Tensor(),
                                         igrad::RoadOptions().target(igrad::TargetClass::predicted));
  const auto by_labels = igrad::road(model, x, maps, predicted);
  CHECK(torch::allclose(by_prediction.combined, by_labels.combined, 0, 1e-12));
}

TEST_CASE("perturbation: faithfulness correlation is +1, -1 and 0 on a linear model's exact attributions") {
  torch::manual_seed(7);
  const int64_t h = 6, w = 6;
  auto x = torch::rand({2, 1, h, w}, torch::kDouble);
  LinearProbe probe{torch::randn({h * w, 2}, torch::kDouble)};
  const auto model = probe.model();
  const auto y = torch::tensor({1, 0}, torch::kLong);
  // With the baseline b = the image's minimum, removing S changes the logit by
  // Σ_{k∈S} W_kc (x_k − b): exactly the attribution sum of a = W_c ∘ (x − b).
  auto exact = torch::empty({2, h, w}, torch::kDouble);
  for (int64_t i = 0; i < 2; ++i)
    exact[i] = (probe.weights.select(1, y[i].item<int64_t>()).view({h, w}) *
                (x[i][0] - x[i].min()));
  const auto options = igrad::FaithfulnessCorrelationOptions().runs(20).subset_size(9).seed(2);
  const auto positive = igrad::faithfulness_correlation(model, x, exact, y, options);
  const auto negative = igrad::faithfulness_correlation(model, x, -exact, y, options);
  const auto constant = igrad::faithfulness_correlation(
      model, x, torch::ones({2, h, w}, torch::kDouble), y, options);
  for (int64_t i = 0; i < 2; ++i) {
    CHECK(positive[i].item<double>() == doctest::Approx(1.0).epsilon(1e-9));
    CHECK(negative[i].item<double>() == doctest::Approx(-1.0).epsilon(1e-9));
    CHECK(constant[i].item<double>() == 0.0);  // undefined correlation: reported as 0
  }
}

TEST_CASE("perturbation: faithfulness correlation recomputed from the perturbed images the model saw") {
  torch::manual_seed(8);
  const int64_t h = 5, w = 5;
  const auto x = torch::randn({2, 1, h, w}, torch::kDouble);
  // A nonlinear score: softmax probabilities of a linear model.
  LinearProbe probe{torch::randn({h * w, 3}, torch::kDouble)};
  const auto model = probe.model();
  const auto maps = torch::rand({2, h, w}, torch::kDouble);
  const auto y = torch::tensor({2, 1}, torch::kLong);
  const auto options = igrad::FaithfulnessCorrelationOptions()
                           .runs(6)
                           .subset_size(7)
                           .score(igrad::ModelScore::probability)
                           .baseline(igrad::PerturbationBaseline::image_mean)
                           .batch_size(2);
  const auto fc = igrad::faithfulness_correlation(model, x, maps, y, options);
  // Batches seen: the original batch, then one per run.
  REQUIRE(probe.inputs.size() == 7);
  for (int64_t i = 0; i < 2; ++i) {
    const auto p = torch::softmax(x[i].flatten().matmul(probe.weights), 0)[y[i]].item<double>();
    const double baseline = x[i].mean().item<double>();
    std::vector<double> sums, drops;
    for (size_t r = 1; r < probe.inputs.size(); ++r) {
      const auto perturbed = probe.inputs[r][i];
      double s = 0;
      int64_t changed = 0;
      for (int64_t k = 0; k < h * w; ++k) {
        const double value = perturbed[0][k / w][k % w].item<double>();
        if (value != x[i][0][k / w][k % w].item<double>()) {
          CHECK(value == doctest::Approx(baseline).epsilon(1e-12));
          s += maps[i][k / w][k % w].item<double>();
          ++changed;
        }
      }
      CHECK(changed == 7);
      sums.push_back(s);
      drops.push_back(p - torch::softmax(perturbed.flatten().matmul(probe.weights), 0)[y[i]]
                              .item<double>());
    }
    double ms = 0, md = 0;
    for (size_t r = 0; r < sums.size(); ++r) ms += sums[r], md += drops[r];
    ms /= sums.size(), md /= drops.size();
    double cov = 0, vs = 0, vd = 0;
    for (size_t r = 0; r < sums.size(); ++r) {
      cov += (sums[r] - ms) * (drops[r] - md);
      vs += (sums[r] - ms) * (sums[r] - ms);
      vd += (drops[r] - md) * (drops[r] - md);
    }
    CHECK(fc[i].item<double>() == doctest::Approx(cov / std::sqrt(vs * vd)).epsilon(1e-9));
  }
}

TEST_CASE("perturbation: infidelity is 0 for a linear model's gradient and scales as captum's") {
  torch::manual_seed(9);
  const int64_t h = 4, w = 4;
  const auto x = torch::randn({3, 1, h, w}, torch::kDouble);
  LinearProbe probe{torch::randn({h * w, 2}, torch::kDouble)};
  const auto model = probe.model();
  const auto y = torch::tensor({0, 1, 1}, torch::kLong);
  // f(x) − f(x − I) = W_c · I exactly: the weights are a perfect attribution.
  auto gradient = torch::empty({3, h, w}, torch::kDouble);
  for (int64_t i = 0; i < 3; ++i) gradient[i] = probe.weights.select(1, y[i].item<int64_t>()).view({h, w});
  const auto options = igrad::InfidelityOptions().samples(5).noise_std(0.2).seed(4);
  const auto raw = igrad::InfidelityOptions(options).normalize(false);
  CHECK(values_of(igrad::infidelity(model, x, gradient, y, options).abs().max())[0] < 1e-20);
  CHECK(values_of(igrad::infidelity(model, x, gradient, y, raw).abs().max())[0] < 1e-20);
  // Without normalisation, a = 2W leaves the error (W·I)², a = 3W leaves (2 W·I)²: four times as
  // much; with it, β undoes any positive scale.
  const auto twice = igrad::infidelity(model, x, 2 * gradient, y, raw);
  const auto thrice = igrad::infidelity(model, x, 3 * gradient, y, raw);
  CHECK(values_of(twice.min())[0] > 0);
  CHECK(torch::allclose(thrice, 4 * twice, 1e-9, 0));
  CHECK(values_of(igrad::infidelity(model, x, 3 * gradient, y, options).abs().max())[0] < 1e-20);
  // The recorded perturbations x − I: Gaussian with the requested spread, the same I for every image.
  std::vector<double> drawn;
  for (size_t j = 1; j < 6; ++j) {
    const auto delta = x - probe.inputs[j];
    CHECK(torch::allclose(delta[0], delta[2], 0, 1e-12));
    for (double v : values_of(delta[0])) drawn.push_back(v);
  }
  double squares = 0;
  for (double v : drawn) squares += v * v;
  CHECK(std::sqrt(squares / drawn.size()) == doctest::Approx(0.2).epsilon(0.3));
}

TEST_CASE("perturbation: evaluate adds ROAD, FaithCorr and Infidelity columns on request") {
  torch::manual_seed(10);
  const auto x = torch::rand({5, 1, 6, 6}, torch::kDouble);
  LinearProbe probe{torch::randn({36, 3}, torch::kDouble)};
  const auto model = probe.model();
  const auto y = torch::tensor({0, 1, 2, 1, 0}, torch::kLong);
  const auto fixed_maps = torch::rand({5, 6, 6}, torch::kDouble);
  igrad::Explainer explainer{"Fixed", [&](const igrad::AnyModel&, const torch::Tensor& images,
                                          const torch::Tensor&) {
                               // The maps of whichever images come, found by matching rows.
                               std::vector<torch::Tensor> out;
                               for (int64_t i = 0; i < images.size(0); ++i)
                                 for (int64_t k = 0; k < 5; ++k)
                                   if (torch::equal(images[i], x[k])) out.push_back(fixed_maps[k]);
                               return torch::stack(out);
                             }};
  const auto road = igrad::RoadOptions().percentiles({20, 60});
  const auto fc = igrad::FaithfulnessCorrelationOptions().runs(8).subset_size(5);
  const auto inf = igrad::InfidelityOptions().samples(3);
  const auto table = igrad::evaluate(model, {explainer}, igrad::EvaluationBatch{x, y},
                                     igrad::EvaluationOptions()
                                         .causal(false)
                                         .progress(false)
                                         .batch_size(2)
                                         .road(road)
                                         .faithfulness_correlation(fc)
                                         .infidelity(inf));
  REQUIRE(table.metrics() == std::vector<std::string>{"AD", "AI", "AG", "ROAD", "FaithCorr",
                                                      "Infidelity"});
  const auto row = table.row("Fixed");
  CHECK(row[3] == doctest::Approx(igrad::road(model, x, fixed_maps, y, road).combined.mean().item<double>()).epsilon(1e-10));
  CHECK(row[4] == doctest::Approx(igrad::faithfulness_correlation(model, x, fixed_maps, y, fc).mean().item<double>()).epsilon(1e-10));
  CHECK(row[5] == doctest::Approx(igrad::infidelity(model, x, fixed_maps, y, inf).mean().item<double>()).epsilon(1e-10));
  CHECK_FALSE(igrad::larger_is_better("Infidelity"));
  CHECK(igrad::larger_is_better("ROAD"));
  CHECK(igrad::larger_is_better("FaithCorr"));
}

TEST_CASE("perturbation: misuse gives clear igrad errors") {
  const auto x = torch::rand({2, 1, 4, 4});
  LinearProbe probe{torch::randn({16, 2})};
  const auto model = probe.model();
  const auto maps = torch::rand({2, 4, 4});
  const auto y = torch::tensor({0, 1}, torch::kLong);
  CHECK(error_of([&] { igrad::road(model, x, maps, y, igrad::RoadOptions().percentiles({50, 101})); })
            .find("expected values in [0, 100]") != std::string::npos);
  CHECK(error_of([&] { igrad::road(model, x, maps, y, igrad::RoadOptions().percentiles({})); })
            .find("RoadOptions::percentiles is empty") != std::string::npos);
  CHECK(error_of([&] { igrad::road(model, x, torch::rand({2, 3, 4}), y); })
            .find("expected [2, 4, 4]") != std::string::npos);
  CHECK(error_of([&] { igrad::road(model, x, maps * NAN, y); }).find("NaN") != std::string::npos);
  CHECK(error_of([&] { igrad::road(model, x, maps, torch::tensor({0, 5}, torch::kLong)); })
            .find("road: the labels") != std::string::npos);
  CHECK(error_of([&] {
          igrad::noisy_linear_imputation(x, torch::zeros({2, 4, 4}, torch::kBool),
                                         igrad::ImputationOptions().noise(-1));
        }).find("ImputationOptions::noise is -1") != std::string::npos);
  CHECK(error_of([&] { igrad::noisy_linear_imputation(x, torch::zeros({2, 4}, torch::kBool)); })
            .find("removal mask has shape") != std::string::npos);
  CHECK(error_of([&] {
          igrad::faithfulness_correlation(model, x, maps, y,
                                          igrad::FaithfulnessCorrelationOptions().subset_size(17));
        }).find("expected a value in [1, 16]") != std::string::npos);
  CHECK(error_of([&] {
          igrad::faithfulness_correlation(model, x, maps, y,
                                          igrad::FaithfulnessCorrelationOptions().runs(1).subset_size(4));
        }).find("expected >= 2") != std::string::npos);
  CHECK(error_of([&] { igrad::infidelity(model, x, maps, y, igrad::InfidelityOptions().samples(0)); })
            .find("InfidelityOptions::samples is 0") != std::string::npos);
  CHECK(error_of([&] {
          igrad::infidelity(model, x, maps, y, igrad::InfidelityOptions().noise_std(INFINITY));
        }).find("noise_std") != std::string::npos);
  CHECK(error_of([&] { igrad::infidelity(model, x.slice(0, 0, 0), maps.slice(0, 0, 0), y); })
            .find("empty batch") != std::string::npos);
}

// igrad::evaluate and MetricsTable (SPEC §5): hand-computed tables, batch-split invariance,
// batch ranges, the class choice, progress output, CSV / Markdown round trips, misuse.
#include <igrad/metrics.hpp>
#include <igrad/metrics/evaluate_cams.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

/// A tiny conv net (conv 3×3 → ReLU → max-pool 2 → Linear) on 1×6×6 inputs, optionally with batch
/// norm, with a features / head split for the CAM methods. Defined here rather than taken from test_support.hpp so that the metrics tests build
/// from <igrad/metrics.hpp> alone.
struct SmallConvImpl : torch::nn::Module {
  explicit SmallConvImpl(int64_t classes = 3, bool batch_norm = false) {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 3, 3).padding(1)));
    if (batch_norm) bn = register_module("bn", torch::nn::BatchNorm2d(3));
    fc = register_module("fc", torch::nn::Linear(3 * 3 * 3, classes));
  }
  torch::Tensor features(torch::Tensor x) {
    auto a = conv(x);
    if (bn) a = bn(a);
    return torch::max_pool2d(torch::relu(a), 2);
  }
  torch::Tensor head(torch::Tensor a) { return fc(a.flatten(1)); }
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(SmallConv);


double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

/// Two classes with logits `[a · mean(x), 0]`: `P(class 0) = σ(a · mean(x))`. No parameters.
struct MeanProbeImpl : torch::nn::Module {
  explicit MeanProbeImpl(double slope) : a(slope) {}
  torch::Tensor forward(torch::Tensor x) {
    const auto m = x.mean({1, 2, 3});
    return torch::stack({a * m, torch::zeros_like(m)}, 1);
  }
  double a;
};
TORCH_MODULE(MeanProbe);

torch::Tensor constant_images(const std::vector<double>& values) {
  auto x = torch::empty({static_cast<int64_t>(values.size()), 1, 4, 4}, torch::kDouble);
  for (size_t i = 0; i < values.size(); ++i) x[static_cast<int64_t>(i)].fill_(values[i]);
  return x;
}

igrad::Explainer constant_explainer(std::string name, double value) {
  return {std::move(name), [value](const igrad::AnyModel&, const torch::Tensor& x, const torch::Tensor&) {
            return torch::full({x.size(0), x.size(2), x.size(3)}, value, x.options());
          }};
}

/// A map that depends on the image only: σ of channel 0, in (0, 1).
igrad::Explainer sigmoid_explainer() {
  return {"sigmoid", [](const igrad::AnyModel&, const torch::Tensor& x, const torch::Tensor&) {
            return torch::sigmoid(x.select(1, 0));
          }};
}

igrad::EvaluationOptions quiet() { return igrad::EvaluationOptions().progress(false); }

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const igrad::InvalidArgument& e) {
    return e.what();
  }
  return "(no igrad::InvalidArgument)";
}

/// Deletion AUC of the mean probe on a constant image v, class c, 4×4, 4 pixels per step, by hand.
double deletion_auc_by_hand(double a, double v, int c) {
  std::vector<double> s;
  for (int j = 0; j <= 4; ++j) {
    const double p0 = sigmoid(a * v * (16.0 - 4 * j) / 16);
    s.push_back(c == 0 ? p0 : 1 - p0);
  }
  return (s[0] + s[1] + s[2] + s[3] + s[4] - (s[0] + s[4]) / 2) / 4;
}

/// Splits one CSV line into fields (RFC 4180 quotes).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char ch = line[i];
    if (quoted && ch == '"' && i + 1 < line.size() && line[i + 1] == '"') {
      fields.back() += '"';
      ++i;
    } else if (ch == '"') {
      quoted = !quoted;
    } else if (ch == ',' && !quoted) {
      fields.emplace_back();
    } else {
      fields.back() += ch;
    }
  }
  return fields;
}

/// Splits one Markdown table row into trimmed cells, honouring `\|`.
std::vector<std::string> markdown_cells(const std::string& line) {
  std::vector<std::string> cells;
  std::string cell;
  for (size_t i = 1; i < line.size(); ++i) {  // skip the leading '|'
    if (line[i] == '\\' && i + 1 < line.size() && line[i + 1] == '|') {
      cell += '|';
      ++i;
    } else if (line[i] == '|') {
      const auto b = cell.find_first_not_of(' '), e = cell.find_last_not_of(' ');
      cells.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
      cell.clear();
    } else {
      cell += line[i];
    }
  }
  return cells;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST_CASE("evaluate: a hand-computed table") {
  const double a = 2.0;
  MeanProbe probe(a);
  // v = 1 class 0; v = 1 class 1; v = −1 class 0. A constant map s = 0.5 halves the mean.
  const igrad::EvaluationBatch data{constant_images({1, 1, -1}), torch::tensor({0, 1, 0}, torch::kLong),
                                    torch::tensor({0, 0, 2, 2}, torch::kLong).repeat({3, 1})};
  const auto table = igrad::evaluate(probe, {constant_explainer("ones", 1.0), constant_explainer("half", 0.5)},
                                     data, quiet().batch_size(2));
  REQUIRE(table.methods() == std::vector<std::string>{"ones", "half"});
  REQUIRE(table.metrics() == std::vector<std::string>{"AD", "AI", "AG", "Insertion", "Deletion",
                                                      "Pointing", "EnergyPointing"});
  CHECK(table.at("ones", "AD") == 0.0);
  CHECK(table.at("ones", "AI") == 0.0);
  CHECK(table.at("ones", "AG") == 0.0);
  // half: image 0 drops σ(2) -> σ(1); images 1 and 2 rise σ(−2) -> σ(−1).
  CHECK(table.at("half", "AD") == doctest::Approx(100.0 / 3 * (sigmoid(2) - sigmoid(1)) / sigmoid(2)));
  CHECK(table.at("half", "AI") == doctest::Approx(200.0 / 3));
  CHECK(table.at("half", "AG") ==
        doctest::Approx(200.0 / 3 * (sigmoid(-1) - sigmoid(-2)) / (1 - sigmoid(-2))));
  // Insertion from the blurred copy of a constant image is flat at p; deletion to zeros by hand.
  const double insertion = (sigmoid(2) + 2 * sigmoid(-2)) / 3;
  const double deletion =
      (deletion_auc_by_hand(a, 1, 0) + deletion_auc_by_hand(a, 1, 1) + deletion_auc_by_hand(a, -1, 0)) / 3;
  for (const auto* method : {"ones", "half"}) {
    CHECK(table.at(method, "Insertion") == doctest::Approx(insertion));
    CHECK(table.at(method, "Deletion") == doctest::Approx(deletion));
    // A constant map peaks at (0, 0), inside the box; the box holds 4 of 16 equal values.
    CHECK(table.at(method, "Pointing") == doctest::Approx(100.0));
    CHECK(table.at(method, "EnergyPointing") == doctest::Approx(25.0));
  }
  SUBCASE("without regions and without causal metrics, only the columns computed") {
    const auto small = igrad::evaluate(probe, {constant_explainer("half", 0.5)},
                                       {data.images, data.labels}, quiet().causal(false));
    CHECK(small.metrics() == std::vector<std::string>{"AD", "AI", "AG"});
    CHECK(small.at("half", "AI") == doctest::Approx(200.0 / 3));
  }
}

TEST_CASE("evaluate: predicted classes are explained and scored on request") {
  MeanProbe probe(2.0);
  std::vector<int64_t> seen;
  const igrad::Explainer recorder{"recorder", [&](const igrad::AnyModel&, const torch::Tensor& x,
                                                  const torch::Tensor& targets) {
                                    for (int64_t i = 0; i < targets.size(0); ++i)
                                      seen.push_back(targets[i].item<int64_t>());
                                    return torch::full({x.size(0), 4, 4}, 0.5, x.options());
                                  }};
  // v = −1 with label 0: the model predicts class 1 (p = σ(2)); s = 0.5 gives σ(1), a drop.
  const igrad::EvaluationBatch data{constant_images({-1}), torch::tensor({0}, torch::kLong)};
  const auto by_label = igrad::evaluate(probe, {recorder}, data, quiet().causal(false));
  const auto by_prediction =
      igrad::evaluate(probe, {recorder}, data, quiet().causal(false).target(igrad::TargetClass::predicted));
  CHECK(seen == std::vector<int64_t>{0, 1});
  CHECK(by_label.at("recorder", "AD") == 0.0);
  CHECK(by_label.at("recorder", "AI") == doctest::Approx(100.0));
  CHECK(by_prediction.at("recorder", "AD") == doctest::Approx(100 * (sigmoid(2) - sigmoid(1)) / sigmoid(2)));
  CHECK(by_prediction.at("recorder", "AI") == 0.0);
}

TEST_CASE("evaluate: the same table for any batch split, from tensors or from a range of batches") {
  torch::manual_seed(7);
  SmallConv net(3);
  net->to(torch::kDouble);
  const auto x = torch::randn({12, 1, 6, 6}, torch::kDouble);
  const auto y = torch::randint(0, 3, {12}, torch::kLong);
  const auto boxes = torch::tensor({1, 2, 5, 6}, torch::kLong).repeat({12, 1});
  const std::vector<igrad::Explainer> methods{sigmoid_explainer(), constant_explainer("half", 0.5)};
  const auto options = quiet().normalization(igrad::DatasetNormalization({0.2860}, {0.3530}));
  const auto whole = igrad::evaluate(net, methods, {x, y, boxes}, igrad::EvaluationOptions(options).batch_size(12));
  const auto split = igrad::evaluate(net, methods, {x, y, boxes}, igrad::EvaluationOptions(options).batch_size(5));
  for (const auto& method : whole.methods())
    for (const auto& metric : whole.metrics())
      CHECK(split.at(method, metric) == doctest::Approx(whole.at(method, metric)).epsilon(1e-9));

  // The same 5 + 5 + 2 batches given as a range give the very same numbers.
  std::vector<igrad::EvaluationBatch> batches;
  std::vector<std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>> tuples;
  for (auto [s, e] : {std::pair{0, 5}, std::pair{5, 10}, std::pair{10, 12}}) {
    batches.push_back({x.slice(0, s, e), y.slice(0, s, e), boxes.slice(0, s, e)});
    tuples.emplace_back(x.slice(0, s, e), y.slice(0, s, e), boxes.slice(0, s, e));
  }
  const auto from_range = igrad::evaluate(net, methods, batches, options);
  const auto from_tuples = igrad::evaluate(net, methods, tuples, options);
  for (const auto& method : whole.methods())
    for (const auto& metric : whole.metrics()) {
      CHECK(from_range.at(method, metric) == split.at(method, metric));
      CHECK(from_tuples.at(method, metric) == split.at(method, metric));
    }

  // Batches with images / labels / boxes / masks members (like igrad::LocalizationBatch) use the
  // boxes; torch::data::Example batches (data, target) have no regions.
  struct Localization {
    torch::Tensor images, labels, boxes, masks;
  };
  std::vector<Localization> localization;
  std::vector<torch::data::Example<>> examples;
  for (const auto& b : batches) {
    localization.push_back({b.images, b.labels, b.regions, torch::ones({b.images.size(0), 6, 6})});
    examples.emplace_back(b.images, b.labels);
  }
  const auto from_localization = igrad::evaluate(net, methods, localization, options);
  const auto from_examples = igrad::evaluate(net, methods, examples, options);
  CHECK(from_examples.metrics() == std::vector<std::string>{"AD", "AI", "AG", "Insertion", "Deletion"});
  for (const auto& method : whole.methods()) {
    for (const auto& metric : whole.metrics())
      CHECK(from_localization.at(method, metric) == split.at(method, metric));
    for (const auto& metric : from_examples.metrics())
      CHECK(from_examples.at(method, metric) == split.at(method, metric));
  }

  SUBCASE("with the mean probe, per-image values do not depend on the batch: exact equality") {
    MeanProbe probe(1.5);
    const auto v = torch::linspace(-1, 1, 12, torch::kDouble).view({12, 1, 1, 1}).expand({12, 1, 4, 4}).contiguous();
    const auto labels = torch::tensor({0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}, torch::kLong);
    const auto one = igrad::evaluate(probe, {constant_explainer("half", 0.5)}, {v, labels}, quiet().batch_size(12));
    const auto parts = igrad::evaluate(probe, {constant_explainer("half", 0.5)}, {v, labels}, quiet().batch_size(5));
    for (const auto& metric : one.metrics()) CHECK(parts.at("half", metric) == one.at("half", metric));
  }
}

TEST_CASE("evaluate: eval mode during the run, the model's mode restored after") {
  torch::manual_seed(2);
  SmallConv net(3, /*batch_norm=*/true);
  net->train(true);
  bool explained_in_training = true;
  const igrad::Explainer probe_mode{"mode", [&](const igrad::AnyModel& model, const torch::Tensor& x,
                                                const torch::Tensor&) {
                                      explained_in_training = model.is_training();
                                      return torch::ones({x.size(0), 6, 6});
                                    }};
  const auto buffers_before = net->bn->running_mean.clone();
  igrad::evaluate(net, {probe_mode}, {torch::randn({4, 1, 6, 6}), torch::tensor({0, 1, 2, 0})}, quiet());
  CHECK_FALSE(explained_in_training);
  CHECK(net->is_training());
  CHECK(net->bn->running_mean.equal(buffers_before));  // eval mode: statistics untouched
}

TEST_CASE("evaluate: progress lines when the stream is not a terminal") {
  MeanProbe probe(1.0);
  std::FILE* log = std::tmpfile();
  REQUIRE(log != nullptr);
  igrad::evaluate(probe, {constant_explainer("half", 0.5)},
                  {constant_images(std::vector<double>(12, 0.5)), torch::zeros({12}, torch::kLong)},
                  igrad::EvaluationOptions().batch_size(1).causal(false).progress_stream(log));
  std::rewind(log);
  std::string text;
  for (int ch; (ch = std::fgetc(log)) != EOF;) text += static_cast<char>(ch);
  std::fclose(log);
  const auto lines = lines_of(text);
  INFO(text);
  CHECK(lines.size() >= 2);  // some intermediate lines and the final one
  CHECK(lines.size() <= 11);
  CHECK(lines.back().find("12/12 batches, 12 images") != std::string::npos);
  CHECK(text.find('\r') == std::string::npos);  // no redrawing outside a terminal
}

TEST_CASE("evaluate: misuse gives clear igrad errors") {
  MeanProbe probe(1.0);
  const igrad::EvaluationBatch data{constant_images({1, 2}), torch::tensor({0, 1}, torch::kLong)};
  const auto half = constant_explainer("half", 0.5);
  const auto contains = [](const std::string& message, const std::string& part) {
    INFO(message);
    CHECK(message.find(part) != std::string::npos);
  };
  contains(error_of([&] { igrad::evaluate(probe, {}, data, quiet()); }), "no explanation methods");
  contains(error_of([&] { igrad::evaluate(probe, {half, half}, data, quiet()); }), "unique names");
  contains(error_of([&] {
             igrad::evaluate(probe, {half}, {torch::zeros({0, 1, 4, 4}, torch::kDouble), torch::zeros({0}, torch::kLong)},
                             quiet());
           }),
           "empty dataset");
  contains(error_of([&] {
             igrad::evaluate(probe, {half}, std::vector<igrad::EvaluationBatch>{}, quiet());
           }),
           "empty dataset");
  const igrad::Explainer wrong_size{"wrong", [](const igrad::AnyModel&, const torch::Tensor& x, const torch::Tensor&) {
                                      return torch::full({x.size(0), 3, 3}, 0.5, x.options());
                                    }};
  contains(error_of([&] { igrad::evaluate(probe, {wrong_size}, data, quiet()); }),
           "expected maps of shape [2, 4, 4]");
  const igrad::Explainer unscaled{"unscaled", [](const igrad::AnyModel&, const torch::Tensor& x, const torch::Tensor&) {
                                    return torch::full({x.size(0), 4, 4}, 2.0, x.options());
                                  }};
  contains(error_of([&] { igrad::evaluate(probe, {unscaled}, data, quiet()); }), "expected values in [0, 1]");
  contains(error_of([&] { igrad::evaluate(probe, {half}, {data.images, torch::tensor({0, 7}, torch::kLong)}, quiet()); }),
           "expected class indices in [0, 2)");
  contains(error_of([&] { igrad::evaluate(probe, {half}, {data.images, torch::tensor({0}, torch::kLong)}, quiet()); }),
           "expected [2]");
  const std::vector<igrad::EvaluationBatch> mixed{
      {data.images, data.labels, torch::tensor({0, 0, 2, 2}).repeat({2, 1})}, {data.images, data.labels}};
  contains(error_of([&] { igrad::evaluate(probe, {half}, mixed, quiet()); }), "all or none");
}

TEST_CASE("evaluate: images with more channels than the model takes give an igrad error") {
  // Issue 14: 3-channel images on a 1-channel model raised LibTorch's conv2d error.
  SmallConv net(3);
  const auto x = torch::rand({4, 3, 6, 6});
  const auto y = torch::tensor({0, 1, 2, 0}, torch::kLong);
  const auto message = error_of([&] {
    igrad::evaluate(net, {sigmoid_explainer()}, {x, y}, quiet().batch_size(2));
  });
  INFO(message);
  CHECK(message.find("[2, 3, 6, 6]") != std::string::npos);
  CHECK(message.find("takes 1 channel") != std::string::npos);
}

TEST_CASE("evaluate: a Boost.Hana tuple of CAM types becomes explainers named C::name") {
  torch::manual_seed(13);
  SmallConv net(3);
  const auto x = torch::randn({5, 1, 6, 6});
  const auto y = torch::tensor({0, 1, 2, 1, 0}, torch::kLong);
  const auto boxes = torch::tensor({0, 0, 3, 3}, torch::kLong).repeat({5, 1});
  constexpr auto cams = boost::hana::tuple_t<igrad::GradCam, igrad::ScoreCam>;
  const auto explainers = igrad::cam_explainers(cams);
  REQUIRE(explainers.size() == 2);
  CHECK(explainers[0].name == std::string(igrad::GradCam::name));
  CHECK(explainers[1].name == std::string(igrad::ScoreCam::name));

  const auto table = igrad::evaluate(net, cams, {x, y, boxes}, quiet().batch_size(2));
  CHECK(table.methods() == std::vector<std::string>{igrad::GradCam::name, igrad::ScoreCam::name});
  // The same explainers written out by hand give the same table.
  const std::vector<igrad::Explainer> by_hand{
      {igrad::GradCam::name,
       [](const igrad::AnyModel& m, const torch::Tensor& v, const torch::Tensor& t) {
         return igrad::explain<igrad::GradCam>(m, v, t);
       }},
      {igrad::ScoreCam::name,
       [](const igrad::AnyModel& m, const torch::Tensor& v, const torch::Tensor& t) {
         return igrad::explain<igrad::ScoreCam>(m, v, t);
       }}};
  const auto reference = igrad::evaluate(net, by_hand, {x, y, boxes}, quiet().batch_size(2));
  for (const auto& method : table.methods())
    for (const auto& metric : table.metrics())
      CHECK(table.at(method, metric) == reference.at(method, metric));
  // Its Grad-CAM faithfulness is that of Grad-CAM's maps for the labels.
  const auto direct = igrad::faithfulness(net, x, igrad::explain<igrad::GradCam>(net, x, y), y);
  CHECK(table.at(igrad::GradCam::name, "AD") == doctest::Approx(direct.average_drop).epsilon(1e-6));
  CHECK(table.at(igrad::GradCam::name, "AG") == doctest::Approx(direct.average_gain).epsilon(1e-6));
  // And a range of batches works the same.
  const std::vector<igrad::EvaluationBatch> batches{{x.slice(0, 0, 2), y.slice(0, 0, 2), boxes.slice(0, 0, 2)},
                                                    {x.slice(0, 2, 4), y.slice(0, 2, 4), boxes.slice(0, 2, 4)},
                                                    {x.slice(0, 4, 5), y.slice(0, 4, 5), boxes.slice(0, 4, 5)}};
  const auto from_range = igrad::evaluate(net, cams, batches, quiet());
  for (const auto& method : table.methods())
    for (const auto& metric : table.metrics())
      CHECK(from_range.at(method, metric) == table.at(method, metric));
}

TEST_CASE("evaluate: one localisation batch as a whole gives the numbers of the dataset path") {
  // Issue 17: an igrad::LocalizationBatch (or an Example, or a tuple) given as one batch, not
  // wrapped in a range, did not compile.
  torch::manual_seed(17);
  SmallConv net(3);
  net->to(torch::kDouble);
  const auto x = torch::randn({7, 1, 6, 6}, torch::kDouble);
  const auto y = torch::randint(0, 3, {7}, torch::kLong);
  const auto boxes = torch::tensor({1, 0, 4, 5}, torch::kLong).repeat({7, 1});
  // The boxes as masks: pixel (x, y) is inside iff x0 <= x < x1 and y0 <= y < y1.
  auto masks = torch::zeros({7, 6, 6}, torch::kBool);
  masks.slice(1, 0, 5).slice(2, 1, 4).fill_(true);
  const std::vector<igrad::Explainer> methods{sigmoid_explainer(), constant_explainer("half", 0.5)};
  const auto options = quiet().batch_size(3).normalization(igrad::DatasetNormalization({0.2860}, {0.3530}));

  // The same members as igrad::LocalizationBatch (this file builds from <igrad/metrics.hpp>).
  struct Localization {
    torch::Tensor images, labels, boxes, masks;
  } localization{x, y, boxes, masks};
  struct MasksOnly {
    torch::Tensor images, labels, masks;
  } masks_only{x, y, masks};
  const auto from_tensors = igrad::evaluate(net, methods, {x, y, boxes}, options);
  const auto from_batch = igrad::evaluate(net, methods, localization, options);
  const auto from_masks = igrad::evaluate(net, methods, masks_only, options);
  const auto from_tuple = igrad::evaluate(net, methods, std::make_tuple(x, y, boxes), options);
  const auto from_example = igrad::evaluate(net, methods, torch::data::Example<>(x, y), options);
  const std::vector<igrad::EvaluationBatch> range{{x.slice(0, 0, 3), y.slice(0, 0, 3), boxes.slice(0, 0, 3)},
                                                  {x.slice(0, 3, 6), y.slice(0, 3, 6), boxes.slice(0, 3, 6)},
                                                  {x.slice(0, 6), y.slice(0, 6), boxes.slice(0, 6)}};
  const auto from_range = igrad::evaluate(net, methods, range, options);
  REQUIRE(from_batch.metrics() == from_tensors.metrics());
  CHECK(from_batch.metrics().back() == "EnergyPointing");
  CHECK(from_example.metrics() == std::vector<std::string>{"AD", "AI", "AG", "Insertion", "Deletion"});
  for (const auto& method : from_tensors.methods()) {
    for (const auto& metric : from_tensors.metrics()) {
      INFO(method << " " << metric);
      CHECK(from_batch.at(method, metric) == from_tensors.at(method, metric));
      CHECK(from_tuple.at(method, metric) == from_tensors.at(method, metric));
      CHECK(from_range.at(method, metric) == from_tensors.at(method, metric));
      // Masks that cover exactly the boxes give the same pointing games.
      CHECK(from_masks.at(method, metric) == doctest::Approx(from_tensors.at(method, metric)).epsilon(1e-12));
    }
    for (const auto& metric : from_example.metrics())
      CHECK(from_example.at(method, metric) == from_tensors.at(method, metric));
  }
  // The Hana overload takes one batch too.
  constexpr auto cams = boost::hana::tuple_t<igrad::GradCam>;
  SmallConv small(3);
  const auto xf = x.to(torch::kFloat);
  const auto cam_batch = igrad::evaluate(small, cams, Localization{xf, y, boxes, masks}, options);
  const auto cam_tensors = igrad::evaluate(small, cams, {xf, y, boxes}, options);
  for (const auto& metric : cam_tensors.metrics())
    CHECK(cam_batch.at(igrad::GradCam::name, metric) == cam_tensors.at(igrad::GradCam::name, metric));
}

TEST_CASE("evaluate: regions of a wrong shape are refused before any map is computed") {
  MeanProbe probe(1.0);
  const auto x = constant_images({1, 2});  // [2, 1, 4, 4]
  const auto y = torch::tensor({0, 1}, torch::kLong);
  int calls = 0;
  const igrad::Explainer counting{"counting", [&](const igrad::AnyModel&, const torch::Tensor& v,
                                                  const torch::Tensor&) {
                                    ++calls;
                                    return torch::full({v.size(0), 4, 4}, 0.5, v.options());
                                  }};
  struct Boxes {
    torch::Tensor images, labels, boxes;
  };
  struct Masks {
    torch::Tensor images, labels, masks;
  };
  const auto message_of = [&](const auto& batch) {
    return error_of([&] { igrad::evaluate(probe, {counting}, batch, quiet()); });
  };
  for (const auto& message :
       {message_of(Boxes{x, y, torch::zeros({2, 3}, torch::kLong)}),
        message_of(Boxes{x, y, torch::zeros({3, 4}, torch::kLong)}),
        message_of(Masks{x, y, torch::ones({2, 5, 4}, torch::kBool)})}) {
    INFO(message);
    CHECK(message.find("the dataset's regions have shape") != std::string::npos);
    CHECK(message.find("expected boxes [2, 4] or masks [2, 4, 4]") != std::string::npos);
  }
  CHECK(calls == 0);
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("table: CSV and Markdown read back to the same numbers") {
  igrad::MetricsTable table({"AD", "AI", "Insertion"});
  const std::vector<double> first{1.0 / 3, 200.0 / 3, 1e-17};
  const std::vector<double> second{-2.5, 123456.78901234567, 0.0};
  table.add_row("Grad-CAM", first);
  table.add_row("Score,CAM \"v2\"", second);
  table.add_row("a|b", {0.1, 0.2, 0.30000000000000004});

  SUBCASE("CSV") {
    const auto lines = lines_of(table.to_csv());
    REQUIRE(lines.size() == 4);
    CHECK(csv_fields(lines[0]) == std::vector<std::string>{"method", "AD", "AI", "Insertion"});
    for (size_t r = 0; r < 3; ++r) {
      const auto fields = csv_fields(lines[r + 1]);
      REQUIRE(fields.size() == 4);
      CHECK(fields[0] == table.methods()[r]);
      for (size_t c = 0; c < 3; ++c) CHECK(std::stod(fields[c + 1]) == table.row(table.methods()[r])[c]);
    }
    CHECK(lines[2].rfind("\"Score,CAM \"\"v2\"\"\",", 0) == 0);
  }
  SUBCASE("Markdown") {
    const auto lines = lines_of(table.to_markdown());
    REQUIRE(lines.size() == 5);
    CHECK(markdown_cells(lines[0]) == std::vector<std::string>{"method", "AD", "AI", "Insertion"});
    CHECK(lines[1] == "|:---|---:|---:|---:|");
    for (size_t r = 0; r < 3; ++r) {
      const auto cells = markdown_cells(lines[r + 2]);
      REQUIRE(cells.size() == 4);
      CHECK(cells[0] == table.methods()[r]);
      for (size_t c = 0; c < 3; ++c) CHECK(std::stod(cells[c + 1]) == table.row(table.methods()[r])[c]);
    }
    const auto rounded = markdown_cells(lines_of(table.to_markdown(2))[2]);
    CHECK(rounded == std::vector<std::string>{"Grad-CAM", "0.33", "66.67", "0.00"});
  }
  SUBCASE("files, fmt and look-ups") {
    const auto path = std::filesystem::temp_directory_path() / "igrad_metrics_table_test.csv";
    table.write_csv(path);
    std::ifstream in(path);
    std::stringstream read;
    read << in.rdbuf();
    CHECK(read.str() == table.to_csv());
    std::filesystem::remove(path);
    const auto text = fmt::format("{}", table);
    CHECK(text == table.to_text());
    CHECK(lines_of(text)[1].find("Grad-CAM") == 0);
    CHECK(lines_of(text)[1].find("66.667") != std::string::npos);
    CHECK(error_of([&] { (void)table.at("Grad-CAM", "AG"); }).find("expected one of: AD, AI, Insertion") !=
          std::string::npos);
    CHECK(error_of([&] { table.add_row("Grad-CAM", first); }).find("unique") != std::string::npos);
    CHECK(error_of([&] { table.add_row("short", {1.0}); }).find("one per column") != std::string::npos);
  }
}

// The study's per-image metrics (include/igrad/study.hpp): their means must equal the table of
// igrad::evaluate (an independent formulation: accumulators over batches) on the same data, and
// the run-time name lookups must find every shipped policy and refuse unknown names.
#include "test_support.hpp"

#include <igrad/igrad.hpp>
#include <igrad/study.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <numeric>
#include <string>
#include <vector>

namespace {

double mean(const std::vector<double>& v) {
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

/// A map that depends on the image, so that every metric varies from image to image.
igrad::Explainer image_explainer() {
  return {"sigmoid", [](const igrad::AnyModel&, const torch::Tensor& x, const torch::Tensor&) {
            return torch::sigmoid(x.sum(1) * 2);
          }};
}

}  // namespace

TEST_CASE("study per-image metrics average to igrad::evaluate's table") {
  torch::manual_seed(3);
  igrad_test::TinyConv net(3);
  net->to(torch::kDouble);
  const auto x = torch::randn({11, 1, 6, 6}, torch::kDouble);
  const auto y = torch::randint(0, 3, {11}, torch::kLong);
  const auto boxes = torch::tensor({1, 2, 5, 6}, torch::kLong).repeat({11, 1});
  const igrad::DatasetNormalization norm({0.2860}, {0.3530});
  const std::vector<igrad::Explainer> methods{image_explainer()};
  // The optional measures too, with the black-pixel baseline so that the normalisation is used.
  const auto road = igrad::RoadOptions().percentiles({30, 70});
  const auto correlation = igrad::FaithfulnessCorrelationOptions().runs(5).subset_size(6).baseline(
      igrad::PerturbationBaseline::black_pixels);
  const auto infidelity = igrad::InfidelityOptions().samples(3);
  const auto table = igrad::evaluate(net, methods, {x, y},
                                     igrad::EvaluationOptions()
                                         .normalization(norm)
                                         .progress(false)
                                         .complexity_metrics(true)
                                         .road(road)
                                         .faithfulness_correlation(correlation)
                                         .infidelity(infidelity));
  const auto scores = igrad::per_image_scores(net, methods, {x, y},
                                              igrad::PerImageOptions()
                                                  .normalization(norm)
                                                  .batch_size(4)
                                                  .complexity_metrics(true)
                                                  .road(road)
                                                  .faithfulness_correlation(correlation)
                                                  .infidelity(infidelity));
  for (const std::string metric : {"AD", "AI", "AG", "Insertion", "Deletion", "Sparseness",
                                   "Complexity", "ROAD", "FaithCorr", "Infidelity"}) {
    CAPTURE(metric);
    const auto& values = scores.values.at("sigmoid/" + metric);
    REQUIRE(values.size() == 11);
    CHECK(mean(values) == doctest::Approx(table.at("sigmoid", metric)).epsilon(1e-9));
  }
  // AI is an indicator per image: 0 or 100.
  for (double v : scores.values.at("sigmoid/AI")) CHECK((v == 0.0 || v == 100.0));

  const auto located = igrad::evaluate(
      net, methods, {x, y, boxes}, igrad::EvaluationOptions().causal(false).progress(false));
  const auto pointing = igrad::per_image_scores(net, methods, {x, y, boxes});
  CHECK(pointing.values.count("sigmoid/AD") == 0);  // regions: the localisation metrics only
  for (const std::string metric : {"Pointing", "EnergyPointing"}) {
    CAPTURE(metric);
    CHECK(mean(pointing.values.at("sigmoid/" + metric)) ==
          doctest::Approx(located.at("sigmoid", metric)).epsilon(1e-9));
  }
}

TEST_CASE("study per-image correctness is 100 where the top class is the label, else 0") {
  torch::manual_seed(5);
  igrad_test::TinyConv net(2);
  const auto images = torch::randn({5, 1, 6, 6});
  const auto predicted = net->forward(images).argmax(1);
  // Labels equal to the prediction for the first three images, the other class for the rest.
  auto labels = predicted.clone();
  labels.slice(0, 3) = (predicted.slice(0, 3) + 1).remainder(2);
  const auto correct = igrad::per_image_correct(net, images, labels, 2);  // batches 2 + 2 + 1
  CHECK(correct == std::vector<double>{100, 100, 100, 0, 0});
  CHECK_THROWS_AS(igrad::per_image_correct(net, images, labels.slice(0, 4)), igrad::InvalidArgument);
}

TEST_CASE("study name lookups find every shipped error function and CAM method") {
  for (const std::string name : {"cosine", "sigmoid", "centered-sigmoid", "histogram", "mae", "mse",
                                 "CosineError", "mean_squared_error"}) {
    bool called = false;
    igrad::with_error_function(name, [&](auto) { called = true; });
    CHECK_MESSAGE(called, name);
  }
  std::string found;
  igrad::with_error_function("mse", [&](auto type) { found = decltype(type)::type::name; });
  CHECK(found == igrad::MeanSquaredError::name);
  CHECK_THROWS_AS(igrad::with_error_function("cosin", [](auto) {}), igrad::InvalidArgument);

  const auto explainers = igrad::cam_explainers_by_name({"grad-cam++", "GradCam", "score_cam"});
  REQUIRE(explainers.size() == 3);
  CHECK(explainers[0].name == igrad::GradCamPlusPlus::name);
  CHECK(explainers[1].name == igrad::GradCam::name);
  CHECK(explainers[2].name == igrad::ScoreCam::name);
  CHECK_THROWS_AS(igrad::cam_explainers_by_name({"GradCamm"}), igrad::InvalidArgument);
}

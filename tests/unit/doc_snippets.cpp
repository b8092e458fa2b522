// The examples of igrad's header documentation: Doxygen shows the blocks between `//! [name]`
// markers (`@snippet doc_snippets.cpp name`), so every example in a header is code that this
// file compiles and runs. Each test case runs its snippet on tiny models and data and checks
// what the documentation says it gives.
#include "test_support.hpp"

#include <igrad/testing/conformance.hpp>

#include <boost/hana.hpp>

#include <filesystem>
#include <map>
#include <vector>

using namespace igrad_test;

namespace {

//! [classifier]
// A Classifier: a module handle whose forward(x) returns the logits [N, K].
struct NetImpl : torch::nn::Module {
  torch::nn::Linear fc{register_module("fc", torch::nn::Linear(784, 10))};
  torch::Tensor forward(torch::Tensor x) { return fc(x.flatten(1)); }
};
TORCH_MODULE(Net);
static_assert(igrad::Classifier<Net> && !igrad::FeatureClassifier<Net>);
//! [classifier]

//! [feature_classifier]
// A FeatureClassifier: forward(x) == head(features(x)), features(x) the feature map [N, K, h, w].
struct SplitNetImpl : torch::nn::Module {
  torch::nn::Conv2d conv{register_module("conv", torch::nn::Conv2d(1, 8, 3))};
  torch::nn::Linear fc{register_module("fc", torch::nn::Linear(8, 10))};
  torch::Tensor features(torch::Tensor x) { return torch::relu(conv(x)); }  // [N, 8, h, w]
  torch::Tensor head(torch::Tensor a) { return fc(a.mean({2, 3})); }        // GAP + Linear
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
};
TORCH_MODULE(SplitNet);
static_assert(igrad::FeatureClassifier<SplitNet>);  // igrad::explain<igrad::GradCam> accepts it
//! [feature_classifier]

//! [saliency_method]
// Gradient × input: an input-space method built from the rule-aware gradient of the target logit.
struct GradientTimesInput {
  static constexpr const char* name = "Gradient x Input";
  torch::Tensor operator()(const igrad::SaliencyRequest& r) const {
    return r.input * igrad::target_input_gradient<igrad::StandardReLU>(r, r.input);
  }
};
static_assert(igrad::SaliencyMethod<GradientTimesInput>);
//! [saliency_method]

igrad::models::SmallCNN tiny_small_cnn() {
  torch::manual_seed(3);
  return igrad::models::SmallCNN(igrad::models::SmallCNNOptions().widths({4, 6, 8}));
}

}  // namespace

TEST_CASE("doc snippets: Classifier, FeatureClassifier and a saliency method of one's own") {
  torch::manual_seed(0);
  Net net;
  SplitNet split;
  const auto x = torch::randn({2, 1, 28, 28});
  const igrad::AnyModel plain = net;
  CHECK_FALSE(plain.has_feature_split());
  CHECK(plain.forward(x).sizes() == torch::IntArrayRef({2, 10}));
  const auto report = igrad::testing::check_feature_split(split, x);
  INFO(report.summary());
  CHECK(report.ok());
  const auto maps = igrad::explain<igrad::GradCam>(split, x);
  CHECK(maps.sizes() == torch::IntArrayRef({2, 28, 28}));
  const auto attributions = igrad::attribute<GradientTimesInput>(split, x);
  CHECK(attributions.sizes() == x.sizes());
  const auto gradient = igrad::attribute<igrad::Gradient>(split, x);
  CHECK(max_abs_diff(attributions, gradient * x) < 1e-6);
}

TEST_CASE("doc snippets: explain and the list of CAM methods") {
  auto model = tiny_small_cnn();
  const auto images = torch::randn({2, 1, 16, 16});
  const auto labels = torch::tensor({1, 4});
  //! [explain]
  auto maps = igrad::explain<igrad::GradCamPlusPlus>(model, images);          // predicted classes
  auto score = igrad::explain<igrad::ScoreCam>(model, images, labels,
                                               igrad::CamOptions().batch_size(128));
  //! [explain]
  CHECK(maps.sizes() == torch::IntArrayRef({2, 16, 16}));
  CHECK(score.sizes() == torch::IntArrayRef({2, 16, 16}));

  std::vector<std::string> names;
  //! [all_cam_methods]
  boost::hana::for_each(igrad::all_cam_methods, [&](auto t) {
    using C = typename decltype(t)::type;
    names.push_back(C::name);  // e.g. one figure column or table row per method
  });
  //! [all_cam_methods]
  CHECK(names.size() == 14);
}

TEST_CASE("doc snippets: evaluation tables, explainers and the faithfulness accumulator") {
  auto model = tiny_small_cnn();
  torch::manual_seed(4);
  const auto images = torch::randn({4, 1, 16, 16});
  const auto labels = torch::tensor({0, 1, 2, 3});
  const auto boxes = torch::tensor({{0, 0, 8, 8}, {4, 4, 12, 12}, {0, 8, 8, 16}, {8, 0, 16, 8}});
  const igrad::DatasetNormalization norm({0.2860}, {0.3530});
  const auto saliency = [](const igrad::AnyModel& m, const torch::Tensor& x, const torch::Tensor& t) {
    return igrad::explain<igrad::Gradient>(m, x, t);
  };
  const auto csv = std::filesystem::temp_directory_path() / "igrad_doc_snippets_metrics.csv";
  const auto previous_directory = std::filesystem::current_path();
  std::filesystem::current_path(std::filesystem::temp_directory_path());
  //! [evaluate]
  auto table = igrad::evaluate(model, {{"Gradient", saliency}}, {images, labels, boxes},
                               igrad::EvaluationOptions().normalization(norm).progress(false));
  fmt::print("{}", table);
  table.write_csv("igrad_doc_snippets_metrics.csv");
  //! [evaluate]
  std::filesystem::current_path(previous_directory);
  CHECK(std::filesystem::exists(csv));
  std::filesystem::remove(csv);

  //! [cam_explainers]
  auto explainers = igrad::cam_explainers(boost::hana::tuple_t<igrad::GradCam, igrad::ScoreCam>);
  explainers.push_back({"Gradient", saliency});  // mix with run-time explainers
  //! [cam_explainers]
  REQUIRE(explainers.size() == 3);
  CHECK(explainers[0].name == "Grad-CAM");

  //! [evaluate_cams]
  auto cams = igrad::evaluate(model, boost::hana::tuple_t<igrad::GradCam, igrad::ScoreCam>,
                              {images, labels, boxes},
                              igrad::EvaluationOptions().batch_size(64).progress(false));
  //! [evaluate_cams]
  CHECK(cams.to_csv().find("Score-CAM") != std::string::npos);

  const std::vector<std::pair<torch::Tensor, torch::Tensor>> batches{
      {images.slice(0, 0, 3), labels.slice(0, 0, 3)}, {images.slice(0, 3), labels.slice(0, 3)}};
  //! [faithfulness_accumulator]
  igrad::FaithfulnessAccumulator faithfulness(igrad::MaskingOptions().normalization(norm));
  for (const auto& [x, y] : batches)
    faithfulness.add(model, x, igrad::explain<igrad::GradCam>(model, x, y), y);
  auto r = faithfulness.result();  // r.average_drop, r.average_increase, r.average_gain
  //! [faithfulness_accumulator]
  // Batches of 3 + 1 give the numbers of the whole batch at once.
  const auto whole = igrad::faithfulness(model, images,
                                         igrad::explain<igrad::GradCam>(model, images, labels),
                                         labels, igrad::MaskingOptions().normalization(norm));
  CHECK(r.average_drop == doctest::Approx(whole.average_drop));
  CHECK(r.average_gain == doctest::Approx(whole.average_gain));
}

TEST_CASE("doc snippets: the model adapters") {
  torch::manual_seed(6);
  const auto x = torch::randn({2, 1, 10, 10});
  //! [split_sequential]
  torch::nn::Sequential net(torch::nn::Conv2d(1, 8, 3), torch::nn::ReLU(),
                            torch::nn::AdaptiveAvgPool2d(1), torch::nn::Flatten(),
                            torch::nn::Linear(8, 10));
  igrad::AnyModel model = igrad::models::split_sequential(net, 2);  // features: conv + ReLU
  //! [split_sequential]
  CHECK(model.features(x).sizes() == torch::IntArrayRef({2, 8, 8, 8}));
  CHECK(igrad::testing::check_feature_split(model, x).ok());

  SplitNet split_net;
  //! [from_callables]
  auto adapted = igrad::models::from_callables(
      split_net, [split_net](const torch::Tensor& x) mutable { return split_net->features(x); },
      [split_net](const torch::Tensor& a) mutable { return split_net->head(a); });
  //! [from_callables]
  CHECK(igrad::testing::check_feature_split(adapted, x).ok());
  CHECK(adapted.parameters().size() == split_net->parameters().size());
}

TEST_CASE("doc snippets: Fashion-MNIST, a validation split and a data loader") {
  if (!std::filesystem::exists("/usr/share/datasets/fashion-mnist")) {
    MESSAGE("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist): skipped");
    return;
  }
  //! [fashion_mnist]
  igrad::data::FashionMnist train;  // /usr/share/datasets/fashion-mnist, normalised
  auto [fit, validation] = igrad::data::train_validation_split(train, 5000);
  auto loader = torch::data::make_data_loader(
      fit.map(torch::data::transforms::Stack<>()), 128);
  //! [fashion_mnist]
  CHECK(validation.count() == 5000);
  // A copy: the iterator that `begin()` returns owns the batch and dies at the end of the line
  // (ASan found the dangling reference this line held before).
  const auto batch = *loader->begin();
  CHECK(batch.data.sizes() == torch::IntArrayRef({128, 1, 28, 28}));
}

TEST_CASE("doc snippets: an ablation over error functions and an explanation monitor") {
  torch::manual_seed(8);
  std::vector<torch::data::Example<>> batches{
      {torch::randn({4, 1, 16, 16}), torch::tensor({0, 1, 2, 3})}};
  const auto val_x = torch::randn({2, 1, 16, 16});
  const auto val_y = torch::tensor({1, 2});
  const auto options = igrad::TrainerOptions().lambda(0.1);
  std::map<std::string, double> losses;
  //! [ablation]
  boost::hana::for_each(igrad::all_error_functions, [&](auto type) {
    using E = typename decltype(type)::type;
    auto model = tiny_small_cnn();  // the same initial weights for every E
    torch::optim::SGD optimizer(model->parameters(), 0.01);
    igrad::Trainer<E, igrad::GuidedReLU> trainer(model, optimizer, options);
    const auto logs = trainer.fit(batches, /*epochs=*/1);
    losses[E::name] = logs.back().regulariser_loss;  // ... one row per E::name
  });
  //! [ablation]
  CHECK(losses.size() == 6);
  CHECK(losses.at("CosineError") >= -1.0);

  const auto log_path = std::filesystem::temp_directory_path() / "igrad_doc_snippets_log.csv";
  auto model = tiny_small_cnn();
  torch::optim::SGD optimizer(model->parameters(), 0.01);
  igrad::Trainer<> trainer(model, optimizer, options);
  const auto previous_directory = std::filesystem::current_path();
  std::filesystem::current_path(std::filesystem::temp_directory_path());
  auto& loader = batches;
  //! [explanation_monitor]
  trainer.fit(loader, 10, igrad::ExplanationMonitor<igrad::ScoreCam>(val_x, val_y),
              igrad::CsvLogger("igrad_doc_snippets_log.csv"));
  //! [explanation_monitor]
  std::filesystem::current_path(previous_directory);
  CHECK(std::filesystem::exists(log_path));
  std::filesystem::remove(log_path);
}

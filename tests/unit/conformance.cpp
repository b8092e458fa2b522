// Conformance (igrad/testing/conformance.hpp): the laws of every concept checked on every policy
// igrad ships, and on broken policies, to show that each check can fail.
#include "test_support.hpp"

#include <igrad/testing/conformance.hpp>

#include <boost/hana.hpp>

using namespace igrad_test;
namespace hana = boost::hana;

namespace {

// A narrow SmallCNN with batch norms (so that a method forgetting evaluation mode changes a
// buffer), in double so that batch and one-by-one results compare tightly.
igrad::models::SmallCNN tiny_cnn() {
  torch::manual_seed(11);
  igrad::models::SmallCNN model(igrad::models::SmallCNNOptions().widths({4, 6, 8}));
  model->to(torch::kDouble);
  // Non-trivial batch-norm statistics, so that training-mode and eval-mode forwards differ.
  model->train();
  {
    torch::NoGradGuard no_grad;
    for (int i = 0; i < 3; ++i) model->forward(torch::randn({8, 1, 16, 16}, torch::kDouble) * 2 + 1);
  }
  return model;
}

torch::Tensor tiny_images() {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(5);
  return torch::randn({3, 1, 16, 16}, generator, torch::dtype(torch::kDouble));
}

// Methods igrad ships that draw their noise for a whole batch at once (seeded): an image alone
// gets other draws, so the batch law is checked for the others only.
template <class P>
constexpr bool draws_batch_noise = std::is_same_v<P, igrad::SmoothGradCamPlusPlus> ||
                                   std::is_same_v<P, igrad::SSCam> ||
                                   std::is_same_v<P, igrad::SmoothGrad> ||
                                   std::is_same_v<P, igrad::SmoothGradSquared> ||
                                   std::is_same_v<P, igrad::VarGrad> ||
                                   std::is_same_v<P, igrad::GradientShap>;

template <class P>
igrad::testing::ConformanceOptions options_for() {
  return igrad::testing::ConformanceOptions().tolerance(1e-6).batch_consistency(!draws_batch_noise<P>);
}

/// Whether some violation of `report` contains `text`.
bool names(const igrad::testing::ConformanceReport& report, std::string_view text) {
  for (const auto& v : report.violations)
    if (v.find(text) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("conformance: every shipped error function keeps the ErrorFunction laws") {
  int checked = 0;
  hana::for_each(igrad::all_error_functions, [&](auto type) {
    using E = typename decltype(type)::type;
    const auto report = igrad::testing::check_error_function<E>();
    INFO(report.summary());
    CHECK(report.ok());
    ++checked;
  });
  CHECK(checked == 6);
}

TEST_CASE("conformance: every shipped backprop rule keeps the BackpropRule laws") {
  int checked = 0;
  hana::for_each(igrad::all_backprop_rules, [&](auto type) {
    using R = typename decltype(type)::type;
    const auto report = igrad::testing::check_backprop_rule<R>();
    INFO(report.summary());
    CHECK(report.ok());
    ++checked;
  });
  CHECK(checked == 3);
}

TEST_CASE("conformance: the shipped models keep the FeatureClassifier laws") {
  const auto report = igrad::testing::check_feature_split(tiny_cnn(), tiny_images());
  INFO(report.summary());
  CHECK(report.ok());
  igrad::models::ResNet18 resnet(igrad::models::ResNet18Options().classes(3).in_channels(1).base_width(4));
  const auto resnet_report =
      igrad::testing::check_feature_split(resnet, torch::randn({2, 1, 8, 8}));
  INFO(resnet_report.summary());
  CHECK(resnet_report.ok());
}

TEST_CASE("conformance: every shipped CAM method keeps the CamMethod laws") {
  auto model = tiny_cnn();
  const auto x = tiny_images();
  const auto cam_options = igrad::CamOptions().sscam_samples(4).opticam_steps(5).smooth_samples(3);
  int checked = 0;
  hana::for_each(igrad::all_cam_methods, [&](auto type) {
    using C = typename decltype(type)::type;
    const auto report = igrad::testing::check_cam_method<C>(model, x, options_for<C>(), cam_options);
    INFO(report.summary());
    CHECK(report.ok());
    ++checked;
  });
  CHECK(checked == 20);
  CHECK(model->is_training());  // tiny_cnn() returns it in training mode, the checks restore it
}

TEST_CASE("conformance: every shipped saliency method keeps the SaliencyMethod laws") {
  auto model = tiny_cnn();
  const auto x = tiny_images();
  const auto saliency_options = igrad::SaliencyOptions().samples(3).steps(8);
  int checked = 0;
  hana::for_each(igrad::all_saliency_methods, [&](auto type) {
    using S = typename decltype(type)::type;
    const auto report =
        igrad::testing::check_saliency_method<S>(model, x, options_for<S>(), saliency_options);
    INFO(report.summary());
    CHECK(report.ok());
    ++checked;
  });
  CHECK(checked == 12);
}

// ---------------------------------------------------------------------------------------------
// Each check can fail: broken policies, each breaking one law, and the sentence that names it.

namespace {

struct ScalarError {  // one number for the batch
  static constexpr const char* name = "ScalarError";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor& g) const {
    return (s - g).square().mean();
  }
};
struct UnclampedCosine {  // ‖δ‖ = 0 divides by zero
  static constexpr const char* name = "UnclampedCosine";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor& g) const {
    const auto a = s.flatten(1), b = g.flatten(1);
    return -(a * b).sum(1) / (a.norm(2, 1) * b.norm(2, 1));
  }
};
struct BatchCentredError {  // centres with the batch's mean: samples leak into each other
  static constexpr const char* name = "BatchCentredError";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor& g) const {
    return (s - s.mean() - g).flatten(1).square().mean(1);
  }
};
struct ReversedCosine {  // higher means closer
  static constexpr const char* name = "ReversedCosine";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor& g) const {
    return -igrad::CosineError{}(s, g);
  }
};
struct DetachedError {  // not differentiable in the student
  static constexpr const char* name = "DetachedError";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor& g) const {
    return (s.detach() - g).flatten(1).abs().mean(1);
  }
};

struct LyingStandardRule {  // claims to be standard but clamps
  static constexpr bool is_standard = true;
  static constexpr const char* name = "LyingStandardRule";
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor&) const {
    return masked.clamp_min(0);
  }
};
struct InPlaceRule {  // clamps the engine's tensor in place
  static constexpr bool is_standard = false;
  static constexpr const char* name = "InPlaceRule";
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor&) const {
    return masked.clamp_min_(0);
  }
};

struct BackwardCam {  // calls backward(): fills the parameters' .grad
  static constexpr const char* name = "BackwardCam";
  torch::Tensor operator()(const igrad::CamRequest& r) const {
    torch::AutoGradMode grad(true);
    const auto a = igrad::request_features(r).clone().requires_grad_(true);
    r.model.forward(r.input).sum().backward();
    return a.detach().sum(1);
  }
};
struct TrainingModeCam {  // runs a training-mode forward pass: batch-norm statistics move
  static constexpr const char* name = "TrainingModeCam";
  torch::Tensor operator()(const igrad::CamRequest& r) const {
    r.model.train(true);
    torch::NoGradGuard no_grad;
    return r.model.features(r.input).sum(1);
  }
};
struct BatchScaledCam {  // scales by the batch's maximum: an image alone gets another map
  static constexpr const char* name = "BatchScaledCam";
  torch::Tensor operator()(const igrad::CamRequest& r) const {
    const auto a = igrad::request_features(r).sum(1);
    return a / a.abs().max();
  }
};
struct ChannelMapsCam {  // returns [N, K, h, w]
  static constexpr const char* name = "ChannelMapsCam";
  torch::Tensor operator()(const igrad::CamRequest& r) const { return igrad::request_features(r); }
};

struct BatchMeanSaliency {  // every input gets the batch's mean gradient
  static constexpr const char* name = "BatchMeanSaliency";
  torch::Tensor operator()(const igrad::SaliencyRequest& r) const {
    const auto g = igrad::target_input_gradient<igrad::StandardReLU>(r, r.input);
    return g.mean(0, true).expand_as(g).clone();
  }
};

}  // namespace

TEST_CASE("conformance: broken error functions are reported, each with the law it breaks") {
  using igrad::testing::check_error_function;
  const auto scalar = check_error_function<ScalarError>();
  CHECK_FALSE(scalar.ok());
  CHECK(names(scalar, "expected the per-sample errors [3]"));
  const auto unclamped = check_error_function<UnclampedCosine>();
  CHECK(names(unclamped, "not finite for a zero standard gradient"));
  CHECK(names(unclamped, "not finite for two zero gradients"));
  CHECK(names(check_error_function<BatchCentredError>(), "depend on sample i only"));
  CHECK(names(check_error_function<ReversedCosine>(), "lower error for a student that agrees"));
  CHECK(names(check_error_function<DetachedError>(), "does not depend differentiably"));
  const auto good = check_error_function<igrad::CosineError>();
  CHECK(good.summary() == "CosineError: conforms");
  CHECK(scalar.summary().rfind("ScalarError breaks", 0) == 0);
}

TEST_CASE("conformance: broken backprop rules are reported, each with the law it breaks") {
  using igrad::testing::check_backprop_rule;
  CHECK(names(check_backprop_rule<LyingStandardRule>(), "is_standard is true but the rule changes"));
  // The in-place rule changes its argument; through the graph it also corrupts the engine's
  // buffers, which the site law may or may not see: the argument law must.
  CHECK(names(check_backprop_rule<InPlaceRule>(), "changed an argument in place"));
}

TEST_CASE("conformance: broken CAM and saliency methods are reported, the model left as it was") {
  auto model = tiny_cnn();
  const auto x = tiny_images();
  std::vector<torch::Tensor> buffers_before;
  for (const auto& b : model->buffers()) buffers_before.push_back(b.clone());
  using igrad::testing::check_cam_method;
  CHECK(names(check_cam_method<BackwardCam>(model, x), "changed a parameter's .grad"));
  CHECK(names(check_cam_method<TrainingModeCam>(model, x), "changed a buffer"));
  CHECK(names(check_cam_method<BatchScaledCam>(model, x), "depend on that image only"));
  CHECK(names(check_cam_method<ChannelMapsCam>(model, x), "expected [3, h, w]"));
  CHECK(names(igrad::testing::check_saliency_method<BatchMeanSaliency>(model, x),
              "depend on that input only"));
  // The checks restored what the broken methods changed.
  CHECK(model->is_training());
  for (const auto& p : model->parameters()) CHECK_FALSE(p.grad().defined());
  const auto buffers_after = model->buffers();
  REQUIRE(buffers_after.size() == buffers_before.size());
  for (std::size_t i = 0; i < buffers_after.size(); ++i)
    CHECK(torch::equal(buffers_after[i], buffers_before[i]));
}

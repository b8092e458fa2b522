// Writing your own policies: an error function, a backprop rule, a CAM method and a training
// callback, each checked against its concept and used once on a tiny model with random data,
// together with the pieces igrad ships (CSV log, checkpoint, weights, evaluation table).
//
// docs/custom_policies.md and docs/tutorial.md show the blocks between the `//! [name]` markers,
// so every snippet in the documentation is code this file compiles and runs (a few seconds).
#include <igrad/igrad.hpp>
#include <igrad/testing/conformance.hpp>

#include "single_process.hpp"

#include <cmath>
#include <filesystem>
#include <limits>
#include <vector>

//! [error_function]
// E(δ, δ') = −corr(δ, δ'): the cosine error of the centred gradients, so a constant offset
// between student and teacher costs nothing.
struct CorrelationError {
  static constexpr const char* name = "CorrelationError";  // the row name in tables

  torch::Tensor operator()(const torch::Tensor& standard, const torch::Tensor& guided) const {
    const auto s = standard.flatten(1), g = guided.flatten(1);  // [N, p]
    const auto sc = s - s.mean(1, /*keepdim=*/true), gc = g - g.mean(1, /*keepdim=*/true);
    // Clamp the squared norms before the square root: an all-zero gradient then gives a finite
    // error and a finite derivative (sqrt has an infinite slope at 0).
    const auto norms = sc.square().sum(1).clamp_min(1e-24).sqrt() *
                       gc.square().sum(1).clamp_min(1e-24).sqrt();
    return -(sc * gc).sum(1) / norms;  // [N]: one error per sample
  }
};
static_assert(igrad::ErrorFunction<CorrelationError>);
//! [error_function]

//! [backprop_rule]
// Guided backprop that lets a fraction `leak` of the negative signal through the active units:
// δu = 1[u>0]·δv where δv > 0, leak·1[u>0]·δv elsewhere.
struct LeakyGuidedReLU {
  static constexpr bool is_standard = false;  // false: igrad attaches it to every rectifier
  static constexpr const char* name = "LeakyGuidedReLU";
  double leak = 0.1;  // state is fine; the rule must stay default-constructible

  // masked = 1[u>0]·δv (ordinary backprop), upstream = δv (before the forward mask).
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor& /*upstream*/) const {
    return torch::where(masked > 0, masked, leak * masked);
  }
};
static_assert(igrad::BackpropRule<LeakyGuidedReLU>);
//! [backprop_rule]

//! [cam_method]
// Grad-CAM with only the positive gradients: α_k = mean_ij ReLU(g^k_ij). Returns the map before
// post-processing; igrad::explain applies ReLU, min–max scaling and upsampling.
struct PositiveGradCam {
  static constexpr const char* name = "PositiveGradCam";

  torch::Tensor operator()(const igrad::CamRequest& request) const {
    const auto fg = igrad::feature_gradients(request);  // A, ∂y^c/∂A and y^c, detached
    const auto weights = torch::relu(fg.gradients).mean({2, 3});  // [N, K]
    return igrad::weighted_feature_sum(weights, fg.activations);  // [N, h, w]
  }
};
static_assert(igrad::CamMethod<PositiveGradCam>);
//! [cam_method]

//! [callback]
// Records L_R after every step and stops training once an epoch's mean L_R is below a goal.
struct RegulariserTrace {
  double goal = -std::numeric_limits<double>::infinity();  // the default never stops
  std::vector<double> per_step;

  void on_batch_end(igrad::TrainerState&, const igrad::StepResult& step) {
    per_step.push_back(step.regulariser_loss);
  }
  bool on_epoch_end(igrad::TrainerState&, igrad::EpochLog& log) {
    log.metrics["regulariser_last_step"] = per_step.back();  // later callbacks see it
    return log.regulariser_loss < goal;                      // true stops fit()
  }
};
static_assert(igrad::Callback<RegulariserTrace>);
//! [callback]

namespace {

// Fails the program with a message when a check does not hold.
void expect(bool holds, const char* what) {
  if (!holds) throw std::runtime_error(fmt::format("check failed: {}", what));
}

// Random images and labels in batches, the shape Trainer::fit accepts as "any range of batches".
std::vector<torch::data::Example<>> random_batches(int64_t batches, int64_t batch_size) {
  std::vector<torch::data::Example<>> data;
  for (int64_t b = 0; b < batches; ++b)
    data.push_back({torch::randn({batch_size, 1, 28, 28}), torch::randint(0, 10, {batch_size})});
  return data;
}

}  // namespace

int main() try {
  if (leave_to_rank_zero("igrad_custom_policies")) return 0;
  torch::set_num_threads(2);
  torch::manual_seed(0);
  const auto work = std::filesystem::temp_directory_path() / "igrad_custom_policies";
  std::filesystem::create_directories(work);

  // A narrow SmallCNN keeps the whole program to a few seconds.
  igrad::models::SmallCNN model(igrad::models::SmallCNNOptions().widths({8, 16, 16}));
  const auto batches = random_batches(/*batches=*/4, /*batch_size=*/16);
  const auto held_out = torch::randn({8, 1, 28, 28});

  //! [trainer]
  torch::optim::Adam optimizer(model->parameters(), 1e-3);
  igrad::Trainer<CorrelationError, LeakyGuidedReLU, PositiveGradCam> trainer(
      model, optimizer, igrad::TrainerOptions().lambda(0.1), CorrelationError{},
      LeakyGuidedReLU{.leak = 0.05});
  trainer.held_out(held_out);  // each epoch's log gets PositiveGradCam's cam_mean, cam_top20_mass

  RegulariserTrace trace;  // passed by reference: it keeps what it recorded after fit()
  const auto logs = trainer.fit(batches, /*epochs=*/2, trace,
                                igrad::CsvLogger(work / "epochs.csv"),
                                igrad::Checkpoint(work / "checkpoint.pt"));
  //! [trainer]

  for (const auto& log : logs)
    fmt::print("epoch {}: L_C {:.4f}, L_R {:.4f}, cam_mean {:.3f}, last step's L_R {:.4f}\n",
               log.epoch, log.classification_loss, log.regulariser_loss,
               log.metrics.at("cam_mean"), log.metrics.at("regulariser_last_step"));
  expect(logs.size() == 2 && trace.per_step.size() == 8, "two epochs of four steps");
  expect(std::isfinite(logs.back().loss), "a finite loss");
  expect(logs.back().regulariser_loss >= -1 && logs.back().regulariser_loss <= 1,
         "a correlation error in [-1, 1]");

  //! [conformance]
  // The laws the concepts cannot check at compile time ([N] errors, finite at zero gradients, a
  // rule acting inside its call only, maps [N, h, w] that match image by image, no .grad or
  // buffer touched...), checked at run time on the policies above; put these in your tests.
  for (const auto& report : {igrad::testing::check_error_function<CorrelationError>(),
                             igrad::testing::check_backprop_rule<LeakyGuidedReLU>(),
                             igrad::testing::check_cam_method<PositiveGradCam>(model, held_out)}) {
    fmt::print("{}\n", report.summary());  // "<name>: conforms", or one line per broken law
    expect(report.ok(), "a custom policy keeps its concept's laws");
  }
  //! [conformance]

  // The error function is finite for an all-zero gradient, value and derivative.
  const auto zero = torch::zeros({2, 1, 28, 28}, torch::requires_grad());
  const auto zero_error = CorrelationError{}(zero, torch::randn({2, 1, 28, 28})).sum();
  zero_error.backward();
  expect(std::isfinite(zero_error.item<double>()) && torch::isfinite(zero.grad()).all().item<bool>(),
         "a finite error and gradient at zero");

  // The rule, used directly: the input gradient of a class score under LeakyGuidedReLU.
  //! [gradient]
  model->eval();  // a training-mode forward pass would update the batch-norm statistics
  const auto x = held_out.clone().requires_grad_(true);
  const auto score = model->forward(x).select(1, 0).sum();  // class 0's logits
  const auto leaky_guided = igrad::gradient<LeakyGuidedReLU>({score}, {x})[0];
  //! [gradient]
  expect(leaky_guided.sizes() == x.sizes(), "an input-shaped gradient");

  //! [explain]
  const auto maps = igrad::explain<PositiveGradCam>(model, held_out);  // [N, H, W] in [0, 1]
  auto table = igrad::evaluate(model, boost::hana::tuple_t<igrad::GradCam, PositiveGradCam>,
                               {held_out, torch::randint(0, 10, {8})},
                               igrad::EvaluationOptions().progress(false));
  fmt::print("{}", table);  // rows GradCam and PositiveGradCam; AD, AI, AG, Insertion, Deletion
  //! [explain]
  expect(maps.sizes() == torch::IntArrayRef({8, 28, 28}) && maps.min().item<float>() >= 0 &&
             maps.max().item<float>() <= 1,
         "maps [8, 28, 28] in [0, 1]");

  //! [saliency]
  // Input-space methods share the calling convention: maps [N, H, W] in [0, 1].
  const auto integrated = igrad::explain<igrad::IntegratedGradients>(model, held_out);
  const auto attributions = igrad::attribute<igrad::GuidedBackprop>(model, held_out);  // [N, C, H, W]
  //! [saliency]
  expect(integrated.sizes() == maps.sizes() && attributions.sizes() == held_out.sizes(),
         "saliency maps [8, 28, 28] and attributions [8, 1, 28, 28]");

  //! [save_load]
  igrad::save_weights(model, work / "weights.pt");
  igrad::models::SmallCNN reloaded(igrad::models::SmallCNNOptions().widths({8, 16, 16}));
  igrad::load_weights(reloaded, work / "weights.pt");  // checks every shape

  // Resuming: the checkpoint holds model, optimizer, next epoch, step count and RNG state.
  torch::optim::Adam resumed_optimizer(reloaded->parameters(), 1e-3);
  const auto progress = igrad::load_checkpoint(work / "checkpoint.pt", reloaded, resumed_optimizer);
  igrad::Trainer<CorrelationError, LeakyGuidedReLU, PositiveGradCam> resumed(reloaded,
                                                                             resumed_optimizer);
  resumed.resume_at(progress.next_epoch, progress.global_step);  // fit_to(batches, 4) runs epochs 2, 3
  //! [save_load]
  expect(progress.next_epoch == 2 && progress.global_step == 8, "the checkpoint's progress");
  {
    torch::NoGradGuard no_grad;
    reloaded->eval();
    expect(torch::equal(model->forward(held_out), reloaded->forward(held_out)),
           "the reloaded model computes the same logits");
  }
  fmt::print("custom policies: all checks passed\n");
  return 0;
} catch (const std::exception& e) {
  fmt::print(stderr, "custom_policies: {}\n", e.what());
  return 1;
}

// Learning-rate schedules (include/igrad/schedules.hpp): the factor of each step against hand
// computation, the rates `fit` actually trains with, and a resumed run that gets the rates and
// weights of the uninterrupted one.
#include "test_support.hpp"

#include <igrad/igrad.hpp>
#include <igrad/schedules.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <vector>

namespace fs = std::filesystem;

namespace {

/// Records the learning rate each step trained with: placed before the scheduler, it reads the
/// rate in `on_batch_end` before the scheduler sets the next one.
struct RateRecorder {
  std::vector<double>* rates;
  void on_batch_end(igrad::TrainerState& state, const igrad::StepResult&) {
    rates->push_back(state.optimizer->param_groups().front().options().get_lr());
  }
};

/// 3 batches of 4 samples: a range `fit` accepts as a loader.
std::vector<torch::data::Example<>> three_batches() {
  torch::manual_seed(4);
  std::vector<torch::data::Example<>> batches;
  for (int i = 0; i < 3; ++i)
    batches.push_back({torch::randn({4, 4}), torch::randint(0, 2, {4}, torch::kLong)});
  return batches;
}

}  // namespace

TEST_CASE("schedules give the hand-computed factor at each step") {
  const auto constant = igrad::constant_lr();
  CHECK(constant(0, 0) == 1.0);
  CHECK(constant(1000, 7) == 1.0);

  // Milestones at epochs 2 and 4, gamma 0.1: 1, 1, 0.1, 0.1, 0.01, ... (the step is ignored).
  const auto steps = igrad::multi_step({4, 2}, 0.1);
  const std::vector<double> by_epoch{1, 1, 0.1, 0.1, 0.01, 0.01};
  for (int64_t e = 0; e < 6; ++e) CHECK(steps(99, e) == doctest::Approx(by_epoch[e]).epsilon(1e-15));

  // Cosine over 10 steps: (1 + cos(π t/10)) / 2; with min 0.2: 0.2 + 0.8 · that.
  const auto cosine = igrad::cosine_annealing(10);
  CHECK(cosine(0, 0) == 1.0);
  CHECK(cosine(5, 0) == doctest::Approx(0.5));
  CHECK(cosine(2, 0) == doctest::Approx(0.9045084971874737));  // (1 + cos 36°) / 2
  CHECK(cosine(10, 0) == doctest::Approx(0.0));
  CHECK(cosine(25, 3) == doctest::Approx(0.0));  // stays at the minimum after T
  const auto floor = igrad::cosine_annealing(10, 0.2);
  CHECK(floor(5, 0) == doctest::Approx(0.6));
  CHECK(floor(10, 0) == doctest::Approx(0.2));

  // Warm-up over 4 steps from 0.25: 0.25, 0.4375, 0.625, 0.8125; then cosine over 10 steps
  // counted from the end of the warm-up.
  const auto warm = igrad::linear_warmup(4, igrad::cosine_annealing(10), 0.25);
  const std::vector<double> expected{0.25, 0.4375, 0.625, 0.8125, 1.0};
  for (int64_t s = 0; s < 5; ++s) CHECK(warm(s, 0) == doctest::Approx(expected[s]));
  CHECK(warm(4 + 5, 1) == doctest::Approx(0.5));
  CHECK(igrad::linear_warmup(0)(0, 0) == 1.0);  // no warm-up

  CHECK_THROWS_AS(igrad::cosine_annealing(0), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::multi_step({-1}), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::linear_warmup(2, igrad::LrSchedule{}), igrad::InvalidArgument);
  CHECK_THROWS_AS(cosine(-1, 0), igrad::InvalidArgument);
  CHECK_THROWS_AS(igrad::LearningRateScheduler(igrad::constant_lr(), 0.0), igrad::InvalidArgument);
}

TEST_CASE("LearningRateScheduler sets the rate of every step and every parameter group in fit") {
  torch::manual_seed(1);
  igrad_test::TinyMlp net;
  // Two parameter groups: the scheduler must set both.
  std::vector<torch::optim::OptimizerParamGroup> groups{
      torch::optim::OptimizerParamGroup(net->first->parameters()),
      torch::optim::OptimizerParamGroup(net->second->parameters())};
  torch::optim::SGD optimizer(groups, torch::optim::SGDOptions(123.0).momentum(0.9));
  igrad::Trainer<> trainer(net, optimizer, igrad::TrainerOptions().lambda(0.0).report_regulariser(false));
  auto batches = three_batches();
  std::vector<double> rates;
  // Warm-up over 2 steps from 0.5, then multi-step at epoch 2 (gamma 0.5), base rate 0.2.
  igrad::LearningRateScheduler scheduler(igrad::linear_warmup(2, igrad::multi_step({2}, 0.5), 0.5),
                                         0.2);
  trainer.fit(batches, 3, RateRecorder{&rates}, scheduler);
  // Steps 0..8 in epochs 0,0,0,1,1,1,2,2,2.
  const std::vector<double> expected{0.1, 0.15, 0.2, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1};
  REQUIRE(rates.size() == expected.size());
  for (size_t i = 0; i < rates.size(); ++i) {
    CAPTURE(i);
    CHECK(rates[i] == doctest::Approx(expected[i]));
  }
  for (auto& group : optimizer.param_groups()) CHECK(group.options().get_lr() == doctest::Approx(0.1));
  CHECK(scheduler.learning_rate() == doctest::Approx(0.1));
}

TEST_CASE("a run resumed from a checkpoint gets the uninterrupted run's rates and weights") {
  const fs::path dir = fs::path(IGRAD_TEST_BINARY_DIR) / "study_schedules_resume";
  igrad_test::remove_tree(dir);
  fs::create_directories(dir);
  const auto schedule = igrad::linear_warmup(2, igrad::cosine_annealing(7), 0.0);
  auto batches = three_batches();

  torch::manual_seed(8);
  igrad_test::TinyMlp full;
  torch::optim::SGD opt_full(full->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-3));
  std::vector<double> full_rates;
  {
    igrad::Trainer<> trainer(full, opt_full, igrad::TrainerOptions().lambda(0.0).report_regulariser(false));
    trainer.fit(batches, 3, RateRecorder{&full_rates}, igrad::LearningRateScheduler(schedule, 0.05));
  }

  torch::manual_seed(8);
  igrad_test::TinyMlp first;
  torch::optim::SGD opt_first(first->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-3));
  std::vector<double> rates;
  {
    igrad::Trainer<> trainer(first, opt_first, igrad::TrainerOptions().lambda(0.0).report_regulariser(false));
    trainer.fit(batches, 1, RateRecorder{&rates}, igrad::LearningRateScheduler(schedule, 0.05),
                igrad::Checkpoint(dir / "run.pt"));
  }
  torch::manual_seed(99);
  igrad_test::TinyMlp resumed;
  // A fresh optimizer with another rate: the scheduler's base rate, not the optimizer's, counts.
  torch::optim::SGD opt_resumed(resumed->parameters(), torch::optim::SGDOptions(7.0).momentum(0.9).weight_decay(1e-3));
  const auto info = igrad::load_checkpoint(dir / "run.pt", resumed, opt_resumed);
  {
    igrad::Trainer<> trainer(resumed, opt_resumed, igrad::TrainerOptions().lambda(0.0).report_regulariser(false));
    trainer.resume_at(info.next_epoch, info.global_step);
    trainer.fit_to(batches, 3, RateRecorder{&rates}, igrad::LearningRateScheduler(schedule, 0.05));
  }
  REQUIRE(rates.size() == full_rates.size());
  for (size_t i = 0; i < rates.size(); ++i) {
    CAPTURE(i);
    CHECK(rates[i] == doctest::Approx(full_rates[i]).epsilon(1e-15));
  }
  // The hand-computed rates: 0.05 · {0, 0.5, then (1 + cos(π t / 7)) / 2 for t = 0..6}.
  const double pi = 3.14159265358979323846;
  CHECK(full_rates[0] == 0.0);
  CHECK(full_rates[1] == doctest::Approx(0.025));
  for (int t = 0; t < 7; ++t) CHECK(full_rates[2 + t] == doctest::Approx(0.05 * (1 + std::cos(pi * t / 7)) / 2));
  const auto a = full->parameters(), b = resumed->parameters();
  for (size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i], b[i]));
  igrad_test::remove_tree(dir);
}

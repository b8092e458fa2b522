// Compile-fail cases: each public entry point that takes a policy or a model, given a type that
// is not one (or nearly is). With IGRAD_COMPILE_FAIL_CASES defined, every case below is compiled in
// one run of the compiler, which reports each case's errors (g++ goes on after an error); a
// `#line` directive names each case's function in those messages, and expect_failure.cmake checks
// that each case failed with a message naming its concept (tests/CMakeLists.txt lists them).
// Without the macro the file compiles: main's well-formed calls keep the fixtures honest, so that
// each case fails because of its one wrong type and nothing else.
#include <igrad/igrad.hpp>

#include <vector>

namespace {

// A Classifier without a features/head split.
struct PlainNetImpl : torch::nn::Module {
  torch::nn::Linear fc{register_module("fc", torch::nn::Linear(4, 2))};
  torch::Tensor forward(torch::Tensor x) { return fc(x.flatten(1)); }
};
TORCH_MODULE(PlainNet);

// Near misses.
struct RuntimeFlagRule {  // is_standard is not a constant expression
  static inline bool is_standard = false;
  static constexpr const char* name = "RuntimeFlagRule";
  torch::Tensor operator()(const torch::Tensor& masked, const torch::Tensor&) const { return masked; }
};
struct RuntimeNameError {  // name is not a constant expression
  static inline const char* name = "RuntimeNameError";
  torch::Tensor operator()(const torch::Tensor& s, const torch::Tensor&) const { return s.sum(1); }
};
struct MutableCam {  // the call operator is not const
  static constexpr const char* name = "MutableCam";
  torch::Tensor operator()(const igrad::CamRequest& r) { return igrad::request_features(r).sum(1); }
};
struct StateOnlyCallback {  // on_epoch_end without the TrainerState
  void on_epoch_end(igrad::EpochLog&) {}
};
struct MisspelledHookCallback {  // a good hook, and on_batch_end missing its StepResult
  void on_epoch_end(igrad::TrainerState&, igrad::EpochLog&) {}
  void on_batch_end(igrad::TrainerState&) {}
};
struct GoodCallback {
  void on_epoch_end(igrad::TrainerState&, igrad::EpochLog&) {}
};

// What the cases call entry points with.
struct Fixture {
  igrad::models::SmallCNN model{igrad::models::SmallCNNOptions().widths({4, 4, 4})};
  torch::optim::SGD optimizer{model->parameters(), 0.1};
  torch::Tensor x = torch::randn({2, 1, 28, 28});
  std::vector<torch::data::Example<>> batches{{x, torch::tensor({0, 1})}};
  igrad::Trainer<> trainer{model, optimizer};
};

}  // namespace

int main() {  // the same calls, well-formed
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  (void)igrad::explain<igrad::GradCam>(model, x);
  (void)igrad::attribute<igrad::Gradient>(model, x);
  trainer.fit(batches, 1, GoodCallback{});
  igrad::for_each_policy(boost::hana::tuple_t<igrad::CosineError, igrad::GuidedReLU>, [](auto) {});
  (void)igrad::cam_explainers(boost::hana::tuple_t<igrad::GradCam>);
  return 0;
}

// The cases come last: the #line directives rename the file for everything after them.
#ifdef IGRAD_COMPILE_FAIL_CASES
#line 1 "case_trainer_error_int"
void case_trainer_error_int() {  // Trainer's E: not a type of the right kind at all
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  igrad::Trainer<int, igrad::GuidedReLU>* wrong = nullptr;
  (void)wrong;
}
#line 1 "case_trainer_rule_as_error"
void case_trainer_rule_as_error() {  // Trainer's E: a rule (issue 14)
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  igrad::Trainer<igrad::GuidedReLU, igrad::GuidedReLU>* wrong = nullptr;
  (void)wrong;
}
#line 1 "case_trainer_runtime_name"
void case_trainer_runtime_name() {  // Trainer's E: a near miss
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  igrad::Trainer<RuntimeNameError>* wrong = nullptr;
  (void)wrong;
}
#line 1 "case_trainer_error_as_rule"
void case_trainer_error_as_rule() {  // Trainer's R: an error function
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  igrad::Trainer<igrad::CosineError, igrad::CosineError>* wrong = nullptr;
  (void)wrong;
}
#line 1 "case_trainer_runtime_flag"
void case_trainer_runtime_flag() {  // Trainer's R: a near miss (issue 15)
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  igrad::Trainer<igrad::CosineError, RuntimeFlagRule>* wrong = nullptr;
  (void)wrong;
}
#line 1 "case_trainer_saliency_as_cam"
void case_trainer_saliency_as_cam() {  // Trainer's C: a saliency method
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  igrad::Trainer<igrad::CosineError, igrad::GuidedReLU, igrad::Gradient>* wrong = nullptr;
  (void)wrong;
}
#line 1 "case_gradient_error_as_rule"
void case_gradient_error_as_rule() {  // igrad::gradient<R>
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  auto input = x.clone().requires_grad_(true);
  (void)igrad::gradient<igrad::CosineError>({model->forward(input).sum()}, {input});
}
#line 1 "case_explain_not_a_method"
void case_explain_not_a_method() {  // explain<C>: neither a CAM nor a saliency method
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  (void)igrad::explain<igrad::GuidedReLU>(model, x);
}
#line 1 "case_explain_mutable_cam"
void case_explain_mutable_cam() {  // explain<C>: a near miss
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  (void)igrad::explain<MutableCam>(model, x);
}
#line 1 "case_explain_no_split"
void case_explain_no_split() {  // explain<C>: a model type without features/head
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  (void)igrad::explain<igrad::GradCam>(PlainNet(), torch::randn({2, 4}));
}
#line 1 "case_attribute_cam"
void case_attribute_cam() {  // attribute<S>: a CAM method
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  (void)igrad::attribute<igrad::GradCam>(model, x);
}
#line 1 "case_fit_not_a_callback"
void case_fit_not_a_callback() {  // fit's callbacks: no hook at all
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  trainer.fit(batches, 1, GoodCallback{}, 42);
}
#line 1 "case_fit_callback_near_miss"
void case_fit_callback_near_miss() {  // fit's callbacks: a hook with the wrong arguments
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  trainer.fit(batches, 1, StateOnlyCallback{});
}
#line 1 "case_fit_callback_wrong_hook"
void case_fit_callback_wrong_hook() {  // fit's callbacks: one good hook, one wrong one
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  trainer.fit(batches, 1, MisspelledHookCallback{});
}
#line 1 "case_monitor_saliency"
void case_monitor_saliency() {  // ExplanationMonitor<C>
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  igrad::ExplanationMonitor<igrad::Gradient>* wrong = nullptr;
  (void)wrong;
}
#line 1 "case_hana_for_each_policy"
void case_hana_for_each_policy() {  // the Hana helpers: for_each_policy
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  igrad::for_each_policy(boost::hana::tuple_t<igrad::CosineError, igrad::GradCam>, [](auto) {});
}
#line 1 "case_hana_cam_explainers"
void case_hana_cam_explainers() {  // the Hana helpers: cam_explainers / evaluate
  Fixture f;
  [[maybe_unused]] auto& [model, optimizer, x, batches, trainer] = f;
  (void)igrad::cam_explainers(boost::hana::tuple_t<igrad::GradCam, igrad::Gradient>);
}
#endif

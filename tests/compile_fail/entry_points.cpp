// Compile-fail cases: each public entry point that takes a policy or a model, given a type that
// is not one (or nearly is). Exactly one IGRAD_CASE_* macro is defined per build, and that build
// must FAIL with a message naming the concept (tests/CMakeLists.txt, expect_failure.cmake).
// Without a case macro the file compiles: the well-formed calls at the end keep the fixtures
// honest, so that each case fails because of its one wrong type and nothing else.
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

}  // namespace

int main() {
  igrad::models::SmallCNN model(igrad::models::SmallCNNOptions().widths({4, 4, 4}));
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  const auto x = torch::randn({2, 1, 28, 28});
  std::vector<torch::data::Example<>> batches{{x, torch::tensor({0, 1})}};
  igrad::Trainer<> trainer(model, optimizer);
  (void)trainer;

#if defined(IGRAD_CASE_TRAINER_ERROR_INT)  // Trainer's E: not a type of the right kind at all
  igrad::Trainer<int, igrad::GuidedReLU>* wrong = nullptr;
  (void)wrong;
#elif defined(IGRAD_CASE_TRAINER_RULE_AS_ERROR)  // Trainer's E: a rule (issue 14)
  igrad::Trainer<igrad::GuidedReLU, igrad::GuidedReLU>* wrong = nullptr;
  (void)wrong;
#elif defined(IGRAD_CASE_TRAINER_RUNTIME_NAME)  // Trainer's E: a near miss
  igrad::Trainer<RuntimeNameError>* wrong = nullptr;
  (void)wrong;
#elif defined(IGRAD_CASE_TRAINER_ERROR_AS_RULE)  // Trainer's R: an error function
  igrad::Trainer<igrad::CosineError, igrad::CosineError>* wrong = nullptr;
  (void)wrong;
#elif defined(IGRAD_CASE_TRAINER_RUNTIME_FLAG)  // Trainer's R: a near miss (issue 15)
  igrad::Trainer<igrad::CosineError, RuntimeFlagRule>* wrong = nullptr;
  (void)wrong;
#elif defined(IGRAD_CASE_TRAINER_SALIENCY_AS_CAM)  // Trainer's C: a saliency method
  igrad::Trainer<igrad::CosineError, igrad::GuidedReLU, igrad::Gradient>* wrong = nullptr;
  (void)wrong;
#elif defined(IGRAD_CASE_GRADIENT_ERROR_AS_RULE)  // igrad::gradient<R>
  auto input = x.clone().requires_grad_(true);
  (void)igrad::gradient<igrad::CosineError>({model->forward(input).sum()}, {input});
#elif defined(IGRAD_CASE_EXPLAIN_NOT_A_METHOD)  // explain<C>: neither a CAM nor a saliency method
  (void)igrad::explain<igrad::GuidedReLU>(model, x);
#elif defined(IGRAD_CASE_EXPLAIN_MUTABLE_CAM)  // explain<C>: a near miss
  (void)igrad::explain<MutableCam>(model, x);
#elif defined(IGRAD_CASE_EXPLAIN_NO_SPLIT)  // explain<C>: a model type without features/head
  (void)igrad::explain<igrad::GradCam>(PlainNet(), torch::randn({2, 4}));
#elif defined(IGRAD_CASE_ATTRIBUTE_CAM)  // attribute<S>: a CAM method
  (void)igrad::attribute<igrad::GradCam>(model, x);
#elif defined(IGRAD_CASE_FIT_NOT_A_CALLBACK)  // fit's callbacks: no hook at all
  trainer.fit(batches, 1, GoodCallback{}, 42);
#elif defined(IGRAD_CASE_FIT_CALLBACK_NEAR_MISS)  // fit's callbacks: a hook with the wrong arguments
  trainer.fit(batches, 1, StateOnlyCallback{});
#elif defined(IGRAD_CASE_FIT_CALLBACK_WRONG_HOOK)  // fit's callbacks: one good hook, one wrong one
  trainer.fit(batches, 1, MisspelledHookCallback{});
#elif defined(IGRAD_CASE_MONITOR_SALIENCY)  // ExplanationMonitor<C>
  igrad::ExplanationMonitor<igrad::Gradient>* wrong = nullptr;
  (void)wrong;
#elif defined(IGRAD_CASE_HANA_FOR_EACH_POLICY)  // the Hana helpers: for_each_policy
  igrad::for_each_policy(boost::hana::tuple_t<igrad::CosineError, igrad::GradCam>, [](auto) {});
#elif defined(IGRAD_CASE_HANA_CAM_EXPLAINERS)  // the Hana helpers: cam_explainers / evaluate
  (void)igrad::cam_explainers(boost::hana::tuple_t<igrad::GradCam, igrad::Gradient>);
#else  // no case: the same calls, well-formed
  (void)igrad::explain<igrad::GradCam>(model, x);
  (void)igrad::attribute<igrad::Gradient>(model, x);
  trainer.fit(batches, 1, GoodCallback{});
  igrad::for_each_policy(boost::hana::tuple_t<igrad::CosineError, igrad::GuidedReLU>, [](auto) {});
  (void)igrad::cam_explainers(boost::hana::tuple_t<igrad::GradCam>);
#endif
  return 0;
}

// Consumes igrad::core alone: training and explaining, without zlib or stb on the link line.
#include <igrad/cam.hpp>
#include <igrad/models/adapters.hpp>
#include <igrad/trainer.hpp>

#include <cmath>
#include <iostream>
#include <string>

int main() {
  torch::manual_seed(0);
  torch::nn::Sequential model(torch::nn::Conv2d(1, 4, 3), torch::nn::ReLU(),
                              torch::nn::AdaptiveAvgPool2d(1), torch::nn::Flatten(),
                              torch::nn::Linear(4, 3));
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  igrad::Trainer<igrad::CosineError, igrad::GuidedReLU> trainer(
      model, optimizer, igrad::TrainerOptions().lambda(0.5));
  const auto result = trainer.step(torch::randn({4, 1, 8, 8}), torch::tensor({0, 1, 2, 0}));
  const auto maps = igrad::explain<igrad::GradCam>(igrad::models::split_sequential(model, 2),
                                                   torch::randn({2, 1, 8, 8}));
  std::cout << "igrad::core: L = " << result.loss << ", maps " << maps.sizes() << '\n';

  // FullGrad reads operator inputs through LibTorch's RecordFunction, whose inline accessor
  // asserts on a debug-only flag when, as here (no build type), NDEBUG is not defined: the
  // decomposition must be complete or the call a clear igrad error, never silently short.
  bool full_grad_ok = false;
  try {
    model->eval();
    const auto x = torch::randn({2, 1, 8, 8});
    const auto targets = torch::tensor({0, 2});
    const igrad::CamRequest request{igrad::models::split_sequential(model, 2), x, targets, {}, {}};
    const auto terms = igrad::full_grad_terms(request);
    auto total = terms.input_term.sum({1, 2, 3});
    for (const auto& term : terms.bias_terms) total = total + term.sum({1, 2, 3});
    const auto linear_bias = model->ptr(4)->as<torch::nn::LinearImpl>()->bias.index_select(0, targets);
    const double gap = (total + linear_bias - terms.scores).abs().max().item<double>();
    std::cout << "igrad::core: FullGrad terms " << terms.bias_terms.size()
              << ", completeness error " << gap << '\n';
    full_grad_ok = terms.bias_terms.size() == 1 && gap < 1e-4;
  } catch (const igrad::GraphError& e) {
    std::cout << "igrad::core: FullGrad refused: " << e.what() << '\n';
    full_grad_ok = std::string(e.what()).find("NDEBUG") != std::string::npos;
  }
  return std::isfinite(result.loss) && maps.size(0) == 2 && full_grad_ok ? 0 : 1;
}

// Consumes igrad::core alone: training and explaining, without zlib or stb on the link line.
#include <igrad/cam.hpp>
#include <igrad/models/adapters.hpp>
#include <igrad/trainer.hpp>

#include <cmath>
#include <iostream>

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
  return std::isfinite(result.loss) && maps.size(0) == 2 ? 0 : 1;
}

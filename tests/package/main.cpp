// A project that uses the installed igrad package: one regularised step on a tiny model.
#include <igrad/igrad.hpp>

#include <iostream>

struct TinyImpl : torch::nn::Module {
  torch::nn::Conv2d conv{register_module("conv", torch::nn::Conv2d(1, 4, 3))};
  torch::nn::Linear fc{register_module("fc", torch::nn::Linear(4, 3))};
  torch::Tensor forward(const torch::Tensor& x) {
    return fc(torch::relu(conv(x)).mean({2, 3}));
  }
};
TORCH_MODULE(Tiny);

int main() {
  torch::manual_seed(0);
  Tiny model;
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  igrad::Trainer<igrad::CosineError, igrad::GuidedReLU> trainer(
      model, optimizer, igrad::TrainerOptions().lambda(0.5));
  const auto result = trainer.step(torch::randn({4, 1, 8, 8}), torch::tensor({0, 1, 2, 0}));
  std::cout << "igrad " << igrad::version_string << ": L = " << result.loss
            << ", L_R = " << result.regulariser_loss << '\n';
  return std::isfinite(result.loss) && result.regulariser_loss <= 0 ? 0 : 1;
}

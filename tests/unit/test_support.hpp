#pragma once
// Shared helpers for igrad's tests: tiny models and finite differences.
#include <igrad/igrad.hpp>

#include <doctest/doctest.h>
#include <torch/torch.h>

#include <ftw.h>

#include <cstdio>
#include <filesystem>
#include <functional>

namespace igrad_test {

/// Deletes a directory tree (if present) with POSIX nftw. Not std::filesystem::remove_all: the
/// libtorch.so of PyTorch's 2.x wheels exports its own copy of it, which the dynamic linker binds
/// our calls to, and that copy crashes on a non-empty directory (seen with 2.11).
inline void remove_tree(const std::filesystem::path& directory) {
  ::nftw(
      directory.c_str(),
      [](const char* path, const struct stat*, int, struct FTW*) { return std::remove(path); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

/// Which rectifier a tiny model uses, to cover every rectifier site kind of SPEC §1.
enum class Rectifier { relu, relu_inplace, module_relu, module_relu_inplace, relu6, none };

/// x [N, 4] -> Linear(4, 3) -> rectifier -> Linear(3, 2): small enough to compute by hand.
struct TinyMlpImpl : torch::nn::Module {
  explicit TinyMlpImpl(Rectifier r = Rectifier::relu) : rectifier(r) {
    first = register_module("first", torch::nn::Linear(4, 3));
    second = register_module("second", torch::nn::Linear(3, 2));
    relu = register_module("relu", torch::nn::ReLU(torch::nn::ReLUOptions(
                                         r == Rectifier::module_relu_inplace)));
    relu6 = register_module("relu6", torch::nn::ReLU6());
  }
  torch::Tensor forward(torch::Tensor x) {
    auto u = first(x);
    switch (rectifier) {
      case Rectifier::relu: u = torch::relu(u); break;
      case Rectifier::relu_inplace: u = torch::relu_(u); break;
      case Rectifier::module_relu:
      case Rectifier::module_relu_inplace: u = relu(u); break;
      case Rectifier::relu6: u = relu6(u); break;
      case Rectifier::none: u = torch::tanh(u); break;
    }
    return second(u);
  }
  Rectifier rectifier;
  torch::nn::Linear first{nullptr}, second{nullptr};
  torch::nn::ReLU relu{nullptr};
  torch::nn::ReLU6 relu6{nullptr};
};
TORCH_MODULE(TinyMlp);

/// A tiny conv net with a ReLU and a max-pool, for finite-difference checks.
struct TinyConvImpl : torch::nn::Module {
  explicit TinyConvImpl(int64_t classes = 3, bool batch_norm = false) {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 3, 3).padding(1)));
    if (batch_norm) bn = register_module("bn", torch::nn::BatchNorm2d(3));
    fc = register_module("fc", torch::nn::Linear(3 * 3 * 3, classes));
  }
  torch::Tensor features(torch::Tensor x) {
    auto a = conv(x);
    if (bn) a = bn(a);
    return torch::max_pool2d(torch::relu(a), 2);
  }
  torch::Tensor head(torch::Tensor a) { return fc(a.flatten(1)); }
  torch::Tensor forward(torch::Tensor x) { return head(features(x)); }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(TinyConv);

/// Copies every parameter and buffer of `from` into `to` (same architecture).
inline void copy_state(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto src = from.parameters(), dst = to.parameters();
  for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  auto bsrc = from.buffers(), bdst = to.buffers();
  for (size_t i = 0; i < bsrc.size(); ++i) bdst[i].copy_(bsrc[i]);
}

/// Central finite differences of a scalar function of `x`, element by element (double).
inline torch::Tensor finite_difference(const std::function<double(const torch::Tensor&)>& f,
                                       const torch::Tensor& x, double h = 1e-6) {
  auto grad = torch::zeros_like(x);
  auto flat = x.detach().clone().view(-1);
  auto g = grad.view(-1);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double old = flat[i].item<double>();
    flat[i] = old + h;
    const double plus = f(flat.view(x.sizes()));
    flat[i] = old - h;
    const double minus = f(flat.view(x.sizes()));
    flat[i] = old;
    g[i] = (plus - minus) / (2 * h);
  }
  return grad;
}

/// Largest absolute difference between two tensors, as a double.
inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

}  // namespace igrad_test

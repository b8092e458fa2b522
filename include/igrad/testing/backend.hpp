#pragma once
/// @file testing/backend.hpp
/// @brief A run-time check of the LibTorch installation itself: whether its CPU convolutions
/// give a batch the same input gradients as its images one at a time.
///
/// Every input-space method and the regulariser differentiate the loss with respect to the
/// input, through LibTorch's convolution backward. Some installations get it wrong for batches:
/// Debian 13's libtorch 2.6.0 with oneDNN 3.7.2 (libdnnl3.6 3.7.2+ds-2), on an AMD EPYC with
/// AVX-512, gives a batch of three 8×8 images input gradients that differ from the per-image ones
/// by more than the gradients themselves, through its oneDNN (mkldnn) convolution path, whatever
/// the thread count; with that path turned off (`at::globalContext().setUserEnabledMkldnn(false)`)
/// the two agree exactly. Nothing in igrad can detect this from its own results, so a program that
/// must trust its gradients calls this check once (docs/reliability.md). It is not included by
/// `<igrad/igrad.hpp>`.

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>

namespace igrad::testing {

/// @ingroup testing_group
/// @brief How far LibTorch's CPU input gradient of a batch departs from its images' own, relative
/// to the largest per-image gradient: 0 in an exact installation, about 1e-7 from rounding, of
/// order 1 in a broken one.
///
/// Differentiates a fixed two-layer convolutional net (3×3 kernels, padding 1, ReLU between) at
/// three seeded 1×8×8 images in float32, once as a batch and once image by image, with whatever
/// backend settings are in force (thread count, `userEnabledMkldnn`). Uses its own generator, so
/// it leaves the global random state alone; takes a few milliseconds.
inline double convolution_gradient_batch_error() {
  const torch::NoGradGuard no_parameter_gradients;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(/*seed_in=*/20261202);
  const auto draw = [&](torch::IntArrayRef sizes) {
    return torch::randn(sizes, generator, torch::TensorOptions().dtype(torch::kFloat32));
  };
  const auto w1 = draw({2, 1, 3, 3}), b1 = draw({2}), w2 = draw({3, 2, 3, 3}), b2 = draw({3});
  const auto images = draw({3, 1, 8, 8});
  const auto input_gradient = [&](const torch::Tensor& x) {
    const torch::AutoGradMode enabled(true);
    const auto input = x.clone().requires_grad_(true);
    const auto hidden = torch::relu(torch::conv2d(input, w1, b1, 1, 1));
    const auto output = torch::conv2d(hidden, w2, b2, 1, 1);
    return torch::autograd::grad({output.sum()}, {input})[0];
  };
  const auto batched = input_gradient(images);
  double largest = 0, worst = 0;
  for (int64_t i = 0; i < images.size(0); ++i) {
    const auto alone = input_gradient(images.slice(0, i, i + 1))[0];
    largest = std::max(largest, alone.abs().max().item<double>());
    worst = std::max(worst, (alone - batched[i]).abs().max().item<double>());
  }
  return largest > 0 ? worst / largest : worst;
}

}  // namespace igrad::testing

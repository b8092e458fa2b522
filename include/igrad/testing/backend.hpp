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
/// the two agree exactly. Its batch gradient reads memory it never wrote: after freed blocks were
/// filled with NaN it is NaN, otherwise it is wrong by a margin that depends on the heap. Nothing
/// in igrad can detect this from its own results, so a program that must trust its gradients
/// calls this check once (docs/reliability.md). It is not included by `<igrad/igrad.hpp>`.

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace igrad::testing {

/// @ingroup testing_group
/// @brief How far `batched`, a batch's input gradient, departs from `one_by_one`, the same
/// images' gradients computed one at a time: the largest absolute difference relative to the
/// largest `|one_by_one|` (absolute when that is 0), and +∞ when either holds a NaN or an infinity.
///
/// A non-finite gradient is the worst departure, not none: a maximum taken with NaN would
/// silently skip it. Throws `InvalidArgument` when a tensor is undefined or the shapes differ.
inline double relative_batch_departure(const torch::Tensor& batched,
                                       const torch::Tensor& one_by_one) {
  igrad::detail::require(
      batched.defined() && one_by_one.defined() && batched.sizes() == one_by_one.sizes(),
      "relative_batch_departure got gradients of shapes {} and {}; expected "
      "two defined tensors of the same shape",
      igrad::detail::shape_string(batched), igrad::detail::shape_string(one_by_one));
  if (!igrad::detail::all_finite(batched) || !igrad::detail::all_finite(one_by_one))
    return std::numeric_limits<double>::infinity();
  const double worst = (batched - one_by_one).abs().max().item<double>();
  const double largest = one_by_one.abs().max().item<double>();
  return largest > 0 ? worst / largest : worst;
}

/// @ingroup testing_group
/// @brief Allocates `count` float tensors of `elements`, `elements + 1`, ... elements filled with
/// NaN and releases them, so that the allocator likely hands those blocks out next: a kernel that
/// reads memory it never wrote then gives NaN instead of whatever the heap held.
inline void release_nan_filled_blocks(int64_t elements, int count) {
  std::vector<torch::Tensor> blocks;
  for (int i = 0; i < count; ++i)
    blocks.push_back(torch::full({elements + i}, std::numeric_limits<float>::quiet_NaN()));
}

/// @ingroup testing_group
/// @brief How far LibTorch's CPU input gradient of a batch departs from its images' own, relative
/// to the largest per-image gradient (`relative_batch_departure`): 0 in an exact installation,
/// about 1e-7 from rounding, of order 1 (or +∞ for a NaN gradient) in a broken one.
///
/// Differentiates a fixed two-layer convolutional net (3×3 kernels, padding 1, ReLU between) at
/// three seeded 1×8×8 images in float32, once as a batch and once image by image, with whatever
/// backend settings are in force (thread count, `userEnabledMkldnn`). It does so twice, the
/// second time after handing the allocator back blocks filled with NaN, and returns the worse of
/// the two: a kernel that reads memory it never wrote then shows it, whatever the heap held
/// before. Uses its own generator, so it leaves the global random state alone; takes a few
/// milliseconds.
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
  const auto departure = [&] {
    const auto batched = input_gradient(images);
    std::vector<torch::Tensor> alone;
    for (int64_t i = 0; i < images.size(0); ++i)
      alone.push_back(input_gradient(images.slice(0, i, i + 1)));
    return relative_batch_departure(batched, torch::cat(alone));
  };
  const double on_the_heap_as_found = departure();
  // Blocks of the sizes the gradients' buffers and their workspaces take.
  for (int64_t elements = 64; elements <= 65536; elements *= 4)
    release_nan_filled_blocks(elements, /*count=*/16);
  return std::max(on_the_heap_as_found, departure());
}

}  // namespace igrad::testing

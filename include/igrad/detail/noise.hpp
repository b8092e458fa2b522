#pragma once
/// @file detail/noise.hpp
/// @brief The noise of the noisy methods (SmoothGrad, SmoothGrad-CAM++, SS-CAM): a CPU
/// generator that never touches the global RNG, standard normal draws from it, and the per-image
/// noise scale `σ = level · (max x − min x)`.

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string_view>
#include <vector>

namespace igrad::detail {

/// The CPU generator a noisy method draws from: the options' own or a fresh one from the seed.
inline torch::Generator noise_generator(const c10::optional<torch::Generator>& given,
                                        uint64_t seed) {
  if (given.has_value()) {
    require(given->device().is_cpu(),
            "the noise generator is on {}; expected a CPU generator (noise is drawn on the CPU so "
            "that results do not depend on the device)",
            given->device().str());
    return *given;
  }
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

/// Standard normal noise drawn on the CPU from `generator`, then moved to `like`'s device/dtype.
inline torch::Tensor standard_normal(torch::Generator& generator, at::IntArrayRef shape,
                                     const torch::Tensor& like) {
  return torch::randn(shape, generator, torch::dtype(torch::kFloat))
      .to(like.device(), like.scalar_type());
}

/// The noise standard deviation of each sample of `x` `[N, ...]`: `σ = level · (max x − min x)`
/// per sample, shaped `[N, 1, ...]` to broadcast against `x`. `level` must be finite and >= 0
/// (`InvalidArgument` naming `option`, the setting it came from).
inline torch::Tensor noise_scale(const torch::Tensor& x, double level, std::string_view option) {
  require(level >= 0 && std::isfinite(level), "{} is {}; expected a finite value >= 0", option,
          level);
  const auto flat = x.flatten(1);
  std::vector<int64_t> per_sample(static_cast<size_t>(x.dim()), 1);
  per_sample[0] = x.size(0);
  return (level * (std::get<0>(flat.max(1)) - std::get<0>(flat.min(1)))).view(per_sample);
}

}  // namespace igrad::detail

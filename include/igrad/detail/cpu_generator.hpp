#pragma once
/// @file detail/cpu_generator.hpp
/// @brief Reading, setting and keeping the state of LibTorch's default CPU generator (which
/// shuffles data loaders and initialises modules), under the generator's own lock.

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <mutex>

namespace igrad::detail {

/// The state of LibTorch's default CPU generator.
inline torch::Tensor cpu_generator_state() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

/// Sets the state of LibTorch's default CPU generator.
inline void set_cpu_generator_state(const torch::Tensor& state) {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

/// Restores the default CPU generator's state on exit: work that must not advance the caller's
/// random stream (building a copy of a model runs its modules' default initialisation) runs
/// inside one.
class CpuGeneratorStateGuard {
 public:
  CpuGeneratorStateGuard() : state_(cpu_generator_state()) {}
  ~CpuGeneratorStateGuard() { set_cpu_generator_state(state_); }
  CpuGeneratorStateGuard(const CpuGeneratorStateGuard&) = delete;
  CpuGeneratorStateGuard& operator=(const CpuGeneratorStateGuard&) = delete;

 private:
  torch::Tensor state_;
};

}  // namespace igrad::detail

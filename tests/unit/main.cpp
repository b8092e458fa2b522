// doctest's main for igrad_tests. Threads are pinned so results and timings do not depend on
// how many cores the machine has.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <igrad/allocator.hpp>
#include <igrad/testing/backend.hpp>
#include <torch/torch.h>

#include <cstdio>

int main(int argc, char** argv) {
  igrad::tune_allocator();
  torch::set_num_threads(1);
  // The suite tests igrad's gradients against LibTorch's. Where LibTorch's oneDNN convolution
  // path gives batches wrong input gradients (testing/backend.hpp names the installation seen),
  // the suite says so and runs on LibTorch's other convolution path; the test case "backend:
  // ..." checks that the two then agree.
  const double error = igrad::testing::convolution_gradient_batch_error();
  if (error > 1e-4 && at::globalContext().userEnabledMkldnn()) {
    std::fprintf(stderr,
                 "igrad_tests: this LibTorch's oneDNN (mkldnn) convolutions give a batch input "
                 "gradients %.3g (relative) away from its images' own: a LibTorch bug, not "
                 "igrad's; running with at::globalContext().setUserEnabledMkldnn(false)\n",
                 error);
    at::globalContext().setUserEnabledMkldnn(false);
  }
  doctest::Context context(argc, argv);
  return context.run();
}

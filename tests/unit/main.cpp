// doctest's main for igrad_tests. Threads are pinned so results and timings do not depend on
// how many cores the machine has.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <igrad/allocator.hpp>
#include <torch/torch.h>

int main(int argc, char** argv) {
  igrad::tune_allocator();
  torch::set_num_threads(1);
  doctest::Context context(argc, argv);
  return context.run();
}

// libFuzzer target: igrad_fuzz::run_checkpoint (see targets.hpp). Built with IGRAD_BUILD_FUZZERS=ON.
#include "targets.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  igrad_fuzz::initialise();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  igrad_fuzz::run_checkpoint(data, size);
  return 0;
}

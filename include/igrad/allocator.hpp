#pragma once
/// @file allocator.hpp
/// @brief Opt-in tuning of glibc's malloc for LibTorch training loops.
///
/// With glibc's defaults every training step hands its large temporaries back to the system and
/// page-faults them in again, which makes step times swing by 4x or more. Call
/// `igrad::tune_allocator()` once at the start of `main` (or set
/// `MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_MMAP_MAX_=0` in the
/// environment) to keep freed memory in the process. Blocks above 32 MiB, the largest mmap
/// threshold glibc accepts, would still be mapped and unmapped on every allocation: mmap is
/// switched off so that they come from the heap and are reused too (without that, the demo's
/// evaluation spent 18 million page faults and 37 % of its CPU time in the kernel). Peak memory
/// grows a little (fragmentation of the heap); memory is returned to the system later. Elsewhere
/// than glibc this does nothing.

// First: a C++ standard header brings glibc's <features.h>, which defines __GLIBC__ (tested below);
// this header is meant to be included before anything else.
#include <fstream>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace igrad {

/// @brief Keeps freed memory in the process instead of trimming or unmapping it after each step
/// (glibc): trim threshold 2 GiB, mmap threshold 32 MiB, and no mmap for larger blocks either.
/// Returns whether glibc took all three settings.
inline bool tune_allocator() {
#if defined(__GLIBC__)
  const bool trim = mallopt(M_TRIM_THRESHOLD, 2147483647) == 1;
  const bool mmap = mallopt(M_MMAP_THRESHOLD, 33554432) == 1;
  const bool no_mmap = mallopt(M_MMAP_MAX, 0) == 1;  // also keeps blocks above the threshold
  return trim && mmap && no_mmap;
#else
  return false;
#endif
}

/// @brief The process's resident memory (`VmRSS`) in KiB, read from `/proc/self/status`; 0 where
/// that file does not exist (outside Linux). For memory benchmarks and leak checks.
inline long resident_memory_kib() {
  std::ifstream status("/proc/self/status");
  std::string key;
  long value = 0;
  while (status >> key) {
    if (key == "VmRSS:") {
      status >> value;
      return value;
    }
    status.ignore(1 << 12, '\n');
  }
  return 0;
}

}  // namespace igrad

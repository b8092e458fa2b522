#pragma once
/// @file allocator.hpp
/// @brief Opt-in tuning of glibc's malloc for LibTorch training loops.
///
/// With glibc's defaults every training step hands its large temporaries back to the system and
/// page-faults them in again, which makes step times swing by 4x or more. Call
/// `igrad::tune_allocator()` once at the start of `main` (or set
/// `MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_MMAP_THRESHOLD_=33554432` in the environment) to
/// keep freed memory in the process. Peak memory is unchanged; memory is returned to the system
/// later. Elsewhere than glibc this does nothing.

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <fstream>
#include <string>

namespace igrad {

/// @brief Keeps freed memory in the process instead of trimming it after each step (glibc).
/// Returns whether anything was changed.
inline bool tune_allocator() {
#if defined(__GLIBC__)
  const bool trim = mallopt(M_TRIM_THRESHOLD, 2147483647) == 1;
  const bool mmap = mallopt(M_MMAP_THRESHOLD, 33554432) == 1;
  return trim && mmap;
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

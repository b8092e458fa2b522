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

}  // namespace igrad

#pragma once
/// @file detail/batched_jobs.hpp
/// @brief The one batched job loop: jobs `[0, total)` in slices of at most `batch`, so that
/// memory is bounded by the slice (masked forward passes of the CAM methods, the chunks of the
/// saliency methods and of `prepare_batch`).

#include <igrad/exceptions.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string_view>

namespace igrad::detail {

/// Calls `run(start, end)` for consecutive slices `[start, end)` of `[0, total)` of at most
/// `batch` jobs, in order; `progress(end, total)`, when set, after each slice. `batch` must be
/// >= 1 (`InvalidArgument` naming `option`, the setting it came from).
template <class Run>
void for_each_batch(int64_t total, int64_t batch, std::string_view option, Run&& run,
                    const std::function<void(int64_t, int64_t)>& progress = nullptr) {
  require(batch > 0, "{} is {}; expected at least 1", option, batch);
  for (int64_t start = 0; start < total; start += batch) {
    const int64_t end = std::min(total, start + batch);
    run(start, end);
    if (progress) progress(end, total);
  }
}

}  // namespace igrad::detail

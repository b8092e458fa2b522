// For the examples that run as one process (quickstart, ablation, custom policies): under a
// launcher (torchrun, srun, mpirun, tools/launch/local.sh) rank 0 runs the whole example and every
// other rank returns at once, so that N copies neither repeat the work nor write the same files.
// The demo and the study runner share their work out instead (docs/distributed.md).
#pragma once

#include <igrad/distributed.hpp>

#include <fmt/format.h>

/// Whether this process should leave the example to rank 0: true on ranks > 0, after saying so.
/// Throws igrad::InvalidArgument for launcher variables that make no sense (as the demo does).
inline bool leave_to_rank_zero(const char* program) {
  const auto launch = igrad::distributed::LaunchEnvironment::from_environment();
  if (launch.rank == 0) return false;
  fmt::print("{} runs as one process: rank {} of {} ({}) leaves it to rank 0\n", program,
             launch.rank, launch.world_size, launch.launcher);
  return true;
}

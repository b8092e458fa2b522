#pragma once
/// @file callbacks/checkpoint.hpp
/// @brief The `Checkpoint` callback: training checkpoints (model, optimizer, progress, RNG),
/// written atomically. `save_checkpoint`, `load_checkpoint` and `CheckpointInfo` live in
/// `<igrad/models/serialize.hpp>` (included here), beside the weights files they share their
/// archive format with.

#include <igrad/callbacks/callback.hpp>
#include <igrad/data/sampler.hpp>
#include <igrad/detail/archive_integrity.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>
#include <igrad/models/serialize.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cxxabi.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <typeinfo>
#include <vector>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief Callback: saves a checkpoint every `every` epochs (and after the last one), or every
/// so many steps with `every_steps`.
///
/// The path is checked when training begins (a writable directory, created if missing; the
/// path itself not a directory), so a bad path fails before the first step rather than after
/// an epoch. A `.partial` file left by a process killed mid-write is removed then.
class Checkpoint {
 public:
  /// @brief Checkpoints to `path`, overwritten atomically each time.
  explicit Checkpoint(std::filesystem::path path, int64_t every = 1)
      : path_(std::move(path)), every_(every) {
    detail::require(every >= 1, "Checkpoint every {} epochs; expected >= 1", every);
  }
  /// @brief Also (and instead of every `every` epochs, at the end of each epoch) saves every
  /// `steps` training steps, mid-epoch included: for long epochs or runs that may be killed.
  /// A mid-epoch checkpoint resumes at the start of its epoch (see `CheckpointInfo::batch`).
  Checkpoint& every_steps(int64_t steps) {
    detail::require(steps >= 1, "Checkpoint every_steps({}); expected >= 1", steps);
    every_steps_ = steps;
    every_ = 1;
    return *this;
  }
  /// @brief Checks that `path` can be written before any step is done.
  void on_train_begin(TrainerState&) {
    namespace fs = std::filesystem;
    detail::require(!path_.empty(), "Checkpoint path is empty; expected a file path");
    std::error_code error;
    detail::require(!fs::is_directory(path_, error),
                    "Checkpoint path '{}' is a directory; expected a file path such as '{}'",
                    path_.string(), (path_ / "checkpoint.pt").string());
    const auto directory = path_.has_parent_path() ? path_.parent_path() : fs::path(".");
    fs::create_directories(directory, error);
    detail::require(fs::is_directory(directory),
                    "Checkpoint path '{}': its directory '{}' cannot be created ({}); expected "
                    "a path in a writable directory",
                    path_.string(), directory.string(),
                    error ? error.message() : "a file of that name exists");
    // Writing the temporary file save_checkpoint will use is the one portable test of
    // permission, space and read-only mounts; it also clears one left by a killed process.
    auto probe = path_;
    probe += ".partial";
    bool written = false;
    {
      std::ofstream out(probe, std::ios::binary | std::ios::trunc);
      written = static_cast<bool>(out << "igrad" << std::flush);
    }
    fs::remove(probe, error);
    detail::require(written,
                    "Checkpoint path '{}' cannot be written (creating '{}' failed); expected a "
                    "path in a writable directory",
                    path_.string(), probe.string());
  }
  /// @brief Remembers the generator state the epoch's shuffle is drawn from.
  void on_epoch_begin(TrainerState&) {
    if (every_steps_ > 0) epoch_rng_ = detail::cpu_generator_state();
  }
  /// @brief Saves every `every_steps` steps, when set.
  void on_batch_end(TrainerState& state, const StepResult&) {
    if (every_steps_ == 0 || state.global_step % every_steps_ != 0) return;
    detail::write_checkpoint(path_, state.model, *state.optimizer,
                             {state.epoch, state.global_step, state.batch},
                             epoch_rng_.defined() ? epoch_rng_ : detail::cpu_generator_state());
  }
  /// @brief Saves when due.
  void on_epoch_end(TrainerState& state, EpochLog&) {
    if ((state.epoch + 1) % every_ == 0 || state.epoch + 1 == state.epochs)
      save_checkpoint(path_, state.model, *state.optimizer, {state.epoch + 1, state.global_step});
  }
  /// @brief The checkpoint's path.
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int64_t every_;
  int64_t every_steps_ = 0;
  torch::Tensor epoch_rng_;
};

/// @}
}  // namespace igrad

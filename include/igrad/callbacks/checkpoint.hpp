#pragma once
/// @file callbacks/checkpoint.hpp
/// @brief Training checkpoints (model, optimizer, progress, RNG), written atomically.

#include <igrad/callbacks/callback.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief Where a training run stands, as stored in a checkpoint.
struct CheckpointInfo {
  int64_t next_epoch = 0;   ///< the first epoch still to run
  int64_t global_step = 0;  ///< steps done
};

namespace detail {
/// The state of LibTorch's default CPU generator (which shuffles data loaders).
inline torch::Tensor cpu_generator_state() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

/// Writes `archive` to `path` + ".partial", then renames it over `path`: an interrupted write
/// never leaves a truncated file. `what` names the file's kind in the error message.
inline void save_archive_atomically(torch::serialize::OutputArchive& archive,
                                    const std::filesystem::path& path, std::string_view what) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  auto temporary = path;
  temporary += ".partial";
  try {
    archive.save_to(temporary.string());
    std::filesystem::rename(temporary, path);
  } catch (const std::exception& e) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw Error(fmt::format("cannot write {} '{}': {}", what, path.string(), first_line(e.what())));
  }
}

/// Loads a model's weights from `archive`, checking every shape (LibTorch's `nn::Module::load`
/// silently adopts a stored tensor of another shape); on a mismatch or a read error the model is
/// restored and `DataError` names `path`.
inline void load_model_checked(const AnyModel& model, torch::serialize::InputArchive& archive,
                               const std::filesystem::path& path, std::string_view what) {
  auto tensors = model.parameters();
  const auto parameter_count = tensors.size();
  for (auto& b : model.buffers()) tensors.push_back(b);
  // Copies of the current weights (loading may re-point tensors or overwrite them in place).
  std::vector<torch::Tensor> previous;
  for (const auto& t : tensors) previous.push_back(t.detach().clone());
  const auto restore = [&] {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].set_(previous[i]);
  };
  try {
    model.load(archive);
  } catch (const std::exception& e) {
    restore();
    if (dynamic_cast<const Error*>(&e) != nullptr) throw;
    throw DataError(fmt::format("{} '{}' does not fit this model: {}; expected weights saved "
                                "from the same architecture",
                                what, path.string(), first_line(e.what())));
  }
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].sizes() == previous[i].sizes()) continue;
    const auto stored = shape_string(tensors[i]);
    restore();
    const bool parameter = i < parameter_count;
    throw DataError(fmt::format(
        "{} '{}' does not fit this model: {} {} has shape {} in the file but {} in the model; "
        "expected weights saved from the same architecture (the model was left unchanged)",
        what, path.string(), parameter ? "parameter" : "buffer",
        parameter ? i : i - parameter_count, stored, shape_string(previous[i])));
  }
}
}  // namespace detail

/// @brief Writes model, optimizer, progress and the CPU RNG state to `path` atomically: the
/// archive goes to a temporary file in the same directory, then replaces `path` by a rename,
/// so a crash mid-write leaves the previous checkpoint intact.
inline void save_checkpoint(const std::filesystem::path& path, const AnyModel& model,
                            torch::optim::Optimizer& optimizer, CheckpointInfo info) {
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("next_epoch", torch::tensor(info.next_epoch));
  archive.write("global_step", torch::tensor(info.global_step));
  archive.write("cpu_rng_state", detail::cpu_generator_state());
  detail::save_archive_atomically(archive, path, "checkpoint");
}

/// @brief Reads a checkpoint written by `save_checkpoint` into `model` and `optimizer`, restores
/// the CPU RNG state (so a resumed run shuffles as the uninterrupted one) and returns the progress.
inline CheckpointInfo load_checkpoint(const std::filesystem::path& path, const AnyModel& model,
                                      torch::optim::Optimizer& optimizer) {
  detail::require<DataError>(std::filesystem::exists(path),
                             "checkpoint '{}' does not exist; expected a file written by "
                             "igrad::save_checkpoint",
                             path.string());
  torch::serialize::InputArchive archive, model_archive, optimizer_archive;
  try {
    archive.load_from(path.string(), model.device());
    archive.read("model", model_archive);
    archive.read("optimizer", optimizer_archive);
    detail::load_model_checked(model, model_archive, path, "checkpoint");
    optimizer.load(optimizer_archive);
    torch::Tensor next_epoch, global_step, rng;
    archive.read("next_epoch", next_epoch);
    archive.read("global_step", global_step);
    archive.read("cpu_rng_state", rng);
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(rng.cpu());
    return {next_epoch.item<int64_t>(), global_step.item<int64_t>()};
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw DataError(fmt::format("checkpoint '{}' cannot be read: {}", path.string(),
                                detail::first_line(e.what())));
  }
}

/// @brief Callback: saves a checkpoint every `every` epochs (and after the last one).
class Checkpoint {
 public:
  /// @brief Checkpoints to `path`, overwritten atomically each time.
  explicit Checkpoint(std::filesystem::path path, int64_t every = 1)
      : path_(std::move(path)), every_(every) {
    detail::require(every >= 1, "Checkpoint every {} epochs; expected >= 1", every);
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
};

/// @}
}  // namespace igrad

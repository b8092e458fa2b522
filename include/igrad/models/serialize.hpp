#pragma once
/// @file models/serialize.hpp
/// @brief Saving and loading a model's weights (`torch::serialize` archives, written atomically).
///
/// Training checkpoints (model, optimizer, progress, RNG) are `igrad::save_checkpoint` and
/// `igrad::load_checkpoint` of `<igrad/callbacks/checkpoint.hpp>`, included here: they accept the
/// same `AnyModel`s, adapters included.

#include <igrad/callbacks/checkpoint.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>

#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace igrad {

/// @addtogroup models_group
/// @{

/// @brief Writes the weights (parameters and buffers) of `model` to `path`.
///
/// The archive goes to `path` + ".partial" first and then replaces `path` by a rename, so an
/// interrupted write never leaves a truncated weights file behind. Parent directories are
/// created. Throws `Error` when the file cannot be written.
inline void save_weights(const AnyModel& model, const std::filesystem::path& path) {
  torch::serialize::OutputArchive archive;
  model.save(archive);
  detail::save_archive_atomically(archive, path, "weights");
}

/// @brief Reads weights written by `save_weights` (or by `torch::save` of the same module) into
/// `model`, on the model's device. The model's tensors stay the same objects, so an optimizer
/// built on its parameters keeps working.
///
/// Throws `DataError` naming the file when it is missing, not an archive, or holds weights of
/// another architecture (a missing tensor or a wrong shape); the model is then left as it was.
/// (LibTorch's own `nn::Module::load` silently adopts a stored tensor of another shape; igrad
/// checks every shape.)
inline void load_weights(const AnyModel& model, const std::filesystem::path& path) {
  detail::require<DataError>(std::filesystem::is_regular_file(path),
                             "weights file '{}' does not exist; expected a file written by "
                             "igrad::save_weights",
                             path.string());
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path.string(), model.device());
  } catch (const std::exception& e) {
    throw DataError(fmt::format("weights file '{}' cannot be read: {}; expected a file written "
                                "by igrad::save_weights",
                                path.string(), detail::first_line(e.what())));
  }
  detail::load_model_checked(model, archive, path, "weights file");
}

/// @}
}  // namespace igrad

#pragma once
/// @file models/serialize.hpp
/// @brief Saving and loading a model's weights (`torch::serialize` archives, written atomically).
///
/// Training checkpoints (model, optimizer, progress, RNG) are `igrad::save_checkpoint` and
/// `igrad::load_checkpoint` of `<igrad/callbacks/checkpoint.hpp>`, included here: they accept the
/// same `AnyModel`s, adapters included.

#include <igrad/callbacks/checkpoint.hpp>
#include <igrad/detail/archive_integrity.hpp>
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

/// @brief Writes the weights (parameters and buffers) of `model` to `path`, with a digest.
///
/// The archive goes to `path` + ".partial" first and then replaces `path` by a rename, so an
/// interrupted write never leaves a truncated weights file behind. Beside the tensors the file
/// holds a CRC-32 of everything stored (key `igrad_digest`), which `load_weights` checks; the
/// file stays a plain LibTorch archive that `torch::load` reads too. Parent directories are
/// created. Throws `Error` when the file cannot be written.
inline void save_weights(const AnyModel& model, const std::filesystem::path& path) {
  torch::serialize::OutputArchive archive;
  model.save(archive);
  detail::add_digest(archive);
  detail::save_archive_atomically(archive, path, "weights");
}

/// @brief Reads weights written by `save_weights` (or by `torch::save` of the same module) into
/// `model`, on the model's device. The model's tensors stay the same objects, so an optimizer
/// built on its parameters keeps working.
///
/// Throws `DataError` naming the file, and the model is left as it was, when the file is
/// missing or not an archive; when its digest does not match its content (a flipped byte); or
/// when it holds weights that do not fit: a missing tensor, or one of another shape, dtype
/// (a file saved from a double model into a float one) or device, named in the message.
/// (LibTorch's own `nn::Module::load` silently adopts a stored tensor of another shape and
/// reinterprets one of another dtype.) A file without a digest — written by an igrad older
/// than the digest, or by `torch::save` — loads with every check but the digest.
inline void load_weights(const AnyModel& model, const std::filesystem::path& path) {
  torch::serialize::InputArchive archive;
  detail::load_archive(archive, path, model.device(), "weights file", "igrad::save_weights");
  detail::ModelSnapshot snapshot(model);
  try {
    detail::verify_digest(archive, path, "weights file");
    detail::load_model_checked(model, archive, path, "weights file", snapshot);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // LibTorch's own errors on a corrupt file's content.
    snapshot.restore();
    throw DataError(fmt::format("weights file '{}' cannot be read: {}; expected a file written "
                                "by igrad::save_weights (the model was left unchanged)",
                                path.string(), detail::first_line(e.what())));
  }
}

/// @}
}  // namespace igrad

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
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  auto temporary = path;
  temporary += ".partial";
  try {
    archive.save_to(temporary.string());
    std::filesystem::rename(temporary, path);
  } catch (const std::exception& e) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw Error(fmt::format("cannot write weights '{}': {}", path.string(),
                            detail::first_line(e.what())));
  }
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
  auto tensors = model.parameters();
  for (auto& b : model.buffers()) tensors.push_back(b);
  // Copies of the current weights (loading may re-point tensors or overwrite them in place),
  // put back when the file turns out not to fit.
  std::vector<torch::Tensor> previous;
  for (const auto& t : tensors) previous.push_back(t.detach().clone());
  const auto restore = [&] {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].set_(previous[i]);
  };
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path.string(), model.device());
    model.load(archive);
  } catch (const std::exception& e) {
    restore();
    if (dynamic_cast<const Error*>(&e) != nullptr) throw;
    throw DataError(fmt::format("weights file '{}' does not fit this model: {}; expected weights "
                                "saved from the same architecture",
                                path.string(), detail::first_line(e.what())));
  }
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].sizes() == previous[i].sizes()) continue;
    const auto stored = detail::shape_string(tensors[i]);
    restore();
    const bool parameter = i < model.parameters().size();
    throw DataError(fmt::format(
        "weights file '{}' does not fit this model: {} {} has shape {} in the file but {} in the "
        "model; expected weights saved from the same architecture (the model was left unchanged)",
        path.string(), parameter ? "parameter" : "buffer",
        parameter ? i : i - model.parameters().size(), stored,
        detail::shape_string(previous[i])));
  }
}

/// @}
}  // namespace igrad

#pragma once
/// @file models/serialize.hpp
/// @brief Saving and loading a model's weights (`torch::serialize` archives, written atomically).
///
/// Training checkpoints (model, optimizer, progress, RNG) are written and read here too
/// (`igrad::save_checkpoint`, `igrad::load_checkpoint`): they accept the same `AnyModel`s,
/// adapters included. The callback that writes them during `fit`, `igrad::Checkpoint`, is in
/// `<igrad/callbacks/checkpoint.hpp>`, which includes this header.

#include <igrad/detail/archive_integrity.hpp>
#include <igrad/detail/cpu_generator.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>

#include <torch/torch.h>

#include <cxxabi.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <typeinfo>
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
    throw DataError(
        igrad::detail::format("weights file '{}' cannot be read: {}; expected a file written "
                              "by igrad::save_weights (the model was left unchanged)",
                              path.string(), detail::first_line(e.what())));
  }
}

/// @}

/// @addtogroup trainer_group
/// @{

/// @brief Where a training run stands, as stored in a checkpoint.
struct CheckpointInfo {
  int64_t next_epoch = 0;   ///< the first epoch still to run (the current one, mid-epoch)
  int64_t global_step = 0;  ///< steps done
  /// Batches of `next_epoch` already done when the checkpoint was written mid-epoch
  /// (`Checkpoint::every_steps`); 0 at an epoch boundary. `Trainer::fit` runs whole epochs, so
  /// a resumed run redoes that epoch from its start, with the same shuffle.
  int64_t batch = 0;
};

namespace detail {

/// The optimizer's class, readable ("torch::optim::Adam"), stored so that a checkpoint of
/// another optimizer kind is refused before anything is loaded.
inline std::string optimizer_kind(const torch::optim::Optimizer& optimizer) {
  const char* mangled = typeid(optimizer).name();
  int status = 0;
  char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : mangled;
  std::free(demangled);
  return name;
}

/// The optimizer's state, serialised in memory (to put it back when a load fails).
inline std::string serialised_optimizer(const torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::ostringstream bytes;
  archive.save_to(bytes);
  return bytes.str();
}

/// Restores what `serialised_optimizer` took.
inline void restore_optimizer(torch::optim::Optimizer& optimizer, const std::string& bytes) {
  torch::serialize::InputArchive archive;
  archive.load_from(bytes.data(), bytes.size());
  optimizer.load(archive);
}

/// Writes a checkpoint with an explicit generator state (`Checkpoint` saves mid-epoch with the
/// state the epoch started from, so that the redone epoch shuffles the same).
inline void write_checkpoint(const std::filesystem::path& path, const AnyModel& model,
                             torch::optim::Optimizer& optimizer, CheckpointInfo info,
                             const torch::Tensor& rng_state) {
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("optimizer_kind", c10::IValue(optimizer_kind(optimizer)));
  archive.write("next_epoch", torch::tensor(info.next_epoch));
  archive.write("global_step", torch::tensor(info.global_step));
  archive.write("batch", torch::tensor(info.batch));
  archive.write("cpu_rng_state", rng_state);
  add_digest(archive);
  save_archive_atomically(archive, path, "checkpoint");
}

/// A non-negative integer scalar of a checkpoint; `fallback` when absent (older files).
inline int64_t read_count(torch::serialize::InputArchive& archive, const char* key,
                          const std::filesystem::path& path, std::optional<int64_t> fallback) {
  torch::Tensor value;
  if (!archive.try_read(key, value)) {
    require<DataError>(fallback.has_value(),
                       "checkpoint '{}' lacks '{}'; expected a file written by "
                       "igrad::save_checkpoint",
                       path.string(), key);
    return *fallback;
  }
  require<DataError>(value.numel() == 1 && !value.is_floating_point() && !value.is_complex(),
                     "checkpoint '{}': '{}' has dtype {} and shape {}; expected an integer "
                     "scalar",
                     path.string(), key, c10::toString(value.scalar_type()), shape_string(value));
  require_within_storage(value, key, "checkpoint", path);
  const auto count = value.item<int64_t>();
  require<DataError>(count >= 0, "checkpoint '{}': '{}' is {}; expected a count >= 0",
                     path.string(), key, count);
  return count;
}
}  // namespace detail

/// @brief Writes model, optimizer, progress and the CPU RNG state to `path` atomically: the
/// archive goes to a temporary file in the same directory, then replaces `path` by a rename,
/// so a crash mid-write leaves the previous checkpoint intact. The file holds a digest of its
/// content and the optimizer's kind, which `load_checkpoint` checks.
inline void save_checkpoint(const std::filesystem::path& path, const AnyModel& model,
                            torch::optim::Optimizer& optimizer, CheckpointInfo info) {
  detail::write_checkpoint(path, model, optimizer, info, detail::cpu_generator_state());
}

namespace detail {
/// The body of `load_checkpoint`.
inline CheckpointInfo load_checkpoint_transaction(const std::filesystem::path& path,
                                                  const AnyModel& model,
                                                  torch::optim::Optimizer& optimizer) {
  torch::serialize::InputArchive archive, model_archive, optimizer_archive;
  detail::load_archive(archive, path, model.device(), "checkpoint", "igrad::save_checkpoint");
  const bool has_digest = detail::verify_digest(archive, path, "checkpoint");
  CheckpointInfo info;
  torch::Tensor rng;
  try {
    archive.read("model", model_archive);
    archive.read("optimizer", optimizer_archive);
    archive.read("cpu_rng_state", rng);
  } catch (const std::exception& e) {
    throw DataError(
        igrad::detail::format("checkpoint '{}' cannot be read: {}; expected a file written by "
                              "igrad::save_checkpoint",
                              path.string(), detail::first_line(e.what())));
  }
  info.next_epoch = detail::read_count(archive, "next_epoch", path, std::nullopt);
  info.global_step = detail::read_count(archive, "global_step", path, std::nullopt);
  info.batch = detail::read_count(archive, "batch", path, 0);
  detail::require_within_storage(rng, "cpu_rng_state", "checkpoint", path);
  rng = rng.to(torch::kCPU);
  const auto current_rng = detail::cpu_generator_state();
  detail::require<DataError>(rng.scalar_type() == current_rng.scalar_type() &&
                                 rng.sizes() == current_rng.sizes(),
                             "checkpoint '{}' holds a CPU generator state of dtype {} and shape "
                             "{}; expected {} {} (the file is corrupt or from another LibTorch)",
                             path.string(), c10::toString(rng.scalar_type()),
                             detail::shape_string(rng), c10::toString(current_rng.scalar_type()),
                             detail::shape_string(current_rng));
  c10::IValue stored_kind;
  if (archive.try_read("optimizer_kind", stored_kind)) {
    const auto kind = detail::optimizer_kind(optimizer);
    detail::require<DataError>(stored_kind.isString() && stored_kind.toStringRef() == kind,
                               "checkpoint '{}' holds the state of optimizer {}, but the "
                               "optimizer given is {}; expected the optimizer kind the run was "
                               "checkpointed with (nothing was loaded)",
                               path.string(),
                               stored_kind.isString() ? stored_kind.toStringRef() : "(corrupt)",
                               kind);
  } else {
    detail::require<DataError>(!has_digest,
                               "checkpoint '{}' lacks 'optimizer_kind'; expected a file written "
                               "by igrad::save_checkpoint",
                               path.string());
  }

  detail::ModelSnapshot model_before(model);
  const auto optimizer_before = detail::serialised_optimizer(optimizer);
  detail::load_model_checked(model, model_archive, path, "checkpoint", model_before);
  try {
    optimizer.load(optimizer_archive);
  } catch (const std::exception& e) {
    detail::restore_optimizer(optimizer, optimizer_before);
    model_before.restore();
    throw DataError(igrad::detail::format(
        "checkpoint '{}' holds optimizer state that does not fit this "
        "optimizer ({}): {}; expected the optimizer kind and parameters "
        "the run was checkpointed with (model and optimizer were left "
        "unchanged)",
        path.string(), detail::optimizer_kind(optimizer), detail::first_line(e.what())));
  }
  try {
    detail::set_cpu_generator_state(rng);
  } catch (const std::exception& e) {
    detail::restore_optimizer(optimizer, optimizer_before);
    model_before.restore();
    detail::set_cpu_generator_state(current_rng);
    throw DataError(
        igrad::detail::format("checkpoint '{}' holds a CPU generator state LibTorch refuses: "
                              "{} (model and optimizer were left unchanged)",
                              path.string(), detail::first_line(e.what())));
  }
  return info;
}
}  // namespace detail

/// @brief Reads a checkpoint written by `save_checkpoint` into `model` and `optimizer`, restores
/// the CPU RNG state (so a resumed run shuffles as the uninterrupted one) and returns the progress.
///
/// A transaction: everything is checked before anything is changed, and a failure at any point
/// puts model, optimizer and generator back as they were. Throws `DataError` naming the file
/// when it is missing or not a checkpoint; when its digest does not match its content (a flipped
/// byte); when the model's tensors do not fit (architecture, dtype, device: the tensor is
/// named); when it holds the state of another optimizer kind, or state that does not fit this
/// optimizer. A checkpoint written before the digest existed loads without the digest and kind
/// checks (the others still apply).
///
/// Exact resume needs the data loader to draw its first shuffle after this call: use
/// `igrad::data::ResumableRandomSampler` (any construction order), or build a loader with
/// LibTorch's `RandomSampler` *before* calling this (its constructor draws).
inline CheckpointInfo load_checkpoint(const std::filesystem::path& path, const AnyModel& model,
                                      torch::optim::Optimizer& optimizer) {
  try {
    return detail::load_checkpoint_transaction(path, model, optimizer);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // LibTorch's own errors on a corrupt file's content (each step that changes something
    // restores what it changed before this is reached).
    throw DataError(
        igrad::detail::format("checkpoint '{}' cannot be read: {}; expected a file written by "
                              "igrad::save_checkpoint",
                              path.string(), detail::first_line(e.what())));
  }
}

/// @}
}  // namespace igrad

#pragma once
/// @file models/torchscript.hpp
/// @brief TorchScript modules (exported from PyTorch with `features` and `head` methods) as igrad
/// models: explained, measured and fine-tuned from C++. See docs/torchscript.md for the export.

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace igrad::detail {

/// Calls method `name` of a TorchScript module on one tensor, with the graph executor's
/// optimisation switched off for this thread and this call.
///
/// Why: after a few profiled runs the profiling executor fuses differentiable ops into
/// `DifferentiableGraph` nodes whose single autograd node hides the `ReluBackward0` nodes that
/// igrad's backprop rules attach to (SPEC §1); a guided gradient would then silently degrade to
/// the standard one, or fail with "no rectifier site". Unoptimised, the interpreter runs each op
/// eagerly, so the autograd graph holds one node per op, as for a C++ module.
inline torch::Tensor call_script_method(const std::shared_ptr<torch::jit::Module>& module,
                                        const std::string& name, const torch::Tensor& input) {
  torch::jit::GraphOptimizerEnabledGuard unoptimised(false);
  auto method = module->get_method(name);
  const auto result = method(std::vector<c10::IValue>{input});
  require<InvalidArgument>(result.isTensor(),
                           "TorchScript method '{}' returned a {}; expected a single tensor",
                           name, result.tagKind());
  return result.toTensor();
}

/// Writes a TorchScript module's parameters and buffers into `archive`, one nested archive per
/// submodule: the layout `nn::Module::save` uses, so names match those of a C++ twin.
inline void save_script_state(const torch::jit::Module& module,
                              torch::serialize::OutputArchive& archive) {
  for (const auto& p : module.named_parameters(/*recurse=*/false))
    archive.write(p.name, p.value);
  for (const auto& b : module.named_buffers(/*recurse=*/false))
    archive.write(b.name, b.value, /*is_buffer=*/true);
  for (const auto& child : module.named_children()) {
    torch::serialize::OutputArchive nested(archive.compilation_unit());
    save_script_state(child.value, nested);
    archive.write(child.name, nested);
  }
}

/// Reads what `save_script_state` wrote into the module's tensors, in place (so optimizers that
/// hold the parameters keep working), checking each shape.
inline void load_script_state(const torch::jit::Module& module,
                              torch::serialize::InputArchive& archive, const std::string& prefix) {
  const auto copy_into = [&](const std::string& name, const torch::Tensor& target, bool buffer) {
    torch::Tensor stored;
    archive.read(name, stored, buffer);
    require<DataError>(stored.sizes() == target.sizes(),
                       "weights of '{}{}' have shape {}; the TorchScript model expects {}", prefix,
                       name, igrad::detail::format("{}", fmt::join(stored.sizes(), "x")),
                       igrad::detail::format("{}", fmt::join(target.sizes(), "x")));
    torch::NoGradGuard no_grad;
    target.copy_(stored);
  };
  for (const auto& p : module.named_parameters(/*recurse=*/false)) copy_into(p.name, p.value, false);
  for (const auto& b : module.named_buffers(/*recurse=*/false)) copy_into(b.name, b.value, true);
  for (const auto& child : module.named_children()) {
    torch::serialize::InputArchive nested;
    archive.read(child.name, nested);
    load_script_state(child.value, nested, prefix + child.name + ".");
  }
}

}  // namespace igrad::detail

namespace igrad::models {

/// @addtogroup zoo_group
/// @{

/// @brief A TorchScript module as an igrad model.
///
/// The module must define `forward(x)`, or `features(x)` and `head(a)` (exported with
/// `@torch.jit.export`), or all three. With `features` and `head`, CAM methods work and
/// `forward` defaults to `head(features(x))` when the module has no `forward` of its own.
/// Parameters are the module's own tensors: an optimizer built on `model.parameters()` fine-tunes
/// the module, and the `Trainer` accepts it. Every call runs with the graph executor's
/// optimisation off, so backprop rules find every ReLU on every call (see docs/torchscript.md).
/// Save / load go through the module's named parameters and buffers.
/// Throws `InvalidArgument` when the methods are missing.
inline AnyModel from_torchscript(torch::jit::Module module) {
  auto shared = std::make_shared<torch::jit::Module>(std::move(module));
  const bool has_forward = shared->find_method("forward").has_value();
  const bool has_features = shared->find_method("features").has_value();
  const bool has_head = shared->find_method("head").has_value();
  detail::require(has_features == has_head,
                  "the TorchScript module defines only {} of features/head; expected both "
                  "(mark them @torch.jit.export) or neither",
                  has_features ? "features" : "head");
  detail::require(has_forward || has_features,
                  "the TorchScript module defines neither forward nor features/head; expected "
                  "forward(x), or features(x) and head(a) exported with @torch.jit.export");
  AnyModel::Functions f;
  if (has_features) {
    f.features = [shared](const torch::Tensor& x) {
      return detail::call_script_method(shared, "features", x);
    };
    f.head = [shared](const torch::Tensor& a) {
      return detail::call_script_method(shared, "head", a);
    };
  }
  if (has_forward) {
    f.forward = [shared](const torch::Tensor& x) {
      return detail::call_script_method(shared, "forward", x);
    };
  } else {
    f.forward = [shared](const torch::Tensor& x) {
      return detail::call_script_method(shared, "head",
                                        detail::call_script_method(shared, "features", x));
    };
  }
  f.parameters = [shared] {
    std::vector<torch::Tensor> tensors;
    for (const auto& p : shared->parameters()) tensors.push_back(p);
    return tensors;
  };
  f.buffers = [shared] {
    std::vector<torch::Tensor> tensors;
    for (const auto& b : shared->buffers()) tensors.push_back(b);
    return tensors;
  };
  f.train = [shared](bool on) { shared->train(on); };
  f.is_training = [shared] { return shared->is_training(); };
  f.save = [shared](torch::serialize::OutputArchive& a) { detail::save_script_state(*shared, a); };
  f.load = [shared](torch::serialize::InputArchive& a) {
    detail::load_script_state(*shared, a, "");
  };
  return AnyModel(std::move(f));
}

/// @brief Loads a TorchScript file (`torch.jit.save` / `Module::save`) onto `device` (where it
/// was saved from, by default) and adapts it with `from_torchscript`.
///
/// Throws `DataError` naming the file when it is missing or not a TorchScript archive.
inline AnyModel load_torchscript(const std::filesystem::path& path,
                                 std::optional<torch::Device> device = std::nullopt) {
  detail::require<DataError>(std::filesystem::is_regular_file(path),
                             "TorchScript file '{}' does not exist; expected a file written by "
                             "torch.jit.save (see docs/torchscript.md)",
                             path.string());
  torch::jit::Module module;
  try {
    module = device ? torch::jit::load(path.string(), *device) : torch::jit::load(path.string());
  } catch (const std::exception& e) {
    throw DataError(
        igrad::detail::format("TorchScript file '{}' cannot be loaded: {}; expected a file "
                              "written by torch.jit.save",
                              path.string(), detail::first_line(e.what())));
  }
  return from_torchscript(std::move(module));
}

/// @}
}  // namespace igrad::models

#pragma once
/// @file model.hpp
/// @brief What igrad needs from a model, and a type-erased handle to any such model.
///
/// LibTorch's C++ `nn::Module` has no virtual `forward` and no forward hooks, so igrad asks for
/// two things: a classifier's `forward(x)` returning logits, and — for class activation maps —
/// a `features(x)` / `head(a)` split with `forward = head ∘ features`. `AnyModel` erases the
/// model's type so that one non-template code path serves every model, including adapters for
/// `nn::Sequential`, pairs of callables and TorchScript modules.

#include <igrad/concepts.hpp>
#include <igrad/detail/mode_lease.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <concepts>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace igrad {

/// @defgroup models_group Models
/// @brief The model concepts and the type-erased model handle.
/// @{

/// @brief A copyable, type-erased handle to a classifier; copies share the same model.
///
/// Built implicitly from any `Classifier` (and from a `FeatureClassifier`, keeping its split), or
/// explicitly from `AnyModel::Functions` by adapters.
class AnyModel {
 public:
  /// @brief The operations a model handle forwards to. `features` and `head` may be empty.
  struct Functions {
    std::function<torch::Tensor(const torch::Tensor&)> forward;   ///< x -> logits
    std::function<torch::Tensor(const torch::Tensor&)> features;  ///< x -> feature map (optional)
    std::function<torch::Tensor(const torch::Tensor&)> head;      ///< feature map -> logits (optional)
    std::function<std::vector<torch::Tensor>()> parameters;       ///< trainable parameters
    std::function<std::vector<torch::Tensor>()> buffers;          ///< state such as BN statistics
    std::function<void(bool)> train;                              ///< switch train / eval mode
    std::function<bool()> is_training;                            ///< current mode
    std::function<void(torch::serialize::OutputArchive&)> save;   ///< write weights
    std::function<void(torch::serialize::InputArchive&)> load;    ///< read weights

    /// @brief The module operations of `module` (parameters, buffers, train/eval, save/load);
    /// `forward`, `features` and `head` are left for the caller to set.
    static Functions of_module(const std::shared_ptr<torch::nn::Module>& module) {
      Functions f;
      f.parameters = [module] { return module->parameters(); };
      f.buffers = [module] { return module->buffers(); };
      f.train = [module](bool on) { module->train(on); };
      f.is_training = [module] { return module->is_training(); };
      f.save = [module](torch::serialize::OutputArchive& a) { module->save(a); };
      f.load = [module](torch::serialize::InputArchive& a) { module->load(a); };
      return f;
    }
  };

  /// @brief Adapts a handle from its operations (for adapters; `forward`, `parameters`,
  /// `buffers`, `train` and `is_training` are required).
  explicit AnyModel(Functions functions) : fn_(std::move(functions)) {
    detail::require(fn_.forward && fn_.parameters && fn_.buffers && fn_.train && fn_.is_training,
                    "AnyModel::Functions lacks one of forward, parameters, buffers, train, "
                    "is_training; expected all five to be set");
    detail::require(static_cast<bool>(fn_.features) == static_cast<bool>(fn_.head),
                    "AnyModel::Functions sets only one of features / head; expected both or none");
  }

  /// @brief Wraps a LibTorch module handle (`ModuleHolder` or `std::shared_ptr`).
  template <Classifier M>
  AnyModel(M model)  // NOLINT(google-explicit-constructor): any classifier is a model
      : AnyModel(functions_of(std::move(model))) {}

  /// @brief Logits `[N, K]` of a batch.
  torch::Tensor forward(const torch::Tensor& x) const { return fn_.forward(x); }
  /// @brief Same as forward().
  torch::Tensor operator()(const torch::Tensor& x) const { return fn_.forward(x); }
  /// @brief Whether the model exposes a `features` / `head` split.
  bool has_feature_split() const { return static_cast<bool>(fn_.features); }
  /// @brief The feature map of a batch; throws `GraphError` when the model has no split.
  torch::Tensor features(const torch::Tensor& x) const {
    require_split("features");
    return fn_.features(x);
  }
  /// @brief Logits from a feature map; throws `GraphError` when the model has no split.
  torch::Tensor head(const torch::Tensor& a) const {
    require_split("head");
    return fn_.head(a);
  }
  /// @brief The trainable parameters.
  std::vector<torch::Tensor> parameters() const { return fn_.parameters(); }
  /// @brief The buffers (batch-norm running statistics, ...).
  std::vector<torch::Tensor> buffers() const { return fn_.buffers(); }
  /// @brief Switches between training and evaluation mode.
  void train(bool on = true) const { fn_.train(on); }
  /// @brief Switches to evaluation mode.
  void eval() const { fn_.train(false); }
  /// @brief Whether the model is in training mode.
  bool is_training() const { return fn_.is_training(); }
  /// @brief The device of the first parameter (or buffer); CPU for a model with neither.
  torch::Device device() const {
    for (const auto& p : parameters()) return p.device();
    for (const auto& b : buffers()) return b.device();
    return torch::kCPU;
  }
  /// @brief The floating dtype of the first parameter; float for a model without parameters.
  torch::Dtype dtype() const {
    for (const auto& p : parameters()) return p.scalar_type();
    return torch::kFloat;
  }
  /// @brief Writes the weights to an archive.
  void save(torch::serialize::OutputArchive& archive) const {
    detail::require(static_cast<bool>(fn_.save), "this model cannot be saved: its adapter "
                                                 "provides no save function");
    fn_.save(archive);
  }
  /// @brief Reads the weights from an archive.
  void load(torch::serialize::InputArchive& archive) const {
    detail::require(static_cast<bool>(fn_.load), "this model cannot be loaded: its adapter "
                                                 "provides no load function");
    fn_.load(archive);
  }
  /// @brief The operations this handle forwards to (for adapters that extend a handle).
  const Functions& functions() const { return fn_; }

  /// @brief The operations of a LibTorch module handle, with `features`/`head` when it has them.
  template <Classifier M>
  static Functions functions_of(M model) {
    Functions f = Functions::of_module(module_pointer(model));
    f.forward = [model](const torch::Tensor& x) mutable { return torch::Tensor(model->forward(x)); };
    if constexpr (FeatureClassifier<M>) {
      f.features = [model](const torch::Tensor& x) mutable {
        return torch::Tensor(model->features(x));
      };
      f.head = [model](const torch::Tensor& a) mutable { return torch::Tensor(model->head(a)); };
    }
    return f;
  }

 private:
  template <class M>
  static std::shared_ptr<torch::nn::Module> module_pointer(const M& model) {
    if constexpr (requires { model.ptr(); }) {
      return model.ptr();
    } else {
      return model;
    }
  }

  void require_split(const char* what) const {
    detail::require<GraphError>(has_feature_split(),
                                "{}() was called on a model without a features/head split; "
                                "expected a model with features(x) and head(a) (see "
                                "igrad::FeatureClassifier and the adapters in igrad/models)",
                                what);
  }

  Functions fn_;
};

/// @brief Holds a model in train or eval mode for a scope, safely across threads.
///
/// The guard takes the model's mode lease (see `detail::ModeLeases`): on construction it waits
/// until no other thread holds the model in the *other* mode, then switches it (if no other
/// thread already holds it in this mode); on destruction, the last guard of the group restores
/// the mode the first one found. So, for guards on one model (whichever `AnyModel` handle or
/// adapter they were built from, since a model is identified by its first parameter):
/// - inside a guard's scope the model is in the guard's mode, whatever other threads do through
///   guards, `explain`, `attribute` or igrad's metrics (which all take such a guard);
/// - guards in the same mode on several threads overlap; guards in different modes never do
///   (a training step waits for the explanations under way, and they for it);
/// - a guard nested on the same thread in the other mode (an explanation inside a training
///   callback) suspends the outer one for its scope and takes it back after.
///
/// What it cannot guard: mode switches made without it (`module->train()`, `module->eval()`
/// called directly) and forward passes run outside any guard. A training loop written by hand
/// that shares its model with explaining threads must hold `TrainingModeGuard(model, true)` for
/// each step (Trainer::step does).
class TrainingModeGuard {
 public:
  /// @brief Switches `model` to `training` (waiting for other threads' guards in the other mode)
  /// and remembers what to restore.
  TrainingModeGuard(const AnyModel& model, bool training)
      : model_(model), key_(detail::ModeLeases::instance().acquire(model_, training)) {}
  ~TrainingModeGuard() { detail::ModeLeases::instance().release(key_, model_); }
  TrainingModeGuard(const TrainingModeGuard&) = delete;
  TrainingModeGuard& operator=(const TrainingModeGuard&) = delete;

 private:
  AnyModel model_;
  const void* key_;
};

/// @brief One stage of a model: a features/head split at that stage's feature map, and its name.
struct ModelStage {
  std::string name;  ///< e.g. "stage 2" or "layers [0, 5)"
  AnyModel model;    ///< the model with `features` = the stage's map, `head` = the rest
};

/// @brief The stages of a `StagedClassifier`, each as a model split at its feature map
/// (named "stage 1", …, "stage n"), for `explain_stages` and `explain_fused`.
///
/// Stage s's `features(x)` is `model->stages(x)[s]` (the stages before it are computed too),
/// its `head(a)` is `model->head_from(s, a)`; parameters, buffers, mode and weights are the
/// model's own. Throws `InvalidArgument` for a `stage_count()` below 1, and `GraphError` when
/// `stages(x)` returns another number of maps than `stage_count()`.
template <StagedClassifier M>
std::vector<ModelStage> model_stages(M model) {
  const auto count = static_cast<int64_t>(model->stage_count());
  detail::require(count >= 1, "model_stages(): the model reports {} stages; expected at least 1",
                  count);
  const auto base = AnyModel::functions_of(model);
  std::vector<ModelStage> stages;
  for (int64_t s = 0; s < count; ++s) {
    auto f = base;
    f.features = [model, s, count](const torch::Tensor& x) mutable {
      auto maps = model->stages(x);
      detail::require<GraphError>(static_cast<int64_t>(maps.size()) == count,
                                  "the model's stages(x) returned {} feature maps; expected "
                                  "stage_count() = {}", maps.size(), count);
      return torch::Tensor(maps[static_cast<std::size_t>(s)]);
    };
    f.head = [model, s](const torch::Tensor& a) mutable {
      return torch::Tensor(model->head_from(s, a));
    };
    stages.push_back({"stage " + std::to_string(s + 1), AnyModel(std::move(f))});
  }
  return stages;
}

/// @}
}  // namespace igrad

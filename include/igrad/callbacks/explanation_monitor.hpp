#pragma once
/// @file callbacks/explanation_monitor.hpp
/// @brief A training callback that reports explanation statistics and faithfulness on a
/// held-out batch.

#include <igrad/callbacks/callback.hpp>
#include <igrad/cam/explain.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics/faithfulness.hpp>
#include <igrad/trainer.hpp>

#include <torch/torch.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief At each epoch end, explains a held-out batch with CAM method `C` and adds to
/// `EpochLog::metrics` (names with the prefix, `cam_` by default):
/// - `cam_mean` (mean map value) and `cam_top20_mass` (share of each map's mass in its top 20 %
///   of pixels, averaged over images; see `MapStatistics`);
/// - `cam_average_drop`, `cam_average_increase`, `cam_average_gain`: Average Drop / Increase /
///   Gain of those maps on the batch (SPEC §5, in %), unless `faithfulness(false)`. Give the
///   held-out images' normalisation with `.normalization(dataset.normalization())` whenever they
///   are normalised: the maps then mask the images in pixel space; without it a masked pixel
///   becomes the normalised 0, the dataset's mean rather than black, and the three figures
///   measure something else.
///
/// Before the first step (`on_train_begin`) it checks that the model has a features/head split
/// and explains the first held-out image, so a held-out set the model cannot take fails before
/// any training; it also claims its metric names (`TrainerState::claim_metric`), so two monitors
/// writing the same names fail there too: give one another `prefix`.
///
/// The model is explained in evaluation mode and returned to training mode; no gradient or
/// buffer of the model changes. Place it before callbacks that read the metrics (`CsvLogger`,
/// `EarlyStopping`).
/// @snippet doc_snippets.cpp explanation_monitor
/// @tparam C the CAM method (`CamMethod`).
template <CamMethod C = GradCam>
class ExplanationMonitor {
 public:
  /// @brief Monitors `inputs` `[N, C, H, W]` with their `targets` `[N]` (the predicted classes
  /// when undefined).
  explicit ExplanationMonitor(torch::Tensor inputs, torch::Tensor targets = {},
                              CamOptions options = {}, C method = C())
      : inputs_(std::move(inputs)),
        targets_(std::move(targets)),
        options_(std::move(options)),
        method_(std::move(method)) {
    detail::require(inputs_.defined() && inputs_.dim() == 4 && inputs_.size(0) > 0,
                    "ExplanationMonitor: held-out inputs have shape {}; expected [N, C, H, W]",
                    detail::shape_string(inputs_));
    detail::require(!targets_.defined() || (targets_.dim() == 1 && targets_.size(0) == inputs_.size(0) &&
                                            !targets_.is_floating_point()),
                    "ExplanationMonitor: held-out targets have shape {} for {} inputs; expected "
                    "[{}] integer class indices, or none",
                    detail::shape_string(targets_), inputs_.size(0), inputs_.size(0));
  }

  /// @brief The normalisation of the held-out images, so that faithfulness masks pixels.
  ExplanationMonitor& normalization(std::optional<DatasetNormalization> value) {
    normalization_ = std::move(value);
    return *this;
  }
  /// @brief Whether to report Average Drop / Increase / Gain (default true).
  ExplanationMonitor& faithfulness(bool on) {
    faithfulness_ = on;
    return *this;
  }
  /// @brief The prefix of the metric names (default `cam_`).
  ExplanationMonitor& prefix(std::string value) {
    prefix_ = std::move(value);
    return *this;
  }
  /// @brief Who the monitor is in error messages (default `ExplanationMonitor<C::name>`).
  ExplanationMonitor& owner(std::string value) {
    owner_ = std::move(value);
    return *this;
  }

  /// @brief The metric names it writes, in order.
  std::vector<std::string> metric_names() const {
    std::vector<std::string> names{prefix_ + "mean", prefix_ + "top20_mass"};
    if (faithfulness_)
      for (const char* name : {"average_drop", "average_increase", "average_gain"})
        names.push_back(prefix_ + name);
    return names;
  }

  /// @brief Checks the model and the held-out set, and claims the metric names.
  void on_train_begin(TrainerState& state) const {
    detail::require<GraphError>(
        state.model.has_feature_split(),
        "{} needs a model with a features/head split to explain the held-out set; expected a "
        "FeatureClassifier (features() and head())",
        owner_name());
    // One image through the CAM method: a held-out set of another input size or channel count,
    // or a target out of range, fails now rather than after the first epoch. A generator of the
    // options' own is left out so that this check does not advance it.
    auto check_options = options_;
    check_options.generator(c10::nullopt);
    igrad::explain<C>(state.model, inputs_.slice(0, 0, 1),
                      targets_.defined() ? targets_.slice(0, 0, 1) : targets_, check_options,
                      method_);
    for (const auto& name : metric_names()) state.claim_metric(name, owner_name());
  }

  /// @brief Adds the statistics (and faithfulness) of the held-out maps to the epoch's log.
  void on_epoch_end(TrainerState& state, EpochLog& log) const {
    for (const auto& name : metric_names())
      detail::require(log.metrics.count(name) == 0,
                      "EpochLog::metrics['{}'] was already written by a callback before {}; "
                      "expected one writer per key (give this monitor another prefix)",
                      name, owner_name());
    const auto maps = igrad::explain<C>(state.model, inputs_, targets_, options_, method_);
    const auto statistics = map_statistics(maps, 0.2);
    log.metrics[prefix_ + "mean"] = statistics.mean;
    log.metrics[prefix_ + "top20_mass"] = statistics.top_mass;
    if (!faithfulness_) return;
    torch::Tensor classes = targets_;
    if (!classes.defined()) {
      torch::NoGradGuard no_grad;
      TrainingModeGuard evaluation(state.model, false);
      classes = state.model(inputs_.to(state.model.device())).argmax(1);
    }
    const auto f = igrad::faithfulness(state.model, inputs_, maps, classes,
                                       MaskingOptions().normalization(normalization_));
    log.metrics[prefix_ + "average_drop"] = f.average_drop;
    log.metrics[prefix_ + "average_increase"] = f.average_increase;
    log.metrics[prefix_ + "average_gain"] = f.average_gain;
  }

 private:
  std::string owner_name() const {
    return owner_.empty() ? igrad::detail::format("ExplanationMonitor<{}>", C::name) : owner_;
  }

  torch::Tensor inputs_, targets_;
  CamOptions options_;
  C method_;
  std::optional<DatasetNormalization> normalization_;
  bool faithfulness_ = true;
  std::string prefix_ = "cam_";
  std::string owner_;
};

namespace detail {
/// What `Trainer`'s CAM-method members need, defined here so that trainer.hpp does not include
/// the CAM methods and the metrics.
template <class C>
struct TrainerCamSupport {
  static_assert(CamMethod<C>, "igrad::Trainer's third parameter must be a CamMethod");
  static torch::Tensor explain(const AnyModel& model, const torch::Tensor& x,
                               const torch::Tensor& targets, const CamOptions& options,
                               const C& method) {
    return igrad::explain<C>(model, x, targets, options, method);
  }
  static ErasedEpochCallback held_out_report(torch::Tensor inputs, torch::Tensor targets,
                                             CamOptions options,
                                             std::optional<DatasetNormalization> normalization,
                                             const C& method) {
    auto monitor = std::make_shared<ExplanationMonitor<C>>(std::move(inputs), std::move(targets),
                                                           std::move(options), method);
    monitor->normalization(std::move(normalization)).owner("Trainer::held_out");
    return {[monitor](TrainerState& state) { monitor->on_train_begin(state); },
            [monitor](TrainerState& state, EpochLog& log) { monitor->on_epoch_end(state, log); }};
  }
};
}  // namespace detail

/// @}
}  // namespace igrad

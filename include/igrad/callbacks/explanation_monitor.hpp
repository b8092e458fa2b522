#pragma once
/// @file callbacks/explanation_monitor.hpp
/// @brief A training callback that reports explanation statistics on a held-out batch.

#include <igrad/callbacks/callback.hpp>
#include <igrad/cam/explain.hpp>

#include <torch/torch.h>

#include <utility>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief At each epoch end, explains a held-out batch with CAM method `C` and adds the maps'
/// statistics to `EpochLog::metrics`: `cam_mean` (mean map value) and `cam_top20_mass` (share of
/// each map's mass in its top 20 % of pixels, averaged over images; see `MapStatistics`).
///
/// The model is explained in evaluation mode and returned to training mode; no gradient or
/// buffer of the model changes. Place it before callbacks that read the metrics (`CsvLogger`,
/// `EarlyStopping`). `Trainer::held_out` does the same with the trainer's own CAM policy.
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
  }

  /// @brief Adds `cam_mean` and `cam_top20_mass` to the epoch's log.
  void on_epoch_end(TrainerState& state, EpochLog& log) const {
    add_cam_statistics<C>(log.metrics, state.model, inputs_, targets_, options_, method_);
  }

 private:
  torch::Tensor inputs_, targets_;
  CamOptions options_;
  C method_;
};

/// @}
}  // namespace igrad

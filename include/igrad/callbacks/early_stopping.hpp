#pragma once
/// @file callbacks/early_stopping.hpp
/// @brief Stops training when a monitored figure stops improving.

#include <igrad/callbacks/callback.hpp>
#include <igrad/exceptions.hpp>

#include <functional>
#include <limits>
#include <string>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief Stops `fit` after `patience` epochs without an improvement larger than `min_delta`.
///
/// The monitored figure is the epoch's mean loss `L` by default; name an `EpochLog::metrics`
/// entry (e.g. a validation loss added by an earlier callback) with `monitor`, and say whether
/// larger is better with `maximise`.
class EarlyStopping {
 public:
  /// @brief Stops after `patience` epochs without improvement.
  explicit EarlyStopping(int patience = 3, double min_delta = 0.0)
      : patience_(patience), min_delta_(min_delta) {
    detail::require(patience >= 1, "EarlyStopping patience is {}; expected >= 1", patience);
    detail::require(min_delta >= 0, "EarlyStopping min_delta is {}; expected >= 0", min_delta);
  }
  /// @brief Monitors `EpochLog::metrics[name]` instead of the loss.
  EarlyStopping& monitor(std::string name, bool maximise = false) {
    metric_ = std::move(name);
    maximise_ = maximise;
    return *this;
  }
  /// @brief Decides whether to stop.
  bool on_epoch_end(TrainerState&, EpochLog& log) {
    double value = log.loss;
    if (!metric_.empty()) {
      const auto it = log.metrics.find(metric_);
      detail::require(it != log.metrics.end(),
                      "EarlyStopping monitors '{}', which no callback before it added to the "
                      "epoch log; expected a metric name present in EpochLog::metrics",
                      metric_);
      value = it->second;
    }
    const double signed_value = maximise_ ? -value : value;
    if (signed_value < best_ - min_delta_) {
      best_ = signed_value;
      waited_ = 0;
      return false;
    }
    return ++waited_ >= patience_;
  }
  /// @brief Epochs since the last improvement.
  int epochs_without_improvement() const { return waited_; }

 private:
  int patience_;
  double min_delta_;
  std::string metric_;
  bool maximise_ = false;
  double best_ = std::numeric_limits<double>::infinity();
  int waited_ = 0;
};

/// @}
}  // namespace igrad

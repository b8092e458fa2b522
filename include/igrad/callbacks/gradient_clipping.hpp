#pragma once
/// @file callbacks/gradient_clipping.hpp
/// @brief A training callback that clips the gradient norm before each update.

#include <igrad/callbacks/callback.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <cmath>
#include <vector>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief Rescales the gradients of the optimizer's parameters so that their joint norm is at
/// most `max_norm` (LibTorch's `torch::nn::utils::clip_grad_norm_`), in `on_after_backward`:
/// after the backward pass of `L = L_C + λ L_R`, before `optimizer.step()`.
///
/// A non-finite gradient norm throws `NumericalError` before the update (the step is refused;
/// parameters, buffers and optimizer state stay as they were).
/// Passed to `fit`, or called directly around `Trainer::step` (`clipping` an
/// `igrad::GradientClipping`):
/// @snippet doc_snippets.cpp gradient_clipping
class GradientClipping {
 public:
  /// @brief Clips to `max_norm` (> 0) in the `norm_type`-norm (> 0, or infinity).
  explicit GradientClipping(double max_norm, double norm_type = 2.0)
      : max_norm_(max_norm), norm_type_(norm_type) {
    detail::require(std::isfinite(max_norm) && max_norm > 0,
                    "GradientClipping max_norm is {}; expected a finite value > 0", max_norm);
    detail::require(norm_type > 0, "GradientClipping norm_type is {}; expected > 0 (or infinity)",
                    norm_type);
  }

  /// @brief Clips the gradients of `optimizer`'s parameters; returns their norm before clipping.
  double clip(torch::optim::Optimizer& optimizer) {
    std::vector<torch::Tensor> parameters;
    for (const auto& group : optimizer.param_groups())
      for (const auto& p : group.params()) parameters.push_back(p);
    last_norm_ = torch::nn::utils::clip_grad_norm_(parameters, max_norm_, norm_type_);
    detail::require<NumericalError>(std::isfinite(last_norm_),
                                    "GradientClipping: the gradient norm is {}; expected a finite "
                                    "norm (lower the learning rate or lambda)",
                                    last_norm_);
    return last_norm_;
  }

  /// @brief Clips the step's gradients.
  void on_after_backward(TrainerState& state) { clip(*state.optimizer); }

  /// @brief The norm before clipping at the last step (0 before any).
  double last_norm() const { return last_norm_; }

 private:
  double max_norm_, norm_type_;
  double last_norm_ = 0;
};

/// @}
}  // namespace igrad

#pragma once
/// @file regularised_loss.hpp
/// @brief The interpretable-gradient loss `L = L_C + λ L_R` of a batch as a free function (SPEC
/// §2), and the two pieces a training step builds on it: the buffer transaction that undoes a
/// refused step's batch-norm updates, and the backward pass restricted to the parameters.
///
/// `Trainer` is a loop over these; use them directly to compute the loss without an optimizer
/// (evaluation, a custom loop, a distributed step).

#include <igrad/detail/batch_norm_double_backward.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/detail/torch_errors.hpp>
#include <igrad/errors/error_functions.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>
#include <igrad/rules/backprop_rules.hpp>

#include <torch/torch.h>

#include <cmath>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace igrad {

/// @addtogroup trainer_group
/// @{

/// @brief The regularised loss `L = L_C + λ L_R` of a batch, before the parameter update.
struct RegularisedLoss {
  torch::Tensor total;           ///< L (differentiable in the parameters)
  torch::Tensor classification;  ///< L_C
  torch::Tensor regulariser;     ///< L_R (differentiable when λ ≠ 0)
  torch::Tensor logits;          ///< the forward pass's logits [N, K]
};

/// @brief Copies of a model's buffers (batch-norm statistics) taken before a forward pass, put
/// back unless the transaction is committed: a refused step leaves the model as it was.
///
/// @snippet doc_snippets.cpp buffer_transaction
class BufferTransaction {
 public:
  /// @brief Copies every buffer of `model`.
  explicit BufferTransaction(const AnyModel& model) {
    torch::NoGradGuard no_grad;
    for (auto& b : model.buffers()) {
      buffers_.push_back(b);
      copies_.push_back(b.clone());
    }
  }
  /// @brief Not copyable: one transaction per step.
  BufferTransaction(const BufferTransaction&) = delete;
  /// @brief Not copyable.
  BufferTransaction& operator=(const BufferTransaction&) = delete;
  /// @brief Restores the buffers unless `commit()` was called.
  ~BufferTransaction() {
    if (!committed_) rollback();
  }
  /// @brief Keeps the buffers' current values.
  void commit() { committed_ = true; }
  /// @brief Puts the copies back now (and again at destruction unless committed).
  void rollback() noexcept {
    try {
      torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < buffers_.size(); ++i) buffers_[i].copy_(copies_[i]);
    } catch (...) {  // a destructor must not throw; a copy between same-shaped tensors does not
    }
  }

 private:
  std::vector<torch::Tensor> buffers_, copies_;
  bool committed_ = false;
};

/// @brief `loss.backward()` restricted to the parameters that require a gradient: the model's
/// and, when given, the optimizer's.
///
/// A training step's input batch is an autograd leaf too; an unrestricted backward would also
/// compute its gradient (the first layer's transposed pass) for nothing. Gradients accumulate
/// into `.grad` as with `loss.backward()`.
inline void backward_to_parameters(const torch::Tensor& loss, const AnyModel& model,
                                   const torch::optim::Optimizer* optimizer = nullptr) {
  std::vector<torch::Tensor> leaves;
  std::unordered_set<const void*> seen;
  const auto add = [&](const torch::Tensor& p) {
    if (p.defined() && p.requires_grad() && seen.insert(p.unsafeGetTensorImpl()).second)
      leaves.push_back(p);
  };
  for (const auto& p : model.parameters()) add(p);
  if (optimizer != nullptr)
    for (const auto& group : optimizer->param_groups())
      for (const auto& p : group.params()) add(p);
  if (leaves.empty())
    loss.backward();
  else
    loss.backward(/*gradient=*/{}, /*retain_graph=*/false, /*create_graph=*/false, leaves);
}

namespace detail {

/// A batch checked for the loss and moved to the model's device and dtype: `{input, labels}`.
inline std::pair<torch::Tensor, torch::Tensor> checked_batch(const AnyModel& model,
                                                             const torch::Tensor& x,
                                                             const torch::Tensor& targets) {
  require(x.defined() && x.dim() >= 2,
          "input batch has shape {}; expected [N, ...] with at least 2 dimensions "
          "(e.g. [N, C, H, W] images)",
          shape_string(x));
  require(x.size(0) > 0, "input batch is empty (shape {}); expected N >= 1 samples",
          shape_string(x));
  require(x.is_floating_point(), "input batch has dtype {}; expected floating point",
          std::string(c10::toString(x.scalar_type())));
  require(targets.defined() && targets.dim() == 1 && targets.size(0) == x.size(0),
          "targets have shape {} for an input batch of {} samples; expected [{}] class indices",
          shape_string(targets), x.size(0), x.size(0));
  require(!targets.is_floating_point(), "targets have dtype {}; expected integer class indices",
          std::string(c10::toString(targets.scalar_type())));
  require_finite(x, "input batch");
  const auto device = model.device();
  return {x.to(device, model.dtype()), targets.to(device, torch::kLong)};
}

/// The model's forward pass, its LibTorch errors turned into `InvalidArgument`
/// (`call_model_checked`).
inline torch::Tensor forward_checked(const AnyModel& model, const torch::Tensor& input) {
  return call_model_checked(model, [&] { return model.forward(input); }, "forward", input,
                            "an input batch");
}

/// The loss of a batch already checked by `checked_batch` (no buffer transaction).
template <ErrorFunction E, BackpropRule R>
RegularisedLoss regularised_loss_of_checked(const AnyModel& model, const torch::Tensor& x,
                                            const torch::Tensor& labels, double lambda,
                                            const E& error, const R& rule,
                                            bool report_regulariser) {
  torch::AutoGradMode enable_grad(true);
  const auto input = x.detach().requires_grad_(true);
  RegularisedLoss l;
  l.logits = forward_checked(model, input);
  require(l.logits.dim() == 2 && l.logits.size(0) == input.size(0),
          "model output has shape {}; expected logits [{}, K]", shape_string(l.logits),
          input.size(0));
  require_labels(labels, input.size(0), l.logits.size(1));
  l.classification = torch::nn::functional::cross_entropy(l.logits, labels);
  if (lambda == 0.0 && !report_regulariser) {
    l.regulariser = torch::zeros({}, l.classification.options());
    l.total = l.classification;
    return l;
  }
  const bool regularise = lambda != 0.0;
  // Student: differentiable only when it contributes to the update; its batch norms, ReLUs and
  // max-pools get cheaper exact second-order paths (detail/batch_norm_double_backward.hpp).
  torch::Tensor standard;
  {
    std::optional<ScopedBatchNormDoubleBackward> fast_batch_norm;
    std::optional<ScopedPiecewiseLinearDoubleBackward> fast_piecewise_linear;
    if (regularise) {
      fast_batch_norm.emplace(std::vector<torch::Tensor>{l.classification});
      fast_piecewise_linear.emplace(std::vector<torch::Tensor>{l.classification});
    }
    // Asking for the batch norms' affine gradients too costs nothing (their kernel computes
    // the sums for dx anyway) and spares the second-order path computing them again.
    std::vector<torch::Tensor> wanted{input};
    if (fast_batch_norm)
      wanted.insert(wanted.end(), fast_batch_norm->affine_parameters().begin(),
                    fast_batch_norm->affine_parameters().end());
    standard = torch::autograd::grad({l.classification}, wanted, {}, /*retain_graph=*/true,
                                     /*create_graph=*/regularise, /*allow_unused=*/true)[0];
  }
  // Teacher: the same gradient under rule R, detached.
  const auto teacher = gradient<R>({l.classification}, {input}, {}, /*retain_graph=*/true,
                                   /*create_graph=*/false, rule)[0]
                           .detach();
  l.regulariser = apply_error(error, standard, teacher).mean();  // checks the [N] contract
  if (regularise) {
    l.total = l.classification + lambda * l.regulariser;
  } else {
    l.regulariser = l.regulariser.detach();
    l.total = l.classification;
  }
  return l;
}

}  // namespace detail

/// @brief The interpretable-gradient loss of a batch (seed paper, Algorithm 1; SPEC §2):
/// \f[ L = L_C + \lambda \frac1N \sum_i E\big(\partial L_C / \partial x_i,\ \partial_R L_C / \partial x_i\big) \f]
///
/// One forward pass, the standard input gradient (with `create_graph` when λ ≠ 0, so that
/// `total.backward()` includes the double-backprop term) and the input gradient under rule `R`
/// (detached: the teacher). Nothing is updated but what the forward pass updates (batch-norm
/// statistics in training mode); call `total.backward()` or `backward_to_parameters` yourself.
///
/// `x` is `[N, ...]` on any device (moved to the model's, in its dtype), `targets` `[N]` class
/// indices. With λ = 0, `total` is `L_C` and `regulariser` is still computed (detached) unless
/// `report_regulariser` is false, in which case it is 0 and the two input-gradient passes are
/// skipped. Throws `InvalidArgument` for bad input or λ < 0 / not finite; the model's buffers
/// are then as they were.
/// @snippet doc_snippets.cpp regularised_loss
template <ErrorFunction E = CosineError, BackpropRule R = GuidedReLU>
RegularisedLoss regularised_loss(const AnyModel& model, const torch::Tensor& x,
                                 const torch::Tensor& targets, double lambda,
                                 const E& error = E(), const R& rule = R(),
                                 bool report_regulariser = true) {
  detail::require(std::isfinite(lambda) && lambda >= 0,
                  "lambda is {}; expected a finite value >= 0", lambda);
  auto [input, labels] = detail::checked_batch(model, x, targets);
  BufferTransaction transaction(model);
  auto l = detail::regularised_loss_of_checked(model, input, labels, lambda, error, rule,
                                               report_regulariser);
  transaction.commit();
  return l;
}

/// @}
}  // namespace igrad

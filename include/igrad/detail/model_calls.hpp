#pragma once
/// @file detail/model_calls.hpp
/// @brief Checked calls of a model's forward, features and head (LibTorch errors become igrad
/// exceptions through `call_model_checked`), and the validation and preparation of an
/// explanation batch, shared by the CAM and the saliency methods. Templates over the model
/// (an `AnyModel`), so that detail/ does not depend on the public model header.

#include <igrad/detail/batched_jobs.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/detail/torch_errors.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace igrad::detail {

/// Logits `[N, K]` of a batch, checked.
template <class Model>
torch::Tensor checked_forward(const Model& model, const torch::Tensor& x) {
  auto logits = call_model_checked(model, [&] { return model.forward(x); }, "forward", x);
  require(logits.dim() == 2 && logits.size(0) == x.size(0),
          "model output has shape {}; expected logits [{}, K]", shape_string(logits), x.size(0));
  return logits;
}

/// Feature map `[N, K, h, w]` of a batch, checked (SPEC §4 needs a 4-D feature map).
template <class Model>
torch::Tensor checked_features(const Model& model, const torch::Tensor& x) {
  auto a = call_model_checked(model, [&] { return model.features(x); }, "features", x);
  require(a.dim() == 4 && a.size(0) == x.size(0),
          "the model's features(x) has shape {} for an input of shape {}; expected a 4-D feature "
          "map [N, K, h, w] (class activation maps weight its K channels)",
          shape_string(a), shape_string(x));
  return a;
}

/// Logits `[N, K]` from a feature map, checked.
template <class Model>
torch::Tensor checked_head(const Model& model, const torch::Tensor& a) {
  auto logits = call_model_checked(model, [&] { return model.head(a); }, "head", a);
  require(logits.dim() == 2 && logits.size(0) == a.size(0),
          "the model's head(a) has shape {}; expected logits [{}, K]", shape_string(logits),
          a.size(0));
  return logits;
}

/// `logits[i, targets[i]]` for each row.
inline torch::Tensor gather_targets(const torch::Tensor& logits, const torch::Tensor& targets) {
  return logits.gather(1, targets.view({-1, 1})).view({-1});
}

/// A batch, its targets and its class count, validated and moved to the model's device and dtype.
struct PreparedBatch {
  torch::Tensor input;        ///< detached, on the model's device and dtype
  torch::Tensor targets;      ///< long [N] on the model's device
  int64_t classes = 0;        ///< K
  torch::Tensor activations;  ///< features(input), detached, when asked for
};

/// Validates `x` and `targets` (the predicted classes when undefined). The caller has already
/// switched the model to evaluation mode, so the default targets are the eval-mode predictions.
/// With `feature_map`, the logits are computed as head(features(x)) and the feature map is kept,
/// so that a CAM method does not run the convolutions a second time. A positive `chunk` runs the
/// forward (or features) pass `chunk` samples at a time, bounding its memory on large batches.
template <class Model>
PreparedBatch prepare_batch(const Model& model, const torch::Tensor& x,
                            const torch::Tensor& targets, bool require_image,
                            std::string_view method, bool feature_map = false,
                            int64_t chunk = 0) {
  if (require_image) {
    require_images(x, igrad::detail::format("{}: the input images", method));
  } else {
    require(x.defined() && x.dim() >= 2, "{}: input has shape {}; expected a batch [N, ...]",
            method, shape_string(x));
    require(x.is_floating_point(), "{}: input has dtype {}; expected a floating-point tensor",
            method, std::string(c10::toString(x.scalar_type())));
    require_finite(x, "input");
  }
  require(x.size(0) > 0, "{}: input batch is empty; expected at least one sample", method);
  PreparedBatch batch;
  batch.input = x.detach().to(model.device(), model.dtype());
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    if (feature_map && (chunk <= 0 || chunk >= batch.input.size(0))) {
      batch.activations = checked_features(model, batch.input);
      logits = checked_head(model, batch.activations);
    } else if (feature_map) {
      // The feature map is kept whole (the methods need it), but the convolutions' intermediate
      // tensors only exist for one chunk at a time.
      std::vector<torch::Tensor> parts;
      for_each_batch(batch.input.size(0), chunk, "the batch size", [&](int64_t start, int64_t end) {
        parts.push_back(checked_features(model, batch.input.slice(0, start, end)));
      });
      batch.activations = torch::cat(parts, 0);
      logits = checked_head(model, batch.activations);
    } else if (chunk <= 0 || chunk >= batch.input.size(0)) {
      logits = checked_forward(model, batch.input);
    } else {
      // Only the class count and the predicted classes are kept from the logits.
      std::vector<torch::Tensor> predictions;
      for_each_batch(batch.input.size(0), chunk, "the batch size", [&](int64_t start, int64_t end) {
        const auto part = checked_forward(model, batch.input.slice(0, start, end));
        if (!logits.defined()) logits = part;
        predictions.push_back(part.argmax(1));
      });
      if (!targets.defined()) batch.targets = torch::cat(predictions, 0);
    }
  }
  batch.classes = logits.size(1);
  if (!targets.defined()) {
    if (!batch.targets.defined()) batch.targets = logits.argmax(1);
  } else {
    require_labels(targets, x.size(0), batch.classes);
    batch.targets = targets.to(batch.input.device(), torch::kLong);
  }
  return batch;
}

}  // namespace igrad::detail

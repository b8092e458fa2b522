#pragma once
/// @file cam/full_grad.hpp
/// @brief FullGrad (Srinivas & Fleuret 2019): the input-gradient term plus one bias-gradient map
/// per bias-carrying layer, on any model.
///
/// Why a recording: FullGrad needs the gradient of the class score with respect to the output of
/// every `Conv2d` and `BatchNorm2d` of the model, and igrad's `AnyModel` is opaque (forward /
/// features / head functions) while LibTorch's C++ modules have no forward hooks. As
/// `RectifierRecording` does for the rectifiers, `BiasRecording` registers a thread-local
/// `at::RecordFunction` observer while it is alive and keeps, for each `aten::conv2d` call with a
/// bias and each `aten::batch_norm` call on a 4-D input with an affine bias, the autograd edge of
/// its output and its (effective) bias. `aten::conv2d` is the front door of `Conv2d` and
/// `torch::conv2d` in LibTorch 1.13 and 2.x and runs once per convolution (the `convolution` /
/// `_convolution` calls below it are not recorded); `aten::batch_norm` likewise for batch norms.
/// The edge (not the tensor) is kept because an in-place op after the layer (`relu_`) rebases the
/// output tensor's history: the gradient at the recorded edge is the one with respect to the
/// layer's own output.

#include <igrad/cam/cam_method.hpp>
#include <igrad/detail/maps.hpp>
#include <igrad/detail/model_calls.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/rules/rectifier_sites.hpp>

#include <ATen/record_function.h>
#include <torch/csrc/autograd/edge.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace igrad {

/// @addtogroup cam_group
/// @{

/// @brief One bias-carrying layer call (`Conv2d` or `BatchNorm2d`) as recorded in a forward pass.
struct RecordedBias {
  torch::autograd::Edge output_edge;  ///< the autograd edge of the layer's output z
  torch::Tensor bias;                 ///< b `[K]`: the conv bias, or BN's effective bias (detached)
  std::vector<int64_t> output_shape;  ///< z's shape `[N, K, h, w]`
  bool batch_norm = false;            ///< whether the layer is a batch norm
};

class BiasRecording;

namespace detail {

/// The bias recording this thread writes to (null when none).
inline BiasRecording*& active_bias_recording() {
  thread_local BiasRecording* active = nullptr;
  return active;
}

/// What the start of an observed call hands to its end: the bias, computed from the inputs.
struct BiasObservation final : at::ObserverContext {
  torch::Tensor bias;
  bool batch_norm = false;
};

inline std::unique_ptr<at::ObserverContext> on_bias_start(const at::RecordFunction& call);
inline void on_bias_end(const at::RecordFunction& call, at::ObserverContext* context);

}  // namespace detail

/// @brief RAII: records every `Conv2d` with a bias and every affine `BatchNorm2d` that forward
/// passes run on this thread while it is alive, in call order — the autograd edge of the output
/// and the bias (for a batch norm in evaluation mode the effective bias
/// \f$ \beta - \mu \gamma / \sqrt{\sigma^2 + \epsilon} \f$ of its running statistics; pytorch-grad-cam's
/// and the FullGrad authors' layer choice).
///
/// Recordings nest (the innermost records); `stop()` ends one early. A batch norm that normalises
/// with batch statistics (training mode, or no running statistics) has no fixed bias: it is not
/// recorded and `problem()` says so (the observer cannot throw through the operator).
class BiasRecording {
 public:
  /// @brief Starts recording on this thread (an `at::RecordFunction` thread-local observer).
  BiasRecording() : previous_(detail::active_bias_recording()) {
    detail::active_bias_recording() = this;
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback(&detail::on_bias_start, &detail::on_bias_end)
            .needsInputs(true)
            .needsOutputs(true)
            .scopes({at::RecordScope::FUNCTION}));
  }
  BiasRecording(const BiasRecording&) = delete;
  BiasRecording& operator=(const BiasRecording&) = delete;
  ~BiasRecording() { stop(); }

  /// @brief Stops recording (idempotent); the layers recorded so far stay available.
  void stop() {
    if (!recording_) return;
    recording_ = false;
    at::removeCallback(handle_);
    if (detail::active_bias_recording() == this) detail::active_bias_recording() = previous_;
  }
  /// @brief The layers recorded, in call order.
  const std::vector<RecordedBias>& layers() const { return layers_; }
  /// @brief Why a layer could not be recorded (empty when none failed).
  const std::string& problem() const { return problem_; }

 private:
  friend std::unique_ptr<at::ObserverContext> detail::on_bias_start(const at::RecordFunction&);
  friend void detail::on_bias_end(const at::RecordFunction&, at::ObserverContext*);
  BiasRecording* previous_ = nullptr;
  at::CallbackHandle handle_{};
  bool recording_ = true;
  std::vector<RecordedBias> layers_;
  std::string problem_;
};

namespace detail {

/// An optional tensor argument of a recorded call (undefined when None). `Inputs` is what
/// `at::RecordFunction::inputs()` returns (an `ArrayRef` of `IValue`s in LibTorch 1.13 and 2.x).
template <class Inputs>
torch::Tensor optional_tensor(const Inputs& inputs, std::size_t at) {
  if (inputs.size() <= at || !inputs[at].isTensor()) return {};
  return inputs[at].toTensor();
}

inline std::unique_ptr<at::ObserverContext> on_bias_start(const at::RecordFunction& call) {
  auto* recording = active_bias_recording();
  const char* name = call.name();
  if (recording == nullptr || name == nullptr) return nullptr;
  const bool conv = std::strcmp(name, "aten::conv2d") == 0;
  const bool norm = std::strcmp(name, "aten::batch_norm") == 0;
  if (!conv && !norm) return nullptr;
  if (!record_inputs_readable(call)) {
    if (recording->problem_.empty()) recording->problem_ = unreadable_record_inputs;
    return nullptr;
  }
  const auto inputs = call.inputs();
  const auto input = optional_tensor(inputs, 0);
  if (!input.defined() || input.dim() != 4) return nullptr;  // BatchNorm2d only (as FullGrad)
  torch::NoGradGuard no_grad;
  auto observation = std::make_unique<BiasObservation>();
  observation->batch_norm = norm;
  if (conv) {
    const auto bias = optional_tensor(inputs, 2);
    if (!bias.defined()) return nullptr;  // a conv without bias has no bias-gradient map
    observation->bias = bias.detach().clone();
    return observation;
  }
  // batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
  const auto weight = optional_tensor(inputs, 1), beta = optional_tensor(inputs, 2);
  if (!beta.defined()) return nullptr;  // not affine: pytorch-grad-cam skips it
  const auto mean = optional_tensor(inputs, 3), variance = optional_tensor(inputs, 4);
  const bool training = inputs.size() > 5 && inputs[5].isBool() && inputs[5].toBool();
  if (training || !mean.defined() || !variance.defined()) {
    if (recording->problem_.empty())
      recording->problem_ =
          "a BatchNorm2d normalises with batch statistics (training mode, or no running "
          "statistics), so it has no fixed bias; expected batch norms with running statistics in "
          "evaluation mode";
    return nullptr;
  }
  const double eps = inputs.size() > 7 && inputs[7].isDouble() ? inputs[7].toDouble() : 1e-5;
  auto scale = (variance.detach() + eps).rsqrt();
  if (weight.defined()) scale = scale * weight.detach();
  observation->bias = beta.detach() - mean.detach() * scale;
  return observation;
}

inline void on_bias_end(const at::RecordFunction& call, at::ObserverContext* context) {
  auto* observation = dynamic_cast<BiasObservation*>(context);
  auto* recording = active_bias_recording();
  if (observation == nullptr || recording == nullptr) return;
  const auto& outputs = call.outputs();
  if (outputs.empty() || !outputs[0].isTensor()) return;
  const auto output = outputs[0].toTensor();
  if (!output.requires_grad()) return;  // outside any graph: no gradient to weight
  recording->layers_.push_back({torch::autograd::impl::gradient_edge(output),
                                std::move(observation->bias), output.sizes().vec(),
                                observation->batch_norm});
}

}  // namespace detail

/// @brief FullGrad's unprocessed terms for a batch: the completeness decomposition of the score.
struct FullGradTerms {
  torch::Tensor input_term;  ///< \f$ x \odot \partial y^c / \partial x \f$ `[N, C, H, W]`
  /// \f$ b \odot \partial y^c / \partial z \f$ `[N, K, h, w]`, one per recorded layer, in call order
  std::vector<torch::Tensor> bias_terms;
  std::vector<bool> batch_norm;  ///< whether each bias term is a batch norm's (else a conv's)
  torch::Tensor scores;          ///< y^c `[N]`, the scores differentiated
};

/// @brief FullGrad's raw, signed terms for `input` (default: the request's input), in one forward
/// pass: the input-gradient term `x ⊙ ∂y^c/∂x` and, for each `Conv2d` with a bias and each affine
/// `BatchNorm2d` the forward runs, the bias-gradient term `b ⊙ ∂y^c/∂z` (z the layer's output, b
/// its bias broadcast over the pixels). `y^c` is `CamOptions::target_score`, or the target logit.
///
/// For a piecewise-linear network (ReLU, max pooling, convolutions, batch norms in evaluation
/// mode, linear layers) FullGrad's completeness holds: the sum of all the terms, plus the bias
/// terms of the layers FullGrad does not map (e.g. `b_c` of a final linear layer), is `y^c`.
/// Gradients are taken with the autograd engine at the recorded edges only: no `.grad` is
/// touched. Throws `GraphError` when a batch norm normalises with batch statistics.
inline FullGradTerms full_grad_terms(const CamRequest& request, const torch::Tensor& input = {}) {
  const auto& x = input.defined() ? input : request.input;
  torch::AutoGradMode enable_grad(true);
  auto leaf = x.detach().requires_grad_(true);
  BiasRecording recording;
  const auto logits = detail::checked_forward(request.model, leaf);
  recording.stop();
  detail::require<GraphError>(recording.problem().empty(), "FullGrad: {}", recording.problem());
  const auto scores = target_scores(request, logits);
  detail::require<GraphError>(scores.requires_grad(),
                              "FullGrad: the class score does not depend on the input through an "
                              "autograd graph; expected a differentiable model");
  const auto total = scores.sum();
  torch::autograd::edge_list wanted{torch::autograd::impl::gradient_edge(leaf)};
  for (const auto& layer : recording.layers()) wanted.push_back(layer.output_edge);
  const auto gradients = detail::translate_torch_errors("FullGrad", "batch", [&] {
    return torch::autograd::Engine::get_default_engine().execute(
        {torch::autograd::impl::gradient_edge(total)}, {torch::ones_like(total)},
        /*keep_graph=*/false, /*create_graph=*/false, /*accumulate_grad=*/false, wanted);
  });
  FullGradTerms terms;
  torch::NoGradGuard no_grad;
  const auto input_gradient =
      gradients[0].defined() ? gradients[0] : torch::zeros_like(leaf);  // a constant model
  terms.input_term = (x.detach() * input_gradient).detach();
  for (std::size_t k = 0; k < recording.layers().size(); ++k) {
    const auto& layer = recording.layers()[k];
    const auto& gradient = gradients[k + 1];
    const auto bias = layer.bias.view({1, -1, 1, 1});
    terms.bias_terms.push_back(gradient.defined()
                                   ? (bias * gradient).detach()
                                   : torch::zeros(layer.output_shape, x.options()));
    terms.batch_norm.push_back(layer.batch_norm);
  }
  terms.scores = scores.detach();
  return terms;
}

namespace detail {

/// pytorch-grad-cam's `scale_accross_batch_and_channels`: each `[h, w]` map of `maps`
/// `[N, K, h, w]` min–max scaled, `(m − min)/(max − min + 1e-7)`, then resized bilinearly
/// (`align_corners = false`) to `height × width`; `[N, K, height, width]`.
inline torch::Tensor scale_each_channel(const torch::Tensor& maps, int64_t height, int64_t width) {
  const int64_t n = maps.size(0), k = maps.size(1);
  const auto flat = maps.reshape({n * k, maps.size(2), maps.size(3)});
  return resize_maps(min_max_per_sample(flat), height, width).view({n, k, height, width});
}

}  // namespace detail

/// @brief FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam's `FullGrad` computes it: at
/// input resolution,
/// \f[ M = \sum_c \psi\big(|x \odot \nabla_x y^c|_c\big)
///       + \sum_{\ell} \sum_k \psi\big(|b_\ell \odot \nabla_{z_\ell} y^c|_k\big), \f]
/// ψ the per-image, per-channel min–max scaling followed by bilinear resizing to the input size
/// (`align_corners = false`), ℓ over every `Conv2d` with a bias and every affine `BatchNorm2d`
/// (effective bias from its running statistics) the forward pass runs — found by observing the
/// forward (`BiasRecording`), so any model works, without a feature/head split. `explain` then
/// min–max scales the sum, which is pytorch-grad-cam's final `scale_cam_image`.
///
/// The map is raw (non-negative, `[N, H, W]`, input resolution, as `GuidedGradCam`'s); the
/// terms are computed `CamOptions::batch_size` images at a time (`full_grad_terms` gives the
/// signed terms). Throws `GraphError` for a batch norm that normalises with batch statistics.
struct FullGrad {
  static constexpr const char* name = "FullGrad";  ///< display name
  /// @brief The map before post-processing, `[N, H, W]` (input resolution).
  template <class Deferred = void>
  torch::Tensor operator()(const CamRequest& request) const {
    const auto& x = request.input;
    const int64_t height = x.size(2), width = x.size(3);
    auto map = torch::zeros({x.size(0), height, width}, x.options());
    detail::run_in_batches(x.size(0), request.options, [&](int64_t start, int64_t end) {
      CamRequest part = request;
      part.input = x.slice(0, start, end);
      part.targets = request.targets.slice(0, start, end);
      part.activations = torch::Tensor();
      const auto terms = full_grad_terms(part);
      torch::NoGradGuard no_grad;
      auto sum = detail::scale_each_channel(terms.input_term.abs(), height, width).sum(1);
      for (const auto& term : terms.bias_terms)
        sum = sum + detail::scale_each_channel(term.abs(), height, width).sum(1);
      map.slice(0, start, end).copy_(sum);
    });
    return map;
  }
};

/// @}
}  // namespace igrad

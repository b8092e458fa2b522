#pragma once
/// @file cam/explain.hpp
/// @brief `igrad::explain<C>` and `igrad::explain_raw<C>`: one calling convention for every CAM
/// method, the list of shipped methods, and summary statistics of maps.

#include <igrad/cam/cam_method.hpp>
#include <igrad/cam/eigen_methods.hpp>
#include <igrad/cam/finer_cam.hpp>
#include <igrad/cam/full_grad.hpp>
#include <igrad/cam/gradient_free_methods.hpp>
#include <igrad/cam/gradient_methods.hpp>
#include <igrad/cam/guided_grad_cam.hpp>
#include <igrad/cam/shapley_cam.hpp>
#include <igrad/cam/smoothing.hpp>

#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <string>

namespace igrad {

/// @addtogroup cam_group
/// @{

/// @brief The raw map of method `C` for a batch: `[N, h, w]` after ReLU, before any scaling
/// (feature resolution; input resolution for `GuidedGradCam`), on the input's device and dtype.
///
/// `model` is an `AnyModel` (any `FeatureClassifier` converts implicitly) with a features/head
/// split. `x` is `[N, C, H, W]`; `targets` are `[N]` class indices, the model's predictions when
/// undefined; the class score is the logit. The model runs in evaluation mode for the call and
/// returns to its previous mode (so a batch gives the same maps as its images one by one);
/// no parameter's `.grad` is touched, and the result holds no autograd graph.
///
/// Threads: the call holds the model's evaluation-mode lease (`TrainingModeGuard(model,
/// false)`) for its whole duration. Explanations on several threads share one model safely and
/// overlap (eval mode throughout; the last to finish restores the mode the first found). A scope
/// that holds the model in training mode through `TrainingModeGuard` (`Trainer::step`, `fit`)
/// on another thread is never interleaved with it: the call waits for that scope to end, and the
/// scope waits for the call. Called on the thread that holds the training scope (a callback), it
/// switches to eval mode and back. Mode switches made directly on the module
/// (`module->train()`) bypass the lease and are not guarded.
///
/// Memory: the feature map is computed `CamOptions::batch_size` images at a time, the
/// masked-input methods (and Guided Grad-CAM's guided gradient) go through the model that many
/// inputs at a time, and `CamOptions::progress` hears about each of their batches.
///
/// Throws `InvalidArgument` for a malformed input, targets out of range or of the wrong shape, a
/// 3-D feature map, images whose channel count the model rejects, an input size the model
/// rejects, or any other LibTorch error inside the method (named in the message; never a raw
/// `c10::Error`); `GraphError` for a model without a features/head split (or, for `Cam`, a head
/// that is not GAP + Linear).
template <CamMethod C>
torch::Tensor explain_raw(const AnyModel& model, const torch::Tensor& x,
                          const torch::Tensor& targets = {}, const CamOptions& options = {},
                          const C& method = C()) {
  detail::require<GraphError>(model.has_feature_split(),
                              "{} needs a model with a features/head split; expected "
                              "features(x) and head(a) (see igrad::FeatureClassifier)",
                              C::name);
  detail::require(options.batch_size() > 0, "CamOptions::batch_size is {}; expected at least 1",
                  options.batch_size());
  TrainingModeGuard evaluation(model, false);
  return detail::translate_torch_errors(C::name, "CamOptions::batch_size", [&] {
    const auto batch = detail::prepare_batch(model, x, targets, /*require_image=*/true, C::name,
                                             /*feature_map=*/true, options.batch_size());
    const CamRequest request{model, batch.input, batch.targets, options, batch.activations};
    torch::Tensor raw = method(request);
    detail::require_raw_map(raw, x.size(0), C::name);
    return torch::relu(raw.detach()).to(x.device(), x.scalar_type());
  });
}

/// @brief The input-shaped Guided Grad-CAM attributions `[N, C, H, W]` (signed, not
/// post-processed), on the input's device and dtype: the Grad-CAM factor times the
/// guided-backprop gradient, in the convention `CamOptions::guided_grad_cam_convention` names.
///
/// With `GuidedGradCamConvention::captum` these are captum's `GuidedGradCam.attribute` numbers
/// (layer = the model's feature map, target = the class logit). Same arguments, guarantees and
/// errors as `explain_raw<GuidedGradCam>`.
inline torch::Tensor guided_grad_cam_attributions(const AnyModel& model, const torch::Tensor& x,
                                                  const torch::Tensor& targets = {},
                                                  const CamOptions& options = {}) {
  detail::require<GraphError>(model.has_feature_split(),
                              "{} needs a model with a features/head split; expected "
                              "features(x) and head(a) (see igrad::FeatureClassifier)",
                              GuidedGradCam::name);
  detail::require(options.batch_size() > 0, "CamOptions::batch_size is {}; expected at least 1",
                  options.batch_size());
  TrainingModeGuard evaluation(model, false);
  return detail::translate_torch_errors(GuidedGradCam::name, "CamOptions::batch_size", [&] {
    const auto batch = detail::prepare_batch(model, x, targets, /*require_image=*/true,
                                             GuidedGradCam::name, /*feature_map=*/true,
                                             options.batch_size());
    const CamRequest request{model, batch.input, batch.targets, options, batch.activations};
    return detail::guided_grad_cam_product(request).to(x.device(), x.scalar_type());
  });
}

/// @brief Saliency maps of method `C` for a batch: `[N, H, W]` in [0, 1] on the input's device
/// and dtype, post-processed as SPEC §4 (see `normalize_cam`).
///
/// Same arguments, guarantees (threads, memory) and errors as `explain_raw`:
/// @snippet doc_snippets.cpp explain
template <CamMethod C>
torch::Tensor explain(const AnyModel& model, const torch::Tensor& x,
                      const torch::Tensor& targets = {}, const CamOptions& options = {},
                      const C& method = C()) {
  const auto raw = explain_raw<C>(model, x, targets, options, method);
  return normalize_cam(raw, x.size(2), x.size(3));
}

/// @brief Rejects at compile time a model whose type is known to have no features/head split:
/// CAM methods weight the feature map `features(x)`, so such a model could only fail at run time.
/// (Through an `AnyModel`, whose split is known at run time only, `explain` throws `GraphError`.)
template <CamMethod C, Classifier M>
  requires(!FeatureClassifier<M>)
torch::Tensor explain_raw(const M&, const torch::Tensor&, const torch::Tensor& = {},
                          const CamOptions& = {}, const C& = C()) {
  static_assert(FeatureClassifier<M>,
                "igrad::explain<C> with a CAM method needs a model with features(x) and head(a): "
                "this model type is not an igrad::FeatureClassifier (see igrad/concepts.hpp, or "
                "wrap the model with an adapter of igrad/models/adapters.hpp)");
  return {};
}

/// @brief Rejects at compile time a model whose type is known to have no features/head split
/// (see the `explain_raw` overload above).
template <CamMethod C, Classifier M>
  requires(!FeatureClassifier<M>)
torch::Tensor explain(const M& model, const torch::Tensor& x, const torch::Tensor& targets = {},
                      const CamOptions& options = {}, const C& method = C()) {
  return explain_raw<C>(model, x, targets, options, method);  // whose static_assert says why
}

/// @brief The twenty CAM methods igrad ships, as a Hana type list (for ablations, figures and
/// conformance tests). The smoothing wrappers `EigenSmooth<C>` and `AugSmooth<C>`, and Finer-CAM
/// on other bases (`FinerCam<GradCamPlusPlus>`...), are CAM methods too; add them to a list of
/// your own:
/// @snippet doc_snippets.cpp all_cam_methods
inline constexpr auto all_cam_methods =
    boost::hana::tuple_t<Cam, GradCam, GradCamPlusPlus, SmoothGradCamPlusPlus, ScoreCam, SSCam,
                         ISCam, XGradCam, LayerCam, HiResCam, EigenCam, AblationCam, OptiCam,
                         GuidedGradCam, EigenGradCam, Fem, ShapleyCam, FinerCam<GradCam>, KpcaCam,
                         FullGrad>;

/// @brief Summary statistics of a batch of maps `[N, H, W]` in [0, 1].
struct MapStatistics {
  /// Mean map value over all pixels and images: how much of the image a map highlights.
  double mean = 0;
  /// Fraction of each map's mass (sum of values) held by its top `top_fraction` of pixels,
  /// averaged over images: 1 for a concentrated map, `top_fraction` for a flat one. An all-zero
  /// map has no mass and counts as 0.
  double top_mass = 0;
};

/// @brief `MapStatistics` of maps `[N, H, W]`; `top_fraction` in (0, 1] (default: top 20 %).
inline MapStatistics map_statistics(const torch::Tensor& maps, double top_fraction = 0.2) {
  detail::require(maps.defined() && maps.dim() == 3 && maps.size(0) > 0,
                  "maps have shape {}; expected [N, H, W] with N >= 1", detail::shape_string(maps));
  detail::require(top_fraction > 0 && top_fraction <= 1,
                  "top_fraction is {}; expected a value in (0, 1]", top_fraction);
  torch::NoGradGuard no_grad;
  const auto flat = maps.detach().flatten(1).to(torch::kDouble);
  const int64_t pixels = flat.size(1);
  const int64_t top = std::max<int64_t>(
      1, static_cast<int64_t>(std::llround(top_fraction * static_cast<double>(pixels))));
  const auto mass = flat.sum(1);
  const auto top_sum = std::get<0>(flat.topk(top, 1)).sum(1);
  const auto share = torch::where(mass > 0, top_sum / mass.clamp_min(1e-300),
                                  torch::zeros_like(mass));
  return {flat.mean().item<double>(), share.mean().item<double>()};
}

/// @brief Writes the statistics of maps `[N, H, W]` in [0, 1] into `metrics` as `cam_mean` and
/// `cam_top20_mass` (see `MapStatistics`).
inline void add_map_statistics(std::map<std::string, double>& metrics, const torch::Tensor& maps) {
  const auto statistics = map_statistics(maps, 0.2);
  metrics["cam_mean"] = statistics.mean;
  metrics["cam_top20_mass"] = statistics.top_mass;
}

/// @brief Computes maps with method `C` on a batch and adds their statistics to `metrics`:
/// `cam_mean` and `cam_top20_mass` (see `add_map_statistics`). Used by `ExplanationMonitor`;
/// the model's mode and gradients are left as they were.
template <CamMethod C>
void add_cam_statistics(std::map<std::string, double>& metrics, const AnyModel& model,
                        const torch::Tensor& x, const torch::Tensor& targets,
                        const CamOptions& options = {}, const C& method = C()) {
  add_map_statistics(metrics, explain<C>(model, x, targets, options, method));
}

/// @}
}  // namespace igrad

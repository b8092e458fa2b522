#pragma once
/// @file viz/comparison.hpp
/// @brief Figures that compare models: the same explanation methods on the same images, one column
/// per method and model (a baseline and a regularised model side by side, say).

#include <igrad/cam/explain.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics/evaluate.hpp>
#include <igrad/model.hpp>
#include <igrad/saliency/saliency_methods.hpp>
#include <igrad/viz/figure.hpp>

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace igrad {

/// @addtogroup viz_group
/// @{

/// @brief The indices of the first `per_class` samples of each class `0 .. classes-1`, class by
/// class: the rows of a figure that shows varied items. A class with fewer samples gives what it
/// has. Throws `InvalidArgument` unless `labels` is a 1-D integer tensor and both counts are
/// positive.
inline std::vector<int64_t> first_per_class(const torch::Tensor& labels, int64_t classes,
                                            int64_t per_class) {
  detail::require<InvalidArgument>(labels.defined() && labels.dim() == 1 &&
                                       !torch::isFloatingType(labels.scalar_type()),
                                   "igrad::first_per_class: labels must be a 1-D integer tensor [N]");
  detail::require<InvalidArgument>(classes > 0 && per_class > 0,
                                   "igrad::first_per_class: classes ({}) and per_class ({}) must be "
                                   "positive",
                                   classes, per_class);
  const auto values = labels.to(torch::kCPU, torch::kLong).contiguous();
  const auto* label = values.data_ptr<int64_t>();
  std::vector<int64_t> picks;
  for (int64_t cls = 0; cls < classes; ++cls)
    for (int64_t i = 0, taken = 0; i < values.size(0) && taken < per_class; ++i)
      if (label[i] == cls) picks.push_back(i), ++taken;
  return picks;
}

/// @brief An explainer computing `igrad::explain<Method>(model, x, targets)` for a CAM or an
/// input-space saliency method, named `name` (by default `Method::name`).
template <class Method>
  requires CamMethod<Method> || SaliencyMethod<Method>
Explainer method_explainer(std::string name = std::string(Method::name)) {
  return {std::move(name), [](const AnyModel& model, const torch::Tensor& x, const torch::Tensor& targets) {
            return explain<Method>(model, x, targets);
          }};
}

/// @brief A model in a comparison figure, and the short label its columns carry ("B", "R").
struct LabelledModel {
  std::string label;  ///< appended to each of its columns' labels
  AnyModel model;     ///< in eval mode, as the figure explains it
};

/// @brief A figure comparing models: one row per image, and for each explainer one column per
/// model, labelled "<explainer> <model label>" (e.g. "GradCam B", "GradCam R").
///
/// `images` `[N, C, H, W]` and `targets` `[N]` are passed to every explainer as they are;
/// `options.column_labels` is replaced by those labels. Throws `InvalidArgument` when `models` or
/// `explainers` is empty or the images are not a batch of images.
inline torch::Tensor comparison_grid(const std::vector<LabelledModel>& models, const torch::Tensor& images,
                                     const torch::Tensor& targets, const std::vector<Explainer>& explainers,
                                     ExplanationGridOptions options = {}) {
  detail::require<InvalidArgument>(!models.empty() && !explainers.empty(),
                                   "igrad::comparison_grid: needs at least one model and one explainer "
                                   "(got {} and {})",
                                   models.size(), explainers.size());
  detail::require_images(images, "igrad::comparison_grid: the images");
  std::vector<torch::Tensor> columns;
  std::vector<std::string> labels;
  for (const auto& explainer : explainers)
    for (const auto& entry : models) {
      columns.push_back(explainer.maps(entry.model, images, targets).detach().cpu());
      labels.push_back(explainer.name + " " + entry.label);
    }
  return explanation_grid(images.detach().cpu(), columns, options.column_labels(labels));
}

/// @}

}  // namespace igrad

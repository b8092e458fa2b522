#pragma once
/// @file study.hpp
/// @brief Building blocks of a study that compares trained models with statistics
/// (`examples/study.cpp`): error functions and CAM methods chosen by name at run time, and every
/// metric of SPEC §5 kept per image, so that confidence intervals can be computed later
/// (`<igrad/stats.hpp>`).

#include <igrad/ablation.hpp>
#include <igrad/cam.hpp>
#include <igrad/errors/error_functions.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics.hpp>
#include <igrad/metrics/evaluate_cams.hpp>
#include <igrad/model.hpp>

#include <boost/hana/for_each.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

namespace igrad {

/// @addtogroup metrics_group
/// @{

namespace detail {
/// A name folded for lookup: lower case, without '-', '_' and ' ', "++" spelled "plusplus".
inline std::string folded_name(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  std::erase_if(s, [](char ch) { return ch == '-' || ch == '_' || ch == ' '; });
  for (auto at = s.find("++"); at != std::string::npos; at = s.find("++"))
    s.replace(at, 2, "plusplus");
  return s;
}
}  // namespace detail

/// @brief Calls `f(boost::hana::type_c<E>)` for the error function named `name`: its class name
/// (`CosineError`, case and '-' / '_' ignored) or a short alias (cosine, sigmoid,
/// centered-sigmoid, histogram, mae, mse). Throws `InvalidArgument` for an unknown name.
template <class F>
void with_error_function(const std::string& name, F&& f) {
  static const std::map<std::string, std::string> aliases{
      {"cosine", "cosineerror"},
      {"sigmoid", "sigmoidmasking"},
      {"centeredsigmoid", "centeredsigmoidmasking"},
      {"histogram", "histogramintersection"},
      {"mae", "meanabsoluteerror"},
      {"mse", "meansquarederror"}};
  std::string wanted = detail::folded_name(name);
  if (auto it = aliases.find(wanted); it != aliases.end()) wanted = it->second;
  bool found = false;
  for_each_policy(all_error_functions, [&](auto type) {
    using E = typename decltype(type)::type;
    if (!found && detail::folded_name(std::string(E::name)) == wanted) {
      found = true;
      f(type);
    }
  });
  if (!found)
    throw InvalidArgument(igrad::detail::format(
        "unknown error function '{}'; expected one of cosine, sigmoid, centered-sigmoid, "
        "histogram, mae, mse (or the class names)",
        name));
}

/// @brief The explainers of the CAM methods named `names` (class names such as `GradCam`,
/// `Grad-CAM++`; case and '-' / '_' ignored), in order, looked up in `methods` (a Hana type
/// list; all shipped methods by default). Throws `InvalidArgument` for an unknown name, listing
/// the known ones.
///
/// A template (over the list) so that a translation unit that includes igrad but never calls it
/// does not instantiate every CAM method (issue 17: the umbrella header's compile time).
template <class Methods = std::remove_const_t<decltype(all_cam_methods)>>
std::vector<Explainer> cam_explainers_by_name(const std::vector<std::string>& names,
                                              const CamOptions& options = {},
                                              const Methods& methods = all_cam_methods) {
  std::vector<Explainer> result;
  for (const auto& name : names) {
    bool found = false;
    boost::hana::for_each(methods, [&](auto type) {
      using C = typename decltype(type)::type;
      if (found || detail::folded_name(std::string(C::name)) != detail::folded_name(name)) return;
      found = true;
      result.push_back(cam_explainers(boost::hana::make_tuple(type), options).front());
    });
    if (!found) {
      std::vector<std::string> known;
      boost::hana::for_each(methods, [&](auto type) {
        known.emplace_back(decltype(type)::type::name);
      });
      throw InvalidArgument(igrad::detail::format("unknown CAM method '{}'; expected one of {}",
                                                  name, fmt::join(known, ", ")));
    }
  }
  return result;
}

/// @brief Whether larger values of a metric are better: all of `MetricsTable`'s columns but AD,
/// Deletion, Complexity and Infidelity (lower is better there).
inline bool larger_is_better(const std::string& metric) {
  return metric != "AD" && metric != "Deletion" && metric != "Complexity" &&
         metric != "Infidelity";
}

/// @brief Per-image values of each metric: `values["GradCam/AD"][i]` is image i's term, so the
/// metric itself is the mean of the vector (AD, AI, AG, pointing games in %, insertion and
/// deletion as AUC in [0, 1]).
struct PerImageScores {
  /// Keyed "Method/Metric" (or "accuracy"), each vector in image order.
  std::map<std::string, std::vector<double>> values;
  /// Appends `v` `[N]` to the values of `key`.
  void append(const std::string& key, const torch::Tensor& v) {
    const auto host = v.detach().to(torch::kCPU, torch::kDouble).contiguous();
    auto& out = values[key];
    out.insert(out.end(), host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
  }
};

/// @brief Options of `per_image_scores`, with chained setters.
struct PerImageOptions {
  /// Images per batch.
  TORCH_ARG(int64_t, batch_size) = 64;
  /// The dataset's normalisation (masking works in pixel space).
  TORCH_ARG(std::optional<DatasetNormalization>, normalization) = std::nullopt;
  /// Compute insertion and deletion (the expensive part).
  TORCH_ARG(bool, causal) = true;
  /// Insertion / deletion settings; its normalisation and target are replaced.
  TORCH_ARG(CausalOptions, causal_options) = {};
  /// Pointing-game settings, used when `regions` are given.
  TORCH_ARG(PointingOptions, pointing_options) = {};
  /// Also Sparseness and Complexity (`<igrad/metrics/complexity.hpp>`).
  TORCH_ARG(bool, complexity_metrics) = false;
  /// When set, also ROAD (`road`'s combined score) with these settings (target replaced).
  TORCH_ARG(std::optional<RoadOptions>, road) = std::nullopt;
  /// When set, also FaithCorr (`faithfulness_correlation`) with these settings (target
  /// replaced; an unset normalisation by the one above).
  TORCH_ARG(std::optional<FaithfulnessCorrelationOptions>, faithfulness_correlation) = std::nullopt;
  /// When set, also Infidelity (`infidelity`) with these settings (target replaced).
  TORCH_ARG(std::optional<InfidelityOptions>, infidelity) = std::nullopt;
};

/// @brief Every metric of SPEC §5 per image, for each explainer, scoring the ground-truth class:
/// AD, AI, AG (and Insertion, Deletion when `causal`; Sparseness, Complexity, ROAD, FaithCorr,
/// Infidelity when their options ask for them) on images with labels; with `regions` (boxes or
/// masks) Pointing and EnergyPointing only. The mean of each vector equals `igrad::evaluate`'s
/// table entry for the same data and options.
inline PerImageScores per_image_scores(const AnyModel& model,
                                       const std::vector<Explainer>& explainers,
                                       const EvaluationBatch& data,
                                       const PerImageOptions& options = {}) {
  detail::require(!explainers.empty(), "per_image_scores got no explanation methods; expected "
                                       "at least one");
  detail::require(options.batch_size() >= 1, "per_image_scores: batch size {}; expected >= 1",
                  options.batch_size());
  detail::require_images(data.images, "the images");
  detail::require_labels(data.labels, data.images.size(0), std::numeric_limits<int64_t>::max(),
                         "the labels");
  const bool localisation = data.regions.defined();
  const auto masking = MaskingOptions().normalization(options.normalization());
  auto causal = options.causal_options();
  causal.normalization(options.normalization()).target(TargetClass::label);
  const detail::OptionalMeasures measures(options.road(), options.faithfulness_correlation(),
                                          options.infidelity(), options.normalization());
  TrainingModeGuard eval_mode(model, false);
  PerImageScores scores;
  const int64_t n = data.images.size(0);
  for (int64_t begin = 0; begin < n; begin += options.batch_size()) {
    const int64_t end = std::min(n, begin + options.batch_size());
    const auto x = data.images.slice(0, begin, end);
    const auto y = data.labels.slice(0, begin, end);
    for (const auto& e : explainers) {
      const auto maps = e.maps(model, x, y).detach();
      const auto key = [&](const char* metric) { return e.name + "/" + metric; };
      if (localisation) {
        const auto regions = data.regions.slice(0, begin, end);
        scores.append(key("Pointing"),
                      pointing_hits(maps, regions, options.pointing_options()).to(torch::kDouble) *
                          100);
        scores.append(key("EnergyPointing"),
                      energy_pointing(maps, regions, options.pointing_options()) * 100);
        continue;
      }
      const auto f = faithfulness_scores(model, x, maps, y, masking);
      const auto p = f.original.to(torch::kDouble), o = f.masked.to(torch::kDouble);
      const auto zero = torch::zeros_like(p);
      const auto drop = torch::clamp_min(p - o, 0), gain = torch::clamp_min(o - p, 0);
      // As FaithfulnessAccumulator: a zero numerator makes the term 0 even at p = 0 or p = 1.
      scores.append(key("AD"), torch::where(drop > 0, drop / p, zero) * 100);
      scores.append(key("AI"), (o > p).to(torch::kDouble) * 100);
      scores.append(key("AG"), torch::where(gain > 0, gain / (1 - p), zero) * 100);
      if (options.causal()) {
        scores.append(key("Insertion"), insertion(model, x, maps, y, causal).auc);
        scores.append(key("Deletion"), deletion(model, x, maps, y, causal).auc);
      }
      if (options.complexity_metrics()) {
        scores.append(key("Sparseness"), sparseness(maps));
        scores.append(key("Complexity"), complexity(maps));
      }
      measures.score(model, x, maps, y, [&](const char* name, const torch::Tensor& values) {
        scores.append(key(name), values);
      });
    }
  }
  return scores;
}

/// @brief Per-image correctness (100 when the model's top class is the label, else 0) of `images`
/// `[N, C, H, W]` against `labels` `[N]`, in batches of `batch_size`, without gradients.
inline std::vector<double> per_image_correct(const AnyModel& model, const torch::Tensor& images,
                                             const torch::Tensor& labels,
                                             int64_t batch_size = 500) {
  detail::require_images(images, "the images");
  detail::require_labels(labels, images.size(0), std::numeric_limits<int64_t>::max(), "the labels");
  torch::NoGradGuard no_grad;
  TrainingModeGuard eval_mode(model, false);
  PerImageScores scores;
  for (int64_t i = 0; i < images.size(0); i += batch_size) {
    const auto end = std::min(images.size(0), i + batch_size);
    const auto predicted = model(images.slice(0, i, end)).argmax(1);
    scores.append("accuracy",
                  predicted.eq(labels.slice(0, i, end).to(predicted.device())).to(torch::kDouble) *
                      100);
  }
  return scores.values["accuracy"];
}

/// @}
}  // namespace igrad

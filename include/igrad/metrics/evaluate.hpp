#pragma once
/// @file metrics/evaluate.hpp
/// @brief One call that evaluates a model's explanation methods over a dataset and returns the
/// method × metric table (SPEC §5).

#include <igrad/concepts.hpp>
#include <igrad/detail/batched_jobs.hpp>
#include <igrad/detail/progress_line.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics/causal.hpp>
#include <igrad/metrics/complexity.hpp>
#include <igrad/metrics/faithfulness.hpp>
#include <igrad/metrics/masking.hpp>
#include <igrad/metrics/perturbation.hpp>
#include <igrad/metrics/pointing.hpp>
#include <igrad/metrics/road.hpp>
#include <igrad/metrics/table.hpp>
#include <igrad/model.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <unistd.h>

namespace igrad {

/// @addtogroup metrics_group
/// @{

/// @brief A named explanation method: `maps(model, x, targets)` returns `[N, H, W]` maps in
/// [0, 1] for the classes `targets` `[N]`.
///
/// Any method fits, e.g. a lambda around an input-gradient saliency; CAM types become explainers
/// with `cam_explainers` (`<igrad/metrics/evaluate_cams.hpp>`).
struct Explainer {
  std::string name;  ///< the row name in the table
  /// Computes the maps of a batch (called in eval mode, gradients enabled).
  std::function<torch::Tensor(const AnyModel&, const torch::Tensor& x, const torch::Tensor& targets)>
      maps;
};

/// @brief Labelled images, a whole dataset or one batch of it.
struct EvaluationBatch {
  torch::Tensor images;   ///< `[N, C, H, W]`, normalised as the model expects
  torch::Tensor labels;   ///< `[N]` ground-truth class indices
  /// Optional ground-truth regions for the pointing games: boxes `[N, 4]` (x0, y0, x1, y1, end
  /// exclusive by default, see `PointingOptions`) or masks `[N, H, W]`; undefined when none.
  torch::Tensor regions = {};
};

/// @brief Options of `evaluate`, with chained setters.
struct EvaluationOptions {
  /// A C stream (an alias, so that `TORCH_ARG` spells its accessors `FILE* const&`).
  using Stream = std::FILE*;
  /// Images per batch when the dataset is given as tensors (batches of a range are used as they are).
  TORCH_ARG(int64_t, batch_size) = 64;
  /// The dataset's normalisation (masking and substrates work in pixel space).
  TORCH_ARG(std::optional<DatasetNormalization>, normalization) = std::nullopt;
  /// Explain and score the ground-truth class (default) or the predicted class.
  TORCH_ARG(TargetClass, target) = TargetClass::label;
  /// Compute insertion and deletion (the expensive part: `H·W / pixels_per_step + 1` forward
  /// passes per image and metric).
  TORCH_ARG(bool, causal) = true;
  /// Insertion / deletion settings; its `normalization` and `target` are replaced by the ones above.
  TORCH_ARG(CausalOptions, causal_options) = {};
  /// Add the columns `Sparseness` and `Complexity` (the means of the per-image measures of
  /// `<igrad/metrics/complexity.hpp>`); off by default, so tables keep their columns.
  TORCH_ARG(bool, complexity_metrics) = false;
  /// When set, add the column `ROAD` (the mean of `road`'s combined score, `<igrad/metrics/road.hpp>`)
  /// with these settings; its `target` is replaced by the classes evaluated.
  TORCH_ARG(std::optional<RoadOptions>, road) = std::nullopt;
  /// When set, add the column `FaithCorr` (the mean of `faithfulness_correlation`,
  /// `<igrad/metrics/perturbation.hpp>`) with these settings; its `target` is replaced by the
  /// classes evaluated, and an unset `normalization` by the one above.
  TORCH_ARG(std::optional<FaithfulnessCorrelationOptions>, faithfulness_correlation) = std::nullopt;
  /// When set, add the column `Infidelity` (the mean of `infidelity`) with these settings; its
  /// `target` is replaced by the classes evaluated.
  TORCH_ARG(std::optional<InfidelityOptions>, infidelity) = std::nullopt;
  /// Pointing-game settings (tolerance, box convention), used when the data has regions.
  TORCH_ARG(PointingOptions, pointing_options) = {};
  /// Show progress on `progress_stream`: redrawn in place on a terminal, a line every 10% else.
  TORCH_ARG(bool, progress) = true;
  /// Where progress goes.
  TORCH_ARG(Stream, progress_stream) = stderr;
};

namespace detail {

/// Progress of an evaluation, TTY-aware like `ProgressBar`: redraws one line on a terminal;
/// elsewhere (logs, CI) prints a line every 10% of the batches, or only the final line when the
/// number of batches is unknown.
class EvaluationProgress {
 public:
  EvaluationProgress(const EvaluationOptions& options, std::optional<int64_t> total_batches)
      : line_(options.progress() ? options.progress_stream() : nullptr),
        total_(total_batches),
        start_(std::chrono::steady_clock::now()) {}

  void batch_done(int64_t images) {
    ++batches_;
    images_ += images;
    if (!line_.enabled()) return;
    if (line_.is_terminal()) {
      line_.redraw([&] { return line(); });
    } else if (total_ && *total_ > 0) {
      const int64_t decile = batches_ * 10 / *total_;
      if (decile > last_decile_ && batches_ < *total_) {
        last_decile_ = decile;
        line_.print_line(line());
      }
    }
  }

  void finish() { line_.print_line(line()); }

 private:
  std::string line() const {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const std::string bar = detail::progress_bar_text(batches_, total_);
    std::string eta;
    if (total_ && *total_ > 0) {
      if (batches_ > 0 && batches_ < *total_)
        eta = igrad::detail::format(" ETA {:.0f} s", elapsed / batches_ * (*total_ - batches_));
    }
    return igrad::detail::format("evaluate {}{}{} batches, {} images, {:.1f} s{}", bar, batches_,
                                 total_ ? igrad::detail::format("/{}", *total_) : std::string(),
                                 images_, elapsed, eta);
  }

  ProgressLine line_;
  std::optional<int64_t> total_;
  std::chrono::steady_clock::time_point start_;
  int64_t batches_ = 0, images_ = 0, last_decile_ = 0;
};

/// A batch element of a range, as an `EvaluationBatch`: an `EvaluationBatch`, anything with
/// `images` / `labels` (and `boxes` or `masks`) members such as `igrad::LocalizationBatch`, a
/// `torch::data::Example<>` (data, target), or a pair / tuple (images, labels[, regions]).
template <class B>
EvaluationBatch to_evaluation_batch(const B& batch) {
  if constexpr (std::is_same_v<B, EvaluationBatch>) {
    return batch;
  } else if constexpr (requires { batch.images; batch.labels; batch.boxes; }) {
    return {batch.images, batch.labels, batch.boxes};
  } else if constexpr (requires { batch.images; batch.labels; batch.masks; }) {
    return {batch.images, batch.labels, batch.masks};
  } else if constexpr (requires { batch.images; batch.labels; }) {
    return {batch.images, batch.labels};
  } else if constexpr (requires { batch.data; batch.target; }) {
    return {batch.data, batch.target};
  } else if constexpr (std::tuple_size_v<B> == 2) {
    return {std::get<0>(batch), std::get<1>(batch)};
  } else {
    static_assert(std::tuple_size_v<B> == 3,
                  "igrad::evaluate: a batch must be an EvaluationBatch, have images/labels "
                  "members, be a torch::data::Example, or a tuple (images, labels[, regions])");
    return {std::get<0>(batch), std::get<1>(batch), std::get<2>(batch)};
  }
}

/// The optional perturbation measures of an evaluation (ROAD, FaithCorr, Infidelity), with their
/// options prepared: the classes given are scored, and an unset normalisation of faithfulness
/// correlation's black baseline is the evaluation's.
struct OptionalMeasures {
  std::optional<RoadOptions> road;
  std::optional<FaithfulnessCorrelationOptions> faithfulness_correlation;
  std::optional<InfidelityOptions> infidelity;

  OptionalMeasures(std::optional<RoadOptions> road_options,
                   std::optional<FaithfulnessCorrelationOptions> correlation_options,
                   std::optional<InfidelityOptions> infidelity_options,
                   const std::optional<DatasetNormalization>& normalization)
      : road(std::move(road_options)),
        faithfulness_correlation(std::move(correlation_options)),
        infidelity(std::move(infidelity_options)) {
    if (road) road->target(TargetClass::label);
    if (faithfulness_correlation) {
      faithfulness_correlation->target(TargetClass::label);
      if (!faithfulness_correlation->normalization())
        faithfulness_correlation->normalization(normalization);
    }
    if (infidelity) infidelity->target(TargetClass::label);
  }

  /// The column names of the measures asked for, in order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    if (road) out.emplace_back("ROAD");
    if (faithfulness_correlation) out.emplace_back("FaithCorr");
    if (infidelity) out.emplace_back("Infidelity");
    return out;
  }

  /// Calls `add(name, values [N])` for each measure asked for, on a batch and its classes.
  template <class Add>
  void score(const AnyModel& model, const torch::Tensor& x, const torch::Tensor& maps,
             const torch::Tensor& classes, Add&& add) const {
    if (road) add("ROAD", igrad::road(model, x, maps, classes, *road).combined);
    if (faithfulness_correlation)
      add("FaithCorr",
          igrad::faithfulness_correlation(model, x, maps, classes, *faithfulness_correlation));
    if (infidelity) add("Infidelity", igrad::infidelity(model, x, maps, classes, *infidelity));
  }
};

/// The columns `evaluate` fills for these options, in order (see `MetricsTable`).
inline std::vector<std::string> evaluation_columns(const EvaluationOptions& options,
                                                   bool with_regions) {
  std::vector<std::string> metrics{"AD", "AI", "AG"};
  if (options.causal()) metrics.insert(metrics.end(), {"Insertion", "Deletion"});
  if (with_regions) metrics.insert(metrics.end(), {"Pointing", "EnergyPointing"});
  if (options.complexity_metrics()) metrics.insert(metrics.end(), {"Sparseness", "Complexity"});
  for (auto& name : OptionalMeasures(options.road(), options.faithfulness_correlation(),
                                     options.infidelity(), options.normalization())
                        .names())
    metrics.push_back(std::move(name));
  return metrics;
}

/// Evaluates every explainer on a sequence of batches fed through `for_each_batch`.
template <class ForEachBatch>
MetricsTable evaluate_batches(const AnyModel& model, const std::vector<Explainer>& explainers,
                              ForEachBatch&& for_each_batch, std::optional<int64_t> total_batches,
                              const EvaluationOptions& options) {
  require(!explainers.empty(), "evaluate() got no explanation methods; expected at least one");
  std::set<std::string> names;
  for (const auto& e : explainers) {
    require(!e.name.empty(), "an explanation method has an empty name; expected a row name");
    require(static_cast<bool>(e.maps), "the explanation method '{}' has no maps function",
            e.name);
    require(names.insert(e.name).second, "two explanation methods are named '{}'; expected "
                                         "unique names", e.name);
  }
  const MaskingOptions masking =
      MaskingOptions().normalization(options.normalization()).target(TargetClass::label);
  auto causal_options = options.causal_options();
  causal_options.normalization(options.normalization()).target(TargetClass::label);

  struct Accumulators {
    FaithfulnessAccumulator faithfulness;
    CausalAccumulator insertion, deletion;
    PointingAccumulator pointing;
    ComplexityAccumulator complexity;
    std::map<std::string, double> optional_sums;  // sums over images, by column
  };
  const OptionalMeasures measures(options.road(), options.faithfulness_correlation(),
                                  options.infidelity(), options.normalization());
  std::vector<Accumulators> accumulators;
  for (std::size_t i = 0; i < explainers.size(); ++i)
    accumulators.push_back({FaithfulnessAccumulator(masking),
                            CausalAccumulator(CausalMetric::insertion, causal_options),
                            CausalAccumulator(CausalMetric::deletion, causal_options),
                            PointingAccumulator(options.pointing_options()),
                            ComplexityAccumulator(),
                            {}});

  TrainingModeGuard eval_mode(model, false);
  EvaluationProgress progress(options, total_batches);
  std::optional<bool> with_regions;
  int64_t images = 0;
  for_each_batch([&](const EvaluationBatch& batch) {
    require_images(batch.images, "the dataset's images");
    const int64_t n = batch.images.size(0);
    if (n == 0) return;
    const bool has_regions = batch.regions.defined();
    require(!with_regions || *with_regions == has_regions,
            "some batches have ground-truth regions and others not; expected all or none");
    with_regions = has_regions;
    torch::Tensor classes;
    {
      torch::NoGradGuard no_grad;
      const auto probabilities = class_probabilities(model, batch.images);
      classes = chosen_classes(probabilities, batch.labels, options.target());
    }
    for (std::size_t e = 0; e < explainers.size(); ++e) {
      const auto maps = explainers[e].maps(model, batch.images, classes).detach();
      auto& acc = accumulators[e];
      acc.faithfulness.add(model, batch.images, maps, classes);
      if (options.causal()) {
        acc.insertion.add(model, batch.images, maps, classes);
        acc.deletion.add(model, batch.images, maps, classes);
      }
      if (has_regions) acc.pointing.add(checked_maps(maps, batch.images), batch.regions);
      if (options.complexity_metrics()) acc.complexity.add(checked_maps(maps, batch.images));
      measures.score(model, batch.images, maps, classes,
                     [&](const char* name, const torch::Tensor& values) {
                       accumulate_in_order(acc.optional_sums[name], values);
                     });
    }
    images += n;
    progress.batch_done(n);
  });
  progress.finish();
  require(images > 0, "evaluate() got an empty dataset; expected at least one image");

  MetricsTable table(evaluation_columns(options, with_regions.value_or(false)));
  for (std::size_t e = 0; e < explainers.size(); ++e) {
    const auto& acc = accumulators[e];
    const auto f = acc.faithfulness.result();
    std::vector<double> row{f.average_drop, f.average_increase, f.average_gain};
    if (options.causal()) row.insert(row.end(), {acc.insertion.result(), acc.deletion.result()});
    if (with_regions.value_or(false)) {
      const auto p = acc.pointing.result();
      row.insert(row.end(), {p.pointing_game, p.energy_pointing_game});
    }
    if (options.complexity_metrics()) {
      const auto c = acc.complexity.result();
      row.insert(row.end(), {c.sparseness, c.complexity});
    }
    for (const auto& name : measures.names())
      row.push_back(acc.optional_sums.at(name) / static_cast<double>(images));
    table.add_row(explainers[e].name, std::move(row));
  }
  return table;
}

}  // namespace detail

/// @brief Evaluates explanation methods on a dataset held in tensors, split into batches of
/// `options.batch_size()`, and returns the method × metric table.
///
/// For each batch: the class of each image (ground truth, or predicted on request), each
/// method's maps for those classes, then AD / AI / AG, insertion and deletion AUC, and — when
/// `data.regions` holds boxes or masks — the pointing games. The model runs in eval mode (its mode
/// is restored after), metrics without gradients, everything on the images' device. Columns:
/// see `MetricsTable`. Throws `InvalidArgument` for an empty dataset, bad maps or bad labels.
/// @snippet doc_snippets.cpp evaluate
inline MetricsTable evaluate(const AnyModel& model, const std::vector<Explainer>& explainers,
                             const EvaluationBatch& data, const EvaluationOptions& options = {}) {
  detail::require_images(data.images, "the dataset's images");
  detail::require(options.batch_size() >= 1, "EvaluationOptions::batch_size is {}; expected >= 1",
                  options.batch_size());
  const int64_t n = data.images.size(0);
  detail::require(n > 0, "evaluate() got an empty dataset (images of shape {}); expected at least "
                         "one image", detail::shape_string(data.images));
  detail::require(data.labels.defined() && data.labels.dim() == 1 && data.labels.size(0) == n,
                  "the dataset's labels have shape {} for {} images; expected [{}]",
                  detail::shape_string(data.labels), n, n);
  if (data.regions.defined()) {
    // Checked here, before any map is computed, rather than by the pointing game afterwards.
    const int64_t h = data.images.size(2), w = data.images.size(3);
    const auto& r = data.regions;
    const bool boxes = r.dim() == 2 && r.size(0) == n && r.size(1) == 4;
    const bool masks = r.dim() == 3 && r.size(0) == n && r.size(1) == h && r.size(2) == w;
    detail::require(boxes || masks,
                    "the dataset's regions have shape {} for {} images of {}x{}; expected boxes "
                    "[{}, 4] or masks [{}, {}, {}]",
                    detail::shape_string(r), n, h, w, n, n, h, w);
  }
  const int64_t b = options.batch_size();
  return detail::evaluate_batches(
      model, explainers,
      [&](auto&& visit) {
        detail::for_each_batch(n, b, "EvaluationOptions::batch_size",
                               [&](int64_t start, int64_t end) {
                                 EvaluationBatch batch{data.images.slice(0, start, end),
                                                       data.labels.slice(0, start, end)};
                                 if (data.regions.defined())
                                   batch.regions = data.regions.slice(0, start, end);
                                 visit(batch);
                               });
      },
      (n + b - 1) / b, options);
}

namespace detail {
/// One batch that `to_evaluation_batch` converts (an `igrad::LocalizationBatch`, a
/// `torch::data::Example<>`, a tuple of tensors), as opposed to a range of batches.
template <class B>
concept SingleEvaluationBatch =
    !detail::is_range<B> && !std::is_same_v<B, EvaluationBatch> &&
    (requires(const B& b) {
      b.images;
      b.labels;
    } || requires(const B& b) {
      b.data;
      b.target;
    } || requires { std::tuple_size<B>::value; });
}  // namespace detail

/// @brief Evaluates explanation methods on one batch given as a whole — an
/// `igrad::LocalizationBatch` (images, labels, boxes and masks: the boxes are used), any type
/// with `images` / `labels` (and `boxes` or `masks`) members, a `torch::data::Example<>`, or a
/// tuple `(images, labels[, regions])` — cut into batches of `options.batch_size()` like the
/// tensor overload, whose numbers it gives on the same images.
///
/// Throws `InvalidArgument` when the labels are not `[N]` or the regions neither boxes `[N, 4]`
/// nor masks `[N, H, W]` of the images' size, before any map is computed.
template <class Batch>
  requires detail::SingleEvaluationBatch<std::remove_cvref_t<Batch>>
MetricsTable evaluate(const AnyModel& model, const std::vector<Explainer>& explainers,
                      const Batch& batch, const EvaluationOptions& options = {}) {
  return evaluate(model, explainers, detail::to_evaluation_batch(batch), options);
}

/// @brief Evaluates explanation methods on any range of batches (a data loader, a vector of
/// batches, ...) and returns the method × metric table; see the tensor overload.
///
/// A batch is an `EvaluationBatch`, anything with `images` and `labels` (and `boxes` or `masks`)
/// members such as `igrad::LocalizationBatch`, a `torch::data::Example<>`, or a tuple
/// `(images, labels[, regions])`. The range is traversed once; its size, when known, sizes the
/// progress bar.
template <class Batches>
  requires requires(Batches& b) {
    std::begin(b);
    std::end(b);
  }
MetricsTable evaluate(const AnyModel& model, const std::vector<Explainer>& explainers,
                      Batches&& batches, const EvaluationOptions& options = {}) {
  std::optional<int64_t> total;
  if constexpr (detail::is_sized_range<Batches>)
    total = static_cast<int64_t>(std::ranges::size(batches));
  return detail::evaluate_batches(
      model, explainers,
      [&](auto&& visit) {
        for (auto&& batch : batches) visit(detail::to_evaluation_batch(batch));
      },
      total, options);
}

/// @}
}  // namespace igrad

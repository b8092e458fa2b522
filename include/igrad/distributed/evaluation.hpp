#pragma once
/// @file distributed/evaluation.hpp
/// @brief Explanation metrics over a dataset sharded across ranks, reduced exactly.

#include <igrad/distributed/process_group.hpp>
#include <igrad/metrics/evaluate.hpp>
#include <igrad/metrics/table.hpp>

#include <torch/torch.h>

#include <string>
#include <string_view>
#include <vector>

namespace igrad {
namespace distributed {

/// @addtogroup distributed_group
/// @{

/// @brief Combines per-rank tables of `evaluate` into the table of all ranks' images.
///
/// Every metric `evaluate` reports (AD, AI, AG, insertion and deletion AUC, the pointing games) is
/// a mean over images, so the global value is Σ_r value_r · n_r / Σ_r n_r, summed in double
/// precision: `local` holds this rank's means over its `local_images` images (a rank with no
/// images passes any table of the same shape and 0). Rows and columns must be alike on every
/// rank. Returns the same table on every rank.
inline MetricsTable reduce_table(const ProcessGroup& group, const MetricsTable& local,
                                 int64_t local_images) {
  igrad::detail::require(local_images >= 0, "local_images is {}; expected a count >= 0",
                         local_images);
  if (!group.distributed()) return local;
  const auto& methods = local.methods();
  const auto& metrics = local.metrics();
  std::vector<double> sums;
  for (const auto& m : methods)
    for (double v : local.row(m)) sums.push_back(v * static_cast<double>(local_images));
  sums.push_back(static_cast<double>(local_images));
  sums = group.sum(std::move(sums), "reduction of the evaluation's sums and counts");
  const double total = sums.back();
  igrad::detail::require(total > 0, "the ranks evaluated no image; expected at least one");
  MetricsTable table(metrics);
  std::size_t i = 0;
  for (const auto& m : methods) {
    std::vector<double> row;
    for (std::size_t c = 0; c < metrics.size(); ++c) row.push_back(sums[i++] / total);
    table.add_row(m, std::move(row));
  }
  return table;
}

/// @brief `igrad::evaluate` on a dataset every rank holds, each rank evaluating its contiguous
/// block of images (`ProcessGroup::shard`) and the tables combined with `reduce_table`: a 2-rank
/// evaluation equals the 1-rank one of the same images (up to the rounding of the final
/// division). The progress line is printed by rank 0 only. Same arguments and errors as
/// `igrad::evaluate`; every rank must pass the same dataset and options.
inline MetricsTable evaluate(const ProcessGroup& group, const AnyModel& model,
                             const std::vector<Explainer>& explainers, const EvaluationBatch& data,
                             EvaluationOptions options = {}) {
  if (!group.distributed()) return igrad::evaluate(model, explainers, data, options);
  igrad::detail::require_images(data.images, "the dataset's images");
  const int64_t n = data.images.size(0);
  igrad::detail::require(n > 0, "evaluate() got an empty dataset; expected at least one image");
  const auto [begin, end] = group.shard(n);
  options.progress(options.progress() && group.is_rank_zero());
  if (end > begin) {
    EvaluationBatch shard{data.images.slice(0, begin, end),
                          data.labels.defined() ? data.labels.slice(0, begin, end) : data.labels};
    if (data.regions.defined()) shard.regions = data.regions.slice(0, begin, end);
    return reduce_table(group, igrad::evaluate(model, explainers, shard, options), end - begin);
  }
  // No image here (fewer images than ranks): a table of zeros of the same shape.
  const auto metrics = igrad::detail::evaluation_columns(options, data.regions.defined());
  MetricsTable empty(metrics);
  for (const auto& e : explainers) empty.add_row(e.name, std::vector<double>(metrics.size(), 0.0));
  return reduce_table(group, empty, 0);
}

/// @brief Every rank's values for its contiguous block of `total` items, put together in item
/// order on every rank.
///
/// Rank r passes the values of items `[begin, begin + local.size())` (as `ProcessGroup::shard`
/// gives them); the result holds all `total` values, bit for bit as computed by the rank that
/// owns each item (one all-reduce of a zero-padded vector: adding zeros is exact). Use it for
/// per-image scores whose statistics need every image, such as bootstrap intervals. The blocks
/// must cover `[0, total)` exactly once: a gap or an overlap is an `InvalidArgument` on every
/// rank. A world of one returns `local` (which must then cover everything).
inline std::vector<double> gather_blocks(const ProcessGroup& group, const std::vector<double>& local,
                                         int64_t begin, int64_t total, std::string_view what) {
  const auto size = static_cast<int64_t>(local.size());
  igrad::detail::require(total >= 0 && begin >= 0 && begin + size <= total,
                         "gather_blocks ({}): the block [{}, {}) is not inside [0, {}); expected "
                         "this rank's part of the items", what, begin, begin + size, total);
  // Values in the first half, a coverage count per item in the second.
  std::vector<double> padded(static_cast<std::size_t>(2 * total), 0.0);
  for (int64_t i = 0; i < size; ++i) {
    padded[static_cast<std::size_t>(begin + i)] = local[static_cast<std::size_t>(i)];
    padded[static_cast<std::size_t>(total + begin + i)] = 1.0;
  }
  if (group.distributed()) padded = group.sum(std::move(padded), what);
  for (int64_t i = 0; i < total; ++i) {
    const double owners = padded[static_cast<std::size_t>(total + i)];
    igrad::detail::require(owners == 1.0,
                           "gather_blocks ({}): item {} of {} is held by {} ranks; expected the "
                           "ranks' blocks to cover every item exactly once", what, i, total,
                           static_cast<int64_t>(owners));
  }
  padded.resize(static_cast<std::size_t>(total));
  return padded;
}

/// @}
}  // namespace distributed
}  // namespace igrad

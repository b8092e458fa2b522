#pragma once
/// @file distributed/data_parallel.hpp
/// @brief Data-parallel training with the ordinary `Trainer`: the `DataParallel` callback, a
/// sharding sampler, and wrappers for rank-0-only and agreed callbacks.

#include <igrad/callbacks/callback.hpp>
#include <igrad/distributed/process_group.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/model.hpp>

#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

namespace igrad {
namespace distributed {

/// @addtogroup distributed_group
/// @{

/// @brief Options of `DataParallel`, with chained setters.
struct DataParallelOptions {
  /// Gradients travel in flat buffers of about this many bytes (one all-reduce each), as
  /// PyTorch's DDP buckets them (25 MiB by default there too): few, large messages.
  TORCH_ARG(int64_t, bucket_bytes) = int64_t{25} << 20;
  /// After each step, replace every rank's buffers (batch-norm running statistics) with rank 0's,
  /// as DDP's `broadcast_buffers=True` does, so that all ranks evaluate the same model. The
  /// training forward pass still normalises with each rank's own batch statistics (DDP's default,
  /// not SyncBatchNorm).
  TORCH_ARG(bool, broadcast_buffers) = true;
};

/// @brief Callback that makes `Trainer::fit` data-parallel across the ranks of a `ProcessGroup`.
///
/// - `on_train_begin`: parameters and buffers are broadcast from rank 0, so every rank starts
///   from the same model (whatever each rank initialised).
/// - `on_after_backward`: the gradients are averaged across ranks (bucketed all-reduce of flat
///   buffers) before the optimizer's step, so that every rank makes the same update; then,
///   unless disabled, buffers are broadcast from rank 0.
/// - `on_epoch_end`: the epoch log becomes the sample-weighted mean over all ranks (`samples` is
///   the total, `seconds` the slowest rank's, `metrics` the mean over ranks).
///
/// Pass it FIRST to `fit`, so that the callbacks after it see the reduced log, and give each
/// rank its own shard of the data (`DistributedSampler`) with the same number of batches.
/// Each rank's batch is its share of the global batch: 2 ranks × 32 equal 1 rank × 64 (for a
/// mean loss and a scale-free error such as the cosine error). In a world of one it does nothing.
/// With `group` from `ProcessGroup::from_environment()` and `dataset` a stacked LibTorch dataset:
/// @snippet doc_snippets.cpp data_parallel
class DataParallel {
 public:
  /// @brief Data parallelism over `group`.
  explicit DataParallel(ProcessGroup group, DataParallelOptions options = {})
      : group_(std::move(group)), options_(options) {
    igrad::detail::require(options_.bucket_bytes() >= 1,
                           "DataParallelOptions::bucket_bytes is {}; expected >= 1",
                           options_.bucket_bytes());
  }

  /// @brief Broadcasts parameters and buffers from rank 0.
  void on_train_begin(TrainerState& state) { broadcast_model(state.model); }
  /// @brief Averages the gradients across ranks (and broadcasts the buffers).
  void on_after_backward(TrainerState& state) {
    average_gradients(state.model, state.optimizer, state.global_step);
    if (options_.broadcast_buffers()) broadcast_buffers(state.model, state.global_step);
  }
  /// @brief Reduces the epoch log across ranks, sample-weighted.
  void on_epoch_end(TrainerState& state, EpochLog& log) { reduce_log(log, state.epoch); }

  /// @brief Replaces parameters and buffers with rank 0's.
  void broadcast_model(const AnyModel& model) {
    auto tensors = model.parameters();
    for (auto& b : model.buffers()) tensors.push_back(b);
    broadcast_tensors(tensors, "broadcast of the parameters and buffers from rank 0");
  }
  /// @brief Replaces the buffers with rank 0's.
  void broadcast_buffers(const AnyModel& model, int64_t step = 0) {
    broadcast_tensors(model.buffers(),
                      igrad::detail::format("broadcast of the buffers after step {}", step));
  }

  /// @brief Averages the gradients of `model`'s (and `optimizer`'s) trainable parameters across
  /// ranks, in place. A parameter without a gradient counts as zero and keeps none unless
  /// another rank has one.
  void average_gradients(const AnyModel& model, torch::optim::Optimizer* optimizer = nullptr,
                         int64_t step = 0) {
    if (!group_.distributed()) return;
    const auto started = std::chrono::steady_clock::now();
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> parameters;
    std::unordered_set<const void*> seen;
    const auto add = [&](const torch::Tensor& p) {
      if (p.defined() && p.requires_grad() && seen.insert(p.unsafeGetTensorImpl()).second)
        parameters.push_back(p);
    };
    for (const auto& p : model.parameters()) add(p);
    if (optimizer != nullptr)
      for (const auto& g : optimizer->param_groups())
        for (const auto& p : g.params()) add(p);
    // Buckets of like tensors, last parameters first (their gradients are ready first in a
    // backward pass; the order only has to be the same on every rank).
    std::vector<std::vector<torch::Tensor>> buckets;
    std::vector<int64_t> bucket_bytes;
    for (auto it = parameters.rbegin(); it != parameters.rend(); ++it) {
      const auto bytes = it->numel() * static_cast<int64_t>(it->element_size());
      if (buckets.empty() || bucket_bytes.back() + bytes > options_.bucket_bytes() ||
          buckets.back().front().scalar_type() != it->scalar_type() ||
          buckets.back().front().device() != it->device()) {
        buckets.emplace_back();
        bucket_bytes.push_back(0);
      }
      buckets.back().push_back(*it);
      bucket_bytes.back() += bytes;
    }
    std::vector<torch::Tensor> flats;
    for (const auto& bucket : buckets) {
      std::vector<torch::Tensor> pieces;
      for (const auto& p : bucket)
        pieces.push_back(p.grad().defined() ? p.grad().reshape(-1) : torch::zeros({p.numel()},
                                                                                  p.options()));
      flats.push_back(torch::cat(pieces));
    }
    group_.all_reduce(flats,
                      igrad::detail::format("all-reduce of the gradients of step {}", step + 1));
    const double world = static_cast<double>(group_.world_size());
    for (std::size_t b = 0; b < buckets.size(); ++b) {
      flats[b].div_(world);
      int64_t offset = 0;
      for (auto& p : buckets[b]) {
        auto mean = flats[b].narrow(0, offset, p.numel()).view(p.sizes());
        offset += p.numel();
        if (p.grad().defined())
          p.mutable_grad().copy_(mean);
        else if (mean.ne(0).any().item<bool>())
          p.mutable_grad() = mean.clone();
      }
    }
    communication_seconds_ +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  }

  /// @brief Makes `log` the sample-weighted mean over the ranks' logs (see the class).
  void reduce_log(EpochLog& log, int64_t epoch = 0) {
    if (!group_.distributed()) return;
    const double n = static_cast<double>(log.samples);
    std::vector<double> sums{log.loss * n, log.classification_loss * n, log.regulariser_loss * n,
                             log.accuracy * n, n};
    for (const auto& [name, value] : log.metrics) sums.push_back(value);
    sums = group_.sum(std::move(sums),
                      igrad::detail::format("reduction of the log of epoch {}", epoch));
    auto seconds = torch::tensor({log.seconds}, torch::kDouble);
    group_.all_reduce({seconds}, igrad::detail::format("slowest rank's time of epoch {}", epoch),
                      /*maximum=*/true);
    const double total = sums[4];
    if (total > 0) {
      log.loss = sums[0] / total;
      log.classification_loss = sums[1] / total;
      log.regulariser_loss = sums[2] / total;
      log.accuracy = sums[3] / total;
    }
    log.samples = static_cast<int64_t>(total);
    log.seconds = seconds.item<double>();
    std::size_t i = 5;
    for (auto& [name, value] : log.metrics)
      value = sums[i++] / static_cast<double>(group_.world_size());
  }

  /// @brief Wall time spent averaging gradients (flattening, all-reduce, copying back), in s.
  double communication_seconds() const { return communication_seconds_; }
  /// @brief The process group.
  const ProcessGroup& group() const { return group_; }

 private:
  /// Broadcasts `tensors` from rank 0 in flat buffers, one per dtype and device.
  void broadcast_tensors(const std::vector<torch::Tensor>& tensors, const std::string& what) {
    if (!group_.distributed() || tensors.empty()) return;
    torch::NoGradGuard no_grad;
    std::map<std::pair<int, std::string>, std::vector<torch::Tensor>> groups;
    for (const auto& t : tensors)
      groups[{static_cast<int>(t.scalar_type()), t.device().str()}].push_back(t);
    std::vector<torch::Tensor> flats;
    std::vector<std::vector<torch::Tensor>*> members;
    for (auto& [key, list] : groups) {
      std::vector<torch::Tensor> pieces;
      for (const auto& t : list) pieces.push_back(t.detach().reshape(-1));
      flats.push_back(torch::cat(pieces));
      members.push_back(&list);
    }
    group_.broadcast(flats, what);
    for (std::size_t g = 0; g < flats.size(); ++g) {
      int64_t offset = 0;
      for (auto& t : *members[g]) {
        t.detach().copy_(flats[g].narrow(0, offset, t.numel()).view(t.sizes()));
        offset += t.numel();
      }
    }
  }

  ProcessGroup group_;
  DataParallelOptions options_;
  double communication_seconds_ = 0;
};

namespace detail {
/// The parameter type of a one-parameter member function.
template <class F>
struct sole_parameter;
template <class C, class R, class A>
struct sole_parameter<R (C::*)(A)> {
  using type = A;
};
}  // namespace detail

/// @brief A sampler that gives each rank a disjoint shard of every epoch, reshuffled per epoch
/// from a seed shared by all ranks: LibTorch's `DistributedRandomSampler` (which pads the last
/// shard with repeated indices so that every rank has as many batches) seeded with
/// `seed + epoch`, or `DistributedSequentialSampler` without shuffling.
///
/// Give a copy to `make_data_loader` and pass the sampler to `fit` as a callback too: its
/// `on_epoch_begin` sets the epoch from the trainer's, so a resumed run shuffles epoch k as the
/// uninterrupted run did (copies share their state).
class DistributedSampler : public torch::data::samplers::Sampler<> {
  using Base = torch::data::samplers::Sampler<>;

 public:
  /// The optional size `reset` takes (`c10::optional` in LibTorch 1.x, `std::optional` in 2.x).
  using OptionalSize = typename detail::sole_parameter<decltype(&Base::reset)>::type;
  /// The optional batch of indices `next` returns.
  using OptionalIndices = std::invoke_result_t<decltype(&Base::next), Base&, std::size_t>;

  /// @brief Shards of a dataset of `size` examples for `group`'s ranks.
  DistributedSampler(std::size_t size, const ProcessGroup& group, uint64_t seed = 0,
                     bool shuffle = true)
      : DistributedSampler(size, group.world_size(), group.rank(), seed, shuffle) {}
  /// @brief Shard `rank` of `world_size` of a dataset of `size` examples.
  DistributedSampler(std::size_t size, int64_t world_size, int64_t rank, uint64_t seed = 0,
                     bool shuffle = true) {
    igrad::detail::require(world_size >= 1 && rank >= 0 && rank < world_size,
                           "DistributedSampler for rank {} of {}; expected 0 <= rank < world size",
                           rank, world_size);
    state_ = std::make_shared<State>(size, static_cast<std::size_t>(world_size),
                                     static_cast<std::size_t>(rank), seed, shuffle);
  }

  /// @brief Starts the current epoch's shard again (its permutation is `seed + epoch`'s).
  void reset(OptionalSize new_size = {}) override {
    if (state_->shuffle) {
      state_->random.set_epoch(state_->seed + static_cast<uint64_t>(state_->epoch.load()));
      state_->random.reset(new_size);
    } else {
      state_->sequential.reset(new_size);
    }
  }
  /// @brief The next `batch_size` indices of this rank's shard.
  OptionalIndices next(std::size_t batch_size) override {
    return state_->shuffle ? state_->random.next(batch_size)
                           : state_->sequential.next(batch_size);
  }
  /// @brief Serializes the position.
  void save(torch::serialize::OutputArchive& archive) const override {
    if (state_->shuffle) state_->random.save(archive);
    else state_->sequential.save(archive);
  }
  /// @brief Restores the position.
  void load(torch::serialize::InputArchive& archive) override {
    if (state_->shuffle) state_->random.load(archive);
    else state_->sequential.load(archive);
  }
  /// @brief Sets the epoch whose permutation the next pass uses.
  void set_epoch(int64_t epoch) { state_->epoch = epoch; }
  /// @brief Callback: the trainer's epoch becomes the sampler's.
  void on_epoch_begin(TrainerState& state) { set_epoch(state.epoch); }

 private:
  struct State {
    State(std::size_t size, std::size_t world, std::size_t rank, uint64_t seed_, bool shuffle_)
        : random(size, world, rank),
          sequential(size, world, rank),
          seed(seed_),
          shuffle(shuffle_) {}
    torch::data::samplers::DistributedRandomSampler random;
    torch::data::samplers::DistributedSequentialSampler sequential;
    uint64_t seed;
    bool shuffle;
    std::atomic<int64_t> epoch{0};
  };
  std::shared_ptr<State> state_;
};


namespace detail {
/// Whether calling `f()` returns bool (a stop request).
template <class F>
constexpr bool returns_bool = std::is_same_v<std::invoke_result_t<F>, bool>;
}  // namespace detail

/// @brief A callback that acts on one rank and whose stop requests every rank follows: see
/// `on_rank_zero` and `agreed`.
template <class C>
class CollectiveCallback {
 public:
  /// @brief Wraps `callback`; `only_rank_zero` runs it on rank 0 only, otherwise on every rank.
  CollectiveCallback(ProcessGroup group, C callback, bool only_rank_zero)
      : group_(std::move(group)), callback_(std::move(callback)), only_rank_zero_(only_rank_zero) {}

  /// @brief Forwards `on_train_begin`.
  auto on_train_begin(TrainerState& s)
    requires requires(C& c) { c.on_train_begin(s); }
  { return forward("on_train_begin", [&] { return callback_.on_train_begin(s); }); }
  /// @brief Forwards `on_epoch_begin`.
  auto on_epoch_begin(TrainerState& s)
    requires requires(C& c) { c.on_epoch_begin(s); }
  { return forward("on_epoch_begin", [&] { return callback_.on_epoch_begin(s); }); }
  /// @brief Forwards `on_after_backward`.
  void on_after_backward(TrainerState& s)
    requires requires(C& c) { c.on_after_backward(s); }
  {
    if (active()) callback_.on_after_backward(s);
  }
  /// @brief Forwards `on_batch_end`.
  auto on_batch_end(TrainerState& s, const StepResult& r)
    requires requires(C& c) { c.on_batch_end(s, r); }
  { return forward("on_batch_end", [&] { return callback_.on_batch_end(s, r); }); }
  /// @brief Forwards `on_epoch_end`.
  auto on_epoch_end(TrainerState& s, EpochLog& l)
    requires requires(C& c) { c.on_epoch_end(s, l); }
  { return forward("on_epoch_end", [&] { return callback_.on_epoch_end(s, l); }); }
  /// @brief Forwards `on_train_end`.
  void on_train_end(TrainerState& s)
    requires requires(C& c) { c.on_train_end(s); }
  {
    if (active()) callback_.on_train_end(s);
  }
  /// @brief The wrapped callback.
  C& callback() { return callback_; }

 private:
  bool active() const { return !only_rank_zero_ || group_.is_rank_zero(); }
  /// Runs `f` where active; a bool result (stop) is OR-ed across ranks so all stop together.
  template <class F>
  auto forward(const char* hook, F&& f) {
    if constexpr (detail::returns_bool<F>) {
      const bool stop = active() ? f() : false;
      return group_.any(stop, igrad::detail::format("agreement on stopping ({})", hook));
    } else {
      if (active()) f();
    }
  }

  ProcessGroup group_;
  C callback_;
  bool only_rank_zero_;
};

/// @brief `callback` runs on rank 0 only (progress bar, CSV log, checkpoints); when it asks to
/// stop, every rank stops. Elsewhere a world of one sees the callback itself.
/// @snippet doc_snippets.cpp on_rank_zero
template <class C>
CollectiveCallback<std::decay_t<C>> on_rank_zero(const ProcessGroup& group, C&& callback) {
  return {group, std::forward<C>(callback), true};
}

/// @brief `callback` runs on every rank, and training stops on all ranks when it asks to stop
/// on any (e.g. `EarlyStopping`, which then decides on the reduced log on every rank alike).
template <class C>
CollectiveCallback<std::decay_t<C>> agreed(const ProcessGroup& group, C&& callback) {
  return {group, std::forward<C>(callback), false};
}

/// @}
}  // namespace distributed
}  // namespace igrad

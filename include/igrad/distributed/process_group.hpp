#pragma once
/// @file distributed/process_group.hpp
/// @brief A process group over LibTorch's c10d (TCPStore + Gloo, NCCL for CUDA tensors when
/// LibTorch has it), built from the variables that torchrun, srun and mpirun set.

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>
#include <torch/version.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

// c10d's Gloo backend needs LibTorch built with it (USE_C10D_GLOO, set by the `torch` CMake
// target) and Gloo's headers (Debian: libgloo-dev; PyTorch's LibTorch ships them). Without them
// igrad still builds: a world of one works as before, a larger world is refused with a message.
#if defined(USE_C10D_GLOO) && __has_include(<gloo/algorithm.h>) && \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>)
#define IGRAD_HAS_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#else
#define IGRAD_HAS_C10D_GLOO 0
#endif
#if IGRAD_HAS_C10D_GLOO && defined(USE_C10D_NCCL) && \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>)
#define IGRAD_HAS_C10D_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#else
#define IGRAD_HAS_C10D_NCCL 0
#endif

namespace igrad {
/// @brief Data-parallel training and sharded evaluation across processes (docs/distributed.md).
namespace distributed {

/// @defgroup distributed_group Distributed
/// @brief Several processes, one model: process group, data-parallel training, sharded evaluation.
/// @{

/// @brief A collective operation failed: a rank never joined, exited, crashed, or did not arrive
/// within the timeout. The message names the rank(s) and what this rank was waiting for.
class DistributedError : public Error {
 public:
  using Error::Error;
};

/// @brief Where this process stands in a launch, as the launcher's variables say.
struct LaunchEnvironment {
  int64_t rank = 0;        ///< this process, 0 ≤ rank < world_size
  int64_t world_size = 1;  ///< number of processes
  int64_t local_rank = 0;  ///< this process among those on its machine (picks its GPU)
  std::string master_address;  ///< host of rank 0, which serves the TCPStore (MASTER_ADDR)
  int64_t master_port = 0;     ///< its port (MASTER_PORT)
  /// Which variables were read: "torchrun" (RANK, WORLD_SIZE), "slurm" (SLURM_PROCID,
  /// SLURM_NTASKS), "openmpi" (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE), or "none".
  std::string launcher = "none";

  /// @brief Reads torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`,
  /// falling back to `SLURM_PROCID` / `SLURM_NTASKS` / `SLURM_LOCALID` and to
  /// `OMPI_COMM_WORLD_RANK` / `OMPI_COMM_WORLD_SIZE` / `OMPI_COMM_WORLD_LOCAL_RANK`; none of them
  /// set is a world of one. Throws `InvalidArgument` for a value that is not a count, a world
  /// size < 1, a rank outside [0, world size), or a world > 1 without MASTER_ADDR / MASTER_PORT.
  static LaunchEnvironment from_environment();

  /// @brief Checks the fields; throws `InvalidArgument` naming the bad one (see above).
  void validate() const;
};

/// @brief Options of a `ProcessGroup`, with chained setters.
struct ProcessGroupOptions {
  /// How long a rank waits for the others: to join, and in each collective. A rank that has
  /// not arrived by then is named in a `DistributedError`. PyTorch's default is 30 min; ours is
  /// shorter because an igrad collective never waits for more than one training step.
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::minutes(5);
};

namespace detail {

/// LibTorch 2.4+ asks for the libuv TCPStore by default, which a LibTorch built without libuv
/// (Debian 13's 2.6) refuses; the classic store exists in every build. (A template, so that the
/// member's absence in LibTorch 1.x is a false `requires`, not an error.)
template <class StoreOptions>
void use_classic_tcp_store(StoreOptions& options) {
  if constexpr (requires { options.useLibUV; }) options.useLibUV = false;
}

/// The value of environment variable `name`, if set and not empty.
inline std::optional<std::string> environment_variable(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

/// Environment variable `name` as an integer; `InvalidArgument` when it is not one.
inline std::optional<int64_t> environment_integer(const char* name) {
  const auto text = environment_variable(name);
  if (!text) return std::nullopt;
  std::size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(*text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  igrad::detail::require(used == text->size() && used > 0,
                         "environment variable {} is '{}'; expected an integer", name, *text);
  return value;
}

}  // namespace detail

inline void LaunchEnvironment::validate() const {
  igrad::detail::require(world_size >= 1,
                         "the world size is {} ({}); expected at least 1 process", world_size,
                         launcher == "torchrun" ? "WORLD_SIZE" : launcher);
  igrad::detail::require(rank >= 0 && rank < world_size,
                         "the rank is {} in a world of {} ({}); expected 0 <= rank < {}", rank,
                         world_size, launcher == "torchrun" ? "RANK, WORLD_SIZE" : launcher,
                         world_size);
  igrad::detail::require(local_rank >= 0, "the local rank is {}; expected >= 0", local_rank);
  if (world_size == 1) return;
  igrad::detail::require(!master_address.empty(),
                         "MASTER_ADDR is not set in a world of {} processes; expected the address "
                         "of rank 0's host (e.g. 127.0.0.1 on one machine)",
                         world_size);
  igrad::detail::require(master_port >= 1 && master_port <= 65535,
                         "MASTER_PORT is {} in a world of {} processes; expected a TCP port in "
                         "[1, 65535] that rank 0 can listen on",
                         master_port, world_size);
}

inline LaunchEnvironment LaunchEnvironment::from_environment() {
  using detail::environment_integer;
  LaunchEnvironment e;
  const auto pick = [&](const char* rank, const char* size, const char* local, const char* name) {
    const auto r = environment_integer(rank);
    const auto s = environment_integer(size);
    if (!r && !s) return false;
    igrad::detail::require(r.has_value() && s.has_value(),
                           "{} is set but {} is not; expected both (or neither, for one process)",
                           r ? rank : size, r ? size : rank);
    e.rank = *r;
    e.world_size = *s;
    e.local_rank = environment_integer(local).value_or(0);
    e.launcher = name;
    return true;
  };
  pick("RANK", "WORLD_SIZE", "LOCAL_RANK", "torchrun") ||
      pick("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "slurm") ||
      pick("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "openmpi");
  e.master_address = detail::environment_variable("MASTER_ADDR").value_or("");
  e.master_port = environment_integer("MASTER_PORT").value_or(0);
  e.validate();
  return e;
}

/// @brief A group of processes that run collectives together (c10d: a TCPStore served by rank 0
/// for the rendezvous, Gloo for CPU tensors, NCCL for CUDA tensors when LibTorch has it).
///
/// A copyable handle: copies share the group. A default-constructed group is a world of one, in
/// which every collective returns at once and leaves its tensors as they are. Every collective
/// must be called by all ranks in the same order (as in PyTorch). When one fails — a rank
/// exited, crashed or did not arrive within `ProcessGroupOptions::timeout` — it throws
/// `DistributedError` naming the rank(s) and the collective: before each one, every rank records
/// in the store which collective it has reached, so a failing rank can tell who is behind.
/// @snippet doc_snippets.cpp process_group
class ProcessGroup {
 public:
  /// @brief A world of one: no store, no backend, collectives are no-ops.
  ProcessGroup() = default;

  /// @brief Joins the group `environment` describes (a world of one when it has one process).
  ///
  /// Rank 0 serves the TCPStore on MASTER_PORT; the others connect to MASTER_ADDR:MASTER_PORT.
  /// Every rank then waits for all to join, then connects Gloo (and NCCL). Throws
  /// `InvalidArgument` for a bad environment and `DistributedError` when the store cannot be
  /// served or reached, or ranks did not join within the timeout (naming them).
  explicit ProcessGroup(LaunchEnvironment environment, ProcessGroupOptions options = {});

  /// @brief `ProcessGroup(LaunchEnvironment::from_environment(), options)`.
  static ProcessGroup from_environment(ProcessGroupOptions options = {}) {
    return ProcessGroup(LaunchEnvironment::from_environment(), options);
  }

  /// @brief This process's rank.
  int64_t rank() const { return state_ ? state_->environment.rank : 0; }
  /// @brief The number of processes.
  int64_t world_size() const { return state_ ? state_->environment.world_size : 1; }
  /// @brief This process's rank on its machine.
  int64_t local_rank() const { return state_ ? state_->environment.local_rank : 0; }
  /// @brief Whether this is rank 0 (which writes logs and checkpoints).
  bool is_rank_zero() const { return rank() == 0; }
  /// @brief Whether there is more than one process.
  bool distributed() const { return world_size() > 1; }
  /// @brief The timeout of joins and collectives.
  std::chrono::milliseconds timeout() const {
    return state_ ? state_->options.timeout() : ProcessGroupOptions().timeout();
  }

  /// @brief Sums (or takes the maximum of, `maximum = true`) each tensor element-wise across
  /// ranks, in place; every rank gets the same bits. Tensors must be contiguous, dense, and
  /// alike on every rank. `what` names the operation in error messages ("gradients of step 3").
  void all_reduce(std::vector<torch::Tensor> tensors, std::string_view what,
                  bool maximum = false) const;
  /// @brief Replaces each tensor with rank 0's, in place. Tensors must be contiguous and alike.
  void broadcast(std::vector<torch::Tensor> tensors, std::string_view what) const;
  /// @brief Returns when every rank has called it (or throws `DistributedError`).
  void barrier(std::string_view what) const;
  /// @brief Element-wise sums of `values` across ranks (double precision, exact for counts).
  std::vector<double> sum(std::vector<double> values, std::string_view what) const;
  /// @brief Whether `flag` is true on any rank.
  bool any(bool flag, std::string_view what) const {
    return sum({flag ? 1.0 : 0.0}, what)[0] > 0;
  }

  /// @brief The rows `[begin, end)` of `count` that this rank takes when `count` items are split
  /// across ranks in contiguous blocks (rank r gets ⌊count·r/W⌋ to ⌊count·(r+1)/W⌋).
  std::pair<int64_t, int64_t> shard(int64_t count) const {
    const int64_t w = world_size(), r = rank();
    return {count * r / w, count * (r + 1) / w};
  }

 private:
#if IGRAD_HAS_C10D_GLOO
#if TORCH_VERSION_MAJOR >= 2
  using Backend = ::c10d::Backend;  // LibTorch 2.x: collectives live on the backend
#else
  using Backend = ::c10d::ProcessGroup;  // LibTorch 1.x: the process group is the backend
#endif
#endif

  struct State {
    LaunchEnvironment environment;
    ProcessGroupOptions options;
#if IGRAD_HAS_C10D_GLOO
    c10::intrusive_ptr<::c10d::Store> store;
    c10::intrusive_ptr<Backend> gloo, nccl;
#endif
    int64_t sequence = 0;  // collectives this rank has started
  };

  template <class Launch>
  void run(std::string_view what, const std::vector<torch::Tensor>& tensors,
           Launch&& launch) const;
  std::string diagnose(std::string_view what) const;
  std::string store_address() const {
    return igrad::detail::format("{}:{}", state_->environment.master_address,
                                 state_->environment.master_port);
  }

  std::shared_ptr<State> state_;
};

/// @}

// ---------------------------------------------------------------------------------------------

inline ProcessGroup::ProcessGroup(LaunchEnvironment environment, ProcessGroupOptions options) {
  environment.validate();
  igrad::detail::require(options.timeout().count() > 0,
                         "ProcessGroupOptions::timeout is {} ms; expected > 0",
                         options.timeout().count());
  if (environment.world_size == 1) return;  // exactly as without distribution
#if !IGRAD_HAS_C10D_GLOO
  throw InvalidArgument(igrad::detail::format(
      "a world of {} processes needs c10d's Gloo backend, and this build has none (LibTorch "
      "without USE_C10D_GLOO, or Gloo's headers missing: install libgloo-dev); expected "
      "WORLD_SIZE=1 or a LibTorch with Gloo",
      environment.world_size));
#else
  auto state = std::make_shared<State>();
  state->environment = std::move(environment);
  state->options = options;
  state_ = state;
  const auto& env = state->environment;
  const double seconds = std::chrono::duration<double>(options.timeout()).count();
  ::c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(env.master_port);
  store_options.isServer = env.rank == 0;
  store_options.numWorkers = static_cast<std::size_t>(env.world_size);
  store_options.waitWorkers = false;  // igrad waits itself, to name the ranks that are missing
  store_options.timeout = options.timeout();
  detail::use_classic_tcp_store(store_options);
  try {
    state->store = c10::make_intrusive<::c10d::TCPStore>(env.master_address, store_options);
  } catch (const std::exception& e) {
    if (env.rank == 0)
      throw DistributedError(igrad::detail::format(
          "rank 0 could not serve the process group's TCPStore on {} (MASTER_ADDR, MASTER_PORT): "
          "{}; expected a free port on this host",
          store_address(), igrad::detail::first_line(e.what())));
    throw DistributedError(igrad::detail::format(
        "rank {} could not reach rank 0's TCPStore at {} (MASTER_ADDR, MASTER_PORT) within "
        "{:g} s: {}; expected rank 0 to run with the same MASTER_ADDR and MASTER_PORT, and that "
        "address to be reachable from here",
        env.rank, store_address(), seconds, igrad::detail::first_line(e.what())));
  }
  // Join: every rank says it is here, then waits for all; on a timeout, names who is missing.
  std::vector<std::string> joined;
  for (int64_t r = 0; r < env.world_size; ++r)
    joined.push_back(igrad::detail::format("igrad/joined/{}", r));
  try {
    state->store->set(joined[env.rank], std::vector<uint8_t>{1});
    state->store->wait(joined, options.timeout());
  } catch (const std::exception& e) {
    std::vector<int64_t> missing;
    try {
      for (int64_t r = 0; r < env.world_size; ++r)
        if (!state->store->check({joined[r]})) missing.push_back(r);
    } catch (const std::exception&) {
      missing = {0};  // the store itself is gone: rank 0 serves it
    }
    throw DistributedError(igrad::detail::format(
        "rank {}: rank(s) {} did not join the process group of {} processes within {:g} s "
        "(waited on the TCPStore at {}); expected every rank to start with WORLD_SIZE={}. "
        "c10d said: {}",
        env.rank, fmt::join(missing, ", "), env.world_size, seconds, store_address(),
        env.world_size, igrad::detail::first_line(e.what())));
  }
  try {
    auto gloo_options = ::c10d::ProcessGroupGloo::Options::create(options.timeout());
    // Loopback launches (tests, one machine) bind Gloo to the loopback address: resolving the
    // host name may give an address other ranks cannot reach. GLOO_SOCKET_IFNAME wins, as in
    // PyTorch.
    const auto interface = detail::environment_variable("GLOO_SOCKET_IFNAME");
    const bool loopback = env.master_address == "localhost" ||
                          env.master_address.rfind("127.", 0) == 0 || env.master_address == "::1";
    if (interface)
      gloo_options->devices.push_back(::c10d::ProcessGroupGloo::createDeviceForInterface(*interface));
    else if (loopback)
      gloo_options->devices.push_back(
          ::c10d::ProcessGroupGloo::createDeviceForHostname(env.master_address));
    else
      gloo_options->devices.push_back(::c10d::ProcessGroupGloo::createDefaultDevice());
    auto gloo_store = c10::make_intrusive<::c10d::PrefixStore>("igrad/gloo", state->store);
    state->gloo = c10::make_intrusive<::c10d::ProcessGroupGloo>(
        gloo_store, static_cast<int>(env.rank), static_cast<int>(env.world_size), gloo_options);
#if IGRAD_HAS_C10D_NCCL
    if (torch::cuda::is_available()) {
      auto nccl_options = ::c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = options.timeout();
      auto nccl_store = c10::make_intrusive<::c10d::PrefixStore>("igrad/nccl", state->store);
      state->nccl = c10::make_intrusive<::c10d::ProcessGroupNCCL>(
          nccl_store, static_cast<int>(env.rank), static_cast<int>(env.world_size), nccl_options);
    }
#endif
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw DistributedError(igrad::detail::format(
        "rank {} could not connect the collective backend to the other {} rank(s) within {:g} s: "
        "{}; expected every host to reach the others (set GLOO_SOCKET_IFNAME to the interface "
        "to use)",
        env.rank, env.world_size - 1, seconds, igrad::detail::first_line(e.what())));
  }
#endif
}

template <class Launch>
void ProcessGroup::run(std::string_view what, const std::vector<torch::Tensor>& tensors,
                       Launch&& launch) const {
#if IGRAD_HAS_C10D_GLOO
  auto& s = *state_;
  ++s.sequence;
  const auto started = std::chrono::steady_clock::now();
  try {
    // Say which collective this rank has reached, so that a rank left waiting can tell who is
    // behind (one small write to the store per collective).
    const auto note = igrad::detail::format("{} {}", s.sequence, what);
    s.store->set(igrad::detail::format("igrad/progress/{}", s.environment.rank),
                 std::vector<uint8_t>(note.begin(), note.end()));
    std::vector<c10::intrusive_ptr<::c10d::Work>> works;
    for (const auto& t : tensors) {
      igrad::detail::require(t.defined() && t.is_contiguous() && !t.is_sparse(),
                             "a tensor of the collective '{}' is not dense and contiguous; "
                             "expected flat buffers", what);
      auto backend = t.is_cuda() && s.nccl ? s.nccl : s.gloo;
      std::vector<torch::Tensor> one{t};
      works.push_back(launch(*backend, one));
    }
    for (auto& w : works) w->wait();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    throw DistributedError(
        igrad::detail::format("rank {}: the collective '{}' (#{} of this rank) failed "
                              "after {:.1f} s: {}. c10d said: {}",
                              s.environment.rank, what, s.sequence, waited, diagnose(what),
                              igrad::detail::first_line(e.what())));
  }
#else
  (void)what, (void)tensors, (void)launch;
#endif
}

inline std::string ProcessGroup::diagnose(std::string_view) const {
#if IGRAD_HAS_C10D_GLOO
  const auto& s = *state_;
  std::vector<std::string> behind;
  try {
    s.store->setTimeout(std::chrono::seconds(2));
    for (int64_t r = 0; r < s.environment.world_size; ++r) {
      if (r == s.environment.rank) continue;
      const auto key = igrad::detail::format("igrad/progress/{}", r);
      if (!s.store->check({key})) {
        behind.push_back(igrad::detail::format("rank {} has run no collective yet", r));
        continue;
      }
      const auto bytes = s.store->get(key);
      const std::string note(bytes.begin(), bytes.end());
      const auto space = note.find(' ');
      const int64_t reached = std::stoll(note.substr(0, space));
      if (reached < s.sequence)
        behind.push_back(
            igrad::detail::format("rank {} did not arrive: its last collective was #{} ('{}')", r,
                                  reached, note.substr(space + 1)));
    }
  } catch (const std::exception&) {
    if (s.environment.rank != 0)
      return igrad::detail::format(
          "rank 0 is gone (exited or crashed): its TCPStore at {} does not answer",
          store_address());
  }
  if (behind.empty())
    return igrad::detail::format(
        "every other rank reached it too, so one of them failed or exited during "
        "it, or the {:g} s timeout passed",
        std::chrono::duration<double>(s.options.timeout()).count());
  return igrad::detail::format("{} (exited, crashed, or slower than the {:g} s timeout)",
                               fmt::join(behind, "; "),
                               std::chrono::duration<double>(s.options.timeout()).count());
#else
  return {};
#endif
}

inline void ProcessGroup::all_reduce(std::vector<torch::Tensor> tensors, std::string_view what,
                                     bool maximum) const {
  if (!distributed() || tensors.empty()) return;
#if IGRAD_HAS_C10D_GLOO
  ::c10d::AllreduceOptions options;
  options.reduceOp = maximum ? ::c10d::ReduceOp::MAX : ::c10d::ReduceOp::SUM;
  run(what, tensors, [&](Backend& backend, std::vector<torch::Tensor>& one) {
    return backend.allreduce(one, options);
  });
#else
  (void)maximum;
#endif
}

inline void ProcessGroup::broadcast(std::vector<torch::Tensor> tensors,
                                    std::string_view what) const {
  if (!distributed() || tensors.empty()) return;
#if IGRAD_HAS_C10D_GLOO
  ::c10d::BroadcastOptions options;
  options.rootRank = 0;
  run(what, tensors, [&](Backend& backend, std::vector<torch::Tensor>& one) {
    return backend.broadcast(one, options);
  });
#endif
}

inline void ProcessGroup::barrier(std::string_view what) const {
  // An all-reduce of one number rather than c10d's barrier: the same error reporting, and Gloo's
  // barrier has no CUDA-free NCCL counterpart to worry about.
  if (!distributed()) return;
  sum({0.0}, what);
}

inline std::vector<double> ProcessGroup::sum(std::vector<double> values,
                                             std::string_view what) const {
  if (!distributed() || values.empty()) return values;
  auto t = torch::tensor(values, torch::kDouble);
  all_reduce({t}, what);
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

}  // namespace distributed
}  // namespace igrad

#pragma once
/// @file detail/mode_lease.hpp
/// @brief Per-model train/eval mode leases, so that threads sharing a model never see each
/// other's mode switches (issue 14).
///
/// A LibTorch module has one `is_training()` flag that every forward pass reads, and no
/// per-call or per-thread override, so a mode cannot be "used" without being set on the shared
/// module. igrad therefore serialises the *modes*, not the calls: a thread takes a lease on a
/// model in a mode; leases in the same mode overlap (concurrent explanations all run in eval
/// mode, the first one switches, the last one restores the mode found by the first), leases in
/// different modes exclude each other (a training step waits for the explanations under way, and
/// explanations wait for the training step). A thread that already holds a lease on the model
/// may nest another one: in the same mode it is free, in the other mode its own lease is
/// suspended for the nested scope (an explanation in a training callback on the training thread)
/// and taken back afterwards. Waiters for the other mode keep new arrivals out, and a model that
/// becomes free goes to the other mode's waiters first, so neither a stream of explanations nor a
/// training loop starves the other.
///
/// A model is identified by the storage of its first parameter (or buffer), which every handle
/// on the same module shares whatever adapter built it; a model with neither shares one global
/// lease.

#include <condition_variable>
#include <cstdint>
#include <iterator>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace igrad::detail {

/// The key of a model's lease: the TensorImpl of its first parameter, else of its first buffer,
/// else null (one lease for every model without state).
template <class Model>
const void* mode_lease_key(const Model& model) {
  for (const auto& p : model.parameters()) return p.unsafeGetTensorImpl();
  for (const auto& b : model.buffers()) return b.unsafeGetTensorImpl();
  return nullptr;
}

/// The registry of leases: one mutex for all models (leases are taken once per call or step,
/// never in an inner loop), one condition variable per model.
class ModeLeases {
 public:
  /// The process-wide registry.
  static ModeLeases& instance() {
    static ModeLeases leases;
    return leases;
  }

  /// Takes a lease on `model` (an `AnyModel`) in mode `training` for the calling thread; blocks
  /// until leases in the other mode held by other threads are released. Returns the model's key,
  /// to give back to `release`.
  template <class Model>
  const void* acquire(const Model& model, bool training) {
    const void* key = mode_lease_key(model);
    std::unique_lock lock(mutex_);
    auto& held = thread_holdings();
    const Holding* outer = nullptr;
    for (auto it = held.rbegin(); it != held.rend(); ++it) {
      if (it->key == key) {
        outer = &*it;
        break;
      }
    }
    if (outer != nullptr && outer->training == training) {
      held.push_back({key, training, Kind::nested});
      return key;
    }
    if (outer != nullptr) {
      // Suspend this thread's own lease in the other mode for the nested scope.
      release_locked(key, state_of(key), model);
      held.push_back({key, training, Kind::converted});
    } else {
      held.push_back({key, training, Kind::outer});
    }
    try {
      acquire_locked(lock, state_of(key), model, training);
    } catch (...) {
      held.pop_back();
      throw;
    }
    return key;
  }

  /// Releases the calling thread's latest lease on the model of `key` (from `acquire`).
  template <class Model>
  void release(const void* key, const Model& model) noexcept {
    try {
      std::unique_lock lock(mutex_);
      auto& held = thread_holdings();
      auto it = held.rbegin();
      while (it != held.rend() && it->key != key) ++it;
      if (it == held.rend()) return;
      const Holding leaving = *it;
      held.erase(std::next(it).base());
      if (leaving.kind == Kind::nested) return;
      release_locked(key, state_of(key), model);
      if (leaving.kind == Kind::converted) {
        // Take the suspended outer lease back, in its mode.
        for (auto outer = held.rbegin(); outer != held.rend(); ++outer) {
          if (outer->key == key) {
            acquire_locked(lock, state_of(key), model, outer->training);
            break;
          }
        }
      }
    } catch (...) {
      // A destructor cannot report; the model's train() failing is not recoverable here.
    }
  }

 private:
  enum class Kind { outer, nested, converted };
  struct Holding {
    const void* key;
    bool training;
    Kind kind;
  };
  struct State {
    int64_t holders = 0;         // threads holding a lease now (each counted once)
    bool training = false;       // the holders' mode
    bool restore = false;        // the mode the first holder found, restored by the last
    int64_t waiting[2] = {0, 0};  // threads waiting for eval [0] / train [1]
    int turn = -1;                // the mode whose waiters go first once the model is free
    std::condition_variable changed;
  };

  static std::vector<Holding>& thread_holdings() {
    thread_local std::vector<Holding> held;
    return held;
  }

  State& state_of(const void* key) {
    auto& slot = states_[key];
    if (!slot) slot = std::make_unique<State>();
    return *slot;
  }

  template <class Model>
  void acquire_locked(std::unique_lock<std::mutex>& lock, State& state, const Model& model,
                      bool training) {
    const int mine = training ? 1 : 0;
    ++state.waiting[mine];
    state.changed.wait(lock, [&] {
      if (state.holders == 0) return state.turn < 0 || state.turn == mine;
      return state.training == training && state.waiting[1 - mine] == 0;
    });
    --state.waiting[mine];
    if (state.holders == 0) {
      state.turn = -1;
      state.restore = model.is_training();
      state.training = training;
      if (state.restore != training) model.train(training);
    }
    ++state.holders;
  }

  template <class Model>
  void release_locked(const void* key, State& state, const Model& model) {
    if (--state.holders > 0) return;
    if (model.is_training() != state.restore) model.train(state.restore);
    // Hand the model to the other mode's waiters first, so that neither mode starves the other.
    const int other = state.training ? 0 : 1;
    state.turn = state.waiting[other] > 0 ? other : -1;
    if (state.waiting[0] == 0 && state.waiting[1] == 0) {
      states_.erase(key);  // nobody refers to it: the key may be reused by another model later
    } else {
      state.changed.notify_all();
    }
  }

  std::mutex mutex_;
  std::unordered_map<const void*, std::unique_ptr<State>> states_;
};

}  // namespace igrad::detail

#pragma once
/// @file rules/rectifier_sites.hpp
/// @brief The values at the rectifier sites of a forward pass, for backprop rules that need more
/// than the gradients: DeepLIFT's Rescale rule divides `ReLU(u) − ReLU(u_ref)` by `u − u_ref`,
/// so it needs each site's input `u` in the forward being differentiated and `u_ref` at the same
/// site of a reference forward.
///
/// Why a recording: a `ReluBackward` node saves only its output `ReLU(u)`, which has lost the
/// negative inputs, and LibTorch's C++ modules have no forward hooks (and functional
/// `torch::relu` none at all). LibTorch's own observer mechanism, `at::RecordFunction`, sees
/// every operator call with its inputs and outputs; `RectifierRecording` registers a
/// thread-local observer for `relu`, `relu_` and `hardtanh(0, ·)` (ReLU6) while it is alive, and
/// keeps, in call order, each site's input, output and autograd node. The model is not edited,
/// and nothing is recorded outside the scope or on other threads.
///
/// Why pairs of forwards in call order, rather than captum's single batch `[x; x_ref]`: the
/// reference and the input then need not share a forward pass, so a pass holds at most
/// `batch_size` inputs (the bound every saliency method keeps, down to one), and batch norms in
/// evaluation mode, convolutions and the like see the same values either way. The price is the
/// assumption that both forwards run the same rectifier sites in the same order — true for any
/// model without data-dependent control flow, and checked (site count and shapes).

#include <igrad/exceptions.hpp>

#include <ATen/record_function.h>
#include <torch/csrc/autograd/function.h>
#include <torch/torch.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace igrad {

/// @addtogroup rules_group
/// @{

/// @brief One rectifier site `v = ReLU(u)` as recorded in a forward pass.
struct RecordedSite {
  std::shared_ptr<torch::autograd::Node> node;  ///< its backward node (null without a graph)
  torch::Tensor input;                          ///< u, detached copy
  torch::Tensor output;                         ///< v, detached copy
};

/// @brief What a backprop rule with a site call receives at a rectifier site: the gradients of
/// the two-argument call, and the site's values in the differentiated forward and in the
/// reference forward (`RectifierRecording`, `ReferenceSites`).
struct RectifierSite {
  const torch::Tensor& masked;     ///< what ordinary backprop returns, `1[site active] · δv`
  const torch::Tensor& upstream;   ///< the incoming gradient `δv`
  const torch::Tensor& input;      ///< u at this site
  const torch::Tensor& output;     ///< v at this site
  const torch::Tensor& reference_input;   ///< u_ref, the same site in the reference forward
  const torch::Tensor& reference_output;  ///< v_ref
};

class RectifierRecording;

namespace detail {

/// The recording this thread writes to (null when none).
inline RectifierRecording*& active_recording() {
  thread_local RectifierRecording* active = nullptr;
  return active;
}

/// The input of an observed rectifier call, carried from the start of the call to its end.
struct SiteObservation final : at::ObserverContext {
  torch::Tensor input;
};

/// Whether `call.inputs()` can be read. In a translation unit compiled without NDEBUG, LibTorch's
/// inline `RecordFunction::inputs()` asserts on a debug-only flag that a release LibTorch never
/// sets (it lies in padding, so the values themselves are right), and the assert may throw
/// inside the observer, where LibTorch only logs it. The observers check first and make their
/// recording report the problem instead of leaving a site out silently.
inline bool record_inputs_readable(const at::RecordFunction& call) noexcept {
#ifdef NDEBUG
  static_cast<void>(call);
  return true;
#else
  try {
    static_cast<void>(call.inputs());
    return true;
  } catch (...) {
    return false;
  }
#endif
}

/// What a recording reports when `record_inputs_readable` is false.
inline constexpr const char* unreadable_record_inputs =
    "LibTorch's RecordFunction refused an operator's inputs: this translation unit is compiled "
    "without NDEBUG against a release LibTorch, whose inline RecordFunction::inputs() then asserts "
    "on a flag the library never sets; expected a build with NDEBUG defined (CMake's Release or "
    "RelWithDebInfo)";

/// Whether an operator's name is that of a rectifier site (SPEC §1): relu, relu_, hardtanh.
inline bool is_rectifier_name(const char* name) {
  return name != nullptr &&
         (std::strcmp(name, "aten::relu") == 0 || std::strcmp(name, "aten::relu_") == 0 ||
          std::strcmp(name, "aten::hardtanh") == 0 || std::strcmp(name, "aten::hardtanh_") == 0);
}

/// Whether a call with a rectifier's name is a rectifier site: relu, relu_, hardtanh(0, ·).
inline bool is_rectifier_call(const at::RecordFunction& call) {
  const char* name = call.name();
  if (std::strcmp(name, "aten::relu") == 0 || std::strcmp(name, "aten::relu_") == 0) return true;
  const auto inputs = call.inputs();
  return inputs.size() >= 2 && inputs[1].isScalar() && inputs[1].toScalar().toDouble() == 0.0;
}

inline std::unique_ptr<at::ObserverContext> on_rectifier_start(const at::RecordFunction& call);
inline void on_rectifier_end(const at::RecordFunction& call, at::ObserverContext* context);

}  // namespace detail

/// @brief RAII: records every rectifier site (`relu`, `relu_`, `hardtanh(0, ·)`) that forward
/// passes run on this thread while it is alive, in call order — the input u (copied before an
/// in-place ReLU overwrites it), the output v and the autograd node.
///
/// Recordings nest (the innermost records); `stop()` ends one early. A site costs one copy of
/// its input and output. Example, the low-level route of `igrad::DeepLift`:
/// @snippet doc_snippets.cpp deeplift_by_hand
class RectifierRecording {
 public:
  /// @brief Starts recording on this thread (an `at::RecordFunction` thread-local observer).
  RectifierRecording() : previous_(detail::active_recording()) {
    detail::active_recording() = this;
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback(&detail::on_rectifier_start, &detail::on_rectifier_end)
            .needsInputs(true)
            .needsOutputs(true)
            .scopes({at::RecordScope::FUNCTION}));
  }
  RectifierRecording(const RectifierRecording&) = delete;
  RectifierRecording& operator=(const RectifierRecording&) = delete;
  ~RectifierRecording() { stop(); }

  /// @brief Stops recording (idempotent); the sites recorded so far stay available.
  void stop() {
    if (!recording_) return;
    recording_ = false;
    at::removeCallback(handle_);
    if (detail::active_recording() == this) detail::active_recording() = previous_;
  }
  /// @brief The sites recorded, in call order.
  const std::vector<RecordedSite>& sites() const { return sites_; }
  /// @brief Number of sites recorded.
  std::size_t size() const { return sites_.size(); }
  /// @brief Why a site could not be recorded (empty when none failed).
  const std::string& problem() const { return problem_; }

 private:
  friend std::unique_ptr<at::ObserverContext> detail::on_rectifier_start(const at::RecordFunction&);
  friend void detail::on_rectifier_end(const at::RecordFunction&, at::ObserverContext*);
  RectifierRecording* previous_ = nullptr;
  at::CallbackHandle handle_{};
  bool recording_ = true;
  std::vector<RecordedSite> sites_;
  std::string problem_;
};

namespace detail {

inline std::unique_ptr<at::ObserverContext> on_rectifier_start(const at::RecordFunction& call) {
  auto* recording = active_recording();
  if (recording == nullptr || !is_rectifier_name(call.name())) return nullptr;
  if (!record_inputs_readable(call)) {
    if (recording->problem_.empty()) recording->problem_ = unreadable_record_inputs;
    return nullptr;
  }
  if (!is_rectifier_call(call)) return nullptr;
  const auto inputs = call.inputs();
  if (inputs.empty() || !inputs[0].isTensor()) return nullptr;
  auto observation = std::make_unique<SiteObservation>();
  observation->input = inputs[0].toTensor().detach().clone();  // before relu_ overwrites it
  return observation;
}

inline void on_rectifier_end(const at::RecordFunction& call, at::ObserverContext* context) {
  auto* observation = dynamic_cast<SiteObservation*>(context);
  auto* recording = active_recording();
  if (observation == nullptr || recording == nullptr) return;
  const auto& outputs = call.outputs();
  if (outputs.empty() || !outputs[0].isTensor()) return;
  const auto output = outputs[0].toTensor();
  recording->sites_.push_back({output.grad_fn(), observation->input, output.detach().clone()});
}

class ReferenceSitesBase;
/// The pairing `gradient<R>` consults on this thread (null when none).
inline const ReferenceSitesBase*& active_pairing() {
  thread_local const ReferenceSitesBase* active = nullptr;
  return active;
}

/// The pairing's lookup, separate from the public RAII type so that the rules need no more.
class ReferenceSitesBase {
 public:
  /// The recorded site of `node` and its reference twin, or nothing when `node` was not recorded.
  std::optional<std::pair<const RecordedSite*, const RecordedSite*>> find(
      const torch::autograd::Node* node) const {
    const auto found = index_.find(node);
    if (found == index_.end()) return std::nullopt;
    return std::make_pair(&forward_[found->second], &reference_[found->second]);
  }

 protected:
  std::vector<RecordedSite> forward_, reference_;
  std::unordered_map<const torch::autograd::Node*, std::size_t> index_;
};

}  // namespace detail

/// @brief RAII: pairs the sites of a forward with those of a reference forward, k-th with k-th,
/// for the rules with a site call (`DeepLiftRescale`) in `igrad::gradient` calls on this thread
/// while alive. `GraphError` when the two recordings differ in their number of sites or in a
/// site's shape (the forwards did not run the same rectifiers).
class ReferenceSites : public detail::ReferenceSitesBase {
 public:
  /// @brief Pairs `forward`'s sites with `reference`'s (copied; the recordings may end first)
  /// and makes the pairing the one `igrad::gradient` consults on this thread.
  ReferenceSites(const RectifierRecording& forward, const RectifierRecording& reference)
      : previous_(detail::active_pairing()) {
    detail::require<GraphError>(
        forward.size() == reference.size(),
        "the forward ran {} rectifier sites and the reference forward {}; expected the same "
        "sites in the same order (a model without data-dependent control flow)",
        forward.size(), reference.size());
    forward_ = forward.sites();
    reference_ = reference.sites();
    for (std::size_t k = 0; k < forward_.size(); ++k) {
      detail::require<GraphError>(
          forward_[k].input.sizes() == reference_[k].input.sizes(),
          "rectifier site {} has shape {} in the forward and {} in the reference forward; "
          "expected the same (one reference per input)",
          k, c10::str(forward_[k].input.sizes()), c10::str(reference_[k].input.sizes()));
      if (forward_[k].node) index_.emplace(forward_[k].node.get(), k);
    }
    detail::active_pairing() = this;
  }
  ReferenceSites(const ReferenceSites&) = delete;
  ReferenceSites& operator=(const ReferenceSites&) = delete;
  ~ReferenceSites() { detail::active_pairing() = previous_; }

 private:
  const detail::ReferenceSitesBase* previous_ = nullptr;
};

/// @}
}  // namespace igrad

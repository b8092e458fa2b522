#pragma once
/// @file concepts.hpp
/// @brief Every contract igrad asks of user types, in one place: the models (`Classifier`,
/// `FeatureClassifier`) and the policies (`ErrorFunction`, `BackpropRule`, `CamMethod`,
/// `SaliencyMethod`, `Callback`).
///
/// Each concept is documented as a Hana concept page: its requirements (what the compiler
/// checks), a minimal complete definition, its laws (what the compiler cannot check:
/// `igrad/testing/conformance.hpp` checks them at run time), the models igrad ships, and a
/// compiled example. The entry points that take a policy or a model (`Trainer`, `explain`,
/// `attribute`, `gradient`, `fit`, the Hana helpers) are constrained by these concepts, so a type
/// that does not fit is rejected at the call with a message naming the concept; what only a
/// call can show (the shape of a result) is checked at the call and reported with an igrad
/// exception.
///
/// This header is light on purpose: it includes no method header, only the tensor type, and
/// forward-declares the request and state types the policies receive.

#include <ATen/core/Tensor.h>

#include <concepts>
#include <iterator>
#include <string_view>
#include <type_traits>
#include <vector>

namespace igrad {

struct CamRequest;       // cam/cam_method.hpp
struct SaliencyRequest;  // saliency/saliency_methods.hpp
struct TrainerState;     // callbacks/callback.hpp
struct StepResult;       // callbacks/callback.hpp
struct EpochLog;         // callbacks/callback.hpp

namespace detail {

/// `std::ranges::range`, spelled out: <ranges> would cost every file that includes igrad about
/// 6 MiB of compiler memory, for the three places that ask. The standard provides
/// `std::ranges::begin`, `end` and `size` with <iterator> as well.
template <class R>
concept is_range = requires(R& r) {
  std::ranges::begin(r);
  std::ranges::end(r);
};

/// `std::ranges::sized_range`, spelled out (see is_range).
template <class R>
concept is_sized_range = is_range<R> && requires(R& r) { std::ranges::size(r); };

/// `T::name` is a compile-time constant string convertible to `const char*`
/// (`static constexpr const char* name = "...";`): a data member or a non-constexpr static
/// would only fail later, deep inside a table or a message. The check reads the string's
/// length rather than comparing the pointer with nullptr: under g++'s `-fsanitize=undefined`
/// that comparison is not a constant expression for a name stored in a member array
/// (`FinerCam<Base>`'s composed name), and the sanitizer build would reject a valid method.
template <class T>
concept has_constant_name = requires {
  { T::name } -> std::convertible_to<const char*>;
  typename std::bool_constant<(std::string_view(static_cast<const char*>(T::name)).size() > 0)>;
};

/// `T::is_standard` is a compile-time `bool` constant (`static constexpr bool is_standard`):
/// igrad decides with `if constexpr` whether to hook the graph at all.
template <class T>
concept has_constant_standard_flag = requires {
  requires std::same_as<std::remove_cv_t<decltype(T::is_standard)>, bool>;
  typename std::bool_constant<T::is_standard>;
};

/// `T` declares no `is_standard` flag: the member that marks a backprop rule. Error functions
/// and rules both map two tensors to a tensor, so this is what tells them apart.
template <class T>
concept is_not_a_backprop_rule = !requires { T::is_standard; };

// A callback hook is either not declared, or callable with the right arguments and returning
// void or bool. `&C::hook` detects a declared (non-overloaded) hook whatever its signature, so a
// hook with a wrong signature is an error instead of being silently never called.
template <class R>
concept hook_result = std::same_as<R, void> || std::same_as<R, bool>;

/// `c.on_train_begin(state)` is callable and returns void or bool.
template <class C>
concept calls_on_train_begin = requires(C& c, TrainerState& s) {
  { c.on_train_begin(s) } -> hook_result;
};
/// `c.on_epoch_begin(state)` is callable and returns void or bool.
template <class C>
concept calls_on_epoch_begin = requires(C& c, TrainerState& s) {
  { c.on_epoch_begin(s) } -> hook_result;
};
/// `c.on_after_backward(state)` is callable and returns void (it runs inside a step: it cannot
/// stop training).
template <class C>
concept calls_on_after_backward = requires(C& c, TrainerState& s) {
  { c.on_after_backward(s) } -> std::same_as<void>;
};
/// `c.on_batch_end(state, step)` is callable and returns void or bool.
template <class C>
concept calls_on_batch_end = requires(C& c, TrainerState& s, const StepResult& r) {
  { c.on_batch_end(s, r) } -> hook_result;
};
/// `c.on_epoch_end(state, log)` is callable and returns void or bool.
template <class C>
concept calls_on_epoch_end = requires(C& c, TrainerState& s, EpochLog& l) {
  { c.on_epoch_end(s, l) } -> hook_result;
};
/// `c.on_train_end(state)` is callable and returns void or bool.
template <class C>
concept calls_on_train_end = requires(C& c, TrainerState& s) {
  { c.on_train_end(s) } -> hook_result;
};

/// Every hook `C` declares has the signature `fit` calls it with.
template <class C>
concept declared_hooks_are_callable =
    (!requires { &C::on_train_begin; } || calls_on_train_begin<C>) &&
    (!requires { &C::on_epoch_begin; } || calls_on_epoch_begin<C>) &&
    (!requires { &C::on_after_backward; } || calls_on_after_backward<C>) &&
    (!requires { &C::on_batch_end; } || calls_on_batch_end<C>) &&
    (!requires { &C::on_epoch_end; } || calls_on_epoch_end<C>) &&
    (!requires { &C::on_train_end; } || calls_on_train_end<C>);

}  // namespace detail

/// @defgroup concepts_group Concepts
/// @brief What igrad asks of the models and policies it is given.
/// @{

/// @brief A LibTorch module handle (`ModuleHolder` or `std::shared_ptr` to a module) whose
/// `forward(x)` returns the logits `[N, K]`.
///
/// **Requirements**, for a handle `m` of type `M` and a tensor `x`:
/// - `m->forward(x)` is a tensor;
/// - `m->parameters()` lists the parameters (`std::vector<torch::Tensor>`).
///
/// **Minimal complete definition**: a module with a `forward` wrapped by `TORCH_MODULE`.
///
/// **Laws** (checked at each call): `forward(x)` is `[N, K]` for an input of N samples; a
/// wrong shape is an `igrad::InvalidArgument` naming it.
///
/// **Models igrad ships**: every model of `igrad/models` (`SmallCNN`, `ResNet18`,
/// `MobileNetV2`); any `Classifier` converts implicitly to `igrad::AnyModel`.
///
/// **Example**:
/// @snippet doc_snippets.cpp classifier
template <class M>
concept Classifier = requires(M& m, const at::Tensor& x) {
  { m->forward(x) } -> std::convertible_to<at::Tensor>;
  { m->parameters() } -> std::convertible_to<std::vector<at::Tensor>>;
};

/// @brief A classifier split into a feature extractor and a head: `forward(x) == head(features(x))`.
///
/// **Requirements**: a `Classifier` whose handle also has `m->features(x)` and `m->head(a)`,
/// both tensors.
///
/// **Minimal complete definition**: `forward`, `features` and `head`.
///
/// **Laws** (`igrad::testing::check_feature_split` checks them): `features(x)` is the feature
/// map `A ∈ R^{N×K×h×w}` that class activation maps weight (the last rectifier's output), and
/// `head(features(x)) == forward(x)`.
///
/// **Models igrad ships**: `SmallCNN`, `ResNet18`, `MobileNetV2`; the adapters of
/// `igrad/models/adapters.hpp` and `igrad/models/torchscript.hpp` give an `AnyModel` with a split
/// for `nn::Sequential`, a pair of callables or a TorchScript module. Passing a model whose type
/// is a `Classifier` but not a `FeatureClassifier` to `igrad::explain<C>` with a CAM method is a
/// compile-time error; through an `AnyModel` it is an `igrad::GraphError`.
///
/// **Example**:
/// @snippet doc_snippets.cpp feature_classifier
template <class M>
concept FeatureClassifier = Classifier<M> && requires(M& m, const at::Tensor& x) {
  { m->features(x) } -> std::convertible_to<at::Tensor>;
  { m->head(x) } -> std::convertible_to<at::Tensor>;
};

/// @brief A classifier that exposes the feature maps of several stages along its forward pass,
/// so that each can be explained (`igrad::model_stages`, `igrad::explain_stages`).
///
/// **Requirements**: a `Classifier` whose handle also has `m->stage_count()` (an integer, at
/// least 1), `m->stages(x)` (a `std::vector` of that many tensors: the stages' feature maps
/// `[N, K_s, h_s, w_s]`, shallow to deep) and `m->head_from(s, a)` (the logits from stage s's map).
///
/// **Minimal complete definition**: `forward`, `stage_count`, `stages` and `head_from`.
///
/// **Laws**: `head_from(s, stages(x)[s]) == forward(x)` for every stage s, and a stage's map is
/// computed by the same operations as in `forward` (so its gradient is the model's).
///
/// **Models igrad ships**: `ResNet18` (its four residual stages);
/// `igrad::models::sequential_stages` cuts an `nn::Sequential` at several indices.
template <class M>
concept StagedClassifier = Classifier<M> && requires(M& m, const at::Tensor& x, int64_t s) {
  { m->stage_count() } -> std::convertible_to<int64_t>;
  { m->stages(x) } -> std::convertible_to<std::vector<at::Tensor>>;
  { m->head_from(s, x) } -> std::convertible_to<at::Tensor>;
};

/// @brief An error function `E(δ, δ')`: the regulariser's distance between the standard input
/// gradient `δ` (the student) and the gradient under the teacher's rule `δ'` (SPEC §3).
///
/// **Requirements**, for a type `E`:
/// - copy-constructible (a stateful function is passed to the `Trainer`'s constructor);
/// - `E::name`, a compile-time constant convertible to `const char*`
///   (`static constexpr const char* name = "..."`) naming it in tables;
/// - a const call operator `torch::Tensor operator()(const torch::Tensor& standard,
///   const torch::Tensor& guided) const`;
/// - no `E::is_standard` member: that member marks a `BackpropRule`, whose call operator has the
///   same form, so a rule is never accepted where an error function is expected.
///
/// **Minimal complete definition**: `name` and the call operator.
///
/// **Laws** (`igrad::testing::check_error_function` checks them; `igrad::apply_error` checks the
/// first at every call of the trainer):
/// - for two `[N, ...]` tensors of the same shape it returns the per-sample errors `[N]`
///   (floating point), and sample i's error depends on sample i only;
/// - it is differentiable in `standard`, and finite with a finite derivative when either
///   gradient is exactly zero (clamp each norm in a denominator on its own, before any square
///   root);
/// - lower means closer: `E(δ', δ') ≤ E(−δ', δ')`;
/// - it changes neither argument.
///
/// **Models igrad ships**: `SigmoidMasking`, `CenteredSigmoidMasking`, `HistogramIntersection`,
/// `CosineError`, `MeanAbsoluteError`, `MeanSquaredError` (the Hana list
/// `all_error_functions`).
///
/// **Example** (examples/custom_policies.cpp):
/// @snippet custom_policies.cpp error_function
template <class E>
concept ErrorFunction = std::copy_constructible<E> && detail::has_constant_name<E> &&
    detail::is_not_a_backprop_rule<E> &&
    requires(const E& error, const at::Tensor& standard, const at::Tensor& guided) {
      { error(standard, guided) } -> std::convertible_to<at::Tensor>;
    };

/// @brief A backprop rule: how the gradient passes a rectifier site `v = ReLU(u)` (SPEC §1).
///
/// **Requirements**, for a type `R`:
/// - default-constructible and copy-constructible (state is allowed, with defaults);
/// - `R::is_standard`, a compile-time `bool` constant (`static constexpr bool is_standard`):
///   true only for ordinary backprop, in which case igrad attaches nothing to the graph;
/// - `R::name`, a compile-time constant convertible to `const char*`;
/// - a const call operator `torch::Tensor operator()(const torch::Tensor& masked,
///   const torch::Tensor& upstream) const` returning `δu`, given what ordinary backprop returns,
///   `masked = 1[site active] · δv`, and the incoming gradient `upstream = δv`.
///
/// **Minimal complete definition**: `is_standard`, `name` and the call operator.
///
/// **Optional site call**: a rule may also define `torch::Tensor operator()(const
/// igrad::RectifierSite&) const`, which receives the gradients and the site's input and output
/// in the differentiated forward and in a reference forward; `igrad::gradient` then uses it
/// instead of the two-argument call and requires the forwards recorded and paired
/// (`RectifierRecording`, `ReferenceSites`). `DeepLiftRescale` is such a rule. The concept itself
/// is unchanged, so rules without a site call are used exactly as before.
///
/// **Laws** (`igrad::testing::check_backprop_rule` checks them):
/// - the result has the shape of `masked`, is finite for finite arguments, and the arguments are
///   left unchanged;
/// - `is_standard` is true only when the call returns `masked` unchanged;
/// - `igrad::gradient<R>` equals the rule applied at each site, and the rule acts inside that
///   call only: ordinary gradients of the same graph before and after are standard.
///
/// **Models igrad ships**: `StandardReLU`, `GuidedReLU`, `DeconvReLU` (`all_backprop_rules`);
/// `DeepLiftRescale` (a site rule, outside that list: it needs a reference forward).
///
/// **Example** (examples/custom_policies.cpp):
/// @snippet custom_policies.cpp backprop_rule
template <class R>
concept BackpropRule = std::default_initializable<R> && std::copy_constructible<R> &&
    detail::has_constant_standard_flag<R> && detail::has_constant_name<R> &&
    requires(const R& rule, const at::Tensor& masked, const at::Tensor& upstream) {
      { rule(masked, upstream) } -> std::convertible_to<at::Tensor>;
    };

/// @brief A CAM method: maps a `CamRequest` to the map before post-processing (SPEC §4).
///
/// **Requirements**, for a type `C`:
/// - default-constructible and copy-constructible (a stateful method is passed by value to
///   `explain`);
/// - `C::name`, a compile-time constant convertible to `const char*`;
/// - a const call operator `torch::Tensor operator()(const igrad::CamRequest&) const`.
///
/// **Minimal complete definition**: `name` and the call operator, usually written from
/// `igrad::feature_gradients` and `igrad::weighted_feature_sum`.
///
/// **Laws** (`igrad::testing::check_cam_method` checks them; `explain` checks the first at every
/// call and throws `igrad::GraphError`):
/// - it returns the map `[N, h, w]` before ReLU and scaling, finite (feature resolution for most
///   methods; any resolution is accepted, `explain` upsamples);
/// - a batch gives the maps of its images one by one, and the same request the same maps;
/// - it touches no parameter's `.grad`, no buffer, neither the input nor the model's mode.
///
/// **Models igrad ships**: `Cam`, `GradCam`, `GradCamPlusPlus`, `SmoothGradCamPlusPlus`,
/// `ScoreCam`, `SSCam`, `ISCam`, `XGradCam`, `LayerCam`, `HiResCam`, `EigenCam`, `AblationCam`,
/// `OptiCam`, `GuidedGradCam`, `EigenGradCam`, `Fem`, `ShapleyCam`, `FinerCam<>`, `KpcaCam`,
/// `FullGrad`
/// (`all_cam_methods`), and the wrappers `EigenSmooth<C>`, `AugSmooth<C>`.
///
/// **Example** (examples/custom_policies.cpp):
/// @snippet custom_policies.cpp cam_method
template <class C>
concept CamMethod = std::default_initializable<C> && std::copy_constructible<C> &&
    detail::has_constant_name<C> && requires(const C& method, const CamRequest& request) {
      { method(request) } -> std::convertible_to<at::Tensor>;
    };

/// @brief An input-space saliency method: maps a `SaliencyRequest` to input-shaped attributions
/// (SPEC §4).
///
/// **Requirements**, for a type `S`: default-constructible and copy-constructible; `S::name`, a
/// compile-time constant convertible to `const char*`; a const call operator
/// `torch::Tensor operator()(const igrad::SaliencyRequest&) const`.
///
/// **Minimal complete definition**: `name` and the call operator, usually written from
/// `igrad::target_input_gradient<R>`.
///
/// **Laws** (`igrad::testing::check_saliency_method` checks them; `attribute` checks the first
/// at every call and throws `igrad::GraphError`):
/// - it returns attributions of the input's shape, finite;
/// - a batch gives the attributions of its images one by one, the same request the same result;
/// - it touches no parameter's `.grad`, no buffer, neither the input nor the model's mode.
///
/// **Models igrad ships**: `Gradient`, `GuidedBackprop`, `Deconvnet`, `InputXGradient`,
/// `SmoothGrad`, `SmoothGradSquared`, `VarGrad`, `IntegratedGradients`, `Occlusion`,
/// `FeatureAblation`, `GradientShap`, `DeepLift` (`all_saliency_methods`).
///
/// **Example**:
/// @snippet doc_snippets.cpp saliency_method
template <class S>
concept SaliencyMethod = std::default_initializable<S> && std::copy_constructible<S> &&
    detail::has_constant_name<S> && requires(const S& method, const SaliencyRequest& request) {
      { method(request) } -> std::convertible_to<at::Tensor>;
    };

/// @brief A training callback for `Trainer::fit`: any type with any subset of six hooks.
///
/// **Requirements**, for a type `C`: at least one of
/// - `on_train_begin(TrainerState&)`,
/// - `on_epoch_begin(TrainerState&)`,
/// - `on_after_backward(TrainerState&)` (returns `void`; runs in each step after the backward
///   pass to the parameters and before `optimizer.step()`),
/// - `on_batch_end(TrainerState&, const StepResult&)`,
/// - `on_epoch_end(TrainerState&, EpochLog&)`,
/// - `on_train_end(TrainerState&)`,
///
/// each returning `void` or `bool` (`true` stops training). A hook that is declared with another
/// signature or return type is an error rather than a hook that is silently never called.
///
/// **Minimal complete definition**: one hook.
///
/// **Laws**: hooks run in argument order; a callback passed as an lvalue is used by reference.
///
/// **Models igrad ships**: `ProgressBar`, `CsvLogger`, `EarlyStopping`, `Checkpoint`,
/// `ExplanationMonitor`, `LambdaSchedule`, `GradientClipping`.
///
/// **Example** (examples/custom_policies.cpp):
/// @snippet custom_policies.cpp callback
template <class C>
concept Callback =
    (detail::calls_on_train_begin<C> || detail::calls_on_epoch_begin<C> ||
     detail::calls_on_after_backward<C> || detail::calls_on_batch_end<C> ||
     detail::calls_on_epoch_end<C> ||
     detail::calls_on_train_end<C>) &&
    detail::declared_hooks_are_callable<C>;

/// @}
}  // namespace igrad

#pragma once
/// @file metrics/sanity.hpp
/// @brief The model parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for
/// Saliency Maps"; Quantus `ModelParameterRandomisation`): an explanation that depends on the
/// model must change when the model's weights are replaced by random ones, layer by layer from
/// the output down (docs/reference.md §5).

#include <igrad/concepts.hpp>
#include <igrad/detail/batched_jobs.hpp>
#include <igrad/detail/cpu_generator.hpp>
#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>
#include <igrad/metrics/evaluate.hpp>
#include <igrad/model.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/arg.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace igrad {

/// @addtogroup metrics_group
/// @{

namespace detail {

/// The 1-based ranks of `values[0..n)`, ties given the mean of the ranks they span (the
/// "average" method of scipy's `rankdata`, which Spearman's coefficient needs).
inline void average_ranks(const double* values, int64_t n, double* ranks) {
  std::vector<int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [values](int64_t i, int64_t j) { return values[i] < values[j]; });
  for (int64_t start = 0; start < n;) {
    int64_t end = start + 1;  // [start, end): one run of equal values
    while (end < n && values[order[static_cast<std::size_t>(end)]] ==
                          values[order[static_cast<std::size_t>(start)]])
      ++end;
    const double rank = 0.5 * static_cast<double>(start + end - 1) + 1.0;
    for (int64_t k = start; k < end; ++k) ranks[order[static_cast<std::size_t>(k)]] = rank;
    start = end;
  }
}

/// `[N, P]` contiguous CPU doubles of maps `[N, ...]`, checked like any map argument.
inline torch::Tensor host_maps(const torch::Tensor& maps, std::string_view what) {
  require(maps.defined() && maps.dim() >= 2 && maps.size(0) > 0 && maps.numel() > 0,
          "{} have shape {}; expected [N, H, W] with at least one image", what,
          shape_string(maps));
  require(maps.is_floating_point(), "{} have dtype {}; expected a floating-point tensor", what,
          std::string(c10::toString(maps.scalar_type())));
  require(all_finite(maps), "{} contain NaN or infinite values; expected finite values", what);
  return maps.detach().to(torch::kCPU, torch::kDouble).flatten(1).contiguous();
}

/// A module holder (`ModuleHolder`) or `std::shared_ptr` as a `std::shared_ptr<nn::Module>`.
template <class M>
std::shared_ptr<torch::nn::Module> module_pointer(const M& model) {
  if constexpr (requires { model.ptr(); }) {
    return model.ptr();
  } else {
    return model;
  }
}

/// A module with parameters of its own, and its name in the model (`named_modules`).
struct ParameterisedLayer {
  std::string name;
  std::shared_ptr<torch::nn::Module> module;
};

/// The modules that hold parameters themselves, from the last registered to the first: the
/// order of a cascading randomisation from the output down. The root, when it holds parameters
/// itself, is named "(root)".
inline std::vector<ParameterisedLayer> parameterised_layers(
    const std::shared_ptr<torch::nn::Module>& root) {
  std::vector<ParameterisedLayer> layers;
  for (const auto& item : root->named_modules()) {
    if (item.value()->named_parameters(/*recurse=*/false).is_empty()) continue;
    layers.push_back({item.key().empty() ? std::string("(root)") : item.key(), item.value()});
  }
  std::reverse(layers.begin(), layers.end());
  return layers;
}

/// Redraws every parameter of `layer` (not of its children) uniformly in `[−b, b]`,
/// `b = 1/√fan_in`, `fan_in` that of the layer's first parameter of rank >= 2 (LibTorch's default
/// range for Linear / Conv), or 1 when it has none (a norm layer's scale and shift: `[−1, 1]`).
/// Draws come from `generator` on the CPU, in double, so they do not depend on the device.
inline void randomise_layer(torch::nn::Module& layer, torch::Generator& generator) {
  torch::NoGradGuard no_grad;
  const auto parameters = layer.named_parameters(/*recurse=*/false);
  double fan_in = 1;
  for (const auto& p : parameters) {
    const auto& t = p.value();
    if (t.dim() >= 2 && t.size(0) > 0) {
      fan_in = std::max(1.0, static_cast<double>(t.numel() / t.size(0)));
      break;
    }
  }
  const double bound = 1.0 / std::sqrt(fan_in);
  for (const auto& p : parameters) {
    auto t = p.value();
    const auto draw = (torch::rand(t.sizes(), generator, torch::dtype(torch::kDouble)) * 2 - 1) *
                      bound;
    t.copy_(draw.to(t.device(), t.scalar_type()));
  }
}

/// Copies the values of every parameter and buffer of `source` into `target`, matched by name;
/// the two must have the same names and shapes (`InvalidArgument` naming the first mismatch).
inline void copy_module_state(const torch::nn::Module& source, torch::nn::Module& target) {
  torch::NoGradGuard no_grad;
  const auto copy = [](const auto& from, const auto& to, const char* kind) {
    require(from.size() == to.size(),
            "the fresh model has {} {}s and the model {}; expected make_model to build the same "
            "architecture", to.size(), kind, from.size());
    for (const auto& item : from) {
      const auto* destination = to.find(item.key());
      require(destination != nullptr,
              "the fresh model has no {} '{}'; expected make_model to build the same "
              "architecture", kind, item.key());
      require(destination->sizes() == item.value().sizes(),
              "the fresh model's {} '{}' has shape {} and the model's {}; expected make_model to "
              "build the same architecture", kind, item.key(), shape_string(*destination),
              shape_string(item.value()));
      torch::Tensor target_tensor = *destination;
      target_tensor.set_data(item.value().detach().clone());
    }
  };
  copy(source.named_parameters(), target.named_parameters(), "parameter");
  copy(source.named_buffers(), target.named_buffers(), "buffer");
}

}  // namespace detail

/// @brief Spearman's rank correlation of each pair of maps: `a[i]` against `b[i]`, each
/// flattened; `[N]` doubles in [−1, 1].
///
/// The Pearson correlation of the ranks, ties given their average rank (scipy's `spearmanr`).
/// A constant map has no ranking: the coefficient (0/0) is taken as 1 when both maps are
/// constant (nothing changed) and 0 when only one is (no shared ordering), never NaN.
/// Throws `InvalidArgument` when the shapes differ, the batch or a map is empty, or a value is
/// NaN or infinite.
inline torch::Tensor spearman_correlation(const torch::Tensor& a, const torch::Tensor& b) {
  const auto x = detail::host_maps(a, "spearman_correlation: the first maps");
  const auto y = detail::host_maps(b, "spearman_correlation: the second maps");
  detail::require(a.sizes() == b.sizes(),
                  "spearman_correlation: the maps have shapes {} and {}; expected the same shape",
                  detail::shape_string(a), detail::shape_string(b));
  const int64_t n = x.size(0), p = x.size(1);
  auto result = torch::empty({n}, torch::kDouble);
  std::vector<double> rx(static_cast<std::size_t>(p)), ry(static_cast<std::size_t>(p));
  const double mean_rank = 0.5 * static_cast<double>(p + 1);
  for (int64_t i = 0; i < n; ++i) {
    detail::average_ranks(x.data_ptr<double>() + i * p, p, rx.data());
    detail::average_ranks(y.data_ptr<double>() + i * p, p, ry.data());
    double covariance = 0, variance_x = 0, variance_y = 0;
    for (std::size_t k = 0; k < rx.size(); ++k) {
      const double dx = rx[k] - mean_rank, dy = ry[k] - mean_rank;
      covariance += dx * dy;
      variance_x += dx * dx;
      variance_y += dy * dy;
    }
    double rho;
    if (variance_x == 0 && variance_y == 0) {
      rho = 1;
    } else if (variance_x == 0 || variance_y == 0) {
      rho = 0;
    } else {
      rho = std::clamp(covariance / std::sqrt(variance_x * variance_y), -1.0, 1.0);
    }
    result.data_ptr<double>()[i] = rho;
  }
  return result;
}

/// @brief The structural similarity of each pair of maps `a[i]`, `b[i]` `[N, H, W]` (or
/// `[N, 1, H, W]`), as scikit-image's `structural_similarity` with its defaults and the data
/// range Quantus passes; `[N]` doubles in [−1, 1].
///
/// Over every 7×7 window w inside the map (no padding: the windows scikit-image keeps after
/// cropping its border), with the means `μ`, the sample variances and covariance `σ` (divided by
/// 48) of the window and `C1 = (0.01 R)²`, `C2 = (0.03 R)²`:
/// \f[ \mathrm{SSIM} = \operatorname{mean}_w
///     \frac{(2\mu_a\mu_b + C_1)(2\sigma_{ab} + C_2)}{(\mu_a^2 + \mu_b^2 + C_1)(\sigma_a^2 + \sigma_b^2 + C_2)} \f]
/// with `R = max(a_i, b_i) − min(a_i, b_i)` over both maps (Quantus' `ssim`). Two constant maps
/// (R = 0, 0/0) give 1 when equal. Throws `InvalidArgument` for maps smaller than 7×7, different
/// shapes, an empty batch, or NaN values.
inline torch::Tensor structural_similarity(const torch::Tensor& a, const torch::Tensor& b) {
  detail::host_maps(a, "structural_similarity: the first maps");
  detail::host_maps(b, "structural_similarity: the second maps");
  detail::require(a.sizes() == b.sizes(),
                  "structural_similarity: the maps have shapes {} and {}; expected the same shape",
                  detail::shape_string(a), detail::shape_string(b));
  auto x = a.detach().to(torch::kCPU, torch::kDouble);
  auto y = b.detach().to(torch::kCPU, torch::kDouble);
  if (x.dim() == 4 && x.size(1) == 1) x = x.squeeze(1), y = y.squeeze(1);
  constexpr int64_t window = 7;
  detail::require(x.dim() == 3 && x.size(1) >= window && x.size(2) >= window,
                  "structural_similarity: the maps have shape {}; expected [N, H, W] maps of at "
                  "least 7x7 (scikit-image's window)",
                  detail::shape_string(a));
  const int64_t n = x.size(0);
  const auto both = torch::cat({x.flatten(1), y.flatten(1)}, 1);
  const auto range = (std::get<0>(both.max(1)) - std::get<0>(both.min(1))).view({n, 1, 1, 1});
  const auto mean = [](const torch::Tensor& t) {
    return torch::avg_pool2d(t.unsqueeze(1), {window, window}, {1, 1});
  };
  const double samples = window * window, correction = samples / (samples - 1);
  const auto ma = mean(x), mb = mean(y);
  const auto va = correction * (mean(x * x) - ma * ma);
  const auto vb = correction * (mean(y * y) - mb * mb);
  const auto cov = correction * (mean(x * y) - ma * mb);
  const auto c1 = (0.01 * range).pow(2), c2 = (0.03 * range).pow(2);
  const auto s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
  const auto per_image = s.flatten(1).mean(1);
  return torch::where(range.view({n}) > 0, per_image, torch::ones_like(per_image));
}

/// @brief How the layers are randomised.
enum class RandomisationOrder {
  /// From the output layer down, each step keeping the layers randomised before it (Adebayo's
  /// cascading randomisation; Quantus `layer_order="top_down"`).
  cascading,
  /// One layer at a time, the others kept as trained (Adebayo's independent randomisation;
  /// Quantus `layer_order="independent"`).
  independent,
};

/// @brief Options of `model_randomisation`, with chained setters.
struct RandomisationOptions {
  /// Cascading (default) or independent randomisation.
  TORCH_ARG(RandomisationOrder, order) = RandomisationOrder::cascading;
  /// Seed of the CPU generator the random weights are drawn from (never the global generator).
  TORCH_ARG(uint64_t, seed) = 42;
  /// Rank the absolute values of the maps (Quantus' default `abs=True`; a no-op for maps in
  /// [0, 1]); false ranks signed attributions as they are.
  TORCH_ARG(bool, absolute) = true;
  /// Images per explainer call.
  TORCH_ARG(int64_t, batch_size) = 64;
  /// Keep every step's maps in the result (for `randomisation_figure`); off, only the original
  /// maps are kept.
  TORCH_ARG(bool, keep_maps) = false;
  /// Also compute the structural similarity of each map with its original
  /// (`structural_similarity`, on the maps — absolute when `absolute` — each divided by its
  /// maximum absolute value, as Quantus' `normalise_by_max`); maps must be at least 7×7.
  TORCH_ARG(bool, ssim) = false;
};

/// @brief The outcome of `model_randomisation`: per step (one more layer randomised, or one
/// layer alone), the rank correlation of each image's map with its original map.
///
/// An explanation that passes the check decorrelates as layers are randomised: its mean
/// correlation falls towards 0. One that stays near 1 does not depend on the weights it claims
/// to explain (Adebayo et al. found this for Guided Backprop).
struct RandomisationResult {
  std::string method;                 ///< the explainer's name
  std::vector<std::string> layers;    ///< the layer randomised at each step, output first
  torch::Tensor spearman;             ///< `[steps, N]` doubles, step × image
  std::vector<double> mean_spearman;  ///< `[steps]` the mean over the images
  torch::Tensor ssim;                 ///< `[steps, N]` SSIM with `RandomisationOptions::ssim`
  std::vector<double> mean_ssim;      ///< `[steps]` its mean over the images
  torch::Tensor original_maps;        ///< the unrandomised model's maps, `[N, ...]` (CPU)
  std::vector<torch::Tensor> maps;    ///< each step's maps (CPU) with `keep_maps`, else empty
};

namespace detail {

/// The check on `copy`, a deep copy of the user's model that it may change: `copy_model` is the
/// same copy seen as a model. Every public overload ends here.
inline RandomisationResult run_model_randomisation(const std::shared_ptr<torch::nn::Module>& copy,
                                                   const AnyModel& copy_model,
                                                   const Explainer& explainer,
                                                   const torch::Tensor& x,
                                                   const torch::Tensor& targets,
                                                   const RandomisationOptions& options) {
  const int64_t n = x.size(0);
  TrainingModeGuard eval_mode(copy_model, false);
  torch::Tensor classes;
  {
    torch::NoGradGuard no_grad;
    if (targets.defined()) {
      const auto probabilities = class_probabilities(copy_model, x.slice(0, 0, 1));
      require_labels(targets, n, probabilities.size(1), "model_randomisation: the targets");
      classes = targets.to(torch::kLong);
    } else {
      std::vector<torch::Tensor> predicted;
      for_each_batch(n, options.batch_size(), "RandomisationOptions::batch_size",
                     [&](int64_t start, int64_t end) {
                       predicted.push_back(
                           class_probabilities(copy_model, x.slice(0, start, end)).argmax(1));
                     });
      classes = torch::cat(predicted);
    }
  }
  classes = classes.to(x.device());

  const auto explain_all = [&](const std::string& step) {
    std::vector<torch::Tensor> parts;
    for_each_batch(n, options.batch_size(), "RandomisationOptions::batch_size",
                   [&](int64_t start, int64_t end) {
                     const auto maps = explainer.maps(copy_model, x.slice(0, start, end),
                                                      classes.slice(0, start, end));
                     require(maps.defined() && maps.dim() >= 2 && maps.size(0) == end - start &&
                                 maps.is_floating_point(),
                             "the explainer '{}' returned maps of shape {} for {} images ({}); "
                             "expected floating-point [N, H, W] maps, one per image",
                             explainer.name, shape_string(maps), end - start, step);
                     parts.push_back(maps.detach().to(torch::kCPU));
                   });
    auto maps = torch::cat(parts);
    require<NumericalError>(all_finite(maps),
                            "the explainer '{}' returned NaN or infinite maps ({}); expected "
                            "finite maps",
                            explainer.name, step);
    return maps;
  };
  const auto ranked = [&](const torch::Tensor& maps) {
    return options.absolute() ? maps.abs() : maps;
  };
  const auto by_max = [&](const torch::Tensor& maps) {
    const auto m = ranked(maps).to(torch::kDouble);
    std::vector<int64_t> shape(static_cast<std::size_t>(m.dim()), 1);
    shape[0] = m.size(0);
    return m / m.abs().flatten(1).amax(1).clamp_min(1e-300).view(shape);
  };

  RandomisationResult result;
  result.method = explainer.name;
  result.original_maps = explain_all("the model as trained");
  if (options.ssim()) structural_similarity(result.original_maps, result.original_maps);  // 7×7?
  const auto layers = parameterised_layers(copy);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed());
  std::vector<torch::Tensor> correlations, similarities;
  for (const auto& layer : layers) {
    std::vector<torch::Tensor> saved;
    if (options.order() == RandomisationOrder::independent) {
      for (const auto& p : layer.module->named_parameters(/*recurse=*/false))
        saved.push_back(p.value().detach().clone());
    }
    randomise_layer(*layer.module, generator);
    const auto maps = explain_all("layer '" + layer.name + "' randomised");
    require(maps.sizes() == result.original_maps.sizes(),
            "the explainer '{}' returned maps of shape {} with layer '{}' randomised and {} "
            "before; expected the same shape",
            explainer.name, shape_string(maps), layer.name, shape_string(result.original_maps));
    const auto rho = spearman_correlation(ranked(result.original_maps), ranked(maps));
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += rho[i].item<double>();
    result.layers.push_back(layer.name);
    result.mean_spearman.push_back(sum / static_cast<double>(n));
    correlations.push_back(rho);
    if (options.ssim()) {
      const auto similarity = structural_similarity(by_max(result.original_maps), by_max(maps));
      result.mean_ssim.push_back(similarity.mean().item<double>());
      similarities.push_back(similarity);
    }
    if (options.keep_maps()) result.maps.push_back(maps);
    if (!saved.empty()) {
      torch::NoGradGuard no_grad;
      std::size_t k = 0;
      for (const auto& p : layer.module->named_parameters(/*recurse=*/false))
        p.value().detach().copy_(saved[k++]);
    }
  }
  result.spearman = torch::stack(correlations);
  if (options.ssim()) result.ssim = torch::stack(similarities);
  return result;
}

/// The checks every overload makes before copying the model.
inline void check_randomisation_inputs(const std::shared_ptr<torch::nn::Module>& module,
                                       const Explainer& explainer, const torch::Tensor& x,
                                       const RandomisationOptions& options) {
  require(module != nullptr, "model_randomisation() got an empty model handle; expected a "
                             "constructed module");
  require(static_cast<bool>(explainer.maps), "model_randomisation(): the explainer '{}' has no "
                                             "maps function", explainer.name);
  require_images(x, "model_randomisation: the images");
  require(x.size(0) > 0, "model_randomisation: the images have shape {}, an empty batch; "
                         "expected at least one image", shape_string(x));
  require(options.batch_size() >= 1, "RandomisationOptions::batch_size is {}; expected >= 1",
          options.batch_size());
  require(!parameterised_layers(module).empty(),
          "model_randomisation(): the model has no parameters; expected at least one layer with "
          "parameters to randomise");
}

}  // namespace detail

/// @brief The layers `model_randomisation` randomises, in its order: every module that holds
/// parameters itself (a Conv, Linear, BatchNorm, ...), from the last registered to the first,
/// named as in `named_modules()` ("(root)" for the model's own parameters).
///
/// Registration order is taken as the order of the forward pass, as in Quantus (PyTorch's
/// `named_modules()`); a model that registers its layers in another order is randomised in that
/// order.
template <class M>
std::vector<std::string> randomisation_layers(const M& model) {
  std::vector<std::string> names;
  for (const auto& layer : detail::parameterised_layers(detail::module_pointer(model)))
    names.push_back(layer.name);
  return names;
}

/// @brief The model parameter randomisation test on a model that can be cloned (a module
/// deriving `torch::nn::Cloneable<Impl>`, e.g. `nn::Sequential`).
///
/// Explains `x` `[N, C, H, W]` for `targets` `[N]` (undefined: the model's predicted classes)
/// with `explainer`, then randomises the parameterised layers (`randomisation_layers`) one at a
/// time from the output down, cascading or independently, each redrawn uniformly in
/// `[−1/√fan_in, 1/√fan_in]` from a CPU generator seeded with `options.seed()`, and explains
/// again after each step; the result holds each step's Spearman rank correlation per image and
/// its mean. Everything runs on a deep copy in eval mode: the model, its `.grad`, its mode and
/// the global random generator are left as they were. The explainer is called with the copy
/// (any `Explainer`: `cam_explainers`, a lambda around `igrad::attribute`, ...) and must
/// explain the model it is given: one that captured the user's model would never see the
/// randomised weights and pass for insensitive.
///
/// Throws `InvalidArgument` for an empty batch, bad targets, a model without parameters, or a
/// model that cannot be cloned (pass `make_model`, the other overload); `NumericalError` when
/// the explainer returns NaN maps.
template <class M>
  requires Classifier<M>
RandomisationResult model_randomisation(const M& model, const Explainer& explainer,
                                        const torch::Tensor& x,
                                        const torch::Tensor& targets = {},
                                        const RandomisationOptions& options = {}) {
  const auto module = detail::module_pointer(model);
  detail::check_randomisation_inputs(module, explainer, x, options);
  using Impl = std::remove_cvref_t<decltype(*model)>;
  std::shared_ptr<Impl> cloned;
  {
    detail::CpuGeneratorStateGuard keep_global_stream;
    try {
      cloned = std::dynamic_pointer_cast<Impl>(module->clone());
    } catch (const c10::Error& e) {
      throw InvalidArgument(igrad::detail::format(
          "model_randomisation() cannot deep-copy the model ({}); expected a module deriving "
          "torch::nn::Cloneable<Impl>, or a make_model function that builds a fresh model of "
          "the same architecture (the overload model_randomisation(model, make_model, ...))",
          detail::first_line(e.what())));
    }
  }
  detail::require(cloned != nullptr, "model_randomisation(): the model's clone() returned another "
                                     "type; expected a copy of the same module type");
  const M copy(cloned);
  return detail::run_model_randomisation(cloned, AnyModel(copy), explainer, x, targets, options);
}

/// @brief The model parameter randomisation test on a model of any module type: `make_model()`
/// builds a fresh model of the same architecture (e.g. `[] { return SmallCNN(options); }`),
/// into which the model's parameters and buffers are copied by name before the check.
///
/// See the other overload; also throws `InvalidArgument` when the fresh model's parameter or
/// buffer names or shapes differ from the model's.
template <class M, class MakeModel>
  requires Classifier<M> && std::invocable<MakeModel&> &&
           std::convertible_to<std::invoke_result_t<MakeModel&>, M>
RandomisationResult model_randomisation(const M& model, MakeModel&& make_model,
                                        const Explainer& explainer, const torch::Tensor& x,
                                        const torch::Tensor& targets = {},
                                        const RandomisationOptions& options = {}) {
  const auto module = detail::module_pointer(model);
  detail::check_randomisation_inputs(module, explainer, x, options);
  std::optional<M> copy;
  {
    detail::CpuGeneratorStateGuard keep_global_stream;
    copy.emplace(make_model());
  }
  const auto copied = detail::module_pointer(*copy);
  detail::require(copied != nullptr && copied != module,
                  "model_randomisation(): make_model returned {}; expected a new model",
                  copied == nullptr ? "an empty handle" : "the model itself");
  detail::copy_module_state(*module, *copied);
  return detail::run_model_randomisation(copied, AnyModel(*copy), explainer, x, targets, options);
}

/// @brief The model parameter randomisation test on a module seen through an adapter: `module`
/// is cloned (it must derive `torch::nn::Cloneable`, as `nn::Sequential` does) and
/// `as_model(clone)` makes the model the explainer sees, e.g.
/// `[](auto m) { return models::split_sequential(nn::Sequential(
/// std::dynamic_pointer_cast<nn::SequentialImpl>(m)), 3); }`. See the first overload.
inline RandomisationResult model_randomisation(
    const std::shared_ptr<torch::nn::Module>& module,
    const std::function<AnyModel(const std::shared_ptr<torch::nn::Module>&)>& as_model,
    const Explainer& explainer, const torch::Tensor& x, const torch::Tensor& targets = {},
    const RandomisationOptions& options = {}) {
  detail::check_randomisation_inputs(module, explainer, x, options);
  detail::require(static_cast<bool>(as_model), "model_randomisation(): as_model is empty; "
                                               "expected a function that wraps the copied module");
  std::shared_ptr<torch::nn::Module> cloned;
  {
    detail::CpuGeneratorStateGuard keep_global_stream;
    try {
      cloned = module->clone();
    } catch (const c10::Error& e) {
      throw InvalidArgument(igrad::detail::format(
          "model_randomisation() cannot deep-copy the module ({}); expected a module deriving "
          "torch::nn::Cloneable<Impl>",
          detail::first_line(e.what())));
    }
  }
  return detail::run_model_randomisation(cloned, as_model(cloned), explainer, x, targets, options);
}

/// @}
}  // namespace igrad

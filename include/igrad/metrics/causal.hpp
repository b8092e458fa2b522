#pragma once
/// @file metrics/causal.hpp
/// @brief Insertion and deletion (RISE, Petsiuk et al. 2018; SPEC §5): the class probability
/// while the most salient pixels are inserted into a blurred copy, or deleted, step by step, and
/// the area under that curve.

#include <igrad/detail/batched_jobs.hpp>
#include <igrad/metrics/masking.hpp>

#include <torch/arg.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace igrad {

/// @addtogroup metrics_group
/// @{

/// @brief Which causal metric a curve measures.
enum class CausalMetric {
  insertion,  ///< pixels copied from the image into the substrate, most salient first (higher is better)
  deletion,   ///< pixels replaced by the substrate, most salient first (lower is better)
};

/// @brief What replaces a pixel that is not (yet) inserted, or that is deleted.
enum class Substrate {
  blurred,  ///< the image blurred by a Gaussian (RISE's insertion start)
  zeros,    ///< 0 in normalised space, i.e. the dataset mean in pixels (RISE's deletion)
  black,    ///< 0 in pixel space, i.e. `−mean/std` normalised (0 when no normalisation is given)
};

/// @brief How the Gaussian blur pads the image border.
enum class BlurPadding {
  replicate,  ///< repeat the edge pixel (the default: works at any image size)
  reflect,    ///< mirror without repeating the edge (needs the image larger than half the kernel)
  zeros,      ///< black border (in pixel space when a normalisation is given)
};

/// @brief How the blurred substrate is made: the kernel and the space it pads in (SPEC §5).
///
/// The two conventions give insertion areas up to 0.2–0.4 apart on Fashion-MNIST, so a result
/// should say which one it used.
enum class BlurConvention {
  /// igrad's default (SPEC §5): the sampled Gaussian `exp(−k²/2σ²)`, `k = −r … r`, normalised to
  /// sum 1, applied in pixel space with `CausalOptions::blur_padding` (replicate by default).
  sampled,
  /// RISE's code (Petsiuk et al. 2018, `gkern`): the kernel is a unit point filtered by scipy's
  /// `gaussian_filter` (see `rise_blur_kernel`), and the image is zero-padded in *normalised*
  /// space, i.e. with the dataset mean (a grey border around Fashion-MNIST's black background).
  /// `blur_padding` is ignored.
  rise,
};

/// @brief Options of insertion and deletion, with chained setters.
struct CausalOptions {
  /// The dataset's normalisation: substrates and the blur are computed in pixel space.
  TORCH_ARG(std::optional<DatasetNormalization>, normalization) = std::nullopt;
  /// Ground-truth classes (default) or the model's predictions on the unmodified image.
  TORCH_ARG(TargetClass, target) = TargetClass::label;
  /// Pixels inserted or deleted per step; none means the image width W (SPEC §5, as RISE).
  TORCH_ARG(std::optional<int64_t>, pixels_per_step) = std::nullopt;
  /// Step images forwarded at once: memory is bounded by this many images, whatever N and the
  /// number of steps.
  TORCH_ARG(int64_t, batch_size) = 128;
  /// Width of the Gaussian kernel (odd), RISE's 11.
  TORCH_ARG(int64_t, blur_kernel_size) = 11;
  /// Standard deviation of the Gaussian kernel in pixels, RISE's 5.
  TORCH_ARG(double, blur_sigma) = 5.0;
  /// Padding of the blur (pixel space; the `sampled` convention only).
  TORCH_ARG(BlurPadding, blur_padding) = BlurPadding::replicate;
  /// Kernel construction and padding space of the blur: igrad's `sampled` Gaussian in pixel space
  /// (default) or RISE's point-filtered kernel with zero padding in normalised space.
  TORCH_ARG(BlurConvention, blur_convention) = BlurConvention::sampled;
  /// Where insertion starts from.
  TORCH_ARG(Substrate, insertion_substrate) = Substrate::blurred;
  /// What deletion puts in place of a deleted pixel.
  TORCH_ARG(Substrate, deletion_substrate) = Substrate::zeros;
};

/// @brief The probability curves of a batch and their areas.
///
/// Point j of a curve is `P(c | image with min(j · pixels_per_step, H·W) pixels inserted or
/// deleted)`, j = 0 … n with `n = ceil(H·W / pixels_per_step)`; point 0 of deletion is the image
/// itself, point n of insertion is the image itself.
struct CausalCurves {
  torch::Tensor classes;        ///< `[N]` the class scored for each image
  torch::Tensor probabilities;  ///< `[N, n + 1]` the curves (double, on the input's device)
  torch::Tensor pixels;         ///< `[n + 1]` pixels inserted / deleted at each point (int64, CPU)
  torch::Tensor auc;            ///< `[N]` the area under each curve, in [0, 1] (double)
  /// @brief The fraction of the image inserted / deleted at each point, in [0, 1] (x axis of a plot).
  torch::Tensor fractions() const {
    return pixels.to(torch::kDouble) / static_cast<double>(pixels[-1].item<int64_t>());
  }
  /// @brief The mean area over the batch.
  double mean_auc() const { return auc.mean().item<double>(); }
};

/// @brief Area under curves sampled at n + 1 equally spaced points, by the trapezoid rule,
/// normalised to [0, 1]: `(Σ_j s_j − (s_0 + s_n) / 2) / n`, along the last dimension.
inline torch::Tensor trapezoid_auc(const torch::Tensor& curves) {
  detail::require(curves.defined() && curves.dim() >= 1 && curves.size(-1) >= 2,
                  "curves have shape {}; expected at least 2 points along the last dimension",
                  detail::shape_string(curves));
  const auto s = curves.to(torch::kDouble);
  const double n = static_cast<double>(s.size(-1) - 1);
  return (s.sum(-1) - (s.select(-1, 0) + s.select(-1, -1)) / 2) / n;
}

/// @brief The same trapezoid area for one curve given as numbers.
inline double trapezoid_auc(const std::vector<double>& curve) {
  detail::require(curve.size() >= 2, "a curve of {} points; expected at least 2", curve.size());
  double sum = 0;
  for (double s : curve) sum += s;
  return (sum - (curve.front() + curve.back()) / 2) / static_cast<double>(curve.size() - 1);
}

/// @brief A Gaussian blur of `[N, C, H, W]` images, channel by channel, as two 1-D convolutions.
///
/// The kernel is the sampled Gaussian `exp(−k² / 2σ²)`, `k = −r … r`, `r = (kernel_size − 1)/2`,
/// normalised to sum 1, so a constant image stays constant under replicate or reflect padding.
/// Runs on `x`'s device and dtype.
inline torch::Tensor gaussian_blur(const torch::Tensor& x, int64_t kernel_size = 11,
                                   double sigma = 5.0,
                                   BlurPadding padding = BlurPadding::replicate) {
  detail::require_images(x);
  detail::require(kernel_size >= 1 && kernel_size % 2 == 1,
                  "blur kernel size is {}; expected an odd size >= 1", kernel_size);
  detail::require(std::isfinite(sigma) && sigma > 0, "blur sigma is {}; expected a value > 0",
                  sigma);
  const int64_t r = kernel_size / 2;
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  detail::require(padding != BlurPadding::reflect || (r < h && r < w),
                  "reflect padding of {} pixels for {}x{} images; expected images larger than "
                  "half the kernel (or replicate padding)", r, h, w);
  const auto options = torch::TensorOptions().dtype(torch::kDouble);
  auto kernel = torch::exp(-torch::arange(-r, r + 1, options).pow(2) / (2 * sigma * sigma));
  kernel = (kernel / kernel.sum()).to(x.device(), x.scalar_type());
  auto planes = x.reshape({n * c, 1, h, w});
  if (r > 0) {
    const std::vector<int64_t> pad{r, r, r, r};
    switch (padding) {
      case BlurPadding::replicate: planes = torch::replication_pad2d(planes, pad); break;
      case BlurPadding::reflect: planes = torch::reflection_pad2d(planes, pad); break;
      case BlurPadding::zeros: planes = torch::constant_pad_nd(planes, pad, 0); break;
    }
  }
  planes = torch::conv2d(planes, kernel.view({1, 1, 1, kernel_size}));
  planes = torch::conv2d(planes, kernel.view({1, 1, kernel_size, 1}));
  return planes.reshape({n, c, h, w});
}

/// @brief RISE's blur kernel, 1-D: a unit point filtered by scipy's `gaussian_filter`.
///
/// RISE's `gkern(klen, nsig)` puts a 1 in the centre of a `klen × klen` array and filters it with
/// `scipy.ndimage.gaussian_filter(…, nsig)`: per axis, the sampled Gaussian `exp(−j²/2σ²)`,
/// `j = −R … R` with `R = ⌊4σ + 0.5⌋` (scipy's `truncate = 4`), normalised to sum 1, correlated
/// with the line extended in scipy's `reflect` mode (`d c b a | a b c d | d c b a`, repeated).
/// The 2-D kernel is the outer product of this vector with itself. With RISE's 11 / σ 5 the radius
/// (20) exceeds the line, so the tails fold back in: the kernel is flatter than the sampled
/// Gaussian of `gaussian_blur`. It sums to 1. Returns `[kernel_size]` doubles on the CPU.
inline torch::Tensor rise_blur_kernel(int64_t kernel_size = 11, double sigma = 5.0) {
  detail::require(kernel_size >= 1 && kernel_size % 2 == 1,
                  "blur kernel size is {}; expected an odd size >= 1", kernel_size);
  detail::require(std::isfinite(sigma) && sigma > 0 && sigma < 1e6,
                  "blur sigma is {}; expected a value in (0, 1e6)", sigma);
  const auto radius = static_cast<int64_t>(4.0 * sigma + 0.5);
  std::vector<double> weights(static_cast<size_t>(2 * radius + 1));
  double total = 0;
  for (int64_t j = -radius; j <= radius; ++j)
    total += weights[static_cast<size_t>(j + radius)] =
        std::exp(-0.5 * static_cast<double>(j * j) / (sigma * sigma));
  for (double& w : weights) w /= total;
  // The line holding the point, read at any index through scipy's reflect extension (period 2n).
  const int64_t n = kernel_size, centre = kernel_size / 2, period = 2 * kernel_size;
  const auto line = [&](int64_t index) {
    int64_t folded = ((index % period) + period) % period;
    if (folded >= n) folded = period - 1 - folded;
    return folded == centre ? 1.0 : 0.0;
  };
  auto kernel = torch::zeros({kernel_size}, torch::kDouble);
  auto* k = kernel.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = -radius; j <= radius; ++j)
      k[i] += weights[static_cast<size_t>(j + radius)] * line(i + j);
  return kernel;
}

/// @brief RISE's blur of `[N, C, H, W]` images: each channel convolved with `rise_blur_kernel`'s
/// 2-D kernel, zero-padded, as RISE's `conv2d(x, kern, padding=klen//2)` does.
///
/// Pads with 0 in whatever space `x` is in: for normalised images, with the dataset mean (RISE's
/// convention, `BlurConvention::rise`). Computed in double; returned in `x`'s dtype, on its device.
inline torch::Tensor rise_blur(const torch::Tensor& x, int64_t kernel_size = 11,
                               double sigma = 5.0) {
  detail::require_images(x);
  const auto kernel = rise_blur_kernel(kernel_size, sigma).to(x.device());
  const int64_t r = kernel_size / 2;
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto planes = x.to(torch::kDouble).reshape({n * c, 1, h, w});
  if (r > 0) planes = torch::constant_pad_nd(planes, std::vector<int64_t>{r, r, r, r}, 0);
  // Separable: the 2-D kernel is an outer product of the 1-D one.
  planes = torch::conv2d(planes, kernel.view({1, 1, 1, kernel_size}));
  planes = torch::conv2d(planes, kernel.view({1, 1, kernel_size, 1}));
  return planes.reshape({n, c, h, w}).to(x.scalar_type());
}

namespace detail {

/// The substrate images `[N, C, H, W]` (normalised space) of a batch, in double.
inline torch::Tensor substrate_images(const torch::Tensor& x, Substrate substrate,
                                      const CausalOptions& options) {
  const auto& norm = options.normalization();
  const auto xd = x.to(torch::kDouble);
  switch (substrate) {
    case Substrate::zeros: return torch::zeros_like(xd);
    case Substrate::black: {
      if (!norm) return torch::zeros_like(xd);
      const auto [mean, std] = normalization_tensors(*norm, x.size(1), xd);
      return (-mean / std).expand_as(xd).contiguous();
    }
    case Substrate::blurred: {
      // RISE's convention blurs the normalised images as they are, zero-padded there.
      if (options.blur_convention() == BlurConvention::rise)
        return rise_blur(xd, options.blur_kernel_size(), options.blur_sigma());
      if (!norm)
        return gaussian_blur(xd, options.blur_kernel_size(), options.blur_sigma(),
                             options.blur_padding());
      // Blurred in pixel space, so that zero padding means a black border.
      const auto [mean, std] = normalization_tensors(*norm, x.size(1), xd);
      return (gaussian_blur(xd * std + mean, options.blur_kernel_size(), options.blur_sigma(),
                            options.blur_padding()) - mean) / std;
    }
  }
  return torch::zeros_like(xd);
}

/// Softmax probabilities `[N, K]` of a batch forwarded in chunks of `batch_size`.
inline torch::Tensor chunked_probabilities(const AnyModel& model, const torch::Tensor& x,
                                           int64_t batch_size) {
  std::vector<torch::Tensor> parts;
  for_each_batch(x.size(0), batch_size, "CausalOptions::batch_size",
                 [&](int64_t start, int64_t end) {
                   parts.push_back(class_probabilities(model, x.slice(0, start, end)));
                 });
  return torch::cat(parts);
}

}  // namespace detail

/// @brief The insertion or deletion curves of a batch, and their areas.
///
/// Pixels are ranked by their map value, highest first, all channels of a pixel together; ties
/// go to the lower row-major index (a stable sort). Each step changes `pixels_per_step` more
/// pixels. Insertion starts from the insertion substrate (blurred copy) and copies the image's
/// pixels in; deletion starts from the image and puts the deletion substrate (0 in normalised
/// space) in. The `N · (n + 1)` step images are built and forwarded `batch_size` at a time.
///
/// `x` `[N, C, H, W]`, `maps` `[N, H, W]` in [0, 1] on `x`'s device, `classes` `[N]` (ignored, and
/// may be undefined, with `TargetClass::predicted`). Eval mode (restored after), no gradients,
/// on `x`'s device. Throws `InvalidArgument` for bad input.
inline CausalCurves causal_curves(const AnyModel& model, const torch::Tensor& x,
                                  const torch::Tensor& maps, const torch::Tensor& classes,
                                  CausalMetric metric, const CausalOptions& options = {}) {
  torch::NoGradGuard no_grad;
  detail::require_images(x);
  const auto m = detail::checked_maps(maps, x);
  const int64_t n_images = x.size(0), h = x.size(2), w = x.size(3), pixels = h * w;
  const int64_t step = options.pixels_per_step().value_or(w);
  detail::require(step >= 1, "pixels_per_step is {}; expected at least 1", step);
  detail::require(options.batch_size() >= 1, "CausalOptions::batch_size is {}; expected >= 1",
                  options.batch_size());
  detail::require(n_images > 0, "insertion / deletion of an empty batch; expected at least one "
                                "image");
  const int64_t steps = (pixels + step - 1) / step;
  const int64_t points = steps + 1;

  TrainingModeGuard eval_mode(model, false);
  const auto device = x.device();
  const auto long_options = torch::TensorOptions().dtype(torch::kLong).device(device);

  const auto probabilities = detail::chunked_probabilities(model, x, options.batch_size());
  const auto c = detail::chosen_classes(probabilities, classes, options.target());

  // rank[i, p] = position of pixel p in image i's ranking (0 = most salient).
  const auto order = std::get<1>(torch::sort(m.reshape({n_images, pixels}), /*stable=*/true,
                                             /*dim=*/1, /*descending=*/true));
  const auto rank = torch::empty_like(order).scatter_(
      1, order, torch::arange(pixels, long_options).expand({n_images, pixels}).contiguous());

  const bool insert = metric == CausalMetric::insertion;
  // The substrate is computed in double and rounded once to the dtype the model computes in; the
  // step images only select pixels of it and of x, so they hold no further rounding (SPEC §5).
  const auto dtype = detail::model_input_dtype(model, x.scalar_type());
  const auto substrate =
      detail::substrate_images(x, insert ? options.insertion_substrate()
                                         : options.deletion_substrate(), options).to(dtype);
  const auto image = x.to(dtype);
  const auto& before = insert ? substrate : image;  // pixels not yet changed
  const auto& after = insert ? image : substrate;   // pixels already changed

  auto curves = torch::empty({n_images * points}, torch::TensorOptions()
                                                      .dtype(torch::kDouble)
                                                      .device(device));
  const int64_t total = n_images * points;
  detail::for_each_batch(total, options.batch_size(), "CausalOptions::batch_size",
                         [&](int64_t start, int64_t end) {
    const auto flat = torch::arange(start, end, long_options);
    const auto index = torch::div(flat, points, /*rounding_mode=*/"floor");
    const auto changed = (flat.remainder(points) * step).clamp_max(pixels);
    const auto mask =
        (rank.index_select(0, index) < changed.unsqueeze(1)).view({end - start, 1, h, w});
    const auto step_images =
        torch::where(mask, after.index_select(0, index), before.index_select(0, index));
    curves.slice(0, start, end).copy_(detail::probability_of(
        detail::class_probabilities(model, step_images), c.index_select(0, index)));
  });
  curves = curves.view({n_images, points});
  auto pixel_counts = (torch::arange(points, torch::kLong) * step).clamp_max(pixels);
  return {c, curves, pixel_counts, trapezoid_auc(curves)};
}

/// @brief Insertion curves and areas (higher is better); see `causal_curves`.
inline CausalCurves insertion(const AnyModel& model, const torch::Tensor& x,
                              const torch::Tensor& maps, const torch::Tensor& classes,
                              const CausalOptions& options = {}) {
  return causal_curves(model, x, maps, classes, CausalMetric::insertion, options);
}

/// @brief Deletion curves and areas (lower is better); see `causal_curves`.
inline CausalCurves deletion(const AnyModel& model, const torch::Tensor& x,
                             const torch::Tensor& maps, const torch::Tensor& classes,
                             const CausalOptions& options = {}) {
  return causal_curves(model, x, maps, classes, CausalMetric::deletion, options);
}

/// @brief Mean insertion or deletion area over a stream of batches, and the mean curve.
///
/// Areas are added in double, image after image, and divided at the end, so the result does not
/// depend on the batch split. The mean curve needs every image to have the same number of points
/// (same size and step).
class CausalAccumulator {
 public:
  /// @brief An empty accumulator for `metric`, using `options` for every batch.
  explicit CausalAccumulator(CausalMetric metric, CausalOptions options = {})
      : metric_(metric), options_(std::move(options)) {}

  /// @brief Computes one batch's curves (see `causal_curves`), adds them, and returns them.
  CausalCurves add(const AnyModel& model, const torch::Tensor& x, const torch::Tensor& maps,
                   const torch::Tensor& classes) {
    auto curves = causal_curves(model, x, maps, classes, metric_, options_);
    add_curves(curves);
    return curves;
  }

  /// @brief Adds precomputed curves.
  void add_curves(const CausalCurves& curves) {
    const auto host = curves.probabilities.to(torch::kCPU, torch::kDouble).contiguous();
    const int64_t points = host.size(1);
    if (images_ == 0) {
      curve_sum_.assign(static_cast<size_t>(points), 0.0);
      pixels_ = curves.pixels;
    }
    detail::require(static_cast<int64_t>(curve_sum_.size()) == points,
                    "curves of {} points after curves of {}; expected images of one size and one "
                    "step per accumulator", points, curve_sum_.size());
    detail::accumulate_in_order(auc_sum_, curves.auc);
    const double* values = host.data_ptr<double>();
    for (int64_t i = 0; i < host.size(0); ++i)
      for (int64_t j = 0; j < points; ++j) curve_sum_[j] += values[i * points + j];
    images_ += host.size(0);
  }

  /// @brief The mean area in [0, 1]; throws `InvalidArgument` when no image was added.
  double result() const {
    require_images();
    return auc_sum_ / static_cast<double>(images_);
  }

  /// @brief The mean curve `[n + 1]` (double, CPU), for plotting against `pixels()`.
  torch::Tensor mean_curve() const {
    require_images();
    return torch::tensor(curve_sum_, torch::TensorOptions().dtype(torch::kDouble)) /
           static_cast<double>(images_);
  }
  /// @brief The pixels changed at each point of the curve `[n + 1]`.
  torch::Tensor pixels() const {
    require_images();
    return pixels_;
  }
  /// @brief The metric accumulated.
  CausalMetric metric() const { return metric_; }
  /// @brief The number of images added so far.
  int64_t images() const { return images_; }

 private:
  void require_images() const {
    detail::require(images_ > 0, "{} of an empty dataset; expected at least one image to have "
                                 "been added",
                    metric_ == CausalMetric::insertion ? "insertion" : "deletion");
  }

  CausalMetric metric_;
  CausalOptions options_;
  double auc_sum_ = 0;
  std::vector<double> curve_sum_;
  torch::Tensor pixels_;
  int64_t images_ = 0;
};

/// @}
}  // namespace igrad

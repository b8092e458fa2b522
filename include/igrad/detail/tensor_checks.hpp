#pragma once
/// @file detail/tensor_checks.hpp
/// @brief Input validation shared by igrad's entry points.

#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <sstream>
#include <string>
#include <string_view>

namespace igrad::detail {

/// "[2, 3, 4]" for a tensor of that shape; "undefined" for an undefined tensor.
inline std::string shape_string(const torch::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

/// True when every element is finite (no NaN, no infinity).
inline bool all_finite(const torch::Tensor& t) {
  if (!t.is_floating_point()) return true;
  return torch::isfinite(t).all().item<bool>();
}

/// Checks that `t` is defined and has rank `rank`; `what` names it in the message.
inline void require_rank(const torch::Tensor& t, int64_t rank, std::string_view what,
                         std::string_view layout) {
  require(t.defined(), "{} is undefined; expected a {}-D tensor {}", what, rank, layout);
  require(t.dim() == rank, "{} has shape {}; expected a {}-D tensor {}", what, shape_string(t),
          rank, layout);
}

/// Checks that a floating-point tensor holds only finite values.
inline void require_finite(const torch::Tensor& t, std::string_view what) {
  require(all_finite(t), "{} contains NaN or infinite values; expected finite values", what);
}

/// What `require_images` checks beyond the shape.
enum class ImageValues {
  any,              ///< only the shape (augmentations accept byte images too)
  floating_finite,  ///< a floating-point dtype and finite values
};

/// The one check of an image batch `[N, C, H, W]`: defined and 4-D, and by default floating
/// point and finite. `what` names the tensor (and its caller) in the message.
inline void require_images(const torch::Tensor& x, std::string_view what = "images",
                           ImageValues values = ImageValues::floating_finite) {
  require(x.defined() && x.dim() == 4, "{} have shape {}; expected images [N, C, H, W]", what,
          shape_string(x));
  if (values == ImageValues::any) return;
  require(x.is_floating_point(), "{} have dtype {}; expected a floating-point tensor", what,
          std::string(c10::toString(x.scalar_type())));
  require_finite(x, what);
}

/// Checks that class indices are a 1-D integer tensor of `n` entries, each in [0, classes).
inline void require_labels(const torch::Tensor& labels, int64_t n, int64_t classes,
                           std::string_view what = "targets") {
  require(labels.defined(), "{} are undefined; expected {} class indices", what, n);
  require(labels.dim() == 1, "{} have shape {}; expected a 1-D tensor of {} class indices", what,
          shape_string(labels), n);
  require(!labels.is_floating_point() && !labels.is_complex(),
          "{} have dtype {}; expected an integer tensor of class indices", what,
          std::string(c10::toString(labels.scalar_type())));
  require(labels.size(0) == n, "{} hold {} entries for a batch of {}; expected one per sample",
          what, labels.size(0), n);
  if (n == 0) return;
  const auto low = labels.min().item<int64_t>();
  const auto high = labels.max().item<int64_t>();
  require(low >= 0 && high < classes, "{} range over [{}, {}]; expected class indices in [0, {})",
          what, low, high, classes);
}

}  // namespace igrad::detail

namespace igrad::detail {

/// The first line of a (possibly multi-line, stack-traced) LibTorch error message.
inline std::string first_line(std::string_view message) {
  const auto end = message.find('\n');
  return std::string(message.substr(0, end));
}

}  // namespace igrad::detail

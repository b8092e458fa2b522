#pragma once
/// @file detail/torch_errors.hpp
/// @brief Translation of LibTorch errors (`c10::Error` and friends) into igrad exceptions at the
/// explanation entry points, with a message that says what was expected (issue 14).

#include <igrad/detail/tensor_checks.hpp>
#include <igrad/exceptions.hpp>

#include <torch/torch.h>

#include <new>
#include <string>
#include <string_view>
#include <utility>

namespace igrad::detail {

/// The input channels of a model's first 4-D parameter (the weight `[out, in, kh, kw]` of its
/// first convolution), or -1 when it has none. A hint for error messages only: a model may
/// reshape its input before its first convolution.
template <class Model>
int64_t first_convolution_channels(const Model& model) {
  try {
    for (const auto& p : model.parameters()) {
      if (p.dim() == 4) return p.size(1);
    }
  } catch (...) {
  }
  return -1;
}

/// Whether a LibTorch message (or a `std::bad_alloc`) says that memory ran out.
inline bool is_out_of_memory(std::string_view message) {
  return message.find("can't allocate memory") != std::string_view::npos ||
         message.find("out of memory") != std::string_view::npos ||
         message.find("bad_alloc") != std::string_view::npos;
}

/// The one model call with error translation: runs `f()` (a forward, features or head call of
/// `model` on `argument`); a LibTorch error becomes `InvalidArgument` naming the shape the model
/// rejected (`subject` says what the argument is: "a tensor", "an input batch", "images"), and
/// the channel counts when the images' channels differ from what the model's first convolution
/// takes. igrad's own exceptions pass unchanged.
template <class Model, class F>
auto call_model_checked(const Model& model, F&& f, std::string_view what,
                        const torch::Tensor& argument, std::string_view subject = "a tensor")
    -> decltype(std::forward<F>(f)()) {
  try {
    return std::forward<F>(f)();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    const int64_t channels = first_convolution_channels(model);
    if (what != "head" && argument.defined() && argument.dim() == 4 && channels > 0 &&
        argument.size(1) != channels) {
      throw InvalidArgument(igrad::detail::format(
          "the images have shape {}, that is {} channels, but the model's first convolution "
          "takes {} channel(s): it expects {}, not {}; expected images [N, {}, H, W] (grayscale "
          "vs RGB?). LibTorch said: {}",
          shape_string(argument), argument.size(1), channels, channels, argument.size(1), channels,
          first_line(e.what())));
    }
    throw InvalidArgument(igrad::detail::format(
        "the model's {} rejected {} of shape {}; expected the input size the model was built "
        "for. LibTorch said: {}",
        what, subject, shape_string(argument), first_line(e.what())));
  }
}

/// Runs the body `f()` of the explanation entry point `entry` (e.g. "Grad-CAM"); a LibTorch error
/// (`c10::Error`) that escaped the checks becomes an igrad exception naming the entry point
/// (`InvalidArgument`; for exhausted memory, one that says which option bounds it). igrad's own
/// exceptions and any other exception (one a progress callback throws to cancel, say) pass
/// unchanged.
template <class F>
auto translate_torch_errors(std::string_view entry, std::string_view memory_option, F&& f)
    -> decltype(std::forward<F>(f)()) {
  try {
    return std::forward<F>(f)();
  } catch (const std::bad_alloc&) {
    throw InvalidArgument(igrad::detail::format(
        "{}: ran out of memory; expected a smaller batch or a smaller {} (it bounds how many "
        "inputs go through the model at once)",
        entry, memory_option));
  } catch (const c10::Error& e) {
    const std::string said = first_line(e.what_without_backtrace());
    if (is_out_of_memory(said)) {
      throw InvalidArgument(igrad::detail::format(
          "{}: ran out of memory; expected a smaller batch or a smaller {} (it bounds how many "
          "inputs go through the model at once). LibTorch said: {}",
          entry, memory_option, said));
    }
    throw InvalidArgument(igrad::detail::format(
        "{}: LibTorch rejected the computation; expected tensors whose shapes, dtypes and devices "
        "agree with the model and the method. LibTorch said: {}",
        entry, said));
  }
}

}  // namespace igrad::detail

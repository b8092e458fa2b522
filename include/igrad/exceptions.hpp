#pragma once
/// @file exceptions.hpp
/// @brief The exceptions igrad throws, and the checks that throw them.
///
/// Every message says what was wrong and what was expected, so that a researcher can fix the
/// call without reading igrad's source.

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace igrad {

/// @defgroup errors_group Errors
/// @brief Exceptions thrown by igrad.
/// @{

/// @brief Base class of every exception igrad throws.
class Error : public std::runtime_error {
 public:
  /// @brief An error with a complete, human-readable message.
  explicit Error(const std::string& message) : std::runtime_error("igrad: " + message) {}
};

/// @brief A call received an argument it cannot work with (shape, range, size, device...).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// @brief A computation produced a non-finite value (NaN or infinity) and was refused.
class NumericalError : public Error {
 public:
  using Error::Error;
};

/// @brief A data file is missing, truncated or corrupt.
class DataError : public Error {
 public:
  using Error::Error;
};

/// @brief An autograd graph lacks what a backprop rule or an explanation method needs.
class GraphError : public Error {
 public:
  using Error::Error;
};

/// @}

namespace detail {

/// The format string of format() and require(): checked at compile time against the arguments'
/// types (`fmt::format_string`) where IGRAD_CHECK_FORMAT_STRINGS is defined, read at run time
/// otherwise.
///
/// Why a runtime format string: checking each of igrad's few hundred format strings at compile
/// time (a `consteval` parse per call) costs every translation unit that includes
/// <igrad/igrad.hpp> several percent of its compile time, although the strings are igrad's own
/// and never change. igrad's own builds define IGRAD_CHECK_FORMAT_STRINGS (CMakeLists.txt), so
/// every string is still checked there; the formatted text is the same either way.
#ifdef IGRAD_CHECK_FORMAT_STRINGS
template <class... Args>
using FormatText = fmt::format_string<Args...>;
#else
template <class... Args>
using FormatText = fmt::string_view;
#endif

/// `fmt::format` with igrad's FormatText: igrad's headers call this, never `fmt::format` directly.
template <class... Args>
std::string format(FormatText<Args...> text, const Args&... args) {
  return fmt::vformat(text, fmt::make_format_args(args...));
}

/// Throws `Exception` with a fmt-formatted message when `condition` is false.
template <class Exception = InvalidArgument, class... Args>
void require(bool condition, FormatText<Args...> text, const Args&... args) {
  if (!condition) throw Exception(detail::format(text, args...));
}

}  // namespace detail
}  // namespace igrad

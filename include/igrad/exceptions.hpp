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

#ifdef IGRAD_CHECK_FORMAT_STRINGS
/// `fmt::format`, its format string checked at compile time (igrad's own builds).
template <class... Args>
std::string format(fmt::format_string<Args...> text, const Args&... args) {
  return fmt::vformat(text, fmt::make_format_args(args...));
}

/// Throws `Exception` with a fmt-formatted message when `condition` is false.
template <class Exception = InvalidArgument, class... Args>
void require(bool condition, fmt::format_string<Args...> text, const Args&... args) {
  if (!condition) throw Exception(fmt::vformat(text, fmt::make_format_args(args...)));
}
#else
/// `fmt::format` with a format string read at run time.
///
/// Why a runtime format string: checking each of igrad's few hundred format strings at compile
/// time (`fmt::format_string`, a `consteval` parse per call) costs every translation unit that
/// includes <igrad/igrad.hpp> several percent of its compile time, although the strings are
/// igrad's own and never change. igrad's own builds define IGRAD_CHECK_FORMAT_STRINGS
/// (CMakeLists.txt), so every string is still checked there; the formatted text is the same
/// either way. igrad's headers call this, never `fmt::format` directly.
template <class... Args>
std::string format(fmt::string_view text, const Args&... args) {
  return fmt::vformat(text, fmt::make_format_args(args...));
}

/// Throws `Exception` with a fmt-formatted message when `condition` is false (format string read
/// at run time: see format()).
template <class Exception = InvalidArgument, class... Args>
void require(bool condition, fmt::string_view text, const Args&... args) {
  if (!condition) throw Exception(fmt::vformat(text, fmt::make_format_args(args...)));
}
#endif

}  // namespace detail
}  // namespace igrad

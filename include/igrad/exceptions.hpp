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
/// The format of a `require` message. igrad's own builds (tests, documentation code) define
/// `IGRAD_CHECK_FORMAT_STRINGS`, which checks every message's format string against its
/// arguments at compile time.
template <class... Args>
using MessageFormat = fmt::format_string<Args...>;
#else
/// The format of a `require` message: a plain string view in a user's build. fmt checks a
/// `format_string` with a consteval parse at each of igrad's ~300 `require` calls, which cost
/// every translation unit of the umbrella header seconds; igrad's own builds check them (see
/// above), so a user's build need not repeat it.
template <class... Args>
using MessageFormat = fmt::string_view;
#endif

/// Throws `Exception` with a fmt-formatted message when `condition` is false.
template <class Exception = InvalidArgument, class... Args>
void require(bool condition, MessageFormat<Args...> format, Args&&... args) {
  if (condition) return;
#ifdef IGRAD_CHECK_FORMAT_STRINGS
  throw Exception(fmt::format(format, std::forward<Args>(args)...));
#else
  throw Exception(fmt::vformat(format, fmt::make_format_args(args...)));
#endif
}

}  // namespace detail
}  // namespace igrad

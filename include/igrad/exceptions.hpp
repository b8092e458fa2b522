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

/// Throws `Exception` with a fmt-formatted message when `condition` is false.
template <class Exception = InvalidArgument, class... Args>
void require(bool condition, fmt::format_string<Args...> format, Args&&... args) {
  if (!condition) throw Exception(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace detail
}  // namespace igrad

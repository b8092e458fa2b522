#pragma once
/// @file version.hpp
/// @brief igrad's version, as numbers and as a string.

namespace igrad {
/// @brief Major version: a change breaks source compatibility.
inline constexpr int version_major = 0;
/// @brief Minor version: new features, source compatible.
inline constexpr int version_minor = 1;
/// @brief Patch version: fixes only.
inline constexpr int version_patch = 0;
/// @brief The version as "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";
}  // namespace igrad

#pragma once
/// @file version.hpp
/// @brief igrad's version, as numbers and as a string.
///
/// The one place the version is written: CMake reads the three macros below (project(igrad
/// VERSION ...)), so the package version and the headers cannot disagree.

/// @brief Major version: a change breaks source compatibility.
#define IGRAD_VERSION_MAJOR 0
/// @brief Minor version: new features, source compatible.
#define IGRAD_VERSION_MINOR 1
/// @brief Patch version: fixes only.
#define IGRAD_VERSION_PATCH 0

/// @cond internal
#define IGRAD_DETAIL_STRINGIFY_VALUE(x) #x
#define IGRAD_DETAIL_STRINGIFY(x) IGRAD_DETAIL_STRINGIFY_VALUE(x)
/// @endcond

namespace igrad {
/// @brief Major version: a change breaks source compatibility.
inline constexpr int version_major = IGRAD_VERSION_MAJOR;
/// @brief Minor version: new features, source compatible.
inline constexpr int version_minor = IGRAD_VERSION_MINOR;
/// @brief Patch version: fixes only.
inline constexpr int version_patch = IGRAD_VERSION_PATCH;
/// @brief The version as "major.minor.patch".
inline constexpr const char* version_string = IGRAD_DETAIL_STRINGIFY(IGRAD_VERSION_MAJOR) "." IGRAD_DETAIL_STRINGIFY(
    IGRAD_VERSION_MINOR) "." IGRAD_DETAIL_STRINGIFY(IGRAD_VERSION_PATCH);
}  // namespace igrad

#pragma once
// Force-included into the fuzzers by clang < 15 only (tests/fuzz/CMakeLists.txt). clang 14 in
// C++20 mode instantiates libstdc++ 12's constexpr std::vector<c10::IValue> members where
// LibTorch 1.13's headers still hold IValue incomplete (ATen/core/List.h), and fails. Together
// with -D_GLIBCXX20_CONSTEXPR= this turns off libstdc++'s C++20 constexpr containers and
// strings (an API-only difference: layouts and mangled names are the same), and gives back the
// one C++20 function their switch also hides.
#include <bits/c++config.h>
#undef _GLIBCXX_HAVE_IS_CONSTANT_EVALUATED
namespace std {
constexpr bool is_constant_evaluated() noexcept { return __builtin_is_constant_evaluated(); }
}  // namespace std
// fmt 9 keys its C++20 constexpr buffers (which need the constexpr std::allocator turned off
// above) on libstdc++'s release number: claim 9, as old as it looks for (pstl's check, >= 9,
// still holds).
#undef _GLIBCXX_RELEASE
#define _GLIBCXX_RELEASE 9

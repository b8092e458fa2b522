#!/usr/bin/env bash
# Collects, from this Debian machine, what tools/cuda/run-on-device.sh needs on a GPU machine that
# has CUDA, CMake, a compiler and PyTorch (whose LibTorch igrad builds against) but none of
# igrad's other dependencies and no network: the headers and CMake package files of Boost.Hana,
# fmt, doctest, CLI11, stb and zlib, the small shared libraries fmt, stb and zlib need, and the
# Fashion-MNIST files. They keep Debian's layout under .cuda-deps/usr, so the package files find
# their headers relative to themselves, and CMAKE_PREFIX_PATH=.cuda-deps/usr finds them all.
#
#   bash tools/cuda/collect-deps.sh        # writes .cuda-deps/ (ignored by git), about 40 MB
set -euo pipefail
cd "$(dirname "$0")/../.."
root=.cuda-deps
rm -rf "$root"
prefix=$root/usr
arch=$(gcc -print-multiarch)
mkdir -p "$prefix/include" "$prefix/lib/$arch" "$root/fashion-mnist"

# Every header of these libraries that igrad, its tests, examples and benchmarks reach, as the
# preprocessor sees it (Hana alone would otherwise pull in all of Boost).
probe=$(mktemp --suffix=.cpp)
trap 'rm -f "$probe"' EXIT
cat >"$probe" <<'CPP'
#include <boost/hana.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fmt/ostream.h>
#include <fmt/chrono.h>
#include <doctest/doctest.h>
#include <CLI/CLI.hpp>
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#include <stb/stb_easy_font.h>
#include <zlib.h>
CPP
g++ -std=c++20 -M "$probe" | tr ' \\' '\n\n' |
  grep -E '^/usr/include/(boost/|fmt/|doctest/|CLI/|stb/|zlib\.h|zconf\.h)' | sort -u |
  while read -r header; do
    mkdir -p "$prefix/include/$(dirname "${header#/usr/include/}")"
    cp "$header" "$prefix/include/${header#/usr/include/}"
  done
cp -r /usr/include/doctest "$prefix/include/"  # doctest's CMake helpers also read its headers

# CMake package files, at the paths Debian gives them (each computes its prefix from its place).
copy() { mkdir -p "$prefix/$(dirname "$1")" && cp -a "/usr/$1" "$prefix/$1"; }
for f in lib/$arch/cmake/fmt lib/$arch/cmake/Boost-1.74.0 lib/$arch/cmake/boost_headers-1.74.0 \
         lib/$arch/cmake/BoostDetectToolset-1.74.0.cmake lib/cmake/doctest share/cmake/CLI11; do
  copy "$f"
done
for lib in libfmt.so libfmt.so.9 libfmt.so.9.1.0 libstb.so libstb.so.0 libstb.so.0.0 \
           libz.so.1 libz.so.1.2.13; do
  copy "lib/$arch/$lib"
done
# Debian's doctest package file names /usr outright: make it relative like the others.
sed -i 's|^set(_IMPORT_PREFIX "/usr")|get_filename_component(_IMPORT_PREFIX "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)|' \
  "$prefix/lib/cmake/doctest/doctestTargets.cmake"
ln -sf libz.so.1 "$prefix/lib/$arch/libz.so"   # Debian's libz.so points at /lib; keep it local

cp /usr/share/datasets/fashion-mnist/*.gz "$root/fashion-mnist/"
du -sh "$root"

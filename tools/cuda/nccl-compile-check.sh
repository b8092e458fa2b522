#!/usr/bin/env bash
# Compiles igrad's NCCL branch (include/igrad/distributed/process_group.hpp, IGRAD_HAS_C10D_NCCL)
# on a machine whose LibTorch has no CUDA: a syntax and type check (g++ -fsyntax-only) against
# LibTorch's own ProcessGroupNCCL.hpp and a CUDA toolkit's headers (nccl.h, cuda_runtime.h). It
# links nothing and runs nothing; the GPU run is tools/cuda/run-on-device.sh.
#
#   tools/cuda/nccl-compile-check.sh [CUDA_INCLUDE_DIR] [CHROOT]
#
# CUDA_INCLUDE_DIR defaults to /usr/local/cuda/include. With CHROOT (e.g. the Debian 13 root of
# tools/ci/debian13.sh, for LibTorch 2.6 and g++ 14) the check runs inside that root, with the
# headers copied in for the time of the check. Debian's CPU-only LibTorch lacks the header CMake
# generates for CUDA builds (c10/cuda/impl/cuda_cmake_macros.h): an equivalent one is written
# for the check.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cuda_include=${1:-/usr/local/cuda/include}
chroot_dir=${2:-}
[[ -f $cuda_include/nccl.h ]] || { echo "no nccl.h in $cuda_include: give a CUDA toolkit's include folder" >&2; exit 2; }

work=$(mktemp -d "${chroot_dir:+$chroot_dir}/tmp/igrad-nccl-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/stub/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' >"$work/stub/c10/cuda/impl/cuda_cmake_macros.h"
cp -r "$cuda_include" "$work/cuda"
cp -r "$repo/include" "$work/igrad"
cat >"$work/check.cpp" <<'EOF'
#include <igrad/distributed.hpp>
static_assert(IGRAD_HAS_C10D_NCCL == 1, "the NCCL branch was not compiled (Gloo headers missing?)");
int main() { return static_cast<int>(igrad::distributed::ProcessGroup().rank()); }
EOF
inside=${work#"$chroot_dir"}  # the same folder as the compiler sees it
command=(g++ -std=c++20 -fsyntax-only -DUSE_C10D_GLOO -DUSE_C10D_NCCL -DNDEBUG
         -I "$inside/igrad" -isystem /usr/include/torch/csrc/api/include
         -isystem "$inside/cuda" -isystem "$inside/stub" "$inside/check.cpp")
if [[ -n $chroot_dir ]]; then chroot "$chroot_dir" "${command[@]}"; else "${command[@]}"; fi
echo "the NCCL branch compiles with g++ $(${chroot_dir:+chroot "$chroot_dir"} g++ -dumpfullversion) and LibTorch's ProcessGroupNCCL.hpp${chroot_dir:+ in $chroot_dir}"

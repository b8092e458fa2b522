#!/usr/bin/env bash
# Builds igrad against the LibTorch of a CUDA machine's PyTorch and, on its GPU, runs: the CUDA
# tests (tests/unit/cuda_device.cpp), the training and explanation benchmarks with --device cuda,
# the whole ctest suite (so the LibTorch 2.x build is checked too), and the demo on CUDA.
#
# The machine needs CUDA, CMake, Ninja, g++ and python3 with torch; nothing is fetched. Prepare
# the other dependencies on a Debian 12 machine first, then carry them along:
#   bash tools/cuda/collect-deps.sh                # writes .cuda-deps/ (ignored by git)
#   bash tools/cuda/run-on-device.sh               # on the GPU machine, from a copy of the tree
# Everything is logged to $OUT/log.txt (OUT defaults to ./cuda-out); the demo's report is packed
# into $OUT/demo-report.tar.gz. Each step has a time limit, so one slow step cannot eat the rest.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-$PWD/cuda-out}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
step() { echo; echo "=== $(date +%T) $*"; }
[[ -d .cuda-deps/usr ]] || { echo "no .cuda-deps/: run tools/cuda/collect-deps.sh first"; exit 2; }

step machine
nvidia-smi -L
g++ --version | head -1; cmake --version | head -1; echo "ninja $(ninja --version)"
python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())'
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
export CMAKE_PREFIX_PATH="$torch_prefix:$PWD/.cuda-deps/usr"   # the package test's consumer too
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH=/usr/local/cuda/bin:$PATH; fi
export CUDACXX=$(command -v nvcc)
# Tests and the demo read Fashion-MNIST where Debian's dataset-fashion-mnist puts it.
mkdir -p /usr/share/datasets/fashion-mnist && cp .cuda-deps/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/

step configure
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release || exit 1
step "build (every target; -k 0 reports every error at once)"
time cmake --build build-cuda -j "$(nproc)" -- -k 0
build_status=$?

step "CUDA tests"
timeout 240 build-cuda/tests/igrad_tests -tc='cuda:*' --duration=true | grep -v '^$'

step "benchmark: plain vs regularised training step on CUDA"
timeout 150 build-cuda/bench/igrad_bench_training --device cuda --threads 1 --steps 20
step "benchmark: explanations and metrics on CUDA"
timeout 240 build-cuda/bench/igrad_bench_explain --device cuda --threads 4 --images 10000 --scorecam-images 1000

step "ctest: the whole suite but the full demo (CPU parts included)"
export OMP_NUM_THREADS=2
timeout 300 ctest --test-dir build-cuda -j 8 -LE demo --timeout 280 --output-on-failure 2>&1 | tail -60

step "demo on CUDA"
timeout 200 build-cuda/examples/igrad_demo --device cuda --epochs 3 --output "$PWD/cuda-demo" | tail -40
tar -czf "$out/demo-report.tar.gz" cuda-demo 2>/dev/null
step "done (build status $build_status)"

#!/usr/bin/env bash
# Builds igrad's libFuzzer targets with clang-14 (-fsanitize=fuzzer,address,undefined) and runs
# them on tests/fuzz/corpus/<target>/, two at a time, niced, output to files.
#
#   tools/fuzz/run.sh [seconds per target, default 600] [targets..., default: all four]
#
# New inputs that reach new code are added to a scratch corpus (build-fuzz/corpus/<target>);
# crashes go to build-fuzz/crashes/<target>/. Keep crashers and a few small inputs in
# tests/fuzz/corpus/<target>/ once fixed: igrad_tests replays that directory in every build.
# IGRAD_FUZZ_SEEDS=1 rewrites the seed files of tests/fuzz/corpus from the current code first.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(idx cifar weights checkpoint)
build=${IGRAD_FUZZ_BUILD_DIR:-$root/build-fuzz}
jobs=${IGRAD_FUZZ_PARALLEL:-2}

mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++-14 -DIGRAD_BUILD_FUZZERS=ON -DIGRAD_BUILD_TESTS=OFF \
  -DIGRAD_BUILD_EXAMPLES=OFF -DIGRAD_BUILD_BENCHMARKS=OFF > "$build/configure.log"
nice cmake --build "$build" -j1 $(printf -- '--target fuzz_%s ' "${targets[@]}")

if [ "${IGRAD_FUZZ_SEEDS:-0}" = 1 ]; then
  IGRAD_FUZZ_WRITE_SEEDS="$root/tests/fuzz/corpus" "$build/tests/fuzz/fuzz_idx"
fi

# LibTorch itself is not instrumented; its one-time allocations at exit are not ours.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
run_one() {
  local target=$1
  mkdir -p "$build/corpus/$target" "$build/crashes/$target"
  echo "fuzz_$target: ${seconds} s, log $build/fuzz_$target.log"
  local rc=0
  nice -n 15 "$build/tests/fuzz/fuzz_$target" "$build/corpus/$target" \
    "$root/tests/fuzz/corpus/$target" -max_total_time="$seconds" -max_len=65536 \
    -rss_limit_mb=4096 -malloc_limit_mb=1024 -timeout=30 \
    -artifact_prefix="$build/crashes/$target/" -print_final_stats=1 \
    > "$build/fuzz_$target.log" 2>&1 || rc=$?
  echo "fuzz_$target: exit $rc; $(grep -E '^(stat::number_of_executed_units|#[0-9]+ +DONE)' \
    "$build/fuzz_$target.log" | tr '\n' ' ')"
  return $rc
}
status=0
running=0
for target in "${targets[@]}"; do
  run_one "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || status=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || status=1
  running=$((running - 1))
done
ls -l "$build"/crashes/*/ 2>/dev/null | grep -v '^total' || true
exit $status

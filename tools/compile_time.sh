#!/usr/bin/env bash
# What including igrad costs a translation unit, next to LibTorch alone.
#
#   tools/compile_time.sh [BUILD_DIR] [HEADER...]
#
# Compiles, side by side in one run, a TU that holds only `#include <torch/torch.h>` and one that
# holds only `#include <igrad/igrad.hpp>` (or each HEADER given, e.g. igrad/cam.hpp), with the
# flags a consumer of igrad::igrad gets in BUILD_DIR's Release configuration (read from its
# compile_commands.json: configure with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON; less
# IGRAD_CHECK_FORMAT_STRINGS, which only igrad's own targets define), at -O2 (OPT=-O3 to
# change it). Each TU is compiled RUNS times (default 3), alternating with the torch TU so that a
# change of load on the machine hits both alike; prints the median wall time and the median CPU
# time (user + system, which a loaded machine disturbs less) of each, their ratios to torch's,
# the median and range of the per-round CPU-time ratios to the torch compilation just before
# ("paired"), and the peak memory of the compiler (/usr/bin/time -v). No precompiled header is
# used: this is what a user's first TU pays. FTIME_REPORT=1 adds g++'s -ftime-report of the last
# run of each header (under $OUT_DIR, default a temporary directory).
set -euo pipefail

build_dir=${1:-build}
shift || true
headers=("$@")
[[ ${#headers[@]} -eq 0 ]] && headers=(igrad/igrad.hpp)
runs=${RUNS:-3}
opt=${OPT:--O2}
repo=$(cd "$(dirname "$0")/.." && pwd)

commands="$build_dir/compile_commands.json"
if [[ ! -f $commands ]]; then
  echo "compile_time.sh: $commands not found; configure with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON" >&2
  exit 2
fi
# The flags of the documentation-code TU: igrad::igrad's usage requirements, no precompiled header.
read -r -a flags < <(python3 - "$commands" "$opt" <<'EOF'
import json, shlex, sys
entries = json.load(open(sys.argv[1]))
entry = next((e for e in entries if e["file"].endswith("documentation_code.cpp")), None)
if entry is None:
    sys.exit("compile_time.sh: no documentation_code.cpp in compile_commands.json "
             "(configure with IGRAD_BUILD_TESTS=ON)")
words = shlex.split(entry["command"])
out, skip = [], False
for w in words[1:]:
    if skip: skip = False; continue
    if w in ("-o", "-c"): skip = True; continue
    if w.startswith("-O"): w = sys.argv[2]
    if w.startswith("-Werror"): continue
    # igrad's own builds check its format strings at compile time; a consumer's do not.
    if w == "-DIGRAD_CHECK_FORMAT_STRINGS": continue
    out.append(w)
print(words[0], " ".join(shlex.quote(w) for w in out))
EOF
)
compiler=${flags[0]}
flags=("${flags[@]:1}")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out_dir=${OUT_DIR:-$work}
mkdir -p "$out_dir"

# compile NAME HEADER: one compilation; appends "seconds peak_kib" to $work/NAME.times.
compile() {
  local name=$1 header=$2 extra=()
  printf '#include <%s>\n' "$header" > "$work/$name.cpp"
  [[ ${FTIME_REPORT:-0} == 1 ]] && extra=(-ftime-report)
  /usr/bin/time -v -o "$work/$name.time" "$compiler" "${flags[@]}" "${extra[@]}" \
    -c "$work/$name.cpp" -o "$work/$name.o" 2> "$out_dir/$name.report" || {
    echo "compile_time.sh: $header did not compile:" >&2
    cat "$out_dir/$name.report" >&2
    exit 1
  }
  local wall cpu peak
  wall=$(sed -n 's/.*Elapsed (wall clock) time.*: //p' "$work/$name.time" |
         awk -F: '{ s = 0; for (i = 1; i <= NF; ++i) s = s * 60 + $i; print s }')
  cpu=$(awk -F': ' '/User time|System time/ { s += $2 } END { print s }' "$work/$name.time")
  peak=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/$name.time")
  echo "$wall $peak $cpu" >> "$work/$name.times"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

names=()
for header in "${headers[@]}"; do names+=("$(echo "$header" | tr '/.' '__')"); done
for ((r = 1; r <= runs; ++r)); do
  for i in "${!headers[@]}"; do
    compile torch torch/torch.h
    compile "${names[$i]}" "${headers[$i]}"
  done
done

echo "compiler: $compiler $opt (flags of $build_dir's igrad_documentation_code, no PCH)"
echo "runs: $runs per header (median), alternated with torch/torch.h"
echo "wall: elapsed seconds; cpu: user + system seconds of the compiler (steadier on a loaded machine)"
column_median() { cut -d' ' -f"$2" "$work/$1.times" | median; }
torch_wall=$(column_median torch 1)
torch_cpu=$(column_median torch 3)
peak_mib() { cut -d' ' -f2 "$work/$1.times" | sort -n | tail -1 | awk '{ printf "%.0f", $1 / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# The CPU-time ratio of each round to the torch compilation just before it: a change of the host's
# speed between rounds (frequent on a shared machine) moves both alike, so the median of these
# paired ratios is steadier than the ratio of the two medians; their range shows the noise.
paired_ratios() {
  local i=$1 r torch_line
  for ((r = 1; r <= runs; ++r)); do
    torch_line=$(((r - 1) * ${#headers[@]} + i + 1))
    awk -v a="$(sed -n "${r}p" "$work/${names[$i]}.times" | cut -d' ' -f3)" \
        -v b="$(sed -n "${torch_line}p" "$work/torch.times" | cut -d' ' -f3)" 'BEGIN { print a / b }'
  done
}
printf '%-28s %8s %8s %8s %8s %9s %8s %s\n' header wall ratio cpu ratio "peak MiB" paired range
printf '%-28s %8.2f %8s %8.2f %8s %9s %8s\n' torch/torch.h "$torch_wall" 1.00 "$torch_cpu" 1.00 \
  "$(peak_mib torch)" 1.00
for i in "${!headers[@]}"; do
  wall=$(column_median "${names[$i]}" 1)
  cpu=$(column_median "${names[$i]}" 3)
  pairs=$(paired_ratios "$i" | sort -g)
  printf '%-28s %8.2f %8s %8.2f %8s %9s %8.2f %s\n' "${headers[$i]}" "$wall" \
    "$(ratio "$wall" "$torch_wall")" "$cpu" "$(ratio "$cpu" "$torch_cpu")" \
    "$(peak_mib "${names[$i]}")" "$(echo "$pairs" | median)" \
    "$(echo "$pairs" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }')"
done
echo "paired: median over rounds of the cpu ratio to the torch/torch.h compilation just before"
[[ ${FTIME_REPORT:-0} == 1 ]] && echo "-ftime-report of the last runs: $out_dir/*.report"
exit 0

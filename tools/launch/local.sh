#!/usr/bin/env bash
# Launches N copies of a program on this machine as one igrad process group, the way torchrun
# does, with the variables set by hand: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a
# free MASTER_PORT. Each rank gets OMP_NUM_THREADS=1 unless it is set. Rank 0 writes to this
# script's output; rank r > 0 to $IGRAD_LAUNCH_LOGS/rank<r>.log (default: a temporary folder,
# printed when that rank fails).
#
#   tools/launch/local.sh [--timeout SECONDS] N PROGRAM [ARGS...]
#
# Exits with the first non-zero exit status of any rank (124 when the timeout passed); stops
# every rank when one fails, on a timeout and on Ctrl-C, so that no process outlives it.
set -uo pipefail

timeout=0
if [ "${1:-}" = --timeout ]; then timeout=$2; shift 2; fi
if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: tools/launch/local.sh [--timeout SECONDS] N PROGRAM [ARGS...] (N >= 1 processes)" >&2
  exit 2
fi
world=$1
shift

# A free TCP port: one nothing is listening on, from the ephemeral range.
port=
for _ in $(seq 1 50); do
  candidate=$((20000 + RANDOM % 30000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
done
[ -n "$port" ] || { echo "tools/launch/local.sh: found no free port" >&2; exit 2; }

logs=${IGRAD_LAUNCH_LOGS:-$(mktemp -d)}
mkdir -p "$logs"
pids=()
stop_all() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; }
trap 'stop_all; exit 130' INT TERM

for ((r = 0; r < world; r++)); do
  (
    export RANK=$r LOCAL_RANK=$r WORLD_SIZE=$world MASTER_ADDR=127.0.0.1 MASTER_PORT=$port
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    if [ "$r" = 0 ]; then exec "$@"; else exec "$@" >"$logs/rank$r.log" 2>&1; fi
  ) &
  pids+=($!)
done

# Wait for all; the first failure (or the deadline) stops the others.
status=0
start=$SECONDS
while :; do
  running=0
  for i in "${!pids[@]}"; do
    p=${pids[i]}
    [ -z "$p" ] && continue
    if kill -0 "$p" 2>/dev/null; then running=1; continue; fi
    wait "$p"
    rc=$?
    pids[i]=
    if [ $rc -ne 0 ] && [ $status -eq 0 ]; then
      status=$rc
      echo "tools/launch/local.sh: rank $i exited with status $rc; stopping the others" >&2
      [ "$i" != 0 ] && [ -f "$logs/rank$i.log" ] && tail -n 20 "$logs/rank$i.log" >&2
      stop_all
    fi
  done
  [ $running = 0 ] && break
  if [ "$timeout" != 0 ] && [ $((SECONDS - start)) -ge "$timeout" ]; then
    echo "tools/launch/local.sh: ranks still running after $timeout s; stopping them" >&2
    stop_all
    sleep 2
    for p in "${pids[@]}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null; done
    wait
    exit 124
  fi
  sleep 0.2
done
exit $status

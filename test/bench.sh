#!/usr/bin/env bash
# One benchmark run as recorded in docs/benchmarks.md: Herald pinned to core 0,
# the load generator to core 1, release builds, loopback only.
# Usage: test/bench.sh CLIENTS CHANNELS [extra herald-loadgen run flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-19000}; channels=${2:-1}; shift 2 || true
# HERALD_BIN runs another server binary (a before/after comparison).
cargo build --release -q -p herald-gateway -p herald-loadgen
taskset -c 0 "${HERALD_BIN:-target/release/herald}" --log-level warn --port 6001 --metrics-port 9601 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
sleep 1
workers=$(( (clients + 9499) / 9500 ))
taskset -c 1 target/release/herald-loadgen run --clients "$clients" --channels "$channels" \
  --workers "$workers" --server-pid "$pid" "$@"
# Herald's own fan-out time (serialize + enqueue to every local subscriber).
curl -s localhost:9601/metrics | awk '
  /^herald_broadcast_fanout_seconds_sum/ {sum=$NF}
  /^herald_broadcast_fanout_seconds_count/ {n=$NF}
  END { if (n > 0) printf "herald fan-out: %d broadcasts, mean %.3f ms\n", n, sum / n * 1000 }'

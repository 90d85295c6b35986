#!/usr/bin/env bash
# Cluster benchmarks as recorded in docs/benchmarks.md: Herald nodes (and the
# fabric server) pinned to core 0, the load generator to core 1, release
# builds, loopback only. Starts its own redis-server / nats-server on free
# ports and stops everything on exit.
#
# Usage: test/cluster-bench.sh FABRIC SCENARIO [extra herald-loadgen flags]
#   FABRIC   single | redis | nats
#   SCENARIO fanout   19,000 subscribers on one channel (2 nodes x 9,500, or
#                     one node), broadcasts triggered on the first node
#            latency  100 subscribers on node A, 10 events/s triggered on
#                     node B (on the one node for `single`)
set -euo pipefail
cd "$(dirname "$0")/.."
fabric=${1:?single|redis|nats}; scenario=${2:?fanout|latency}; shift 2
cargo build --release -q -p herald-gateway -p herald-loadgen
bin=${HERALD_BIN:-target/release/herald}  # e.g. an older build, for a before/after
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fabric_env=()
case "$fabric" in
  single) ;;
  redis)
    rp=$(port); taskset -c 0 redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning &
    pids+=($!); fabric_env=(--adapter redis --redis-url "redis://127.0.0.1:$rp" --adapter-prefix "bench$$") ;;
  nats)
    np=$(port); taskset -c 0 nats-server -a 127.0.0.1 -p "$np" >/dev/null 2>&1 &
    pids+=($!); fabric_env=(--adapter nats --nats-servers "nats://127.0.0.1:$np" --adapter-prefix "bench$$") ;;
  *) echo "unknown fabric $fabric" >&2; exit 2 ;;
esac
sleep 0.5
nodes=2; [ "$fabric" = single ] && nodes=1
urls=(); rests=()
for i in $(seq 1 $nodes); do
  p=$(port); m=$(port)
  taskset -c 0 "$bin" --log-level warn --host 127.0.0.1 --port "$p" --metrics-port "$m" \
    --node-id "bench$i" ${fabric_env[@]+"${fabric_env[@]}"} &
  pids+=($!); urls+=("ws://127.0.0.1:$p"); rests+=("http://127.0.0.1:$p")
done
for r in "${rests[@]}"; do
  for _ in $(seq 1 100); do curl -sf "$r/ready" >/dev/null && break; sleep 0.1; done
done
sleep 1
case "$scenario" in
  fanout)
    taskset -c 1 target/release/herald-loadgen run --clients 19000 --channels 1 --workers 2 \
      --url "$(IFS=,; echo "${urls[*]}")" --rest-url "${rests[0]}" --rounds 40 --interval-ms 500 "$@" ;;
  latency)
    taskset -c 1 target/release/herald-loadgen run --clients 100 --channels 1 --workers 1 \
      --url "${urls[0]}" --rest-url "${rests[$((nodes - 1))]}" --rounds 300 --interval-ms 100 "$@" ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac

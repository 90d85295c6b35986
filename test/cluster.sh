#!/usr/bin/env bash
# A three-node Herald cluster as plain processes: the twin of
# docker-compose.yml for machines without Docker.
#
#   test/cluster.sh            # Redis fabric; runs until Ctrl-C
#   test/cluster.sh --nats     # NATS fabric
#   test/cluster.sh --check    # start, verify the cluster formed, stop (exit 1 on failure)
#   test/cluster.sh --demo     # also serve the live demo page (test/demo) on DEMO_PORT (8080)
#
# Builds target/release/herald, starts redis-server (or nats-server) on a
# free local port and three nodes on 127.0.0.1 ports 6001-6003 (metrics
# 9601-9603) with one adapter prefix and one app, and stops all of them on
# exit.  Environment: BASE_PORT (6001), METRICS_BASE_PORT (9601),
# HERALD_APP_ID / HERALD_APP_KEY / HERALD_APP_SECRET (app-id / app-key /
# app-secret), HERALD_ADAPTER_PREFIX (herald-local), NODES (3), DEMO_PORT (8080).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ADAPTER=redis
CHECK=0
DEMO=0
for arg in "$@"; do
    case "$arg" in
        --nats) ADAPTER=nats ;;
        --redis) ADAPTER=redis ;;
        --check) CHECK=1 ;;
        --demo) DEMO=1 ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "cluster.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

NODES=${NODES:-3}
BASE_PORT=${BASE_PORT:-6001}
METRICS_BASE_PORT=${METRICS_BASE_PORT:-9601}
APP_ID=${HERALD_APP_ID:-app-id}
APP_KEY=${HERALD_APP_KEY:-app-key}
APP_SECRET=${HERALD_APP_SECRET:-app-secret}
PREFIX=${HERALD_ADAPTER_PREFIX:-herald-local}

die() { echo "cluster.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found; install $2"; }
need cargo "a Rust toolchain (https://rustup.rs)"
need curl "the curl package (apt-get install -y curl)"
need python3 "python3"
if ((DEMO)); then need node "Node.js (apt-get install -y nodejs npm)"; need npm "npm"; fi
if [[ $ADAPTER == redis ]]; then need redis-server "the redis-server package"; else need nats-server "the nats-server package"; fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for ((i = 0; i < NODES; i++)); do
    for p in $((BASE_PORT + i)) $((METRICS_BASE_PORT + i)); do
        port_busy "$p" && die "port $p is already in use (set BASE_PORT / METRICS_BASE_PORT)"
    done
done

echo "==> cargo build --release --bin herald"
(cd "$ROOT" && cargo build --release --bin herald)
HERALD="${CARGO_TARGET_DIR:-$ROOT/target}/release/herald"
[[ -x $HERALD ]] || die "no binary at $HERALD"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-cluster.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        echo "==> stopping ${#PIDS[@]} processes"
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            local alive=0
            for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        kill -KILL "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
    if ((rc != 0 && rc != 130 && rc != 143)) && [[ -d $WORK ]]; then
        echo "==> logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FABRIC_PORT=$(free_port)
if [[ $ADAPTER == redis ]]; then
    redis-server --bind 127.0.0.1 --port "$FABRIC_PORT" --save "" --appendonly no \
        >"$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    FABRIC_ENV=(HERALD_REDIS_URL="redis://127.0.0.1:$FABRIC_PORT")
    FABRIC_URL="redis://127.0.0.1:$FABRIC_PORT"
else
    nats-server -a 127.0.0.1 -p "$FABRIC_PORT" >"$WORK/nats.log" 2>&1 &
    PIDS+=($!)
    FABRIC_ENV=(HERALD_NATS_SERVERS="nats://127.0.0.1:$FABRIC_PORT")
    FABRIC_URL="nats://127.0.0.1:$FABRIC_PORT"
fi
echo "==> $ADAPTER fabric at $FABRIC_URL (pid ${PIDS[0]})"

for ((i = 1; i <= NODES; i++)); do
    env HERALD_HOST=127.0.0.1 \
        HERALD_PORT=$((BASE_PORT + i - 1)) \
        HERALD_METRICS_PORT=$((METRICS_BASE_PORT + i - 1)) \
        HERALD_NODE_ID="node-$i" \
        HERALD_ADAPTER="$ADAPTER" \
        "${FABRIC_ENV[@]}" \
        HERALD_ADAPTER_PREFIX="$PREFIX" \
        HERALD_APP_ID="$APP_ID" HERALD_APP_KEY="$APP_KEY" HERALD_APP_SECRET="$APP_SECRET" \
        HERALD_SHUTDOWN_GRACE="${HERALD_SHUTDOWN_GRACE:-2}" \
        "$HERALD" >"$WORK/node-$i.log" 2>&1 &
    PIDS+=($!)
done

status() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true; }
cluster_nodes() {
    curl -s --max-time 2 "$1" | awk '$1 ~ /^herald_cluster_nodes($|\{)/ { print $2; exit }' || true
}
# Waits up to $1 seconds for every node's /ready to be 200.
wait_ready() {
    local deadline=$((SECONDS + $1)) i
    for ((i = 1; i <= NODES; i++)); do
        until [[ $(status "http://127.0.0.1:$((BASE_PORT + i - 1))/ready") == 200 ]]; do
            kill -0 "${PIDS[$i]}" 2>/dev/null || { echo "node-$i exited; its log:" >&2; cat "$WORK/node-$i.log" >&2; return 1; }
            ((SECONDS < deadline)) || return 1
            sleep 0.2
        done
    done
}
wait_ready 30 || die "not every node became ready within 30 s (logs: $WORK)"

echo
echo "Herald cluster: $NODES nodes on $ADAPTER ($FABRIC_URL), prefix $PREFIX, app $APP_ID / $APP_KEY / $APP_SECRET"
for ((i = 1; i <= NODES; i++)); do
    port=$((BASE_PORT + i - 1)) mport=$((METRICS_BASE_PORT + i - 1))
    echo "  node-$i  WebSocket ws://127.0.0.1:$port/app/$APP_KEY  REST http://127.0.0.1:$port/apps/$APP_ID/  metrics http://127.0.0.1:$mport/metrics  (pid ${PIDS[$i]}, log $WORK/node-$i.log)"
done
echo

if ((CHECK)); then
    fail=0
    for ((i = 1; i <= NODES; i++)); do
        url="http://127.0.0.1:$((BASE_PORT + i - 1))/ready"
        code=$(status "$url")
        if [[ $code == 200 ]]; then echo "ok    node-$i GET /ready -> 200"; else echo "FAIL  node-$i GET /ready -> $code"; fail=1; fi
    done
    # Heartbeats every second: each node should see all of them soon.
    for ((i = 1; i <= NODES; i++)); do
        url="http://127.0.0.1:$((METRICS_BASE_PORT + i - 1))/metrics"
        deadline=$((SECONDS + 15)) seen=""
        while :; do
            seen=$(cluster_nodes "$url")
            [[ $seen == "$NODES" ]] && break
            ((SECONDS < deadline)) || break
            sleep 0.5
        done
        if [[ $seen == "$NODES" ]]; then echo "ok    node-$i herald_cluster_nodes $seen"; else echo "FAIL  node-$i herald_cluster_nodes ${seen:-missing} (want $NODES)"; fail=1; fi
    done
    # A signed REST event on node 1 is published into the fabric (503 if it could not be).
    body='{"name":"cluster-check","channels":["cluster-check"],"data":"{}"}'
    query=$(APP_KEY=$APP_KEY APP_SECRET=$APP_SECRET APP_ID=$APP_ID BODY=$body python3 -c '
import hashlib, hmac, os, time
q = "auth_key=%s&auth_timestamp=%d&auth_version=1.0&body_md5=%s" % (
    os.environ["APP_KEY"], time.time(), hashlib.md5(os.environ["BODY"].encode()).hexdigest())
sig = hmac.new(os.environ["APP_SECRET"].encode(), ("POST\n/apps/%s/events\n%s" % (os.environ["APP_ID"], q)).encode(), hashlib.sha256).hexdigest()
print(q + "&auth_signature=" + sig)')
    code=$(curl -s -o "$WORK/event.out" -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' \
        -d "$body" "http://127.0.0.1:$BASE_PORT/apps/$APP_ID/events?$query" || true)
    if [[ $code == 200 ]]; then echo "ok    node-1 POST /apps/$APP_ID/events -> 200"; else echo "FAIL  node-1 POST /apps/$APP_ID/events -> $code $(cat "$WORK/event.out" 2>/dev/null)"; fail=1; fi
    if ((fail)); then echo "cluster check FAILED ($ADAPTER)"; exit 1; fi
    echo "cluster check passed ($ADAPTER, $NODES nodes)"
    exit 0
fi

if ((DEMO)); then
    DEMO_PORT=${DEMO_PORT:-8080}
    port_busy "$DEMO_PORT" && die "port $DEMO_PORT is already in use (set DEMO_PORT)"
    if [[ ! -d $ROOT/test/demo/node_modules ]]; then
        echo "==> npm ci (test/demo)"
        (cd "$ROOT/test/demo" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    nodes=""
    for ((i = 1; i <= NODES; i++)); do nodes+="${nodes:+,}127.0.0.1:$((BASE_PORT + i - 1))"; done
    HERALD_NODES=$nodes DEMO_PORT=$DEMO_PORT HERALD_APP_ID=$APP_ID HERALD_APP_KEY=$APP_KEY HERALD_APP_SECRET=$APP_SECRET \
        node "$ROOT/test/demo/server.mjs" >"$WORK/demo.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do port_busy "$DEMO_PORT" && break; sleep 0.1; done
    port_busy "$DEMO_PORT" || { cat "$WORK/demo.log" >&2; die "the demo server did not start"; }
    echo "  demo page  http://127.0.0.1:$DEMO_PORT/  (one panel per node; log $WORK/demo.log)"
    echo
fi

echo "Ctrl-C stops everything."
# Stop as soon as any process of the cluster exits on its own.
wait -n "${PIDS[@]}" || true
echo "cluster.sh: a process exited; stopping the rest" >&2
exit 1

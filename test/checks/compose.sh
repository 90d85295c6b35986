#!/usr/bin/env bash
# Static checks of the Docker Compose deployment (no Docker engine needed):
#   1. docker-compose config -q      Compose accepts the file (and the NATS override)
#   2. check-jsonschema              both files match the Compose specification
#   3. compose_consistency.py        nodes, HAProxy, Prometheus and Grafana agree
#   4. haproxy -c                    (Debian package haproxy)
# Installs nothing; exits non-zero on the first failing step.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

missing() { echo "compose.sh: $1 not found; install it with: $2" >&2; exit 2; }
if command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    missing docker-compose "apt-get install -y docker-compose"
fi
command -v check-jsonschema >/dev/null 2>&1 || missing check-jsonschema "pip install check-jsonschema"
command -v python3 >/dev/null 2>&1 || missing python3 "apt-get install -y python3"
python3 -c 'import yaml' 2>/dev/null || missing "the python3 yaml module" "apt-get install -y python3-yaml (or pip install pyyaml)"

BASE=docker-compose.yml
NATS=docker-compose.nats.yml
step() { echo "==> $*"; "$@"; }

step "${COMPOSE[@]}" -f "$BASE" config -q
step "${COMPOSE[@]}" -f "$BASE" -f "$NATS" config -q
step check-jsonschema --builtin-schema vendor.compose-spec "$BASE" "$NATS"
step python3 test/checks/compose_consistency.py "$BASE"
step python3 test/checks/compose_consistency.py "$BASE" "$NATS"
# HAProxy's own parser (the nodes' names do not resolve outside Compose;
# init-addr none allows that).
command -v haproxy >/dev/null 2>&1 || { echo "compose.sh: haproxy missing: apt-get install haproxy" >&2; exit 2; }
step haproxy -c -q -f deploy/haproxy/haproxy.cfg
echo "compose checks passed"

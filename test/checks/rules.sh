#!/usr/bin/env bash
# Checks Herald's Prometheus alerting rules: syntax and PromQL
# (`promtool check rules`) and their unit tests (`promtool test rules`).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

rules=deploy/prometheus/rules/herald.yml
tests=deploy/prometheus/rules/herald.test.yml

if ! command -v promtool >/dev/null 2>&1; then
  echo "error: promtool not found; install the Debian package 'prometheus' (apt-get install prometheus)" >&2
  exit 2
fi

status=0
echo "==> promtool check rules $rules"
promtool check rules "$rules" || status=1
echo "==> promtool test rules $tests"
promtool test rules "$tests" || status=1

if [ "$status" -ne 0 ]; then
  echo "error: Prometheus rule checks failed" >&2
fi
exit "$status"

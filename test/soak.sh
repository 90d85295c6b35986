#!/usr/bin/env bash
# Soak: three Herald nodes on Redis, churning clients, Redis restarted every
# 15 s; checks at the end that nothing is left behind and memory is bounded.
# Usage: test/soak.sh [SECONDS]   (default 3600; the test command runs 40 s)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --bin herald
SOAK_SECS=${1:-3600} cargo test -q -p herald-e2e --test soak -- --nocapture

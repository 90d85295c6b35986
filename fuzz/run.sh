#!/usr/bin/env bash
# Fuzzes every network-input parser with libFuzzer (cargo-fuzz, stable
# toolchain, no sanitizer: the targets are safe Rust, so a panic is the bug
# class). Exits non-zero on the first crash, leaving the input in
# fuzz/artifacts/<target>/.
#
#   fuzz/run.sh            # 20 s per target (what the test command runs)
#   fuzz/run.sh 3600       # an hour per target
#   fuzz/run.sh 600 rest_auth
#
# Seeds come from fuzz/seeds/<target>/ (committed); what a run learns goes to
# fuzz/corpus/<target>/ (not committed) and is reused by the next run.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-20}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    mapfile -t TARGETS < <(cargo fuzz list)
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
echo "==> cargo fuzz build (${TARGETS[*]})"
cargo fuzz build --sanitizer none
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    echo "==> fuzz $target for ${SECS}s"
    log="artifacts/$target/last-run.log"
    status=0
    cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$SECS" -max_len=8192 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E "^(Done [0-9]+ runs|stat::new_units_added|==[0-9]+== ERROR|SUMMARY|thread '.*' panicked|Test unit written)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz/run.sh: $target FAILED (exit $status); input in fuzz/artifacts/$target/, log $log" >&2
        exit 1
    fi
done
echo "fuzz/run.sh: ${#TARGETS[@]} targets, ${SECS}s each, no crash"

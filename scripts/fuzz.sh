#!/usr/bin/env bash
# Runs every cargo-fuzz target for a fixed number of executions and reports runs and crashes.
# Optional (needs a nightly toolchain and cargo-fuzz); not part of CI.
#   bash scripts/fuzz.sh [RUNS_PER_TARGET]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
runs=${1:-200000}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
status=0
for target in framer command reply session; do
    log=$(mktemp)
    if cargo +nightly fuzz run "$target" -- -runs="$runs" -max_len=2048 >"$log" 2>&1; then
        done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -1)
        echo "$target: ${done_line:-finished}, 0 crashes"
    else
        echo "$target: CRASH (see fuzz/artifacts/$target)"; tail -20 "$log"; status=1
    fi
    rm -f "$log"
done
exit $status

#!/usr/bin/env bash
# The core benchmark (see BENCHMARKS.md): pinhole install latency and 1 KiB transfers/s through
# ftp-alg, against the kernel's FTP helper measured in the same run on the same lab topology,
# with 1 to 64 control sessions in parallel (the concurrency sweep).
#
#   sudo bash scripts/bench.sh            # full run (a few minutes once built)
#   sudo bash scripts/bench.sh --quick    # smoke run (well under a minute once built)
#
# Needs root: the lab builds its own network namespaces (deleted again on exit) and nftables
# tables inside them; nothing is configured in the host's own namespace.
#
# The numbers are only as good as the machine is quiet. Before starting, the script waits (up
# to FTP_ALG_BENCH_QUIET_WAIT seconds, default 120; 0 = don't wait) for the 1-minute load
# average to drop below half the CPU count, then runs anyway; the load before and after is in
# the report. Other knobs (environment): FTP_ALG_BENCH_SECS (time bound of a run, default 5),
# FTP_ALG_BENCH_MAX (count bound of a run, default 10000), FTP_ALG_BENCH_ROUNDS (default 3),
# FTP_ALG_BENCH_SESSIONS (the sweep's session counts, default "1,2,4,8,16,32,64"),
# FTP_ALG_BENCH_RELAY_SECS (time bound of a relay-proxy run, default 2), FTP_ALG_BENCH_RELAY=0,
# FTP_ALG_BENCH_PINHOLES, FTP_ALG_BENCH_NFT_SPAWNS, FTP_ALG_BENCH_BINARY (benchmark another
# ftp-alg build or a wrapper script), FTP_ALG_BENCH_ALG_ARGS (options added to every ftp-alg
# start, e.g. "--busy-poll-us 100"),
# FTP_ALG_BENCH_HALT_POLL_NS (run with the haltpoll cpuidle driver's guest_halt_poll_ns at this
# value, restored on exit; see scripts/lib.sh halt_poll_for_run).
#
# Output: Markdown tables on stdout, all numbers in target/bench/core.json, the sweep drawn in
# target/bench/concurrency.svg (rsvg-convert -o concurrency.png concurrency.svg to look at it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_root "$@"
# ftp-proxy: the userspace relay proxy, the sweep's third route (skipped when missing, or with
# FTP_ALG_BENCH_RELAY=0).
apt_install nftables iproute2 procps vsftpd ftp-proxy
require_cargo

# Build first, so the compiler's load is gone before the wait and the measurement.
cargo bench --bench core --no-run

halt_poll_for_run
wait_quiet bench

cargo bench --bench core -- "$@"

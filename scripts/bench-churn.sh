#!/usr/bin/env bash
# The session-churn benchmark (see BENCHMARKS.md, issue 7 target 5: ≥ 1,000 new sessions per
# second on one core): K concurrent clients loop complete FTP sessions (connect, 220, USER/PASS,
# PASV, data connect, LIST, 226, QUIT, 221) against a tiny non-forking FTP server, through
# ftp-alg (the daemon pinned to one CPU), through the kernel FTP helper and through a userspace
# relay proxy (Debian's ftp-proxy, forking per session, pinned to the same CPU), rounds
# alternating; new sessions/s, latency, the daemon's CPU time per session and the CPU use of
# every part.
#
#   sudo bash scripts/bench-churn.sh            # full run (about 2 minutes once built)
#   sudo bash scripts/bench-churn.sh --quick    # smoke run (< 30 s once built)
#
# Needs root: the lab builds its own network namespaces (deleted again on exit) and nftables
# tables inside them; nothing is configured in the host's own namespace.
#
# Knobs (environment): FTP_ALG_CHURN_CLIENTS ("1,8,32": the concurrency sweep, at most 256 each),
# FTP_ALG_CHURN_ROUNDS (3), FTP_ALG_CHURN_SECS (4), FTP_ALG_CHURN_MAX (25000 sessions per run,
# which keeps the gateway's conntrack table below nf_conntrack_max),
# FTP_ALG_CHURN_LOAD_THREADS (1), FTP_ALG_CHURN_SERVER_THREADS (1), FTP_ALG_CHURN_DAEMON_CPU (0),
# FTP_ALG_CHURN_PEER_CPU (unset: pin the load generator and server threads to this CPU),
# FTP_ALG_CHURN_VARIANTS ("alg,helper,relay"; relay is skipped without /usr/sbin/ftp-proxy or with
# FTP_ALG_BENCH_RELAY=0), FTP_ALG_CHURN_DAEMON_ARGS (more daemon arguments),
# FTP_ALG_BENCH_BINARY (another ftp-alg build), FTP_ALG_BENCH_ALG_ARGS (options added to every
# ftp-alg start), FTP_ALG_BENCH_QUIET_WAIT (120; 0 = don't wait),
# FTP_ALG_BENCH_HALT_POLL_NS (run with the haltpoll cpuidle driver's guest_halt_poll_ns at this
# value, restored on exit; see scripts/lib.sh halt_poll_for_run).
#
# Output: Markdown tables on stdout, all numbers in target/bench/churn.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_root "$@"
# ftp-proxy: the relay variant (skipped when missing, or with FTP_ALG_BENCH_RELAY=0).
apt_install nftables iproute2 procps ftp-proxy
require_cargo

# Build first, so the compiler's load is gone before the wait and the measurement.
cargo bench --bench churn --no-run

halt_poll_for_run
wait_quiet bench-churn

cargo bench --bench churn -- "$@"

#!/usr/bin/env bash
# The scale benchmark (see BENCHMARKS.md "Scale"): bulk RETR (PASV and PORT) and STOR through an
# ftp-alg pinhole vs plain kernel forwarding and the kernel FTP helper (with the daemon's CPU
# time during the transfer) and, for RETR PASV, a userspace relay proxy (Debian's ftp-proxy in
# the gateway, with its processes' CPU time), the same RETRs and the pinhole install latency with
# 100,000 live pinholes in the daemon's table vs empty, NOOP round trip through the proxy vs
# direct to a vsftpd on the same bed, interleaved NOOP by NOOP (one session, then with 1,000 idle
# sessions held through the ALG), daemon RSS per idle
# session (1,000 and up to 10,000 sessions), and new sessions per second vs the kernel helper.
#
#   sudo bash scripts/bench-scale.sh            # full run (a few minutes once built)
#   sudo bash scripts/bench-scale.sh --quick    # smoke run (seconds)
#
# Needs root: the lab builds its own network namespaces (deleted again on exit) and nftables
# tables inside them; nothing is configured in the host's own namespace.
#
# Knobs (environment): FTP_ALG_SCALE_BULK_MIB (1024), FTP_ALG_SCALE_BULK_ROUNDS (5),
# FTP_ALG_SCALE_NOOPS (5000), FTP_ALG_SCALE_LOADED_SESSIONS (1000), FTP_ALG_SCALE_IDLE
# ("1000,10000"), FTP_ALG_SCALE_SESSION_SECS (5), FTP_ALG_SCALE_SESSION_MAX (5000),
# FTP_ALG_SCALE_STOR_SINK (tmpfs: a file in /dev/shm; disk: vsftpd's directory under the temp
# dir; devnull: APPE /dev/null, since vsftpd's STOR cannot ftruncate a device),
# FTP_ALG_SCALE_STATE_PINHOLES (100000), FTP_ALG_SCALE_STATE_ROUNDS (8),
# FTP_ALG_SCALE_LATENCY_N (2000 sequential opens per state and round), FTP_ALG_SCALE_PACED_N
# (500 opens 1 ms apart), FTP_ALG_SCALE_IDLE_WINDOW_MS (1000: kernel-worker CPU while idle,
# per state and round), FTP_ALG_BENCH_BINARY (another ftp-alg build), FTP_ALG_BENCH_ALG_ARGS
# (options added to every ftp-alg start, e.g. "--busy-poll-us 100"),
# FTP_ALG_BENCH_RELAY=0 (skip the relay proxy; it is skipped anyway without /usr/sbin/ftp-proxy),
# FTP_ALG_BENCH_QUIET_WAIT (120; 0 = don't wait),
# FTP_ALG_BENCH_HALT_POLL_NS (run with the haltpoll cpuidle driver's guest_halt_poll_ns at this
# value, restored on exit; see scripts/lib.sh halt_poll_for_run).
#
# The idle-session count is capped by RLIMIT_NOFILE: the benchmark raises it (hard limit too,
# when allowed) before it starts the daemon; run `ulimit -Hn 65536` first where that is refused.
#
# Output: a Markdown table on stdout, all numbers in target/bench/scale.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_root "$@"
# ftp-proxy: the userspace relay proxy, one more route of the RETR PASV rounds (skipped when
# missing, or with FTP_ALG_BENCH_RELAY=0).
apt_install nftables iproute2 procps vsftpd ftp-proxy
require_cargo

# Build first, so the compiler's load is gone before the wait and the measurement.
cargo bench --bench scale --no-run

halt_poll_for_run
wait_quiet bench-scale

cargo bench --bench scale -- "$@"

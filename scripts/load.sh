#!/usr/bin/env bash
# The load and leak check (tests/load.rs, ignored in the normal suite): 2,000 mixed FTP
# sessions through ftp-alg in the namespace lab, then pinholes, sessions, descriptors and RSS
# are checked and the figures printed.
#
# Needs root (network namespaces, nftables) and vsftpd. Tunables (environment):
#   LOAD_SESSIONS (2000)  LOAD_CONCURRENCY (50)  LOAD_WARMUP (200)  LOAD_SEED (24301)
#   LOAD_PORT20=1         vsftpd connects from port 20 in active mode (Debian's default)
# Extra arguments go to the test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_root "$@"
apt_install nftables iproute2 procps conntrack vsftpd
require_cargo

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-$([ -t 1 ] && echo auto || echo never)}"
exec cargo test --release --test load -- --ignored --nocapture --test-threads 1 "$@"

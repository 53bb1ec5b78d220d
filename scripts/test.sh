#!/usr/bin/env bash
# The README's test command (and what .ci/run calls): installs the Debian packages the
# end-to-end tests need (idempotent), then runs the whole test suite in release mode.
#
# The end-to-end tests build their own network namespaces and need root. Without root they skip
# with a message, except under CI=true, where they fail: they never pass silently.
# Extra arguments go to the test runner (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" -eq 0 ]; then
	apt_install nftables iproute2 procps conntrack vsftpd lftp curl ftp-proxy
else
	echo "not root: the network-namespace tests will skip (under CI=true they fail)" >&2
fi
require_cargo

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-$([ -t 1 ] && echo auto || echo never)}"
if cargo nextest --version >/dev/null 2>&1; then
	exec cargo nextest run --release --no-fail-fast "$@"
else
	exec cargo test --release --no-fail-fast "$@"
fi

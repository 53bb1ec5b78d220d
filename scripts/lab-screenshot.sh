#!/usr/bin/env bash
# Runs `ftp-alg lab --out DIR` and takes headless-Chromium screenshots of its HTML page:
# DIR/screenshot.png (the table beside the first diagrams) and DIR/screenshot-full.png (a
# taller window). Needs root (the lab builds network namespaces); installs Debian's chromium,
# nftables and iproute2 if they are missing. Chromium only opens the local file: background
# networking, component updates and sync are off, the profile is a throw-away directory.
#
# usage: sudo scripts/lab-screenshot.sh [DIR] [ftp-alg lab arguments, e.g. --scenario routed]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_root "$@"
apt_install nftables iproute2 procps chromium
require_cargo

out="${1:-target/lab}"
[ "$#" -gt 0 ] && shift
cargo build --release --quiet --bin ftp-alg
status=0
target/release/ftp-alg lab --out "$out" "$@" || status=$?

page="file://$(realpath "$out")/index.html"
shoot() { # shoot FILE WIDTH,HEIGHT
	local profile
	profile="$(mktemp -d)"
	chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
		--disable-component-update --disable-sync --no-first-run --hide-scrollbars \
		--user-data-dir="$profile" --window-size="$2" --screenshot="$1" "$page" 2>/dev/null
	rm -rf "$profile"
	[ -s "$1" ] || die "chromium wrote no screenshot to $1"
	echo "screenshot: $1"
}
shoot "$out/screenshot.png" 1600,1300
shoot "$out/screenshot-full.png" 1600,6000
exit "$status"

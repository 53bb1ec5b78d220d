#!/usr/bin/env bash
# The README's demo: build, then `ftp-alg lab`: private network namespaces for three
# topologies (client behind NAT, server behind a port-forward, routed firewall), an embedded
# FTP server and client in PORT, EPRT, PASV and EPSV without a helper, with the kernel's FTP
# helper and with ftp-alg; a table with the reason for every failure, SVG sequence diagrams
# and an HTML page in target/lab/; everything removed at the end. Needs root; touches nothing
# outside its namespaces except installing nftables/iproute2 if they are missing.
# (examples/demo.rs is the smaller libunftp/suppaftp demo: cargo run --release --example demo)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_root "$@"
apt_install nftables iproute2 procps
require_cargo
cargo build --release --quiet --bin ftp-alg
exec target/release/ftp-alg lab --out target/lab "$@"

#!/usr/bin/env bash
# The README's demo: build, create private network namespaces (client — NAT gateway — server),
# run the embedded libunftp server and suppaftp client in PORT, EPRT, PASV and EPSV without and
# with ftp-alg, print a table, clean up. Needs root; touches nothing outside its namespaces
# except installing nftables/iproute2 if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_root "$@"
apt_install nftables iproute2 procps
require_cargo
cargo build --release --quiet --bin ftp-alg --example demo
FTP_ALG_BIN="$PWD/target/release/ftp-alg" exec target/release/examples/demo "$@"

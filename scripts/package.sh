#!/usr/bin/env bash
# Builds the Debian package: release binary, man page and shell completions generated from the
# clap definitions (`ftp-alg generate`), then `cargo deb` packs them with the unit, the config
# and the rules as listed in Cargo.toml ([package.metadata.deb]).
#
# Prints the path of the .deb as its last line. Installs cargo-deb (from crates.io) if missing.
# Extra arguments go to `cargo deb` (e.g. --deb-revision 2).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_cargo

# The version cargo-deb is known to work with here (usr/lib/systemd/system for units).
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
	echo "installing cargo-deb $CARGO_DEB_VERSION" >&2
	cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION" >&2
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-$([ -t 2 ] && echo auto || echo never)}"
cargo build --release --locked --bin ftp-alg >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# Cargo.toml's assets name target/packaging/ relative to the project, whatever the target dir.
rm -rf target/packaging
"$target_dir/release/ftp-alg" generate --out target/packaging >&2

# --no-build: the binary above is the one packed. --dbgsym: its debug line tables
# (profile.release) go to a separate ftp-alg-dbgsym .ddeb next to the .deb, which keeps the
# package small (a 4 MB binary instead of 25 MB of debug info).
deb=$(cargo deb --no-build --locked --dbgsym --quiet "$@" | grep "\.deb$" | tail -n 1)
[ -f "$deb" ] || die "cargo deb did not report a package (got: $deb)"
echo "$deb"

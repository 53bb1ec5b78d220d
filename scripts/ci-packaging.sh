#!/usr/bin/env bash
# CI's packaging gate (called from .ci/run; idempotent, needs root):
#  1. installs what it needs if missing: systemd (systemd-analyze), procps, and cargo-deb
#     (scripts/package.sh installs it from crates.io);
#  2. builds the .deb (scripts/package.sh);
#  3. `systemd-analyze verify` on the unit exactly as packaged, with the packaged binary and man
#     page where the unit says they are (a private mount namespace puts the binary at
#     /usr/sbin/ftp-alg for the check only; nothing is installed on the host);
#  4. `systemd-analyze security --offline=yes` on it: prints the exposure, fails above
#     FTP_ALG_MAX_EXPOSURE (default 2.5; it is 1.9 with systemd 252);
#  5. lists the package and checks it (scripts/deb-install-test.sh --static-only, which runs
#     tests/packaging.rs on it).
# The install into a clean Debian root (scripts/deb-install-test.sh without --static-only)
# takes minutes of debootstrap and downloads, so CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
start=$(date +%s)

apt_install systemd procps
deb=$(bash scripts/package.sh)

step() { printf '\n== %s\n' "$*"; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
unit="$root/usr/lib/systemd/system/ftp-alg.service"

step "systemd-analyze verify (the packaged unit, binary and man page)"
# shellcheck disable=SC2016 # expanded by the inner shell
verify=$(unshare --mount --propagation private -- sh -c '
	mount -t tmpfs -o mode=0755 tmpfs /usr/sbin &&
	cp "$0/usr/sbin/ftp-alg" /usr/sbin/ftp-alg &&
	MANPATH="$0/usr/share/man" exec systemd-analyze verify "$1"' "$root" "$unit" 2>&1) ||
	die "systemd-analyze verify failed: $verify"
[ -z "$verify" ] || die "systemd-analyze verify complains: $verify"
echo "clean ($(systemd-analyze --version | head -n 1))"

step "systemd-analyze security --offline=yes"
security=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1) || true
printf '%s\n' "$security" | grep -E '^✗|Overall exposure'
exposure=$(printf '%s\n' "$security" | sed -n 's/.*Overall exposure level for ftp-alg.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || die "no exposure score in: $security"
max=${FTP_ALG_MAX_EXPOSURE:-2.5}
awk -v e="$exposure" -v m="$max" 'BEGIN { exit !(e <= m) }' ||
	die "exposure $exposure is above $max: the unit lost hardening"

step "the package"
bash scripts/deb-install-test.sh --static-only "$deb"
echo
echo "ci-packaging: passed in $(($(date +%s) - start)) s (exposure $exposure; $deb)"

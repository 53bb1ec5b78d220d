# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run).

# die MESSAGE: print to stderr and exit 1.
die() {
	echo "$0: $*" >&2
	exit 1
}

# require_root: the lab creates network namespaces and nftables tables.
require_root() {
	[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, nftables); run: sudo $0 $*"
}

# apt_install PACKAGE...: installs the Debian packages that are not installed yet (idempotent).
# Services that a package would start (vsftpd!) are kept from starting in the host's own
# network namespace: the lab runs its servers only inside its private namespaces.
apt_install() {
	local missing=()
	local pkg
	for pkg in "$@"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
			missing+=("$pkg")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
	echo "installing: ${missing[*]}"
	local policy=/usr/sbin/policy-rc.d
	local own_policy=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# temporary, from ftp-alg scripts/lib.sh\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
		own_policy=1
	fi
	local rc=0
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } || rc=$?
	[ "$own_policy" -eq 1 ] && rm -f "$policy"
	[ "$rc" -eq 0 ] || die "apt-get install ${missing[*]} failed"
	# A freshly installed vsftpd must not serve the host at boot either.
	if printf '%s\n' "${missing[@]}" | grep -qx vsftpd && command -v systemctl >/dev/null; then
		systemctl disable vsftpd.service >/dev/null 2>&1 || true
	fi
}

# require_cargo: cargo on PATH (also under sudo, which resets PATH).
require_cargo() {
	if ! command -v cargo >/dev/null; then
		local home
		for home in "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)}" "$HOME"; do
			[ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ] && PATH="$home/.cargo/bin:$PATH" && break
		done
	fi
	command -v cargo >/dev/null || die "cargo not found; install Rust (https://rustup.rs) first"
	# The crypto of the FTP test peers (aws-lc-sys) needs a C compiler.
	command -v cc >/dev/null || apt_install build-essential
}

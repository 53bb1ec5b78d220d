# Shared by the scripts (sourced, not run).

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

# wait_quiet NAME: before a benchmark, wait up to FTP_ALG_BENCH_QUIET_WAIT seconds (120; 0 = don't
# wait) for the load average to fall below half the CPUs; runs anyway after that, saying so.
wait_quiet() {
	local name="$1"
	local limit="${FTP_ALG_BENCH_QUIET_WAIT:-120}"
	local cpus load waited=0
	[[ "$limit" =~ ^[0-9]+$ ]] || die "FTP_ALG_BENCH_QUIET_WAIT must be a whole number of seconds, not '$limit'"
	cpus="$(nproc)"
	while :; do
		load="$(cut -d' ' -f1 /proc/loadavg)"
		if awk -v l="$load" -v c="$cpus" 'BEGIN { exit !(l < c / 2) }'; then
			return 0
		fi
		if [ "$waited" -ge "$limit" ]; then
			echo "$name: load average still $load on $cpus CPUs after ${waited}s; running anyway (numbers will be noisy)" >&2
			return 0
		fi
		[ "$waited" -eq 0 ] && echo "$name: load average $load on $cpus CPUs; waiting up to ${limit}s for it to drop" >&2
		sleep 5
		waited=$((waited + 5))
	done
}

# halt_poll_for_run: with FTP_ALG_BENCH_HALT_POLL_NS set, a benchmark runs with the haltpoll
# cpuidle driver's guest_halt_poll_ns at that value (idle vCPUs poll that long before they halt,
# which sets the price of every wake-up on a VM; the kernel's default is 200000), and the
# previous value is restored when the script exits, also on failure. A host-wide CPU setting,
# no network: it applies to the baselines and ftp-alg alike. Refused where the haltpoll driver
# is not in use.
halt_poll_for_run() {
	[ -n "${FTP_ALG_BENCH_HALT_POLL_NS:-}" ] || return 0
	local param=/sys/module/haltpoll/parameters/guest_halt_poll_ns
	[ "$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null)" = haltpoll ] && [ -w "$param" ] ||
		die "FTP_ALG_BENCH_HALT_POLL_NS is set, but this host's cpuidle driver is not haltpoll (or $param is not writable)"
	[[ "$FTP_ALG_BENCH_HALT_POLL_NS" =~ ^[0-9]+$ ]] || die "FTP_ALG_BENCH_HALT_POLL_NS must be a number of nanoseconds"
	HALT_POLL_BEFORE="$(cat "$param")"
	trap 'echo "$HALT_POLL_BEFORE" >/sys/module/haltpoll/parameters/guest_halt_poll_ns' EXIT
	echo "$FTP_ALG_BENCH_HALT_POLL_NS" >"$param"
	echo "guest_halt_poll_ns $HALT_POLL_BEFORE -> $FTP_ALG_BENCH_HALT_POLL_NS for this run (restored on exit)" >&2
}

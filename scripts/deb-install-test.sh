#!/usr/bin/env bash
# Installs the Debian package on a clean Debian 12 root and checks that it works there, as far
# as a machine without a running systemd allows. Needs root.
#
#  1. Builds the .deb (scripts/package.sh), prints `dpkg-deb -I` and `-c`, and checks it with
#     tests/packaging.rs (FTP_ALG_DEB=...): every path and mode, Depends, conffile, maintainer
#     scripts, shipped bytes. `--static-only` stops here (what CI runs).
#  2. Debootstraps a minimal bookworm root with systemd (packages cached under
#     target/deb-install-test/cache; downloads come from the Debian mirror only).
#  3. `dpkg -i` in that root must stop on the missing Depends (nftables, iproute2, procps,
#     conntrack);
#     `apt-get -f install` fetches them and configures ftp-alg, as an admin would.
#  4. In the chroot: `ftp-alg --version`, `ftp-alg check --config /etc/ftp-alg/ftp-alg.toml`,
#     `systemd-analyze verify` of the installed unit against that root, the unit is disabled.
#  5. Starting the unit needs a running systemd, which this machine does not have. Instead the
#     unit's own ExecStart line runs in the chroot the way systemd would run it (a DynamicUser
#     style unprivileged uid holding only the unit's AmbientCapabilities, no-new-privs, the
#     RuntimeDirectory, UMask, LimitNOFILE, NOTIFY_SOCKET and WATCHDOG_USEC), inside a network
#     namespace of its own whose two interfaces are named eth0/eth1 as in the shipped config
#     (a veth pair with both ends in the namespace: no link to the host's network). Checked:
#     READY=1 arrives and the table exists; WATCHDOG=1 pings; `ftp-alg status` answers on
#     /run/ftp-alg/status.sock; SIGHUP (the unit's ExecReload) gives RELOADING=1 then READY=1;
#     SIGTERM gives STOPPING=1, exit status 0, the table and the socket gone.
#  6. Then the real thing: the same root boots under systemd-nspawn (systemd as PID 1 of a
#     container with a private network namespace, nothing connected to the host's network),
#     where the admin's steps are taken: a test-only unit makes eth0/eth1, ftp-alg.service is
#     enabled and started by systemd with the whole unit (DynamicUser, capabilities, seccomp,
#     sandbox, notify, watchdog). Checked: active with status "listening" and the table in
#     place; the process is unprivileged, NoNewPrivs, seccomp-filtered, with exactly the
#     unit's capabilities; `ftp-alg status`; still running without a restart after
#     WatchdogSec; `systemctl reload`; a `status.group` hands the socket to that group (a member
#     reads it, another user is refused); `systemd-analyze security` on the live unit;
#     `systemctl stop` ends with result "success" and no table. `--no-boot` skips this stage.
#
# Usage: sudo scripts/deb-install-test.sh [--static-only] [--no-boot] [--keep] [PATH.deb]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

static_only=0 keep=0 boot=1 deb=""
for arg in "$@"; do
	case "$arg" in
	--static-only) static_only=1 ;;
	--no-boot) boot=0 ;;
	--keep) keep=1 ;;
	*.deb) deb=$(realpath "$arg") ;;
	*) die "unknown argument: $arg" ;;
	esac
done

step() { printf '\n== %s\n' "$*"; }

# ---- 1. the package itself ------------------------------------------------------------------
if [ -z "$deb" ]; then
	step "building the package (scripts/package.sh)"
	deb=$(bash scripts/package.sh)
fi
[ -f "$deb" ] || die "no package at $deb"
step "dpkg-deb -I $deb"
dpkg-deb -I "$deb"
step "dpkg-deb -c $deb"
dpkg-deb -c "$deb"
step "checking the package (tests/packaging.rs)"
FTP_ALG_DEB="$deb" cargo test --release --locked --quiet --test packaging -- --include-ignored
[ "$static_only" -eq 1 ] && exit 0

# ---- 2. a clean Debian root -----------------------------------------------------------------
require_root
apt_install debootstrap python3
work=$(realpath -m target/deb-install-test)
mkdir -p "$work/cache"
root=$(mktemp -d "$work/root.XXXXXX")
chmod 0755 "$root" # mktemp makes it 0700: the service's user must be able to enter its /
ns="fa-pkg-$$"
daemon=""
notify_pid=""
nspawn_pid=""
cleanup() {
	set +e
	[ -n "$daemon" ] && kill -KILL "$daemon" 2>/dev/null
	[ -n "$notify_pid" ] && kill "$notify_pid" 2>/dev/null
	if [ -n "$nspawn_pid" ]; then
		kill -KILL "$nspawn_pid" 2>/dev/null
		wait "$nspawn_pid" 2>/dev/null
	fi
	ip netns del "$ns" 2>/dev/null
	if [ "$keep" -eq 1 ]; then
		echo "kept: $root"
	else
		rm -rf --one-file-system "$root"
	fi
}
trap cleanup EXIT

mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
step "debootstrap bookworm (minbase + systemd) from $mirror into $root"
debootstrap --variant=minbase --include=systemd --cache-dir="$work/cache" \
	bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
	die "debootstrap failed; see $work/debootstrap.log"
# No service may start in the chroot (it shares the host's network namespace).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

# in_root CMD...: runs a command in the chroot with /proc mounted (in a private mount namespace,
# so nothing stays mounted when it ends).
in_root() {
	unshare --mount --propagation private -- sh -c \
		'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"' "$root" \
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"
}

# ---- 3. dpkg -i -----------------------------------------------------------------------------
cp "$deb" "$root/tmp/ftp-alg.deb"
step "dpkg -i on the clean root (must stop on the missing dependencies)"
if in_root dpkg -i /tmp/ftp-alg.deb >"$work/dpkg.log" 2>&1; then
	cat "$work/dpkg.log"
	die "dpkg -i succeeded without nftables, iproute2 and procps: Depends is missing"
fi
grep -E "depends on (nftables|iproute2|procps)" "$work/dpkg.log" || { cat "$work/dpkg.log"; die "dpkg -i failed for another reason"; }
step "apt-get -f install (fetches the dependencies, configures ftp-alg)"
in_root apt-get update -qq
in_root apt-get -f install -y -qq --no-install-recommends >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; die "apt-get -f install failed"; }
status=$(in_root dpkg-query -W -f='${Status} ${Version}' ftp-alg)
echo "ftp-alg: $status"
case "$status" in "install ok installed "*) ;; *) die "ftp-alg is not installed: $status" ;; esac

# ---- 4. in the chroot -----------------------------------------------------------------------
step "ftp-alg --version (in the chroot)"
in_root /usr/sbin/ftp-alg --version
step "ftp-alg check --config /etc/ftp-alg/ftp-alg.toml (in the chroot)"
in_root /usr/sbin/ftp-alg check --config /etc/ftp-alg/ftp-alg.toml | head -n 5
step "systemd-analyze verify of the installed unit, against the chroot"
verify=$(in_root systemd-analyze verify --man=no /usr/lib/systemd/system/ftp-alg.service 2>&1) ||
	die "systemd-analyze verify failed: $verify"
[ -z "$verify" ] || die "systemd-analyze verify complains: $verify"
echo "clean"
enabled=$(in_root systemctl is-enabled ftp-alg.service 2>&1 || true)
echo "systemctl is-enabled ftp-alg.service: $enabled"
[ "$enabled" = disabled ] || die "the package enabled the unit ($enabled)"

# ---- 5. the unit's ExecStart, run as systemd would, in a private network namespace ----------
unit="$root/usr/lib/systemd/system/ftp-alg.service"
unit_value() { sed -n "s/^$1=//p" "$unit" | tail -n 1; }
exec_start=$(unit_value ExecStart)
# "CAP_NET_ADMIN CAP_X" -> "+net_admin,+x" for setpriv.
caps_for_setpriv() { echo "$1" | tr 'A-Z ' 'a-z\n' | sed -n 's/^cap_\(.*\)/+\1/p' | paste -sd, -; }
ambient=$(caps_for_setpriv "$(unit_value AmbientCapabilities)")
bounding=$(caps_for_setpriv "$(unit_value CapabilityBoundingSet)")
[ -n "$ambient" ] && [ -n "$bounding" ] || die "no capabilities found in the unit"
uid=61184 # the first UID systemd hands to DynamicUser= services
watchdog_usec=$(($(unit_value WatchdogSec | tr -dc 0-9) * 1000000))
step "ExecStart=$exec_start (uid $uid, ambient $ambient, netns $ns)"

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add eth1 type veth peer name eth0
ip -n "$ns" addr add 192.0.2.1/24 dev eth1
ip -n "$ns" addr add 198.51.100.1/24 dev eth0
ip -n "$ns" link set eth1 up
ip -n "$ns" link set eth0 up
ip netns exec "$ns" nft list table inet ftp_alg >/dev/null 2>&1 && die "table exists before start"

# RuntimeDirectory=ftp-alg, owned by the service user, with RuntimeDirectoryMode.
install -d -o "$uid" -g "$uid" -m "$(unit_value RuntimeDirectoryMode)" "$root/run/ftp-alg"
# systemd's notification socket: a datagram socket whose messages are logged, one a line.
notify_log="$work/notify.log"
: >"$notify_log"
python3 -c '
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o777)
while True:
    msg = s.recv(4096).decode(errors="replace")
    with open(log, "a") as f:
        f.write(msg.replace("\n", " ") + "\n")
' "$root/run/notify.sock" "$notify_log" &
notify_pid=$!
for _ in $(seq 50); do [ -S "$root/run/notify.sock" ] && break; sleep 0.1; done
[ -S "$root/run/notify.sock" ] || die "the notification socket did not appear"

# wait_for PATTERN: until a notification matching PATTERN arrived (10 s).
wait_for() {
	local i
	for i in $(seq 100); do
		grep -q "$1" "$notify_log" && return 0
		sleep 0.1
	done
	echo "notifications so far:" >&2
	cat "$notify_log" >&2
	die "no $1 from the daemon"
}

# LimitNOFILE: systemd raises the hard limit too; a shell without CAP_SYS_RESOURCE cannot.
nofile=$(unit_value LimitNOFILE)
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ]; then
	echo "note: LimitNOFILE=$nofile is above this shell's hard limit $hard; using $hard"
	nofile=$hard
fi

# Like systemd: umask, file limit, clean environment, NoNewPrivileges, the user and only the
# unit's capabilities; the command line is the unit's.
# shellcheck disable=SC2086 # ExecStart is split into words as systemd does (no quotes in it).
(
	umask "$(unit_value UMask)"
	ulimit -n "$nofile"
	exec ip netns exec "$ns" chroot "$root" env -i \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		NOTIFY_SOCKET=/run/notify.sock WATCHDOG_USEC="$watchdog_usec" \
		setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs \
		--bounding-set=-all,"$bounding" --inh-caps=-all,"$ambient" --ambient-caps="$ambient" \
		$exec_start
) >"$work/daemon.log" 2>&1 &
daemon=$!

wait_for 'READY=1'
echo "notified: $(grep -m1 'READY=1' "$notify_log")"
ip netns exec "$ns" nft list table inet ftp_alg >/dev/null || die "READY=1 but no table"
echo "table inet ftp_alg installed; $(ip netns exec "$ns" nft list table inet ftp_alg | grep -c 'chain ') chains"
caps=$(grep -E '^Cap(Eff|Bnd|Amb)' "/proc/$daemon/status" | tr '\t\n' '  ')
echo "daemon pid $daemon: uid $(stat -c %u "/proc/$daemon"), $caps"
[ "$(stat -c %u "/proc/$daemon")" = "$uid" ] || die "the daemon does not run as uid $uid"

step "ftp-alg status (root, in the chroot, default socket /run/ftp-alg/status.sock)"
in_root /usr/sbin/ftp-alg status
ls -l "$root/run/ftp-alg/"

step "watchdog and reload (the unit's ExecReload sends SIGHUP)"
# The daemon pings at half of WATCHDOG_USEC; wait for one past READY.
for _ in $(seq $((watchdog_usec / 1000000 * 10))); do
	grep -q 'WATCHDOG=1' "$notify_log" && break
	sleep 0.1
done
grep -q 'WATCHDOG=1' "$notify_log" || die "no WATCHDOG=1 within WatchdogSec"
echo "WATCHDOG=1 received"
kill -HUP "$daemon"
wait_for 'RELOADING=1'
for _ in $(seq 100); do
	[ "$(grep -c 'READY=1' "$notify_log")" -ge 2 ] && break
	sleep 0.1
done
[ "$(grep -c 'READY=1' "$notify_log")" -ge 2 ] || die "no READY=1 after the reload"
echo "RELOADING=1 then READY=1"

step "stop (SIGTERM, as systemctl stop sends)"
kill -TERM "$daemon"
rc=0
wait "$daemon" || rc=$?
daemon=""
[ "$rc" -eq 0 ] || { cat "$work/daemon.log"; die "the daemon exited with $rc"; }
wait_for 'STOPPING=1'
ip netns exec "$ns" nft list table inet ftp_alg >/dev/null 2>&1 && die "table left after SIGTERM"
[ -e "$root/run/ftp-alg/status.sock" ] && die "status socket left after SIGTERM"
echo "exit status 0; STOPPING=1; table and status socket removed"

step "notifications, in order"
cat "$notify_log"
step "daemon log"
cat "$work/daemon.log"
kill "$notify_pid" 2>/dev/null || true
wait "$notify_pid" 2>/dev/null || true
notify_pid=""
rm -f "$root/run/notify.sock"
rm -rf "$root/run/ftp-alg"
ip netns del "$ns"

if [ "$boot" -eq 0 ]; then
	echo
	echo "deb-install-test: all checks passed, the systemd boot skipped (--no-boot) ($deb)"
	exit 0
fi

# ---- 6. systemd as PID 1 of a container booted from the same root ---------------------------
apt_install systemd-container
step "enabling the unit in the root (the admin's step) and a test-only unit for eth0/eth1"
cat >"$root/etc/systemd/system/fa-test-links.service" <<'UNIT'
# Test only (scripts/deb-install-test.sh): the interfaces the shipped config names, inside
# the container's private network namespace.
[Unit]
Description=test only: eth0/eth1 veth pair for ftp-alg
Before=ftp-alg.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ip link add eth1 type veth peer name eth0
ExecStart=/usr/sbin/ip addr add 192.0.2.1/24 dev eth1
ExecStart=/usr/sbin/ip addr add 198.51.100.1/24 dev eth0
ExecStart=/usr/sbin/ip link set eth1 up
ExecStart=/usr/sbin/ip link set eth0 up
[Install]
WantedBy=multi-user.target
UNIT
in_root systemctl enable fa-test-links.service ftp-alg.service
rm -f "$root/usr/sbin/policy-rc.d"

step "booting the root with systemd-nspawn (private network)"
machine="fa-pkg-$$"
# --keep-unit --register=no: no host systemd or machined to talk to; --console=pipe: no tty.
systemd-nspawn --quiet --directory="$root" --machine="$machine" --private-network \
	--register=no --keep-unit --console=pipe --boot </dev/null >"$work/nspawn.log" 2>&1 &
nspawn_pid=$!
init=""
for _ in $(seq 100); do
	init=$(pgrep -P "$nspawn_pid" -x systemd | head -n 1) && [ -n "$init" ] && break
	sleep 0.1
done
[ -n "$init" ] || { cat "$work/nspawn.log"; die "the container did not start"; }
in_ct() { nsenter --target "$init" --all -- "$@"; }
state=""
for _ in $(seq 120); do
	state=$(in_ct systemctl is-system-running 2>/dev/null || true)
	case "$state" in running | degraded) break ;; esac
	sleep 0.5
done
echo "container systemd: $state"
in_ct systemctl is-active --quiet ftp-alg.service || {
	in_ct systemctl status ftp-alg.service --no-pager || true
	in_ct journalctl -u ftp-alg.service --no-pager || true
	die "ftp-alg.service is not active under systemd"
}
in_ct systemctl status ftp-alg.service --no-pager | head -n 9
[ "$(in_ct systemctl show -P StatusText ftp-alg.service)" = listening ] || die "no READY/STATUS from the daemon"
in_ct nft list table inet ftp_alg >/dev/null || die "the service runs but its table is missing"
echo "table inet ftp_alg installed"

step "the service's process, as systemd set it up"
main=$(in_ct systemctl show -P MainPID ftp-alg.service)
proc=$(in_ct grep -E '^(Uid|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' "/proc/$main/status")
echo "$proc"
uid=$(echo "$proc" | awk '/^Uid:/ { print $2 }')
[ "$uid" -ne 0 ] || die "the service runs as root"
echo "$proc" | grep -q '^NoNewPrivs:[[:space:]]*1' || die "NoNewPrivileges not in effect"
echo "$proc" | grep -q '^Seccomp:[[:space:]]*2' || die "no seccomp filter"
# CAP_CHOWN (0), CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12) = 0x1401, nothing else.
for set in CapEff CapBnd CapAmb; do
	echo "$proc" | grep -q "^$set:[[:space:]]*0000000000001401" || die "$set is not exactly the unit's capabilities"
done
in_ct ftp-alg status

step "watchdog: still running, not restarted, after WatchdogSec"
sleep "$(($(unit_value WatchdogSec | tr -dc 0-9) + 3))"
in_ct systemctl is-active --quiet ftp-alg.service || die "the service died within WatchdogSec"
[ "$(in_ct systemctl show -P NRestarts ftp-alg.service)" = 0 ] || die "the service was restarted (watchdog?)"
echo "active, NRestarts=0, last ping $(in_ct systemctl show -P WatchdogTimestamp ftp-alg.service)"

step "systemctl reload ftp-alg"
in_ct systemctl reload ftp-alg.service
in_ct journalctl -u ftp-alg.service --no-pager | grep -q 'SIGHUP: configuration reloaded' || die "no reload in the journal"
[ "$(in_ct systemctl show -P MainPID ftp-alg.service)" = "$main" ] || die "reload restarted the process"
echo "reloaded in place (pid $main)"

step "status.group: the socket goes to that group (CAP_CHOWN), whose members may read it"
in_ct groupadd --system ftpalg-ops
in_ct useradd --no-create-home --groups ftpalg-ops fa-member
in_ct useradd --no-create-home fa-other
in_ct sed -i 's/^# group = .*/group = "ftpalg-ops"/' /etc/ftp-alg/ftp-alg.toml
in_ct grep -q '^group = "ftpalg-ops"' /etc/ftp-alg/ftp-alg.toml || die "the shipped config has no commented status.group line to set"
in_ct systemctl restart ftp-alg.service
in_ct ls -l /run/ftp-alg/status.sock
in_ct stat -c %G /run/ftp-alg/status.sock | grep -qx ftpalg-ops || die "the status socket is not in the status group"
in_ct setpriv --reuid=fa-member --regid=fa-member --init-groups ftp-alg status >/dev/null || die "a status-group member cannot read the status"
if in_ct setpriv --reuid=fa-other --regid=fa-other --init-groups ftp-alg status >/dev/null 2>&1; then
	die "a user outside the status group can read the status"
fi
echo "member reads it; another user is refused"

step "systemd-analyze security ftp-alg (the live unit)"
in_ct systemd-analyze security --no-pager ftp-alg.service | tail -n 1

step "systemctl stop ftp-alg"
in_ct systemctl stop ftp-alg.service
[ "$(in_ct systemctl show -P Result ftp-alg.service)" = success ] || die "the stop did not end in success"
in_ct nft list table inet ftp_alg >/dev/null 2>&1 && die "table left after stop"
in_ct journalctl -u ftp-alg.service --no-pager | tail -n 6
in_ct systemctl poweroff 2>/dev/null || true
for _ in $(seq 60); do
	kill -0 "$nspawn_pid" 2>/dev/null || break
	sleep 0.5
done
kill -0 "$nspawn_pid" 2>/dev/null && echo "the container did not power off in 30 s; killing it"
echo
echo "deb-install-test: all checks passed ($deb)"

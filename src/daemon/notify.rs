//! systemd's notify protocol (sd_notify): one datagram per state change to $NOTIFY_SOCKET.
//! Without that variable (not started by systemd) every call is a no-op.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::debug;

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    // An '@' prefix names an abstract socket.
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        debug!(error = %e, state, "sd_notify failed");
    }
}

/// The daemon is ready: table installed, listeners bound.
pub(super) fn ready() {
    send("READY=1\nSTATUS=listening");
}

/// A reload has started (READY=1 follows when it is done).
pub(super) fn reloading() {
    send("RELOADING=1");
}

/// The daemon is draining and will exit within `within`: systemd's stop timeout is extended
/// to that (`EXTEND_TIMEOUT_USEC`), so a `limits.drain_grace_secs` above the unit's
/// `TimeoutStopSec` does not end in a SIGKILL that leaves the table and its redirect behind.
pub(super) fn stopping(within: Duration) {
    send(&stopping_message(within));
}

fn stopping_message(within: Duration) -> String {
    format!("STOPPING=1\nEXTEND_TIMEOUT_USEC={}", within.as_micros())
}

/// A watchdog keep-alive.
pub(super) fn watchdog() {
    send("WATCHDOG=1");
}

/// Half the watchdog interval systemd asked for, if it asked (WATCHDOG_USEC for our PID).
pub(super) fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2)).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_extends_the_stop_timeout_by_the_drain() {
        assert_eq!(
            stopping_message(Duration::from_secs(315)),
            "STOPPING=1\nEXTEND_TIMEOUT_USEC=315000000"
        );
    }
}

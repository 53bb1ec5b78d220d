//! Is a data connection still alive? Asked of the kernel's connection tracking, so that a
//! control connection's idle timeout never cuts a session whose transfer is still running,
//! and always cuts one whose "transfer" has no connection at all.
//!
//! Asked only when an idle timer expires during a transfer (rare), so spawning the
//! `conntrack` tool is acceptable; without it we answer "alive" (never cut a transfer).

use std::process::{Command, Stdio};

use super::Pinhole;

/// Whether conntrack holds a TCP connection in the pinhole's original direction that is not
/// closing: `from` → (`via` or `to`).
pub(super) fn alive(pinhole: &Pinhole) -> bool {
    let target = pinhole.via.unwrap_or(pinhole.to);
    let out = Command::new("conntrack")
        .args(["-L", "-p", "tcp", "-s"])
        .arg(pinhole.from.to_string())
        .arg("-d")
        .arg(target.ip().to_string())
        .arg("--dport")
        .arg(target.port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|line| line.contains("ESTABLISHED") || line.contains("SYN_")),
        // No tool or no permission: do not cut what might be a transfer.
        _ => true,
    }
}

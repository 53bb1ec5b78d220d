//! Policy routing for `routed` mode: the ALG connects to the server from the client's own
//! address (IP_TRANSPARENT), so the server's replies are addressed to the client; our table
//! marks those that belong to one of our transparent sockets (`socket transparent 1`), and
//! this rule + route deliver marked packets to the local host instead of forwarding them.
//!
//! Installed once at start and removed at exit (spawning `ip` is fine off the hot path).
//! A stale copy from a crash is removed before installing, so they never pile up.

use std::process::Command;

/// The rule and routes for one mark/table pair, both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransparentRouting {
    /// Packet mark set by the base table on replies to our transparent sockets.
    pub fwmark: u32,
    /// Routing table holding the `local` default routes.
    pub table: u32,
    /// Whether the host has IPv6 (a kernel booted with `ipv6.disable=1` has none to route).
    pub ipv6: bool,
}

/// `ip` failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up policy routing for routed mode (`ip {command}`): {message}")]
pub struct RoutingError {
    command: String,
    message: String,
}

impl TransparentRouting {
    /// Installs `ip rule fwmark … lookup …` and `local default dev lo` in the table, for
    /// IPv4 and IPv6, replacing a stale copy.
    pub fn install(&self) -> Result<(), RoutingError> {
        self.remove();
        for family in ["-4", "-6"] {
            let (mark, table) = (format!("{:#x}", self.fwmark), self.table.to_string());
            if family == "-6" && !self.ipv6 {
                continue;
            }
            ip(&[family, "rule", "add", "fwmark", &mark, "lookup", &table])?;
            let default = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
            ip(&[
                family, "route", "replace", "local", default, "dev", "lo", "table", &table,
            ])?;
        }
        Ok(())
    }

    /// Removes what [`TransparentRouting::install`] added; missing pieces are ignored.
    pub fn remove(&self) {
        let (mark, table) = (format!("{:#x}", self.fwmark), self.table.to_string());
        for family in ["-4", "-6"] {
            // A rule may have been added twice by hand; delete until none is left (bounded).
            for _ in 0..8 {
                if ip(&[family, "rule", "del", "fwmark", &mark, "lookup", &table]).is_err() {
                    break;
                }
            }
            let _ = ip(&[family, "route", "flush", "table", &table]);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), RoutingError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| RoutingError {
            command: args.join(" "),
            message: format!("{e}; install iproute2"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RoutingError {
            command: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

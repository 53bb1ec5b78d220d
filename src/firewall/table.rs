//! The base table: rendered from `rules/ftp-alg.nft`, loaded and removed with `nft -f`.
//!
//! Loading happens once at start (and again if an admin deletes the table under us), so
//! spawning `nft` is fine here; the per-transfer pinholes never go this way (see `netlink`).
//! The load is atomic: "add table; delete table; table { … }" in one transaction replaces a
//! stale copy left by a crash together with every pinhole it still held.

use std::io::Write;
use std::process::{Command, Stdio};

/// The rules template shipped in `rules/`.
pub const TEMPLATE: &str = include_str!("../../rules/ftp-alg.nft");

/// Everything the base table is parameterised by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseTable {
    /// Table name (family `inet`).
    pub table: String,
    /// LAN interfaces whose control connections are intercepted.
    pub lan_interfaces: Vec<String>,
    /// Intercepted destination ports.
    pub control_ports: Vec<u16>,
    /// The proxy's listening port (redirect target).
    pub listen_port: u16,
    /// Conntrack mark set on admitted data connections.
    pub ct_mark: u32,
    /// Packet mark of replies to transparent upstream sockets (routed mode).
    pub route_mark: u32,
    /// The pinhole sets' garbage-collection interval, ms.
    pub gc_interval_ms: u32,
}

/// Connections the kernel admitted through our pinholes (the table's named counters; the
/// rules count only the SYN that consumes a pinhole, so packets = connections).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Admitted {
    /// `active_admitted`.
    pub active: u64,
    /// `passive_admitted`.
    pub passive: u64,
}

/// A failure to load or remove the base table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// `nft` could not be started.
    #[error("cannot run `nft` ({0}); install the nftables package")]
    Spawn(std::io::Error),
    /// `nft` refused the ruleset.
    #[error("nft refused the table: {0}")]
    Nft(String),
}

impl BaseTable {
    /// The nft text of the table, as it will be loaded.
    pub fn render(&self) -> String {
        let quoted: Vec<String> = self
            .lan_interfaces
            .iter()
            .map(|name| format!("\"{name}\""))
            .collect();
        let ports: Vec<String> = self.control_ports.iter().map(u16::to_string).collect();
        // Without LAN interfaces (only published servers) nothing is intercepted.
        let template: String = TEMPLATE
            .lines()
            .filter(|line| !self.lan_interfaces.is_empty() || !line.contains("@LAN_INTERFACES@"))
            .flat_map(|line| [line, "\n"])
            .collect();
        template
            .replace("@TABLE@", &self.table)
            .replace("@LAN_INTERFACES@", &quoted.join(", "))
            .replace("@CONTROL_PORTS@", &ports.join(", "))
            .replace("@LISTEN_PORT@", &self.listen_port.to_string())
            .replace("@CT_MARK@", &format!("{:#x}", self.ct_mark))
            .replace("@ROUTE_MARK@", &format!("{:#x}", self.route_mark))
            .replace("@GC_INTERVAL@", &format!("{}ms", self.gc_interval_ms))
    }

    /// Loads the table atomically, replacing any existing table of the same name.
    pub fn install(&self) -> Result<(), TableError> {
        let script = format!(
            "table inet {t}\ndelete table inet {t}\n{body}",
            t = self.table,
            body = self.render()
        );
        run_nft(&["-f", "-"], Some(&script))
    }

    /// Whether the table is in the kernel now (an error when `nft` cannot tell, e.g. run
    /// without CAP_NET_ADMIN).
    pub fn exists(&self) -> Result<bool, TableError> {
        let out = Command::new("nft")
            .args(["list", "table", "inet", &self.table])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(TableError::Spawn)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.success() {
            true => Ok(true),
            false if stderr.contains("No such file or directory") => Ok(false),
            false => Err(TableError::Nft(stderr.trim().to_string())),
        }
    }

    /// Deletes the table; a table that is already gone is not an error.
    pub fn remove(&self) -> Result<(), TableError> {
        let script = format!("table inet {t}\ndelete table inet {t}\n", t = self.table);
        run_nft(&["-f", "-"], Some(&script))
    }
}

impl BaseTable {
    /// The kernel's admission counters of this table (connections that consumed a pinhole),
    /// read by an `nft` child that is killed if it has not answered within `limit`: a scrape
    /// must not hold its slot, or leave a process, for as long as `nft` hangs.
    pub async fn admitted(&self, limit: std::time::Duration) -> Result<Admitted, TableError> {
        let child = tokio::process::Command::new("nft")
            .args(["-j", "list", "counters", "table", "inet", &self.table])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(TableError::Spawn)?;
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| TableError::Nft(format!("no answer within {limit:?}; killed")))?
            .map_err(TableError::Spawn)?;
        if !out.status.success() {
            return Err(TableError::Nft(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| TableError::Nft(format!("unreadable nft -j output: {e}")))?;
        let mut admitted = Admitted::default();
        for item in json["nftables"].as_array().into_iter().flatten() {
            let counter = &item["counter"];
            let packets = counter["packets"].as_u64().unwrap_or(0);
            match counter["name"].as_str() {
                Some("active_admitted") => admitted.active = packets,
                Some("passive_admitted") => admitted.passive = packets,
                _ => {}
            }
        }
        Ok(admitted)
    }
}

fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<(), TableError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(TableError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(TableError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(TableError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TableError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BaseTable {
        BaseTable {
            table: "ftp_alg".into(),
            lan_interfaces: vec!["lan0".into(), "lan1".into()],
            control_ports: vec![21, 2121],
            listen_port: 3121,
            ct_mark: 0x2121,
            route_mark: 0x2122,
            gc_interval_ms: 1500,
        }
    }

    #[test]
    fn without_lan_interfaces_nothing_is_redirected() {
        let text = BaseTable {
            lan_interfaces: Vec::new(),
            ..table()
        }
        .render();
        assert!(!text.contains("redirect"), "{text}");
        assert!(text.contains("set passive_pin"));
    }

    #[test]
    fn rendered_table_fills_every_placeholder() {
        let text = table().render();
        assert!(!text.contains('@') || !text.contains("@TABLE@"));
        for placeholder in [
            "@TABLE@",
            "@LAN_INTERFACES@",
            "@CONTROL_PORTS@",
            "@LISTEN_PORT@",
            "@CT_MARK@",
            "@ROUTE_MARK@",
            "@GC_INTERVAL@",
        ] {
            assert!(!text.contains(placeholder), "{placeholder} left in {text}");
        }
        assert!(text.contains("iifname { \"lan0\", \"lan1\" }"));
        assert!(text.contains("tcp dport { 21, 2121 }"));
        assert!(text.contains("redirect to :3121"));
        assert!(text.contains("ct mark set 0x2121"));
        assert_eq!(text.matches("gc-interval 1500ms").count(), 6, "{text}");
    }

    #[test]
    fn every_consumed_set_has_a_hot_twin_and_the_main_sets_collect_as_the_owners_assume() {
        use crate::firewall::netlink::{COLD_GC_INTERVAL, hot_twin};
        let text = table().render();
        let main = format!("gc-interval {}s", COLD_GC_INTERVAL.as_secs());
        assert_eq!(text.matches(main.as_str()).count(), 6, "{text}");
        for set in [
            "passive_pin",
            "passive_pin6",
            "active_pin",
            "active_pin6",
            "dnat_once",
            "dnat_once6",
        ] {
            let twin = hot_twin(set).expect("a consumed set has a twin");
            assert!(text.contains(&format!("set {twin} {{")), "{twin} missing");
            // The twin's rule consumes it the same way as the main set's.
            assert!(
                text.contains(&format!("@{twin} delete @{twin} {{")),
                "no rule consumes {twin}"
            );
            assert!(text.contains(&format!("@{set} delete @{set} {{")));
        }
    }
}

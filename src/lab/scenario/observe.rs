//! What the gateway saw: a capture on all its interfaces while a session runs (the same
//! recorder `ftp-alg watch` uses), and the SYNs its admin's forward chain dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::setup::DROP_SET;
use crate::lab::netns::{Netns, NsThread};
use crate::lab::{LabError, Result};
use crate::watch::{Segment, record};

/// Most segments kept per session (a 64 KiB download is a few dozen).
const MAX_SEGMENTS: usize = 50_000;

/// A SYN the admin's forward chain dropped (its drop policy), with how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedSyn {
    /// Source as the forward hook saw it (after any destination NAT).
    pub src: SocketAddr,
    /// Destination as the forward hook saw it.
    pub dst: SocketAddr,
    /// How many SYNs (retransmissions included).
    pub packets: u64,
}

/// A capture running in the gateway namespace.
#[derive(Debug)]
pub(super) struct Recorder {
    stop: Arc<AtomicBool>,
    thread: NsThread<std::io::Result<Vec<Segment>>>,
}

impl Recorder {
    /// Starts capturing on every interface of `gateway`; returns once the socket is open.
    pub(super) fn start(gateway: &Netns, epoch: Instant) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_stop = Arc::clone(&stop);
        let thread = gateway.spawn_thread(move || {
            record(epoch, &[21], &thread_stop, MAX_SEGMENTS, move || {
                let _ = ready_tx.send(());
            })
        })?;
        if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            stop.store(true, Ordering::Relaxed);
            let why = match thread.join() {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => "ended early".into(),
                Err(e) => e.to_string(),
            };
            return Err(LabError::Unavailable(format!(
                "cannot capture in the gateway namespace (AF_PACKET): {why}"
            )));
        }
        Ok(Self { stop, thread })
    }

    /// Stops and returns what was captured.
    pub(super) fn finish(self) -> Result<Vec<Segment>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()?
            .map_err(|e| LabError::io("capturing in the gateway", e))
    }
}

/// The SYNs in the drop recorder's set.
pub(super) fn dropped_syns(gateway: &Netns) -> Result<Vec<DroppedSyn>> {
    let out = gateway.exec_ok(&["nft", "-j", "list", "set", "inet", "lab_fw", DROP_SET])?;
    Ok(parse_dropped(&String::from_utf8_lossy(&out.stdout)))
}

/// Empties the drop recorder's set (between sessions).
pub(super) fn clear_dropped(gateway: &Netns) -> Result<()> {
    gateway.exec_ok(&["nft", "flush", "set", "inet", "lab_fw", DROP_SET])?;
    Ok(())
}

/// Parses `nft -j list set` output of the drop recorder.
pub(super) fn parse_dropped(json: &str) -> Vec<DroppedSyn> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let items = value["nftables"].as_array().cloned().unwrap_or_default();
    for item in items {
        let Some(elements) = item["set"]["elem"].as_array() else {
            continue;
        };
        for element in elements {
            // With per-element counters: {"elem": {"val": {"concat": [...]}, "counter": {...}}}.
            let (concat, packets) = if element.get("elem").is_some() {
                (
                    &element["elem"]["val"]["concat"],
                    element["elem"]["counter"]["packets"].as_u64().unwrap_or(1),
                )
            } else {
                (&element["concat"], 1)
            };
            let Some(parts) = concat.as_array() else {
                continue;
            };
            let ip = |v: &serde_json::Value| v.as_str()?.parse::<IpAddr>().ok();
            let port = |v: &serde_json::Value| u16::try_from(v.as_u64()?).ok();
            if let [src, sport, dst, dport] = parts.as_slice()
                && let (Some(src), Some(sport), Some(dst), Some(dport)) =
                    (ip(src), port(sport), ip(dst), port(dport))
            {
                found.push(DroppedSyn {
                    src: SocketAddr::new(src, sport),
                    dst: SocketAddr::new(dst, dport),
                    packets: packets.max(1),
                });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::parse_dropped;

    #[test]
    fn dropped_syns_are_read_with_their_counters() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "lab_dropped", "table": "lab_fw", "elem": [{"elem": {"val": {"concat": ["203.0.113.2", 20, "192.0.2.2", 40123]}, "counter": {"packets": 2, "bytes": 120}}}, {"concat": ["192.0.2.2", 50000, "203.0.113.2", 31000]}]}}]}"#;
        let dropped = parse_dropped(json);
        assert_eq!(dropped.len(), 2);
        assert_eq!(dropped[0].src, "203.0.113.2:20".parse().unwrap());
        assert_eq!(dropped[0].dst, "192.0.2.2:40123".parse().unwrap());
        assert_eq!(dropped[0].packets, 2);
        assert_eq!(dropped[1].packets, 1);
        assert!(parse_dropped("not json").is_empty());
    }
}

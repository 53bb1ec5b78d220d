//! Shared by the benchmarks: nearest-rank percentiles of latency samples, and the userspace
//! relay proxy they compare against.
#![allow(dead_code)] // each benchmark uses a different subset

use std::path::Path;
use std::time::Duration;

use ftp_alg::lab::Netns;
use ftp_alg::lab::relay::{RELAY_BINARY, RelayOptions, RelayProxy};

/// Why the relay proxy cannot be a route of this run: `FTP_ALG_BENCH_RELAY=0`, or Debian's
/// `ftp-proxy` is not installed.
pub(crate) fn relay_unavailable() -> Option<String> {
    if std::env::var("FTP_ALG_BENCH_RELAY").is_ok_and(|v| v == "0") {
        return Some("FTP_ALG_BENCH_RELAY=0".into());
    }
    if !Path::new(RELAY_BINARY).is_file() {
        return Some(format!(
            "{RELAY_BINARY} not installed (Debian package ftp-proxy)"
        ));
    }
    None
}

/// Debian's `ftp-proxy` in `gateway` as every benchmark runs it (see `ftp_alg::lab::relay`):
/// transparent like ftp-alg, logging at `WRN`, `ForkLimit` off and `MaxClients` 512 (the
/// lab's defaults).
pub(crate) fn start_relay(gateway: &Netns) -> ftp_alg::lab::Result<RelayProxy> {
    RelayProxy::start(
        gateway,
        &RelayOptions {
            log_level: "WRN".into(),
            ..RelayOptions::default()
        },
    )
}

/// Percentiles of microsecond samples.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl Stats {
    /// Nearest-rank percentiles of microsecond samples.
    pub(crate) fn from_micros(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = (p * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Self {
            n: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
        }
    }

    /// The same, from durations.
    pub(crate) fn from_durations(samples: &[Duration]) -> Self {
        Self::from_micros(samples.iter().map(|d| d.as_secs_f64() * 1e6).collect())
    }
}

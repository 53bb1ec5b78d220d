//! The Prometheus text exposition format (version 0.0.4) of a [`Snapshot`].
//!
//! Names follow the conventions: `ftp_alg_` prefix, `_total` for counters, base units
//! (`_seconds`, `_bytes`). Kernel-side admissions (a pinhole consumed by its connection)
//! come from the table's named counters, read by the caller.

use std::fmt::Write;

use super::Snapshot;
use crate::firewall::table::Admitted;

/// Renders `snapshot` (and the kernel's admission counters, when known).
pub fn render(snapshot: &Snapshot, admitted: Option<Admitted>) -> String {
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let plain = |v: u64| vec![(String::new(), v.to_string())];
    metric(
        "ftp_alg_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        &plain(snapshot.uptime_secs),
    );
    metric(
        "ftp_alg_sessions_active",
        "gauge",
        "Control sessions currently relayed.",
        &plain(snapshot.sessions_active),
    );
    metric(
        "ftp_alg_sessions_total",
        "counter",
        "Control sessions started.",
        &plain(snapshot.sessions_total),
    );
    let refusals: Vec<_> = snapshot
        .session_refusals
        .iter()
        .map(|(why, n)| (format!("{{reason=\"{}\"}}", label(why)), n.to_string()))
        .collect();
    metric(
        "ftp_alg_sessions_refused_total",
        "counter",
        "Control sessions refused before they started, by reason.",
        &refusals,
    );
    metric(
        "ftp_alg_data_channels_opened_total",
        "counter",
        "Pinholes installed (kernel-acknowledged), by mode.",
        &[
            (
                "{mode=\"active\"}".into(),
                snapshot.channels_opened_active.to_string(),
            ),
            (
                "{mode=\"passive\"}".into(),
                snapshot.channels_opened_passive.to_string(),
            ),
        ],
    );
    if let Some(admitted) = admitted {
        metric(
            "ftp_alg_data_channels_admitted_total",
            "counter",
            "Data connections admitted by a pinhole (consumed), by mode. Unused = opened - admitted.",
            &[
                ("{mode=\"active\"}".into(), admitted.active.to_string()),
                ("{mode=\"passive\"}".into(), admitted.passive.to_string()),
            ],
        );
    }
    let refusals: Vec<_> = snapshot
        .channel_refusals
        .iter()
        .map(|(why, n)| (format!("{{reason=\"{}\"}}", label(why)), n.to_string()))
        .collect();
    metric(
        "ftp_alg_data_channels_refused_total",
        "counter",
        "Data channels refused, by reason.",
        &refusals,
    );
    metric(
        "ftp_alg_pinholes_closed_total",
        "counter",
        "Pinholes removed by their session (at its end, or aged out).",
        &plain(snapshot.pinholes_closed),
    );
    metric(
        "ftp_alg_netlink_errors_total",
        "counter",
        "Pinhole opens the kernel refused (once per data channel refused, after any retry on another gateway port) and pinhole removals it refused (the pinhole stays until its timeout).",
        &plain(snapshot.firewall_errors),
    );
    metric(
        "ftp_alg_control_bytes_total",
        "counter",
        "Control-channel bytes relayed, by sender.",
        &[
            (
                "{from=\"client\"}".into(),
                snapshot.control_bytes_from_client.to_string(),
            ),
            (
                "{from=\"server\"}".into(),
                snapshot.control_bytes_from_server.to_string(),
            ),
        ],
    );
    let mut buckets: Vec<_> = snapshot
        .latency_buckets
        .iter()
        .map(|(le, n)| (format!("_bucket{{le=\"{le}\"}}"), n.to_string()))
        .collect();
    buckets.push((
        "_bucket{le=\"+Inf\"}".into(),
        snapshot.latency_count.to_string(),
    ));
    buckets.push(("_sum".into(), snapshot.latency_sum_secs.to_string()));
    buckets.push(("_count".into(), snapshot.latency_count.to_string()));
    metric(
        "ftp_alg_pinhole_install_seconds",
        "histogram",
        "Time from pinhole request to the kernel's acknowledgement.",
        &buckets,
    );
    if let Some(fw) = &snapshot.firewall {
        for (name, help, value) in [
            (
                "ftp_alg_nft_requests_total",
                "Pinhole opens and closes the kernel backend answered.",
                fw.requests.to_string(),
            ),
            (
                "ftp_alg_nft_transactions_total",
                "nf_tables transactions sent (fewer than requests: batching).",
                fw.transactions.to_string(),
            ),
            (
                "ftp_alg_nft_busy_retries_total",
                "Pinhole adds the kernel refused with EBUSY and that were retried.",
                fw.busy_retries.to_string(),
            ),
            (
                "ftp_alg_nft_seconds_total",
                "Time spent in netlink transactions.",
                fw.kernel_secs.to_string(),
            ),
            (
                "ftp_alg_nft_stale_flows_removed_total",
                "Stale data connections of released gateway ports deleted from conntrack on an active install's path.",
                fw.stale_flows_removed.to_string(),
            ),
            (
                "ftp_alg_nft_stale_flows_swept_total",
                "Data connection tuples of released gateway ports swept from conntrack in the background.",
                fw.stale_flows_swept.to_string(),
            ),
            (
                "ftp_alg_nft_stale_flow_sweeps_deferred_total",
                "Sweeps that found a released gateway port's data connection still alive and left it for later.",
                fw.stale_flow_sweeps_deferred.to_string(),
            ),
            (
                "ftp_alg_nft_ports_in_use_total",
                "Active installs refused because the leased gateway port's previous data connection was still alive (another port was leased).",
                fw.ports_in_use.to_string(),
            ),
            (
                "ftp_alg_nft_stale_flow_deletes_skipped_total",
                "Active installs that needed no conntrack delete because a sweep had cleared their tuple.",
                fw.stale_flow_deletes_skipped.to_string(),
            ),
            (
                "ftp_alg_nft_replays_total",
                "Batches that failed and were replayed one request per transaction.",
                fw.replays.to_string(),
            ),
            (
                "ftp_alg_table_reinstalls_total",
                "Times the table was reinstalled after it vanished; the admitted counters restart at 0 each time.",
                fw.table_reinstalls.to_string(),
            ),
            (
                "ftp_alg_pinholes_hot_total",
                "Pinholes placed in the _hot twin sets (a key reused within seconds).",
                fw.hot_placements.to_string(),
            ),
        ] {
            metric(name, "counter", help, &[(String::new(), value)]);
        }
    }
    if let Some(rt) = &snapshot.realtime {
        metric(
            "ftp_alg_realtime_priority",
            "gauge",
            "SCHED_FIFO priority of the pinhole path (runtime.realtime_priority as it came out at \
             start); 0 = the normal scheduler.",
            &plain(u64::from(rt.priority)),
        );
    }
    if let Some(files) = &snapshot.open_files {
        metric(
            "ftp_alg_sessions_max",
            "gauge",
            "Sessions admitted at most: limits.max_sessions, or fewer when the open-files \
             limit has no room for that many (two sockets per session).",
            &plain(files.admitted as u64),
        );
        metric(
            "ftp_alg_open_files_limit",
            "gauge",
            "The daemon's open-files limit (RLIMIT_NOFILE), raised at start to the hard limit.",
            &plain(files.limit),
        );
    }
    out
}

fn label<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    #[test]
    fn exposition_has_conventional_names_and_a_complete_histogram() {
        let telemetry = Arc::new(Telemetry::default());
        telemetry.session_refused(SessionRefusal::PerClient);
        let registration = telemetry.register(
            1,
            "10.0.0.2:1".parse().unwrap(),
            "203.0.113.2:21".parse().unwrap(),
            "client-nat",
        );
        registration.entry().pinhole_opened(
            Pinhole::passive(
                "10.0.0.2".parse().unwrap(),
                "203.0.113.2".parse().unwrap(),
                30000,
            ),
            Duration::from_micros(30),
            Duration::from_secs(30),
        );
        registration.entry().channel_refused(ChannelRefusal::Bounce);
        telemetry.set_firewall_stats(FirewallStatsSource::new(|| FirewallStats {
            requests: 4,
            transactions: 3,
            busy_retries: 1,
            hot_placements: 2,
            flow_deletes_skipped: 6,
            flow_sweeps_deferred: 7,
            ports_in_use: 9,
            replays: 5,
            table_reinstalls: 2,
            ..FirewallStats::default()
        }));
        telemetry.set_realtime(RealtimeView {
            setting: "auto".into(),
            priority: 10,
            scope: "pinholes".into(),
        });
        telemetry.set_open_files(OpenFilesView {
            limit: 1024,
            max_sessions: 4096,
            admitted: 448,
        });
        let text = render(
            &telemetry.snapshot(),
            Some(Admitted {
                active: 0,
                passive: 1,
            }),
        );
        for needle in [
            "ftp_alg_sessions_active 1",
            "ftp_alg_sessions_refused_total{reason=\"per_client\"} 1",
            "ftp_alg_data_channels_opened_total{mode=\"passive\"} 1",
            "ftp_alg_data_channels_admitted_total{mode=\"passive\"} 1",
            "ftp_alg_data_channels_refused_total{reason=\"bounce\"} 1",
            "ftp_alg_pinhole_install_seconds_bucket{le=\"0.00005\"} 1",
            "ftp_alg_pinhole_install_seconds_bucket{le=\"+Inf\"} 1",
            "ftp_alg_pinhole_install_seconds_count 1",
            "# TYPE ftp_alg_pinhole_install_seconds histogram",
            "ftp_alg_nft_requests_total 4",
            "ftp_alg_nft_transactions_total 3",
            "ftp_alg_nft_busy_retries_total 1",
            "ftp_alg_pinholes_hot_total 2",
            "ftp_alg_nft_replays_total 5",
            "ftp_alg_table_reinstalls_total 2",
            "ftp_alg_nft_stale_flow_deletes_skipped_total 6",
            "ftp_alg_nft_stale_flow_sweeps_deferred_total 7",
            "ftp_alg_nft_ports_in_use_total 9",
            "# TYPE ftp_alg_nft_seconds_total counter",
            "# TYPE ftp_alg_realtime_priority gauge",
            "ftp_alg_realtime_priority 10",
            "# TYPE ftp_alg_sessions_max gauge",
            "ftp_alg_sessions_max 448",
            "ftp_alg_open_files_limit 1024",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("ftp_alg_"), "{line}");
        }
    }
}

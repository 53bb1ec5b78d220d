//! What the daemon is doing, for people and for Prometheus: the live sessions and their
//! pinholes (for `ftp-alg status`), and counters and a latency histogram (for `/metrics`).
//!
//! Sessions update their own [`SessionEntry`] (atomics, one small lock for the pinhole list);
//! readers take a [`Snapshot`]. No I/O here: the status socket and the metrics endpoint live
//! in `proxy/`, which owns sockets.

mod prometheus;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::firewall::{Direction, FirewallStats, Pinhole};

pub use crate::firewall::table::Admitted;
pub use prometheus::render as render_prometheus;

/// Why a session was refused before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionRefusal {
    /// `limits.max_sessions` reached.
    MaxSessions,
    /// `limits.max_sessions_per_client` reached.
    PerClient,
    /// `limits.new_sessions_per_second_per_client` exceeded.
    Rate,
    /// A direct connection to the proxy port (no redirected destination).
    NotRedirected,
    /// The server could not be reached.
    Upstream,
}

/// Why a data channel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelRefusal {
    /// PORT/EPRT naming another host (FTP bounce).
    Bounce,
    /// A port below 1024.
    PrivilegedPort,
    /// Malformed command or reply.
    Malformed,
    /// A 227 naming another host, policy refuse.
    ForeignAddress,
    /// Too many pinholes in the session, or no free port.
    Limit,
    /// The kernel refused the pinhole.
    Firewall,
    /// Wrong address family, EPSV ALL, LPRT/LPSV.
    Protocol,
}

const LATENCY_BUCKETS: [f64; 12] = [
    5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3, 100e-3, 1.0,
];

/// Process-wide counters and the registry of live sessions.
#[derive(Debug)]
pub struct Telemetry {
    started: Instant,
    sessions: Mutex<BTreeMap<u64, Arc<SessionEntry>>>,
    sessions_total: AtomicU64,
    session_refusals: Mutex<BTreeMap<SessionRefusal, u64>>,
    channels_opened: [AtomicU64; 2],
    channel_refusals: Mutex<BTreeMap<ChannelRefusal, u64>>,
    pinholes_closed: AtomicU64,
    firewall_errors: AtomicU64,
    control_bytes: [AtomicU64; 2],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    /// The kernel backend's own counters, once the daemon has one.
    firewall: std::sync::OnceLock<FirewallStatsSource>,
    /// How the pinhole path is scheduled, once the daemon has decided.
    realtime: std::sync::OnceLock<RealtimeView>,
    /// The host's CPU idle setup, read at start.
    host: std::sync::OnceLock<HostView>,
    /// The open-files limit and the session cap it allows, from start.
    open_files: std::sync::OnceLock<OpenFilesView>,
}

/// Reads the kernel backend's counters (see [`Telemetry::set_firewall_stats`]).
pub struct FirewallStatsSource(Box<dyn Fn() -> FirewallStats + Send + Sync>);

impl FirewallStatsSource {
    /// Wraps the function a snapshot calls.
    pub fn new(read: impl Fn() -> FirewallStats + Send + Sync + 'static) -> Self {
        Self(Box::new(read))
    }
}

impl std::fmt::Debug for FirewallStatsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FirewallStatsSource")
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            sessions: Mutex::new(BTreeMap::new()),
            sessions_total: AtomicU64::new(0),
            session_refusals: Mutex::new(BTreeMap::new()),
            channels_opened: Default::default(),
            channel_refusals: Mutex::new(BTreeMap::new()),
            pinholes_closed: AtomicU64::new(0),
            firewall_errors: AtomicU64::new(0),
            control_bytes: Default::default(),
            latency_buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
            firewall: std::sync::OnceLock::new(),
            realtime: std::sync::OnceLock::new(),
            host: std::sync::OnceLock::new(),
            open_files: std::sync::OnceLock::new(),
        }
    }
}

/// One live session, updated by the session itself.
#[derive(Debug)]
pub struct SessionEntry {
    id: u64,
    client: SocketAddr,
    server: SocketAddr,
    mode: &'static str,
    started: Instant,
    bytes_from_client: AtomicU64,
    bytes_from_server: AtomicU64,
    data_channels: AtomicU64,
    /// Each pinhole with the instant it expires unused.
    pinholes: Mutex<Vec<(Pinhole, Instant)>>,
    telemetry: Arc<Telemetry>,
}

/// A session's registration; dropping it removes the session from the registry.
#[derive(Debug)]
pub struct Registration {
    entry: Arc<SessionEntry>,
}

impl Telemetry {
    /// Registers a live session.
    pub fn register(
        self: &Arc<Self>,
        id: u64,
        client: SocketAddr,
        server: SocketAddr,
        mode: &'static str,
    ) -> Registration {
        let entry = Arc::new(SessionEntry {
            id,
            client,
            server,
            mode,
            started: Instant::now(),
            bytes_from_client: AtomicU64::new(0),
            bytes_from_server: AtomicU64::new(0),
            data_channels: AtomicU64::new(0),
            pinholes: Mutex::new(Vec::new()),
            telemetry: self.clone(),
        });
        self.sessions_total.fetch_add(1, Ordering::Relaxed);
        lock(&self.sessions).insert(id, entry.clone());
        Registration { entry }
    }

    /// Counts a session refused before it started.
    pub fn session_refused(&self, why: SessionRefusal) {
        *lock(&self.session_refusals).entry(why).or_default() += 1;
    }

    /// Where snapshots read the kernel backend's counters from (set once, at start).
    pub fn set_firewall_stats(&self, source: FirewallStatsSource) {
        let _ = self.firewall.set(source);
    }

    /// Records how `runtime.realtime_priority` came out at start (set once).
    pub fn set_realtime(&self, view: RealtimeView) {
        let _ = self.realtime.set(view);
    }

    /// Records the host's CPU idle setup as read at start (set once).
    pub fn set_host(&self, view: HostView) {
        let _ = self.host.set(view);
    }

    /// Records the open-files limit and the session cap it allows (set once, at start).
    pub fn set_open_files(&self, view: OpenFilesView) {
        let _ = self.open_files.set(view);
    }

    /// Sessions currently registered.
    pub fn active_sessions(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// A consistent copy of everything, for `status`.
    pub fn snapshot(&self) -> Snapshot {
        self.copy(true)
    }

    /// The counters without the per-session views, for `/metrics`: a scrape needs only how
    /// many sessions there are, and the sessions' lock is held while their views are built.
    pub fn counters(&self) -> Snapshot {
        self.copy(false)
    }

    fn copy(&self, with_sessions: bool) -> Snapshot {
        let now = Instant::now();
        let registry = lock(&self.sessions);
        let sessions_active = registry.len() as u64;
        let sessions: Vec<SessionView> = registry
            .values()
            .filter(|_| with_sessions)
            .map(|s| SessionView {
                id: s.id,
                client: s.client,
                server: s.server,
                mode: s.mode,
                age_secs: now.duration_since(s.started).as_secs(),
                control_bytes_from_client: s.bytes_from_client.load(Ordering::Relaxed),
                control_bytes_from_server: s.bytes_from_server.load(Ordering::Relaxed),
                pinholes: lock(&s.pinholes)
                    .iter()
                    .filter_map(|(p, expires)| {
                        let left = expires.checked_duration_since(now)?;
                        Some(PinholeView {
                            direction: match p.direction {
                                Direction::Active => "active",
                                Direction::Passive => "passive",
                            },
                            tuple: p.to_string(),
                            expires_in_secs: left.as_secs(),
                        })
                    })
                    .collect(),
            })
            .collect();
        drop(registry);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Read while installs are counted: made cumulative again, with the count (the +Inf
        // bucket) at least the largest bucket.
        let latency_buckets = cumulative(
            LATENCY_BUCKETS
                .iter()
                .zip(&self.latency_buckets)
                .map(|(le, n)| (*le, load(n))),
        );
        let latency_count = latency_buckets
            .last()
            .map_or(0, |(_, n)| *n)
            .max(load(&self.latency_count));
        Snapshot {
            uptime_secs: now.duration_since(self.started).as_secs(),
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            sessions_total: load(&self.sessions_total),
            sessions_active,
            session_refusals: lock(&self.session_refusals).clone(),
            channels_opened_active: load(&self.channels_opened[0]),
            channels_opened_passive: load(&self.channels_opened[1]),
            channel_refusals: lock(&self.channel_refusals).clone(),
            pinholes_closed: load(&self.pinholes_closed),
            firewall_errors: load(&self.firewall_errors),
            control_bytes_from_client: load(&self.control_bytes[0]),
            control_bytes_from_server: load(&self.control_bytes[1]),
            latency_buckets,
            latency_count,
            latency_sum_secs: load(&self.latency_sum_ns) as f64 / 1e9,
            firewall: self
                .firewall
                .get()
                .map(|source| FirewallView::from((source.0)())),
            realtime: self.realtime.get().cloned(),
            host: self.host.get().cloned(),
            open_files: self.open_files.get().copied(),
            sessions,
        }
    }
}

impl Registration {
    /// The entry the session updates.
    pub fn entry(&self) -> &Arc<SessionEntry> {
        &self.entry
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.entry.telemetry.sessions).remove(&self.entry.id);
    }
}

impl SessionEntry {
    /// Control-channel bytes received from the client.
    pub fn from_client(&self, n: usize) {
        self.bytes_from_client
            .fetch_add(n as u64, Ordering::Relaxed);
        self.telemetry.control_bytes[0].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Control-channel bytes received from the server.
    pub fn from_server(&self, n: usize) {
        self.bytes_from_server
            .fetch_add(n as u64, Ordering::Relaxed);
        self.telemetry.control_bytes[1].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Data channels (pinholes) this session opened, and its control bytes from the client
    /// and from the server: the summary of its end.
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.data_channels.load(Ordering::Relaxed),
            self.bytes_from_client.load(Ordering::Relaxed),
            self.bytes_from_server.load(Ordering::Relaxed),
        )
    }

    /// A pinhole was acknowledged by the kernel after `latency`; it lives `timeout` unused
    /// (the session's own setting: a reload changes it for new sessions only).
    pub fn pinhole_opened(&self, pinhole: Pinhole, latency: Duration, timeout: Duration) {
        self.data_channels.fetch_add(1, Ordering::Relaxed);
        let t = &self.telemetry;
        let slot = usize::from(pinhole.direction == Direction::Passive);
        t.channels_opened[slot].fetch_add(1, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        for (le, bucket) in LATENCY_BUCKETS.iter().zip(&t.latency_buckets) {
            if secs <= *le {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        t.latency_count.fetch_add(1, Ordering::Relaxed);
        t.latency_sum_ns
            .fetch_add(latency.as_nanos() as u64, Ordering::Relaxed);
        lock(&self.pinholes).push((pinhole, Instant::now() + timeout));
    }

    /// A pinhole left the session (removed at its end, or aged out).
    pub fn pinhole_closed(&self, pinhole: &Pinhole) {
        self.telemetry
            .pinholes_closed
            .fetch_add(1, Ordering::Relaxed);
        lock(&self.pinholes).retain(|(p, _)| p != pinhole);
    }

    /// The kernel refused to remove a pinhole (it stays until its timeout).
    pub fn pinhole_close_failed(&self) {
        self.telemetry
            .firewall_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A data channel was refused.
    pub fn channel_refused(&self, why: ChannelRefusal) {
        if why == ChannelRefusal::Firewall {
            self.telemetry
                .firewall_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        *lock(&self.telemetry.channel_refusals)
            .entry(why)
            .or_default() += 1;
    }
}

/// Everything `status` shows and `/metrics` exports.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Wall-clock time of the snapshot.
    pub unix_time: u64,
    /// Sessions started since start.
    pub sessions_total: u64,
    /// Sessions registered now (`sessions` lists them, except in [`Telemetry::counters`]).
    pub sessions_active: u64,
    /// Sessions refused, by reason.
    pub session_refusals: BTreeMap<SessionRefusal, u64>,
    /// Active-mode data channels opened.
    pub channels_opened_active: u64,
    /// Passive-mode data channels opened.
    pub channels_opened_passive: u64,
    /// Data channels refused, by reason.
    pub channel_refusals: BTreeMap<ChannelRefusal, u64>,
    /// Pinholes removed by their session (unused at its end, or aged out).
    pub pinholes_closed: u64,
    /// Pinhole requests the kernel refused.
    pub firewall_errors: u64,
    /// Control bytes from clients.
    pub control_bytes_from_client: u64,
    /// Control bytes from servers.
    pub control_bytes_from_server: u64,
    /// Cumulative histogram of pinhole install latency: (upper bound in s, count).
    pub latency_buckets: Vec<(f64, u64)>,
    /// Pinholes installed.
    pub latency_count: u64,
    /// Sum of install latencies in seconds.
    pub latency_sum_secs: f64,
    /// The kernel backend's counters (absent without one, e.g. in tests).
    pub firewall: Option<FirewallView>,
    /// How the pinhole path is scheduled (absent in tests).
    pub realtime: Option<RealtimeView>,
    /// The host's CPU idle setup (absent in tests).
    pub host: Option<HostView>,
    /// The open-files limit and the session cap (absent in tests).
    pub open_files: Option<OpenFilesView>,
    /// The live sessions.
    pub sessions: Vec<SessionView>,
}

/// The kernel backend's counters in a snapshot.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FirewallView {
    /// Pinhole opens and closes answered.
    pub requests: u64,
    /// nf_tables transactions sent (fewer than `requests`: batching).
    pub transactions: u64,
    /// Batches that failed and were replayed one request per transaction, and EBUSY retries.
    pub replays: u64,
    /// Adds refused with EBUSY and retried.
    pub busy_retries: u64,
    /// Time spent in netlink transactions, seconds.
    pub kernel_secs: f64,
    /// Stale flows of released gateway ports removed from conntrack on an install's path.
    pub stale_flows_removed: u64,
    /// Flows of released gateway ports swept from conntrack in the background.
    pub stale_flows_swept: u64,
    /// Active installs that needed no conntrack delete: swept ahead.
    pub stale_flow_deletes_skipped: u64,
    /// Sweeps that found their data connection still alive and left it alone.
    pub stale_flow_sweeps_deferred: u64,
    /// Active installs refused because the leased port's data connection was still alive.
    pub ports_in_use: u64,
    /// Pinholes placed in the `_hot` twin sets (keys reused within seconds).
    pub hot_placements: u64,
    /// Times the table was reinstalled after it vanished (the kernel's admission counters
    /// restarted at 0 each time).
    pub table_reinstalls: u64,
}

impl From<FirewallStats> for FirewallView {
    fn from(s: FirewallStats) -> Self {
        Self {
            requests: s.requests,
            transactions: s.transactions,
            replays: s.replays,
            busy_retries: s.busy_retries,
            kernel_secs: s.kernel_time.as_secs_f64(),
            stale_flows_removed: s.flows_forgotten,
            stale_flows_swept: s.flows_swept,
            stale_flow_deletes_skipped: s.flow_deletes_skipped,
            stale_flow_sweeps_deferred: s.flow_sweeps_deferred,
            ports_in_use: s.ports_in_use,
            hot_placements: s.hot_placements,
            table_reinstalls: s.table_reinstalls,
        }
    }
}

/// How `runtime.realtime_priority` came out at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RealtimeView {
    /// The setting: `auto` or a number.
    pub setting: String,
    /// The `SCHED_FIFO` priority in use; 0 = the normal scheduler.
    pub priority: u8,
    /// `pinholes` or `threads`.
    pub scope: String,
}

/// The host's CPU idle setup, as read at start (see [`crate::host`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostView {
    /// "haltpoll, guest_halt_poll_ns 0", "intel_idle", "unknown".
    pub cpu_idle: String,
    /// What it costs the control channel and what to do, when something can be done.
    pub advice: Option<String>,
}

/// The open-files limit in force and the sessions it leaves room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OpenFilesView {
    /// The soft `RLIMIT_NOFILE` after the daemon raised it to the hard limit.
    pub limit: u64,
    /// `limits.max_sessions`.
    pub max_sessions: usize,
    /// Sessions admitted at most: `max_sessions`, or fewer when the limit has no room.
    pub admitted: usize,
}

/// One live session in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// Session id (as in the logs).
    pub id: u64,
    /// The client.
    pub client: SocketAddr,
    /// The server.
    pub server: SocketAddr,
    /// client-nat, reverse or routed.
    pub mode: &'static str,
    /// Seconds since it started.
    pub age_secs: u64,
    /// Control bytes from the client.
    pub control_bytes_from_client: u64,
    /// Control bytes from the server.
    pub control_bytes_from_server: u64,
    /// Its pinholes that have not expired.
    pub pinholes: Vec<PinholeView>,
}

/// One pinhole in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct PinholeView {
    /// active or passive.
    pub direction: &'static str,
    /// The tuple, readable.
    pub tuple: String,
    /// Seconds until the kernel expires it (if unused).
    pub expires_in_secs: u64,
}

/// Bucket counts read one by one while observations land: each made at least the one below
/// it, as a cumulative histogram must be.
fn cumulative(buckets: impl Iterator<Item = (f64, u64)>) -> Vec<(f64, u64)> {
    let mut floor = 0;
    buckets
        .map(|(le, n)| {
            floor = floor.max(n);
            (le, floor)
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `ftp-alg status` as text: one line per session, its pinholes indented, then the totals.
pub fn render_status(snapshot: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let sessions = snapshot["sessions"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "{} session(s) live, {} since start (uptime {} s)",
        sessions.len(),
        num(&snapshot["sessions_total"]),
        num(&snapshot["uptime_secs"])
    );
    if !sessions.is_empty() {
        let _ = writeln!(
            out,
            "{:>6}  {:<24} {:<24} {:<10} {:>7} {:>10} {:>10}",
            "ID", "CLIENT", "SERVER", "MODE", "AGE(s)", "CTL IN", "CTL OUT"
        );
    }
    for s in &sessions {
        let _ = writeln!(
            out,
            "{:>6}  {:<24} {:<24} {:<10} {:>7} {:>10} {:>10}",
            num(&s["id"]),
            text(&s["client"]),
            text(&s["server"]),
            text(&s["mode"]),
            num(&s["age_secs"]),
            num(&s["control_bytes_from_client"]),
            num(&s["control_bytes_from_server"])
        );
        for p in s["pinholes"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "        pinhole {} (expires in {} s)",
                text(&p["tuple"]),
                num(&p["expires_in_secs"])
            );
        }
    }
    let _ = writeln!(
        out,
        "data channels opened: {} active, {} passive; pinholes closed {}; netlink errors {}",
        num(&snapshot["channels_opened_active"]),
        num(&snapshot["channels_opened_passive"]),
        num(&snapshot["pinholes_closed"]),
        num(&snapshot["firewall_errors"])
    );
    let fw = &snapshot["firewall"];
    if fw.is_object() {
        let _ = writeln!(
            out,
            "nftables: {} requests in {} transactions ({} replayed one by one), {} EBUSY \
             retries, {} pinholes in the _hot sets, {} stale flows removed ({} swept ahead, {} \
             sweeps deferred for a live connection; {} installs skipped the delete; {} leased \
             ports refused, their data connection still alive); table reinstalled {} time(s)",
            num(&fw["requests"]),
            num(&fw["transactions"]),
            num(&fw["replays"]),
            num(&fw["busy_retries"]),
            num(&fw["hot_placements"]),
            num(&fw["stale_flows_removed"]),
            num(&fw["stale_flows_swept"]),
            num(&fw["stale_flow_sweeps_deferred"]),
            num(&fw["stale_flow_deletes_skipped"]),
            num(&fw["ports_in_use"]),
            num(&fw["table_reinstalls"])
        );
    }
    for (key, what) in [
        ("session_refusals", "sessions refused"),
        ("channel_refusals", "data channels refused"),
    ] {
        let counts: Vec<String> = snapshot[key]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(reason, n)| format!("{reason} {}", num(n)))
            .collect();
        if !counts.is_empty() {
            let _ = writeln!(out, "{what}: {}", counts.join(", "));
        }
    }
    let rt = &snapshot["realtime"];
    if rt.is_object() {
        let setting = text(&rt["setting"]);
        let _ = match num(&rt["priority"]) {
            0 if setting == "auto" => writeln!(
                out,
                "pinhole path: normal scheduler (realtime_priority auto: this process may not \
                 use real time; the start log says how to allow it)"
            ),
            0 => writeln!(out, "pinhole path: normal scheduler (realtime_priority 0)"),
            priority => writeln!(
                out,
                "pinhole path: SCHED_FIFO {priority} (realtime_priority {setting}, scope {})",
                text(&rt["scope"])
            ),
        };
    }
    let files = &snapshot["open_files"];
    if files.is_object() {
        let (limit, max, admitted) = (
            num(&files["limit"]),
            num(&files["max_sessions"]),
            num(&files["admitted"]),
        );
        let _ = if admitted < max {
            writeln!(
                out,
                "open files: limit {limit}, room for {admitted} sessions, fewer than \
                 limits.max_sessions {max}: raise LimitNOFILE= (or ulimit -Hn)"
            )
        } else {
            writeln!(
                out,
                "open files: limit {limit}, room for limits.max_sessions {max}"
            )
        };
    }
    let host = &snapshot["host"];
    if host.is_object() {
        let _ = match host["advice"].as_str() {
            Some(advice) => writeln!(out, "CPU idle: {}: {advice}", text(&host["cpu_idle"])),
            None => writeln!(out, "CPU idle: {}", text(&host["cpu_idle"])),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_read_mid_observation_are_made_cumulative() {
        let read = [(1e-5, 3), (2e-5, 2), (5e-5, 4)];
        assert_eq!(
            cumulative(read.into_iter()),
            [(1e-5, 3), (2e-5, 3), (5e-5, 4)]
        );
    }

    #[test]
    fn sessions_appear_while_registered_with_their_pinholes() {
        let telemetry = Arc::new(Telemetry::default());
        let registration = telemetry.register(
            7,
            "10.0.0.2:5000".parse().unwrap(),
            "203.0.113.2:21".parse().unwrap(),
            "client-nat",
        );
        let pinhole = Pinhole::passive(
            "10.0.0.2".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
            30000,
        );
        registration.entry().from_client(6);
        registration.entry().pinhole_opened(
            pinhole,
            Duration::from_micros(8),
            Duration::from_secs(30),
        );
        let snap = telemetry.snapshot();
        assert_eq!(snap.sessions.len(), 1);
        assert_eq!(snap.sessions[0].control_bytes_from_client, 6);
        assert_eq!(snap.sessions[0].pinholes.len(), 1);
        assert_eq!(snap.channels_opened_passive, 1);
        // 8 µs falls in the 10 µs bucket and every larger one, not in the 5 µs one.
        assert_eq!(snap.latency_buckets[0], (5e-6, 0));
        assert_eq!(snap.latency_buckets[1], (10e-6, 1));
        registration.entry().pinhole_closed(&pinhole);
        assert!(telemetry.snapshot().sessions[0].pinholes.is_empty());
        drop(registration);
        let snap = telemetry.snapshot();
        assert!(snap.sessions.is_empty());
        assert_eq!(snap.sessions_total, 1);
    }

    /// Each pinhole keeps the timeout it was opened with: a reload that changes
    /// `pinhole.timeout_secs` neither hides a live pinhole nor lengthens an old one.
    #[test]
    fn a_pinhole_is_listed_until_its_own_timeout() {
        let telemetry = Arc::new(Telemetry::default());
        let registration = telemetry.register(
            7,
            "10.0.0.2:5000".parse().unwrap(),
            "203.0.113.2:21".parse().unwrap(),
            "client-nat",
        );
        let pinhole = |port| {
            Pinhole::passive(
                "10.0.0.2".parse().unwrap(),
                "203.0.113.2".parse().unwrap(),
                port,
            )
        };
        let entry = registration.entry();
        entry.pinhole_opened(pinhole(30000), Duration::ZERO, Duration::ZERO);
        entry.pinhole_opened(pinhole(30001), Duration::ZERO, Duration::from_secs(120));
        let listed = &telemetry.snapshot().sessions[0].pinholes;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(listed[0].tuple.contains("30001"), "{listed:?}");
        assert!(
            (119..=120).contains(&listed[0].expires_in_secs),
            "{listed:?}"
        );
    }

    #[test]
    fn the_kernel_backends_counters_appear_once_a_source_is_set() {
        let telemetry = Telemetry::default();
        let snap = telemetry.snapshot();
        assert!(snap.firewall.is_none());
        let text = render_status(&serde_json::to_value(&snap).expect("json"));
        assert!(!text.contains("nftables:"), "{text}");
        telemetry.set_firewall_stats(FirewallStatsSource::new(|| FirewallStats {
            requests: 10,
            transactions: 7,
            busy_retries: 2,
            hot_placements: 3,
            flows_forgotten: 1,
            flows_swept: 5,
            flow_deletes_skipped: 4,
            flow_sweeps_deferred: 2,
            ports_in_use: 8,
            replays: 6,
            table_reinstalls: 1,
            ..FirewallStats::default()
        }));
        telemetry.session_refused(SessionRefusal::PerClient);
        let snap = telemetry.snapshot();
        let fw = snap.firewall.expect("counters");
        assert_eq!((fw.requests, fw.transactions, fw.busy_retries), (10, 7, 2));
        let text = render_status(&serde_json::to_value(&snap).expect("json"));
        assert!(
            text.contains(
                "nftables: 10 requests in 7 transactions (6 replayed one by one), 2 EBUSY \
                 retries, 3 pinholes in the _hot sets, 1 stale flows removed (5 swept ahead, 2 \
                 sweeps deferred for a live connection; 4 installs skipped the delete; 8 leased \
                 ports refused, their data connection still alive); table reinstalled 1 time(s)"
            ),
            "{text}"
        );
        assert!(text.contains("sessions refused: per_client 1\n"), "{text}");
        assert!(!text.contains("data channels refused"), "{text}");
    }

    #[test]
    fn status_says_when_the_open_files_limit_caps_the_sessions() {
        let shown = |limit, admitted| {
            let telemetry = Telemetry::default();
            telemetry.set_open_files(OpenFilesView {
                limit,
                max_sessions: 4096,
                admitted,
            });
            let snap = telemetry.snapshot();
            render_status(&serde_json::to_value(&snap).expect("json"))
        };
        let text = shown(65_536, 4096);
        assert!(
            text.contains("open files: limit 65536, room for limits.max_sessions 4096\n"),
            "{text}"
        );
        let text = shown(1024, 448);
        assert!(
            text.contains(
                "open files: limit 1024, room for 448 sessions, fewer than limits.max_sessions \
                 4096: raise LimitNOFILE= (or ulimit -Hn)"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_names_the_cpu_idle_setup_and_its_advice() {
        let shown = |view: Option<HostView>| {
            let telemetry = Telemetry::default();
            if let Some(view) = view {
                telemetry.set_host(view);
            }
            let snap = telemetry.snapshot();
            render_status(&serde_json::to_value(&snap).expect("json"))
        };
        assert!(!shown(None).contains("CPU idle"));
        let text = shown(Some(HostView {
            cpu_idle: "intel_idle".to_owned(),
            advice: None,
        }));
        assert!(text.contains("CPU idle: intel_idle\n"), "{text}");
        let text = shown(Some(HostView {
            cpu_idle: "haltpoll, guest_halt_poll_ns 0".to_owned(),
            advice: Some("let idle vCPUs poll".to_owned()),
        }));
        assert!(
            text.contains("CPU idle: haltpoll, guest_halt_poll_ns 0: let idle vCPUs poll\n"),
            "{text}"
        );
    }

    #[test]
    fn status_says_how_the_pinhole_path_is_scheduled() {
        let shown = |setting: &str, priority| {
            let telemetry = Telemetry::default();
            telemetry.set_realtime(RealtimeView {
                setting: setting.to_owned(),
                priority,
                scope: "pinholes".to_owned(),
            });
            let snap = telemetry.snapshot();
            render_status(&serde_json::to_value(&snap).expect("json"))
        };
        let text = shown("auto", 10);
        assert!(
            text.contains("pinhole path: SCHED_FIFO 10 (realtime_priority auto, scope pinholes)"),
            "{text}"
        );
        let text = shown("auto", 0);
        assert!(
            text.contains("pinhole path: normal scheduler (realtime_priority auto: this process"),
            "{text}"
        );
        let text = shown("0", 0);
        assert!(
            text.contains("pinhole path: normal scheduler (realtime_priority 0)"),
            "{text}"
        );
        let unset =
            render_status(&serde_json::to_value(Telemetry::default().snapshot()).expect("json"));
        assert!(!unset.contains("pinhole path"), "{unset}");
    }
}

//! The core benchmark: pinhole install latency and small-transfer throughput through ftp-alg,
//! against the kernel's own FTP helper measured in the same run on the same topology.
//!
//! Run as root: `sudo bash scripts/bench.sh` (= `cargo bench --bench core`), or
//! `cargo bench --bench core -- --quick` for a short smoke run. Numbers are printed as a
//! Markdown table and written to `target/bench/core.json`; the concurrency sweep is also drawn
//! to `target/bench/concurrency.svg`. This is a benchmark, not a test: it fails only when it
//! cannot run at all; slow numbers are reported, not asserted.
//!
//! What runs (everything inside the lab's own namespaces, see `ftp_alg::lab`):
//!
//! 1. Pinhole install latency, kernel ACK included: `NftFirewall::start_in_netns` in the
//!    gateway namespace with the daemon's base table loaded; N sequential opens, N opens from
//!    64 concurrent callers, N sequential closes; and as a reference the approach the design
//!    rejected (spawning `nft add/delete element` per operation).
//! 2. The daemon's own view of the same latency: its `pinhole acknowledged ... micros=` debug
//!    lines during a short run at log level debug (one session, PASV then PORT). The measured
//!    runs below use log level warn: per-transfer debug lines cost the daemon real time.
//! 3. 1 KiB RETR, each on its own data connection, PASV and PORT, with 1, 2, 4, … 64 control
//!    sessions in parallel (a thread each, every session looping PASV/PORT → data connection →
//!    RETR → EOF → 226), bounded by time and count; through ftp-alg (a fresh daemon per run)
//!    and through the kernel helper (`ct helper` "ftp" + nf_nat_ftp), alternating, a few
//!    rounds. Every transfer's bytes are checked. The third route: a userspace relay proxy
//!    (Debian's `ftp-proxy` in the gateway, see [`relay_bed`]), the same sessions through it.
//! 4. A probe with the daemon's *default* per-session limits, which shows how many transfers a
//!    single session gets before the ALG refuses one.

mod common;
#[path = "common/plot.rs"]
mod plot;

use common::{Op, Stats, drive};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ftp_alg::firewall::{NftFirewall, Pinhole};
use ftp_alg::lab::preflight::{self, Gate};
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, CLIENT_IP, ClientNatLab, ClientNatOptions, FTP_PASSWORD, FTP_USER,
    Netns, SERVER_IP, Vsftpd, VsftpdOptions, raw_client,
};
use socket2::{Domain, Socket, Type};

/// The file every transfer fetches.
const FILE_NAME: &str = "bench-1k.bin";
const FILE_LEN: usize = 1024;
/// The daemon's table name (the lab's default config).
const TABLE: &str = "ftp_alg";
/// Bound for every socket operation of the client loop.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Transfers at the start and at the end of each run compared for a trend.
const TREND_WINDOW: usize = 500;
/// A transfer run stops after this many failed transfers.
const MAX_FAILURES: usize = 50;

/// A PORT run stops after this many transfers: a fresh daemon leases each transfer a gateway
/// port from `--active-ports 40000-49999` (10,000) and rests a released one for the default
/// 2 s quarantine (ports / quarantine = 5,000 transfers/s per server sustained).
const PORT_RUN_CAP: usize = 9_000;

/// How much to do; `--quick` shrinks everything for a smoke run.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Pinholes per latency series.
    pinholes: usize,
    /// Concurrent callers of the second series.
    callers: usize,
    /// `nft` spawns per reference series.
    nft_spawns: usize,
    /// Time bound of one transfer run.
    run_time: Duration,
    /// Time bound of a run through the relay proxy (slow per session, but steady).
    relay_time: Duration,
    /// Count bound of one transfer run (all its sessions together) ...
    run_max: usize,
    /// ... at least this many per session.
    per_session_min: usize,
    /// Transfers of each mode in the debug-level run (the in-daemon pinhole latency).
    debug_max: usize,
    /// Transfers the default-limits probe attempts.
    probe_max: usize,
    /// Rounds of each transfer run (ftp-alg and helper alternate within a round).
    rounds: usize,
    /// Concurrent control sessions of the sweep.
    sessions: &'static [usize],
    /// The "parallel sessions" headline row (issue 7, target 2: 32).
    headline: usize,
}

impl Settings {
    fn from_args() -> Self {
        let quick = std::env::args().any(|a| a == "--quick");
        let env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        // FTP_ALG_BENCH_SESSIONS="1,8,32" replaces the sweep's session counts.
        let levels = |default: &'static [usize]| -> &'static [usize] {
            let Ok(text) = std::env::var("FTP_ALG_BENCH_SESSIONS") else {
                return default;
            };
            let mut list: Vec<usize> = text
                .split(',')
                .filter_map(|v| v.trim().parse().ok())
                .filter(|n| (1..=256).contains(n))
                .collect();
            list.sort_unstable();
            list.dedup();
            if list.is_empty() {
                default
            } else {
                Box::leak(list.into_boxed_slice())
            }
        };
        let full = Self {
            pinholes: env("FTP_ALG_BENCH_PINHOLES", 10_000) as usize,
            callers: 64,
            nft_spawns: env("FTP_ALG_BENCH_NFT_SPAWNS", 100) as usize,
            run_time: Duration::from_secs(env("FTP_ALG_BENCH_SECS", 5)),
            relay_time: Duration::from_secs(env("FTP_ALG_BENCH_RELAY_SECS", 2)),
            run_max: env("FTP_ALG_BENCH_MAX", 10_000) as usize,
            per_session_min: 100,
            debug_max: 2_000,
            probe_max: 40,
            rounds: env("FTP_ALG_BENCH_ROUNDS", 3).max(1) as usize,
            sessions: levels(&[1, 2, 4, 8, 16, 32, 64]),
            headline: 32,
        };
        if quick {
            Self {
                pinholes: 1_000,
                nft_spawns: 20,
                run_time: Duration::from_secs(1),
                relay_time: Duration::from_millis(500),
                run_max: 1_500,
                per_session_min: 30,
                debug_max: 200,
                rounds: 1,
                sessions: levels(&[1, 4, 32]),
                ..full
            }
        } else {
            full
        }
    }

    /// A short run before the measured ones.
    fn warm_up(self) -> Self {
        Self {
            run_max: 400,
            per_session_min: 0,
            run_time: Duration::from_secs(1),
            relay_time: Duration::from_millis(500),
            ..self
        }
    }

    /// The count bound of a run with `sessions` sessions.
    fn run_bound(&self, sessions: usize, mode: Mode) -> usize {
        let max = self.run_max.max(sessions * self.per_session_min);
        match mode {
            Mode::Pasv => max,
            Mode::Port => max.min(PORT_RUN_CAP),
        }
    }
}

fn main() {
    let settings = Settings::from_args();
    match preflight::gate(&["vsftpd"]) {
        Gate::Ready => {}
        Gate::Skip(why) => {
            eprintln!("core benchmark skipped: {why}");
            return;
        }
        Gate::Fail(why) => {
            eprintln!("core benchmark cannot run: {why}");
            std::process::exit(1);
        }
    }
    common::clean_up_on_interrupt();
    let started = Instant::now();
    let mut report = Report::default();
    if let Err(e) = run(settings, &mut report) {
        eprintln!("core benchmark failed: {e}");
        std::process::exit(1);
    }
    report.total = started.elapsed();
    let machine = machine_info();
    println!("{}", report.table(&machine, settings));
    let path = common::target_dir().join("bench").join("core.json");
    let json = report.json(&machine, settings);
    let svg_path = common::target_dir().join("bench").join("concurrency.svg");
    let svg = report.chart(&machine, settings).svg();
    for (path, text) in [(path, json), (svg_path, svg)] {
        match std::fs::create_dir_all(path.parent().expect("has a parent"))
            .and_then(|()| std::fs::write(&path, text))
        {
            Ok(()) => println!("written: {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
    }
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn run(settings: Settings, report: &mut Report) -> BoxResult<()> {
    let payload = random_payload();
    report.load_before = common::load_average();

    // Two labs side by side, so that ftp-alg and helper runs can alternate (the machine's
    // background load drifts; alternating spreads it over both).
    say("building the client-NAT lab for ftp-alg and the one with the kernel FTP helper");
    let lab = ClientNatLab::build(ClientNatOptions::default())?;
    let server = Vsftpd::start_with(&lab.server, &bench_vsftpd())?;
    server.put_file(FILE_NAME, &payload)?;
    let helper_lab = ClientNatLab::build(ClientNatOptions {
        kernel_helper: true,
        ..ClientNatOptions::default()
    })?;
    let helper_server = Vsftpd::start_with(&helper_lab.server, &bench_vsftpd())?;
    helper_server.put_file(FILE_NAME, &payload)?;
    let relay = relay_bed(&payload)?;

    say("pinhole latency through NftFirewall::start_in_netns");
    report.direct = pinhole_latency(&lab.gateway, settings)?;

    let direct = Endpoint {
        addr: SocketAddrV4::new(SERVER_IP, 21),
        user: FTP_USER.into(),
    };
    // The probe: the lab's standard daemon, default per-session limits.
    say("probe: one session with the daemon's default per-session limits");
    {
        let mut options = alg_options();
        options.log_level = "ftp_alg=info".into();
        let mut alg = AlgDaemon::start(&lab.gateway, &options)?;
        let route = Route {
            via: Via::Alg,
            lab: &lab,
            endpoint: direct.clone(),
            alg: None,
        };
        let mut result = transfer_run(
            &route,
            Mode::Pasv,
            1,
            &payload,
            Duration::from_secs(20),
            settings.probe_max,
            1,
        )?;
        result.refusal = alg
            .output()
            .lines()
            .find(|l| l.contains("WARN") || l.contains("refus"))
            .map(str::to_owned);
        report.probe = Some(result);
        alg.stop(Duration::from_secs(5));
    }

    // The measured daemon: admission limits opened up so that 64 sessions of one client may
    // log in at once, the active port range widened; everything else at its defaults.
    let options = measured_options();
    report.alg_command = options.argv().join(" ");

    // The daemon's own pinhole latency, from its debug lines: a short run of its own, because
    // per-transfer debug logging slows the daemon down (the measured runs use warn). The
    // firewall's own debug lines stay off: they are written inside the measured window (a
    // blocking write to a pipe the benchmark drains), which a daemon at its default level
    // never does.
    {
        let mut debug = options.clone();
        debug.log_level = IN_DAEMON_LOG_LEVEL.into();
        let alg = AlgDaemon::start(&lab.gateway, &debug)?;
        let route = Route {
            via: Via::Alg,
            lab: &lab,
            endpoint: direct.clone(),
            alg: None,
        };
        // One session, then the headline number at once (issue 7, target 4: install latency
        // under load, batched when many sessions ask at once).
        let mut sessions = 0;
        for n in [1, settings.headline] {
            for mode in [Mode::Pasv, Mode::Port] {
                say(&format!(
                    "ftp-alg at log level debug, {}, {n} session(s)",
                    mode.name()
                ));
                let before = alg.output().len();
                let result = transfer_run(
                    &route,
                    mode,
                    n,
                    &payload,
                    settings.run_time,
                    settings.debug_max.max(n * 50),
                    MAX_FAILURES,
                )?;
                let log = alg.output();
                let latency =
                    Stats::from_micros(acknowledged_micros(log.get(before..).unwrap_or(""), mode));
                sessions += n + result.reconnects;
                wait_sessions_ended(&alg, sessions);
                if n == 1 {
                    report.in_daemon.push((mode, latency));
                    report.alg_debug.push((mode, result));
                } else {
                    report
                        .in_daemon_loaded
                        .push((mode, n, result.rate(), latency));
                }
            }
        }
        save_log_if_failed(&alg, &report.alg_debug, "ftp-alg-debug.log");
    }

    // The sweep: every session count, both modes, every route; rounds outermost so that the
    // machine's drift spreads over all points, the routes' order rotating from run to run.
    let mut routes = vec![
        Route {
            via: Via::Alg,
            lab: &lab,
            endpoint: direct.clone(),
            alg: Some(&options),
        },
        Route {
            via: Via::Helper,
            lab: &helper_lab,
            endpoint: direct.clone(),
            alg: None,
        },
    ];
    if let Some(bed) = &relay {
        routes.push(Route {
            via: Via::Relay,
            lab: &bed.lab,
            endpoint: bed.endpoint.clone(),
            alg: None,
        });
    }
    let drops_before: Vec<Option<u64>> = routes
        .iter()
        .map(|r| conntrack_drops(&r.lab.gateway))
        .collect();
    // Warm-up, not counted: each route's first sessions and data connections (vsftpd's
    // first forks, page faults, conntrack and set growth).
    for route in &routes {
        say(&format!("warm-up: {}", route.via.label()));
        for mode in [Mode::Pasv, Mode::Port] {
            measure(route, mode, 4, &payload, settings.warm_up())?;
        }
    }
    let mut turn = 0;
    for round in 0..settings.rounds {
        for &sessions in settings.sessions {
            for mode in [Mode::Pasv, Mode::Port] {
                turn += 1;
                for i in 0..routes.len() {
                    let route = &routes[(i + turn + round) % routes.len()];
                    say(&format!(
                        "round {}: {}, {}, {sessions} session{}",
                        round + 1,
                        route.via.label(),
                        mode.name(),
                        if sessions == 1 { "" } else { "s" }
                    ));
                    let result = measure(route, mode, sessions, &payload, settings)?;
                    report.merge(sessions, mode, route.via, result);
                }
            }
        }
    }
    for (route, before) in routes.iter().zip(drops_before) {
        if let (Some(before), Some(after)) = (before, conntrack_drops(&route.lab.gateway)) {
            let dropped = after.saturating_sub(before);
            if dropped > 0 {
                say(&format!(
                    "warning: conntrack dropped {dropped} packets in the {} gateway (a full \
                     table: each costs a 1 s SYN retransmit); fewer rounds or a lower \
                     FTP_ALG_BENCH_MAX",
                    route.via.label()
                ));
            }
            report.conntrack_drops.push((route.via, dropped));
        }
    }
    drop(relay);
    report.load_after = common::load_average();
    Ok(())
}

/// vsftpd for the transfer runs: a wide passive port range (the lab's 101 ports are too few
/// for 64 sessions that each hold a listener while earlier data connections close: vsftpd
/// answered `500 OOPS: vsf_sysutil_bind`).
fn bench_vsftpd() -> VsftpdOptions {
    VsftpdOptions {
        pasv_ports: Some((30000, 39999)),
        ..VsftpdOptions::default()
    }
}

/// The daemon of the measured runs.
fn measured_options() -> AlgOptions {
    let mut options = alg_options();
    options.log_level = "ftp_alg=warn".into();
    options.active_ports = (40000, 49999);
    options.extra_args.extend(
        [
            "--max-sessions-per-client",
            "100000",
            "--new-sessions-per-second",
            "1000000",
        ]
        .map(String::from),
    );
    options
}

/// One run of the sweep; an ftp-alg run gets a daemon of its own, started fresh (its active
/// port pool and quarantine empty, nothing left from the previous run) and stopped after.
fn measure(
    route: &Route<'_>,
    mode: Mode,
    sessions: usize,
    payload: &[u8],
    settings: Settings,
) -> BoxResult<RunResult> {
    let daemon = match route.alg {
        Some(options) => Some(AlgDaemon::start(&route.lab.gateway, options)?),
        None => None,
    };
    let packets_before = GatewayPackets::read(&route.lab.gateway);
    let bound = match route.via {
        Via::Relay => settings.relay_time,
        Via::Alg | Via::Helper => settings.run_time,
    };
    let mut result = transfer_run(
        route,
        mode,
        sessions,
        payload,
        bound,
        settings.run_bound(sessions, mode),
        MAX_FAILURES,
    );
    if let (Ok(run), Some(before), Some(after)) = (
        &mut result,
        packets_before,
        GatewayPackets::read(&route.lab.gateway),
    ) {
        run.packets = Some(after.since(before));
    }
    if let Some(mut alg) = daemon {
        if let Ok(run) = &mut result {
            run.install = alg
                .status()
                .and_then(|status| Install::from_status(&status));
            if run.install.is_none() {
                say("  could not read the daemon's install histogram from its status socket");
            }
        }
        if result.as_ref().is_ok_and(|r| r.failures > 0) {
            save_log(
                &alg,
                &format!("ftp-alg-{}-{sessions}.log", mode.name().to_lowercase()),
            );
        }
        alg.stop(Duration::from_secs(5));
    }
    result
}

/// A way from the client to the server that the transfer runs measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Alg,
    Helper,
    Relay,
}

impl Via {
    const ALL: [Self; 3] = [Self::Alg, Self::Helper, Self::Relay];

    /// JSON key.
    fn key(self) -> &'static str {
        match self {
            Self::Alg => "ftp_alg",
            Self::Helper => "kernel_helper",
            Self::Relay => "relay_proxy",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Alg => "ftp-alg",
            Self::Helper => "kernel helper",
            Self::Relay => "relay proxy",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Self::Alg => "#d62728",
            Self::Helper => "#1f77b4",
            Self::Relay => "#2ca02c",
        }
    }
}

/// Where a client connects, and the user name it logs in with.
#[derive(Debug, Clone)]
struct Endpoint {
    addr: SocketAddrV4,
    user: String,
}

/// One [`Via`]: the lab whose client namespace runs the sessions, where they connect, and
/// for ftp-alg the daemon each run starts.
struct Route<'a> {
    via: Via,
    lab: &'a ClientNatLab,
    endpoint: Endpoint,
    alg: Option<&'a AlgOptions>,
}

/// The relay proxy's lab: kept alive (with its server and proxy) for the whole sweep.
struct RelayBed {
    /// The relay first: it is stopped before its server and its namespaces go.
    _guards: Vec<Box<dyn std::any::Any>>,
    endpoint: Endpoint,
    lab: ClientNatLab,
}

/// The third route: a userspace relay proxy in the gateway (Debian's `ftp-proxy`, started by
/// `ftp_alg::lab::relay`), in a client-NAT lab of its own (no ALG, no helper), transparent
/// like ftp-alg (LAN tcp/21 redirected to it; the client connects to the server's address
/// and logs in as usual), logging at `WRN`, `ForkLimit` off and `MaxClients` 512 (the lab's
/// defaults). It terminates both channels: every byte of control and data passes through
/// its per-session process. `None` when `ftp-proxy` is not installed or
/// `FTP_ALG_BENCH_RELAY=0`.
fn relay_bed(payload: &[u8]) -> BoxResult<Option<RelayBed>> {
    if let Some(why) = common::relay_unavailable() {
        say(&format!("relay proxy skipped: {why}"));
        return Ok(None);
    }
    say("building the lab for the relay proxy (ftp-proxy in the gateway)");
    let lab = ClientNatLab::build(ClientNatOptions::default())?;
    let server = Vsftpd::start_with(&lab.server, &bench_vsftpd())?;
    server.put_file(FILE_NAME, payload)?;
    let relay = common::start_relay(&lab.gateway)?;
    let target = relay.target(FTP_USER);
    Ok(Some(RelayBed {
        lab,
        endpoint: Endpoint {
            addr: target.addr,
            user: target.user,
        },
        _guards: vec![Box::new(relay), Box::new(server)],
    }))
}

/// Waits (at most 10 s) until the daemon has logged the end of `sessions` sessions (more if
/// reconnects made more). A session removes its pinholes when it ends; runs must not overlap
/// that clean-up, because the next session opens pinholes with the same keys (same client,
/// same server, vsftpd's 101 passive ports) and the clean-up would remove them again.
fn wait_sessions_ended(alg: &AlgDaemon, sessions: usize) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if alg.output().matches("session ended").count() >= sessions {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    say("  the daemon did not log the session's end within 10 s; going on");
}

/// Keeps the daemon's log next to the JSON when a run had failures, for the post-mortem.
fn save_log_if_failed(alg: &AlgDaemon, runs: &[(Mode, RunResult)], name: &str) {
    if runs.iter().any(|(_, r)| r.failures > 0) {
        save_log(alg, name);
    }
}

fn save_log(alg: &AlgDaemon, name: &str) {
    let path = common::target_dir().join("bench").join(name);
    let saved = std::fs::create_dir_all(path.parent().expect("has a parent"))
        .and_then(|()| std::fs::write(&path, alg.output()));
    match saved {
        Ok(()) => say(&format!(
            "  failures: daemon log saved to {}",
            path.display()
        )),
        Err(e) => say(&format!("  could not save {}: {e}", path.display())),
    }
}

/// The daemon under test (see [`common::alg_options`]).
fn alg_options() -> AlgOptions {
    common::alg_options(&[])
}

/// Packets conntrack dropped in `ns` (summed over CPUs; `net/stat/nf_conntrack`): mostly new
/// connections refused by a full table, each of which costs its client a SYN retransmit (1 s)
/// that no failure count shows.
///
/// Read through `/proc/thread-self`: `/proc/net` is `/proc/self/net`, the namespace of the
/// process's main thread, not of the thread that joined `ns`.
fn conntrack_drops(ns: &Netns) -> Option<u64> {
    ns.run_in(|| {
        let text = std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack").ok()?;
        let mut lines = text.lines();
        let column = lines.next()?.split_whitespace().position(|f| f == "drop")?;
        lines
            .map(|line| {
                line.split_whitespace()
                    .nth(column)
                    .and_then(|v| u64::from_str_radix(v, 16).ok())
            })
            .sum()
    })
    .ok()
    .flatten()
}

/// Packets the gateway's interfaces (loopback aside) received and sent, from
/// `/proc/thread-self/net/dev` inside `ns` (see [`conntrack_drops`] for why `thread-self`).
#[derive(Debug, Clone, Copy, Default)]
struct GatewayPackets {
    received: u64,
    sent: u64,
}

impl GatewayPackets {
    fn read(ns: &Netns) -> Option<Self> {
        ns.run_in(|| {
            let text = std::fs::read_to_string("/proc/thread-self/net/dev").ok()?;
            let mut total = Self::default();
            for line in text.lines().skip(2) {
                let (name, counters) = line.split_once(':')?;
                if name.trim() == "lo" {
                    continue;
                }
                // Receive: bytes packets errs drop fifo frame compressed multicast; then the
                // same eight for transmit.
                let fields: Vec<u64> = counters
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                total.received += *fields.get(1)?;
                total.sent += *fields.get(9)?;
            }
            Some(total)
        })
        .ok()
        .flatten()
    }

    fn since(self, before: Self) -> Self {
        Self {
            received: self.received.saturating_sub(before.received),
            sent: self.sent.saturating_sub(before.sent),
        }
    }

    fn add(&mut self, other: Self) {
        self.received += other.received;
        self.sent += other.sent;
    }

    /// (received, sent) per transfer.
    fn per_transfer(self, transfers: usize) -> Option<(f64, f64)> {
        (transfers > 0).then(|| {
            (
                self.received as f64 / transfers as f64,
                self.sent as f64 / transfers as f64,
            )
        })
    }
}

fn say(text: &str) {
    eprintln!("[core bench] {text}");
}

fn random_payload() -> Vec<u8> {
    let mut data = vec![0u8; FILE_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .expect("reading /dev/urandom");
    data
}

// ------------------------------------------------------------------------------------------
// Statistics

impl Stats {
    fn triple(&self) -> String {
        if self.n == 0 {
            return "no samples".into();
        }
        format!("{} / {} / {}", us(self.p50), us(self.p99), us(self.p999))
    }

    fn json(&self) -> Json {
        Json::obj([
            ("n", Json::Int(self.n as u64)),
            ("p50_us", Json::Num(self.p50)),
            ("p99_us", Json::Num(self.p99)),
            ("p999_us", Json::Num(self.p999)),
            ("max_us", Json::Num(self.max)),
            ("mean_us", Json::Num(self.mean)),
        ])
    }
}

fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

// ------------------------------------------------------------------------------------------
// 1. Pinhole latency, directly through the firewall backend

#[derive(Debug, Clone, Default)]
struct Series {
    name: &'static str,
    /// What did the work: `NftFirewall` or the `nft` reference.
    backend: &'static str,
    latency: Stats,
    ops_per_sec: f64,
    /// nf_tables transactions the firewall thread sent for this series.
    transactions: u64,
    /// Kernel time per transaction (sendmsg + ACK read), µs.
    kernel_us_per_tx: f64,
    failures: usize,
}

impl Series {
    fn json(&self) -> Json {
        Json::obj([
            ("backend", Json::Str(self.backend.into())),
            ("latency", self.latency.json()),
            ("ops_per_sec", Json::Num(self.ops_per_sec)),
            ("transactions", Json::Int(self.transactions)),
            (
                "kernel_us_per_transaction",
                Json::Num(self.kernel_us_per_tx),
            ),
            ("failures", Json::Int(self.failures as u64)),
        ])
    }
}

fn pinhole_latency(gateway: &Netns, settings: Settings) -> BoxResult<Vec<Series>> {
    // The daemon's own table, exactly as `ftp-alg rules` prints it for the lab's settings.
    let options = alg_options();
    let mut argv = options.argv();
    argv[1] = "rules".into();
    let rules = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()?;
    if !rules.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&rules.stderr)
        )
        .into());
    }
    let mut script = format!("table inet {TABLE}\ndelete table inet {TABLE}\n").into_bytes();
    script.extend_from_slice(&rules.stdout);
    gateway.exec_stdin_ok(&["nft", "-f", "-"], &script)?;
    let result = pinhole_series(gateway, settings);
    // The daemon installs its own copy; leave nothing of ours behind either way.
    let _ = gateway.exec(&["nft", "delete", "table", "inet", TABLE]);
    result
}

fn pinhole_series(gateway: &Netns, settings: Settings) -> BoxResult<Vec<Series>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let fw = NftFirewall::start_in_netns(TABLE, Some(&gateway.path()))?;
    let n = settings.pinholes;
    let mut next = 0u32;
    let mut fresh = |count: usize| -> Vec<Pinhole> {
        (0..count)
            .map(|_| {
                next += 1;
                // 10.1.0.0/16 and up: set keys only, no packet ever uses them.
                passive_pinhole(Ipv4Addr::from(0x0a01_0000 + next))
            })
            .collect()
    };
    let mut out = Vec::new();
    let sequential = fresh(n);
    let concurrent = fresh(n);
    // Warm-up (first socket use, page faults), not counted.
    runtime.block_on(drive(&fw, fresh(200), 1, Op::Open(OPEN_TIMEOUT), None));

    // Paced: one open per millisecond, so the firewall thread (and the runtime's worker) has
    // gone idle before each call, as it has in the daemon between two transfers.
    let paced = fresh(n.min(2_000));
    // What a PORT behind the client's NAT installs, paced the same way: three set elements
    // (`dnat_to`, `dnat_once`, `active_pin`) in one transaction, then the conntrack delete
    // of whatever an earlier holder of the gateway port left (target 4's PORT row).
    let paced_active: Vec<Pinhole> = (0..n.min(2_000))
        .map(|i| {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            active_pinhole(
                Ipv4Addr::from(0x0a03_0000 + i),
                40_000 + (i % 10_000) as u16,
            )
        })
        .collect();
    for (name, pinholes, callers, op, gap) in [
        (
            "open, sequential",
            sequential.clone(),
            1,
            Op::Open(OPEN_TIMEOUT),
            None,
        ),
        (
            "open, 64 callers",
            concurrent,
            settings.callers,
            Op::Open(OPEN_TIMEOUT),
            None,
        ),
        (
            "open, paced 1 ms apart",
            paced,
            1,
            Op::Open(OPEN_TIMEOUT),
            Some(Duration::from_millis(1)),
        ),
        (
            "active open (3 elements + conntrack delete), paced 1 ms apart",
            paced_active,
            1,
            Op::Open(OPEN_TIMEOUT),
            Some(Duration::from_millis(1)),
        ),
        ("close, sequential", sequential, 1, Op::Close, None),
    ] {
        let before = fw.stats();
        let start = Instant::now();
        let (times, failures) = runtime.block_on(drive(&fw, pinholes, callers, op, gap));
        let elapsed = start.elapsed();
        let after = fw.stats();
        let tx = after.transactions - before.transactions;
        let kernel = (after.kernel_time - before.kernel_time).as_secs_f64() * 1e6;
        out.push(Series {
            name,
            backend: "NftFirewall",
            ops_per_sec: times.len() as f64 / elapsed.as_secs_f64(),
            latency: Stats::from_durations(&times),
            transactions: tx,
            kernel_us_per_tx: kernel / tx.max(1) as f64,
            failures,
        });
    }
    drop(fw);
    drop(runtime);

    out.extend(nft_spawn_series(gateway, settings.nft_spawns)?);
    Ok(out)
}

/// A passive pinhole `client -> server:30000`.
fn passive_pinhole(client: Ipv4Addr) -> Pinhole {
    Pinhole::passive(IpAddr::V4(client), IpAddr::V4(SERVER_IP), 30000)
}

/// An active pinhole behind the client's NAT: `server:20 -> gateway:port`, DNATed to
/// `client:50000` (set keys only; no packet ever uses them).
fn active_pinhole(client: Ipv4Addr, gateway_port: u16) -> Pinhole {
    Pinhole::active(
        IpAddr::V4(SERVER_IP),
        IpAddr::V4(ACTIVE_GATEWAY_IP),
        gateway_port,
        IpAddr::V4(client),
        50_000,
    )
}

/// The gateway address of [`active_pinhole`]'s keys (documentation range).
const ACTIVE_GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 201);

/// The pinhole timeout of the opens the microbenchmarks time (they are closed again long
/// before).
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The rejected alternative, as a reference: one `nft` process per element add / delete, run
/// from a thread inside the gateway namespace (so no `ip netns exec` in the measurement).
fn nft_spawn_series(gateway: &Netns, count: usize) -> BoxResult<Vec<Series>> {
    let thread = gateway.spawn_thread(move || {
        let mut out = Vec::new();
        for verb in ["add", "delete"] {
            let mut times = Vec::new();
            let mut failures = 0;
            let start = Instant::now();
            for i in 0..count {
                if start.elapsed() > Duration::from_secs(30) {
                    break;
                }
                let element = format!(
                    "{{ 10.2.{}.{} . {SERVER_IP} . 30000{} }}",
                    i / 250,
                    i % 250 + 1,
                    if verb == "add" { " timeout 60s" } else { "" }
                );
                let t = Instant::now();
                let ok = run_bounded(
                    Command::new("nft")
                        .args([verb, "element", "inet", TABLE, "passive_pin"])
                        .arg(&element),
                    Duration::from_secs(5),
                );
                if ok {
                    times.push(t.elapsed());
                } else {
                    failures += 1;
                }
            }
            let elapsed = start.elapsed();
            out.push(Series {
                name: if verb == "add" {
                    "`nft add element` per op"
                } else {
                    "`nft delete element` per op"
                },
                backend: "reference: one nft process per op",
                ops_per_sec: times.len() as f64 / elapsed.as_secs_f64(),
                latency: Stats::from_durations(&times),
                transactions: times.len() as u64,
                kernel_us_per_tx: 0.0,
                failures,
            });
        }
        out
    })?;
    Ok(thread.join()?)
}

/// Runs `cmd` (output discarded), killing it after `timeout`; whether it succeeded.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> bool {
    let Ok(mut child) = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            Ok(None) => std::thread::sleep(Duration::from_micros(50)),
            Err(_) => return false,
        }
    }
}

/// The log level of the runs that measure the pinhole latency inside the daemon: debug, for
/// the sessions' `pinhole acknowledged` lines, except the firewall's per-transaction lines.
const IN_DAEMON_LOG_LEVEL: &str = "ftp_alg=debug,ftp_alg::firewall=info";

/// The daemon's `pinhole acknowledged` debug lines for one mode: their `micros=` values.
fn acknowledged_micros(log: &str, mode: Mode) -> Vec<f64> {
    let kind = match mode {
        Mode::Pasv => "pinhole=passive",
        Mode::Port => "pinhole=active",
    };
    log.lines()
        .filter(|l| l.contains("pinhole acknowledged") && l.contains(kind))
        .filter_map(|l| {
            let rest = &l[l.find("micros=")? + "micros=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// 2. Small transfers on one control session

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pasv,
    Port,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Pasv => "PASV",
            Self::Port => "PORT",
        }
    }
}

/// Where a transfer's time goes, one sample per successful transfer.
#[derive(Debug, Clone, Default)]
struct Phases {
    /// PASV → 227, or PORT → 200 (through the ALG: includes the pinhole install).
    negotiate: Vec<Duration>,
    /// Passive: the data connection's connect (SYN through the gateway and back).
    connect: Vec<Duration>,
    /// RETR → 150 (active: the server connects to us before it answers).
    opening: Vec<Duration>,
    /// 150 → end of data (active: includes accept).
    data: Vec<Duration>,
    /// End of data → 226.
    complete: Vec<Duration>,
}

#[derive(Debug, Clone, Default)]
struct RunResult {
    ok: usize,
    failures: usize,
    reconnects: usize,
    elapsed: Duration,
    /// Time spent in transfers that failed (timeouts included).
    failed_time: Duration,
    transfers: Vec<Duration>,
    /// The first and the last [`TREND_WINDOW`] transfer times of each run: a session that
    /// gets slower as it goes shows it here.
    early: Vec<Duration>,
    late: Vec<Duration>,
    phases: Phases,
    /// The first few distinct errors.
    errors: Vec<String>,
    /// 1-based index of the first failed transfer.
    first_failure_at: Option<usize>,
    /// Whether the run was cut by its time bound (else by count or failures).
    timed_out: bool,
    /// For the probe: the daemon's first warning.
    refusal: Option<String>,
    /// Transfers/s of each round merged into this aggregate.
    round_rates: Vec<f64>,
    /// When the measured part began (after login) and ended; for a run of several sessions,
    /// the first start and the last end.
    started: Option<Instant>,
    ended: Option<Instant>,
    /// ftp-alg runs: the daemon's own pinhole-install histogram, read from its status socket
    /// at the end of each run (every run has a fresh daemon, so it holds that run's installs).
    install: Option<Install>,
    /// Packets the gateway received and sent during the run (its logins and QUITs included).
    packets: Option<GatewayPackets>,
}

/// The daemon's pinhole-install latency histogram (`ftp-alg status`, the same one `/metrics`
/// exports): cumulative counts at its bucket bounds. The bounds include 20 µs and 100 µs, so
/// issue 7's target 4 (p50 ≤ 20 µs, p99 ≤ 100 µs) is decided exactly, not interpolated.
#[derive(Debug, Clone, Default)]
struct Install {
    /// (upper bound in seconds, installs that took at most that long).
    buckets: Vec<(f64, u64)>,
    total: u64,
}

impl Install {
    fn from_status(status: &serde_json::Value) -> Option<Self> {
        let buckets = status
            .get("latency_buckets")?
            .as_array()?
            .iter()
            .map(|b| Some((b.get(0)?.as_f64()?, b.get(1)?.as_u64()?)))
            .collect::<Option<Vec<_>>>()?;
        let total = status.get("latency_count")?.as_u64()?;
        Some(Self { buckets, total })
    }

    fn add(&mut self, other: &Self) {
        if self.buckets.is_empty() {
            self.buckets.clone_from(&other.buckets);
        } else {
            for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
                mine.1 += theirs.1;
            }
        }
        self.total += other.total;
    }

    /// The share of installs that took at most `secs` (a bucket bound).
    fn share_within(&self, secs: f64) -> Option<f64> {
        let (_, n) = self
            .buckets
            .iter()
            .find(|(le, _)| (*le - secs).abs() < 1e-9)?;
        (self.total > 0).then(|| *n as f64 / self.total as f64)
    }

    /// The smallest bucket bound that at least `q` of the installs stayed within: "pq ≤ that".
    fn quantile_bound(&self, q: f64) -> Option<f64> {
        self.buckets
            .iter()
            .find(|(_, n)| *n as f64 >= q * self.total as f64)
            .map(|(le, _)| *le)
    }

    /// "≤ 20 µs"-style text for a quantile, or "> 1 s" past the last bound.
    fn quantile_text(&self, q: f64) -> String {
        match self.quantile_bound(q) {
            Some(le) => format!("≤ {}", us(le * 1e6)),
            None => format!(
                "> {}",
                us(self.buckets.last().map_or(0.0, |(le, _)| le * 1e6))
            ),
        }
    }

    fn json(&self) -> Json {
        Json::obj([
            ("installs", Json::Int(self.total)),
            (
                "cumulative_buckets_us",
                Json::Arr(
                    self.buckets
                        .iter()
                        .map(|(le, n)| Json::Arr(vec![Json::Num(le * 1e6), Json::Int(*n)]))
                        .collect(),
                ),
            ),
            (
                "share_within_20us",
                self.share_within(20e-6).map_or(Json::Null, Json::Num),
            ),
            (
                "share_within_100us",
                self.share_within(100e-6).map_or(Json::Null, Json::Num),
            ),
        ])
    }
}

impl RunResult {
    /// Transfers/s of this run alone.
    fn rate_of_run(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ok as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// The median over the merged rounds (or this run's rate).
    fn rate(&self) -> f64 {
        if self.round_rates.is_empty() {
            return self.rate_of_run();
        }
        let mut rates = self.round_rates.clone();
        rates.sort_by(f64::total_cmp);
        rates[(rates.len() - 1) / 2]
    }

    /// "min–max" of the round rates.
    fn rate_range(&self) -> String {
        let min = self
            .round_rates
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let max = self.round_rates.iter().copied().fold(0.0, f64::max);
        if self.round_rates.len() < 2 {
            String::new()
        } else {
            format!(" ({min:.0}–{max:.0})")
        }
    }

    /// Adds a round: its rate counts as one of the rounds'.
    fn merge(&mut self, run: Self) {
        self.round_rates.push(run.rate_of_run());
        self.absorb(run);
    }

    /// Adds the counts and samples of `run` (another session of the same run, or a round).
    fn absorb(&mut self, run: Self) {
        self.first_failure_at = match (self.first_failure_at, run.first_failure_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.started = match (self.started, run.started) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.ended = match (self.ended, run.ended) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.ok += run.ok;
        self.failures += run.failures;
        self.reconnects += run.reconnects;
        self.elapsed += run.elapsed;
        self.failed_time += run.failed_time;
        self.transfers.extend(run.transfers);
        self.early.extend(run.early);
        self.late.extend(run.late);
        self.phases.negotiate.extend(run.phases.negotiate);
        self.phases.connect.extend(run.phases.connect);
        self.phases.opening.extend(run.phases.opening);
        self.phases.data.extend(run.phases.data);
        self.phases.complete.extend(run.phases.complete);
        for error in run.errors {
            if self.errors.len() < 5 && !self.errors.contains(&error) {
                self.errors.push(error);
            }
        }
        self.timed_out |= run.timed_out;
        if let Some(install) = run.install {
            self.install
                .get_or_insert_with(Install::default)
                .add(&install);
        }
        if let Some(packets) = run.packets {
            self.packets
                .get_or_insert_with(GatewayPackets::default)
                .add(packets);
        }
    }

    fn json(&self) -> Json {
        let phase = |samples: &[Duration]| Stats::from_durations(samples).json();
        Json::obj([
            ("transfers_ok", Json::Int(self.ok as u64)),
            ("failures", Json::Int(self.failures as u64)),
            ("reconnects", Json::Int(self.reconnects as u64)),
            ("elapsed_s", Json::Num(self.elapsed.as_secs_f64())),
            (
                "time_in_failed_transfers_s",
                Json::Num(self.failed_time.as_secs_f64()),
            ),
            ("transfers_per_sec_median_of_rounds", Json::Num(self.rate())),
            (
                "transfers_per_sec_each_round",
                Json::Arr(self.round_rates.iter().map(|r| Json::Num(*r)).collect()),
            ),
            ("stopped_by_time_bound", Json::Bool(self.timed_out)),
            (
                "transfer_latency",
                Stats::from_durations(&self.transfers).json(),
            ),
            (
                "transfer_latency_first_500_of_each_run",
                Stats::from_durations(&self.early).json(),
            ),
            (
                "transfer_latency_last_500_of_each_run",
                Stats::from_durations(&self.late).json(),
            ),
            (
                "phases",
                Json::obj([
                    ("negotiate", phase(&self.phases.negotiate)),
                    ("data_connect", phase(&self.phases.connect)),
                    ("retr_to_150", phase(&self.phases.opening)),
                    ("data", phase(&self.phases.data)),
                    ("to_226", phase(&self.phases.complete)),
                ]),
            ),
            (
                "pinhole_install_in_daemon",
                self.install.as_ref().map_or(Json::Null, Install::json),
            ),
            (
                "gateway_packets_per_transfer",
                self.packets.and_then(|p| p.per_transfer(self.ok)).map_or(
                    Json::Null,
                    |(received, sent)| {
                        Json::obj([("received", Json::Num(received)), ("sent", Json::Num(sent))])
                    },
                ),
            ),
            (
                "first_failure_at",
                self.first_failure_at
                    .map_or(Json::Null, |i| Json::Int(i as u64)),
            ),
            (
                "errors",
                Json::Arr(self.errors.iter().cloned().map(Json::Str).collect()),
            ),
        ])
    }
}

/// What the sessions of one run share: the count bound and a start line.
struct Shared {
    /// Transfers claimed so far; a session claims one before each attempt.
    tickets: AtomicUsize,
    max: usize,
    /// Sessions that have tried to log in.
    ready: AtomicUsize,
    sessions: usize,
    /// Set when the run is given up (a session could not be started).
    abort: AtomicBool,
}

/// Runs `sessions` client loops in parallel, a thread each in the route's client namespace.
/// Every session logs in first; the clock starts when all have (bounded by 30 s). The run
/// ends after `max` transfers of all sessions together or `bound`, whichever is first; every
/// session's socket operations are bounded too, and the whole run by `bound` + 60 s.
fn transfer_run(
    route: &Route<'_>,
    mode: Mode,
    sessions: usize,
    payload: &[u8],
    bound: Duration,
    max: usize,
    max_failures: usize,
) -> BoxResult<RunResult> {
    let expect: Arc<[u8]> = payload.into();
    let shared = Arc::new(Shared {
        tickets: AtomicUsize::new(0),
        max,
        ready: AtomicUsize::new(0),
        sessions,
        abort: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (tx, mine, expect) = (tx.clone(), Arc::clone(&shared), Arc::clone(&expect));
        let endpoint = route.endpoint.clone();
        let spawned = route.lab.client.spawn_thread(move || {
            let result = client_loop(&endpoint, mode, &expect, &mine, bound, max_failures);
            let _ = tx.send(result);
        });
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                shared.abort.store(true, Ordering::SeqCst);
                return Err(e.into());
            }
        }
    }
    drop(tx);
    // Every socket carries a timeout, so the loops end soon after their bound; the margin
    // only guards against a bug. Overrunning threads are abandoned.
    let deadline = Instant::now() + bound + Duration::from_secs(60);
    let mut total = RunResult::default();
    for _ in 0..sessions {
        let left = deadline.saturating_duration_since(Instant::now());
        let part = rx.recv_timeout(left).map_err(|_| {
            shared.abort.store(true, Ordering::SeqCst);
            format!("{mode:?} client loops did not finish within their bound + 60 s")
        })?;
        total.absorb(part);
    }
    for thread in threads {
        let _ = thread.join();
    }
    if let (Some(start), Some(end)) = (total.started, total.ended) {
        total.elapsed = end.saturating_duration_since(start);
    }
    say(&format!(
        "  {} ×{sessions}: {} ok, {} failed, {:.2} s, {:.0} transfers/s",
        mode.name(),
        total.ok,
        total.failures,
        total.elapsed.as_secs_f64(),
        total.rate_of_run()
    ));
    Ok(total)
}

fn client_loop(
    endpoint: &Endpoint,
    mode: Mode,
    expect: &[u8],
    shared: &Shared,
    bound: Duration,
    max_failures: usize,
) -> RunResult {
    let mut result = RunResult::default();
    let mut control = match Control::login(endpoint) {
        Ok(c) => Some(c),
        Err(e) => {
            note_error(&mut result, 1, format!("login: {e}"));
            None
        }
    };
    // The start line: every session logged in (or failed to) before the clock starts.
    shared.ready.fetch_add(1, Ordering::SeqCst);
    let waiting = Instant::now();
    while shared.ready.load(Ordering::SeqCst) < shared.sessions
        && !shared.abort.load(Ordering::SeqCst)
        && waiting.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut buf = Vec::with_capacity(FILE_LEN * 2);
    let start = Instant::now();
    let mut attempts = 0;
    while result.failures < max_failures && !shared.abort.load(Ordering::Relaxed) {
        if start.elapsed() >= bound {
            result.timed_out = true;
            break;
        }
        if shared.tickets.fetch_add(1, Ordering::Relaxed) >= shared.max {
            break;
        }
        attempts += 1;
        if control.is_none() {
            match Control::login(endpoint) {
                Ok(c) => control = Some(c),
                Err(e) => {
                    note_error(&mut result, attempts, format!("login: {e}"));
                    continue;
                }
            }
        }
        let Some(ctl) = control.as_mut() else {
            continue;
        };
        let t = Instant::now();
        match ctl.retr(mode, &mut buf, &mut result.phases) {
            Ok(()) if buf == expect => {
                result.ok += 1;
                result.transfers.push(t.elapsed());
            }
            Ok(()) => {
                note_error(
                    &mut result,
                    attempts,
                    format!("received {} bytes that differ from the file", buf.len()),
                );
            }
            Err(failure) => {
                result.failed_time += t.elapsed();
                note_error(
                    &mut result,
                    attempts,
                    format!("{}: {}", failure.step, failure.message),
                );
                if !failure.in_sync {
                    // The control connection may be out of step: start a fresh session.
                    control = None;
                    result.reconnects += 1;
                }
            }
        }
    }
    let end = Instant::now();
    result.elapsed = end - start;
    result.started = Some(start);
    result.ended = Some(end);
    let window = TREND_WINDOW.min(result.transfers.len() / 2);
    result.early = result.transfers[..window].to_vec();
    result.late = result.transfers[result.transfers.len() - window..].to_vec();
    if let Some(mut ctl) = control {
        let _ = ctl.send("QUIT");
    }
    result
}

fn note_error(result: &mut RunResult, attempt: usize, error: String) {
    result.failures += 1;
    result.first_failure_at.get_or_insert(attempt);
    if result.errors.len() < 5 && !result.errors.contains(&error) {
        result.errors.push(error);
    }
}

/// A logged-in control connection, kept minimal and fast (no per-line allocation beyond the
/// reply text, TCP_NODELAY, every socket bounded by [`IO_TIMEOUT`]).
struct Control {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: String,
}

impl Control {
    fn login(endpoint: &Endpoint) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&SocketAddr::V4(endpoint.addr), IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut ctl = Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            line: String::new(),
        };
        ctl.expect(&[220])?;
        ctl.send(&format!("USER {}", endpoint.user))?;
        if ctl.expect(&[230, 331])? == 331 {
            ctl.send(&format!("PASS {FTP_PASSWORD}"))?;
            ctl.expect(&[230])?;
        }
        ctl.send("TYPE I")?;
        ctl.expect(&[200])?;
        Ok(ctl)
    }

    fn send(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.writer.write_all(&bytes)
    }

    /// Reads one reply (multi-line aware) into `self.line`; returns its code.
    fn reply(&mut self) -> io::Result<u16> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "control connection closed",
            ));
        }
        let code: u16 = self
            .line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not a reply: {:?}", self.line)))?;
        if self.line.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            let mut next = String::new();
            loop {
                next.clear();
                if self.reader.read_line(&mut next)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "control connection closed in a multi-line reply",
                    ));
                }
                self.line.push_str(&next);
                if next.starts_with(&end) {
                    break;
                }
            }
        }
        Ok(code)
    }

    fn expect(&mut self, codes: &[u16]) -> io::Result<u16> {
        let code = self.reply()?;
        if codes.contains(&code) {
            Ok(code)
        } else {
            Err(io::Error::other(format!(
                "expected {codes:?}, got {}",
                self.line.trim_end()
            )))
        }
    }

    /// One `RETR` of the benchmark file on a fresh data connection, into `buf`.
    fn retr(&mut self, mode: Mode, buf: &mut Vec<u8>, phases: &mut Phases) -> Result<(), Failure> {
        buf.clear();
        let t0 = Instant::now();
        let (mut data, t1, t2, t3) = match mode {
            Mode::Pasv => {
                self.send("PASV").map_err(Failure::control("PASV"))?;
                self.expect(&[227]).map_err(Failure::reply("PASV"))?;
                let addr = raw_client::parse_227(&self.line).ok_or_else(|| Failure {
                    step: "PASV",
                    message: format!("bad 227: {}", self.line.trim_end()),
                    in_sync: true,
                })?;
                let t1 = Instant::now();
                // The server waits for this connection; if it fails the session is still in
                // step (the next PASV replaces the listener).
                let data = TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT)
                    .map_err(Failure::reply("data connect"))?;
                data.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(Failure::control("data socket"))?;
                let t2 = Instant::now();
                self.send(&format!("RETR {FILE_NAME}"))
                    .map_err(Failure::control("RETR"))?;
                self.expect(&[125, 150]).map_err(Failure::control("RETR"))?;
                (data, t1, t2, Instant::now())
            }
            Mode::Port => {
                let listen = || -> io::Result<(Socket, u16)> {
                    let listener = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                    listener.bind(&SocketAddr::V4(SocketAddrV4::new(CLIENT_IP, 0)).into())?;
                    listener.listen(4)?;
                    // SO_RCVTIMEO bounds accept() on Linux.
                    listener.set_read_timeout(Some(IO_TIMEOUT))?;
                    let port = listener
                        .local_addr()?
                        .as_socket_ipv4()
                        .ok_or_else(|| io::Error::other("listener is not IPv4"))?
                        .port();
                    Ok((listener, port))
                };
                let (listener, port) = listen().map_err(Failure::reply("listen"))?;
                let [a, b, c, d] = CLIENT_IP.octets();
                self.send(&format!(
                    "PORT {a},{b},{c},{d},{},{}",
                    port >> 8,
                    port & 0xff
                ))
                .map_err(Failure::control("PORT"))?;
                self.expect(&[200]).map_err(Failure::reply("PORT"))?;
                let t1 = Instant::now();
                self.send(&format!("RETR {FILE_NAME}"))
                    .map_err(Failure::control("RETR"))?;
                // A server that cannot connect answers 425 here: still in step.
                self.expect(&[125, 150]).map_err(Failure::reply("RETR"))?;
                let t2 = Instant::now();
                let (socket, _) = listener.accept().map_err(Failure::control("accept"))?;
                let data: TcpStream = socket.into();
                data.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(Failure::control("data socket"))?;
                (data, t1, t1, t2)
            }
        };
        data.read_to_end(buf).map_err(Failure::control("data"))?;
        drop(data);
        let t4 = Instant::now();
        self.expect(&[226, 250]).map_err(Failure::control("226"))?;
        let t5 = Instant::now();
        phases.negotiate.push(t1 - t0);
        if mode == Mode::Pasv {
            phases.connect.push(t2 - t1);
        }
        phases.opening.push(t3 - t2);
        phases.data.push(t4 - t3);
        phases.complete.push(t5 - t4);
        Ok(())
    }
}

/// A failed transfer: where, why, and whether the control connection is still usable.
struct Failure {
    step: &'static str,
    message: String,
    in_sync: bool,
}

impl Failure {
    /// An error after which the control connection is out of step (reconnect).
    fn control(step: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |e| Self {
            step,
            message: e.to_string(),
            in_sync: false,
        }
    }

    /// An error (an unexpected reply, a failed data connect) after which it is still in step.
    /// A timeout on the control connection is never in step.
    fn reply(step: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |e| Self {
            step,
            in_sync: !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ) || step == "data connect",
            message: e.to_string(),
        }
    }
}

// ------------------------------------------------------------------------------------------
// 3. Report

#[derive(Debug, Default)]
struct Report {
    direct: Vec<Series>,
    in_daemon: Vec<(Mode, Stats)>,
    /// The same with the headline number of sessions at once: mode, sessions, their
    /// transfers/s at log level debug, the latency.
    in_daemon_loaded: Vec<(Mode, usize, f64, Stats)>,
    /// The one-session runs at log level debug that gave `in_daemon`.
    alg_debug: Vec<(Mode, RunResult)>,
    /// Every run of the sweep, rounds merged per (sessions, mode, route).
    sweep: Vec<Cell>,
    probe: Option<RunResult>,
    alg_command: String,
    total: Duration,
    load_before: String,
    load_after: String,
    /// Packets conntrack dropped in each route's gateway during the warm-up and the sweep.
    conntrack_drops: Vec<(Via, u64)>,
}

/// One point of the sweep for one route.
#[derive(Debug)]
struct Cell {
    sessions: usize,
    mode: Mode,
    via: Via,
    result: RunResult,
}

struct Machine {
    nproc: usize,
    kernel: String,
    cpu: String,
    date: String,
    commit: String,
}

fn machine_info() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let stdout = |cmd: &mut Command| {
        cmd.stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, usize::from),
        kernel: common::kernel_release(),
        cpu: read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default(),
        date: stdout(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        commit: {
            let git = |args: &[&str]| {
                stdout(
                    Command::new("git")
                        .args(args)
                        .current_dir(env!("CARGO_MANIFEST_DIR")),
                )
            };
            let head = git(&["rev-parse", "--short", "HEAD"]);
            // Say what was measured when it is not simply HEAD.
            let head = if let Some(binary) = std::env::var_os("FTP_ALG_BENCH_BINARY") {
                format!("{head} (daemon: {})", Path::new(&binary).display())
            } else if git(&["status", "--porcelain", "--", "src"]).is_empty() {
                head
            } else {
                format!("{head} + uncommitted src changes")
            };
            let extra = common::alg_options(&[]).extra_args;
            if extra.is_empty() {
                head
            } else {
                format!("{head}, ftp-alg with `{}`", extra.join(" "))
            }
        },
    }
}

const MODES: [Mode; 2] = [Mode::Pasv, Mode::Port];

/// Picks one phase's samples.
type PhaseOf = fn(&Phases) -> &Vec<Duration>;

/// `a / b` to about three digits, or n/a.
fn ratio(a: f64, b: f64) -> String {
    if !(a > 0.0 && b > 0.0) {
        return "n/a".into();
    }
    let r = a / b;
    if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 10.0 {
        format!("{r:.1}")
    } else if r >= 0.1 {
        format!("{r:.2}")
    } else {
        format!("{r:.4}")
    }
}

fn sessions_text(n: usize) -> String {
    if n == 1 {
        "one session".into()
    } else {
        format!("{n} parallel sessions")
    }
}

impl Report {
    /// Adds a round of (`sessions`, `mode`, `via`).
    fn merge(&mut self, sessions: usize, mode: Mode, via: Via, run: RunResult) {
        if let Some(cell) = self
            .sweep
            .iter_mut()
            .find(|c| c.sessions == sessions && c.mode == mode && c.via == via)
        {
            cell.result.merge(run);
        } else {
            let mut result = run;
            result.round_rates = vec![result.rate_of_run()];
            self.sweep.push(Cell {
                sessions,
                mode,
                via,
                result,
            });
        }
    }

    fn cell(&self, sessions: usize, mode: Mode, via: Via) -> Option<&RunResult> {
        self.sweep
            .iter()
            .find(|c| c.sessions == sessions && c.mode == mode && c.via == via)
            .map(|c| &c.result)
    }

    /// The routes measured, ftp-alg first.
    fn vias(&self) -> Vec<Via> {
        let mut vias: Vec<Via> = Via::ALL
            .into_iter()
            .filter(|v| self.sweep.iter().any(|c| c.via == *v))
            .collect();
        for must in [Via::Helper, Via::Alg] {
            if !vias.contains(&must) {
                vias.insert(0, must);
            }
        }
        vias.sort_by_key(|v| Via::ALL.iter().position(|a| a == v));
        vias
    }

    /// The session counts measured, ascending.
    fn levels(&self) -> Vec<usize> {
        let mut levels: Vec<usize> = self.sweep.iter().map(|c| c.sessions).collect();
        levels.sort_unstable();
        levels.dedup();
        levels
    }

    fn table(&self, m: &Machine, s: Settings) -> String {
        let vias = self.vias();
        let others: Vec<Via> = vias.iter().copied().filter(|v| *v != Via::Alg).collect();
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\n## ftp-alg core benchmark — {} — {} × {}, kernel {}, commit {}\n",
            m.date, m.nproc, m.cpu, m.kernel, m.commit
        );
        let _ = writeln!(
            t,
            "Transfers: {} rounds per row, each run bounded by {} s ({} s through the relay proxy) \
             or {} transfers (at least {} per session; PORT at most {PORT_RUN_CAP}); the routes' runs \
             alternate, every ftp-alg run with a freshly started daemon at log level warn. Load \
             average before/after: {} / {}. Conntrack drops in the gateways during the sweep \
             (a full table; each costs a 1 s SYN retransmit): {}.\n",
            s.rounds,
            s.run_time.as_secs(),
            s.relay_time.as_secs_f64(),
            s.run_max,
            s.per_session_min,
            self.load_before,
            self.load_after,
            if self.conntrack_drops.is_empty() {
                "not read".to_owned()
            } else {
                self.conntrack_drops
                    .iter()
                    .map(|(via, n)| format!("{} {n}", via.label()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        // One column per route, one ratio column per route other than ftp-alg.
        let row = |t: &mut String, metric: &str, cells: &[String], ratios: &[String]| {
            let mut line = format!("| {metric} |");
            for i in 0..vias.len() {
                let _ = write!(line, " {} |", cells.get(i).map_or("", String::as_str));
            }
            for i in 0..others.len() {
                let _ = write!(line, " {} |", ratios.get(i).map_or("", String::as_str));
            }
            let _ = writeln!(t, "{line}");
        };
        let mut header = vec!["metric".to_owned()];
        header.extend(vias.iter().map(|v| v.label().to_owned()));
        header.extend(others.iter().map(|v| format!("ratio (alg/{})", v.label())));
        let _ = writeln!(t, "| {} |", header.join(" | "));
        let _ = writeln!(t, "|{}", "---|".repeat(header.len()));
        let na = |first: String| {
            let mut cells = vec![first];
            cells.extend(others.iter().map(|_| "n/a".to_owned()));
            cells
        };
        for series in &self.direct {
            let kernel = if series.kernel_us_per_tx > 0.0 {
                format!(
                    "; {} transactions, {:.1} µs kernel each",
                    series.transactions, series.kernel_us_per_tx
                )
            } else {
                String::new()
            };
            let failed = if series.failures > 0 {
                format!("; **{} failed**", series.failures)
            } else {
                String::new()
            };
            row(
                &mut t,
                &format!(
                    "pinhole {} ({}, n={}): p50/p99/p999 µs; ops/s",
                    series.name, series.backend, series.latency.n
                ),
                &na(format!(
                    "{}; {:.0}/s{kernel}{failed}",
                    series.latency.triple(),
                    series.ops_per_sec
                )),
                &[],
            );
        }
        for (mode, stats) in &self.in_daemon {
            row(
                &mut t,
                &format!(
                    "pinhole open inside the daemon, {} run at log level debug (its log), p50/p99/p999 µs",
                    mode.name()
                ),
                &na(format!("{} (n={})", stats.triple(), stats.n)),
                &[],
            );
        }
        for (mode, sessions, rate, stats) in &self.in_daemon_loaded {
            row(
                &mut t,
                &format!(
                    "pinhole open inside the daemon, {} with {sessions} sessions at once (log level debug, {rate:.0} transfers/s), p50/p99/p999 µs",
                    mode.name()
                ),
                &na(format!("{} (n={})", stats.triple(), stats.n)),
                &[],
            );
        }
        let levels = self.levels();
        let mut heads = vec![1, s.headline];
        if !levels.contains(&s.headline) {
            heads[1] = levels.last().copied().unwrap_or(1);
        }
        heads.dedup();
        for &n in heads.iter().filter(|n| levels.contains(n)) {
            for mode in MODES {
                let runs: Vec<Option<&RunResult>> =
                    vias.iter().map(|v| self.cell(n, mode, *v)).collect();
                let Some(a) = runs[0] else {
                    continue;
                };
                let name = mode.name();
                let each = |f: &dyn Fn(&RunResult) -> String| -> Vec<String> {
                    runs.iter()
                        .map(|r| r.map_or_else(|| "not run".to_owned(), f))
                        .collect()
                };
                let ratios = |f: &dyn Fn(&RunResult) -> f64, bold: bool| -> Vec<String> {
                    runs[1..]
                        .iter()
                        .map(|r| {
                            let text = r.map_or_else(|| "n/a".into(), |r| ratio(f(a), f(r)));
                            if bold { format!("**{text}**") } else { text }
                        })
                        .collect()
                };
                row(
                    &mut t,
                    &format!(
                        "**1 KiB RETR {name}, {}, transfers/s** (median of rounds, range)",
                        sessions_text(n)
                    ),
                    &each(&|r| format!("**{:.0}**{}", r.rate(), r.rate_range())),
                    &ratios(&RunResult::rate, true),
                );
                row(
                    &mut t,
                    "… transfers ok / failed (time spent in failed ones)",
                    &each(&|r| {
                        format!(
                            "{} / {} ({:.2} s)",
                            r.ok,
                            r.failures,
                            r.failed_time.as_secs_f64()
                        )
                    }),
                    &[],
                );
                row(
                    &mut t,
                    "… per-transfer latency p50/p99/p999 µs (ratio: p50)",
                    &each(&|r| Stats::from_durations(&r.transfers).triple()),
                    &ratios(&|r| Stats::from_durations(&r.transfers).p50, false),
                );
                if n != 1 {
                    continue;
                }
                row(
                    &mut t,
                    &format!(
                        "… per-transfer p50 µs, first {TREND_WINDOW} → last {TREND_WINDOW} transfers of a run"
                    ),
                    &each(&|r| {
                        format!(
                            "{} → {}",
                            us(Stats::from_durations(&r.early).p50),
                            us(Stats::from_durations(&r.late).p50)
                        )
                    }),
                    &[],
                );
                let phases: [(&str, PhaseOf); 5] = [
                    (
                        if mode == Mode::Pasv {
                            "PASV→227"
                        } else {
                            "PORT→200"
                        },
                        |p| &p.negotiate,
                    ),
                    ("data connect", |p| &p.connect),
                    ("RETR→150", |p| &p.opening),
                    ("150→data EOF", |p| &p.data),
                    ("EOF→226", |p| &p.complete),
                ];
                for (label, get) in phases {
                    if get(&a.phases).is_empty() {
                        continue;
                    }
                    let p50 = |r: &RunResult| Stats::from_durations(get(&r.phases)).p50;
                    row(
                        &mut t,
                        &format!("… phase {label}, p50 µs"),
                        &each(&|r| us(p50(r))),
                        &ratios(&p50, false),
                    );
                }
            }
        }
        for (mode, debug) in &self.alg_debug {
            let mut cells = vec![format!(
                "{:.0} ({} ok, {} failed)",
                debug.rate(),
                debug.ok,
                debug.failures
            )];
            cells.extend(others.iter().map(|v| {
                self.cell(1, *mode, *v)
                    .map_or_else(|| "n/a".into(), |r| format!("{:.0}", r.rate()))
            }));
            let ratios: Vec<String> = others
                .iter()
                .map(|v| {
                    self.cell(1, *mode, *v)
                        .map_or_else(|| "n/a".into(), |r| ratio(debug.rate(), r.rate()))
                })
                .collect();
            row(
                &mut t,
                &format!(
                    "1 KiB RETR {}, one session, daemon at log level debug (the run above, one round), transfers/s",
                    mode.name()
                ),
                &cells,
                &ratios,
            );
        }
        if let Some(probe) = &self.probe {
            let mut cells = vec![
                probe
                    .first_failure_at
                    .map_or(format!("none in {}", probe.ok), |i| (i - 1).to_string()),
            ];
            cells.extend(others.iter().map(|v| match self.cell(1, Mode::Pasv, *v) {
                Some(r) if r.failures == 0 => format!("none refused ({} in one session)", r.ok),
                Some(r) => format!(
                    "{} failed of {} in one session",
                    r.failures,
                    r.ok + r.failures
                ),
                None => "not measured".to_owned(),
            }));
            row(
                &mut t,
                "default limits (max 8 pinholes/session, 30 s timeout): PASV transfers in one session before the first refusal",
                &cells,
                &[],
            );
        }

        // The sweep, every point.
        let _ = writeln!(
            t,
            "\n### Concurrency sweep: 1 KiB RETR, transfers/s of all sessions (median of rounds) and per-transfer latency p50 / p99 µs (all transfers of all rounds)\n"
        );
        let mut header = vec!["mode".to_owned(), "sessions".to_owned()];
        header.extend(vias.iter().map(|v| format!("{} /s", v.label())));
        header.extend(others.iter().map(|v| format!("alg/{}", v.label())));
        header.extend(vias.iter().map(|v| format!("{} p50 / p99 µs", v.label())));
        header.push("failed".into());
        let _ = writeln!(t, "| {} |", header.join(" | "));
        let _ = writeln!(t, "|{}", "---|".repeat(header.len()));
        for mode in MODES {
            for &n in &levels {
                let runs: Vec<Option<&RunResult>> =
                    vias.iter().map(|v| self.cell(n, mode, *v)).collect();
                if runs.iter().all(Option::is_none) {
                    continue;
                }
                let mut cells = vec![mode.name().to_owned(), n.to_string()];
                cells.extend(runs.iter().map(|r| {
                    r.map_or_else(
                        || "—".into(),
                        |r| format!("{:.0}{}", r.rate(), r.rate_range()),
                    )
                }));
                let rate = |r: Option<&RunResult>| r.map_or(0.0, RunResult::rate);
                cells.extend(runs[1..].iter().map(|r| ratio(rate(runs[0]), rate(*r))));
                cells.extend(runs.iter().map(|r| {
                    r.map_or_else(
                        || "—".into(),
                        |r| {
                            let st = Stats::from_durations(&r.transfers);
                            format!("{} / {}", us(st.p50), us(st.p99))
                        },
                    )
                }));
                cells.push(
                    runs.iter()
                        .map(|r| r.map_or_else(|| "—".into(), |r| r.failures.to_string()))
                        .collect::<Vec<_>>()
                        .join(" / "),
                );
                let _ = writeln!(t, "| {} |", cells.join(" | "));
            }
        }

        // What each route costs on the wire: ftp-alg terminates the control connections that
        // the helper forwards, so this shows whether it adds packets (it should not: the same
        // segments, relayed instead of forwarded).
        let _ = writeln!(
            t,
            "\n### Packets through the gateway per transfer: received / sent on its interfaces (loopback aside), all rounds, logins and QUITs included\n"
        );
        let mut header = vec!["mode".to_owned(), "sessions".to_owned()];
        header.extend(vias.iter().map(|v| v.label().to_owned()));
        let _ = writeln!(t, "| {} |", header.join(" | "));
        let _ = writeln!(t, "|{}", "---|".repeat(header.len()));
        for mode in MODES {
            for &n in &levels {
                let cells: Vec<String> = vias
                    .iter()
                    .map(|v| {
                        self.cell(n, mode, *v)
                            .and_then(|r| r.packets?.per_transfer(r.ok))
                            .map_or_else(|| "—".into(), |(rx, tx)| format!("{rx:.2} / {tx:.2}"))
                    })
                    .collect();
                if cells.iter().all(|c| c == "—") {
                    continue;
                }
                let _ = writeln!(t, "| {} | {n} | {} |", mode.name(), cells.join(" | "));
            }
        }

        // Target 4 in the sweep's own runs: the daemon's histogram at its measured log level.
        let installs: Vec<(Mode, usize, &Install)> = MODES
            .iter()
            .flat_map(|&mode| levels.iter().map(move |&n| (mode, n)))
            .filter_map(|(mode, n)| {
                let install = self.cell(n, mode, Via::Alg)?.install.as_ref()?;
                (install.total > 0).then_some((mode, n, install))
            })
            .collect();
        if !installs.is_empty() {
            let _ = writeln!(
                t,
                "\n### Pinhole install inside the daemon during the sweep: its own histogram (`ftp-alg status`), log level warn, all rounds\n\n\
                 From the session's request to the kernel's ACK, as the daemon's `/metrics` \
                 reports it. Quantiles are bucket bounds (…, 10, 20, 50, 100, 250 µs, …): target \
                 4 asks p50 ≤ 20 µs and p99 ≤ 100 µs.\n"
            );
            let _ = writeln!(
                t,
                "| mode | sessions | installs | p50 | p99 | ≤ 20 µs | ≤ 100 µs | target 4 |"
            );
            let _ = writeln!(t, "|---|---|---|---|---|---|---|---|");
            for (mode, n, install) in installs {
                let share = |secs: f64| {
                    install
                        .share_within(secs)
                        .map_or_else(|| "n/a".into(), |x| format!("{:.2} %", x * 100.0))
                };
                let met = install.share_within(20e-6).is_some_and(|x| x >= 0.5)
                    && install.share_within(100e-6).is_some_and(|x| x >= 0.99);
                let _ = writeln!(
                    t,
                    "| {} | {n} | {} | {} µs | {} µs | {} | {} | {} |",
                    mode.name(),
                    install.total,
                    install.quantile_text(0.5),
                    install.quantile_text(0.99),
                    share(20e-6),
                    share(100e-6),
                    if met { "met" } else { "not met" }
                );
            }
        }

        let _ = writeln!(
            t,
            "\nTotal benchmark time: {:.1} s",
            self.total.as_secs_f64()
        );
        for cell in &self.sweep {
            if !cell.result.errors.is_empty() {
                let _ = writeln!(
                    t,
                    "{} {} ×{} errors: {:?}",
                    cell.via.label(),
                    cell.mode.name(),
                    cell.sessions,
                    cell.result.errors
                );
            }
        }
        for (mode, r) in &self.alg_debug {
            if !r.errors.is_empty() {
                let _ = writeln!(
                    t,
                    "ftp-alg {} (log level debug) errors: {:?}",
                    mode.name(),
                    r.errors
                );
            }
        }
        if let Some(probe) = &self.probe {
            if !probe.errors.is_empty() {
                let _ = writeln!(t, "probe errors: {:?}", probe.errors);
            }
            if let Some(refusal) = &probe.refusal {
                let _ = writeln!(t, "probe: daemon said: {refusal}");
            }
        }
        let _ = writeln!(t, "daemon: {}", self.alg_command);
        t
    }

    fn json(&self, m: &Machine, s: Settings) -> String {
        let runs = |list: &[(Mode, RunResult)]| {
            Json::Obj(
                list.iter()
                    .map(|(mode, r)| (mode.name().to_owned(), r.json()))
                    .collect(),
            )
        };
        let one_session = |via: Via| {
            Json::Obj(
                MODES
                    .iter()
                    .filter_map(|mode| {
                        self.cell(1, *mode, via)
                            .map(|r| (mode.name().to_owned(), r.json()))
                    })
                    .collect(),
            )
        };
        let vias = self.vias();
        let mut points = Vec::new();
        for mode in MODES {
            for n in self.levels() {
                let mut fields = vec![
                    ("mode".to_owned(), Json::Str(mode.name().into())),
                    ("sessions".to_owned(), Json::Int(n as u64)),
                ];
                for via in &vias {
                    fields.push((
                        via.key().to_owned(),
                        self.cell(n, mode, *via).map_or(Json::Null, RunResult::json),
                    ));
                }
                points.push(Json::Obj(fields));
            }
        }
        let root = Json::obj([
            (
                "machine",
                Json::obj([
                    ("nproc", Json::Int(m.nproc as u64)),
                    ("kernel", Json::Str(m.kernel.clone())),
                    ("cpu", Json::Str(m.cpu.clone())),
                    ("date", Json::Str(m.date.clone())),
                    ("commit", Json::Str(m.commit.clone())),
                    ("loadavg_before", Json::Str(self.load_before.clone())),
                    ("loadavg_after", Json::Str(self.load_after.clone())),
                    (
                        "conntrack_drops",
                        Json::Obj(
                            self.conntrack_drops
                                .iter()
                                .map(|(via, n)| (via.key().to_owned(), Json::Int(*n)))
                                .collect(),
                        ),
                    ),
                ]),
            ),
            (
                "settings",
                Json::obj([
                    ("pinholes_per_series", Json::Int(s.pinholes as u64)),
                    ("concurrent_callers", Json::Int(s.callers as u64)),
                    ("run_time_bound_s", Json::Num(s.run_time.as_secs_f64())),
                    (
                        "relay_run_time_bound_s",
                        Json::Num(s.relay_time.as_secs_f64()),
                    ),
                    ("run_count_bound", Json::Int(s.run_max as u64)),
                    (
                        "run_count_bound_min_per_session",
                        Json::Int(s.per_session_min as u64),
                    ),
                    ("port_run_count_cap", Json::Int(PORT_RUN_CAP as u64)),
                    ("debug_run_count_bound", Json::Int(s.debug_max as u64)),
                    ("rounds", Json::Int(s.rounds as u64)),
                    (
                        "sessions",
                        Json::Arr(s.sessions.iter().map(|n| Json::Int(*n as u64)).collect()),
                    ),
                    ("file_bytes", Json::Int(FILE_LEN as u64)),
                    ("daemon_command", Json::Str(self.alg_command.clone())),
                    (
                        "daemon_per_run",
                        Json::Str(
                            "each ftp-alg run of the sweep starts a fresh daemon (log level warn)"
                                .into(),
                        ),
                    ),
                ]),
            ),
            (
                "pinhole_direct",
                Json::Obj(
                    self.direct
                        .iter()
                        .map(|s| (s.name.to_owned(), s.json()))
                        .collect(),
                ),
            ),
            (
                "pinhole_in_daemon",
                Json::Obj(
                    self.in_daemon
                        .iter()
                        .map(|(mode, st)| (mode.name().to_owned(), st.json()))
                        .collect(),
                ),
            ),
            (
                "pinhole_in_daemon_loaded",
                Json::Obj(
                    self.in_daemon_loaded
                        .iter()
                        .map(|(mode, sessions, rate, st)| {
                            (
                                mode.name().to_owned(),
                                Json::obj([
                                    ("sessions", Json::Int(*sessions as u64)),
                                    ("transfers_per_sec_at_debug", Json::Num(*rate)),
                                    ("latency", st.json()),
                                ]),
                            )
                        })
                        .collect(),
                ),
            ),
            ("transfers_ftp_alg", one_session(Via::Alg)),
            ("transfers_kernel_helper", one_session(Via::Helper)),
            ("transfers_relay_proxy", one_session(Via::Relay)),
            ("transfers_ftp_alg_log_debug", runs(&self.alg_debug)),
            (
                "concurrency_sweep",
                Json::obj([
                    (
                        "routes",
                        Json::Arr(vias.iter().map(|v| Json::Str(v.key().into())).collect()),
                    ),
                    ("points", Json::Arr(points)),
                    (
                        "plot",
                        Json::Str(
                            common::target_dir()
                                .join("bench")
                                .join("concurrency.svg")
                                .display()
                                .to_string(),
                        ),
                    ),
                ]),
            ),
            (
                "probe_default_limits_pasv",
                self.probe.as_ref().map_or(Json::Null, |p| {
                    let mut j = p.json();
                    if let Json::Obj(fields) = &mut j {
                        fields.push((
                            "daemon_warning".into(),
                            p.refusal.clone().map_or(Json::Null, Json::Str),
                        ));
                    }
                    j
                }),
            ),
            ("total_seconds", Json::Num(self.total.as_secs_f64())),
        ]);
        let mut out = String::new();
        root.write(&mut out);
        out.push('\n');
        out
    }

    /// The sweep as a chart: per mode, transfers/s and per-transfer latency against the
    /// number of concurrent sessions, one line per route.
    fn chart(&self, m: &Machine, s: Settings) -> plot::Chart {
        let vias = self.vias();
        let levels = self.levels();
        let x_label = "concurrent control sessions (log2 scale)";
        let mut panels = Vec::new();
        for mode in MODES {
            let mut rates = Vec::new();
            let mut latency = Vec::new();
            for via in &vias {
                let cells: Vec<(f64, &RunResult)> = levels
                    .iter()
                    .filter_map(|n| self.cell(*n, mode, *via).map(|r| (*n as f64, r)))
                    .collect();
                if cells.is_empty() {
                    continue;
                }
                let stats: Vec<(f64, Stats)> = cells
                    .iter()
                    .map(|(n, r)| (*n, Stats::from_durations(&r.transfers)))
                    .collect();
                rates.push(plot::Line {
                    label: via.label().into(),
                    color: via.color(),
                    dashed: false,
                    points: cells.iter().map(|(n, r)| (*n, r.rate())).collect(),
                });
                latency.push(plot::Line {
                    label: format!("{} p50", via.label()),
                    color: via.color(),
                    dashed: false,
                    points: stats.iter().map(|(n, st)| (*n, st.p50)).collect(),
                });
                latency.push(plot::Line {
                    label: format!("{} p99", via.label()),
                    color: via.color(),
                    dashed: true,
                    points: stats.iter().map(|(n, st)| (*n, st.p99)).collect(),
                });
            }
            if rates.is_empty() {
                continue;
            }
            // Linear, unless the routes lie orders of magnitude apart (the relay proxy).
            let values = || rates.iter().flat_map(|l| l.points.iter().map(|p| p.1));
            let (min, max) = (
                values().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min),
                values().fold(0.0, f64::max),
            );
            let (y_scale, y_label) = if max > 30.0 * min {
                (
                    plot::YScale::Log10,
                    "1 KiB RETRs/s, all sessions (median of rounds; log scale)",
                )
            } else {
                (
                    plot::YScale::Linear,
                    "1 KiB RETRs/s, all sessions (median of rounds)",
                )
            };
            panels.push(plot::Panel {
                title: format!("{}: transfers per second", mode.name()),
                x_label: x_label.into(),
                y_label: y_label.into(),
                y_scale,
                lines: rates,
            });
            panels.push(plot::Panel {
                title: format!("{}: per-transfer latency", mode.name()),
                x_label: x_label.into(),
                y_label: "µs per transfer (p50 solid, p99 dashed)".into(),
                y_scale: plot::YScale::Log10,
                lines: latency,
            });
        }
        let names: Vec<&str> = vias.iter().map(|v| v.label()).collect();
        plot::Chart {
            title: format!(
                "1 KiB RETR, each on its own data connection: {} by concurrent sessions",
                names.join(" vs ")
            ),
            subtitle: format!(
                "{} · commit {} · {} × {}, kernel {} · load {} → {} · {} round{} per point, ≤ {} s or ≤ {} transfers per run",
                m.date,
                m.commit,
                m.nproc,
                m.cpu,
                m.kernel,
                self.load_before,
                self.load_after,
                s.rounds,
                if s.rounds == 1 { "" } else { "s" },
                s.run_time.as_secs(),
                s.run_max
            ),
            columns: 2,
            panels,
        }
    }
}

/// Just enough JSON for the report (no extra dependency).
enum Json {
    Null,
    Bool(bool),
    Int(u64),
    Num(f64),
    Str(String),
    Arr(Vec<Self>),
    Obj(Vec<(String, Self)>),
}

impl Json {
    fn obj<const N: usize>(fields: [(&str, Self); N]) -> Self {
        Self::Obj(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    fn write(&self, out: &mut String) {
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Self::Num(n) if n.is_finite() => {
                let _ = write!(out, "{}", (n * 1e6).round() / 1e6);
            }
            Self::Num(_) => out.push_str("null"),
            Self::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            Self::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Self::Obj(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    Self::Str(key.clone()).write(out);
                    out.push_str(": ");
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

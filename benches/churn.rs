//! The session-churn benchmark (issue 7, target 5: ≥ 1,000 new sessions per second on one
//! core): K concurrent clients each loop complete FTP sessions — connect, 220, USER/PASS, PASV,
//! data connect, LIST (content checked), 226, QUIT, 221 — through the gateway, against a tiny
//! non-forking FTP server (`benches/common/tiny_ftp.rs`), through ftp-alg (the daemon pinned to
//! one CPU), through the kernel's FTP helper and through a userspace relay proxy (Debian's
//! `ftp-proxy`, pinned to the same CPU), with the same server and the same load, rounds
//! alternating.
//!
//! Run as root: `sudo bash scripts/bench-churn.sh` (= `cargo bench --bench churn`), or
//! `cargo bench --bench churn -- --quick` for a smoke run (< 30 s once built). Numbers are
//! printed as Markdown tables and written to `target/bench/churn.json`. A benchmark, not a
//! test: it fails only when it cannot run; slow numbers are reported, never asserted.
//!
//! Variants are entries of [`VARIANTS`]: each builds a [`Bed`] (a client-NAT lab, the tiny
//! server in its server namespace and, optionally, a userspace process in the gateway whose
//! CPU time is measured and which is pinned to one CPU). The third, `relay`, is
//! `ftp_alg::lab::relay`'s `ftp-proxy` in the gateway, transparent (LAN tcp/21 redirected to
//! it; the clients are unchanged): it forks one process per session, answers 220 itself,
//! connects to the server only after USER, and copies both channels through userspace. Its
//! CPU time is the daemon's plus its session children's (reaped: cutime+cstime; still there:
//! their utime+stime); the children inherit the daemon's CPU affinity, live ones are pinned
//! again before each run. It is skipped, with a message, when `/usr/sbin/ftp-proxy` is
//! missing or with `FTP_ALG_BENCH_RELAY=0`. `MaxClients` is capped at 512 by ftp-proxy, so K
//! above 512 gets `421` refusals through it.
//!
//! Every client and server loop runs on threads inside a lab namespace and is bounded in count
//! and in time; every socket operation has a timeout. For each concurrency level the beds are
//! built afresh, so that conntrack and TIME_WAIT entries do not pile up across levels.

mod common;
#[path = "common/tiny_ftp.rs"]
mod tiny_ftp;

use common::Stats;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddrV4;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use ftp_alg::lab::preflight::{self, Gate};
use ftp_alg::lab::relay::RELAY_BINARY;
use ftp_alg::lab::{AlgDaemon, AlgOptions, ClientNatLab, ClientNatOptions, Netns, SERVER_IP};
use serde_json::json;
use tiny_ftp::{LISTING, TinyFtp};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The tiny server's PASV port range (≥ 1024; TIME_WAIT on a port does not block its reuse).
const PASV_PORTS: (u16, u16) = (20000, 59999);
/// Timeout of every client socket operation.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A run also stops after this many failed sessions.
const MAX_FAILURES: usize = 10_000;
/// The target of issue 7.
const TARGET_PER_SEC: f64 = 1000.0;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn say(text: &str) {
    eprintln!("[churn bench] {text}");
}

// ------------------------------------------------------------------------------------------
// Settings

#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    /// Concurrency levels (concurrent client sessions).
    clients: Vec<usize>,
    rounds: usize,
    secs: f64,
    /// Most sessions per run.
    max_sessions: usize,
    /// Unrecorded warm-up per bed before the rounds.
    warmup_secs: f64,
    /// Load generator threads (each a current-thread tokio runtime).
    load_threads: usize,
    /// Server threads (each a current-thread tokio runtime, SO_REUSEPORT on :21).
    server_threads: usize,
    /// The CPU the daemon is pinned to.
    daemon_cpu: usize,
    /// Where the load generator and server threads are pinned (default: not pinned).
    peer_cpu: Option<usize>,
    /// Which variants run (keys of [`VARIANTS`]).
    variants: Vec<String>,
    /// More daemon arguments (FTP_ALG_CHURN_DAEMON_ARGS, split on whitespace).
    daemon_args: Vec<String>,
}

impl Settings {
    fn from_args() -> Self {
        /// Most concurrent clients of one run.
        const MAX_CLIENTS: usize = 256;
        let quick = std::env::args().any(|a| a == "--quick");
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let num = |name: &str, default: f64| {
            env(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(default)
        };
        let list = |name: &str, default: &[usize]| {
            env(name)
                .map(|v| {
                    v.split(',')
                        .filter_map(|s| s.trim().parse().ok())
                        .filter(|&n: &usize| n > 0)
                        // Bounded like the core sweep's sessions.
                        .map(|n| n.min(MAX_CLIENTS))
                        .collect::<Vec<usize>>()
                })
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_vec())
        };
        let variants = env("FTP_ALG_CHURN_VARIANTS")
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_else(|| VARIANTS.iter().map(|v| v.key.to_owned()).collect());
        let daemon_args = env("FTP_ALG_CHURN_DAEMON_ARGS")
            .map(|v| v.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let common = Self {
            quick,
            clients: list("FTP_ALG_CHURN_CLIENTS", &[1, 8, 32]),
            rounds: num("FTP_ALG_CHURN_ROUNDS", 3.0).max(1.0) as usize,
            secs: num("FTP_ALG_CHURN_SECS", 4.0).max(0.5),
            max_sessions: num("FTP_ALG_CHURN_MAX", 25_000.0).max(1.0) as usize,
            warmup_secs: 0.5,
            load_threads: num("FTP_ALG_CHURN_LOAD_THREADS", 1.0).max(1.0) as usize,
            server_threads: num("FTP_ALG_CHURN_SERVER_THREADS", 1.0).max(1.0) as usize,
            daemon_cpu: num("FTP_ALG_CHURN_DAEMON_CPU", 0.0) as usize,
            peer_cpu: env("FTP_ALG_CHURN_PEER_CPU").and_then(|v| v.trim().parse().ok()),
            variants,
            daemon_args,
        };
        if quick {
            return Self {
                clients: list("FTP_ALG_CHURN_CLIENTS", &[16]),
                rounds: 1,
                secs: 2.0,
                max_sessions: 20_000,
                warmup_secs: 0.2,
                ..common
            };
        }
        common
    }
}

// ------------------------------------------------------------------------------------------
// Variants: what sits in the gateway

/// A way to get FTP through the gateway.
struct Variant {
    key: &'static str,
    name: &'static str,
    build: fn(&Settings) -> BoxResult<Bed>,
}

const VARIANTS: &[Variant] = &[
    Variant {
        key: "alg",
        name: "ftp-alg",
        build: build_alg,
    },
    Variant {
        key: "helper",
        name: "kernel FTP helper",
        build: build_helper,
    },
    Variant {
        key: "relay",
        name: "relay proxy (ftp-proxy)",
        build: build_relay,
    },
];

/// One variant's lab, ready for load. Fields drop in order: the daemon first, then the server,
/// then the namespaces.
struct Bed {
    daemon: Option<Daemon>,
    server: TinyFtp,
    lab: ClientNatLab,
}

/// A userspace process in the gateway that does the variant's work: pinned to one CPU, its CPU
/// time measured per run.
struct Daemon {
    pid: i32,
    command: String,
    /// It forks a process per session: their CPU time counts too, and they are pinned.
    forks: bool,
    /// Keeps the process alive (dropping it stops the process).
    _guard: Box<dyn std::any::Any>,
}

fn alg_options(settings: &Settings) -> AlgOptions {
    let mut options = common::alg_options(&common::OPEN_LIMITS);
    options.log_level = "ftp_alg=warn".into();
    options.active_ports = (40000, 49999);
    options
        .extra_args
        .extend(settings.daemon_args.iter().cloned());
    options
}

fn start_server(lab: &ClientNatLab, settings: &Settings) -> BoxResult<TinyFtp> {
    let server = TinyFtp::start(
        &lab.server,
        SocketAddrV4::new(SERVER_IP, 21),
        PASV_PORTS,
        settings.server_threads,
    )?;
    if let Some(cpu) = settings.peer_cpu {
        for tid in server.tids() {
            pin_thread(tid, cpu)?;
        }
    }
    Ok(server)
}

fn build_alg(settings: &Settings) -> BoxResult<Bed> {
    let lab = ClientNatLab::build(ClientNatOptions::default())?;
    let server = start_server(&lab, settings)?;
    let alg = AlgDaemon::start(&lab.gateway, &alg_options(settings))?;
    let pid = common::daemon_pid(&lab.gateway).ok_or("ftp-alg's pid not found")?;
    let command = alg.command_line();
    Ok(Bed {
        daemon: Some(Daemon {
            pid,
            command,
            forks: false,
            _guard: Box::new(alg),
        }),
        server,
        lab,
    })
}

fn build_helper(settings: &Settings) -> BoxResult<Bed> {
    let lab = ClientNatLab::build(ClientNatOptions {
        kernel_helper: true,
        ..ClientNatOptions::default()
    })?;
    let server = start_server(&lab, settings)?;
    Ok(Bed {
        daemon: None,
        server,
        lab,
    })
}

/// `ftp-proxy` in the gateway (see `ftp_alg::lab::relay`): transparent, logging at `WRN`,
/// `ForkLimit` off and `MaxClients` 512 (the lab's defaults). The clients connect to the
/// server's address as for the other variants; the redirect sends them to the relay.
fn build_relay(settings: &Settings) -> BoxResult<Bed> {
    if let Some(why) = common::relay_unavailable() {
        return Err(format!("relay proxy unavailable: {why}").into());
    }
    let lab = ClientNatLab::build(ClientNatOptions::default())?;
    let server = start_server(&lab, settings)?;
    let relay = common::start_relay(&lab.gateway)?;
    let target = relay.target("anonymous");
    if target.addr != SocketAddrV4::new(SERVER_IP, 21) || target.user != "anonymous" {
        return Err(format!("the relay is not transparent: {target:?}").into());
    }
    let pid = i32::try_from(relay.pid())?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "ftp-proxy" {
        return Err(format!("pid {pid} of the relay is {:?}, not ftp-proxy", comm.trim()).into());
    }
    let command = format!(
        "{RELAY_BINARY} -d -n -f {} (MaxClients {}, ForkLimit {}, LogLevel {})",
        relay.config_path().display(),
        relay.options().max_clients,
        relay.options().fork_limit,
        relay.options().log_level
    );
    Ok(Bed {
        daemon: Some(Daemon {
            pid,
            command,
            forks: true,
            _guard: Box::new(relay),
        }),
        server,
        lab,
    })
}

// ------------------------------------------------------------------------------------------
// main

fn main() {
    let settings = Settings::from_args();
    match preflight::gate(&[]) {
        Gate::Ready => {}
        Gate::Skip(why) => {
            eprintln!("churn benchmark skipped: {why}");
            return;
        }
        Gate::Fail(why) => {
            eprintln!("churn benchmark cannot run: {why}");
            std::process::exit(1);
        }
    }
    common::clean_up_on_interrupt();
    let relay_skip = common::relay_unavailable();
    let variants: Vec<&'static Variant> = VARIANTS
        .iter()
        .filter(|v| settings.variants.iter().any(|k| k == v.key))
        .filter(|v| match (&relay_skip, v.key) {
            (Some(why), "relay") => {
                say(&format!("relay proxy skipped: {why}"));
                false
            }
            _ => true,
        })
        .collect();
    if variants.is_empty() {
        eprintln!(
            "churn benchmark: no known variant in {:?} (known: {})",
            settings.variants,
            VARIANTS
                .iter()
                .map(|v| v.key)
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::process::exit(2);
    }
    let nofile = common::raise_nofile(65_536);
    let started = Instant::now();
    let load_before = common::load_average();
    let mut points = Vec::new();
    let result = run(&settings, &variants, &mut points);
    let total = started.elapsed();
    let load_after = common::load_average();
    if let Err(e) = &result {
        eprintln!("churn benchmark stopped early: {e}");
    }
    let report = Report {
        settings: &settings,
        variants: &variants,
        points: &points,
        load_before,
        load_after,
        nofile,
        total,
    };
    println!("{}", report.table());
    let path = common::target_dir().join("bench").join("churn.json");
    match std::fs::create_dir_all(path.parent().expect("has a parent"))
        .and_then(|()| std::fs::write(&path, report.json()))
    {
        Ok(()) => println!("written: {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    if result.is_err() {
        std::process::exit(1);
    }
}

/// All runs at one concurrency level: `runs[v]` are variant v's rounds.
struct Point {
    clients: usize,
    runs: Vec<Vec<Run>>,
    /// Notes per variant (daemon command line, pinning, conntrack count).
    notes: Vec<Vec<String>>,
}

fn run(
    settings: &Settings,
    variants: &[&'static Variant],
    points: &mut Vec<Point>,
) -> BoxResult<()> {
    for &clients in &settings.clients {
        say(&format!(
            "{clients} concurrent clients: building {} bed(s)",
            variants.len()
        ));
        let mut beds = Vec::new();
        let mut notes = Vec::new();
        for v in variants {
            let bed = (v.build)(settings)?;
            let mut n = Vec::new();
            if let Some(d) = &bed.daemon {
                say(&format!("{}: pid {}: {}", v.name, d.pid, d.command));
                n.push(format!("command: {}", d.command));
            }
            beds.push(bed);
            notes.push(n);
        }
        let mut point = Point {
            clients,
            runs: variants.iter().map(|_| Vec::new()).collect(),
            notes,
        };
        for (i, bed) in beds.iter().enumerate() {
            if let Some(d) = &bed.daemon {
                let mut pinned = pin_process(d.pid, settings.daemon_cpu)?;
                if d.forks {
                    pinned.push_str(&format!(
                        "; its session processes are forked from it and inherit the affinity \
                         ({} live ones pinned again before each run)",
                        pin_children(d.pid, settings.daemon_cpu)
                    ));
                }
                say(&format!("{}: {pinned}", variants[i].name));
                point.notes[i].push(pinned);
            }
            let warm = load(&bed.lab.client, settings, clients, settings.warmup_secs)?;
            say(&format!(
                "{} warm-up: {} ok, {} failed{}",
                variants[i].name,
                warm.ok,
                warm.failed,
                warm.errors
                    .first()
                    .map_or(String::new(), |e| format!(" (first error: {e})"))
            ));
        }
        for round in 0..settings.rounds {
            let mut order: Vec<usize> = (0..beds.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let bed = &beds[i];
                if let Some(d) = &bed.daemon {
                    // Threads born since the last run (if any) get the same CPU.
                    pin_process(d.pid, settings.daemon_cpu)?;
                    if d.forks {
                        pin_children(d.pid, settings.daemon_cpu);
                    }
                }
                let run = measured_run(bed, settings, clients)?;
                say(&format!(
                    "K={clients} round {}: {}: {:.0} sessions/s ({} ok, {} failed){}{}",
                    round + 1,
                    variants[i].name,
                    run.rate(),
                    run.load.ok,
                    run.load.failed,
                    run.daemon_cpu_s.map_or(String::new(), |c| format!(
                        ", daemon {:.0}% of its CPU, {:.0} µs CPU/session",
                        100.0 * c / run.load.elapsed.as_secs_f64(),
                        1e6 * c / run.load.ok.max(1) as f64
                    )),
                    run.load
                        .errors
                        .first()
                        .map_or(String::new(), |e| format!(" (first error: {e})"))
                ));
                point.runs[i].push(run);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for (i, bed) in beds.iter().enumerate() {
            let count = |c: Option<u64>| c.map_or("?".into(), |c| c.to_string());
            point.notes[i].push(format!(
                "gateway conntrack entries before each round: {}; after the last: {}",
                point.runs[i]
                    .iter()
                    .map(|r| count(r.conntrack_before))
                    .collect::<Vec<_>>()
                    .join(", "),
                count(conntrack_count(&bed.lab.gateway))
            ));
            if variants[i].key == "relay" {
                let listing_to_226 = summarize(&point.runs[i]).phase_means_us[4];
                if listing_to_226 > 20_000.0 {
                    // Seen with strace: no TCP_NODELAY on any of ftp-proxy's sockets.
                    point.notes[i].push(format!(
                        "listing→226 takes {:.0} ms on average: ftp-proxy does not set \
                         TCP_NODELAY, and its 226 follows its 150 on the client's control \
                         connection with no client data in between, so Nagle holds the 226 \
                         until the client's delayed ACK of the 150 (the session rate is bound \
                         by latency, K / session time, not by the relay's CPU)",
                        listing_to_226 / 1e3
                    ));
                }
            }
            let c = bed.server.counters();
            point.notes[i].push(format!(
                "tiny server: {} sessions accepted, {} listings, {} QUITs, {} ended by error",
                c.accepted.load(Ordering::Relaxed),
                c.listings.load(Ordering::Relaxed),
                c.quits.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed)
            ));
        }
        points.push(point);
        drop(beds);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// One measured run: the load plus the CPU time of everything around it

struct Run {
    load: LoadResult,
    /// The gateway process's CPU time (utime+stime, all threads), seconds.
    daemon_cpu_s: Option<f64>,
    /// Per thread name (threads of the same name summed), seconds, largest first.
    daemon_threads: Vec<(String, f64)>,
    /// The server threads' CPU time, seconds.
    server_cpu_s: f64,
    /// Per CPU over the run: (busy fraction, softirq+irq fraction).
    cpus: Vec<(f64, f64)>,
    /// The gateway's conntrack entries before the run.
    conntrack_before: Option<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.load.ok as f64 / self.load.elapsed.as_secs_f64().max(1e-9)
    }
}

fn measured_run(bed: &Bed, settings: &Settings, clients: usize) -> BoxResult<Run> {
    let server_tids = bed.server.tids();
    let pid = bed.daemon.as_ref().map(|d| d.pid);
    let forks = bed.daemon.as_ref().is_some_and(|d| d.forks);
    let conntrack_before = conntrack_count(&bed.lab.gateway);
    if let Some(n) = conntrack_before.filter(|n| *n > 200_000) {
        say(&format!(
            "warning: {n} conntrack entries in the gateway already (the per-namespace limit \
             is nf_conntrack_max); lower FTP_ALG_CHURN_MAX or FTP_ALG_CHURN_ROUNDS"
        ));
    }
    let cpu0 = cpu_times();
    let children0 = pid.filter(|_| forks).map(children_cpu_ticks);
    let daemon0 = pid.map(process_cpu_ticks);
    let threads0 = pid.map(thread_cpu_ticks).unwrap_or_default();
    let server0: u64 = server_tids.iter().map(|&t| own_thread_cpu_ns(t)).sum();
    let load = load(&bed.lab.client, settings, clients, settings.secs)?;
    let server1: u64 = server_tids.iter().map(|&t| own_thread_cpu_ns(t)).sum();
    let threads1 = pid.map(thread_cpu_ticks).unwrap_or_default();
    let daemon1 = pid.map(process_cpu_ticks);
    let children1 = pid.filter(|_| forks).map(children_cpu_ticks);
    let cpu1 = cpu_times();
    let hz = clock_ticks_per_sec();
    let children_s = match (children0, children1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / hz),
        _ => None,
    };
    let daemon_cpu_s = match (daemon0, daemon1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / hz + children_s.unwrap_or(0.0)),
        _ => None,
    };
    let mut daemon_threads: Vec<(String, f64)> = Vec::new();
    for (tid, (name, after)) in &threads1 {
        let before = threads0.get(tid).map_or(0, |(_, t)| *t);
        let secs = after.saturating_sub(before) as f64 / hz;
        match daemon_threads.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => *s += secs,
            None => daemon_threads.push((name.clone(), secs)),
        }
    }
    if let Some(secs) = children_s {
        daemon_threads.push(("session processes (forked)".into(), secs));
    }
    daemon_threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let cpus = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| {
            let total = b.total.saturating_sub(a.total).max(1) as f64;
            let idle = b.idle.saturating_sub(a.idle) as f64;
            let irq = b.irq.saturating_sub(a.irq) as f64;
            (1.0 - idle / total, irq / total)
        })
        .collect();
    Ok(Run {
        load,
        daemon_cpu_s,
        daemon_threads,
        server_cpu_s: server1.saturating_sub(server0) as f64 / 1e9,
        cpus,
        conntrack_before,
    })
}

// ------------------------------------------------------------------------------------------
// The load generator

/// Phases of one session.
const PHASES: usize = 6;
const PHASE_NAMES: [&str; PHASES] = [
    "connect→220",
    "USER/PASS→230",
    "PASV→227",
    "data connect+LIST→150",
    "listing→226",
    "QUIT→221+close",
];

#[derive(Debug, Default)]
struct LoadResult {
    ok: usize,
    failed: usize,
    /// From the common start to the last worker's end.
    elapsed: Duration,
    /// Per successful session, µs.
    latencies: Vec<f64>,
    /// Summed per phase over the successful sessions.
    phases: [Duration; PHASES],
    /// The first distinct errors (at most 5).
    errors: Vec<String>,
    /// The load generator threads' CPU time, seconds.
    cpu_s: f64,
}

impl LoadResult {
    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.latencies.extend(other.latencies);
        for (a, b) in self.phases.iter_mut().zip(other.phases) {
            *a += b;
        }
        for e in other.errors {
            if self.errors.len() < 5 && !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
        self.cpu_s += other.cpu_s;
    }
}

/// `clients` concurrent sessions loops in the client namespace for `secs` (or until
/// `max_sessions` were started), spread over `load_threads` current-thread runtimes.
fn load(client: &Netns, settings: &Settings, clients: usize, secs: f64) -> BoxResult<LoadResult> {
    let threads = settings.load_threads.min(clients).max(1);
    let tickets = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let duration = Duration::from_secs_f64(secs);
    let max = settings.max_sessions;
    let peer_cpu = settings.peer_cpu;
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for t in 0..threads {
        let tasks = clients / threads + usize::from(t < clients % threads);
        let (tickets, failures, barrier, tx) = (
            tickets.clone(),
            failures.clone(),
            barrier.clone(),
            tx.clone(),
        );
        handles.push(client.spawn_thread(move || {
            if let Some(cpu) = peer_cpu {
                // 0 = this thread.
                let _ = pin_thread(0, cpu);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            barrier.wait();
            let start = Instant::now();
            let Ok(runtime) = runtime else {
                let _ = tx.send((start, Err("cannot build a tokio runtime".to_owned())));
                return;
            };
            let cpu0 = thread_self_cpu_ns();
            let deadline = start + duration;
            let result = runtime.block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..tasks {
                    let (tickets, failures) = (tickets.clone(), failures.clone());
                    set.spawn(worker(deadline, max, tickets, failures));
                }
                let mut total = LoadResult::default();
                while let Some(r) = set.join_next().await {
                    if let Ok(r) = r {
                        total.merge(r);
                    }
                }
                total
            });
            let mut result = result;
            result.elapsed = start.elapsed();
            result.cpu_s = thread_self_cpu_ns().saturating_sub(cpu0) as f64 / 1e9;
            let _ = tx.send((start, Ok(result)));
        })?);
    }
    drop(tx);
    barrier.wait();
    let mut total = LoadResult::default();
    let bound = duration + IO_TIMEOUT * 8 + Duration::from_secs(30);
    for _ in 0..threads {
        let (_, r) = rx.recv_timeout(bound)?;
        total.merge(r?);
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(total)
}

/// One client: full sessions back to back until the deadline or the ticket limit.
async fn worker(
    deadline: Instant,
    max: usize,
    tickets: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
) -> LoadResult {
    let mut result = LoadResult::default();
    let mut buf = Vec::with_capacity(1024);
    while Instant::now() < deadline
        && tickets.fetch_add(1, Ordering::Relaxed) < max
        && failures.load(Ordering::Relaxed) < MAX_FAILURES
    {
        let mut phases = [Duration::ZERO; PHASES];
        let start = Instant::now();
        match session(&mut phases, &mut buf).await {
            Ok(()) => {
                result.ok += 1;
                result.latencies.push(start.elapsed().as_secs_f64() * 1e6);
                for (a, b) in result.phases.iter_mut().zip(phases) {
                    *a += b;
                }
            }
            Err(e) => {
                result.failed += 1;
                failures.fetch_add(1, Ordering::Relaxed);
                let text = e.to_string();
                if result.errors.len() < 5 && !result.errors.contains(&text) {
                    result.errors.push(text);
                }
                // No hot loop on a refusing gateway.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    result
}

async fn timed<T>(what: &str, fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("{what}: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: timed out after {IO_TIMEOUT:?}"),
        )),
    }
}

/// Reads one reply (skipping the body of a multi-line one) and checks its code.
async fn expect<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut String,
    code: &str,
) -> io::Result<()> {
    line.clear();
    let n = timed(code, reader.read_line(line)).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("control connection closed while waiting for {code}"),
        ));
    }
    if line.as_bytes().get(3) == Some(&b'-') {
        let end = format!("{} ", &line[..3]);
        let mut next = String::new();
        for _ in 0..100 {
            next.clear();
            if timed(code, reader.read_line(&mut next)).await? == 0 || next.starts_with(&end) {
                break;
            }
        }
    }
    if line.starts_with(code) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "expected {code}, got {:?}",
            line.trim_end()
        )))
    }
}

async fn session(phases: &mut [Duration; PHASES], buf: &mut Vec<u8>) -> io::Result<()> {
    let mut t = Instant::now();
    let mut mark = |i: usize| {
        let now = Instant::now();
        phases[i] += now - t;
        t = now;
    };
    let mut ctl = timed(
        "connect",
        TcpStream::connect(SocketAddrV4::new(SERVER_IP, 21)),
    )
    .await?;
    ctl.set_nodelay(true)?;
    let (reader, mut writer) = ctl.split();
    let mut reader = BufReader::with_capacity(512, reader);
    let mut line = String::new();
    expect(&mut reader, &mut line, "220").await?;
    mark(0);
    timed("USER", writer.write_all(b"USER anonymous\r\n")).await?;
    expect(&mut reader, &mut line, "331").await?;
    timed("PASS", writer.write_all(b"PASS churn@bench\r\n")).await?;
    expect(&mut reader, &mut line, "230").await?;
    mark(1);
    timed("PASV", writer.write_all(b"PASV\r\n")).await?;
    expect(&mut reader, &mut line, "227").await?;
    let addr = ftp_alg::lab::raw_client::parse_227(&line)
        .ok_or_else(|| io::Error::other(format!("bad 227: {}", line.trim_end())))?;
    mark(2);
    let mut data = timed("data connect", TcpStream::connect(addr)).await?;
    timed("LIST", writer.write_all(b"LIST\r\n")).await?;
    expect(&mut reader, &mut line, "150").await?;
    mark(3);
    buf.clear();
    timed("listing", data.read_to_end(buf)).await?;
    drop(data);
    expect(&mut reader, &mut line, "226").await?;
    if buf.as_slice() != LISTING {
        return Err(io::Error::other(format!(
            "listing of {} bytes differs from the server's {}",
            buf.len(),
            LISTING.len()
        )));
    }
    mark(4);
    timed("QUIT", writer.write_all(b"QUIT\r\n")).await?;
    expect(&mut reader, &mut line, "221").await?;
    // Wait for the server's FIN: the server closes first, so the client keeps no TIME_WAIT.
    let mut rest = [0u8; 64];
    for _ in 0..16 {
        if timed("close", reader.read(&mut rest)).await? == 0 {
            break;
        }
    }
    mark(5);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Processes, threads and CPUs

/// Pins every thread of `pid` to `cpu` and says what the kernel reports afterwards.
fn pin_process(pid: i32, cpu: usize) -> BoxResult<String> {
    let mut pinned = 0;
    for tid in tasks_of(pid) {
        match pin_thread(tid, cpu) {
            Ok(()) => pinned += 1,
            // A thread that ended meanwhile is fine.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(format!("sched_setaffinity({tid}, CPU {cpu}): {e}").into()),
        }
    }
    let allowed: Vec<String> = tasks_of(pid)
        .into_iter()
        .filter_map(|tid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .collect();
    let mut distinct = allowed.clone();
    distinct.sort();
    distinct.dedup();
    Ok(format!(
        "daemon pid {pid}: {pinned} threads pinned to CPU {cpu} (sched_setaffinity on every \
         /proc/{pid}/task/*); Cpus_allowed_list of its {} threads: {}",
        allowed.len(),
        distinct.join(" / ")
    ))
}

/// `sched_setaffinity` of one thread (0 = the calling thread) to one CPU.
fn pin_thread(tid: i32, cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET checks `cpu` against the set's size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: valid pointer and size of a cpu_set_t.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn tasks_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Fields 14 and 15 (utime, stime) of a `stat` file, and the command name.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some((name, field(14)? + field(15)?))
}

/// utime + stime of the whole process (all threads, also ended ones), in clock ticks.
fn process_cpu_ticks(pid: i32) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat")).map_or(0, |(_, t)| t)
}

/// CPU time of the processes `pid` forked, in clock ticks: cutime + cstime of `pid` (children
/// it has reaped) plus utime + stime of its children still there (running or zombie). A child
/// reaped between the two reads is missed or counted twice: one session's worth at most.
fn children_cpu_ticks(pid: i32) -> u64 {
    let reaped = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            Some(field(16)? + field(17)?)
        })
        .unwrap_or(0);
    reaped
        + children_of(pid)
            .into_iter()
            .filter_map(|child| stat_ticks(&format!("/proc/{child}/stat")))
            .map(|(_, t)| t)
            .sum::<u64>()
}

/// The processes whose parent (field 4 of `/proc/*/stat`) is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    stat[stat.rfind(')')? + 1..]
                        .split_whitespace()
                        .nth(1)?
                        .parse::<i32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Pins the (single-threaded) children of `pid` to `cpu`; returns how many.
fn pin_children(pid: i32, cpu: usize) -> usize {
    children_of(pid)
        .into_iter()
        .filter(|&child| pin_thread(child, cpu).is_ok())
        .count()
}

/// Per thread of `pid`: (tid → (name, utime + stime ticks)).
fn thread_cpu_ticks(pid: i32) -> std::collections::HashMap<i32, (String, u64)> {
    tasks_of(pid)
        .into_iter()
        .filter_map(|tid| Some((tid, stat_ticks(&format!("/proc/{pid}/task/{tid}/stat"))?)))
        .collect()
}

/// Time on CPU of one of this process's threads, ns (`schedstat`).
fn own_thread_cpu_ns(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn thread_self_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct CpuTimes {
    total: u64,
    idle: u64,
    irq: u64,
}

/// Per CPU from /proc/stat (cpu0, cpu1, …), in ticks.
fn cpu_times() -> Vec<CpuTimes> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal (guest is inside user).
            CpuTimes {
                total: (0..8).map(at).sum(),
                idle: at(3) + at(4),
                irq: at(5) + at(6),
            }
        })
        .collect()
}

fn conntrack_count(gateway: &Netns) -> Option<u64> {
    gateway
        .run_in(|| {
            std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
        .ok()
        .flatten()
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

// ------------------------------------------------------------------------------------------
// Output

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

struct Machine {
    cpu: String,
    kernel: String,
    date: String,
    commit: String,
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(1, usize::from);
    Machine {
        cpu: format!("{nproc} × {cpu}"),
        kernel: common::kernel_release(),
        date: common::stdout_of(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        commit: {
            let git = |args: &[&str]| {
                common::stdout_of(
                    Command::new("git")
                        .args(args)
                        .current_dir(env!("CARGO_MANIFEST_DIR")),
                )
            };
            let head = git(&["rev-parse", "--short", "HEAD"]);
            if git(&[
                "status",
                "--porcelain",
                "--",
                "src",
                "Cargo.toml",
                "Cargo.lock",
            ])
            .is_empty()
            {
                head
            } else {
                format!("{head} + uncommitted changes in src/")
            }
        },
    }
}

/// Summary of one variant at one concurrency level.
struct Summary {
    rates: Vec<f64>,
    median_rate: f64,
    ok: usize,
    failed: usize,
    latency: Stats,
    phase_means_us: Vec<f64>,
    errors: Vec<String>,
    /// Daemon CPU µs per session, % of one core (whole run), per round medians.
    daemon_us_per_session: Option<f64>,
    daemon_util: Option<f64>,
    daemon_threads: Vec<(String, f64)>,
    load_util: f64,
    server_util: f64,
    /// Per CPU: (busy, softirq) fraction, mean over the rounds.
    cpus: Vec<(f64, f64)>,
    /// Mean session latency × rate: sessions in flight (Little's law), vs K.
    in_flight: f64,
}

fn summarize(runs: &[Run]) -> Summary {
    let rates: Vec<f64> = runs.iter().map(Run::rate).collect();
    let ok = runs.iter().map(|r| r.load.ok).sum::<usize>();
    let failed = runs.iter().map(|r| r.load.failed).sum();
    let latency = Stats::from_micros(
        runs.iter()
            .flat_map(|r| r.load.latencies.iter().copied())
            .collect(),
    );
    let phase_means_us = (0..PHASES)
        .map(|i| {
            let total: Duration = runs.iter().map(|r| r.load.phases[i]).sum();
            total.as_secs_f64() * 1e6 / ok.max(1) as f64
        })
        .collect();
    let mut errors = Vec::new();
    for r in runs {
        for e in &r.load.errors {
            if errors.len() < 5 && !errors.contains(e) {
                errors.push(e.clone());
            }
        }
    }
    let wall: f64 = runs.iter().map(|r| r.load.elapsed.as_secs_f64()).sum();
    let daemon_cpu: Option<f64> = runs.iter().map(|r| r.daemon_cpu_s).sum();
    let mut daemon_threads: Vec<(String, f64)> = Vec::new();
    for r in runs {
        for (name, s) in &r.daemon_threads {
            match daemon_threads.iter_mut().find(|(n, _)| n == name) {
                Some((_, t)) => *t += s,
                None => daemon_threads.push((name.clone(), *s)),
            }
        }
    }
    daemon_threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let ncpu = runs.first().map_or(0, |r| r.cpus.len());
    let cpus = (0..ncpu)
        .map(|c| {
            let n = runs.len().max(1) as f64;
            (
                runs.iter().map(|r| r.cpus[c].0).sum::<f64>() / n,
                runs.iter().map(|r| r.cpus[c].1).sum::<f64>() / n,
            )
        })
        .collect();
    let median_rate = common::median(&rates);
    Summary {
        median_rate,
        ok,
        failed,
        in_flight: latency.mean / 1e6 * (ok as f64 / wall.max(1e-9)),
        latency,
        phase_means_us,
        errors,
        daemon_us_per_session: daemon_cpu.map(|c| c * 1e6 / ok.max(1) as f64),
        daemon_util: daemon_cpu.map(|c| c / wall.max(1e-9)),
        daemon_threads,
        load_util: runs.iter().map(|r| r.load.cpu_s).sum::<f64>() / wall.max(1e-9),
        server_util: runs.iter().map(|r| r.server_cpu_s).sum::<f64>() / wall.max(1e-9),
        cpus,
        rates,
    }
}

/// What bounds the rate, from the CPU numbers: every component above 90% of what it may use.
fn bound_of(s: &Summary, settings: &Settings, clients: usize) -> String {
    let mut saturated = Vec::new();
    if let Some(u) = s.daemon_util.filter(|u| *u > 0.9) {
        saturated.push(format!("the daemon ({:.0}% of its one CPU)", 100.0 * u));
    }
    if s.load_util > 0.9 * settings.load_threads.min(clients) as f64 {
        saturated.push(format!(
            "the load generator ({:.0}% of {} thread(s))",
            100.0 * s.load_util,
            settings.load_threads.min(clients)
        ));
    }
    if s.server_util > 0.9 * settings.server_threads as f64 {
        saturated.push(format!(
            "the tiny server ({:.0}% of {} thread(s))",
            100.0 * s.server_util,
            settings.server_threads
        ));
    }
    let busy: Vec<String> = s
        .cpus
        .iter()
        .enumerate()
        .filter(|(_, (b, _))| *b > 0.9)
        .map(|(c, (b, _))| format!("cpu{c} {:.0}%", 100.0 * b))
        .collect();
    let mean_busy = s.cpus.iter().map(|(b, _)| b).sum::<f64>() / s.cpus.len().max(1) as f64;
    if !s.cpus.is_empty() && (busy.len() == s.cpus.len() || mean_busy > 0.85) {
        let ours = s.daemon_util.unwrap_or(0.0) + s.load_util + s.server_util;
        saturated.push(format!(
            "the machine (CPUs {:.0}% busy on average: load generator, server, kernel \
             forwarding, daemon and any other jobs share them; this benchmark's threads used \
             {:.0}% of the {} CPUs' {:.0}%, the rest is softirq and other processes)",
            100.0 * mean_busy,
            100.0 * ours,
            s.cpus.len(),
            100.0 * mean_busy * s.cpus.len() as f64
        ));
    } else if !busy.is_empty() {
        saturated.push(format!(
            "a saturated CPU ({}{})",
            busy.join(", "),
            settings.peer_cpu.map_or(String::new(), |c| format!(
                "; CPU {c} runs the load generator, the server and the softirq of their sends"
            ))
        ));
    }
    if saturated.is_empty() {
        format!(
            "latency: {clients} client(s), {:.0} µs per session, no CPU saturated ({:.1} \
             sessions in flight on average)",
            s.latency.mean, s.in_flight
        )
    } else {
        saturated.join("; ")
    }
}

struct Report<'a> {
    settings: &'a Settings,
    variants: &'a [&'static Variant],
    points: &'a [Point],
    load_before: String,
    load_after: String,
    nofile: u64,
    total: Duration,
}

impl Report<'_> {
    fn table(&self) -> String {
        let s = self.settings;
        let m = machine();
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\n## ftp-alg session churn — {} — {}, kernel {}, commit {}\n",
            m.date, m.cpu, m.kernel, m.commit
        );
        let _ = writeln!(
            t,
            "Sessions: connect, 220, USER/PASS, PASV, data connect, LIST (content checked), \
             226, QUIT, 221 (and the server's FIN), against a tiny tokio FTP server ({} \
             thread(s)) in the server namespace; load: K concurrent clients on {} tokio \
             thread(s) in the client namespace; {} round(s) of {} s per variant and K \
             (alternating order), at most {} sessions per run. The ftp-alg daemon is pinned to \
             CPU {} (all its threads), and so is the relay proxy (ftp-proxy: its daemon and \
             the session processes it forks) where it runs; {}. Daemon CPU = utime+stime of \
             /proc/<pid>/stat (all threads; for the relay proxy plus its session processes: \
             cutime+cstime of the reaped ones, utime+stime of the others), which includes \
             the kernel's packet processing that runs in the daemon's context (its sends \
             traverse veth, forwarding and the peer's receive path); CPU busy per CPU from \
             /proc/stat. Load average before/after: {} / {}. RLIMIT_NOFILE {}. Total {:.0} s.\n",
            s.server_threads,
            s.load_threads,
            s.rounds,
            s.secs,
            s.max_sessions,
            s.daemon_cpu,
            s.peer_cpu.map_or(
                "server, load generator and kernel softirq are not pinned".to_owned(),
                |c| format!(
                    "server and load generator threads are pinned to CPU {c}, kernel softirq \
                     is not"
                )
            ),
            self.load_before,
            self.load_after,
            self.nofile,
            self.total.as_secs_f64()
        );
        // Headline.
        let _ = write!(t, "| concurrent clients |");
        for v in self.variants {
            let _ = write!(t, " {} sessions/s, median (rounds) |", v.name);
        }
        // The first variant against each of the others.
        for v in self.variants.iter().skip(1) {
            let _ = write!(t, " ratio {}/{} |", self.variants[0].name, v.name);
        }
        let _ = writeln!(t, " ≥ {TARGET_PER_SEC:.0}/s ({}) |", self.variants[0].name);
        let _ = writeln!(t, "|---|{}", "---|".repeat(2 * self.variants.len()));
        for p in self.points {
            let sums: Vec<Summary> = p.runs.iter().map(|r| summarize(r)).collect();
            let _ = write!(t, "| {} |", p.clients);
            for sm in &sums {
                let _ = write!(
                    t,
                    " **{:.0}** ({}) |",
                    sm.median_rate,
                    sm.rates
                        .iter()
                        .map(|r| format!("{r:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for other in sums.iter().skip(1) {
                let ratio = sums[0].median_rate / other.median_rate.max(1e-9);
                let _ = write!(t, " {ratio:.2} |");
            }
            let met = sums
                .first()
                .is_some_and(|sm| sm.median_rate >= TARGET_PER_SEC);
            let _ = writeln!(t, " {} |", if met { "yes" } else { "no" });
        }
        // Details.
        let _ = writeln!(
            t,
            "\n| K | variant | ok / failed | session latency p50 / p99 / p999 ms | daemon CPU \
             µs/session | one-core capacity, sessions/s (10⁶ / µs per session) | daemon CPU, % of its core | load gen CPU % | server CPU % | CPU busy \
             % (of which irq+softirq) per CPU | bounded by |"
        );
        let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|");
        for p in self.points {
            for (i, runs) in p.runs.iter().enumerate() {
                let sm = summarize(runs);
                let _ = writeln!(
                    t,
                    "| {} | {} | {} / {} | {} / {} / {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
                    p.clients,
                    self.variants[i].name,
                    sm.ok,
                    sm.failed,
                    fmt_num(sm.latency.p50 / 1e3),
                    fmt_num(sm.latency.p99 / 1e3),
                    fmt_num(sm.latency.p999 / 1e3),
                    sm.daemon_us_per_session
                        .map_or("— (kernel)".into(), |v| format!("{v:.0}")),
                    sm.daemon_us_per_session
                        .map_or("—".into(), |v| format!("{:.0}", 1e6 / v.max(1e-9))),
                    sm.daemon_util
                        .map_or("—".into(), |v| format!("{:.0}", 100.0 * v)),
                    100.0 * sm.load_util,
                    100.0 * sm.server_util,
                    sm.cpus
                        .iter()
                        .enumerate()
                        .map(|(c, (b, irq))| format!(
                            "cpu{c} {:.0} ({:.0})",
                            100.0 * b,
                            100.0 * irq
                        ))
                        .collect::<Vec<_>>()
                        .join(", "),
                    bound_of(&sm, s, p.clients)
                );
            }
        }
        let _ = writeln!(t, "\nMean time per session phase, µs:\n");
        let _ = writeln!(t, "| K | variant | {} |", PHASE_NAMES.join(" | "));
        let _ = writeln!(t, "|---|---|{}", "---|".repeat(PHASES));
        for p in self.points {
            for (i, runs) in p.runs.iter().enumerate() {
                let sm = summarize(runs);
                let _ = writeln!(
                    t,
                    "| {} | {} | {} |",
                    p.clients,
                    self.variants[i].name,
                    sm.phase_means_us
                        .iter()
                        .map(|v| fmt_num(*v))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
        }
        let _ = writeln!(t, "\nNotes:");
        for p in self.points {
            for (i, runs) in p.runs.iter().enumerate() {
                let sm = summarize(runs);
                let name = self.variants[i].name;
                if !sm.daemon_threads.is_empty() {
                    let _ = writeln!(
                        t,
                        "- K={} {name}: daemon CPU by thread name over the rounds: {}",
                        p.clients,
                        sm.daemon_threads
                            .iter()
                            .take(4)
                            .map(|(n, s)| format!("{n} {s:.2} s"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                if !sm.errors.is_empty() {
                    let _ = writeln!(
                        t,
                        "- K={} {name}: errors: {}",
                        p.clients,
                        sm.errors.join(" | ")
                    );
                }
                for n in &p.notes[i] {
                    let _ = writeln!(t, "- K={} {name}: {n}", p.clients);
                }
            }
        }
        t
    }

    fn json(&self) -> String {
        let s = self.settings;
        let m = machine();
        let points: Vec<serde_json::Value> = self
            .points
            .iter()
            .map(|p| {
                let variants: Vec<serde_json::Value> = p
                    .runs
                    .iter()
                    .enumerate()
                    .map(|(i, runs)| {
                        let sm = summarize(runs);
                        json!({
                            "variant": self.variants[i].key,
                            "name": self.variants[i].name,
                            "sessions_per_sec_median": sm.median_rate,
                            "sessions_per_sec_rounds": sm.rates,
                            "ok": sm.ok,
                            "failed": sm.failed,
                            "errors": sm.errors,
                            "latency_us": {
                                "n": sm.latency.n, "p50": sm.latency.p50,
                                "p99": sm.latency.p99, "p999": sm.latency.p999,
                                "max": sm.latency.max, "mean": sm.latency.mean,
                            },
                            "phase_means_us": PHASE_NAMES.iter().zip(&sm.phase_means_us)
                                .map(|(n, v)| json!({"phase": n, "us": v}))
                                .collect::<Vec<_>>(),
                            "daemon_cpu_us_per_session": sm.daemon_us_per_session,
                            "daemon_one_core_capacity_per_sec":
                                sm.daemon_us_per_session.map(|v| 1e6 / v.max(1e-9)),
                            "daemon_cpu_fraction_of_one_core": sm.daemon_util,
                            "daemon_cpu_s_by_thread": sm.daemon_threads.iter()
                                .map(|(n, v)| json!({"thread": n, "cpu_s": v}))
                                .collect::<Vec<_>>(),
                            "load_generator_cpu_fraction": sm.load_util,
                            "server_cpu_fraction": sm.server_util,
                            "cpu_busy_fraction": sm.cpus.iter().map(|c| c.0).collect::<Vec<_>>(),
                            "cpu_irq_softirq_fraction": sm.cpus.iter().map(|c| c.1).collect::<Vec<_>>(),
                            "bounded_by": bound_of(&sm, s, p.clients),
                            "notes": p.notes[i],
                        })
                    })
                    .collect();
                let first = p.runs.first().map(|r| summarize(r).median_rate);
                let ratios: serde_json::Map<String, serde_json::Value> = self
                    .variants
                    .iter()
                    .zip(&p.runs)
                    .skip(1)
                    .filter_map(|(v, runs)| {
                        let ratio = first? / summarize(runs).median_rate.max(1e-9);
                        Some((format!("{}/{}", self.variants[0].key, v.key), json!(ratio)))
                    })
                    .collect();
                let ratio = (p.runs.len() > 1).then(|| {
                    summarize(&p.runs[0]).median_rate
                        / summarize(&p.runs[1]).median_rate.max(1e-9)
                });
                json!({
                    "clients": p.clients,
                    "variants": variants,
                    "ratio_first_to_second": ratio,
                    "ratios_first_to_each": ratios,
                })
            })
            .collect();
        let value = json!({
            "machine": {
                "cpu": m.cpu, "kernel": m.kernel, "date": m.date, "commit": m.commit,
                "loadavg_before": self.load_before, "loadavg_after": self.load_after,
            },
            "settings": {
                "quick": s.quick, "clients": s.clients, "rounds": s.rounds, "secs": s.secs,
                "max_sessions": s.max_sessions, "warmup_secs": s.warmup_secs,
                "load_threads": s.load_threads, "server_threads": s.server_threads,
                "daemon_cpu": s.daemon_cpu, "peer_cpu": s.peer_cpu, "variants": s.variants,
                "daemon_args": s.daemon_args, "rlimit_nofile": self.nofile,
                "target_sessions_per_sec": TARGET_PER_SEC,
            },
            "total_seconds": self.total.as_secs_f64(),
            "points": points,
        });
        serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
    }
}

//! The scale benchmark: bulk data through a pinhole, control-channel overhead per command,
//! idle sessions (daemon RSS per session) and new sessions per second, each against a baseline
//! measured in the same run on the same lab topology.
//!
//! Run as root: `sudo bash scripts/bench-scale.sh` (= `cargo bench --bench scale`), or
//! `cargo bench --bench scale -- --quick` for a short smoke run. Numbers are printed as a
//! Markdown table and written to `target/bench/scale.json`. A benchmark, not a test: it fails
//! only when it cannot run; slow numbers are reported, never asserted.
//!
//! Three client-NAT labs side by side (see `ftp_alg::lab`), all with the same topology:
//! - `alg`: the admin's drop-policy forward chain, `ftp-alg` in the gateway intercepting
//!   :21 (vsftpd) and :2200 (a tiny std-only FTP server in this process, for idle sessions —
//!   vsftpd forks two processes per session and cannot hold 10,000 of them on this machine);
//! - `open`: no ALG, no helper, every LAN→WAN connection accepted: the plain kernel-forwarding
//!   baseline (bulk TCP, NOOP round trip without interception);
//! - `helper`: the kernel's FTP helper (`ct helper` "ftp" + nf_nat_ftp), no ALG.
//!
//! Every client and server loop runs on a thread inside a lab namespace and is bounded in
//! count and in time; every socket has a timeout.

mod common;

use common::Stats;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ftp_alg::lab::preflight::{self, Gate};
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, ClientNatLab, ClientNatOptions, FTP_PASSWORD, FTP_USER, Netns,
    SERVER_IP, Vsftpd, raw_client,
};

const BULK_NAME: &str = "bench-bulk.bin";
/// Port of the tiny idle-session server in the server namespace (intercepted by the ALG).
const TINY_PORT: u16 = 2200;
/// Port of the plain TCP bulk sender (open lab only).
const PLAIN_PORT: u16 = 5001;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Settings {
    bulk_mib: u64,
    bulk_rounds: usize,
    noops: usize,
    idle_loaded: usize,
    idle_steps: Vec<usize>,
    sessions_secs: u64,
    sessions_max: usize,
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
        if quick {
            return Self {
                bulk_mib: 64,
                bulk_rounds: 1,
                noops: 500,
                idle_loaded: 100,
                idle_steps: vec![100, 500],
                sessions_secs: 2,
                sessions_max: 300,
            };
        }
        Self {
            bulk_mib: env("FTP_ALG_SCALE_BULK_MIB", 1024),
            bulk_rounds: env("FTP_ALG_SCALE_BULK_ROUNDS", 5).max(1) as usize,
            noops: env("FTP_ALG_SCALE_NOOPS", 5_000) as usize,
            idle_loaded: env("FTP_ALG_SCALE_LOADED_SESSIONS", 1_000) as usize,
            idle_steps: std::env::var("FTP_ALG_SCALE_IDLE")
                .ok()
                .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![1_000, 10_000]),
            sessions_secs: env("FTP_ALG_SCALE_SESSION_SECS", 5),
            sessions_max: env("FTP_ALG_SCALE_SESSION_MAX", 5_000) as usize,
        }
    }
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn say(text: &str) {
    eprintln!("[scale bench] {text}");
}

fn main() {
    let settings = Settings::from_args();
    match preflight::gate(&["vsftpd"]) {
        Gate::Ready => {}
        Gate::Skip(why) => {
            eprintln!("scale benchmark skipped: {why}");
            return;
        }
        Gate::Fail(why) => {
            eprintln!("scale benchmark cannot run: {why}");
            std::process::exit(1);
        }
    }
    let nofile = raise_nofile(65_536);
    let started = Instant::now();
    let mut rows = Vec::new();
    let load_before = load_average();
    let result = run(&settings, &mut rows);
    let total = started.elapsed();
    let load_after = load_average();
    if let Err(e) = &result {
        eprintln!("scale benchmark stopped early: {e}");
    }
    let table = render_table(&rows, &settings, &load_before, &load_after, nofile, total);
    println!("{table}");
    let path = target_dir().join("bench").join("scale.json");
    let json = render_json(&rows, &settings, &load_before, &load_after, nofile, total);
    match std::fs::create_dir_all(path.parent().expect("has a parent"))
        .and_then(|()| std::fs::write(&path, json))
    {
        Ok(()) => println!("written: {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    if result.is_err() {
        std::process::exit(1);
    }
}

/// One line of the result table.
#[derive(Debug, Clone)]
struct Row {
    key: &'static str,
    metric: String,
    alg: Option<f64>,
    baseline: Option<f64>,
    baseline_name: &'static str,
    alg_text: String,
    baseline_text: String,
    limit: String,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (self.alg, self.baseline) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------------------------------
// The run

fn alg_options(control_ports: Vec<u16>) -> AlgOptions {
    let binary = std::env::var_os("FTP_ALG_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_ftp-alg")),
        PathBuf::from,
    );
    let mut options = AlgOptions::new(binary);
    options.control_ports = control_ports;
    options.log_level = "ftp_alg=warn".into();
    options.active_ports = (40000, 49999);
    // Limits opened up so that the runs measure the daemon, not its admission policy.
    options.extra_args = [
        "--max-sessions",
        "100000",
        "--max-sessions-per-client",
        "100000",
        "--new-sessions-per-second",
        "1000000",
        "--max-pinholes",
        "1000000",
        "--idle-timeout",
        "900",
    ]
    .map(String::from)
    .to_vec();
    options
}

fn run(settings: &Settings, rows: &mut Vec<Row>) -> BoxResult<()> {
    say("building three labs: ftp-alg, open forwarding (baseline), kernel helper");
    let alg_lab = ClientNatLab::build(ClientNatOptions::default())?;
    let open_lab = ClientNatLab::build(ClientNatOptions {
        outbound_open: true,
        ..ClientNatOptions::default()
    })?;
    let helper_lab = ClientNatLab::build(ClientNatOptions {
        kernel_helper: true,
        ..ClientNatOptions::default()
    })?;
    let bulk_len = settings.bulk_mib << 20;
    let alg_server = Vsftpd::start(&alg_lab.server)?;
    let open_server = Vsftpd::start(&open_lab.server)?;
    let helper_server = Vsftpd::start(&helper_lab.server)?;
    for server in [&alg_server, &helper_server, &open_server] {
        // Sparse: vsftpd reads zeros from the page cache, no disk I/O in the measurement.
        let file = std::fs::File::create(server.root().join(BULK_NAME))?;
        file.set_len(bulk_len)?;
    }
    let tiny = TinyServer::start(&alg_lab.server, SocketAddrV4::new(SERVER_IP, TINY_PORT))?;
    let plain = PlainSender::start(&open_lab.server, bulk_len)?;

    let mut alg = AlgDaemon::start(&alg_lab.gateway, &alg_options(vec![21, TINY_PORT]))?;
    let pid = daemon_pid(&alg_lab.gateway).ok_or("ftp-alg's pid not found in the gateway")?;
    say(&format!("daemon pid {pid}: {}", alg.command_line()));

    bulk(
        settings,
        rows,
        &alg_lab,
        &open_lab,
        &helper_lab,
        pid,
        bulk_len,
    )?;
    control_overhead(settings, rows, &alg_lab, &open_lab)?;
    session_rate(settings, rows, &alg_lab, &helper_lab)?;
    alg.stop(Duration::from_secs(5));
    idle_sessions(settings, rows, &alg_lab)?;
    say(&format!(
        "tiny server served {} connections",
        tiny.accepted()
    ));
    drop(plain);
    drop(tiny);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 1. Bulk data

#[allow(clippy::too_many_arguments)]
fn bulk(
    settings: &Settings,
    rows: &mut Vec<Row>,
    alg_lab: &ClientNatLab,
    open_lab: &ClientNatLab,
    helper_lab: &ClientNatLab,
    pid: i32,
    len: u64,
) -> BoxResult<()> {
    let (mut alg, mut plain, mut helper) = (Vec::new(), Vec::new(), Vec::new());
    let mut open = Vec::new();
    let mut cpu = Vec::new();
    for round in 0..settings.bulk_rounds {
        say(&format!("bulk round {}: {} MiB", round + 1, len >> 20));
        let before = cpu_ticks(pid);
        let (rate, _) = retr_bulk(&alg_lab.client, len)?;
        let after = cpu_ticks(pid);
        alg.push(rate);
        cpu.push(after.saturating_sub(before));
        plain.push(plain_receive(&open_lab.client, len)?);
        helper.push(retr_bulk(&helper_lab.client, len)?.0);
        open.push(retr_bulk(&open_lab.client, len)?.0);
        say(&format!(
            "  ftp-alg {:.0} MB/s (daemon {} ticks), plain TCP {:.0} MB/s, helper {:.0} MB/s, \
             vsftpd via open forwarding {:.0} MB/s",
            rate / 1e6,
            after.saturating_sub(before),
            plain.last().copied().unwrap_or(0.0) / 1e6,
            helper.last().copied().unwrap_or(0.0) / 1e6,
            open.last().copied().unwrap_or(0.0) / 1e6,
        ));
    }
    let hz = clock_ticks_per_sec();
    let cpu_ms: Vec<f64> = cpu.iter().map(|t| *t as f64 * 1000.0 / hz).collect();
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.0}", x / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let limit = "one TCP stream on veth, 2 vCPUs: sender, receiver and forwarding softirq share \
                 them; MB/s = 10^6 bytes/s from the data connect to EOF"
        .to_owned();
    rows.push(Row {
        key: "bulk_vs_open_retr",
        metric: format!("RETR {} MiB PASV, MB/s (median of rounds)", len >> 20),
        alg: Some(median(&alg) / 1e6),
        baseline: Some(median(&open) / 1e6),
        baseline_name: "plain kernel forwarding: the same vsftpd RETR, gateway accepts all \
                        LAN→WAN (no ALG, no helper)",
        alg_text: format!("{:.0} ({})", median(&alg) / 1e6, list(&alg)),
        baseline_text: format!("{:.0} ({})", median(&open) / 1e6, list(&open)),
        limit: limit.clone(),
    });
    rows.push(Row {
        key: "bulk_vs_plain",
        metric: format!("RETR {} MiB PASV, MB/s (median of rounds)", len >> 20),
        alg: Some(median(&alg) / 1e6),
        baseline: Some(median(&plain) / 1e6),
        baseline_name: "plain TCP sender → receiver, open forwarding (a userspace write loop \
                        of a zero buffer, not vsftpd's sendfile: a different sender)",
        alg_text: format!("{:.0} ({})", median(&alg) / 1e6, list(&alg)),
        baseline_text: format!("{:.0} ({})", median(&plain) / 1e6, list(&plain)),
        limit: limit.clone(),
    });
    rows.push(Row {
        key: "bulk_vs_helper",
        metric: format!("RETR {} MiB PASV, MB/s (median of rounds)", len >> 20),
        alg: Some(median(&alg) / 1e6),
        baseline: Some(median(&helper) / 1e6),
        baseline_name: "kernel FTP helper",
        alg_text: format!("{:.0} ({})", median(&alg) / 1e6, list(&alg)),
        baseline_text: format!("{:.0} ({})", median(&helper) / 1e6, list(&helper)),
        limit,
    });
    rows.push(Row {
        key: "bulk_daemon_cpu",
        metric: "daemon CPU time (utime+stime) during each ftp-alg RETR, ms".into(),
        alg: Some(cpu_ms.iter().copied().fold(0.0, f64::max)),
        baseline: None,
        baseline_name: "",
        alg_text: cpu_ms
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        baseline_text: "n/a".into(),
        limit: format!(
            "/proc/<pid>/stat resolution is one tick ({:.0} ms); includes the session's login",
            1000.0 / hz
        ),
    });
    Ok(())
}

/// Logs in on `:21` from the client namespace, RETRs the bulk file in PASV, returns bytes/s
/// (data connect → EOF) and the byte count.
fn retr_bulk(client: &Netns, len: u64) -> BoxResult<(f64, u64)> {
    let (tx, rx) = mpsc::channel();
    let _thread = client.spawn_thread(move || {
        let go = || -> io::Result<(f64, u64)> {
            let mut ctl = Control::connect(SocketAddrV4::new(SERVER_IP, 21))?;
            ctl.login(true)?;
            ctl.send("PASV")?;
            ctl.expect(&[227])?;
            let addr = raw_client::parse_227(&ctl.line)
                .ok_or_else(|| io::Error::other(format!("bad 227: {}", ctl.line)))?;
            let start = Instant::now();
            let mut data = TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT)?;
            data.set_read_timeout(Some(IO_TIMEOUT))?;
            ctl.send(&format!("RETR {BULK_NAME}"))?;
            ctl.expect(&[125, 150])?;
            let got = read_all_counting(&mut data)?;
            let elapsed = start.elapsed();
            drop(data);
            ctl.expect(&[226])?;
            let _ = ctl.send("QUIT");
            if got != len {
                return Err(io::Error::other(format!("received {got} of {len} bytes")));
            }
            Ok((got as f64 / elapsed.as_secs_f64(), got))
        };
        let _ = tx.send(go());
    })?;
    Ok(rx.recv_timeout(Duration::from_secs(300))??)
}

fn read_all_counting(stream: &mut TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// A plain TCP sender in the server namespace: each accepted connection gets `len` bytes.
struct PlainSender {
    stop: Arc<AtomicBool>,
}

impl PlainSender {
    fn start(server: &Netns, len: u64) -> BoxResult<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let _thread = server.spawn_thread(move || {
            let listener = match TcpListener::bind(SocketAddrV4::new(SERVER_IP, PLAIN_PORT)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = ready_tx.send(Ok(()));
            let buf = vec![0u8; 1 << 20];
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                        let mut left = len;
                        while left > 0 {
                            let n = left.min(buf.len() as u64) as usize;
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            left -= n as u64;
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })?;
        ready_rx.recv_timeout(Duration::from_secs(10))??;
        Ok(Self { stop })
    }
}

impl Drop for PlainSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn plain_receive(client: &Netns, len: u64) -> BoxResult<f64> {
    let (tx, rx) = mpsc::channel();
    let _thread = client.spawn_thread(move || {
        let go = || -> io::Result<f64> {
            let start = Instant::now();
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::V4(SocketAddrV4::new(SERVER_IP, PLAIN_PORT)),
                IO_TIMEOUT,
            )?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            let got = read_all_counting(&mut s)?;
            if got != len {
                return Err(io::Error::other(format!("received {got} of {len} bytes")));
            }
            Ok(got as f64 / start.elapsed().as_secs_f64())
        };
        let _ = tx.send(go());
    })?;
    Ok(rx.recv_timeout(Duration::from_secs(300))??)
}

// ------------------------------------------------------------------------------------------
// 2. Control-channel overhead

fn control_overhead(
    settings: &Settings,
    rows: &mut Vec<Row>,
    alg_lab: &ClientNatLab,
    open_lab: &ClientNatLab,
) -> BoxResult<()> {
    say(&format!("NOOP round trips: {} each", settings.noops));
    let direct = noop_series(&open_lab.client, settings.noops)?;
    let through = noop_series(&alg_lab.client, settings.noops)?;
    let direct2 = noop_series(&open_lab.client, settings.noops)?;
    let through2 = noop_series(&alg_lab.client, settings.noops)?;
    let direct = Stats::from_micros([direct, direct2].concat());
    let through = Stats::from_micros([through, through2].concat());
    push_noop_rows(rows, "one session", &through, &direct);

    say(&format!(
        "holding {} idle sessions through ftp-alg (tiny server :{TINY_PORT})",
        settings.idle_loaded
    ));
    let holder = IdleHolder::open(
        &alg_lab.client,
        settings.idle_loaded,
        Duration::from_secs(60),
    )?;
    let opened = holder.opened;
    let loaded = noop_series(&alg_lab.client, settings.noops)?;
    let loaded_direct = noop_series(&open_lab.client, settings.noops)?;
    drop(holder);
    let loaded = Stats::from_micros(loaded);
    let loaded_direct = Stats::from_micros(loaded_direct);
    push_noop_rows(
        rows,
        &format!("{opened} idle sessions held through ftp-alg"),
        &loaded,
        &loaded_direct,
    );
    Ok(())
}

fn push_noop_rows(rows: &mut Vec<Row>, label: &str, through: &Stats, direct: &Stats) {
    let limit = "vsftpd's own NOOP handling and two veth hops dominate the direct figure; the \
                 added time is the ALG's read → parse → write on each direction (tokio wake-ups)";
    for (key, name, a, b) in [
        ("noop_p50", "p50", through.p50, direct.p50),
        ("noop_p99", "p99", through.p99, direct.p99),
    ] {
        rows.push(Row {
            key,
            metric: format!("NOOP round trip {name} µs, {label} (n={})", through.n),
            alg: Some(a),
            baseline: Some(b),
            baseline_name: "direct to vsftpd (no interception, open lab)",
            alg_text: format!("{} (added {})", us(a), us(a - b)),
            baseline_text: us(b),
            limit: limit.into(),
        });
    }
}

/// `count` NOOPs on one logged-in vsftpd session (after 100 unmeasured), µs each. Bounded by
/// 60 s.
fn noop_series(client: &Netns, count: usize) -> BoxResult<Vec<f64>> {
    let (tx, rx) = mpsc::channel();
    let _thread = client.spawn_thread(move || {
        let go = || -> io::Result<Vec<f64>> {
            let mut ctl = Control::connect(SocketAddrV4::new(SERVER_IP, 21))?;
            ctl.login(false)?;
            let mut out = Vec::with_capacity(count);
            let start = Instant::now();
            for i in 0..count + 100 {
                if start.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let t = Instant::now();
                ctl.send("NOOP")?;
                ctl.expect(&[200])?;
                if i >= 100 {
                    out.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            let _ = ctl.send("QUIT");
            Ok(out)
        };
        let _ = tx.send(go());
    })?;
    Ok(rx.recv_timeout(Duration::from_secs(120))??)
}

// ------------------------------------------------------------------------------------------
// 3. Idle sessions and new sessions per second

/// Logged-in idle sessions held open by a thread in the client namespace until dropped (or
/// until `hold` has passed).
struct IdleHolder {
    opened: usize,
    failed: usize,
    first_error: Option<String>,
    open_time: Duration,
    release: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<()>,
}

impl IdleHolder {
    fn open(client: &Netns, n: usize, hold: Duration) -> BoxResult<Self> {
        let (opened_tx, opened_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        let _thread = client.spawn_thread(move || {
            let start = Instant::now();
            let mut held = Vec::with_capacity(n);
            let mut failed = 0;
            let mut first_error = None;
            for _ in 0..n {
                // Bounded: 120 s for the whole opening, 50 failures.
                if start.elapsed() > Duration::from_secs(120) || failed >= 50 {
                    break;
                }
                let session = Control::connect(SocketAddrV4::new(SERVER_IP, TINY_PORT))
                    .and_then(|mut c| c.login(false).map(|()| c));
                match session {
                    Ok(c) => held.push(c),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            let _ = opened_tx.send((held.len(), failed, first_error, start.elapsed()));
            let _ = release_rx.recv_timeout(hold);
            drop(held);
            let _ = done_tx.send(());
        })?;
        let (opened, failed, first_error, open_time) =
            opened_rx.recv_timeout(Duration::from_secs(180))?;
        Ok(Self {
            opened,
            failed,
            first_error,
            open_time,
            release: Some(release_tx),
            done: done_rx,
        })
    }
}

impl Drop for IdleHolder {
    fn drop(&mut self) {
        drop(self.release.take());
        let _ = self.done.recv_timeout(Duration::from_secs(30));
    }
}

fn idle_sessions(
    settings: &Settings,
    rows: &mut Vec<Row>,
    alg_lab: &ClientNatLab,
) -> BoxResult<()> {
    // Both ends of every session are in this process (client + tiny server) and the daemon
    // holds two sockets per session: RLIMIT_NOFILE caps N at about half of it.
    let nofile = raise_nofile(0) as usize;
    let cap = nofile.saturating_sub(200) / 2;
    for &asked in &settings.idle_steps {
        let n = asked.min(cap);
        if n < asked {
            say(&format!(
                "idle sessions: {asked} asked, {n} fit in RLIMIT_NOFILE {nofile} (2 fds per \
                 session in this process and in the daemon)"
            ));
        }
        // A fresh daemon per step, so RSS_0 is not an allocator's leftovers of the last step.
        let alg = AlgDaemon::start(&alg_lab.gateway, &alg_options(vec![21, TINY_PORT]))?;
        let pid = daemon_pid(&alg_lab.gateway).ok_or("ftp-alg's pid not found")?;
        std::thread::sleep(Duration::from_millis(200));
        let rss0 = vm_rss_kib(pid).unwrap_or(0);
        say(&format!(
            "idle sessions: opening {n} (daemon RSS {rss0} KiB)"
        ));
        let holder = IdleHolder::open(&alg_lab.client, n, Duration::from_secs(120))?;
        std::thread::sleep(Duration::from_millis(500));
        let rss_n = vm_rss_kib(pid).unwrap_or(0);
        let per = (rss_n.saturating_sub(rss0)) as f64 / holder.opened.max(1) as f64;
        say(&format!(
            "  opened {} ({} failed) in {:.1} s; RSS {rss0} → {rss_n} KiB, {per:.1} KiB/session",
            holder.opened,
            holder.failed,
            holder.open_time.as_secs_f64()
        ));
        let failed = if holder.failed > 0 {
            format!(
                "; {} failed, first: {}",
                holder.failed,
                holder.first_error.clone().unwrap_or_default()
            )
        } else {
            String::new()
        };
        rows.push(Row {
            key: "idle_rss_per_session",
            metric: format!(
                "daemon RSS per idle logged-in session, KiB (N={asked} asked, {n} tried)"
            ),
            alg: Some(per),
            baseline: None,
            baseline_name: "",
            alg_text: format!(
                "{per:.1} (N={} open, RSS {rss0} → {rss_n} KiB, opened in {:.1} s{failed})",
                holder.opened,
                holder.open_time.as_secs_f64()
            ),
            baseline_text: "n/a (the kernel helper keeps no per-session process state)".into(),
            limit: format!(
                "VmRSS counts touched pages, so per-session buffers that were never filled are \
                 not counted; the server side is a tiny in-bench FTP server (epoll loop), \
                 because vsftpd forks two processes per session; N is capped by \
                 RLIMIT_NOFILE {nofile} (raising the hard limit was refused here): this process \
                 holds both ends of each session and the daemon two sockets per session"
            ),
        });
        drop(holder);
        drop(alg);
    }
    Ok(())
}

fn session_rate(
    settings: &Settings,
    rows: &mut Vec<Row>,
    alg_lab: &ClientNatLab,
    helper_lab: &ClientNatLab,
) -> BoxResult<()> {
    let mut alg = Vec::new();
    let mut helper = Vec::new();
    let mut errors = Vec::new();
    for round in 0..2 {
        say(&format!("new sessions/s round {}", round + 1));
        let a = session_loop(&alg_lab.client, settings)?;
        let h = session_loop(&helper_lab.client, settings)?;
        say(&format!(
            "  ftp-alg {:.0}/s ({} failed), helper {:.0}/s ({} failed)",
            a.rate, a.failed, h.rate, h.failed
        ));
        errors.extend(a.error.iter().map(|e| format!("ftp-alg: {e}")));
        errors.extend(h.error.iter().map(|e| format!("helper: {e}")));
        alg.push(a);
        helper.push(h);
    }
    let text = |v: &[SessionRun]| {
        let rates: Vec<f64> = v.iter().map(|r| r.rate).collect();
        let failed: usize = v.iter().map(|r| r.failed).sum();
        let ok: usize = v.iter().map(|r| r.ok).sum();
        format!(
            "{:.0} ({}; {ok} ok, {failed} failed)",
            median(&rates),
            rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let phase_means = |v: &[SessionRun]| {
        let n: usize = v.iter().map(|r| r.ok + r.failed).sum::<usize>().max(1);
        (0..PHASES)
            .map(|i| {
                let total: Duration = v.iter().map(|r| r.phases[i]).sum();
                format!(
                    "{} {}",
                    PHASE_NAMES[i],
                    us(total.as_secs_f64() * 1e6 / n as f64)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let phases_row = Row {
        key: "new_session_phases",
        metric: "… mean time per session phase, µs".into(),
        alg: None,
        baseline: None,
        baseline_name: "kernel FTP helper",
        alg_text: phase_means(&alg),
        baseline_text: phase_means(&helper),
        limit: "phases include vsftpd's own work (fork, PAM, its 150/226 handling)".into(),
    };
    let med = |v: &[SessionRun]| median(&v.iter().map(|r| r.rate).collect::<Vec<_>>());
    rows.push(Row {
        key: "new_sessions_per_sec",
        metric: "new sessions/s, one client, sequential (connect, 220, USER/PASS, PASV, LIST, \
                 QUIT), vsftpd"
            .into(),
        alg: Some(med(&alg)),
        baseline: Some(med(&helper)),
        baseline_name: "kernel FTP helper",
        alg_text: text(&alg),
        baseline_text: text(&helper),
        limit: format!(
            "vsftpd forks a process per session (and PAM) on the same 2 vCPUs; sequential \
             client; bound {} s or {} sessions per run{}",
            settings.sessions_secs,
            settings.sessions_max,
            if errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", errors.join(" | "))
            }
        ),
    });
    rows.push(phases_row);
    Ok(())
}

/// Phases of one session: connect → 220, USER/PASS, PASV → 227, data connect + LIST → 150,
/// data → 226, QUIT → 221.
const PHASES: usize = 6;
const PHASE_NAMES: [&str; PHASES] = [
    "connect→220",
    "USER/PASS→230",
    "PASV→227",
    "data connect+LIST→150",
    "data→226",
    "QUIT→221",
];

struct SessionRun {
    ok: usize,
    failed: usize,
    rate: f64,
    error: Option<String>,
    /// Summed time per phase over all attempts.
    phases: [Duration; PHASES],
}

fn session_loop(client: &Netns, settings: &Settings) -> BoxResult<SessionRun> {
    let bound = Duration::from_secs(settings.sessions_secs);
    let max = settings.sessions_max;
    let (tx, rx) = mpsc::channel();
    let _thread = client.spawn_thread(move || {
        // Phase clock: time since the previous mark, added to `phases[i]`.
        let one = |phases: &mut [Duration; PHASES]| -> io::Result<()> {
            let mut t = Instant::now();
            let mut mark = |i: usize| {
                let now = Instant::now();
                phases[i] += now - t;
                t = now;
            };
            let mut ctl = Control::connect(SocketAddrV4::new(SERVER_IP, 21))?;
            mark(0);
            ctl.login(false)?;
            mark(1);
            ctl.send("PASV")?;
            ctl.expect(&[227])?;
            mark(2);
            let addr = raw_client::parse_227(&ctl.line)
                .ok_or_else(|| io::Error::other(format!("bad 227: {}", ctl.line)))?;
            let mut data = TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT)?;
            data.set_read_timeout(Some(IO_TIMEOUT))?;
            ctl.send("LIST")?;
            ctl.expect(&[125, 150])?;
            mark(3);
            let mut listing = Vec::new();
            data.read_to_end(&mut listing)?;
            // Close our end first: vsftpd answers 226 only once the data connection is closed.
            drop(data);
            ctl.expect(&[226])?;
            mark(4);
            ctl.send("QUIT")?;
            ctl.expect(&[221])?;
            mark(5);
            if !String::from_utf8_lossy(&listing).contains(BULK_NAME) {
                return Err(io::Error::other("LIST without the file"));
            }
            Ok(())
        };
        let start = Instant::now();
        let (mut ok, mut failed, mut error) = (0, 0, None);
        let mut phases = [Duration::ZERO; PHASES];
        while ok + failed < max && start.elapsed() < bound && failed < 50 {
            match one(&mut phases) {
                Ok(()) => ok += 1,
                Err(e) => {
                    failed += 1;
                    error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        let rate = ok as f64 / start.elapsed().as_secs_f64();
        let _ = tx.send(SessionRun {
            ok,
            failed,
            rate,
            error,
            phases,
        });
    })?;
    Ok(rx.recv_timeout(bound + Duration::from_secs(120))?)
}

// ------------------------------------------------------------------------------------------
// A tiny FTP server for idle sessions: one epoll loop, 220 on accept, 331 to USER, 230 to
// PASS, 221 + close to QUIT, 200 to anything else. Enough to log in and idle.

struct TinyServer {
    stop: Arc<AtomicBool>,
    accepted: mpsc::Receiver<usize>,
}

impl TinyServer {
    fn start(server: &Netns, addr: SocketAddrV4) -> BoxResult<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (count_tx, count_rx) = mpsc::channel();
        let _thread = server.spawn_thread(move || {
            let listener = match TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let _ = count_tx.send(tiny_loop(&listener, &flag));
        })?;
        ready_rx.recv_timeout(Duration::from_secs(10))??;
        Ok(Self {
            stop,
            accepted: count_rx,
        })
    }

    /// Stops the loop and returns how many connections it accepted.
    fn accepted(&self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.accepted
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or(0)
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn tiny_loop(listener: &TcpListener, stop: &AtomicBool) -> usize {
    use std::collections::HashMap;
    // epoll, so that a wake-up costs O(ready), not O(open sessions).
    // SAFETY: plain syscall; the fd is closed at the end.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return 0;
    }
    let add = |fd: i32| {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: valid epoll fd, valid event pointer.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    };
    let lfd = listener.as_raw_fd();
    add(lfd);
    let mut conns: HashMap<i32, (TcpStream, Vec<u8>)> = HashMap::new();
    let mut accepted = 0;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut buf = [0u8; 4096];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // SAFETY: `events` is a valid buffer of the given length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in events.iter().take(n.max(0) as usize) {
            let fd = ev.u64 as i32;
            if fd == lfd {
                // Bounded per wake-up.
                for _ in 0..256 {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            accepted += 1;
                            let _ = s.set_nonblocking(true);
                            let _ = s.write_all(b"220 tiny bench server\r\n");
                            add(s.as_raw_fd());
                            conns.insert(s.as_raw_fd(), (s, Vec::new()));
                        }
                        Err(_) => break,
                    }
                }
                continue;
            }
            let Some((stream, pending)) = conns.get_mut(&fd) else {
                continue;
            };
            let mut close = false;
            match stream.read(&mut buf) {
                Ok(0) => close = true,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) => close = e.kind() != io::ErrorKind::WouldBlock,
            }
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let verb = String::from_utf8_lossy(&line)
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "USER" => b"331 password please\r\n",
                    "PASS" => b"230 logged in\r\n",
                    "QUIT" => b"221 bye\r\n",
                    _ => b"200 ok\r\n",
                };
                let _ = stream.write_all(reply);
                if verb == "QUIT" {
                    close = true;
                    break;
                }
            }
            if close {
                // Closing the fd removes it from the epoll set.
                conns.remove(&fd);
            }
        }
    }
    drop(conns);
    // SAFETY: closing the epoll fd we created.
    unsafe { libc::close(ep) };
    accepted
}

// ------------------------------------------------------------------------------------------
// A minimal synchronous control client (as in benches/core.rs).

/// One socket per session (no `try_clone`: a dup would cost a third fd per idle session).
struct Control {
    reader: BufReader<TcpStream>,
    line: String,
}

impl Control {
    fn connect(server: SocketAddrV4) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&SocketAddr::V4(server), IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut ctl = Self {
            reader: BufReader::with_capacity(512, stream),
            line: String::new(),
        };
        ctl.expect(&[220])?;
        Ok(ctl)
    }

    fn login(&mut self, binary: bool) -> io::Result<()> {
        self.send(&format!("USER {FTP_USER}"))?;
        if self.expect(&[230, 331])? == 331 {
            self.send(&format!("PASS {FTP_PASSWORD}"))?;
            self.expect(&[230])?;
        }
        if binary {
            self.send("TYPE I")?;
            self.expect(&[200])?;
        }
        Ok(())
    }

    fn send(&mut self, line: &str) -> io::Result<()> {
        let mut writer: &TcpStream = self.reader.get_ref();
        writer.write_all(format!("{line}\r\n").as_bytes())
    }

    fn expect(&mut self, codes: &[u16]) -> io::Result<u16> {
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
            for _ in 0..1000 {
                next.clear();
                if self.reader.read_line(&mut next)? == 0 || next.starts_with(&end) {
                    break;
                }
            }
        }
        if codes.contains(&code) {
            Ok(code)
        } else {
            Err(io::Error::other(format!(
                "expected {codes:?}, got {}",
                self.line.trim_end()
            )))
        }
    }
}

// ------------------------------------------------------------------------------------------
// /proc helpers, statistics, output

fn daemon_pid(gateway: &Netns) -> Option<i32> {
    gateway.pids().into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ftp-alg")
    })
}

/// utime + stime of the whole process (all threads), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

fn vm_rss_kib(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Raises RLIMIT_NOFILE (soft and, as root, hard) to `want`; returns the soft limit in force.
/// The daemon, spawned afterwards, inherits it.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let new = libc::rlimit {
        rlim_cur: want.max(lim.rlim_cur),
        rlim_max: want.max(lim.rlim_max),
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
    }
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[(s.len() - 1) / 2]
}

fn us(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn stdout_of(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine_line() -> (String, String, String, String) {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(1, usize::from);
    (
        format!("{nproc} × {cpu}"),
        read("/proc/sys/kernel/osrelease").trim().to_owned(),
        stdout_of(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        stdout_of(
            Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR")),
        ),
    )
}

fn render_table(
    rows: &[Row],
    s: &Settings,
    load_before: &str,
    load_after: &str,
    nofile: u64,
    total: Duration,
) -> String {
    let (cpu, kernel, date, commit) = machine_line();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n## ftp-alg scale benchmark — {date} — {cpu}, kernel {kernel}, commit {commit}\n"
    );
    let _ = writeln!(
        t,
        "Bulk {} MiB × {} rounds; {} NOOPs per series; {} idle sessions under load; idle \
         steps {:?}; RLIMIT_NOFILE {nofile}. Load average before/after: {load_before} / \
         {load_after}. Total {:.0} s.\n",
        s.bulk_mib,
        s.bulk_rounds,
        s.noops,
        s.idle_loaded,
        s.idle_steps,
        total.as_secs_f64()
    );
    let _ = writeln!(
        t,
        "| metric | ftp-alg | baseline | baseline value | ratio (alg/baseline) |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            r.metric,
            r.alg_text,
            if r.baseline_name.is_empty() {
                "—"
            } else {
                r.baseline_name
            },
            r.baseline_text,
            r.ratio().map_or("—".into(), |x| format!("{x:.2}"))
        );
    }
    let _ = writeln!(t, "\nWhat limits each number:");
    let mut seen = Vec::new();
    for r in rows {
        if !seen.contains(&r.limit) {
            let _ = writeln!(t, "- {}: {}", r.key, r.limit);
            seen.push(r.limit.clone());
        }
    }
    t
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{}", (x * 1000.0).round() / 1000.0),
        _ => "null".into(),
    }
}

fn render_json(
    rows: &[Row],
    s: &Settings,
    load_before: &str,
    load_after: &str,
    nofile: u64,
    total: Duration,
) -> String {
    let (cpu, kernel, date, commit) = machine_line();
    let mut out = String::from("{");
    let _ = write!(
        out,
        "\"machine\": {{\"cpu\": {}, \"kernel\": {}, \"date\": {}, \"commit\": {}, \
         \"loadavg_before\": {}, \"loadavg_after\": {}}}, ",
        json_str(&cpu),
        json_str(&kernel),
        json_str(&date),
        json_str(&commit),
        json_str(load_before),
        json_str(load_after)
    );
    let _ = write!(
        out,
        "\"settings\": {{\"bulk_mib\": {}, \"bulk_rounds\": {}, \"noops\": {}, \
         \"idle_loaded\": {}, \"idle_steps\": {:?}, \"sessions_secs\": {}, \
         \"sessions_max\": {}, \"rlimit_nofile\": {nofile}}}, \"total_seconds\": {}, \"rows\": [",
        s.bulk_mib,
        s.bulk_rounds,
        s.noops,
        s.idle_loaded,
        s.idle_steps,
        s.sessions_secs,
        s.sessions_max,
        json_num(Some(total.as_secs_f64()))
    );
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "{{\"key\": {}, \"metric\": {}, \"ftp_alg\": {}, \"baseline\": {}, \
             \"baseline_name\": {}, \"ratio\": {}, \"ftp_alg_text\": {}, \
             \"baseline_text\": {}, \"limit\": {}}}",
            json_str(r.key),
            json_str(&r.metric),
            json_num(r.alg),
            json_num(r.baseline),
            json_str(r.baseline_name),
            json_num(r.ratio()),
            json_str(&r.alg_text),
            json_str(&r.baseline_text),
            json_str(&r.limit)
        );
    }
    out.push_str("]}\n");
    out
}

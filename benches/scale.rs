//! The scale benchmark: bulk data through a pinhole (RETR in PASV and PORT, STOR), the same
//! with 100,000 live pinholes in the kernel (and the pinhole install latency then), the
//! control-channel overhead per command, idle sessions (daemon RSS per session) and new
//! sessions per second, each against a baseline measured in the same run on the same lab
//! topology.
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
//!   baseline (bulk TCP); for active mode a static port
//!   forward (server:20 → gateway:45000-45999 DNATed to the client), which a client that
//!   announces the gateway's address in PORT uses;
//! - `helper`: the kernel's FTP helper (`ct helper` "ftp" + nf_nat_ftp), no ALG;
//! - `relay` (bulk RETR PASV only): a userspace relay proxy in the gateway, Debian's
//!   `ftp-proxy` started by `ftp_alg::lab::relay` (transparent: LAN tcp/21 redirected to it,
//!   the client unchanged), which terminates both channels and copies every byte through its
//!   per-session process. Skipped when `/usr/sbin/ftp-proxy` is missing or with
//!   `FTP_ALG_BENCH_RELAY=0`. It speaks PASV/PORT over IPv4 only; the comparison is the RETR
//!   PASV rounds, with the relay's CPU time (daemon and session child) next to the daemon's.
//!
//! Scale of state (issue 7, target 6): a second `NftFirewall` socket on the daemon's own table
//! in the `alg` gateway fills its sets and maps with N pinholes (half passive, half active
//! with their DNAT map entries; keys no packet ever carries), reads the element counts back,
//! and the same RETRs, a plain TCP stream in no set, and the pinhole install latency are
//! measured with the table empty and full in alternating (ABBA) rounds; the filler is removed
//! again and the emptiness checked.
//!
//! Control overhead (target 3): NOOPs through the ALG (vsftpd on :21) alternate, one by one
//! on one client thread, with NOOPs to a vsftpd on the same bed that the gateway forwards
//! without interception (:2300), so the two series share every namespace, veth and minute of
//! the machine; the added time is reported as the difference of their percentiles and as the
//! median of the per-pair differences.
//!
//! Every client and server loop runs on a thread inside a lab namespace and is bounded in
//! count and in time; every socket has a timeout.

mod common;

use common::{Op, Stats, drive};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ftp_alg::firewall::{NftFirewall, Pinhole};
use ftp_alg::lab::nft::ALG_TABLE;
use ftp_alg::lab::preflight::{self, Gate};
use ftp_alg::lab::relay::{RELAY_BINARY, RelayProxy};
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, CLIENT_IP, ClientNatLab, ClientNatOptions, FTP_PASSWORD, FTP_USER,
    GATEWAY_WAN_IP, Netns, SERVER_IP, Vsftpd, VsftpdOptions, kernel_helper_table, raw_client,
};

const BULK_NAME: &str = "bench-bulk.bin";
/// Port of the tiny idle-session server in the server namespace (intercepted by the ALG).
const TINY_PORT: u16 = 2200;
/// Port of the plain TCP bulk sender (open lab; ftp-alg lab for the scale-of-state runs).
const PLAIN_PORT: u16 = 5001;
/// Port of the plain TCP upload receiver (open lab).
const SINK_PORT: u16 = 5002;
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
    stor_sink: StorSink,
    state_pinholes: usize,
    state_rounds: usize,
    latency_n: usize,
    paced_n: usize,
    idle_window: Duration,
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
                stor_sink: StorSink::from_env(),
                state_pinholes: 10_000,
                state_rounds: 1,
                latency_n: 300,
                paced_n: 100,
                idle_window: Duration::from_millis(500),
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
            stor_sink: StorSink::from_env(),
            state_pinholes: env("FTP_ALG_SCALE_STATE_PINHOLES", 100_000) as usize,
            state_rounds: env("FTP_ALG_SCALE_STATE_ROUNDS", 8).max(1) as usize,
            latency_n: env("FTP_ALG_SCALE_LATENCY_N", 2_000).max(1) as usize,
            paced_n: env("FTP_ALG_SCALE_PACED_N", 500).max(1) as usize,
            idle_window: Duration::from_millis(env("FTP_ALG_SCALE_IDLE_WINDOW_MS", 1_000)),
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
    common::clean_up_on_interrupt();
    let nofile = common::raise_nofile(65_536);
    let started = Instant::now();
    let mut rows = Vec::new();
    let load_before = common::load_average();
    let result = run(&settings, &mut rows);
    let total = started.elapsed();
    let load_after = common::load_average();
    if let Err(e) = &result {
        eprintln!("scale benchmark stopped early: {e}");
    }
    let table = render_table(&rows, &settings, &load_before, &load_after, nofile, total);
    println!("{table}");
    let path = common::target_dir().join("bench").join("scale.json");
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
    /// The ratio to report instead of alg/baseline (the median of per-round ratios, where
    /// rounds are paired).
    paired: Option<f64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        if self.paired.is_some() {
            return self.paired;
        }
        match (self.alg, self.baseline) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------------------------------
// The run

fn alg_options(control_ports: Vec<u16>) -> AlgOptions {
    let mut options = common::alg_options(&common::OPEN_LIMITS);
    options.control_ports = control_ports;
    options.log_level = "ftp_alg=warn".into();
    options.active_ports = (40000, 49999);
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
        // Sparse: vsftpd reads zeros from the page cache, no disk I/O in the measurement
        // (the first read fills the cache with zero pages, hence the bulk warm-up).
        let file = std::fs::File::create(server.root().join(BULK_NAME))?;
        file.set_len(bulk_len)?;
    }
    // The ALG's own bed also carries the two baselines, on other control ports, so that a
    // paired round compares routes through the very same namespaces, veths and file.
    let (bed_helper_server, bed_open_server) = same_bed_baselines(&alg_lab, &alg_server)?;
    let tiny = TinyServer::start(&alg_lab.server, SocketAddrV4::new(SERVER_IP, TINY_PORT))?;
    let plain = PlainSender::start(&open_lab.server, bulk_len)?;
    // The scale-of-state runs also send plain TCP through the ALG's gateway: a connection in
    // no pinhole set, admitted by one more line of the admin's forward chain.
    let alg_plain = PlainSender::start(&alg_lab.server, bulk_len)?;
    alg_lab.gateway.exec_ok(&[
        "nft",
        "add",
        "rule",
        "inet",
        "lab_fw",
        "forward",
        "iifname",
        "lan0",
        "oifname",
        "wan0",
        "tcp",
        "dport",
        &PLAIN_PORT.to_string(),
        "accept",
    ])?;
    install_port_forward(&open_lab, FORWARD_PORTS)?;
    let relay = relay_bed(bulk_len)?;

    let mut alg = AlgDaemon::start(&alg_lab.gateway, &alg_options(vec![21, TINY_PORT]))?;
    let pid =
        common::daemon_pid(&alg_lab.gateway).ok_or("ftp-alg's pid not found in the gateway")?;
    say(&format!("daemon pid {pid}: {}", alg.command_line()));

    let route = |label: &'static str, lab, server: &Vsftpd, port_plan| BulkRoute {
        label,
        lab,
        control_port: server.addr().port(),
        port_plan,
        stor: settings.stor_sink.target(server.root(), label),
    };
    let bed = BulkBed {
        alg: route("alg", &alg_lab, &alg_server, PortPlan::Rewritten),
        open: route(
            "open",
            &open_lab,
            &open_server,
            PortPlan::Forwarded(FORWARD_PORTS),
        ),
        helper: route("helper", &helper_lab, &helper_server, PortPlan::Rewritten),
        bed_open: route(
            "bed-open",
            &alg_lab,
            &bed_open_server,
            PortPlan::Forwarded(BED_FORWARD_PORTS),
        ),
        bed_helper: route(
            "bed-helper",
            &alg_lab,
            &bed_helper_server,
            PortPlan::Rewritten,
        ),
        relay: relay.as_ref().map(|r| RelayRoute {
            route: route("relay", &r.lab, &r.server, PortPlan::Rewritten),
            pid: r.pid,
        }),
        pid,
    };
    bulk(settings, rows, &bed, bulk_len)?;
    state_scale(settings, rows, &bed, bulk_len)?;
    control_overhead(settings, rows, &alg_lab)?;
    session_rate(settings, rows, &alg_lab, &helper_lab)?;
    alg.stop(Duration::from_secs(5));
    idle_sessions(settings, rows, &alg_lab)?;
    say(&format!(
        "tiny server served {} connections",
        tiny.accepted()
    ));
    drop(plain);
    drop(alg_plain);
    drop(tiny);
    drop(relay);
    Ok(())
}

/// The relay proxy's lab, for the bulk RETR PASV rounds. Fields drop in order: the relay
/// first, then its server, then the namespaces.
struct RelayBed {
    /// Kept alive for the bulk rounds; dropped (stopped) first.
    _relay: RelayProxy,
    server: Vsftpd,
    lab: ClientNatLab,
    /// The `ftp-proxy` daemon (its session children fork from it).
    pid: i32,
}

/// The baselines on the ALG's own bed: a second vsftpd (control port [`BED_HELPER_PORT`])
/// whose control connections get the kernel helper, and a third ([`BED_OPEN_PORT`]) reached by
/// plain forwarding (its passive ports accepted by a forward rule; for PORT a static port
/// forward over [`BED_FORWARD_PORTS`]). Both serve the ALG route's bulk file (hard links: one
/// inode, one page cache). The daemon intercepts only :21 and the tiny server's port.
fn same_bed_baselines(lab: &ClientNatLab, alg_server: &Vsftpd) -> BoxResult<(Vsftpd, Vsftpd)> {
    let start = |port, pasv_ports| {
        Vsftpd::start_with(
            &lab.server,
            &VsftpdOptions {
                listen: SocketAddr::V4(SocketAddrV4::new(SERVER_IP, port)),
                pasv_ports: Some(pasv_ports),
                ..VsftpdOptions::default()
            },
        )
    };
    let helper = start(BED_HELPER_PORT, BED_HELPER_PASV)?;
    let open = start(BED_OPEN_PORT, BED_OPEN_PASV)?;
    for server in [&helper, &open] {
        std::fs::hard_link(
            alg_server.root().join(BULK_NAME),
            server.root().join(BULK_NAME),
        )?;
    }
    let (lo, hi) = BED_OPEN_PASV;
    let script = format!(
        "{}add rule inet lab_fw forward iifname \"lan0\" oifname \"wan0\" tcp dport \
         {{ {BED_HELPER_PORT}, {BED_OPEN_PORT}, {lo}-{hi} }} accept\n",
        kernel_helper_table("bench_helper", BED_HELPER_PORT)
    );
    lab.gateway
        .exec_stdin_ok(&["nft", "-f", "-"], script.as_bytes())?;
    install_port_forward(lab, BED_FORWARD_PORTS)?;
    Ok((helper, open))
}

/// A fourth client-NAT lab (no ALG, no helper) with a userspace relay proxy in the gateway:
/// Debian's `ftp-proxy` started by `ftp_alg::lab::relay`, transparent like ftp-alg (LAN tcp/21
/// redirected to it; the client connects to the server's address and logs in as usual),
/// logging at `WRN`, `ForkLimit` off, `MaxClients` 512 (the lab's defaults), and the same
/// sparse file in its vsftpd. `None` when `ftp-proxy` is not installed or
/// `FTP_ALG_BENCH_RELAY=0`.
fn relay_bed(bulk_len: u64) -> BoxResult<Option<RelayBed>> {
    if let Some(why) = common::relay_unavailable() {
        say(&format!("relay proxy skipped: {why}"));
        return Ok(None);
    }
    say("building a fourth lab: the relay proxy (ftp-proxy in the gateway)");
    let lab = ClientNatLab::build(ClientNatOptions::default())?;
    let server = Vsftpd::start(&lab.server)?;
    let file = std::fs::File::create(server.root().join(BULK_NAME))?;
    file.set_len(bulk_len)?;
    let relay = common::start_relay(&lab.gateway)?;
    let pid = i32::try_from(relay.pid())?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "ftp-proxy" {
        return Err(format!("pid {pid} of the relay is {:?}, not ftp-proxy", comm.trim()).into());
    }
    let target = relay.target(FTP_USER);
    if target.addr != SocketAddrV4::new(SERVER_IP, 21) || target.user != FTP_USER {
        return Err(format!("the relay is not transparent: {target:?}").into());
    }
    say(&format!(
        "relay pid {pid}: {RELAY_BINARY} -d -n -f {}",
        relay.config_path().display()
    ));
    Ok(Some(RelayBed {
        _relay: relay,
        server,
        lab,
        pid,
    }))
}

// ------------------------------------------------------------------------------------------
// 1. Bulk data

/// One FTP bulk transfer shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    /// PASV, then RETR of the sparse bulk file (vsftpd sendfile()s zeros from the page cache).
    RetrPasv,
    /// PORT, then RETR: the client listens, vsftpd connects from port 20.
    RetrPort,
    /// PASV, then STOR of zeros from a 1 MiB buffer (vsftpd read()s and write()s them into
    /// the [`StorSink`]).
    Stor,
}

impl Transfer {
    fn label(self) -> &'static str {
        match self {
            Self::RetrPasv => "RETR PASV",
            Self::RetrPort => "RETR PORT",
            Self::Stor => "STOR PASV",
        }
    }
}

/// How the server reaches the client's PORT listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPlan {
    /// Announce the client's own address: the ALG or the kernel helper rewrites it.
    Rewritten,
    /// Announce the gateway's WAN address and a port of a static port forward over these
    /// client ports (no ALG, no helper: plain DNAT + forwarding).
    Forwarded((u16, u16)),
}

/// Where vsftpd writes a STOR (`FTP_ALG_SCALE_STOR_SINK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorSink {
    /// A file in /dev/shm (tmpfs), deleted after each transfer (the default).
    Tmpfs,
    /// `APPE /dev/null` instead of STOR (the lab's vsftpd does not chroot and the FTP user may
    /// write the device, but `STOR /dev/null` fails in vsftpd's ftruncate with `500 OOPS`;
    /// APPE does not truncate): no file system in the measurement, vsftpd's read()/write()
    /// loop remains.
    DevNull,
    /// A file in vsftpd's login directory (under the system temp dir, here on disk, through
    /// the page cache), deleted after each transfer.
    Disk,
}

impl StorSink {
    fn from_env() -> Self {
        match std::env::var("FTP_ALG_SCALE_STOR_SINK").as_deref() {
            Ok("devnull") => Self::DevNull,
            Ok("disk") => Self::Disk,
            _ => Self::Tmpfs,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::DevNull => "devnull",
            Self::Tmpfs => "tmpfs",
            Self::Disk => "disk",
        }
    }

    /// The upload command (`STOR path`, or `APPE /dev/null`) and the local file to delete
    /// afterwards, for the lab `label`.
    fn target(self, root: &Path, label: &str) -> (String, Option<PathBuf>) {
        let (line, local) = self.path(root, label);
        let verb = if self == Self::DevNull {
            "APPE"
        } else {
            "STOR"
        };
        (format!("{verb} {line}"), local)
    }

    fn path(self, root: &Path, label: &str) -> (String, Option<PathBuf>) {
        match self {
            Self::DevNull => ("/dev/null".into(), None),
            Self::Tmpfs => {
                let path = PathBuf::from(format!(
                    "/dev/shm/ftp-alg-bench-{}-{label}.bin",
                    std::process::id()
                ));
                (path.display().to_string(), Some(path))
            }
            Self::Disk => {
                let name = format!("bench-upload-{label}.bin");
                let path = root.join(&name);
                (name, Some(path))
            }
        }
    }
}

/// One lab's side of the bulk runs.
struct BulkRoute<'a> {
    label: &'static str,
    lab: &'a ClientNatLab,
    control_port: u16,
    port_plan: PortPlan,
    stor: (String, Option<PathBuf>),
}

impl BulkRoute<'_> {
    fn run(&self, transfer: Transfer, len: u64) -> BoxResult<f64> {
        let result = ftp_bulk(
            &self.lab.client,
            self.control_port,
            transfer,
            self.port_plan,
            len,
            &self.stor.0,
        )
        .map_err(|e| format!("{} via {}: {e}", transfer.label(), self.label).into());
        if transfer == Transfer::Stor
            && let Some(path) = &self.stor.1
        {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}

/// Rates (bytes/s) of every round, per route.
#[derive(Default)]
struct BulkSeries {
    alg: Vec<f64>,
    open: Vec<f64>,
    helper: Vec<f64>,
    /// The same baselines on the ALG's own bed.
    bed_open: Vec<f64>,
    bed_helper: Vec<f64>,
    plain: Vec<f64>,
    cpu_ms: Vec<f64>,
    /// Through the relay proxy (RETR PASV only).
    relay: Vec<f64>,
    /// The relay's CPU time per transfer: daemon and session child.
    relay_cpu_ms: Vec<f64>,
}

/// The relay proxy's side of the bulk runs.
struct RelayRoute<'a> {
    route: BulkRoute<'a>,
    /// The `ftp-proxy` daemon.
    pid: i32,
}

impl RelayRoute<'_> {
    /// One transfer; returns bytes/s and the CPU time (ms) of the relay's processes during it,
    /// counted once the session child has exited.
    fn run(&self, transfer: Transfer, len: u64, hz: f64) -> BoxResult<(f64, f64)> {
        // A child of an earlier session still ending would move its CPU into this one.
        wait_children_ended(self.pid, Duration::from_secs(5));
        let before = family_cpu_ticks(self.pid);
        let rate = self.route.run(transfer, len)?;
        if !wait_children_ended(self.pid, Duration::from_secs(5)) {
            say("  the relay's session child did not exit within 5 s; its CPU so far counted");
        }
        let after = family_cpu_ticks(self.pid);
        Ok((rate, after.saturating_sub(before) as f64 * 1000.0 / hz))
    }
}

/// The labs and processes the bulk runs use.
struct BulkBed<'a> {
    alg: BulkRoute<'a>,
    open: BulkRoute<'a>,
    helper: BulkRoute<'a>,
    /// Plain forwarding and the kernel helper on the ALG's own lab (see
    /// [`same_bed_baselines`]).
    bed_open: BulkRoute<'a>,
    bed_helper: BulkRoute<'a>,
    /// `None` when the relay proxy is skipped.
    relay: Option<RelayRoute<'a>>,
    pid: i32,
}

fn bulk(settings: &Settings, rows: &mut Vec<Row>, bed: &BulkBed<'_>, len: u64) -> BoxResult<()> {
    let transfers = [Transfer::RetrPasv, Transfer::RetrPort, Transfer::Stor];
    let mut series: Vec<BulkSeries> = transfers.iter().map(|_| BulkSeries::default()).collect();
    let hz = clock_ticks_per_sec();
    // One unrecorded RETR per route first: each route's first read of its sparse file ran at
    // a fifth of the rate of every later one (the page cache filling with zero pages), and
    // with one round (--quick) or an even count that cold round was the one reported.
    say("bulk warm-up: one unrecorded RETR PASV per route");
    for route in [
        &bed.alg,
        &bed.open,
        &bed.helper,
        &bed.bed_open,
        &bed.bed_helper,
    ] {
        route.run(Transfer::RetrPasv, len)?;
    }
    if let Some(relay) = &bed.relay {
        relay.run(Transfer::RetrPasv, len, hz)?;
    }
    for round in 0..settings.bulk_rounds {
        say(&format!("bulk round {}: {} MiB", round + 1, len >> 20));
        for (transfer, s) in transfers.iter().zip(series.iter_mut()) {
            // The FTP routes in a rotating order, so none is always first after the plain TCP
            // run (or always right after another transfer's tail of writeback). The relay
            // proxy is the fourth, in RETR PASV only.
            let mut order = vec![0usize, 1, 2, 4, 5];
            if *transfer == Transfer::RetrPasv && bed.relay.is_some() {
                order.push(3);
            }
            let routes = order.len();
            order.rotate_left(round % routes);
            for which in order {
                match which {
                    0 => {
                        let before = cpu_ticks(bed.pid);
                        let rate = bed.alg.run(*transfer, len)?;
                        let after = cpu_ticks(bed.pid);
                        s.alg.push(rate);
                        s.cpu_ms
                            .push(after.saturating_sub(before) as f64 * 1000.0 / hz);
                    }
                    1 => s.open.push(bed.open.run(*transfer, len)?),
                    2 => s.helper.push(bed.helper.run(*transfer, len)?),
                    4 => s.bed_open.push(bed.bed_open.run(*transfer, len)?),
                    5 => s.bed_helper.push(bed.bed_helper.run(*transfer, len)?),
                    _ => {
                        if let Some(relay) = &bed.relay {
                            let (rate, cpu) = relay.run(*transfer, len, hz)?;
                            s.relay.push(rate);
                            s.relay_cpu_ms.push(cpu);
                        }
                    }
                }
            }
            match transfer {
                Transfer::RetrPasv => s.plain.push(plain_receive(&bed.open.lab.client, len)?),
                Transfer::Stor => s.plain.push(plain_send(&bed.open.lab.client, len)?),
                Transfer::RetrPort => {}
            }
            say(&format!(
                "  {}: ftp-alg {:.0} MB/s (daemon {:.0} ms), open forwarding {:.0}, helper \
                 {:.0}, on the ALG's bed: forwarding {:.0}, helper {:.0}{}{}",
                transfer.label(),
                last(&s.alg) / 1e6,
                s.cpu_ms.last().copied().unwrap_or(0.0),
                last(&s.open) / 1e6,
                last(&s.helper) / 1e6,
                last(&s.bed_open) / 1e6,
                last(&s.bed_helper) / 1e6,
                if s.plain.is_empty() {
                    String::new()
                } else {
                    format!(", plain TCP {:.0}", last(&s.plain) / 1e6)
                },
                if s.relay.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", relay proxy {:.0} (relay {:.0} ms)",
                        last(&s.relay) / 1e6,
                        last(&s.relay_cpu_ms)
                    )
                }
            ));
        }
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.0}", x / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mib = len >> 20;
    for (transfer, s) in transfers.iter().zip(&series) {
        let (open_key, plain_key, helper_key, cpu_key) = match transfer {
            Transfer::RetrPasv => (
                "bulk_vs_open_retr",
                "bulk_vs_plain",
                "bulk_vs_helper",
                "bulk_daemon_cpu",
            ),
            Transfer::RetrPort => (
                "bulk_port_vs_open",
                "",
                "bulk_port_vs_helper",
                "bulk_port_daemon_cpu",
            ),
            Transfer::Stor => (
                "bulk_stor_vs_open",
                "bulk_stor_vs_plain",
                "bulk_stor_vs_helper",
                "bulk_stor_daemon_cpu",
            ),
        };
        let metric = format!(
            "{} {mib} MiB, MB/s (median of rounds; ratio = median of the rounds' ratios){}",
            transfer.label(),
            if *transfer == Transfer::Stor {
                match settings.stor_sink {
                    StorSink::Tmpfs => ", into a tmpfs file".to_owned(),
                    StorSink::Disk => ", into a file on disk".to_owned(),
                    StorSink::DevNull => ", sent as APPE /dev/null".to_owned(),
                }
            } else {
                String::new()
            }
        );
        let limit = match transfer {
            Transfer::RetrPasv => {
                "one TCP stream on veth, 2 vCPUs: sender, receiver and forwarding softirq share \
                 them; MB/s = 10^6 bytes/s from the data connect to EOF"
                    .to_owned()
            }
            Transfer::RetrPort => {
                "as RETR PASV, from the RETR command to EOF (vsftpd connects from port 20 to the \
                 announced address, DNATed to the client: by the ALG's map, the helper's \
                 expectation, or the open lab's static port forward)"
                    .to_owned()
            }
            Transfer::Stor => format!(
                "from the data connect to the 226 (the server has every byte); vsftpd read()s \
                 and write()s each buffer in userspace (no splice for uploads), so its own copy \
                 caps the rate below RETR's sendfile; sink {} ({})",
                settings.stor_sink.name(),
                match settings.stor_sink {
                    StorSink::DevNull => {
                        "APPE /dev/null, the same upload path without a file (STOR /dev/null \
                         fails in vsftpd's ftruncate)"
                    }
                    StorSink::Tmpfs => "a tmpfs file, deleted after each transfer",
                    StorSink::Disk =>
                        "a file on the disk under the temp dir, through the page \
                                       cache, deleted after each transfer",
                }
            ),
        };
        let alg_text = format!("{:.0} ({})", common::median(&s.alg) / 1e6, list(&s.alg));
        let open_name = match transfer {
            Transfer::RetrPort => {
                "plain kernel forwarding: the same vsftpd PORT RETR, the client announcing the \
                 gateway's WAN address and a port of a static port forward (DNAT wan0 → client, \
                 no ALG, no helper)"
            }
            Transfer::RetrPasv => {
                "plain kernel forwarding: the same vsftpd RETR, gateway accepts all LAN→WAN \
                 (no ALG, no helper)"
            }
            Transfer::Stor => {
                "plain kernel forwarding: the same vsftpd STOR, gateway accepts all LAN→WAN \
                 (no ALG, no helper)"
            }
        };
        rows.push(Row {
            key: open_key,
            paired: Some(common::median(&paired_ratios(&s.alg, &s.open))),
            metric: metric.clone(),
            alg: Some(common::median(&s.alg) / 1e6),
            baseline: Some(common::median(&s.open) / 1e6),
            baseline_name: open_name,
            alg_text: alg_text.clone(),
            baseline_text: format!("{:.0} ({})", common::median(&s.open) / 1e6, list(&s.open)),
            limit: limit.clone(),
        });
        if !plain_key.is_empty() {
            rows.push(Row {
                key: plain_key,
                paired: Some(common::median(&paired_ratios(&s.alg, &s.plain))),
                metric: metric.clone(),
                alg: Some(common::median(&s.alg) / 1e6),
                baseline: Some(common::median(&s.plain) / 1e6),
                baseline_name: if *transfer == Transfer::Stor {
                    "plain TCP sender (client) → receiver (server), open forwarding: a userspace \
                     write loop of a zero buffer into a read-and-discard loop, not vsftpd"
                } else {
                    "plain TCP sender → receiver, open forwarding (a userspace write loop of a \
                     zero buffer, not vsftpd's sendfile: a different sender)"
                },
                alg_text: alg_text.clone(),
                baseline_text: format!(
                    "{:.0} ({})",
                    common::median(&s.plain) / 1e6,
                    list(&s.plain)
                ),
                limit: limit.clone(),
            });
        }
        rows.push(Row {
            key: helper_key,
            paired: Some(common::median(&paired_ratios(&s.alg, &s.helper))),
            metric: metric.clone(),
            alg: Some(common::median(&s.alg) / 1e6),
            baseline: Some(common::median(&s.helper) / 1e6),
            baseline_name: "kernel FTP helper",
            alg_text: alg_text.clone(),
            baseline_text: format!(
                "{:.0} ({})",
                common::median(&s.helper) / 1e6,
                list(&s.helper)
            ),
            limit: limit.clone(),
        });
        let (bed_open_key, bed_helper_key) = match transfer {
            Transfer::RetrPasv => ("bulk_vs_open_same_bed", "bulk_vs_helper_same_bed"),
            Transfer::RetrPort => ("bulk_port_vs_open_same_bed", "bulk_port_vs_helper_same_bed"),
            Transfer::Stor => ("bulk_stor_vs_open_same_bed", "bulk_stor_vs_helper_same_bed"),
        };
        for (key, series, name) in [
            (
                bed_open_key,
                &s.bed_open,
                "plain kernel forwarding on the ALG's own bed: a second vsftpd on the same \
                 server namespace (control port 2300, its passive ports accepted by a forward \
                 rule; PORT through a static port forward), the same file (a hard link), the \
                 same veths and gateway",
            ),
            (
                bed_helper_key,
                &s.bed_helper,
                "kernel FTP helper on the ALG's own bed: a third vsftpd on the same server \
                 namespace (control port 2100, `ct helper` \"ftp\" attached to it in the \
                 ALG's gateway), the same file (a hard link), the same veths and gateway",
            ),
        ] {
            rows.push(Row {
                key,
                paired: Some(common::median(&paired_ratios(&s.alg, series))),
                metric: metric.clone(),
                alg: Some(common::median(&s.alg) / 1e6),
                baseline: Some(common::median(series) / 1e6),
                baseline_name: name,
                alg_text: alg_text.clone(),
                baseline_text: format!("{:.0} ({})", common::median(series) / 1e6, list(series)),
                limit: format!(
                    "{limit}; same bed: the routes differ only in the control port and what \
                     admits the data connection"
                ),
            });
        }
        rows.push(Row {
            key: cpu_key,
            paired: None,
            metric: format!(
                "daemon CPU time (utime+stime) during each ftp-alg {} {mib} MiB, ms",
                transfer.label()
            ),
            alg: Some(s.cpu_ms.iter().copied().fold(0.0, f64::max)),
            baseline: None,
            baseline_name: "",
            alg_text: s
                .cpu_ms
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            baseline_text: "n/a".into(),
            limit: format!(
                "/proc/<pid>/stat resolution is one tick ({:.0} ms); includes the session's \
                 login, the {} and the pinhole",
                1000.0 / hz,
                if *transfer == Transfer::RetrPort {
                    "PORT rewrite"
                } else {
                    "227 rewrite"
                }
            ),
        });
        if !s.relay.is_empty() {
            push_relay_rows(rows, s, &metric, hz, &list);
        }
    }
    Ok(())
}

/// The relay proxy's rows of one transfer shape: its rate against ftp-alg's, and the CPU time
/// of its processes against the daemon's.
fn push_relay_rows(
    rows: &mut Vec<Row>,
    s: &BulkSeries,
    metric: &str,
    hz: f64,
    list: &dyn Fn(&[f64]) -> String,
) {
    let ms = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rows.push(Row {
        key: "bulk_vs_relay",
        paired: Some(common::median(&paired_ratios(&s.alg, &s.relay))),
        metric: metric.to_owned(),
        alg: Some(common::median(&s.alg) / 1e6),
        baseline: Some(common::median(&s.relay) / 1e6),
        baseline_name: "userspace relay proxy: Debian's ftp-proxy in the gateway (transparent, \
                        one forked process per session), the same vsftpd RETR of the same file",
        alg_text: format!("{:.0} ({})", common::median(&s.alg) / 1e6, list(&s.alg)),
        baseline_text: format!("{:.0} ({})", common::median(&s.relay) / 1e6, list(&s.relay)),
        limit: "the relay terminates both channels: the client's data connection ends in the \
                gateway (10.0.0.1) and the relay's own leaves it (203.0.113.1 → server), so two \
                TCP streams with every byte copied through userspace (select(), FIONREAD, one \
                recv()/send() per chunk) instead of one forwarded stream; MB/s from the data \
                connect to EOF, as for ftp-alg"
            .into(),
    });
    rows.push(Row {
        key: "bulk_relay_cpu",
        paired: Some(common::median(&paired_ratios(&s.cpu_ms, &s.relay_cpu_ms))),
        metric: "CPU time (utime+stime) during each RETR PASV: the ftp-alg daemon vs the relay \
                 (ftp-proxy daemon + the session's child process), ms (median of rounds)"
            .into(),
        alg: Some(common::median(&s.cpu_ms)),
        baseline: Some(common::median(&s.relay_cpu_ms)),
        baseline_name: "relay proxy processes (ftp-proxy)",
        alg_text: format!("{:.0} ({})", common::median(&s.cpu_ms), ms(&s.cpu_ms)),
        baseline_text: format!(
            "{:.0} ({})",
            common::median(&s.relay_cpu_ms),
            ms(&s.relay_cpu_ms)
        ),
        limit: format!(
            "/proc/<pid>/stat, one tick = {:.0} ms: for the relay, the daemon's utime+stime plus \
             cutime+cstime (its reaped session children) plus any live child's, read before the \
             login and after the session's child has exited; includes the login and the copy of \
             every byte (the ALG's data never reaches userspace)",
            1000.0 / hz
        ),
    });
}

/// `a[i] / b[i]` for every round that has both.
fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, y)| **y > 0.0)
        .map(|(x, y)| x / y)
        .collect()
}

/// utime+stime of `pid`, of its reaped children (cutime+cstime) and of its children still
/// there (live or zombie), in clock ticks: the relay proxy's daemon and its session processes.
fn family_cpu_ticks(pid: i32) -> u64 {
    let own = stat_fields(pid).map_or(0, |f| (14..=17).map(|n| stat_num(&f, n)).sum());
    own + children_of(pid)
        .iter()
        .filter_map(|(child, _)| stat_fields(*child))
        .map(|f| stat_num(&f, 14) + stat_num(&f, 15))
        .sum::<u64>()
}

/// Waits (polling every 10 ms, at most `bound`) until `pid` has no child that is still
/// running (zombies don't count); false if one remains.
fn wait_children_ended(pid: i32, bound: Duration) -> bool {
    let start = Instant::now();
    loop {
        if children_of(pid).iter().all(|(_, state)| *state == 'Z') {
            return true;
        }
        if start.elapsed() >= bound {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The processes whose parent is `pid`, with their state letter (`/proc/*/stat`).
fn children_of(pid: i32) -> Vec<(i32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|child| {
            let f = stat_fields(child)?;
            let parent: i32 = f.get(1)?.parse().ok()?;
            let state = f.first()?.chars().next()?;
            (parent == pid).then_some((child, state))
        })
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name: field 3 (state) first.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// Field `n` (1-based, as in proc(5)) of [`stat_fields`] as a number, 0 if absent.
fn stat_num(fields: &[String], n: usize) -> u64 {
    fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// CPU time of all kernel worker threads (`kworker/*`), in ns (`/proc/<pid>/schedstat`, the
/// scheduler's own run time: no tick resolution).
fn kworker_nanos() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("kworker"))
        })
        .filter_map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn last(v: &[f64]) -> f64 {
    v.last().copied().unwrap_or(0.0)
}

/// Client ports of the open lab's static port forward (PORT baseline without ALG or helper).
const FORWARD_PORTS: (u16, u16) = (45000, 45999);
/// The same on the ALG's own bed (outside the daemon's active port pool, 40000-49999).
const BED_FORWARD_PORTS: (u16, u16) = (36000, 36999);
/// Control port of the second vsftpd on the ALG's bed, served by the kernel helper.
const BED_HELPER_PORT: u16 = 2100;
/// Control port of the third vsftpd on the ALG's bed, plain forwarding (no ALG, no helper).
const BED_OPEN_PORT: u16 = 2300;
/// Passive ports of those two (the open one's are accepted by a forward rule).
const BED_HELPER_PASV: (u16, u16) = (32000, 32999);
const BED_OPEN_PASV: (u16, u16) = (33000, 33999);

/// A static port forward for an active-mode baseline: the server's connections from port 20
/// to the gateway's WAN address and a port in `lo..=hi` are DNATed to the client, same port,
/// and the admin's forward chain accepts them.
fn install_port_forward(lab: &ClientNatLab, (lo, hi): (u16, u16)) -> BoxResult<()> {
    let script = format!(
        "table ip bench_forward {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tiifname \"wan0\" ip saddr {SERVER_IP} ip daddr {GATEWAY_WAN_IP} tcp sport 20 \
         tcp dport {lo}-{hi} dnat to {CLIENT_IP}\n\
         \t}}\n\
         }}\n\
         add rule inet lab_fw forward iifname \"wan0\" oifname \"lan0\" ip saddr {SERVER_IP} \
         ip daddr {CLIENT_IP} tcp sport 20 tcp dport {lo}-{hi} accept\n"
    );
    lab.gateway
        .exec_stdin_ok(&["nft", "-f", "-"], script.as_bytes())?;
    Ok(())
}

/// The next port of a static port forward's range: a fresh one per transfer, so the server
/// never meets its own TIME_WAIT of the same (port 20 → gateway:port) tuple.
fn next_forward_port((lo, hi): (u16, u16)) -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    lo + NEXT.fetch_add(1, Ordering::Relaxed) % (hi - lo + 1)
}

/// Logs in on `:21` from the client namespace and makes one `transfer` of `len` bytes;
/// returns bytes/s. RETR: data connect (PASV) or the RETR command (PORT) → EOF; STOR: data
/// connect → 226.
fn ftp_bulk(
    client: &Netns,
    control_port: u16,
    transfer: Transfer,
    plan: PortPlan,
    len: u64,
    stor_target: &str,
) -> BoxResult<f64> {
    let (tx, rx) = mpsc::channel();
    let stor_target = stor_target.to_owned();
    let _thread = client.spawn_thread(move || {
        let go = || -> io::Result<f64> {
            let mut ctl = Control::connect(SocketAddrV4::new(SERVER_IP, control_port))?;
            ctl.login(true)?;
            let (elapsed, got) = match transfer {
                Transfer::RetrPasv | Transfer::Stor => {
                    ctl.send("PASV")?;
                    ctl.expect(&[227])?;
                    let addr = raw_client::parse_227(&ctl.line)
                        .ok_or_else(|| io::Error::other(format!("bad 227: {}", ctl.line)))?;
                    let start = Instant::now();
                    let mut data = TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT)?;
                    data.set_read_timeout(Some(IO_TIMEOUT))?;
                    data.set_write_timeout(Some(IO_TIMEOUT))?;
                    if transfer == Transfer::Stor {
                        ctl.send(&stor_target)?;
                        ctl.expect(&[125, 150])?;
                        write_zeros(&mut data, len)?;
                        data.shutdown(std::net::Shutdown::Write)?;
                        // vsftpd closes once it has written everything; then the 226.
                        let _ = read_all_counting(&mut data);
                        drop(data);
                        ctl.expect(&[226])?;
                        let elapsed = start.elapsed();
                        // What the server has, not what was sent (a file sink; /dev/null,
                        // appended to, has no size).
                        let stored = match stor_target.strip_prefix("STOR ") {
                            Some(path) => {
                                ctl.send(&format!("SIZE {path}"))?;
                                ctl.expect(&[213])?;
                                let size = ctl.line.get(4..).unwrap_or("").trim().parse::<u64>();
                                size.map_err(|_| {
                                    io::Error::other(format!("bad SIZE reply: {}", ctl.line))
                                })?
                            }
                            None => len,
                        };
                        (elapsed, stored)
                    } else {
                        ctl.send(&format!("RETR {BULK_NAME}"))?;
                        ctl.expect(&[125, 150])?;
                        let got = read_all_counting(&mut data)?;
                        let at_eof = (start.elapsed(), got);
                        drop(data);
                        ctl.expect(&[226])?;
                        at_eof
                    }
                }
                Transfer::RetrPort => {
                    let (bind_port, announce) = match plan {
                        PortPlan::Rewritten => (0, CLIENT_IP),
                        PortPlan::Forwarded(range) => (next_forward_port(range), GATEWAY_WAN_IP),
                    };
                    let listener = TcpListener::bind(SocketAddrV4::new(CLIENT_IP, bind_port))?;
                    let port = listener.local_addr()?.port();
                    let [a, b, c, d] = announce.octets();
                    ctl.send(&format!(
                        "PORT {a},{b},{c},{d},{},{}",
                        port >> 8,
                        port & 0xff
                    ))?;
                    ctl.expect(&[200])?;
                    let start = Instant::now();
                    ctl.send(&format!("RETR {BULK_NAME}"))?;
                    let mut data = accept_timeout(&listener, IO_TIMEOUT)?;
                    data.set_read_timeout(Some(IO_TIMEOUT))?;
                    ctl.expect(&[125, 150])?;
                    let got = read_all_counting(&mut data)?;
                    let at_eof = (start.elapsed(), got);
                    drop(data);
                    ctl.expect(&[226])?;
                    at_eof
                }
            };
            let _ = ctl.send("QUIT");
            if got != len {
                return Err(io::Error::other(format!("received {got} of {len} bytes")));
            }
            Ok(got as f64 / elapsed.as_secs_f64())
        };
        let _ = tx.send(go());
    })?;
    Ok(rx.recv_timeout(Duration::from_secs(300))??)
}

fn write_zeros(stream: &mut TcpStream, len: u64) -> io::Result<()> {
    let buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// `accept` within `timeout` (poll(2), so no sleep granularity enters the measurement).
fn accept_timeout(listener: &TcpListener, timeout: Duration) -> io::Result<TcpStream> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no data connection from the server within {timeout:?}"),
        ));
    }
    Ok(listener.accept()?.0)
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

/// Plain TCP endpoints in a server namespace: on [`PLAIN_PORT`] each accepted connection
/// gets `len` bytes (write loop); on [`SINK_PORT`] each is read to EOF and discarded, then
/// closed.
struct PlainSender {
    stop: Arc<AtomicBool>,
}

impl PlainSender {
    fn start(server: &Netns, len: u64) -> BoxResult<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        for (port, send) in [(PLAIN_PORT, true), (SINK_PORT, false)] {
            let flag = stop.clone();
            let (ready_tx, ready_rx) = mpsc::channel();
            let _thread = server.spawn_thread(move || {
                let listener = match TcpListener::bind(SocketAddrV4::new(SERVER_IP, port)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = listener.set_nonblocking(true);
                let _ = ready_tx.send(Ok(()));
                let deadline = Instant::now() + Duration::from_secs(3600);
                while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                            if send {
                                let _ = write_zeros(&mut s, len);
                            } else {
                                let _ = read_all_counting(&mut s);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })?;
            ready_rx.recv_timeout(Duration::from_secs(10))??;
        }
        Ok(Self { stop })
    }
}

impl Drop for PlainSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes/s of one plain TCP download of `len` bytes (connect → EOF).
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

/// Bytes/s of one plain TCP upload of `len` bytes (connect → the receiver's close after EOF).
fn plain_send(client: &Netns, len: u64) -> BoxResult<f64> {
    let (tx, rx) = mpsc::channel();
    let _thread = client.spawn_thread(move || {
        let go = || -> io::Result<f64> {
            let start = Instant::now();
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::V4(SocketAddrV4::new(SERVER_IP, SINK_PORT)),
                IO_TIMEOUT,
            )?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            write_zeros(&mut s, len)?;
            s.shutdown(std::net::Shutdown::Write)?;
            read_all_counting(&mut s)?;
            Ok(len as f64 / start.elapsed().as_secs_f64())
        };
        let _ = tx.send(go());
    })?;
    Ok(rx.recv_timeout(Duration::from_secs(300))??)
}

// ------------------------------------------------------------------------------------------
// 1b. Scale of state: the same bulk transfers and pinhole installs with many live pinholes

/// Timeout of the filler pinholes: outlives the run, they are removed explicitly.
const FILL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Timeout of the pinholes whose install latency is measured (removed right after).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent callers of the fill and the drain (the firewall thread batches what queues up).
const FILL_CALLERS: usize = 64;

/// `n` pinholes whose keys no packet of the benchmark ever carries: half passive
/// (10.64.0.0/10 → 198.18.0.1:30000-30099), half active with their DNAT map entries
/// (100.64.0.0/10 → 203.0.113.1:40000-49999 ⇒ 10.128.0.0/10:50000-59999).
fn filler_pinholes(n: usize, generation: u32) -> Vec<Pinhole> {
    let passive = n / 2;
    let mut out = Vec::with_capacity(n);
    // Each fill uses keys of its own (as other sessions' pinholes would be), so a refill
    // seconds after a drain is not a burst of reused keys: the daemon would put those in the
    // sets' `_hot` twins.
    let base = generation.wrapping_mul(n as u32);
    for i in (0..passive as u32).map(|i| i + base) {
        out.push(Pinhole::passive(
            IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + i)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            30000 + (i % 100) as u16,
        ));
    }
    for i in (0..(n - passive) as u32).map(|i| i + base) {
        out.push(Pinhole::active(
            IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i)),
            IpAddr::V4(GATEWAY_WAN_IP),
            40000 + (i % 10_000) as u16,
            IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + i)),
            50000 + (i % 10_000) as u16,
        ));
    }
    out
}

/// Fresh probe pinholes for the latency series (keys outside the filler ranges, never used by
/// a packet): passive 10.1.0.0/16 → server:30000, active 172.16.0.0/12 → gateway:39999 ⇒
/// 10.2.0.0/16:50000.
struct Probes {
    next: u32,
}

impl Probes {
    fn passive(&mut self, count: usize) -> Vec<Pinhole> {
        (0..count)
            .map(|_| {
                self.next += 1;
                Pinhole::passive(
                    IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + self.next)),
                    IpAddr::V4(SERVER_IP),
                    30000,
                )
            })
            .collect()
    }

    fn active(&mut self, count: usize) -> Vec<Pinhole> {
        (0..count)
            .map(|_| {
                self.next += 1;
                Pinhole::active(
                    IpAddr::V4(Ipv4Addr::from(0xac10_0000 + self.next)),
                    IpAddr::V4(GATEWAY_WAN_IP),
                    39999,
                    IpAddr::V4(Ipv4Addr::from(0x0a02_0000 + self.next)),
                    50000,
                )
            })
            .collect()
    }
}

/// The pinhole sets/maps the filler goes into.
const FILLED_OBJECTS: [(&str, &str); 4] = [
    ("set", "passive_pin"),
    ("set", "active_pin"),
    ("set", "dnat_once"),
    ("map", "dnat_to"),
];

/// Element counts of [`FILLED_OBJECTS`] (each set with its `_hot` twin), read back from the
/// kernel (`nft -j list`).
fn element_counts(gateway: &Netns) -> BoxResult<Vec<usize>> {
    let mut out = Vec::new();
    for (kind, name) in FILLED_OBJECTS {
        // A set a rule consumes has a `_hot` twin; count both.
        let twin = (kind == "set").then(|| format!("{name}_hot"));
        let mut count = 0;
        for name in std::iter::once(name.to_owned()).chain(twin) {
            let run = gateway.exec_bounded(
                &["nft", "-j", "list", kind, "inet", ALG_TABLE, &name],
                Duration::from_secs(60),
            )?;
            if run.timed_out || !run.output.status.success() {
                return Err(format!("nft list {kind} {name} failed: {}", run.transcript()).into());
            }
            let json: serde_json::Value = serde_json::from_slice(&run.output.stdout)?;
            count += json["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|item| item[kind]["elem"].as_array())
                .map(Vec::len)
                .sum::<usize>();
        }
        out.push(count);
    }
    Ok(out)
}

fn counts_text(counts: &[usize]) -> String {
    FILLED_OBJECTS
        .iter()
        .zip(counts)
        .map(|((_, name), n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One measurement of a state (empty or filled).
#[derive(Default)]
struct StateSample {
    retr_pasv: Vec<f64>,
    retr_port: Vec<f64>,
    plain: Vec<f64>,
    cpu_ms: Vec<f64>,
    open_seq: Vec<Duration>,
    open_active: Vec<Duration>,
    open_paced: Vec<Duration>,
    close_seq: Vec<Duration>,
    /// p50 µs of the sequential passive opens of each round.
    open_seq_p50s: Vec<f64>,
    /// CPU ms per second of the kernel's worker threads while nothing is sent, per round.
    kworker_ms_per_s: Vec<f64>,
    failures: usize,
}

fn state_scale(
    settings: &Settings,
    rows: &mut Vec<Row>,
    bed: &BulkBed<'_>,
    len: u64,
) -> BoxResult<()> {
    let gateway = &bed.alg.lab.gateway;
    let n = settings.state_pinholes;
    say(&format!(
        "scale of state: {n} live pinholes in the daemon's table vs empty, {} rounds",
        settings.state_rounds
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // A second netlink socket on the daemon's own table: the filler sits in the very sets and
    // maps the daemon's rules look up and its pinholes go into.
    let fw = NftFirewall::start_in_netns(ALG_TABLE, Some(&gateway.path()))?;
    let mut generation = 0;
    let mut filler = Vec::new();
    let mut probes = Probes { next: 0 };
    // Warm-up (first socket use, page faults), not counted.
    let warm = probes.passive(200);
    runtime.block_on(drive(&fw, warm.clone(), 1, Op::Open(PROBE_TIMEOUT), None));
    runtime.block_on(drive(&fw, warm, 1, Op::Close, None));

    let mut empty = StateSample::default();
    let mut full = StateSample::default();
    let mut filled = false;
    let mut fill_notes = Vec::new();
    let mut verified = Vec::new();
    let result = (|| -> BoxResult<()> {
        for round in 0..settings.state_rounds {
            // ABBA: empty, full | full, empty | …, so a drift over the run cancels out.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for want_full in order {
                if want_full != filled {
                    if want_full {
                        filler = filler_pinholes(n, generation);
                        generation += 1;
                    }
                    let counts = set_filled(&runtime, &fw, gateway, &filler, want_full)?;
                    filled = want_full;
                    // Let the kernel's deferred work of the change (hash table resizes,
                    // freeing) finish, so the idle window measures the steady state.
                    std::thread::sleep(settings.idle_window);
                    fill_notes.push(counts.0);
                    verified.push(counts.1);
                }
                let sample = if want_full { &mut full } else { &mut empty };
                say(&format!(
                    "  round {}: {}",
                    round + 1,
                    if want_full {
                        format!("{n} live pinholes")
                    } else {
                        "empty".into()
                    }
                ));
                measure_state(settings, &runtime, &fw, bed, len, &mut probes, sample)?;
            }
        }
        Ok(())
    })();
    // Leave nothing behind, whatever happened above.
    let drained = if filled {
        set_filled(&runtime, &fw, gateway, &filler, false).map(|(note, counts)| {
            fill_notes.push(note);
            counts
        })
    } else {
        element_counts(gateway)
    };
    drop(fw);
    drop(runtime);
    result?;
    let left = drained?;
    if left.iter().any(|&c| c > 0) {
        return Err(format!(
            "elements left in the daemon's table after the drain: {}",
            counts_text(&left)
        )
        .into());
    }

    let hz = clock_ticks_per_sec();
    let rate_text = |v: &[f64]| {
        format!(
            "{:.0} ({})",
            common::median(v) / 1e6,
            v.iter()
                .map(|x| format!("{:.0}", x / 1e6))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mib = len >> 20;
    let base_name = "the same, with the table empty (alternating rounds, ABBA)";
    let limit_bulk = format!(
        "{n} filler pinholes ({} passive + {} active with their DNAT entries: {} kernel \
         elements) in the daemon's table; their keys never match a packet. Only a connection's \
         first packet looks them up (ct state new / nat chains), so established-flow \
         throughput should not move; rounds scatter as in the bulk rows",
        n / 2,
        n - n / 2,
        n / 2 + 3 * (n - n / 2)
    );
    for (key, label, a, b) in [
        (
            "state_retr_pasv",
            format!("RETR {mib} MiB PASV through an ftp-alg pinhole"),
            &full.retr_pasv,
            &empty.retr_pasv,
        ),
        (
            "state_retr_port",
            format!("RETR {mib} MiB PORT through an ftp-alg pinhole + DNAT map"),
            &full.retr_port,
            &empty.retr_port,
        ),
        (
            "state_plain_tcp",
            format!(
                "plain TCP {mib} MiB through the ALG's gateway, in no set (conntrack + the \
                 admin's accept)"
            ),
            &full.plain,
            &empty.plain,
        ),
    ] {
        let ratios = paired_ratios(a, b);
        rows.push(Row {
            key,
            paired: Some(common::median(&ratios)),
            metric: format!(
                "{label}, MB/s with {n} live pinholes (median of rounds; ratio = median of the \
                 rounds' full/empty ratios)"
            ),
            alg: Some(common::median(a) / 1e6),
            baseline: Some(common::median(b) / 1e6),
            baseline_name: base_name,
            alg_text: format!(
                "{}; per-round ratios {}",
                rate_text(a),
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            baseline_text: rate_text(b),
            limit: limit_bulk.clone(),
        });
    }
    let ms = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rows.push(Row {
        key: "state_kworker_idle",
        paired: None,
        metric: format!(
            "kernel worker threads' CPU while idle, ms per s, with {n} live pinholes (median \
             of rounds, {:.1} s windows)",
            settings.idle_window.as_secs_f64()
        ),
        alg: Some(common::median(&full.kworker_ms_per_s)),
        baseline: Some(common::median(&empty.kworker_ms_per_s)),
        baseline_name: base_name,
        alg_text: format!(
            "{:.1} ({})",
            common::median(&full.kworker_ms_per_s),
            ms(&full.kworker_ms_per_s)
        ),
        baseline_text: format!(
            "{:.1} ({})",
            common::median(&empty.kworker_ms_per_s),
            ms(&empty.kworker_ms_per_s)
        ),
        limit: "run time (schedstat) of every kworker thread on the host (the sets' garbage \
                collection runs there: every 1 s for the main pinhole sets, which hold the \
                filler, and every nftables.gc_interval_ms for their small `_hot` twins) over a \
                window with no traffic; host-wide, so other jobs' kernel work adds noise"
            .into(),
    });
    let limit_lat = format!(
        "NftFirewall on a second netlink socket into the daemon's table, each call awaiting the \
         kernel's ACK (as benches/core.rs); the sets are hash tables (O(1) insert); µs-scale \
         values, so a few hundred ns read as a large ratio; failures: {} empty, {} full",
        empty.failures, full.failures
    );
    for (key, label, a, b) in [
        (
            "state_open_seq",
            "pinhole open (passive, 1 element), sequential",
            &full.open_seq,
            &empty.open_seq,
        ),
        (
            "state_open_active",
            "pinhole open (active: DNAT map + 2 sets, 3 elements), sequential",
            &full.open_active,
            &empty.open_active,
        ),
        (
            "state_open_paced",
            "pinhole open (passive), paced 1 ms apart",
            &full.open_paced,
            &empty.open_paced,
        ),
        (
            "state_close_seq",
            "pinhole close (passive), sequential",
            &full.close_seq,
            &empty.close_seq,
        ),
    ] {
        let (fa, fb) = (Stats::from_durations(a), Stats::from_durations(b));
        for (suffix, x, y) in [("p50", fa.p50, fb.p50), ("p99", fa.p99, fb.p99)] {
            rows.push(Row {
                key,
                paired: None,
                metric: format!("{label}, {suffix} µs with {n} live pinholes (n={})", fa.n),
                alg: Some(x),
                baseline: Some(y),
                baseline_name: base_name,
                alg_text: us(x),
                baseline_text: format!("{} (n={})", us(y), fb.n),
                limit: limit_lat.clone(),
            });
        }
    }
    let p50s = |v: &[f64]| v.iter().map(|x| us(*x)).collect::<Vec<_>>().join(", ");
    rows.push(Row {
        key: "state_open_seq_rounds",
        paired: None,
        metric: "… sequential open p50 µs per round".into(),
        alg: None,
        baseline: None,
        baseline_name: base_name,
        alg_text: p50s(&full.open_seq_p50s),
        baseline_text: p50s(&empty.open_seq_p50s),
        limit: limit_lat,
    });
    rows.push(Row {
        key: "state_fill",
        paired: None,
        metric: format!(
            "filling / draining {n} pinholes ({FILL_CALLERS} concurrent callers), verified \
             element counts"
        ),
        alg: None,
        baseline: None,
        baseline_name: "",
        alg_text: format!(
            "{}; after the last drain: {}",
            fill_notes.join("; "),
            counts_text(&left)
        ),
        baseline_text: "n/a".into(),
        limit: "counts read back with `nft -j list` after each fill/drain; a fill is an error \
                unless every set/map holds at least its share"
            .into(),
    });
    rows.push(Row {
        key: "state_daemon_cpu",
        paired: None,
        metric: format!(
            "daemon CPU time during each ftp-alg RETR (PASV, PORT) with {n} live pinholes, ms"
        ),
        alg: Some(full.cpu_ms.iter().copied().fold(0.0, f64::max)),
        baseline: Some(empty.cpu_ms.iter().copied().fold(0.0, f64::max)),
        baseline_name: "the same, table empty (max)",
        alg_text: full
            .cpu_ms
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        baseline_text: empty
            .cpu_ms
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        limit: format!("one tick = {:.0} ms", 1000.0 / hz),
    });
    Ok(())
}

/// Fills (or drains) the filler pinholes through `fw` and reads the counts back. Returns a
/// note for the table and the counts.
fn set_filled(
    runtime: &tokio::runtime::Runtime,
    fw: &NftFirewall,
    gateway: &Netns,
    filler: &[Pinhole],
    full: bool,
) -> BoxResult<(String, Vec<usize>)> {
    let op = if full {
        Op::Open(FILL_TIMEOUT)
    } else {
        Op::Close
    };
    let start = Instant::now();
    let (done, failures) = runtime.block_on(drive(fw, filler.to_vec(), FILL_CALLERS, op, None));
    let elapsed = start.elapsed();
    let counts = element_counts(gateway)?;
    let verb = if full { "filled" } else { "drained" };
    let note = format!(
        "{verb} {} in {:.2} s ({:.0}/s, {failures} failed) → {}",
        done.len(),
        elapsed.as_secs_f64(),
        done.len() as f64 / elapsed.as_secs_f64(),
        counts_text(&counts)
    );
    say(&format!("  {note}"));
    let passive = filler.len() / 2;
    let active = filler.len() - passive;
    let wanted = [passive, active, active, active];
    if failures > 0
        || (full && counts.iter().zip(wanted).any(|(&got, want)| got < want))
        || (!full && counts.iter().any(|&c| c > 0))
    {
        return Err(format!("the {verb} table is not as expected: {note}").into());
    }
    Ok((note, counts))
}

fn measure_state(
    settings: &Settings,
    runtime: &tokio::runtime::Runtime,
    fw: &NftFirewall,
    bed: &BulkBed<'_>,
    len: u64,
    probes: &mut Probes,
    sample: &mut StateSample,
) -> BoxResult<()> {
    let hz = clock_ticks_per_sec();
    // The state's own cost while idle: the sets' garbage collection runs in kernel workers.
    let before = kworker_nanos();
    let t = Instant::now();
    std::thread::sleep(settings.idle_window);
    let nanos = kworker_nanos().saturating_sub(before);
    sample
        .kworker_ms_per_s
        .push(nanos as f64 / 1e6 / t.elapsed().as_secs_f64());
    for transfer in [Transfer::RetrPasv, Transfer::RetrPort] {
        let before = cpu_ticks(bed.pid);
        let rate = bed.alg.run(transfer, len)?;
        let after = cpu_ticks(bed.pid);
        sample
            .cpu_ms
            .push(after.saturating_sub(before) as f64 * 1000.0 / hz);
        match transfer {
            Transfer::RetrPasv => sample.retr_pasv.push(rate),
            _ => sample.retr_port.push(rate),
        }
    }
    sample.plain.push(plain_receive(&bed.alg.lab.client, len)?);

    let n = settings.latency_n;
    let seq = probes.passive(n);
    let (open, f1) = runtime.block_on(drive(fw, seq.clone(), 1, Op::Open(PROBE_TIMEOUT), None));
    let (close, f2) = runtime.block_on(drive(fw, seq, 1, Op::Close, None));
    let active = probes.active(n);
    let (open_active, f3) =
        runtime.block_on(drive(fw, active.clone(), 1, Op::Open(PROBE_TIMEOUT), None));
    let (_, f4) = runtime.block_on(drive(fw, active, FILL_CALLERS, Op::Close, None));
    let paced = probes.passive(settings.paced_n);
    let (open_paced, f5) = runtime.block_on(drive(
        fw,
        paced.clone(),
        1,
        Op::Open(PROBE_TIMEOUT),
        Some(Duration::from_millis(1)),
    ));
    let (_, f6) = runtime.block_on(drive(fw, paced, FILL_CALLERS, Op::Close, None));
    let p50 = Stats::from_durations(&open).p50;
    say(&format!(
        "    kernel workers {:.1} CPU ms/s idle; RETR PASV {:.0} MB/s, PORT {:.0} MB/s, plain \
         TCP {:.0} MB/s; open p50 {} µs (active {} µs, paced {} µs), close p50 {} µs",
        last(&sample.kworker_ms_per_s),
        last(&sample.retr_pasv) / 1e6,
        last(&sample.retr_port) / 1e6,
        last(&sample.plain) / 1e6,
        us(p50),
        us(Stats::from_durations(&open_active).p50),
        us(Stats::from_durations(&open_paced).p50),
        us(Stats::from_durations(&close).p50),
    ));
    sample.open_seq_p50s.push(p50);
    sample.open_seq.extend(open);
    sample.close_seq.extend(close);
    sample.open_active.extend(open_active);
    sample.open_paced.extend(open_paced);
    sample.failures += f1 + f2 + f3 + f4 + f5 + f6;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 2. Control-channel overhead

fn control_overhead(
    settings: &Settings,
    rows: &mut Vec<Row>,
    alg_lab: &ClientNatLab,
) -> BoxResult<()> {
    say(&format!(
        "NOOP round trips: {} through ftp-alg (:21) interleaved with {} direct to the bed's \
         open vsftpd (:{BED_OPEN_PORT}, same namespaces and veths, not intercepted)",
        settings.noops, settings.noops
    ));
    let one = noop_pairs(&alg_lab.client, settings.noops)?;
    push_noop_rows(rows, "one session", &one);

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
    let loaded = noop_pairs(&alg_lab.client, settings.noops);
    drop(holder);
    push_noop_rows(
        rows,
        &format!("{opened} idle sessions held through ftp-alg"),
        &loaded?,
    );
    Ok(())
}

/// NOOP round trips through the ALG and direct, measured alternately on one client thread so
/// that whatever the shared machine does meanwhile taxes both alike.
struct NoopPairs {
    through: Vec<f64>,
    direct: Vec<f64>,
}

impl NoopPairs {
    /// The median of the per-pair differences (through − direct), µs.
    fn paired_added_p50(&self) -> f64 {
        let added = self
            .through
            .iter()
            .zip(&self.direct)
            .map(|(t, d)| t - d)
            .collect();
        Stats::from_micros(added).p50
    }
}

fn push_noop_rows(rows: &mut Vec<Row>, label: &str, pairs: &NoopPairs) {
    let limit = "vsftpd's own NOOP handling and two veth hops through the gateway make the direct \
                 figure; the added time is the ALG's read → parse → write in each direction (two \
                 wake-ups of its session thread)";
    let through = Stats::from_micros(pairs.through.clone());
    let direct = Stats::from_micros(pairs.direct.clone());
    for (key, name, a, b) in [
        ("noop_p50", "p50", through.p50, direct.p50),
        ("noop_p99", "p99", through.p99, direct.p99),
    ] {
        rows.push(Row {
            key,
            paired: None,
            metric: format!("NOOP round trip {name} µs, {label} (n={})", through.n),
            alg: Some(a),
            baseline: Some(b),
            baseline_name: "direct to vsftpd on the same bed, interleaved NOOP by NOOP",
            alg_text: format!("{} (added {})", us(a), us(a - b)),
            baseline_text: us(b),
            limit: limit.into(),
        });
    }
    let added = pairs.paired_added_p50();
    rows.push(Row {
        key: "noop_added_paired_p50",
        paired: None,
        metric: format!("NOOP added µs, median of per-pair differences, {label}"),
        alg: Some(added),
        baseline: None,
        baseline_name: "the direct NOOP of the same pair",
        alg_text: us(added),
        baseline_text: "-".into(),
        limit: limit.into(),
    });
}

/// `count` NOOP pairs: one through the ALG (vsftpd on :21, intercepted) and one direct (the
/// bed's open vsftpd on [`BED_OPEN_PORT`], forwarded by the same gateway), each on its own
/// logged-in session, alternating which goes first; after 100 unmeasured pairs. µs each.
/// Bounded by 60 s.
fn noop_pairs(client: &Netns, count: usize) -> BoxResult<NoopPairs> {
    let (tx, rx) = mpsc::channel();
    let _thread = client.spawn_thread(move || {
        let go = || -> io::Result<NoopPairs> {
            let mut through = Control::connect(SocketAddrV4::new(SERVER_IP, 21))?;
            through.login(false)?;
            let mut direct = Control::connect(SocketAddrV4::new(SERVER_IP, BED_OPEN_PORT))?;
            direct.login(false)?;
            let mut out = NoopPairs {
                through: Vec::with_capacity(count),
                direct: Vec::with_capacity(count),
            };
            let noop = |ctl: &mut Control| -> io::Result<f64> {
                let t = Instant::now();
                ctl.send("NOOP")?;
                ctl.expect(&[200])?;
                Ok(t.elapsed().as_secs_f64() * 1e6)
            };
            let start = Instant::now();
            for i in 0..count + 100 {
                if start.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let (t, d) = if i % 2 == 0 {
                    let t = noop(&mut through)?;
                    (t, noop(&mut direct)?)
                } else {
                    let d = noop(&mut direct)?;
                    (noop(&mut through)?, d)
                };
                if i >= 100 {
                    out.through.push(t);
                    out.direct.push(d);
                }
            }
            let _ = through.send("QUIT");
            let _ = direct.send("QUIT");
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
    let nofile = common::raise_nofile(0) as usize;
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
        let pid = common::daemon_pid(&alg_lab.gateway).ok_or("ftp-alg's pid not found")?;
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
            paired: None,
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
        // Alternating which goes first (ABBA over the two rounds).
        let (a, h) = if round % 2 == 0 {
            let a = session_loop(&alg_lab.client, settings)?;
            (a, session_loop(&helper_lab.client, settings)?)
        } else {
            let h = session_loop(&helper_lab.client, settings)?;
            (session_loop(&alg_lab.client, settings)?, h)
        };
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
            common::median(&rates),
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
        paired: None,
        metric: "… mean time per session phase, µs".into(),
        alg: None,
        baseline: None,
        baseline_name: "kernel FTP helper",
        alg_text: phase_means(&alg),
        baseline_text: phase_means(&helper),
        limit: "phases include vsftpd's own work (fork, PAM, its 150/226 handling)".into(),
    };
    let med = |v: &[SessionRun]| common::median(&v.iter().map(|r| r.rate).collect::<Vec<_>>());
    rows.push(Row {
        key: "new_sessions_per_sec",
        paired: None,
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

fn us(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
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
        common::kernel_release(),
        common::stdout_of(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        common::stdout_of(
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
        "Bulk {} MiB × {} rounds (RETR PASV, RETR PORT, STOR into {}); scale of state: {} \
         live pinholes vs empty × {} rounds, {} sequential / {} paced opens per round; {} NOOPs \
         per series; {} idle sessions under load; idle steps {:?}; RLIMIT_NOFILE {nofile}. \
         Load average before/after: {load_before} / {load_after}. Total {:.0} s.{}\n",
        s.bulk_mib,
        s.bulk_rounds,
        s.stor_sink.name(),
        s.state_pinholes,
        s.state_rounds,
        s.latency_n,
        s.paced_n,
        s.noops,
        s.idle_loaded,
        s.idle_steps,
        total.as_secs_f64(),
        match common::alg_options(&[]).extra_args.join(" ") {
            extra if extra.is_empty() => String::new(),
            extra => format!(" ftp-alg started with `{extra}` (FTP_ALG_BENCH_ALG_ARGS)."),
        }
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
        Some(x) if x.is_finite() => format!("{}", (x * 1e6).round() / 1e6),
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
         \"sessions_max\": {}, \"stor_sink\": {}, \"state_pinholes\": {}, \
         \"state_rounds\": {}, \"latency_n\": {}, \"paced_n\": {}, \"rlimit_nofile\": {nofile}}}, \
         \"total_seconds\": {}, \"rows\": [",
        s.bulk_mib,
        s.bulk_rounds,
        s.noops,
        s.idle_loaded,
        s.idle_steps,
        s.sessions_secs,
        s.sessions_max,
        json_str(s.stor_sink.name()),
        s.state_pinholes,
        s.state_rounds,
        s.latency_n,
        s.paced_n,
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

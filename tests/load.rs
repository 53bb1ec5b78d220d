//! Load and leak check (ignored by default; minutes of work):
//!
//! ```text
//! cargo test --release --test load -- --ignored --nocapture     # or scripts/load.sh
//! ```
//!
//! In the client-NAT lab (strict firewall, vsftpd), `LOAD_SESSIONS` sessions (default 2000),
//! at most `LOAD_CONCURRENCY` at once (default 50), each a seeded random mix of PASV / EPSV /
//! PORT / EPRT with RETR or STOR of small files (every completed transfer hash-checked),
//! aborts (data connection dropped mid-RETR, then ABOR), resets (control connection dropped
//! with SO_LINGER 0 mid-transfer) and clients that vanish after PASV/EPSV/PORT without ever
//! connecting. The daemon runs with `--pinhole-timeout 3`.
//!
//! At the end: no pinhole left in any set or map (right after the sessions ended, and again
//! after the pinhole timeout), no session left in the daemon, the daemon's RSS back within a
//! margin of its value after warm-up, its descriptor count back to its warm-up value, and
//! every completed transfer's hash right. The figures are printed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{alg_binary, sha256};
use ftp_alg::lab::attacker::{
    Control, REPLY_TIMEOUT, all_pinhole_elements, counter_packets, daemon_pid, vm_rss_kib,
};
use ftp_alg::lab::raw_client::{parse_227, parse_229};
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, CLIENT_IP, ClientNatLab, ClientNatOptions, FTP_PASSWORD, FTP_USER,
    Netns, SERVER_IP, ScratchDir, ServiceChild, ensure_ftp_user,
};

/// Socket operations of the load clients are bounded by this.
const IO: Duration = Duration::from_secs(10);
/// The whole load phase stops taking new sessions after this.
const LOAD_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// Small files served for RETR.
const SMALL_FILES: usize = 8;
/// The file that aborted and reset transfers read part of.
const BIG_FILE: &str = "big.bin";
const BIG_LEN: usize = 16 << 20;

/// vsftpd for the load: the lab's settings, plus the choice of the active-mode source port.
///
/// With `connect_from_port_20=YES` (Debian's default) every active data connection of the
/// server comes from port 20 to the gateway's leased port. When the gateway leases a port
/// again while its conntrack still holds the previous data connection on it in a state a new
/// SYN does not reopen (CLOSE for 10 s after a reset, as the aborted and reset sessions here
/// leave), the server's SYN is taken for that old connection and DNATed to the previous
/// client's port: the transfer fails (`425 Failed to establish connection`), or reaches the
/// wrong host (tests/attacks.rs
/// `an_active_data_connection_is_never_delivered_to_the_previous_holder_of_its_gateway_port`).
/// `LOAD_PORT20=1` shows it under load; the default run uses ephemeral source ports, so that
/// every failure left is one by design.
struct LoadServer {
    _child: ServiceChild,
    root: PathBuf,
    ids: (u32, u32),
    _dir: ScratchDir,
}

impl LoadServer {
    fn start(ns: &Netns, port20: bool) -> Self {
        let ids = ensure_ftp_user().expect("lab FTP account");
        let dir = ScratchDir::new("load-vsftpd").expect("scratch");
        let root = dir.subdir("root").expect("root");
        std::os::unix::fs::chown(&root, Some(ids.0), Some(ids.1)).expect("chown root");
        let conf = dir.path().join("vsftpd.conf");
        let text = format!(
            "listen=YES\nlisten_ipv6=NO\nlisten_address={SERVER_IP}\nlisten_port=21\n\
             background=NO\nanonymous_enable=NO\nlocal_enable=YES\nwrite_enable=YES\n\
             local_umask=022\nfile_open_mode=0644\nlocal_root={root}\n\
             pam_service_name=ftp-alg-lab\nsecure_chroot_dir=/var/run/vsftpd/empty\n\
             seccomp_sandbox=NO\nssl_enable=NO\nconnect_from_port_20={port20}\n\
             port_enable=YES\npasv_enable=YES\npasv_min_port=30000\npasv_max_port=30999\n\
             connect_timeout=5\naccept_timeout=5\ndata_connection_timeout=20\n\
             idle_session_timeout=60\ndirmessage_enable=NO\nftpd_banner=ftp-alg load\n\
             syslog_enable=NO\nxferlog_enable=NO\nmax_clients=0\nmax_per_ip=0\n",
            root = root.display(),
            port20 = if port20 { "YES" } else { "NO" },
        );
        std::fs::write(&conf, text).expect("vsftpd.conf");
        let conf = conf.to_string_lossy().into_owned();
        let mut child = ns.spawn("vsftpd", &["vsftpd", &conf]).expect("vsftpd");
        let start = Instant::now();
        loop {
            let out = ns.exec(&["ss", "-Hltn", "sport = :21"]).expect("ss");
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                break;
            }
            assert!(
                child.try_status().is_none() && start.elapsed() < Duration::from_secs(10),
                "vsftpd did not start: {}",
                child.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            _child: child,
            root,
            ids,
            _dir: dir,
        }
    }

    fn put_file(&self, name: &str, data: &[u8]) {
        let path = self.root.join(name);
        std::fs::write(&path, data).expect("server file");
        std::os::unix::fs::chown(&path, Some(self.ids.0), Some(self.ids.1)).expect("chown");
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: small, seeded, good enough to pick scenarios.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pasv,
    Epsv,
    Port,
    Eprt,
}

const MODES: [Mode; 4] = [Mode::Pasv, Mode::Epsv, Mode::Port, Mode::Eprt];

/// What a session does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 1-3 transfers, then QUIT.
    Normal,
    /// A RETR of the big file whose data connection is dropped mid-way, then ABOR, then one
    /// more transfer to show the session is fine.
    Abort,
    /// A transfer, then the control connection reset (SO_LINGER 0) in the middle of a RETR.
    Reset,
    /// PASV/EPSV/PORT/EPRT, then gone (FIN or RST) without ever connecting.
    Vanish,
}

fn pick_kind(rng: &mut Rng) -> Kind {
    match rng.below(100) {
        0..=64 => Kind::Normal,
        65..=76 => Kind::Abort,
        77..=88 => Kind::Reset,
        _ => Kind::Vanish,
    }
}

#[derive(Default)]
struct Stats {
    sessions: AtomicU64,
    transfers_ok: AtomicU64,
    retr_ok: AtomicU64,
    stor_ok: AtomicU64,
    by_mode: [AtomicU64; 4],
    aborted: AtomicU64,
    reset: AtomicU64,
    vanished: AtomicU64,
    hash_mismatch: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Failures by mode and what the server or the socket said.
    reasons: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Stats {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        // "session 7: Port RETR: RETR f1.bin -> 425 ..." -> "Port RETR: 425 ..."
        let body = what
            .split_once(": ")
            .map_or(what.as_str(), |(_, rest)| rest);
        let mode = body.split(':').next().unwrap_or_default();
        let said = body.rsplit(" -> ").next().unwrap_or(body);
        let said: String = said.chars().take(70).collect();
        *self
            .reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(format!("{mode}: {said}"))
            .or_default() += 1;
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() < 25 {
            failures.push(what);
        }
    }
}

/// What every client thread needs.
struct Plan {
    files: Vec<(String, String)>,
    server_root: PathBuf,
    stats: Stats,
    seed: u64,
}

enum Data {
    Passive(TcpStream),
    Active(TcpListener),
}

fn timeouts(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO))?;
    stream.set_write_timeout(Some(IO))
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream =
        TcpStream::connect_timeout(&addr, IO).map_err(|e| format!("connect {addr}: {e}"))?;
    timeouts(&stream).map_err(|e| e.to_string())?;
    Ok(stream)
}

fn accept(listener: &TcpListener) -> Result<TcpStream, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + IO;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                timeouts(&stream).map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("no data connection from the server: {e}")),
        }
    }
}

fn cmd(ctl: &mut Control, line: &str, want: &[u16]) -> Result<String, String> {
    let reply = ctl.cmd(line).map_err(|e| format!("{line}: {e}"))?;
    if want.contains(&reply.code) {
        Ok(reply.text)
    } else {
        Err(format!("{line} -> {}", reply.text))
    }
}

fn open_data(ctl: &mut Control, mode: Mode) -> Result<Data, String> {
    match mode {
        Mode::Pasv => {
            let text = cmd(ctl, "PASV", &[227])?;
            let addr = parse_227(&text).ok_or_else(|| format!("bad 227: {text}"))?;
            Ok(Data::Passive(connect(SocketAddr::V4(addr))?))
        }
        Mode::Epsv => {
            let text = cmd(ctl, "EPSV", &[229])?;
            let port = parse_229(&text).ok_or_else(|| format!("bad 229: {text}"))?;
            Ok(Data::Passive(connect(SocketAddr::V4(SocketAddrV4::new(
                SERVER_IP, port,
            )))?))
        }
        Mode::Port | Mode::Eprt => {
            let listener = TcpListener::bind(SocketAddrV4::new(CLIENT_IP, 0))
                .map_err(|e| format!("bind: {e}"))?;
            let port = listener.local_addr().map_err(|e| e.to_string())?.port();
            let line = if mode == Mode::Port {
                format!("PORT 10,0,0,2,{},{}", port >> 8, port & 0xff)
            } else {
                format!("EPRT |1|{CLIENT_IP}|{port}|")
            };
            cmd(ctl, &line, &[200])?;
            Ok(Data::Active(listener))
        }
    }
}

fn data_stream(data: Data) -> Result<TcpStream, String> {
    match data {
        Data::Passive(stream) => Ok(stream),
        Data::Active(listener) => accept(&listener),
    }
}

/// RETR of one of the small files; Ok(true) when the hash is right.
fn retr(ctl: &mut Control, mode: Mode, name: &str, sha: &str) -> Result<bool, String> {
    let data = open_data(ctl, mode)?;
    cmd(ctl, &format!("RETR {name}"), &[125, 150])?;
    let mut stream = data_stream(data)?;
    let mut got = Vec::new();
    stream
        .read_to_end(&mut got)
        .map_err(|e| format!("RETR data: {e}"))?;
    drop(stream);
    let done = ctl
        .read_reply(REPLY_TIMEOUT)
        .map_err(|e| format!("RETR end: {e}"))?;
    if done.code != 226 {
        return Err(format!("RETR end: {}", done.text));
    }
    Ok(sha256(&got) == sha)
}

/// STOR of `content` as `name`; Ok(true) when the server's copy has the right hash.
fn stor(
    ctl: &mut Control,
    mode: Mode,
    name: &str,
    content: &[u8],
    plan: &Plan,
) -> Result<bool, String> {
    let data = open_data(ctl, mode)?;
    cmd(ctl, &format!("STOR {name}"), &[125, 150])?;
    let mut stream = data_stream(data)?;
    stream
        .write_all(content)
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("STOR data: {e}"))?;
    // Wait for the server's close so that all bytes are in before the final reply.
    let mut sink = [0u8; 64];
    let _ = stream.read(&mut sink);
    drop(stream);
    let done = ctl
        .read_reply(REPLY_TIMEOUT)
        .map_err(|e| format!("STOR end: {e}"))?;
    if done.code != 226 {
        return Err(format!("STOR end: {}", done.text));
    }
    let path = plan.server_root.join(name);
    let stored = std::fs::read(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    Ok(sha256(&stored) == sha256(content))
}

/// One complete transfer in a random mode, counted.
fn transfer(ctl: &mut Control, rng: &mut Rng, plan: &Plan, id: u64, n: u32) -> Result<(), String> {
    let mode = MODES[rng.below(4) as usize];
    let upload = rng.below(2) == 0;
    let ok = if upload {
        let len = 1 + rng.below(128 << 10) as usize;
        let content = rng.bytes(len);
        stor(ctl, mode, &format!("up-{id}-{n}.bin"), &content, plan)
    } else {
        let (name, sha) = &plan.files[rng.below(plan.files.len() as u64) as usize];
        retr(ctl, mode, name, sha)
    }
    .map_err(|e| format!("{mode:?} {}: {e}", if upload { "STOR" } else { "RETR" }))?;
    if !ok {
        plan.stats.hash_mismatch.fetch_add(1, Ordering::Relaxed);
        return Err(format!("{mode:?} hash mismatch"));
    }
    plan.stats.transfers_ok.fetch_add(1, Ordering::Relaxed);
    plan.stats.by_mode[MODES.iter().position(|m| *m == mode).unwrap_or(0)]
        .fetch_add(1, Ordering::Relaxed);
    let counter = if upload {
        &plan.stats.stor_ok
    } else {
        &plan.stats.retr_ok
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Starts a RETR of the big file and reads a little of it: the data connection, mid-transfer.
fn start_big_retr(ctl: &mut Control, mode: Mode) -> Result<TcpStream, String> {
    let data = open_data(ctl, mode)?;
    cmd(ctl, &format!("RETR {BIG_FILE}"), &[125, 150])?;
    let mut stream = data_stream(data)?;
    let mut buf = vec![0u8; 64 << 10];
    stream
        .read_exact(&mut buf)
        .map_err(|e| format!("big RETR data: {e}"))?;
    Ok(stream)
}

fn session(id: u64, plan: &Plan) -> Result<(), String> {
    let mut rng = Rng::new(plan.seed ^ id.wrapping_mul(0xA24B_AED4_963E_E407));
    let kind = pick_kind(&mut rng);
    let stream = connect(SocketAddr::V4(SocketAddrV4::new(SERVER_IP, 21)))?;
    let mut ctl = Control::from_stream(stream).map_err(|e| e.to_string())?;
    let greeting = ctl.read_reply(REPLY_TIMEOUT).map_err(|e| e.to_string())?;
    if greeting.code != 220 {
        return Err(format!("greeting: {}", greeting.text));
    }
    cmd(&mut ctl, &format!("USER {FTP_USER}"), &[331])?;
    cmd(&mut ctl, &format!("PASS {FTP_PASSWORD}"), &[230])?;
    cmd(&mut ctl, "TYPE I", &[200])?;
    match kind {
        Kind::Normal => {
            for n in 0..1 + rng.below(3) as u32 {
                transfer(&mut ctl, &mut rng, plan, id, n)?;
            }
            cmd(&mut ctl, "QUIT", &[221])?;
        }
        Kind::Abort => {
            let mode = MODES[rng.below(4) as usize];
            let data = start_big_retr(&mut ctl, mode).map_err(|e| format!("{mode:?}: {e}"))?;
            let _ = socket2::SockRef::from(&data).set_linger(Some(Duration::ZERO));
            drop(data);
            ctl.send(b"ABOR\r\n").map_err(|e| e.to_string())?;
            // 426 for the broken transfer and/or 225/226 for the ABOR.
            let mut codes = Vec::new();
            while !codes.iter().any(|c| (200..300).contains(c)) && codes.len() < 3 {
                let reply = ctl
                    .read_reply(REPLY_TIMEOUT)
                    .map_err(|e| format!("after ABOR ({codes:?}): {e}"))?;
                codes.push(reply.code);
            }
            if !codes.iter().any(|c| (200..300).contains(c)) {
                return Err(format!("ABOR answered {codes:?}"));
            }
            plan.stats.aborted.fetch_add(1, Ordering::Relaxed);
            transfer(&mut ctl, &mut rng, plan, id, 9).map_err(|e| format!("after ABOR: {e}"))?;
            cmd(&mut ctl, "QUIT", &[221])?;
        }
        Kind::Reset => {
            if rng.below(2) == 0 {
                transfer(&mut ctl, &mut rng, plan, id, 0)?;
            }
            let mode = MODES[rng.below(4) as usize];
            let data = start_big_retr(&mut ctl, mode).map_err(|e| format!("{mode:?}: {e}"))?;
            ctl.set_reset_on_drop().map_err(|e| e.to_string())?;
            drop(ctl);
            drop(data);
            plan.stats.reset.fetch_add(1, Ordering::Relaxed);
        }
        Kind::Vanish => {
            let mode = MODES[rng.below(4) as usize];
            // The pinhole (and for PORT/EPRT the DNAT mapping) is left pending.
            let _pending = open_data_without_connecting(&mut ctl, mode)?;
            if rng.below(2) == 0 {
                ctl.set_reset_on_drop().map_err(|e| e.to_string())?;
            }
            drop(ctl);
            plan.stats.vanished.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The data-channel command only; nothing connects.
fn open_data_without_connecting(
    ctl: &mut Control,
    mode: Mode,
) -> Result<Option<TcpListener>, String> {
    match mode {
        Mode::Pasv => cmd(ctl, "PASV", &[227]).map(|_| None),
        Mode::Epsv => cmd(ctl, "EPSV", &[229]).map(|_| None),
        Mode::Port | Mode::Eprt => match open_data(ctl, mode)? {
            Data::Active(listener) => Ok(Some(listener)),
            Data::Passive(_) => Ok(None),
        },
    }
}

/// Runs sessions `range` with `concurrency` client threads inside the client namespace.
fn run_sessions(
    lab: &ClientNatLab,
    plan: &Arc<Plan>,
    range: std::ops::Range<u64>,
    concurrency: usize,
) {
    let plan = plan.clone();
    let driver = lab
        .client
        .spawn_thread(move || {
            let next = AtomicU64::new(range.start);
            let started = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..concurrency {
                    scope.spawn(|| {
                        loop {
                            let id = next.fetch_add(1, Ordering::Relaxed);
                            if id >= range.end || started.elapsed() > LOAD_DEADLINE {
                                return;
                            }
                            plan.stats.sessions.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) = session(id, &plan) {
                                plan.stats.fail(format!("session {id}: {e}"));
                            }
                        }
                    });
                }
            });
        })
        .expect("client driver thread");
    driver.join().expect("client driver");
}

/// Open descriptors of `pid`; panics when the process is gone (a dead daemon must not read
/// as "no leak").
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or_else(|e| panic!("daemon {pid} gone? {e}"))
}

fn established_sessions(lab: &ClientNatLab) -> usize {
    let out = lab
        .gateway
        .exec_ok(&["ss", "-Htn", "state", "established", "( sport = :2121 )"])
        .expect("ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Polls `f` until it returns an empty list or `within` passed; returns the last list.
fn settle<T>(within: Duration, f: impl Fn() -> Vec<T>) -> Vec<T> {
    let start = Instant::now();
    loop {
        let left = f();
        if left.is_empty() || start.elapsed() > within {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "load test (minutes): cargo test --release --test load -- --ignored --nocapture"]
fn two_thousand_mixed_sessions_leave_no_pinhole_no_session_and_no_memory_behind() {
    require_lab!("vsftpd");
    let sessions = env_usize("LOAD_SESSIONS", 2000) as u64;
    let concurrency = env_usize("LOAD_CONCURRENCY", 50);
    let warmup = env_usize("LOAD_WARMUP", 200) as u64;
    let seed = env_usize("LOAD_SEED", 0x5eed) as u64;
    let pinhole_timeout = 3u64;

    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let port20 = env_usize("LOAD_PORT20", 0) != 0;
    let server = LoadServer::start(&lab.server, port20);
    let mut rng = Rng::new(seed);
    let mut files = Vec::new();
    for i in 0..SMALL_FILES {
        let len = 1 + rng.below(256 << 10) as usize;
        let content = rng.bytes(len);
        let name = format!("f{i}.bin");
        server.put_file(&name, &content);
        files.push((name, sha256(&content)));
    }
    server.put_file(BIG_FILE, &rng.bytes(BIG_LEN));

    let mut options = AlgOptions::new(alg_binary());
    options.pinhole_timeout_secs = 3;
    options.log_level = "info".into();
    options.extra_args = [
        "--max-sessions",
        "2000",
        "--max-sessions-per-client",
        "2000",
        "--new-sessions-per-second",
        "100000",
        "--idle-timeout",
        "60",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let alg = AlgDaemon::start(&lab.gateway, &options).expect("ftp-alg");
    let pid = daemon_pid(&lab.gateway).expect("daemon pid");

    let plan = Arc::new(Plan {
        files,
        server_root: server.root.clone(),
        stats: Stats::default(),
        seed,
    });

    // Memory, sampled all along.
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < LOAD_DEADLINE * 2 {
                if let Some(rss) = vm_rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let rss_start = vm_rss_kib(pid).expect("daemon RSS");

    // Warm-up: the same mix, so allocator arenas and tokio's pools reach their working size.
    let t0 = Instant::now();
    run_sessions(&lab, &plan, 0..warmup, concurrency);
    std::thread::sleep(Duration::from_secs(pinhole_timeout + 1));
    let rss_warm = vm_rss_kib(pid).expect("daemon RSS");
    let fds_warm = fd_count(pid);
    let warm_failed = plan.stats.failed.load(Ordering::Relaxed);

    // The measured sessions in rounds: RSS after each shows whether memory grows with the
    // number of sessions (a leak) or stays at the allocator's high-water mark.
    let rounds = env_usize("LOAD_ROUNDS", 2).max(1) as u64;
    let mut rss_rounds = Vec::new();
    let t1 = Instant::now();
    for round in 0..rounds {
        let from = warmup + sessions * round / rounds;
        let to = warmup + sessions * (round + 1) / rounds;
        run_sessions(&lab, &plan, from..to, concurrency);
        rss_rounds.push(vm_rss_kib(pid).expect("the daemon still runs"));
    }
    let load_wall = t1.elapsed();

    // Right after the last session: the sessions themselves must have removed their
    // pinholes (well before the 3 s pinhole timeout could).
    let ended = Instant::now();
    let sessions_left = settle(Duration::from_secs(2), || {
        (0..established_sessions(&lab)).collect()
    })
    .len();
    let at_end = settle(Duration::from_millis(1500), || {
        all_pinhole_elements(&lab.gateway).expect("sets")
    });
    let at_end_after = ended.elapsed();
    std::thread::sleep(Duration::from_secs(pinhole_timeout + 1));
    let after_timeout = all_pinhole_elements(&lab.gateway).expect("sets");
    let rss_after = vm_rss_kib(pid).expect("the daemon still runs after the load");
    let fds_after = fd_count(pid);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let rss_peak = peak.load(Ordering::Relaxed);
    let passive_admitted = counter_packets(&lab.gateway, "passive_admitted").unwrap_or(0);
    let active_admitted = counter_packets(&lab.gateway, "active_admitted").unwrap_or(0);

    let s = &plan.stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let failures = s
        .failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let margin_kib = (rss_warm / 10).max(2048);
    let rss_ok = rss_after <= rss_warm + margin_kib;
    println!(
        "=== ftp-alg load and leak check (seed {seed:#x}, vsftpd connect_from_port_20={}) ===",
        if port20 { "YES" } else { "NO" }
    );
    println!(
        "sessions: {} ({warmup} warm-up + {sessions}), concurrency {concurrency}",
        load(&s.sessions)
    );
    println!(
        "transfers ok: {} (RETR {}, STOR {}; PASV {}, EPSV {}, PORT {}, EPRT {}), hash mismatches {}",
        load(&s.transfers_ok),
        load(&s.retr_ok),
        load(&s.stor_ok),
        load(&s.by_mode[0]),
        load(&s.by_mode[1]),
        load(&s.by_mode[2]),
        load(&s.by_mode[3]),
        load(&s.hash_mismatch)
    );
    println!(
        "failed by design: {} aborted (data dropped + ABOR), {} reset mid-transfer (RST), {} vanished after the data command",
        load(&s.aborted),
        load(&s.reset),
        load(&s.vanished)
    );
    println!(
        "unexpected failures: {} (warm-up {warm_failed})",
        load(&s.failed)
    );
    println!(
        "wall time: {:.1} s load ({:.0} sessions/s), {:.1} s with warm-up",
        load_wall.as_secs_f64(),
        sessions as f64 / load_wall.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "data connections admitted by the kernel: passive {passive_admitted}, active {active_admitted}"
    );
    println!(
        "daemon RSS: start {rss_start} KiB, after warm-up {rss_warm} KiB, after each of {rounds} rounds {rss_rounds:?} KiB, peak {rss_peak} KiB, after {rss_after} KiB (margin {margin_kib} KiB)"
    );
    println!("daemon descriptors: after warm-up {fds_warm}, after {fds_after}");
    println!(
        "left over: {} session(s); {} pinhole element(s) {:.1} s after the last session, {} after the pinhole timeout",
        sessions_left,
        at_end.len(),
        at_end_after.as_secs_f64(),
        after_timeout.len()
    );
    for (reason, n) in s
        .reasons
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        println!("  {n:5} x {reason}");
    }
    for failure in failures.iter().take(5) {
        println!("  e.g. {failure}");
    }
    if port20 {
        // The gateway's conntrack entries of data connections from the server's port 20, by
        // state (needs the conntrack tool).
        let listing = lab
            .gateway
            .exec(&["conntrack", "-L", "-p", "tcp", "--sport", "20"])
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        let mut states = std::collections::BTreeMap::<String, usize>::new();
        for line in listing.lines() {
            if let Some(state) = line.split_whitespace().nth(3) {
                *states.entry(state.to_owned()).or_default() += 1;
            }
        }
        println!("gateway conntrack entries from the server's port 20: {states:?}");
    }

    assert!(
        failures.is_empty() && load(&s.failed) == 0,
        "{} unexpected failures, e.g. {failures:#?}\n--- ftp-alg log (tail):\n{}",
        load(&s.failed),
        tail(&alg.output(), 60)
    );
    assert_eq!(load(&s.hash_mismatch), 0);
    assert_eq!(
        load(&s.sessions),
        warmup + sessions,
        "the load hit its deadline"
    );
    assert_eq!(sessions_left, 0, "sessions still open in the daemon");
    assert!(
        at_end.is_empty(),
        "pinholes left right after the sessions ended: {at_end:#?}"
    );
    assert!(
        after_timeout.is_empty(),
        "pinholes left after the pinhole timeout: {after_timeout:#?}"
    );
    assert!(
        fds_after <= fds_warm,
        "descriptors grew: {fds_warm} -> {fds_after}"
    );
    assert!(
        rss_ok,
        "RSS did not come back: after warm-up {rss_warm} KiB, after {rss_after} KiB"
    );
    assert!(alg.output().lines().all(|l| !l.contains("panicked")));
    drop(server);
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

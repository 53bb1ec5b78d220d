//! The embedded peers: a libunftp server inside the server namespace and suppaftp client
//! sessions inside the client namespace. Shared by the tests and `examples/demo.rs` (which
//! includes this file by path), because libunftp and suppaftp are dev-dependencies.
//!
//! Peer facts:
//! - libunftp 0.24 implements PORT, PASV and EPSV but not EPRT. Its control port is therefore
//!   fronted by the lab's [`EprtShim`] (203.0.113.2:21 → libunftp on 203.0.113.2:2100), which
//!   turns a client's EPRT into the equivalent PORT and records every command it sees.
//! - libunftp answers PORT by connecting to the announced address *at once* (from an ephemeral
//!   port, not 20), before the transfer command; it does not check that the address is the
//!   client's own.
//! - suppaftp chooses PORT or EPRT by the family of its control socket, so over IPv4 it only
//!   ever sends PORT. EPRT over IPv4 is driven by the lab's small raw client
//!   ([`ftp_alg::lab::raw_client`]).
//! - Over IPv6 ([`EmbeddedServer::start_at`] with an IPv6 address) only EPSV works end to end:
//!   libunftp has no EPRT, and an `EPRT |2|` has no PORT equivalent for the shim to send.

use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ftp_alg::lab::{
    DataMode, EprtShim, FTP_USER, FtpOp, LabError, Netns, NsThread, OpOutcome, SERVER_IP,
    ScratchDir, SessionReport, TransferPlan, raw_client,
};
use libunftp::ServerBuilder;
use libunftp::options::{ActivePassiveMode, PassiveHost, Shutdown};
use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpStream, Mode};
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, Principal};
use unftp_sbe_fs::Filesystem;

/// Where libunftp itself listens (behind the shim).
pub const LIBUNFTP_PORT: u16 = 2100;
/// libunftp's passive ports.
pub const LIBUNFTP_PASV_PORTS: std::ops::RangeInclusive<u16> = 31000..=31100;

/// Accepts the lab user (any password) and nobody else.
#[derive(Debug)]
struct LabUserOnly;

#[async_trait::async_trait]
impl Authenticator for LabUserOnly {
    async fn authenticate(
        &self,
        username: &str,
        _creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        if username == FTP_USER {
            Ok(Principal {
                username: username.to_owned(),
            })
        } else {
            Err(AuthenticationError::BadUser)
        }
    }
}

/// Collects libunftp's slog records as text lines.
struct CollectLog(Arc<Mutex<Vec<String>>>);

struct KvText<'a>(&'a mut String);

impl slog::Serializer for KvText<'_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for CollectLog {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let mut line = format!("{} {}", record.level().as_short_str(), record.msg());
        let _ = slog::KV::serialize(&record.kv(), record, &mut KvText(&mut line));
        let _ = slog::KV::serialize(values, record, &mut KvText(&mut line));
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
        Ok(())
    }
}

/// libunftp on 203.0.113.2:2100 plus the EPRT shim on 203.0.113.2:21, in the server namespace.
pub struct EmbeddedServer {
    // Drop order: shim, then the server, then its files.
    shim: EprtShim,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<NsThread<Result<(), String>>>,
    root: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    _dir: ScratchDir,
}

impl EmbeddedServer {
    /// Starts both in `ns` and returns once they accept connections.
    pub fn start(ns: &Netns) -> Result<Self, LabError> {
        Self::start_at(ns, IpAddr::V4(SERVER_IP))
    }

    /// Like [`EmbeddedServer::start`], on `ip` (either family) instead of 203.0.113.2: the
    /// shim on `ip`:21, libunftp on `ip`:2100. Over IPv6 libunftp serves EPSV but has no EPRT
    /// (and PORT cannot name an IPv6 address), so only passive works there.
    pub fn start_at(ns: &Netns, ip: IpAddr) -> Result<Self, LabError> {
        let dir = ScratchDir::new("libunftp")?;
        let root = dir.subdir("root")?;
        // Fail here, not inside libunftp's storage factory (which cannot return an error).
        Filesystem::new(root.clone())
            .map_err(|e| LabError::io(format!("libunftp root {}", root.display()), e))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server_root = root.clone();
        let log = Arc::new(Mutex::new(Vec::new()));
        let logger = slog::Logger::root(slog::Fuse(CollectLog(Arc::clone(&log))), slog::o!());
        let thread = ns.spawn_thread(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?;
            runtime.block_on(async move {
                let server = ServerBuilder::with_authenticator(
                    Box::new(move || {
                        Filesystem::new(server_root.clone())
                            .unwrap_or_else(|e| panic!("libunftp root vanished: {e}"))
                    }),
                    Arc::new(LabUserOnly),
                )
                .greeting("ftp-alg lab libunftp")
                .logger(logger)
                .passive_host(match ip {
                    IpAddr::V4(v4) => PassiveHost::Ip(v4),
                    IpAddr::V6(_) => PassiveHost::FromConnection,
                })
                .passive_ports(LIBUNFTP_PASV_PORTS)
                .active_passive_mode(ActivePassiveMode::ActiveAndPassive)
                .idle_session_timeout(60)
                .shutdown_indicator(async move {
                    let _ = stop_rx.await;
                    Shutdown::new().grace_period(Duration::from_millis(200))
                })
                .build()
                .map_err(|e| format!("libunftp build: {e}"))?;
                server
                    .listen(SocketAddr::new(ip, LIBUNFTP_PORT).to_string())
                    .await
                    .map_err(|e| format!("libunftp listen: {e}"))
            })
        })?;
        let mut server = Self {
            shim: EprtShim::start_at(
                ns,
                SocketAddr::new(ip, 21),
                SocketAddr::new(ip, LIBUNFTP_PORT),
            )?,
            stop: Some(stop_tx),
            thread: Some(thread),
            root,
            log,
            _dir: dir,
        };
        server.wait_ready(ns)?;
        Ok(server)
    }

    fn wait_ready(&mut self, ns: &Netns) -> Result<(), LabError> {
        let timeout = Duration::from_secs(10);
        let start = Instant::now();
        let filter = format!("sport = :{LIBUNFTP_PORT}");
        loop {
            let out = ns.exec(&["ss", "-Hltn", &filter])?;
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok(());
            }
            if self.thread.as_ref().is_some_and(NsThread::is_finished) {
                let why = match self.thread.take().map(NsThread::join) {
                    Some(Ok(Err(e))) => e,
                    Some(Err(e)) => e.to_string(),
                    _ => "ended".into(),
                };
                return Err(LabError::NotReady {
                    what: "libunftp".into(),
                    timeout,
                    output: why,
                });
            }
            if start.elapsed() > timeout {
                return Err(LabError::NotReady {
                    what: "libunftp".into(),
                    timeout,
                    output: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's file root (the login directory).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where clients connect (the shim; an IPv4 server).
    pub fn addr(&self) -> SocketAddrV4 {
        self.shim.addr()
    }

    /// Where clients connect (the shim), either family.
    pub fn socket_addr(&self) -> SocketAddr {
        self.shim.socket_addr()
    }

    /// Puts a file into the root.
    pub fn put_file(&self, name: &str, data: &[u8]) -> Result<PathBuf, LabError> {
        let path = self.root.join(name);
        File::create(&path)
            .and_then(|mut f| f.write_all(data))
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        Ok(path)
    }

    /// libunftp's own log so far.
    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }

    /// Every command line that reached the server side, in order.
    pub fn commands(&self) -> Vec<String> {
        self.shim.commands()
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Bounded: the shutdown grace period is short; don't hang a test on it.
            let start = Instant::now();
            while !thread.is_finished() && start.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Runs `plan` with suppaftp inside `ns` (the client namespace); EPRT goes through the lab's raw
/// client because suppaftp cannot send EPRT over IPv4.
pub fn client_session(
    ns: &Netns,
    mode: DataMode,
    plan: &TransferPlan,
) -> Result<SessionReport, LabError> {
    if mode == DataMode::Eprt {
        return raw_client::run_session(ns, mode, plan);
    }
    client_session_at(ns, mode, plan, SocketAddr::V4(plan.server))
}

/// Like [`client_session`], against `server` (either family) instead of `plan.server`, always
/// with suppaftp: over IPv6 its active mode sends EPRT `|2|` (and PORT/PASV do not exist).
pub fn client_session_at(
    ns: &Netns,
    mode: DataMode,
    plan: &TransferPlan,
    server: SocketAddr,
) -> Result<SessionReport, LabError> {
    match server {
        SocketAddr::V6(_) if matches!(mode, DataMode::Port | DataMode::Pasv) => {
            return Err(LabError::Unsupported(format!(
                "{mode} cannot carry IPv6; suppaftp uses EPRT/EPSV over IPv6"
            )));
        }
        // suppaftp sends PORT over IPv4 even in "EPRT" mode: the raw client does EPRT there.
        SocketAddr::V4(v4) if mode == DataMode::Eprt => {
            let plan = TransferPlan {
                server: v4,
                ..plan.clone()
            };
            return raw_client::run_session(ns, mode, &plan);
        }
        _ => {}
    }
    let plan_in = plan.clone();
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    // Abandoned if it overruns (a blocked active-mode data socket has no timeout in suppaftp);
    // the namespace teardown then closes its sockets.
    let _thread = ns.spawn_thread(move || {
        let _ = tx.send(suppaftp_ops(mode, &plan_in, server));
    })?;
    let (outcomes, timed_out) = match rx.recv_timeout(plan.timeout) {
        Ok(outcomes) => (outcomes, false),
        Err(_) => (
            plan.ops
                .iter()
                .map(|op| {
                    (
                        *op,
                        OpOutcome::failed("not reached: the session hit its time bound"),
                    )
                })
                .collect(),
            true,
        ),
    };
    Ok(SessionReport {
        client: "suppaftp",
        mode,
        outcomes,
        transcript: String::new(),
        timed_out,
        elapsed: start.elapsed(),
    })
}

fn timeouts(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))
}

fn suppaftp_ops(
    mode: DataMode,
    plan: &TransferPlan,
    server: SocketAddr,
) -> Vec<(FtpOp, OpOutcome)> {
    let fail_all = |why: String| {
        plan.ops
            .iter()
            .map(|op| (*op, OpOutcome::failed(why.clone())))
            .collect::<Vec<_>>()
    };
    let stream = match TcpStream::connect_timeout(&server, Duration::from_secs(5))
        .and_then(|s| timeouts(&s).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => return fail_all(format!("connect {server}: {e}")),
    };
    let ftp = match FtpStream::connect_with_stream(stream) {
        Ok(ftp) => ftp,
        Err(e) => return fail_all(format!("greeting: {e}")),
    };
    let mut ftp = match mode {
        DataMode::Port | DataMode::Eprt => ftp.active_mode(Duration::from_secs(8)),
        _ => ftp.passive_stream_builder(|addr: SocketAddr| {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(FtpError::ConnectionError)?;
            timeouts(&stream).map_err(FtpError::ConnectionError)?;
            Ok(stream)
        }),
    };
    match mode {
        DataMode::Pasv => ftp.set_mode(Mode::Passive),
        DataMode::Epsv => ftp.set_mode(Mode::ExtendedPassive),
        DataMode::Port | DataMode::Eprt => {}
    }
    if let Err(e) = ftp
        .login(&plan.user, &plan.password)
        .and_then(|()| ftp.transfer_type(FileType::Binary))
    {
        return fail_all(format!("login: {e}"));
    }
    let mut outcomes = Vec::new();
    for op in &plan.ops {
        let outcome = match op {
            FtpOp::List => ftp
                .list(None)
                .map(|lines| format!("{} listing lines", lines.len()))
                .map_err(|e| e.to_string()),
            FtpOp::Retr => ftp
                .retr_as_buffer(&plan.retr_remote)
                .map_err(|e| e.to_string())
                .and_then(|buf| {
                    let data = buf.into_inner();
                    std::fs::write(&plan.retr_local, &data).map_err(|e| format!("saving: {e}"))?;
                    Ok(format!("{} bytes", data.len()))
                }),
            FtpOp::Stor => File::open(&plan.stor_local)
                .map_err(|e| format!("opening upload: {e}"))
                .and_then(|mut file| {
                    ftp.put_file(&plan.stor_remote, &mut file)
                        .map(|n| format!("{n} bytes"))
                        .map_err(|e| e.to_string())
                }),
        };
        outcomes.push((
            *op,
            match outcome {
                Ok(note) => OpOutcome::ok(format!("suppaftp: {note}")),
                Err(why) => OpOutcome::failed(format!("suppaftp: {why}")),
            },
        ));
    }
    let _ = ftp.quit();
    outcomes
}

//! The lab's own FTP server and client: small, std-only, and honest about what they saw.
//!
//! Why not libunftp/suppaftp (the tests' embedded peers): `ftp-alg lab` ships in the daemon's
//! binary, and those crates would bring a TLS stack (rustls with aws-lc-sys, a C build) into
//! it; libunftp has no EPRT and answers PORT by connecting at once from an ephemeral port,
//! where RFC 959 servers connect from port 20 when the transfer starts — which is what the lab
//! wants to show. These peers speak just enough FTP (USER, PASS, TYPE, SYST, PWD, FEAT, NOOP,
//! PORT, EPRT, PASV, EPSV, LIST, RETR, STOR, QUIT) and record every step with its real socket
//! addresses into an [`EventLog`]: the raw material of the diagrams and the verdicts.
//!
//! Every socket has a timeout and every loop a bound, so a blocked data path ends as a
//! recorded failure, never a hang.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::ftp::{Command, parse_command};
use crate::lab::netns::{Netns, NsThread};
use crate::lab::raw_client::{parse_227, parse_229};
use crate::lab::{DataMode, LabError, Result};

/// The lab's login (any password).
pub const LAB_USER: &str = "lab";
/// The file the client downloads.
pub const LAB_FILE: &str = "lab.bin";
/// How long the server tries to connect to the client in active mode (RFC 959 servers try
/// longer; two SYNs are enough to show a drop).
pub const ACTIVE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the client tries to connect to the server in passive mode.
pub const PASSIVE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a listening side waits for the other's data connection.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound of one control-channel read.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(8);
/// A server session ends after this long without a command.
const SERVER_IDLE: Duration = Duration::from_secs(15);

/// Which peer recorded an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The FTP client.
    Client,
    /// The FTP server.
    Server,
}

/// How a connection attempt failed, as the socket reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// No route (ENETUNREACH / EHOSTUNREACH): the address is not reachable from here at all.
    Unreachable,
    /// No answer within the bound: the SYN (or its answer) was dropped somewhere.
    TimedOut,
    /// RST: something answered that nothing listens there.
    Refused,
    /// Anything else.
    Other,
}

impl ConnectFailure {
    fn of(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => Self::Unreachable,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Self::TimedOut,
            io::ErrorKind::ConnectionRefused => Self::Refused,
            _ => match error.raw_os_error() {
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => Self::Unreachable,
                _ => Self::Other,
            },
        }
    }
}

/// One step a peer took or observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// Client: the control connection is up.
    ControlConnected {
        /// Client's end.
        local: SocketAddr,
        /// Where it connected.
        remote: SocketAddr,
    },
    /// Client: the control connection could not be made.
    ControlFailed {
        /// Where it tried to connect.
        remote: SocketAddr,
        /// The socket's error.
        error: String,
    },
    /// Server: a control connection arrived.
    ControlAccepted {
        /// Server's end.
        local: SocketAddr,
        /// Who connected, as the server sees it.
        peer: SocketAddr,
    },
    /// A control line sent (passwords masked).
    Sent(String),
    /// A control line received.
    Received(String),
    /// A data listener was opened (client in active mode, server in passive mode).
    Listening(SocketAddr),
    /// The opener's data connection is up.
    DataConnected {
        /// Opener's end.
        local: SocketAddr,
        /// The other end.
        remote: SocketAddr,
    },
    /// The opener's data connection failed.
    DataConnectFailed {
        /// Opener's end, if the socket got one.
        local: Option<SocketAddr>,
        /// Where it tried to connect.
        remote: SocketAddr,
        /// How it failed.
        failure: ConnectFailure,
        /// The socket's error text.
        error: String,
        /// How long it tried.
        waited: Duration,
    },
    /// The listener got the data connection.
    DataAccepted {
        /// Listener's end.
        local: SocketAddr,
        /// Who connected, as this side sees it.
        peer: SocketAddr,
    },
    /// The listener waited in vain.
    DataAcceptTimedOut {
        /// The listening address.
        local: SocketAddr,
        /// How long it waited.
        waited: Duration,
    },
    /// Bytes moved on the data connection (client: `intact` compares with the served file).
    Transferred {
        /// How many.
        bytes: usize,
        /// Whether they are the expected bytes (the server always says true).
        intact: bool,
    },
}

/// A timestamped event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Since the scenario's epoch.
    pub at: Duration,
    /// Who recorded it.
    pub side: Side,
    /// What.
    pub what: PeerEvent,
}

/// The shared, timestamped record of both peers.
#[derive(Debug, Clone)]
pub struct EventLog {
    epoch: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl EventLog {
    /// An empty log whose times count from `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Records one event now.
    pub fn push(&self, side: Side, what: PeerEvent) {
        let at = self.epoch.elapsed();
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Event { at, side, what });
    }

    /// Takes every event recorded so far, in time order.
    pub fn take(&self) -> Vec<Event> {
        let mut events =
            std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner));
        events.sort_by_key(|e| e.at);
        events
    }

    /// The epoch.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }
}

/// The lab's FTP server, running on threads inside a namespace. Stops when dropped.
#[derive(Debug)]
pub struct LabServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<NsThread<()>>,
    log: Arc<Mutex<EventLog>>,
}

impl LabServer {
    /// Listens on `addr` in `ns`, serving `file` as [`LAB_FILE`]; records into `log`.
    pub fn start(ns: &Netns, addr: SocketAddr, file: Arc<Vec<u8>>, log: EventLog) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(log));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_stop = Arc::clone(&stop);
        let thread_log = Arc::clone(&log);
        let thread = ns.spawn_thread(move || {
            let listener = match TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(listener) => {
                    let _ = ready_tx.send(Ok(()));
                    listener
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            serve(&listener, &thread_stop, &file, &thread_log);
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self {
                addr,
                stop,
                thread: Some(thread),
                log,
            }),
            Ok(Err(e)) => Err(LabError::io(format!("lab FTP server on {addr}"), e)),
            Err(_) => Err(LabError::NotReady {
                what: format!("lab FTP server on {addr}"),
                timeout: Duration::from_secs(5),
                output: String::new(),
            }),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Records into `log` from now on (the next scenario).
    pub fn set_log(&self, log: EventLog) {
        *self.log.lock().unwrap_or_else(PoisonError::into_inner) = log;
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let start = Instant::now();
            while !thread.is_finished() && start.elapsed() < Duration::from_secs(2) {
                thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

fn serve(
    listener: &TcpListener,
    stop: &AtomicBool,
    file: &Arc<Vec<u8>>,
    log: &Arc<Mutex<EventLog>>,
) {
    let mut sessions = Vec::new();
    // Bounded by the stop flag, polled every 20 ms.
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let file = Arc::clone(file);
                let log = log.lock().unwrap_or_else(PoisonError::into_inner).clone();
                // Threads inherit the namespace of the thread that creates them.
                sessions.push(thread::spawn(move || {
                    let _ = ServerSession::new(stream, peer, file, log).and_then(|mut s| s.run());
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
        sessions.retain(|s: &thread::JoinHandle<()>| !s.is_finished());
    }
}

enum DataPlan {
    None,
    Active(SocketAddr),
    Passive(TcpListener),
}

struct ServerSession {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    local: SocketAddr,
    file: Arc<Vec<u8>>,
    stored: HashMap<String, usize>,
    data: DataPlan,
    log: EventLog,
}

impl ServerSession {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        file: Arc<Vec<u8>>,
        log: EventLog,
    ) -> io::Result<Self> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(SERVER_IDLE))?;
        stream.set_write_timeout(Some(CONTROL_TIMEOUT))?;
        let local = stream.local_addr()?;
        log.push(Side::Server, PeerEvent::ControlAccepted { local, peer });
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            local,
            file,
            stored: HashMap::new(),
            data: DataPlan::None,
            log,
        })
    }

    fn reply(&mut self, line: &str) -> io::Result<()> {
        self.log
            .push(Side::Server, PeerEvent::Sent(line.to_owned()));
        self.writer.write_all(format!("{line}\r\n").as_bytes())
    }

    fn run(&mut self) -> io::Result<()> {
        self.reply("220 ftp-alg lab server ready")?;
        // Bounded: every read has a timeout, and QUIT or EOF ends the loop.
        for _ in 0..1000 {
            let mut raw = String::new();
            if self.reader.read_line(&mut raw)? == 0 {
                return Ok(());
            }
            let line = raw.trim_end_matches(['\r', '\n']).to_owned();
            let shown = if line.to_ascii_uppercase().starts_with("PASS ") {
                "PASS ****".to_owned()
            } else {
                line.clone()
            };
            self.log.push(Side::Server, PeerEvent::Received(shown));
            let (verb, arg) = line.split_once(' ').unwrap_or((&line, ""));
            match verb.to_ascii_uppercase().as_str() {
                "USER" => self.reply("331 Any password will do")?,
                "PASS" => self.reply("230 Logged in")?,
                "TYPE" => self.reply("200 Type set")?,
                "SYST" => self.reply("215 UNIX Type: L8")?,
                "PWD" => self.reply("257 \"/\" is the current directory")?,
                "FEAT" => self.reply("211 No features")?,
                "NOOP" => self.reply("200 NOOP ok")?,
                "PORT" | "EPRT" => self.active(&line)?,
                "PASV" | "EPSV" => self.passive(verb.eq_ignore_ascii_case("EPSV"))?,
                "LIST" => {
                    let listing = format!(
                        "-rw-r--r-- 1 lab lab {} Jan  1 00:00 {LAB_FILE}\r\n",
                        self.file.len()
                    );
                    self.transfer(|data| {
                        data.write_all(listing.as_bytes()).map(|()| listing.len())
                    })?;
                }
                "RETR" => {
                    if arg.trim() == LAB_FILE {
                        let file = Arc::clone(&self.file);
                        self.transfer(|data| data.write_all(&file).map(|()| file.len()))?;
                    } else {
                        self.reply("550 No such file")?;
                    }
                }
                "STOR" => {
                    let name = arg.trim().to_owned();
                    let mut bytes = 0;
                    self.transfer(|data| {
                        let mut buf = Vec::new();
                        data.read_to_end(&mut buf)?;
                        bytes = buf.len();
                        Ok(bytes)
                    })?;
                    self.stored.insert(name, bytes);
                }
                "QUIT" => {
                    self.reply("221 Goodbye")?;
                    return Ok(());
                }
                _ => self.reply("502 Command not implemented")?,
            }
        }
        Ok(())
    }

    fn active(&mut self, line: &str) -> io::Result<()> {
        match parse_command(line.as_bytes()) {
            Ok(Command::Port(addr)) => {
                self.data = DataPlan::Active(SocketAddr::V4(addr));
                self.reply("200 PORT command successful")
            }
            Ok(Command::Eprt(addr)) => {
                self.data = DataPlan::Active(addr);
                self.reply("200 EPRT command successful")
            }
            _ => self.reply("501 Syntax error in address"),
        }
    }

    fn passive(&mut self, extended: bool) -> io::Result<()> {
        let listener = TcpListener::bind(SocketAddr::new(self.local.ip(), 0))?;
        let addr = listener.local_addr()?;
        self.log.push(Side::Server, PeerEvent::Listening(addr));
        self.data = DataPlan::Passive(listener);
        match (extended, addr) {
            (true, _) => self.reply(&format!(
                "229 Entering Extended Passive Mode (|||{}|)",
                addr.port()
            )),
            (false, SocketAddr::V4(v4)) => {
                let [a, b, c, d] = v4.ip().octets();
                let port = v4.port();
                self.reply(&format!(
                    "227 Entering Passive Mode ({a},{b},{c},{d},{},{})",
                    port >> 8,
                    port & 0xff
                ))
            }
            (false, SocketAddr::V6(_)) => self.reply("522 Use EPSV on IPv6"),
        }
    }

    /// Opens the data connection as the plan says, then runs `move_bytes` on it.
    fn transfer(
        &mut self,
        move_bytes: impl FnOnce(&mut TcpStream) -> io::Result<usize>,
    ) -> io::Result<()> {
        let plan = std::mem::replace(&mut self.data, DataPlan::None);
        let stream = match plan {
            DataPlan::None => return self.reply("425 Use PORT, EPRT, PASV or EPSV first"),
            DataPlan::Active(target) => {
                let from = SocketAddr::new(self.local.ip(), 20);
                match connect_from(
                    Some(from),
                    target,
                    ACTIVE_CONNECT_TIMEOUT,
                    Side::Server,
                    &self.log,
                ) {
                    Ok(stream) => stream,
                    Err(e) => {
                        return self
                            .reply(&format!("425 Can't open data connection to {target}: {e}"));
                    }
                }
            }
            DataPlan::Passive(listener) => {
                match accept_within(&listener, Side::Server, &self.log) {
                    Ok(stream) => stream,
                    Err(_) => {
                        return self.reply("425 No data connection arrived");
                    }
                }
            }
        };
        self.reply("150 Opening BINARY mode data connection")?;
        let mut stream = stream;
        match move_bytes(&mut stream) {
            Ok(bytes) => {
                let _ = stream.shutdown(Shutdown::Both);
                self.log.push(
                    Side::Server,
                    PeerEvent::Transferred {
                        bytes,
                        intact: true,
                    },
                );
                self.reply("226 Transfer complete")
            }
            Err(e) => self.reply(&format!("426 Transfer aborted: {e}")),
        }
    }
}

/// Connects to `target` (from `from` if given), recording the attempt.
fn connect_from(
    from: Option<SocketAddr>,
    target: SocketAddr,
    timeout: Duration,
    side: Side,
    log: &EventLog,
) -> io::Result<TcpStream> {
    let start = Instant::now();
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    if let Some(from) = from {
        socket.set_reuse_address(true)?;
        socket.bind(&from.into())?;
    }
    let result = socket.connect_timeout(&target.into(), timeout);
    let local = socket.local_addr().ok().and_then(|a| a.as_socket());
    match result {
        Ok(()) => {
            let stream: TcpStream = socket.into();
            stream.set_read_timeout(Some(CONTROL_TIMEOUT))?;
            stream.set_write_timeout(Some(CONTROL_TIMEOUT))?;
            let local = stream.local_addr()?;
            log.push(
                side,
                PeerEvent::DataConnected {
                    local,
                    remote: target,
                },
            );
            Ok(stream)
        }
        Err(e) => {
            let local = local.filter(|a| a.port() != 0);
            log.push(
                side,
                PeerEvent::DataConnectFailed {
                    local,
                    remote: target,
                    failure: ConnectFailure::of(&e),
                    error: e.to_string(),
                    waited: start.elapsed(),
                },
            );
            Err(e)
        }
    }
}

/// Accepts one connection within [`ACCEPT_TIMEOUT`], recording the outcome.
fn accept_within(listener: &TcpListener, side: Side, log: &EventLog) -> io::Result<TcpStream> {
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    // Bounded by ACCEPT_TIMEOUT.
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(CONTROL_TIMEOUT))?;
                stream.set_write_timeout(Some(CONTROL_TIMEOUT))?;
                log.push(side, PeerEvent::DataAccepted { local, peer });
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if start.elapsed() >= ACCEPT_TIMEOUT {
                    log.push(
                        side,
                        PeerEvent::DataAcceptTimedOut {
                            local,
                            waited: start.elapsed(),
                        },
                    );
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no data connection",
                    ));
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the client made of its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOutcome {
    /// The download arrived complete and identical.
    pub ok: bool,
    /// The client's own words when it did not.
    pub failure: Option<String>,
    /// The session was cut off by its time bound instead of ending by itself: whatever the
    /// peers recorded, the client's account of why it failed is missing.
    pub timed_out: bool,
}

/// Runs one client session in `ns`: log in, negotiate `mode`, `RETR` [`LAB_FILE`], compare it
/// with `expected`, quit. Bounded by `bound` (the thread is abandoned after it; its sockets all
/// have timeouts, so it ends soon after).
pub fn run_client(
    ns: &Netns,
    server: SocketAddr,
    mode: DataMode,
    expected: Arc<Vec<u8>>,
    log: EventLog,
    bound: Duration,
) -> Result<ClientOutcome> {
    let (tx, rx) = std::sync::mpsc::channel();
    let _thread = ns.spawn_thread(move || {
        let mut client = Client { log, control: None };
        let outcome = match client.session(server, mode, &expected) {
            Ok(()) => ClientOutcome {
                ok: true,
                failure: None,
                timed_out: false,
            },
            Err(why) => ClientOutcome {
                ok: false,
                failure: Some(why),
                timed_out: false,
            },
        };
        let _ = tx.send(outcome);
    })?;
    Ok(rx.recv_timeout(bound).unwrap_or_else(|_| ClientOutcome {
        ok: false,
        failure: Some(format!("the session did not end within {bound:?}")),
        timed_out: true,
    }))
}

struct Control {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
}

struct Client {
    log: EventLog,
    control: Option<Control>,
}

impl Client {
    fn control(&mut self) -> std::result::Result<&mut Control, String> {
        self.control
            .as_mut()
            .ok_or_else(|| "not connected".to_owned())
    }

    fn send(&mut self, line: &str) -> std::result::Result<(), String> {
        let shown = if line.starts_with("PASS ") {
            "PASS ****"
        } else {
            line
        };
        self.log
            .push(Side::Client, PeerEvent::Sent(shown.to_owned()));
        self.control()?
            .writer
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| format!("sending {shown}: {e}"))
    }

    /// Reads one reply (multi-line replies joined), returns (code, text).
    fn reply(&mut self) -> std::result::Result<(u16, String), String> {
        let control = self.control()?;
        let mut text = String::new();
        let mut first_code = None;
        // Bounded: a multi-line reply longer than this is treated as an error.
        for _ in 0..64 {
            let mut line = String::new();
            match control.reader.read_line(&mut line) {
                Ok(0) => return Err("the server closed the control connection".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("waiting for a reply: {e}")),
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&line);
            let first = *first_code.get_or_insert(code);
            if first.is_some() && first == code && line.as_bytes().get(3) != Some(&b'-') {
                self.log
                    .push(Side::Client, PeerEvent::Received(text.clone()));
                return Ok((first.unwrap_or(0), text));
            }
        }
        Err("over-long reply".into())
    }

    fn expect(&mut self, command: &str, codes: &[u16]) -> std::result::Result<String, String> {
        self.send(command)?;
        let (code, text) = self.reply()?;
        if codes.contains(&code) {
            Ok(text)
        } else {
            let shown = if command.starts_with("PASS ") {
                "PASS"
            } else {
                command
            };
            Err(format!("{shown} was answered `{text}`"))
        }
    }

    fn session(
        &mut self,
        server: SocketAddr,
        mode: DataMode,
        expected: &[u8],
    ) -> std::result::Result<(), String> {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5)).map_err(|e| {
            self.log.push(
                Side::Client,
                PeerEvent::ControlFailed {
                    remote: server,
                    error: e.to_string(),
                },
            );
            format!("control connection to {server}: {e}")
        })?;
        let setup = |s: &TcpStream| -> io::Result<(TcpStream, SocketAddr)> {
            s.set_read_timeout(Some(CONTROL_TIMEOUT))?;
            s.set_write_timeout(Some(CONTROL_TIMEOUT))?;
            Ok((s.try_clone()?, s.local_addr()?))
        };
        let (reader, local) = setup(&stream).map_err(|e| format!("control socket: {e}"))?;
        self.log.push(
            Side::Client,
            PeerEvent::ControlConnected {
                local,
                remote: server,
            },
        );
        self.control = Some(Control {
            reader: BufReader::new(reader),
            writer: stream,
            local,
            remote: server,
        });
        let (code, text) = self.reply()?;
        if code != 220 {
            return Err(format!("greeting `{text}`"));
        }
        self.expect(&format!("USER {LAB_USER}"), &[331, 230])?;
        self.expect(&format!("PASS {LAB_USER}"), &[230])?;
        self.expect("TYPE I", &[200])?;
        let result = self.retr(mode, expected);
        // Say goodbye in any case; a failed data path leaves the control channel usable.
        if self.send("QUIT").is_ok() {
            let _ = self.reply();
        }
        result
    }

    fn retr(&mut self, mode: DataMode, expected: &[u8]) -> std::result::Result<(), String> {
        let (local, remote) = {
            let control = self.control()?;
            (control.local, control.remote)
        };
        let retr = format!("RETR {LAB_FILE}");
        let mut data = if mode.is_active() {
            let listener = TcpListener::bind(SocketAddr::new(local.ip(), 0))
                .map_err(|e| format!("active-mode listener: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            self.log.push(Side::Client, PeerEvent::Listening(addr));
            let command = match (mode, addr) {
                (DataMode::Port, SocketAddr::V4(v4)) => {
                    let [a, b, c, d] = v4.ip().octets();
                    format!(
                        "PORT {a},{b},{c},{d},{},{}",
                        v4.port() >> 8,
                        v4.port() & 0xff
                    )
                }
                _ => {
                    let family = if addr.is_ipv4() { 1 } else { 2 };
                    format!("EPRT |{family}|{}|{}|", addr.ip(), addr.port())
                }
            };
            self.expect(&command, &[200])?;
            self.expect(&retr, &[125, 150])?;
            accept_within(&listener, Side::Client, &self.log)
                .map_err(|e| format!("waiting for the server's data connection to {addr}: {e}"))?
        } else {
            let target = if mode == DataMode::Pasv {
                let text = self.expect("PASV", &[227])?;
                let addr: SocketAddrV4 =
                    parse_227(&text).ok_or_else(|| format!("no address in `{text}`"))?;
                SocketAddr::V4(addr)
            } else {
                let text = self.expect("EPSV", &[229])?;
                let port = parse_229(&text).ok_or_else(|| format!("no port in `{text}`"))?;
                SocketAddr::new(remote.ip(), port)
            };
            let stream = connect_from(
                None,
                target,
                PASSIVE_CONNECT_TIMEOUT,
                Side::Client,
                &self.log,
            )
            .map_err(|e| format!("data connection to {target}: {e}"))?;
            self.expect(&retr, &[125, 150])?;
            stream
        };
        let mut received = Vec::new();
        let read = data.read_to_end(&mut received);
        drop(data);
        let intact = received == expected;
        self.log.push(
            Side::Client,
            PeerEvent::Transferred {
                bytes: received.len(),
                intact,
            },
        );
        read.map_err(|e| format!("reading the download: {e}"))?;
        let (code, text) = self.reply()?;
        if code != 226 {
            return Err(format!("after the transfer: `{text}`"));
        }
        if !intact {
            return Err(format!(
                "the download differs from the served file ({} of {} bytes)",
                received.len(),
                expected.len()
            ));
        }
        Ok(())
    }
}

//! One FTP control connection: client bytes and server bytes go through the [`crate::ftp`]
//! codecs, data-channel commands and replies are checked against the session's own addresses,
//! pinholes are requested from the [`Firewall`], and a rewritten PORT or a 227/229 is released
//! only after the kernel acknowledged its pinhole (otherwise the peer's SYN races the rule).
//!
//! Other replies pass byte for byte. Other commands go to the server as the text the ALG
//! read (telnet sequences removed, see [`ftp::render_command`]), and a line servers could
//! split differently from the ALG is refused, so the server never runs a command that was
//! not checked.
//! The session owns its pinholes: whatever is still open when it ends is removed.

pub mod checks;
mod ports;
mod refusal;
mod topology;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::config::{PasvAddressPolicy, TlsPolicy};
use crate::firewall::{Firewall, FirewallError, Pinhole};
use crate::ftp::{
    self, Command, EpsvArg, FrameError, Line, LineFramer, Reply, ReplyAssembler, ReplyEvent,
    Terminator,
};
use crate::realtime::Boost;
use crate::telemetry::SessionEntry;

pub use ports::PortAllocator;
pub use refusal::Refusal;
pub use topology::{DataPlan, Endpoints, Topology};

/// Per-session policy, shared by all sessions (cheap to clone behind an `Arc`).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Lifetime of an unused pinhole.
    pub pinhole_timeout: Duration,
    /// Most pinholes a session may hold.
    pub max_pinholes: usize,
    /// What to do with a 227 that names another host.
    pub pasv_address: PasvAddressPolicy,
    /// Longest control line.
    pub max_line: usize,
    /// Idle timeout of the control connection (suspended while a transfer runs).
    pub idle_timeout: Duration,
    /// Command verbs (upper case) allowed; empty allows all.
    pub allow: Vec<Vec<u8>>,
    /// Command verbs (upper case) refused with `502`.
    pub deny: Vec<Vec<u8>>,
    /// Replace the server's greeting.
    pub mask_banner: bool,
    /// Replace the server's SYST reply.
    pub mask_syst: bool,
    /// What to do with AUTH TLS/SSL.
    pub tls: TlsPolicy,
    /// `SCHED_FIFO` priority the session's thread takes from a pinhole request until the
    /// PORT/227 that waited for it is released (`runtime.realtime_scope = "pinholes"`); 0 =
    /// off.
    pub realtime_boost: u8,
}

impl Policy {
    /// Whether the command policy lets `verb` (upper case) through. The deny list refuses any
    /// verb (`PORT` and `EPRT` on it make a passive-only gateway); the allow list never
    /// refuses the data-channel commands (`data_command`), which the ALG itself checks.
    fn permits(&self, verb: &[u8], data_command: bool) -> bool {
        if self.deny.iter().any(|v| v == verb) {
            return false;
        }
        data_command || self.allow.is_empty() || self.allow.iter().any(|v| v == verb)
    }
}

/// What a command that the server has not answered yet was, so that a 227/229 is only
/// interpreted as the answer to the PASV/EPSV that asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Pasv,
    Epsv,
    /// `EPSV ALL`: once the server accepts it, only EPSV may follow.
    EpsvAll,
    /// PORT/EPRT whose pinhole has this sequence number (see [`Held::seq`]).
    Active(u64),
    /// A reply the ALG wrote itself, waiting in [`Session::local_replies`] for the server's
    /// replies to the commands before it, so that a pipelining client reads them in order.
    Local,
    /// ABOR may be answered by 426 and then 226.
    Abor,
    /// SYST, whose answer may be masked.
    Syst,
    /// AUTH forwarded under the passthrough policy: a 234 switches to raw relaying.
    Auth,
    Other,
}

/// A reply being replaced as it streams by (its lines are dropped, the stand-in is sent when
/// it completes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mask {
    Greeting,
    Syst,
}

/// How long a parting `421` may wait for a peer that does not read.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most commands a client may have in flight (pipelined) before we stop reading it.
const MAX_IN_FLIGHT: usize = 64;

/// Further gateway ports a PORT/EPRT tries when the firewall refuses one whose previous data
/// connection is still running ([`FirewallError::PortInUse`]) before it answers `425`.
const PORT_ATTEMPTS: usize = 3;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client closed.
    ClientClosed,
    /// The server closed.
    ServerClosed,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
    /// A socket error.
    IoError,
    /// FTPS passthrough: the encrypted session was relayed until one side closed.
    TlsPassthrough,
}

/// Why the line-by-line relay stopped.
enum Stop {
    Ended(Ending),
    /// The server accepted AUTH under the passthrough policy.
    Passthrough,
}

/// One control connection in flight.
pub struct Session<F: Firewall> {
    ends: Endpoints,
    topology: Topology,
    policy: Arc<Policy>,
    firewall: Arc<F>,
    ports: Arc<PortAllocator>,
    client_lines: LineFramer,
    server_lines: LineFramer,
    replies: ReplyAssembler,
    in_flight: VecDeque<Pending>,
    greeted: bool,
    transfer_running: bool,
    masking: Option<Mask>,
    epsv_all: bool,
    pinholes: Vec<Held>,
    /// Pinholes taken out of [`Session::pinholes`] whose close has not finished.
    closing: Vec<Held>,
    /// Sequence number of the next pinhole opened.
    next_seq: u64,
    /// The ALG's own replies queued behind commands still in flight (see [`Pending::Local`]).
    local_replies: VecDeque<Vec<u8>>,
    telemetry: Option<Arc<SessionEntry>>,
    /// When the last complete line arrived from either side.
    last_line: tokio::time::Instant,
    /// Whether the client has sent a complete line yet.
    client_spoke: bool,
    /// Real-time while a pinhole is installed and its line released (see [`Policy`]).
    boost: Option<Boost>,
    /// Refusals so far: past [`REFUSALS_LOGGED`] they are logged at debug level only.
    refusals: u64,
}

/// Refusals a session logs at warn level. A client can send refusable lines as fast as its
/// link carries them; a line each would flood the journal, whose own rate limit then drops
/// every service's lines alike. The rest are counted, said once, and summed up at the end.
const REFUSALS_LOGGED: u64 = 20;

/// A pinhole this session opened, and the port lease it holds.
#[derive(Debug)]
struct Held {
    pinhole: Pinhole,
    opened: Instant,
    lease: Option<(IpAddr, u16)>,
    /// The session's count of pinholes when it was opened: orders them.
    seq: u64,
    /// The server took the data address it belongs to: the 227/229 it answered, or the
    /// reply to its PORT/EPRT. Only then can a transfer command use it.
    confirmed: bool,
    /// A transfer started after it was confirmed: its data connection is that transfer's.
    used: bool,
}

impl<F: Firewall> Session<F> {
    /// A session for the given endpoints.
    pub fn new(
        ends: Endpoints,
        topology: Topology,
        policy: Arc<Policy>,
        firewall: Arc<F>,
        ports: Arc<PortAllocator>,
    ) -> Self {
        Self {
            ends,
            topology,
            epsv_all: false,
            telemetry: None,
            last_line: tokio::time::Instant::now(),
            client_spoke: false,
            client_lines: LineFramer::new(policy.max_line),
            server_lines: LineFramer::new(policy.max_line),
            replies: ReplyAssembler::new(policy.max_line * 16),
            policy,
            firewall,
            ports,
            in_flight: VecDeque::new(),
            greeted: false,
            transfer_running: false,
            masking: None,
            pinholes: Vec::new(),
            closing: Vec::new(),
            next_seq: 0,
            local_replies: VecDeque::new(),
            boost: None,
            refusals: 0,
        }
    }

    /// Reports this session's bytes, pinholes and refusals to `entry`.
    pub fn with_telemetry(mut self, entry: Arc<SessionEntry>) -> Self {
        self.telemetry = Some(entry);
        self
    }

    /// Logs a refusal (within the session's budget), counts it, and returns its reply.
    fn refuse(&mut self, refusal: &Refusal) -> Vec<u8> {
        self.refusals += 1;
        if self.refusals <= REFUSALS_LOGGED {
            refusal.log();
        } else {
            if self.refusals == REFUSALS_LOGGED + 1 {
                warn!(
                    "more than {REFUSALS_LOGGED} refusals in this session; the rest are \
                     logged at debug level and summed up at its end"
                );
            }
            refusal.log_quietly();
        }
        if let (Some(entry), Some(kind)) = (&self.telemetry, refusal.channel_kind()) {
            entry.channel_refused(kind);
        }
        if self.topology == Topology::Reverse {
            refusal.reply_to_outside()
        } else {
            refusal.reply()
        }
    }

    /// Relays until either side closes or the idle timeout fires, then removes every pinhole
    /// the session still holds.
    pub async fn run<C, S>(mut self, client: C, server: S) -> Ending
    where
        C: AsyncRead + AsyncWrite + Unpin,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut server_r, mut server_w) = tokio::io::split(server);
        let stop = self
            .relay(&mut client_r, &mut client_w, &mut server_r, &mut server_w)
            .await;
        // Pinholes go first: nothing of this session may outlive it in the kernel.
        self.close_all().await;
        if self.refusals > REFUSALS_LOGGED {
            warn!(
                refusals = self.refusals,
                not_logged = self.refusals - REFUSALS_LOGGED,
                "session refused more lines than it logged"
            );
        }
        match stop {
            Stop::Ended(ending) => ending,
            Stop::Passthrough => {
                let mut client = client_r.unsplit(client_w);
                let mut server = server_r.unsplit(server_w);
                self.passthrough(&mut client, &mut server).await
            }
        }
    }

    /// FTPS: relays the encrypted bytes untouched until both sides have closed, or until
    /// nothing has moved for the idle timeout while no other connection between client and
    /// server lives (the encrypted control channel hides its transfers, but not their flows).
    async fn passthrough<C, S>(&mut self, client: &mut C, server: &mut S) -> Ending
    where
        C: AsyncRead + AsyncWrite + Unpin,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        warn!(
            "TLS passthrough: control channel encrypted; ftp-alg cannot open this session's \
             data connections (they need a static rule for the server's passive range)"
        );
        // Bytes that arrived behind the AUTH line belong to the TLS handshake.
        let early_client = self.client_lines.take_partial();
        let early_server = self.server_lines.take_partial();
        let idle = self.policy.idle_timeout;
        let early = async {
            if let Some(line) = early_client {
                server.write_all(line.raw()).await?;
            }
            if let Some(line) = early_server {
                client.write_all(line.raw()).await?;
            }
            Ok(())
        };
        if let Err(e) = bounded(idle, early).await {
            debug!(error = %e, "TLS passthrough ended with an error");
            return Ending::IoError;
        }
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut server_r, mut server_w) = tokio::io::split(server);
        let mut client_buf = vec![0u8; 16 * 1024];
        let mut server_buf = vec![0u8; 16 * 1024];
        let (mut up, mut down) = (0u64, 0u64);
        let (mut client_open, mut server_open) = (true, true);
        let mut last = tokio::time::Instant::now();
        while client_open || server_open {
            let deadline = last
                .checked_add(idle)
                .unwrap_or_else(|| last + Duration::from_secs(365 * 24 * 3600));
            let step = tokio::select! {
                r = client_r.read(&mut client_buf), if client_open => Step::Client(r),
                r = server_r.read(&mut server_buf), if server_open => Step::Server(r),
                () = tokio::time::sleep_until(deadline) => Step::Idle,
            };
            let moved = match step {
                Step::Client(Ok(0)) => {
                    client_open = false;
                    bounded(idle, server_w.shutdown()).await
                }
                Step::Server(Ok(0)) => {
                    server_open = false;
                    bounded(idle, client_w.shutdown()).await
                }
                Step::Client(Ok(n)) => {
                    up += n as u64;
                    if let Some(entry) = &self.telemetry {
                        entry.from_client(n);
                    }
                    bounded(idle, server_w.write_all(&client_buf[..n])).await
                }
                Step::Server(Ok(n)) => {
                    down += n as u64;
                    if let Some(entry) = &self.telemetry {
                        entry.from_server(n);
                    }
                    bounded(idle, client_w.write_all(&server_buf[..n])).await
                }
                Step::Client(Err(e)) | Step::Server(Err(e)) => Err(e),
                Step::Idle => {
                    // Half closed: the session is ending, and no transfer needs it.
                    if client_open && server_open && self.peers_connected().await {
                        last = tokio::time::Instant::now();
                        continue;
                    }
                    info!(
                        timeout_s = idle.as_secs(),
                        up, down, "idle timeout in TLS passthrough; closing session"
                    );
                    return Ending::IdleTimeout;
                }
            };
            if let Err(e) = moved {
                debug!(error = %e, up, down, "TLS passthrough ended with an error");
                return Ending::IoError;
            }
            last = tokio::time::Instant::now();
        }
        debug!(up, down, "TLS passthrough ended");
        Ending::TlsPassthrough
    }

    /// Whether the kernel tracks a live connection between this session's client and server
    /// other than the control connection: an encrypted session's data connection.
    async fn peers_connected(&self) -> bool {
        self.firewall
            .peers_connected(
                self.ends.client.ip(),
                self.ends.server.ip(),
                [self.ends.server.port(), self.ends.client_facing.port()],
            )
            .await
    }

    async fn relay<CR, CW, SR, SW>(
        &mut self,
        client_r: &mut CR,
        client_w: &mut CW,
        server_r: &mut SR,
        server_w: &mut SW,
    ) -> Stop
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        SR: AsyncRead + Unpin,
        SW: AsyncWrite + Unpin,
    {
        let mut client_buf = vec![0u8; 4096];
        let mut server_buf = vec![0u8; 4096];
        let mut client_open = true;
        loop {
            // Idle is measured from the last complete line: bytes that never finish a line
            // (a slowloris trickle) do not keep a session alive.
            let idle = self.policy.idle_timeout;
            // A Policy built outside the validated config could name an idle timeout past the
            // clock's end: that means "never".
            let deadline = self
                .last_line
                .checked_add(idle)
                .unwrap_or_else(|| self.last_line + Duration::from_secs(365 * 24 * 3600));
            let read_client = client_open
                && self.in_flight.len() < MAX_IN_FLIGHT
                && self.in_flight.back() != Some(&Pending::Auth);
            let step = tokio::select! {
                r = client_r.read(&mut client_buf), if read_client => Step::Client(r),
                r = server_r.read(&mut server_buf) => Step::Server(r),
                () = tokio::time::sleep_until(deadline) => Step::Idle,
            };
            let result = match step {
                Step::Client(Ok(0)) => {
                    // Let the server see the close; keep relaying its last replies.
                    client_open = false;
                    let _ = server_w.shutdown().await;
                    continue;
                }
                Step::Client(Ok(n)) => {
                    if let Some(entry) = &self.telemetry {
                        entry.from_client(n);
                    }
                    self.client_lines.push(&client_buf[..n]);
                    bounded(idle, self.drain_client(client_w, server_w)).await
                }
                Step::Server(Ok(0)) => {
                    let _ = client_w.shutdown().await;
                    return Stop::Ended(Ending::ServerClosed);
                }
                Step::Server(Ok(n)) => {
                    if let Some(entry) = &self.telemetry {
                        entry.from_server(n);
                    }
                    self.server_lines.push(&server_buf[..n]);
                    match bounded(idle, self.drain_server(client_w)).await {
                        Ok(true) => return Stop::Passthrough,
                        Ok(false) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                Step::Client(Err(e)) | Step::Server(Err(e)) => {
                    debug!(error = %e, "control connection read failed");
                    return Stop::Ended(Ending::IoError);
                }
                Step::Idle => {
                    // RFC 5382: the control connection sits idle during a long transfer;
                    // wait as long as its data connection lives, and no longer.
                    if self.transfer_running && self.transfer_alive().await {
                        self.last_line = tokio::time::Instant::now();
                        continue;
                    }
                    info!(timeout_s = idle.as_secs(), "idle timeout; closing session");
                    let reply = ftp::render_reply(421, "Idle timeout: closing control connection");
                    let _ = bounded(GOODBYE_TIMEOUT, client_w.write_all(&reply)).await;
                    return Stop::Ended(Ending::IdleTimeout);
                }
            };
            // Whatever the lines handled, no boost outlives them.
            self.boost = None;
            if let Err(e) = result {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    info!(error = %e, "peer stopped reading");
                } else {
                    debug!(error = %e, "control connection write failed");
                }
                return Stop::Ended(if client_open {
                    Ending::IoError
                } else {
                    Ending::ClientClosed
                });
            }
        }
    }

    /// Whether the data connection of the running transfer is alive in the kernel.
    async fn transfer_alive(&self) -> bool {
        for held in self.pinholes.iter().filter(|held| held.used) {
            if self.firewall.connection_alive(held.pinhole).await {
                return true;
            }
        }
        false
    }

    /// Handles every complete line the client has sent.
    async fn drain_client<CW, SW>(
        &mut self,
        client_w: &mut CW,
        server_w: &mut SW,
    ) -> std::io::Result<()>
    where
        CW: AsyncWrite + Unpin,
        SW: AsyncWrite + Unpin,
    {
        while let Some(framed) = self.client_lines.next_line() {
            self.last_line = tokio::time::Instant::now();
            let first = !std::mem::replace(&mut self.client_spoke, true);
            let line = match framed {
                Ok(line) => line,
                // No FTP client opens with a line this long; an HTTP request might, to get
                // past the check below with its request line dropped.
                Err(FrameError::TooLong { .. }) if first => {
                    let reply = self.refuse(&Refusal::NotFtp);
                    client_w.write_all(&reply).await?;
                    return Err(std::io::Error::other(
                        "an over-long first line on the FTP control port",
                    ));
                }
                Err(FrameError::TooLong { max, .. }) => {
                    warn!(max, "client sent an over-long line; dropped");
                    let reply = ftp::render_reply(
                        500,
                        &format!("Command line too long (limit {max} bytes); dropped"),
                    );
                    self.answer(client_w, reply).await?;
                    continue;
                }
            };
            // NAT slipstreaming: a browser made to POST to an FTP port would have the body's
            // lines (a PORT) taken for commands. An FTP session never starts like HTTP.
            if first && looks_like_http(&line.text()) {
                let reply = self.refuse(&Refusal::NotFtp);
                client_w.write_all(&reply).await?;
                return Err(std::io::Error::other(
                    "an HTTP request on the FTP control port",
                ));
            }
            match self.on_command(&line).await {
                Verdict::Forward(bytes, pending) => {
                    self.in_flight.push_back(pending);
                    server_w.write_all(&bytes).await?;
                }
                Verdict::Answer(refusal) => {
                    let reply = self.refuse(&refusal);
                    self.answer(client_w, reply).await?;
                }
            }
            // The PORT/EPRT that waited for its pinhole is out.
            self.boost = None;
        }
        Ok(())
    }

    /// Sends a reply of the ALG's own: at once when the client waits for nothing else, else
    /// behind the server's replies to the commands sent before it.
    async fn answer<CW>(&mut self, client_w: &mut CW, reply: Vec<u8>) -> std::io::Result<()>
    where
        CW: AsyncWrite + Unpin,
    {
        if self.greeted && self.in_flight.is_empty() && !self.replies.in_multiline() {
            return client_w.write_all(&reply).await;
        }
        self.in_flight.push_back(Pending::Local);
        self.local_replies.push_back(reply);
        Ok(())
    }

    /// Sends the ALG's own replies whose turn has come (see [`Session::answer`]).
    async fn flush_local<CW>(&mut self, client_w: &mut CW) -> std::io::Result<()>
    where
        CW: AsyncWrite + Unpin,
    {
        if !self.greeted || self.replies.in_multiline() {
            return Ok(());
        }
        while self.in_flight.front() == Some(&Pending::Local) {
            self.in_flight.pop_front();
            if let Some(reply) = self.local_replies.pop_front() {
                client_w.write_all(&reply).await?;
            }
        }
        Ok(())
    }

    /// Decides what to do with one client line.
    async fn on_command(&mut self, line: &Line) -> Verdict {
        let text = line.text();
        // The server gets the text checked here, re-rendered (see `ftp::render_command`); a
        // line it might split differently is not sent at all.
        if !ftp::is_plain_command(&text) {
            return Verdict::Answer(Refusal::BadVerb);
        }
        let verb = ftp::command_verb(&text).to_ascii_uppercase();
        let command = match ftp::parse_command(&text) {
            Ok(command) => command,
            Err(e) => return Verdict::Answer(Refusal::Malformed { verb, error: e }),
        };
        let is_data_command = !matches!(command, Command::Other | Command::Auth(_));
        if !self.policy.permits(&verb, is_data_command) {
            return Verdict::Answer(Refusal::Denied { verb });
        }
        if is_data_command && line.terminator() == Terminator::BareLf {
            return Verdict::Answer(Refusal::BareLf { verb });
        }
        match command {
            Command::Port(announced) => self.on_active(SocketAddr::V4(announced), false).await,
            Command::Eprt(announced) => self.on_active(announced, true).await,
            Command::Pasv if self.epsv_all => Verdict::Answer(Refusal::EpsvAll { verb: "PASV" }),
            Command::Pasv if !self.ends.client.is_ipv4() => {
                Verdict::Answer(Refusal::Ipv4Only { verb: "PASV" })
            }
            Command::Pasv => {
                self.release_superseded().await;
                Verdict::Forward(ftp::render_command(&text), Pending::Pasv)
            }
            // RFC 2428: once the server accepts it, only EPSV; we refuse the others ourselves.
            Command::Epsv(EpsvArg::All) => {
                Verdict::Forward(ftp::render_command(&text), Pending::EpsvAll)
            }
            Command::Epsv(_) => {
                self.release_superseded().await;
                Verdict::Forward(ftp::render_command(&text), Pending::Epsv)
            }
            Command::Lprt | Command::Lpsv => Verdict::Answer(Refusal::LongAddress { verb }),
            Command::Auth(_) => match self.policy.tls {
                TlsPolicy::Refuse => Verdict::Answer(Refusal::Tls),
                TlsPolicy::Passthrough => {
                    info!("AUTH forwarded under the TLS passthrough policy");
                    Verdict::Forward(ftp::render_command(&text), Pending::Auth)
                }
            },
            Command::Other if verb == b"SYST" => {
                Verdict::Forward(ftp::render_command(&text), Pending::Syst)
            }
            Command::Other if verb == b"ABOR" => {
                Verdict::Forward(ftp::render_command(&text), Pending::Abor)
            }
            Command::Other => Verdict::Forward(ftp::render_command(&text), Pending::Other),
        }
    }

    /// PORT/EPRT: check, lease a port where the topology needs one, open the pinhole, and
    /// only then release the (rewritten) command.
    async fn on_active(&mut self, announced: SocketAddr, extended: bool) -> Verdict {
        let verb = if extended { "EPRT" } else { "PORT" };
        if self.epsv_all {
            return Verdict::Answer(Refusal::EpsvAll { verb });
        }
        if !extended && !self.ends.client.is_ipv4() {
            return Verdict::Answer(Refusal::Ipv4Only { verb });
        }
        let client = self.ends.client.ip();
        if announced.is_ipv4() != client.to_canonical().is_ipv4() {
            return Verdict::Answer(Refusal::Family {
                verb,
                expected: if client.to_canonical().is_ipv4() {
                    1
                } else {
                    2
                },
            });
        }
        if announced.ip().to_canonical() != client.to_canonical() {
            return Verdict::Answer(Refusal::Bounce {
                verb,
                announced: announced.ip(),
                client,
            });
        }
        if announced.port() < 1024 {
            return Verdict::Answer(Refusal::PrivilegedPort {
                verb,
                port: announced.port(),
            });
        }
        self.release_superseded().await;
        if let Some(refusal) = self.make_room().await {
            return Verdict::Answer(refusal);
        }
        let mut attempts = 0;
        let (plan, seq) = loop {
            let leased = match self.topology.active_lease_owner(&self.ends) {
                Some(owner) => match self.ports.allocate(owner) {
                    Some(port) => Some(port),
                    None => return Verdict::Answer(Refusal::PortsExhausted),
                },
                None => None,
            };
            let plan = self.topology.active(&self.ends, announced, leased);
            match self.open(plan, false).await {
                Ok(seq) => break (plan, seq),
                Err(error) if attempts < PORT_ATTEMPTS && port_taken(&error, leased.is_some()) => {
                    attempts += 1;
                    info!(%error, attempts, "gateway port busy; leasing another");
                }
                Err(error) => {
                    return Verdict::Answer(Refusal::Firewall {
                        error: error.to_string(),
                    });
                }
            }
        };
        // Always written anew, also when the address stays: the server reads exactly what
        // was checked (no leading zeros a server might read as octal, no telnet bytes).
        let bytes = match plan.announce.unwrap_or(announced) {
            SocketAddr::V4(v4) if !extended => ftp::render_port(v4),
            target => ftp::render_eprt(target),
        };
        // One line per transfer is for debugging; the session's end sums them up.
        debug!(
            command = verb,
            client = %announced,
            announced = %plan.announce.unwrap_or(announced),
            pinhole = %plan.pinhole,
            "active data channel: pinhole open, command released"
        );
        Verdict::Forward(bytes, Pending::Active(seq))
    }

    /// Handles every complete line the server has sent; `Ok(true)` when the server accepted
    /// AUTH under the passthrough policy and the relay must switch to raw bytes.
    async fn drain_server<CW>(&mut self, client_w: &mut CW) -> std::io::Result<bool>
    where
        CW: AsyncWrite + Unpin,
    {
        while let Some(framed) = self.server_lines.next_line() {
            self.last_line = tokio::time::Instant::now();
            let line = match framed {
                Ok(line) => line,
                // Cut, not dropped: its first bytes (code and separator) place it in its
                // reply, so the replies stay matched to the commands they answer.
                Err(FrameError::TooLong { max, head }) => {
                    warn!(
                        max,
                        "server sent an over-long reply line; forwarded cut to the limit"
                    );
                    let mut raw = head;
                    raw.extend_from_slice(b"\r\n");
                    Line::from_raw(raw)
                }
            };
            let starts_reply = !self.replies.in_multiline();
            let event = match self.replies.push_line(line) {
                Ok(event) => event,
                Err(e) => {
                    warn!(error = %e, "server reply refused; the rest of it is dropped");
                    client_w
                        .write_all(&ftp::render_reply(451, &format!("ftp-alg: {e}")))
                        .await?;
                    if !self.replies.in_multiline() {
                        // That was the refused reply's last line: it answered its command.
                        self.refused_reply_ended().await;
                        self.flush_local(client_w).await?;
                    }
                    continue;
                }
            };
            match event {
                ReplyEvent::Pending | ReplyEvent::Dropped { end: false } => {}
                ReplyEvent::Dropped { end: true } => self.refused_reply_ended().await,
                ReplyEvent::Forward(line) => {
                    if starts_reply {
                        self.masking = self.mask_for_next_reply();
                    }
                    let completes = !self.replies.in_multiline();
                    let code = reply_code(line.raw());
                    let answered = if completes {
                        self.track_reply(code)
                    } else {
                        None
                    };
                    // Before the reply goes out: the client's next command may rely on it.
                    self.on_answered(answered, code).await;
                    match self.masking {
                        None => client_w.write_all(line.raw()).await?,
                        Some(mask) if completes => {
                            self.masking = None;
                            if let Some(code) = code {
                                client_w.write_all(&masked_reply(mask, code)).await?;
                            }
                        }
                        Some(_) => {}
                    }
                    if answered == Some(Pending::Auth) && code == Some(234) {
                        return Ok(true);
                    }
                }
                ReplyEvent::Complete(reply) => {
                    let expected = self.track_reply(reply.code());
                    // A 227/229 answering a PORT/EPRT or EPSV ALL (a broken or hostile server)
                    // settles it like any reply: as the client will read it, a 425 where
                    // reverse mode replaces it.
                    let unsolicited = !answers_passive(reply.code(), expected);
                    let seen = if unsolicited && self.topology == Topology::Reverse {
                        Some(425)
                    } else {
                        reply.code()
                    };
                    self.on_answered(expected, seen).await;
                    let bytes = self.on_passive_reply(&reply, expected).await;
                    client_w.write_all(&bytes).await?;
                    // The 227/229 that waited for its pinhole is out.
                    self.boost = None;
                }
            }
            if !self.transfer_running {
                self.release_used().await;
            }
            self.flush_local(client_w).await?;
        }
        Ok(false)
    }

    /// A reply refused as too long (answered with a `451`) has ended: it answered its command.
    async fn refused_reply_ended(&mut self) {
        let answered = self.track_reply(Some(451));
        self.on_answered(answered, Some(451)).await;
    }

    /// What the server's answer to a PORT/EPRT or `EPSV ALL` settles.
    async fn on_answered(&mut self, answered: Option<Pending>, code: Option<u16>) {
        let accepted = code.is_some_and(|code| (200..300).contains(&code));
        match answered {
            Some(Pending::Active(seq)) if accepted => {
                self.release_replaced().await;
                for held in self.pinholes.iter_mut().filter(|held| held.seq == seq) {
                    held.confirmed = true;
                }
            }
            // The server refused the address: nothing will connect through its pinhole.
            Some(Pending::Active(seq)) => self.release_where(|held| held.seq == seq).await,
            Some(Pending::EpsvAll) if accepted => self.epsv_all = true,
            _ => {}
        }
    }

    /// Closes the pinholes of transfers that have ended (consumed, or never used by a
    /// transfer that is over), so a session can run any number of transfers.
    async fn release_used(&mut self) {
        self.release_where(|held| held.used).await;
    }

    /// Removes one pinhole from the kernel (a no-op if its connection consumed it) and
    /// returns its port lease: after the usual quarantine once the kernel confirmed the
    /// removal; else (the close failed, or was cut off by the relay step's bound) after the
    /// pinhole timeout, when the element is gone on its own.
    async fn release(&self, held: &Held) {
        let mut lease = LeaseGuard {
            ports: &self.ports,
            lease: held.lease,
            rest: self.policy.pinhole_timeout,
        };
        // Counted first: a close cut off by the relay step's bound still happens.
        if let Some(entry) = &self.telemetry {
            entry.pinhole_closed(&held.pinhole);
        }
        match self.firewall.close(held.pinhole).await {
            Ok(()) => lease.rest = Duration::ZERO,
            Err(e) => {
                warn!(pinhole = %held.pinhole, error = %e, "could not remove pinhole");
                if let Some(entry) = &self.telemetry {
                    entry.pinhole_close_failed();
                }
            }
        }
    }

    /// Whether the reply that starts now is one the policy replaces.
    fn mask_for_next_reply(&self) -> Option<Mask> {
        if !self.greeted {
            return self.policy.mask_banner.then_some(Mask::Greeting);
        }
        (self.policy.mask_syst && self.in_flight.front() == Some(&Pending::Syst))
            .then_some(Mask::Syst)
    }

    /// Updates the in-flight queue with one complete reply; returns what it answered.
    fn track_reply(&mut self, code: Option<u16>) -> Option<Pending> {
        let code = code?;
        if code < 200 {
            if (100..200).contains(&code) && self.greeted {
                self.transfer_running = true;
                // Each PASV/PORT serves one transfer: the pinholes the server has taken now
                // belong to it (not a PORT pipelined behind it that the server has yet to
                // read).
                for held in self.pinholes.iter_mut().filter(|held| held.confirmed) {
                    held.used = true;
                }
            }
            return None;
        }
        // What a server may answer mid-transfer (STAT, NOOP, HELP) does not end the transfer;
        // its final reply (226/250, or an error) does.
        if !matches!(code, 200 | 211..=214) {
            self.transfer_running = false;
        }
        if !self.greeted {
            // The greeting (220, or 421/120 …) answers no command.
            self.greeted = true;
            return None;
        }
        let front = *self.in_flight.front()?;
        if front == Pending::Local {
            // Nothing the server was asked is waiting: an unsolicited reply (a 421 before a
            // close), which must not take the place of the ALG's own reply.
            return None;
        }
        if front == Pending::Abor && code == 426 {
            // The aborted transfer's own reply; ABOR's 226 follows.
            return Some(front);
        }
        self.in_flight.pop_front()
    }

    /// A complete 227/229: interpret it only if it answers our PASV/EPSV.
    async fn on_passive_reply(&mut self, reply: &Reply, answered: Option<Pending>) -> Vec<u8> {
        let code = reply.code();
        if !answers_passive(code, answered) {
            // A published server's address is its private one: never shown to the outside.
            if self.topology == Topology::Reverse {
                warn!(
                    code,
                    "unsolicited 227/229 from the published server; replaced with 425"
                );
                return ftp::render_reply(
                    425,
                    "Can't open data connection: the server sent a passive reply nobody asked for",
                );
            }
            warn!(
                code,
                "unsolicited 227/229 from the server; forwarded without a pinhole"
            );
            return reply.raw();
        }
        self.release_replaced().await;
        let server = self.ends.server.ip();
        let (announced_ip, port) = if code == Some(227) {
            match ftp::parse_227(reply) {
                Ok(addr) => (Some(IpAddr::V4(*addr.ip())), addr.port()),
                Err(e) => {
                    return self.refuse(&Refusal::MalformedReply {
                        code: 227,
                        error: e.to_string(),
                    });
                }
            }
        } else {
            match ftp::parse_229(reply) {
                Ok(port) => (None, port),
                Err(e) => {
                    return self.refuse(&Refusal::MalformedReply {
                        code: 229,
                        error: e.to_string(),
                    });
                }
            }
        };
        let mut foreign = false;
        if let Some(ip) = announced_ip
            && ip != server
        {
            match self.policy.pasv_address {
                PasvAddressPolicy::Refuse => {
                    return self.refuse(&Refusal::ForeignPassive {
                        announced: ip,
                        server,
                    });
                }
                PasvAddressPolicy::Rewrite => {
                    warn!(
                        announced = %ip,
                        server = %server,
                        "server announced another address in 227; rewriting to the server's"
                    );
                    foreign = true;
                }
            }
        }
        if port < 1024 {
            return self.refuse(&Refusal::PrivilegedPassivePort { port });
        }
        if let Some(refusal) = self.make_room().await {
            return self.refuse(&refusal);
        }
        let leased = match self.topology.passive_lease_owner(&self.ends) {
            Some(owner) => match self.ports.allocate(owner) {
                Some(port) => Some(port),
                None => return self.refuse(&Refusal::PortsExhausted),
            },
            None => None,
        };
        let plan = self.topology.passive(&self.ends, port, leased);
        if let Err(error) = self.open(plan, true).await {
            return self.refuse(&Refusal::Firewall {
                error: error.to_string(),
            });
        }
        debug!(
            code,
            pinhole = %plan.pinhole,
            "passive data channel: pinhole open, reply released"
        );
        let announce = match plan.announce {
            Some(public) => Some(public),
            None if foreign => Some(SocketAddr::new(server, port)),
            None => None,
        };
        match (code, announce) {
            (Some(227), Some(SocketAddr::V4(v4))) => ftp::rewrite_227(reply, v4),
            (Some(229), Some(public)) if public.port() != port => {
                ftp::rewrite_229(reply, public.port())
            }
            _ => reply.raw(),
        }
    }

    /// Releases pinholes the kernel has expired by now and refuses when still at the limit.
    /// An expired pinhole is still closed through the firewall: the kernel element is gone,
    /// but the firewall counts the sessions holding each element, and that count must drop.
    async fn make_room(&mut self) -> Option<Refusal> {
        let timeout = self.policy.pinhole_timeout;
        // The pinhole of a running transfer stays however old: the idle timeout asks it
        // whether the transfer lives, and its lease must not go to another session yet.
        let running = self.transfer_running;
        let expired = |held: &Held| held.opened.elapsed() >= timeout && !(running && held.used);
        self.release_where(expired).await;
        (self.pinholes.len() >= self.policy.max_pinholes).then_some(Refusal::TooManyPinholes {
            max: self.policy.max_pinholes,
        })
    }

    /// A new PORT/EPRT/PASV/EPSV with nothing else in flight: the server will replace its
    /// data address before it reads anything else, so the pinholes it confirmed that no
    /// transfer used end now (their port leases too, before this command needs one). With
    /// commands in flight (a transfer command pipelined ahead) they wait for the server's
    /// answer (see [`Session::on_answered`]).
    async fn release_superseded(&mut self) {
        if self.in_flight.is_empty() {
            self.release_replaced().await;
        }
    }

    /// The server has taken a new data address (RFC 959: it replaces the one before): the
    /// pinholes it had confirmed and no transfer used end. Not those it has yet to confirm
    /// (a PORT pipelined behind the new command).
    async fn release_replaced(&mut self) {
        self.release_where(|held| !held.used && held.confirmed)
            .await;
    }

    /// Closes the held pinholes `gone` picks.
    async fn release_where(&mut self, gone: impl Fn(&Held) -> bool) {
        if !self.pinholes.iter().any(&gone) {
            return;
        }
        let (done, kept): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.pinholes)
            .into_iter()
            .partition(|held| gone(held));
        self.pinholes = kept;
        self.closing.extend(done);
        self.finish_closing().await;
    }

    /// Closes the pinholes on their way out. Those not started yet wait in
    /// [`Session::closing`], not in a local list: a relay step cut off by its bound leaves
    /// them there for [`Session::close_all`] instead of dropping them with their port leases.
    /// The one cut off in the middle is not asked again: the firewall has its removal from the
    /// first poll on (a second close would drop a co-holder's count), and its lease guard
    /// returns the port.
    async fn finish_closing(&mut self) {
        while let Some(held) = self.closing.pop() {
            self.release(&held).await;
        }
    }

    /// Opens the plan's pinhole and returns its [`Held::seq`]; on failure its lease is
    /// returned, also when this future is dropped mid-install (the relay step that runs it
    /// is bounded by the idle timeout). `confirmed`: the server already named this data
    /// address (a 227/229).
    async fn open(&mut self, plan: DataPlan, confirmed: bool) -> Result<u64, FirewallError> {
        let mut lease = LeaseGuard {
            ports: &self.ports,
            lease: plan.lease,
            rest: Duration::ZERO,
        };
        let started = Instant::now();
        // Real-time from here until the line that waits for this pinhole is released (the
        // boost's own system calls count in the install latency). The boost is the thread's:
        // in the rare case that the install has to queue for the firewall thread (every
        // netlink socket busy), the thread's other sessions run raised until it is answered.
        if self.policy.realtime_boost > 0 && self.boost.is_none() {
            match Boost::start(self.policy.realtime_boost) {
                Ok(boost) => self.boost = Some(boost),
                Err(e) => {
                    // Checked at start, so this means the privilege went away (a cgroup
                    // without a real-time budget, a changed policy): say it once, loudly.
                    static WARNED: std::sync::atomic::AtomicBool =
                        std::sync::atomic::AtomicBool::new(false);
                    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        debug!(error = %e, "pinhole install without a real-time boost");
                    } else {
                        warn!(
                            error = %e,
                            "runtime.realtime_priority: cannot raise this session's thread for its \
                             pinhole install; installs run at normal priority (logged once)"
                        );
                    }
                }
            }
        }
        // Dropped from here on (the relay step's bound), the add may still reach the kernel:
        // the port then rests until that element's timeout.
        lease.rest = self.policy.pinhole_timeout;
        let opened = self
            .firewall
            .open(plan.pinhole, self.policy.pinhole_timeout)
            .await;
        // Answered: a refused add left nothing behind, so the usual quarantine will do;
        // unless the port is still mapped in the kernel (to another client, until that
        // element's timeout), or the add's fate is unknown.
        lease.rest = match &opened {
            Err(FirewallError::Conflict { set }) if set.starts_with("dnat_to") => {
                self.policy.pinhole_timeout
            }
            Err(FirewallError::Protocol(_) | FirewallError::Io { .. } | FirewallError::Stopped) => {
                self.policy.pinhole_timeout
            }
            _ => Duration::ZERO,
        };
        match opened {
            Ok(()) => {
                let latency = started.elapsed();
                debug!(
                    pinhole = %plan.pinhole,
                    micros = latency.as_micros() as u64,
                    "pinhole acknowledged"
                );
                if let Some(entry) = &self.telemetry {
                    entry.pinhole_opened(plan.pinhole, latency, self.policy.pinhole_timeout);
                }
                // The lease is the held pinhole's now.
                lease.keep();
                let seq = self.next_seq;
                self.next_seq += 1;
                self.pinholes.push(Held {
                    pinhole: plan.pinhole,
                    opened: Instant::now(),
                    lease: plan.lease,
                    seq,
                    confirmed,
                    used: false,
                });
                Ok(seq)
            }
            // The guard returns the lease.
            Err(error) => Err(error),
        }
    }

    async fn close_all(&mut self) {
        let held = std::mem::take(&mut self.pinholes);
        self.closing.extend(held);
        self.finish_closing().await;
    }
}

/// A session whose task panicked (a bug) still takes its pinholes along: they are closed
/// from a task of their own, and their port leases rest for the pinhole timeout. (A session
/// dropped otherwise without ending is one the daemon drops at exit, with the whole table.)
impl<F: Firewall> Drop for Session<F> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut left = std::mem::take(&mut self.pinholes);
        left.append(&mut self.closing);
        if left.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        warn!(
            pinholes = left.len(),
            "session task panicked; closing its pinholes"
        );
        let firewall = self.firewall.clone();
        let ports = self.ports.clone();
        let rest = self.policy.pinhole_timeout;
        runtime.spawn(async move {
            for held in left {
                if let Err(e) = firewall.close(held.pinhole).await {
                    warn!(pinhole = %held.pinhole, error = %e, "could not remove pinhole");
                }
                if let Some((owner, port)) = held.lease {
                    ports.release_resting(owner, port, rest);
                }
            }
        });
    }
}

/// Whether an active pinhole failed because of its gateway port, so that another would do:
/// the port's previous data connection is still running, or (`leased`) its DNAT mapping is
/// still in the kernel (a close that failed).
fn port_taken(error: &FirewallError, leased: bool) -> bool {
    match error {
        FirewallError::PortInUse { .. } => true,
        FirewallError::Conflict { set } => leased && set.starts_with("dnat_to"),
        _ => false,
    }
}

/// Whether a 227/229 answers this client's PASV/EPSV (else it is unsolicited).
fn answers_passive(code: Option<u16>, answered: Option<Pending>) -> bool {
    matches!(
        (code, answered),
        (Some(227), Some(Pending::Pasv)) | (Some(229), Some(Pending::Epsv))
    )
}

/// Returns a port lease when dropped: a pinhole install that fails or is cancelled (then
/// the port rests for `rest`).
struct LeaseGuard<'a> {
    ports: &'a PortAllocator,
    lease: Option<(IpAddr, u16)>,
    rest: Duration,
}

impl LeaseGuard<'_> {
    /// The install went through: the lease stays leased.
    fn keep(mut self) {
        self.lease = None;
    }
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if let Some((owner, port)) = self.lease {
            self.ports.release_resting(owner, port, self.rest);
        }
    }
}

/// Runs a step that writes to a peer, for at most `limit`: a peer that stops reading (a full
/// receive window, answered zero-window probes) would otherwise hold its session, and the
/// session's slots, past every timeout.
async fn bounded<T>(
    limit: Duration,
    step: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, step).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "a peer read nothing for {} s; closing the session",
                limit.as_secs()
            ),
        ))
    })
}

/// Whether a line is an HTTP request line: `METHOD target HTTP/n…`, whatever the method
/// (`fetch()` lets a page send custom ones, such as `NOOP`).
fn looks_like_http(text: &[u8]) -> bool {
    let mut words = text
        .trim_ascii()
        .split(|b| *b == b' ')
        .filter(|w| !w.is_empty());
    let (Some(_method), Some(_target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return false;
    };
    version.len() >= 6
        && version.get(..5).is_some_and(|v| v == b"HTTP/")
        && version.get(5).is_some_and(u8::is_ascii_digit)
}

/// The stand-in for a masked reply: same code, neutral text.
fn masked_reply(mask: Mask, code: u16) -> Vec<u8> {
    let text = match (mask, code) {
        (Mask::Greeting, 220) => "FTP server ready",
        (Mask::Syst, 215) => "UNIX Type: L8",
        (Mask::Greeting, _) => "Service not available",
        (Mask::Syst, _) => "SYST not available",
    };
    ftp::render_reply(code, text)
}

/// The reply code at the start of a raw line, if it has one.
fn reply_code(raw: &[u8]) -> Option<u16> {
    let digits = raw.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // A continuation line of a multi-line reply is never passed here (see `drain_server`).
    std::str::from_utf8(digits).ok()?.parse().ok()
}

enum Verdict {
    Forward(Vec<u8>, Pending),
    Answer(Refusal),
}

enum Step {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Idle,
}

#[cfg(test)]
mod tests;

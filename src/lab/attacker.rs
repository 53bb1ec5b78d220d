//! The attacker's side of the lab: a WAN segment with an attacker on it, hostile FTP peers
//! written as small scripts, raw control connections, and looks at the ALG's pinholes.
//!
//! ```text
//!  client ns          gateway ns                      switch ns        server ns
//!  10.0.0.2 ── lan0 10.0.0.1 | wan0 203.0.113.1 ── br0 ─┬─ eth0 203.0.113.2
//!                    route 198.51.100.7 via .66          └─ eth0 203.0.113.66 + 198.51.100.7/32
//!                                                           attacker ns, default via .1
//! ```
//!
//! [`AttackLab`] is a [`ClientNatLab`] whose WAN veth pair is replaced by a bridge in a
//! fourth namespace, so that an attacker sits on the same segment as the server and the
//! gateway's WAN side. The attacker also owns the "third host" 198.51.100.7, which the gateway
//! routes via it: a path the ALG wrongly opened to a third host would be observable there.
//! Everything stays inside the lab's namespaces.
//!
//! - [`ScriptedServer`]: a tiny FTP server (std sockets, one thread per connection) that
//!   answers each complete line with whatever its script says, and records every byte the ALG
//!   forwarded to it.
//! - [`Control`]: a raw control connection from any namespace: arbitrary bytes out, replies in,
//!   every read bounded.
//! - [`connect_in`], [`listen_in`], [`accept_within`]: sockets made inside a namespace (a
//!   socket stays in the namespace it was created in, whichever thread uses it later).
//! - [`counter_packets`], [`pinhole_elements`], [`all_pinhole_elements`]: the ALG's named
//!   counters and its sets/maps, element by element.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use super::error::{LabError, Result};
use super::netns::Netns;
use super::nft::{ALG_PINHOLE_OBJECTS, ALG_TABLE, list_json};
use super::raw_client::Reply;
use super::topology::{ClientNatLab, ClientNatOptions, GATEWAY_WAN_IP, SERVER_IP, WAN_IF};

/// The attacker's address on the WAN segment.
pub const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// A third host (neither client, gateway nor server), owned by the attacker; the gateway
/// routes it via the attacker.
pub const THIRD_HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A client-NAT lab with an attacker on the WAN segment.
#[derive(Debug)]
pub struct AttackLab {
    /// The client, gateway and server (see [`ClientNatLab`]).
    pub lab: ClientNatLab,
    /// The attacker: 203.0.113.66/24 and 198.51.100.7/32 on `eth0`, default via the gateway.
    pub attacker: Netns,
    /// The WAN segment's bridge `br0`.
    pub switch: Netns,
}

impl Deref for AttackLab {
    type Target = ClientNatLab;

    fn deref(&self) -> &ClientNatLab {
        &self.lab
    }
}

impl AttackLab {
    /// Builds the lab (IPv4 only: `options.ipv6` is refused).
    pub fn build(options: ClientNatOptions) -> Result<Self> {
        if options.ipv6 {
            return Err(LabError::Unsupported(
                "the attack lab's WAN bridge is IPv4-only".into(),
            ));
        }
        let lab = ClientNatLab::build(options)?;
        let attacker = Netns::create(format!("{}-at", lab.tag()))?;
        let switch = Netns::create(format!("{}-sw", lab.tag()))?;
        let built = Self {
            lab,
            attacker,
            switch,
        };
        built.rewire()?;
        Ok(built)
    }

    /// Replaces the gateway–server veth pair by a bridge with three ports.
    fn rewire(&self) -> Result<()> {
        let (gw, sv, at, sw) = (
            &self.lab.gateway,
            &self.lab.server,
            &self.attacker,
            &self.switch,
        );
        // Deleting one end of a veth pair deletes both (the server's eth0 goes too).
        gw.ip(&["link", "del", WAN_IF])?;
        sw.ip(&["link", "add", "br0", "type", "bridge"])?;
        sw.ip(&["link", "set", "br0", "up"])?;
        for (ns, ifname, port) in [
            (gw, WAN_IF, "p-gw"),
            (sv, "eth0", "p-sv"),
            (at, "eth0", "p-at"),
        ] {
            ns.ip(&[
                "link",
                "add",
                ifname,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                sw.name(),
            ])?;
            sw.ip(&["link", "set", port, "master", "br0"])?;
            sw.ip(&["link", "set", port, "up"])?;
        }
        gw.ip(&["addr", "add", "203.0.113.1/24", "dev", WAN_IF])?;
        gw.ip(&["link", "set", WAN_IF, "up"])?;
        sv.ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0"])?;
        sv.ip(&["link", "set", "eth0", "up"])?;

        at.ip(&["addr", "add", "203.0.113.66/24", "dev", "eth0"])?;
        at.ip(&["addr", "add", "198.51.100.7/32", "dev", "eth0"])?;
        at.ip(&["link", "set", "eth0", "up"])?;
        // Routes the tests add through the gateway must stay there (a hairpinning gateway
        // sends ICMP redirects), and ARP asks from the segment address even for packets with
        // a spoofed source.
        at.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.conf.all.accept_redirects=0"])?;
        at.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.conf.all.arp_announce=2"])?;
        at.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.conf.eth0.arp_announce=2"])?;
        at.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
        gw.ip(&["route", "add", "198.51.100.7/32", "via", "203.0.113.66"])?;
        Ok(())
    }

    /// Makes the attacker send its traffic for `dest` through the gateway (instead of straight
    /// over the segment), optionally from the source address `spoof`, which is added to its
    /// `eth0` as a /32 first — the client's own address, say, arriving on the gateway's WAN
    /// interface.
    pub fn route_via_gateway(&self, dest: Ipv4Addr, spoof: Option<Ipv4Addr>) -> Result<()> {
        let dest = format!("{dest}/32");
        let mut args = vec![
            "route",
            "replace",
            &dest,
            "via",
            "203.0.113.1",
            "dev",
            "eth0",
        ];
        let spoof_text;
        if let Some(ip) = spoof {
            spoof_text = ip.to_string();
            let with_prefix = format!("{spoof_text}/32");
            let present = self
                .attacker
                .exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
            if !String::from_utf8_lossy(&present.stdout).contains(&format!(" {with_prefix} ")) {
                self.attacker
                    .ip(&["addr", "add", &with_prefix, "dev", "eth0"])?;
            }
            args.extend(["src", spoof_text.as_str()]);
        }
        self.attacker.ip(&args)?;
        Ok(())
    }
}

/// What a [`ScriptedServer`] does with one complete line (terminator included): the bytes to
/// send back (may be empty, or several replies, or anything at all).
pub type Script = dyn Fn(&[u8]) -> Vec<u8> + Send + Sync;

/// Longest a [`ScriptedServer`] keeps serving, whatever the test does.
const SERVER_LIFETIME: Duration = Duration::from_secs(600);
/// Most connections a [`ScriptedServer`] accepts.
const SERVER_MAX_CONNECTIONS: usize = 512;
/// How often the server's loops look at the stop flag.
const TICK: Duration = Duration::from_millis(20);

/// Per accepted connection, the bytes received on it.
type Recordings = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A scripted FTP server on a std listener inside a namespace.
pub struct ScriptedServer {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    sessions: Recordings,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for ScriptedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedServer")
            .field("addr", &self.addr)
            .field("sessions", &self.sessions().len())
            .finish()
    }
}

impl ScriptedServer {
    /// Listens on `addr` inside `ns`; each connection gets `greeting`, then `script`'s answer
    /// to every complete line (LF-terminated). A connection ends when the peer closes, when
    /// the script's answer starts with `221`, or when the server is dropped.
    pub fn start(
        ns: &Netns,
        addr: SocketAddrV4,
        greeting: &[u8],
        script: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> Result<Self> {
        let listener = listen_in(ns, SocketAddr::V4(addr))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| LabError::io("scripted server listener", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sessions: Recordings = Arc::default();
        let workers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let greeting = greeting.to_vec();
        let accept = {
            let (stop, sessions, workers) = (stop.clone(), sessions.clone(), workers.clone());
            thread::Builder::new()
                .name(format!("scripted-ftp-{addr}"))
                .spawn(move || {
                    let born = Instant::now();
                    let mut accepted = 0;
                    while !stop.load(Ordering::Relaxed)
                        && born.elapsed() < SERVER_LIFETIME
                        && accepted < SERVER_MAX_CONNECTIONS
                    {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                accepted += 1;
                                let record = Arc::new(Mutex::new(Vec::new()));
                                lock(&sessions).push(record.clone());
                                let (stop, script, greeting) =
                                    (stop.clone(), script.clone(), greeting.clone());
                                let worker = thread::spawn(move || {
                                    serve(stream, &greeting, &*script, &record, &stop, born);
                                });
                                lock(&workers).push(worker);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(TICK),
                            Err(_) => thread::sleep(TICK),
                        }
                    }
                })
                .map_err(|e| LabError::io("spawning the scripted server", e))?
        };
        Ok(Self {
            addr,
            stop,
            accept: Some(accept),
            sessions,
            workers,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Per accepted connection, every byte received so far (what the ALG forwarded).
    pub fn sessions(&self) -> Vec<Vec<u8>> {
        lock(&self.sessions)
            .iter()
            .map(|s| lock(s).clone())
            .collect()
    }

    /// Every line received on every connection, in order, terminators included.
    pub fn lines(&self) -> Vec<Vec<u8>> {
        self.sessions()
            .iter()
            .flat_map(|bytes| split_lines(bytes))
            .collect()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for worker in lock(&self.workers).drain(..) {
            let _ = worker.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    greeting: &[u8],
    script: &Script,
    record: &Mutex<Vec<u8>>,
    stop: &AtomicBool,
    born: Instant,
) {
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(TICK)).is_err() || stream.write_all(greeting).is_err() {
        return;
    }
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) && born.elapsed() < SERVER_LIFETIME {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                lock(record).extend_from_slice(&buf[..n]);
                pending.extend_from_slice(&buf[..n]);
                while let Some(at) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=at).collect();
                    let answer = script(&line);
                    if stream.write_all(&answer).is_err() {
                        return;
                    }
                    if answer.starts_with(b"221") {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// Splits bytes into LF-terminated lines (a trailing partial line is kept as the last item).
pub fn split_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |at| at + 1);
        let (line, tail) = rest.split_at(end);
        lines.push(line.to_vec());
        rest = tail;
    }
    lines
}

/// A plain FTP dialogue for a [`ScriptedServer`]: `USER` → 331, `PASS` → 230, `QUIT` → 221,
/// `PASV` → a 227 naming the server itself and `pasv_port`, `EPSV` → 229 with `pasv_port`,
/// everything else → `200 OK`; `answer` is asked first and wins when it returns `Some`.
pub fn plain_ftp(
    pasv_port: u16,
    answer: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static {
    move |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        if let Some(bytes) = answer(text) {
            return bytes;
        }
        let verb = text
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let [h1, h2, h3, h4] = SERVER_IP.octets();
        let reply = match verb.as_str() {
            "USER" => "331 Password please".to_owned(),
            "PASS" => "230 Logged in".to_owned(),
            "QUIT" => "221 Bye".to_owned(),
            "PASV" => format!(
                "227 Entering Passive Mode ({h1},{h2},{h3},{h4},{},{})",
                pasv_port >> 8,
                pasv_port & 0xff
            ),
            "EPSV" => format!("229 Entering Extended Passive Mode (|||{pasv_port}|)"),
            _ => "200 OK".to_owned(),
        };
        format!("{reply}\r\n").into_bytes()
    }
}

/// A queue of canned answers shared between a test and its [`ScriptedServer`] script.
#[derive(Debug, Clone, Default)]
pub struct Canned(Arc<Mutex<VecDeque<Vec<u8>>>>);

impl Canned {
    /// Queues `bytes` as the next answer.
    pub fn push(&self, bytes: impl Into<Vec<u8>>) {
        lock(&self.0).push_back(bytes.into());
    }

    /// The next queued answer, if any.
    pub fn pop(&self) -> Option<Vec<u8>> {
        lock(&self.0).pop_front()
    }
}

/// A raw FTP control connection: any bytes out, replies in, every read bounded.
#[derive(Debug)]
pub struct Control {
    stream: TcpStream,
    pending: Vec<u8>,
    transcript: Vec<String>,
}

/// Bound of a single reply read unless a caller says otherwise.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl Control {
    /// Connects from `ns` to `server` (TCP_NODELAY, so that every write is its own segment);
    /// reads nothing yet.
    pub fn connect(ns: &Netns, server: SocketAddrV4) -> Result<Self> {
        let stream = connect_in(ns, None, SocketAddr::V4(server), Duration::from_secs(5))?
            .map_err(|e| LabError::io(format!("connecting to {server}"), e))?;
        Self::from_stream(stream)
    }

    /// Like [`Control::connect`] from the source address `from` (which must be local in `ns`).
    pub fn connect_from(ns: &Netns, from: IpAddr, server: SocketAddrV4) -> Result<Self> {
        let stream = connect_in(
            ns,
            Some(from),
            SocketAddr::V4(server),
            Duration::from_secs(5),
        )?
        .map_err(|e| LabError::io(format!("connecting to {server} from {from}"), e))?;
        Self::from_stream(stream)
    }

    /// Wraps a connected stream.
    pub fn from_stream(stream: TcpStream) -> Result<Self> {
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| LabError::io("control socket options", e))?;
        Ok(Self {
            stream,
            pending: Vec::new(),
            transcript: Vec::new(),
        })
    }

    /// Connects, reads the greeting (which must be 220) and logs in with `USER`/`PASS`.
    pub fn login(ns: &Netns, server: SocketAddrV4, user: &str, password: &str) -> Result<Self> {
        let mut ctl = Self::connect(ns, server)?;
        let greeting = ctl.read_reply(REPLY_TIMEOUT)?;
        ctl.expect(&greeting, 220, "greeting")?;
        let reply = ctl.cmd(&format!("USER {user}"))?;
        if reply.code == 331 {
            let reply = ctl.cmd(&format!("PASS {password}"))?;
            ctl.expect(&reply, 230, "PASS")?;
        } else {
            ctl.expect(&reply, 230, "USER")?;
        }
        Ok(ctl)
    }

    fn expect(&self, reply: &Reply, code: u16, what: &str) -> Result<()> {
        if reply.code == code {
            Ok(())
        } else {
            Err(LabError::Protocol {
                command: what.into(),
                reply: format!("{}\n--- transcript:\n{}", reply.text, self.transcript()),
            })
        }
    }

    /// The socket (e.g. to set SO_LINGER before dropping it).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends `bytes` as they are, in one write.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.transcript.push(format!(
            "> {}",
            String::from_utf8_lossy(bytes).escape_debug()
        ));
        self.stream
            .write_all(bytes)
            .map_err(|e| LabError::io("writing to the control connection", e))
    }

    /// Sends `bytes` in pieces split at `splits` (ascending offsets), pausing `pause` between
    /// the writes so that each piece travels in its own segment.
    pub fn send_split(&mut self, bytes: &[u8], splits: &[usize], pause: Duration) -> Result<()> {
        let mut from = 0;
        for &at in splits.iter().chain(std::iter::once(&bytes.len())) {
            let piece = bytes.get(from..at).unwrap_or_default();
            if !piece.is_empty() {
                self.send(piece)?;
                thread::sleep(pause);
            }
            from = at;
        }
        Ok(())
    }

    /// Sends `line` + CRLF and reads the reply.
    pub fn cmd(&mut self, line: &str) -> Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.read_reply(REPLY_TIMEOUT)
    }

    /// Sends raw `bytes` and reads one reply.
    pub fn raw_cmd(&mut self, bytes: &[u8]) -> Result<Reply> {
        self.send(bytes)?;
        self.read_reply(REPLY_TIMEOUT)
    }

    /// Reads one complete reply (multi-line aware), waiting at most `timeout`.
    pub fn read_reply(&mut self, timeout: Duration) -> Result<Reply> {
        let deadline = Instant::now() + timeout;
        let first = self.read_line(deadline)?;
        let text_of = |raw: &[u8]| {
            String::from_utf8_lossy(raw)
                .trim_end_matches(['\r', '\n'])
                .to_owned()
        };
        let first_text = text_of(&first);
        let code = reply_code(&first).ok_or_else(|| LabError::Protocol {
            command: "(reply)".into(),
            reply: format!("{first_text:?}\n--- transcript:\n{}", self.transcript()),
        })?;
        let mut text = first_text;
        if first.get(3) == Some(&b'-') {
            let end = format!("{code} ");
            loop {
                let line = self.read_line(deadline)?;
                let line = text_of(&line);
                text.push('\n');
                text.push_str(&line);
                if line.starts_with(&end) {
                    break;
                }
            }
        }
        Ok(Reply { code, text })
    }

    /// Reads until `needle` has arrived (returns everything read up to and including the line
    /// that completed it), waiting at most `timeout`.
    pub fn read_until(&mut self, needle: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let line = self.read_line(deadline)?;
            got.extend_from_slice(&line);
            if got.windows(needle.len()).any(|w| w == needle) {
                return Ok(got);
            }
        }
    }

    /// One LF-terminated line (terminator included), or an error at `deadline` / EOF.
    pub fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>> {
        loop {
            if let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                self.transcript.push(format!(
                    "< {}",
                    String::from_utf8_lossy(&line).trim_end().escape_debug()
                ));
                return Ok(line);
            }
            match self.fill(deadline)? {
                0 => {
                    return Err(LabError::io(
                        "reading a reply",
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "control connection closed (unterminated: {:?})",
                                String::from_utf8_lossy(&self.pending)
                            ),
                        ),
                    ));
                }
                _ => continue,
            }
        }
    }

    /// Reads what arrives until `deadline`: the number of bytes, 0 at EOF; a timeout error
    /// when nothing came.
    fn fill(&mut self, deadline: Instant) -> Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LabError::io(
                "reading a reply",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no complete line in time; have {:?}\n--- transcript:\n{}",
                        String::from_utf8_lossy(&self.pending),
                        self.transcript()
                    ),
                ),
            ));
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| LabError::io("control socket timeout", e))?;
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                self.fill(deadline)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(0),
            Err(e) => Err(LabError::io("reading the control connection", e)),
        }
    }

    /// Waits up to `timeout` for the peer to close; returns what arrived before the close and
    /// when it closed, or `None` if it was still open at the deadline.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<(Vec<u8>, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(0) => return Some((std::mem::take(&mut self.pending), Instant::now())),
                Ok(_) => {}
                Err(_) if Instant::now() >= deadline => return None,
                Err(_) => return Some((std::mem::take(&mut self.pending), Instant::now())),
            }
        }
    }

    /// Reset instead of FIN when dropped (SO_LINGER 0).
    pub fn set_reset_on_drop(&self) -> Result<()> {
        socket2::SockRef::from(&self.stream)
            .set_linger(Some(Duration::ZERO))
            .map_err(|e| LabError::io("SO_LINGER", e))
    }

    /// What was sent and received so far.
    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }
}

fn reply_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Connects from inside `ns` to `to` (from `from` if given), waiting at most `timeout`.
/// The outer error is the lab's (the namespace thread); the inner one is the connect's.
pub fn connect_in(
    ns: &Netns,
    from: Option<IpAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> Result<io::Result<TcpStream>> {
    ns.run_in(move || {
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
        if let Some(ip) = from {
            socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
        }
        socket.connect_timeout(&SockAddr::from(to), timeout)?;
        Ok(TcpStream::from(socket))
    })
}

/// A listener on `addr` inside `ns` (SO_REUSEADDR).
pub fn listen_in(ns: &Netns, addr: SocketAddr) -> Result<TcpListener> {
    ns.run_in(move || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&SockAddr::from(addr))?;
        socket.listen(128)?;
        Ok(TcpListener::from(socket))
    })?
    .map_err(|e| LabError::io(format!("listening on {addr}"), e))
}

/// The next connection on `listener` within `timeout`, if any.
pub fn accept_within(listener: &TcpListener, timeout: Duration) -> Option<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true).ok()?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                return Some((stream, peer));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

/// The packet count of the ALG's named counter `name` (`passive_admitted`, `active_admitted`).
pub fn counter_packets(gateway: &Netns, name: &str) -> Result<u64> {
    named_counter(gateway, ALG_TABLE, name)
}

/// The packet count of the named counter `name` in table `inet table` of `ns`.
pub fn named_counter(ns: &Netns, table: &str, name: &str) -> Result<u64> {
    let json = list_json(ns, "counter", table, name)?;
    let value: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| LabError::Unsupported(format!("nft JSON for counter {name}: {e}")))?;
    value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|item| item["counter"]["packets"].as_u64())
        .ok_or_else(|| LabError::Unsupported(format!("no packet count for {name} in {json}")))
}

/// The elements of the ALG's set or map `kind name`, rendered as nft writes them
/// (`10.0.0.2 . 203.0.113.2 . 30500`; a map element as `key : value`), timeouts left out.
pub fn pinhole_elements(gateway: &Netns, kind: &str, name: &str) -> Result<Vec<String>> {
    Ok(elements_of_json(&list_json(
        gateway, kind, ALG_TABLE, name,
    )?))
}

/// Every element of every pinhole set and map, as `"<name>: <element>"`.
pub fn all_pinhole_elements(gateway: &Netns) -> Result<Vec<String>> {
    let mut all = Vec::new();
    for (kind, name) in ALG_PINHOLE_OBJECTS {
        all.extend(
            pinhole_elements(gateway, kind, name)?
                .into_iter()
                .map(|e| format!("{name}: {e}")),
        );
    }
    Ok(all)
}

/// The elements in an `nft -j list set|map` answer (see [`pinhole_elements`]).
pub fn elements_of_json(json: &str) -> Vec<String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in value["nftables"].as_array().into_iter().flatten() {
        let object = if item["set"].is_object() {
            &item["set"]
        } else {
            &item["map"]
        };
        for elem in object["elem"].as_array().into_iter().flatten() {
            out.push(render_element(elem));
        }
    }
    out
}

fn render_element(elem: &serde_json::Value) -> String {
    use serde_json::Value;
    match elem {
        // A map element: [key, value].
        Value::Array(pair) => pair
            .iter()
            .map(render_element)
            .collect::<Vec<_>>()
            .join(" : "),
        Value::Object(map) if map.contains_key("elem") => render_element(&map["elem"]),
        Value::Object(map) if map.contains_key("val") => render_element(&map["val"]),
        Value::Object(map) if map.contains_key("concat") => map["concat"]
            .as_array()
            .into_iter()
            .flatten()
            .map(render_element)
            .collect::<Vec<_>>()
            .join(" . "),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The daemon's pid in `gateway` (the process there whose name is `ftp-alg`).
pub fn daemon_pid(gateway: &Netns) -> Option<i32> {
    gateway.pids().into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ftp-alg")
    })
}

/// `VmRSS` of `pid` in KiB (from `/proc/<pid>/status`).
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The gateway port in a rewritten `PORT 203,0,113,1,p1,p2` line, if it names the gateway.
pub fn gateway_port_in(line: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let args = text.strip_prefix("PORT ")?;
    let nums: Vec<u16> = args
        .split(',')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d, p1, p2] = nums.as_slice() else {
        return None;
    };
    let ip = Ipv4Addr::new(
        u8::try_from(*a).ok()?,
        u8::try_from(*b).ok()?,
        u8::try_from(*c).ok()?,
        u8::try_from(*d).ok()?,
    );
    (ip == GATEWAY_WAN_IP).then_some(p1 * 256 + p2)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_rendered_from_nft_json() {
        let set = r#"{"nftables": [{"metainfo": {}}, {"set": {"name": "s", "elem": [{"elem": {"val": {"concat": ["10.0.0.2", "203.0.113.2", 30500]}, "timeout": 30, "expires": 29}}, {"concat": ["10.0.0.3", "203.0.113.2", 30501]}]}}]}"#;
        assert_eq!(
            elements_of_json(set),
            vec![
                "10.0.0.2 . 203.0.113.2 . 30500".to_owned(),
                "10.0.0.3 . 203.0.113.2 . 30501".to_owned()
            ]
        );
        let map = r#"{"nftables": [{"map": {"name": "m", "elem": [[{"elem": {"val": {"concat": ["203.0.113.2", "203.0.113.1", 40001]}, "timeout": 30}}, {"concat": ["10.0.0.2", 50001]}]]}}]}"#;
        assert_eq!(
            elements_of_json(map),
            vec!["203.0.113.2 . 203.0.113.1 . 40001 : 10.0.0.2 . 50001".to_owned()]
        );
        assert!(elements_of_json(r#"{"nftables": [{"set": {"name": "s"}}]}"#).is_empty());
    }

    #[test]
    fn lines_and_rewritten_ports_are_read() {
        assert_eq!(
            split_lines(b"A\r\nB\nC"),
            vec![b"A\r\n".to_vec(), b"B\n".to_vec(), b"C".to_vec()]
        );
        assert_eq!(gateway_port_in(b"PORT 203,0,113,1,156,65\r\n"), Some(40001));
        assert_eq!(gateway_port_in(b"PORT 10,0,0,2,156,65\r\n"), None);
        assert_eq!(gateway_port_in(b"NOOP\r\n"), None);
    }

    #[test]
    fn the_plain_dialogue_answers_the_usual_verbs() {
        let script = plain_ftp(30500, |text| {
            (text == "SYST").then(|| b"215 UNIX\r\n".to_vec())
        });
        assert_eq!(script(b"USER x\r\n"), b"331 Password please\r\n");
        assert_eq!(script(b"SYST\r\n"), b"215 UNIX\r\n");
        assert_eq!(
            script(b"PASV\r\n"),
            b"227 Entering Passive Mode (203,0,113,2,119,36)\r\n"
        );
        assert_eq!(script(b"NOOP\r\n"), b"200 OK\r\n");
    }
}

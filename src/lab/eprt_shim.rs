//! A control-channel shim in front of an FTP server that lacks EPRT (libunftp 0.24 implements
//! PORT, PASV and EPSV, not EPRT).
//!
//! It listens where clients expect the server, forwards every byte unchanged except a
//! client's `EPRT |1|a.b.c.d|port|`, which it turns into the equivalent `PORT`, and records every
//! command line it saw — so it is also the witness of which command reached the server side
//! (after the ALG, if one is on the path). It runs in the server's namespace and connects to the
//! real server on the same address, so the server still sees a control connection on its public
//! address (libunftp binds its passive listeners to the control connection's local address).
//!
//! The server must also see the *client's* address as the control connection's peer: libunftp
//! closes any data connection whose peer IP differs from the control connection's. So the
//! shim connects upstream transparently from the client's own address (`IP_TRANSPARENT`), and
//! a policy route inside the server namespace (`ip rule ipproto tcp sport <upstream port>
//! lookup <table>` + `local 0.0.0.0/0 dev lo` in that table) keeps the server's replies to that
//! foreign address on the host instead of sending them out of `eth0`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use super::error::{LabError, Result};
use super::netns::{Netns, NsThread};

/// Longest control line the shim forwards as a line (longer input is passed through as is).
const MAX_LINE: usize = 8192;

/// The shim; stops (and cuts its connections) on drop.
#[derive(Debug)]
pub struct EprtShim {
    listen: SocketAddr,
    stop: Arc<AtomicBool>,
    commands: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<NsThread<()>>,
}

impl EprtShim {
    /// Listens on `listen` inside `ns` and relays to `upstream`.
    pub fn start(ns: &Netns, listen: SocketAddrV4, upstream: SocketAddrV4) -> Result<Self> {
        Self::start_at(ns, SocketAddr::V4(listen), SocketAddr::V4(upstream))
    }

    /// Like [`EprtShim::start`], either family (`listen` and `upstream` of the same one). Over
    /// IPv6 there is no PORT to translate an `EPRT |2|` into: it is forwarded unchanged.
    pub fn start_at(ns: &Netns, listen: SocketAddr, upstream: SocketAddr) -> Result<Self> {
        keep_replies_local(ns, upstream)?;
        let stop = Arc::new(AtomicBool::new(false));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (bound_tx, bound_rx) = mpsc::channel();
        let acceptor = {
            let (stop, commands, connections) = (
                Arc::clone(&stop),
                Arc::clone(&commands),
                Arc::clone(&connections),
            );
            ns.spawn_thread(move || {
                let listener = match TcpListener::bind(listen)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                {
                    Ok(l) => {
                        let _ = bound_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                accept_loop(&listener, upstream, &stop, &commands, &connections);
            })?
        };
        let bound =
            bound_rx
                .recv_timeout(Duration::from_secs(5))
                .map_err(|_| LabError::NotReady {
                    what: format!("EPRT shim on {listen}"),
                    timeout: Duration::from_secs(5),
                    output: String::new(),
                })?;
        bound.map_err(|e| LabError::io(format!("EPRT shim: binding {listen}"), e))?;
        Ok(Self {
            listen,
            stop,
            commands,
            connections,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect (an IPv4 shim; see [`EprtShim::socket_addr`]).
    ///
    /// # Panics
    /// For a shim listening on IPv6.
    pub fn addr(&self) -> SocketAddrV4 {
        match self.listen {
            SocketAddr::V4(addr) => addr,
            SocketAddr::V6(addr) => panic!("the shim listens on IPv6 {addr}: use socket_addr()"),
        }
    }

    /// Where clients connect, either family.
    pub fn socket_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Every command line clients sent, in order (PASS arguments masked).
    pub fn commands(&self) -> Vec<String> {
        self.commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for EprtShim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for conn in self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = conn.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// The policy route that delivers the upstream server's replies to the shim's transparent
/// sockets (idempotent, per family).
fn keep_replies_local(ns: &Netns, upstream: SocketAddr) -> Result<()> {
    let table = upstream.port().to_string();
    let (family, everything) = if upstream.is_ipv4() {
        ("-4", "0.0.0.0/0")
    } else {
        ("-6", "::/0")
    };
    let rules = ns.ip(&[family, "rule", "show", "table", &table])?;
    if String::from_utf8_lossy(&rules.stdout).trim().is_empty() {
        ns.ip(&[
            family, "rule", "add", "pref", "1000", "ipproto", "tcp", "sport", &table, "lookup",
            &table,
        ])?;
        ns.ip(&[
            family, "route", "add", "local", everything, "dev", "lo", "table", &table,
        ])?;
    }
    Ok(())
}

/// A connection to `upstream` whose source is the client's own address.
fn connect_as(client: SocketAddr, upstream: SocketAddr) -> io::Result<TcpStream> {
    let (domain, level, option) = match (client, upstream) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => {
            (socket2::Domain::IPV4, libc::SOL_IP, libc::IP_TRANSPARENT)
        }
        (SocketAddr::V6(_), SocketAddr::V6(_)) => (
            socket2::Domain::IPV6,
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
        ),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "client and server of different address families",
            ));
        }
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid fd, option and a pointer/length to a c_int.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            level,
            option,
            std::ptr::from_ref(&one).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(&SocketAddr::new(client.ip(), 0).into())?;
    socket.connect_timeout(&upstream.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

fn accept_loop(
    listener: &TcpListener,
    upstream: SocketAddr,
    stop: &AtomicBool,
    commands: &Arc<Mutex<Vec<String>>>,
    connections: &Arc<Mutex<Vec<TcpStream>>>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, peer)) => {
                let (commands, connections) = (Arc::clone(commands), Arc::clone(connections));
                // Threads spawned here inherit this thread's namespace.
                thread::spawn(move || {
                    let _ = relay(client, peer, upstream, &commands, &connections);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn relay(
    client: TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
    commands: &Mutex<Vec<String>>,
    connections: &Mutex<Vec<TcpStream>>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = connect_as(peer, upstream)?;
    {
        let mut conns = connections.lock().unwrap_or_else(PoisonError::into_inner);
        conns.push(client.try_clone()?);
        conns.push(server.try_clone()?);
    }
    // Replies go back untouched.
    let (mut from_server, mut to_client) = (server.try_clone()?, client.try_clone()?);
    let replies = thread::spawn(move || {
        let _ = io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let mut to_server = server;
    let mut from_client = BufReader::new(client);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = Read::by_ref(&mut from_client)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let command = text.trim_end_matches(['\r', '\n']);
        commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(mask_password(command));
        match eprt_to_port(command) {
            Some(port) => to_server.write_all(format!("{port}\r\n").as_bytes())?,
            None => to_server.write_all(&line)?,
        }
    }
    let _ = to_server.shutdown(Shutdown::Write);
    let _ = replies.join();
    Ok(())
}

fn mask_password(command: &str) -> String {
    if command.len() >= 4 && command[..4].eq_ignore_ascii_case("PASS") {
        "PASS ****".into()
    } else {
        command.to_owned()
    }
}

/// `EPRT |1|a.b.c.d|port|` (any delimiter, RFC 2428) → `PORT a,b,c,d,p1,p2`; `None` for
/// anything else, which is then forwarded unchanged.
pub(crate) fn eprt_to_port(command: &str) -> Option<String> {
    let (verb, arg) = command.split_once(' ')?;
    if !verb.eq_ignore_ascii_case("EPRT") {
        return None;
    }
    let arg = arg.trim();
    let delimiter = arg.chars().next()?;
    let mut fields = arg.split(delimiter);
    let (empty, family, addr, port, end) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if !empty.is_empty() || family != "1" || !end.is_empty() || fields.next().is_some() {
        return None;
    }
    let addr: Ipv4Addr = addr.parse().ok()?;
    let port: u16 = port.parse().ok()?;
    let [a, b, c, d] = addr.octets();
    Some(format!(
        "PORT {a},{b},{c},{d},{},{}",
        port >> 8,
        port & 0xff
    ))
}

#[cfg(test)]
mod tests {
    use super::eprt_to_port;

    #[test]
    fn eprt_family_1_becomes_the_equivalent_port() {
        assert_eq!(
            eprt_to_port("EPRT |1|203.0.113.1|40001|").as_deref(),
            Some("PORT 203,0,113,1,156,65")
        );
        assert_eq!(
            eprt_to_port("eprt !1!10.0.0.2!1024!").as_deref(),
            Some("PORT 10,0,0,2,4,0")
        );
    }

    #[test]
    fn anything_else_is_left_alone() {
        assert_eq!(eprt_to_port("EPRT |2|::1|40001|"), None);
        assert_eq!(eprt_to_port("EPRT |1|203.0.113.1|70000|"), None);
        assert_eq!(eprt_to_port("PORT 10,0,0,2,4,0"), None);
        assert_eq!(eprt_to_port("EPRT"), None);
    }
}

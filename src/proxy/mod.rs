//! Sockets: the listener that receives redirected control connections, recovery of the
//! original destination, the upstream connection, the session cap and shutdown.
//!
//! This is the only layer that owns sockets; it hands each pair of streams to a
//! [`Session`](crate::session::Session).

mod busy_poll;
mod interfaces;
mod limits;
pub mod metrics;

mod shards;
pub mod status;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::firewall::Firewall;
use crate::ftp;
use crate::session::{Endpoints, Policy, PortAllocator, Session, Topology};
use crate::telemetry::{SessionRefusal, Telemetry};
use busy_poll::Watched;

pub use interfaces::{InterfaceError, first_address, interface_exists, ipv6_supported};
pub use limits::{Admission, ClientLimiter, LogBudget, Rejection};
pub use shards::{Shards, Spawner};

/// A failure of the proxy's own sockets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source} ({})", bind_hint(source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl ProxyError {
    /// The address family is not supported (IPv6 disabled on this host).
    pub fn address_family_unsupported(&self) -> bool {
        match self {
            Self::Bind { source, .. } => source.raw_os_error() == Some(libc::EAFNOSUPPORT),
        }
    }
}

/// What to do about a listener that could not be bound.
fn bind_hint(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EADDRINUSE) => "is another instance running, or the port taken?",
        Some(libc::EACCES) => "a port below 1024 needs CAP_NET_BIND_SERVICE",
        Some(libc::EAFNOSUPPORT) => "this host has that address family disabled",
        _ => "check the listen addresses in the configuration",
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Redirected control connections; the server is their original destination.
    Intercept(Topology),
    /// A published server: every connection goes to `backend`.
    Reverse {
        /// The server behind the gateway.
        backend: SocketAddr,
    },
}

/// What the proxy needs besides its listeners.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Most concurrent sessions.
    pub max_sessions: usize,
    /// Most concurrent sessions per client address.
    pub max_sessions_per_client: usize,
    /// New sessions per second per client address.
    pub new_sessions_per_second_per_client: u32,
    /// IPv6 clients count per prefix of this length.
    pub client_prefix_v6: u8,
    /// Timeout for connecting to the server.
    pub connect_timeout: Duration,
    /// Source address for intercepted IPv4 upstream connections (the WAN address), if fixed.
    pub upstream_source: Option<IpAddr>,
    /// The interface `upstream_source` was read from (`wan_interface` without
    /// `wan_address`): read again when that address is gone (a DHCP or PPPoE renumbering).
    pub wan_interface: Option<String>,
    /// Per-session policy; a new value (SIGHUP) applies to sessions started after it.
    pub policy: watch::Receiver<Arc<Policy>>,
    /// Live sessions and counters.
    pub telemetry: Arc<Telemetry>,
    /// The threads that run the sessions.
    pub threads: Spawner,
    /// Whether the session threads busy-poll after traffic (see `runtime.busy_poll_us`).
    pub busy_poll: bool,
}

/// Binds a listener (IP_FREEBIND, so it may start before its address is up; IPv6 sockets
/// are IPv6-only so that an IPv4 listener on the same port can coexist).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let make = || -> std::io::Result<TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        let sock = SockRef::from(&socket);
        match addr {
            SocketAddr::V4(_) => sock.set_freebind_v4(true)?,
            SocketAddr::V6(_) => {
                sock.set_only_v6(true)?;
                sock.set_freebind_v6(true)?;
            }
        }
        socket.bind(addr)?;
        socket.listen(1024)
    };
    make().map_err(|source| ProxyError::Bind { addr, source })
}

/// Shared state of all listeners.
struct Shared<F> {
    settings: ProxySettings,
    firewall: Arc<F>,
    ports: Arc<PortAllocator>,
    slots: Arc<Semaphore>,
    limiter: Arc<ClientLimiter>,
    /// Log lines for connections refused at admission (see [`LogBudget`]).
    refusal_log: LogBudget,
    next_id: AtomicU64,
    /// The current upstream source (see [`ProxySettings::wan_interface`]).
    upstream_source: std::sync::Mutex<Option<IpAddr>>,
}

impl<F> Shared<F> {
    fn upstream_source(&self) -> Option<IpAddr> {
        *self
            .upstream_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The WAN interface's address now, if it changed since it was last read: the bind to
    /// the old one failed.
    fn renumbered(&self) -> Option<IpAddr> {
        let name = self.settings.wan_interface.as_deref()?;
        let now = match interfaces::first_address(name, false) {
            Ok(now) => now,
            Err(e) => {
                warn!(interface = name, error = %e, "the WAN interface has no IPv4 address now");
                return None;
            }
        };
        let mut current = self
            .upstream_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == Some(now) {
            return None;
        }
        info!(interface = name, old = ?*current, new = %now, "the WAN address changed; using the new one");
        *current = Some(now);
        Some(now)
    }
}

/// Accepts on every listener until `shutdown` turns true, then waits for the running
/// sessions to end (each removes its own pinholes).
pub async fn serve<F: Firewall>(
    listeners: Vec<(TcpListener, Service)>,
    settings: ProxySettings,
    firewall: Arc<F>,
    ports: Arc<PortAllocator>,
    shutdown: watch::Receiver<bool>,
) {
    let settings_source = settings.upstream_source;
    let shared = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(settings.max_sessions)),
        limiter: Arc::new(ClientLimiter::new(
            settings.max_sessions_per_client,
            settings.new_sessions_per_second_per_client,
            settings.client_prefix_v6,
        )),
        refusal_log: LogBudget::new(REFUSAL_LOG_BURST, Duration::from_secs(1)),
        settings,
        firewall,
        ports,
        next_id: AtomicU64::new(1),
        upstream_source: std::sync::Mutex::new(settings_source),
    });
    let mut loops = tokio::task::JoinSet::new();
    for (listener, service) in listeners {
        loops.spawn(accept_loop(
            listener,
            service,
            shared.clone(),
            shutdown.clone(),
        ));
    }
    let mut stopping = shutdown.clone();
    while !*stopping.borrow_and_update() {
        if stopping.changed().await.is_err() {
            break;
        }
    }
    let max = u32::try_from(shared.settings.max_sessions).unwrap_or(u32::MAX);
    let running = max as usize - shared.slots.available_permits().min(max as usize);
    info!(
        sessions = running,
        "no longer accepting; waiting for sessions to end"
    );
    // Every session holds a permit: all permits back means all sessions ended. Until then
    // the listeners answer new connections with a 421 (dropping `loops` closes them).
    let _ = shared.slots.acquire_many(max).await;
    drop(loops);
}

async fn accept_loop<F: Firewall>(
    listener: TcpListener,
    service: Service,
    shared: Arc<Shared<F>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (client, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if id.is_multiple_of(1024) {
            shared.limiter.prune(Instant::now());
        }
        // The gateway's cap first: a client refused because the gateway is full keeps its
        // per-client token for when there is room.
        let admitted = match shared.slots.clone().try_acquire_owned() {
            Ok(permit) => shared
                .limiter
                .admit(peer.ip(), Instant::now())
                .map(|admission| (permit, admission))
                .map_err(Some),
            Err(_) => Err(None),
        };
        let threads = &shared.settings.threads;
        let session_shared = shared.clone();
        let span = info_span!("session", id, client = %peer, server = tracing::field::Empty);
        // The session's thread registers the socket with its own runtime.
        let client = match client.into_std() {
            Ok(client) => client,
            Err(e) => {
                warn!(error = %e, %peer, "cannot hand the connection to a session thread");
                continue;
            }
        };
        threads.spawn(
            async move {
                let shared = session_shared;
                let client = match TcpStream::from_std(client) {
                    Ok(client) => client,
                    Err(e) => {
                        warn!(error = %e, "cannot register the connection on its session thread");
                        return;
                    }
                };
                let _held = match admitted {
                    Ok(held) => held,
                    Err(None) => {
                        shared
                            .settings
                            .telemetry
                            .session_refused(SessionRefusal::MaxSessions);
                        if let Some(not_logged) = shared.refusal_log.take(Instant::now()) {
                            warn!(
                                max = shared.settings.max_sessions,
                                not_logged, "session limit reached; refused"
                            );
                        }
                        refuse(
                            client,
                            "Too many sessions through this gateway; try again later",
                        )
                        .await;
                        return;
                    }
                    Err(Some(rejection)) => {
                        shared.settings.telemetry.session_refused(match rejection {
                            Rejection::Concurrent(_) => SessionRefusal::PerClient,
                            Rejection::Rate(_) => SessionRefusal::Rate,
                        });
                        if let Some(not_logged) = shared.refusal_log.take(Instant::now()) {
                            warn!(%rejection, not_logged, "client over its limit; refused");
                        }
                        refuse(client, &format!("Refused: {rejection}")).await;
                        return;
                    }
                };
                handle(client, peer, id, service, &shared).await;
            }
            .instrument(span),
        );
    }
    draining(&listener).await;
}

/// While running sessions drain: a new connection gets `421` at once instead of a reset
/// (the intercept rule still points here until the table goes).
async fn draining(listener: &TcpListener) {
    let reply = ftp::render_reply(
        421,
        "The FTP gateway is restarting; try again in a few seconds",
    );
    loop {
        match listener.accept().await {
            // A fresh socket's send buffer is empty: the line always fits, nothing waits.
            Ok((client, _)) => {
                let _ = client.try_write(&reply);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn handle<F: Firewall>(
    client: TcpStream,
    peer: SocketAddr,
    id: u64,
    service: Service,
    shared: &Shared<F>,
) {
    let Ok(local) = client.local_addr() else {
        return;
    };
    let (server, topology) = match service {
        Service::Reverse { backend } => (backend, Topology::Reverse),
        Service::Intercept(topology) => match original_destination(&client) {
            // Without a redirect the "original" destination is our own socket.
            Ok(server) if server != local => (server, topology),
            Ok(_) | Err(_) => {
                shared
                    .settings
                    .telemetry
                    .session_refused(SessionRefusal::NotRedirected);
                warn!("connection without a redirected destination (direct to the proxy port?)");
                refuse(
                    client,
                    "This port only serves intercepted FTP connections; connect to your FTP server",
                )
                .await;
                return;
            }
        },
    };
    tracing::Span::current().record("server", tracing::field::display(server));
    // Routed mode keeps the client's own address toward the server.
    let source = match topology {
        Topology::Routed => Some(Source::Transparent(peer.ip())),
        Topology::ClientNat => shared
            .upstream_source()
            // The WAN interface had no address at start: read it now.
            .or_else(|| shared.renumbered())
            .filter(|ip| ip.is_ipv4() == server.is_ipv4())
            .map(Source::Bind),
        Topology::Reverse => None,
    };
    let mut source = source;
    let mut connected = connect(server, source, shared.settings.connect_timeout).await;
    if let (Err(e), Some(Source::Bind(_))) = (&connected, source)
        && e.kind() == std::io::ErrorKind::AddrNotAvailable
        && let Some(now) = shared.renumbered()
    {
        // The address tried last is the one an error names.
        source = Some(Source::Bind(now));
        connected = connect(server, source, shared.settings.connect_timeout).await;
    }
    let upstream = match connected {
        Ok(upstream) => upstream,
        Err(e) => {
            shared
                .settings
                .telemetry
                .session_refused(SessionRefusal::Upstream);
            let text = match source {
                // Not the server's fault: the gateway's own address is missing.
                Some(Source::Bind(addr)) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    warn!(error = %e, %addr, "the WAN address is not an address of this host \
                        (wan_address / wan_interface); no session can reach a server");
                    format!(
                        "Cannot reach the FTP server {server}: this gateway's address {addr} is \
                         not configured on it; tell its administrator"
                    )
                }
                _ => {
                    warn!(error = %e, %server, "server unreachable");
                    if topology == Topology::Reverse {
                        // A published server's private address stays inside.
                        "Cannot reach the FTP server; try again later".to_string()
                    } else {
                        format!("Cannot reach the FTP server {server}: {e}")
                    }
                }
            };
            refuse(client, &text).await;
            return;
        }
    };
    let Ok(upstream_local) = upstream.local_addr() else {
        refuse(client, "Lost the connection to the FTP server").await;
        return;
    };
    control_socket_options(&client);
    control_socket_options(&upstream);
    let ends = Endpoints {
        client: peer,
        client_facing: if topology == Topology::Reverse {
            local
        } else {
            server
        },
        server,
        upstream_local,
    };
    info!(via = %upstream_local, ?topology, "session started");
    let registration = shared
        .settings
        .telemetry
        .register(id, peer, server, topology.name());
    let _enrolled = busy_poll::Enrolled::new();
    let policy = shared.settings.policy.borrow().clone();
    let entry = registration.entry().clone();
    let ending = Session::new(
        ends,
        topology,
        policy,
        shared.firewall.clone(),
        shared.ports.clone(),
    )
    .with_telemetry(entry.clone())
    .run(
        Watched {
            inner: client,
            busy: shared.settings.busy_poll,
        },
        Watched {
            inner: upstream,
            busy: shared.settings.busy_poll,
        },
    )
    .await;
    let (data_channels, bytes_up, bytes_down) = entry.totals();
    info!(
        ?ending,
        data_channels,
        control_bytes_up = bytes_up,
        control_bytes_down = bytes_down,
        "session ended"
    );
}

/// The source of an upstream connection.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Bind to this local address.
    Bind(IpAddr),
    /// Use this (non-local) address with IP_TRANSPARENT.
    Transparent(IpAddr),
}

/// A control connection's socket: lines go out at once (`TCP_NODELAY`), and urgent data stays
/// in the stream (`SO_OOBINLINE`). A client's ABOR comes as `IAC IP`, then `IAC DM` sent
/// urgent (RFC 959 4.1.3); by default the kernel takes that DM byte out of the stream, and
/// `IAC IP IAC ABOR` is left, which reads as `BOR` to the ALG's command policy and to the
/// server's telnet decoding alike. TCP keepalive finds a peer that vanished without a FIN or
/// reset (a client's NAT that timed out, a laptop put to sleep) within [`KEEPALIVE`] plus
/// four probes, and keeps NATs in front of either end from dropping a control connection
/// that sits idle through a long transfer (RFC 5382). Best effort: a socket refusing any of
/// these still works.
fn control_socket_options(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let socket = SockRef::from(stream);
    if let Err(e) = socket.set_out_of_band_inline(true) {
        debug!(error = %e, "cannot keep urgent data inline (SO_OOBINLINE)");
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(KEEPALIVE / 4)
        .with_retries(4);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        debug!(error = %e, "cannot set TCP keepalive on a control connection");
    }
}

/// Connections refused at admission that are logged per second; the rest are counted in the
/// next line's `not_logged` (and always in the refusal metrics).
const REFUSAL_LOG_BURST: u32 = 10;

/// Idle time before a control connection's first keepalive probe.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// The destination the client meant before the redirect (SO_ORIGINAL_DST).
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}

async fn connect(
    server: SocketAddr,
    source: Option<Source>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    match source {
        Some(Source::Bind(ip)) => socket.bind(SocketAddr::new(ip, 0))?,
        Some(Source::Transparent(ip)) => {
            let sock = SockRef::from(&socket);
            match ip {
                IpAddr::V4(_) => sock.set_ip_transparent_v4(true)?,
                IpAddr::V6(_) => sock.set_ip_transparent_v6(true)?,
            }
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        None => {}
    }
    match tokio::time::timeout(timeout, socket.connect(server)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", timeout.as_secs()),
        )),
    }
}

async fn refuse(mut client: TcpStream, text: &str) {
    let reply = ftp::render_reply(421, text);
    if let Err(e) = client.write_all(&reply).await {
        debug!(error = %e, "could not send 421");
    }
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn an_abor_sent_with_urgent_data_reaches_the_session_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        control_socket_options(&accepted);
        // What BSD ftp and lftp send: IAC IP, then IAC DM with the DM urgent, then ABOR.
        let sock = SockRef::from(&client);
        sock.send(b"\xff\xf4\xff").unwrap();
        sock.send_out_of_band(b"\xf2").unwrap();
        sock.send(b"ABOR\r\n").unwrap();
        let mut got = vec![0u8; 10];
        tokio::time::timeout(Duration::from_secs(2), accepted.read_exact(&mut got))
            .await
            .expect("the urgent byte went missing")
            .unwrap();
        assert_eq!(got, b"\xff\xf4\xff\xf2ABOR\r\n");
        let line = crate::ftp::Line::from_raw(got);
        assert_eq!(line.text(), b"ABOR");
    }

    #[test]
    fn a_listener_that_cannot_bind_says_what_to_do() {
        let error = |errno| ProxyError::Bind {
            addr: "[::]:2121".parse().unwrap(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        // IPv6 disabled on the host: the daemon skips the IPv6 listener instead of failing.
        assert!(error(libc::EAFNOSUPPORT).address_family_unsupported());
        assert!(!error(libc::EADDRINUSE).address_family_unsupported());
        for (errno, hint) in [
            (libc::EADDRINUSE, "another instance"),
            (libc::EACCES, "CAP_NET_BIND_SERVICE"),
            (libc::EAFNOSUPPORT, "address family disabled"),
        ] {
            let text = error(errno).to_string();
            assert!(text.contains(hint), "{text}");
        }
    }

    #[tokio::test]
    async fn control_connections_probe_a_silent_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        control_socket_options(&accepted);
        let sock = SockRef::from(&accepted);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE / 4);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        assert!(sock.out_of_band_inline().unwrap());
    }
}

//! Sockets: the listener that receives redirected control connections, recovery of the
//! original destination, the upstream connection, the session cap and shutdown.
//!
//! This is the only layer that owns sockets; it hands each pair of streams to a
//! [`Session`](crate::session::Session).

mod interfaces;
mod limits;

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
use crate::session::{Endpoints, Policy, PortAllocator, Session};

pub use interfaces::{InterfaceError, first_address};
pub use limits::{Admission, ClientLimiter, Rejection};

/// A failure of the proxy's own sockets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source} (is another instance running, or the port taken?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What the proxy needs besides its listener.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Most concurrent sessions.
    pub max_sessions: usize,
    /// Most concurrent sessions per client address.
    pub max_sessions_per_client: usize,
    /// New sessions per second per client address.
    pub new_sessions_per_second_per_client: u32,
    /// Timeout for connecting to the server.
    pub connect_timeout: Duration,
    /// Source address for upstream connections (the gateway's WAN address), if fixed.
    pub upstream_source: Option<IpAddr>,
    /// Per-session policy.
    pub policy: Arc<Policy>,
}

/// Binds the listener (with IP_FREEBIND so it may start before its address is up).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let make = || -> std::io::Result<TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        SockRef::from(&socket).set_freebind_v4(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    make().map_err(|source| ProxyError::Bind { addr, source })
}

/// Accepts intercepted control connections until `shutdown` turns true, then waits for the
/// running sessions to end (each removes its own pinholes).
pub async fn serve<F: Firewall>(
    listener: TcpListener,
    settings: ProxySettings,
    firewall: Arc<F>,
    ports: Arc<PortAllocator>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_sessions));
    let limiter = Arc::new(ClientLimiter::new(
        settings.max_sessions_per_client,
        settings.new_sessions_per_second_per_client,
    ));
    let next_id = AtomicU64::new(1);
    let local = listener.local_addr().ok();
    let mut sessions = tokio::task::JoinSet::new();
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
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        if id.is_multiple_of(1024) {
            limiter.prune(Instant::now());
        }
        let permit = slots.clone().try_acquire_owned();
        let admission = limiter.admit(peer.ip(), Instant::now());
        let settings = settings.clone();
        let firewall = firewall.clone();
        let ports = ports.clone();
        let span = info_span!("session", id, client = %peer, server = tracing::field::Empty);
        sessions.spawn(
            async move {
                let Ok(_permit) = permit else {
                    warn!(
                        max = settings.max_sessions,
                        "session limit reached; refused"
                    );
                    refuse(
                        client,
                        "Too many sessions through this gateway; try again later",
                    )
                    .await;
                    return;
                };
                let _admission = match admission {
                    Ok(admission) => admission,
                    Err(rejection) => {
                        warn!(%rejection, "client over its limit; refused");
                        refuse(client, &format!("Refused: {rejection}")).await;
                        return;
                    }
                };
                handle(client, peer, local, settings, firewall, ports).await;
            }
            .instrument(span),
        );
        // Reap finished sessions so the set does not grow with the total count.
        while sessions.try_join_next().is_some() {}
    }
    info!(
        sessions = sessions.len(),
        "no longer accepting; waiting for sessions to end"
    );
    while sessions.join_next().await.is_some() {}
}

async fn handle<F: Firewall>(
    client: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    settings: ProxySettings,
    firewall: Arc<F>,
    ports: Arc<PortAllocator>,
) {
    let server = match original_destination(&client) {
        Ok(server) if Some(server) != local && server != client.local_addr().unwrap_or(server) => {
            server
        }
        Ok(_) | Err(_) => {
            warn!("connection without a redirected destination (direct to the proxy port?)");
            refuse(
                client,
                "This port only serves intercepted FTP connections; connect to your FTP server",
            )
            .await;
            return;
        }
    };
    tracing::Span::current().record("server", tracing::field::display(server));
    let upstream = match connect(server, &settings).await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(error = %e, "server unreachable");
            refuse(
                client,
                &format!("Cannot reach the FTP server {server}: {e}"),
            )
            .await;
            return;
        }
    };
    let Ok(upstream_local) = upstream.local_addr() else {
        refuse(client, "Lost the connection to the FTP server").await;
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let ends = Endpoints {
        client: peer,
        server,
        upstream_local,
    };
    info!(via = %upstream_local, "session started");
    let ending = Session::new(ends, settings.policy.clone(), firewall, ports)
        .run(client, upstream)
        .await;
    info!(?ending, "session ended");
}

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

async fn connect(server: SocketAddr, settings: &ProxySettings) -> std::io::Result<TcpStream> {
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(source) = settings.upstream_source
        && source.is_ipv4() == server.is_ipv4()
    {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    match tokio::time::timeout(settings.connect_timeout, socket.connect(server)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", settings.connect_timeout.as_secs()),
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

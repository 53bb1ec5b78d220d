//! A tiny non-forking FTP server for the session-churn benchmark (`benches/churn.rs`).
//!
//! One or more tokio current-thread runtimes, each on a thread that joined the server
//! namespace, all accepting on the same control address (`SO_REUSEPORT`). It answers just what
//! a churn session needs: 220 on connect, USER → 331, PASS → 230, SYST → 215, TYPE/NOOP → 200,
//! PASV → 227 (a fresh listener on the control address's IP, the port taken round-robin from a
//! range ≥ 1024), LIST/NLST → 150, [`LISTING`] on the accepted data connection, close, 226,
//! QUIT → 221 and close; anything else → 502. The server closes first on both connections (as
//! an FTP server does), so the TIME_WAIT states stay in the server namespace, not with the
//! client or the gateway's sockets.
//!
//! Bounded: every read, accept and write has a timeout; the accept loops end on
//! [`TinyFtp::stop`] (or drop) and after one hour at the latest.
#![allow(dead_code)] // not every user needs every accessor

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use ftp_alg::lab::{Netns, NsThread};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The listing every LIST returns (the client checks it byte for byte).
pub(crate) const LISTING: &[u8] =
    b"-rw-r--r--    1 ftp      ftp          1024 Jan 01 00:00 churn-a.bin\r\n\
-rw-r--r--    1 ftp      ftp          2048 Jan 01 00:00 churn-b.bin\r\n\
drwxr-xr-x    2 ftp      ftp          4096 Jan 01 00:00 pub\r\n";

/// Timeout of every read, accept and write on the server side.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted command line.
const MAX_LINE: u64 = 512;
/// Hard bound on the server's life.
const MAX_LIFE: Duration = Duration::from_secs(3600);

/// Counters shared by all server threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Control connections accepted.
    pub(crate) accepted: AtomicU64,
    /// Listings sent completely (226 written).
    pub(crate) listings: AtomicU64,
    /// Sessions that ended with QUIT → 221.
    pub(crate) quits: AtomicU64,
    /// Sessions that ended with an I/O error or a timeout.
    pub(crate) errors: AtomicU64,
}

/// A running tiny server (stopped on drop).
pub(crate) struct TinyFtp {
    stop: watch::Sender<bool>,
    threads: Vec<NsThread<()>>,
    tids: Vec<Arc<AtomicI32>>,
    counters: Arc<Counters>,
}

/// Round-robin PASV ports.
struct Ports {
    next: AtomicU32,
    low: u16,
    high: u16,
}

impl Ports {
    fn take(&self) -> u16 {
        let span = u32::from(self.high - self.low) + 1;
        self.low + (self.next.fetch_add(1, Ordering::Relaxed) % span) as u16
    }
}

impl TinyFtp {
    /// Starts `threads` server threads in `ns`, each accepting on `control`; PASV ports are
    /// taken from `pasv_ports` (inclusive, low ≥ 1024).
    pub(crate) fn start(
        ns: &Netns,
        control: SocketAddrV4,
        pasv_ports: (u16, u16),
        threads: usize,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        assert!(pasv_ports.0 >= 1024 && pasv_ports.0 <= pasv_ports.1);
        let (stop, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let ports = Arc::new(Ports {
            next: AtomicU32::new(0),
            low: pasv_ports.0,
            high: pasv_ports.1,
        });
        let mut server = Self {
            stop,
            threads: Vec::new(),
            tids: Vec::new(),
            counters: counters.clone(),
        };
        for _ in 0..threads.max(1) {
            let (ready_tx, ready_rx) = mpsc::channel();
            let tid = Arc::new(AtomicI32::new(0));
            let (tid2, counters, ports, mut stop_rx) = (
                tid.clone(),
                counters.clone(),
                ports.clone(),
                stop_rx.clone(),
            );
            let thread = ns.spawn_thread(move || {
                // SAFETY: gettid has no preconditions.
                tid2.store(unsafe { libc::gettid() }, Ordering::Relaxed);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match control_listener(control) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("binding {control}: {e}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let life = tokio::time::sleep(MAX_LIFE);
                    tokio::pin!(life);
                    loop {
                        tokio::select! {
                            _ = stop_rx.changed() => break,
                            () = &mut life => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else {
                                    // EMFILE and the like: back off instead of spinning.
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                    continue;
                                };
                                counters.accepted.fetch_add(1, Ordering::Relaxed);
                                let (counters, ports) = (counters.clone(), ports.clone());
                                tokio::spawn(async move {
                                    if session(stream, *control.ip(), &ports, &counters)
                                        .await
                                        .is_err()
                                    {
                                        counters.errors.fetch_add(1, Ordering::Relaxed);
                                    }
                                });
                            }
                        }
                    }
                });
                // Dropping the runtime drops the sessions still open.
            })?;
            ready_rx.recv_timeout(Duration::from_secs(10))??;
            server.threads.push(thread);
            server.tids.push(tid);
        }
        Ok(server)
    }

    /// Thread ids of the server threads (for their CPU time in `/proc/self/task`).
    pub(crate) fn tids(&self) -> Vec<i32> {
        self.tids
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect()
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops the accept loops and waits for the threads (bounded by their own timeouts).
    pub(crate) fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.stop.send(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for TinyFtp {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn control_listener(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V4(addr).into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// A PASV listener on `ip`, SO_REUSEADDR so that a port whose earlier data connections sit in
/// TIME_WAIT can be bound again.
fn pasv_listener(ip: Ipv4Addr, ports: &Ports) -> io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..64 {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        let addr = SocketAddrV4::new(ip, ports.take());
        match socket.bind(&SocketAddr::V4(addr).into()) {
            Ok(()) => {
                socket.listen(1)?;
                return TcpListener::from_std(socket.into());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no PASV port")))
}

async fn timed<T>(fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tiny server timeout"))?
}

async fn session(
    mut stream: TcpStream,
    ip: Ipv4Addr,
    ports: &Ports,
    counters: &Counters,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.split();
    let mut reader = BufReader::with_capacity(1024, reader);
    timed(writer.write_all(b"220 tiny churn server\r\n")).await?;
    let mut pasv: Option<TcpListener> = None;
    let mut line = String::new();
    loop {
        line.clear();
        let n = timed((&mut reader).take(MAX_LINE).read_line(&mut line)).await?;
        if n == 0 {
            return Ok(());
        }
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "USER" => timed(writer.write_all(b"331 password please\r\n")).await?,
            "PASS" => timed(writer.write_all(b"230 logged in\r\n")).await?,
            "SYST" => timed(writer.write_all(b"215 UNIX Type: L8\r\n")).await?,
            "TYPE" | "NOOP" => timed(writer.write_all(b"200 ok\r\n")).await?,
            "PASV" => {
                let listener = pasv_listener(ip, ports)?;
                let port = listener.local_addr()?.port();
                let [a, b, c, d] = ip.octets();
                let reply = format!(
                    "227 Entering Passive Mode ({a},{b},{c},{d},{},{})\r\n",
                    port >> 8,
                    port & 0xff
                );
                pasv = Some(listener);
                timed(writer.write_all(reply.as_bytes())).await?;
            }
            "LIST" | "NLST" => {
                let Some(listener) = pasv.take() else {
                    timed(writer.write_all(b"425 use PASV first\r\n")).await?;
                    continue;
                };
                let (mut data, _) = timed(listener.accept()).await?;
                drop(listener);
                timed(writer.write_all(b"150 here it comes\r\n")).await?;
                timed(data.write_all(LISTING)).await?;
                // The server closes the data connection first: its FIN ends the listing.
                let _ = timed(data.shutdown()).await;
                drop(data);
                timed(writer.write_all(b"226 done\r\n")).await?;
                counters.listings.fetch_add(1, Ordering::Relaxed);
            }
            "QUIT" => {
                timed(writer.write_all(b"221 bye\r\n")).await?;
                counters.quits.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            _ => timed(writer.write_all(b"502 not here\r\n")).await?,
        }
    }
}

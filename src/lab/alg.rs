//! The `ftp-alg` daemon under test, running inside the gateway namespace.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use super::error::{LabError, Result};
use super::netns::Netns;
use super::nft::{ALG_TABLE, table_exists};
use super::process::ServiceChild;
use super::topology::{LAN_IF, WAN_IF};

/// Which deployment mode the daemon is started in (see DESIGN.md "Deployment modes").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AlgDeployment {
    /// `client-nat` (the default): `--lan-interface lan0 --wan-interface wan0`.
    #[default]
    ClientNat,
    /// `--mode routed --lan-interface lan0 --listen6 [::]:<listen_port>`: transparent
    /// interception, the client's own address kept toward the server.
    Routed,
    /// Published servers, `--reverse PUBLIC=BACKEND` per pair; nothing is intercepted.
    Reverse(Vec<(SocketAddr, SocketAddr)>),
}

/// How the daemon is started.
#[derive(Debug, Clone)]
pub struct AlgOptions {
    /// The `ftp-alg` binary.
    pub binary: PathBuf,
    /// Its listener for redirected control connections.
    pub listen_port: u16,
    /// Seconds an unused pinhole lives.
    pub pinhole_timeout_secs: u32,
    /// Gateway ports for active mode.
    pub active_ports: (u16, u16),
    /// `--log-level`.
    pub log_level: String,
    /// More arguments, appended as given.
    pub extra_args: Vec<String>,
    /// How long to wait for the table and the listener.
    pub ready_timeout: Duration,
    /// The deployment mode (default: client-nat).
    pub deployment: AlgDeployment,
    /// The intercepted control ports, one `--control-port` each (default: 21).
    pub control_ports: Vec<u16>,
    /// Environment variables set for the daemon (`NAME=value`), e.g. `NOTIFY_SOCKET`.
    pub env: Vec<String>,
}

impl AlgOptions {
    /// The lab's standard settings for `binary`.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            listen_port: 2121,
            pinhole_timeout_secs: 30,
            active_ports: (40000, 40999),
            log_level: "debug".into(),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(15),
            deployment: AlgDeployment::ClientNat,
            control_ports: vec![21],
            env: Vec::new(),
        }
    }

    /// The lab's standard settings for `binary` in `deployment`.
    pub fn with_deployment(binary: impl Into<PathBuf>, deployment: AlgDeployment) -> Self {
        Self {
            deployment,
            ..Self::new(binary)
        }
    }

    fn control_port_args(&self) -> Vec<String> {
        self.control_ports
            .iter()
            .flat_map(|port| ["--control-port".to_owned(), port.to_string()])
            .collect()
    }

    /// A status socket of this instance's own, unless the caller chose one: the default
    /// (/run/ftp-alg/status.sock) would take the socket of a real daemon on this host.
    fn status_args(&self) -> Vec<String> {
        if self.extra_args.iter().any(|a| a == "--status-socket") {
            return Vec::new();
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("fa-status-{}-{n}.sock", std::process::id()));
        vec!["--status-socket".into(), path.display().to_string()]
    }

    fn common_tail(&self) -> Vec<String> {
        let mut tail = self.status_args();
        tail.extend([
            "--pinhole-timeout".into(),
            self.pinhole_timeout_secs.to_string(),
            "--active-ports".into(),
            format!("{}-{}", self.active_ports.0, self.active_ports.1),
            "--log-level".into(),
            self.log_level.clone(),
        ]);
        tail
    }

    /// The full command line.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![self.binary.display().to_string(), "run".into()];
        match &self.deployment {
            AlgDeployment::ClientNat => return self.client_nat_argv(),
            AlgDeployment::Routed => {
                argv.extend(
                    [
                        "--mode",
                        "routed",
                        "--lan-interface",
                        LAN_IF,
                        "--listen",
                        &format!("0.0.0.0:{}", self.listen_port),
                        "--listen6",
                        &format!("[::]:{}", self.listen_port),
                    ]
                    .map(String::from),
                );
                argv.extend(self.control_port_args());
            }
            AlgDeployment::Reverse(pairs) => {
                for (public, backend) in pairs {
                    argv.push("--reverse".into());
                    argv.push(format!("{public}={backend}"));
                }
            }
        }
        argv.extend(self.common_tail());
        argv.extend(self.extra_args.iter().cloned());
        argv
    }

    /// Where readiness is checked: `ss` filters, one per listener that must accept.
    fn ready_filters(&self) -> Vec<Vec<String>> {
        match &self.deployment {
            AlgDeployment::Reverse(pairs) => pairs
                .iter()
                .map(|(public, _)| vec!["src".to_owned(), public.to_string()])
                .collect(),
            AlgDeployment::ClientNat | AlgDeployment::Routed => {
                vec![vec![format!("sport = :{}", self.listen_port)]]
            }
        }
    }

    fn client_nat_argv(&self) -> Vec<String> {
        let mut argv = vec![
            self.binary.display().to_string(),
            "run".into(),
            "--lan-interface".into(),
            LAN_IF.into(),
            "--wan-interface".into(),
            WAN_IF.into(),
            "--listen".into(),
            format!("0.0.0.0:{}", self.listen_port),
        ];
        argv.extend(self.control_port_args());
        argv.extend(self.common_tail());
        argv.extend(self.extra_args.iter().cloned());
        argv
    }
}

/// A running daemon. Dropping it kills it (SIGTERM, then SIGKILL); use [`AlgDaemon::stop`] to
/// check a clean exit.
#[derive(Debug)]
pub struct AlgDaemon {
    child: ServiceChild,
    argv: Vec<String>,
}

/// A `NOTIFY_SOCKET` of the lab's own: the daemon says `READY=1` there once its table,
/// policy routing and listeners are all up (its listeners are bound first, and a table left
/// by a killed daemon is already there, so those two alone say nothing after a crash).
struct ReadySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    ready: bool,
}

impl ReadySocket {
    fn bind() -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A path, not an abstract name: those belong to a network namespace.
        let path = std::env::temp_dir().join(format!("fa-notify-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path)
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
            .map_err(|e| LabError::io(format!("binding {}", path.display()), e))?;
        Ok(Self {
            socket,
            path,
            ready: false,
        })
    }

    /// Whether `READY=1` has come (reads what is queued).
    fn ready(&mut self) -> bool {
        let mut buf = [0u8; 512];
        while !self.ready {
            match self.socket.recv(&mut buf) {
                Ok(n) => self.ready = buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1"),
                Err(_) => break,
            }
        }
        self.ready
    }
}

impl Drop for ReadySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AlgDaemon {
    /// Starts the daemon in `gateway` and waits until it says it is ready (`READY=1` on a
    /// `NOTIFY_SOCKET` of the lab's, unless `options.env` sets one), its table exists and its
    /// listener accepts.
    pub fn start(gateway: &Netns, options: &AlgOptions) -> Result<Self> {
        let argv = options.argv();
        let mut notify = if options.env.iter().any(|e| e.starts_with("NOTIFY_SOCKET=")) {
            None
        } else {
            Some(ReadySocket::bind()?)
        };
        let mut env = options.env.clone();
        if let Some(notify) = &notify {
            env.push(format!("NOTIFY_SOCKET={}", notify.path.display()));
        }
        // `env NAME=value… ftp-alg …`: env execs the daemon, which keeps its own name.
        let prefix: Vec<&str> = std::iter::once("env")
            .chain(env.iter().map(String::as_str))
            .collect();
        let args: Vec<&str> = prefix
            .into_iter()
            .chain(argv.iter().map(String::as_str))
            .collect();
        let mut child = gateway.spawn("ftp-alg", &args)?;
        let start = Instant::now();
        let filters = options.ready_filters();
        loop {
            let table = table_exists(gateway, "inet", ALG_TABLE)?;
            let mut listening = table;
            for filter in filters.iter().take_while(|_| table) {
                let mut args = vec!["ss", "-Hltn"];
                args.extend(filter.iter().map(String::as_str));
                listening &= !String::from_utf8_lossy(&gateway.exec(&args)?.stdout)
                    .trim()
                    .is_empty();
            }
            if listening && notify.as_mut().is_none_or(ReadySocket::ready) {
                return Ok(Self { child, argv });
            }
            if let Some(status) = child.try_status() {
                return Err(LabError::NotReady {
                    what: format!("ftp-alg (exited: {status}; command: {})", argv.join(" ")),
                    timeout: options.ready_timeout,
                    output: child.output(),
                });
            }
            if start.elapsed() > options.ready_timeout {
                return Err(LabError::NotReady {
                    what: format!(
                        "ftp-alg (table inet {ALG_TABLE} present: {table}; command: {})",
                        argv.join(" ")
                    ),
                    timeout: options.ready_timeout,
                    output: child.output(),
                });
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Everything it logged so far.
    pub fn output(&self) -> String {
        self.child.output()
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }

    /// Its status snapshot (`ftp-alg status`: sessions, pinholes, counters and the pinhole
    /// install-latency histogram), read from the status socket on its command line; `None`
    /// if it was started without one or does not answer.
    pub fn status(&self) -> Option<serde_json::Value> {
        let at = self.argv.iter().position(|a| a == "--status-socket")?;
        let path = PathBuf::from(self.argv.get(at + 1)?);
        crate::proxy::status::fetch(&path).ok()
    }

    /// Whether it has exited, and how.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_status()
    }

    /// SIGKILL: simulates a crash (the daemon gets no chance to clean up).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.child.kill()
    }

    /// SIGTERM and wait up to `grace`; `None` if it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.child.terminate(grace)
    }
}

#[cfg(test)]
mod tests {
    use super::{AlgDeployment, AlgOptions};

    /// The command line without its per-instance status socket, which must not be the
    /// default path of a real daemon.
    fn without_status(argv: Vec<String>) -> String {
        let at = argv
            .iter()
            .position(|a| a == "--status-socket")
            .expect("a status socket of its own");
        assert!(
            !argv[at + 1].starts_with("/run/ftp-alg"),
            "{}",
            argv[at + 1]
        );
        let mut argv = argv;
        argv.drain(at..at + 2);
        argv.join(" ")
    }

    #[test]
    fn client_nat_command_line_is_unchanged_by_the_new_modes() {
        let argv = without_status(AlgOptions::new("/bin/ftp-alg").argv());
        assert_eq!(
            argv,
            "/bin/ftp-alg run --lan-interface lan0 --wan-interface wan0 --listen 0.0.0.0:2121 \
             --control-port 21 --pinhole-timeout 30 --active-ports 40000-40999 --log-level debug"
        );
    }

    #[test]
    fn routed_and_reverse_command_lines() {
        let routed = AlgOptions::with_deployment("/bin/ftp-alg", AlgDeployment::Routed);
        assert_eq!(
            without_status(routed.argv()),
            "/bin/ftp-alg run --mode routed --lan-interface lan0 --listen 0.0.0.0:2121 \
             --listen6 [::]:2121 --control-port 21 --pinhole-timeout 30 \
             --active-ports 40000-40999 --log-level debug"
        );
        let reverse = AlgOptions::with_deployment(
            "/bin/ftp-alg",
            AlgDeployment::Reverse(vec![
                (
                    "203.0.113.1:21".parse().unwrap(),
                    "198.51.100.2:21".parse().unwrap(),
                ),
                (
                    "[2001:db8:1::1]:21".parse().unwrap(),
                    "[2001:db8:2::2]:21".parse().unwrap(),
                ),
            ]),
        );
        assert_eq!(
            without_status(reverse.argv()),
            "/bin/ftp-alg run --reverse 203.0.113.1:21=198.51.100.2:21 \
             --reverse [2001:db8:1::1]:21=[2001:db8:2::2]:21 --pinhole-timeout 30 \
             --active-ports 40000-40999 --log-level debug"
        );
    }
}

//! The `ftp-alg` daemon under test, running inside the gateway namespace.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use super::error::{LabError, Result};
use super::netns::Netns;
use super::nft::{ALG_TABLE, table_exists};
use super::process::ServiceChild;
use super::topology::{LAN_IF, WAN_IF};

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
        }
    }

    /// The full command line.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![
            self.binary.display().to_string(),
            "run".into(),
            "--lan-interface".into(),
            LAN_IF.into(),
            "--wan-interface".into(),
            WAN_IF.into(),
            "--listen".into(),
            format!("0.0.0.0:{}", self.listen_port),
            "--control-port".into(),
            "21".into(),
            "--pinhole-timeout".into(),
            self.pinhole_timeout_secs.to_string(),
            "--active-ports".into(),
            format!("{}-{}", self.active_ports.0, self.active_ports.1),
            "--log-level".into(),
            self.log_level.clone(),
        ];
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

impl AlgDaemon {
    /// Starts the daemon in `gateway` and waits until its table exists and its listener accepts.
    pub fn start(gateway: &Netns, options: &AlgOptions) -> Result<Self> {
        let argv = options.argv();
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut child = gateway.spawn("ftp-alg", &args)?;
        let start = Instant::now();
        let listen = format!("sport = :{}", options.listen_port);
        loop {
            let table = table_exists(gateway, "inet", ALG_TABLE)?;
            let listening = table
                && !String::from_utf8_lossy(&gateway.exec(&["ss", "-Hltn", &listen])?.stdout)
                    .trim()
                    .is_empty();
            if listening {
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

//! A userspace *relay* FTP proxy in the gateway, as the comparison point for ftp-alg's
//! benchmarks: Debian's `ftp-proxy` (the SuSE Proxy-Suite, 1.9.2.4 in Debian 12).
//!
//! ftp-alg touches only the control channel and lets the kernel forward the data. A relay
//! terminates *both* channels: the client's control and data connections end in the relay, which
//! opens its own control and data connections to the server and copies every byte through
//! userspace (`select()`, `FIONREAD`, one `recv`/`send` per chunk). The server therefore sees the
//! gateway (203.0.113.1) as its client for control and data alike, which is why vsftpd's
//! `port_promiscuous=NO`/`pasv_promiscuous=NO` checks pass without any address rewriting. The
//! lab's drop-policy forward chain is not involved at all: everything the relay sends or receives
//! goes through the gateway's INPUT/OUTPUT paths, where the lab has no filter.
//!
//! # How it is run
//!
//! [`RelayProxy::start`] writes a config file into a scratch directory (never `/etc`) and runs
//! `ftp-proxy -d -n -f <conf>` inside the gateway namespace: `-d` standalone daemon (it listens
//! itself and forks one child process per client session), `-n` stays in the foreground, so the
//! process stays the lab's child and in its process group (dropping the guard kills the daemon
//! and every session child). The config it writes (see `ftp-proxy.conf(5)`):
//!
//! ```text
//! ServerType          standalone
//! Listen              10.0.0.1        # the gateway's LAN address only
//! Port                2121
//! DestinationAddress  203.0.113.2     # explicit mode's (fixed) server; required anyway
//! DestinationPort     21
//! DestinationTransferMode client      # server side uses the client's mode (PASV->PASV, PORT->PORT)
//! AllowTransProxy     yes             # transparent: SO_ORIGINAL_DST of the redirected connection
//! AllowMagicUser      yes             # explicit: USER name@host[:port] also accepted
//! MaxClients          512             # the compiled-in maximum (the man page's default is 64)
//! ForkLimit           0               # off (default: 40 new sessions per minute!)
//! LogDestination      <scratch>/ftp-proxy.log
//! LogLevel            INF
//! ```
//!
//! # Interception
//!
//! - [`RelayInterception::Transparent`] (default), the same deployment as ftp-alg: the client is
//!   unchanged and connects to 203.0.113.2:21; the relay's own nftables table
//!   `ip ftp_relay` redirects LAN tcp/21 to the relay (`iifname "lan0" tcp dport 21 redirect to
//!   :2121`), and ftp-proxy reads the original destination with `getsockopt(SO_ORIGINAL_DST)`
//!   (its "iptables" transparent mode, which works with nftables' `redirect` because both are
//!   conntrack NAT). The table is added only once the relay listens, and deleted on drop.
//! - [`RelayInterception::Explicit`]: no redirect; the client connects to the relay at
//!   10.0.0.1:2121 and logs in as `USER name@203.0.113.2` (`AllowMagicUser`; a plain
//!   `USER name` goes to the fixed `DestinationAddress`, the same server by default).
//!
//! [`RelayProxy::target`] tells a client where to connect and which user name to send.
//!
//! # Limits of ftp-proxy found while building this (all relevant to a benchmark)
//!
//! - IPv4 only; `EPSV`/`EPRT` are not compiled in (`502 command not implemented`): clients must
//!   use `PASV`/`PORT` (lftp `ftp:prefer-epsv no`, curl `--disable-epsv`/`--disable-eprt`).
//! - One `fork()` per session; `MaxClients` is capped at 512 in the source; a refused session
//!   gets `421 Service not available` and is closed.
//! - `ForkLimit` (default 40 connections per minute, enforced as 20 per 30 s slice) closes the
//!   20th connection of a slice and every later one without a reply; the lab's
//!   [`RelayOptions::fork_limit`] defaults to 0 (off).
//! - The relay connects to the server only after `USER`: its own `220` banner comes first.
//! - Active mode: running as root without `ActiveMinDataPort`/`ActiveMaxDataPort`, it connects to
//!   the client from port 20 ([`RelayOptions::active_ports`] sets a range instead). Toward the
//!   server it listens on an ephemeral port of 203.0.113.1 and sends `PORT` with it.
//! - Logging goes to a file here (the default is syslog); `LogLevel INF` writes a few lines per
//!   command, [`RelayOptions::log_level`] `"WRN"` makes a benchmark quieter.
//! - If its port is taken, it retries `bind` every 30 s; [`RelayProxy::start`] gives up first.

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use super::error::{LabError, Result};
use super::netns::{ADMIN_TIMEOUT, Netns};
use super::process::{ServiceChild, run_bounded};
use super::scratch::ScratchDir;
use super::topology::{GATEWAY_LAN_IP, LAN_IF, SERVER_IP};
use super::vsftpd::wait_listening_on;

/// The relay's own nftables table (family `ip`) in the gateway: only the redirect.
pub const RELAY_TABLE: &str = "ftp_relay";
/// Where Debian installs the relay.
pub const RELAY_BINARY: &str = "/usr/sbin/ftp-proxy";
/// The relay's default listener: the gateway's LAN address, port 2121.
pub const RELAY_LISTEN: SocketAddrV4 = SocketAddrV4::new(GATEWAY_LAN_IP, 2121);

/// How client control connections reach the relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RelayInterception {
    /// LAN tcp/`control_port` is redirected to the relay; clients connect to the server's
    /// address as if there were no proxy.
    #[default]
    Transparent,
    /// Clients connect to the relay's listener themselves.
    Explicit,
}

/// Which data mode the relay uses toward the server (`DestinationTransferMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerDataMode {
    /// The client's mode: `PASV` from the client makes the relay send `PASV`, `PORT` → `PORT`.
    #[default]
    FollowClient,
    /// Always `PASV` toward the server.
    Passive,
    /// Always `PORT` toward the server.
    Active,
}

impl ServerDataMode {
    fn config_value(self) -> &'static str {
        match self {
            Self::FollowClient => "client",
            Self::Passive => "passive",
            Self::Active => "active",
        }
    }
}

/// How the relay is started.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The `ftp-proxy` binary.
    pub binary: PathBuf,
    /// Where it listens (`Listen`, `Port`). Default [`RELAY_LISTEN`].
    pub listen: SocketAddrV4,
    /// The server (`DestinationAddress`, `DestinationPort`): explicit mode's destination.
    /// Default 203.0.113.2:21.
    pub server: SocketAddrV4,
    /// Transparent (default) or explicit.
    pub interception: RelayInterception,
    /// The LAN destination port redirected in transparent mode. Default 21.
    pub control_port: u16,
    /// The relay's mode toward the server. Default: the client's.
    pub server_data_mode: ServerDataMode,
    /// `MaxClients` (concurrent sessions, 1..=512). Default 512.
    pub max_clients: u16,
    /// `ForkLimit`: accepted connections per minute, 0 = unlimited. Default 0.
    pub fork_limit: u32,
    /// `ActiveMinDataPort`/`ActiveMaxDataPort`: source ports for connecting to a `PORT` client
    /// (picked at random, `SockBindRand`). Default none: port 20.
    pub active_ports: Option<(u16, u16)>,
    /// `PassiveMinDataPort`/`PassiveMaxDataPort`: ports offered to `PASV` clients. Default
    /// none: ephemeral.
    pub passive_ports: Option<(u16, u16)>,
    /// `LogLevel`: `FLT`, `ERR`, `WRN`, `INF` (default) or `DBG`.
    pub log_level: String,
    /// `TimeOut`: idle seconds before a session is closed. Default 900 (ftp-proxy's own).
    pub idle_timeout_secs: u32,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            binary: RELAY_BINARY.into(),
            listen: RELAY_LISTEN,
            server: SocketAddrV4::new(SERVER_IP, 21),
            interception: RelayInterception::Transparent,
            control_port: 21,
            server_data_mode: ServerDataMode::FollowClient,
            max_clients: 512,
            fork_limit: 0,
            active_ports: None,
            passive_ports: None,
            log_level: "INF".into(),
            idle_timeout_secs: 900,
        }
    }
}

impl RelayOptions {
    /// The standard settings with `interception`.
    pub fn with_interception(interception: RelayInterception) -> Self {
        Self {
            interception,
            ..Self::default()
        }
    }

    /// The `ftp-proxy.conf` text for this instance, logging to `log`.
    pub fn config(&self, log: &Path) -> String {
        let mut text = String::from("# Written by the ftp-alg test lab (src/lab/relay.rs).\n");
        let mut line = |name: &str, value: &dyn std::fmt::Display| {
            let _ = writeln!(text, "{name:<24}{value}");
        };
        line("ServerType", &"standalone");
        line("Listen", self.listen.ip());
        line("Port", &self.listen.port());
        line("DestinationAddress", self.server.ip());
        line("DestinationPort", &self.server.port());
        line(
            "DestinationTransferMode",
            &self.server_data_mode.config_value(),
        );
        line(
            "AllowTransProxy",
            &yes_no(self.interception == RelayInterception::Transparent),
        );
        line("AllowMagicUser", &"yes");
        line("MaxClients", &self.max_clients);
        line("ForkLimit", &self.fork_limit);
        line("TimeOut", &self.idle_timeout_secs);
        line("LogDestination", &log.display());
        line("LogLevel", &self.log_level);
        if let Some((min, max)) = self.active_ports {
            line("ActiveMinDataPort", &min);
            line("ActiveMaxDataPort", &max);
        }
        if let Some((min, max)) = self.passive_ports {
            line("PassiveMinDataPort", &min);
            line("PassiveMaxDataPort", &max);
        }
        if self.active_ports.is_some() || self.passive_ports.is_some() {
            line("SockBindRand", &"yes");
        }
        text
    }

    /// The nftables script that adds the redirect table (transparent mode).
    pub fn redirect_ruleset(&self) -> String {
        format!(
            "table ip {RELAY_TABLE} {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname \"{LAN_IF}\" tcp dport {} redirect to :{}\n\
             \t}}\n\
             }}\n",
            self.control_port,
            self.listen.port()
        )
    }
}

fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

/// Where a client connects to reach the server through the relay, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    /// The address to connect to: the server's own (transparent) or the relay's (explicit).
    pub addr: SocketAddrV4,
    /// The `USER` to send.
    pub user: String,
}

/// `ftp-proxy` running in the gateway namespace.
///
/// Dropping it kills the daemon and its session children, deletes its redirect table and its
/// scratch directory (config and log).
#[derive(Debug)]
pub struct RelayProxy {
    child: ServiceChild,
    gateway: String,
    options: RelayOptions,
    conf: PathBuf,
    log: PathBuf,
    redirect_installed: bool,
    _dir: ScratchDir,
}

impl RelayProxy {
    /// Writes the config, starts `ftp-proxy` in `gateway`, waits until it listens and, in
    /// transparent mode, adds the redirect table.
    pub fn start(gateway: &Netns, options: &RelayOptions) -> Result<Self> {
        if !options.binary.is_file() {
            return Err(LabError::Unavailable(format!(
                "{} not found (Debian package ftp-proxy)",
                options.binary.display()
            )));
        }
        if !(1..=512).contains(&options.max_clients) {
            return Err(LabError::Unsupported(format!(
                "ftp-proxy accepts MaxClients 1..=512, not {}",
                options.max_clients
            )));
        }
        let dir = ScratchDir::new("ftp-proxy")?;
        let conf = dir.path().join("ftp-proxy.conf");
        let log = dir.path().join("ftp-proxy.log");
        fs::write(&conf, options.config(&log))
            .map_err(|e| LabError::io(format!("writing {}", conf.display()), e))?;
        let binary = options.binary.display().to_string();
        let conf_arg = conf.display().to_string();
        let mut child = gateway.spawn("ftp-proxy", &[&binary, "-d", "-n", "-f", &conf_arg])?;
        if let Err(e) = wait_listening_on(gateway, &mut child, SocketAddr::V4(options.listen)) {
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            return Err(match e {
                LabError::NotReady {
                    what,
                    timeout,
                    output,
                } => LabError::NotReady {
                    what: format!("ftp-proxy ({what})"),
                    timeout,
                    output: format!("{output}\n--- {}:\n{log_text}", log.display()),
                },
                other => other,
            });
        }
        let mut relay = Self {
            child,
            gateway: gateway.name().to_owned(),
            options: options.clone(),
            conf,
            log,
            redirect_installed: false,
            _dir: dir,
        };
        if options.interception == RelayInterception::Transparent {
            // Marked first: a half-applied script is still removed on drop.
            relay.redirect_installed = true;
            gateway.exec_stdin_ok(&["nft", "-f", "-"], options.redirect_ruleset().as_bytes())?;
        }
        Ok(relay)
    }

    /// Where a client connects and which user name it sends to log in as `user` on the server:
    /// transparent, the server's address and `user` unchanged; explicit, the relay's listener
    /// and `user@203.0.113.2` ([`RelayProxy::magic_user`]).
    pub fn target(&self, user: &str) -> RelayTarget {
        match self.options.interception {
            RelayInterception::Transparent => RelayTarget {
                addr: self.options.server,
                user: user.to_owned(),
            },
            RelayInterception::Explicit => RelayTarget {
                addr: self.options.listen,
                user: Self::magic_user(user, self.options.server),
            },
        }
    }

    /// The explicit-proxy login that names the server (ftp-proxy's `AllowMagicUser`):
    /// `user@host`, or `user@host:port` when the port is not 21 (curl cannot send that one: it
    /// splits `--user` at the first colon).
    pub fn magic_user(user: &str, server: SocketAddrV4) -> String {
        if server.port() == 21 {
            format!("{user}@{}", server.ip())
        } else {
            format!("{user}@{}:{}", server.ip(), server.port())
        }
    }

    /// The options it was started with.
    pub fn options(&self) -> &RelayOptions {
        &self.options
    }

    /// The config file it runs with.
    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    /// Its log so far (`LogDestination`), plus anything it printed on stdout/stderr.
    pub fn log_text(&self) -> String {
        let mut text = fs::read_to_string(&self.log).unwrap_or_default();
        let output = self.child.output();
        if !output.trim().is_empty() {
            text.push_str("--- stdout/stderr:\n");
            text.push_str(&output);
        }
        text
    }

    /// The daemon's pid (its session children are in its process group).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the daemon has exited, and how.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_status()
    }

    /// SIGTERM to the daemon (it terminates its session children) and wait up to `grace`;
    /// `None` if it had to be killed. The redirect table is removed either way.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let status = self.child.terminate(grace);
        self.remove_redirect();
        status
    }

    fn remove_redirect(&mut self) {
        if !std::mem::take(&mut self.redirect_installed) {
            return;
        }
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.gateway,
            "nft",
            "delete",
            "table",
            "ip",
            RELAY_TABLE,
        ]);
        // Best effort: the namespace may already be gone, and the table with it.
        let _ = run_bounded(cmd, None, ADMIN_TIMEOUT);
    }
}

impl Drop for RelayProxy {
    fn drop(&mut self) {
        // The daemon first (no new sessions), then the redirect; the scratch dir drops last.
        self.child.kill();
        self.remove_redirect();
    }
}

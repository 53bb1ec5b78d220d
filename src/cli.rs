//! Command-line interface: subcommands and the flags that override every config key.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    Config, ConfigError, LogFormat, Mode, PasvAddressPolicy, ReverseConfig, TlsPolicy,
};

/// Userspace FTP application-level gateway: reads PORT/EPRT/227/229 on the control channel,
/// rewrites them where NAT requires, and opens exact single-use nftables pinholes.
#[derive(Debug, Parser)]
#[command(name = "ftp-alg", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Subcommands,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Subcommands {
    /// Run the gateway daemon (needs CAP_NET_ADMIN).
    Run(Settings),
    /// Validate a configuration and print the effective settings.
    Check(Settings),
    /// Print the nftables table the daemon would install.
    Rules(Settings),
    /// Remove what a daemon that did not exit cleanly (SIGKILL, OOM) left in the kernel: its
    /// table (whose redirect would send LAN FTP nowhere) and, in routed mode, its policy
    /// routing, as its record in /run/ftp-alg names them (else the configuration). A running
    /// daemon's table is left alone. The unit runs it after every stop (ExecStopPost).
    Cleanup(Settings),
    /// Write the man page and shell completions (for packaging).
    #[command(hide = true)]
    Generate(crate::generate::GenerateArgs),
    /// Show the running daemon's sessions, pinholes and counters.
    Status(StatusArgs),
    /// Build a namespace lab, try every FTP mode through three topologies without a helper,
    /// with the kernel's helper and with ftp-alg, explain each failure, draw each session.
    Lab(LabArgs),
    /// Explain live FTP traffic on a gateway or in a lab namespace (read-only capture).
    Watch(WatchArgs),
}

/// `ftp-alg lab`.
#[derive(Debug, Clone, Args)]
pub struct LabArgs {
    /// Run only the matching cells: TOPOLOGY[/MODE[/VARIANT]], `*` for any part; repeatable.
    /// Topologies: client-nat, reverse, routed; modes: PORT, EPRT, PASV, EPSV; variants:
    /// none, kernel-helper, ftp-alg. E.g. `routed/PORT/none`, `reverse/*/ftp-alg`.
    #[arg(long, value_name = "TOPOLOGY/MODE/VARIANT")]
    pub scenario: Vec<String>,
    /// Leave the namespaces (and their firewall rules) up for exploring; prints how to enter
    /// and delete them.
    #[arg(long)]
    pub keep: bool,
    /// Write one SVG sequence diagram per cell, index.html and results.json into DIR.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The ftp-alg binary started in the gateway (default: this executable).
    #[arg(long, value_name = "PATH", hide = true)]
    pub alg_binary: Option<PathBuf>,
}

/// `ftp-alg watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Capture on this interface only (default: every interface but loopback).
    #[arg(short, long, value_name = "IF")]
    pub interface: Option<String>,
    /// Watch inside this network namespace (a name from `ip netns list`, or a path).
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
    /// FTP control port; repeatable. Port 21 is always watched too.
    #[arg(long = "control-port", value_name = "PORT")]
    pub control_ports: Vec<u16>,
    /// Seconds a data connection's SYN may go unanswered before it is reported.
    #[arg(long, value_name = "SECS", default_value_t = 3.0, value_parser = seconds)]
    pub no_answer_after: f64,
    /// Stop after this many seconds (default: at Ctrl-C).
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub duration: Option<f64>,
}

/// A number of seconds: finite, not negative.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds (e.g. 2.5)")),
    }
}

impl WatchArgs {
    /// The options of [`crate::watch::run`].
    pub fn options(&self) -> crate::watch::WatchOptions {
        let secs = |s: f64| std::time::Duration::from_secs_f64(s.clamp(0.0, 86_400.0 * 365.0));
        crate::watch::WatchOptions {
            interface: self.interface.clone(),
            netns: self.netns.clone(),
            control_ports: std::iter::once(21)
                .chain(self.control_ports.iter().copied().filter(|&p| p != 21))
                .collect(),
            no_answer_after: secs(self.no_answer_after),
            duration: self.duration.map(secs),
        }
    }
}

/// `ftp-alg status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The daemon's status socket.
    #[arg(long, value_name = "PATH", default_value = crate::config::DEFAULT_STATUS_SOCKET)]
    pub socket: PathBuf,
    /// Print the raw JSON snapshot (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// A config file plus flags; a flag overrides the file's value.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// One flag per config key.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// Deployment mode [config: mode].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// LAN interface whose FTP traffic is intercepted; repeatable [config: lan_interfaces].
    #[arg(long = "lan-interface", value_name = "IF")]
    pub lan_interfaces: Vec<String>,
    /// WAN interface [config: wan_interface].
    #[arg(long, value_name = "IF")]
    pub wan_interface: Option<String>,
    /// WAN address announced in rewritten PORT/EPRT [config: wan_address].
    #[arg(long, value_name = "IP")]
    pub wan_address: Option<IpAddr>,
    /// Listener for redirected control connections [config: listen].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// IPv6 listener for redirected control connections [config: listen6].
    #[arg(long, value_name = "[ADDR]:PORT")]
    pub listen6: Option<SocketAddr>,
    /// Do not intercept IPv6 [config: listen6 unset].
    #[arg(long, conflicts_with = "listen6")]
    pub no_ipv6: bool,
    /// Publish a server: PUBLIC=BACKEND, e.g. 203.0.113.1:21=198.51.100.2:21; repeatable
    /// [config: [[reverse]]].
    #[arg(long = "reverse", value_name = "PUBLIC=BACKEND", value_parser = parse_reverse)]
    pub reverse: Vec<ReverseConfig>,
    /// Mark for routed mode's policy routing [config: routing.fwmark].
    #[arg(long, value_name = "MARK", value_parser = parse_mark)]
    pub routing_fwmark: Option<u32>,
    /// Routing table for routed mode [config: routing.table].
    #[arg(long, value_name = "N")]
    pub routing_table: Option<u32>,
    /// Intercepted control port; repeatable [config: control_ports].
    #[arg(long = "control-port", value_name = "PORT")]
    pub control_ports: Vec<u16>,
    /// Seconds an unused pinhole lives [config: pinhole.timeout_secs].
    #[arg(long, value_name = "SECS")]
    pub pinhole_timeout: Option<u64>,
    /// Most pinholes per session [config: pinhole.max_per_session].
    #[arg(long, value_name = "N")]
    pub max_pinholes: Option<usize>,
    /// Gateway ports for active mode, "low-high" [config: active.port_range].
    #[arg(long, value_name = "LOW-HIGH")]
    pub active_ports: Option<String>,
    /// Seconds a released gateway port rests before the same server gets it again (the
    /// old data connection must finish closing) [config: active.port_quarantine_secs].
    #[arg(long, value_name = "SECS")]
    pub active_port_quarantine: Option<u64>,
    /// Policy for a 227 naming another host [config: passive.address_policy].
    #[arg(long, value_enum)]
    pub pasv_address_policy: Option<PasvAddressPolicy>,
    /// Most concurrent sessions [config: limits.max_sessions].
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<usize>,
    /// Most concurrent sessions per client address [config: limits.max_sessions_per_client].
    #[arg(long, value_name = "N")]
    pub max_sessions_per_client: Option<usize>,
    /// New sessions per second per client address
    /// [config: limits.new_sessions_per_second_per_client].
    #[arg(long, value_name = "N")]
    pub new_sessions_per_second: Option<u32>,
    /// Only allow this command verb (repeatable) [config: commands.allow].
    #[arg(long = "allow-command", value_name = "VERB")]
    pub allow_commands: Vec<String>,
    /// Refuse this command verb with 502 (repeatable) [config: commands.deny].
    #[arg(long = "deny-command", value_name = "VERB")]
    pub deny_commands: Vec<String>,
    /// Replace the server's greeting [config: commands.mask_banner].
    #[arg(long)]
    pub mask_banner: bool,
    /// Replace the server's SYST reply [config: commands.mask_syst].
    #[arg(long)]
    pub mask_syst: bool,
    /// What to do with AUTH TLS/SSL [config: tls.auth].
    #[arg(long, value_enum)]
    pub tls_auth: Option<TlsPolicy>,
    /// Longest control line in bytes [config: limits.max_line].
    #[arg(long, value_name = "BYTES")]
    pub max_line: Option<usize>,
    /// Idle timeout of a control connection [config: limits.idle_timeout_secs].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Timeout connecting to the server [config: limits.connect_timeout_secs].
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,
    /// Name of our nftables table [config: nftables.table].
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
    /// Conntrack mark on admitted data connections [config: nftables.ct_mark].
    #[arg(long, value_name = "MARK", value_parser = parse_mark)]
    pub ct_mark: Option<u32>,
    /// Garbage-collection interval of the `_hot` pinhole sets (keys reused within 3 s), in ms
    /// [config: nftables.gc_interval_ms].
    #[arg(long, value_name = "MS")]
    pub gc_interval_ms: Option<u32>,
    /// Status socket path [config: status.socket].
    #[arg(long, value_name = "PATH")]
    pub status_socket: Option<PathBuf>,
    /// Group allowed to read the status socket [config: status.group].
    #[arg(long, value_name = "GROUP")]
    pub status_group: Option<String>,
    /// Prometheus endpoint address [config: metrics.listen].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds sessions get to finish on SIGTERM [config: limits.drain_grace_secs].
    #[arg(long, value_name = "SECS")]
    pub drain_grace: Option<u64>,
    /// Session threads, 0 = one per CPU [config: runtime.workers].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Busy-poll window after traffic in µs, 0 = off [config: runtime.busy_poll_us].
    #[arg(long, value_name = "US")]
    pub busy_poll_us: Option<u64>,
    /// SCHED_FIFO priority for the pinhole path: auto (where permitted), 0 = off, or 1-99
    /// (required) [config: runtime.realtime_priority].
    #[arg(long, value_name = "auto|0-99")]
    pub realtime_priority: Option<crate::config::RealtimePriority>,
    /// What runs at that priority [config: runtime.realtime_scope].
    #[arg(long, value_enum)]
    pub realtime_scope: Option<crate::config::RealtimeScope>,
    /// Log format [config: log.format].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or debug [config: log.level].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

fn parse_reverse(text: &str) -> Result<ReverseConfig, String> {
    let (listen, backend) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not PUBLIC=BACKEND"))?;
    let parse = |part: &str| {
        part.parse::<SocketAddr>()
            .map_err(|_| format!("`{part}` is not an address:port ([v6]:port for IPv6)"))
    };
    Ok(ReverseConfig {
        listen: parse(listen)?,
        backend: parse(backend)?,
    })
}

fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("`{text}` is not a 32-bit mark (decimal or 0x-hex)"))
}

impl Settings {
    /// The config file (or defaults) with the flags applied on top.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.overrides.apply(&mut config);
        Ok(config)
    }
}

impl Overrides {
    /// Applies every flag that was given.
    pub fn apply(&self, c: &mut Config) {
        let o = self.clone();
        if let Some(v) = o.mode {
            c.mode = v;
        }
        if !o.lan_interfaces.is_empty() {
            c.lan_interfaces = o.lan_interfaces;
        }
        if o.wan_interface.is_some() {
            c.wan_interface = o.wan_interface;
        }
        if o.wan_address.is_some() {
            c.wan_address = o.wan_address;
        }
        if let Some(v) = o.listen {
            c.listen = v;
        }
        if o.listen6.is_some() {
            c.listen6 = o.listen6;
        }
        if o.no_ipv6 {
            c.listen6 = None;
        }
        if !o.reverse.is_empty() {
            c.reverse = o.reverse;
        }
        if let Some(v) = o.routing_fwmark {
            c.routing.fwmark = v;
        }
        if let Some(v) = o.routing_table {
            c.routing.table = v;
        }
        if !o.control_ports.is_empty() {
            c.control_ports = o.control_ports;
        }
        if let Some(v) = o.pinhole_timeout {
            c.pinhole.timeout_secs = v;
        }
        if let Some(v) = o.max_pinholes {
            c.pinhole.max_per_session = v;
        }
        if let Some(v) = o.active_ports {
            c.active.port_range = v;
        }
        if let Some(v) = o.active_port_quarantine {
            c.active.port_quarantine_secs = v;
        }
        if let Some(v) = o.pasv_address_policy {
            c.passive.address_policy = v;
        }
        if let Some(v) = o.max_sessions {
            c.limits.max_sessions = v;
        }
        if let Some(v) = o.max_sessions_per_client {
            c.limits.max_sessions_per_client = v;
        }
        if let Some(v) = o.new_sessions_per_second {
            c.limits.new_sessions_per_second_per_client = v;
        }
        if !o.allow_commands.is_empty() {
            c.commands.allow = o.allow_commands;
        }
        if !o.deny_commands.is_empty() {
            c.commands.deny = o.deny_commands;
        }
        c.commands.mask_banner |= o.mask_banner;
        c.commands.mask_syst |= o.mask_syst;
        if let Some(v) = o.tls_auth {
            c.tls.auth = v;
        }
        if let Some(v) = o.max_line {
            c.limits.max_line = v;
        }
        if let Some(v) = o.idle_timeout {
            c.limits.idle_timeout_secs = v;
        }
        if let Some(v) = o.connect_timeout {
            c.limits.connect_timeout_secs = v;
        }
        if let Some(v) = o.table {
            c.nftables.table = v;
        }
        if let Some(v) = o.ct_mark {
            c.nftables.ct_mark = v;
        }
        if let Some(v) = o.gc_interval_ms {
            c.nftables.gc_interval_ms = v;
        }
        if o.status_socket.is_some() {
            c.status.socket = o.status_socket;
        }
        if o.status_group.is_some() {
            c.status.group = o.status_group;
        }
        if o.metrics_listen.is_some() {
            c.metrics.listen = o.metrics_listen;
        }
        if let Some(v) = o.workers {
            c.runtime.workers = v;
        }
        if let Some(v) = o.busy_poll_us {
            c.runtime.busy_poll_us = v;
        }
        if let Some(v) = o.realtime_priority {
            c.runtime.realtime_priority = v;
        }
        if let Some(v) = o.realtime_scope {
            c.runtime.realtime_scope = v;
        }
        if let Some(v) = o.drain_grace {
            c.limits.drain_grace_secs = v;
        }
        if let Some(v) = o.log_format {
            c.log.format = v;
        }
        if let Some(v) = o.log_level {
            c.log.level = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn watch_always_watches_port_21_and_refuses_durations_that_are_not_numbers() {
        let watch = |args: &[&str]| {
            Cli::try_parse_from(["ftp-alg", "watch"].iter().chain(args)).map(|cli| {
                match cli.command {
                    Subcommands::Watch(w) => w.options(),
                    _ => unreachable!("parsed as watch"),
                }
            })
        };
        assert_eq!(watch(&[]).unwrap().control_ports, [21]);
        assert_eq!(
            watch(&["--control-port", "2100"]).unwrap().control_ports,
            [21, 2100]
        );
        for bad in ["nan", "inf", "-1", "x"] {
            assert!(watch(&["--duration", bad]).is_err(), "{bad}");
            assert!(watch(&["--no-answer-after", bad]).is_err(), "{bad}");
        }
        assert!(watch(&["--duration", "2.5"]).is_ok());
    }

    #[test]
    fn a_flag_overrides_the_config_file() {
        let cli = Cli::try_parse_from([
            "ftp-alg",
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/ftp-alg.toml"),
            "--lan-interface",
            "lan7",
            "--pinhole-timeout",
            "5",
            "--ct-mark",
            "0x10",
        ])
        .unwrap();
        let Subcommands::Check(settings) = cli.command else {
            panic!("parsed as another subcommand")
        };
        let config = settings.load().unwrap();
        assert_eq!(config.lan_interfaces, vec!["lan7".to_string()]);
        assert_eq!(config.pinhole.timeout_secs, 5);
        assert_eq!(config.nftables.ct_mark, 0x10);
        // Untouched keys keep the file's values.
        assert_eq!(config.wan_interface.as_deref(), Some("eth0"));
    }
}

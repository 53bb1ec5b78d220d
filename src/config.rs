//! The typed configuration: one struct, read from TOML, overridden by flags, validated once.
//!
//! Every key has an explicit default so that a config file only names what differs from it,
//! and unknown keys are errors (a misspelt key silently ignored is a firewall hole nobody sees).

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What went wrong while loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema; the message names line and key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (includes line, column and key).
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The dotted key.
        key: &'static str,
        /// Why, and what to do.
        reason: String,
    },
}

/// The deployment mode (see DESIGN.md "Deployment modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// LAN clients behind a masquerading gateway.
    ClientNat,
    /// A stateful firewall without NAT: the client's own address is kept toward the server.
    Routed,
}

/// What to do when a server's 227 names an address other than the server the client reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PasvAddressPolicy {
    /// Replace it with the address the control connection actually reached (servers behind
    /// their own NAT announce private addresses; this makes them work).
    Rewrite,
    /// Refuse the reply with a 425 to the client.
    Refuse,
}

/// What to do with `AUTH TLS`/`AUTH SSL` (FTPS), whose control channel the ALG cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TlsPolicy {
    /// Answer `534` so that clients which allow it fall back to plain FTP.
    Refuse,
    /// Forward it; once the server accepts, relay the encrypted bytes untouched. No data
    /// connection of that session can be opened by the ALG (logged as such).
    Passthrough,
}

/// What runs at `runtime.realtime_priority`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RealtimeScope {
    /// The firewall thread, and a session thread only from the moment it asks for a pinhole
    /// until it has released the PORT/227 that waited for it (a few µs per data channel):
    /// the install is not preempted, and relaying stays with the normal scheduler.
    #[default]
    Pinholes,
    /// The session threads and the firewall thread all the time: relaying too comes before
    /// every normal process on the box (the control channel's tail drops; the rest of the
    /// box waits for the daemon).
    Threads,
}

/// The priority `runtime.realtime_priority = "auto"` uses where the process may: low, so that
/// the kernel's own real-time threads and anything an admin raised on purpose come first.
pub const AUTO_REALTIME_PRIORITY: u8 = 10;

/// Longest idle or connect timeout accepted (7 days): far beyond any FTP use, and far from
/// the clock arithmetic's limits.
const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// `runtime.realtime_priority`: `"auto"` or a number (`0` = off, `1`-`99` a `SCHED_FIFO`
/// priority).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RealtimePriority {
    /// [`AUTO_REALTIME_PRIORITY`] if the process may use it, else the normal scheduler (the
    /// daemon says which at start).
    #[default]
    Auto,
    /// This priority, required: the daemon does not start without the right to it; `0` is
    /// the normal scheduler.
    Fixed(u8),
}

impl std::fmt::Display for RealtimePriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(priority) => write!(f, "{priority}"),
        }
    }
}

impl std::str::FromStr for RealtimePriority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        s.parse()
            .map(Self::Fixed)
            .map_err(|_| format!("{s:?} is neither \"auto\" nor a priority 0-99 (0 = off)"))
    }
}

impl Serialize for RealtimePriority {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("auto"),
            Self::Fixed(priority) => serializer.serialize_u8(*priority),
        }
    }
}

impl<'de> Deserialize<'de> for RealtimePriority {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RealtimePriority;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\" or a priority 0-99 (0 = off)")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v.eq_ignore_ascii_case("auto") {
                    Ok(RealtimePriority::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u8::try_from(v)
                    .map(RealtimePriority::Fixed)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u8::try_from(v)
                    .map(RealtimePriority::Fixed)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Deployment mode.
    pub mode: Mode,
    /// Interfaces whose FTP control traffic is intercepted (the LAN side).
    pub lan_interfaces: Vec<String>,
    /// The WAN interface (its address is announced in rewritten PORT/EPRT).
    pub wan_interface: Option<String>,
    /// The WAN address to announce; discovered from `wan_interface` when absent.
    pub wan_address: Option<IpAddr>,
    /// Where the proxy listens for redirected IPv4 control connections.
    pub listen: SocketAddr,
    /// Where it listens for redirected IPv6 control connections (same port as `listen`;
    /// none, written `""`: IPv6 is not intercepted).
    #[serde(with = "off_when_empty")]
    pub listen6: Option<SocketAddr>,
    /// Published servers (`reverse` mode): each listens on a public address and port and
    /// forwards to its backend.
    pub reverse: Vec<ReverseConfig>,
    /// Policy routing for `routed` mode (transparent upstream connections).
    pub routing: RoutingConfig,
    /// Destination ports that are intercepted as FTP control connections.
    pub control_ports: Vec<u16>,
    /// Pinhole settings.
    pub pinhole: PinholeConfig,
    /// Active-mode settings.
    pub active: ActiveConfig,
    /// Passive-mode settings.
    pub passive: PassiveConfig,
    /// Resource limits.
    pub limits: Limits,
    /// Command policy.
    pub commands: CommandPolicy,
    /// FTPS policy.
    pub tls: TlsConfig,
    /// nftables naming.
    pub nftables: NftablesConfig,
    /// Logging.
    pub log: LogConfig,
    /// The local status socket for `ftp-alg status`.
    pub status: StatusConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The async runtime.
    pub runtime: RuntimeConfig,
}

/// The async runtime that runs the sessions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Session threads: `0` one per CPU, `n` that many. Each runs its own single-threaded
    /// runtime and keeps a session from its first byte to its last (no hand-off between
    /// threads); new sessions go to them in turn. The first also accepts connections and
    /// serves the status socket and metrics. Read at start; a reload does not change it.
    pub workers: usize,
    /// Busy polling, in microseconds: after a control socket delivered bytes, its thread
    /// polls without sleeping this long, so the reply that follows is relayed without a
    /// wake-up (tens of µs per message inside a VM). Costs CPU while sessions are active;
    /// `0` (the default) turns it off. At most 10,000. Read at start.
    pub busy_poll_us: u64,
    /// Real-time priority (`SCHED_FIFO`) for the pinhole path (see `realtime_scope`):
    /// `"auto"` (the default) uses [`AUTO_REALTIME_PRIORITY`] where the process may
    /// (`CAP_SYS_NICE`, or an `RLIMIT_RTPRIO` of at least that, systemd's `LimitRTPRIO=`) and
    /// the normal scheduler where it may not, saying so at start; `1`-`99` that priority, and
    /// the daemon refuses to start without the right to it; `0` the normal scheduler. On a
    /// gateway whose CPUs are busy, it keeps other processes from preempting a session in the
    /// middle of a pinhole install (the install p99 tail). Read at start.
    pub realtime_priority: RealtimePriority,
    /// What runs real-time when `realtime_priority` is set: `pinholes` (the default: a
    /// session thread from its pinhole request to the release of the reply that waited for
    /// it, and the firewall thread) or `threads` (the session threads all the time; not with
    /// busy polling, whose spinning would then starve the CPU). Read at start.
    pub realtime_scope: RealtimeScope,
}

/// The local status socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Socket path (mode 0660); none, written `""`, disables it.
    #[serde(with = "off_when_empty")]
    pub socket: Option<PathBuf>,
    /// Group allowed to read it besides root.
    pub group: Option<String>,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            socket: Some(PathBuf::from(DEFAULT_STATUS_SOCKET)),
            group: None,
        }
    }
}

/// Whether `name` is a table name the daemon accepts: 1-32 of `[A-Za-z0-9_]` (safe to paste
/// into an `nft` script).
pub fn is_table_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A setting that is on by default and switched off with `""` (TOML has no null, and a key
/// left out takes its default): written and read as text.
mod off_when_empty {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    pub(super) fn serialize<T: Serialize, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => value.serialize(serializer),
            None => serializer.serialize_str(""),
        }
    }

    pub(super) fn deserialize<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(deserializer)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|e| D::Error::custom(format!("{text:?}: {e}")))
    }
}

/// Where `ftp-alg status` looks by default.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/ftp-alg/status.sock";

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the `/metrics` HTTP endpoint; none (the default) disables it.
    pub listen: Option<SocketAddr>,
}

/// Which commands pass, and what the server may reveal about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandPolicy {
    /// If not empty, only these verbs pass (plus the data-channel commands the ALG handles).
    pub allow: Vec<String>,
    /// Verbs refused with `502`, e.g. ["SITE", "DELE"].
    pub deny: Vec<String>,
    /// Replace the server's greeting with a neutral `220 FTP server ready`.
    pub mask_banner: bool,
    /// Replace the server's SYST reply with `215 UNIX Type: L8`.
    pub mask_syst: bool,
}

/// FTPS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `refuse` (default) or `passthrough`.
    pub auth: TlsPolicy,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            auth: TlsPolicy::Refuse,
        }
    }
}

/// One published server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseConfig {
    /// The public address and port clients connect to (on the gateway).
    pub listen: SocketAddr,
    /// The server behind the gateway.
    pub backend: SocketAddr,
}

/// Policy routing that delivers the server's replies to transparent upstream sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Packet mark of replies to our transparent sockets.
    pub fwmark: u32,
    /// Routing table holding the `local` default route for marked packets.
    pub table: u32,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            fwmark: 0x2122,
            table: 2121,
        }
    }
}

/// Pinhole settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PinholeConfig {
    /// Seconds a pinhole waits for its connection before the kernel expires it.
    pub timeout_secs: u64,
    /// Most pinholes one session may hold open at once.
    pub max_per_session: usize,
}

/// Active-mode (PORT/EPRT) settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveConfig {
    /// Gateway ports handed out for rewritten PORT/EPRT, as "low-high".
    pub port_range: String,
    /// Seconds a released gateway port rests before the same server gets it again: the
    /// server's previous data connection on that tuple must have finished its close (2 s
    /// by default); a stale flow from port 20 is removed from conntrack when the port is
    /// leased again. Raise it (e.g. 60) for servers with another fixed active source port.
    pub port_quarantine_secs: u64,
}

/// Passive-mode (PASV/EPSV) settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConfig {
    /// What to do with a 227 naming another address than the server's.
    pub address_policy: PasvAddressPolicy,
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most concurrent sessions; more get `421`.
    pub max_sessions: usize,
    /// Most concurrent sessions from one client address; more get `421`.
    pub max_sessions_per_client: usize,
    /// New sessions per second one client address may open (burst of the same size).
    pub new_sessions_per_second_per_client: u32,
    /// For the per-client limits, IPv6 clients count per prefix of this length: one host
    /// can take any address of its /64.
    pub client_prefix_v6: u8,
    /// Longest accepted control line in bytes, terminator included.
    pub max_line: usize,
    /// Seconds a control connection may sit idle (never while a data channel is alive).
    pub idle_timeout_secs: u64,
    /// Seconds to wait for the server to accept the control connection.
    pub connect_timeout_secs: u64,
    /// On SIGTERM: seconds running sessions get to finish before the daemon exits.
    pub drain_grace_secs: u64,
}

/// nftables naming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NftablesConfig {
    /// Name of our own `inet` table.
    pub table: String,
    /// Conntrack mark set on admitted data connections; an admin's drop-policy forward chain
    /// honours our pinholes with `ct mark <this> accept`.
    pub ct_mark: u32,
    /// How often the kernel collects consumed and expired pinholes from the `_hot` sets, in
    /// ms: those that take a key the daemon put in a main pinhole set less than 3 s ago (a
    /// server with a small passive range hands the same port to the same client many times a
    /// second, and each consumed copy stays on its hash chain until collected; long chains
    /// make adds fail with EBUSY and cost a ~10 ms aborted transaction). These sets only hold
    /// the keys being reused right now, so a short interval is cheap. The main sets, which hold
    /// every other pinhole however many, collect every second.
    pub gc_interval_ms: u32,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Filter in `tracing` EnvFilter syntax, e.g. `info` or `ftp_alg=debug`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::ClientNat,
            lan_interfaces: Vec::new(),
            wan_interface: None,
            wan_address: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 2121)),
            listen6: Some(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 2121))),
            reverse: Vec::new(),
            routing: RoutingConfig::default(),
            control_ports: vec![21],
            pinhole: PinholeConfig::default(),
            active: ActiveConfig::default(),
            passive: PassiveConfig::default(),
            limits: Limits::default(),
            commands: CommandPolicy::default(),
            tls: TlsConfig::default(),
            nftables: NftablesConfig::default(),
            log: LogConfig::default(),
            status: StatusConfig::default(),
            metrics: MetricsConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

impl Default for PinholeConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 30,
            max_per_session: 8,
        }
    }
}

impl Default for ActiveConfig {
    fn default() -> Self {
        Self {
            port_range: "40000-49999".into(),
            port_quarantine_secs: 2,
        }
    }
}

impl Default for PassiveConfig {
    fn default() -> Self {
        Self {
            address_policy: PasvAddressPolicy::Rewrite,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 4096,
            max_sessions_per_client: 64,
            new_sessions_per_second_per_client: 20,
            client_prefix_v6: 64,
            max_line: 2048,
            idle_timeout_secs: 900,
            connect_timeout_secs: 10,
            drain_grace_secs: 30,
        }
    }
}

impl Default for NftablesConfig {
    fn default() -> Self {
        Self {
            table: "ftp_alg".into(),
            ct_mark: 0x2121,
            gc_interval_ms: 20,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Reads and parses a TOML file (not yet validated; see [`Config::validate`]).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })
    }

    /// Checks every value once; the returned settings are what the daemon runs with.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        if self.lan_interfaces.is_empty() && self.reverse.is_empty() {
            return Err(invalid(
                "lan_interfaces",
                "name at least one LAN interface whose FTP traffic is intercepted, e.g. [\"eth1\"], or publish a server with [[reverse]]",
            ));
        }
        for name in self.lan_interfaces.iter().chain(&self.wan_interface) {
            check_ifname(name)?;
        }
        if self.mode == Mode::ClientNat
            && !self.lan_interfaces.is_empty()
            && self.wan_interface.is_none()
            && self.wan_address.is_none()
        {
            return Err(invalid(
                "wan_interface",
                "client-nat needs wan_interface (its IPv4 address is discovered) or wan_address",
            ));
        }
        if let Some(listen6) = self.listen6
            && (!listen6.is_ipv6() || listen6.port() != self.listen.port())
        {
            return Err(invalid(
                "listen6",
                "must be an IPv6 address with the same port as `listen`, e.g. \"[::]:2121\" (the redirect names one port)",
            ));
        }
        // An IPv4-mapped IPv6 address carries IPv4 traffic, but its pinholes would go into the
        // IPv6 sets, where no IPv4 data connection ever matches: transfers would fail quietly.
        let mapped = |ip: IpAddr| matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
        let addresses = self
            .wan_address
            .map(|ip| ("wan_address", ip))
            .into_iter()
            .chain(self.listen6.map(|a| ("listen6", a.ip())))
            .chain(self.reverse.iter().flat_map(|published| {
                [
                    ("reverse.listen", published.listen.ip()),
                    ("reverse.backend", published.backend.ip()),
                ]
            }));
        for (key, ip) in addresses {
            if mapped(ip) {
                return Err(invalid(
                    key,
                    format!("{ip} is an IPv4-mapped IPv6 address; write the IPv4 address itself"),
                ));
            }
        }
        for (i, published) in self.reverse.iter().enumerate() {
            if published.listen.is_ipv4() != published.backend.is_ipv4() {
                return Err(invalid(
                    "reverse.backend",
                    format!(
                        "entry {}: listen and backend must be of the same address family",
                        i + 1
                    ),
                ));
            }
            if published.listen.port() == 0 || published.backend.port() == 0 {
                return Err(invalid(
                    "reverse.listen",
                    format!("entry {}: ports must not be 0", i + 1),
                ));
            }
        }
        if self.routing.fwmark == 0
            || self.routing.table == 0
            || self.routing.table >= 252 && self.routing.table <= 255
        {
            return Err(invalid(
                "routing",
                "fwmark must be non-zero and table a free routing table number (not 0 or 252-255)",
            ));
        }
        if self.control_ports.is_empty() || self.control_ports.contains(&0) {
            return Err(invalid(
                "control_ports",
                "list one or more TCP ports 1-65535, e.g. [21]",
            ));
        }
        if !self.listen.is_ipv4() {
            return Err(invalid(
                "listen",
                "must be an IPv4 address and port; IPv6 goes in listen6",
            ));
        }
        if self.listen.port() == 0 {
            return Err(invalid(
                "listen",
                "the listener needs a fixed port, e.g. 0.0.0.0:2121",
            ));
        }
        // The intercept rule redirects to the incoming interface's own address.
        if !self.lan_interfaces.is_empty()
            && (self.listen.ip().is_loopback()
                || self.listen6.is_some_and(|addr| addr.ip().is_loopback()))
        {
            return Err(invalid(
                "listen",
                "intercepted connections are redirected to the LAN interface's own address, \
                 never to loopback: listen on 0.0.0.0:PORT (and [::]:PORT)",
            ));
        }
        let active_ports = parse_port_range(&self.active.port_range)?;
        // The gateway's own listeners must not be handed out as data ports.
        let own = std::iter::once(self.listen.port())
            .chain(self.reverse.iter().map(|published| published.listen.port()));
        for port in own {
            if active_ports.contains(&port) {
                return Err(invalid(
                    "active.port_range",
                    format!(
                        "includes {port}, a port ftp-alg listens on; pick a range clear of \
                         `listen` and the reverse listeners (default 40000-49999)"
                    ),
                ));
            }
        }
        if self.pinhole.timeout_secs == 0 || self.pinhole.timeout_secs > 3600 {
            return Err(invalid("pinhole.timeout_secs", "must be 1..=3600 seconds"));
        }
        if self.pinhole.max_per_session == 0 {
            return Err(invalid("pinhole.max_per_session", "must be at least 1"));
        }
        if self.limits.max_sessions == 0 {
            return Err(invalid("limits.max_sessions", "must be at least 1"));
        }
        if self.limits.max_sessions_per_client == 0 {
            return Err(invalid(
                "limits.max_sessions_per_client",
                "must be at least 1",
            ));
        }
        if self.limits.new_sessions_per_second_per_client == 0 {
            return Err(invalid(
                "limits.new_sessions_per_second_per_client",
                "must be at least 1",
            ));
        }
        for (key, verbs) in [
            ("commands.allow", &self.commands.allow),
            ("commands.deny", &self.commands.deny),
        ] {
            // As the session reads a verb: a letter, then letters or digits (XSHA256, MD5).
            if let Some(bad) = verbs.iter().find(|v| {
                v.is_empty()
                    || v.len() > 8
                    || !v.starts_with(|c: char| c.is_ascii_alphabetic())
                    || !v.bytes().all(|b| b.is_ascii_alphanumeric())
            }) {
                return Err(invalid(
                    key,
                    format!(
                        "`{bad}` is not an FTP command verb (1-8 characters: a letter, then \
                         letters or digits)"
                    ),
                ));
            }
        }
        if !(64..=65536).contains(&self.limits.max_line) {
            return Err(invalid(
                "limits.max_line",
                "must be 64..=65536 bytes (RFC 959 lines are short; 2048 is plenty)",
            ));
        }
        if !(32..=128).contains(&self.limits.client_prefix_v6) {
            return Err(invalid(
                "limits.client_prefix_v6",
                "must be 32..=128: the IPv6 prefix one client counts as (64: a host can use \
                 any address of its /64; 128: per address)",
            ));
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&self.limits.idle_timeout_secs) {
            return Err(invalid(
                "limits.idle_timeout_secs",
                "must be 1..=604800 seconds (7 days); a session with a running transfer is \
                 never cut by it",
            ));
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&self.limits.connect_timeout_secs) {
            return Err(invalid(
                "limits.connect_timeout_secs",
                "must be 1..=604800 seconds (7 days)",
            ));
        }
        if self.limits.drain_grace_secs > MAX_TIMEOUT_SECS {
            return Err(invalid(
                "limits.drain_grace_secs",
                "must be 0..=604800 seconds (7 days); a second SIGTERM ends the wait at once",
            ));
        }
        if self.active.port_quarantine_secs > MAX_TIMEOUT_SECS {
            return Err(invalid(
                "active.port_quarantine_secs",
                "must be 0..=604800 seconds (7 days); 60 covers servers with another fixed \
                 active source port",
            ));
        }
        if !is_table_name(&self.nftables.table) {
            return Err(invalid(
                "nftables.table",
                "use 1-32 characters of [A-Za-z0-9_]",
            ));
        }
        if !(10..=60_000).contains(&self.nftables.gc_interval_ms) {
            return Err(invalid(
                "nftables.gc_interval_ms",
                "must be 10..=60000 ms (default 20): the interval of the sets that take quickly reused keys",
            ));
        }
        if self.nftables.ct_mark == 0 {
            return Err(invalid(
                "nftables.ct_mark",
                "0 means \"no mark\"; pick a non-zero value not used by your own ruleset",
            ));
        }
        if let RealtimePriority::Fixed(priority @ 100..) = self.runtime.realtime_priority {
            return Err(invalid(
                "runtime.realtime_priority",
                format!(
                    "{priority} is out of range: \"auto\", 0 (off) or a SCHED_FIFO priority \
                     1-99; a low one (e.g. 10) is enough"
                ),
            ));
        }
        if matches!(self.runtime.realtime_priority, RealtimePriority::Fixed(1..))
            && self.runtime.realtime_scope == RealtimeScope::Threads
            && self.runtime.busy_poll_us > 0
        {
            return Err(invalid(
                "runtime.realtime_priority",
                "with runtime.realtime_scope = \"threads\" it cannot be combined with \
                 runtime.busy_poll_us: a real-time thread that polls starves the other \
                 processes on its CPU; use realtime_scope = \"pinholes\" or set one of them to 0",
            ));
        }
        if self.runtime.busy_poll_us > 10_000 {
            return Err(invalid(
                "runtime.busy_poll_us",
                "must be 0 (off) to 10000 µs; 50-200 covers a command's round trip to the server",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "`{}` is not a valid filter; try info or debug",
                    self.log.level
                ),
            ));
        }
        Ok(Validated {
            config: self.clone(),
            active_ports,
        })
    }
}

/// A configuration that passed [`Config::validate`], with derived values.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The settings as given.
    pub config: Config,
    /// The parsed active port range.
    pub active_ports: RangeInclusive<u16>,
}

impl Validated {
    /// Pinhole timeout.
    pub fn pinhole_timeout(&self) -> Duration {
        Duration::from_secs(self.config.pinhole.timeout_secs)
    }
    /// Idle timeout of a control connection.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.config.limits.idle_timeout_secs)
    }
    /// Grace period for sessions on SIGTERM.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_secs(self.config.limits.drain_grace_secs)
    }

    /// Timeout for connecting to the server.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.config.limits.connect_timeout_secs)
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

fn check_ifname(name: &str) -> Result<(), ConfigError> {
    // IFNAMSIZ is 16 including the NUL; the name ends up quoted in an nft file.
    if name.is_empty()
        || name.len() > 15
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            "lan_interfaces/wan_interface",
            format!("`{name}` is not an interface name (1-15 of [A-Za-z0-9._-])"),
        ));
    }
    Ok(())
}

/// Parses "low-high" into a port range above 1023.
pub fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, ConfigError> {
    let bad = || {
        invalid(
            "active.port_range",
            format!("`{text}` is not \"low-high\" with 1024 <= low <= high <= 65535"),
        )
    };
    let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo < 1024 || lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ftp-alg.toml");
        let config = Config::from_file(&path).expect("example parses");
        config.validate().expect("example validates");
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key_and_line() {
        let err = Config::from_toml(
            "lan_interfaces = [\"eth1\"]\nlan_interface = 3\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("lan_interface"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn command_lists_take_verbs_as_the_session_reads_them() {
        let check = |verbs: &[&str]| {
            Config {
                lan_interfaces: vec!["eth1".into()],
                wan_address: Some("192.0.2.1".parse().unwrap()),
                commands: CommandPolicy {
                    deny: verbs.iter().map(ToString::to_string).collect(),
                    ..CommandPolicy::default()
                },
                ..Config::default()
            }
            .validate()
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert!(check(&["DELE", "XSHA256", "MD5"]).is_ok());
        for bad in ["", "1ABC", "SITE EXEC", "X-1", "TOOLONGVERB"] {
            let err = check(&[bad]).unwrap_err();
            assert!(err.contains("commands.deny"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_intercept_listener_on_loopback_is_refused() {
        let check = |listen: &str, listen6: Option<&str>| {
            Config {
                lan_interfaces: vec!["eth1".into()],
                wan_address: Some("192.0.2.1".parse().unwrap()),
                listen: listen.parse().unwrap(),
                listen6: listen6.map(|a| a.parse().unwrap()),
                ..Config::default()
            }
            .validate()
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        let err = check("127.0.0.1:2121", None).unwrap_err();
        assert!(err.contains("listen") && err.contains("0.0.0.0"), "{err}");
        assert!(check("0.0.0.0:2121", Some("[::1]:2121")).is_err());
        assert!(check("0.0.0.0:2121", Some("[::]:2121")).is_ok());
        assert!(check("10.0.0.1:2121", None).is_ok());
    }

    #[test]
    fn missing_lan_interfaces_is_refused() {
        let err = Config::default().validate().unwrap_err().to_string();
        assert!(err.contains("lan_interfaces"), "{err}");
    }

    #[test]
    fn timeouts_gc_interval_and_busy_poll_are_bounded() {
        let valid = |f: &dyn Fn(&mut Config)| {
            let mut config = Config {
                lan_interfaces: vec!["eth1".into()],
                wan_address: Some("192.0.2.1".parse().unwrap()),
                ..Config::default()
            };
            f(&mut config);
            config.validate().map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(valid(&|_| {}).is_ok());
        // "Never time out" written as a huge number would overflow the session's clock.
        for bad in [0, MAX_TIMEOUT_SECS + 1, u64::MAX] {
            let err = valid(&|c| c.limits.idle_timeout_secs = bad).unwrap_err();
            assert!(err.contains("limits.idle_timeout_secs"), "{err}");
            let err = valid(&|c| c.limits.connect_timeout_secs = bad).unwrap_err();
            assert!(err.contains("limits.connect_timeout_secs"), "{err}");
        }
        assert!(valid(&|c| c.limits.idle_timeout_secs = MAX_TIMEOUT_SECS).is_ok());
        // Both end up added to a clock: at SIGTERM, and when an active port is released.
        for bad in [MAX_TIMEOUT_SECS + 1, i64::MAX as u64, u64::MAX] {
            let err = valid(&|c| c.limits.drain_grace_secs = bad).unwrap_err();
            assert!(err.contains("limits.drain_grace_secs"), "{err}");
            let err = valid(&|c| c.active.port_quarantine_secs = bad).unwrap_err();
            assert!(err.contains("active.port_quarantine_secs"), "{err}");
        }
        assert!(valid(&|c| c.limits.drain_grace_secs = 0).is_ok());
        assert!(valid(&|c| c.active.port_quarantine_secs = MAX_TIMEOUT_SECS).is_ok());
        for bad in [0, 31, 129] {
            let err = valid(&|c| c.limits.client_prefix_v6 = bad).unwrap_err();
            assert!(err.contains("limits.client_prefix_v6"), "{err}");
        }
        let err =
            valid(&|c| c.wan_address = Some("::ffff:192.0.2.1".parse().unwrap())).unwrap_err();
        assert!(
            err.contains("wan_address") && err.contains("IPv4-mapped"),
            "{err}"
        );
        let err = valid(&|c| c.active.port_range = "2000-3000".into()).unwrap_err();
        assert!(
            err.contains("active.port_range") && err.contains("2121"),
            "{err}"
        );
        assert!(valid(&|c| c.nftables.gc_interval_ms = 1000).is_ok());
        for bad in [0, 9, 60_001] {
            let err = valid(&|c| c.nftables.gc_interval_ms = bad).unwrap_err();
            assert!(err.contains("nftables.gc_interval_ms"), "{err}");
        }
        assert!(valid(&|c| c.runtime.busy_poll_us = 10_000).is_ok());
        let err = valid(&|c| c.runtime.busy_poll_us = 10_001).unwrap_err();
        assert!(err.contains("runtime.busy_poll_us"), "{err}");
        assert!(valid(&|c| c.runtime.realtime_priority = RealtimePriority::Fixed(99)).is_ok());
        let err =
            valid(&|c| c.runtime.realtime_priority = RealtimePriority::Fixed(100)).unwrap_err();
        assert!(err.contains("runtime.realtime_priority"), "{err}");
        // Real-time session threads must not spin; a boost around installs may.
        assert_eq!(
            Config::default().runtime.realtime_scope,
            RealtimeScope::Pinholes
        );
        assert!(
            valid(&|c| {
                c.runtime.realtime_priority = RealtimePriority::Fixed(10);
                c.runtime.busy_poll_us = 100;
            })
            .is_ok()
        );
        // "auto" steps back by itself (at start) rather than refuse.
        assert!(
            valid(&|c| {
                c.runtime.realtime_scope = RealtimeScope::Threads;
                c.runtime.busy_poll_us = 100;
            })
            .is_ok()
        );
        let err = valid(&|c| {
            c.runtime.realtime_priority = RealtimePriority::Fixed(10);
            c.runtime.realtime_scope = RealtimeScope::Threads;
            c.runtime.busy_poll_us = 100;
        })
        .unwrap_err();
        assert!(err.contains("busy_poll_us"), "{err}");
        let parsed: Config = toml::from_str("[runtime]\nrealtime_scope = \"threads\"\n").unwrap();
        assert_eq!(parsed.runtime.realtime_scope, RealtimeScope::Threads);
    }

    #[test]
    fn realtime_priority_is_auto_by_default_and_reads_auto_or_a_number() {
        assert_eq!(
            Config::default().runtime.realtime_priority,
            RealtimePriority::Auto
        );
        let read = |text: &str| {
            toml::from_str::<Config>(&format!("[runtime]\nrealtime_priority = {text}\n"))
                .map(|c| c.runtime.realtime_priority)
                .map_err(|e| e.to_string())
        };
        assert_eq!(read("\"auto\""), Ok(RealtimePriority::Auto));
        assert_eq!(read("0"), Ok(RealtimePriority::Fixed(0)));
        assert_eq!(read("10"), Ok(RealtimePriority::Fixed(10)));
        for bad in ["\"high\"", "-1", "300", "1.5"] {
            let err = read(bad).unwrap_err();
            assert!(err.contains("\"auto\" or a priority 0-99"), "{bad}: {err}");
        }
        // Flags: the same words.
        assert_eq!("auto".parse(), Ok(RealtimePriority::Auto));
        assert_eq!("5".parse(), Ok(RealtimePriority::Fixed(5)));
        assert!("x".parse::<RealtimePriority>().is_err());
        // Written back as it is read.
        for value in [RealtimePriority::Auto, RealtimePriority::Fixed(7)] {
            let mut config = Config::default();
            config.runtime.realtime_priority = value;
            let text = toml::to_string(&config).expect("serialize");
            let back: Config = toml::from_str(&text).expect("parse back");
            assert_eq!(back.runtime.realtime_priority, value);
        }
    }

    #[test]
    fn the_status_socket_and_the_ipv6_listener_are_switched_off_with_empty_text() {
        let read = |text: &str| toml::from_str::<Config>(text).map_err(|e| e.to_string());
        // Left out: the defaults.
        let defaults = read("").expect("empty file");
        assert!(defaults.status.socket.is_some() && defaults.listen6.is_some());
        // "": off.
        let off = read("listen6 = \"\"\n[status]\nsocket = \"\"\n").expect("off");
        assert_eq!(off.status.socket, None);
        assert_eq!(off.listen6, None);
        let on = read("listen6 = \"[::]:2121\"\n[status]\nsocket = \"/run/x.sock\"\n").expect("on");
        assert_eq!(on.status.socket, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(on.listen6, Some("[::]:2121".parse().unwrap()));
        let err = read("listen6 = \"[::]\"\n").unwrap_err();
        assert!(err.contains("listen6"), "{err}");
        // `ftp-alg check` prints what it read; read back, it is the same.
        for config in [defaults, off, on] {
            let text = toml::to_string(&config).expect("serialize");
            let back: Config = toml::from_str(&text).expect("parse back");
            assert_eq!(back, config, "{text}");
        }
        // The shipped file with its status socket switched off, as its comment says.
        let shipped = include_str!("../deploy/ftp-alg.toml")
            .replace("socket = \"/run/ftp-alg/status.sock\"", "socket = \"\"");
        assert_eq!(read(&shipped).expect("shipped").status.socket, None);
    }

    #[test]
    fn port_range_below_1024_is_refused() {
        assert!(parse_port_range("1000-2000").is_err());
        assert!(parse_port_range("3000-2000").is_err());
        assert!(parse_port_range("x").is_err());
        assert_eq!(parse_port_range("40000-40010").unwrap(), 40000..=40010);
    }

    #[test]
    fn interface_names_that_could_escape_the_nft_file_are_refused() {
        let config = Config {
            lan_interfaces: vec!["eth0\" accept".into()],
            wan_address: Some("192.0.2.1".parse().unwrap()),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}

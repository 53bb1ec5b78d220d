//! The daemon's life: install the base table, start the firewall task, listen, serve until a
//! signal, then remove everything we put into the kernel.

pub mod instance;
mod notify;

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{ConfigError, Validated};
use crate::config::{Mode, RealtimeScope};
use crate::firewall::routing::{RoutingError, TransparentRouting};
use crate::firewall::table::{BaseTable, TableError};
use crate::firewall::{FirewallError, Healing, NftFirewall};
use crate::proxy::status::{self, StatusError};
use crate::proxy::{self, InterfaceError, ProxyError, ProxySettings, Service, Shards};
use crate::realtime;
use crate::session::{Policy, PortAllocator, Topology};
use crate::telemetry::Telemetry;

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The WAN address could not be found.
    #[error(transparent)]
    Interface(#[from] InterfaceError),
    /// The listener could not be bound.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The base table could not be loaded or removed.
    #[error("{0} (the daemon needs CAP_NET_ADMIN and the nftables package)")]
    Table(#[from] TableError),
    /// The netlink socket could not be opened.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// Policy routing for routed mode could not be installed.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// The status socket could not be created.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The session threads could not be started.
    #[error("cannot start the session threads: {0} (try a smaller runtime.workers)")]
    Threads(std::io::Error),
    /// Another daemon runs with the same table in this network namespace.
    #[error(transparent)]
    Instance(#[from] instance::InstanceError),
    /// `ftp-alg cleanup` found nothing it could trust to name what to remove.
    #[error(
        "no record of a daemon that died and the configuration cannot be read ({0}); name the \
         table: ftp-alg cleanup --table NAME [--mode routed]"
    )]
    NothingKnown(String),
    /// A table name that cannot be one (from an edited file).
    #[error("{0:?} is not an nftables table name this daemon uses (letters, digits, _; 1-32)")]
    BadTable(String),
    /// Real-time scheduling (`runtime.realtime_priority`) was refused.
    #[error("runtime.realtime_priority: {0}")]
    Realtime(std::io::Error),
}

/// How often the daemon checks that its table still exists (interception depends on it).
const TABLE_CHECK_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// What exiting takes after the drain, at most: the session threads' stop (1 s), waiting out
/// a table reinstall (10 s), removing the table and routing (`nft`, `ip`).
const EXIT_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(15);

/// The async runtime for [`run`]: one thread, which also runs the first share of the
/// sessions; [`run`] starts the other session threads (`runtime.workers`).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// How many session threads `runtime.workers` asks for: `0` is one per CPU.
fn session_threads(workers: usize) -> usize {
    match workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    }
}

/// The base table described by a validated config.
pub fn base_table(settings: &Validated) -> BaseTable {
    table_of(&settings.config)
}

fn table_of(c: &crate::config::Config) -> BaseTable {
    BaseTable {
        table: c.nftables.table.clone(),
        lan_interfaces: c.lan_interfaces.clone(),
        control_ports: c.control_ports.clone(),
        listen_port: c.listen.port(),
        ct_mark: c.nftables.ct_mark,
        gc_interval_ms: c.nftables.gc_interval_ms,
        route_mark: c.routing.fwmark,
    }
}

/// One thing [`cleanup`] did or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanedUp {
    /// A table removed, with the policy routing its daemon had installed (if any).
    Removed {
        /// The table.
        table: String,
        /// Routed mode's (fwmark, routing table).
        routing: Option<(u32, u32)>,
    },
    /// A table not in the kernel: nothing to remove.
    Absent {
        /// The table.
        table: String,
    },
    /// A running daemon claims this table: left alone.
    Running {
        /// The table.
        table: String,
    },
    /// Removing it failed (the rest went on).
    Failed {
        /// The table.
        table: String,
        /// Why.
        error: String,
        /// The name is not a table name (a record or file edited by hand).
        bad_name: bool,
    },
}

impl CleanedUp {
    /// The table it is about.
    pub fn table(&self) -> &str {
        match self {
            Self::Removed { table, .. }
            | Self::Absent { table }
            | Self::Running { table }
            | Self::Failed { table, .. } => table,
        }
    }

    /// Whether it failed.
    pub fn failed(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

impl std::fmt::Display for CleanedUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Removed { table, routing } => {
                write!(f, "removed table inet {table}")?;
                if let Some((fwmark, routing_table)) = routing {
                    write!(
                        f,
                        " and the policy routing of routed mode (fwmark {fwmark:#x}, table \
                         {routing_table})"
                    )?;
                }
                Ok(())
            }
            Self::Absent { table } => write!(f, "no table inet {table}: nothing to remove"),
            Self::Running { table } => {
                write!(
                    f,
                    "table inet {table} belongs to a running ftp-alg: left alone"
                )
            }
            Self::Failed { table, error, .. } => {
                write!(f, "table inet {table} could not be removed: {error}")
            }
        }
    }
}

/// Removes what a daemon that did not exit cleanly (SIGKILL, an OOM or watchdog kill, a stop
/// that timed out) left in the kernel: its table, whose redirect sends the LAN's FTP control
/// connections to a port nothing listens on, and in routed mode its policy routing. What it
/// installed comes from its record ([`instance`]), so a configuration edited since its start
/// (or broken) does not matter; the configuration's own table is cleaned too when no record
/// names it. A table a running daemon claims is left alone; what is not there is not an
/// error; one failure does not stop the rest ([`CleanedUp::Failed`]). For systemd's
/// `ExecStopPost` and for an admin after a crash.
pub fn cleanup(
    config: Result<&crate::config::Config, String>,
) -> Result<Vec<CleanedUp>, DaemonError> {
    let survey = instance::survey(std::path::Path::new(instance::DIR));
    let mut done = Vec::new();
    for (installed, record, claim) in survey.gone {
        let outcome = remove_installed(&installed);
        // The record goes once what it names is gone, or when it cannot name anything.
        if !matches!(
            outcome,
            CleanedUp::Failed {
                bad_name: false,
                ..
            }
        ) {
            let _ = std::fs::remove_file(record);
        }
        drop(claim);
        done.push(outcome);
    }
    done.extend(
        survey
            .running
            .into_iter()
            .map(|table| CleanedUp::Running { table }),
    );
    let named = |table: &str| done.iter().any(|item| item.table() == table);
    match config {
        Ok(c) if !named(&c.nftables.table) => {
            let installed = instance::Installed {
                table: c.nftables.table.clone(),
                routing: (c.mode == Mode::Routed).then_some((c.routing.fwmark, c.routing.table)),
            };
            // Claimed meanwhile, so that no daemon starts on it halfway; a running one
            // (without a record: its directory was not writable, or was wiped) keeps it.
            match instance::Claim::take(&installed.table) {
                Ok(_claim) => done.push(remove_installed(&installed)),
                Err(_) => done.push(CleanedUp::Running {
                    table: installed.table,
                }),
            }
        }
        Ok(_) => {}
        Err(why) if done.is_empty() => return Err(DaemonError::NothingKnown(why)),
        Err(_) => {}
    }
    Ok(done)
}

fn remove_installed(installed: &instance::Installed) -> CleanedUp {
    let failed = |error: String, bad_name: bool| CleanedUp::Failed {
        table: installed.table.clone(),
        error,
        bad_name,
    };
    // From a file an admin may have edited: pasted into an nft script only if it is a name.
    if !crate::config::is_table_name(&installed.table) {
        return failed(
            DaemonError::BadTable(installed.table.clone()).to_string(),
            true,
        );
    }
    let table = BaseTable {
        table: installed.table.clone(),
        ..table_of(&crate::config::Config::default())
    };
    let present = match table.exists() {
        Ok(true) => table.remove().map(|()| true),
        other => other,
    };
    let present = match present {
        Ok(present) => present,
        Err(e) => return failed(DaemonError::from(e).to_string(), false),
    };
    if let Some((fwmark, routing_table)) = installed.routing {
        TransparentRouting {
            fwmark,
            table: routing_table,
            ipv6: true,
        }
        .remove();
    }
    let table = installed.table.clone();
    if present {
        CleanedUp::Removed {
            table,
            routing: installed.routing,
        }
    } else {
        CleanedUp::Absent { table }
    }
}

/// Applies a new log filter (an EnvFilter string).
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Re-reads and validates the configuration.
pub type Reload = Box<dyn Fn() -> Result<Validated, ConfigError> + Send + Sync>;

/// What the binary hands the daemon besides the settings: how to re-read the config and
/// how to change the log filter (both used on SIGHUP).
pub struct Hooks {
    /// Re-reads and validates the configuration (file + the same flags).
    pub reload: Reload,
    /// Applies a new log filter.
    pub set_log_level: SetLogLevel,
}

/// Runs the gateway until SIGTERM or SIGINT; SIGHUP reloads the configuration.
pub async fn run(settings: Validated, hooks: Hooks) -> Result<(), DaemonError> {
    let c = &settings.config;
    // One daemon per table and namespace, and a record of what it installs for `cleanup`:
    // claimed until this function returns; the record goes once the table is removed.
    let (instance, unrecorded) = instance::Instance::start(&instance::Installed {
        table: c.nftables.table.clone(),
        routing: (c.mode == Mode::Routed && !c.lan_interfaces.is_empty())
            .then_some((c.routing.fwmark, c.routing.table)),
    })?;
    if let Some(e) = unrecorded {
        warn!(
            error = %e,
            "cannot record what this daemon installs in {}: after a crash, ftp-alg cleanup \
             goes by the configuration",
            instance::DIR
        );
    }
    // This thread is the first session thread; before anything is installed, so that a
    // refusal leaves nothing behind.
    let realtime = realtime::resolve(
        c.runtime.realtime_priority,
        c.runtime.realtime_scope,
        c.runtime.busy_poll_us > 0,
    )
    .map_err(DaemonError::Realtime)?;
    let (thread_realtime, boost) = match c.runtime.realtime_scope {
        RealtimeScope::Threads => (realtime, 0),
        RealtimeScope::Pinholes => (0, realtime),
    };
    realtime::apply(thread_realtime).map_err(DaemonError::Realtime)?;
    let upstream_source = match (c.wan_address, &c.wan_interface) {
        (Some(addr), _) => Some(addr),
        (None, Some(name)) => match proxy::first_address(name, false) {
            Ok(addr) => Some(addr),
            // Up, but not numbered yet (DHCP or PPPoE still negotiating at boot): start, and
            // read the address when a session needs it. A name that does not exist is a
            // configuration error.
            Err(e) if proxy::interface_exists(name) => {
                warn!(
                    interface = %name,
                    error = %e,
                    "starting without the WAN address; it is read when the first session needs it"
                );
                None
            }
            Err(e) => return Err(e.into()),
        },
        (None, None) => None,
    };
    if let Some(addr) = c.wan_address
        && let Err(e) = std::net::UdpSocket::bind((addr, 0))
        && e.kind() == std::io::ErrorKind::AddrNotAvailable
    {
        warn!(
            %addr,
            "wan_address is not (yet) an address of this host: client-NAT sessions get 421 \
             until it is; fix wan_address, or name wan_interface instead"
        );
    }
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    // Listen first: the redirect must never point at a closed port.
    let mut listeners = Vec::new();
    if !c.lan_interfaces.is_empty() {
        let topology = match c.mode {
            Mode::ClientNat => Topology::ClientNat,
            Mode::Routed => Topology::Routed,
        };
        listeners.push((proxy::bind(c.listen)?, Service::Intercept(topology)));
        if let Some(addr) = c.listen6 {
            match proxy::bind(addr) {
                Ok(listener) => listeners.push((listener, Service::Intercept(topology))),
                // A kernel booted with ipv6.disable=1 carries no IPv6 to intercept.
                Err(e) if e.address_family_unsupported() => {
                    warn!(%addr, "IPv6 is disabled on this host; not intercepting IPv6 (set --no-ipv6 to silence this)");
                }
                Err(e) => return Err(e.into()),
            }
        }
        warn_unreachable_listener(c.listen, &c.lan_interfaces);
        for (key, name) in missing_interfaces(c)
            .into_iter()
            .filter(|(key, _)| *key == "lan_interfaces")
        {
            warn!(
                interface = %name,
                "{key}: this host has no interface {name} (yet): FTP from it is intercepted \
                 only once it exists; check the name (ip link)"
            );
        }
    }
    for published in &c.reverse {
        listeners.push((
            proxy::bind(published.listen)?,
            Service::Reverse {
                backend: published.backend,
            },
        ));
    }
    let telemetry = Arc::new(Telemetry::default());
    let status = match &c.status.socket {
        Some(path) => Some(status::bind(path, c.status.group.as_deref())?),
        None => None,
    };
    let metrics = match c.metrics.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, source })?,
        ),
        None => None,
    };
    let table = base_table(&settings);
    table.install()?;
    let routing =
        (c.mode == Mode::Routed && !c.lan_interfaces.is_empty()).then(|| TransparentRouting {
            fwmark: c.routing.fwmark,
            table: c.routing.table,
            ipv6: proxy::ipv6_supported() || {
                warn!("IPv6 is disabled on this host; routed mode routes IPv4 only");
                false
            },
        });
    if let Some(routing) = routing
        && let Err(e) = routing.install()
    {
        let _ = table.remove();
        return Err(e.into());
    }
    let firewall =
        match NftFirewall::start_with(&c.nftables.table, move || realtime::apply(realtime)) {
            Ok(firewall) => Arc::new(Healing::new(firewall, table.clone())),
            Err(e) => {
                let _ = table.remove();
                if let Some(routing) = routing {
                    routing.remove();
                }
                return Err(e.into());
            }
        };
    telemetry.set_realtime(crate::telemetry::RealtimeView {
        setting: c.runtime.realtime_priority.to_string(),
        priority: realtime,
        scope: match c.runtime.realtime_scope {
            RealtimeScope::Pinholes => "pinholes",
            RealtimeScope::Threads => "threads",
        }
        .to_owned(),
    });
    let idle = crate::host::IdleState::read();
    let advice = idle.advice();
    if let Some(advice) = &advice {
        info!(cpu_idle = %idle.summary(), "{advice}");
    }
    telemetry.set_host(crate::telemetry::HostView {
        cpu_idle: idle.summary(),
        advice,
    });
    telemetry.set_firewall_stats(crate::telemetry::FirewallStatsSource::new({
        let firewall = firewall.clone();
        move || crate::firewall::FirewallStats {
            table_reinstalls: firewall.reinstalls(),
            ..firewall.inner().stats()
        }
    }));
    let busy_poll = (c.runtime.busy_poll_us > 0)
        .then(|| std::time::Duration::from_micros(c.runtime.busy_poll_us));
    let shards = match Shards::start(
        session_threads(c.runtime.workers),
        busy_poll,
        thread_realtime,
    ) {
        Ok(shards) => shards,
        Err(e) => {
            firewall.retire().await;
            let _ = table.remove();
            if let Some(routing) = routing {
                routing.remove();
            }
            return Err(DaemonError::Threads(e));
        }
    };
    let (policy_tx, policy_rx) = watch::channel(Arc::new(policy(&settings, boost)));
    let max_sessions = admitted_sessions(c.limits.max_sessions, &telemetry);
    let proxy_settings = ProxySettings {
        max_sessions,
        max_sessions_per_client: c.limits.max_sessions_per_client,
        new_sessions_per_second_per_client: c.limits.new_sessions_per_second_per_client,
        client_prefix_v6: c.limits.client_prefix_v6,
        connect_timeout: settings.connect_timeout(),
        upstream_source,
        wan_interface: c.wan_interface.clone().filter(|_| c.wan_address.is_none()),
        policy: policy_rx,
        telemetry: telemetry.clone(),
        threads: shards.spawner(),
        busy_poll: busy_poll.is_some(),
    };
    let ports = Arc::new(PortAllocator::new(
        settings.active_ports.clone(),
        std::time::Duration::from_secs(c.active.port_quarantine_secs),
    ));
    let mut background = tokio::task::JoinSet::new();
    background.spawn(firewall.clone().watch(TABLE_CHECK_PERIOD));
    if let Some(listener) = status {
        background.spawn(status::serve(listener, telemetry.clone()));
    }
    if let Some(listener) = metrics {
        background.spawn(proxy::metrics::serve(
            listener,
            telemetry.clone(),
            Arc::new(table.clone()),
        ));
    }
    info!(
        listeners = listeners.len(),
        mode = ?c.mode,
        reverse = c.reverse.len(),
        table = %c.nftables.table,
        wan = ?upstream_source,
        lan = ?c.lan_interfaces,
        session_threads = shards.spawner().threads(),
        busy_poll_us = c.runtime.busy_poll_us,
        realtime_setting = %c.runtime.realtime_priority,
        realtime_priority = realtime,
        realtime_scope = ?c.runtime.realtime_scope,
        cpu_idle = %idle.summary(),
        status = ?c.status.socket,
        metrics = ?c.metrics.listen,
        "listening; table installed"
    );

    let (stop, stopped) = watch::channel(false);
    let mut serving = tokio::spawn(proxy::serve(
        listeners,
        proxy_settings,
        firewall.clone(),
        ports,
        stopped,
    ));
    notify::ready();
    if let Some(period) = notify::watchdog_period() {
        background.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                notify::watchdog();
            }
        });
    }
    // What the daemon started with: restart-only keys keep these values however often a
    // SIGHUP changes the file.
    let started = settings.clone();
    let mut current = settings;
    loop {
        tokio::select! {
            _ = terminate.recv() => { info!("SIGTERM: draining"); break; }
            _ = interrupt.recv() => { info!("SIGINT: draining"); break; }
            _ = hangup.recv() => {
                notify::reloading();
                match (hooks.reload)() {
                    Ok(new) => {
                        apply_reload(&current, &started, &new, &policy_tx, &hooks);
                        current = new;
                    }
                    Err(e) => error!(error = %e, "SIGHUP: new configuration refused; keeping the old one"),
                }
                notify::ready();
            }
        }
    }
    let grace = current.drain_grace();
    notify::stopping(grace.saturating_add(EXIT_ALLOWANCE));
    let _ = stop.send(true);
    info!(
        sessions = telemetry.active_sessions(),
        grace_s = grace.as_secs(),
        "no longer accepting; waiting for running sessions (a second SIGTERM or SIGINT ends \
         the wait)"
    );
    // Sessions end with their control connections; data connections already admitted keep
    // running in the kernel after the table is gone (conntrack holds them).
    let drained = tokio::select! {
        done = tokio::time::timeout(grace, &mut serving) => done.is_ok(),
        _ = terminate.recv() => false,
        _ = interrupt.recv() => false,
    };
    if !drained {
        warn!(
            sessions = telemetry.active_sessions(),
            "grace period over or cut short; closing the remaining control connections"
        );
        serving.abort();
    }
    background.abort_all();
    // Sessions still running after the grace period end with their threads.
    drop(shards);
    firewall.retire().await;
    if let Some(routing) = routing {
        routing.remove();
    }
    table.remove()?;
    instance.finish();
    if let Some(path) = &started.config.status.socket {
        let _ = std::fs::remove_file(path);
    }
    info!("table removed; bye");
    Ok(())
}

/// The interfaces the configuration names that this host does not have (now), with their
/// key: a LAN interface is intercepted by name, so a missing one is not intercepted until it
/// appears, and a misspelt one never; a missing `wan_interface` stops the start.
pub fn missing_interfaces(c: &crate::config::Config) -> Vec<(&'static str, String)> {
    c.lan_interfaces
        .iter()
        .map(|name| ("lan_interfaces", name))
        .chain(c.wan_interface.iter().map(|name| ("wan_interface", name)))
        .filter(|(_, name)| !proxy::interface_exists(name))
        .map(|(key, name)| (key, name.clone()))
        .collect()
}

/// The intercept rule redirects to the primary address of the interface a connection came
/// in on: a `listen` address that is not the wildcard and not that address never receives
/// them, and every intercepted connection is reset.
fn warn_unreachable_listener(listen: std::net::SocketAddr, lan_interfaces: &[String]) {
    if listen.ip().is_unspecified() {
        return;
    }
    for name in lan_interfaces {
        if let Ok(primary) = proxy::first_address(name, false)
            && primary != listen.ip()
        {
            warn!(
                %listen,
                interface = %name,
                %primary,
                "connections intercepted on this interface are redirected to its primary \
                 address, where nothing listens: they will be reset; set listen to \
                 0.0.0.0:{}",
                listen.port()
            );
        }
    }
}

/// Applies what can change without a restart, and says what cannot.
/// `old`: the configuration in force (reloadable keys); `started`: the one the daemon started
/// with, which restart-only keys still follow.
fn apply_reload(
    old: &Validated,
    started: &Validated,
    new: &Validated,
    policy_tx: &watch::Sender<Arc<Policy>>,
    hooks: &Hooks,
) {
    // The real-time boost is read at start, like the rest of `runtime`.
    let boost = policy_tx.borrow().realtime_boost;
    let _ = policy_tx.send(Arc::new(policy(new, boost)));
    if old.config.log.level != new.config.log.level
        && let Err(e) = (hooks.set_log_level)(&new.config.log.level)
    {
        error!(error = %e, "SIGHUP: cannot apply the new log level");
    }
    let (o, n) = (&started.config, &new.config);
    let restart_only = [
        ("mode", o.mode != n.mode),
        ("lan_interfaces", o.lan_interfaces != n.lan_interfaces),
        (
            "wan_interface/wan_address",
            o.wan_interface != n.wan_interface || o.wan_address != n.wan_address,
        ),
        (
            "listen/listen6",
            o.listen != n.listen || o.listen6 != n.listen6,
        ),
        ("reverse", o.reverse != n.reverse),
        ("control_ports", o.control_ports != n.control_ports),
        ("active.port_range", o.active != n.active),
        (
            "limits.max_sessions*",
            o.limits.max_sessions != n.limits.max_sessions
                || o.limits.max_sessions_per_client != n.limits.max_sessions_per_client
                || o.limits.new_sessions_per_second_per_client
                    != n.limits.new_sessions_per_second_per_client
                || o.limits.client_prefix_v6 != n.limits.client_prefix_v6,
        ),
        (
            "limits.connect_timeout_secs",
            o.limits.connect_timeout_secs != n.limits.connect_timeout_secs,
        ),
        ("nftables", o.nftables != n.nftables),
        ("routing", o.routing != n.routing),
        (
            "status/metrics",
            o.status != n.status || o.metrics != n.metrics,
        ),
        ("log.format", o.log.format != n.log.format),
        ("runtime", o.runtime != n.runtime),
    ];
    for (key, changed) in restart_only {
        if changed {
            warn!(
                key,
                "SIGHUP: this setting changed but only takes effect after a restart"
            );
        }
    }
    info!(
        "SIGHUP: configuration reloaded (policies, per-session limits, log level); running sessions keep theirs"
    );
}

/// `limits.max_sessions`, or fewer when the open-files limit (raised to its hard limit
/// first) has no room for that many: two sockets per session. Sessions over it then get the
/// `421` of a full gateway instead of hanging in the listener's backlog on `EMFILE`. Says so
/// in the log and the status.
fn admitted_sessions(max_sessions: usize, telemetry: &Telemetry) -> usize {
    use crate::host::OpenFiles;
    let files = match crate::host::raise_open_files_limit() {
        Ok(files) => files,
        Err(e) => {
            warn!(error = %e, "cannot read the open-files limit (RLIMIT_NOFILE)");
            return max_sessions;
        }
    };
    if files.soft > files.before {
        info!(
            from = files.before,
            to = files.soft,
            "raised the open-files limit to its hard limit"
        );
    }
    // Counted now that the listeners, sockets and session threads exist.
    let open = crate::host::open_descriptors();
    let room = files.sessions(open);
    let admitted = max_sessions.min(room);
    if admitted < max_sessions {
        warn!(
            max_sessions,
            open_files_limit = files.soft,
            admitted,
            open_now = open,
            "limits.max_sessions needs {} open files (two sockets per session, {open} open \
             already, {} spare) but this process may open {}: at most {admitted} sessions \
             are admitted, the others get 421; raise the hard limit (systemd LimitNOFILE=, \
             ulimit -Hn) or lower limits.max_sessions",
            OpenFiles::needed_for(max_sessions, open),
            crate::host::SPARE_DESCRIPTORS,
            files.soft
        );
    }
    telemetry.set_open_files(crate::telemetry::OpenFilesView {
        limit: files.soft,
        max_sessions,
        admitted,
    });
    admitted
}

/// The per-session policy of a configuration.
fn policy(settings: &Validated, realtime_boost: u8) -> Policy {
    let c = &settings.config;
    Policy {
        pinhole_timeout: settings.pinhole_timeout(),
        max_pinholes: c.pinhole.max_per_session,
        pasv_address: c.passive.address_policy,
        max_line: c.limits.max_line,
        idle_timeout: settings.idle_timeout(),
        allow: verbs(&c.commands.allow),
        deny: verbs(&c.commands.deny),
        mask_banner: c.commands.mask_banner,
        mask_syst: c.commands.mask_syst,
        tls: c.tls.auth,
        realtime_boost,
    }
}

fn verbs(list: &[String]) -> Vec<Vec<u8>> {
    list.iter()
        .map(|v| v.to_ascii_uppercase().into_bytes())
        .collect()
}

//! The daemon's life: install the base table, start the firewall task, listen, serve until a
//! signal, then remove everything we put into the kernel.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Mode;
use crate::config::Validated;
use crate::firewall::routing::{RoutingError, TransparentRouting};
use crate::firewall::table::{BaseTable, TableError};
use crate::firewall::{FirewallError, Healing, NftFirewall};
use crate::proxy::{self, InterfaceError, ProxyError, ProxySettings, Service};
use crate::session::{Policy, PortAllocator, Topology};

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
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// How often the daemon checks that its table still exists (interception depends on it).
const TABLE_CHECK_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// The base table described by a validated config.
pub fn base_table(settings: &Validated) -> BaseTable {
    let c = &settings.config;
    BaseTable {
        table: c.nftables.table.clone(),
        lan_interfaces: c.lan_interfaces.clone(),
        control_ports: c.control_ports.clone(),
        listen_port: c.listen.port(),
        ct_mark: c.nftables.ct_mark,
        route_mark: c.routing.fwmark,
    }
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(settings: Validated) -> Result<(), DaemonError> {
    let c = &settings.config;
    let upstream_source = match (c.wan_address, &c.wan_interface) {
        (Some(addr), _) => Some(addr),
        (None, Some(name)) => Some(proxy::first_address(name, false)?),
        (None, None) => None,
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    // Listen first: the redirect must never point at a closed port.
    let mut listeners = Vec::new();
    if !c.lan_interfaces.is_empty() {
        let topology = match c.mode {
            Mode::ClientNat => Topology::ClientNat,
            Mode::Routed => Topology::Routed,
        };
        for addr in std::iter::once(c.listen).chain(c.listen6) {
            listeners.push((proxy::bind(addr)?, Service::Intercept(topology)));
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
    let table = base_table(&settings);
    table.install()?;
    let routing =
        (c.mode == Mode::Routed && !c.lan_interfaces.is_empty()).then_some(TransparentRouting {
            fwmark: c.routing.fwmark,
            table: c.routing.table,
        });
    if let Some(routing) = routing
        && let Err(e) = routing.install()
    {
        let _ = table.remove();
        return Err(e.into());
    }
    let firewall = match NftFirewall::start(&c.nftables.table) {
        Ok(firewall) => Arc::new(Healing::new(firewall, table.clone())),
        Err(e) => {
            let _ = table.remove();
            if let Some(routing) = routing {
                routing.remove();
            }
            return Err(e.into());
        }
    };
    let policy = Arc::new(Policy {
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
    });
    let proxy_settings = ProxySettings {
        max_sessions: c.limits.max_sessions,
        max_sessions_per_client: c.limits.max_sessions_per_client,
        new_sessions_per_second_per_client: c.limits.new_sessions_per_second_per_client,
        connect_timeout: settings.connect_timeout(),
        upstream_source,
        policy,
    };
    let ports = Arc::new(PortAllocator::new(settings.active_ports.clone()));
    info!(
        listeners = listeners.len(),
        mode = ?c.mode,
        reverse = c.reverse.len(),
        table = %c.nftables.table,
        wan = ?upstream_source,
        lan = ?c.lan_interfaces,
        "listening; table installed"
    );

    let watchdog = tokio::spawn(firewall.clone().watch(TABLE_CHECK_PERIOD));
    let (stop, stopped) = watch::channel(false);
    let serving = tokio::spawn(proxy::serve(
        listeners,
        proxy_settings,
        firewall.clone(),
        ports,
        stopped,
    ));
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => info!("SIGINT: shutting down"),
    }
    let _ = stop.send(true);
    watchdog.abort();
    firewall.retire();
    // Sessions end with their control connections; data connections already admitted keep
    // running in the kernel after the table is gone (conntrack holds them).
    if tokio::time::timeout(std::time::Duration::from_secs(2), serving)
        .await
        .is_err()
    {
        warn!("sessions still open at exit; their control connections are closed");
    }
    if let Some(routing) = routing {
        routing.remove();
    }
    table.remove()?;
    info!("table removed; bye");
    Ok(())
}

fn verbs(list: &[String]) -> Vec<Vec<u8>> {
    list.iter()
        .map(|v| v.to_ascii_uppercase().into_bytes())
        .collect()
}

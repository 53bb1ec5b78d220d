//! The only code that talks to the kernel's netfilter.
//!
//! Two halves with very different costs:
//!
//! - [`table`]: the base table (`inet ftp_alg`: sets, maps, chains), loaded and removed with
//!   `nft -f` once per daemon life. Spawning `nft` costs milliseconds, which is fine there.
//! - [`NftFirewall`]: the per-transfer pinholes. They are *elements* of the table's typed sets
//!   and maps, added and removed over one long-lived `NETLINK_NETFILTER` socket owned by one
//!   thread, batched, each call resolving only once the kernel acknowledged it (a PORT or 227
//!   released earlier races the peer's SYN against the rule). See `netlink.rs` for why it is
//!   shaped that way.
//!
//! The rest of the crate sees only the small [`Firewall`] trait and the [`Pinhole`] tuple, so
//! the session logic is unit-tested against [`FakeFirewall`] and the kernel backend is tested
//! on its own, in network namespaces.

mod conntrack;
pub mod fake;
mod healing;
mod netlink;
pub mod routing;
pub mod table;

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use fake::FakeFirewall;
pub use healing::Healing;
pub use netlink::{FirewallStats, NftFirewall};

/// Which side opens the data connection (selects the pinhole set and its counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// PORT/EPRT: the server connects to the client.
    Active,
    /// PASV/EPSV: the client connects to the server.
    Passive,
}

/// One data connection the firewall is asked to admit, exactly once, for a bounded time.
///
/// `from` opens a connection to `via` (the address announced in the rewritten PORT/EPRT or
/// 227/229) which the gateway DNATs to `to`; without `via` it connects to `to` directly. With
/// `snat` its source is rewritten on the way to `to` (a published server must see the
/// gateway as its peer). Kernel objects, all with the pinhole's timeout:
///
/// - `via`: `from . via : to` in map `dnat_to(6)` and `from . via` in set `dnat_once(6)` (the
///   DNAT applies to one connection);
/// - always: `from . to` in set `active_pin(6)` or `passive_pin(6)` (the forward accept,
///   after DNAT, consumed by the first connection);
/// - `snat`: `from . to : snat` in map `snat_to(6)`.
///
/// A set a rule consumes (`dnat_once`, `active_pin`, `passive_pin`) has a `_hot` twin that
/// takes a key the backend put in the main set less than 3 s ago (see `netlink/owners.rs`).
///
/// All addresses must be of one family (IPv4-mapped IPv6 addresses count as IPv4: they are
/// stored in the IPv4 sets, which is where such packets are seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pinhole {
    /// Who opens the data connection.
    pub direction: Direction,
    /// The address that opens it.
    pub from: IpAddr,
    /// Where it is finally delivered.
    pub to: SocketAddr,
    /// The address it is opened to, DNATed to `to` (none: it is opened to `to`).
    pub via: Option<SocketAddr>,
    /// Source address toward `to`, if rewritten.
    pub snat: Option<IpAddr>,
}

impl Pinhole {
    /// Passive mode without NAT in the data path of the ALG: `client -> server:port`.
    pub fn passive(client: IpAddr, server: IpAddr, port: u16) -> Self {
        Self {
            direction: Direction::Passive,
            from: client,
            to: SocketAddr::new(server, port),
            via: None,
            snat: None,
        }
    }

    /// Active mode behind client NAT: `server -> gateway:gateway_port`, DNATed to
    /// `client:client_port`.
    pub fn active(
        server: IpAddr,
        gateway: IpAddr,
        gateway_port: u16,
        client: IpAddr,
        client_port: u16,
    ) -> Self {
        Self {
            direction: Direction::Active,
            from: server,
            to: SocketAddr::new(client, client_port),
            via: Some(SocketAddr::new(gateway, gateway_port)),
            snat: None,
        }
    }

    /// Whether all addresses are of one family (IPv4-mapped IPv6 counted as IPv4).
    pub fn is_single_family(&self) -> bool {
        let v4 = |ip: IpAddr| ip.to_canonical().is_ipv4();
        let family = v4(self.from);
        v4(self.to.ip()) == family
            && self.via.is_none_or(|via| v4(via.ip()) == family)
            && self.snat.is_none_or(|ip| v4(ip) == family)
    }

    /// Whether the pinhole is in the IPv6 sets.
    pub fn is_ipv6(&self) -> bool {
        !self.from.to_canonical().is_ipv4()
    }
}

impl fmt::Display for Pinhole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let direction = match self.direction {
            Direction::Active => "active",
            Direction::Passive => "passive",
        };
        write!(f, "{direction} {}", self.from)?;
        if let Some(snat) = self.snat {
            write!(f, " (as {snat})")?;
        }
        match self.via {
            Some(via) => write!(f, " -> {via} => {}", self.to),
            None => write!(f, " -> {}", self.to),
        }
    }
}

/// Why a pinhole could not be opened or closed. Each message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    /// The base table or one of its sets does not exist; the caller should reinstall the
    /// table (see [`table::BaseTable::install`]) and retry.
    #[error(
        "nftables table inet {table} (or its set {set}) is missing (was it deleted by an \
         admin?); reinstall the base table"
    )]
    TableMissing {
        /// The table name.
        table: String,
        /// The set the failed element belonged to.
        set: String,
    },
    /// The process lacks `CAP_NET_ADMIN` (checked against the credentials that opened the
    /// socket).
    #[error("netlink: permission denied: need CAP_NET_ADMIN (run as root or grant the capability)")]
    PermissionDenied,
    /// The set holds as many elements as its declared `size`.
    #[error(
        "nftables set {set} is full; raise its size in the base table or lower the pinhole \
         timeout"
    )]
    SetFull {
        /// The full set.
        set: String,
    },
    /// The map already maps this key to different data (an active-mode gateway port still
    /// mapped to another client).
    #[error(
        "nftables map {set} already holds this key with different data (is the gateway port \
         still mapped to another client?); pick another port"
    )]
    Conflict {
        /// The set or map.
        set: String,
    },
    /// The leased gateway port still carries a live data connection from this server (a
    /// transfer whose session ended, or that outlived its 226); the pinhole was not opened.
    #[error(
        "gateway port {gateway} still carries a live data connection from {server}; lease \
         another port"
    )]
    PortInUse {
        /// The server's data address (port 20).
        server: std::net::SocketAddr,
        /// The gateway's address and the leased port.
        gateway: std::net::SocketAddr,
    },
    /// The pinhole mixes IPv4 and IPv6 addresses; no set can hold it.
    #[error("mixed address families in pinhole {0}: all its addresses must be IPv4 or all IPv6")]
    MixedFamilies(Pinhole),
    /// The table name cannot be an nftables table name.
    #[error("invalid nftables table name {0:?}: it must be 1 to 255 bytes long and contain no NUL")]
    InvalidTableName(String),
    /// The backend could not enter the requested network namespace.
    #[error("cannot enter network namespace {path}: {message}")]
    Namespace {
        /// The namespace path (e.g. `/var/run/netns/NAME`).
        path: String,
        /// The OS error text.
        message: String,
    },
    /// A socket operation failed.
    #[error("netlink socket: {context}: {message}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error number, when there is one.
        errno: Option<i32>,
        /// The OS error text.
        message: String,
    },
    /// The kernel refused an operation for another reason.
    #[error("nftables refused to {what}: {message} (errno {errno}); is the base table up to date?")]
    Kernel {
        /// The refused operation, e.g. "add an element to set passive_pin".
        what: String,
        /// The positive errno the kernel answered.
        errno: i32,
        /// Its text.
        message: String,
    },
    /// The kernel's answer was malformed or missing.
    #[error("netlink: {0}; this is a bug or an unsupported kernel, please report it")]
    Protocol(String),
    /// The firewall thread is gone (it only stops when every handle is dropped, or panicked).
    #[error("the firewall thread has stopped; restart the daemon")]
    Stopped,
}

impl FirewallError {
    /// Builds an [`FirewallError::Io`] from an `io::Error`.
    pub(crate) fn io(context: &'static str, error: &std::io::Error) -> Self {
        Self::Io {
            context,
            errno: error.raw_os_error(),
            message: error.to_string(),
        }
    }
}

/// Installs and removes pinholes. Implemented by [`NftFirewall`] (the kernel) and
/// [`FakeFirewall`] (tests).
pub trait Firewall: Send + Sync + 'static {
    /// Installs the pinhole with the given timeout; resolves only after the kernel ACKed it.
    ///
    /// Opening a pinhole that is already open refreshes it. The timeout is rounded up to a
    /// whole millisecond, at least one (a zero timeout would mean "never expires" to the
    /// kernel).
    fn open(
        &self,
        pinhole: Pinhole,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;

    /// Removes it; a pinhole that is already gone (consumed or expired) is not an error.
    fn close(&self, pinhole: Pinhole) -> impl Future<Output = Result<(), FirewallError>> + Send;

    /// Whether the data connection this pinhole admitted is still alive in the kernel
    /// (asked when a control connection has been idle for its timeout during a transfer).
    fn connection_alive(&self, pinhole: Pinhole) -> impl Future<Output = bool> + Send {
        async move {
            tokio::task::spawn_blocking(move || conntrack::alive(&pinhole))
                .await
                .unwrap_or(true)
        }
    }

    /// Whether a live connection joins `client` and `server`, other than one to the
    /// `control` ports (asked when an FTPS passthrough session has been idle for its
    /// timeout: its transfers are encrypted, their flows are not). Errs toward "yes".
    fn peers_connected(
        &self,
        client: IpAddr,
        server: IpAddr,
        control: [u16; 2],
    ) -> impl Future<Output = bool> + Send {
        async move {
            tokio::task::spawn_blocking(move || conntrack::between(client, server, &control))
                .await
                .unwrap_or(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn display_is_readable_for_both_families() {
        let p = Pinhole::passive(ip("10.0.0.2"), ip("203.0.113.2"), 30000);
        assert_eq!(p.to_string(), "passive 10.0.0.2 -> 203.0.113.2:30000");
        let a = Pinhole::active(
            ip("2001:db8::2"),
            ip("2001:db8::1"),
            40000,
            ip("fd00::2"),
            50000,
        );
        assert_eq!(
            a.to_string(),
            "active 2001:db8::2 -> [2001:db8::1]:40000 => [fd00::2]:50000"
        );
    }

    #[test]
    fn families_are_checked_with_mapped_addresses_as_ipv4() {
        let mixed = Pinhole::passive(ip("10.0.0.2"), ip("2001:db8::2"), 1);
        assert!(!mixed.is_single_family());
        let mapped = Pinhole::passive(ip("10.0.0.2"), ip("::ffff:203.0.113.2"), 1);
        assert!(mapped.is_single_family());
        let active = Pinhole::active(ip("203.0.113.2"), ip("203.0.113.1"), 1, ip("fd00::2"), 2);
        assert!(!active.is_single_family());
    }
}

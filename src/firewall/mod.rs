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

pub mod fake;
mod netlink;
pub mod table;

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use fake::FakeFirewall;
pub use netlink::{FirewallStats, NftFirewall};

/// One data connection the firewall is asked to admit, exactly once, for a bounded time.
///
/// All addresses of a pinhole must be of one family (IPv4-mapped IPv6 addresses count as
/// IPv4: they are stored in the IPv4 sets, which is where such packets are seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pinhole {
    /// `client -> server:port`, passive mode (the client opens the data connection).
    ///
    /// Kernel object: an element `client . server . port` of set `passive_pin(6)`.
    Passive {
        /// The client that will connect.
        client: IpAddr,
        /// The server it connects to.
        server: IpAddr,
        /// The server's announced data port.
        port: u16,
    },
    /// `server -> gateway:gateway_port`, DNATed to `client:client_port` (active mode).
    ///
    /// Kernel objects: `server . gateway . gateway_port : client . client_port` in map
    /// `active_dnat(6)`, `server . gateway . gateway_port` in set `active_once(6)` (the DNAT
    /// applies once), `server . client . client_port` in set `active_pin(6)` (the forward
    /// accept, after DNAT).
    Active {
        /// The FTP server, which opens the data connection.
        server: IpAddr,
        /// The gateway address the rewritten PORT/EPRT announced.
        gateway: IpAddr,
        /// The gateway port the rewritten PORT/EPRT announced.
        gateway_port: u16,
        /// The client the connection is forwarded to.
        client: IpAddr,
        /// The port the client announced.
        client_port: u16,
    },
}

impl Pinhole {
    /// Whether all addresses are of one family (IPv4-mapped IPv6 counted as IPv4).
    pub fn is_single_family(&self) -> bool {
        let v4 = |ip: IpAddr| ip.to_canonical().is_ipv4();
        match *self {
            Self::Passive { client, server, .. } => v4(client) == v4(server),
            Self::Active {
                server,
                gateway,
                client,
                ..
            } => v4(server) == v4(gateway) && v4(server) == v4(client),
        }
    }
}

impl fmt::Display for Pinhole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Passive {
                client,
                server,
                port,
            } => write!(f, "passive {client} -> {}", SocketAddr::new(server, port)),
            Self::Active {
                server,
                gateway,
                gateway_port,
                client,
                client_port,
            } => write!(
                f,
                "active {server} -> {} => {}",
                SocketAddr::new(gateway, gateway_port),
                SocketAddr::new(client, client_port)
            ),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn display_is_readable_for_both_families() {
        let p = Pinhole::Passive {
            client: ip("10.0.0.2"),
            server: ip("203.0.113.2"),
            port: 30000,
        };
        assert_eq!(p.to_string(), "passive 10.0.0.2 -> 203.0.113.2:30000");
        let a = Pinhole::Active {
            server: ip("2001:db8::2"),
            gateway: ip("2001:db8::1"),
            gateway_port: 40000,
            client: ip("fd00::2"),
            client_port: 50000,
        };
        assert_eq!(
            a.to_string(),
            "active 2001:db8::2 -> [2001:db8::1]:40000 => [fd00::2]:50000"
        );
    }

    #[test]
    fn families_are_checked_with_mapped_addresses_as_ipv4() {
        let mixed = Pinhole::Passive {
            client: ip("10.0.0.2"),
            server: ip("2001:db8::2"),
            port: 1,
        };
        assert!(!mixed.is_single_family());
        let mapped = Pinhole::Passive {
            client: ip("10.0.0.2"),
            server: ip("::ffff:203.0.113.2"),
            port: 1,
        };
        assert!(mapped.is_single_family());
        let active = Pinhole::Active {
            server: ip("203.0.113.2"),
            gateway: ip("203.0.113.1"),
            gateway_port: 1,
            client: ip("fd00::2"),
            client_port: 2,
        };
        assert!(!active.is_single_family());
    }
}

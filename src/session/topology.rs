//! Where a session's data connections go, per deployment mode: what a rewritten PORT/EPRT or
//! 227/229 announces, and which pinhole makes that announcement true.
//!
//! Pure: addresses in, a [`DataPlan`] out. The session checks the announcement first
//! (bounce, privileged port, foreign address); this module only maps.

use std::net::{IpAddr, SocketAddr};

use crate::firewall::{Direction, Pinhole};

/// How this session crosses the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// LAN client behind the gateway's NAT: active connections come to the gateway's address
    /// and are DNATed to the client; passive ones are masqueraded by the admin's NAT.
    ClientNat,
    /// A published server: clients reach `public` (the gateway), the proxy reaches the
    /// backend from its inside address. Both directions are DNATed and SNATed so that each
    /// side only ever sees the gateway.
    Reverse,
    /// A stateful firewall without NAT: nothing is rewritten, only pinholes are opened.
    Routed,
}

/// The addresses of one session, as the proxy found them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// The client's address (peer of the client-side connection).
    pub client: SocketAddr,
    /// The address the client connected to: the server itself when intercepted, the
    /// gateway's public address in `reverse` mode.
    pub client_facing: SocketAddr,
    /// The server (original destination, or the configured backend).
    pub server: SocketAddr,
    /// Our address on the connection to the server: what the server sees as its peer.
    pub upstream_local: SocketAddr,
}

/// What to do for one data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPlan {
    /// The pinhole to open (before anything is announced).
    pub pinhole: Pinhole,
    /// The address to announce instead of the original one (None: forward unchanged).
    pub announce: Option<SocketAddr>,
    /// The leased port (owner address, port) to give back when the pinhole goes.
    pub lease: Option<(IpAddr, u16)>,
}

impl Topology {
    /// The mode's name, as in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientNat => "client-nat",
            Self::Reverse => "reverse",
            Self::Routed => "routed",
        }
    }

    /// Whether an active data channel needs a leased port (and on which address).
    pub fn active_lease_owner(self, ends: &Endpoints) -> Option<IpAddr> {
        match self {
            Self::ClientNat | Self::Reverse => Some(ends.server.ip()),
            Self::Routed => None,
        }
    }

    /// PORT/EPRT naming `announced` (already checked to be the client's own address).
    /// `leased` is the port from [`Topology::active_lease_owner`]'s lease, if any.
    pub fn active(self, ends: &Endpoints, announced: SocketAddr, leased: Option<u16>) -> DataPlan {
        let server = ends.server.ip();
        match (self, leased) {
            (Self::Routed, _) | (_, None) => DataPlan {
                pinhole: Pinhole {
                    direction: Direction::Active,
                    from: server,
                    to: announced,
                    via: None,
                    snat: None,
                },
                announce: None,
                lease: None,
            },
            (Self::ClientNat | Self::Reverse, Some(port)) => {
                // The server must see a PORT naming its control peer: us.
                let via = SocketAddr::new(ends.upstream_local.ip(), port);
                DataPlan {
                    pinhole: Pinhole {
                        direction: Direction::Active,
                        from: server,
                        to: announced,
                        via: Some(via),
                        // A published server's connection must come from the public address.
                        snat: (self == Self::Reverse).then_some(ends.client_facing.ip()),
                    },
                    announce: Some(via),
                    lease: Some((server, port)),
                }
            }
        }
    }

    /// Whether a passive data channel needs a leased port (and for which client).
    pub fn passive_lease_owner(self, ends: &Endpoints) -> Option<IpAddr> {
        (self == Self::Reverse).then_some(ends.client.ip())
    }

    /// A 227/229 naming the server's data port `port` (its address already checked or
    /// corrected to be the server's). `leased` as for [`Topology::active`].
    pub fn passive(self, ends: &Endpoints, port: u16, leased: Option<u16>) -> DataPlan {
        let client = ends.client.ip();
        let server_data = SocketAddr::new(ends.server.ip(), port);
        match (self, leased) {
            (Self::Reverse, Some(public_port)) => {
                let public = SocketAddr::new(ends.client_facing.ip(), public_port);
                DataPlan {
                    pinhole: Pinhole {
                        direction: Direction::Passive,
                        from: client,
                        to: server_data,
                        via: Some(public),
                        // The backend accepts data connections from its control peer only.
                        snat: Some(ends.upstream_local.ip()),
                    },
                    announce: Some(public),
                    lease: Some((client, public_port)),
                }
            }
            _ => DataPlan {
                pinhole: Pinhole::passive(client, ends.server.ip(), port),
                announce: None,
                lease: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(client: &str, facing: &str, server: &str, local: &str) -> Endpoints {
        Endpoints {
            client: client.parse().unwrap(),
            client_facing: facing.parse().unwrap(),
            server: server.parse().unwrap(),
            upstream_local: local.parse().unwrap(),
        }
    }

    fn nat() -> Endpoints {
        ends(
            "10.0.0.2:50000",
            "203.0.113.2:21",
            "203.0.113.2:21",
            "203.0.113.1:40000",
        )
    }

    fn published() -> Endpoints {
        ends(
            "203.0.113.2:50000",
            "203.0.113.1:21",
            "198.51.100.2:21",
            "198.51.100.1:41000",
        )
    }

    #[test]
    fn client_nat_active_announces_the_gateway_and_dnats_to_the_client() {
        let plan =
            Topology::ClientNat.active(&nat(), "10.0.0.2:50001".parse().unwrap(), Some(40123));
        assert_eq!(plan.announce, Some("203.0.113.1:40123".parse().unwrap()));
        assert_eq!(
            plan.pinhole,
            Pinhole::active(
                "203.0.113.2".parse().unwrap(),
                "203.0.113.1".parse().unwrap(),
                40123,
                "10.0.0.2".parse().unwrap(),
                50001
            )
        );
    }

    #[test]
    fn reverse_active_announces_the_inside_address_and_snats_to_the_public_one() {
        let plan = Topology::Reverse.active(
            &published(),
            "203.0.113.2:50001".parse().unwrap(),
            Some(41234),
        );
        assert_eq!(plan.announce, Some("198.51.100.1:41234".parse().unwrap()));
        assert_eq!(plan.pinhole.from, "198.51.100.2".parse::<IpAddr>().unwrap());
        assert_eq!(plan.pinhole.to, "203.0.113.2:50001".parse().unwrap());
        assert_eq!(
            plan.pinhole.via,
            Some("198.51.100.1:41234".parse().unwrap())
        );
        assert_eq!(plan.pinhole.snat, Some("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn reverse_passive_announces_the_public_address_and_snats_to_the_inside_one() {
        let ends = published();
        assert_eq!(
            Topology::Reverse.passive_lease_owner(&ends),
            Some(ends.client.ip())
        );
        let plan = Topology::Reverse.passive(&ends, 30001, Some(42000));
        assert_eq!(plan.announce, Some("203.0.113.1:42000".parse().unwrap()));
        assert_eq!(plan.pinhole.from, ends.client.ip());
        assert_eq!(plan.pinhole.to, "198.51.100.2:30001".parse().unwrap());
        assert_eq!(plan.pinhole.via, Some("203.0.113.1:42000".parse().unwrap()));
        assert_eq!(plan.pinhole.snat, Some("198.51.100.1".parse().unwrap()));
        assert_eq!(plan.lease, Some((ends.client.ip(), 42000)));
    }

    #[test]
    fn routed_rewrites_nothing_and_leases_nothing() {
        let ends = ends(
            "[2001:db8:1::2]:50000",
            "[2001:db8:2::2]:21",
            "[2001:db8:2::2]:21",
            "[2001:db8:1::2]:40000",
        );
        assert_eq!(Topology::Routed.active_lease_owner(&ends), None);
        assert_eq!(Topology::Routed.passive_lease_owner(&ends), None);
        let active = Topology::Routed.active(&ends, "[2001:db8:1::2]:50001".parse().unwrap(), None);
        assert_eq!(active.announce, None);
        assert_eq!(active.pinhole.via, None);
        assert_eq!(active.pinhole.to, "[2001:db8:1::2]:50001".parse().unwrap());
        let passive = Topology::Routed.passive(&ends, 30001, None);
        assert_eq!(passive.announce, None);
        assert_eq!(
            passive.pinhole,
            Pinhole::passive(ends.client.ip(), ends.server.ip(), 30001)
        );
    }
}

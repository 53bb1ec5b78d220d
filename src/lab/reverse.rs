//! The published-server test bed (`reverse` mode): an FTP server behind the gateway, reached by
//! clients on the public network at the gateway's own address.
//!
//! ```text
//!  client ns                    gateway ns                                  server ns
//!  eth0 203.0.113.2  ── wan0 203.0.113.1   | lan0 198.51.100.1   ── eth0 198.51.100.2
//!       2001:db8:1::2         2001:db8:1::1 |      2001:db8:2::1         2001:db8:2::2
//!  connected routes only      forwarding, admin forward chain            default via .1 / ::1
//!  (no route to the inside)   policy drop
//! ```
//!
//! The client knows only the public network: it has no route to 198.51.100.0/24 or
//! 2001:db8:2::/64, so a 227 naming the server's own address is useless to it. The admin's
//! forward chain drops everything but established/related traffic and the ALG's ct mark; for
//! the control run without the ALG, [`ReverseOptions::port_forward`] adds the plain
//! port-forward an admin would write (DNAT of the public :21 to the server, and its accept).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::Result;
use super::netns::{Netns, remove_stale_namespaces, unique_tag};
use super::topology::{ALG_CT_MARK, LAN_IF, WAN_IF};
use super::wiring::{PEER_IF, address, default_via, forwarding, link, no_dad};

/// The client on the public network.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The client's IPv6 address.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The gateway's public address (`wan0`): where the server is published.
pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The gateway's public IPv6 address.
pub const PUBLIC_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The gateway's inside address (`lan0`): the server's default route, and the ALG's source
/// toward it.
pub const INSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The gateway's inside IPv6 address.
pub const INSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The published server (the backend).
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The backend's IPv6 address.
pub const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);

/// The address of `v4` or its IPv6 twin `v6`.
pub fn pick(ipv6: bool, v4: Ipv4Addr, v6: Ipv6Addr) -> IpAddr {
    if ipv6 { IpAddr::V6(v6) } else { IpAddr::V4(v4) }
}

/// Where clients connect: the gateway's public address, port 21.
pub fn public_addr(ipv6: bool) -> SocketAddr {
    SocketAddr::new(pick(ipv6, PUBLIC_IP, PUBLIC_IP6), 21)
}

/// The backend's control address, port 21.
pub fn backend_addr(ipv6: bool) -> SocketAddr {
    SocketAddr::new(pick(ipv6, SERVER_IP, SERVER_IP6), 21)
}

/// How the gateway's firewall is set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReverseOptions {
    /// The control run without the ALG: a plain port-forward of the public :21 to the
    /// backend (DNAT on `wan0` and an accept of the forwarded control connection), both
    /// families.
    pub port_forward: bool,
}

/// Three namespaces wired as a server published behind a gateway. Dropping it deletes them.
#[derive(Debug)]
pub struct ReverseLab {
    /// The client on the public network.
    pub client: Netns,
    /// The gateway: forwarding, the admin's `inet lab_fw` table (and the port-forward).
    pub gateway: Netns,
    /// The published server, default route via the gateway.
    pub server: Netns,
    tag: String,
    options: ReverseOptions,
}

impl ReverseLab {
    /// Builds the lab under a fresh unique name tag.
    pub fn build(options: ReverseOptions) -> Result<Self> {
        remove_stale_namespaces();
        let tag = unique_tag();
        let client = Netns::create(format!("{tag}-cl"))?;
        let gateway = Netns::create(format!("{tag}-gw"))?;
        let server = Netns::create(format!("{tag}-sv"))?;
        let lab = Self {
            client,
            gateway,
            server,
            tag,
            options,
        };
        lab.wire()?;
        lab.gateway
            .exec_stdin_ok(&["nft", "-f", "-"], reverse_ruleset(options).as_bytes())?;
        Ok(lab)
    }

    fn wire(&self) -> Result<()> {
        let (cl, gw, sv) = (&self.client, &self.gateway, &self.server);
        for ns in [cl, gw, sv] {
            no_dad(ns)?;
        }
        link(gw, WAN_IF, cl)?;
        link(gw, LAN_IF, sv)?;
        address(cl, PEER_IF, &format!("{CLIENT_IP}/24"))?;
        address(cl, PEER_IF, &format!("{CLIENT_IP6}/64"))?;
        address(gw, WAN_IF, &format!("{PUBLIC_IP}/24"))?;
        address(gw, WAN_IF, &format!("{PUBLIC_IP6}/64"))?;
        address(gw, LAN_IF, &format!("{INSIDE_IP}/24"))?;
        address(gw, LAN_IF, &format!("{INSIDE_IP6}/64"))?;
        forwarding(gw)?;
        address(sv, PEER_IF, &format!("{SERVER_IP}/24"))?;
        address(sv, PEER_IF, &format!("{SERVER_IP6}/64"))?;
        default_via(sv, &INSIDE_IP.to_string())?;
        default_via(sv, &INSIDE_IP6.to_string())?;
        Ok(())
    }

    /// The name tag shared by the three namespaces.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The options it was built with.
    pub fn options(&self) -> ReverseOptions {
        self.options
    }
}

/// The gateway's rules as an admin would write them for a published server.
pub fn reverse_ruleset(options: ReverseOptions) -> String {
    let mut rules = String::from(
        "table inet lab_fw {\n\
         \tchain forward {\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n",
    );
    let _ = writeln!(rules, "\t\tct mark {ALG_CT_MARK:#x} accept");
    if options.port_forward {
        rules
            .push_str("\t\tiifname \"wan0\" oifname \"lan0\" tcp dport 21 ct status dnat accept\n");
    }
    rules.push_str("\t}\n}\n");
    if options.port_forward {
        let _ = write!(
            rules,
            "table inet lab_portfwd {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname \"wan0\" ip daddr {PUBLIC_IP} tcp dport 21 dnat ip to {SERVER_IP}\n\
             \t\tiifname \"wan0\" ip6 daddr {PUBLIC_IP6} tcp dport 21 dnat ip6 to {SERVER_IP6}\n\
             \t}}\n\
             }}\n"
        );
    }
    rules
}

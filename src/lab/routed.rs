//! The routed test bed (`routed` mode): a stateful firewall without NAT between a client
//! network and a server network.
//!
//! ```text
//!  client ns                 gateway ns                                 server ns
//!  eth0 192.0.2.2     ── lan0 192.0.2.1      | wan0 203.0.113.1   ── eth0 203.0.113.2
//!       2001:db8:a::2        2001:db8:a::1   |      2001:db8:b::1        2001:db8:b::2
//!  default via the gateway   forwarding, no NAT, admin forward chain     default via the gateway
//!                            policy drop
//! ```
//!
//! Routes lead both ways through the gateway, nothing is translated. The admin's forward chain
//! admits established/related traffic, new LAN→WAN control connections (:21) and the ALG's ct
//! mark — no data connection of its own.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::Result;
use super::netns::{Netns, remove_stale_namespaces, unique_tag};
use super::topology::{ALG_CT_MARK, LAN_IF, WAN_IF};
use super::wiring::{PEER_IF, address, default_via, forwarding, link, no_dad};

/// The client.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The client's IPv6 address.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 2);
/// The gateway on the client's network (`lan0`).
pub const GATEWAY_LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The gateway's IPv6 address on the client's network.
pub const GATEWAY_LAN_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 1);
/// The gateway on the server's network (`wan0`).
pub const GATEWAY_WAN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The gateway's IPv6 address on the server's network.
pub const GATEWAY_WAN_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);
/// The server.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The server's IPv6 address.
pub const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 2);

/// The client's address of one family.
pub fn client_ip(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(CLIENT_IP6)
    } else {
        IpAddr::V4(CLIENT_IP)
    }
}

/// The server's control address of one family, port 21.
pub fn server_addr(ipv6: bool) -> SocketAddr {
    let ip = if ipv6 {
        IpAddr::V6(SERVER_IP6)
    } else {
        IpAddr::V4(SERVER_IP)
    };
    SocketAddr::new(ip, 21)
}

/// Three namespaces wired as client — routing firewall — server. Dropping it deletes them.
#[derive(Debug)]
pub struct RoutedLab {
    /// The client, default routes via the gateway.
    pub client: Netns,
    /// The gateway: forwarding, no NAT, the admin's `inet lab_fw` table.
    pub gateway: Netns,
    /// The server, default routes via the gateway.
    pub server: Netns,
    tag: String,
}

impl RoutedLab {
    /// Builds the lab under a fresh unique name tag.
    pub fn build() -> Result<Self> {
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
        };
        lab.wire()?;
        lab.gateway
            .exec_stdin_ok(&["nft", "-f", "-"], routed_ruleset().as_bytes())?;
        Ok(lab)
    }

    fn wire(&self) -> Result<()> {
        let (cl, gw, sv) = (&self.client, &self.gateway, &self.server);
        for ns in [cl, gw, sv] {
            no_dad(ns)?;
        }
        link(gw, LAN_IF, cl)?;
        link(gw, WAN_IF, sv)?;
        address(cl, PEER_IF, &format!("{CLIENT_IP}/24"))?;
        address(cl, PEER_IF, &format!("{CLIENT_IP6}/64"))?;
        default_via(cl, &GATEWAY_LAN_IP.to_string())?;
        default_via(cl, &GATEWAY_LAN_IP6.to_string())?;
        address(gw, LAN_IF, &format!("{GATEWAY_LAN_IP}/24"))?;
        address(gw, LAN_IF, &format!("{GATEWAY_LAN_IP6}/64"))?;
        address(gw, WAN_IF, &format!("{GATEWAY_WAN_IP}/24"))?;
        address(gw, WAN_IF, &format!("{GATEWAY_WAN_IP6}/64"))?;
        forwarding(gw)?;
        address(sv, PEER_IF, &format!("{SERVER_IP}/24"))?;
        address(sv, PEER_IF, &format!("{SERVER_IP6}/64"))?;
        default_via(sv, &GATEWAY_WAN_IP.to_string())?;
        default_via(sv, &GATEWAY_WAN_IP6.to_string())?;
        Ok(())
    }

    /// The name tag shared by the three namespaces.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

/// The gateway's rules as an admin would write them for a routing firewall.
pub fn routed_ruleset() -> String {
    let mut rules = String::from(
        "table inet lab_fw {\n\
         \tchain forward {\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"lan0\" oifname \"wan0\" tcp dport 21 accept\n",
    );
    let _ = writeln!(rules, "\t\tct mark {ALG_CT_MARK:#x} accept");
    rules.push_str("\t}\n}\n");
    rules
}

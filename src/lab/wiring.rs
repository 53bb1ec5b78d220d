//! Small wiring steps shared by the dual-stack labs ([`super::ReverseLab`],
//! [`super::RoutedLab`]): veth pairs born in the gateway with their peer moved straight into the
//! neighbour, addresses (IPv6 without duplicate-address detection, so that they are usable at
//! once — the lab's links have no other hosts), forwarding.

use super::error::Result;
use super::netns::Netns;

/// Name of the single interface in the client and server namespaces.
pub(crate) const PEER_IF: &str = "eth0";

/// A veth pair: `gw_if` in `gateway`, its peer `eth0` in `peer`; both up.
pub(crate) fn link(gateway: &Netns, gw_if: &str, peer: &Netns) -> Result<()> {
    gateway.ip(&[
        "link",
        "add",
        gw_if,
        "type",
        "veth",
        "peer",
        "name",
        PEER_IF,
        "netns",
        peer.name(),
    ])?;
    gateway.ip(&["link", "set", gw_if, "up"])?;
    peer.ip(&["link", "set", PEER_IF, "up"])?;
    Ok(())
}

/// Adds `cidr` (IPv4 or IPv6) to `dev` in `ns`.
pub(crate) fn address(ns: &Netns, dev: &str, cidr: &str) -> Result<()> {
    if cidr.contains(':') {
        ns.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"])?;
    } else {
        ns.ip(&["addr", "add", cidr, "dev", dev])?;
    }
    Ok(())
}

/// A default route via `gateway_ip` (either family).
pub(crate) fn default_via(ns: &Netns, gateway_ip: &str) -> Result<()> {
    let family = if gateway_ip.contains(':') { "-6" } else { "-4" };
    ns.ip(&[family, "route", "add", "default", "via", gateway_ip])?;
    Ok(())
}

/// IPv4 and IPv6 forwarding on.
pub(crate) fn forwarding(ns: &Netns) -> Result<()> {
    ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
    Ok(())
}

/// No duplicate-address detection on interfaces created from now on in `ns` — including the
/// automatic link-local addresses, which would otherwise stay tentative for about a second
/// after the lab is built (the first IPv6 connection then waits for a SYN retransmission).
pub(crate) fn no_dad(ns: &Netns) -> Result<()> {
    for key in [
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ] {
        ns.exec_ok(&["sysctl", "-q", "-w", key])?;
    }
    Ok(())
}

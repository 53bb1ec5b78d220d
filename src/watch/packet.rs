//! One captured TCP segment, decoded from a link-layer frame.
//!
//! Decoding is etherparse's (Ethernet II with VLAN tags, IPv4 with options, IPv6 with extension
//! headers, TCP); this file only keeps what the explainer needs: where the segment was seen,
//! its addresses, flags, sequence numbers, and the payload of control connections.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// The TCP flags the explainer looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// RST.
    pub rst: bool,
    /// FIN.
    pub fin: bool,
}

impl TcpFlags {
    /// A connection's first segment: SYN without ACK.
    pub fn is_syn(self) -> bool {
        self.syn && !self.ack && !self.rst
    }

    /// The answer to a SYN: SYN and ACK.
    pub fn is_syn_ack(self) -> bool {
        self.syn && self.ack && !self.rst
    }
}

/// A TCP segment as seen on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// When it was seen, from the start of the capture.
    pub at: Duration,
    /// The interface it was seen on.
    pub iface: String,
    /// Whether it was leaving through that interface (else arriving).
    pub outgoing: bool,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Flags.
    pub flags: TcpFlags,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// The payload (kept only where the caller asked for it, see [`decode`]).
    pub payload: Vec<u8>,
}

impl Segment {
    /// "arriving on lan0" / "leaving via wan0".
    pub fn where_seen(&self) -> String {
        if self.outgoing {
            format!("leaving via {}", self.iface)
        } else {
            format!("arriving on {}", self.iface)
        }
    }
}

/// How a frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// Ethernet II (veth, most NICs).
    Ethernet,
    /// A bare IP packet (tun devices, some tunnels).
    RawIp,
}

/// Decodes `frame` into a TCP segment; `None` for anything else (ARP, UDP, fragments...).
///
/// The payload is copied only when `keep_payload` says so for the ports (control connections):
/// data connections can be large, and only their SYN/SYN-ACK/RST matter.
pub fn decode(
    frame: &[u8],
    link: LinkType,
    at: Duration,
    iface: &str,
    outgoing: bool,
    keep_payload: impl Fn(u16, u16) -> bool,
) -> Option<Segment> {
    let sliced = match link {
        LinkType::Ethernet => SlicedPacket::from_ethernet(frame),
        LinkType::RawIp => SlicedPacket::from_ip(frame),
    }
    .ok()?;
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match sliced.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Arp(_) => return None,
    };
    let TransportSlice::Tcp(tcp) = sliced.transport? else {
        return None;
    };
    let (sport, dport) = (tcp.source_port(), tcp.destination_port());
    Some(Segment {
        at,
        iface: iface.to_owned(),
        outgoing,
        src: SocketAddr::new(src_ip, sport),
        dst: SocketAddr::new(dst_ip, dport),
        flags: TcpFlags {
            syn: tcp.syn(),
            ack: tcp.ack(),
            rst: tcp.rst(),
            fin: tcp.fin(),
        },
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        payload: if keep_payload(sport, dport) {
            tcp.payload().to_vec()
        } else {
            Vec::new()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn frame(payload: &[u8], syn: bool) -> Vec<u8> {
        let mut builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [203, 0, 113, 2], 64)
            .tcp(50000, 21, 1000, 64240);
        if syn {
            builder = builder.syn();
        }
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn a_control_segment_keeps_its_payload_and_addresses() {
        let bytes = frame(b"PORT 10,0,0,2,195,80\r\n", false);
        let seg = decode(
            &bytes,
            LinkType::Ethernet,
            Duration::ZERO,
            "lan0",
            false,
            |s, d| s == 21 || d == 21,
        )
        .unwrap();
        assert_eq!(seg.src, "10.0.0.2:50000".parse().unwrap());
        assert_eq!(seg.dst, "203.0.113.2:21".parse().unwrap());
        assert_eq!(seg.seq, 1000);
        assert_eq!(seg.payload, b"PORT 10,0,0,2,195,80\r\n");
        assert_eq!(seg.where_seen(), "arriving on lan0");
    }

    #[test]
    fn a_syn_is_recognised_and_other_payloads_are_dropped() {
        let bytes = frame(b"", true);
        let seg = decode(
            &bytes,
            LinkType::Ethernet,
            Duration::ZERO,
            "wan0",
            true,
            |_, _| false,
        )
        .unwrap();
        assert!(seg.flags.is_syn());
        assert!(!seg.flags.is_syn_ack());
        assert!(seg.payload.is_empty());
        assert!(
            decode(
                &bytes[..20],
                LinkType::Ethernet,
                Duration::ZERO,
                "x",
                false,
                |_, _| true
            )
            .is_none()
        );
    }
}

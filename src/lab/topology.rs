//! The client-NAT test bed: client — gateway (masquerade, admin firewall) — server.
//!
//! ```text
//!  client ns            gateway ns                         server ns
//!  eth0 10.0.0.2 ── lan0 10.0.0.1 | wan0 203.0.113.1 ── eth0 203.0.113.2
//!  default via .1       ip_forward=1, masquerade on wan0    no route to 10.0.0.0/8
//! ```
//!
//! The veth pairs are created directly inside the namespaces; nothing touches the root
//! namespace and no route leads out of the lab.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::error::Result;
use super::netns::{Netns, remove_stale_namespaces, unique_tag};

/// The client's address on the LAN.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The gateway's LAN address (the client's default route).
pub const GATEWAY_LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The gateway's WAN address (what masquerade and a rewritten PORT announce).
pub const GATEWAY_WAN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The FTP server's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The client's IPv6 address on the LAN (with [`ClientNatOptions::ipv6`]).
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// The gateway's IPv6 LAN address (the client's IPv6 default route).
pub const GATEWAY_LAN_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// The gateway's IPv6 WAN address (what NAT66 masquerade and a rewritten EPRT announce).
pub const GATEWAY_WAN_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);
/// The FTP server's IPv6 address.
pub const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 2);
/// The gateway's LAN interface.
pub const LAN_IF: &str = "lan0";
/// The gateway's WAN interface.
pub const WAN_IF: &str = "wan0";
/// The conntrack mark the ALG sets on data connections it admits; the admin's firewall
/// accepts it with one line.
pub const ALG_CT_MARK: u32 = 0x2121;

/// How the gateway's firewall is set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientNatOptions {
    /// Also accept every new LAN→WAN connection (a typical home NAT). Passive FTP then works
    /// without any helper; active still cannot, because nothing maps the inbound connection.
    pub outbound_open: bool,
    /// Attach the kernel's own FTP helper (`ct helper` "ftp" + nf_nat_ftp) to LAN→WAN :21,
    /// as the baseline the ALG is compared with.
    pub kernel_helper: bool,
    /// Leave the coexistence line (`ct mark 0x2121 accept`) out of the admin's forward chain,
    /// to show that it is what admits the ALG's data connections.
    pub omit_alg_mark_line: bool,
    /// Dual stack: also fd00::2 (client) — fd00::1 | 2001:db8:b::1 (gateway, NAT66
    /// masquerade on `wan0`) — 2001:db8:b::2 (server, no route to fd00::/8).
    pub ipv6: bool,
}

/// Three namespaces wired as a client behind a masquerading gateway.
///
/// Dropping it deletes the namespaces (server first, so that nothing still listens while the
/// client goes away).
#[derive(Debug)]
pub struct ClientNatLab {
    /// The LAN client, 10.0.0.2, default route via the gateway.
    pub client: Netns,
    /// The gateway: forwarding, masquerade on `wan0`, the admin's `inet lab_fw` table.
    pub gateway: Netns,
    /// The FTP server, 203.0.113.2; knows nothing of 10.0.0.0/8.
    pub server: Netns,
    tag: String,
    options: ClientNatOptions,
}

impl ClientNatLab {
    /// Builds the lab under a fresh unique name tag.
    pub fn build(options: ClientNatOptions) -> Result<Self> {
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
        if options.kernel_helper {
            load_ftp_helper_modules();
        }
        lab.gateway
            .exec_stdin_ok(&["nft", "-f", "-"], gateway_ruleset(options).as_bytes())?;
        Ok(lab)
    }

    fn wire(&self) -> Result<()> {
        let (cl, gw, sv) = (&self.client, &self.gateway, &self.server);
        if self.options.ipv6 {
            for ns in [cl, gw, sv] {
                super::wiring::no_dad(ns)?;
            }
        }
        // veth pairs born inside the gateway, their peers moved straight into the neighbours.
        gw.ip(&[
            "link",
            "add",
            LAN_IF,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            cl.name(),
        ])?;
        gw.ip(&[
            "link",
            "add",
            WAN_IF,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            sv.name(),
        ])?;

        cl.ip(&["addr", "add", "10.0.0.2/24", "dev", "eth0"])?;
        cl.ip(&["link", "set", "eth0", "up"])?;
        cl.ip(&["route", "add", "default", "via", "10.0.0.1"])?;

        gw.ip(&["addr", "add", "10.0.0.1/24", "dev", LAN_IF])?;
        gw.ip(&["addr", "add", "203.0.113.1/24", "dev", WAN_IF])?;
        gw.ip(&["link", "set", LAN_IF, "up"])?;
        gw.ip(&["link", "set", WAN_IF, "up"])?;
        gw.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;

        // Only the connected 203.0.113.0/24: the client's private address is unreachable.
        sv.ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0"])?;
        sv.ip(&["link", "set", "eth0", "up"])?;
        if self.options.ipv6 {
            self.wire_ipv6()?;
        }
        Ok(())
    }

    /// The IPv6 half (addresses without duplicate-address detection, so that they are usable
    /// at once; the lab's links have no other hosts).
    fn wire_ipv6(&self) -> Result<()> {
        let (cl, gw, sv) = (&self.client, &self.gateway, &self.server);
        let client = format!("{CLIENT_IP6}/64");
        let gw_lan = format!("{GATEWAY_LAN_IP6}/64");
        let gw_wan = format!("{GATEWAY_WAN_IP6}/64");
        let server = format!("{SERVER_IP6}/64");
        let gw_lan_ip = GATEWAY_LAN_IP6.to_string();
        cl.ip(&["-6", "addr", "add", &client, "dev", "eth0", "nodad"])?;
        cl.ip(&["-6", "route", "add", "default", "via", &gw_lan_ip])?;
        gw.ip(&["-6", "addr", "add", &gw_lan, "dev", LAN_IF, "nodad"])?;
        gw.ip(&["-6", "addr", "add", &gw_wan, "dev", WAN_IF, "nodad"])?;
        gw.exec_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
        // Only the connected 2001:db8:b::/64: the client's fd00:: address is unreachable.
        sv.ip(&["-6", "addr", "add", &server, "dev", "eth0", "nodad"])?;
        Ok(())
    }

    /// The name tag shared by the three namespaces.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The options it was built with.
    pub fn options(&self) -> ClientNatOptions {
        self.options
    }
}

/// Best effort: the kernel's FTP helper modules. Often built in (as on the machine these tests
/// were written on) or auto-loaded when the `ct helper` object is created; `modprobe` may be
/// missing altogether. Loading a module is host-wide but changes no behaviour by itself: helpers
/// are attached only by explicit rules (automatic assignment is off since Linux 4.7).
fn load_ftp_helper_modules() {
    if super::preflight::has_program("modprobe") {
        for module in ["nf_conntrack_ftp", "nf_nat_ftp"] {
            let mut cmd = std::process::Command::new("modprobe");
            cmd.args(["-q", module]);
            let _ = super::process::run_bounded(cmd, None, super::netns::ADMIN_TIMEOUT);
        }
    }
}

/// The gateway's rules as an admin would write them (plus the kernel helper for the baseline).
pub fn gateway_ruleset(options: ClientNatOptions) -> String {
    let mut rules = String::new();
    rules.push_str(
        "table ip lab_nat {\n\
         \tchain postrouting {\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"wan0\" masquerade\n\
         \t}\n\
         }\n",
    );
    rules.push_str(
        "table inet lab_fw {\n\
         \tchain forward {\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"lan0\" oifname \"wan0\" tcp dport 21 accept\n",
    );
    // The one documented coexistence line: ftp-alg marks the data connections it admits.
    if !options.omit_alg_mark_line {
        let _ = writeln!(rules, "\t\tct mark {ALG_CT_MARK:#x} accept");
    }
    if options.outbound_open {
        rules.push_str("\t\tiifname \"lan0\" oifname \"wan0\" accept\n");
    }
    rules.push_str("\t}\n}\n");
    if options.ipv6 {
        rules.push_str(
            "table ip6 lab_nat6 {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"wan0\" masquerade\n\
             \t}\n\
             }\n",
        );
    }
    if options.kernel_helper {
        rules.push_str(&kernel_helper_table("lab_helper", 21));
    }
    rules
}

/// A table `inet <name>` that attaches the kernel's FTP helper (`ct helper` "ftp", with
/// nf_nat_ftp behind the masquerade) to LAN control connections to `control_port`.
pub fn kernel_helper_table(name: &str, control_port: u16) -> String {
    format!(
        "table inet {name} {{\n\
         \tct helper ftp {{\n\
         \t\ttype \"ftp\" protocol tcp\n\
         \t\tl3proto ip\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority filter; policy accept;\n\
         \t\tiifname \"{LAN_IF}\" tcp dport {control_port} ct helper set \"ftp\"\n\
         \t}}\n\
         }}\n"
    )
}

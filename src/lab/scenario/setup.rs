//! Building one topology for one variant: the namespaces (the lab's own test beds), the
//! gateway's firewall as its admin would write it, the kernel helper or the ALG, the lab's FTP
//! server, and the gateway's drop recorder.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::peers::{EventLog, LabServer};
use super::{Topology, Variant};
use crate::lab::netns::Netns;
use crate::lab::{
    AlgDaemon, AlgDeployment, AlgOptions, ClientNatLab, ClientNatOptions, LAN_IF, Result,
    ReverseLab, ReverseOptions, RoutedLab, WAN_IF, reverse, routed,
};

/// The name of the set the drop recorder fills (in the admin's `inet lab_fw` table).
pub(super) const DROP_SET: &str = "lab_dropped";

/// Who is where in a topology.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// The client's own address.
    pub client: IpAddr,
    /// The gateway's address on the client's side.
    pub gateway_client_side: IpAddr,
    /// The gateway's address on the server's side.
    pub gateway_server_side: IpAddr,
    /// The gateway interface facing the client.
    pub client_if: &'static str,
    /// The gateway interface facing the server.
    pub server_if: &'static str,
    /// Where the server listens.
    pub server: SocketAddr,
    /// Where the client connects (the server, or the gateway's published address).
    pub target: SocketAddr,
}

impl Topology {
    /// The addresses of this topology (IPv4: PORT and PASV cannot carry IPv6).
    pub fn addresses(self) -> Addresses {
        match self {
            Self::ClientNat => Addresses {
                client: crate::lab::CLIENT_IP.into(),
                gateway_client_side: crate::lab::GATEWAY_LAN_IP.into(),
                gateway_server_side: crate::lab::GATEWAY_WAN_IP.into(),
                client_if: LAN_IF,
                server_if: WAN_IF,
                server: SocketAddr::new(crate::lab::SERVER_IP.into(), 21),
                target: SocketAddr::new(crate::lab::SERVER_IP.into(), 21),
            },
            Self::Reverse => Addresses {
                client: reverse::CLIENT_IP.into(),
                gateway_client_side: reverse::PUBLIC_IP.into(),
                gateway_server_side: reverse::INSIDE_IP.into(),
                client_if: WAN_IF,
                server_if: LAN_IF,
                server: reverse::backend_addr(false),
                target: reverse::public_addr(false),
            },
            Self::Routed => Addresses {
                client: routed::CLIENT_IP.into(),
                gateway_client_side: routed::GATEWAY_LAN_IP.into(),
                gateway_server_side: routed::GATEWAY_WAN_IP.into(),
                client_if: LAN_IF,
                server_if: WAN_IF,
                server: routed::server_addr(false),
                target: routed::server_addr(false),
            },
        }
    }
}

#[derive(Debug)]
enum Nets {
    ClientNat(ClientNatLab),
    Reverse(ReverseLab),
    Routed(RoutedLab),
}

/// One topology built for one variant, ready to run sessions ([`ScenarioLab::run`]).
/// Dropping it stops the ALG and the server and deletes the namespaces (fields drop in
/// declaration order).
#[derive(Debug)]
pub struct ScenarioLab {
    alg: Option<AlgDaemon>,
    server: LabServer,
    nets: Nets,
    pub(super) file: Arc<Vec<u8>>,
    /// Which topology.
    pub topology: Topology,
    /// Which variant.
    pub variant: Variant,
}

impl ScenarioLab {
    /// Builds the namespaces, the rules and the peers; starts `alg_binary` as `ftp-alg run`
    /// in the gateway for [`Variant::FtpAlg`].
    pub fn build(topology: Topology, variant: Variant, alg_binary: &Path) -> Result<Self> {
        let file = Arc::new(super::random_bytes(super::FILE_LEN)?);
        Self::build_with(topology, variant, alg_binary, file)
    }

    /// Like [`ScenarioLab::build`], serving `file`.
    pub(super) fn build_with(
        topology: Topology,
        variant: Variant,
        alg_binary: &Path,
        file: Arc<Vec<u8>>,
    ) -> Result<Self> {
        let log = EventLog::new(std::time::Instant::now());
        let nets = match topology {
            // A home router: masquerade, every outbound connection allowed, nothing inbound.
            Topology::ClientNat => Nets::ClientNat(ClientNatLab::build(ClientNatOptions {
                outbound_open: true,
                kernel_helper: variant == Variant::KernelHelper,
                ..ClientNatOptions::default()
            })?),
            // A published server: the admin's port-forward of :21 (ftp-alg takes :21 itself
            // instead), plus outbound connections of the server, masqueraded (added below).
            Topology::Reverse => Nets::Reverse(ReverseLab::build(ReverseOptions {
                port_forward: variant != Variant::FtpAlg,
            })?),
            // A strict firewall without NAT: control connections only.
            Topology::Routed => Nets::Routed(RoutedLab::build()?),
        };
        let addresses = topology.addresses();
        let (_, gateway, server_ns) = nets.namespaces();
        let mut rules = String::new();
        if topology == Topology::Reverse {
            let _ = write!(
                rules,
                "add rule inet lab_fw forward iifname \"{LAN_IF}\" oifname \"{WAN_IF}\" accept \
                 comment \"lab: the published server may connect out\"\n\
                 add table ip lab_out\n\
                 add chain ip lab_out postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
                 add rule ip lab_out postrouting oifname \"{WAN_IF}\" ip saddr {}/24 masquerade\n",
                reverse::SERVER_IP
            );
        }
        if variant == Variant::KernelHelper && topology != Topology::ClientNat {
            // ClientNatLab attaches the helper itself (its `kernel_helper` option).
            load_ftp_helper_modules(gateway);
            let _ = write!(
                rules,
                "table inet lab_helper {{\n\
                 \tct helper ftp {{\n\t\ttype \"ftp\" protocol tcp\n\t\tl3proto ip\n\t}}\n\
                 \tchain prerouting {{\n\
                 \t\ttype filter hook prerouting priority filter; policy accept;\n\
                 \t\tiifname \"{}\" tcp dport 21 ct helper set \"ftp\"\n\
                 \t}}\n}}\n",
                addresses.client_if
            );
        }
        // The drop recorder: the last rule of the admin's forward chain sees exactly the
        // packets its drop policy is about to drop, and remembers the SYNs with a counter.
        let _ = write!(
            rules,
            "add set inet lab_fw {DROP_SET} {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; \
             flags dynamic; size 4096; counter; }}\n\
             add rule inet lab_fw forward tcp flags & (syn | ack) == syn \
             add @{DROP_SET} {{ ip saddr . tcp sport . ip daddr . tcp dport }} \
             comment \"ftp-alg lab: SYN about to meet the drop policy\"\n"
        );
        gateway.exec_stdin_ok(&["nft", "-f", "-"], rules.as_bytes())?;
        let server = LabServer::start(server_ns, addresses.server, Arc::clone(&file), log)?;
        let alg = match variant {
            Variant::FtpAlg => {
                let deployment = match topology {
                    Topology::ClientNat => AlgDeployment::ClientNat,
                    Topology::Reverse => AlgDeployment::Reverse(vec![(
                        reverse::public_addr(false),
                        reverse::backend_addr(false),
                    )]),
                    Topology::Routed => AlgDeployment::Routed,
                };
                let mut options = AlgOptions::with_deployment(alg_binary, deployment);
                options.log_level = "info".into();
                Some(AlgDaemon::start(gateway, &options)?)
            }
            _ => None,
        };
        Ok(Self {
            alg,
            server,
            nets,
            file,
            topology,
            variant,
        })
    }

    /// The client's namespace.
    pub fn client(&self) -> &Netns {
        self.nets.namespaces().0
    }

    /// The gateway's namespace.
    pub fn gateway(&self) -> &Netns {
        self.nets.namespaces().1
    }

    /// The server's namespace.
    pub fn server_ns(&self) -> &Netns {
        self.nets.namespaces().2
    }

    /// The gateway namespace's name (for `ftp-alg watch --netns`).
    pub fn gateway_name(&self) -> &str {
        self.gateway().name()
    }

    /// The lab's FTP server.
    pub(super) fn server(&self) -> &LabServer {
        &self.server
    }

    /// The ALG's log so far (empty without the ALG).
    pub fn alg_output(&self) -> String {
        self.alg.as_ref().map(AlgDaemon::output).unwrap_or_default()
    }

    /// The ALG's command line, if it runs.
    pub fn alg_command(&self) -> Option<String> {
        self.alg.as_ref().map(AlgDaemon::command_line)
    }

    /// Stops the peers and the ALG but leaves the namespaces (and their rules) in place;
    /// returns their names.
    pub fn keep(mut self) -> Vec<String> {
        if let Some(mut alg) = self.alg.take() {
            alg.stop(Duration::from_secs(5));
        }
        let names = {
            let (c, g, s) = self.nets.namespaces();
            vec![
                c.name().to_owned(),
                g.name().to_owned(),
                s.name().to_owned(),
            ]
        };
        let Self { server, nets, .. } = self;
        drop(server);
        // The guards' Drop would delete the namespaces: not running it is the point.
        std::mem::forget(nets);
        for name in &names {
            crate::lab::netns::mark_kept(name);
        }
        names
    }
}

impl Nets {
    fn namespaces(&self) -> (&Netns, &Netns, &Netns) {
        match self {
            Self::ClientNat(lab) => (&lab.client, &lab.gateway, &lab.server),
            Self::Reverse(lab) => (&lab.client, &lab.gateway, &lab.server),
            Self::Routed(lab) => (&lab.client, &lab.gateway, &lab.server),
        }
    }
}

/// Best effort, as the client-NAT lab does: the kernel's FTP helper modules (often built in,
/// or loaded on demand when the `ct helper` object is created).
fn load_ftp_helper_modules(gateway: &Netns) {
    if crate::lab::preflight::has_program("modprobe") {
        for module in ["nf_conntrack_ftp", "nf_nat_ftp"] {
            let _ = gateway.exec(&["modprobe", "-q", module]);
        }
    }
}

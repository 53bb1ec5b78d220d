//! Control runs for the published server WITHOUT the ALG: the plain port-forward an admin
//! would write (DNAT of the gateway's public :21 to the backend, and an accept of that
//! forwarded connection; forward policy drop otherwise). Logging in works, data does not:
//!
//! - passive fails: PASV tells the client the backend's private 198.51.100.2, which it has no
//!   route to; EPSV sends it to the gateway's public address on a port nothing forwards.
//! - active fails too: the DNAT keeps the client's address, so the backend accepts the PORT
//!   and connects to the client itself — a new outbound connection the admin's forward chain
//!   drops (and, without masquerade, one the client could not answer anyway: it has no route
//!   back to 198.51.100.0/24). vsftpd answers 425 after its connect timeout.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::modes::{
    FtpServer, Servers, assert_no_problems, embedded_runs, expect_all_fail, vsftpd_runs,
};
use common::random_payload;
use ftp_alg::lab::reverse::{
    CLIENT_IP, CLIENT_IP6, SERVER_IP, SERVER_IP6, backend_addr, public_addr,
};
use ftp_alg::lab::{ReverseLab, ReverseOptions, nft};

const TOPOLOGY: &str = "reverse";

fn port_forward_lab() -> ReverseLab {
    ReverseLab::build(ReverseOptions { port_forward: true }).expect("lab")
}

fn target(ipv6: bool) -> SocketAddr {
    public_addr(ipv6)
}

#[test]
fn reverse_control_without_alg_vsftpd_port_forward_fails_passive_and_active() {
    require_lab!("vsftpd", "lftp", "curl");
    let (payload, _) = random_payload();
    let lab = port_forward_lab();
    let servers = Servers::both(
        FtpServer::vsftpd(&lab.server, backend_addr(false), &payload),
        FtpServer::vsftpd(&lab.server, backend_addr(true), &payload),
    );
    let mut runs = vsftpd_runs(false);
    runs.extend(vsftpd_runs(true));
    let problems = expect_all_fail(TOPOLOGY, &lab.client, &servers, &target, &runs);
    assert_no_problems(&problems, &nft::ruleset(&lab.gateway));

    // Why: the 227 named the private backend; PORT/EPRT named the client itself and the
    // backend's connection to it never got through (425).
    let (v4, v6) = (servers.get(false), servers.get(true));
    let private = SERVER_IP.to_string().replace('.', ",");
    assert!(
        v4.replies()
            .iter()
            .any(|r| r.starts_with("227 ") && r.contains(&format!("({private},"))),
        "the backend's 227 should name its private address: {:?}",
        v4.replies()
    );
    let client = CLIENT_IP.to_string().replace('.', ",");
    assert!(
        v4.commands()
            .iter()
            .any(|c| c.starts_with(&format!("PORT {client},"))),
        "{:?}",
        v4.commands()
    );
    assert!(
        v6.commands()
            .iter()
            .any(|c| c.starts_with(&format!("EPRT |2|{CLIENT_IP6}|"))),
        "{:?}",
        v6.commands()
    );
    for server in [v4, v6] {
        assert!(
            server.replies().iter().any(|r| r.starts_with("425 ")),
            "the backend never failed to connect to the client: {:?}",
            server.replies()
        );
    }
}

#[test]
fn reverse_control_without_alg_libunftp_port_forward_fails_passive_and_active() {
    require_lab!();
    let (payload, _) = random_payload();
    let lab = port_forward_lab();
    let servers = Servers::both(
        FtpServer::embedded(&lab.server, IpAddr::V4(SERVER_IP), &payload),
        FtpServer::embedded(&lab.server, IpAddr::V6(SERVER_IP6), &payload),
    );
    let mut runs = embedded_runs(false);
    runs.extend(embedded_runs(true));
    let problems = expect_all_fail(TOPOLOGY, &lab.client, &servers, &target, &runs);
    assert_no_problems(&problems, &nft::ruleset(&lab.gateway));
}

//! A published server (`reverse` mode) through ftp-alg, both families: the client on the
//! public network reaches the gateway's own address; the ALG connects to the backend from the
//! gateway's inside address. Every data mode the family allows must move a listing, a 1.5 MiB
//! download and a 1.5 MiB upload intact (SHA-256); the backend's log must show the intended
//! command, and PORT/EPRT naming the gateway's inside address (its control peer); a raw PASV
//! must come back naming the public address; PORT/PASV on IPv6 get 522; afterwards the
//! pinhole sets are empty and SIGTERM leaves nothing behind.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::modes::{
    FtpServer, Servers, assert_drained, assert_ipv6_port_pasv_refused, assert_no_problems,
    assert_nothing_left, embedded_runs, gateway_context, judge, pasv_reply, run_sessions,
    vsftpd_runs,
};
use common::{alg_binary, random_payload};
use ftp_alg::lab::raw_client::parse_227;
use ftp_alg::lab::reverse::{
    INSIDE_IP, INSIDE_IP6, PUBLIC_IP, SERVER_IP, SERVER_IP6, backend_addr, pick, public_addr,
};
use ftp_alg::lab::{AlgDaemon, AlgDeployment, AlgOptions, ReverseLab, ReverseOptions};

const TOPOLOGY: &str = "reverse";

fn start_alg(lab: &ReverseLab) -> AlgDaemon {
    let options = AlgOptions::with_deployment(
        alg_binary(),
        AlgDeployment::Reverse(vec![
            (public_addr(false), backend_addr(false)),
            (public_addr(true), backend_addr(true)),
        ]),
    );
    AlgDaemon::start(&lab.gateway, &options)
        .unwrap_or_else(|e| panic!("ftp-alg did not come up in the gateway: {e}"))
}

fn target(ipv6: bool) -> SocketAddr {
    public_addr(ipv6)
}

/// The backend's control peer, and what its PORT/EPRT must name: the gateway's inside address.
fn backend_sees(ipv6: bool) -> IpAddr {
    pick(ipv6, INSIDE_IP, INSIDE_IP6)
}

#[test]
fn reverse_through_alg_vsftpd_lftp_curl_every_mode_both_families() {
    require_lab!("vsftpd", "lftp", "curl");
    let (payload, payload_sha) = random_payload();
    let lab = ReverseLab::build(ReverseOptions::default()).expect("lab");
    let servers = Servers::both(
        FtpServer::vsftpd(&lab.server, backend_addr(false), &payload),
        FtpServer::vsftpd(&lab.server, backend_addr(true), &payload),
    );
    let alg = start_alg(&lab);

    // The client only knows the public network: the 227 it gets must name the gateway.
    let SocketAddr::V4(public4) = public_addr(false) else {
        unreachable!()
    };
    let pasv = pasv_reply(&lab.client, public4).expect("raw PASV through the ALG");
    let announced = parse_227(&pasv.text);
    assert!(
        pasv.code == 227 && announced.is_some_and(|a| *a.ip() == PUBLIC_IP),
        "PASV through the ALG answered `{}`: must name the public address {PUBLIC_IP}\n--- backend replies: {:?}\n{}",
        pasv.text,
        servers.get(false).replies(),
        gateway_context(&lab.gateway, &alg)
    );
    assert!(
        servers
            .get(false)
            .replies()
            .iter()
            .any(|r| r.starts_with("227 ") && r.contains(&SERVER_IP.to_string().replace('.', ","))),
        "the backend did not announce its own address: {:?}",
        servers.get(false).replies()
    );

    let mut runs = vsftpd_runs(false);
    runs.extend(vsftpd_runs(true));
    let done = run_sessions(&lab.client, &servers, &target, &runs);
    let problems = judge(TOPOLOGY, true, &done, &payload_sha, &backend_sees);
    assert_no_problems(&problems, &gateway_context(&lab.gateway, &alg));

    assert_ipv6_port_pasv_refused(
        &lab.client,
        target(true),
        servers.get(true),
        &gateway_context(&lab.gateway, &alg),
    );
    assert_drained(&lab.gateway, &alg);
    assert_nothing_left(&lab.gateway, alg);
}

#[test]
fn reverse_through_alg_libunftp_suppaftp_every_supported_mode_both_families() {
    require_lab!();
    let (payload, payload_sha) = random_payload();
    let lab = ReverseLab::build(ReverseOptions::default()).expect("lab");
    let servers = Servers::both(
        FtpServer::embedded(&lab.server, IpAddr::V4(SERVER_IP), &payload),
        FtpServer::embedded(&lab.server, IpAddr::V6(SERVER_IP6), &payload),
    );
    let alg = start_alg(&lab);
    let mut runs = embedded_runs(false);
    runs.extend(embedded_runs(true));
    let done = run_sessions(&lab.client, &servers, &target, &runs);
    let problems = judge(TOPOLOGY, true, &done, &payload_sha, &backend_sees);
    assert_no_problems(&problems, &gateway_context(&lab.gateway, &alg));
    assert_drained(&lab.gateway, &alg);
    assert_nothing_left(&lab.gateway, alg);
}

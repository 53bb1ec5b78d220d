//! Client-NAT on both families at once (NAT44 and NAT66 masquerade on `wan0`): the dual-stack
//! `ClientNatLab` (client 10.0.0.2 / fd00::2 — gateway — server 203.0.113.2 / 2001:db8:b::2,
//! which has no route to the client's networks).
//!
//! Through the ALG every mode the family allows moves a listing, a 1.5 MiB download and a
//! 1.5 MiB upload intact, the server logs the gateway's WAN address as the session's peer and
//! in every PORT/EPRT (`EPRT |2|2001:db8:b::1|…|` over IPv6); PORT/PASV on IPv6 get 522.
//! Without the ALG (outbound open, as a home NAT66), EPRT fails — the server is told fd00::2,
//! which vsftpd refuses outright (`500 Illegal EPRT command`: not its control peer, the
//! masqueraded gateway) and could not reach anyway (no route to fd00::/8) — while EPSV works.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::modes::{
    Client, FtpServer, Run, Servers, assert_drained, assert_ipv6_port_pasv_refused,
    assert_no_problems, assert_nothing_left, embedded_runs, expect_all_fail, gateway_context,
    judge, run_sessions, vsftpd_runs,
};
use common::{alg_binary, random_payload};
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, CLIENT_IP6, ClientNatLab, ClientNatOptions, DataMode, GATEWAY_WAN_IP,
    GATEWAY_WAN_IP6, SERVER_IP, SERVER_IP6, nft,
};

const TOPOLOGY: &str = "client-nat";

fn dual_stack(outbound_open: bool) -> ClientNatLab {
    ClientNatLab::build(ClientNatOptions {
        ipv6: true,
        outbound_open,
        ..ClientNatOptions::default()
    })
    .expect("lab")
}

/// The client connects to the server itself; the ALG intercepts on the way.
fn target(ipv6: bool) -> SocketAddr {
    if ipv6 {
        SocketAddr::new(IpAddr::V6(SERVER_IP6), 21)
    } else {
        SocketAddr::new(IpAddr::V4(SERVER_IP), 21)
    }
}

/// Masqueraded: the server sees the gateway's WAN address, in PORT/EPRT too.
fn server_sees(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(GATEWAY_WAN_IP6)
    } else {
        IpAddr::V4(GATEWAY_WAN_IP)
    }
}

#[test]
fn client_nat_dual_stack_through_alg_vsftpd_lftp_curl_every_mode() {
    require_lab!("vsftpd", "lftp", "curl");
    let (payload, payload_sha) = random_payload();
    let lab = dual_stack(false);
    let servers = Servers::both(
        FtpServer::vsftpd(&lab.server, target(false), &payload),
        FtpServer::vsftpd(&lab.server, target(true), &payload),
    );
    let alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(alg_binary()))
        .unwrap_or_else(|e| panic!("ftp-alg did not come up in the gateway: {e}"));
    let mut runs = vsftpd_runs(false);
    runs.extend(vsftpd_runs(true));
    let done = run_sessions(&lab.client, &servers, &target, &runs);
    let problems = judge(TOPOLOGY, true, &done, &payload_sha, &server_sees);
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
fn client_nat_dual_stack_through_alg_libunftp_suppaftp_every_supported_mode() {
    require_lab!();
    let (payload, payload_sha) = random_payload();
    let lab = dual_stack(false);
    let servers = Servers::both(
        FtpServer::embedded(&lab.server, IpAddr::V4(SERVER_IP), &payload),
        FtpServer::embedded(&lab.server, IpAddr::V6(SERVER_IP6), &payload),
    );
    let alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(alg_binary()))
        .unwrap_or_else(|e| panic!("ftp-alg did not come up in the gateway: {e}"));
    let mut runs = embedded_runs(false);
    runs.extend(embedded_runs(true));
    let done = run_sessions(&lab.client, &servers, &target, &runs);
    let problems = judge(TOPOLOGY, true, &done, &payload_sha, &server_sees);
    assert_no_problems(&problems, &gateway_context(&lab.gateway, &alg));
    assert_drained(&lab.gateway, &alg);
    assert_nothing_left(&lab.gateway, alg);
}

#[test]
fn client_nat_ipv6_control_without_alg_eprt_fails_epsv_works() {
    require_lab!("vsftpd", "lftp", "curl");
    let (payload, payload_sha) = random_payload();
    let lab = dual_stack(true);
    let servers = Servers::both(
        FtpServer::vsftpd(&lab.server, target(false), &payload),
        FtpServer::vsftpd(&lab.server, target(true), &payload),
    );
    let active: Vec<Run> = [Client::Lftp, Client::Curl]
        .into_iter()
        .map(|client| Run {
            ipv6: true,
            client,
            mode: DataMode::Eprt,
        })
        .collect();
    let problems = expect_all_fail(TOPOLOGY, &lab.client, &servers, &target, &active);
    assert_no_problems(&problems, &nft::ruleset(&lab.gateway));
    let v6 = servers.get(true);
    assert!(
        v6.commands()
            .iter()
            .any(|c| c.starts_with(&format!("EPRT |2|{CLIENT_IP6}|"))),
        "nobody rewrote the EPRT, so the server must have been told the client's fd00:: address: {:?}",
        v6.commands()
    );

    let passive: Vec<Run> = vsftpd_runs(true)
        .into_iter()
        .filter(|r| r.mode == DataMode::Epsv)
        .collect();
    let done = run_sessions(&lab.client, &servers, &target, &passive);
    let problems = judge(TOPOLOGY, false, &done, &payload_sha, &server_sees);
    assert_no_problems(&problems, &nft::ruleset(&lab.gateway));
}

//! Servers that are not where or what the client expects, behind the client-NAT gateway with
//! the strict firewall:
//!
//! - a server behind its own NAT that advertises a wrong private address in its 227 (vsftpd
//!   with `pasv_address=10.9.9.9`, `pasv_addr_resolve=NO`): with the default
//!   `--pasv-address-policy rewrite` the ALG replaces it with the address the control
//!   connection reached and every transfer works; with `refuse` the client gets 425;
//! - a server on a non-standard control port (2100), intercepted with `--control-port 2100`.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use common::modes::{
    Client, FAIL_BOUND, FtpServer, Run, Servers, assert_drained, assert_no_problems,
    assert_nothing_left, gateway_context, judge, matrix_row, pasv_reply, run_client, run_sessions,
};
use common::{ClientFiles, alg_binary, random_payload};
use ftp_alg::lab::raw_client::parse_227;
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, ClientNatLab, ClientNatOptions, DataMode, FtpOp, GATEWAY_WAN_IP,
    SERVER_IP, VsftpdOptions,
};

const WRONG: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);

fn server_sees(_ipv6: bool) -> IpAddr {
    IpAddr::V4(GATEWAY_WAN_IP)
}

fn v4_runs(pairs: &[(Client, DataMode)]) -> Vec<Run> {
    pairs
        .iter()
        .map(|&(client, mode)| Run {
            ipv6: false,
            client,
            mode,
        })
        .collect()
}

/// The strict client-NAT lab with a vsftpd that advertises [`WRONG`] in every 227.
fn lab_with_misadvertising_server(payload: &[u8]) -> (ClientNatLab, Servers) {
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = FtpServer::vsftpd_with(
        &lab.server,
        &VsftpdOptions {
            pasv_address: Some(WRONG),
            ..VsftpdOptions::default()
        },
        payload,
    );
    (lab, Servers::v4_only(server))
}

fn server_addr() -> SocketAddrV4 {
    SocketAddrV4::new(SERVER_IP, 21)
}

/// The server really advertised the wrong address.
fn assert_server_advertised_wrong(servers: &Servers) {
    let wrong = WRONG.to_string().replace('.', ",");
    let replies = servers.get(false).replies();
    assert!(
        replies
            .iter()
            .any(|r| r.starts_with("227 ") && r.contains(&format!("({wrong},"))),
        "the server did not advertise {WRONG}: {replies:?}"
    );
}

#[test]
fn wrong_pasv_address_is_rewritten_by_default_and_transfers_work() {
    require_lab!("vsftpd", "lftp", "curl");
    let (payload, payload_sha) = random_payload();
    let (lab, servers) = lab_with_misadvertising_server(&payload);
    let alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(alg_binary()))
        .unwrap_or_else(|e| panic!("ftp-alg did not come up in the gateway: {e}"));
    let context = gateway_context(&lab.gateway, &alg);

    let reply = pasv_reply(&lab.client, server_addr()).expect("raw PASV through the ALG");
    assert!(
        reply.code == 227 && parse_227(&reply.text).is_some_and(|a| *a.ip() == SERVER_IP),
        "PASV answered `{}`: the ALG must rewrite {WRONG} to the server the control connection reached, {SERVER_IP}\n{context}",
        reply.text
    );
    assert_server_advertised_wrong(&servers);

    // lftp with fix-pasv-address off and curl with --no-ftp-skip-pasv-ip: both use the 227's
    // address as given, so a wrong one would fail them.
    let runs = v4_runs(&[
        (Client::Lftp, DataMode::Pasv),
        (Client::Curl, DataMode::Pasv),
    ]);
    let target = |_: bool| SocketAddr::V4(server_addr());
    let done = run_sessions(&lab.client, &servers, &target, &runs);
    let problems = judge(
        "client-nat, server advertises 10.9.9.9 (rewrite)",
        true,
        &done,
        &payload_sha,
        &server_sees,
    );
    assert_no_problems(&problems, &gateway_context(&lab.gateway, &alg));
    assert_drained(&lab.gateway, &alg);
    assert_nothing_left(&lab.gateway, alg);
}

#[test]
fn wrong_pasv_address_is_refused_with_425_under_the_refuse_policy() {
    require_lab!("vsftpd", "curl");
    let (payload, _) = random_payload();
    let (lab, servers) = lab_with_misadvertising_server(&payload);
    let mut options = AlgOptions::new(alg_binary());
    options
        .extra_args
        .extend(["--pasv-address-policy".to_owned(), "refuse".to_owned()]);
    let alg = AlgDaemon::start(&lab.gateway, &options)
        .unwrap_or_else(|e| panic!("ftp-alg did not come up in the gateway: {e}"));
    let reply = pasv_reply(&lab.client, server_addr()).expect("raw PASV through the ALG");
    assert!(
        reply.code == 425,
        "PASV answered `{}` under --pasv-address-policy refuse: expected 425\n{}",
        reply.text,
        gateway_context(&lab.gateway, &alg)
    );
    assert_server_advertised_wrong(&servers);

    // A real client sees the same refusal and gives up on the transfer.
    let run = Run {
        ipv6: false,
        client: Client::Curl,
        mode: DataMode::Pasv,
    };
    let files = ClientFiles::new("refuse");
    let report = run_client(
        &lab.client,
        run,
        &files,
        &[FtpOp::List],
        SocketAddr::V4(server_addr()),
        FAIL_BOUND,
    )
    .expect("curl");
    eprintln!("under --pasv-address-policy refuse: {report}");
    let refused = report.none_ok()
        && report
            .outcome(FtpOp::List)
            .is_some_and(|o| o.detail.contains("last reply 425"));
    matrix_row(
        "client-nat, server advertises 10.9.9.9 (refuse)",
        true,
        &run,
        if refused { "425 (expected)" } else { "FAIL" },
    );
    assert!(
        refused,
        "curl PASV under the refuse policy must fail with 425: {report}\n{}",
        gateway_context(&lab.gateway, &alg)
    );
    assert_drained(&lab.gateway, &alg);
    assert_nothing_left(&lab.gateway, alg);
}

#[test]
fn nonstandard_control_port_2100_is_intercepted_in_every_mode() {
    require_lab!("vsftpd", "lftp", "curl");
    let (payload, payload_sha) = random_payload();
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let listen = SocketAddr::V4(SocketAddrV4::new(SERVER_IP, 2100));
    let servers = Servers::v4_only(FtpServer::vsftpd(&lab.server, listen, &payload));
    let mut options = AlgOptions::new(alg_binary());
    options.control_ports = vec![2100];
    let alg = AlgDaemon::start(&lab.gateway, &options)
        .unwrap_or_else(|e| panic!("ftp-alg did not come up in the gateway: {e}"));
    let runs = v4_runs(&[
        (Client::Lftp, DataMode::Port),
        (Client::Curl, DataMode::Eprt),
        (Client::Lftp, DataMode::Pasv),
        (Client::Curl, DataMode::Epsv),
    ]);
    let target = move |_: bool| listen;
    let done = run_sessions(&lab.client, &servers, &target, &runs);
    // The server logs the gateway as the peer and in PORT/EPRT: the ALG handled port 2100.
    let problems = judge(
        "client-nat, control port 2100",
        true,
        &done,
        &payload_sha,
        &server_sees,
    );
    assert_no_problems(&problems, &gateway_context(&lab.gateway, &alg));
    assert_drained(&lab.gateway, &alg);
    assert_nothing_left(&lab.gateway, alg);
}

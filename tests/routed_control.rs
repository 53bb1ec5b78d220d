//! Control runs for the routing firewall WITHOUT the ALG: forward policy drop, only
//! established/related, LAN→WAN :21 and the (unused) ALG mark line. Logging in works, data does
//! not: passive data connections (client → server) and active ones (server → client) are new
//! connections the chain drops, in both families.

mod common;

use std::net::SocketAddr;

use common::modes::{
    FtpServer, Servers, assert_no_problems, embedded_runs, expect_all_fail, vsftpd_runs,
};
use common::random_payload;
use ftp_alg::lab::routed::{CLIENT_IP, CLIENT_IP6, server_addr};
use ftp_alg::lab::{RoutedLab, nft};

const TOPOLOGY: &str = "routed";

fn target(ipv6: bool) -> SocketAddr {
    server_addr(ipv6)
}

#[test]
fn routed_control_without_alg_vsftpd_active_and_passive_fail() {
    require_lab!("vsftpd", "lftp", "curl");
    let (payload, _) = random_payload();
    let lab = RoutedLab::build().expect("lab");
    let servers = Servers::both(
        FtpServer::vsftpd(&lab.server, server_addr(false), &payload),
        FtpServer::vsftpd(&lab.server, server_addr(true), &payload),
    );
    let mut runs = vsftpd_runs(false);
    runs.extend(vsftpd_runs(true));
    let problems = expect_all_fail(TOPOLOGY, &lab.client, &servers, &target, &runs);
    assert_no_problems(&problems, &nft::ruleset(&lab.gateway));
    // No NAT: the server saw the client's own address everywhere, and still could not connect.
    let (v4, v6) = (servers.get(false), servers.get(true));
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
}

#[test]
fn routed_control_without_alg_libunftp_active_and_passive_fail() {
    require_lab!();
    let (payload, _) = random_payload();
    let lab = RoutedLab::build().expect("lab");
    let servers = Servers::both(
        FtpServer::embedded(&lab.server, server_addr(false).ip(), &payload),
        FtpServer::embedded(&lab.server, server_addr(true).ip(), &payload),
    );
    let mut runs = embedded_runs(false);
    runs.extend(embedded_runs(true));
    let problems = expect_all_fail(TOPOLOGY, &lab.client, &servers, &target, &runs);
    assert_no_problems(&problems, &nft::ruleset(&lab.gateway));
}

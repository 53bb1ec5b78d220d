//! A routing firewall without NAT (`routed` mode) through ftp-alg, both families: the ALG
//! intercepts LAN→any:21 and connects to the server from the client's own address
//! (IP_TRANSPARENT + its policy routing), rewrites nothing and opens pinholes only. Every data
//! mode the family allows must move a listing, a 1.5 MiB download and a 1.5 MiB upload intact
//! (SHA-256); the server's log must show the intended command, the client's real address
//! (192.0.2.2 / 2001:db8:a::2) as the session's peer, and PORT/EPRT naming the client itself.
//! While the daemon runs its `ip rule` (fwmark 0x2122) and table 2121 exist for both families;
//! after SIGTERM they, the table and every pinhole are gone.

mod common;

use std::net::SocketAddr;

use common::modes::{
    FtpServer, Servers, assert_drained, assert_ipv6_port_pasv_refused, assert_no_problems,
    assert_nothing_left, embedded_runs, gateway_context, judge, run_sessions, vsftpd_runs,
};
use common::{alg_binary, random_payload};
use ftp_alg::lab::routed::{client_ip, server_addr};
use ftp_alg::lab::{
    ALG_ROUTE_MARK, ALG_ROUTE_TABLE, AlgDaemon, AlgDeployment, AlgOptions, RoutedLab, nft,
    policy_routing_entries,
};

const TOPOLOGY: &str = "routed";

fn start_alg(lab: &RoutedLab) -> AlgDaemon {
    let alg = AlgDaemon::start(
        &lab.gateway,
        &AlgOptions::with_deployment(alg_binary(), AlgDeployment::Routed),
    )
    .unwrap_or_else(|e| panic!("ftp-alg did not come up in the gateway: {e}"));
    // The policy routing the daemon installs for its transparent sockets, both families: what
    // must be gone again after it exits.
    let routing = policy_routing_entries(&lab.gateway, ALG_ROUTE_MARK, ALG_ROUTE_TABLE)
        .expect("ip rule/route show");
    for wanted in ["ip -4 rule", "ip -6 rule", "ip -4 route", "ip -6 route"] {
        assert!(
            routing.iter().any(|entry| entry.starts_with(wanted)),
            "routed mode runs without `{wanted}` for fwmark {ALG_ROUTE_MARK:#x} / table {ALG_ROUTE_TABLE}: {routing:#?}\n{}",
            gateway_context(&lab.gateway, &alg)
        );
    }
    alg
}

/// The client connects to the server itself; the ALG intercepts on the way.
fn target(ipv6: bool) -> SocketAddr {
    server_addr(ipv6)
}

#[test]
fn routed_through_alg_vsftpd_lftp_curl_every_mode_both_families_server_sees_the_client() {
    require_lab!("vsftpd", "lftp", "curl");
    let (payload, payload_sha) = random_payload();
    let lab = RoutedLab::build().expect("lab");
    let servers = Servers::both(
        FtpServer::vsftpd(&lab.server, server_addr(false), &payload),
        FtpServer::vsftpd(&lab.server, server_addr(true), &payload),
    );
    let alg = start_alg(&lab);
    let mut runs = vsftpd_runs(false);
    runs.extend(vsftpd_runs(true));
    let done = run_sessions(&lab.client, &servers, &target, &runs);
    // `client_ip`: vsftpd's logged peer and every PORT/EPRT must be the client's own address.
    let problems = judge(TOPOLOGY, true, &done, &payload_sha, &client_ip);
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

/// The embedded server (libunftp) on both families' server addresses.
fn embedded_servers(lab: &RoutedLab, payload: &[u8]) -> Servers {
    Servers::both(
        FtpServer::embedded(&lab.server, server_addr(false).ip(), payload),
        FtpServer::embedded(&lab.server, server_addr(true).ip(), payload),
    )
}

/// Every mode both families support, with suppaftp against `servers`, passes the judge
/// (the client's own address seen by the server), and the pinholes drain.
fn embedded_sessions_pass(lab: &RoutedLab, servers: &Servers, alg: &AlgDaemon, payload_sha: &str) {
    let mut runs = embedded_runs(false);
    runs.extend(embedded_runs(true));
    let done = run_sessions(&lab.client, servers, &target, &runs);
    let problems = judge(TOPOLOGY, true, &done, payload_sha, &client_ip);
    assert_no_problems(&problems, &gateway_context(&lab.gateway, alg));
    assert_drained(&lab.gateway, alg);
}

#[test]
fn routed_through_alg_libunftp_suppaftp_every_supported_mode_both_families() {
    require_lab!();
    let (payload, payload_sha) = random_payload();
    let lab = RoutedLab::build().expect("lab");
    let servers = embedded_servers(&lab, &payload);
    let alg = start_alg(&lab);
    embedded_sessions_pass(&lab, &servers, &alg, &payload_sha);
    assert_nothing_left(&lab.gateway, alg);
}

#[test]
fn routed_a_sigkill_and_a_restart_leave_one_policy_rule_per_family_and_cleanup_the_rest() {
    require_lab!();
    let (payload, payload_sha) = random_payload();
    let lab = RoutedLab::build().expect("lab");
    let servers = embedded_servers(&lab, &payload);
    let mut crashed = start_alg(&lab);
    let installed = policy_routing_entries(&lab.gateway, ALG_ROUTE_MARK, ALG_ROUTE_TABLE)
        .expect("ip rule/route show");
    // A crash: nothing is removed.
    crashed.kill();
    let stale = policy_routing_entries(&lab.gateway, ALG_ROUTE_MARK, ALG_ROUTE_TABLE)
        .expect("ip rule/route show");
    assert_eq!(stale, installed, "the killed daemon cleaned up after all?");
    // The restart finds its own policy routing: one rule and one route per family, no
    // duplicates, and sessions work through it.
    let alg = start_alg(&lab);
    let mut after = policy_routing_entries(&lab.gateway, ALG_ROUTE_MARK, ALG_ROUTE_TABLE)
        .expect("ip rule/route show");
    after.sort();
    let mut expected = installed.clone();
    expected.sort();
    assert_eq!(after, expected, "{}", gateway_context(&lab.gateway, &alg));
    embedded_sessions_pass(&lab, &servers, &alg, &payload_sha);

    // A second daemon for the same table in the same namespace is refused, and cleanup
    // leaves a running daemon's table alone.
    let second = AlgDaemon::start(
        &lab.gateway,
        &AlgOptions::with_deployment(alg_binary(), AlgDeployment::Routed),
    );
    let refused = second
        .expect_err("a second daemon for the same table")
        .to_string();
    assert!(refused.contains("another ftp-alg is running"), "{refused}");
    let cleanup = || {
        lab.gateway
            .exec(&[&alg_binary().display().to_string(), "cleanup"])
            .expect("ftp-alg cleanup")
    };
    let out = cleanup();
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("belongs to a running ftp-alg"),
        "{out:?}"
    );
    assert!(nft::table_exists(&lab.gateway, "inet", nft::ALG_TABLE).expect("nft"));

    // Killed again and not restarted: `ftp-alg cleanup` (the unit's ExecStopPost) removes
    // the table and the policy routing, as the daemon's record names them (no --mode given
    // here); a second run finds nothing and succeeds too.
    let mut alg = alg;
    alg.kill();
    assert!(nft::table_exists(&lab.gateway, "inet", nft::ALG_TABLE).expect("nft"));
    for expected in [
        "removed table inet ftp_alg and the policy routing of routed mode",
        "no table inet ftp_alg",
    ] {
        let out = cleanup();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(expected), "{out:?}");
        assert!(!nft::table_exists(&lab.gateway, "inet", nft::ALG_TABLE).expect("nft"));
        let routing = policy_routing_entries(&lab.gateway, ALG_ROUTE_MARK, ALG_ROUTE_TABLE)
            .expect("ip rule/route show");
        assert!(routing.is_empty(), "{routing:#?}");
    }
}

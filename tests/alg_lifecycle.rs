//! The daemon's life cycle in the kernel: a table left by a crash is replaced at start (with
//! its stale pinholes), the leftover check really sees elements, and the admin's coexistence
//! line is what admits the ALG's data connections.

mod common;

use std::time::Duration;

use common::{
    ClientFiles, LabServer, Peers, alg_binary, assert_clean_shutdown, assert_pinholes_drained,
    random_payload,
};
use ftp_alg::lab::{AlgDaemon, AlgOptions, ClientNatLab, ClientNatOptions, DataMode, FtpOp, nft};

/// Stale pinholes as a crashed daemon would leave them (long timeouts, so they cannot expire
/// during the test): one passive pinhole and one active-mode DNAT mapping.
fn stale_elements() -> Vec<String> {
    let dnat_map = nft::ALG_PINHOLE_OBJECTS
        .iter()
        .find(|(kind, name)| *kind == "map" && name.contains("dnat") && !name.ends_with('6'))
        .map(|(_, name)| *name)
        .expect("the ALG has an IPv4 DNAT map");
    vec![
        format!(
            "add element inet {} passive_pin {{ 10.0.0.2 . 203.0.113.2 . 31000 timeout 600s }}",
            nft::ALG_TABLE
        ),
        format!(
            "add element inet {} {dnat_map} {{ 203.0.113.2 . 203.0.113.1 . 40000 timeout 600s : 10.0.0.2 . 50000 }}",
            nft::ALG_TABLE
        ),
    ]
}

#[test]
fn alg_replaces_a_stale_table_left_by_a_crash() {
    require_lab!("vsftpd", "lftp");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let (payload, _) = random_payload();
    let server = LabServer::start(&lab, Peers::VsftpdLftp, &payload);
    let options = AlgOptions::new(alg_binary());

    let mut crashed = AlgDaemon::start(&lab.gateway, &options).expect("first ftp-alg");
    for element in stale_elements() {
        lab.gateway
            .exec_stdin_ok(&["nft", "-f", "-"], element.as_bytes())
            .unwrap_or_else(|e| {
                panic!(
                    "cannot add `{element}`: {e}\n{}",
                    nft::ruleset(&lab.gateway)
                )
            });
    }
    let seen = nft::alg_leftover_pinholes(&lab.gateway).expect("list sets");
    assert_eq!(
        seen.len(),
        2,
        "the leftover check must see both stale elements: {seen:#?}"
    );
    crashed.kill();
    assert!(
        nft::table_exists(&lab.gateway, "inet", nft::ALG_TABLE).expect("nft"),
        "SIGKILL cannot clean up; the table should still be there"
    );

    let alg = AlgDaemon::start(&lab.gateway, &options).unwrap_or_else(|e| {
        panic!(
            "ftp-alg did not start over a stale table: {e}\n--- crashed one's log:\n{}",
            crashed.output()
        )
    });
    let leftovers = nft::alg_leftover_pinholes(&lab.gateway).expect("list sets");
    assert!(
        leftovers.is_empty(),
        "a restarted daemon kept a crashed one's pinholes: {leftovers:#?}\n--- log:\n{}",
        alg.output()
    );
    let files = ClientFiles::new("after-crash");
    let report = Peers::VsftpdLftp
        .run(
            &lab,
            DataMode::Pasv,
            &files.plan(
                server.addr(),
                &[FtpOp::List, FtpOp::Retr],
                Duration::from_secs(30),
            ),
        )
        .expect("client run");
    assert!(report.all_ok(), "{report}\n--- log:\n{}", alg.output());
    assert_pinholes_drained(&lab, &alg);
    assert_clean_shutdown(&lab, alg);
}

#[test]
fn admin_firewall_without_the_coexistence_line_blocks_alg_data_connections() {
    require_lab!("vsftpd", "lftp");
    let lab = ClientNatLab::build(ClientNatOptions {
        omit_alg_mark_line: true,
        ..ClientNatOptions::default()
    })
    .expect("lab");
    let (payload, _) = random_payload();
    let server = LabServer::start(&lab, Peers::VsftpdLftp, &payload);
    let alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(alg_binary())).expect("ftp-alg");
    let files = ClientFiles::new("no-mark-line");
    let report = Peers::VsftpdLftp
        .run(
            &lab,
            DataMode::Pasv,
            &files.plan(server.addr(), &[FtpOp::List], Duration::from_secs(15)),
        )
        .expect("client run");
    eprintln!("without `ct mark 0x2121 accept`: {report}");
    assert!(
        report.none_ok(),
        "the data connection passed a drop-policy chain that does not honour the ALG's mark:\n{report}\n{}",
        nft::ruleset(&lab.gateway)
    );
    let seen = server.commands();
    assert!(
        seen.iter().any(|c| c == "PASV"),
        "the session failed before the data path: {seen:?}"
    );
    assert_clean_shutdown(&lab, alg);
}

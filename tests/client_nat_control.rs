//! Control runs without the ALG: they prove the topology is real NAT. Behind the masquerading
//! gateway, active mode (PORT/EPRT) cannot work — the server is told a private address it has
//! no route to — while passive works only where the admin's firewall lets every outbound
//! connection through. With the strict firewall the ALG is meant for, passive fails too.

mod common;

use std::time::Duration;

use common::{
    ClientFiles, LabServer, Peers, REMOTE_UPLOAD, assert_only_mode_used, random_payload,
    sha256_file,
};
use ftp_alg::lab::{ClientNatLab, ClientNatOptions, DataMode, FtpOp, SessionReport};

const FAIL_BOUND: Duration = Duration::from_secs(15);
const OK_BOUND: Duration = Duration::from_secs(30);

fn expect_failure(report: &SessionReport, server_log: &[String]) {
    assert!(
        report.none_ok(),
        "{} {} worked without the ALG — the lab is not really NAT\n{report}\n--- server saw: {server_log:?}\n--- transcript:\n{}",
        report.client,
        report.mode,
        report.transcript
    );
}

/// Runs `runs` (peers, mode) at once, LIST only, each expected to fail.
fn all_fail(lab: &ClientNatLab, server: &LabServer, runs: &[(Peers, DataMode)]) {
    let reports = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|&(peers, mode)| {
                s.spawn(move || {
                    let files = ClientFiles::new("control-fail");
                    peers.run(
                        lab,
                        mode,
                        &files.plan(server.addr(), &[FtpOp::List], FAIL_BOUND),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread").expect("client run"))
            .collect::<Vec<_>>()
    });
    let log = server.commands();
    for report in &reports {
        eprintln!("without ALG (expected to fail): {report}");
        expect_failure(report, &log);
    }
    // They must fail on the data path, not earlier (a login failure would prove nothing).
    for (_, mode) in runs {
        let wanted = runs.iter().filter(|(_, m)| m == mode).count();
        let seen = log
            .iter()
            .filter(|c| c.to_ascii_uppercase().starts_with(mode.command()))
            .count();
        assert!(
            seen >= wanted,
            "{mode} reached the server {seen} times for {wanted} sessions: they failed before the data path\n--- server saw: {log:?}\n{reports:#?}"
        );
    }
}

/// Full LIST/RETR/STOR sessions in `modes` that must work, content checked.
fn all_work(lab: &ClientNatLab, server: &LabServer, peers: &[Peers], payload_sha: &str) {
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        for &peer in peers {
            let files = ClientFiles::new("control-ok");
            let before = server.commands().len();
            let report = peer
                .run(lab, mode, &files.plan(server.addr(), &FtpOp::ALL, OK_BOUND))
                .expect("client run");
            eprintln!("without ALG, outbound open: {report}");
            let log = server.commands();
            assert!(
                report.all_ok(),
                "{peer:?} {mode} failed although outbound traffic is open\n{report}\n--- server saw: {log:?}\n--- transcript:\n{}",
                report.transcript
            );
            assert_only_mode_used(mode, &log[before..], &report.to_string());
            assert_eq!(
                sha256_file(&files.download),
                payload_sha,
                "{peer:?} {mode} RETR content"
            );
            let stored = server.root().join(REMOTE_UPLOAD);
            assert_eq!(
                sha256_file(&stored),
                files.upload_sha,
                "{peer:?} {mode} STOR content"
            );
            std::fs::remove_file(stored).expect("reset upload");
        }
    }
}

#[test]
fn client_nat_control_without_alg_vsftpd_active_fails_passive_works() {
    require_lab!("vsftpd", "lftp", "curl");
    let lab = ClientNatLab::build(ClientNatOptions {
        outbound_open: true,
        ..ClientNatOptions::default()
    })
    .expect("lab");
    let (payload, payload_sha) = random_payload();
    let server = LabServer::start(&lab, Peers::VsftpdLftp, &payload);
    all_fail(
        &lab,
        &server,
        &[
            (Peers::VsftpdLftp, DataMode::Port),
            (Peers::VsftpdCurl, DataMode::Port),
            (Peers::VsftpdCurl, DataMode::Eprt),
        ],
    );
    // Nobody rewrote anything: the server was told the client's private address.
    let log = server.commands();
    assert!(
        log.iter().any(|c| c.starts_with("PORT 10,0,0,2,")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|c| c.starts_with("EPRT |1|10.0.0.2|")),
        "{log:?}"
    );
    all_work(
        &lab,
        &server,
        &[Peers::VsftpdLftp, Peers::VsftpdCurl],
        &payload_sha,
    );
}

#[test]
fn client_nat_control_without_alg_libunftp_active_fails_passive_works() {
    require_lab!();
    let lab = ClientNatLab::build(ClientNatOptions {
        outbound_open: true,
        ..ClientNatOptions::default()
    })
    .expect("lab");
    let (payload, payload_sha) = random_payload();
    let server = LabServer::start(&lab, Peers::LibunftpSuppaftp, &payload);
    all_fail(
        &lab,
        &server,
        &[
            (Peers::LibunftpSuppaftp, DataMode::Port),
            (Peers::LibunftpSuppaftp, DataMode::Eprt),
        ],
    );
    let log = server.commands();
    assert!(
        log.iter().any(|c| c.starts_with("PORT 10,0,0,2,")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|c| c.starts_with("EPRT |1|10.0.0.2|")),
        "{log:?}"
    );
    all_work(&lab, &server, &[Peers::LibunftpSuppaftp], &payload_sha);
}

#[test]
fn client_nat_control_without_alg_strict_firewall_blocks_passive() {
    require_lab!("vsftpd", "lftp", "curl");
    let (payload, _) = random_payload();
    let vsftpd_lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let vsftpd = LabServer::start(&vsftpd_lab, Peers::VsftpdLftp, &payload);
    let embedded_lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let embedded = LabServer::start(&embedded_lab, Peers::LibunftpSuppaftp, &payload);
    std::thread::scope(|s| {
        s.spawn(|| {
            all_fail(
                &vsftpd_lab,
                &vsftpd,
                &[
                    (Peers::VsftpdLftp, DataMode::Pasv),
                    (Peers::VsftpdLftp, DataMode::Epsv),
                    (Peers::VsftpdCurl, DataMode::Pasv),
                    (Peers::VsftpdCurl, DataMode::Epsv),
                ],
            );
        });
        s.spawn(|| {
            all_fail(
                &embedded_lab,
                &embedded,
                &[
                    (Peers::LibunftpSuppaftp, DataMode::Pasv),
                    (Peers::LibunftpSuppaftp, DataMode::Epsv),
                ],
            );
        });
    });
    // The control connections were allowed (LAN→WAN :21): the servers did get the commands.
    for server in [&vsftpd, &embedded] {
        let seen = common::data_mode_commands(&server.commands());
        assert!(
            seen.iter().any(|c| c == "PASV") && seen.iter().any(|c| c == "EPSV"),
            "{seen:?}"
        );
    }
}

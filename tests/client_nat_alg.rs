//! Through the ALG: the strict gateway firewall (forward policy drop; only LAN→WAN :21,
//! established/related and the ALG's ct mark) with `ftp-alg` running in the gateway. Every data
//! mode must move a listing, a 1.5 MiB download and a 1.5 MiB upload intact (SHA-256), the
//! server's own log must show that the intended command was used (and that PORT/EPRT carried the
//! gateway's address, not the client's), the pinhole sets must be empty once the session ended,
//! and SIGTERM must remove the daemon's table.

mod common;

use std::time::Duration;

use common::{
    ClientFiles, LabServer, Peers, REMOTE_UPLOAD, alg_binary, alg_context, assert_clean_shutdown,
    assert_only_mode_used, assert_pinholes_drained, random_payload, sha256_file,
};
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, ClientNatLab, ClientNatOptions, DataMode, FtpOp, GATEWAY_WAN_IP,
};

const SESSION_BOUND: Duration = Duration::from_secs(40);

/// The strict lab with the server for `peers` and the ALG running.
fn lab_with_alg(peers: Peers, payload: &[u8]) -> (ClientNatLab, LabServer, AlgDaemon) {
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = LabServer::start(&lab, peers, payload);
    let alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(alg_binary()))
        .unwrap_or_else(|e| panic!("ftp-alg did not come up in the gateway: {e}"));
    (lab, server, alg)
}

/// What the server must have seen for an active mode: the gateway's address, never the LAN's.
fn assert_active_rewritten(mode: DataMode, commands: &[String], context: &str) {
    let wan = GATEWAY_WAN_IP.to_string();
    let wan_commas = wan.replace('.', ",");
    for command in common::data_mode_commands(commands) {
        let rewritten = match mode {
            DataMode::Port => command.starts_with(&format!("PORT {wan_commas},")),
            DataMode::Eprt => command.starts_with(&format!("EPRT |1|{wan}|")),
            _ => true,
        };
        assert!(
            rewritten,
            "the server received `{command}`: not rewritten to the gateway {wan}\n{context}"
        );
    }
}

fn through_alg(peers: Peers, mode: DataMode) {
    require_lab!(programs: peers.programs());
    let (payload, payload_sha) = random_payload();
    let (lab, server, alg) = lab_with_alg(peers, &payload);
    let files = ClientFiles::new("through-alg");
    let report = peers
        .run(
            &lab,
            mode,
            &files.plan(server.addr(), &FtpOp::ALL, SESSION_BOUND),
        )
        .expect("client run");
    eprintln!("through the ALG: {report}");
    let commands = server.commands();
    let context = format!(
        "{}\n--- server received: {commands:?}",
        alg_context(&lab, &alg, &report)
    );
    assert!(
        report.all_ok(),
        "{peers:?} {mode} through the ALG failed\n{context}"
    );
    assert_only_mode_used(mode, &commands, &context);
    assert_active_rewritten(mode, &commands, &context);
    assert_eq!(
        sha256_file(&files.download),
        payload_sha,
        "RETR content differs\n{context}"
    );
    assert_eq!(
        sha256_file(&server.root().join(REMOTE_UPLOAD)),
        files.upload_sha,
        "STOR content differs\n{context}"
    );
    assert_pinholes_drained(&lab, &alg);
    assert_clean_shutdown(&lab, alg);
}

#[test]
fn client_nat_through_alg_vsftpd_lftp_port() {
    through_alg(Peers::VsftpdLftp, DataMode::Port);
}

#[test]
fn client_nat_through_alg_vsftpd_lftp_pasv() {
    through_alg(Peers::VsftpdLftp, DataMode::Pasv);
}

#[test]
fn client_nat_through_alg_vsftpd_lftp_epsv() {
    through_alg(Peers::VsftpdLftp, DataMode::Epsv);
}

#[test]
fn client_nat_through_alg_vsftpd_curl_port() {
    through_alg(Peers::VsftpdCurl, DataMode::Port);
}

#[test]
fn client_nat_through_alg_vsftpd_curl_eprt() {
    through_alg(Peers::VsftpdCurl, DataMode::Eprt);
}

#[test]
fn client_nat_through_alg_vsftpd_curl_pasv() {
    through_alg(Peers::VsftpdCurl, DataMode::Pasv);
}

#[test]
fn client_nat_through_alg_vsftpd_curl_epsv() {
    through_alg(Peers::VsftpdCurl, DataMode::Epsv);
}

#[test]
fn client_nat_through_alg_libunftp_suppaftp_port() {
    through_alg(Peers::LibunftpSuppaftp, DataMode::Port);
}

/// suppaftp cannot send EPRT over IPv4; the lab's raw client does, libunftp gets it via the shim.
#[test]
fn client_nat_through_alg_libunftp_rawclient_eprt() {
    through_alg(Peers::LibunftpSuppaftp, DataMode::Eprt);
}

#[test]
fn client_nat_through_alg_libunftp_suppaftp_pasv() {
    through_alg(Peers::LibunftpSuppaftp, DataMode::Pasv);
}

#[test]
fn client_nat_through_alg_libunftp_suppaftp_epsv() {
    through_alg(Peers::LibunftpSuppaftp, DataMode::Epsv);
}

/// One daemon, four concurrent sessions in the four modes; afterwards the kernel holds no
/// pinhole and SIGTERM removes the table.
#[test]
fn alg_concurrent_sessions_leave_no_pinholes_and_sigterm_removes_the_table() {
    require_lab!("vsftpd", "lftp", "curl");
    let (payload, payload_sha) = random_payload();
    let (lab, server, alg) = lab_with_alg(Peers::VsftpdLftp, &payload);
    let runs = [
        (Peers::VsftpdLftp, DataMode::Port),
        (Peers::VsftpdCurl, DataMode::Eprt),
        (Peers::VsftpdLftp, DataMode::Pasv),
        (Peers::VsftpdCurl, DataMode::Epsv),
    ];
    let reports = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|&(peers, mode)| {
                let (lab, server) = (&lab, &server);
                s.spawn(move || {
                    let files = ClientFiles::new("concurrent");
                    // Downloads only: concurrent uploads would race on one server file name.
                    let plan =
                        files.plan(server.addr(), &[FtpOp::List, FtpOp::Retr], SESSION_BOUND);
                    let report = peers.run(lab, mode, &plan).expect("client run");
                    (report, sha256_file(&files.download))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect::<Vec<_>>()
    });
    for (report, download_sha) in &reports {
        eprintln!("concurrent through the ALG: {report}");
        let context = format!(
            "{}\n--- server received: {:?}",
            alg_context(&lab, &alg, report),
            server.commands()
        );
        assert!(report.all_ok(), "{context}");
        assert_eq!(
            download_sha, &payload_sha,
            "RETR content differs\n{context}"
        );
    }
    assert_pinholes_drained(&lab, &alg);
    assert_clean_shutdown(&lab, alg);
}

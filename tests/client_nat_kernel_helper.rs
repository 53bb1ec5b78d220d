//! The baseline the ALG is compared with: the kernel's own FTP helper (`ct helper` "ftp" +
//! nf_nat_ftp) on the strict gateway. Proves the lab's helper set-up works, so the benchmark's
//! comparison is against a working baseline.

mod common;

use std::time::Duration;

use common::{
    ClientFiles, LabServer, Peers, REMOTE_UPLOAD, assert_only_mode_used, random_payload,
    sha256_file,
};
use ftp_alg::lab::{ClientNatLab, ClientNatOptions, DataMode, FtpOp, nft};

#[test]
fn client_nat_kernel_ftp_helper_baseline_works_in_every_mode() {
    require_lab!("vsftpd", "lftp", "curl");
    let lab = ClientNatLab::build(ClientNatOptions {
        outbound_open: false,
        kernel_helper: true,
        ..ClientNatOptions::default()
    })
    .expect("lab");
    let (payload, payload_sha) = random_payload();
    let server = LabServer::start(&lab, Peers::VsftpdLftp, &payload);
    for (peers, mode) in [
        (Peers::VsftpdLftp, DataMode::Port),
        (Peers::VsftpdCurl, DataMode::Eprt),
        (Peers::VsftpdLftp, DataMode::Pasv),
        (Peers::VsftpdLftp, DataMode::Epsv),
    ] {
        let files = ClientFiles::new("helper");
        let before = server.commands().len();
        let report = peers
            .run(
                &lab,
                mode,
                &files.plan(server.addr(), &FtpOp::ALL, Duration::from_secs(30)),
            )
            .expect("client run");
        eprintln!("kernel helper: {report}");
        let commands = server.commands();
        assert!(
            report.all_ok(),
            "{report}\n--- server saw: {commands:?}\n--- transcript:\n{}\n--- ruleset:\n{}",
            report.transcript,
            nft::ruleset(&lab.gateway)
        );
        assert_only_mode_used(mode, &commands[before..], &report.to_string());
        if mode == DataMode::Port {
            // nf_nat_ftp rewrote the private address.
            assert!(
                commands[before..]
                    .iter()
                    .any(|c| c.starts_with("PORT 203,0,113,1,")),
                "{commands:?}"
            );
        }
        assert_eq!(sha256_file(&files.download), payload_sha);
        let stored = server.root().join(REMOTE_UPLOAD);
        assert_eq!(sha256_file(&stored), files.upload_sha);
        std::fs::remove_file(stored).expect("reset upload");
    }
}

//! Shared pieces of the end-to-end tests: the root/CI gate, payloads and hashes, and the
//! standard checks on the ALG.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

pub mod embedded;
pub mod modes;

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ftp_alg::lab::{
    AlgDaemon, ClientNatLab, DataMode, FTP_PASSWORD, FTP_USER, FtpOp, PAYLOAD_LEN, ScratchDir,
    SessionReport, TransferPlan, nft, write_random_file,
};
use sha2::{Digest, Sha256};

/// Returns from the test (skip) or panics (CI) when the lab or `programs` are unavailable.
#[macro_export]
macro_rules! require_lab {
    (programs: $programs:expr) => {
        match ftp_alg::lab::preflight::gate($programs) {
            ftp_alg::lab::preflight::Gate::Ready => {}
            ftp_alg::lab::preflight::Gate::Skip(why) => {
                eprintln!("SKIPPED (not CI): {why}");
                return;
            }
            ftp_alg::lab::preflight::Gate::Fail(why) => {
                panic!("CI=true requires the namespace lab, but: {why}");
            }
        }
    };
    ($($program:expr),* $(,)?) => {
        match ftp_alg::lab::preflight::gate(&[$($program),*]) {
            ftp_alg::lab::preflight::Gate::Ready => {}
            ftp_alg::lab::preflight::Gate::Skip(why) => {
                eprintln!("SKIPPED (not CI): {why}");
                return;
            }
            ftp_alg::lab::preflight::Gate::Fail(why) => {
                panic!("CI=true requires the namespace lab, but: {why}");
            }
        }
    };
}

/// The daemon under test.
pub fn alg_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ftp-alg"))
}

/// Hex SHA-256.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Hex SHA-256 of a file's content (of "" if it cannot be read, which then fails the compare).
pub fn sha256_file(path: &Path) -> String {
    sha256(&std::fs::read(path).unwrap_or_default())
}

/// The client side's files: a fresh random upload and a place for the download.
pub struct ClientFiles {
    pub dir: ScratchDir,
    pub upload: PathBuf,
    pub upload_sha: String,
    pub download: PathBuf,
}

/// The names used on the server.
pub const REMOTE_DOWNLOAD: &str = "download.bin";
pub const REMOTE_UPLOAD: &str = "upload.bin";

impl ClientFiles {
    pub fn new(label: &str) -> Self {
        let dir = ScratchDir::new(label).expect("client scratch dir");
        let upload = dir.path().join("to-upload.bin");
        let data = write_random_file(&upload, PAYLOAD_LEN).expect("random upload");
        let download = dir.path().join("downloaded.bin");
        Self {
            upload_sha: sha256(&data),
            dir,
            upload,
            download,
        }
    }

    /// A plan for `ops` against `server`.
    pub fn plan(&self, server: SocketAddrV4, ops: &[FtpOp], timeout: Duration) -> TransferPlan {
        TransferPlan {
            server,
            user: FTP_USER.into(),
            password: FTP_PASSWORD.into(),
            ops: ops.to_vec(),
            retr_remote: REMOTE_DOWNLOAD.into(),
            retr_local: self.download.clone(),
            stor_local: self.upload.clone(),
            stor_remote: REMOTE_UPLOAD.into(),
            timeout,
        }
    }
}

/// A random 1.5 MiB payload for the server to serve, with its hash.
pub fn random_payload() -> (Vec<u8>, String) {
    let dir = ScratchDir::new("payload").expect("scratch dir");
    let data = write_random_file(&dir.path().join("p"), PAYLOAD_LEN).expect("random payload");
    let sha = sha256(&data);
    (data, sha)
}

/// The data-mode commands (PORT/EPRT/PASV/EPSV verbs) in a server-side command log.
pub fn data_mode_commands(commands: &[String]) -> Vec<String> {
    commands
        .iter()
        .filter_map(|c| {
            let verb = c.split_whitespace().next()?.to_ascii_uppercase();
            DataMode::ALL
                .iter()
                .any(|m| m.command() == verb)
                .then(|| c.clone())
        })
        .collect()
}

/// Asserts that the server saw `mode`'s command, and no other data-mode command.
pub fn assert_only_mode_used(mode: DataMode, commands: &[String], context: &str) {
    let used = data_mode_commands(commands);
    assert!(
        !used.is_empty(),
        "the server never saw {mode}: commands {commands:?}\n{context}"
    );
    let others: Vec<&String> = used
        .iter()
        .filter(|c| !c.to_ascii_uppercase().starts_with(mode.command()))
        .collect();
    assert!(
        others.is_empty(),
        "asked for {mode} but the server also saw {others:?} (all: {used:?})\n{context}"
    );
}

/// Diagnostics for a failed run through the ALG.
pub fn alg_context(lab: &ClientNatLab, alg: &AlgDaemon, report: &SessionReport) -> String {
    format!(
        "--- session: {report}\n--- client transcript:\n{}\n--- ftp-alg ({}) log:\n{}\n--- gateway ruleset:\n{}",
        report.transcript,
        alg.command_line(),
        alg.output(),
        nft::ruleset(&lab.gateway)
    )
}

/// Waits (bounded) for the ALG's pinhole sets/maps to be empty; panics with what is left.
pub fn assert_pinholes_drained(lab: &ClientNatLab, alg: &AlgDaemon) {
    let start = Instant::now();
    loop {
        let leftovers = nft::alg_leftover_pinholes(&lab.gateway).unwrap_or_else(|e| {
            panic!(
                "listing the ALG's sets failed: {e}\n--- ftp-alg log:\n{}",
                alg.output()
            )
        });
        if leftovers.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "pinholes left after all sessions ended: {leftovers:#?}\n--- ftp-alg log:\n{}",
            alg.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM the daemon; it must exit in time and leave no table behind.
pub fn assert_clean_shutdown(lab: &ClientNatLab, mut alg: AlgDaemon) {
    let status = alg.stop(Duration::from_secs(10));
    let table = nft::table_exists(&lab.gateway, "inet", nft::ALG_TABLE).unwrap_or(true);
    assert!(
        status.is_some(),
        "ftp-alg did not exit within 10 s of SIGTERM\n--- log:\n{}",
        alg.output()
    );
    assert!(
        !table,
        "table inet {} still present after ftp-alg exited ({status:?})\n--- log:\n{}\n--- ruleset:\n{}",
        nft::ALG_TABLE,
        alg.output(),
        nft::ruleset(&lab.gateway)
    );
}

/// Which server and client drive a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peers {
    /// vsftpd with lftp (no EPRT over IPv4).
    VsftpdLftp,
    /// vsftpd with curl.
    VsftpdCurl,
    /// libunftp (behind the EPRT shim) with suppaftp (EPRT: the lab's raw client).
    LibunftpSuppaftp,
}

impl Peers {
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Self::VsftpdLftp => &["vsftpd", "lftp"],
            Self::VsftpdCurl => &["vsftpd", "curl"],
            Self::LibunftpSuppaftp => &[],
        }
    }

    pub fn uses_vsftpd(self) -> bool {
        !matches!(self, Self::LibunftpSuppaftp)
    }

    /// Runs a session with this client in the lab's client namespace.
    pub fn run(
        self,
        lab: &ClientNatLab,
        mode: DataMode,
        plan: &TransferPlan,
    ) -> Result<SessionReport, ftp_alg::lab::LabError> {
        match self {
            Self::VsftpdLftp => ftp_alg::lab::lftp(&lab.client, mode, plan),
            Self::VsftpdCurl => ftp_alg::lab::curl(&lab.client, mode, plan),
            Self::LibunftpSuppaftp => embedded::client_session(&lab.client, mode, plan),
        }
    }
}

/// The server side of a lab: vsftpd or the embedded libunftp.
pub enum LabServer {
    Vsftpd(ftp_alg::lab::Vsftpd),
    Embedded(embedded::EmbeddedServer),
}

impl LabServer {
    /// Starts the server `peers` needs in the lab's server namespace, serving `payload` as
    /// [`REMOTE_DOWNLOAD`].
    pub fn start(lab: &ClientNatLab, peers: Peers, payload: &[u8]) -> Self {
        let server = if peers.uses_vsftpd() {
            Self::Vsftpd(ftp_alg::lab::Vsftpd::start(&lab.server).expect("start vsftpd"))
        } else {
            Self::Embedded(embedded::EmbeddedServer::start(&lab.server).expect("start libunftp"))
        };
        match &server {
            Self::Vsftpd(s) => s.put_file(REMOTE_DOWNLOAD, payload).map(drop),
            Self::Embedded(s) => s.put_file(REMOTE_DOWNLOAD, payload).map(drop),
        }
        .expect("server payload");
        server
    }

    pub fn addr(&self) -> SocketAddrV4 {
        match self {
            Self::Vsftpd(s) => s.addr(),
            Self::Embedded(s) => s.addr(),
        }
    }

    pub fn root(&self) -> &Path {
        match self {
            Self::Vsftpd(s) => s.root(),
            Self::Embedded(s) => s.root(),
        }
    }

    /// Every command the server side received, in order.
    pub fn commands(&self) -> Vec<String> {
        match self {
            Self::Vsftpd(s) => s.commands(),
            Self::Embedded(s) => s.commands(),
        }
    }
}

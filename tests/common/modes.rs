//! Shared by the end-to-end tests of the published-server (`reverse`), `routed` and IPv6
//! client-NAT deployments: one lab, many client sessions (several at once), each checked
//! against the server's own protocol log; the support matrix rows; and the checks that the
//! daemon leaves nothing behind.
//!
//! Peers per family:
//! - vsftpd + lftp/curl. IPv4: lftp PORT/PASV/EPSV (lftp sends EPRT only over IPv6), curl
//!   PORT/EPRT/PASV/EPSV. IPv6: lftp and curl EPRT/EPSV (PORT/PASV cannot carry IPv6).
//! - libunftp + suppaftp. IPv4: PORT/PASV/EPSV with suppaftp, EPRT with the lab's raw client
//!   (through the shim, which hands libunftp the equivalent PORT). IPv6: EPSV only — libunftp
//!   has no EPRT, and an `EPRT |2|` has no PORT equivalent.
//!
//! Which of two concurrent vsftpd sessions sent what is told apart by vsftpd's process ids:
//! every session stores a file of its own name, and the process that logged that `STOR` logged
//! all of the session's commands after login.
//!
//! Concurrent sessions of one client can meet the same server passive port; the end of one
//! must not take the other's pinhole (they share its set keys). These runs hit that about one
//! time in eight before the daemon counted holders per key; `tests/pinhole_shared_key.rs`
//! provokes it every time.

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ftp_alg::lab::raw_client::{RawFtp, Reply};
use ftp_alg::lab::{
    ALG_ROUTE_MARK, ALG_ROUTE_TABLE, AlgDaemon, DataMode, FTP_PASSWORD, FTP_USER, FtpOp, LabError,
    Netns, SessionReport, Vsftpd, VsftpdOptions, curl_at, lftp_at, nft, policy_routing_entries,
};

use super::embedded::{self, EmbeddedServer};
use super::{ClientFiles, REMOTE_DOWNLOAD, data_mode_commands, sha256_file};

/// Bound of a session that must work (LIST, RETR and STOR of 1.5 MiB each).
pub const OK_BOUND: Duration = Duration::from_secs(40);
/// Bound of a session that must fail (LIST only).
pub const FAIL_BOUND: Duration = Duration::from_secs(15);

/// A client program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// lftp, against vsftpd.
    Lftp,
    /// curl, against vsftpd.
    Curl,
    /// suppaftp (IPv4 EPRT: the lab's raw client), against libunftp behind the EPRT shim.
    Suppaftp,
}

impl Client {
    /// Programs the client needs (for the lab gate).
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Self::Lftp => &["vsftpd", "lftp"],
            Self::Curl => &["vsftpd", "curl"],
            Self::Suppaftp => &[],
        }
    }
}

/// One client session: family, client, data mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// The client program.
    pub client: Client,
    /// The data mode asked for.
    pub mode: DataMode,
}

impl Run {
    /// "IPv4" / "IPv6".
    pub fn family(&self) -> &'static str {
        family_name(self.ipv6)
    }

    /// Server + client, as the matrix names them.
    pub fn peers(&self) -> &'static str {
        match (self.client, self.mode, self.ipv6) {
            (Client::Lftp, _, _) => "vsftpd + lftp",
            (Client::Curl, _, _) => "vsftpd + curl",
            (Client::Suppaftp, DataMode::Eprt, false) => "libunftp + raw client",
            (Client::Suppaftp, _, _) => "libunftp + suppaftp",
        }
    }

    /// The session's own upload name on the server.
    pub fn stor_name(&self) -> String {
        format!(
            "up-{}-{:?}-{}.bin",
            if self.ipv6 { "v6" } else { "v4" },
            self.client,
            self.mode
        )
        .to_ascii_lowercase()
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.family(), self.peers(), self.mode)
    }
}

/// Every (client, mode) lftp and curl support over one family.
pub fn vsftpd_runs(ipv6: bool) -> Vec<Run> {
    let pairs: &[(Client, DataMode)] = if ipv6 {
        &[
            (Client::Lftp, DataMode::Eprt),
            (Client::Lftp, DataMode::Epsv),
            (Client::Curl, DataMode::Eprt),
            (Client::Curl, DataMode::Epsv),
        ]
    } else {
        &[
            (Client::Lftp, DataMode::Port),
            (Client::Lftp, DataMode::Pasv),
            (Client::Lftp, DataMode::Epsv),
            (Client::Curl, DataMode::Port),
            (Client::Curl, DataMode::Eprt),
            (Client::Curl, DataMode::Pasv),
            (Client::Curl, DataMode::Epsv),
        ]
    };
    pairs
        .iter()
        .map(|&(client, mode)| Run { ipv6, client, mode })
        .collect()
}

/// Every mode the libunftp/suppaftp pair supports over one family.
pub fn embedded_runs(ipv6: bool) -> Vec<Run> {
    let modes: &[DataMode] = if ipv6 {
        &[DataMode::Epsv]
    } else {
        &DataMode::ALL
    };
    modes
        .iter()
        .map(|&mode| Run {
            ipv6,
            client: Client::Suppaftp,
            mode,
        })
        .collect()
}

/// One FTP server of a lab (one per family).
pub enum FtpServer {
    Vsftpd(Vsftpd),
    Embedded(EmbeddedServer),
}

impl FtpServer {
    /// vsftpd on `listen`, serving `payload` as [`REMOTE_DOWNLOAD`].
    pub fn vsftpd(ns: &Netns, listen: SocketAddr, payload: &[u8]) -> Self {
        Self::vsftpd_with(ns, &VsftpdOptions::at(listen), payload)
    }

    /// vsftpd with `options`, serving `payload` as [`REMOTE_DOWNLOAD`].
    pub fn vsftpd_with(ns: &Netns, options: &VsftpdOptions, payload: &[u8]) -> Self {
        let server = Vsftpd::start_with(ns, options)
            .unwrap_or_else(|e| panic!("vsftpd on {}: {e}", options.listen));
        server
            .put_file(REMOTE_DOWNLOAD, payload)
            .expect("server payload");
        Self::Vsftpd(server)
    }

    /// libunftp (behind the EPRT shim) on `ip`:21, serving `payload`.
    pub fn embedded(ns: &Netns, ip: IpAddr, payload: &[u8]) -> Self {
        let server =
            EmbeddedServer::start_at(ns, ip).unwrap_or_else(|e| panic!("libunftp on {ip}: {e}"));
        server
            .put_file(REMOTE_DOWNLOAD, payload)
            .expect("server payload");
        Self::Embedded(server)
    }

    /// Its control address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Vsftpd(s) => s.socket_addr(),
            Self::Embedded(s) => s.socket_addr(),
        }
    }

    /// Its login directory.
    pub fn root(&self) -> &Path {
        match self {
            Self::Vsftpd(s) => s.root(),
            Self::Embedded(s) => s.root(),
        }
    }

    /// Every command it received, in order.
    pub fn commands(&self) -> Vec<String> {
        match self {
            Self::Vsftpd(s) => s.commands(),
            Self::Embedded(s) => s.commands(),
        }
    }

    /// Every reply vsftpd sent (empty for libunftp, whose replies the shim does not record).
    pub fn replies(&self) -> Vec<String> {
        match self {
            Self::Vsftpd(s) => s.replies(),
            Self::Embedded(_) => Vec::new(),
        }
    }

    /// The session that stored `stor_name`: its commands and (vsftpd) the peer address the
    /// server logged for it. `since` is where the session's commands start in
    /// [`FtpServer::commands`] — used for libunftp, whose sessions run one at a time.
    pub fn session_of(&self, stor_name: &str, since: usize) -> (Vec<String>, Option<String>) {
        match self {
            Self::Vsftpd(s) => {
                let stor = format!("STOR {stor_name}");
                s.processes()
                    .into_iter()
                    .find(|p| p.commands.contains(&stor))
                    .map(|p| (p.commands, Some(p.client)))
                    .unwrap_or_default()
            }
            Self::Embedded(s) => (s.commands().get(since..).unwrap_or(&[]).to_vec(), None),
        }
    }

    fn is_vsftpd(&self) -> bool {
        matches!(self, Self::Vsftpd(_))
    }
}

/// A lab's servers, at most one per family.
pub struct Servers {
    v4: Option<FtpServer>,
    v6: Option<FtpServer>,
}

impl Servers {
    /// One server per family.
    pub fn both(v4: FtpServer, v6: FtpServer) -> Self {
        Self {
            v4: Some(v4),
            v6: Some(v6),
        }
    }

    /// An IPv4 server only.
    pub fn v4_only(v4: FtpServer) -> Self {
        Self {
            v4: Some(v4),
            v6: None,
        }
    }

    /// The server of one family.
    ///
    /// # Panics
    /// If the lab has none of that family.
    pub fn get(&self, ipv6: bool) -> &FtpServer {
        let server = if ipv6 { &self.v6 } else { &self.v4 };
        server
            .as_ref()
            .unwrap_or_else(|| panic!("no {} server in this lab", family_name(ipv6)))
    }

    fn has(&self, ipv6: bool) -> bool {
        if ipv6 {
            self.v6.is_some()
        } else {
            self.v4.is_some()
        }
    }
}

fn family_name(ipv6: bool) -> &'static str {
    if ipv6 { "IPv6" } else { "IPv4" }
}

/// What one session did, with the content hashes it is judged by.
pub struct Done {
    pub run: Run,
    pub report: SessionReport,
    /// Where the client connected.
    pub target: SocketAddr,
    pub download_sha: String,
    pub upload_sha: String,
    pub stored_sha: String,
    /// The session's commands as the server logged them, and the peer it logged.
    pub server_commands: Vec<String>,
    pub server_peer: Option<String>,
}

/// Runs one client session.
pub fn run_client(
    ns: &Netns,
    run: Run,
    files: &ClientFiles,
    ops: &[FtpOp],
    target: SocketAddr,
    bound: Duration,
) -> Result<SessionReport, LabError> {
    // TransferPlan names an IPv4 server; for IPv6 the runners are given `target` instead.
    let v4 = match target {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, target.port()),
    };
    let mut plan = files.plan(v4, ops, bound);
    plan.stor_remote = run.stor_name();
    match run.client {
        Client::Lftp => lftp_at(ns, run.mode, &plan, target),
        Client::Curl => curl_at(ns, run.mode, &plan, target),
        Client::Suppaftp => embedded::client_session_at(ns, run.mode, &plan, target),
    }
}

/// Runs every session of `runs` from `client` against `target(ipv6)`. vsftpd sessions run all
/// at once; libunftp sessions one after the other (its command record is one stream).
pub fn run_sessions(
    client: &Netns,
    servers: &Servers,
    target: &(dyn Fn(bool) -> SocketAddr + Sync),
    runs: &[Run],
) -> Vec<Done> {
    let one = |run: Run| -> Done {
        let server = servers.get(run.ipv6);
        let files = ClientFiles::new("modes");
        let since = server.commands().len();
        let report = run_client(client, run, &files, &FtpOp::ALL, target(run.ipv6), OK_BOUND)
            .unwrap_or_else(|e| panic!("{run}: the client could not be run: {e}"));
        let (server_commands, server_peer) = server.session_of(&run.stor_name(), since);
        Done {
            run,
            target: target(run.ipv6),
            download_sha: sha256_file(&files.download),
            upload_sha: files.upload_sha.clone(),
            stored_sha: sha256_file(&server.root().join(run.stor_name())),
            server_commands,
            server_peer,
            report,
        }
    };
    let concurrent = runs.iter().all(|r| servers.get(r.ipv6).is_vsftpd());
    if concurrent {
        std::thread::scope(|s| {
            let handles: Vec<_> = runs.iter().map(|&run| s.spawn(move || one(run))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect()
        })
    } else {
        runs.iter().map(|&run| one(run)).collect()
    }
}

/// What the server must see of a session: the peer of its control connection, which is also
/// the address every PORT/EPRT must name (the server accepts no other by default).
pub fn active_names(command: &str, ip: IpAddr) -> bool {
    let upper = command.to_ascii_uppercase();
    match ip {
        IpAddr::V4(v4) => {
            let commas = v4.to_string().replace('.', ",");
            upper.starts_with(&format!("PORT {commas},"))
                || upper.starts_with(&format!("EPRT |1|{v4}|"))
        }
        IpAddr::V6(v6) => upper.starts_with(&format!("EPRT |2|{v6}|").to_ascii_uppercase()),
    }
}

/// Everything wrong with a session that had to work: its outcome, the content (SHA-256) both
/// ways, the data-mode command the server really received, and that the server saw `sees`
/// both as the session's peer (vsftpd) and in PORT/EPRT.
pub fn problems(done: &Done, payload_sha: &str, sees: IpAddr) -> Vec<String> {
    let run = done.run;
    let mut found = Vec::new();
    if !done.report.all_ok() {
        found.push(format!("session failed: {}", done.report));
    }
    if done.download_sha != payload_sha {
        found.push("RETR content differs (SHA-256)".into());
    }
    if done.stored_sha != done.upload_sha {
        found.push(format!(
            "STOR content differs (SHA-256) for {}",
            run.stor_name()
        ));
    }
    let used = data_mode_commands(&done.server_commands);
    if used.is_empty() {
        found.push(format!(
            "the server never saw {} in this session: {:?}",
            run.mode, done.server_commands
        ));
    }
    for command in &used {
        if !command.to_ascii_uppercase().starts_with(run.mode.command()) {
            found.push(format!(
                "asked for {} but the server saw `{command}`",
                run.mode
            ));
        } else if run.mode.is_active() && !active_names(command, sees) {
            found.push(format!(
                "the server received `{command}`, which does not name {sees}"
            ));
        }
    }
    if let Some(peer) = &done.server_peer
        && *peer != sees.to_string()
    {
        found.push(format!(
            "vsftpd logged the session's peer as {peer}, expected {sees}"
        ));
    }
    found
}

/// One row of the support matrix: printed, and appended to `$FTP_ALG_MATRIX` if set.
pub fn matrix_row(topology: &str, with_alg: bool, run: &Run, verdict: &str) {
    let line = format!(
        "| {topology} | {} | {} | {} | {} | {verdict} |",
        run.family(),
        run.mode,
        run.peers(),
        if with_alg { "ftp-alg" } else { "none" },
    );
    eprintln!("MATRIX {line}");
    if let Some(path) = std::env::var_os("FTP_ALG_MATRIX") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(PathBuf::from(path))
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            eprintln!("could not append to $FTP_ALG_MATRIX: {e}");
        }
    }
}

/// Judges every session that had to work (through the ALG if `with_alg`), records the
/// matrix, and returns the problems.
pub fn judge(
    topology: &str,
    with_alg: bool,
    done: &[Done],
    payload_sha: &str,
    sees: &dyn Fn(bool) -> IpAddr,
) -> Vec<String> {
    let mut all = Vec::new();
    for d in done {
        let found = problems(d, payload_sha, sees(d.run.ipv6));
        eprintln!(
            "{topology} {}: {}",
            if with_alg {
                "through ftp-alg"
            } else {
                "without the ALG"
            },
            d.report
        );
        matrix_row(
            topology,
            with_alg,
            &d.run,
            if found.is_empty() { "pass" } else { "FAIL" },
        );
        all.extend(found.into_iter().map(|p| {
            format!(
                "{} (to {}): {p}\n    server commands: {:?}\n    transcript: {}",
                d.run,
                d.target,
                d.server_commands,
                d.report.transcript.trim()
            )
        }));
    }
    all
}

/// Runs `runs` (LIST only) at once; each must fail, and on the data path: the server must have
/// received the mode's command (a failure at login would prove nothing). Returns the problems.
pub fn expect_all_fail(
    topology: &str,
    client: &Netns,
    servers: &Servers,
    target: &(dyn Fn(bool) -> SocketAddr + Sync),
    runs: &[Run],
) -> Vec<String> {
    let reports: Vec<(Run, SessionReport)> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|&run| {
                s.spawn(move || {
                    let files = ClientFiles::new("control");
                    let report = run_client(
                        client,
                        run,
                        &files,
                        &[FtpOp::List],
                        target(run.ipv6),
                        FAIL_BOUND,
                    )
                    .unwrap_or_else(|e| panic!("{run}: the client could not be run: {e}"));
                    (run, report)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut found = Vec::new();
    for (run, report) in &reports {
        eprintln!("{topology} without the ALG (must fail): {report}");
        let failed = report.none_ok();
        matrix_row(
            topology,
            false,
            run,
            if failed { "fails (expected)" } else { "WORKS" },
        );
        if !failed {
            found.push(format!(
                "{run} worked without the ALG: {report}\n    transcript: {}",
                report.transcript.trim()
            ));
        }
    }
    for ipv6 in [false, true].into_iter().filter(|&f| servers.has(f)) {
        let log = servers.get(ipv6).commands();
        for mode in DataMode::ALL {
            let wanted = runs
                .iter()
                .filter(|r| r.ipv6 == ipv6 && r.mode == mode)
                .count();
            let seen = data_mode_commands(&log)
                .iter()
                .filter(|c| c.to_ascii_uppercase().starts_with(mode.command()))
                .count();
            if seen < wanted {
                found.push(format!(
                    "{} {mode}: the server saw it {seen} times for {wanted} sessions — they failed before the data path\n    server saw: {log:?}",
                    family_name(ipv6)
                ));
            }
        }
    }
    found
}

/// Panics listing every problem, with the context needed to diagnose them.
pub fn assert_no_problems(problems: &[String], context: &str) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n- {}\n{context}",
        problems.len(),
        problems.join("\n- ")
    );
}

/// The daemon's log and the gateway's ruleset, for failure messages.
pub fn gateway_context(gateway: &Netns, alg: &AlgDaemon) -> String {
    format!(
        "--- ftp-alg ({}) log:\n{}\n--- gateway ruleset:\n{}",
        alg.command_line(),
        alg.output(),
        nft::ruleset(gateway)
    )
}

/// Waits (bounded) for the ALG's pinhole sets/maps to be empty; panics with what is left.
pub fn assert_drained(gateway: &Netns, alg: &AlgDaemon) {
    let start = Instant::now();
    loop {
        let leftovers = nft::alg_leftover_pinholes(gateway).unwrap_or_else(|e| {
            panic!(
                "listing the ALG's sets failed: {e}\n{}",
                gateway_context(gateway, alg)
            )
        });
        if leftovers.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "pinholes left after all sessions ended: {leftovers:#?}\n{}",
            gateway_context(gateway, alg)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM; the daemon must exit in time and leave nothing of its own in the gateway: no
/// table `inet ftp_alg`, no `ip rule` on its fwmark, no route in its table (both families).
pub fn assert_nothing_left(gateway: &Netns, mut alg: AlgDaemon) {
    let status = alg.stop(Duration::from_secs(10));
    let table = nft::table_exists(gateway, "inet", nft::ALG_TABLE).unwrap_or(true);
    let routing = policy_routing_entries(gateway, ALG_ROUTE_MARK, ALG_ROUTE_TABLE)
        .unwrap_or_else(|e| vec![format!("listing failed: {e}")]);
    assert!(
        status.is_some(),
        "ftp-alg did not exit within 10 s of SIGTERM\n--- log:\n{}",
        alg.output()
    );
    assert!(
        !table && routing.is_empty(),
        "left behind after ftp-alg exited ({status:?}): table inet {} present: {table}; policy routing: {routing:#?}\n--- log:\n{}\n--- ruleset:\n{}",
        nft::ALG_TABLE,
        alg.output(),
        nft::ruleset(gateway)
    );
}

/// On an IPv6 control connection through the ALG: the replies to `PORT` and `PASV` (which
/// cannot carry IPv6; RFC 2428 wants them refused), and the control transcript.
pub fn ipv6_port_and_pasv(
    client: &Netns,
    target: SocketAddr,
) -> Result<(Reply, Reply, String), LabError> {
    client.run_in(move || {
        let mut ftp = RawFtp::connect_any(target)?;
        ftp.login(FTP_USER, FTP_PASSWORD)?;
        let port = ftp.command("PORT 10,0,0,2,156,65")?;
        let pasv = ftp.command("PASV")?;
        let transcript = ftp.transcript();
        let _ = ftp.quit();
        Ok((port, pasv, transcript))
    })?
}

/// Asserts both got `522` and that the server never saw either command.
pub fn assert_ipv6_port_pasv_refused(
    client: &Netns,
    target: SocketAddr,
    server: &FtpServer,
    context: &str,
) {
    let (port, pasv, transcript) = ipv6_port_and_pasv(client, target)
        .unwrap_or_else(|e| panic!("IPv6 control session to {target}: {e}\n{context}"));
    assert!(
        port.code == 522 && pasv.code == 522,
        "PORT/PASV on IPv6 must get 522: PORT → {}, PASV → {}\n--- transcript:\n{transcript}\n{context}",
        port.text,
        pasv.text
    );
    let leaked: Vec<String> = server
        .commands()
        .into_iter()
        .filter(|c| {
            let upper = c.to_ascii_uppercase();
            upper.starts_with("PORT") || upper.starts_with("PASV")
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "the server received {leaked:?} on IPv6\n{context}"
    );
}

/// The 227 a raw IPv4 client gets for `PASV` through `target`.
pub fn pasv_reply(client: &Netns, target: SocketAddrV4) -> Result<Reply, LabError> {
    client.run_in(move || {
        let mut ftp = RawFtp::connect(target)?;
        ftp.login(FTP_USER, FTP_PASSWORD)?;
        let reply = ftp.command("PASV")?;
        let _ = ftp.quit();
        Ok(reply)
    })?
}

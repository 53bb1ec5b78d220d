//! The demo: FTP behind NAT, without and with ftp-alg, in every data mode.
//!
//! Builds the client-NAT lab in private network namespaces (client 10.0.0.2 — gateway with
//! masquerade — server 203.0.113.2), runs the embedded libunftp server and the suppaftp client
//! (EPRT: the lab's small raw client, since suppaftp sends EPRT only over IPv6) through it in
//! PORT, EPRT, PASV and EPSV — first as a typical home NAT without any helper, then behind a
//! strict firewall with `ftp-alg` in the gateway — prints a table, and cleans up. No Debian FTP
//! packages are needed. Needs root. Run it with `scripts/demo.sh`.
//!
//! The `ftp-alg` binary is taken from `$FTP_ALG_BIN`, else from next to this example's
//! directory (`target/<profile>/ftp-alg`).

#[path = "../tests/common/embedded.rs"]
#[allow(dead_code, unreachable_pub)] // shared with the tests; the demo uses a part
mod embedded;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use embedded::EmbeddedServer;
use ftp_alg::lab::preflight::lab_available;
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, ClientNatLab, ClientNatOptions, DataMode, FTP_PASSWORD, FTP_USER, FtpOp,
    LabError, PAYLOAD_LEN, ScratchDir, SessionReport, TransferPlan, nft, write_random_file,
};

/// What one cell of the table says.
struct Cell {
    ok: bool,
    text: String,
    /// The data-mode command as the server received it.
    server_saw: Option<String>,
}

fn main() -> ExitCode {
    if let Err(why) = lab_available() {
        eprintln!("demo: {why}");
        return ExitCode::FAILURE;
    }
    let binary = alg_binary();
    if !binary.exists() {
        eprintln!(
            "demo: ftp-alg binary not found at {} (build it first, or set FTP_ALG_BIN)",
            binary.display()
        );
        return ExitCode::FAILURE;
    }
    match run(&binary) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn alg_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FTP_ALG_BIN") {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("ftp-alg")))
        .unwrap_or_else(|| PathBuf::from("target/release/ftp-alg"))
}

fn run(binary: &std::path::Path) -> Result<bool, LabError> {
    let files = ScratchDir::new("demo")?;
    let download = write_random_file(&files.path().join("served.bin"), PAYLOAD_LEN)?;
    let upload_path = files.path().join("to-upload.bin");
    let upload = write_random_file(&upload_path, PAYLOAD_LEN)?;

    println!(
        "ftp-alg demo: client 10.0.0.2 ─ NAT gateway 10.0.0.1 | 203.0.113.1 ─ server 203.0.113.2"
    );
    println!("server: libunftp (embedded); client: suppaftp (EPRT: the lab's raw client)");
    println!(
        "each mode: LIST, RETR and STOR of {PAYLOAD_LEN} random bytes, checked byte for byte\n"
    );

    println!("1/2 without the ALG: a home NAT that lets every outbound connection out ...");
    let without = {
        let lab = ClientNatLab::build(ClientNatOptions {
            outbound_open: true,
            ..ClientNatOptions::default()
        })?;
        let server = EmbeddedServer::start(&lab.server)?;
        server.put_file("served.bin", &download)?;
        run_modes(&lab, &server, &files, &upload_path, &download, &upload)?
    };

    println!(
        "2/2 with ftp-alg: strict firewall (forward policy drop; LAN→WAN :21 and the ALG's ct mark) ..."
    );
    let (with, leftovers, clean_exit) = {
        let lab = ClientNatLab::build(ClientNatOptions::default())?;
        let server = EmbeddedServer::start(&lab.server)?;
        server.put_file("served.bin", &download)?;
        let mut alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(binary))?;
        let cells = run_modes(&lab, &server, &files, &upload_path, &download, &upload)?;
        std::thread::sleep(Duration::from_millis(200));
        let leftovers = nft::alg_leftover_pinholes(&lab.gateway)?;
        let status = alg.stop(Duration::from_secs(10));
        let table_gone = !nft::table_exists(&lab.gateway, "inet", nft::ALG_TABLE)?;
        if cells.iter().any(|c| !c.ok) || status.is_none() || !table_gone {
            eprintln!("--- ftp-alg log:\n{}", alg.output());
        }
        (cells, leftovers, status.is_some() && table_gone)
    };
    println!("   lab namespaces deleted\n");

    print_table(&without, &with);
    println!();
    for (mode, (a, b)) in DataMode::ALL.iter().zip(without.iter().zip(&with)) {
        if mode.is_active() {
            println!(
                "{mode}: the server received  `{}` without the ALG,  `{}` with it",
                a.server_saw.as_deref().unwrap_or("-"),
                b.server_saw.as_deref().unwrap_or("-")
            );
        }
    }
    println!(
        "after the sessions: pinhole sets {}; after SIGTERM: {}",
        if leftovers.is_empty() {
            "empty".to_owned()
        } else {
            format!("NOT empty: {leftovers:?}")
        },
        if clean_exit {
            "table removed"
        } else {
            "table NOT removed"
        }
    );

    let physics_holds = without
        .iter()
        .zip(DataMode::ALL)
        .all(|(cell, mode)| cell.ok != mode.is_active());
    let alg_works = with.iter().all(|c| c.ok) && leftovers.is_empty() && clean_exit;
    if !physics_holds {
        println!("unexpected: without the ALG, active should fail and passive should work");
    }
    Ok(physics_holds && alg_works)
}

fn run_modes(
    lab: &ClientNatLab,
    server: &EmbeddedServer,
    files: &ScratchDir,
    upload_path: &std::path::Path,
    download: &[u8],
    upload: &[u8],
) -> Result<Vec<Cell>, LabError> {
    let mut cells = Vec::new();
    for mode in DataMode::ALL {
        let retr_local = files.path().join(format!("downloaded-{mode}.bin"));
        let stor_remote = format!("uploaded-{mode}.bin");
        let plan = TransferPlan {
            server: server.addr(),
            user: FTP_USER.into(),
            password: FTP_PASSWORD.into(),
            ops: FtpOp::ALL.to_vec(),
            retr_remote: "served.bin".into(),
            retr_local: retr_local.clone(),
            stor_local: upload_path.to_path_buf(),
            stor_remote: stor_remote.clone(),
            timeout: Duration::from_secs(20),
        };
        let before = server.commands().len();
        let report = embedded::client_session(&lab.client, mode, &plan)?;
        let server_saw = server.commands()[before..]
            .iter()
            .find(|c| c.to_ascii_uppercase().starts_with(mode.command()))
            .cloned();
        let intact = std::fs::read(&retr_local).is_ok_and(|d| d == download)
            && std::fs::read(server.root().join(&stor_remote)).is_ok_and(|d| d == upload);
        let cell = describe(mode, &report, intact);
        println!("   {mode}: {}", cell.text);
        cells.push(Cell { server_saw, ..cell });
    }
    Ok(cells)
}

fn describe(mode: DataMode, report: &SessionReport, intact: bool) -> Cell {
    if report.all_ok() && intact {
        return Cell {
            ok: true,
            text: "works (LIST, RETR, STOR; content identical)".into(),
            server_saw: None,
        };
    }
    if report.all_ok() {
        return Cell {
            ok: false,
            text: "FAILS: transfers reported ok but the content differs".into(),
            server_saw: None,
        };
    }
    let raw = report.first_failure().unwrap_or_default();
    let why = if mode.is_active() && (raw.contains("425") || raw.contains("data connection")) {
        "server cannot connect to the client (told 10.0.0.2: no route)"
    } else if !mode.is_active() && (raw.contains("timed out") || raw.contains("time bound")) {
        "firewall drops the client's data connection"
    } else {
        "see below"
    };
    let mut detail: String = raw.chars().take(90).collect();
    if raw.chars().count() > 90 {
        detail.push('…');
    }
    Cell {
        ok: false,
        text: format!("FAILS: {why} [{detail}]"),
        server_saw: None,
    }
}

fn print_table(without: &[Cell], with: &[Cell]) {
    let short = |cell: &Cell| -> String {
        if cell.ok {
            "ok".into()
        } else {
            let text = cell.text.trim_start_matches("FAILS: ");
            let reason = text.split(" [").next().unwrap_or(text);
            format!("FAIL: {reason}")
        }
    };
    let rows: Vec<(String, String, String)> = DataMode::ALL
        .iter()
        .zip(without.iter().zip(with))
        .map(|(mode, (a, b))| (mode.to_string(), short(a), short(b)))
        .collect();
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max("without ALG (home NAT)".len());
    let w2 = rows
        .iter()
        .map(|r| r.2.chars().count())
        .max()
        .unwrap_or(0)
        .max("with ftp-alg (strict firewall)".len());
    println!(
        "| mode | {:<w1$} | {:<w2$} |",
        "without ALG (home NAT)", "with ftp-alg (strict firewall)"
    );
    println!("|------|{}|{}|", "-".repeat(w1 + 2), "-".repeat(w2 + 2));
    for (mode, a, b) in rows {
        println!("| {mode:<4} | {a:<w1$} | {b:<w2$} |");
    }
}

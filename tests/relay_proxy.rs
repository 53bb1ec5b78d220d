//! The benchmarks' comparison point: Debian's `ftp-proxy` (a userspace relay) in the gateway of
//! the strict client-NAT lab, through [`ftp_alg::lab::relay::RelayProxy`]. A download in PASV
//! and in PORT must arrive intact (SHA-256) through the relay; the relay's log must show that it
//! carried the session (transparent destination, its own PASV listener on the LAN side) and the
//! server's log that it saw the relay's own data-mode commands. Dropping the guard must remove
//! the redirect table and every relay process.

mod common;

use std::time::Duration;

use common::{ClientFiles, LabServer, Peers, REMOTE_DOWNLOAD, random_payload, sha256_file};
use ftp_alg::lab::relay::{RELAY_TABLE, RelayInterception, RelayOptions, RelayProxy};
use ftp_alg::lab::{ClientNatLab, ClientNatOptions, DataMode, FTP_USER, FtpOp, nft};

const SESSION_BOUND: Duration = Duration::from_secs(20);

/// Downloads the server's payload through a relay started with `interception`, with `peers`'
/// client in `mode`; returns the lab, the server and the relay for further checks.
fn download_through_relay(
    peers: Peers,
    mode: DataMode,
    interception: RelayInterception,
) -> (ClientNatLab, LabServer, RelayProxy) {
    let (payload, payload_sha) = random_payload();
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = LabServer::start(&lab, peers, &payload);
    let relay = RelayProxy::start(&lab.gateway, &RelayOptions::with_interception(interception))
        .unwrap_or_else(|e| panic!("ftp-proxy did not come up in the gateway: {e}"));
    let target = relay.target(FTP_USER);
    let files = ClientFiles::new("relay");
    let mut plan = files.plan(target.addr, &[FtpOp::Retr], SESSION_BOUND);
    plan.user = target.user.clone();
    let report = peers.run(&lab, mode, &plan).expect("client run");
    eprintln!("through ftp-proxy ({interception:?}, {target:?}): {report}");
    let context = format!(
        "--- session: {report}\n--- client transcript:\n{}\n--- ftp-proxy log:\n{}\n\
         --- server received: {:?}\n--- gateway ruleset:\n{}",
        report.transcript,
        relay.log_text(),
        server.commands(),
        nft::ruleset(&lab.gateway)
    );
    assert!(
        report.all_ok(),
        "{mode} through the relay failed\n{context}"
    );
    assert_eq!(
        sha256_file(&files.download),
        payload_sha,
        "RETR of {REMOTE_DOWNLOAD} differs\n{context}"
    );
    // The server saw the relay's own data-mode command: PASV, or PORT naming the gateway.
    let expected = match mode {
        DataMode::Pasv => "PASV".to_owned(),
        _ => "PORT 203,0,113,1,".to_owned(),
    };
    assert!(
        server.commands().iter().any(|c| c.starts_with(&expected)),
        "the server never received `{expected}…`\n{context}"
    );
    let log = relay.log_text();
    if mode == DataMode::Pasv {
        assert!(
            log.contains("PASV set to 10.0.0.1:"),
            "the relay did not listen for the client's data connection itself\n{context}"
        );
    }
    // Either way the relay chose the server itself: the original destination (transparent) or
    // the user name's `@203.0.113.2` (explicit).
    assert!(
        log.contains("'USER ftpalg' dest 203.0.113.2:21"),
        "the relay did not take the destination from the session\n{context}"
    );
    if interception == RelayInterception::Transparent {
        assert!(
            log.contains("transparent proxy request to 203.0.113.2:21"),
            "the relay did not find the original destination\n{context}"
        );
    }
    if std::env::var_os("RELAY_LOG").is_some() {
        eprintln!("{context}");
    }
    (lab, server, relay)
}

#[test]
fn relay_transparent_lftp_pasv() {
    require_lab!("vsftpd", "lftp", "ftp-proxy");
    let (lab, _server, relay) = download_through_relay(
        Peers::VsftpdLftp,
        DataMode::Pasv,
        RelayInterception::Transparent,
    );
    // Drop: no relay process and no redirect table left in the gateway.
    let pid = relay.pid();
    assert!(nft::table_exists(&lab.gateway, "ip", RELAY_TABLE).expect("nft"));
    drop(relay);
    assert!(
        !nft::table_exists(&lab.gateway, "ip", RELAY_TABLE).expect("nft"),
        "redirect table left after drop:\n{}",
        nft::ruleset(&lab.gateway)
    );
    let left: Vec<i32> = lab.gateway.pids();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() && left.is_empty(),
        "processes left in the gateway after drop: {left:?} (relay pid {pid})"
    );
}

#[test]
fn relay_transparent_lftp_port() {
    require_lab!("vsftpd", "lftp", "ftp-proxy");
    download_through_relay(
        Peers::VsftpdLftp,
        DataMode::Port,
        RelayInterception::Transparent,
    );
}

#[test]
fn relay_transparent_curl_port() {
    require_lab!("vsftpd", "curl", "ftp-proxy");
    download_through_relay(
        Peers::VsftpdCurl,
        DataMode::Port,
        RelayInterception::Transparent,
    );
}

#[test]
fn relay_explicit_curl_pasv() {
    require_lab!("vsftpd", "curl", "ftp-proxy");
    let (lab, _server, _relay) = download_through_relay(
        Peers::VsftpdCurl,
        DataMode::Pasv,
        RelayInterception::Explicit,
    );
    assert!(
        !nft::table_exists(&lab.gateway, "ip", RELAY_TABLE).expect("nft"),
        "explicit mode must not redirect"
    );
}

/// ftp-proxy's default `ForkLimit` (40 accepted connections per minute) would cut a
/// sessions-per-second benchmark off after 20; the lab's relay runs without it. 60 control
/// connections in a row must each get the relay's own `220` (it answers before contacting the
/// server, so none is needed here).
#[test]
fn relay_admits_more_sessions_than_ftp_proxys_default_fork_limit() {
    require_lab!("ftp-proxy");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let relay = RelayProxy::start(&lab.gateway, &RelayOptions::default())
        .unwrap_or_else(|e| panic!("ftp-proxy did not come up in the gateway: {e}"));
    let target = relay.target(FTP_USER).addr;
    let banners = lab
        .client
        .run_in(move || {
            use std::io::{BufRead, BufReader};
            (0..60)
                .map(|_| {
                    let stream = std::net::TcpStream::connect_timeout(
                        &target.into(),
                        Duration::from_secs(2),
                    )
                    .map_err(|e| e.to_string())?;
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .map_err(|e| e.to_string())?;
                    let mut line = String::new();
                    BufReader::new(stream)
                        .read_line(&mut line)
                        .map_err(|e| e.to_string())?;
                    Ok(line)
                })
                .collect::<Vec<Result<String, String>>>()
        })
        .expect("client thread");
    let refused: Vec<_> = banners
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.as_ref().is_ok_and(|line| line.starts_with("220 ")))
        .collect();
    assert!(
        refused.is_empty(),
        "sessions without a 220: {refused:?}\n--- ftp-proxy log:\n{}",
        relay.log_text()
    );
}

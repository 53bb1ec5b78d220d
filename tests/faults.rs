//! Faults the daemon must survive: its table deleted under it by an admin, and its own crash
//! (SIGKILL) in the middle of a transfer followed by a restart.

mod common;

use std::io::Read;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use common::{alg_binary, assert_clean_shutdown, assert_pinholes_drained, sha256};
use ftp_alg::lab::raw_client::{RawFtp, parse_227};
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, ClientNatLab, ClientNatOptions, DataMode, FTP_PASSWORD, FTP_USER,
    SERVER_IP, Vsftpd, nft,
};

fn server_addr() -> SocketAddrV4 {
    SocketAddrV4::new(SERVER_IP, 21)
}

#[test]
fn a_table_deleted_under_the_daemon_costs_one_425_and_is_reinstalled() {
    require_lab!("vsftpd");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start(&lab.server).expect("vsftpd");
    server.put_file("f.bin", &[1u8; 10_000]).expect("file");
    let alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(alg_binary())).expect("ftp-alg");
    let gateway_ns = lab.gateway.name().to_string();
    let result = lab
        .client
        .run_in(move || -> Result<(String, Vec<u8>), String> {
            let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
            ftp.login(FTP_USER, FTP_PASSWORD)
                .map_err(|e| e.to_string())?;
            // An admin deletes our table while the session is up.
            let deleted = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &gateway_ns,
                    "nft",
                    "delete",
                    "table",
                    "inet",
                ])
                .arg(nft::ALG_TABLE)
                .status()
                .map_err(|e| e.to_string())?;
            if !deleted.success() {
                return Err("could not delete the table".into());
            }
            let refused = ftp.command("PASV").map_err(|e| e.to_string())?;
            // The session survives; the table comes back within the watchdog period.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match ftp.retr(DataMode::Pasv, "f.bin") {
                    Ok(data) => return Ok((format!("{} {}", refused.code, refused.text), data)),
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("no recovery: {e}\n{}", ftp.transcript()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        })
        .expect("client thread");
    let (refused, data) = result.unwrap_or_else(|e| panic!("{e}\n{}", alg.output()));
    assert!(
        refused.starts_with("425") && refused.contains("table"),
        "expected a 425 naming the missing table, got {refused:?}"
    );
    assert_eq!(data, vec![1u8; 10_000]);
    // The reinstall's log line is written after the table is back, so it may trail the
    // transfer that already used the new table.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alg.output().contains("reinstalled") {
        assert!(
            Instant::now() < deadline,
            "no reinstall logged:\n{}",
            alg.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    assert_pinholes_drained(&lab, &alg);
    assert_clean_shutdown(&lab, alg);
}

#[test]
fn a_transfer_survives_a_sigkill_of_the_daemon_and_a_restart_cleans_up() {
    require_lab!("vsftpd");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start(&lab.server).expect("vsftpd");
    let payload: Vec<u8> = (0..8_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    server.put_file("big.bin", &payload).expect("file");
    let options = AlgOptions::new(alg_binary());
    let mut alg = AlgDaemon::start(&lab.gateway, &options).expect("ftp-alg");

    // The client opens the data connection and reads slowly, so the transfer is still
    // running when the daemon dies.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let transfer = lab
        .client
        .spawn_thread(move || -> Result<Vec<u8>, String> {
            let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
            ftp.login(FTP_USER, FTP_PASSWORD)
                .map_err(|e| e.to_string())?;
            let reply = ftp.command("PASV").map_err(|e| e.to_string())?;
            let data_addr = parse_227(&reply.text).ok_or("no 227")?;
            let mut data =
                TcpStream::connect_timeout(&SocketAddr::V4(data_addr), Duration::from_secs(5))
                    .map_err(|e| e.to_string())?;
            data.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            ftp.command("RETR big.bin").map_err(|e| e.to_string())?;
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                let n = data.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(got);
                }
                got.extend_from_slice(&buf[..n]);
                if got.len() >= 1_000_000 && got.len() - n < 1_000_000 {
                    let _ = started_tx.send(());
                    // Slow down for a while so the kill lands mid-transfer.
                    std::thread::sleep(Duration::from_millis(1500));
                }
            }
        })
        .expect("client thread");
    started_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("transfer never started\n{}", alg.output()));
    alg.kill();
    // A stale pinhole of the dead daemon's session would survive in its stale table.
    lab.gateway
        .exec_ok(&[
            "nft",
            "add element inet ftp_alg passive_pin { 10.0.0.2 . 203.0.113.2 . 30099 timeout 1h }",
        ])
        .expect("stale element");
    let restarted = AlgDaemon::start(&lab.gateway, &options).expect("restart");
    assert!(
        nft::alg_leftover_pinholes(&lab.gateway).unwrap().is_empty(),
        "stale pinholes survived the restart"
    );
    let got = transfer
        .join()
        .expect("client thread")
        .unwrap_or_else(|e| panic!("transfer broke: {e}"));
    assert_eq!(got.len(), payload.len(), "transfer truncated by the crash");
    assert_eq!(sha256(&got), sha256(&payload));

    // New sessions work through the restarted daemon.
    let listing = lab
        .client
        .run_in(|| -> Result<Vec<u8>, String> {
            let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
            ftp.login(FTP_USER, FTP_PASSWORD)
                .map_err(|e| e.to_string())?;
            ftp.list(DataMode::Port).map_err(|e| e.to_string())
        })
        .expect("client thread")
        .unwrap_or_else(|e| panic!("{e}\n{}", restarted.output()));
    assert!(String::from_utf8_lossy(&listing).contains("big.bin"));
    drop(server);
    assert_pinholes_drained(&lab, &restarted);
    assert_clean_shutdown(&lab, restarted);
}

#[test]
fn a_transfer_longer_than_the_idle_timeout_keeps_its_control_connection() {
    require_lab!("vsftpd", "conntrack");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start(&lab.server).expect("vsftpd");
    let payload = vec![9u8; 4_000_000];
    server.put_file("slow.bin", &payload).expect("file");
    let mut options = AlgOptions::new(alg_binary());
    options.extra_args = vec!["--idle-timeout".into(), "2".into()];
    let alg = AlgDaemon::start(&lab.gateway, &options).expect("ftp-alg");
    let result = lab
        .client
        .run_in(|| -> Result<(usize, u16), String> {
            let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
            ftp.login(FTP_USER, FTP_PASSWORD)
                .map_err(|e| e.to_string())?;
            let reply = ftp.command("PASV").map_err(|e| e.to_string())?;
            let data_addr = parse_227(&reply.text).ok_or("no 227")?;
            let mut data =
                TcpStream::connect_timeout(&SocketAddr::V4(data_addr), Duration::from_secs(5))
                    .map_err(|e| e.to_string())?;
            ftp.command("RETR slow.bin").map_err(|e| e.to_string())?;
            // Read slowly: about 5 s in all, more than twice the idle timeout.
            let mut got = 0;
            let mut buf = [0u8; 16384];
            loop {
                let n = data.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                got += n;
                std::thread::sleep(Duration::from_micros(20_000));
            }
            let done = ftp.read_reply().map_err(|e| e.to_string())?;
            Ok((got, done.code))
        })
        .expect("client thread");
    let (got, code) = result.unwrap_or_else(|e| panic!("{e}\n{}", alg.output()));
    assert_eq!(got, payload.len());
    assert_eq!(
        code, 226,
        "the control connection was cut during the transfer"
    );
    drop(server);
    assert_clean_shutdown(&lab, alg);
}

#[test]
fn a_renumbered_wan_address_is_picked_up_by_the_next_session() {
    require_lab!("vsftpd");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start(&lab.server).expect("vsftpd");
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    server.put_file("f.bin", &payload).expect("file");
    // The lab's daemon reads its source address from --wan-interface wan0.
    let alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(alg_binary())).expect("ftp-alg");
    let fetch = || {
        lab.client
            .run_in(|| -> Result<Vec<u8>, String> {
                let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
                ftp.login(FTP_USER, FTP_PASSWORD)
                    .map_err(|e| e.to_string())?;
                let data = ftp
                    .retr(DataMode::Pasv, "f.bin")
                    .map_err(|e| format!("{e}\n{}", ftp.transcript()))?;
                let _ = ftp.command("QUIT");
                Ok(data)
            })
            .expect("client thread")
    };
    assert_eq!(fetch().expect("before"), payload);
    // A DHCP or PPPoE renumbering: the old address goes, a new one comes.
    lab.gateway
        .ip(&["addr", "del", "203.0.113.1/24", "dev", "wan0"])
        .expect("removing the old WAN address");
    lab.gateway
        .ip(&["addr", "add", "203.0.113.9/24", "dev", "wan0"])
        .expect("adding the new WAN address");
    let after = fetch().unwrap_or_else(|e| panic!("after renumbering: {e}\n{}", alg.output()));
    assert_eq!(after, payload);
    let log = alg.output();
    assert!(
        log.contains("the WAN address changed") && log.contains("203.0.113.9"),
        "{log}"
    );
    let sessions = server.log_text();
    assert!(
        sessions.contains("203.0.113.9"),
        "the server saw the new address: {sessions}"
    );
}

#[test]
fn a_wan_interface_without_an_address_at_start_is_read_when_a_session_needs_it() {
    require_lab!("vsftpd");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start(&lab.server).expect("vsftpd");
    server.put_file("f.bin", &[7u8; 5_000]).expect("file");
    // Boot on a PPPoE or DHCP link: the interface is up, its address comes later.
    lab.gateway
        .ip(&["addr", "del", "203.0.113.1/24", "dev", "wan0"])
        .expect("removing the WAN address");
    let alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(alg_binary()))
        .expect("ftp-alg starts without the WAN address");
    assert!(
        alg.output().contains("starting without the WAN address"),
        "{}",
        alg.output()
    );
    lab.gateway
        .ip(&["addr", "add", "203.0.113.1/24", "dev", "wan0"])
        .expect("the WAN address arrives");
    let data = lab
        .client
        .run_in(|| -> Result<Vec<u8>, String> {
            let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
            ftp.login(FTP_USER, FTP_PASSWORD)
                .map_err(|e| e.to_string())?;
            ftp.retr(DataMode::Port, "f.bin")
                .map_err(|e| format!("{e}\n{}", ftp.transcript()))
        })
        .expect("client thread")
        .unwrap_or_else(|e| panic!("{e}\n{}", alg.output()));
    assert_eq!(data, vec![7u8; 5_000]);
}

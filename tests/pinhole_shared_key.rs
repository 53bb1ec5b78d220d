//! Two sessions of one client to one server whose passive port comes round again (a server
//! with a small passive range, or plain chance — the concurrent matrix runs hit it now and
//! then): session A's transfer on port P is done, session B is told the same port P, then A
//! quits. B's data connection must still be admitted: the end of A must not take B's pinhole
//! with it.
//!
//! vsftpd is given a single passive port so that this happens every time. Run for each
//! topology on IPv4 (the keys involved are the same on IPv6).

mod common;

use std::io::Read;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use common::alg_binary;
use common::modes::gateway_context;
use ftp_alg::lab::raw_client::{RawFtp, parse_227};
use ftp_alg::lab::reverse::{backend_addr, public_addr};
use ftp_alg::lab::{
    AlgDaemon, AlgDeployment, AlgOptions, ClientNatLab, ClientNatOptions, DataMode, FTP_PASSWORD,
    FTP_USER, Netns, ReverseLab, ReverseOptions, RoutedLab, SERVER_IP, Vsftpd, VsftpdOptions, nft,
};

const PORT: u16 = 30000;

fn vsftpd_single_pasv_port(ns: &Netns, listen: SocketAddr) -> Vsftpd {
    Vsftpd::start_with(
        ns,
        &VsftpdOptions {
            listen,
            pasv_ports: Some((PORT, PORT)),
            ..VsftpdOptions::default()
        },
    )
    .expect("vsftpd")
}

fn passive_pin(gateway: &Netns) -> String {
    nft::list_json(gateway, "set", nft::ALG_TABLE, "passive_pin")
        .unwrap_or_else(|e| format!("(listing failed: {e})"))
}

/// A finishes a LIST on the port, B is told the same port, A quits, B connects and lists.
fn second_session_survives_the_first_ones_end(
    client: &Netns,
    gateway: &Netns,
    alg: &AlgDaemon,
    target: SocketAddrV4,
) {
    let mut a = client
        .run_in(move || -> ftp_alg::lab::Result<RawFtp> {
            let mut a = RawFtp::connect(target)?;
            a.login(FTP_USER, FTP_PASSWORD)?;
            a.list(DataMode::Pasv)?;
            Ok(a)
        })
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("session A: {e}\n{}", gateway_context(gateway, alg)));
    let mut b = client
        .run_in(move || -> ftp_alg::lab::Result<RawFtp> {
            let mut b = RawFtp::connect(target)?;
            b.login(FTP_USER, FTP_PASSWORD)?;
            Ok(b)
        })
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("session B: {e}\n{}", gateway_context(gateway, alg)));
    let pasv = b.command("PASV").expect("B: PASV");
    let data_addr =
        parse_227(&pasv.text).unwrap_or_else(|| panic!("B: PASV answered `{}`", pasv.text));
    let before = passive_pin(gateway);
    let ended = || alg.output().matches("session ended").count();
    let ended_before = ended();
    a.command("QUIT").expect("A: QUIT");
    drop(a);
    // The daemon logs a session's end after it removed that session's pinholes: only then
    // can B's connection show whether A's cleanup took B's pinhole.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ended() == ended_before {
        assert!(
            std::time::Instant::now() < deadline,
            "session A never ended\n{}",
            gateway_context(gateway, alg)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = passive_pin(gateway);
    let connected = client
        .run_in(move || {
            TcpStream::connect_timeout(&SocketAddr::V4(data_addr), Duration::from_secs(3))
        })
        .expect("client thread");
    let listing = connected.map_err(|e| e.to_string()).and_then(|mut data| {
        let reply = b.command("LIST").map_err(|e| e.to_string())?;
        if reply.code != 150 {
            return Err(format!("LIST answered {}", reply.text));
        }
        let mut buf = Vec::new();
        data.set_read_timeout(Some(Duration::from_secs(5)))
            .and_then(|()| data.read_to_end(&mut buf))
            .map_err(|e| e.to_string())?;
        let done = b.read_reply().map_err(|e| e.to_string())?;
        (done.code == 226)
            .then_some(buf.len())
            .ok_or_else(|| format!("LIST ended with {}", done.text))
    });
    assert!(
        listing.is_ok(),
        "session B's passive data connection to {data_addr} (told while A was alive; A has since quit) failed: {}\n\
         --- set passive_pin before A quit:\n{before}\n--- after A quit:\n{after}\n--- B's transcript:\n{}\n{}",
        listing.unwrap_err(),
        b.transcript(),
        gateway_context(gateway, alg)
    );
    let _ = b.quit();
}

#[test]
fn client_nat_end_of_one_session_keeps_anothers_pinhole_on_the_same_server_port() {
    require_lab!("vsftpd");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = SocketAddrV4::new(SERVER_IP, 21);
    let _vsftpd = vsftpd_single_pasv_port(&lab.server, SocketAddr::V4(server));
    let alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(alg_binary())).expect("ftp-alg");
    second_session_survives_the_first_ones_end(&lab.client, &lab.gateway, &alg, server);
}

#[test]
fn reverse_end_of_one_session_keeps_anothers_pinhole_on_the_same_backend_port() {
    require_lab!("vsftpd");
    let lab = ReverseLab::build(ReverseOptions::default()).expect("lab");
    let _vsftpd = vsftpd_single_pasv_port(&lab.server, backend_addr(false));
    let alg = AlgDaemon::start(
        &lab.gateway,
        &AlgOptions::with_deployment(
            alg_binary(),
            AlgDeployment::Reverse(vec![(public_addr(false), backend_addr(false))]),
        ),
    )
    .expect("ftp-alg");
    let SocketAddr::V4(target) = public_addr(false) else {
        unreachable!()
    };
    second_session_survives_the_first_ones_end(&lab.client, &lab.gateway, &alg, target);
}

#[test]
fn routed_end_of_one_session_keeps_anothers_pinhole_on_the_same_server_port() {
    require_lab!("vsftpd");
    let lab = RoutedLab::build().expect("lab");
    let SocketAddr::V4(server) = ftp_alg::lab::routed::server_addr(false) else {
        unreachable!()
    };
    let _vsftpd = vsftpd_single_pasv_port(&lab.server, SocketAddr::V4(server));
    let alg = AlgDaemon::start(
        &lab.gateway,
        &AlgOptions::with_deployment(alg_binary(), AlgDeployment::Routed),
    )
    .expect("ftp-alg");
    second_session_survives_the_first_ones_end(&lab.client, &lab.gateway, &alg, server);
}

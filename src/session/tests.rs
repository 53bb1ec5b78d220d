//! Session behaviour against the in-memory firewall: what is forwarded, what is refused,
//! which pinholes exist, and in which order things happen.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::*;
use crate::firewall::fake::FakeFirewall;

const CLIENT: &str = "10.0.0.2:50000";
const SERVER: &str = "203.0.113.2:21";
const GATEWAY: &str = "203.0.113.1:40001";

struct Harness {
    client: DuplexStream,
    server: DuplexStream,
    firewall: Arc<FakeFirewall>,
    ports: Arc<PortAllocator>,
    session: JoinHandle<Ending>,
}

fn policy() -> Policy {
    Policy {
        pinhole_timeout: Duration::from_secs(30),
        max_pinholes: 4,
        pasv_address: PasvAddressPolicy::Rewrite,
        max_line: 512,
        idle_timeout: Duration::from_secs(60),
        allow: Vec::new(),
        deny: Vec::new(),
        mask_banner: false,
        mask_syst: false,
        tls: TlsPolicy::Refuse,
        realtime_boost: 0,
    }
}

fn start() -> Harness {
    start_with(policy(), FakeFirewall::default())
}

fn start_with(policy: Policy, firewall: FakeFirewall) -> Harness {
    start_topology(
        Topology::ClientNat,
        Endpoints {
            client: CLIENT.parse().unwrap(),
            client_facing: SERVER.parse().unwrap(),
            server: SERVER.parse().unwrap(),
            upstream_local: GATEWAY.parse().unwrap(),
        },
        policy,
        firewall,
    )
}

fn start_topology(
    topology: Topology,
    ends: Endpoints,
    policy: Policy,
    firewall: FakeFirewall,
) -> Harness {
    let (client, client_side) = tokio::io::duplex(1 << 16);
    let (server, server_side) = tokio::io::duplex(1 << 16);
    let firewall = Arc::new(firewall);
    let ports = Arc::new(PortAllocator::new(40000..=40099, Duration::from_secs(60)));
    let session = Session::new(
        ends,
        topology,
        Arc::new(policy),
        firewall.clone(),
        ports.clone(),
    );
    let session = tokio::spawn(session.run(client_side, server_side));
    Harness {
        client,
        server,
        firewall,
        ports,
        session,
    }
}

/// Reads exactly `n` bytes or fails after a second.
async fn read_n(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut buf))
        .await
        .expect("timed out waiting for bytes")
        .expect("stream closed");
    buf
}

/// Reads one CRLF line.
async fn read_line(stream: &mut DuplexStream) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        line.extend(read_n(stream, 1).await);
    }
    String::from_utf8(line).unwrap()
}

/// Asserts that nothing arrives within a short time.
async fn assert_silent(stream: &mut DuplexStream) {
    let mut buf = [0u8; 1];
    let got = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
    assert!(got.is_err(), "expected silence, got {:?}", got);
}

impl Harness {
    async fn greet(&mut self) {
        self.server.write_all(b"220 hello\r\n").await.unwrap();
        assert_eq!(read_line(&mut self.client).await, "220 hello\r\n");
    }

    async fn client_says(&mut self, bytes: &[u8]) {
        self.client.write_all(bytes).await.unwrap();
    }

    async fn server_says(&mut self, bytes: &[u8]) {
        self.server.write_all(bytes).await.unwrap();
    }

    async fn finish(self) -> Arc<FakeFirewall> {
        drop(self.client);
        drop(self.server);
        tokio::time::timeout(Duration::from_secs(1), self.session)
            .await
            .expect("session did not end")
            .unwrap();
        self.firewall
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn pasv_reply_opens_an_exact_pinhole_and_is_forwarded_unchanged() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    assert_eq!(read_line(&mut h.server).await, "PASV\r\n");
    let reply = "227 Entering Passive Mode (203,0,113,2,117,48).\r\n";
    h.server_says(reply.as_bytes()).await;
    assert_eq!(read_line(&mut h.client).await, reply);
    assert_eq!(
        h.firewall.live(),
        vec![Pinhole::passive(
            ip("10.0.0.2"),
            ip("203.0.113.2"),
            117 * 256 + 48
        )]
    );
    let firewall = h.finish().await;
    assert!(
        firewall.live().is_empty(),
        "pinholes left after the session"
    );
}

#[tokio::test]
async fn epsv_reply_opens_a_pinhole_to_the_server_address() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"EPSV\r\n").await;
    read_line(&mut h.server).await;
    let reply = "229 Entering Extended Passive Mode (|||30001|)\r\n";
    h.server_says(reply.as_bytes()).await;
    assert_eq!(read_line(&mut h.client).await, reply);
    assert_eq!(
        h.firewall.live(),
        vec![Pinhole::passive(ip("10.0.0.2"), ip("203.0.113.2"), 30001)]
    );
}

#[tokio::test]
async fn reply_is_released_only_after_the_kernel_acknowledged_the_pinhole() {
    let firewall = FakeFirewall::default();
    firewall.set_open_delay(Duration::from_millis(300));
    let mut h = start_with(policy(), firewall);
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 ok (203,0,113,2,117,48)\r\n").await;
    // Still waiting for the ACK: nothing may reach the client yet.
    assert_silent(&mut h.client).await;
    assert!(h.firewall.live().is_empty());
    assert_eq!(
        read_line(&mut h.client).await,
        "227 ok (203,0,113,2,117,48)\r\n"
    );
    assert_eq!(h.firewall.live().len(), 1);
}

/// The calling thread's scheduling policy.
fn thread_policy() -> libc::c_int {
    // SAFETY: pid 0 is the calling thread.
    unsafe { libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK }
}

#[tokio::test]
async fn a_real_time_boost_spans_the_install_and_the_release_of_the_waiting_line() {
    if let Err(e) = crate::realtime::check(5) {
        // Unprivileged run: the daemon refuses to start instead (tests/operations.rs). CI
        // runs as root and must exercise this.
        assert!(
            !crate::lab::preflight::in_ci(),
            "needs real time under CI: {e}"
        );
        eprintln!("skipping: {e}");
        return;
    }
    let normal = thread_policy();
    assert_eq!(normal, libc::SCHED_OTHER);
    let firewall = FakeFirewall::default();
    firewall.set_open_delay(Duration::from_millis(200));
    let mut h = start_with(
        Policy {
            realtime_boost: 5,
            ..policy()
        },
        firewall,
    );
    h.greet().await;
    assert_eq!(thread_policy(), normal, "relaying is not boosted");
    // Passive: from the 227's pinhole request until the 227 is out.
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 ok (203,0,113,2,117,48)\r\n").await;
    assert_silent(&mut h.client).await;
    assert_eq!(thread_policy(), libc::SCHED_FIFO, "installing the pinhole");
    assert_eq!(
        read_line(&mut h.client).await,
        "227 ok (203,0,113,2,117,48)\r\n"
    );
    assert_eq!(thread_policy(), normal, "the 227 is out");
    // Active: from the PORT's pinhole request until the rewritten PORT is out.
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    assert_silent(&mut h.server).await;
    assert_eq!(thread_policy(), libc::SCHED_FIFO, "installing the pinhole");
    let port = read_line(&mut h.server).await;
    assert!(port.starts_with("PORT 203,0,113,1,"), "{port}");
    assert_eq!(thread_policy(), normal, "the PORT is out");
}

#[tokio::test]
async fn pasv_naming_another_host_is_rewritten_to_the_server_by_default() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 Entering Passive Mode (172,17,0,5,117,48)\r\n")
        .await;
    assert_eq!(
        read_line(&mut h.client).await,
        "227 Entering Passive Mode (203,0,113,2,117,48)\r\n"
    );
    assert_eq!(
        h.firewall.live(),
        vec![Pinhole::passive(
            ip("10.0.0.2"),
            ip("203.0.113.2"),
            117 * 256 + 48
        )]
    );
}

#[tokio::test]
async fn pasv_naming_a_third_host_is_refused_under_the_refuse_policy() {
    let mut h = start_with(
        Policy {
            pasv_address: PasvAddressPolicy::Refuse,
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 Entering Passive Mode (198,51,100,7,117,48)\r\n")
        .await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("425 "), "{line}");
    assert!(line.contains("198.51.100.7"), "{line}");
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn pasv_with_a_privileged_port_is_refused() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 Entering Passive Mode (203,0,113,2,0,22)\r\n")
        .await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("425 ") && line.contains("22"), "{line}");
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn malformed_227_gets_a_425_and_no_pinhole() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 Entering Passive Mode (203,0,113,999,117,48)\r\n")
        .await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("425 "), "{line}");
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn unsolicited_227_opens_nothing() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"NOOP\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 Entering Passive Mode (203,0,113,2,117,48)\r\n")
        .await;
    read_line(&mut h.client).await;
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn a_227_inside_a_multiline_reply_of_another_code_opens_nothing() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    // The 227 line is a continuation line of a 500 reply, which answers the PASV.
    let text = b"500-Oops\r\n227 Entering Passive Mode (203,0,113,2,117,48)\r\n500 no\r\n";
    h.server_says(text).await;
    assert_eq!(read_n(&mut h.client, text.len()).await, text);
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn pipelined_commands_keep_the_227_matched_to_its_pasv() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"NOOP\r\nPASV\r\n").await;
    assert_eq!(read_n(&mut h.server, 12).await, b"NOOP\r\nPASV\r\n");
    h.server_says(b"200 ok\r\n227 Entering Passive Mode (203,0,113,2,117,48)\r\n")
        .await;
    read_line(&mut h.client).await;
    read_line(&mut h.client).await;
    assert_eq!(h.firewall.live().len(), 1);
}

#[tokio::test]
async fn port_is_rewritten_to_the_gateway_and_mapped_to_the_client() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    let forwarded = read_line(&mut h.server).await;
    let live = h.firewall.live();
    let [pinhole] = live[..] else {
        panic!("expected one active pinhole, got {live:?}")
    };
    let gateway_port = pinhole
        .via
        .expect("active pinhole has a DNAT address")
        .port();
    assert_eq!(
        pinhole,
        Pinhole::active(
            ip("203.0.113.2"),
            ip("203.0.113.1"),
            gateway_port,
            ip("10.0.0.2"),
            195 * 256 + 80
        )
    );
    assert!((40000..=40099).contains(&gateway_port));
    assert_eq!(
        forwarded,
        format!(
            "PORT 203,0,113,1,{},{}\r\n",
            gateway_port >> 8,
            gateway_port & 0xff
        )
    );
    let ports = h.ports.clone();
    let firewall = h.finish().await;
    assert!(firewall.live().is_empty());
    assert_eq!(ports.leased(), 0, "gateway port not returned");
}

#[tokio::test]
async fn eprt_is_rewritten_to_the_gateway() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"EPRT |1|10.0.0.2|50001|\r\n").await;
    let forwarded = read_line(&mut h.server).await;
    let live = h.firewall.live();
    let [pinhole] = live[..] else {
        panic!("expected one active pinhole, got {live:?}")
    };
    let gateway_port = pinhole.via.expect("DNAT address").port();
    assert_eq!(
        forwarded,
        format!("EPRT |1|203.0.113.1|{gateway_port}|\r\n")
    );
}

#[tokio::test]
async fn port_naming_a_third_host_is_refused_as_a_bounce() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PORT 198,51,100,7,0,80\r\nPORT 198,51,100,7,195,80\r\n")
        .await;
    let first = read_line(&mut h.client).await;
    let second = read_line(&mut h.client).await;
    assert!(first.starts_with("501 "), "{first}");
    assert!(
        second.starts_with("501 ") && second.contains("198.51.100.7"),
        "{second}"
    );
    assert_silent(&mut h.server).await;
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn port_below_1024_is_refused() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PORT 10,0,0,2,0,25\r\n").await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("501 ") && line.contains("25"), "{line}");
    assert_silent(&mut h.server).await;
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn malformed_port_gets_501() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PORT 10,0,0,256,195,80\r\n").await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("501 "), "{line}");
    assert_silent(&mut h.server).await;
}

#[tokio::test]
async fn port_inside_another_commands_argument_is_not_interpreted() {
    let mut h = start();
    h.greet().await;
    let text = b"NOOP PORT 10,0,0,2,195,80\r\n";
    h.client_says(text).await;
    assert_eq!(read_n(&mut h.server, text.len()).await, text);
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn port_split_at_every_byte_still_works_once() {
    let mut h = start();
    h.greet().await;
    for byte in b"PORT 10,0,0,2,195,80\r\n" {
        h.client_says(&[*byte]).await;
        tokio::task::yield_now().await;
    }
    let line = read_line(&mut h.server).await;
    assert!(line.starts_with("PORT 203,0,113,1,"), "{line}");
    assert_eq!(h.firewall.live().len(), 1);
}

#[tokio::test]
async fn port_ended_by_a_bare_lf_is_refused() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PORT 10,0,0,2,195,80\n").await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("500 "), "{line}");
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn over_long_line_gets_500_and_is_not_forwarded() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"NOOP\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"200 ok\r\n").await;
    read_line(&mut h.client).await;
    let mut long = b"SITE ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 2000));
    long.extend(b"\r\nNOOP\r\n");
    h.client_says(&long).await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("500 "), "{line}");
    assert_eq!(read_line(&mut h.server).await, "NOOP\r\n");
}

#[tokio::test]
async fn commands_reach_the_server_as_checked_and_replies_pass_unchanged() {
    let mut h = start();
    h.greet().await;
    // Telnet sequences go (an ABOR's IAC IP IAC DM included), spacing and escaped 0xFF
    // bytes stay, and a bare LF becomes CRLF.
    h.client_says(b"USER anonymous\r\n\xff\xf4\xff\xf2ABOR\r\nSTAT  x y \r\nRETR a\xff\xffb\n")
        .await;
    let sent = b"USER anonymous\r\nABOR\r\nSTAT  x y \r\nRETR a\xff\xffb\r\n";
    assert_eq!(read_n(&mut h.server, sent.len()).await, sent);
    let reply = b"331-a\r\n  b\r\n331 c\r\n";
    h.server_says(reply).await;
    assert_eq!(read_n(&mut h.client, reply.len()).await, reply);
}

#[tokio::test]
async fn a_line_servers_could_split_differently_is_refused_and_not_sent() {
    let mut h = start_with(
        Policy {
            deny: vec![b"DELE".to_vec()],
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    // ProFTPD and Pure-FTPd split words at any whitespace, and drop a lone IAC SB: each of
    // these would reach them as DELE, PORT, AUTH or a leading-space DELE.
    for line in [
        &b"DELE\tsecret\r\n"[..],
        b"PORT\t10,0,0,5,0,22\r\n",
        b"AUTH\tTLS\r\n",
        b" DELE secret\r\n",
        b"\xff\xfaDELE secret\r\n",
        b"\r\n",
    ] {
        h.client_says(line).await;
        let reply = read_line(&mut h.client).await;
        assert!(reply.starts_with("500 Syntax error"), "{line:?}: {reply}");
    }
    // A subnegotiation inside a verb: the server gets what was checked, "PO".
    h.client_says(b"PO\xff\xfaRT 10,0,0,5,0,22\r\n").await;
    assert_eq!(read_line(&mut h.server).await, "PO\r\n");
    assert!(h.firewall.opened().is_empty());
}

#[tokio::test]
async fn lprt_and_auth_tls_get_clear_refusals() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"LPRT 4,4,10,0,0,2,2,195,80\r\nAUTH TLS\r\n")
        .await;
    assert!(read_line(&mut h.client).await.starts_with("502 "));
    assert!(read_line(&mut h.client).await.starts_with("534 "));
    assert_silent(&mut h.server).await;
}

#[tokio::test]
async fn firewall_failure_gets_425_and_the_session_survives() {
    let firewall = FakeFirewall::default();
    firewall.fail_next_open();
    let mut h = start_with(policy(), firewall);
    h.greet().await;
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("425 "), "{line}");
    assert_eq!(h.ports.leased(), 0);
    h.client_says(b"PORT 10,0,0,2,195,81\r\n").await;
    assert!(
        read_line(&mut h.server)
            .await
            .starts_with("PORT 203,0,113,1,")
    );
}

fn port_in_use() -> FirewallError {
    FirewallError::PortInUse {
        server: "203.0.113.2:20".parse().expect("server"),
        gateway: "203.0.113.1:40000".parse().expect("gateway"),
    }
}

#[tokio::test]
async fn a_gateway_port_still_in_use_is_traded_for_another() {
    let firewall = FakeFirewall::default();
    firewall.fail_next_open_with(port_in_use());
    firewall.fail_next_open_with(port_in_use());
    let mut h = start_with(policy(), firewall);
    h.greet().await;
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    let forwarded = read_line(&mut h.server).await;
    assert!(forwarded.starts_with("PORT 203,0,113,1,"), "{forwarded}");
    assert_eq!(h.firewall.live().len(), 1);
    assert_eq!(h.ports.leased(), 1, "the refused ports were not returned");
}

#[tokio::test]
async fn a_port_that_stays_in_use_gets_425_after_a_few_ports() {
    let firewall = FakeFirewall::default();
    for _ in 0..=PORT_ATTEMPTS {
        firewall.fail_next_open_with(port_in_use());
    }
    let mut h = start_with(policy(), firewall);
    h.greet().await;
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    let line = read_line(&mut h.client).await;
    assert!(
        line.starts_with("425 ") && line.contains("lease another port"),
        "{line}"
    );
    assert_eq!(h.ports.leased(), 0);
    assert!(h.firewall.live().is_empty());
    // The next one gets a port.
    h.client_says(b"PORT 10,0,0,2,195,81\r\n").await;
    assert!(
        read_line(&mut h.server)
            .await
            .starts_with("PORT 203,0,113,1,")
    );
}

#[tokio::test]
async fn pinholes_per_session_are_capped() {
    let mut h = start_with(
        Policy {
            max_pinholes: 2,
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    for port in [50001, 50002] {
        h.client_says(format!("EPRT |1|10.0.0.2|{port}|\r\n").as_bytes())
            .await;
        read_line(&mut h.server).await;
    }
    h.client_says(b"EPRT |1|10.0.0.2|50003|\r\n").await;
    assert_eq!(h.firewall.live().len(), 2);
    // The refusal waits for the replies to the two EPRTs before it (a pipelining client
    // reads every reply in order); the second one's 200 replaces the first's address.
    assert_silent(&mut h.client).await;
    h.server_says(b"200 ok\r\n200 ok\r\n").await;
    assert_eq!(read_line(&mut h.client).await, "200 ok\r\n");
    assert_eq!(read_line(&mut h.client).await, "200 ok\r\n");
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("425 "), "{line}");
    let live = h.firewall.live();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].to, "10.0.0.2:50002".parse().unwrap());
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_with_421_but_not_while_the_data_connection_lives() {
    let mut h = start_with(
        Policy {
            idle_timeout: Duration::from_secs(5),
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 ok (203,0,113,2,117,48)\r\n").await;
    read_line(&mut h.client).await;
    h.client_says(b"RETR big\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"150 Opening data connection\r\n").await;
    read_line(&mut h.client).await;
    // A long transfer (the fake says its connection lives): the control channel is silent
    // far beyond the idle timeout.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    h.server_says(b"226 done\r\n").await;
    assert_eq!(read_line(&mut h.client).await, "226 done\r\n");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("421 "), "{line}");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), h.session)
            .await
            .unwrap()
            .unwrap(),
        Ending::IdleTimeout
    );
}

#[tokio::test(start_paused = true)]
async fn a_150_without_a_live_data_connection_does_not_hold_the_session() {
    let firewall = FakeFirewall::default();
    firewall.set_connections_alive(false);
    let mut h = start_with(
        Policy {
            idle_timeout: Duration::from_secs(5),
            ..policy()
        },
        firewall,
    );
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 ok (203,0,113,2,117,48)\r\n").await;
    read_line(&mut h.client).await;
    h.client_says(b"RETR big\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"150 Opening data connection\r\n").await;
    read_line(&mut h.client).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("421 "), "{line}");
}

#[tokio::test(start_paused = true)]
async fn a_line_trickled_byte_by_byte_is_cut_at_the_idle_timeout() {
    let mut h = start_with(
        Policy {
            idle_timeout: Duration::from_secs(5),
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    // One byte a second, never a line end: no complete line, so the session goes idle.
    let mut cut = false;
    for _ in 0..20 {
        h.client_says(b"N").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if h.session.is_finished() {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "a trickling client held its session past the idle timeout"
    );
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("421 "), "{line}");
}

#[tokio::test]
async fn denied_commands_get_502_and_are_not_forwarded() {
    let mut h = start_with(
        Policy {
            deny: vec![b"SITE".to_vec(), b"DELE".to_vec()],
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    h.client_says(b"site chmod 777 x\r\nDELE y\r\nNOOP\r\n")
        .await;
    assert!(read_line(&mut h.client).await.starts_with("502 SITE"));
    assert!(read_line(&mut h.client).await.starts_with("502 DELE"));
    assert_eq!(read_line(&mut h.server).await, "NOOP\r\n");
}

#[tokio::test]
async fn an_allow_list_refuses_everything_else_but_data_commands_still_work() {
    let mut h = start_with(
        Policy {
            allow: vec![b"USER".to_vec(), b"PASS".to_vec()],
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    h.client_says(b"USER a\r\nMKD x\r\nPASV\r\n").await;
    assert_eq!(read_line(&mut h.server).await, "USER a\r\n");
    h.server_says(b"331 password\r\n").await;
    assert_eq!(read_line(&mut h.client).await, "331 password\r\n");
    assert!(read_line(&mut h.client).await.starts_with("502 MKD"));
    assert_eq!(read_line(&mut h.server).await, "PASV\r\n");
}

#[tokio::test]
async fn banner_and_syst_are_masked_when_asked() {
    let mut h = start_with(
        Policy {
            mask_banner: true,
            mask_syst: true,
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.server_says(b"220-vsFTPd 3.0.3 on host.example\r\n220 welcome\r\n")
        .await;
    assert_eq!(read_line(&mut h.client).await, "220 FTP server ready\r\n");
    h.client_says(b"SYST\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"215 UNIX Type: L8 (vsFTPd 3.0.3)\r\n").await;
    assert_eq!(read_line(&mut h.client).await, "215 UNIX Type: L8\r\n");
    // Other replies are untouched.
    h.client_says(b"NOOP\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"200 NOOP ok (vsFTPd)\r\n").await;
    assert_eq!(read_line(&mut h.client).await, "200 NOOP ok (vsFTPd)\r\n");
}

#[tokio::test]
async fn tls_passthrough_relays_raw_bytes_after_234_and_opens_nothing() {
    let mut h = start_with(
        Policy {
            tls: TlsPolicy::Passthrough,
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    h.client_says(b"AUTH TLS\r\n").await;
    assert_eq!(read_line(&mut h.server).await, "AUTH TLS\r\n");
    h.server_says(b"234 AUTH TLS ok\r\n").await;
    assert_eq!(read_line(&mut h.client).await, "234 AUTH TLS ok\r\n");
    // Binary (TLS-like) bytes, including something that looks like a PORT, pass untouched.
    let hello = b"\x16\x03\x01\x00\xffPORT 10,0,0,2,195,80\r\n\x00";
    h.client_says(hello).await;
    assert_eq!(read_n(&mut h.server, hello.len()).await, hello);
    let reply = b"227 (203,0,113,2,117,48)\r\n";
    h.server_says(reply).await;
    assert_eq!(read_n(&mut h.client, reply.len()).await, reply);
    assert!(h.firewall.live().is_empty());
    let firewall = h.finish().await;
    assert!(firewall.opened().is_empty());
}

fn v6_routed() -> (Topology, Endpoints) {
    (
        Topology::Routed,
        Endpoints {
            client: "[2001:db8:1::2]:50000".parse().unwrap(),
            client_facing: "[2001:db8:2::2]:21".parse().unwrap(),
            server: "[2001:db8:2::2]:21".parse().unwrap(),
            upstream_local: "[2001:db8:1::2]:41000".parse().unwrap(),
        },
    )
}

#[tokio::test]
async fn ipv6_routed_eprt_and_epsv_open_pinholes_and_rewrite_nothing() {
    let (topology, ends) = v6_routed();
    let mut h = start_topology(topology, ends, policy(), FakeFirewall::default());
    h.greet().await;
    let eprt = "EPRT |2|2001:db8:1::2|50001|\r\n";
    h.client_says(eprt.as_bytes()).await;
    assert_eq!(read_line(&mut h.server).await, eprt);
    h.server_says(b"200 ok\r\n").await;
    read_line(&mut h.client).await;
    let live = h.firewall.live();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].to, "[2001:db8:1::2]:50001".parse().unwrap());
    assert_eq!(live[0].via, None);
    h.client_says(b"EPSV\r\n").await;
    read_line(&mut h.server).await;
    let reply = "229 Entering Extended Passive Mode (|||30001|)\r\n";
    h.server_says(reply.as_bytes()).await;
    assert_eq!(read_line(&mut h.client).await, reply);
    // The passive address replaces the active one, which no transfer used.
    assert_eq!(
        h.firewall.live(),
        [Pinhole::passive(
            ip("2001:db8:1::2"),
            ip("2001:db8:2::2"),
            30001
        )]
    );
}

#[tokio::test]
async fn ipv6_eprt_naming_a_third_host_or_a_privileged_port_is_refused() {
    let (topology, ends) = v6_routed();
    let mut h = start_topology(topology, ends, policy(), FakeFirewall::default());
    h.greet().await;
    // Another host of the client's own /64, and the client itself at port 1023.
    h.client_says(b"EPRT |2|2001:db8:1::3|50001|\r\nEPRT |2|2001:db8:1::2|1023|\r\n")
        .await;
    let first = read_line(&mut h.client).await;
    let second = read_line(&mut h.client).await;
    assert!(
        first.starts_with("501 ") && first.contains("2001:db8:1::3"),
        "{first}"
    );
    assert!(
        second.starts_with("501 ") && second.contains("1023"),
        "{second}"
    );
    assert_silent(&mut h.server).await;
    assert!(h.firewall.live().is_empty());
    // The client's own address at a high port: a pinhole.
    let eprt = "EPRT |2|2001:db8:1::2|50001|\r\n";
    h.client_says(eprt.as_bytes()).await;
    assert_eq!(read_line(&mut h.server).await, eprt);
    assert_eq!(h.firewall.live().len(), 1);
}

#[tokio::test]
async fn port_and_pasv_on_ipv6_are_refused_with_522() {
    let (topology, ends) = v6_routed();
    let mut h = start_topology(topology, ends, policy(), FakeFirewall::default());
    h.greet().await;
    h.client_says(b"PORT 10,0,0,2,195,80\r\nPASV\r\nEPRT |1|10.0.0.2|50001|\r\n")
        .await;
    for expected in ["EPRT", "EPSV", "(2)"] {
        let line = read_line(&mut h.client).await;
        assert!(
            line.starts_with("522 ") && line.contains(expected),
            "{line}"
        );
    }
    assert_silent(&mut h.server).await;
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn after_epsv_all_other_data_commands_are_refused() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"EPSV ALL\r\n").await;
    assert_eq!(read_line(&mut h.server).await, "EPSV ALL\r\n");
    h.server_says(b"200 EPSV ALL ok\r\n").await;
    read_line(&mut h.client).await;
    h.client_says(b"PASV\r\nPORT 10,0,0,2,195,80\r\n").await;
    for _ in 0..2 {
        let line = read_line(&mut h.client).await;
        assert!(
            line.starts_with("501 ") && line.contains("EPSV ALL"),
            "{line}"
        );
    }
    assert!(h.firewall.live().is_empty());
}

#[tokio::test]
async fn epsv_all_that_the_server_refuses_leaves_the_other_data_commands_alone() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"EPSV ALL\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"500 Unknown command\r\n").await;
    read_line(&mut h.client).await;
    h.client_says(b"PASV\r\n").await;
    assert_eq!(read_line(&mut h.server).await, "PASV\r\n");
}

/// A reverse-mode session: an outside client, the published server 198.51.100.2 behind the
/// gateway's public 203.0.113.1.
fn start_reverse() -> Harness {
    let ends = Endpoints {
        client: "203.0.113.2:50000".parse().unwrap(),
        client_facing: "203.0.113.1:21".parse().unwrap(),
        server: "198.51.100.2:21".parse().unwrap(),
        upstream_local: "198.51.100.1:41000".parse().unwrap(),
    };
    start_topology(Topology::Reverse, ends, policy(), FakeFirewall::default())
}

#[tokio::test]
async fn reverse_mode_publishes_passive_replies_on_the_public_address() {
    let mut h = start_reverse();
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 Entering Passive Mode (198,51,100,2,117,48).\r\n")
        .await;
    let line = read_line(&mut h.client).await;
    let live = h.firewall.live();
    let public = live[0].via.expect("DNAT from the public address");
    assert_eq!(
        line,
        format!(
            "227 Entering Passive Mode (203,0,113,1,{},{}).\r\n",
            public.port() >> 8,
            public.port() & 0xff
        )
    );
    assert_eq!(live[0].to, "198.51.100.2:30000".parse().unwrap());
    assert_eq!(live[0].snat, Some(ip("198.51.100.1")));
    // EPSV: the port is mapped too.
    h.client_says(b"EPSV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"229 Entering Extended Passive Mode (|||30001|)\r\n")
        .await;
    let line = read_line(&mut h.client).await;
    let live = h.firewall.live();
    assert_eq!(live.len(), 1, "the 227's pinhole is replaced: {live:?}");
    let mapped = live[0].via.expect("DNAT").port();
    assert_eq!(
        line,
        format!("229 Entering Extended Passive Mode (|||{mapped}|)\r\n")
    );
    // The client's PORT names its public address; the backend sees the gateway's inside one.
    h.client_says(b"PORT 203,0,113,2,195,80\r\n").await;
    let forwarded = read_line(&mut h.server).await;
    assert!(forwarded.starts_with("PORT 198,51,100,1,"), "{forwarded}");
    let ports = h.ports.clone();
    let firewall = h.finish().await;
    assert!(firewall.live().is_empty());
    assert_eq!(ports.leased(), 0);
}

/// A published server's private address and the gateway's firewall internals never reach an
/// outside client in a refusal; the forward-mode replies keep their detail.
#[tokio::test]
async fn reverse_mode_refusals_name_neither_the_backend_nor_the_firewall() {
    let ends = Endpoints {
        client: "203.0.113.2:50000".parse().unwrap(),
        client_facing: "203.0.113.1:21".parse().unwrap(),
        server: "198.51.100.2:21".parse().unwrap(),
        upstream_local: "198.51.100.1:41000".parse().unwrap(),
    };
    let refuse = Policy {
        pasv_address: PasvAddressPolicy::Refuse,
        ..policy()
    };
    let mut h = start_topology(Topology::Reverse, ends, refuse, FakeFirewall::default());
    h.greet().await;
    // The backend announces another private host: refused, without naming either address.
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 Entering Passive Mode (10,0,0,9,117,48).\r\n")
        .await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("425 "), "{line}");
    assert!(
        !line.contains("198.51.100") && !line.contains("10.0.0.9"),
        "{line}"
    );
    // The kernel refuses the pinhole: a 425 without the kernel's words.
    h.firewall.fail_next_open();
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 Entering Passive Mode (198,51,100,2,117,48).\r\n")
        .await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("425 "), "{line}");
    assert!(
        !line.contains("passive_pin") && !line.contains("injected"),
        "{line}"
    );
    // Positive control: the same refusal in forward mode names the kernel's error.
    let mut h = start();
    h.greet().await;
    h.firewall.fail_next_open();
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 Entering Passive Mode (203,0,113,2,117,48).\r\n")
        .await;
    let line = read_line(&mut h.client).await;
    assert!(line.contains("injected failure"), "{line}");
}

/// A client sending refusable lines as fast as it can gets a reply to each, but the log
/// gets the first [`REFUSALS_LOGGED`] at warn level, one line saying the rest go to debug,
/// and their count at the session's end.
#[tokio::test]
async fn a_flood_of_refused_lines_is_logged_within_a_budget() {
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let mut h = start();
    h.greet().await;
    let sent = REFUSALS_LOGGED + 30;
    for _ in 0..sent {
        // A bounce: the address is not the client's own.
        h.client_says(b"PORT 192,0,2,9,195,80\r\n").await;
        assert!(read_line(&mut h.client).await.starts_with("501 "));
    }
    h.finish().await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let refused = log.matches(" refused code=").count();
    assert_eq!(refused as u64, REFUSALS_LOGGED, "{log}");
    assert_eq!(
        log.matches("the rest are logged at debug level").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains(&format!("refusals={sent} not_logged=30")),
        "{log}"
    );
}

mod properties {
    //! For every input, every pinhole the session asks for names the session's own client
    //! and server and a port above 1023 (DESIGN.md, security invariants).

    use proptest::prelude::*;

    /// Fragments that reach the interesting paths, plus arbitrary bytes.
    fn client_fragment() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"PASV\r\n".to_vec()),
            Just(b"EPSV\r\n".to_vec()),
            Just(b"EPSV ALL\r\n".to_vec()),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| format!(
                "PORT {},{},{},{},{},{}\r\n",
                ip[0],
                ip[1],
                ip[2],
                ip[3],
                port >> 8,
                port & 0xff
            )
            .into_bytes()),
            any::<u16>().prop_map(|port| format!(
                "PORT 10,0,0,2,{},{}\r\n",
                port >> 8,
                port & 0xff
            )
            .into_bytes()),
            any::<u16>().prop_map(|port| format!("EPRT |1|10.0.0.2|{port}|\r\n").into_bytes()),
            any::<u16>().prop_map(|port| format!("EPRT |2|::1|{port}|\r\n").into_bytes()),
            Just(b"AUTH TLS\r\n".to_vec()),
            Just(b"ABOR\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    fn server_fragment() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| format!(
                "227 Entering Passive Mode ({},{},{},{},{},{})\r\n",
                ip[0],
                ip[1],
                ip[2],
                ip[3],
                port >> 8,
                port & 0xff
            )
            .into_bytes()),
            any::<u16>().prop_map(|port| format!(
                "227 ok (203,0,113,2,{},{})\r\n",
                port >> 8,
                port & 0xff
            )
            .into_bytes()),
            any::<u16>().prop_map(|port| format!("229 ok (|||{port}|)\r\n").into_bytes()),
            Just(b"200 ok\r\n".to_vec()),
            Just(b"150 go\r\n".to_vec()),
            Just(b"226 done\r\n".to_vec()),
            Just(b"234 tls\r\n".to_vec()),
            Just(b"230-multi\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    #[derive(Debug, Clone)]
    enum Event {
        Client(Vec<u8>),
        Server(Vec<u8>),
    }

    fn events() -> impl Strategy<Value = Vec<Event>> {
        proptest::collection::vec(
            prop_oneof![
                client_fragment().prop_map(Event::Client),
                server_fragment().prop_map(Event::Server),
            ],
            0..24,
        )
    }

    /// The fuzz target's input format: a header byte (side in the top bit, length below).
    fn encode(events: &[Event]) -> Vec<u8> {
        let mut data = vec![0u8];
        for event in events {
            let (side, bytes) = match event {
                Event::Client(bytes) => (0u8, bytes),
                Event::Server(bytes) => (0x80u8, bytes),
            };
            for chunk in bytes.chunks(0x7f) {
                data.push(side | chunk.len() as u8);
                data.extend_from_slice(chunk);
            }
        }
        data
    }

    /// Pinholes the property below has seen opened, over all its cases.
    static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn every_pinhole_names_the_sessions_own_peers_and_a_high_port(events in events()) {
            // Panics (fails) on any violated invariant; see `checks::check_session`.
            let opened = crate::session::checks::check_session(&encode(&events));
            OPENED.fetch_add(opened, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The property above checks pinholes only if its cases open some.
    #[test]
    fn the_session_property_opens_pinholes() {
        every_pinhole_names_the_sessions_own_peers_and_a_high_port();
        let opened = OPENED.load(std::sync::atomic::Ordering::Relaxed);
        assert!(opened > 50, "only {opened} pinholes over 256 cases");
    }
}

#[tokio::test]
async fn a_session_runs_more_transfers_than_its_pinhole_limit() {
    let mut h = start_with(
        Policy {
            max_pinholes: 2,
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    for round in 0..10u16 {
        h.client_says(b"PASV\r\n").await;
        read_line(&mut h.server).await;
        let port = 30000 + round;
        h.server_says(format!("227 ok (203,0,113,2,{},{})\r\n", port >> 8, port & 0xff).as_bytes())
            .await;
        let reply = read_line(&mut h.client).await;
        assert!(reply.starts_with("227 "), "round {round}: {reply}");
        h.client_says(b"RETR f\r\n").await;
        read_line(&mut h.server).await;
        h.server_says(b"150 go\r\n226 done\r\n").await;
        read_line(&mut h.client).await;
        read_line(&mut h.client).await;
    }
    // The used pinholes were closed when their transfers ended.
    assert_eq!(h.firewall.opened().len(), 10);
    assert!(h.firewall.live().is_empty(), "{:?}", h.firewall.live());
}

#[tokio::test]
async fn an_http_request_on_the_control_port_is_closed_and_its_body_never_acted_on() {
    let mut h = start();
    h.greet().await;
    h.client_says(
        b"POST /x HTTP/1.1\r\nHost: 203.0.113.2:21\r\nContent-Length: 22\r\n\r\nPORT 10,0,0,2,200,1\r\n",
    )
    .await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("421 "), "{line}");
    // The server gets nothing but the close.
    let mut forwarded = Vec::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(1), h.server.read_to_end(&mut forwarded)).await;
    assert!(
        forwarded.is_empty(),
        "{}",
        String::from_utf8_lossy(&forwarded)
    );
    assert!(h.firewall.opened().is_empty());
    assert!(
        tokio::time::timeout(Duration::from_secs(1), h.session)
            .await
            .is_ok(),
        "the session did not end"
    );
}

#[test]
fn ftp_lines_are_not_mistaken_for_http() {
    assert!(looks_like_http(b"GET / HTTP/1.1"));
    assert!(looks_like_http(b"POST /x HTTP/1.0 "));
    assert!(looks_like_http(b"NOOP / HTTP/1.1"));
    assert!(looks_like_http(b"QUUX http://x/ HTTP/2"));
    for line in [
        &b"USER anonymous"[..],
        b"USER HTTP/1.1",
        b"get / http/1.1",
        b"",
        b"PASV",
    ] {
        assert!(!looks_like_http(line), "{}", String::from_utf8_lossy(line));
    }
}

mod lifecycle {
    //! Pinholes end when the server stops serving their address, and the ALG's own replies
    //! keep their place among the server's.

    use super::*;

    fn v4_routed() -> (Topology, Endpoints) {
        (
            Topology::Routed,
            Endpoints {
                client: CLIENT.parse().unwrap(),
                client_facing: SERVER.parse().unwrap(),
                server: SERVER.parse().unwrap(),
                upstream_local: CLIENT.parse().unwrap(),
            },
        )
    }

    async fn exchange(h: &mut Harness, command: &[u8], reply: &[u8]) -> String {
        h.client_says(command).await;
        read_line(&mut h.server).await;
        h.server_says(reply).await;
        read_line(&mut h.client).await
    }

    #[tokio::test]
    async fn a_new_passive_address_closes_the_one_a_failed_transfer_left() {
        let mut h = start();
        h.greet().await;
        exchange(&mut h, b"PASV\r\n", b"227 ok (203,0,113,2,117,48)\r\n").await;
        exchange(&mut h, b"NLST\r\n", b"450 No files found\r\n").await;
        assert_eq!(h.firewall.live().len(), 1);
        exchange(&mut h, b"PASV\r\n", b"227 ok (203,0,113,2,117,49)\r\n").await;
        let live = h.firewall.live();
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0].to.port(), 30001);
        assert_eq!(h.firewall.closed().len(), 1);
        // Any number of failed transfers never reaches the per-session cap.
        for _ in 0..10 {
            exchange(&mut h, b"RETR x\r\n", b"550 No such file\r\n").await;
            let reply = exchange(&mut h, b"PASV\r\n", b"227 ok (203,0,113,2,117,48)\r\n").await;
            assert!(reply.starts_with("227 "), "{reply}");
        }
        assert_eq!(h.firewall.live().len(), 1);
        assert_eq!(h.firewall.closed().len(), 11);
    }

    #[tokio::test]
    async fn a_port_the_server_refuses_closes_its_pinhole_and_one_it_takes_replaces_the_last() {
        let mut h = start();
        h.greet().await;
        let reply = exchange(&mut h, b"PORT 10,0,0,2,195,80\r\n", b"500 Illegal PORT\r\n").await;
        assert!(reply.starts_with("500 "), "{reply}");
        assert!(h.firewall.live().is_empty());
        assert_eq!(h.ports.leased(), 0);
        exchange(&mut h, b"PORT 10,0,0,2,195,81\r\n", b"200 ok\r\n").await;
        exchange(&mut h, b"PORT 10,0,0,2,195,82\r\n", b"200 ok\r\n").await;
        let live = h.firewall.live();
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0].to.port(), 50002);
        assert_eq!(h.ports.leased(), 1);
    }

    #[tokio::test]
    async fn pipelined_transfers_keep_the_pinhole_of_the_next_one() {
        let mut h = start();
        h.greet().await;
        h.client_says(b"PORT 10,0,0,2,195,80\r\nRETR a\r\nPORT 10,0,0,2,195,81\r\nRETR b\r\n")
            .await;
        for _ in 0..4 {
            read_line(&mut h.server).await;
        }
        assert_eq!(h.firewall.live().len(), 2);
        // The first transfer runs and ends before the server reads the second PORT.
        h.server_says(b"200 ok\r\n150 here\r\n226 done\r\n").await;
        for _ in 0..3 {
            read_line(&mut h.client).await;
        }
        let live = h.firewall.live();
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0].to.port(), 50001);
        h.server_says(b"200 ok\r\n150 here\r\n226 done\r\n").await;
        for _ in 0..3 {
            read_line(&mut h.client).await;
        }
        assert!(h.firewall.live().is_empty());
    }

    #[tokio::test]
    async fn expired_pinholes_are_closed_through_the_firewall_when_forgotten() {
        let mut h = start_with(
            Policy {
                pinhole_timeout: Duration::from_millis(50),
                ..policy()
            },
            FakeFirewall::default(),
        );
        h.greet().await;
        exchange(&mut h, b"PASV\r\n", b"227 ok (203,0,113,2,117,48)\r\n").await;
        exchange(&mut h, b"RETR a\r\n", b"150 here\r\n").await;
        // The transfer's reply never came; the next data command finds the pinhole expired.
        h.server_says(b"426 broken\r\n").await;
        read_line(&mut h.client).await;
        exchange(&mut h, b"RETR b\r\n", b"150 here\r\n").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
        read_line(&mut h.server).await;
        let closed = h.firewall.closed();
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert_eq!(closed[0].to.port(), 30000);
    }

    #[tokio::test]
    async fn the_algs_own_replies_wait_for_the_server_replies_before_them() {
        let mut h = start();
        h.greet().await;
        h.client_says(b"TYPE I\r\nPORT 10,0,0,9,195,80\r\nNOOP\r\n")
            .await;
        assert_eq!(read_line(&mut h.server).await, "TYPE I\r\n");
        assert_eq!(read_line(&mut h.server).await, "NOOP\r\n");
        assert_silent(&mut h.client).await;
        h.server_says(b"200 Switching to Binary mode.\r\n").await;
        assert_eq!(
            read_line(&mut h.client).await,
            "200 Switching to Binary mode.\r\n"
        );
        let refusal = read_line(&mut h.client).await;
        assert!(refusal.starts_with("501 "), "{refusal}");
        h.server_says(b"200 NOOP ok.\r\n").await;
        assert_eq!(read_line(&mut h.client).await, "200 NOOP ok.\r\n");
    }

    #[tokio::test]
    async fn an_own_reply_queued_behind_an_unsolicited_reply_is_sent_after_it_once() {
        let mut h = start();
        h.greet().await;
        // The server starts a reply nobody asked for; meanwhile the ALG refuses a bounce.
        h.server_says(b"421-Shutting down soon\r\n").await;
        assert_eq!(read_line(&mut h.client).await, "421-Shutting down soon\r\n");
        h.client_says(b"PORT 10,0,0,9,195,80\r\n").await;
        assert_silent(&mut h.client).await;
        h.server_says(b"421 not yet\r\n").await;
        assert_eq!(read_line(&mut h.client).await, "421 not yet\r\n");
        let refusal = read_line(&mut h.client).await;
        assert!(refusal.starts_with("501 "), "{refusal}");
        // Replies and commands still pair up.
        let reply = exchange(&mut h, b"NOOP\r\n", b"200 ok\r\n").await;
        assert_eq!(reply, "200 ok\r\n");
        assert_silent(&mut h.client).await;
    }

    #[tokio::test]
    async fn an_over_long_reply_line_is_cut_and_the_replies_stay_matched() {
        let mut h = start();
        h.greet().await;
        h.client_says(b"PWD\r\n").await;
        read_line(&mut h.server).await;
        let mut long = b"257 \"/".to_vec();
        long.extend(std::iter::repeat_n(b'd', 3000));
        long.extend(b"\" is the current directory\r\n");
        h.server_says(&long).await;
        let cut = read_line(&mut h.client).await;
        assert_eq!(cut.len(), 512);
        assert!(
            cut.starts_with("257 \"/ddd") && cut.ends_with("ddd\r\n"),
            "{cut}"
        );
        // The same inside a multi-line reply: its end is still found.
        h.client_says(b"STAT\r\n").await;
        read_line(&mut h.server).await;
        let mut multi = b"211-status\r\n ".to_vec();
        multi.extend(std::iter::repeat_n(b'x', 3000));
        multi.extend(b"\r\n211 End\r\n");
        h.server_says(&multi).await;
        for _ in 0..3 {
            read_line(&mut h.client).await;
        }
        let reply = exchange(&mut h, b"PASV\r\n", b"227 ok (203,0,113,2,117,48)\r\n").await;
        // Taken as the PASV's answer (an unsolicited 227 would open nothing).
        assert!(reply.starts_with("227 "), "{reply}");
        assert_eq!(h.firewall.live().len(), 1);
    }

    #[tokio::test]
    async fn the_deny_list_also_refuses_data_commands() {
        let mut h = start_with(
            Policy {
                deny: vec![b"PORT".to_vec(), b"EPRT".to_vec()],
                allow: vec![b"USER".to_vec()],
                ..policy()
            },
            FakeFirewall::default(),
        );
        h.greet().await;
        h.client_says(b"PORT 10,0,0,2,195,80\r\neprt |1|10.0.0.2|50001|\r\n")
            .await;
        assert!(read_line(&mut h.client).await.starts_with("502 PORT"));
        assert!(read_line(&mut h.client).await.starts_with("502 EPRT"));
        // The allow list does not refuse the data commands it does not name.
        h.client_says(b"PASV\r\n").await;
        assert_eq!(read_line(&mut h.server).await, "PASV\r\n");
        assert!(h.firewall.live().is_empty());
    }

    #[tokio::test]
    async fn a_routed_port_is_forwarded_as_checked() {
        let (topology, ends) = v4_routed();
        let mut h = start_topology(topology, ends, policy(), FakeFirewall::default());
        h.greet().await;
        h.client_says(b"PORT 010,0,0,002,195,080\r\nEPRT |1|10.0.0.2|50001|\r\n")
            .await;
        assert_eq!(read_line(&mut h.server).await, "PORT 10,0,0,2,195,80\r\n");
        assert_eq!(
            read_line(&mut h.server).await,
            "EPRT |1|10.0.0.2|50001|\r\n"
        );
    }

    #[tokio::test]
    async fn a_session_that_opens_like_http_is_closed() {
        for first in [
            b"NOOP / HTTP/1.1\r\n".to_vec(),
            [
                b"GET /".to_vec(),
                vec![b'a'; 3000],
                b" HTTP/1.1\r\n".to_vec(),
            ]
            .concat(),
        ] {
            let mut h = start();
            h.greet().await;
            h.client_says(&first).await;
            h.client_says(b"Host: x\r\n\r\nPORT 10,0,0,2,195,80\r\n")
                .await;
            let reply = read_line(&mut h.client).await;
            assert!(reply.starts_with("421 "), "{reply}");
            assert!(h.firewall.live().is_empty());
            let mut forwarded = Vec::new();
            h.server.read_to_end(&mut forwarded).await.unwrap();
            assert!(forwarded.is_empty(), "{forwarded:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_loses_its_session_after_the_idle_timeout() {
    let mut h = start_with(
        Policy {
            idle_timeout: Duration::from_secs(5),
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    // The server streams a long reply; the client reads none of it, so the session's writes
    // to the client fill its buffer and block.
    let mut server = h.server;
    let flood = tokio::spawn(async move {
        let _ = server.write_all(b"211-status\r\n").await;
        for _ in 0..100_000 {
            if server
                .write_all(b" xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n")
                .await
                .is_err()
            {
                break;
            }
        }
        server
    });
    let ending = tokio::time::timeout(Duration::from_secs(60), h.session)
        .await
        .expect("the session outlived a client that reads nothing")
        .unwrap();
    assert_eq!(ending, Ending::IoError);
    drop(h.client);
    flood.abort();
}

/// A session switched to FTPS passthrough, with the handshake's first bytes relayed.
async fn in_tls_passthrough(firewall: FakeFirewall) -> Harness {
    let mut h = start_with(
        Policy {
            tls: TlsPolicy::Passthrough,
            idle_timeout: Duration::from_secs(5),
            ..policy()
        },
        firewall,
    );
    h.greet().await;
    h.client_says(b"AUTH TLS\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"234 AUTH TLS ok\r\n").await;
    read_line(&mut h.client).await;
    h.client_says(b"\x16\x03\x01").await;
    assert_eq!(read_n(&mut h.server, 3).await, b"\x16\x03\x01");
    h
}

#[tokio::test(start_paused = true)]
async fn tls_passthrough_ends_at_the_idle_timeout_when_no_data_connection_lives() {
    let firewall = FakeFirewall::default();
    firewall.set_connections_alive(false);
    let mut h = in_tls_passthrough(firewall).await;
    // Traffic in either direction keeps it going.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        h.server_says(b"\x17\x03\x03").await;
        assert_eq!(read_n(&mut h.client, 3).await, b"\x17\x03\x03");
    }
    assert!(!h.session.is_finished());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), h.session)
            .await
            .unwrap()
            .unwrap(),
        Ending::IdleTimeout
    );
}

#[tokio::test(start_paused = true)]
async fn tls_passthrough_waits_while_a_data_connection_lives_and_relays_half_closes() {
    let mut h = in_tls_passthrough(FakeFirewall::default()).await;
    // An encrypted transfer (the fake says a flow joins the two hosts): silence for an hour.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!h.session.is_finished());
    // The client closes its side; the server's last bytes still reach it.
    h.client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    h.server.write_all(b"bye").await.unwrap();
    let mut buf = [0u8; 3];
    h.client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"bye");
    assert_eq!(h.server.read_to_end(&mut rest).await.unwrap(), 0);
    h.server.shutdown().await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), h.session)
            .await
            .unwrap()
            .unwrap(),
        Ending::TlsPassthrough
    );
}

#[tokio::test(start_paused = true)]
async fn a_half_closed_tls_passthrough_ends_at_the_idle_timeout_whatever_conntrack_says() {
    // The fake says a flow joins the two hosts, as a missing conntrack tool would.
    let mut h = in_tls_passthrough(FakeFirewall::default()).await;
    // The server closes; the client vanished and never answers.
    h.server.shutdown().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(h.client.read_to_end(&mut rest).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), h.session)
            .await
            .unwrap()
            .unwrap(),
        Ending::IdleTimeout
    );
}

#[tokio::test]
async fn an_oversized_multiline_227_is_answered_451_and_its_rest_never_reaches_the_client() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    let mut reply = b"227-Entering Passive Mode (203,0,113,2,117,48)\r\n".to_vec();
    for i in 0..100 {
        reply.extend_from_slice(format!("227-{i:03} {}\r\n", "x".repeat(100)).as_bytes());
    }
    reply.extend_from_slice(b"227 Entering Passive Mode (203,0,113,2,117,48)\r\n");
    h.server_says(&reply).await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("451 ftp-alg:"), "{line}");
    // The next command's answer is the next thing the client reads.
    h.client_says(b"NOOP\r\n").await;
    assert_eq!(read_line(&mut h.server).await, "NOOP\r\n");
    h.server_says(b"200 NOOP ok\r\n").await;
    assert_eq!(read_line(&mut h.client).await, "200 NOOP ok\r\n");
    assert!(h.firewall.opened().is_empty());
}

#[tokio::test]
async fn a_227_answering_a_port_settles_the_port() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    read_line(&mut h.server).await;
    // A broken server: any 2xx accepts the address, so its pinhole is confirmed and a
    // following PASV replaces it.
    h.server_says(b"227 Entering Passive Mode (203,0,113,2,117,48)\r\n")
        .await;
    read_line(&mut h.client).await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 Entering Passive Mode (203,0,113,2,117,49)\r\n")
        .await;
    read_line(&mut h.client).await;
    let live = h.firewall.live();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].to.port(), 30001);
}

#[tokio::test(start_paused = true)]
async fn a_stat_answered_mid_transfer_does_not_end_it() {
    let mut h = start_with(
        Policy {
            idle_timeout: Duration::from_secs(5),
            ..policy()
        },
        FakeFirewall::default(),
    );
    h.greet().await;
    h.client_says(b"PASV\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"227 ok (203,0,113,2,117,48)\r\n").await;
    read_line(&mut h.client).await;
    h.client_says(b"RETR big\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"150 Opening data connection\r\n").await;
    read_line(&mut h.client).await;
    // RFC 959: STAT during a transfer is answered at once.
    h.client_says(b"STAT\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"213 Status: 1000 of 9999999 bytes\r\n")
        .await;
    read_line(&mut h.client).await;
    // Long after the pinhole timeout, a PORT pipelined for the next transfer.
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"200 ok\r\n").await;
    read_line(&mut h.client).await;
    // The running transfer's pinhole is still held (it answers the idle check)...
    assert!(
        h.firewall
            .live()
            .iter()
            .any(|p| p.to == "203.0.113.2:30000".parse().unwrap()),
        "{:?}",
        h.firewall.live()
    );
    // ...and the session waits out an hour of silence while the data connection lives.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!h.session.is_finished());
    h.server_says(b"226 done\r\n").await;
    assert_eq!(read_line(&mut h.client).await, "226 done\r\n");
}

#[tokio::test]
async fn reverse_mode_never_forwards_an_unsolicited_passive_reply() {
    let mut h = start_reverse();
    h.greet().await;
    h.client_says(b"NOOP\r\n").await;
    read_line(&mut h.server).await;
    // The backend answers with a passive reply naming its private address.
    h.server_says(b"227 Entering Passive Mode (198,51,100,2,117,48)\r\n")
        .await;
    let line = read_line(&mut h.client).await;
    assert!(line.starts_with("425 "), "{line}");
    assert!(!line.contains("198,51,100,2"), "{line}");
    assert!(h.firewall.opened().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_pinhole_install_cut_off_by_the_idle_bound_returns_its_port_lease() {
    let firewall = FakeFirewall::default();
    // An install that outlasts the idle timeout, which bounds each relay step.
    firewall.set_open_delay(Duration::from_secs(60));
    let mut h = start_with(
        Policy {
            idle_timeout: Duration::from_secs(5),
            ..policy()
        },
        firewall,
    );
    h.greet().await;
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ending = tokio::time::timeout(Duration::from_secs(1), h.session)
        .await
        .expect("the session ended")
        .expect("session task");
    assert_eq!(ending, Ending::IoError);
    assert_eq!(h.ports.leased(), 0, "the cut-off install kept its lease");
}

#[tokio::test]
async fn checksum_commands_with_digits_in_the_verb_pass() {
    let mut h = start();
    h.greet().await;
    h.client_says(b"XSHA256 big.iso\r\nMD5 big.iso\r\n").await;
    assert_eq!(read_line(&mut h.server).await, "XSHA256 big.iso\r\n");
    assert_eq!(read_line(&mut h.server).await, "MD5 big.iso\r\n");
}

#[tokio::test]
async fn reverse_mode_settles_a_passive_reply_it_replaced_as_refused() {
    let mut h = start_reverse();
    h.greet().await;
    // EPSV ALL answered with a 229: the client reads 425, so EPSV ALL is not in effect and
    // its fallback PASV goes through.
    h.client_says(b"EPSV ALL\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"229 Entering Extended Passive Mode (|||30001|)\r\n")
        .await;
    assert!(read_line(&mut h.client).await.starts_with("425 "));
    h.client_says(b"PASV\r\n").await;
    assert_eq!(read_line(&mut h.server).await, "PASV\r\n");
}

#[tokio::test(start_paused = true)]
async fn a_pinhole_close_cut_off_by_the_idle_bound_returns_its_lease_once() {
    let firewall = FakeFirewall::default();
    let mut h = start_with(
        Policy {
            idle_timeout: Duration::from_secs(5),
            ..policy()
        },
        firewall,
    );
    h.greet().await;
    // A transfer ends while the pinhole's close outlasts the idle timeout, which bounds
    // each relay step.
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    read_line(&mut h.server).await;
    h.server_says(b"200 PORT ok\r\n").await;
    read_line(&mut h.client).await;
    assert_eq!(h.ports.leased(), 1);
    h.client_says(b"RETR f\r\n").await;
    read_line(&mut h.server).await;
    h.firewall.set_close_delay(Duration::from_secs(60));
    h.server_says(b"150 here it comes\r\n226 done\r\n").await;
    let ending = tokio::time::timeout(Duration::from_secs(300), h.session)
        .await
        .expect("the session ended")
        .expect("session task");
    assert_eq!(ending, Ending::IoError);
    // Closed once: the close cut off is not asked again (that would drop a co-holder's
    // count of a shared element).
    assert_eq!(h.firewall.closed().len(), 1, "{:?}", h.firewall.closed());
    assert!(h.firewall.live().is_empty());
    assert_eq!(h.ports.leased(), 0, "the cut-off close kept its lease");
}

#[tokio::test]
async fn a_gateway_port_still_mapped_in_the_kernel_is_skipped_for_another() {
    let mut h = start();
    h.greet().await;
    // The leased port's mapping is still in the kernel (a close that failed earlier).
    h.firewall.fail_next_open_with(FirewallError::Conflict {
        set: "dnat_to".into(),
    });
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    let forwarded = read_line(&mut h.server).await;
    assert!(forwarded.starts_with("PORT "), "{forwarded}");
    h.server_says(b"200 PORT ok\r\n").await;
    assert!(read_line(&mut h.client).await.starts_with("200"));
    assert_eq!(h.firewall.live().len(), 1);
    // The refused port rests (until that mapping's timeout); the one in use stays leased.
    assert_eq!(h.ports.leased(), 1);
}

#[tokio::test]
async fn a_session_whose_task_panics_still_closes_its_pinholes() {
    let mut h = start();
    h.greet().await;
    // Two PORTs pipelined: the first one's pinhole is held (its reply is still to come) when
    // a bug panics the session's task in the second one's install.
    h.client_says(b"PORT 10,0,0,2,195,80\r\n").await;
    read_line(&mut h.server).await;
    assert_eq!(h.firewall.live().len(), 1);
    h.firewall.panic_on_next_open();
    h.client_says(b"PORT 10,0,0,2,195,81\r\n").await;
    let joined = (&mut h.session).await;
    assert!(
        joined.is_err_and(|e| e.is_panic()),
        "the session did not panic"
    );
    for _ in 0..100 {
        if h.firewall.live().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(h.firewall.live().is_empty(), "{:?}", h.firewall.live());
    assert_eq!(h.firewall.closed().len(), 1);
    assert_eq!(h.ports.leased(), 0);
}

//! Attack tests: what a hostile client, a hostile server and an attacker on the WAN segment
//! can make the ALG do (DESIGN.md "Security invariants", issue 4).
//!
//! Each test builds its own lab (client 10.0.0.2 — gateway — server 203.0.113.2, plus an
//! attacker 203.0.113.66 / third host 198.51.100.7 on the WAN bridge where needed), runs the
//! daemon in the gateway, talks to it with raw control connections and a scripted server, and
//! judges by what the kernel holds (the ALG's sets and maps, its `passive_admitted` /
//! `active_admitted` counters), what reached the server, and the daemon's log. Every negative
//! check has a positive control in the same lab, so a test cannot pass because nothing could
//! be observed.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

use common::alg_binary;
use ftp_alg::lab::attacker::{
    ATTACKER_IP, AttackLab, Canned, Control, REPLY_TIMEOUT, ScriptedServer, THIRD_HOST_IP,
    accept_within, all_pinhole_elements, connect_in, counter_packets, gateway_port_in, listen_in,
    named_counter, pinhole_elements, plain_ftp,
};
use ftp_alg::lab::raw_client::parse_227;
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, CLIENT_IP, ClientNatLab, ClientNatOptions, GATEWAY_LAN_IP,
    GATEWAY_WAN_IP, Netns, SERVER_IP,
};

/// The passive port the scripted server announces by default.
const PASV_PORT: u16 = 30500;
const GREETING: &[u8] = b"220 scripted test server\r\n";
/// How long a connection attempt that must be blocked is given.
const BLOCKED: Duration = Duration::from_millis(1500);

fn control_addr() -> SocketAddrV4 {
    SocketAddrV4::new(SERVER_IP, 21)
}

fn plain_lab() -> ClientNatLab {
    ClientNatLab::build(ClientNatOptions::default()).expect("building the lab")
}

fn attack_lab() -> AttackLab {
    AttackLab::build(ClientNatOptions::default()).expect("building the attack lab")
}

fn start_alg(gateway: &Netns, extra: &[&str]) -> AlgDaemon {
    start_alg_tuned(gateway, |_| {}, extra)
}

/// Like [`start_alg`], with the lab's own settings (pinhole timeout, active ports) changed.
fn start_alg_tuned(
    gateway: &Netns,
    tune: impl FnOnce(&mut AlgOptions),
    extra: &[&str],
) -> AlgDaemon {
    let mut options = AlgOptions::new(alg_binary());
    tune(&mut options);
    options.extra_args = extra.iter().map(ToString::to_string).collect();
    AlgDaemon::start(gateway, &options).expect("starting ftp-alg")
}

/// A scripted server in the lab's server namespace: [`plain_ftp`], with `answer` asked first.
fn scripted(
    lab: &ClientNatLab,
    answer: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> ScriptedServer {
    ScriptedServer::start(
        &lab.server,
        control_addr(),
        GREETING,
        plain_ftp(PASV_PORT, answer),
    )
    .expect("scripted server")
}

/// A scripted server whose answers to `verb` come from the returned queue (when not empty).
fn scripted_with_queue(
    lab: &ClientNatLab,
    verbs: &'static [&'static str],
) -> (ScriptedServer, Canned) {
    let queue = Canned::default();
    let answers = queue.clone();
    let server = scripted(lab, move |text| {
        let verb = text.split(' ').next().unwrap_or_default();
        if verbs.iter().any(|v| v.eq_ignore_ascii_case(verb)) {
            answers.pop()
        } else {
            None
        }
    });
    (server, queue)
}

fn login(lab: &ClientNatLab) -> Control {
    Control::login(&lab.client, control_addr(), "mallory", "secret")
        .expect("logging in through the ALG")
}

fn pinholes(lab: &ClientNatLab) -> Vec<String> {
    all_pinhole_elements(&lab.gateway).expect("listing the ALG's sets and maps")
}

fn set(lab: &ClientNatLab, kind: &str, name: &str) -> Vec<String> {
    let mut elements = pinhole_elements(&lab.gateway, kind, name).expect("listing a set");
    elements.sort();
    elements
}

/// `(passive_admitted, active_admitted)` packet counts.
fn admitted(lab: &ClientNatLab) -> (u64, u64) {
    (
        counter_packets(&lab.gateway, "passive_admitted").expect("counter passive_admitted"),
        counter_packets(&lab.gateway, "active_admitted").expect("counter active_admitted"),
    )
}

fn context(alg: &AlgDaemon, ctl: &Control) -> String {
    format!(
        "--- control transcript:\n{}\n--- ftp-alg log:\n{}",
        ctl.transcript(),
        alg.output()
    )
}

fn assert_nothing_opened(lab: &ClientNatLab, alg: &AlgDaemon, ctl: &Control) {
    let left = pinholes(lab);
    assert!(
        left.is_empty(),
        "pinholes opened: {left:#?}\n{}",
        context(alg, ctl)
    );
    assert_eq!(admitted(lab), (0, 0), "admitted\n{}", context(alg, ctl));
}

/// The daemon's log once `done` holds for it (the log is read from a pipe, so it may lag
/// behind a reply a little), or after 3 s.
fn log_when(alg: &AlgDaemon, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let log = alg.output();
        if done(&log) || start.elapsed() > Duration::from_secs(3) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_refusals(log: &str, needle: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("session{") && l.contains("refused") && l.contains(needle))
        .count()
}

/// Log lines of a refusal inside a session span that mention `needle`, once there are at
/// least `expected` of them (or after a bounded wait).
fn refusals_logged(alg: &AlgDaemon, needle: &str, expected: usize) -> usize {
    count_refusals(
        &log_when(alg, |log| count_refusals(log, needle) >= expected),
        needle,
    )
}

/// The lines the server received whose verb is a data-channel verb.
fn data_commands_received(server: &ScriptedServer) -> Vec<String> {
    server
        .lines()
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .filter(|l| {
            let verb = l.split(' ').next().unwrap_or_default().trim_end();
            ["PORT", "EPRT", "PASV", "EPSV", "LPRT", "LPSV"]
                .iter()
                .any(|v| v.eq_ignore_ascii_case(verb))
        })
        .collect()
}

fn received_lines(server: &ScriptedServer) -> Vec<Vec<u8>> {
    server.lines()
}

/// Connection attempts run at once, each given `timeout`: whether each got through.
fn attempts(list: &[(&Netns, Option<IpAddr>, SocketAddr)], timeout: Duration) -> Vec<bool> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = list
            .iter()
            .map(|&(ns, from, to)| {
                scope.spawn(move || {
                    connect_in(ns, from, to, timeout)
                        .expect("namespace thread")
                        .is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("attempt thread"))
            .collect()
    })
}

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn port_command(ip: Ipv4Addr, port: u16) -> String {
    let [a, b, c, d] = ip.octets();
    format!("PORT {a},{b},{c},{d},{},{}", port >> 8, port & 0xff)
}

fn pasv_reply(ip: Ipv4Addr, port: u16) -> Vec<u8> {
    let [a, b, c, d] = ip.octets();
    format!(
        "227 Entering Passive Mode ({a},{b},{c},{d},{},{})\r\n",
        port >> 8,
        port & 0xff
    )
    .into_bytes()
}

fn passive_element(port: u16) -> String {
    format!("{CLIENT_IP} . {SERVER_IP} . {port}")
}

fn active_element(port: u16) -> String {
    format!("{SERVER_IP} . {CLIENT_IP} . {port}")
}

// ---------------------------------------------------------------------------------------
// 1. FTP bounce (RFC 2577, CVE-2001-0405)
// ---------------------------------------------------------------------------------------

#[test]
fn bounce_port_and_eprt_naming_another_host_or_a_low_port_get_501_and_open_nothing() {
    require_lab!();
    let lab = plain_lab();
    let server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(&lab);

    let mut cases: Vec<(String, &str)> = Vec::new();
    let foreign = [
        "198.51.100.7",    // a third host
        "10.0.0.1",        // the gateway, LAN side
        "203.0.113.1",     // the gateway, WAN side
        "127.0.0.1",       // loopback
        "255.255.255.255", // limited broadcast
        "10.0.0.255",      // the LAN's broadcast
        "0.0.0.0",
        "203.0.113.2", // the server itself (bounce to another of its ports)
        "10.0.0.3",    // a LAN neighbour
    ];
    for host in foreign {
        let ip: Ipv4Addr = host.parse().unwrap();
        cases.push((port_command(ip, 51201), "is not your own address"));
        cases.push((format!("EPRT |1|{host}|51201|"), "is not your own address"));
    }
    for port in [1u16, 20, 21, 22, 25, 80, 111, 514, 1023] {
        cases.push((port_command(CLIENT_IP, port), "below 1024"));
        cases.push((format!("EPRT |1|{CLIENT_IP}|{port}|"), "below 1024"));
    }
    for (command, reason) in &cases {
        let reply = ctl
            .cmd(command)
            .unwrap_or_else(|e| panic!("{command}: {e}\n{}", context(&alg, &ctl)));
        assert_eq!(reply.code, 501, "{command} -> {}", reply.text);
        assert!(
            reply.text.contains(reason),
            "{command} -> {:?} does not say {reason:?}",
            reply.text
        );
    }
    // IPv6 in EPRT on an IPv4 control connection, the client's address IPv4-mapped included:
    // the wrong family (RFC 2428: 522), never a pinhole.
    for command in [
        "EPRT |2|::ffff:10.0.0.2|51201|",
        "EPRT |2|::ffff:198.51.100.7|51201|",
        "EPRT |2|fd00::2|51201|",
        "EPRT |2|::1|51201|",
    ] {
        let reply = ctl.cmd(command).expect(command);
        assert_eq!(reply.code, 522, "{command} -> {}", reply.text);
    }
    assert!(
        data_commands_received(&server).is_empty(),
        "a refused command reached the server: {:?}",
        data_commands_received(&server)
    );
    assert_nothing_opened(&lab, &alg, &ctl);
    let logged = refusals_logged(&alg, "PORT refused", cases.len() / 2)
        + refusals_logged(&alg, "EPRT refused", cases.len() / 2);
    assert_eq!(
        logged,
        cases.len() + 4,
        "each refusal must be logged in its session's span\n{}",
        alg.output()
    );

    // Control: the client's own address and a high port open exactly that path.
    let reply = ctl.cmd(&port_command(CLIENT_IP, 51201)).expect("PORT");
    assert_eq!(reply.code, 200, "{}", context(&alg, &ctl));
    assert_eq!(set(&lab, "set", "active_pin"), vec![active_element(51201)]);
    let forwarded = data_commands_received(&server);
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert!(
        gateway_port_in(forwarded[0].as_bytes()).is_some(),
        "the server must see the gateway's address: {forwarded:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Hostile server: 227/229 naming another host or a low port
// ---------------------------------------------------------------------------------------

#[test]
fn with_policy_refuse_a_227_naming_another_host_or_a_low_port_gets_425_and_opens_nothing() {
    require_lab!();
    let lab = plain_lab();
    let (server, next) = scripted_with_queue(&lab, &["PASV", "EPSV"]);
    let alg = start_alg(&lab.gateway, &["--pasv-address-policy", "refuse"]);
    let mut ctl = login(&lab);
    let foreign = [
        THIRD_HOST_IP,
        GATEWAY_WAN_IP,
        GATEWAY_LAN_IP,
        CLIENT_IP,
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::BROADCAST,
    ];
    for ip in foreign {
        next.push(pasv_reply(ip, PASV_PORT));
        let reply = ctl.cmd("PASV").expect("PASV");
        assert_eq!(reply.code, 425, "227 naming {ip}: {}", context(&alg, &ctl));
        assert!(
            reply
                .text
                .contains(&format!("announced {ip}, not its own address")),
            "{}",
            reply.text
        );
    }
    // A low port is refused even on the server's own address, in 227 and in 229.
    for (verb, answer) in [
        ("PASV", pasv_reply(SERVER_IP, 80)),
        ("PASV", pasv_reply(SERVER_IP, 1023)),
        (
            "EPSV",
            b"229 Entering Extended Passive Mode (|||21|)\r\n".to_vec(),
        ),
    ] {
        next.push(answer);
        let reply = ctl.cmd(verb).expect(verb);
        assert_eq!(reply.code, 425, "{}", context(&alg, &ctl));
        assert!(reply.text.contains("below 1024"), "{}", reply.text);
    }
    assert_nothing_opened(&lab, &alg, &ctl);
    assert_eq!(
        refusals_logged(&alg, "425", foreign.len() + 3),
        foreign.len() + 3
    );

    // Control: the server's own address opens exactly client -> server:port.
    next.push(pasv_reply(SERVER_IP, PASV_PORT));
    let reply = ctl.cmd("PASV").expect("PASV");
    assert_eq!(reply.code, 227, "{}", context(&alg, &ctl));
    assert_eq!(
        set(&lab, "set", "passive_pin"),
        vec![passive_element(PASV_PORT)]
    );
    drop(server);
}

#[test]
fn with_policy_rewrite_a_hostile_227_is_rewritten_to_the_server_and_only_the_server_path_opens() {
    require_lab!();
    let lab = attack_lab();
    let (_server, next) = scripted_with_queue(&lab, &["PASV", "EPSV"]);
    let alg = start_alg(&lab.gateway, &[]);
    let cases = [
        (THIRD_HOST_IP, 30501u16),
        (GATEWAY_WAN_IP, 30502),
        (GATEWAY_LAN_IP, 30503),
        (CLIENT_IP, 30504),
    ];
    // The server and the third host (the attacker) both listen on every announced port.
    let on_server: Vec<TcpListener> = cases
        .iter()
        .map(|&(_, port)| listen_in(&lab.server, v4(SERVER_IP, port)).expect("server listener"))
        .collect();
    let on_third: Vec<TcpListener> = cases
        .iter()
        .map(|&(_, port)| {
            listen_in(&lab.attacker, v4(THIRD_HOST_IP, port)).expect("third-host listener")
        })
        .collect();
    let mut ctl = login(&lab);
    // Each 227 is rewritten and its pinhole names the client and the server, nothing else.
    // A new 227 replaces the address before it (RFC 959), so each case has its own session.
    let mut sessions = Vec::new();
    for (n, &(ip, port)) in cases.iter().enumerate() {
        next.push(pasv_reply(ip, port));
        let reply = ctl.cmd("PASV").expect("PASV");
        assert_eq!(reply.code, 227, "{}", context(&alg, &ctl));
        assert_eq!(
            parse_227(&reply.text),
            Some(SocketAddrV4::new(SERVER_IP, port)),
            "the 227 naming {ip} must be rewritten to the server: {}",
            reply.text
        );
        let so_far: Vec<String> = cases[..=n]
            .iter()
            .map(|&(_, p)| passive_element(p))
            .collect();
        assert_eq!(set(&lab, "set", "passive_pin"), so_far);
        assert_eq!(pinholes(&lab).len(), n + 1, "{:#?}", pinholes(&lab));
        // Keep one pinhole per case open, each in a session of its own, for the path checks.
        if sessions.len() + 1 < cases.len() {
            sessions.push(std::mem::replace(&mut ctl, login(&lab)));
        }
    }
    sessions.push(ctl);
    let expected: Vec<String> = cases.iter().map(|&(_, p)| passive_element(p)).collect();
    assert_eq!(set(&lab, "set", "passive_pin"), expected);
    assert_eq!(pinholes(&lab).len(), cases.len(), "{:#?}", pinholes(&lab));

    // The path the hostile server asked for does not exist: the client cannot reach the
    // third host on those ports, and the third host (the attacker) cannot reach the client or
    // come in through the gateway on them.
    let mut tries = Vec::new();
    for &(_, port) in &cases {
        tries.push((&lab.client, None, v4(THIRD_HOST_IP, port)));
        tries.push((&lab.attacker, None, v4(CLIENT_IP, port)));
        tries.push((
            &lab.attacker,
            Some(IpAddr::V4(THIRD_HOST_IP)),
            v4(CLIENT_IP, port),
        ));
        tries.push((&lab.attacker, None, v4(GATEWAY_WAN_IP, port)));
    }
    let got_through = attempts(&tries, BLOCKED);
    let leaks: Vec<_> = tries
        .iter()
        .zip(&got_through)
        .filter(|(_, ok)| **ok)
        .map(|((ns, from, to), _)| format!("{} {from:?} -> {to}", ns.name()))
        .collect();
    assert!(leaks.is_empty(), "connections got through: {leaks:?}");
    for listener in &on_third {
        assert!(
            accept_within(listener, Duration::from_millis(50)).is_none(),
            "the third host was reached"
        );
    }
    assert_eq!(admitted(&lab), (0, 0));

    // Only the rewritten path works, once each.
    for (&(_, port), listener) in cases.iter().zip(&on_server) {
        let data = connect_in(
            &lab.client,
            None,
            v4(SERVER_IP, port),
            Duration::from_secs(5),
        )
        .expect("client thread");
        assert!(
            data.is_ok(),
            "server:{port} unreachable: {data:?}\n{}",
            alg.output()
        );
        let (_, peer) = accept_within(listener, Duration::from_secs(2)).expect("server accept");
        assert_eq!(peer.ip(), IpAddr::V4(GATEWAY_WAN_IP), "masqueraded client");
    }
    assert_eq!(admitted(&lab), (cases.len() as u64, 0));
    assert!(pinholes(&lab).is_empty(), "{:#?}", pinholes(&lab));
    // Low ports stay refused under rewrite.
    let ctl = sessions.last_mut().expect("a session");
    for (verb, answer) in [
        ("PASV", pasv_reply(THIRD_HOST_IP, 80)),
        ("PASV", pasv_reply(SERVER_IP, 22)),
        (
            "EPSV",
            b"229 Entering Extended Passive Mode (|||1023|)\r\n".to_vec(),
        ),
    ] {
        next.push(answer);
        let reply = ctl.cmd(verb).expect(verb);
        assert_eq!(reply.code, 425, "{}", context(&alg, ctl));
    }
    assert!(pinholes(&lab).is_empty(), "{:#?}", pinholes(&lab));
}

// ---------------------------------------------------------------------------------------
// 3. Direction spoofing
// ---------------------------------------------------------------------------------------

#[test]
fn a_port_sent_by_the_server_and_a_227_sent_by_the_client_open_nothing() {
    require_lab!();
    let lab = plain_lab();
    let server = scripted(&lab, |text| {
        if text.eq_ignore_ascii_case("NOOP") {
            Some(b"PORT 10,0,0,2,200,1\r\nEPRT |1|10.0.0.2|51202|\r\n200 OK\r\n".to_vec())
        } else if text.starts_with("227") || text.starts_with("229") {
            // The server plays along and "answers" the client's 227 with a 227.
            Some(pasv_reply(SERVER_IP, PASV_PORT))
        } else {
            None
        }
    });
    let alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(&lab);

    ctl.send(b"NOOP\r\n").expect("NOOP");
    let got = ctl
        .read_until(b"200 OK\r\n", REPLY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&alg, &ctl)));
    assert_eq!(
        got, b"PORT 10,0,0,2,200,1\r\nEPRT |1|10.0.0.2|51202|\r\n200 OK\r\n",
        "server lines must reach the client untouched"
    );

    let from_client = [
        "227 Entering Passive Mode (203,0,113,2,119,36)",
        "229 Entering Extended Passive Mode (|||30500|)",
    ];
    // A reply sent as a command has no verb: the ALG answers it, the server never sees it.
    for line in from_client {
        let reply = ctl.cmd(line).expect("client-sent 227");
        assert_eq!(reply.code, 500, "{}", reply.text);
    }
    let received: Vec<String> = received_lines(&server)
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    for line in from_client {
        assert!(
            !received.contains(&format!("{line}\r\n")),
            "{line:?} was forwarded as a command: {received:?}"
        );
    }
    assert_nothing_opened(&lab, &alg, &ctl);
}

// ---------------------------------------------------------------------------------------
// 4. Smuggling (NAT-slipstreaming style)
// ---------------------------------------------------------------------------------------

#[test]
fn a_port_inside_another_commands_argument_opens_nothing() {
    require_lab!();
    let lab = plain_lab();
    let server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(&lab);
    // Not a verb of letters: refused by the ALG, never sent (a server that skips leading
    // whitespace would read a PORT).
    let misshapen: [&[u8]; 5] = [
        b"USER x\rPORT 10,0,0,2,200,1\r\n",
        b"NOOP\rEPRT |1|10.0.0.2|51201|\r\n",
        b" PORT 10,0,0,2,200,1\r\n",
        b"\tPORT 10,0,0,2,200,1\r\n",
        b"X-PORT 10,0,0,2,200,1\r\n",
    ];
    for line in misshapen {
        let reply = ctl.raw_cmd(line).expect("reply");
        assert_eq!(reply.code, 500, "{}", reply.text);
    }
    let smuggled: [&[u8]; 5] = [
        b"NOOP PORT 10,0,0,2,200,1\r\n",
        b"STOR PORT 10,0,0,2,200,1\r\n",
        b"SITE EXEC PORT 10,0,0,2,200,1\r\n",
        b"HELP EPRT |1|10.0.0.2|51201|\r\n",
        b"RETR /x/PORT 10,0,0,2,200,1\r\n",
    ];
    for line in smuggled {
        let reply = ctl
            .raw_cmd(line)
            .unwrap_or_else(|e| panic!("{e}\n{}", context(&alg, &ctl)));
        assert!(
            reply.code == 200 || reply.code == 331,
            "the server's answer must come back: {}",
            reply.text
        );
    }
    let received = received_lines(&server);
    for line in smuggled {
        assert!(
            received.iter().any(|r| r == line),
            "{:?} was not forwarded byte for byte",
            String::from_utf8_lossy(line)
        );
    }
    for line in misshapen {
        assert!(!received.iter().any(|r| r == line), "{line:?} forwarded");
    }
    assert_nothing_opened(&lab, &alg, &ctl);
    // Control: the same PORT in command position is acted on.
    assert_eq!(ctl.cmd("PORT 10,0,0,2,200,1").expect("PORT").code, 200);
    assert_eq!(set(&lab, "set", "active_pin"), vec![active_element(51201)]);
}

#[test]
fn a_227_inside_an_error_reply_or_a_continuation_line_opens_nothing() {
    require_lab!();
    let lab = plain_lab();
    let (_server, next) = scripted_with_queue(&lab, &["PASV", "EPSV", "NOOP"]);
    let alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(&lab);
    let cases: [(&str, &[u8]); 6] = [
        (
            "PASV",
            b"500 Unknown command 227 Entering Passive Mode (203,0,113,2,119,36)\r\n",
        ),
        (
            "PASV",
            b"425-Cannot open\r\n227 Entering Passive Mode (203,0,113,2,119,36)\r\n425 Really not\r\n",
        ),
        (
            "PASV",
            b"500-x\r\n227-Entering Passive Mode (203,0,113,2,119,36)\r\n227 Entering Passive Mode (203,0,113,2,119,36)\r\n500 End\r\n",
        ),
        (
            "NOOP",
            b"200-Message of the day\r\n227 Entering Passive Mode (203,0,113,2,119,36)\r\n229 Entering Extended Passive Mode (|||30500|)\r\n200 OK\r\n",
        ),
        (
            "EPSV",
            b"500 No (|||30500|) for you\r\n",
        ),
        (
            "EPSV",
            b"550-Denied\r\n229 Entering Extended Passive Mode (|||30500|)\r\n550 Denied\r\n",
        ),
    ];
    for (verb, answer) in cases {
        next.push(answer);
        let reply = ctl
            .cmd(verb)
            .unwrap_or_else(|e| panic!("{e}\n{}", context(&alg, &ctl)));
        let expected = String::from_utf8_lossy(answer).replace("\r\n", "\n");
        assert_eq!(
            format!("{}\n", reply.text),
            expected,
            "the reply must reach the client untouched"
        );
    }
    assert_nothing_opened(&lab, &alg, &ctl);
    // Control: a 227 in reply position answering PASV is acted on.
    assert_eq!(ctl.cmd("PASV").expect("PASV").code, 227);
    assert_eq!(
        set(&lab, "set", "passive_pin"),
        vec![passive_element(PASV_PORT)]
    );
}

#[test]
fn a_port_split_across_segments_at_every_byte_boundary_is_acted_on_exactly_once() {
    require_lab!();
    let lab = plain_lab();
    let server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &["--max-pinholes", "64"]);
    let mut ctl = login(&lab);
    let mut expected = Vec::new();

    // Byte by byte: every boundary in one command.
    let line = b"PORT 10,0,0,2,200,10\r\n";
    let every: Vec<usize> = (1..line.len()).collect();
    ctl.send_split(line, &every, Duration::from_millis(15))
        .expect("sending");
    let reply = ctl.read_reply(REPLY_TIMEOUT).expect("reply");
    assert_eq!(reply.code, 200, "{}", context(&alg, &ctl));
    expected.push(active_element(200 * 256 + 10));
    // One pinhole per command, none for a fragment; each PORT replaces the one before.
    assert_eq!(set(&lab, "set", "active_pin"), expected);

    // Each boundary on its own: the command in two segments split at k.
    for k in 1..line.len() {
        let p2 = 10 + k as u16;
        let line = format!("PORT 10,0,0,2,200,{p2}\r\n");
        ctl.send_split(line.as_bytes(), &[k], Duration::from_millis(25))
            .expect("sending");
        let reply = ctl.read_reply(REPLY_TIMEOUT).expect("reply");
        assert_eq!(reply.code, 200, "split at {k}: {}", context(&alg, &ctl));
        let expected = [active_element(200 * 256 + p2)];
        assert_eq!(
            set(&lab, "set", "active_pin"),
            expected,
            "split at {k}: one pinhole per command, none for a fragment\n{}",
            alg.output()
        );
    }
    let forwarded = data_commands_received(&server);
    assert_eq!(forwarded.len(), line.len(), "{forwarded:?}");
    let mut ports: Vec<u16> = forwarded
        .iter()
        .map(|l| {
            gateway_port_in(l.as_bytes())
                .unwrap_or_else(|| panic!("not a rewritten PORT naming the gateway: {l:?}"))
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        line.len(),
        "each command got its own gateway port"
    );
    assert_eq!(admitted(&lab), (0, 0));
}

#[test]
fn pipelined_commands_are_each_acted_on_once_and_replies_pair_with_their_commands() {
    require_lab!();
    let lab = plain_lab();
    let (server, next) = scripted_with_queue(&lab, &["NOOP", "PASV"]);
    let alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(&lab);

    // Nothing queued: the server answers with its defaults (200, and 227 for port 30500).
    ctl.send(b"NOOP\r\nPORT 10,0,0,2,200,1\r\nPASV\r\nEPRT |1|10.0.0.2|51202|\r\nNOOP\r\n")
        .expect("pipelined");
    let codes: Vec<u16> = (0..5)
        .map(|_| ctl.read_reply(REPLY_TIMEOUT).expect("reply").code)
        .collect();
    assert_eq!(codes, [200, 200, 227, 200, 200], "{}", context(&alg, &ctl));
    let received: Vec<String> = received_lines(&server)
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_owned())
        .skip(2) // USER, PASS
        .collect();
    assert_eq!(received.len(), 5, "{received:?}");
    assert_eq!(received[0], "NOOP");
    assert!(
        gateway_port_in(received[1].as_bytes()).is_some(),
        "{received:?}"
    );
    assert_eq!(received[2], "PASV");
    assert!(
        received[3].starts_with("EPRT |1|203.0.113.1|"),
        "{received:?}"
    );
    assert_eq!(received[4], "NOOP");
    // Each data address replaced the one before it, in the server's order: the EPRT's is
    // left (the PORT's and the PASV's were each opened, then replaced).
    assert_eq!(set(&lab, "set", "active_pin"), vec![active_element(51202)]);
    assert!(set(&lab, "set", "passive_pin").is_empty());
    let log = alg.output();
    assert!(
        log.contains("=> 10.0.0.2:51201") && log.contains(&format!(":{PASV_PORT}")),
        "the PORT's and the PASV's pinholes were opened: {log}"
    );

    // Pipelined NOOP and PASV, the NOOP answered by a 227: only the PASV's own answer
    // (naming 30602) may open a pinhole, not the 227 that answered the NOOP (30601).
    next.push(pasv_reply(SERVER_IP, 30601));
    next.push(pasv_reply(SERVER_IP, 30602));
    ctl.send(b"NOOP\r\nPASV\r\n").expect("pipelined");
    let answers = [
        ctl.read_reply(REPLY_TIMEOUT).expect("reply"),
        ctl.read_reply(REPLY_TIMEOUT).expect("reply"),
    ];
    assert_eq!(answers[0].code, 227, "the NOOP's 227 is forwarded as is");
    assert_eq!(
        parse_227(&answers[1].text),
        Some(SocketAddrV4::new(SERVER_IP, 30602))
    );
    assert_eq!(
        set(&lab, "set", "passive_pin"),
        vec![passive_element(30602)],
        "{}",
        alg.output()
    );
    assert!(set(&lab, "set", "active_pin").is_empty());
    let log = log_when(&alg, |log| log.contains("unsolicited 227/229"));
    assert!(log.contains("unsolicited 227/229"), "{log}");
}

#[test]
fn nul_bytes_never_turn_a_line_into_a_data_command() {
    require_lab!();
    let lab = plain_lab();
    let (server, next) = scripted_with_queue(&lab, &["PASV"]);
    let alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(&lab);
    // A NUL in or before the verb: a server reading C strings could see a PORT. Not sent.
    let bad_verbs: [&[u8]; 5] = [
        b"PORT\0 10,0,0,2,200,1\r\n",
        b"\0PORT 10,0,0,2,200,1\r\n",
        b"PO\0RT 10,0,0,2,200,1\r\n",
        b"NOOP\0PORT 10,0,0,2,200,1\r\n",
        b"\0\r\n",
    ];
    for line in bad_verbs {
        let reply = ctl.raw_cmd(line).expect("reply");
        assert_eq!(reply.code, 500, "{}", context(&alg, &ctl));
    }
    let refused: [&[u8]; 4] = [
        b"PORT 10,0,0,2,200,1\0\r\n",
        b"PORT 10,0,0,2\0,200,1\r\n",
        b"EPRT |1|10.0.0.2\0|51201|\r\n",
        b"EPRT |1|10.0.0.2|51201|\0\r\n",
    ];
    for line in refused {
        let reply = ctl.raw_cmd(line).expect("reply");
        assert_eq!(reply.code, 501, "{}", context(&alg, &ctl));
    }
    // A NUL inside a 227's address makes it unreadable: refused, nothing opened.
    next.push(b"227 Entering Passive Mode (203,0,113,2,119,\x0036)\r\n".to_vec());
    assert_eq!(ctl.cmd("PASV").expect("PASV").code, 425);
    let received = received_lines(&server);
    for line in bad_verbs.iter().chain(&refused) {
        assert!(!received.iter().any(|r| r == line), "{line:?} forwarded");
    }
    assert_nothing_opened(&lab, &alg, &ctl);
}

#[test]
fn data_commands_ending_in_a_bare_lf_are_refused_and_never_reach_the_server() {
    require_lab!();
    let lab = plain_lab();
    let server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(&lab);
    let cases: [(&[u8], u16); 6] = [
        (b"PORT 10,0,0,2,200,1\n", 500),
        (b"EPRT |1|10.0.0.2|51201|\n", 500),
        (b"PASV\n", 500),
        (b"EPSV\n", 500),
        (b"port 10,0,0,2,200,1\n", 500),
        (b"PORT 10,0,0,2,200,1\r\r\n", 500),
    ];
    for (line, code) in cases {
        let reply = ctl.raw_cmd(line).expect("reply");
        assert_eq!(reply.code, code, "{:?}: {}", line, context(&alg, &ctl));
    }
    assert!(
        data_commands_received(&server).is_empty(),
        "{:?}",
        data_commands_received(&server)
    );
    assert_nothing_opened(&lab, &alg, &ctl);
    // A bare LF ends a line for the server too (vsftpd, libunftp): "NOOP\n" is a line of its
    // own, and the CRLF-terminated PORT behind it is in command position. Both sides agree.
    ctl.send(b"NOOP\nPORT 10,0,0,2,200,2\r\n").expect("send");
    assert_eq!(ctl.read_reply(REPLY_TIMEOUT).expect("reply").code, 200);
    assert_eq!(ctl.read_reply(REPLY_TIMEOUT).expect("reply").code, 200);
    assert_eq!(set(&lab, "set", "active_pin"), vec![active_element(51202)]);
}

#[test]
fn telnet_iac_sequences_cannot_smuggle_a_port() {
    require_lab!();
    let lab = plain_lab();
    let (server, next) = scripted_with_queue(&lab, &["PASV"]);
    let alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(&lab);
    // No verb the ALG can read as letters: refused, and not sent (a server that drops a
    // lone IAC SB, as ProFTPD does, would read a PORT).
    let refused: [&[u8]; 2] = [
        b"\xff\xfaPORT 10,0,0,2,200,2\r\n", // IAC SB ... never closed: all option data
        b"P\xff\xffORT 10,0,0,2,200,3\r\n", // IAC IAC is a data byte 0xFF: verb "P\xffORT"
    ];
    for line in refused {
        let reply = ctl.raw_cmd(line).expect("reply");
        assert_eq!(reply.code, 500, "{}", context(&alg, &ctl));
    }
    // Unknown commands: the server gets the text the ALG read, telnet bytes removed.
    let forwarded: [(&[u8], &[u8]); 2] = [
        (
            b"NOOP \xff\xf1PORT 10,0,0,2,200,4\r\n", // IAC NOP inside an argument
            b"NOOP PORT 10,0,0,2,200,4\r\n",
        ),
        (
            b"\xff\xfbPORT 10,0,0,2,200,6\r\n", // IAC WILL 'P': the verb is "ORT"
            b"ORT 10,0,0,2,200,6\r\n",
        ),
    ];
    for (line, _) in forwarded {
        let reply = ctl.raw_cmd(line).expect("reply");
        assert_eq!(reply.code, 200, "{}", context(&alg, &ctl));
    }
    let reply = ctl
        .raw_cmd(b"PORT 10,0,0,2,200,\xff\xff5\r\n")
        .expect("reply");
    assert_eq!(reply.code, 501, "an escaped 0xFF is not a digit");
    // Telnet "Synch" (IAC IP IAC DM) before a real PORT, as clients send before ABOR: the
    // command is the PORT, and the server gets it clean (rewritten).
    let reply = ctl
        .raw_cmd(b"\xff\xf4\xff\xf2PORT 10,0,0,2,200,1\r\n")
        .expect("reply");
    assert_eq!(reply.code, 200, "{}", context(&alg, &ctl));
    assert_eq!(
        set(&lab, "set", "active_pin"),
        vec![active_element(51201)],
        "only the Synch-prefixed PORT is a PORT\n{}",
        alg.output()
    );
    // An IAC inside a 227's address is refused (and the server's new passive address
    // replaced the PORT's).
    next.push(b"227 Entering Passive Mode (203,0,113,2,\xff\xf1119,36)\r\n".to_vec());
    assert_eq!(ctl.cmd("PASV").expect("PASV").code, 425);
    assert!(set(&lab, "set", "passive_pin").is_empty());
    assert!(set(&lab, "set", "active_pin").is_empty());
    let received = received_lines(&server);
    for (_, sent) in forwarded {
        assert!(received.iter().any(|r| r == sent), "{sent:?} not forwarded");
    }
    for line in refused {
        assert!(!received.iter().any(|r| r == line), "{line:?} forwarded");
    }
    let ports: Vec<&Vec<u8>> = received
        .iter()
        .filter(|l| l.starts_with(b"PORT "))
        .collect();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert!(
        gateway_port_in(ports[0]).is_some(),
        "clean rewritten PORT: {ports:?}"
    );
    assert_eq!(admitted(&lab), (0, 0));
}

#[test]
fn an_endless_multiline_227_is_bounded_and_opens_nothing() {
    require_lab!();
    let lab = plain_lab();
    let (_server, next) = scripted_with_queue(&lab, &["PASV"]);
    // The ALG buffers a multi-line 227 of at most 16 lines' worth (16 x 128 bytes here).
    let alg = start_alg(&lab.gateway, &["--max-line", "128"]);
    let mut ctl = login(&lab);
    let mut answer = b"227-Entering Passive Mode (203,0,113,2,119,36)\r\n".to_vec();
    for i in 0..200 {
        answer.extend_from_slice(format!("227-{i:04} {}\r\n", "x".repeat(100)).as_bytes());
    }
    answer.extend_from_slice(b"227 Entering Passive Mode (203,0,113,2,119,36)\r\n");
    next.push(answer);
    let reply = ctl.cmd("PASV").expect("PASV");
    assert_eq!(
        reply.code, 451,
        "the client must be told that the reply was cut: {}",
        reply.text
    );
    // The session goes on, in step: the refused reply's rest never reaches the client, so
    // the next reply it reads answers its next command.
    let reply = ctl.cmd("NOOP").expect("NOOP");
    assert_eq!(reply.code, 200, "{}\n{}", reply.text, context(&alg, &ctl));
    assert_nothing_opened(&lab, &alg, &ctl);
}

#[test]
fn a_port_in_an_http_request_body_opens_nothing() {
    require_lab!();
    let lab = plain_lab();
    // A hostile server (it greets and says 230 to anything, so login state proves nothing).
    let server = scripted(&lab, |_| Some(b"230 OK\r\n".to_vec()));
    let alg = start_alg(&lab.gateway, &[]);
    // Some service of the victim's on a high port (a development web server, say).
    let victim = listen_in(&lab.client, v4(CLIENT_IP, 51201)).expect("victim service");
    let mut ctl = Control::connect(&lab.client, control_addr()).expect("connect");
    assert_eq!(ctl.read_reply(REPLY_TIMEOUT).expect("greeting").code, 220);
    // What a browser sends when a page makes it POST a form to the attacker's port 21.
    let body = "PORT 10,0,0,2,200,1\r\n";
    let request = format!(
        "POST /x HTTP/1.1\r\nHost: 203.0.113.2:21\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    ctl.send(request.as_bytes()).expect("request");
    // Positive control: the ALG itself answered and closed, and it still serves.
    let (bytes, _) = ctl
        .wait_closed(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the HTTP request was not answered\n{}", alg.output()));
    let answer = String::from_utf8_lossy(&bytes);
    assert!(
        answer.contains("421 ") && answer.contains("not HTTP"),
        "{answer:?}"
    );
    let log = log_when(&alg, |log| log.contains("refused"));
    assert!(log.contains("not HTTP"), "{log}");
    let forwarded = data_commands_received(&server);
    let left = pinholes(&lab);
    // The attacker's server follows the PORT it was given, as any FTP server would.
    let reached = forwarded
        .first()
        .and_then(|line| gateway_port_in(line.as_bytes()))
        .is_some_and(|port| {
            let _ = connect_in(&lab.server, None, v4(GATEWAY_WAN_IP, port), BLOCKED);
            accept_within(&victim, Duration::from_millis(500)).is_some()
        });
    assert!(
        left.is_empty() && !reached,
        "an HTTP request body opened {left:#?}; the server (the attacker) got {forwarded:?} \
         and {} the victim's port 51201 through the gateway\n{}",
        if reached { "reached" } else { "did not reach" },
        alg.output()
    );
    let mut alg = alg;
    assert!(
        alg.exit_status().is_none(),
        "the daemon died\n{}",
        alg.output()
    );
    let (_next, code, text) = first_reply(&lab.client, None);
    assert_eq!(code, 220, "the gateway still serves: {text}");
}

// ---------------------------------------------------------------------------------------
// 5. Pinhole misuse from the WAN side
// ---------------------------------------------------------------------------------------

/// A logged-in client with a pending passive pinhole to server:PASV_PORT, the server's data
/// listener, and the daemon.
fn pending_passive(lab: &AttackLab) -> (ScriptedServer, AlgDaemon, Control, TcpListener) {
    let server = scripted(lab, |_| None);
    let data = listen_in(&lab.server, v4(SERVER_IP, PASV_PORT)).expect("data listener");
    let alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(lab);
    let reply = ctl.cmd("PASV").expect("PASV");
    assert_eq!(reply.code, 227, "{}", context(&alg, &ctl));
    assert_eq!(
        set(lab, "set", "passive_pin"),
        vec![passive_element(PASV_PORT)]
    );
    (server, alg, ctl, data)
}

#[test]
fn a_pending_passive_pinhole_cannot_be_used_from_the_attackers_address_nor_twice() {
    require_lab!();
    let lab = attack_lab();
    let (_server, alg, ctl, data) = pending_passive(&lab);
    // The attacker's packets to the server go through the gateway, as a third party's would.
    lab.route_via_gateway(SERVER_IP, None)
        .expect("attacker route");
    watch_wan_syns(&lab.gateway, ATTACKER_IP, PASV_PORT);
    let target = v4(SERVER_IP, PASV_PORT);
    let tried = attempts(
        &[(&lab.attacker, None, target), (&lab.attacker, None, target)],
        BLOCKED,
    );
    assert_eq!(
        tried,
        [false, false],
        "the attacker got through\n{}",
        alg.output()
    );
    // They did reach the gateway's forwarding path: the rules were put to the test.
    assert!(
        watched(&lab.gateway, "forwarded") >= 1,
        "the attacker's SYNs never reached the gateway's forward hook (arrived {})",
        watched(&lab.gateway, "arrived")
    );
    assert!(accept_within(&data, Duration::from_millis(100)).is_none());
    assert_eq!(admitted(&lab), (0, 0));
    assert_eq!(
        set(&lab, "set", "passive_pin"),
        vec![passive_element(PASV_PORT)],
        "the pinhole must still be there for the client"
    );

    // The client's own connection is admitted, once.
    let first = connect_in(&lab.client, None, target, Duration::from_secs(5)).expect("thread");
    assert!(first.is_ok(), "{first:?}\n{}", context(&alg, &ctl));
    assert!(accept_within(&data, Duration::from_secs(2)).is_some());
    assert_eq!(admitted(&lab), (1, 0));
    // A second connection, from the client or the attacker, is not.
    let again = attempts(
        &[(&lab.client, None, target), (&lab.attacker, None, target)],
        BLOCKED,
    );
    assert_eq!(again, [false, false], "{}", alg.output());
    assert!(accept_within(&data, Duration::from_millis(100)).is_none());
    assert_eq!(admitted(&lab), (1, 0));
}

/// The lab's own witness in the gateway: SYNs from `src` to `dport` arriving on `wan0`,
/// counted when they arrive (`arrived`) and when they reach the forward hook (`forwarded`),
/// both before any of the ALG's chains.
fn watch_wan_syns(gateway: &Netns, src: Ipv4Addr, dport: u16) {
    watch_syns(gateway, "wan0", src, dport);
}

/// As [`watch_wan_syns`], for SYNs arriving on `iif`.
fn watch_syns(gateway: &Netns, iif: &str, src: Ipv4Addr, dport: u16) {
    let rules = format!(
        "table inet lab_watch {{\n\
         \tcounter arrived {{ }}\n\
         \tcounter forwarded {{ }}\n\
         \tchain watch_prerouting {{\n\
         \t\ttype filter hook prerouting priority raw - 10; policy accept;\n\
         \t\tiifname \"{iif}\" ip saddr {src} tcp dport {dport} tcp flags syn counter name arrived\n\
         \t}}\n\
         \tchain watch_forward {{\n\
         \t\ttype filter hook forward priority filter - 20; policy accept;\n\
         \t\tiifname \"{iif}\" ip saddr {src} tcp dport {dport} tcp flags syn counter name forwarded\n\
         \t}}\n\
         }}\n"
    );
    gateway
        .exec_stdin_ok(&["nft", "-f", "-"], rules.as_bytes())
        .expect("watch table");
}

/// Reverse-path filtering is the host's business and often off on gateways (asymmetric
/// routes): the ALG's rules must hold without it.
fn rp_filter_off(gateway: &Netns) {
    for key in ["all", "default", "wan0", "lan0"] {
        gateway
            .exec_ok(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.conf.{key}.rp_filter=0"),
            ])
            .expect("rp_filter");
    }
}

fn watched(gateway: &Netns, name: &str) -> u64 {
    named_counter(gateway, "lab_watch", name).expect("watch counter")
}

#[test]
fn a_pending_passive_pinhole_cannot_be_used_with_the_clients_address_spoofed_from_the_wan() {
    require_lab!();
    let lab = attack_lab();
    rp_filter_off(&lab.gateway);
    let (_server, alg, ctl, data) = pending_passive(&lab);
    watch_wan_syns(&lab.gateway, CLIENT_IP, PASV_PORT);
    // The attacker sends from 10.0.0.2 (the client's address) into the gateway's WAN side.
    lab.route_via_gateway(SERVER_IP, Some(CLIENT_IP))
        .expect("spoofing route");
    let target = v4(SERVER_IP, PASV_PORT);
    let spoofed = attempts(
        &[(&lab.attacker, Some(IpAddr::V4(CLIENT_IP)), target)],
        BLOCKED,
    );
    // The spoofed SYN did reach the gateway's forwarding path: the test exercises the rules.
    assert!(
        watched(&lab.gateway, "arrived") >= 1 && watched(&lab.gateway, "forwarded") >= 1,
        "the spoofed SYN never reached the gateway's forward hook (arrived {}, forwarded {})",
        watched(&lab.gateway, "arrived"),
        watched(&lab.gateway, "forwarded")
    );
    let after_spoof = admitted(&lab);
    let left = set(&lab, "set", "passive_pin");
    // The client then uses its pinhole as intended.
    let legit = connect_in(&lab.client, None, target, Duration::from_secs(3)).expect("thread");
    let accepted = accept_within(&data, Duration::from_secs(1)).is_some();
    assert_eq!(spoofed, [false], "the spoofed connection completed");
    assert_eq!(
        after_spoof,
        (0, 0),
        "a SYN with the client's address arriving on the WAN interface was admitted by the \
         passive pinhole (it consumed it){}\n--- ruleset:\n{}\n{}",
        if legit.is_err() {
            "; the client's own connection then failed"
        } else {
            ""
        },
        ftp_alg::lab::nft::ruleset(&lab.gateway),
        context(&alg, &ctl)
    );
    assert_eq!(left, vec![passive_element(PASV_PORT)]);
    assert!(
        legit.is_ok() && accepted,
        "the client's own connection failed"
    );
    assert_eq!(admitted(&lab), (1, 0));
}

#[test]
fn an_active_mode_gateway_port_admits_only_the_server_and_only_once() {
    require_lab!();
    let lab = attack_lab();
    let server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &[]);
    let listener = listen_in(&lab.client, v4(CLIENT_IP, 51201)).expect("client listener");
    let mut ctl = login(&lab);
    assert_eq!(
        ctl.cmd(&port_command(CLIENT_IP, 51201)).expect("PORT").code,
        200
    );
    let forwarded = data_commands_received(&server);
    let leased = gateway_port_in(forwarded[0].as_bytes()).expect("rewritten PORT");
    let gateway_port = v4(GATEWAY_WAN_IP, leased);

    // The attacker, from its own address, at the leased gateway port and straight at the
    // client's port (routed through the gateway): nothing.
    let tried = attempts(
        &[
            (&lab.attacker, None, gateway_port),
            (&lab.attacker, Some(IpAddr::V4(THIRD_HOST_IP)), gateway_port),
            (&lab.attacker, None, v4(CLIENT_IP, 51201)),
        ],
        BLOCKED,
    );
    assert_eq!(tried, [false, false, false], "{}", alg.output());
    assert!(accept_within(&listener, Duration::from_millis(100)).is_none());
    assert_eq!(admitted(&lab), (0, 0));
    assert_eq!(set(&lab, "set", "active_pin"), vec![active_element(51201)]);

    // The server, from its own address: admitted once.
    let first =
        connect_in(&lab.server, None, gateway_port, Duration::from_secs(5)).expect("thread");
    assert!(first.is_ok(), "{first:?}\n{}", context(&alg, &ctl));
    let (_, peer) = accept_within(&listener, Duration::from_secs(2)).expect("client accept");
    assert_eq!(peer.ip(), IpAddr::V4(SERVER_IP));
    assert_eq!(admitted(&lab), (0, 1));
    let again = attempts(
        &[
            (&lab.server, None, gateway_port),
            (&lab.attacker, None, gateway_port),
        ],
        BLOCKED,
    );
    assert_eq!(again, [false, false], "{}", alg.output());
    assert!(accept_within(&listener, Duration::from_millis(100)).is_none());
    assert_eq!(admitted(&lab), (0, 1));
    // The single-use parts are consumed; the DNAT mapping behind them goes with the session.
    assert!(set(&lab, "set", "active_pin").is_empty());
    assert!(set(&lab, "set", "dnat_once").is_empty());
    drop(ctl);
    common::assert_pinholes_drained(&lab, &alg);
}

/// A connection from `from` (not an address of `ns`: `IP_TRANSPARENT`) to `to`, made inside
/// `ns`, bounded by `timeout`.
fn forged_connect(
    ns: &Netns,
    from: SocketAddr,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<std::net::TcpStream> {
    ns.run_in(move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_ip_transparent_v4(true)?;
        socket.bind(&from.into())?;
        socket.connect_timeout(&to.into(), timeout)?;
        Ok(socket.into())
    })
    .expect("namespace thread")
}

#[test]
fn the_servers_address_forged_from_the_lan_is_not_admitted_to_the_client() {
    require_lab!();
    let lab = attack_lab();
    rp_filter_off(&lab.gateway);
    let server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &[]);
    let listener = listen_in(&lab.client, v4(CLIENT_IP, 51202)).expect("client listener");
    let mut ctl = login(&lab);
    assert_eq!(
        ctl.cmd(&port_command(CLIENT_IP, 51202)).expect("PORT").code,
        200
    );
    let forwarded = data_commands_received(&server);
    let leased = gateway_port_in(forwarded[0].as_bytes()).expect("rewritten PORT");
    let gateway_port = v4(GATEWAY_WAN_IP, leased);

    // A LAN host sends the server's SYN itself: the server's address, to the leased port.
    // The DNAT mapping takes it (as the kernel helper's expectation would), but the forward
    // pinhole's reverse-path check does not: it never reaches the client.
    watch_syns(&lab.gateway, "lan0", SERVER_IP, leased);
    let forged = forged_connect(&lab.client, v4(SERVER_IP, 40020), gateway_port, BLOCKED);
    assert!(forged.is_err(), "the forged connection completed");
    assert!(
        watched(&lab.gateway, "arrived") >= 1,
        "the forged SYN never reached the gateway: the test proves nothing"
    );
    assert!(
        accept_within(&listener, Duration::from_millis(100)).is_none(),
        "the forged connection reached the client\n{}",
        context(&alg, &ctl)
    );
    assert_eq!(admitted(&lab), (0, 0));
    assert_eq!(set(&lab, "set", "active_pin"), vec![active_element(51202)]);
}

#[test]
fn a_pending_pinhole_goes_with_its_session_and_expires_on_its_own() {
    require_lab!();
    let lab = plain_lab();
    let server = scripted(&lab, |_| None);
    let data = listen_in(&lab.server, v4(SERVER_IP, PASV_PORT)).expect("data listener");
    let alg = start_alg_tuned(&lab.gateway, |o| o.pinhole_timeout_secs = 2, &[]);

    // A session that ends takes its pending pinholes (passive, and active with its DNAT
    // mapping) along, long before they would expire.
    // (One each in two sessions: a new data address replaces the one before.)
    let mut passive = login(&lab);
    assert_eq!(passive.cmd("PASV").expect("PASV").code, 227);
    let mut active = login(&lab);
    assert_eq!(active.cmd("PORT 10,0,0,2,200,1").expect("PORT").code, 200);
    assert_eq!(pinholes(&lab).len(), 4, "{:#?}", pinholes(&lab));
    let ended = Instant::now();
    drop((passive, active));
    common::assert_pinholes_drained(&lab, &alg);
    assert!(
        ended.elapsed() < Duration::from_millis(1500),
        "removed only after {:?} (the pinhole timeout is 2 s)",
        ended.elapsed()
    );

    // Ones left pending in a live session (passive; active, with its DNAT mapping) expire
    // after the pinhole timeout: the client's and the server's connections find nothing.
    let mut ctl = login(&lab);
    assert_eq!(ctl.cmd("PASV").expect("PASV").code, 227);
    let mut active = login(&lab);
    let listener = listen_in(&lab.client, v4(CLIENT_IP, 51203)).expect("client listener");
    assert_eq!(
        active
            .cmd(&port_command(CLIENT_IP, 51203))
            .expect("PORT")
            .code,
        200
    );
    let forwarded = data_commands_received(&server);
    let leased = forwarded
        .iter()
        .rev()
        .find_map(|line| gateway_port_in(line.as_bytes()))
        .expect("rewritten PORT");
    assert_eq!(pinholes(&lab).len(), 4, "{:#?}", pinholes(&lab));
    std::thread::sleep(Duration::from_millis(2600));
    assert!(pinholes(&lab).is_empty(), "{:#?}", pinholes(&lab));
    let late = attempts(
        &[
            (&lab.client, None, v4(SERVER_IP, PASV_PORT)),
            (&lab.server, None, v4(GATEWAY_WAN_IP, leased)),
        ],
        BLOCKED,
    );
    assert_eq!(
        late,
        [false, false],
        "an expired pinhole admitted a connection"
    );
    assert!(accept_within(&data, Duration::from_millis(100)).is_none());
    assert!(accept_within(&listener, Duration::from_millis(100)).is_none());
    assert_eq!(admitted(&lab), (0, 0));
    drop(active);
    // The session itself is fine and can ask again.
    assert_eq!(ctl.cmd("PASV").expect("PASV").code, 227);
    let fresh = connect_in(
        &lab.client,
        None,
        v4(SERVER_IP, PASV_PORT),
        Duration::from_secs(3),
    )
    .expect("thread");
    assert!(fresh.is_ok(), "{fresh:?}\n{}", context(&alg, &ctl));
    assert_eq!(admitted(&lab), (1, 0));
}

#[test]
fn an_exhausted_active_port_pool_gets_425_and_is_given_back_when_the_hog_leaves() {
    require_lab!();
    let lab = plain_lab();
    lab.client
        .ip(&["addr", "add", "10.0.0.3/24", "dev", "eth0"])
        .expect("second client address");
    let _server = scripted(&lab, |_| None);
    // Two gateway ports for active mode, each held by a session of one client (a new PORT
    // replaces a session's last one, so a session holds one pending lease at a time).
    // No quarantine: this test is about the pool itself (the quarantine has its own test).
    let alg = start_alg_tuned(
        &lab.gateway,
        |o| o.active_ports = (40000, 40001),
        &["--active-port-quarantine", "0"],
    );
    let mut hogs = [login(&lab), login(&lab)];
    for (n, hog) in hogs.iter_mut().enumerate() {
        for k in 0..5u16 {
            let reply = hog
                .cmd(&port_command(CLIENT_IP, 52000 + 10 * n as u16 + k))
                .expect("PORT");
            assert_eq!(reply.code, 200, "{}", reply.text);
        }
    }
    // (A gateway port leased again within seconds goes to the sets' hot twins.)
    let leased = set(&lab, "set", "dnat_once").len() + set(&lab, "set", "dnat_once_hot").len();
    assert_eq!(leased, 2, "{}", alg.output());
    // Another client now gets a clear 425 for active mode (passive still works).
    let mut other = Control::login(&lab.client, control_addr(), "other", "secret").expect("login");
    let mut other_from_3 = {
        let mut ctl = Control::connect_from(
            &lab.client,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
            control_addr(),
        )
        .expect("connect");
        assert_eq!(ctl.read_reply(REPLY_TIMEOUT).expect("greeting").code, 220);
        ctl
    };
    let reply = other_from_3.cmd("PORT 10,0,0,3,200,1").expect("PORT");
    assert_eq!(reply.code, 425, "{}", reply.text);
    assert!(
        reply.text.contains("no free gateway port"),
        "{}",
        reply.text
    );
    assert_eq!(other.cmd("PASV").expect("PASV").code, 227);
    // The hog leaves: its leases come back, the other client gets its port.
    drop(hogs);
    let start = Instant::now();
    loop {
        let reply = other_from_3.cmd("PORT 10,0,0,3,200,1").expect("PORT");
        if reply.code == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "leases not given back: {}\n{}",
            reply.text,
            alg.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_active_data_connection_is_never_delivered_to_the_previous_holder_of_its_gateway_port() {
    require_lab!("vsftpd");
    let lab = plain_lab();
    let mallory = Ipv4Addr::new(10, 0, 0, 3);
    lab.client
        .ip(&["addr", "add", "10.0.0.3/24", "dev", "eth0"])
        .expect("second LAN host");
    // Debian's vsftpd: active data connections come from port 20.
    let server = ftp_alg::lab::Vsftpd::start(&lab.server).expect("vsftpd");
    let secret: Vec<u8> = (0..50_000u32).map(|i| (i * 31 % 251) as u8).collect();
    server.put_file("secret.bin", &secret).expect("file");
    server
        .put_file("big.bin", &vec![6u8; 8 << 20])
        .expect("file");
    // One gateway port and no quarantine: the victim's transfer gets the very port Mallory
    // just released. What keeps the victim's data away from Mallory is that the new lease
    // removed the reset flow server:20 -> gateway:port from conntrack.
    let alg = start_alg_tuned(
        &lab.gateway,
        |o| o.active_ports = (40000, 40000),
        &["--active-port-quarantine", "0"],
    );

    // Mallory (another LAN host) starts an active RETR, resets its data connection, leaves,
    // and keeps listening on the port it announced.
    let trap = listen_in(&lab.client, v4(mallory, 0)).expect("Mallory's listener");
    let trap_port = trap.local_addr().expect("addr").port();
    let mut ctl = Control::connect_from(&lab.client, IpAddr::V4(mallory), control_addr())
        .expect("Mallory connects");
    assert_eq!(ctl.read_reply(REPLY_TIMEOUT).expect("greeting").code, 220);
    for (line, code) in [
        (format!("USER {}", ftp_alg::lab::FTP_USER), 331),
        ("PASS x".to_owned(), 230),
        ("TYPE I".to_owned(), 200),
        (port_command(mallory, trap_port), 200),
        ("RETR big.bin".to_owned(), 150),
    ] {
        assert_eq!(ctl.cmd(&line).expect(&line).code, code, "{line}");
    }
    let (mut data, _) = accept_within(&trap, Duration::from_secs(5)).expect("data connection");
    let mut some = vec![0u8; 65536];
    std::io::Read::read_exact(&mut data, &mut some).expect("some data");
    socket2::SockRef::from(&data)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(data);
    let _ = ctl.read_reply(REPLY_TIMEOUT);
    drop(ctl);
    std::thread::sleep(Duration::from_millis(300));

    // The victim's active RETR right after.
    let victim = lab
        .client
        .run_in(|| {
            let mut ftp = ftp_alg::lab::raw_client::RawFtp::connect(control_addr())
                .map_err(|e| e.to_string())?;
            ftp.login(ftp_alg::lab::FTP_USER, ftp_alg::lab::FTP_PASSWORD)
                .map_err(|e| e.to_string())?;
            ftp.retr(ftp_alg::lab::DataMode::Port, "secret.bin")
                .map_err(|e| format!("{e}\n{}", ftp.transcript()))
        })
        .expect("victim thread");
    let stolen = accept_within(&trap, Duration::from_millis(500)).map(|(mut stream, peer)| {
        let mut got = Vec::new();
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = std::io::Read::read_to_end(&mut stream, &mut got);
        (peer, got.len(), got == secret)
    });
    let conntrack = lab
        .gateway
        .exec(&["conntrack", "-L", "-p", "tcp", "--sport", "20"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        stolen.is_none(),
        "the victim's data connection went to Mallory's old port {trap_port}: {stolen:?} \
         (peer, bytes, the victim's whole file?); the victim got {:?}\n--- gateway conntrack \
         (sport 20):\n{conntrack}",
        victim.as_ref().map(Vec::len)
    );
    assert_eq!(victim.expect("the victim's transfer"), secret);
    drop(alg);
}

// ---------------------------------------------------------------------------------------
// 6. Malformed numbers
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_port_and_eprt_numbers_get_501_and_the_daemon_keeps_serving() {
    require_lab!();
    let lab = plain_lab();
    let server = scripted(&lab, |_| None);
    let mut alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(&lab);
    let malformed = [
        "PORT 10,0,0,256,200,1",
        "PORT 10,0,0,2,256,1",
        "PORT 10,0,0,2,200,256",
        "PORT 10,0,0,2,0,0",
        "PORT 10,0,0,2,200",
        "PORT 10,0,0,2,200,1,7",
        "PORT 10,0,0,2,,1",
        "PORT 10,0,0,2,-1,1",
        "PORT 10,0,0,2,+200,1",
        "PORT 10,0,0,2,0x10,1",
        "PORT 10.0.0.2,200,1",
        "PORT 99999999999999999999999999,0,0,2,200,1",
        "PORT 10,0,0,2,200,18446744073709551617",
        "PORT 4294967306,0,0,2,200,1",
        "PORT",
        "EPRT |1|10.0.0.2|0|",
        "EPRT |1|10.0.0.2|65536|",
        "EPRT |1|10.0.0.2|99999999999999999999|",
        "EPRT |1|10.0.0.2|-1|",
        "EPRT |1|10.0.0.2|51201",
        "EPRT |1|10.0.0.2|51201||",
        "EPRT 1|10.0.0.2|51201|",
        "EPRT |1|10.0.0.2:51201|",
        "EPRT |1,10.0.0.2,51201,",
        "EPRT |3|10.0.0.2|51201|",
        "EPRT ||10.0.0.2|51201|",
        "EPRT |1|10.0.0.256|51201|",
        "EPRT |1|10.0.0.02|51201|",
        "EPRT |1|10.0.0|51201|",
        "EPRT |1|167772162|51201|",
        "EPRT |2|::g|51201|",
        "EPRT |2|1:2:3:4:5:6:7:8:9|51201|",
        "EPRT |2|fe80::1%lan0|51201|",
        "EPRT |2|[::1]|51201|",
        "EPRT |2||51201|",
        "EPRT",
        "EPSV 3",
        "EPSV 99999999999999999999",
    ];
    for command in malformed {
        let reply = ctl
            .cmd(command)
            .unwrap_or_else(|e| panic!("{command}: {e}\n{}", context(&alg, &ctl)));
        assert_eq!(reply.code, 501, "{command:?} -> {}", reply.text);
        assert!(reply.text.contains("Syntax error"), "{}", reply.text);
    }
    // Bad delimiters (outside 33..=126), raw bytes.
    for line in [
        &b"EPRT \x7f1\x7f10.0.0.2\x7f51201\x7f\r\n"[..],
        b"EPRT \x011\x0110.0.0.2\x0151201\x01\r\n",
        b"EPRT \xc3\xa91\xc3\xa9\r\n",
    ] {
        let reply = ctl.raw_cmd(line).expect("reply");
        assert_eq!(reply.code, 501, "{line:?} -> {}", reply.text);
    }
    assert!(data_commands_received(&server).is_empty());
    assert_nothing_opened(&lab, &alg, &ctl);
    assert!(
        alg.exit_status().is_none(),
        "the daemon died\n{}",
        alg.output()
    );
    assert!(!alg.output().contains("panicked"), "{}", alg.output());

    // The same session and the next one are served normally.
    assert_eq!(ctl.cmd("PORT 10,0,0,2,200,1").expect("PORT").code, 200);
    drop(ctl);
    let mut next = login(&lab);
    assert_eq!(next.cmd("EPRT |1|10.0.0.2|51202|").expect("EPRT").code, 200);
    assert_eq!(next.cmd("PASV").expect("PASV").code, 227);
    assert!(alg.exit_status().is_none());
}

#[test]
fn malformed_passive_replies_get_425_and_open_nothing() {
    require_lab!();
    let lab = plain_lab();
    let (_server, next) = scripted_with_queue(&lab, &["PASV", "EPSV"]);
    let mut alg = start_alg(&lab.gateway, &[]);
    let mut ctl = login(&lab);
    let cases: [(&str, &[u8]); 10] = [
        (
            "PASV",
            b"227 Entering Passive Mode (203,0,113,256,119,36)\r\n",
        ),
        ("PASV", b"227 Entering Passive Mode (203,0,113,2,256,1)\r\n"),
        ("PASV", b"227 Entering Passive Mode (203,0,113,2,0,0)\r\n"),
        (
            "PASV",
            b"227 Entering Passive Mode (99999999999999999999,0,113,2,119,36)\r\n",
        ),
        ("PASV", b"227 Entering Passive Mode (203,0,113,2,119)\r\n"),
        ("PASV", b"227 Entering Passive Mode\r\n"),
        (
            "EPSV",
            b"229 Entering Extended Passive Mode (|||70000|)\r\n",
        ),
        ("EPSV", b"229 Entering Extended Passive Mode (|||0|)\r\n"),
        (
            "EPSV",
            b"229 Entering Extended Passive Mode (|||99999999999999999999|)\r\n",
        ),
        (
            "EPSV",
            b"229 Entering Extended Passive Mode (|1|30500|)\r\n",
        ),
    ];
    for (verb, answer) in cases {
        next.push(answer);
        let reply = ctl.cmd(verb).expect(verb);
        assert_eq!(
            reply.code,
            425,
            "{:?} -> {}",
            String::from_utf8_lossy(answer),
            reply.text
        );
    }
    assert_nothing_opened(&lab, &alg, &ctl);
    assert!(alg.exit_status().is_none(), "{}", alg.output());
    assert!(!alg.output().contains("panicked"));
    assert_eq!(ctl.cmd("PASV").expect("PASV").code, 227);
}

// ---------------------------------------------------------------------------------------
// 7. Limits
// ---------------------------------------------------------------------------------------

/// Opens a control connection from `ns` (from `from` if given) and reads the first reply.
fn first_reply(ns: &Netns, from: Option<Ipv4Addr>) -> (Control, u16, String) {
    let mut ctl = match from {
        Some(ip) => Control::connect_from(ns, IpAddr::V4(ip), control_addr()),
        None => Control::connect(ns, control_addr()),
    }
    .expect("connect");
    let reply = ctl.read_reply(REPLY_TIMEOUT).expect("first reply");
    (ctl, reply.code, reply.text)
}

#[test]
fn max_sessions_is_enforced_with_421_and_a_freed_slot_is_reused() {
    require_lab!();
    let lab = plain_lab();
    let _server = scripted(&lab, |_| None);
    let alg = start_alg(
        &lab.gateway,
        &["--max-sessions", "3", "--max-sessions-per-client", "10"],
    );
    let mut held: Vec<Control> = (0..3)
        .map(|_| {
            let (ctl, code, text) = first_reply(&lab.client, None);
            assert_eq!(code, 220, "{text}\n{}", alg.output());
            ctl
        })
        .collect();
    let (mut refused, code, text) = first_reply(&lab.client, None);
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("Too many sessions"), "{text}");
    assert!(
        refused.wait_closed(Duration::from_secs(3)).is_some(),
        "not closed"
    );
    let limited = |log: &str| {
        log.lines()
            .any(|l| l.contains("session{") && l.contains("session limit reached"))
    };
    let log = log_when(&alg, limited);
    assert!(limited(&log), "{log}");
    held.pop();
    std::thread::sleep(Duration::from_millis(300));
    let (_again, code, text) = first_reply(&lab.client, None);
    assert_eq!(code, 220, "a freed slot must be reusable: {text}");
}

#[test]
fn a_client_refused_because_the_gateway_is_full_keeps_its_new_session_token() {
    require_lab!();
    let lab = plain_lab();
    let _server = scripted(&lab, |_| None);
    let alg = start_alg(
        &lab.gateway,
        &[
            "--max-sessions",
            "1",
            "--new-sessions-per-second",
            "1",
            "--max-sessions-per-client",
            "10",
        ],
    );
    let (held, code, text) = first_reply(&lab.client, None);
    assert_eq!(code, 220, "{text}\n{}", alg.output());
    // A second later its token is back; three tries while the gateway is full.
    std::thread::sleep(Duration::from_millis(1100));
    let tries = Instant::now();
    for _ in 0..3 {
        let (_refused, code, text) = first_reply(&lab.client, None);
        assert_eq!(code, 421, "{text}");
        assert!(text.contains("Too many sessions"), "{text}");
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    // Well within a second of those tries: only a token they did not spend lets it in.
    let (_again, code, text) = first_reply(&lab.client, None);
    assert!(
        tries.elapsed() < Duration::from_millis(950),
        "too slow to judge: {:?} since the first refused try (a token came back)",
        tries.elapsed()
    );
    assert_eq!(code, 220, "{text}\n{}", alg.output());
}

#[test]
fn max_sessions_per_client_is_enforced_per_address() {
    require_lab!();
    let lab = plain_lab();
    lab.client
        .ip(&["addr", "add", "10.0.0.3/24", "dev", "eth0"])
        .expect("second client address");
    let _server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &["--max-sessions-per-client", "2"]);
    let _a = first_reply(&lab.client, None);
    let _b = first_reply(&lab.client, None);
    assert_eq!((_a.1, _b.1), (220, 220), "{}", alg.output());
    let (_c, code, text) = first_reply(&lab.client, None);
    assert_eq!(code, 421, "{text}");
    assert!(
        text.contains("too many sessions from your address"),
        "{text}"
    );
    let (_d, code, text) = first_reply(&lab.client, Some(Ipv4Addr::new(10, 0, 0, 3)));
    assert_eq!(code, 220, "another client is not affected: {text}");
}

#[test]
fn new_sessions_per_second_per_client_is_enforced_and_refills() {
    require_lab!();
    let lab = plain_lab();
    let _server = scripted(&lab, |_| None);
    let alg = start_alg(
        &lab.gateway,
        &[
            "--new-sessions-per-second",
            "5",
            "--max-sessions-per-client",
            "100",
        ],
    );
    // Six connections back to back from one thread in the client namespace (far within a
    // fifth of a second, the time one token takes to come back), then read the answers.
    let addr = SocketAddr::V4(control_addr());
    let (streams, burst) = lab
        .client
        .run_in(move || {
            let started = Instant::now();
            let streams: Vec<std::io::Result<std::net::TcpStream>> = (0..6)
                .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
                .collect();
            (streams, started.elapsed())
        })
        .expect("client thread");
    let codes: Vec<u16> = streams
        .into_iter()
        .map(|stream| {
            let mut ctl = Control::from_stream(stream.expect("connect")).expect("control");
            ctl.read_reply(REPLY_TIMEOUT).expect("reply").code
        })
        .collect();
    assert!(
        burst < Duration::from_millis(150),
        "burst too slow to judge: {burst:?}"
    );
    assert_eq!(
        codes.iter().filter(|&&c| c == 220).count(),
        5,
        "{codes:?}\n{}",
        alg.output()
    );
    assert_eq!(codes.iter().filter(|&&c| c == 421).count(), 1, "{codes:?}");
    let log = log_when(&alg, |log| log.contains("too many new sessions"));
    assert!(log.contains("too many new sessions"), "{log}");
    std::thread::sleep(Duration::from_millis(1200));
    let (_later, code, text) = first_reply(&lab.client, None);
    assert_eq!(code, 220, "the bucket refills: {text}");
}

#[test]
fn an_over_long_line_gets_500_is_dropped_whole_and_the_session_goes_on() {
    require_lab!();
    let lab = plain_lab();
    let server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &["--max-line", "128"]);
    let mut ctl = login(&lab);
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'A', 200));
    long.extend_from_slice(b"\r\n");
    let reply = ctl.raw_cmd(&long).expect("reply");
    assert_eq!(reply.code, 500, "{}", reply.text);
    assert!(reply.text.contains("too long"), "{}", reply.text);
    // A PORT at the end of an over-long line is part of the dropped line.
    let mut smuggle = vec![b'X'; 150];
    smuggle.extend_from_slice(b"PORT 10,0,0,2,200,1\r\n");
    assert_eq!(ctl.raw_cmd(&smuggle).expect("reply").code, 500);
    // So is a long line arriving in many segments, and a PORT padded beyond the limit.
    let mut padded = b"PORT 10,0,0,2,200,1".to_vec();
    padded.extend(std::iter::repeat_n(b' ', 150));
    padded.extend_from_slice(b"\r\n");
    let splits: Vec<usize> = (1..padded.len() / 32).map(|i| i * 32).collect();
    ctl.send_split(&padded, &splits, Duration::from_millis(10))
        .expect("send");
    assert_eq!(ctl.read_reply(REPLY_TIMEOUT).expect("reply").code, 500);
    // Exactly at the limit is fine (128 bytes with CRLF).
    let mut fits = b"NOOP ".to_vec();
    fits.extend(std::iter::repeat_n(b'B', 128 - 5 - 2));
    fits.extend_from_slice(b"\r\n");
    assert_eq!(ctl.raw_cmd(&fits).expect("reply").code, 200);
    assert_eq!(ctl.cmd("NOOP").expect("reply").code, 200);
    let received = received_lines(&server);
    assert!(
        !received
            .iter()
            .any(|l| l.len() > 128 || l.windows(4).any(|w| w == b"PORT")),
        "parts of an over-long line reached the server: {:?}",
        received
            .iter()
            .map(|l| String::from_utf8_lossy(l))
            .collect::<Vec<_>>()
    );
    assert_nothing_opened(&lab, &alg, &ctl);
    let log = log_when(&alg, |log| log.matches("over-long line").count() >= 3);
    assert_eq!(
        log.matches("over-long line").count(),
        3,
        "each over-long line is logged once\n{log}"
    );
}

#[test]
fn an_idle_session_gets_421_at_the_idle_timeout() {
    require_lab!();
    let lab = plain_lab();
    let _server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &["--idle-timeout", "2"]);
    let mut ctl = login(&lab);
    let quiet_since = Instant::now();
    let (bytes, closed_at) = ctl
        .wait_closed(Duration::from_secs(8))
        .unwrap_or_else(|| panic!("still open after 8 s\n{}", alg.output()));
    let after = closed_at - quiet_since;
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("421 ") && text.contains("Idle timeout"),
        "{text:?}"
    );
    assert!(
        after >= Duration::from_millis(1800) && after <= Duration::from_secs(4),
        "closed after {after:?}"
    );
}

#[test]
fn max_pinholes_per_session_is_enforced_with_425() {
    require_lab!();
    let lab = plain_lab();
    let (_server, next) = scripted_with_queue(&lab, &["PASV"]);
    let alg = start_alg(&lab.gateway, &["--max-pinholes", "2"]);
    let mut ctl = login(&lab);
    // A new data address replaces the one before, so pinholes pile up only while the server
    // has yet to answer: data commands pipelined in one segment.
    ctl.send(
        b"PORT 10,0,0,2,200,1\r\nEPRT |1|10.0.0.2|51202|\r\nPORT 10,0,0,2,200,3\r\nEPRT |1|10.0.0.2|51204|\r\n",
    )
    .expect("pipelined");
    let replies: Vec<_> = (0..4)
        .map(|_| ctl.read_reply(REPLY_TIMEOUT).expect("reply"))
        .collect();
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes, [200, 200, 425, 425], "{}", context(&alg, &ctl));
    assert!(
        replies[2].text.contains("2 already pending"),
        "{}",
        replies[2].text
    );
    assert_eq!(set(&lab, "set", "active_pin"), vec![active_element(51202)]);
    assert!(set(&lab, "set", "passive_pin").is_empty());
    assert_eq!(refusals_logged(&alg, "already pending", 2), 2);
    drop(next);
}

#[test]
fn a_slowloris_client_holds_no_more_than_its_own_slots_and_only_until_the_idle_timeout() {
    require_lab!();
    let lab = plain_lab();
    lab.client
        .ip(&["addr", "add", "10.0.0.3/24", "dev", "eth0"])
        .expect("second client address");
    let _server = scripted(&lab, |_| None);
    let alg = start_alg(
        &lab.gateway,
        &[
            "--max-sessions-per-client",
            "2",
            "--max-sessions",
            "3",
            "--idle-timeout",
            "4",
            "--max-line",
            "128",
        ],
    );
    let started = Instant::now();
    let mut slow: Vec<Control> = (0..2)
        .map(|_| {
            let (ctl, code, text) = first_reply(&lab.client, None);
            assert_eq!(code, 220, "{text}\n{}", alg.output());
            ctl
        })
        .collect();
    // While they trickle, a third session of the same client is refused, another client's
    // session is not.
    for ctl in &mut slow {
        ctl.send(b"N").expect("trickle");
    }
    let (_third, code, text) = first_reply(&lab.client, None);
    assert_eq!(
        code,
        421,
        "a third session of the same client: {text}\n{}",
        alg.output()
    );
    let (mut other, code, text) = first_reply(&lab.client, Some(Ipv4Addr::new(10, 0, 0, 3)));
    assert_eq!(
        code,
        220,
        "another client must still get in: {text}\n{}",
        alg.output()
    );
    assert_eq!(other.cmd("USER x").expect("USER").code, 331);
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "too slow to judge"
    );
    // One byte per 400 ms, never a line end: cut at the idle timeout all the same.
    let mut closed = [None, None];
    while started.elapsed() < Duration::from_secs(12) && closed.iter().any(Option::is_none) {
        for (ctl, closed) in slow.iter_mut().zip(&mut closed) {
            if closed.is_none() {
                let gone = ctl.send(b"N").is_err()
                    || ctl.wait_closed(Duration::from_millis(200)).is_some();
                if gone {
                    *closed = Some(started.elapsed());
                }
            }
        }
    }
    for at in closed {
        let at =
            at.unwrap_or_else(|| panic!("a trickling session outlived 12 s\n{}", alg.output()));
        assert!(at <= Duration::from_secs(7), "cut only after {at:?}");
    }
    // Its slots are free again.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(first_reply(&lab.client, None).1, 220, "{}", alg.output());
}

// ---------------------------------------------------------------------------------------
// Slow and silent peers, and the pending-pinhole limit over many transfers (these three
// failed against the daemon before a52f417).
// ---------------------------------------------------------------------------------------

#[test]
fn a_line_that_never_completes_is_cut_at_the_idle_timeout() {
    require_lab!();
    let lab = plain_lab();
    let _server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &["--idle-timeout", "2"]);
    let mut ctl = first_reply(&lab.client, None).0;
    let start = Instant::now();
    let mut closed = None;
    while start.elapsed() < Duration::from_secs(10) && closed.is_none() {
        if ctl.send(b"A").is_err() {
            closed = Some(start.elapsed());
            break;
        }
        closed = ctl
            .wait_closed(Duration::from_millis(700))
            .map(|_| start.elapsed());
    }
    let closed = closed.unwrap_or_else(|| {
        panic!(
            "a client sending one byte every 0.7 s without a line end was still connected after \
             {:?} with --idle-timeout 2\n{}",
            start.elapsed(),
            alg.output()
        )
    });
    assert!(
        closed <= Duration::from_secs(5),
        "cut only after {closed:?}"
    );
}

#[test]
fn a_150_without_any_data_connection_does_not_suspend_the_idle_timeout_forever() {
    require_lab!();
    let lab = plain_lab();
    let _server = scripted(&lab, |text| {
        text.starts_with("RETR")
            .then(|| b"150 Opening BINARY mode data connection\r\n".to_vec())
    });
    let alg = start_alg(&lab.gateway, &["--idle-timeout", "2"]);
    let mut ctl = login(&lab);
    assert_eq!(ctl.cmd("RETR nothing").expect("RETR").code, 150);
    let quiet_since = Instant::now();
    let closed = ctl.wait_closed(Duration::from_secs(8));
    assert!(
        closed.is_some(),
        "no data connection was ever opened, yet the session was still up {:?} after the \
         150 with --idle-timeout 2\n{}",
        quiet_since.elapsed(),
        alg.output()
    );
}

#[test]
fn a_transfer_holds_its_session_past_the_idle_timeout_only_while_its_connection_lives() {
    require_lab!("conntrack");
    let lab = plain_lab();
    // The server announces a transfer (150) and never ends it: only the data connection's
    // state in the kernel's conntrack tells the ALG whether it still runs.
    let server = scripted(&lab, |text| {
        text.starts_with("RETR")
            .then(|| b"150 Opening BINARY mode data connection\r\n".to_vec())
    });
    let alg = start_alg(&lab.gateway, &["--idle-timeout", "2"]);
    for mode in ["PASV", "PORT"] {
        let mut ctl = login(&lab);
        // The data connection, made through the pinhole: (client end, server end).
        let (client_end, server_end) = if mode == "PASV" {
            let data = listen_in(&lab.server, v4(SERVER_IP, PASV_PORT)).expect("data listener");
            assert_eq!(ctl.cmd("PASV").expect("PASV").code, 227);
            let client_end = connect_in(
                &lab.client,
                None,
                v4(SERVER_IP, PASV_PORT),
                Duration::from_secs(3),
            )
            .expect("thread")
            .expect("passive data connection");
            let (server_end, _) = accept_within(&data, Duration::from_secs(2)).expect("accept");
            (client_end, server_end)
        } else {
            let listener = listen_in(&lab.client, v4(CLIENT_IP, 51204)).expect("listener");
            let reply = ctl.cmd(&port_command(CLIENT_IP, 51204)).expect("PORT");
            assert_eq!(reply.code, 200);
            let leased = data_commands_received(&server)
                .iter()
                .rev()
                .find_map(|line| gateway_port_in(line.as_bytes()))
                .expect("rewritten PORT");
            let server_end = connect_in(
                &lab.server,
                None,
                v4(GATEWAY_WAN_IP, leased),
                Duration::from_secs(3),
            )
            .expect("thread")
            .expect("active data connection");
            let (client_end, _) = accept_within(&listener, Duration::from_secs(2)).expect("accept");
            (client_end, server_end)
        };
        assert_eq!(ctl.cmd("RETR f").expect("RETR").code, 150);
        // Silent for more than two idle timeouts while the data connection lives: kept.
        assert!(
            ctl.wait_closed(Duration::from_secs(5)).is_none(),
            "{mode}: cut while its data connection was open\n{}",
            alg.output()
        );
        // The data connection ends; the 226 never comes: cut at the next idle check.
        drop((client_end, server_end));
        let ended = Instant::now();
        let closed = ctl.wait_closed(Duration::from_secs(6));
        let (bytes, at) = closed.unwrap_or_else(|| {
            panic!(
                "{mode}: still up 6 s after its data connection ended (--idle-timeout 2)\n{}",
                alg.output()
            )
        });
        assert!(
            String::from_utf8_lossy(&bytes).contains("421"),
            "{mode}: closed without a 421: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(at.duration_since(ended) <= Duration::from_secs(5), "{mode}");
    }
}

#[test]
fn used_pinholes_do_not_count_against_the_pending_limit() {
    require_lab!();
    let lab = plain_lab();
    let next = Canned::default();
    let answers = next.clone();
    // Each RETR is a complete (empty) transfer: 150 once the data connection is up, 226.
    let _server = scripted(&lab, move |text| {
        if text.eq_ignore_ascii_case("PASV") {
            answers.pop()
        } else if text.starts_with("RETR") {
            Some(b"150 Opening data connection\r\n226 Transfer complete\r\n".to_vec())
        } else {
            None
        }
    });
    let alg = start_alg(&lab.gateway, &["--max-pinholes", "2"]);
    let mut ctl = login(&lab);
    for (i, port) in [30501u16, 30502, 30503, 30504, 30505]
        .into_iter()
        .enumerate()
    {
        let data = listen_in(&lab.server, v4(SERVER_IP, port)).expect("data listener");
        next.push(pasv_reply(SERVER_IP, port));
        let reply = ctl.cmd("PASV").expect("PASV");
        assert_eq!(
            reply.code,
            227,
            "transfer {} (after {i} used pinholes, none pending): {}\n{}",
            i + 1,
            reply.text,
            alg.output()
        );
        let stream = connect_in(
            &lab.client,
            None,
            v4(SERVER_IP, port),
            Duration::from_secs(3),
        )
        .expect("thread");
        assert!(stream.is_ok());
        assert!(accept_within(&data, Duration::from_secs(2)).is_some());
        assert_eq!(ctl.cmd("RETR f").expect("RETR").code, 150);
        assert_eq!(ctl.read_reply(REPLY_TIMEOUT).expect("226").code, 226);
    }
    assert_eq!(admitted(&lab), (5, 0));
}

#[test]
fn an_idle_tls_passthrough_session_is_cut_unless_a_connection_joins_client_and_server() {
    require_lab!();
    let lab = plain_lab();
    // What FTPS passthrough asks of the admin: a static rule for the server's passive range.
    lab.gateway
        .exec_ok(&[
            "nft", "insert", "rule", "inet", "lab_fw", "forward", "iifname", "lan0", "oifname",
            "wan0", "tcp", "dport", "30999", "accept",
        ])
        .expect("static rule for the passive range");
    let _server = scripted(&lab, |text| {
        text.starts_with("AUTH")
            .then(|| b"234 Proceed with negotiation\r\n".to_vec())
    });
    let data_listener = listen_in(&lab.server, v4(SERVER_IP, 30999)).expect("data listener");
    let alg = start_alg(
        &lab.gateway,
        &["--idle-timeout", "2", "--tls-auth", "passthrough"],
    );
    let mut ctl = login(&lab);
    assert_eq!(ctl.cmd("AUTH TLS").expect("AUTH").code, 234);
    // The encrypted session's transfer: a connection from client to server that the control
    // channel cannot show.
    let data = connect_in(
        &lab.client,
        None,
        v4(SERVER_IP, 30999),
        Duration::from_secs(2),
    )
    .expect("client thread")
    .expect("data connection through the static rule");
    let _accepted = accept_within(&data_listener, Duration::from_secs(2)).expect("accepted");
    // Silent for two and a half idle timeouts: kept, since the transfer lives.
    assert!(
        ctl.wait_closed(Duration::from_secs(5)).is_none(),
        "cut during its transfer\n{}",
        alg.output()
    );
    // The transfer ends: at the next idle check the session goes, without a reply (the
    // channel is encrypted).
    drop(data);
    let ended = Instant::now();
    let (bytes, closed_at) = ctl
        .wait_closed(Duration::from_secs(8))
        .unwrap_or_else(|| panic!("still open 8 s after its transfer\n{}", alg.output()));
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    assert!(
        closed_at - ended <= Duration::from_secs(4),
        "closed {:?} after the transfer",
        closed_at - ended
    );
    let log = log_when(&alg, |log| log.contains("idle timeout in TLS passthrough"));
    assert!(log.contains("idle timeout in TLS passthrough"), "{log}");
}

#[test]
fn a_wan_address_the_gateway_does_not_have_is_named_at_start_and_to_each_client() {
    require_lab!();
    let lab = plain_lab();
    let _server = scripted(&lab, |_| None);
    let alg = start_alg(&lab.gateway, &["--wan-address", "192.0.2.77"]);
    let log = log_when(&alg, |log| log.contains("wan_address is not (yet)"));
    assert!(log.contains("wan_address is not (yet)"), "{log}");
    // Not the server's fault, and the client is told so.
    let (_ctl, code, text) = first_reply(&lab.client, None);
    assert_eq!(code, 421, "{text}");
    assert!(
        text.contains("192.0.2.77 is not configured"),
        "{text}\n{}",
        alg.output()
    );
}

//! Encoding and decoding checks (no privileges needed), then the backend against the real
//! kernel, each test in a network namespace of its own (`fa-fw-<pid>-<n>`, deleted by a
//! guard, also on failure). Without root or `ip netns`, the kernel tests are skipped with a
//! message, except under `CI=true`, where they fail.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn passive(client: &str, server: &str, port: u16) -> Pinhole {
    Pinhole::passive(ip(client), ip(server), port)
}

fn active(server: &str, gateway: &str, gateway_port: u16, client: &str, port: u16) -> Pinhole {
    Pinhole::active(ip(server), ip(gateway), gateway_port, ip(client), port)
}

// ---------------------------------------------------------------------------------------
// Pure encoding / decoding

#[test]
fn passive_key_is_padded_concatenation_in_network_order() {
    let els = elements(&passive("10.0.0.2", "203.0.113.2", 0x7530), true).expect("elements");
    assert_eq!(
        els,
        vec![Element {
            set: "passive_pin",
            key: vec![10, 0, 0, 2, 203, 0, 113, 2, 0x75, 0x30, 0, 0],
            data: None,
        }]
    );
    let six = elements(&passive("fd00::2", "2001:db8::2", 1), true).expect("elements");
    assert_eq!(six[0].set, "passive_pin6");
    assert_eq!(six[0].key.len(), 36);
    assert_eq!(&six[0].key[32..], &[0, 1, 0, 0]);
}

#[test]
fn active_has_dnat_once_and_pin_elements() {
    let p = active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.2", 50000);
    let els = elements(&p, true).expect("elements");
    let sets: Vec<_> = els.iter().map(|e| e.set).collect();
    assert_eq!(sets, ["dnat_to", "dnat_once", "active_pin"]);
    let gp = 40000u16.to_be_bytes();
    let cp = 50000u16.to_be_bytes();
    let outside = vec![203, 0, 113, 2, 198, 51, 100, 1, gp[0], gp[1], 0, 0];
    assert_eq!(els[0].key, outside);
    assert_eq!(els[0].data, Some(vec![10, 0, 0, 2, cp[0], cp[1], 0, 0]));
    assert_eq!(els[1].key, outside);
    assert_eq!(els[1].data, None);
    assert_eq!(
        els[2].key,
        vec![203, 0, 113, 2, 10, 0, 0, 2, cp[0], cp[1], 0, 0]
    );
    // Removal needs keys only.
    assert!(
        elements(&p, false)
            .expect("elements")
            .iter()
            .all(|e| e.data.is_none())
    );
}

#[test]
fn mapped_addresses_go_to_the_ipv4_sets_and_mixed_families_are_refused() {
    let els = elements(&passive("::ffff:10.0.0.2", "203.0.113.2", 1), true).expect("elements");
    assert_eq!(els[0].set, "passive_pin");
    assert_eq!(&els[0].key[..4], &[10, 0, 0, 2]);
    let mixed = passive("10.0.0.2", "2001:db8::2", 1);
    assert_eq!(
        elements(&mixed, true),
        Err(FirewallError::MixedFamilies(mixed))
    );
}

#[test]
fn timeouts_round_up_to_whole_milliseconds_and_never_zero() {
    assert_eq!(timeout_millis(Duration::ZERO), 1);
    assert_eq!(timeout_millis(Duration::from_micros(1)), 1);
    assert_eq!(timeout_millis(Duration::from_micros(1001)), 2);
    assert_eq!(timeout_millis(Duration::from_secs(30)), 30_000);
    assert_eq!(timeout_millis(Duration::MAX), u64::MAX);
}

/// A minimal attribute walker, to check the encoder's nesting and lengths.
fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let ty = u16::from_ne_bytes([data[2], data[3]]);
        assert!(len >= 4 && len <= data.len(), "attribute length {len}");
        out.push((ty, &data[4..len]));
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    assert!(data.is_empty(), "trailing bytes");
    out
}

#[test]
fn setelem_message_layout_matches_the_uapi() {
    let el = &elements(
        &active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.2", 50000),
        true,
    )
    .expect("elements")[0];
    let mut buf = Vec::new();
    setelem_msg(
        &mut buf,
        NFT_MSG_NEWSETELEM,
        7,
        "ftp_alg",
        el,
        Some(1500),
        true,
    );
    assert_eq!(ne_u32(&buf, 0), Some(buf.len() as u32));
    assert_eq!(buf.len() % 4, 0);
    assert_eq!(ne_u16(&buf, 4), Some((10 << 8) | 12));
    assert_eq!(ne_u16(&buf, 6), Some(0x1 | 0x4 | 0x400));
    assert_eq!(ne_u32(&buf, 8), Some(7));
    assert_eq!(&buf[16..20], &[1, 0, 0, 0]); // NFPROTO_INET, v0, res_id 0
    let top = attrs(&buf[20..]);
    assert_eq!(top[0], (1, &b"ftp_alg\0"[..]));
    assert_eq!(top[1], (2, &b"dnat_to\0"[..]));
    assert_eq!(top[2].0, 3 | NLA_F_NESTED);
    let list = attrs(top[2].1);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].0, 1 | NLA_F_NESTED);
    let item = attrs(list[0].1);
    assert_eq!(item[0].0, 1 | NLA_F_NESTED);
    assert_eq!(attrs(item[0].1), vec![(1, &el.key[..])]);
    assert_eq!(item[1].0, 2 | NLA_F_NESTED);
    assert_eq!(
        attrs(item[1].1),
        vec![(1, el.data.as_deref().expect("data"))]
    );
    assert_eq!(item[2], (4, &1500u64.to_be_bytes()[..]));

    let mut del = Vec::new();
    setelem_msg(&mut del, NFT_MSG_DESTROYSETELEM, 8, "t", el, None, true);
    assert_eq!(ne_u16(&del, 4), Some((10 << 8) | 30));
    assert_eq!(ne_u16(&del, 6), Some(0x1 | 0x4));
    // Not the last message of its batch: no success ACK asked for.
    let mut quiet = Vec::new();
    setelem_msg(
        &mut quiet,
        NFT_MSG_NEWSETELEM,
        9,
        "t",
        el,
        Some(1500),
        false,
    );
    assert_eq!(ne_u16(&quiet, 6), Some(0x1 | 0x400));
}

#[test]
fn batch_markers_address_the_nftables_subsystem() {
    let mut buf = Vec::new();
    batch_marker(&mut buf, NFNL_MSG_BATCH_BEGIN, 3);
    assert_eq!(buf.len(), 20);
    assert_eq!(ne_u16(&buf, 4), Some(0x10));
    assert_eq!(&buf[16..20], &[0, 0, 0, 10]); // AF_UNSPEC, v0, res_id = htons(10)
}

fn ack(seq: u32, code: i32, extra: usize) -> Vec<u8> {
    let mut m = Vec::new();
    let len = (NLMSG_HDRLEN + 4 + 16 + extra) as u32;
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&code.to_ne_bytes());
    m.resize(len as usize, 0);
    m
}

#[test]
fn replies_parse_acks_errors_and_other_messages() {
    let mut data = ack(5, 0, 0);
    data.extend(ack(6, -libc::ENOENT, 2)); // unaligned length, padded below
    data.resize(data.len().next_multiple_of(4), 0);
    let mut other = ack(7, 0, 0);
    other[4..6].copy_from_slice(&((10u16 << 8) | 15).to_ne_bytes());
    data.extend(other);
    let mut out = Vec::new();
    parse_replies(&data, &mut out).expect("parse");
    assert_eq!(
        out,
        vec![
            Reply::Ack { seq: 5, errno: 0 },
            Reply::Ack {
                seq: 6,
                errno: libc::ENOENT
            },
            Reply::Other {
                seq: 7,
                ty: (10 << 8) | 15
            },
        ]
    );
}

/// A ctnetlink `CT_NEW` message (the answer to a `CT_GET`) with `attrs` after its nfgenmsg.
fn ct_entry(seq: u32, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    let len = (NLMSG_HDRLEN + 4 + attrs.len()) as u32;
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW).to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[NFPROTO_IPV4, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&ty.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(a.len().next_multiple_of(4), 0);
    a
}

#[test]
fn a_conntrack_entry_reply_gives_its_tcp_state() {
    // As the kernel sends it: other attributes first, nests flagged NLA_F_NESTED, the TCP
    // state among the TCP protocol info's other attributes.
    let tcp = [
        nla(2, &[7]), // CTA_PROTOINFO_TCP_WSCALE_ORIGINAL
        nla(CTA_PROTOINFO_TCP_STATE, &[3]),
    ]
    .concat();
    let info = nla(CTA_PROTOINFO_TCP | NLA_F_NESTED, &tcp);
    let tuple = |proto: u8| {
        [
            nla(
                CTA_TUPLE_IP | NLA_F_NESTED,
                &[
                    nla(CTA_IP_V4_SRC, &[203, 0, 113, 2]),
                    nla(CTA_IP_V4_DST, &[198, 51, 100, 1]),
                ]
                .concat(),
            ),
            nla(
                CTA_TUPLE_PROTO | NLA_F_NESTED,
                &[
                    nla(CTA_PROTO_NUM, &[proto]),
                    nla(CTA_PROTO_SRC_PORT, &20u16.to_be_bytes()),
                    nla(CTA_PROTO_DST_PORT, &40001u16.to_be_bytes()),
                ]
                .concat(),
            ),
        ]
        .concat()
    };
    let attrs = [
        nla(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple(6)),
        nla(3, &0u32.to_be_bytes()), // CTA_STATUS
        nla(CTA_PROTOINFO | NLA_F_NESTED, &info),
    ]
    .concat();
    let mut data = ct_entry(9, &attrs);
    data.extend(ack(9, 0, 0));
    // No protocol info at all (a UDP entry), and a truncated attribute: no state, no
    // tuple, not a panic.
    data.extend(ct_entry(
        10,
        &nla(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple(17)),
    ));
    let mut broken = nla(CTA_PROTOINFO | NLA_F_NESTED, &info);
    broken[..2].copy_from_slice(&200u16.to_ne_bytes());
    data.extend(ct_entry(11, &broken));
    let mut out = Vec::new();
    parse_replies(&data, &mut out).expect("parse");
    assert_eq!(
        out,
        vec![
            Reply::Flow {
                seq: 9,
                tcp_state: Some(3),
                tcp: Some((
                    "203.0.113.2:20".parse().expect("src"),
                    "198.51.100.1:40001".parse().expect("dst")
                )),
            },
            Reply::Ack { seq: 9, errno: 0 },
            // UDP: no TCP tuple.
            Reply::Flow {
                seq: 10,
                tcp_state: None,
                tcp: None,
            },
            Reply::Flow {
                seq: 11,
                tcp_state: None,
                tcp: None,
            },
        ]
    );
}

#[test]
fn an_active_flow_is_named_as_conntrack_names_it() {
    let mapped = active(
        "::ffff:203.0.113.2",
        "::ffff:198.51.100.1",
        40001,
        "10.0.0.2",
        50000,
    );
    let plain = active("203.0.113.2", "198.51.100.1", 40001, "10.0.0.2", 50000);
    let flow = active_flow(&plain).expect("a leased port");
    assert_eq!(active_flow(&mapped), Some(flow));
    assert_eq!(flow.0.to_string(), "203.0.113.2:20");
    assert_eq!(flow.1.to_string(), "198.51.100.1:40001");
    assert_eq!(
        active_flow(&passive("10.0.0.2", "203.0.113.2", 30000)),
        None
    );
}

#[test]
fn malformed_replies_are_errors_not_panics() {
    let good = ack(1, 0, 0);
    let cases: Vec<Vec<u8>> = vec![
        good[..10].to_vec(),               // truncated header
        good[..NLMSG_HDRLEN + 2].to_vec(), // length beyond the datagram
        {
            let mut m = good.clone();
            m[..4].copy_from_slice(&3u32.to_ne_bytes()); // length below the header
            m
        },
        {
            let mut m = good[..NLMSG_HDRLEN + 2].to_vec();
            m[..4].copy_from_slice(&((NLMSG_HDRLEN + 2) as u32).to_ne_bytes());
            m // NLMSG_ERROR without its error code
        },
        ack(1, 5, 0), // positive "error"
        ack(1, i32::MIN, 0),
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut out = Vec::new();
        assert!(
            parse_replies(case, &mut out).is_err(),
            "case {i} parsed: {out:?}"
        );
    }
    // A good message before a bad one is kept.
    let mut data = good.clone();
    data.extend_from_slice(&good[..8]);
    let mut out = Vec::new();
    assert!(parse_replies(&data, &mut out).is_err());
    assert_eq!(out, vec![Reply::Ack { seq: 1, errno: 0 }]);
}

#[test]
fn bad_table_names_and_namespaces_fail_at_start() {
    assert!(matches!(
        NftFirewall::start(""),
        Err(FirewallError::InvalidTableName(_))
    ));
    assert!(matches!(
        NftFirewall::start(&"x".repeat(256)),
        Err(FirewallError::InvalidTableName(_))
    ));
    let missing = Path::new("/nonexistent/ftp-alg-netns");
    assert!(matches!(
        NftFirewall::start_in_netns("ftp_alg", Some(missing)),
        Err(FirewallError::Namespace { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Against the kernel

static NEXT_NETNS: AtomicUsize = AtomicUsize::new(0);

/// Writes to stderr past the test harness's capture, so a skip (or a benchmark's numbers)
/// is always visible.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Skips the test (or fails it under CI, where a skipped kernel test would hide a break).
fn skip<T>(why: &str) -> Option<T> {
    if crate::lab::preflight::in_ci() {
        panic!("kernel test cannot run under CI: {why}");
    }
    say(&format!("skipping kernel test: {why}"));
    None
}

/// A network namespace of our own, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip("needs root (network namespaces and CAP_NET_ADMIN)");
        }
        let name = format!(
            "fa-fw-{}-{}",
            std::process::id(),
            NEXT_NETNS.fetch_add(1, Ordering::Relaxed)
        );
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(out) if out.status.success() => Some(Self { name }),
            Ok(out) => skip(&format!(
                "`ip netns add` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => skip(&format!("cannot run `ip` (iproute2): {e}")),
        }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| format!("nft stdin: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn load(&self, table: &str, size: u32) {
        self.nft(&["-f", "-"], Some(&table_text(table, size)))
            .expect("load the test table");
    }

    fn list(&self, table: &str, set: &str) -> String {
        let kind = if set.contains("dnat_to") {
            "map"
        } else {
            "set"
        };
        self.nft(&["list", kind, "inet", table, set], None)
            .expect("list set")
    }

    /// Elements of a set and of its hot twin, if it has one (a key the backend put in the set
    /// a moment ago goes to the twin), counted from `nft list` (each live element shows
    /// "expires").
    fn count(&self, table: &str, set: &str) -> usize {
        let twin = super::hot_twin(set).map_or(0, |twin| self.count_in(table, twin));
        self.count_in(table, set) + twin
    }

    /// Elements of exactly this set.
    fn count_in(&self, table: &str, set: &str) -> usize {
        self.list(table, set).matches(" expires ").count()
    }

    fn start(&self, table: &str) -> NftFirewall {
        NftFirewall::start_in_netns(table, Some(&self.path())).expect("start the backend")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// The shipped base table (rules/ftp-alg.nft), with the set size given.
fn table_text(table: &str, size: u32) -> String {
    crate::firewall::table::BaseTable {
        table: table.into(),
        lan_interfaces: vec!["lo".into()],
        control_ports: vec![21],
        listen_port: 2121,
        ct_mark: 0x2121,
        route_mark: 0x2122,
        gc_interval_ms: 20,
    }
    .render()
    .replace("size 1048576", &format!("size {size}"))
}

const T: &str = "fa_test";
const LONG: Duration = Duration::from_secs(60);

impl Netns {
    fn conntrack(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "conntrack"])
            .args(args)
            .output()
            .expect("run conntrack (conntrack-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A conntrack entry for TCP `src:sport -> dst:dport` in state CLOSE (as a reset leaves
    /// it).
    fn insert_closed_flow(&self, src: &str, sport: u16, dst: &str, dport: u16) {
        self.insert_flow(src, sport, dst, dport, "CLOSE");
    }

    /// A conntrack entry for TCP `src:sport -> dst:dport` in `state` (conntrack's names:
    /// ESTABLISHED, TIME_WAIT, ...).
    fn insert_flow(&self, src: &str, sport: u16, dst: &str, dport: u16, state: &str) {
        self.flow_op("-I", src, sport, dst, dport, state);
    }

    /// Moves the TCP entry `src:sport -> dst:dport` to `state` (a connection that finished).
    fn set_flow_state(&self, src: &str, sport: u16, dst: &str, dport: u16, state: &str) {
        self.flow_op("-U", src, sport, dst, dport, state);
    }

    /// `conntrack OP` (insert or update) on one TCP entry, which must succeed.
    fn flow_op(&self, op: &str, src: &str, sport: u16, dst: &str, dport: u16, state: &str) {
        let (sport, dport) = (sport.to_string(), dport.to_string());
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "conntrack", op, "-p", "tcp"])
            .args(["-s", src, "-d", dst, "--sport", &sport, "--dport", &dport])
            .args(["--state", state, "-t", "60"])
            .output()
            .expect("run conntrack (conntrack-tools)");
        assert!(
            out.status.success(),
            "conntrack {op}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_an_active_pinhole_forgets_the_stale_port_20_flow_of_its_gateway_port() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    // The reset data connection of the port's previous holder (under a daemon that ran
    // before this one), and bystanders that must stay: another gateway port, another source
    // port, another server.
    ns.insert_closed_flow("203.0.113.2", 20, "198.51.100.1", 40001);
    ns.insert_closed_flow("203.0.113.2", 33000, "198.51.100.1", 40001);
    ns.insert_closed_flow("203.0.113.9", 20, "198.51.100.1", 40001);
    let fw = ns.start(T);
    ns.insert_closed_flow("203.0.113.2", 20, "198.51.100.1", 40002);
    let before = fw.stats().flows_forgotten;
    let pinhole = active("203.0.113.2", "198.51.100.1", 40001, "10.0.0.2", 50000);
    fw.open(pinhole, LONG).await.expect("open");
    let flows = ns.conntrack(&["-L", "-p", "tcp"]);
    assert!(
        !flows.contains("src=203.0.113.2 dst=198.51.100.1 sport=20 dport=40001 "),
        "stale flow still tracked:\n{flows}"
    );
    for kept in [
        "src=203.0.113.2 dst=198.51.100.1 sport=20 dport=40002 ",
        "src=203.0.113.2 dst=198.51.100.1 sport=33000 dport=40001 ",
        "src=203.0.113.9 dst=198.51.100.1 sport=20 dport=40001 ",
    ] {
        assert!(flows.contains(kept), "{kept} was removed too:\n{flows}");
    }
    assert_eq!(fw.stats().flows_forgotten, before + 1);
    // Closing leaves conntrack alone: the transfer that just ended may still be exchanging
    // its last FIN/ACK on that tuple.
    ns.insert_closed_flow("203.0.113.2", 20, "198.51.100.1", 40001);
    fw.close(pinhole).await.expect("close");
    let flows = ns.conntrack(&["-L", "-p", "tcp"]);
    assert!(
        flows.contains("src=203.0.113.2 dst=198.51.100.1 sport=20 dport=40001 "),
        "closing the pinhole removed its flow:\n{flows}"
    );
    assert_eq!(fw.stats().flows_forgotten, before + 1);
    // The next holder of the port gets it clean again; passive pinholes never ask.
    fw.open(pinhole, LONG).await.expect("reopen");
    assert_eq!(fw.stats().flows_forgotten, before + 2);
    fw.close(pinhole).await.expect("close again");
    let p = passive("10.0.0.2", "203.0.113.2", 30000);
    fw.open(p, LONG).await.expect("open passive");
    fw.close(p).await.expect("close passive");
    assert_eq!(fw.stats().flows_forgotten, before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_active_flow_is_swept_in_the_background_and_its_next_open_skips_the_delete() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = ns.start(T);
    let pinhole = active("203.0.113.2", "198.51.100.1", 40001, "10.0.0.2", 50000);
    let other = active("203.0.113.2", "198.51.100.1", 40002, "10.0.0.2", 50002);
    fw.open(pinhole, LONG).await.expect("open");
    fw.open(other, LONG).await.expect("open the other");
    fw.close(pinhole).await.expect("close");
    // What the transfer that just ended leaves behind on its tuple, and a bystander.
    ns.insert_closed_flow("203.0.113.2", 20, "198.51.100.1", 40001);
    ns.insert_closed_flow("203.0.113.2", 20, "198.51.100.1", 40003);
    let tracked = |flows: &str, port: u16| {
        flows.contains(&format!(
            "src=203.0.113.2 dst=198.51.100.1 sport=20 dport={port} "
        ))
    };
    // Not before its time: the closing connection's last segments still need the entry.
    let p = passive("10.0.0.2", "203.0.113.2", 30000);
    fw.open(p, LONG).await.expect("open passive");
    fw.close(p).await.expect("close passive");
    assert!(
        tracked(&ns.conntrack(&["-L", "-p", "tcp"]), 40001),
        "swept too early"
    );
    assert_eq!(fw.stats().flows_swept, 0);
    tokio::time::sleep(flows::SWEEP_AFTER + Duration::from_millis(100)).await;
    // The next close (any pinhole's) sweeps what is due.
    fw.close(other).await.expect("close the other");
    let flows = ns.conntrack(&["-L", "-p", "tcp"]);
    assert!(!tracked(&flows, 40001), "not swept:\n{flows}");
    assert!(tracked(&flows, 40003), "a bystander was swept:\n{flows}");
    assert_eq!(fw.stats().flows_swept, 1);
    // The port's next holder: no delete on its path.
    let forgotten = fw.stats().flows_forgotten;
    let skipped = fw.stats().flow_deletes_skipped;
    fw.open(pinhole, LONG).await.expect("reopen");
    assert_eq!(fw.stats().flow_deletes_skipped, skipped + 1);
    assert_eq!(fw.stats().flows_forgotten, forgotten);
    // And only once: without a close and a sweep in between, the open after it deletes.
    fw.close(pinhole).await.expect("close again");
    ns.insert_closed_flow("203.0.113.2", 20, "198.51.100.1", 40001);
    fw.open(pinhole, LONG).await.expect("reopen at once");
    assert!(
        !tracked(&ns.conntrack(&["-L", "-p", "tcp"]), 40001),
        "an open before the sweep left the stale flow"
    );
    assert_eq!(fw.stats().flows_forgotten, forgotten + 1);
    assert_eq!(fw.stats().flow_deletes_skipped, skipped + 1);
    fw.close(pinhole).await.expect("last close");
}

/// A pinhole's close is not the end of its data connection: a server that does not linger
/// on close sends its 226 while the tail of the file is still in its send buffer, and a
/// session can end while its transfer runs. The sweep must leave a flow that is still alive
/// alone (its entry carries the DNAT to the client; without it the rest of the transfer is
/// lost) and come back for it later; a flow that has finished is swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_leaves_a_live_data_connection_alone_and_comes_back_for_it() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = ns.start(T);
    let live = active("203.0.113.2", "198.51.100.1", 40001, "10.0.0.2", 50000);
    let done = active("203.0.113.2", "198.51.100.1", 40002, "10.0.0.2", 50002);
    let trigger = passive("10.0.0.2", "203.0.113.2", 30000);
    for p in [live, done] {
        fw.open(p, LONG).await.expect("open");
    }
    ns.insert_flow("203.0.113.2", 20, "198.51.100.1", 40001, "ESTABLISHED");
    ns.insert_flow("203.0.113.2", 20, "198.51.100.1", 40002, "TIME_WAIT");
    for p in [live, done] {
        fw.close(p).await.expect("close");
    }
    let tracked = |port: u16| {
        let flows = ns.conntrack(&["-L", "-p", "tcp"]);
        let found = flows.contains(&format!(
            "src=203.0.113.2 dst=198.51.100.1 sport=20 dport={port} "
        ));
        (found, flows)
    };
    tokio::time::sleep(flows::SWEEP_AFTER + Duration::from_millis(100)).await;
    fw.open(trigger, LONG).await.expect("open passive");
    fw.close(trigger)
        .await
        .expect("close passive: sweeps what is due");
    let (found, flows) = tracked(40001);
    assert!(found, "the sweep removed a live data connection:\n{flows}");
    let (found, flows) = tracked(40002);
    assert!(!found, "the finished one was not swept:\n{flows}");
    assert_eq!(fw.stats().flows_swept, 1);
    assert_eq!(fw.stats().flow_sweeps_deferred, 1);
    // Not swept, so its port's next holder still checks inline; and once the connection
    // has finished, a later sweep takes it.
    ns.set_flow_state("203.0.113.2", 20, "198.51.100.1", 40001, "TIME_WAIT");
    tokio::time::sleep(flows::SWEEP_RETRY + Duration::from_millis(100)).await;
    fw.open(trigger, LONG).await.expect("open passive");
    fw.close(trigger)
        .await
        .expect("close passive: sweeps what is due");
    let (found, flows) = tracked(40001);
    assert!(!found, "not swept once finished:\n{flows}");
    assert_eq!(fw.stats().flows_swept, 2);
    let skipped = fw.stats().flow_deletes_skipped;
    fw.open(live, LONG).await.expect("reopen");
    assert_eq!(fw.stats().flow_deletes_skipped, skipped + 1);
    fw.close(live).await.expect("close");
}

/// A port whose previous data connection is still running (its session ended mid-transfer,
/// or a daemon before this one leased it) is refused, untouched, and leaves nothing in the
/// kernel; once that connection has finished, the port is leased and its entry deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_whose_data_connection_is_still_alive_is_refused_and_left_alone() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    // A transfer of the daemon that ran before this one, still running.
    ns.insert_flow("203.0.113.2", 20, "198.51.100.1", 40001, "ESTABLISHED");
    let fw = ns.start(T);
    let pinhole = active("203.0.113.2", "198.51.100.1", 40001, "10.0.0.2", 50000);
    let tracked = || {
        ns.conntrack(&["-L", "-p", "tcp"])
            .contains("src=203.0.113.2 dst=198.51.100.1 sport=20 dport=40001 ")
    };
    let refused = fw.open(pinhole, LONG).await;
    assert!(
        matches!(refused, Err(FirewallError::PortInUse { server, gateway })
            if server.port() == 20 && gateway.port() == 40001),
        "{refused:?}"
    );
    assert!(tracked(), "the live data connection was deleted");
    for set in ["dnat_to", "dnat_once", "active_pin"] {
        assert_eq!(ns.count(T, set), 0, "{set}: {}", ns.list(T, set));
    }
    assert_eq!(fw.stats().ports_in_use, 1);
    // Another port of the same server is fine meanwhile.
    let other = active("203.0.113.2", "198.51.100.1", 40002, "10.0.0.2", 50000);
    fw.open(other, LONG).await.expect("another port");
    fw.close(other).await.expect("close");
    // Finished: leased, and its entry (with the old DNAT) removed first.
    ns.set_flow_state("203.0.113.2", 20, "198.51.100.1", 40001, "TIME_WAIT");
    let forgotten = fw.stats().flows_forgotten;
    fw.open(pinhole, LONG).await.expect("open once finished");
    assert!(!tracked(), "the finished flow was left behind");
    assert_eq!(fw.stats().flows_forgotten, forgotten + 1);
    fw.close(pinhole).await.expect("close");
}

/// What conntrack held from port 20 when the backend started is read once: a port with
/// nothing on it is leased without a conntrack round trip, one with a finished flow has it
/// deleted first, one with a running transfer is refused; flows from other ports are not
/// taken for data connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_read_at_start_decide_which_first_leases_need_conntrack() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    ns.insert_flow("203.0.113.2", 20, "198.51.100.1", 40001, "TIME_WAIT");
    ns.insert_flow("203.0.113.2", 20, "198.51.100.1", 40003, "ESTABLISHED");
    ns.insert_flow("203.0.113.2", 33000, "198.51.100.1", 40004, "TIME_WAIT");
    ns.insert_flow("203.0.113.2", 20, "198.51.100.1", 40005, "TIME_WAIT");
    let fw = ns.start(T);
    let port = |p| active("203.0.113.2", "198.51.100.1", p, "10.0.0.2", 50000);
    let tracked = |p: u16| {
        ns.conntrack(&["-L", "-p", "tcp"])
            .contains(&format!("dst=198.51.100.1 sport=20 dport={p} "))
    };
    // Nothing was there: no round trip.
    fw.open(port(40002), LONG).await.expect("open a clean port");
    assert_eq!(fw.stats().flow_deletes_skipped, 1);
    // A finished flow of a daemon before this one: deleted before the PORT goes out.
    fw.open(port(40001), LONG)
        .await
        .expect("open a port with a stale flow");
    assert!(!tracked(40001), "the stale flow was left");
    assert_eq!(fw.stats().flows_forgotten, 1);
    // A running one: refused and kept.
    let refused = fw.open(port(40003), LONG).await;
    assert!(
        matches!(refused, Err(FirewallError::PortInUse { .. })),
        "{refused:?}"
    );
    assert!(tracked(40003));
    // Not from port 20: not a data connection of ours; its port leases without a look.
    fw.open(port(40004), LONG).await.expect("open");
    assert_eq!(fw.stats().flow_deletes_skipped, 2);
    for p in [40001, 40002, 40004] {
        fw.close(port(p)).await.expect("close");
    }
    // The closes swept what the start found and nobody leased: the finished flow is gone,
    // the running one is still there.
    assert!(
        !tracked(40005),
        "a stale flow found at start was never swept"
    );
    assert!(
        tracked(40003),
        "a running transfer found at start was swept"
    );
    assert_eq!(fw.stats().flows_swept, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_pinhole_of_two_holders_stays_until_the_last_closes() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = ns.start(T);
    // Two sessions of one client get the same passive port of one server.
    let p = passive("10.0.0.2", "203.0.113.2", 30000);
    fw.open(p, LONG).await.expect("first holder");
    fw.open(p, LONG).await.expect("second holder");
    fw.close(p).await.expect("first holder leaves");
    assert_eq!(
        ns.count(T, "passive_pin"),
        1,
        "the second holder's pinhole was removed: {}",
        ns.list(T, "passive_pin")
    );
    fw.close(p).await.expect("second holder leaves");
    assert_eq!(
        ns.count(T, "passive_pin"),
        0,
        "{}",
        ns.list(T, "passive_pin")
    );
    // A close without a holder (already closed) is still harmless.
    fw.close(p).await.expect("extra close");
}

/// One client announces the same port for two transfers in a row (clients reuse ephemeral
/// ports within milliseconds), each through its own gateway port: the two active pinholes
/// differ but share their `active_pin` element. The end of the first transfer must not
/// remove the element the second still needs (its SYN would meet the drop policy: a `425`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_active_pinholes_sharing_an_element_keep_it_until_both_close() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = ns.start(T);
    let first = active("203.0.113.2", "198.51.100.1", 40001, "10.0.0.2", 50000);
    let second = active("203.0.113.2", "198.51.100.1", 40002, "10.0.0.2", 50000);
    fw.open(first, LONG).await.expect("first transfer");
    fw.open(second, LONG).await.expect("second transfer");
    assert_eq!(ns.count(T, "active_pin"), 1, "{}", ns.list(T, "active_pin"));
    assert_eq!(ns.count(T, "dnat_once"), 2, "{}", ns.list(T, "dnat_once"));
    fw.close(first).await.expect("first transfer ends");
    assert_eq!(
        ns.count(T, "active_pin"),
        1,
        "the second transfer's active_pin was removed with the first: {}",
        ns.list(T, "active_pin")
    );
    assert_eq!(
        ns.count(T, "dnat_once"),
        1,
        "the first transfer's own DNAT stayed: {}",
        ns.list(T, "dnat_once")
    );
    fw.close(second).await.expect("second transfer ends");
    for set in ["active_pin", "dnat_once", "dnat_to"] {
        assert_eq!(ns.count(T, set), 0, "{set}: {}", ns.list(T, set));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_pinhole_opens_with_timeout_and_closes_idempotently() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = ns.start(T);
    assert_eq!(fw.table(), T);

    let p = passive("10.0.0.2", "203.0.113.2", 30000);
    fw.open(p, LONG).await.expect("open");
    let listed = ns.list(T, "passive_pin");
    assert!(
        listed.contains("10.0.0.2 . 203.0.113.2 . 30000 timeout 1m expires"),
        "{listed}"
    );
    fw.close(p).await.expect("close");
    assert_eq!(
        ns.count(T, "passive_pin"),
        0,
        "{}",
        ns.list(T, "passive_pin")
    );
    fw.close(p).await.expect("second close is not an error");

    let p6 = passive("fd00::2", "2001:db8::2", 30001);
    fw.open(p6, LONG).await.expect("open v6");
    let listed = ns.list(T, "passive_pin6");
    assert!(
        listed.contains("fd00::2 . 2001:db8::2 . 30001 timeout"),
        "{listed}"
    );
    assert_eq!(ns.count(T, "passive_pin"), 0);
    fw.close(p6).await.expect("close v6");
    assert_eq!(ns.count(T, "passive_pin6"), 0);

    let mixed = passive("10.0.0.2", "2001:db8::2", 1);
    assert_eq!(
        fw.open(mixed, LONG).await,
        Err(FirewallError::MixedFamilies(mixed))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_pinhole_installs_dnat_once_and_pin_in_one_transaction() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = ns.start(T);

    let a = active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.2", 50000);
    fw.open(a, LONG).await.expect("open");
    let dnat = ns.list(T, "dnat_to");
    assert!(
        dnat.contains("203.0.113.2 . 198.51.100.1 . 40000 timeout 1m expires")
            && dnat.contains(": 10.0.0.2 . 50000"),
        "{dnat}"
    );
    let once = ns.list(T, "dnat_once");
    assert!(
        once.contains("203.0.113.2 . 198.51.100.1 . 40000 timeout"),
        "{once}"
    );
    let pin = ns.list(T, "active_pin");
    assert!(
        pin.contains("203.0.113.2 . 10.0.0.2 . 50000 timeout"),
        "{pin}"
    );

    // A consumed `once` element (the rule deleted it) does not make close fail, and the
    // other two still go.
    ns.nft(
        &[
            "delete",
            "element",
            "inet",
            T,
            "dnat_once",
            "{ 203.0.113.2 . 198.51.100.1 . 40000 }",
        ],
        None,
    )
    .expect("consume");
    fw.close(a).await.expect("close");
    for set in ["dnat_to", "dnat_once", "active_pin"] {
        assert_eq!(ns.count(T, set), 0, "{set}: {}", ns.list(T, set));
    }
    fw.close(a).await.expect("second close");

    let a6 = active("2001:db8::2", "2001:db8::1", 40001, "fd00::2", 50001);
    fw.open(a6, LONG).await.expect("open v6");
    let dnat6 = ns.list(T, "dnat_to6");
    assert!(dnat6.contains(": fd00::2 . 50001"), "{dnat6}");
    assert_eq!(ns.count(T, "dnat_once6"), 1);
    assert_eq!(ns.count(T, "active_pin6"), 1);
    fw.close(a6).await.expect("close v6");
    for set in ["dnat_to6", "dnat_once6", "active_pin6"] {
        assert_eq!(ns.count(T, set), 0, "{set}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elements_expire_and_reopening_refreshes_the_timeout() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = ns.start(T);

    let short = passive("10.0.0.2", "203.0.113.2", 30000);
    let refreshed = passive("10.0.0.2", "203.0.113.2", 30001);
    fw.open(short, Duration::from_secs(1)).await.expect("open");
    fw.open(refreshed, Duration::from_secs(1))
        .await
        .expect("open");
    fw.open(refreshed, LONG).await.expect("re-open");
    assert_eq!(ns.count(T, "passive_pin"), 2);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let listed = ns.list(T, "passive_pin");
    assert!(!listed.contains(". 30000 "), "not expired: {listed}");
    assert!(
        listed.contains(". 30001 "),
        "re-open did not refresh: {listed}"
    );
    fw.close(short).await.expect("close of an expired pinhole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_table_is_reported_as_table_missing() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = ns.start(T);
    let p = passive("10.0.0.2", "203.0.113.2", 30000);
    fw.open(p, LONG).await.expect("open");
    ns.nft(&["delete", "table", "inet", T], None)
        .expect("delete table");

    let error = fw.open(p, LONG).await.expect_err("open without the table");
    assert_eq!(
        error,
        FirewallError::TableMissing {
            table: T.into(),
            set: "passive_pin".into()
        }
    );
    assert!(error.to_string().contains("deleted by an admin"), "{error}");
    let a = active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.2", 50000);
    assert!(matches!(
        fw.open(a, LONG).await,
        Err(FirewallError::TableMissing { .. })
    ));
    fw.close(p).await.expect("close without the table");

    // Reinstalled, the same handle works again.
    ns.load(T, 1024);
    fw.open(a, LONG).await.expect("open after reinstall");
    assert_eq!(ns.count(T, "active_pin"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_are_batched_and_all_installed() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1 << 20);
    // Two runtime threads share the firewall thread's socket (none of their own): they
    // contend, so requests queue and are batched.
    let fw = NftFirewall::start_sharing(T, &ns.path(), 0).expect("start the backend");
    let pinholes: Vec<Pinhole> = (0..1000u16)
        .map(|i| {
            if i % 2 == 0 {
                passive("10.0.0.2", &format!("203.0.113.{}", i % 200 + 1), 20000 + i)
            } else {
                active(
                    "203.0.113.2",
                    "198.51.100.1",
                    40000 + i,
                    &format!("10.0.{}.{}", i / 200, i % 200 + 1),
                    50000,
                )
            }
        })
        .collect();
    let run = |open: bool| {
        let tasks: Vec<_> = pinholes
            .iter()
            .map(|&p| {
                let fw = fw.clone();
                tokio::spawn(async move {
                    if open {
                        fw.open(p, LONG).await
                    } else {
                        fw.close(p).await
                    }
                })
            })
            .collect();
        async move {
            for task in tasks {
                task.await.expect("join").expect("operation");
            }
        }
    };
    let before = fw.stats();
    run(true).await;
    let stats = fw.stats();
    assert_eq!(stats.requests - before.requests, 1000);
    assert!(
        stats.transactions - before.transactions < 1000,
        "no batching: {stats:?}"
    );
    assert_eq!(stats.replays, 0);
    assert_eq!(ns.count(T, "passive_pin"), 500);
    for set in ["dnat_to", "dnat_once", "active_pin"] {
        assert_eq!(ns.count(T, set), 500, "{set}");
    }
    run(false).await;
    for set in ["passive_pin", "dnat_to", "dnat_once", "active_pin"] {
        assert_eq!(ns.count(T, set), 0, "{set}");
    }
}

/// A pinhole opened again right after its close goes to the `_hot` twins (passive: its pin;
/// active: its `dnat_once` and pin, while the DNAT map stays one), is closed from there, and
/// is counted; a fresh key goes to the main sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinhole_reopened_within_seconds_lives_in_the_hot_twins() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = ns.start(T);
    let pasv = passive("10.0.0.2", "203.0.113.2", 30000);
    let port = active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.2", 50000);
    for pinhole in [pasv, port] {
        fw.open(pinhole, LONG).await.expect("open");
        fw.close(pinhole).await.expect("close");
    }
    assert_eq!(
        fw.stats().hot_placements,
        0,
        "first opens go to the main sets"
    );
    for pinhole in [pasv, port] {
        fw.open(pinhole, LONG).await.expect("reopen");
    }
    assert_eq!(fw.stats().hot_placements, 2);
    for (set, n) in [
        ("passive_pin_hot", 1),
        ("active_pin_hot", 1),
        ("dnat_once_hot", 1),
        ("passive_pin", 0),
        ("active_pin", 0),
        ("dnat_once", 0),
        ("dnat_to", 1),
    ] {
        assert_eq!(ns.count_in(T, set), n, "{set}");
    }
    for pinhole in [pasv, port] {
        fw.close(pinhole).await.expect("close");
    }
    for set in ["passive_pin", "active_pin", "dnat_once", "dnat_to"] {
        assert_eq!(ns.count(T, set), 0, "{set} and its twin");
    }
}

/// A close whose removal is still on its way to the kernel, and an open of the same pinhole on
/// another socket: the open must wait for the removal, or the removal lands after the add and
/// takes away a pinhole its new holder relies on. The test holds both sockets so that the
/// close queues for the firewall thread, then lets the open through on the other socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_on_another_socket_waits_for_a_close_of_the_same_pinhole_in_flight() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = NftFirewall::start_sharing(T, &ns.path(), 1).expect("start the backend");
    let p = passive("10.0.0.2", "203.0.113.2", 30000);
    fw.open(p, LONG).await.expect("first holder");
    let pause = Duration::from_millis(100);

    let pool = fw.inner.pool.clone();
    let callers = pool[1].lock().expect("caller socket");
    let thread = pool[0].lock().expect("firewall thread's socket");
    // Both sockets busy: the close queues for the firewall thread, which waits for its socket.
    let closing = tokio::spawn({
        let fw = fw.clone();
        async move { fw.close(p).await }
    });
    // Not awaited: the test's thread sleeps holding the sockets; the runtime's run the tasks.
    std::thread::sleep(pause);
    assert!(
        !closing.is_finished(),
        "the close went through a busy socket"
    );
    // The caller socket is free again: an open of the same pinhole could go at once.
    drop(callers);
    let opening = tokio::spawn({
        let fw = fw.clone();
        async move { fw.open(p, LONG).await }
    });
    std::thread::sleep(pause);
    assert!(
        !opening.is_finished(),
        "the open was sent while the removal of the same element was still queued"
    );
    drop(thread);
    closing.await.expect("join").expect("close");
    opening.await.expect("join").expect("open");
    assert_eq!(
        ns.count(T, "passive_pin"),
        1,
        "the new holder's pinhole was removed by the earlier close: {}",
        ns.list(T, "passive_pin")
    );
    fw.close(p).await.expect("close");
    assert_eq!(ns.count(T, "passive_pin"), 0);
}

/// Sessions on different threads (so on different sockets) open and close the same pinholes
/// over and over, then each keeps one: everything finishes (no add waits forever for a
/// removal), and the holders' count is right at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holders_on_different_sockets_keep_a_shared_pinhole_through_racing_closes() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    // Two caller sockets for four threads: callers use their own, others' and the queue.
    let fw = NftFirewall::start_sharing(T, &ns.path(), 2).expect("start the backend");
    let shared = [
        passive("10.0.0.2", "203.0.113.2", 30000),
        passive("10.0.0.2", "203.0.113.2", 30001),
        active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.2", 50000),
    ];
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let fw = fw.clone();
            tokio::spawn(async move {
                for i in 0..300usize {
                    let p = shared[(t + i) % shared.len()];
                    fw.open(p, LONG).await?;
                    fw.close(p).await?;
                }
                // Keep one of each.
                for p in shared {
                    fw.open(p, LONG).await?;
                }
                Ok::<_, FirewallError>(())
            })
        })
        .collect();
    let all = async {
        for task in tasks {
            task.await.expect("join").expect("operation");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("opens and closes finish (no add waits forever for a removal)");
    assert_eq!(
        ns.count(T, "passive_pin"),
        2,
        "{}",
        ns.list(T, "passive_pin")
    );
    for set in ["dnat_to", "dnat_once", "active_pin"] {
        assert_eq!(ns.count(T, set), 1, "{set}: {}", ns.list(T, set));
    }
    // Eight holders each: seven closes keep them, the eighth removes them.
    for p in shared {
        for _ in 0..7 {
            fw.close(p).await.expect("close");
        }
    }
    assert_eq!(ns.count(T, "passive_pin"), 2);
    for p in shared {
        fw.close(p).await.expect("last close");
    }
    for set in ["passive_pin", "dnat_to", "dnat_once", "active_pin"] {
        assert_eq!(ns.count(T, set), 0, "{set}: {}", ns.list(T, set));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_in_a_batch_are_attributed_to_their_own_request() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 4);
    let fw = ns.start(T);

    // Full set: of eight concurrent opens, exactly four fit; the others say why.
    let tasks: Vec<_> = (0..8u16)
        .map(|i| {
            let fw = fw.clone();
            let p = passive("10.0.0.2", "203.0.113.2", 30000 + i);
            tokio::spawn(async move { fw.open(p, LONG).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("join") {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(
                e,
                FirewallError::SetFull {
                    set: "passive_pin".into()
                }
            ),
        }
    }
    assert_eq!(ok, 4);
    assert_eq!(ns.count(T, "passive_pin"), 4);

    // Same gateway port for another client: a conflict, and the first mapping is intact.
    let first = active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.2", 50000);
    let clash = active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.3", 50000);
    fw.open(first, LONG).await.expect("first");
    assert_eq!(
        fw.open(clash, LONG).await,
        Err(FirewallError::Conflict {
            set: "dnat_to".into()
        })
    );
    let dnat = ns.list(T, "dnat_to");
    assert!(dnat.contains(": 10.0.0.2 . 50000"), "{dnat}");
    // Re-opening the same mapping is fine.
    fw.open(first, LONG).await.expect("re-open");
}

/// Runs `f` on a thread inside `ns` with a backend of its own and no queue in front, so the
/// test decides exactly what goes into each batch.
fn with_backend<R, F>(ns: &Netns, f: F) -> R
where
    R: Send + 'static,
    F: FnOnce(&mut Backend) -> R + Send + 'static,
{
    let path = ns.path();
    std::thread::spawn(move || {
        enter_netns(&path).expect("enter the namespace");
        let mut backend =
            Backend::open(T.into(), Arc::default(), Arc::default()).expect("open the backend");
        f(&mut backend)
    })
    .join()
    .expect("backend thread")
}

type Answer = oneshot::Receiver<Result<(), FirewallError>>;

fn request(kind: Kind, pinhole: Pinhole) -> (Request, Answer) {
    let (reply, answer) = oneshot::channel();
    let adding = matches!(kind, Kind::Add { .. });
    let elements = elements(&pinhole, adding).expect("elements");
    let request = Request {
        kind,
        pinhole,
        elements,
        reply,
        _removal: None,
    };
    (request, answer)
}

/// Processes `ops` as one batch; returns each answer.
fn run_batch(backend: &mut Backend, ops: &[(Kind, Pinhole)]) -> Vec<Result<(), FirewallError>> {
    let (mut batch, answers): (Vec<_>, Vec<_>) =
        ops.iter().map(|&(kind, p)| request(kind, p)).unzip();
    backend.process(&mut batch, Mode::Thread);
    answers
        .into_iter()
        .map(|mut a| a.try_recv().expect("answered"))
        .collect()
}

const ADD: Kind = Kind::Add { timeout_ms: 60_000 };

#[test]
fn one_bad_request_does_not_sink_the_rest_of_its_batch() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let first = active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.2", 50000);
    let clash = active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.3", 50000);
    let ok1 = passive("10.0.0.2", "203.0.113.2", 30001);
    let ok2 = active("203.0.113.2", "198.51.100.1", 40002, "10.0.0.4", 50000);
    let never = passive("10.0.0.9", "203.0.113.2", 30009);
    let (answers, counters) = with_backend(&ns, move |backend| {
        assert_eq!(run_batch(backend, &[(ADD, first)]), vec![Ok(())]);
        let answers = run_batch(
            backend,
            &[(ADD, ok1), (ADD, clash), (ADD, ok2), (Kind::Remove, never)],
        );
        (answers, backend.counters.clone())
    });
    assert_eq!(
        answers,
        vec![
            Ok(()),
            Err(FirewallError::Conflict {
                set: "dnat_to".into()
            }),
            Ok(()),
            Ok(()),
        ]
    );
    // 1 + the failed batch + 4 replays.
    assert_eq!(counters.transactions.load(Ordering::Relaxed), 6);
    assert_eq!(counters.replays.load(Ordering::Relaxed), 1);
    // A clash is not the kernel being busy.
    assert_eq!(counters.busy_retries.load(Ordering::Relaxed), 0);
    assert_eq!(ns.count(T, "passive_pin"), 1);
    assert_eq!(ns.count(T, "active_pin"), 2);
    let dnat = ns.list(T, "dnat_to");
    assert!(
        dnat.contains(": 10.0.0.2 . 50000") && dnat.contains(": 10.0.0.4 . 50000"),
        "{dnat}"
    );
    assert!(!dnat.contains("10.0.0.3"), "{dnat}");
}

#[test]
fn an_open_whose_caller_gave_up_is_not_installed() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let abandoned = passive("10.0.0.2", "203.0.113.2", 30000);
    let wanted = passive("10.0.0.2", "203.0.113.2", 30001);
    let answer = with_backend(&ns, move |backend| {
        let (gone, answer) = request(ADD, abandoned);
        drop(answer);
        let (kept, mut answer) = request(ADD, wanted);
        backend.process(&mut vec![gone, kept], Mode::Thread);
        answer.try_recv().expect("answered")
    });
    assert_eq!(answer, Ok(()));
    let listed = ns.list(T, "passive_pin");
    assert!(
        listed.contains(". 30001 ") && !listed.contains(". 30000 "),
        "{listed}"
    );
}

#[test]
fn close_falls_back_to_delete_on_a_kernel_without_destroy() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let a = active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.2", 50000);
    let b = active("203.0.113.2", "198.51.100.1", 40001, "10.0.0.2", 50001);
    let p = passive("10.0.0.2", "203.0.113.2", 30000);
    let consume = |ns: &Netns, port: u16| {
        let element = format!("{{ 203.0.113.2 . 198.51.100.1 . {port} }}");
        ns.nft(
            &["delete", "element", "inet", T, "dnat_once", &element],
            None,
        )
        .expect("consume");
    };
    with_backend(&ns, move |backend| {
        assert_eq!(
            run_batch(backend, &[(ADD, a), (ADD, b), (ADD, p)]),
            vec![Ok(()); 3]
        );
    });
    consume(&ns, 40000);
    consume(&ns, 40001);
    let destroy = with_backend(&ns, move |backend| {
        // An unknown message type, as a kernel older than 6.3 sees DESTROYSETELEM.
        backend.destroy_msg = 200;
        assert_eq!(run_batch(backend, &[(Kind::Remove, a)]), vec![Ok(())]);
        assert!(!backend.destroy, "did not switch to DELSETELEM");
        // Deletes in one batch, two of them partly gone already.
        let answers = run_batch(backend, &[(Kind::Remove, b), (Kind::Remove, p)]);
        assert_eq!(answers, vec![Ok(()); 2]);
        assert_eq!(run_batch(backend, &[(Kind::Remove, a)]), vec![Ok(())]);
        backend.destroy
    });
    assert!(!destroy);
    for set in ["passive_pin", "dnat_to", "dnat_once", "active_pin"] {
        assert_eq!(ns.count(T, set), 0, "{set}: {}", ns.list(T, set));
    }
}

/// Drops CAP_NET_ADMIN (12) from this thread's effective set.
fn drop_net_admin() -> std::io::Result<()> {
    crate::testing::drop_capability(12)
}

#[test]
fn start_without_cap_net_admin_fails_early() {
    let Some(ns) = Netns::new() else { return };
    let path = ns.path();
    let result = NftFirewall::start_with(T, move || {
        enter_netns(&path).map_err(std::io::Error::other)?;
        drop_net_admin()
    });
    let error = result.expect_err("start without CAP_NET_ADMIN");
    assert_eq!(error, FirewallError::PermissionDenied);
    assert!(error.to_string().contains("need CAP_NET_ADMIN"), "{error}");
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Opens (or closes) `pinholes` from `callers` concurrent tasks, each awaiting its ACK
/// before its next call; returns every call's latency.
async fn drive(
    fw: &NftFirewall,
    pinholes: Vec<Pinhole>,
    callers: usize,
    open: bool,
) -> Vec<Duration> {
    let per = pinholes.len().div_ceil(callers);
    let tasks: Vec<_> = pinholes
        .chunks(per)
        .map(|chunk| {
            let fw = fw.clone();
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(chunk.len());
                for p in chunk {
                    let t = Instant::now();
                    if open {
                        fw.open(p, LONG).await.expect("open");
                    } else {
                        fw.close(p).await.expect("close");
                    }
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    let mut all = Vec::with_capacity(pinholes.len());
    for task in tasks {
        all.extend(task.await.expect("join"));
    }
    all
}

/// `cargo test --release -- --ignored pinhole_latency`: open latency (ACK awaited) one at a
/// time, from 64 callers at once, and as one burst of 10,000 simultaneous calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored pinhole_latency"]
async fn pinhole_latency() {
    const N: usize = 10_000;
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1 << 20);
    let fw = ns.start(T);
    let mut next = 0u32;
    let mut fresh = |n: usize| -> Vec<Pinhole> {
        (0..n)
            .map(|_| {
                next += 1;
                Pinhole::passive(
                    IpAddr::from((0x0a00_0000 + next).to_be_bytes()),
                    ip("203.0.113.2"),
                    30000,
                )
            })
            .collect()
    };
    let report =
        |name: &str, mut samples: Vec<Duration>, total: Duration, before: FirewallStats| {
            let after = fw.stats();
            let tx = after.transactions - before.transactions;
            let kernel = (after.kernel_time - before.kernel_time).as_secs_f64() * 1e6;
            samples.sort();
            say(&format!(
                "pinhole_latency: {name:<22} n={N} p50={:>8.1} us  p99={:>8.1} us  max={:>8.1} us  \
             {:>7.0} ops/s  {tx} transactions, {:.1} us kernel each",
                percentile(&samples, 0.50),
                percentile(&samples, 0.99),
                percentile(&samples, 1.0),
                N as f64 / total.as_secs_f64(),
                kernel / tx.max(1) as f64,
            ));
        };

    let sequential = fresh(N);
    let (before, t) = (fw.stats(), Instant::now());
    let times = drive(&fw, sequential.clone(), 1, true).await;
    report("sequential open", times, t.elapsed(), before);

    let (before, t) = (fw.stats(), Instant::now());
    let times = drive(&fw, fresh(N), 64, true).await;
    report("open, 64 callers", times, t.elapsed(), before);

    let (before, t) = (fw.stats(), Instant::now());
    let times = drive(&fw, fresh(N), N, true).await;
    report("open, burst of 10000", times, t.elapsed(), before);

    let (before, t) = (fw.stats(), Instant::now());
    let times = drive(&fw, sequential, 1, false).await;
    report("sequential close", times, t.elapsed(), before);

    assert_eq!(ns.count(T, "passive_pin"), 2 * N);
}

#[test]
fn the_watchdog_lookup_tells_whether_our_table_exists() {
    let Some(ns) = Netns::new() else { return };
    let path = ns.path();
    let exists = move || {
        let path = path.clone();
        std::thread::spawn(move || {
            enter_netns(&path).expect("enter the namespace");
            super::table_exists(T)
        })
        .join()
        .expect("lookup thread")
    };
    assert!(!exists().expect("lookup before load"), "no table yet");
    ns.load(T, 1024);
    assert!(exists().expect("lookup after load"), "table loaded");
    ns.nft(&["delete", "table", "inet", T], None)
        .expect("delete the table");
    assert!(!exists().expect("lookup after delete"), "table deleted");
}

/// Only the last message of a batch asks for a success ACK. A refused message earlier in the
/// batch is still answered, attributed to its own request and element, and aborts the rest;
/// a batch without errors is complete once the last message is answered.
#[test]
fn a_batch_acked_on_its_last_message_attributes_an_earlier_error() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let path = ns.path();
    let outcomes = std::thread::spawn(move || {
        enter_netns(&path).expect("enter the namespace");
        let mut backend =
            Backend::open(T.to_owned(), Arc::new(Counters::default()), Arc::default())
                .expect("backend");
        let add = Kind::Add { timeout_ms: 60_000 };
        let good = |port: u16| {
            elements(&passive("10.0.0.2", "203.0.113.2", port), true).expect("elements")
        };
        let (one, two) = (good(30000), good(30001));
        let active = elements(
            &active("203.0.113.2", "198.51.100.1", 40000, "10.0.0.2", 50000),
            true,
        )
        .expect("elements");
        // A key of the wrong length: the kernel refuses that message (EINVAL).
        let mut bad = active.clone();
        bad[1].key.truncate(3);
        let clean = backend.transact(&[
            Job {
                kind: add,
                elements: &one,
            },
            Job {
                kind: add,
                elements: &active,
            },
        ]);
        let failed = backend.transact(&[
            Job {
                kind: add,
                elements: &two,
            },
            Job {
                kind: add,
                elements: &bad,
            },
            Job {
                kind: add,
                elements: &one,
            },
        ]);
        (clean, failed)
    })
    .join()
    .expect("backend thread");
    assert_eq!(outcomes.0, vec![Outcome::Done, Outcome::Done]);
    assert_eq!(
        outcomes.1,
        vec![
            Outcome::Aborted,
            Outcome::Refused {
                errno: libc::EINVAL,
                element: 1
            },
            Outcome::Aborted,
        ]
    );
    // The clean batch committed; nothing of the aborted one did.
    assert_eq!(
        ns.count_in(T, "passive_pin"),
        1,
        "{}",
        ns.list(T, "passive_pin")
    );
    assert_eq!(ns.count_in(T, "active_pin"), 1);
    assert_eq!(ns.count_in(T, "dnat_once"), 1);
}

#[test]
fn a_request_whose_answer_was_lost_is_asked_again() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let p = passive("10.0.0.2", "203.0.113.2", 30000);
    // The kernel does each request, but its answer never arrives: asked again, the
    // (idempotent) request answers for sure.
    let lost_once = |ns: &Netns, kind: Kind| {
        with_backend(ns, move |backend| {
            backend.lose_answers = 1;
            let answers = run_batch(backend, &[(kind, p)]);
            (answers, backend.counters.replays.load(Ordering::Relaxed))
        })
    };
    assert_eq!(lost_once(&ns, ADD), (vec![Ok(())], 1));
    assert_eq!(
        ns.count(T, "passive_pin"),
        1,
        "{}",
        ns.list(T, "passive_pin")
    );
    assert_eq!(lost_once(&ns, Kind::Remove), (vec![Ok(())], 1));
    assert_eq!(
        ns.count(T, "passive_pin"),
        0,
        "{}",
        ns.list(T, "passive_pin")
    );
    // Lost twice: the caller hears of it (and `NftFirewall` removes what it asked for).
    let twice = with_backend(&ns, move |backend| {
        backend.lose_answers = 2;
        run_batch(backend, &[(ADD, p)])
    });
    assert!(
        matches!(twice.as_slice(), [Err(FirewallError::Protocol(_))]),
        "{twice:?}"
    );
}

#[tokio::test]
async fn an_add_of_unknown_fate_is_removed_again() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 1024);
    let fw = ns.start(T);
    let p = passive("10.0.0.2", "203.0.113.2", 30000);
    let lose = |answers: u32| {
        for backend in fw.inner.pool.iter() {
            backend.lock().expect("backend").lose_answers = answers;
        }
    };
    // Every answer lost, asked twice: the add may be in the kernel, so it is taken out.
    lose(2);
    let error = fw.open(p, LONG).await.expect_err("an add with no answer");
    assert!(matches!(error, FirewallError::Protocol(_)), "{error}");
    lose(0);
    assert_eq!(
        ns.count(T, "passive_pin"),
        0,
        "{}",
        ns.list(T, "passive_pin")
    );
    fw.open(p, LONG).await.expect("open once answers come back");
    assert_eq!(ns.count(T, "passive_pin"), 1);
}

#[test]
fn answers_dropped_on_an_overrun_do_not_hold_the_socket_for_the_ack_wait() {
    let Some(ns) = Netns::new() else { return };
    ns.load(T, 4096);
    let (elapsed, answers, replays) = with_backend(&ns, |backend| {
        // The smallest receive buffer the kernel allows: a batch's answers overrun it, and
        // the kernel drops the rest (ENOBUFS). Only errors are answered one by one: removes
        // of elements that are not there, with plain deletes (ENOENT each).
        backend.destroy = false;
        let size: libc::c_int = 0;
        // SAFETY: a valid socket and option value for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                backend.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let ops: Vec<_> = (0..32)
            .map(|i| (Kind::Remove, passive("10.0.0.2", "203.0.113.2", 30000 + i)))
            .collect();
        let started = Instant::now();
        // (Each request is then asked alone; an aborted transaction costs the kernel an RCU
        // grace period, milliseconds, so few of them.)
        let answers = run_batch(backend, &ops);
        (
            started.elapsed(),
            answers,
            backend.counters.replays.load(Ordering::Relaxed),
        )
    });
    assert!(
        replays > 0,
        "no answer was dropped: the test proves nothing"
    );
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(ns.count(T, "passive_pin"), 0);
    // What is not queued once the kernel has answered never comes: no wait for it.
    assert!(
        elapsed < ACK_WAIT / 2,
        "{elapsed:?} for a batch whose answers overran the socket"
    );
}

//! `ftp-alg lab` and `ftp-alg watch`, end to end, in namespaces the lab builds itself.
//!
//! - The whole table against the physics: without a helper, active fails behind client NAT,
//!   passive fails behind a port-forward, both fail through a strict firewall; with the
//!   kernel's helper and with ftp-alg every mode works. Every failure has a reason.
//! - Every SVG parses as XML and names the real ports of its session (the sockets' ports in
//!   results.json); drops are drawn; the HTML page shows every diagram.
//! - `--scenario` + `--keep` leaves exactly that lab's namespaces, with the drop recorder's
//!   evidence in them.
//! - `ftp-alg watch --netns` on the gateway of a failing and of a succeeding session names the
//!   ports and the outcome.
//!
//! They need root and namespaces: under CI=true they fail without them, elsewhere they skip
//! saying why (the lab's preflight gate).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ftp_alg::lab::DataMode;
use ftp_alg::lab::preflight::{Gate, gate};
use ftp_alg::lab::scenario::peers::PeerEvent;
use ftp_alg::lab::scenario::{CellResult, ScenarioLab, Topology, Variant};

macro_rules! require_lab {
    () => {
        match gate(&[]) {
            Gate::Ready => {}
            Gate::Skip(why) => {
                eprintln!("SKIPPED (not CI): {why}");
                return;
            }
            Gate::Fail(why) => panic!("CI=true requires the namespace lab, but: {why}"),
        }
    };
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ftp-alg"))
}

/// Runs `ftp-alg` with `args`, bounded; returns (success, stdout, stderr).
fn ftp_alg(args: &[&str], bound: Duration) -> (bool, String, String) {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ftp-alg");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > bound {
            // SIGINT: the lab stops between cells and removes its namespaces.
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let status = child.wait().unwrap();
            panic!(
                "ftp-alg {args:?} ran longer than {bound:?} ({status}); stderr:\n{}",
                err_thread.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.success(),
        out_thread.join().unwrap(),
        err_thread.join().unwrap(),
    )
}

/// The table's rows: (topology, mode) -> [no helper, kernel helper, ftp-alg] cell texts.
fn table_rows(stdout: &str) -> Vec<(String, String, [String; 3])> {
    stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [topology, mode, a, b, c]
                    if ["client-nat", "reverse", "routed"].contains(topology)
                        && ["PORT", "EPRT", "PASV", "EPSV"].contains(mode) =>
                {
                    Some((
                        (*topology).to_owned(),
                        (*mode).to_owned(),
                        [(*a).to_owned(), (*b).to_owned(), (*c).to_owned()],
                    ))
                }
                _ => None,
            }
        })
        .collect()
}

fn physics(topology: &str, mode: &str, variant: usize) -> bool {
    let active = mode == "PORT" || mode == "EPRT";
    match (variant, topology) {
        (0, "client-nat") => !active,
        (0, "reverse") => active,
        (0, "routed") => false,
        _ => true,
    }
}

/// The ports an SVG shows: every number after a `:` or in `port N`.
fn contains_port(text: &str, port: u16) -> bool {
    text.contains(&format!(":{port}")) || text.contains(&format!("port {port}"))
}

#[test]
fn lab_table_matches_the_physics_and_each_diagram_shows_its_real_ports() {
    require_lab!();
    let out = tempfile::tempdir().expect("temp dir");
    let dir = out.path().join("report");
    let started = Instant::now();
    let (ok, stdout, stderr) = ftp_alg(
        &["lab", "--out", dir.to_str().unwrap()],
        Duration::from_secs(240),
    );
    let took = started.elapsed();
    assert!(ok, "ftp-alg lab failed:\n{stdout}\n{stderr}");
    assert!(
        took < Duration::from_secs(120),
        "the full lab should take about half a minute, took {took:?}"
    );
    // Progress while it runs.
    assert!(stderr.contains("[36/36]"), "no progress lines:\n{stderr}");

    // The table against the physics.
    let rows = table_rows(&stdout);
    assert_eq!(rows.len(), 12, "3 topologies x 4 modes:\n{stdout}");
    let mut failures = 0;
    for (topology, mode, cells) in &rows {
        for (variant, cell) in cells.iter().enumerate() {
            let expect_ok = physics(topology, mode, variant);
            assert!(
                !cell.ends_with('!'),
                "{topology}/{mode} variant {variant} is marked unexpected:\n{stdout}"
            );
            if expect_ok {
                assert_eq!(cell, "ok", "{topology}/{mode} variant {variant}:\n{stdout}");
            } else {
                assert!(cell.starts_with("FAIL("), "{topology}/{mode}:\n{stdout}");
                failures += 1;
                // Its reason is printed under "why:".
                let n = cell.trim_start_matches("FAIL(").trim_end_matches(')');
                let why = stdout
                    .lines()
                    .find(|l| l.starts_with(&format!("({n}) {topology}/{mode}/none: ")))
                    .unwrap_or_else(|| panic!("no reason ({n}) for {topology}/{mode}:\n{stdout}"));
                let reason_names_the_cause = match topology.as_str() {
                    "routed" => why.contains("dropped by the gateway's forward chain"),
                    "client-nat" => why.contains("no route to 10.0.0.2"),
                    _ => {
                        why.contains("198.51.100.2")
                            || why.contains("refused by the gateway itself")
                    }
                };
                assert!(reason_names_the_cause, "vague reason: {why}");
            }
        }
    }
    assert_eq!(
        failures, 8,
        "2 active behind NAT, 2 passive behind the port-forward, 4 routed"
    );

    // results.json, the SVGs and the page.
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["matches_physics"], true);
    let cells = results["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 36);
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    for cell in cells {
        let id = cell["id"].as_str().unwrap();
        let file = cell["svg"].as_str().unwrap();
        let svg = std::fs::read_to_string(dir.join(file)).unwrap();
        let doc = roxmltree::Document::parse(&svg)
            .unwrap_or_else(|e| panic!("{file} is not well-formed XML: {e}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg", "{file}");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg"),
            "{file}"
        );
        let text: String = doc
            .descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .collect::<Vec<_>>()
            .join("\n");
        let ports: Vec<u16> = cell["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap() as u16)
            .collect();
        assert!(ports.len() >= 3, "{id}: too few ports recorded: {ports:?}");
        for port in &ports {
            assert!(
                contains_port(&text, *port),
                "{id}: port {port} of the run is not in {file}:\n{text}"
            );
        }
        if id.starts_with("routed/") && id.ends_with("/none") {
            assert!(
                text.contains("dropped by the forward chain"),
                "{id}: the drop is not drawn:\n{text}"
            );
            let dropped = cell["dropped"].as_array().unwrap();
            assert!(!dropped.is_empty(), "{id}: no drop recorded");
        }
        assert!(
            html.contains(&format!("src=\"{file}\"")),
            "page misses {file}"
        );
    }
}

/// Deletes namespaces by name at the end of a test, also when it fails.
struct DeleteNamespaces(Vec<String>);

impl Drop for DeleteNamespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn one_scenario_with_keep_leaves_its_namespaces_and_the_drop_evidence() {
    require_lab!();
    let (ok, stdout, stderr) = ftp_alg(
        &["lab", "--scenario", "routed/PASV/none", "--keep"],
        Duration::from_secs(60),
    );
    assert!(ok, "{stdout}\n{stderr}");
    let rows = table_rows(&stdout);
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!(rows[0].2[0], "FAIL(1)");
    assert_eq!(rows[0].2[1], "·");
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("routed / none:"))
        .unwrap_or_else(|| panic!("no kept namespaces listed:\n{stdout}"));
    let names: Vec<String> = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let _cleanup = DeleteNamespaces(names.clone());
    assert_eq!(names.len(), 3, "{line}");
    let listed = netns_list();
    for name in &names {
        assert!(listed.contains(name.as_str()), "{name} not kept:\n{listed}");
    }
    assert!(stdout.contains(&format!("ip netns exec {} bash", names[1])));
    assert!(stdout.contains("ip netns del"));
    // The gateway still holds what the lab saw: the dropped passive SYN.
    let set = Command::new("ip")
        .args([
            "netns",
            "exec",
            &names[1],
            "nft",
            "-j",
            "list",
            "set",
            "inet",
            "lab_fw",
            "lab_dropped",
        ])
        .output()
        .unwrap();
    let set = String::from_utf8_lossy(&set.stdout);
    assert!(
        set.contains("\"203.0.113.2\""),
        "no dropped SYN kept: {set}"
    );
}

/// `ftp-alg watch --netns <gateway> [extra]` while `mode` runs; returns its output and the
/// cell.
fn watch_during(lab: &ScenarioLab, mode: DataMode, extra: &[&str]) -> (String, CellResult) {
    let mut watch: Child = Command::new(binary())
        .args([
            "watch",
            "--netns",
            lab.gateway_name(),
            "--no-answer-after",
            "1",
            "--duration",
            "30",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ftp-alg watch");
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("watch printed nothing");
    assert!(first.starts_with("watching "), "{first}");
    let cell = lab.run(mode).expect("session");
    // Let an unanswered SYN pass the 1 s bound, then stop it like Ctrl-C would.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(watch.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    while watch.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "watch did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut err = String::new();
    let _ = watch.stderr.take().unwrap().read_to_string(&mut err);
    let text = reader.join().unwrap();
    eprintln!(
        "--- ftp-alg watch --netns {}:\n{text}{err}",
        lab.gateway_name()
    );
    assert!(text.contains("stopped after"), "no summary:\n{text}\n{err}");
    (text, cell)
}

fn event_addr(
    cell: &CellResult,
    pick: impl Fn(&PeerEvent) -> Option<std::net::SocketAddr>,
) -> std::net::SocketAddr {
    cell.events
        .iter()
        .find_map(|e| pick(&e.what))
        .unwrap_or_else(|| panic!("event missing in {:#?}", cell.events))
}

#[test]
fn watch_names_the_dropped_active_syn_of_a_strict_firewall() {
    require_lab!();
    let lab = ScenarioLab::build(Topology::Routed, Variant::None, &binary()).expect("lab");
    let (text, cell) = watch_during(&lab, DataMode::Port, &[]);
    assert!(!cell.verdict.ok, "routed PORT without a helper must fail");
    // The client's real listening port, as its socket had it.
    let listening = event_addr(&cell, |w| match w {
        PeerEvent::Listening(addr) => Some(*addr),
        _ => None,
    });
    assert!(
        text.contains(&format!("client announced {listening} in PORT")),
        "{text}"
    );
    let syn = format!("server connects 203.0.113.2:20 → {listening} (the address in PORT)");
    let line = text
        .lines()
        .find(|l| l.contains(&syn))
        .unwrap_or_else(|| panic!("no line about the server's SYN ({syn}):\n{text}"));
    assert!(line.contains("got no answer"), "{line}");
    assert!(
        line.contains("never left the gateway — dropped here"),
        "{line}"
    );
    assert!(text.contains("it crosses the gateway unchanged"), "{text}");
}

#[test]
fn watch_names_the_alg_rewrite_and_the_admitted_data_connection() {
    require_lab!();
    let lab = ScenarioLab::build(Topology::ClientNat, Variant::FtpAlg, &binary()).expect("lab");
    let (text, cell) = watch_during(&lab, DataMode::Port, &[]);
    assert!(
        cell.verdict.ok,
        "client-nat PORT through ftp-alg must work: {}",
        cell.verdict.text
    );
    let listening = event_addr(&cell, |w| match w {
        PeerEvent::Listening(addr) => Some(*addr),
        _ => None,
    });
    // What the server was told, as it received it.
    let (server_side, client_side) = cell
        .events
        .iter()
        .find_map(|e| match e.what {
            PeerEvent::DataConnected { local, remote } => Some((remote, local)),
            _ => None,
        })
        .expect("the server's data connection");
    assert_eq!(
        client_side.port(),
        20,
        "RFC 959: the server connects from :20"
    );
    assert!(text.contains("proxied"), "{text}");
    assert!(
        text.contains(&format!(
            "the proxy on the gateway (ftp-alg) rewrote it from {listening} to {server_side}"
        )),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains(&format!("server connects 203.0.113.2:20 → {server_side}")))
        .unwrap_or_else(|| panic!("no line about the data connection:\n{text}"));
    assert!(
        line.contains(&format!("to {listening} (destination NAT)")),
        "{line}"
    );
    assert!(line.contains("the data connection is up"), "{line}");
    assert!(
        text.contains("server reports the transfer complete"),
        "{text}"
    );
}

#[test]
fn watch_names_a_227_that_points_behind_the_port_forward() {
    require_lab!();
    let lab = ScenarioLab::build(Topology::Reverse, Variant::None, &binary()).expect("lab");
    let (text, cell) = watch_during(&lab, DataMode::Pasv, &[]);
    assert!(!cell.verdict.ok);
    let announced = event_addr(&cell, |w| match w {
        PeerEvent::Listening(addr) => Some(*addr),
        _ => None,
    });
    assert!(
        text.contains(&format!("server announced {announced} in 227")),
        "{text}"
    );
    assert!(
        text.contains("227 names 198.51.100.2, but the client reached the server at 203.0.113.1"),
        "{text}"
    );
}

#[test]
fn watch_on_one_interface_reports_only_what_that_interface_shows() {
    require_lab!();
    let lab = ScenarioLab::build(Topology::Routed, Variant::None, &binary()).expect("lab");
    let (text, cell) = watch_during(&lab, DataMode::Pasv, &["--interface", "lan0"]);
    assert!(!cell.verdict.ok);
    assert!(
        text.starts_with(&format!(
            "watching interface lan0 in network namespace {}",
            lab.gateway_name()
        )),
        "{text}"
    );
    // The client's real data socket, as it reported it.
    let (local, remote) = cell
        .events
        .iter()
        .find_map(|e| match e.what {
            PeerEvent::DataConnectFailed { local, remote, .. } => Some((local?, remote)),
            _ => None,
        })
        .expect("the client's failed data connection");
    let line = text
        .lines()
        .find(|l| {
            l.contains(&format!(
                "client connects {local} → {remote} (the address in 227)"
            ))
        })
        .unwrap_or_else(|| panic!("no line about the client's SYN:\n{text}"));
    assert!(line.contains("arriving on lan0"), "{line}");
    assert!(line.contains("got no answer"), "{line}");
    assert!(line.contains("this capture sees only lan0"), "{line}");
    assert!(!text.contains("wan0"), "only lan0 was captured:\n{text}");
}

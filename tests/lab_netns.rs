//! The namespace guard itself: isolation, cleanup on drop and on panic, threads inside.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use ftp_alg::lab::{
    ClientNatLab, ClientNatOptions, Netns, mark_kept, remove_stale_namespaces, unique_tag,
};

#[test]
fn netns_is_deleted_on_drop_and_on_panic_with_its_processes() {
    require_lab!();
    let name = format!("{}-t", unique_tag());
    let path = Path::new("/run/netns").join(&name);
    let (pid, result) = {
        let ns = Netns::create(&name).expect("create");
        assert!(path.exists());
        let child = ns.spawn("sleeper", &["sleep", "60"]).expect("spawn");
        let pid = child.id();
        std::mem::forget(child); // left running on purpose: the namespace guard must kill it
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _ns = ns;
            panic!("test panic while the namespace is alive");
        }));
        (pid, result)
    };
    assert!(result.is_err());
    assert!(!path.exists(), "namespace {name} survived a panic");
    // The forgotten child was killed by pid on the way out (it may linger as a zombie).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z "),
        "process {pid} still running: {state}"
    );
}

#[test]
fn run_in_creates_sockets_inside_the_namespace() {
    require_lab!();
    let ns = Netns::create(format!("{}-t", unique_tag())).expect("create");
    ns.ip(&["addr", "add", "192.0.2.7/32", "dev", "lo"])
        .expect("addr");
    // 192.0.2.7 exists only inside the namespace.
    let inside = ns
        .run_in(|| {
            let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 0))?;
            let addr = listener.local_addr()?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|_| addr)
        })
        .expect("thread");
    assert!(inside.is_ok(), "bind/connect inside failed: {inside:?}");
    let outside = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 0));
    assert!(
        outside.is_err(),
        "the test's own namespace has the lab's address"
    );
}

#[test]
fn client_nat_lab_wires_addresses_and_keeps_the_server_blind_to_the_lan() {
    require_lab!();
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let route = lab
        .server
        .exec(&["ip", "route", "get", "10.0.0.2"])
        .expect("route");
    assert!(
        !route.status.success(),
        "server must have no route to the LAN: {}",
        String::from_utf8_lossy(&route.stdout)
    );
    // ping may be missing; the route check above is the point. When present, the gateway answers.
    if ftp_alg::lab::preflight::has_program("ping") {
        let ping = lab
            .client
            .exec(&["ping", "-c", "1", "-W", "2", "203.0.113.1"])
            .expect("ping");
        assert!(ping.status.success(), "client cannot reach the gateway");
    }
    let rules = ftp_alg::lab::nft::ruleset(&lab.gateway);
    assert!(rules.contains("ct mark 0x00002121 accept"), "{rules}");
    assert!(rules.contains("masquerade"), "{rules}");
    let names = [
        lab.client.name().to_owned(),
        lab.gateway.name().to_owned(),
        lab.server.name().to_owned(),
    ];
    drop(lab);
    for name in names {
        assert!(
            !Path::new("/run/netns").join(&name).exists(),
            "{name} left behind"
        );
    }
}

#[test]
fn a_namespace_kept_on_purpose_survives_the_next_runs_stale_sweep() {
    require_lab!();
    // Named after a process that lives while the namespace is made and marked (a sweep by a
    // test running alongside leaves it alone), then ends, as `ftp-alg lab --keep` does.
    let mut owner = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn");
    let name = format!("fa{}x0-kp", owner.id());
    let path = Path::new("/run/netns").join(&name);
    let ns = Netns::create(&name).expect("create");
    mark_kept(&name);
    owner.kill().expect("kill");
    owner.wait().expect("wait");
    remove_stale_namespaces();
    assert!(path.exists(), "a kept namespace was swept");
    // Without its mark the same namespace is stale, and goes.
    std::fs::remove_file(Path::new("/run/ftp-alg-lab/kept").join(&name)).expect("unmark");
    remove_stale_namespaces();
    assert!(!path.exists(), "a stale namespace survived the sweep");
    drop(ns);
}

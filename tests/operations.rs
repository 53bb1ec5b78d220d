//! Operating the daemon: the status socket, the Prometheus endpoint, SIGHUP reload (valid
//! and invalid), and the SIGTERM drain, against a running daemon in the client-NAT lab.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{alg_binary, assert_clean_shutdown};
use ftp_alg::lab::raw_client::{RawFtp, parse_227};
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, ClientNatLab, ClientNatOptions, DataMode, FTP_PASSWORD, FTP_USER, Netns,
    SERVER_IP, Vsftpd,
};

const METRICS: &str = "10.0.0.1:9121";

fn server_addr() -> SocketAddrV4 {
    SocketAddrV4::new(SERVER_IP, 21)
}

/// The daemon's PID inside the gateway namespace.
fn daemon_pid(gateway: &Netns) -> i32 {
    gateway
        .pids()
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "ftp-alg")
        })
        .expect("ftp-alg running in the gateway")
}

fn signal(gateway: &Netns, sig: &str) {
    let pid = daemon_pid(gateway).to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn status_json(socket: &Path) -> serde_json::Value {
    let out = std::process::Command::new(alg_binary())
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("ftp-alg status");
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// `ftp-alg status` (text) of the daemon behind `socket`.
fn status_text(socket: &Path) -> String {
    let out = std::process::Command::new(alg_binary())
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .expect("status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scrape(lab: &ClientNatLab) -> String {
    lab.client
        .run_in(|| {
            let mut stream = TcpStream::connect_timeout(
                &METRICS.parse::<SocketAddr>().unwrap(),
                Duration::from_secs(3),
            )
            .expect("metrics endpoint");
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
                .expect("request");
            let mut text = String::new();
            stream.read_to_string(&mut text).expect("response");
            text
        })
        .expect("client thread")
}

fn write_config(path: &Path, deny: &str) {
    std::fs::write(
        path,
        format!(
            "lan_interfaces = [\"lan0\"]\nwan_interface = \"wan0\"\n\
             [active]\nport_range = \"40000-40999\"\n\
             [commands]\ndeny = [{deny}]\n"
        ),
    )
    .expect("config");
}

#[test]
fn status_metrics_reload_and_drain_work_on_a_live_daemon() {
    require_lab!("vsftpd");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start(&lab.server).expect("vsftpd");
    server.put_file("f.bin", &[5u8; 50_000]).expect("file");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket: PathBuf = dir.path().join("status.sock");
    let config = dir.path().join("ftp-alg.toml");
    write_config(&config, "\"SITE\"");
    let mut options = AlgOptions::new(alg_binary());
    options.extra_args = vec![
        "--config".into(),
        config.display().to_string(),
        "--status-socket".into(),
        socket.display().to_string(),
        "--metrics-listen".into(),
        METRICS.into(),
        "--drain-grace".into(),
        "20".into(),
    ];
    let mut alg = AlgDaemon::start(&lab.gateway, &options).expect("ftp-alg");

    // A live session with an open (unused) passive pinhole shows in `status`.
    let (to_client, from_test) = std::sync::mpsc::channel::<&'static str>();
    let (to_test, from_client) = std::sync::mpsc::channel::<String>();
    let client = lab
        .client
        .spawn_thread(move || -> Result<(), String> {
            let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
            ftp.login(FTP_USER, FTP_PASSWORD)
                .map_err(|e| e.to_string())?;
            let reply = ftp.command("PASV").map_err(|e| e.to_string())?;
            let _ = parse_227(&reply.text).ok_or("no 227")?;
            let _ = to_test.send("pasv".into());
            // Wait while the test looks; then a real transfer and a denied command.
            let _ = from_test.recv();
            let data = ftp
                .retr(DataMode::Pasv, "f.bin")
                .map_err(|e| e.to_string())?;
            if data.len() != 50_000 {
                return Err("short transfer".into());
            }
            let site = ftp.command("SITE HELP").map_err(|e| e.to_string())?;
            let _ = to_test.send(format!("{} {}", site.code, site.text));
            // Stay connected across the reload and into the drain.
            let _ = from_test.recv();
            let noop = ftp.command("NOOP").map_err(|e| e.to_string())?;
            let _ = to_test.send(format!("{}", noop.code));
            let _ = from_test.recv();
            ftp.quit().map_err(|e| e.to_string())
        })
        .expect("client");
    assert_eq!(
        from_client.recv_timeout(Duration::from_secs(10)).unwrap(),
        "pasv"
    );
    let status = status_json(&socket);
    let sessions = status["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{status}");
    let session_client = sessions[0]["client"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(session_client.starts_with("10.0.0.2"), "{status}");
    let pinholes = sessions[0]["pinholes"].as_array().expect("pinholes");
    assert_eq!(pinholes.len(), 1, "{status}");
    assert!(
        pinholes[0]["tuple"]
            .as_str()
            .unwrap()
            .contains("203.0.113.2:")
    );
    // Text form too.
    let text = status_text(&socket);
    assert!(text.contains("pinhole passive 10.0.0.2"), "{text}");
    // The host's CPU idle setup, as this machine has it (read from the same /sys).
    let idle = ftp_alg::host::IdleState::read();
    assert_eq!(status["host"]["cpu_idle"], idle.summary(), "{status}");
    assert!(
        text.contains(&format!("CPU idle: {}", idle.summary())),
        "{text}"
    );

    to_client.send("go").unwrap();
    let site = from_client.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(site.starts_with("502"), "SITE should be denied: {site}");

    // Metrics after one transfer and one refusal.
    let metrics = scrape(&lab);
    // The default limits.max_sessions, or what this machine's open-files limit (inherited
    // from this process) leaves of it.
    // (The daemon reserves what it has open at start: a few dozen descriptors.)
    let files = ftp_alg::host::raise_open_files_limit().expect("rlimit");
    let max: usize = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ftp_alg_sessions_max "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no ftp_alg_sessions_max:\n{metrics}"));
    if files.sessions(512) >= 4096 {
        assert_eq!(max, 4096, "{metrics}");
    } else {
        assert!(
            (files.sessions(512)..=files.sessions(3)).contains(&max),
            "{max} for an open-files limit of {}",
            files.soft
        );
    }
    for needle in [
        "HTTP/1.0 200 OK",
        "ftp_alg_sessions_active 1",
        "ftp_alg_data_channels_opened_total{mode=\"passive\"} 2",
        "ftp_alg_data_channels_admitted_total{mode=\"passive\"} 1",
        "ftp_alg_pinhole_install_seconds_count 2",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }

    // SIGHUP with an invalid file: refused, old config kept.
    std::fs::write(&config, "lan_interfaces = [\"lan0\"]\nmax_lines = 3\n").unwrap();
    signal(&lab.gateway, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alg.output().contains("new configuration refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            alg.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGHUP with a valid file that denies NOOP: the running session keeps its policy, a new
    // session gets the new one.
    write_config(&config, "\"SITE\", \"NOOP\"");
    signal(&lab.gateway, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alg.output().contains("configuration reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload logged:\n{}",
            alg.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    to_client.send("noop").unwrap();
    assert_eq!(
        from_client.recv_timeout(Duration::from_secs(10)).unwrap(),
        "200"
    );
    let new_session = lab
        .client
        .run_in(|| -> Result<u16, String> {
            let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
            let reply = ftp.command("NOOP").map_err(|e| e.to_string())?;
            Ok(reply.code)
        })
        .expect("client thread")
        .expect("new session");
    assert_eq!(new_session, 502, "the reloaded deny list did not apply");

    // SIGTERM drains: the daemon waits for the running session, which still works.
    signal(&lab.gateway, "-TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        alg.exit_status().is_none(),
        "exited before the session ended"
    );
    assert!(alg.output().contains("no longer accepting"));
    // A new connection meanwhile gets a clear 421, not a reset.
    let refused = lab
        .client
        .run_in(|| -> Result<String, String> {
            use std::io::BufRead;
            let stream =
                std::net::TcpStream::connect_timeout(&server_addr().into(), Duration::from_secs(5))
                    .map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut line = String::new();
            std::io::BufReader::new(stream)
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            Ok(line)
        })
        .expect("client thread")
        .unwrap_or_else(|e| panic!("during the drain: {e}\n{}", alg.output()));
    assert!(
        refused.starts_with("421 ") && refused.contains("restarting"),
        "{refused}"
    );
    to_client.send("quit").unwrap();
    client
        .join()
        .expect("client thread")
        .unwrap_or_else(|e| panic!("client: {e}\n{}", alg.output()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while alg.exit_status().is_none() {
        assert!(
            Instant::now() < deadline,
            "did not exit after the drain:\n{}",
            alg.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!socket.exists(), "status socket left behind");
    drop(server);
    assert_clean_shutdown(&lab, alg);
}

/// Each thread of `pid`: its name and its `/proc/PID/task/TID` directory.
fn threads(pid: i32) -> Vec<(String, PathBuf)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            (comm.trim().to_owned(), task.path())
        })
        .collect()
}

/// Runtime (ns) of each thread of `pid` by name, from `/proc/PID/task/*/schedstat`.
fn thread_runtimes(pid: i32) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for (name, dir) in threads(pid) {
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        *out.entry(name).or_default() += ns;
    }
    out
}

#[test]
fn sessions_run_on_every_session_thread_and_busy_polling_keeps_data_intact() {
    require_lab!("vsftpd");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start(&lab.server).expect("vsftpd");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    server.put_file("f.bin", &content).expect("file");
    let mut options = AlgOptions::new(alg_binary());
    options.extra_args = ["--workers", "3", "--busy-poll-us", "200"]
        .map(String::from)
        .to_vec();
    let alg = AlgDaemon::start(&lab.gateway, &options).expect("ftp-alg");
    let pid = daemon_pid(&lab.gateway);
    let before = thread_runtimes(pid);
    for name in ["ftp-alg-s1", "ftp-alg-s2"] {
        assert!(
            before.contains_key(name),
            "--workers 3: the main thread and two session threads; threads: {before:?}"
        );
    }

    // Six sessions at once, each with passive and active transfers.
    let expected = content.clone();
    let failures = lab
        .client
        .run_in(move || {
            let clients: Vec<_> = (0..6)
                .map(|_| {
                    let expected = expected.clone();
                    std::thread::spawn(move || -> Result<(), String> {
                        let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
                        ftp.login(FTP_USER, FTP_PASSWORD)
                            .map_err(|e| e.to_string())?;
                        for i in 0..20 {
                            let mode = if i % 2 == 0 {
                                DataMode::Pasv
                            } else {
                                DataMode::Port
                            };
                            let data = ftp.retr(mode, "f.bin").map_err(|e| e.to_string())?;
                            if data != expected {
                                return Err(format!("{mode:?} transfer {i}: data differs"));
                            }
                        }
                        ftp.quit().map_err(|e| e.to_string())
                    })
                })
                .collect();
            clients
                .into_iter()
                .filter_map(|c| match c.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("client thread panicked".into()),
                })
                .collect::<Vec<_>>()
        })
        .expect("client thread");
    assert!(failures.is_empty(), "{failures:?}\n{}", alg.output());

    // Sessions went to the threads in turn: each session thread did relay work.
    let after = thread_runtimes(pid);
    for name in ["ftp-alg-s1", "ftp-alg-s2"] {
        let spent = after[name].saturating_sub(before[name]);
        assert!(
            spent > 500_000,
            "{name} ran {spent} ns during 120 transfers in 6 sessions: sessions did not reach it"
        );
    }
    drop(server);
    assert_clean_shutdown(&lab, alg);
}

/// Scheduling policy of each thread of `pid` by name (`/proc/PID/task/*/stat`, field 41).
fn thread_policies(pid: i32) -> Vec<(String, u32)> {
    threads(pid)
        .into_iter()
        .filter_map(|(name, dir)| {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the command name (which may hold spaces) start at field 3.
            let (_, rest) = stat.rsplit_once(')')?;
            let policy = rest.split_whitespace().nth(41 - 3)?.parse().ok()?;
            Some((name, policy))
        })
        .collect()
}

const SCHED_OTHER: u32 = 0;
const SCHED_FIFO: u32 = 1;

/// Logs in through the daemon and retrieves `f.bin` in passive and then active mode, each
/// compared with `content`; panics with the daemon's log on any failure.
fn retr_both_modes(lab: &ClientNatLab, alg: &AlgDaemon, content: &[u8]) {
    let expected = content.to_vec();
    lab.client
        .run_in(move || -> Result<(), String> {
            let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
            ftp.login(FTP_USER, FTP_PASSWORD)
                .map_err(|e| e.to_string())?;
            for mode in [DataMode::Pasv, DataMode::Port] {
                let data = ftp.retr(mode, "f.bin").map_err(|e| e.to_string())?;
                if data != expected {
                    return Err(format!("{mode:?}: data differs"));
                }
            }
            ftp.quit().map_err(|e| e.to_string())
        })
        .expect("client thread")
        .unwrap_or_else(|e| panic!("{e}\n{}", alg.output()));
}

/// Starts the daemon with `args`, checks each named thread's policy at rest, runs a PASV and
/// a PORT transfer, and checks that every thread the daemon started itself runs normally.
/// `priority` is what the status socket must report for the pinhole path.
fn realtime_case(args: &[&str], expected: &[(&str, u32)], priority: u64) {
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start(&lab.server).expect("vsftpd");
    let content: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 251) as u8).collect();
    server.put_file("f.bin", &content).expect("file");
    let mut options = AlgOptions::new(alg_binary());
    options.extra_args = args.iter().map(|a| (*a).to_owned()).collect();
    let alg = AlgDaemon::start(&lab.gateway, &options).expect("ftp-alg");
    let pid = daemon_pid(&lab.gateway);
    let check = |when: &str| {
        let policies = thread_policies(pid);
        for (name, want) in expected {
            let policy = policies.iter().find(|(n, _)| n == name).map(|(_, p)| *p);
            assert_eq!(
                policy,
                Some(*want),
                "{when}: {name} should have policy {want}: {policies:?}"
            );
        }
    };
    check("at start");
    let status = alg.status().expect("status socket");
    assert_eq!(status["realtime"]["priority"], priority, "{status}");
    // Transfers of both modes work, and whatever the daemon starts runs normally.
    retr_both_modes(&lab, &alg, &content);
    check("after transfers");
    for (name, policy) in thread_policies(pid) {
        if !name.starts_with("ftp-alg") {
            assert_eq!(policy, SCHED_OTHER, "{name} inherited real-time scheduling");
        }
    }
    drop(server);
    assert_clean_shutdown(&lab, alg);
}

#[test]
fn realtime_priority_with_thread_scope_puts_the_session_and_firewall_threads_on_sched_fifo() {
    require_lab!("vsftpd");
    realtime_case(
        &[
            "--workers",
            "2",
            "--realtime-priority",
            "5",
            "--realtime-scope",
            "threads",
        ],
        &[
            ("ftp-alg", SCHED_FIFO),
            ("ftp-alg-s1", SCHED_FIFO),
            ("ftp-alg-nft", SCHED_FIFO),
        ],
        5,
    );
}

/// The default scope: only the firewall thread is real-time all the time; a session thread
/// is raised only while it installs a pinhole and releases the line that waited for it
/// (`src/session/tests.rs` checks that span), so at rest and after transfers it is normal.
#[test]
fn realtime_priority_with_pinhole_scope_leaves_session_threads_normal_between_installs() {
    require_lab!("vsftpd");
    realtime_case(
        &["--workers", "2", "--realtime-priority", "5"],
        &[
            ("ftp-alg", SCHED_OTHER),
            ("ftp-alg-s1", SCHED_OTHER),
            ("ftp-alg-nft", SCHED_FIFO),
        ],
        5,
    );
}

/// The default, `realtime_priority = "auto"`, run as root: the pinhole scope at priority 10.
#[test]
fn realtime_priority_auto_is_the_pinhole_scope_where_permitted() {
    require_lab!("vsftpd");
    realtime_case(
        &["--workers", "2"],
        &[
            ("ftp-alg", SCHED_OTHER),
            ("ftp-alg-s1", SCHED_OTHER),
            ("ftp-alg-nft", SCHED_FIFO),
        ],
        10,
    );
}

#[test]
fn realtime_priority_zero_leaves_every_thread_normal() {
    require_lab!("vsftpd");
    realtime_case(
        &["--workers", "2", "--realtime-priority", "0"],
        &[
            ("ftp-alg", SCHED_OTHER),
            ("ftp-alg-s1", SCHED_OTHER),
            ("ftp-alg-nft", SCHED_OTHER),
        ],
        0,
    );
}

/// A wrapper that runs the daemon without `CAP_SYS_NICE` (as under the shipped unit, which
/// does not allow real time; `RLIMIT_RTPRIO` is 0 for root by default).
fn without_sys_nice(dir: &Path) -> PathBuf {
    let wrapper = dir.join("ftp-alg-without-sys-nice");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set -sys_nice {} \"$@\"\n",
            alg_binary().display()
        ),
    )
    .expect("write the wrapper");
    let mut perms = std::fs::metadata(&wrapper).expect("wrapper").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).expect("chmod the wrapper");
    wrapper
}

/// Without the right to real time, "auto" starts with the normal scheduler, says so and how
/// to allow it, and transfers work; a priority the admin named is refused at start instead.
#[test]
fn realtime_priority_auto_without_the_right_runs_normally_and_a_named_priority_is_refused() {
    require_lab!("vsftpd", "setpriv");
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = without_sys_nice(dir.path());
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start(&lab.server).expect("vsftpd");
    server.put_file("f.bin", b"hello").expect("file");

    let mut options = AlgOptions::new(&wrapper);
    options.extra_args = ["--realtime-priority", "7"].map(str::to_owned).to_vec();
    let Err(refused) = AlgDaemon::start(&lab.gateway, &options) else {
        panic!("a named priority without the right to it must stop the daemon");
    };
    let refused = refused.to_string();
    assert!(
        refused.contains("runtime.realtime_priority")
            && refused.contains("LimitRTPRIO=7")
            && refused.contains("CAP_SYS_NICE"),
        "{refused}"
    );

    let alg = AlgDaemon::start(&lab.gateway, &AlgOptions::new(&wrapper)).expect("ftp-alg");
    let pid = daemon_pid(&lab.gateway);
    for (name, policy) in thread_policies(pid) {
        assert_eq!(policy, SCHED_OTHER, "{name}");
    }
    let status = alg.status().expect("status socket");
    assert_eq!(status["realtime"]["setting"], "auto", "{status}");
    assert_eq!(status["realtime"]["priority"], 0, "{status}");
    retr_both_modes(&lab, &alg, b"hello");
    let log = alg.output();
    assert!(
        log.contains(
            "runtime.realtime_priority = \"auto\": the pinhole path runs with the normal scheduler"
        ) && log.contains("LimitRTPRIO=10"),
        "{log}"
    );
    drop(server);
    assert_clean_shutdown(&lab, alg);
}

/// A control connection to the server through the gateway (from the client namespace's
/// thread), and the first line it gets.
fn connect_and_greet() -> (TcpStream, String) {
    let stream = TcpStream::connect_timeout(&SocketAddr::V4(server_addr()), Duration::from_secs(5))
        .expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut line = String::new();
    let _ = std::io::BufReader::new(&stream).read_line(&mut line);
    (stream, line)
}

#[test]
fn an_open_files_limit_without_room_for_max_sessions_caps_them_with_421() {
    require_lab!("vsftpd");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let _server = Vsftpd::start(&lab.server).expect("vsftpd");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket: PathBuf = dir.path().join("status.sock");
    // 200 descriptors, hard limit too: room for (200 - open at start - 64 spare) / 2
    // sessions, where limits.max_sessions asks for the default 4096.
    let wrapper = dir.path().join("ftp-alg-200-files");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec prlimit --nofile=200:200 {} \"$@\"\n",
            alg_binary().display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let mut options = AlgOptions::new(wrapper);
    options.extra_args = vec![
        "--status-socket".into(),
        socket.display().to_string(),
        "--max-sessions-per-client".into(),
        "1000".into(),
        "--new-sessions-per-second".into(),
        "1000".into(),
    ];
    let mut alg = AlgDaemon::start(&lab.gateway, &options).expect("ftp-alg");
    let status = status_json(&socket);
    assert_eq!(status["open_files"]["limit"], 200, "{status}");
    assert_eq!(status["open_files"]["max_sessions"], 4096, "{status}");
    // Two threads' runtimes, listeners, netlink and status sockets: a few dozen open.
    let admitted = status["open_files"]["admitted"]
        .as_u64()
        .unwrap_or_else(|| panic!("no admitted count: {status}"));
    assert!((20..=65).contains(&admitted), "{status}");
    let text = status_text(&socket);
    assert!(
        text.contains(&format!(
            "open files: limit 200, room for {admitted} sessions, fewer than limits.max_sessions 4096"
        )),
        "{text}"
    );

    // That many sessions get vsftpd's banner (the reserve was enough); the next one a 421
    // from the gateway, not a hang.
    let (held, refused) = lab
        .client
        .run_in(move || {
            let mut held = Vec::new();
            for i in 0..admitted {
                let (stream, line) = connect_and_greet();
                assert!(line.starts_with("220"), "session {i}: {line:?}");
                held.push(stream);
            }
            (held, connect_and_greet().1)
        })
        .expect("client thread");
    assert!(
        refused.starts_with("421 Too many sessions"),
        "session {} got {refused:?}",
        admitted + 1
    );
    assert_eq!(
        status_json(&socket)["sessions"].as_array().map(Vec::len),
        usize::try_from(admitted).ok()
    );
    // Room again once they are gone.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_json(&socket)["sessions"].as_array().map(Vec::len) != Some(0) {
        assert!(Instant::now() < deadline, "sessions did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_stream, again) = lab.client.run_in(connect_and_greet).expect("client thread");
    assert!(again.starts_with("220"), "{again:?}");
    alg.stop(Duration::from_secs(5));
}

/// `ftp-alg check` of a minimal client-NAT config plus `extra`.
fn check(extra: &[&str]) -> std::process::Output {
    std::process::Command::new(alg_binary())
        .args([
            "check",
            "--lan-interface",
            "eth0",
            "--wan-address",
            "192.0.2.1",
        ])
        .args(extra)
        .output()
        .expect("run ftp-alg")
}

#[test]
fn check_names_a_cpu_idle_setup_that_taxes_every_wake_up() {
    let out = check(&[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("# configuration is valid"), "{text}");
    // Whatever this machine is: the note appears exactly when its idle vCPUs halt at once.
    let idle = ftp_alg::host::IdleState::read();
    match idle.advice() {
        Some(advice) => assert!(
            text.contains(&format!(
                "# note, this host: CPU idle {}: {advice}",
                idle.summary()
            )),
            "{text}"
        ),
        None => assert!(!text.contains("# note, this host"), "{text}"),
    }
    // The note is a comment: the output stays a TOML document.
    let body = text.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert!(body.parse::<toml::Table>().is_ok(), "{body}");
}

#[test]
fn check_names_interfaces_this_host_does_not_have() {
    let out = check(&[
        "--lan-interface",
        "lo",
        "--lan-interface",
        "fa-nosuch0",
        "--wan-interface",
        "fa-nosuch1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# note, this host: lan_interfaces: no interface fa-nosuch0 (yet)"),
        "{text}"
    );
    // wan_address is set as well (the helper's), so the daemon never looks at the interface.
    assert!(!text.contains("no interface fa-nosuch1"), "{text}");
    // One that exists is not named.
    assert!(!text.contains("no interface lo "), "{text}");
}

#[test]
fn realtime_thread_scope_with_busy_polling_is_refused_at_start() {
    let out = check(&[
        "--realtime-priority",
        "10",
        "--realtime-scope",
        "threads",
        "--busy-poll-us",
        "100",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runtime.realtime_priority") && err.contains("busy_poll_us"),
        "{err}"
    );
}

/// The next sd_notify datagram on `socket` that contains `what`, within 10 s.
fn notified(socket: &std::os::unix::net::UnixDatagram, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.contains(what) {
                return message;
            }
        }
    }
    panic!("no sd_notify message with {what} within 10 s");
}

#[test]
fn a_long_drain_extends_systemds_stop_timeout_and_a_second_sigterm_cuts_it_short() {
    require_lab!("vsftpd");
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start(&lab.server).expect("vsftpd");
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut options = AlgOptions::new(alg_binary());
    options.extra_args = vec!["--drain-grace".into(), "300".into()];
    options.env = vec![format!("NOTIFY_SOCKET={}", notify_path.display())];
    let mut alg = AlgDaemon::start(&lab.gateway, &options).expect("ftp-alg");
    notified(&notify, "READY=1");
    // A session that will not end by itself.
    let _session = lab
        .client
        .run_in(|| -> Result<RawFtp, String> {
            let mut ftp = RawFtp::connect(server_addr()).map_err(|e| e.to_string())?;
            ftp.login(FTP_USER, FTP_PASSWORD)
                .map_err(|e| e.to_string())?;
            Ok(ftp)
        })
        .expect("client thread")
        .expect("session");
    signal(&lab.gateway, "-TERM");
    // systemd hears how long the stop may take: the 300 s drain plus the exit's 15 s.
    let stopping = notified(&notify, "STOPPING=1");
    assert!(
        stopping.contains("EXTEND_TIMEOUT_USEC=315000000"),
        "{stopping:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(alg.exit_status().is_none(), "did not wait for the session");
    // The operator does not want to wait: a second SIGTERM ends the drain.
    let second = Instant::now();
    signal(&lab.gateway, "-TERM");
    while alg.exit_status().is_none() {
        assert!(
            second.elapsed() < Duration::from_secs(15),
            "still draining after a second SIGTERM:\n{}",
            alg.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alg.output().contains("cut short"), "{}", alg.output());
    drop(server);
    assert_clean_shutdown(&lab, alg);
}

#[test]
fn a_restart_only_key_changed_by_sighup_is_reported_on_every_reload_until_a_restart() {
    require_lab!();
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ftp-alg.toml");
    write_config(&config, "");
    let mut options = AlgOptions::new(alg_binary());
    options.extra_args = vec!["--config".into(), config.display().to_string()];
    let alg = AlgDaemon::start(&lab.gateway, &options).expect("ftp-alg");
    // The session cap only changes with a restart; the daemon keeps the one it started with.
    std::fs::write(
        &config,
        "lan_interfaces = [\"lan0\"]\nwan_interface = \"wan0\"\n\
         [active]\nport_range = \"40000-40999\"\n[limits]\nmax_sessions = 100\n",
    )
    .expect("config");
    let restart = "only takes effect after a restart";
    for reloads in 1..=2 {
        signal(&lab.gateway, "-HUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while alg.output().matches("configuration reloaded").count() < reloads {
            assert!(Instant::now() < deadline, "no reload:\n{}", alg.output());
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = alg.output();
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(restart) && l.contains("limits.max_sessions"))
            .collect();
        assert_eq!(warned.len(), reloads, "reload {reloads}:\n{log}");
    }
}

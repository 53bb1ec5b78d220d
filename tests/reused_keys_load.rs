//! Load measurement (ignored by default): many sessions of one client against a server with
//! a small passive range, so the same pinhole keys come back many times a second. Prints the
//! transfers/s and the daemon's own install-latency histogram (share within 100 µs, installs
//! over 1 ms and 5 ms: an add the kernel refused with EBUSY costs an aborted transaction and a
//! retry, ~10 ms).
//!
//! ```sh
//! cargo test --release --test reused_keys_load -- --ignored --nocapture
//! FTP_ALG_REUSE_SESSIONS=32 FTP_ALG_REUSE_PORTS=101 FTP_ALG_REUSE_TRANSFERS=200 \
//!   FTP_ALG_REUSE_ARGS="--gc-interval-ms 100" FTP_ALG_REUSE_BINARY=/path/to/other/ftp-alg \
//!   cargo test --release --test reused_keys_load -- --ignored --nocapture
//! ```
//!
//! Bounded: every session does a fixed number of transfers, each with socket timeouts.

mod common;

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::alg_binary;
use ftp_alg::lab::raw_client::RawFtp;
use ftp_alg::lab::{
    AlgDaemon, AlgOptions, ClientNatLab, ClientNatOptions, DataMode, FTP_PASSWORD, FTP_USER,
    SERVER_IP, Vsftpd, VsftpdOptions,
};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "load measurement: cargo test --release --test reused_keys_load -- --ignored --nocapture"]
fn reused_passive_keys_under_load() {
    require_lab!("vsftpd");
    let sessions: usize = env("FTP_ALG_REUSE_SESSIONS", 8);
    let ports: u16 = env("FTP_ALG_REUSE_PORTS", 32).clamp(1, 1000);
    let per_session: usize = env("FTP_ALG_REUSE_TRANSFERS", 200).min(10_000);
    let lab = ClientNatLab::build(ClientNatOptions::default()).expect("lab");
    let server = Vsftpd::start_with(
        &lab.server,
        &VsftpdOptions {
            pasv_ports: Some((30000, 30000 + ports - 1)),
            ..VsftpdOptions::default()
        },
    )
    .expect("vsftpd");
    server.put_file("one-k.bin", &[1u8; 1024]).expect("file");
    let binary = std::env::var("FTP_ALG_REUSE_BINARY").map_or_else(|_| alg_binary(), PathBuf::from);
    let mut options = AlgOptions::new(binary);
    options.log_level = "ftp_alg=warn".into();
    options.extra_args = [
        "--max-sessions-per-client",
        "1000",
        "--new-sessions-per-second",
        "100000",
    ]
    .map(String::from)
    .to_vec();
    if let Ok(args) = std::env::var("FTP_ALG_REUSE_ARGS") {
        options
            .extra_args
            .extend(args.split_whitespace().map(String::from));
    }
    let alg = AlgDaemon::start(&lab.gateway, &options).expect("ftp-alg");
    let started = Instant::now();
    let threads: Vec<_> = (0..sessions)
        .map(|_| {
            lab.client
                .spawn_thread(move || -> Result<usize, String> {
                    let mut ftp = RawFtp::connect(SocketAddrV4::new(SERVER_IP, 21))
                        .map_err(|e| e.to_string())?;
                    ftp.login(FTP_USER, FTP_PASSWORD)
                        .map_err(|e| e.to_string())?;
                    for i in 0..per_session {
                        ftp.retr(DataMode::Pasv, "one-k.bin")
                            .map_err(|e| format!("transfer {i}: {e}"))?;
                    }
                    Ok(per_session)
                })
                .expect("client thread")
        })
        .collect();
    let mut done = 0;
    let mut failures = Vec::new();
    for thread in threads {
        match thread.join().expect("client thread") {
            Ok(n) => done += n,
            Err(e) => failures.push(e),
        }
    }
    let elapsed = started.elapsed().max(Duration::from_millis(1));
    let status = alg.status().expect("status socket");
    let buckets: Vec<(f64, u64)> = status["latency_buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| Some((b.get(0)?.as_f64()?, b.get(1)?.as_u64()?)))
        .collect();
    let total = status["latency_count"].as_u64().unwrap_or(0);
    let within = |secs: f64| {
        buckets
            .iter()
            .find(|(bound, _)| (*bound - secs).abs() < secs * 1e-6)
            .map_or(0, |(_, n)| *n)
    };
    println!(
        "sessions {sessions}, passive ports {ports}: {done} transfers in {elapsed:.2?} ({:.0}/s), \
         {} failed sessions; installs {total}: {:.2} % within 100 µs, {} over 1 ms, {} over 5 ms",
        done as f64 / elapsed.as_secs_f64(),
        failures.len(),
        100.0 * within(100e-6) as f64 / total.max(1) as f64,
        total.saturating_sub(within(1e-3)),
        total.saturating_sub(within(5e-3)),
    );
    assert!(failures.is_empty(), "{failures:?}\n{}", alg.output());
    assert_eq!(total as usize, done, "one install per transfer");
}

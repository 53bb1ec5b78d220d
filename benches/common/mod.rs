//! Shared by the benchmarks: nearest-rank percentiles of latency samples, the userspace
//! relay proxy they compare against, and the kernel line of their reports.
#![allow(dead_code)] // each benchmark uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ftp_alg::firewall::{Firewall, NftFirewall, Pinhole};

use ftp_alg::lab::AlgOptions;
use ftp_alg::lab::Netns;
use ftp_alg::lab::relay::{RELAY_BINARY, RelayOptions, RelayProxy};

/// The kernel release, and the CPU-vulnerability mitigations in force that tax every kernel
/// entry or return (their cost differs between hosts of one VM type by 2-3x for everything
/// the kernel does: netlink transactions, TCP hops, wake-ups), so that two reports can be
/// told apart, and the CPU idle setup (whether an idle vCPU polls before it halts, which
/// sets the price of every wake-up on a VM): "6.18.44 (spec_rstack_overflow: Vulnerable:
/// Safe RET, no microcode; spectre_v2: Mitigation: Retpolines; cpuidle: haltpoll,
/// guest_halt_poll_ns 0)".
pub(crate) fn kernel_release() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let costly: Vec<String> = ["meltdown", "retbleed", "spec_rstack_overflow", "spectre_v2"]
        .iter()
        .filter_map(|name| {
            let path = format!("/sys/devices/system/cpu/vulnerabilities/{name}");
            let state = std::fs::read_to_string(path).ok()?;
            // The first clause says what it is ("Mitigation: Retpolines; STIBP: …").
            let state = state.split(';').next().unwrap_or_default().trim();
            (!state.is_empty() && state != "Not affected").then(|| format!("{name}: {state}"))
        })
        .collect();
    let mut notes = costly;
    // Idle vCPUs that halt at once make every wake-up a VM exit (see `ftp_alg::host`).
    notes.push(format!(
        "cpuidle: {}",
        ftp_alg::host::IdleState::read().summary()
    ));
    format!("{} ({})", release.trim(), notes.join("; "))
}

/// The daemon under test: the binary cargo built, or `FTP_ALG_BENCH_BINARY` (another build,
/// or a wrapper script that sets an environment or a CPU affinity) to compare against, with
/// the options in `FTP_ALG_BENCH_ALG_ARGS` (e.g. `--busy-poll-us 100`, split on white space)
/// added to every start, after `base_args`.
pub(crate) fn alg_options(base_args: &[&str]) -> AlgOptions {
    let binary = std::env::var_os("FTP_ALG_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_ftp-alg")),
        PathBuf::from,
    );
    let mut options = AlgOptions::new(binary);
    options.extra_args = base_args.iter().map(|a| (*a).to_owned()).collect();
    options.extra_args.extend(
        std::env::var("FTP_ALG_BENCH_ALG_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from),
    );
    options
}

/// The pid of the daemon under test in `gateway`: the process named `ftp-alg`, or named as
/// `FTP_ALG_BENCH_BINARY`'s file (the kernel keeps 15 bytes of a name).
pub(crate) fn daemon_pid(gateway: &Netns) -> Option<i32> {
    let other = std::env::var_os("FTP_ALG_BENCH_BINARY").and_then(|path| {
        let name = PathBuf::from(path)
            .file_name()?
            .to_string_lossy()
            .into_owned();
        Some(name.chars().take(15).collect::<String>())
    });
    gateway.pids().into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| {
            let comm = comm.trim();
            comm == "ftp-alg" || other.as_deref() == Some(comm)
        })
    })
}

/// The daemon's admission limits opened up, so that a run measures the daemon and not its
/// policy (one client address opens thousands of sessions per second in these labs).
pub(crate) const OPEN_LIMITS: [&str; 10] = [
    "--max-sessions",
    "100000",
    "--max-sessions-per-client",
    "100000",
    "--new-sessions-per-second",
    "1000000",
    "--max-pinholes",
    "1000000",
    "--idle-timeout",
    "900",
];

/// Why the relay proxy cannot be a route of this run: `FTP_ALG_BENCH_RELAY=0`, or Debian's
/// `ftp-proxy` is not installed.
pub(crate) fn relay_unavailable() -> Option<String> {
    if std::env::var("FTP_ALG_BENCH_RELAY").is_ok_and(|v| v == "0") {
        return Some("FTP_ALG_BENCH_RELAY=0".into());
    }
    if !Path::new(RELAY_BINARY).is_file() {
        return Some(format!(
            "{RELAY_BINARY} not installed (Debian package ftp-proxy)"
        ));
    }
    None
}

/// Debian's `ftp-proxy` in `gateway` as every benchmark runs it (see `ftp_alg::lab::relay`):
/// transparent like ftp-alg, logging at `WRN`, `ForkLimit` off and `MaxClients` 512 (the
/// lab's defaults).
pub(crate) fn start_relay(gateway: &Netns) -> ftp_alg::lab::Result<RelayProxy> {
    RelayProxy::start(
        gateway,
        &RelayOptions {
            log_level: "WRN".into(),
            ..RelayOptions::default()
        },
    )
}

/// Percentiles of microsecond samples.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl Stats {
    /// Nearest-rank percentiles of microsecond samples.
    pub(crate) fn from_micros(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = (p * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Self {
            n: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
        }
    }

    /// The same, from durations.
    pub(crate) fn from_durations(samples: &[Duration]) -> Self {
        Self::from_micros(samples.iter().map(|d| d.as_secs_f64() * 1e6).collect())
    }
}

/// Raises RLIMIT_NOFILE (soft and, as root, hard) to `want`; returns the soft limit in force.
/// A daemon spawned afterwards inherits it.
pub(crate) fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let new = libc::rlimit {
        rlim_cur: want.max(lim.rlim_cur),
        rlim_max: want.max(lim.rlim_max),
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
    }
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

/// Makes Ctrl-C or SIGTERM in the middle of a run clean up as the guards' `Drop` would
/// have: the namespaces this process made, with what runs in them (vsftpd, ftp-alg,
/// ftp-proxy, their own process groups, which the terminal's signal does not reach), its
/// scratch directories and its files in /dev/shm; then exits 130. Call once, before building any namespace.
pub(crate) fn clean_up_on_interrupt() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        // Async-signal-safe: only the flag; the watcher thread does the work.
        STOP.store(true, Ordering::SeqCst);
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if STOP.load(Ordering::SeqCst) {
                break;
            }
        }
        // A second Ctrl-C ends a cleanup that hangs.
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: restores the default disposition.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
        eprintln!("interrupted: removing this run's namespaces and files");
        ftp_alg::lab::remove_own_namespaces();
        ftp_alg::lab::remove_own_scratch_dirs();
        let prefix = format!("ftp-alg-bench-{}-", std::process::id());
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        std::process::exit(130);
    });
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

pub(crate) fn stdout_of(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[(s.len() - 1) / 2]
}

/// What [`drive`] asks the firewall: open (with that pinhole timeout) or close.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Open(Duration),
    Close,
}

/// Opens or closes `pinholes` from `callers` concurrent tasks, each awaiting its ACK before
/// its next call (after `gap`, if given). Bounded: every call by 5 s,
/// the whole series by 120 s. Returns the latency of each successful call and the failures.
pub(crate) async fn drive(
    fw: &NftFirewall,
    pinholes: Vec<Pinhole>,
    callers: usize,
    op: Op,
    gap: Option<Duration>,
) -> (Vec<Duration>, usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let per = pinholes.len().div_ceil(callers.max(1)).max(1);
    let tasks: Vec<_> = pinholes
        .chunks(per)
        .map(|chunk| {
            let fw = fw.clone();
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(chunk.len());
                let mut failures = 0;
                for pinhole in chunk {
                    if Instant::now() > deadline {
                        failures += 1;
                        continue;
                    }
                    if let Some(gap) = gap {
                        tokio::time::sleep(gap).await;
                    }
                    let t = Instant::now();
                    let call = async {
                        match op {
                            Op::Open(timeout) => fw.open(pinhole, timeout).await,
                            Op::Close => fw.close(pinhole).await,
                        }
                    };
                    match tokio::time::timeout(Duration::from_secs(5), call).await {
                        Ok(Ok(())) => times.push(t.elapsed()),
                        _ => failures += 1,
                    }
                }
                (times, failures)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut failures = 0;
    for task in tasks {
        match task.await {
            Ok((times, failed)) => {
                all.extend(times);
                failures += failed;
            }
            Err(_) => failures += per,
        }
    }
    (all, failures)
}

//! What the host's CPU idle handling does to the control channel's latency.
//!
//! Every control message the ALG relays wakes its session thread, and then the reader it
//! writes to. On a virtual machine whose idle vCPUs halt at once (the `haltpoll` cpuidle
//! driver with `guest_halt_poll_ns = 0`, as some cloud images ship it), waking a halted vCPU
//! is an inter-processor interrupt, a VM exit and the hypervisor scheduling the vCPU again:
//! tens of microseconds per wake-up instead of one or two. The kernel's own FTP helper never
//! wakes anything, so this tax falls on the ALG alone. Measured on a 2-vCPU KVM guest
//! (BENCHMARKS.md): a NOOP through the ALG added 60–66 µs with `guest_halt_poll_ns = 0` and
//! 18–20 µs with the kernel's default of 200,000.
//!
//! This module reads the setting (read-only; the daemon never changes the host) so that the
//! start log, `ftp-alg status` and the benchmark reports can say what it is.
//!
//! It also sizes the daemon to its open-files limit: every session holds two sockets, and a
//! session the process cannot open a socket for would hang in the listener's backlog. At
//! start the daemon raises its own soft `RLIMIT_NOFILE` to the hard limit (a process may,
//! without privilege) and admits no more sessions than the result has room for; the others
//! get a `421` like any session over `limits.max_sessions`.

use std::path::Path;

/// The kernel's default for `guest_halt_poll_ns` (poll up to 200 µs before halting).
pub const KERNEL_DEFAULT_HALT_POLL_NS: u64 = 200_000;

/// What `/dev/cpu_dma_latency` reads when no process asks for a limit (2,000 s).
const NO_LATENCY_LIMIT_US: i32 = 2_000_000_000;

/// The CPU idle setup, as far as it bears on wake-up latency.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdleState {
    /// The cpuidle driver (`haltpoll`, `intel_idle`, `acpi_idle`, `none`…), if the kernel
    /// says.
    pub driver: Option<String>,
    /// `guest_halt_poll_ns` of the `haltpoll` driver, when that driver is loaded.
    pub guest_halt_poll_ns: Option<u64>,
    /// The CPU latency limit in force from PM QoS requests (`/dev/cpu_dma_latency`, held by
    /// e.g. tuned's latency profiles), µs, when one is; `None` without a limit or when the
    /// device cannot be read (it is root's only).
    pub latency_limit_us: Option<i32>,
}

impl IdleState {
    /// Reads the running host's state from `/sys` and `/dev/cpu_dma_latency`.
    pub fn read() -> Self {
        Self::read_from(Path::new("/"))
    }

    /// Reads the state from a tree rooted at `root` with the same layout (`sys/…`,
    /// `dev/cpu_dma_latency`; a directory of plain files in tests). What is missing or
    /// unreadable is `None`.
    pub fn read_from(root: &Path) -> Self {
        let read = |rel: &str| {
            std::fs::read_to_string(root.join(rel))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let driver = read("sys/devices/system/cpu/cpuidle/current_driver");
        let guest_halt_poll_ns = if driver.as_deref() == Some("haltpoll") {
            read("sys/module/haltpoll/parameters/guest_halt_poll_ns").and_then(|s| s.parse().ok())
        } else {
            None
        };
        // The device reads as the current limit, a native-endian s32 (opening it adds a
        // request of "no limit" until it is closed, which changes nothing).
        let latency_limit_us = std::fs::read(root.join("dev/cpu_dma_latency"))
            .ok()
            .and_then(|bytes| Some(i32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?)))
            .filter(|us| (0..NO_LATENCY_LIMIT_US).contains(us));
        Self {
            driver,
            guest_halt_poll_ns,
            latency_limit_us,
        }
    }

    /// True when idle vCPUs halt without polling first: every wake-up of an idle CPU is a
    /// VM exit. A PM QoS latency limit of 0 µs rules the halt state out (idle CPUs poll).
    pub fn halts_without_polling(&self) -> bool {
        self.driver.as_deref() == Some("haltpoll")
            && self.guest_halt_poll_ns == Some(0)
            && self.latency_limit_us != Some(0)
    }

    /// One line for logs and reports: "haltpoll, guest_halt_poll_ns 0".
    pub fn summary(&self) -> String {
        let mut out = match (&self.driver, self.guest_halt_poll_ns) {
            (Some(driver), Some(ns)) => format!("{driver}, guest_halt_poll_ns {ns}"),
            (Some(driver), None) => driver.clone(),
            (None, _) => "unknown".to_owned(),
        };
        if let Some(us) = self.latency_limit_us {
            out.push_str(&format!(", PM QoS CPU latency limit {us} µs"));
        }
        out
    }

    /// What an admin may do about it, when there is something to do.
    pub fn advice(&self) -> Option<String> {
        self.halts_without_polling().then(|| {
            format!(
                "idle vCPUs halt at once, so each relayed control message waits for a halted \
                 vCPU to be woken by the hypervisor (a VM exit, tens of µs); to let idle vCPUs \
                 poll first, as the kernel does by default: echo {KERNEL_DEFAULT_HALT_POLL_NS} > \
                 /sys/module/haltpoll/parameters/guest_halt_poll_ns (or \
                 haltpoll.guest_halt_poll_ns={KERNEL_DEFAULT_HALT_POLL_NS} on the kernel command \
                 line); the polling spends idle vCPU time, never a busy vCPU's"
            )
        })
    }
}

/// Descriptors kept free for what the daemon opens after start, besides its sessions: status
/// readers and metrics scrapes (4 each), the pipes of `nft` and `conntrack` children, a
/// connection being accepted, and a margin.
pub const SPARE_DESCRIPTORS: u64 = 64;

/// Descriptors assumed open at start when `/proc/self/fd` cannot be read.
pub const ASSUMED_OPEN_DESCRIPTORS: u64 = 64;

/// Descriptors this process has open now (listeners, netlink sockets, the status socket, the
/// epoll and event descriptors of every runtime thread, ...), from `/proc/self/fd`; an
/// assumption ([`ASSUMED_OPEN_DESCRIPTORS`]) when that cannot be read.
pub fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        // The directory's own descriptor is in the listing.
        .map(|dir| (dir.count() as u64).saturating_sub(1))
        .unwrap_or(ASSUMED_OPEN_DESCRIPTORS)
}

/// The process's open-files limit, after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit in force now (the hard limit, unless raising it failed).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

impl OpenFiles {
    /// How many sessions fit: two descriptors each, after the `open` ones (see
    /// [`open_descriptors`]: counted once everything but the sessions is set up, since the
    /// session threads alone hold three each) and [`SPARE_DESCRIPTORS`].
    pub fn sessions(&self, open: u64) -> usize {
        let reserve = open.saturating_add(SPARE_DESCRIPTORS);
        usize::try_from(self.soft.saturating_sub(reserve) / 2).unwrap_or(usize::MAX)
    }

    /// The descriptors `sessions` sessions need, besides the `open` ones and the spare.
    pub fn needed_for(sessions: usize, open: u64) -> u64 {
        (sessions as u64)
            .saturating_mul(2)
            .saturating_add(open)
            .saturating_add(SPARE_DESCRIPTORS)
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (allowed without privilege) and says
/// what it is now. An unlimited hard limit is capped at the kernel's `nr_open`.
pub fn raise_open_files_limit() -> std::io::Result<OpenFiles> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let mut hard = limit.rlim_max;
    if hard == libc::RLIM_INFINITY {
        hard = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    let mut soft = before;
    if before < hard {
        let raised = libc::rlimit {
            rlim_cur: hard,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: a valid rlimit; only the soft limit moves, up to the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            soft = hard;
        }
    }
    Ok(OpenFiles { before, soft, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root with the files `read_from` looks at; `latency_us` as the device would read.
    fn host(
        driver: Option<&str>,
        poll_ns: Option<&str>,
        latency_us: Option<i32>,
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |rel: &str, bytes: &[u8]| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, bytes).expect("write");
        };
        if let Some(driver) = driver {
            write(
                "sys/devices/system/cpu/cpuidle/current_driver",
                format!("{driver}\n").as_bytes(),
            );
        }
        if let Some(ns) = poll_ns {
            write(
                "sys/module/haltpoll/parameters/guest_halt_poll_ns",
                format!("{ns}\n").as_bytes(),
            );
        }
        if let Some(us) = latency_us {
            write("dev/cpu_dma_latency", &us.to_ne_bytes());
        }
        dir
    }

    fn sysfs(driver: Option<&str>, poll_ns: Option<&str>) -> tempfile::TempDir {
        host(driver, poll_ns, None)
    }

    #[test]
    fn a_guest_that_halts_at_once_is_named_with_what_to_do() {
        let dir = sysfs(Some("haltpoll"), Some("0"));
        let state = IdleState::read_from(dir.path());
        assert!(state.halts_without_polling());
        assert_eq!(state.summary(), "haltpoll, guest_halt_poll_ns 0");
        let advice = state.advice().expect("advice");
        assert!(
            advice.contains("echo 200000 > /sys/module/haltpoll/parameters/guest_halt_poll_ns")
        );
    }

    #[test]
    fn a_polling_guest_or_bare_metal_needs_nothing() {
        let polling = IdleState::read_from(sysfs(Some("haltpoll"), Some("200000")).path());
        assert!(!polling.halts_without_polling());
        assert_eq!(polling.summary(), "haltpoll, guest_halt_poll_ns 200000");
        assert_eq!(polling.advice(), None);
        // The parameter is only read for the haltpoll driver.
        let metal = IdleState::read_from(sysfs(Some("intel_idle"), Some("0")).path());
        assert_eq!(metal.summary(), "intel_idle");
        assert_eq!(metal.advice(), None);
    }

    #[test]
    fn missing_or_garbled_files_are_unknown_not_errors() {
        let empty = IdleState::read_from(sysfs(None, None).path());
        assert_eq!(empty, IdleState::default());
        assert_eq!(empty.summary(), "unknown");
        let garbled = IdleState::read_from(sysfs(Some("haltpoll"), Some("lots")).path());
        assert_eq!(garbled.guest_halt_poll_ns, None);
        assert!(!garbled.halts_without_polling());
        assert_eq!(garbled.summary(), "haltpoll");
    }

    #[test]
    fn sessions_fit_two_descriptors_each_after_the_reserve() {
        let files = |soft| OpenFiles {
            before: soft,
            soft,
            hard: soft,
        };
        assert_eq!(files(1024).sessions(64), 448);
        assert_eq!(files(20_000).sessions(64), 9_936);
        assert_eq!(files(20_000).sessions(30), 9_953);
        assert_eq!(files(65_536).sessions(64), 32_704);
        // A host with many CPUs: three descriptors per session thread count against it.
        assert_eq!(files(65_536).sessions(64 * 3 + 20), 32_630);
        assert_eq!(files(100).sessions(64), 0);
        assert_eq!(OpenFiles::needed_for(4096, 64), 8_320);
        assert!(files(OpenFiles::needed_for(4096, 200)).sessions(200) >= 4096);
    }

    #[test]
    fn open_descriptors_are_counted() {
        let before = open_descriptors();
        let files: Vec<_> = (0..64)
            .map(|_| tempfile::tempfile().expect("tempfile"))
            .collect();
        let during = open_descriptors();
        drop(files);
        // Under `cargo test` other tests open and close descriptors in the same process.
        assert!(during >= before + 48, "{before} → {during}");
        assert!(before >= 3, "stdin, stdout, stderr: {before}");
    }

    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let files = raise_open_files_limit().expect("getrlimit");
        assert!(files.soft >= files.before);
        assert_eq!(files.soft, files.hard, "{files:?}");
    }

    #[test]
    fn a_pm_qos_limit_of_zero_keeps_idle_vcpus_polling() {
        // Nobody asks for a limit: the device reads 2,000 s, which is no limit.
        let none =
            IdleState::read_from(host(Some("haltpoll"), Some("0"), Some(2_000_000_000)).path());
        assert_eq!(none.latency_limit_us, None);
        assert!(none.halts_without_polling());
        // A process holds 0 µs (tuned's latency profiles do): the halt state is ruled out.
        let zero = IdleState::read_from(host(Some("haltpoll"), Some("0"), Some(0)).path());
        assert_eq!(zero.latency_limit_us, Some(0));
        assert!(!zero.halts_without_polling());
        assert_eq!(zero.advice(), None);
        assert_eq!(
            zero.summary(),
            "haltpoll, guest_halt_poll_ns 0, PM QoS CPU latency limit 0 µs"
        );
        // A looser limit still lets the halt state (1 µs exit latency) be chosen.
        let loose = IdleState::read_from(host(Some("haltpoll"), Some("0"), Some(50)).path());
        assert!(loose.halts_without_polling());
    }
}

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

use std::path::Path;

/// The kernel's default for `guest_halt_poll_ns` (poll up to 200 µs before halting).
pub const KERNEL_DEFAULT_HALT_POLL_NS: u64 = 200_000;

/// The CPU idle setup, as far as it bears on wake-up latency.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdleState {
    /// The cpuidle driver (`haltpoll`, `intel_idle`, `acpi_idle`, `none`…), if the kernel
    /// says.
    pub driver: Option<String>,
    /// `guest_halt_poll_ns` of the `haltpoll` driver, when that driver is loaded.
    pub guest_halt_poll_ns: Option<u64>,
}

impl IdleState {
    /// Reads the running host's state from `/sys`.
    pub fn read() -> Self {
        Self::read_from(Path::new("/sys"))
    }

    /// Reads the state from a sysfs tree rooted at `sys` (a directory with the same layout,
    /// in tests). What is missing or unreadable is `None`.
    pub fn read_from(sys: &Path) -> Self {
        let read = |rel: &str| {
            std::fs::read_to_string(sys.join(rel))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let driver = read("devices/system/cpu/cpuidle/current_driver");
        let guest_halt_poll_ns = if driver.as_deref() == Some("haltpoll") {
            read("module/haltpoll/parameters/guest_halt_poll_ns").and_then(|s| s.parse().ok())
        } else {
            None
        };
        Self {
            driver,
            guest_halt_poll_ns,
        }
    }

    /// True when idle vCPUs halt without polling first: every wake-up of an idle CPU is a
    /// VM exit.
    pub fn halts_without_polling(&self) -> bool {
        self.driver.as_deref() == Some("haltpoll") && self.guest_halt_poll_ns == Some(0)
    }

    /// One line for logs and reports: "haltpoll, guest_halt_poll_ns 0".
    pub fn summary(&self) -> String {
        match (&self.driver, self.guest_halt_poll_ns) {
            (Some(driver), Some(ns)) => format!("{driver}, guest_halt_poll_ns {ns}"),
            (Some(driver), None) => driver.clone(),
            (None, _) => "unknown".to_owned(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sysfs(driver: Option<&str>, poll_ns: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(driver) = driver {
            let path = dir.path().join("devices/system/cpu/cpuidle");
            std::fs::create_dir_all(&path).expect("mkdir");
            std::fs::write(path.join("current_driver"), format!("{driver}\n")).expect("write");
        }
        if let Some(ns) = poll_ns {
            let path = dir.path().join("module/haltpoll/parameters");
            std::fs::create_dir_all(&path).expect("mkdir");
            std::fs::write(path.join("guest_halt_poll_ns"), format!("{ns}\n")).expect("write");
        }
        dir
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
}

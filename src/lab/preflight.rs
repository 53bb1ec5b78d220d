//! Can this machine host a lab? And what a test does when it cannot.
//!
//! Policy: under `CI=true` a test that needs the lab and cannot get it FAILS — it must never
//! pass silently. Elsewhere it skips, saying why.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use super::netns::{Netns, unique_tag};
use super::process::run_bounded;

/// What a test should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Everything needed is here.
    Ready,
    /// Not available; outside CI: skip with this reason.
    Skip(String),
    /// Not available under `CI=true`: fail with this reason.
    Fail(String),
}

/// Whether the environment says this is a CI run (`CI=true`, also `1`/`yes`).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// Whether `program` is found on `PATH` (or is an existing path).
pub fn has_program(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(Into::into))
        .any(|dir| dir.join(program).is_file())
}

/// Root, iproute2, nftables, and the ability to create a namespace (probed once per process).
pub fn lab_available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // SAFETY: plain syscall without arguments.
            if unsafe { libc::geteuid() } != 0 {
                return Err("needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN to create network namespaces); run as root, e.g. `sudo scripts/test.sh`".into());
            }
            for tool in ["ip", "nft", "ss", "sysctl"] {
                if !has_program(tool) {
                    return Err(format!("`{tool}` not found (install iproute2, nftables, procps)"));
                }
            }
            let probe = Netns::create(format!("{}-probe", unique_tag()))
                .map_err(|e| format!("cannot create a network namespace: {e}"))?;
            let mut nft = Command::new("ip");
            nft.args(["netns", "exec", probe.name(), "nft", "list", "ruleset"]);
            match run_bounded(nft, None, std::time::Duration::from_secs(10)) {
                Ok(run) if run.output.status.success() => Ok(()),
                Ok(run) => Err(format!(
                    "nftables unusable inside a namespace: {}",
                    String::from_utf8_lossy(&run.output.stderr).trim()
                )),
                Err(e) => Err(format!("nftables unusable inside a namespace: {e}")),
            }
        })
        .clone()
}

/// The gate for a test needing the lab plus `programs` (e.g. `["vsftpd", "lftp"]`).
pub fn gate(programs: &[&str]) -> Gate {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| !has_program(p))
        .collect();
    let verdict = lab_available().and_then(|()| {
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "missing program(s): {} (scripts/test.sh installs them)",
                missing.join(", ")
            ))
        }
    });
    match verdict {
        Ok(()) => Gate::Ready,
        Err(why) if in_ci() => Gate::Fail(why),
        Err(why) => Gate::Skip(why),
    }
}

//! A network namespace owned by the lab: created on demand, deleted (with everything still
//! running in it) when the guard drops — also when a test panics.

use std::any::Any;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::error::{LabError, Result};
use super::process::{Bounded, ServiceChild, run_bounded, run_checked};

/// Where iproute2 keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Bound for the small administrative commands (`ip`, `nft`, `sysctl`).
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

/// A named network namespace that is deleted when dropped.
///
/// Drop kills (SIGKILL, by pid) every process still inside the namespace — by construction only
/// processes the lab started there — and then deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let mut add = Command::new("ip");
        add.args(["netns", "add", &name]);
        run_checked(add, None, ADMIN_TIMEOUT)?;
        // From here on the guard owns it: any failure below deletes it again.
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file that pins the namespace (`/run/netns/<name>`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`), ready for arguments.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    fn command_for(&self, args: &[&str]) -> Result<Command> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| LabError::Unsupported("empty command line".into()))?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        Ok(cmd)
    }

    /// Runs `args` inside the namespace, bounded by [`ADMIN_TIMEOUT`]; a non-zero exit is
    /// returned, not an error.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        Ok(run_bounded(self.command_for(args)?, None, ADMIN_TIMEOUT)?.output)
    }

    /// Runs `args` inside the namespace; a non-zero exit or a timeout is an error.
    pub fn exec_ok(&self, args: &[&str]) -> Result<Output> {
        run_checked(self.command_for(args)?, None, ADMIN_TIMEOUT)
    }

    /// Runs `args` inside the namespace with `stdin` as its input; non-zero exit is an error.
    pub fn exec_stdin_ok(&self, args: &[&str], stdin: &[u8]) -> Result<Output> {
        run_checked(self.command_for(args)?, Some(stdin), ADMIN_TIMEOUT)
    }

    /// Runs `args` inside the namespace, killing it after `timeout`; reports what happened.
    pub fn exec_bounded(&self, args: &[&str], timeout: Duration) -> Result<Bounded> {
        run_bounded(self.command_for(args)?, None, timeout)
    }

    /// `ip <args>` against this namespace (`ip -n <name> ...`), checked.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_checked(cmd, None, ADMIN_TIMEOUT)
    }

    /// Starts a long-running program inside the namespace; it is killed when the guard drops.
    pub fn spawn(&self, label: &str, args: &[&str]) -> Result<ServiceChild> {
        ServiceChild::spawn(format!("{label} in {}", self.name), self.command_for(args)?)
    }

    /// Starts `f` on a new thread that has joined this namespace (`setns(CLONE_NEWNET)`).
    ///
    /// Sockets the closure creates live in the namespace; threads it spawns inherit it. The
    /// thread keeps the namespace alive until it ends, even after the guard deleted its name.
    pub fn spawn_thread<F, T>(&self, f: F) -> Result<NsThread<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = File::open(self.path())
            .map_err(|e| LabError::io(format!("opening {}", self.path().display()), e))?;
        let (entered_tx, entered_rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                // SAFETY: setns on a valid, open namespace fd; it changes only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    let _ = entered_tx.send(Err(std::io::Error::last_os_error()));
                    return None;
                }
                drop(file);
                let _ = entered_tx.send(Ok(()));
                Some(f())
            })
            .map_err(|e| LabError::io("spawning a namespace thread", e))?;
        let entered = entered_rx.recv().map_err(|_| LabError::ThreadPanicked {
            name: self.name.clone(),
            message: "the thread ended before joining the namespace".into(),
        })?;
        if let Err(source) = entered {
            let _ = handle.join();
            return Err(LabError::Setns {
                name: self.name.clone(),
                source,
            });
        }
        Ok(NsThread {
            name: self.name.clone(),
            handle,
        })
    }

    /// Runs `f` to completion on a fresh thread inside the namespace and returns its result.
    pub fn run_in<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_thread(f)?.join()
    }

    /// Pids of the processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_of(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_namespace(&self.name);
    }
}

/// A thread started by [`Netns::spawn_thread`].
#[derive(Debug)]
pub struct NsThread<T> {
    name: String,
    handle: JoinHandle<Option<T>>,
}

impl<T> NsThread<T> {
    /// Waits for the closure's result; a panic inside becomes [`LabError::ThreadPanicked`].
    pub fn join(self) -> Result<T> {
        match self.handle.join() {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(LabError::ThreadPanicked {
                name: self.name,
                message: "setns failed".into(),
            }),
            Err(payload) => Err(LabError::ThreadPanicked {
                name: self.name,
                message: panic_message(payload.as_ref()),
            }),
        }
    }

    /// Whether the closure has returned.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".into()
    }
}

fn pids_of(name: &str) -> Vec<i32> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "pids", name]);
    run_bounded(cmd, None, ADMIN_TIMEOUT)
        .map(|run| {
            String::from_utf8_lossy(&run.output.stdout)
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills what runs in the namespace (by pid) and deletes it, with the instance records its
/// daemons left (`/run/ftp-alg/instance-<netns inode>-*.json`, see `daemon::instance`).
/// Best effort: used from Drop.
fn delete_namespace(name: &str) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(Path::new(NETNS_DIR).join(name)) {
        let prefix = format!("instance-{}-", meta.ino());
        if let Ok(entries) = std::fs::read_dir("/run/ftp-alg") {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    let own = i32::try_from(std::process::id()).unwrap_or(-1);
    for pid in pids_of(name)
        .into_iter()
        .filter(|&pid| pid != own && pid > 1)
    {
        // SAFETY: plain syscall; these pids live in a namespace only the lab uses.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let mut del = Command::new("ip");
    del.args(["netns", "del", name]);
    let _ = run_bounded(del, None, ADMIN_TIMEOUT);
}

/// A fresh namespace-name tag, unique on this machine while this process lives:
/// `fa<pid>x<counter>`.
pub fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "fa{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pid inside a tag made by [`unique_tag`], for names `fa<pid>x<n>-<role>`.
fn tag_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("fa")?;
    let (pid, rest) = rest.split_once('x')?;
    let (counter, role) = rest.split_once('-')?;
    let well_formed = !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && !counter.is_empty()
        && counter.bytes().all(|b| b.is_ascii_digit())
        && !role.is_empty()
        && role.bytes().all(|b| b.is_ascii_lowercase());
    if well_formed { pid.parse().ok() } else { None }
}

/// Where `ftp-alg lab --keep` marks the namespaces it leaves up on purpose.
const KEPT_DIR: &str = "/run/ftp-alg-lab/kept";

/// Marks a namespace as kept on purpose (`--keep`): [`remove_stale_namespaces`] leaves it,
/// and the shells a user opened in it, alone.
pub fn mark_kept(name: &str) {
    let _ = std::fs::create_dir_all(KEPT_DIR);
    let _ = std::fs::write(Path::new(KEPT_DIR).join(name), b"");
}

/// Deletes namespaces left by a lab whose process died without cleaning up (SIGKILL, OOM).
///
/// Only names of the exact form [`unique_tag`] makes are considered, only when the process
/// that made them no longer exists, and never one kept on purpose ([`mark_kept`]); marks of
/// kept namespaces the user has since deleted are dropped.
pub fn remove_stale_namespaces() {
    if let Ok(marks) = std::fs::read_dir(KEPT_DIR) {
        for mark in marks.flatten() {
            if !Path::new(NETNS_DIR).join(mark.file_name()).exists() {
                let _ = std::fs::remove_file(mark.path());
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(owner) = tag_owner(&name)
            && !Path::new(&format!("/proc/{owner}")).exists()
            && !Path::new(KEPT_DIR).join(&name).exists()
        {
            delete_namespace(&name);
        }
    }
}

/// Deletes the namespaces this process made (with what runs in them), kept ones excepted:
/// for a benchmark or lab interrupted by a signal, whose guards' `Drop` will not run.
pub fn remove_own_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if tag_owner(&name) == Some(own) && !Path::new(KEPT_DIR).join(&name).exists() {
            delete_namespace(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tag_owner;

    #[test]
    fn only_lab_made_names_are_considered_stale_candidates() {
        assert_eq!(tag_owner("fa123x4-cl"), Some(123));
        assert_eq!(tag_owner("fa123x4-gw"), Some(123));
        assert_eq!(tag_owner("fa1234-cl"), None);
        assert_eq!(tag_owner("fa123x-cl"), None);
        assert_eq!(tag_owner("fab12x4-cl"), None);
        assert_eq!(tag_owner("fa12x4"), None);
        assert_eq!(tag_owner("other"), None);
    }
}

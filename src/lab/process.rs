//! Running programs with a time bound, and guards that kill what the lab started.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::error::{LabError, Result};

/// How often a bounded wait looks at its child.
const POLL: Duration = Duration::from_millis(10);

/// What a bounded run produced.
#[derive(Debug)]
pub struct Bounded {
    /// Exit status, stdout and stderr (the output collected until the kill, if it timed out).
    pub output: Output,
    /// Whether the program was killed because it exceeded its bound.
    pub timed_out: bool,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Bounded {
    /// Stdout and stderr, lossily decoded and concatenated.
    pub fn transcript(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&self.output.stderr));
        text
    }
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn drain<R: Read + Send + 'static>(reader: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    let mut reader = reader?;
    Some(thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error only truncates what we show; the exit status still tells the story.
        let _ = reader.read_to_end(&mut buf);
        buf
    }))
}

/// Runs `cmd` to completion or kills it after `timeout`; never waits longer.
///
/// The program runs in its own process group so that a kill also reaches anything it forked.
pub(crate) fn run_bounded(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Bounded> {
    let command = describe(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .map_err(|e| LabError::io(format!("writing stdin of `{command}`"), e))?;
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= timeout => {
                timed_out = true;
                kill_group(&child, libc::SIGKILL);
                break child
                    .wait()
                    .map_err(|e| LabError::io(format!("waiting for `{command}`"), e))?;
            }
            Ok(None) => thread::sleep(POLL),
            Err(e) => return Err(LabError::io(format!("waiting for `{command}`"), e)),
        }
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(Bounded {
        output: Output {
            status,
            stdout,
            stderr,
        },
        timed_out,
        elapsed: start.elapsed(),
    })
}

/// Like [`run_bounded`], but a timeout or a non-zero exit is an error.
pub(crate) fn run_checked(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let command = describe(&cmd);
    let run = run_bounded(cmd, stdin, timeout)?;
    if run.timed_out {
        return Err(LabError::Timeout { command, timeout });
    }
    if !run.output.status.success() {
        return Err(LabError::CommandFailed {
            command,
            status: run.output.status.to_string(),
            stderr: String::from_utf8_lossy(&run.output.stderr)
                .trim()
                .to_owned(),
        });
    }
    Ok(run.output)
}

fn kill_group(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: plain syscall; the group id is our own child's, created with process_group(0).
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// A long-running program the lab started (a server, the ALG daemon).
///
/// It runs in its own process group; dropping the guard sends SIGTERM to the group, waits a
/// moment, then SIGKILLs it. Its stderr (and stdout) are collected in memory for diagnostics.
#[derive(Debug)]
pub struct ServiceChild {
    label: String,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl ServiceChild {
    /// Starts `cmd` with stdout and stderr captured.
    pub(crate) fn spawn(label: impl Into<String>, mut cmd: Command) -> Result<Self> {
        let command = describe(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|source| LabError::Spawn { command, source })?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect_into(out, Arc::clone(&output)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect_into(err, Arc::clone(&output)));
        }
        Ok(Self {
            label: label.into(),
            child,
            output,
            readers,
            status: None,
        })
    }

    /// The process id (also its process-group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What it has printed so far (stdout and stderr interleaved by arrival).
    pub fn output(&self) -> String {
        let buf = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Its exit status if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits until its output contains `needle`; fails early if it exits, or after `timeout`.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_status() {
                self.join_readers();
                return Err(LabError::NotReady {
                    what: format!("{} (exited: {status})", self.label),
                    timeout,
                    output: self.output(),
                });
            }
            if start.elapsed() >= timeout {
                return Err(LabError::NotReady {
                    what: self.label.clone(),
                    timeout,
                    output: self.output(),
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM to the process only (not its group) and waits up to `grace` for it to exit;
    /// `None` if it did not (it is then SIGKILLed with its group).
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_status() {
            self.join_readers();
            return Some(status);
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain syscall on our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Some(status) = self.try_status() {
                self.kill_group_now();
                self.join_readers();
                return Some(status);
            }
            thread::sleep(POLL);
        }
        self.kill_group_now();
        None
    }

    /// SIGKILLs the process and its group at once (a crash, as far as the program can tell).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.kill_group_now();
        self.status
    }

    fn kill_group_now(&mut self) {
        kill_group(&self.child, libc::SIGKILL);
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        self.join_readers();
    }

    fn join_readers(&mut self) {
        // The group is gone or exited: the pipes close, the readers end.
        if self.status.is_some() {
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
    }
}

impl Drop for ServiceChild {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            kill_group(&self.child, libc::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(2) && self.try_status().is_none() {
                thread::sleep(POLL);
            }
        }
        // Whatever the group still holds (forked session processes) goes too.
        kill_group(&self.child, libc::SIGKILL);
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        // Readers are detached, not joined: a grandchild that left the group could hold a pipe.
        self.readers.clear();
    }
}

fn collect_into<R: Read + Send + 'static>(
    mut reader: R,
    sink: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(&chunk[..n]),
            }
        }
    })
}

//! One running daemon per nftables table and network namespace, and a record of what it
//! installed, for `ftp-alg cleanup` after it died without removing it.
//!
//! `run` takes an exclusive `flock` on `/run/ftp-alg/instance-<netns>-<table>.lock` for its
//! whole life and writes into it what it installs (table, mode, policy routing). A second
//! daemon for the same table in the same namespace is refused; `cleanup` leaves the table of
//! a daemon that holds its lock alone, and otherwise removes what the record names (so a
//! config file edited since the start, or no longer valid, does not matter).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the records live (the unit's RuntimeDirectory).
pub(crate) const DIR: &str = "/run/ftp-alg";

/// What a daemon installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// Its nftables table (`inet`).
    pub table: String,
    /// Routed mode's policy routing (fwmark, routing table), if it installed one.
    pub routing: Option<(u32, u32)>,
}

/// Why the instance lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another daemon holds it.
    #[error(
        "another ftp-alg is running with table inet {table} in this network namespace (it \
         holds {path}); stop it first, or give this one another nftables.table"
    )]
    Running {
        /// The table.
        table: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The file could not be created or written.
    #[error("cannot write {path}: {source} (the daemon needs to write to {DIR})")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The lock of a running daemon; released (and its record removed) when dropped at a clean
/// exit.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock for `installed.table` in this network namespace and records what the
    /// daemon installs. Only [`InstanceError::Running`] should stop a start: without a
    /// writable [`DIR`] (a daemon run unprivileged by hand) it runs unrecorded.
    pub fn take(installed: &Installed) -> Result<Self, InstanceError> {
        let path = lock_path(Path::new(DIR), &installed.table);
        let io = |source| InstanceError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(DIR).map_err(io)?;
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if !try_lock(&file) {
            return Err(InstanceError::Running {
                table: installed.table.clone(),
                path,
            });
        }
        let record = serde_json::to_vec(installed).map_err(|e| io(std::io::Error::other(e)))?;
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(&record).map_err(io)?;
        Ok(Self { file, path })
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// A record left by a daemon that is not running any more (its lock is free).
#[derive(Debug)]
pub struct Leftover {
    /// What it installed.
    pub installed: Installed,
    /// The record, locked: removed by [`Leftover::forget`] once cleaned up.
    file: File,
    path: PathBuf,
}

impl Leftover {
    /// Removes the record (what it names is gone now).
    pub fn forget(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// What the records in `dir` say about this network namespace: records of daemons that are
/// gone (locked now, so that no daemon starts meanwhile), and the tables of those running.
pub fn survey(dir: &Path) -> (Vec<Leftover>, Vec<String>) {
    let prefix = format!("instance-{}-", netns_id());
    let mut gone = Vec::new();
    let mut running = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (gone, running);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(table) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".lock"))
        else {
            continue;
        };
        let Ok(mut file) = File::options().read(true).write(true).open(entry.path()) else {
            continue;
        };
        if !try_lock(&file) {
            running.push(table.to_owned());
            continue;
        }
        let mut text = String::new();
        let record = file
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| serde_json::from_str::<Installed>(&text).ok());
        match record {
            Some(installed) => gone.push(Leftover {
                installed,
                file,
                path: entry.path(),
            }),
            // Unreadable: nothing to act on; it goes.
            None => {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    (gone, running)
}

/// `<dir>/instance-<netns>-<table>.lock`: nftables tables are per network namespace.
pub(crate) fn lock_path(dir: &Path, table: &str) -> PathBuf {
    dir.join(format!("instance-{}-{table}.lock", netns_id()))
}

/// This process's network namespace, as the inode number of `/proc/self/ns/net`.
fn netns_id() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|link| {
            let text = link.to_string_lossy().into_owned();
            let inode = text.strip_prefix("net:[")?.strip_suffix(']')?.to_owned();
            Some(inode)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// An exclusive, non-blocking `flock`.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock on an open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_refused_while_held_and_a_released_record_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = lock_path(dir.path(), "t1");
        let installed = Installed {
            table: "t1".into(),
            routing: Some((0x2122, 2121)),
        };
        // As InstanceLock::take, in a directory of the test's own.
        let held = File::create(&path).expect("create");
        assert!(try_lock(&held));
        std::fs::write(&path, serde_json::to_vec(&installed).unwrap()).expect("record");
        let (gone, running) = survey(dir.path());
        assert!(gone.is_empty());
        assert_eq!(running, vec!["t1".to_owned()]);
        // The daemon died: its lock is free, its record names what it installed.
        drop(held);
        let (gone, running) = survey(dir.path());
        assert!(running.is_empty());
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].installed, installed);
        // Locked by the survey until forgotten: no daemon can take it meanwhile.
        let other = File::open(&path).expect("open");
        assert!(!try_lock(&other));
        for leftover in gone {
            leftover.forget();
        }
        assert!(!path.exists());
    }
}

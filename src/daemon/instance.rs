//! One running daemon per nftables table and network namespace, and a record of what it
//! installed, for `ftp-alg cleanup` after it died without removing it.
//!
//! - Liveness: `run` binds the abstract unix socket `@ftp-alg/<table>` for its whole life.
//!   Abstract names belong to the network namespace (as nftables tables do), need no file,
//!   and are freed by the kernel when the process dies, however it dies. A second daemon for
//!   the same table is refused; `cleanup` leaves the table of a bound name alone.
//! - Record: `/run/ftp-alg/instance-<netns>-<table>.json` names the table and routing it
//!   installed, so that `cleanup` removes what a dead daemon really installed (a file edited
//!   since, or broken, does not matter). It is removed only once the daemon has removed its
//!   table. systemd removes the unit's RuntimeDirectory after `ExecStopPost`, so a record
//!   may be gone; `cleanup` then goes by the configuration, liveness still by the socket.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
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

/// Why the instance could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another process holds the table's name.
    #[error(
        "another ftp-alg is running with table inet {0} in this network namespace (or an \
         ftp-alg cleanup of it is under way); stop it first, or give this one another \
         nftables.table"
    )]
    Running(String),
    /// The name could not be bound for another reason.
    #[error("cannot claim table inet {table} (abstract socket {name:?}): {source}")]
    Io {
        /// The table.
        table: String,
        /// The abstract socket name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A claim on a table in this network namespace, released when dropped (by the kernel, also
/// when the process dies).
#[derive(Debug)]
pub struct Claim {
    _socket: UnixListener,
}

impl Claim {
    /// Claims `table`; [`InstanceError::Running`] while another process holds it.
    pub fn take(table: &str) -> Result<Self, InstanceError> {
        let name = format!("ftp-alg/{table}");
        let bound = SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| UnixListener::bind_addr(&addr));
        match bound {
            Ok(socket) => Ok(Self { _socket: socket }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                Err(InstanceError::Running(table.to_owned()))
            }
            Err(source) => Err(InstanceError::Io {
                table: table.to_owned(),
                name,
                source,
            }),
        }
    }
}

/// A running daemon's claim and record.
#[derive(Debug)]
pub struct Instance {
    _claim: Claim,
    record: Option<PathBuf>,
}

impl Instance {
    /// Claims the table and writes the record of what the daemon installs. A record that
    /// cannot be written (no writable [`DIR`]: a daemon run unprivileged by hand) is said in
    /// the error's place: the daemon runs, and `cleanup` will go by its configuration.
    pub fn start(installed: &Installed) -> Result<(Self, Option<std::io::Error>), InstanceError> {
        let claim = Claim::take(&installed.table)?;
        let path = record_path(Path::new(DIR), &installed.table);
        let written = std::fs::create_dir_all(DIR).and_then(|()| {
            let text = serde_json::to_vec(installed).map_err(std::io::Error::other)?;
            std::fs::write(&path, text)
        });
        let (record, problem) = match written {
            Ok(()) => (Some(path), None),
            Err(e) => (None, Some(e)),
        };
        Ok((
            Self {
                _claim: claim,
                record,
            },
            problem,
        ))
    }

    /// The daemon removed what it installed: its record goes. (Not on other exits: a table
    /// left behind keeps its record for `cleanup`.)
    pub fn finish(self) {
        if let Some(path) = &self.record {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What `dir` holds for this network namespace.
#[derive(Debug, Default)]
pub struct Survey {
    /// Records of daemons that are gone, each with the claim `cleanup` holds on its table
    /// meanwhile (so no daemon starts on it halfway through).
    pub gone: Vec<(Installed, PathBuf, Claim)>,
    /// Tables claimed by running daemons.
    pub running: Vec<String>,
    /// Records that cannot be read or name no table (removed).
    pub unreadable: Vec<PathBuf>,
}

/// Reads the records in `dir` for this network namespace and tells the dead from the living.
pub fn survey(dir: &Path) -> Survey {
    let mut survey = Survey::default();
    // Without the namespace's identity no record can be told apart from another namespace's.
    let Some(netns) = netns_id() else {
        return survey;
    };
    let prefix = format!("instance-{netns}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return survey;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) || !name.ends_with(".json") {
            continue;
        }
        let record = std::fs::read(entry.path())
            .ok()
            .and_then(|text| serde_json::from_slice::<Installed>(&text).ok());
        let Some(installed) = record else {
            let _ = std::fs::remove_file(entry.path());
            survey.unreadable.push(entry.path());
            continue;
        };
        match Claim::take(&installed.table) {
            Ok(claim) => survey.gone.push((installed, entry.path(), claim)),
            Err(_) => survey.running.push(installed.table),
        }
    }
    survey
}

/// `<dir>/instance-<netns>-<table>.json`: nftables tables are per network namespace.
fn record_path(dir: &Path, table: &str) -> PathBuf {
    let netns = netns_id().unwrap_or_else(|| "unknown".to_owned());
    dir.join(format!("instance-{netns}-{table}.json"))
}

/// This process's network namespace, as the inode number of `/proc/self/ns/net`.
fn netns_id() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/net").ok()?;
    let text = link.to_string_lossy().into_owned();
    Some(text.strip_prefix("net:[")?.strip_suffix(']')?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_table_is_refused_and_a_dead_daemons_record_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = format!("t{}", std::process::id());
        let installed = Installed {
            table: table.clone(),
            routing: Some((0x2122, 2121)),
        };
        // A running daemon: its claim, its record (as Instance::start, in a directory of
        // the test's own).
        let claim = Claim::take(&table).expect("claim");
        assert!(matches!(
            Claim::take(&table),
            Err(InstanceError::Running(_))
        ));
        let path = record_path(dir.path(), &table);
        std::fs::write(&path, serde_json::to_vec(&installed).unwrap()).expect("record");
        let found = survey(dir.path());
        assert!(found.gone.is_empty());
        assert_eq!(found.running, vec![table.clone()]);
        // It died: the kernel freed the name; the record names what it installed, and the
        // survey holds the claim until the cleanup is done.
        drop(claim);
        let found = survey(dir.path());
        assert!(found.running.is_empty());
        assert_eq!(found.gone.len(), 1);
        assert_eq!(found.gone[0].0, installed);
        assert!(matches!(
            Claim::take(&table),
            Err(InstanceError::Running(_))
        ));
        drop(found);
        assert!(Claim::take(&table).is_ok());
        // A record that is not one goes.
        std::fs::write(&path, b"garbage").expect("garbage");
        let found = survey(dir.path());
        assert_eq!(found.unreadable, vec![path.clone()]);
        assert!(!path.exists());
    }
}

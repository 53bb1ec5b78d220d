//! The local status socket: `ftp-alg status` connects, the daemon writes one JSON snapshot
//! of its live sessions, pinholes and counters, and closes.
//!
//! Access is by file permissions: the socket is created mode 0660 (owner root, group as
//! configured) inside a directory the admin controls (systemd's RuntimeDirectory).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::telemetry::Telemetry;

/// The status socket could not be set up or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// Binding or securing the socket failed.
    #[error("cannot create the status socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configured group does not exist.
    #[error("status group `{0}` does not exist; create it or unset status.group")]
    NoSuchGroup(String),
    /// `ftp-alg status` could not talk to the daemon.
    #[error(
        "cannot read status from {path}: {source} (is the daemon running? are you root or in the status group? if status.socket is set, pass --socket PATH)"
    )]
    Fetch {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon closed the connection without an answer: it was serving as many status
    /// readers as it allows.
    #[error("the daemon at {0} is busy serving other status readers; try again in a moment")]
    Busy(PathBuf),
    /// The configured path holds something that is not a socket (a typo naming a real file).
    #[error("{0} exists and is not a socket; remove it or pick another status.socket")]
    NotASocket(PathBuf),
    /// Another process (a second ftp-alg?) answers on the configured socket.
    #[error(
        "another process is serving status at {0} (a second ftp-alg?); stop it or pick another status.socket"
    )]
    InUse(PathBuf),
}

/// Binds the status socket, replacing a stale one, with mode 0660 and the given group.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, StatusError> {
    let bind_err = |source| StatusError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    // A socket file left by a crash would make bind fail; it is ours to replace. Anything
    // else there (a file named by mistake, a live daemon's socket) is not.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(StatusError::NotASocket(path.to_owned()));
        }
        Ok(_) => {
            if serving(path) {
                return Err(StatusError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    if let Some(group) = group {
        let gid = group_id(group).ok_or_else(|| StatusError::NoSuchGroup(group.to_owned()))?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(bind_err)?;
    }
    Ok(listener)
}

/// Whether a process listens on the socket at `path`. Without blocking: a hung daemon's full
/// backlog answers "in use" at once instead of holding this start.
fn serving(path: &Path) -> bool {
    use socket2::{Domain, SockAddr, Socket, Type};
    let Ok(socket) = Socket::new(Domain::UNIX, Type::STREAM, None) else {
        return false;
    };
    let Ok(addr) = SockAddr::unix(path) else {
        return false;
    };
    if socket.set_nonblocking(true).is_err() {
        return false;
    }
    match socket.connect(&addr) {
        Ok(()) => true,
        Err(e) => matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINPROGRESS)),
    }
}

/// Snapshots being written at once; a further connection is closed at once. A snapshot of
/// thousands of sessions is a megabyte: the cap keeps clients that never read from holding
/// that, and the file descriptors the FTP sessions need.
const MAX_READERS: usize = 4;

/// How long a client may take to read its snapshot.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves snapshots until the task is dropped.
pub async fn serve(listener: UnixListener, telemetry: Arc<Telemetry>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_READERS));
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "status socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("status: {MAX_READERS} snapshots being read; connection closed");
            continue;
        };
        let snapshot = telemetry.snapshot();
        let Ok(json) = serde_json::to_vec(&snapshot) else {
            continue;
        };
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&json)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "status client went away"),
                Err(_) => debug!("status client read nothing for 5 s; closed"),
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// `ftp-alg status`: the daemon's JSON snapshot.
pub fn fetch(path: &Path) -> Result<serde_json::Value, StatusError> {
    use std::io::Read;
    let err = |source| StatusError::Fetch {
        path: path.to_owned(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(err)?;
    let mut text = Vec::new();
    stream.read_to_end(&mut text).map_err(err)?;
    if text.is_empty() {
        return Err(StatusError::Busy(path.to_owned()));
    }
    serde_json::from_slice(&text).map_err(|e| err(std::io::Error::other(e)))
}

/// The group's id through the C library, so a group from LDAP, sssd or systemd-userdb is
/// found as well as one in `/etc/group`.
fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        let mut group = std::mem::MaybeUninit::<libc::group>::uninit();
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: the name is NUL-terminated, `group` and `found` are valid for writes, and
        // the buffer's true length is passed.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                group.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() {
            return None;
        }
        // SAFETY: on success `found` points at `group`, which the call filled.
        return Some(unsafe { (*found).gr_gid });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_closed_without_an_answer_reads_as_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let turned_away = std::thread::spawn(move || drop(listener.accept()));
        let error = fetch(&path).expect_err("no answer");
        turned_away.join().expect("listener thread");
        assert!(matches!(error, StatusError::Busy(_)), "{error}");
        assert!(error.to_string().contains("try again"), "{error}");
    }

    #[test]
    fn groups_are_looked_up_through_the_c_library() {
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("ftp-alg-no-such-group"), None);
        assert_eq!(group_id("nul\0inside"), None);
    }

    #[test]
    fn a_missing_socket_names_the_socket_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = fetch(&dir.path().join("none.sock")).expect_err("nothing there");
        assert!(error.to_string().contains("--socket PATH"), "{error}");
    }

    #[tokio::test]
    async fn only_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A regular file named by mistake (the config, say) is left alone.
        let file = dir.path().join("ftp-alg.toml");
        std::fs::write(&file, b"keep me").expect("write");
        let error = bind(&file, None).expect_err("not a socket");
        assert!(matches!(error, StatusError::NotASocket(_)), "{error}");
        assert_eq!(std::fs::read(&file).expect("still there"), b"keep me");

        // A live socket (a second daemon's) is not taken over.
        let path = dir.path().join("status.sock");
        let live = bind(&path, None).expect("first bind");
        let error = bind(&path, None).expect_err("in use");
        assert!(matches!(error, StatusError::InUse(_)), "{error}");

        // A stale one (its listener gone) is replaced.
        drop(live);
        assert!(path.exists());
        bind(&path, None).expect("stale socket replaced");
    }
}

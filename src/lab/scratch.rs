//! Temporary directories and test payloads (std only: the lab is library code and cannot use
//! the dev-dependencies).

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::error::{LabError, Result};

/// A directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/ftp-alg-lab-<pid>-<n>-<label>` (mode 0755, so that an unprivileged FTP
    /// server user can reach files below it).
    pub fn new(label: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ftp-alg-lab-{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path)
            .map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
        let dir = Self { path };
        set_mode(&dir.path, 0o755)?;
        Ok(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a subdirectory (mode 0755) and returns its path.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        fs::create_dir_all(&path)
            .map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
        set_mode(&path, 0o755)?;
        Ok(path)
    }
}

/// Removes this process's scratch directories: for a benchmark or lab interrupted by a
/// signal, whose guards' `Drop` will not run.
pub fn remove_own_scratch_dirs() {
    let prefix = format!("ftp-alg-lab-{}-", std::process::id());
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Sets a path's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| LabError::io(format!("chmod {mode:o} {}", path.display()), e))
}

/// Writes `len` random bytes (from `/dev/urandom`) to `path` and returns them.
pub fn write_random_file(path: &Path, len: usize) -> Result<Vec<u8>> {
    let mut data = vec![0u8; len];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .map_err(|e| LabError::io("reading /dev/urandom", e))?;
    fs::write(path, &data).map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    set_mode(path, 0o644)?;
    Ok(data)
}

/// The size of the payloads the end-to-end runs move: 1.5 MiB, big enough that a transfer
/// spans many segments and windows.
pub const PAYLOAD_LEN: usize = 3 * 512 * 1024;

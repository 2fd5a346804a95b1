//! The data folder's lock: one process at a time uses a data folder.
//!
//! `stateline serve` holds it for as long as it runs, `stateline restore` and `stateline repair`
//! while they work, so a restore can never replace the file under a running server (which would
//! go on acknowledging writes to the unlinked file, lost at the next start). The lock is an
//! advisory whole-file lock (`flock` on Unix, `LockFileEx` on Windows) on `stateline.lock` in the
//! folder: the operating system drops it when the process ends, however it ends, so a crash
//! leaves nothing to clean up. The file holds the holder's process id, for the error message.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::DiskError;

/// The lock file inside the data folder.
pub const LOCK_NAME: &str = "stateline.lock";

/// A held data folder lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    dir: PathBuf,
}

impl DirLock {
    /// Takes the lock on `dir` (created if needed), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, DiskError> {
        let dir_err = |source| DiskError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_err)?;
        let path = dir.join(LOCK_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(dir_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                return Err(DiskError::Busy {
                    dir: dir.to_path_buf(),
                    holder: match pid {
                        Some(pid) => format!("another stateline process (pid {pid})"),
                        None => "another stateline process".into(),
                    },
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(DiskError::Dir {
                    path: dir.to_path_buf(),
                    source: std::io::Error::new(
                        e.kind(),
                        format!("cannot lock {}: {e}", path.display()),
                    ),
                })
            }
        }
        // Best effort: the id is only for the message another process prints.
        let _ = file
            .set_len(0)
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        Ok(DirLock {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    /// The locked folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("in use") && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        DirLock::acquire(dir.path()).expect("free again once dropped");
    }
}

//! The file backend redb writes through: redb's own [`FileBackend`], plus a switch that makes
//! every write fail as a full disk does. The switch is for tests: it puts redb in the state a
//! real `ENOSPC` leaves it in (every later operation refused with "Previous I/O error occurred"
//! until the database is re-opened), without filling a disk. Off, it costs one atomic load per
//! page write. Another holds redb's writes and syncs (a commit, a checkpoint, stays in its first
//! write or sync until it is let go), so a test can act while one runs.

use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};

/// Faults to inject, shared by the [`Disk`](crate::Disk) and every backend it opens.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Writes, file growth and syncs fail with "No space left on device".
    pub full: AtomicBool,
    /// Syncs fail with an I/O error after the writes before them went through: the commit is
    /// reported failed but may be in the file (the ambiguous outcome of a failed fsync).
    pub sync: AtomicBool,
    /// redb's writes and syncs wait while this is true (the write-ahead log's do not).
    pub hold: Mutex<bool>,
    /// Told when `hold` turns false.
    pub released: Condvar,
    /// Writes and syncs of redb waiting on `hold` now.
    pub held: AtomicU32,
    /// Whether `hold` may be true: one atomic load per sync when not.
    pub holding: AtomicBool,
}

impl Faults {
    pub(crate) fn check(&self) -> io::Result<()> {
        if self.full.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device (injected)",
            ));
        }
        Ok(())
    }

    /// Waits while writes and syncs are held.
    fn wait_if_held(&self) {
        if !self.holding.load(Ordering::SeqCst) {
            return;
        }
        let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        if *hold {
            self.held.fetch_add(1, Ordering::SeqCst);
            while *hold {
                hold = self.released.wait(hold).unwrap_or_else(|p| p.into_inner());
            }
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Holds redb's writes and syncs (`true`) or lets them go.
    pub(crate) fn set_hold(&self, on: bool) {
        let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        *hold = on;
        if on {
            self.holding.store(true, Ordering::SeqCst);
        }
        self.released.notify_all();
    }
}

#[derive(Debug)]
pub(crate) struct Backend {
    file: FileBackend,
    faults: Arc<Faults>,
}

impl Backend {
    pub(crate) fn new(file: File, faults: Arc<Faults>) -> Result<Backend, DatabaseError> {
        Ok(Backend {
            file: FileBackend::new(file)?,
            faults,
        })
    }
}

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.faults.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.faults.wait_if_held();
        self.faults.check()?;
        if self.faults.sync.load(Ordering::Relaxed) {
            return Err(io::Error::other("fsync failed (injected)"));
        }
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.faults.wait_if_held();
        self.faults.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

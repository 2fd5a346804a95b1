//! Durable storage for the native server: one redb file, loaded into memory at start.
//!
//! Owns the on-disk layout (entries, the change log, the last sequence number), the group commit
//! that lets many concurrent writers share one fsync, consistent backups, restore, salvage of a
//! damaged file ([`repair()`]), and the data folder's lock ([`DirLock`]). It knows nothing of HTTP
//! or subscribers: it stores [`Change`]s the core produced and gives back a [`Store`] and a
//! [`Log`] at start.
//!
//! A group of writes is durable once its record in the write-ahead log ([`wal`], the files
//! [`WAL_NAMES`] beside redb's) is synced: one sequential write and one `fdatasync` instead of
//! redb's dozen scattered pages. The group waits in memory, and a periodic checkpoint applies
//! every group since the last one to redb in one synced commit, on its own thread, while the
//! next groups go into the log's other file (a backup applies them first, so it reads every
//! acknowledged write). At start the log's records that redb may lack are applied
//! again. After a crash the store holds exactly the acknowledged
//! writes: redb's file as of its last checkpoint (redb is crash-safe: a commit lands whole or not
//! at all), plus every whole record of the log after it.
//!
//! A commit that fails (a full disk, an I/O error) leaves redb refusing every later write until
//! the database is re-opened. The [`Disk`] closes it at once and re-opens it before the next
//! commit (at most once a second while that keeps failing), so writing resumes by itself when
//! the cause goes away; the [`Committer`] also probes a failing store once a second, so it is
//! found healthy again even when no write comes.
//!
//! Layout: table `entries`: key → an entry; table `log`: seq → a change-log record (both in the
//! core's byte layout, `stateline_core::codec`); table `history`: seq → a version of a key's
//! history (`stateline_core::history`); table `receipts`: seq → the receipt of an idempotent
//! write (`stateline_core::receipts`); table `meta`: `"last_seq"` → u64, `"format"` → 1,
//! `"wal_gen"` → the write-ahead log's generation whose records redb may lack.

mod backend;
mod lock;
pub mod repair;
pub mod wal;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use stateline_core::codec::{decode_entry, decode_log, encode_entry, encode_log, Corrupt};
use stateline_core::history::Delta;
use stateline_core::log::Log;
use stateline_core::store::{Change, Key, Store};

use backend::{Backend, Faults};
pub use lock::{DirLock, LOCK_NAME};
pub use repair::{repair, Repaired};
use wal::{Op, Ops, Wal};
pub use wal::{WAL_NAME, WAL_NAMES};

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
// Key history: seq → a version (`stateline_core::history`'s layout). Written from the core's
// `history::Delta` in the same transaction as the changes.
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
// Receipts of idempotent writes: seq of the write's last change → the receipt
// (`stateline_core::receipts`'s layout). Written from the core's `receipts::Delta` in the same
// transaction as the changes (and the same write-ahead record), so a write is on disk exactly
// when its receipt is.
const RECEIPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("receipts");
const FORMAT: u64 = 1;

/// The file inside the data directory.
pub const FILE_NAME: &str = "stateline.redb";

// Temporary backup copies in the data folder start with this (left over only by a crash during
// a backup; removed at the next start).
const BACKUP_PREFIX: &str = "stateline.redb.backup-";

// The first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// While the store keeps failing, how often it is re-opened (before a commit) and probed (by the
/// [`Committer`] when no write comes).
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Why storage failed. Every message names the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The data directory cannot be created or written.
    #[error("data directory {path}: {source} (check that it exists, is writable by this user and the disk is not full; or run with --memory)")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database file cannot be opened (corrupt, not a database, wrong format).
    #[error("database {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Another process uses the data folder.
    #[error("data folder {dir} is in use by {holder}: stop it first (a data folder is used by one process at a time: `stateline serve`, `restore` and `repair` each take its lock)")]
    Busy {
        /// The folder.
        dir: PathBuf,
        /// Who holds it, as far as known.
        holder: String,
    },
    /// A commit failed: nothing of it was written, and writes fail until the store recovers.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A read or write failed.
    #[error("storage: {0}")]
    Io(String),
    /// A record on disk cannot be decoded.
    #[error("storage: corrupt record {0}")]
    Corrupt(String),
}

fn io<E: std::fmt::Display>(e: E) -> DiskError {
    DiskError::Io(e.to_string())
}

fn corrupt(c: Corrupt) -> DiskError {
    DiskError::Corrupt(c.0)
}

/// What failed, in words an operator acts on: "no space left on device" rather than redb's
/// error chain.
fn describe(e: &redb::Error) -> String {
    match e {
        redb::Error::Io(io) => describe_io(io),
        redb::Error::PreviousIo => {
            "an earlier write failed and the database has not been re-opened yet".into()
        }
        other => other.to_string(),
    }
}

fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let what = match e.kind() {
        K::StorageFull => "no space left on device",
        K::QuotaExceeded => "disk quota exceeded",
        K::ReadOnlyFilesystem => "the file system is read-only",
        K::PermissionDenied => "permission denied",
        K::FileTooLarge => "the file is too large for the file system",
        _ => return format!("I/O error: {e}"),
    };
    match e.raw_os_error() {
        Some(n) => format!("{what} (os error {n})"),
        None => what.to_string(),
    }
}

/// The message for a file redb cannot read (a flipped bit, a torn copy, ...).
fn damaged(path: &Path, what: &str) -> DiskError {
    let dir = path.parent().unwrap_or(Path::new("."));
    DiskError::Open {
        path: path.to_path_buf(),
        message: format!(
            "the file is damaged ({what}). Salvage what is still readable with `stateline repair --data {}` (it keeps the damaged file beside the repaired one and reports what was lost), or restore a backup with `stateline restore`",
            dir.display()
        ),
    }
}

/// Refuses a file that exists but cannot be a Stateline database: empty (redb would silently
/// start a new, empty store in it) or without redb's signature.
fn check_file(path: &Path) -> Result<(), DiskError> {
    let open_err = |message: String| DiskError::Open {
        path: path.to_path_buf(),
        message,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(open_err(e.to_string())),
    };
    if !meta.is_file() {
        return Err(open_err("not a regular file".into()));
    }
    let dir = path.parent().unwrap_or(Path::new(".")).display();
    if meta.len() == 0 {
        return Err(open_err(format!(
            "the file is empty (0 bytes), so it holds no Stateline database (an interrupted copy or a full disk leaves this), and the server will not silently start an empty store over it. If the folder is meant to start empty, delete the file; if it held data, restore a backup: `stateline restore --data {dir} --from <backup>`"
        )));
    }
    let mut head = [0u8; REDB_MAGIC.len()];
    let read = File::open(path).and_then(|mut f| f.read_exact(&mut head));
    if read.is_err() || head != REDB_MAGIC {
        return Err(open_err(format!(
            "not a redb database (it does not start with redb's signature): move it away and restore a backup (`stateline restore --data {dir} --from <backup>`), or point --data at another folder"
        )));
    }
    Ok(())
}

/// Runs `f`, turning a panic into an error: redb trusts a file it closed cleanly and may panic on
/// one damaged outside it.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, DiskError>) -> Result<T, DiskError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("redb panicked reading it");
            Err(damaged(path, msg))
        }
    }
}

// Opens (or initialises, when missing) a database file through the fault-injecting backend.
fn open_db(path: &Path, faults: &Arc<Faults>) -> Result<Database, redb::DatabaseError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    redb::Builder::new().create_with_backend(Backend::new(file, faults.clone())?)
}

/// An open database.
pub struct Disk {
    // `None` after a failed commit closed it, until it is re-opened. Commits and backups hold
    // the read side; only closing and re-opening take the write side.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    log_keep: usize,
    // The `last_seq` the file holds: set at open and by each commit that wrote changes. After a
    // re-open the file must say the same, or memory and disk disagree.
    seq: AtomicU64,
    // Why the store is failing, and when it may be re-opened next.
    retry: Mutex<Retry>,
    // Set when a re-opened file does not match what this process committed: only a restart
    // (which loads the file) can reconcile them.
    broken: OnceLock<String>,
    faults: Arc<Faults>,
    // Fault injection for tests: this many next commits fail as a full disk would, before redb
    // is touched.
    fail_next: AtomicU32,
    // Fault injection for tests: every commit waits this long first (ms), so a test can act while
    // writes are pending.
    delay_ms: AtomicU64,
    // Groups whose record reaches this many bytes go straight to redb ([`wal::DIRECT_BYTES`];
    // lowered by a test hook).
    direct_bytes: AtomicU64,
    // The write-ahead log; `None` for a file opened only to be read (a backup being checked),
    // whose commits go to redb directly. Lock order: `ckpt`, then `db`, then `retry`, then `wal`.
    wal: Mutex<Option<Wal>>,
    // Held by whatever applies the log's groups to redb (a checkpoint, a backup's applying of the
    // waiting groups, a synced direct commit), so they apply in order and only one checkpoint
    // runs: the log's other file then holds only records redb has.
    ckpt: Mutex<()>,
    _lock: Option<DirLock>,
}

#[derive(Debug, Default)]
struct Retry {
    reason: Option<String>,
    not_before: Option<Instant>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("path", &self.path).finish()
    }
}

/// A consistent copy of the store in a temporary file, open for reading. The file is already
/// removed from the folder where the platform allows (Unix); elsewhere it is removed when this
/// is dropped.
#[derive(Debug)]
pub struct Snapshot {
    /// The copy, positioned at its start.
    pub file: File,
    /// Its size in bytes.
    pub len: u64,
    /// Keys in it.
    pub keys: u64,
    _path: Option<tempfile::TempPath>,
}

impl Disk {
    /// Opens (creating if needed) the database in `dir`. Refuses clearly when the directory is
    /// not writable, the disk is full, another process uses the folder, or the file is not a
    /// Stateline database (empty, not redb, damaged).
    pub fn open(dir: &Path, log_keep: usize) -> Result<Disk, DiskError> {
        let dir_err = |source| DiskError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_err)?;
        let lock = DirLock::acquire(dir)?;
        // Probe: write and sync a small file, so a read-only or full disk is reported at start,
        // not at the first acknowledged write.
        let probe = dir.join(".stateline-write-test");
        fs::write(&probe, [0u8; 4096])
            .and_then(|_| File::open(&probe)?.sync_all())
            .map_err(dir_err)?;
        let _ = fs::remove_file(&probe);
        remove_stale_backups(dir);
        let path = dir.join(FILE_NAME);
        check_file(&path)?;
        let faults = Arc::new(Faults::default());
        let db = guarded(&path, || {
            open_db(&path, &faults).map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(m)) => {
                    damaged(&path, &m)
                }
                e => DiskError::Open {
                    path: path.clone(),
                    message: e.to_string(),
                },
            })
        })?;
        let disk = Disk {
            db: RwLock::new(Some(db)),
            path,
            log_keep,
            seq: AtomicU64::new(0),
            retry: Mutex::default(),
            broken: OnceLock::new(),
            faults,
            fail_next: Default::default(),
            delay_ms: Default::default(),
            direct_bytes: AtomicU64::new(wal::DIRECT_BYTES),
            wal: Mutex::new(None),
            ckpt: Mutex::new(()),
            _lock: Some(lock),
        };
        let path = disk.path.clone();
        let gen = guarded(&path, || disk.init())?;
        let wal = Wal::open(dir, gen).map_err(|source| DiskError::Dir {
            path: dir.join(WAL_NAME),
            source,
        })?;
        *disk.wal.lock().unwrap_or_else(|p| p.into_inner()) = Some(wal);
        // Apply the records redb may lack (a crash, or a stop, since the last checkpoint).
        guarded(&path, || {
            let guard = disk.db.read().unwrap_or_else(|p| p.into_inner());
            let db = guard.as_ref().expect("open");
            disk.recover(db).map_err(|message| DiskError::Open {
                path: path.clone(),
                message,
            })
        })?;
        Ok(disk)
    }

    // Applies the write-ahead log's records redb may lack (those of redb's generation and of the
    // next one, which has records if a checkpoint was running) and commits them, with a
    // generation past both, in one synced transaction; the log then starts over. Applying a
    // record redb already holds changes nothing (each operation sets or removes a row).
    fn recover(&self, db: &Database) -> Result<(), String> {
        let mut guard = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = guard.as_mut() else {
            return Ok(());
        };
        let gen = (|| -> Result<u64, redb::Error> {
            let tx = db.begin_read()?;
            let v = tx
                .open_table(META)?
                .get("wal_gen")?
                .map_or(0, |v| v.value());
            Ok(v)
        })()
        .map_err(|e| describe(&e))?;
        let records = w.read(gen).map_err(|e| {
            format!(
                "reading the write-ahead log {}: {}",
                w.path().display(),
                describe_io(&e)
            )
        })?;
        let next = gen + 2;
        let applied = (|| -> Result<Option<u64>, redb::Error> {
            let tx = db.begin_write()?;
            // redb's file holds the groups up to its last synced commit, which are a prefix of
            // the records (groups are applied in order, and a synced commit keeps every one
            // before it): skip through the last record that prefix ends with, so a start after
            // a clean stop or a probe copies no pages again (which would take disk space).
            let durable = tx
                .open_table(META)?
                .get("last_seq")?
                .map_or(0, |v| v.value());
            let skip = records
                .iter()
                .rposition(|r| wal::last_seq(r).is_some_and(|s| s <= durable))
                .map_or(0, |i| i + 1);
            let last = self.apply(&tx, records[skip..].iter().map(Vec::as_slice))?;
            tx.open_table(META)?.insert("wal_gen", next)?;
            tx.commit()?;
            Ok(last)
        })();
        match applied {
            Ok(last) => {
                if let Some(last) = last {
                    self.seq.fetch_max(last, SeqCst);
                }
                w.restart(next);
                Ok(())
            }
            Err(e) => Err(format!(
                "applying the write-ahead log {} ({} records): {}",
                w.path().display(),
                records.len(),
                describe(&e)
            )),
        }
    }

    // Creates the tables, checks the format, reads `last_seq`; returns the write-ahead log's
    // generation (0 for a new file, or one restored or repaired, which has none).
    fn init(&self) -> Result<u64, DiskError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = guard.as_ref().expect("open");
        let tx = db.begin_write().map_err(io)?;
        let last_seq;
        let gen;
        {
            let mut meta = tx.open_table(META).map_err(io)?;
            let format = meta.get("format").map_err(io)?.map(|v| v.value());
            match format {
                None => {
                    meta.insert("format", FORMAT).map_err(io)?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(DiskError::Open {
                        path: self.path.clone(),
                        message: format!(
                            "format {other} is not supported (this build reads format {FORMAT})"
                        ),
                    })
                }
            }
            last_seq = meta.get("last_seq").map_err(io)?.map_or(0, |v| v.value());
            gen = meta.get("wal_gen").map_err(io)?.map_or(0, |v| v.value());
            tx.open_table(ENTRIES).map_err(io)?;
            tx.open_table(LOG).map_err(io)?;
            tx.open_table(HISTORY).map_err(io)?;
            tx.open_table(RECEIPTS).map_err(io)?;
        }
        tx.commit().map_err(io)?;
        self.seq.store(last_seq, SeqCst);
        Ok(gen)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads everything: the store (entries and last sequence number) and the change log, so
    /// versions clients hold stay valid across the restart. A record that cannot be read is
    /// reported as a damaged file (with what to do), never skipped.
    pub fn load(&self, log_entries: usize, log_bytes: usize) -> Result<(Store, Log), DiskError> {
        guarded(&self.path, || self.load_inner(log_entries, log_bytes)).map_err(|e| match e {
            DiskError::Io(m) | DiskError::Corrupt(m) => damaged(&self.path, &m),
            e => e,
        })
    }

    fn load_inner(&self, log_entries: usize, log_bytes: usize) -> Result<(Store, Log), DiskError> {
        // What was acknowledged since the last checkpoint too (none at start: opening applied it).
        self.apply_unapplied()?;
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = guard
            .as_ref()
            .ok_or_else(|| DiskError::Unavailable(self.unavailable_reason()))?;
        let tx = db.begin_read().map_err(io)?;
        let meta = tx.open_table(META).map_err(io)?;
        let last_seq = meta.get("last_seq").map_err(io)?.map_or(0, |v| v.value());
        let entries = tx.open_table(ENTRIES).map_err(io)?;
        let mut loaded = Vec::with_capacity(entries.len().map_err(io)? as usize);
        for row in entries.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            loaded.push((
                Key::from(k.value()),
                decode_entry(v.value()).map_err(corrupt)?,
            ));
        }
        let store = Store::load(last_seq, loaded);
        let log_table = tx.open_table(LOG).map_err(io)?;
        let mut records = Vec::new();
        for row in log_table.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            records.push(decode_log(k.value(), v.value()).map_err(corrupt)?);
        }
        // Every version from the one before the first kept record is covered.
        let floor = records.first().map_or(store.last_seq(), |r| r.0 - 1);
        Ok((store, Log::restore(floor, records, log_entries, log_bytes)))
    }

    /// Loads the key history kept with the store, trimmed to `limits` (what was trimmed is
    /// in the history's delta, removed by the next commit).
    pub fn load_history(
        &self,
        limits: stateline_core::history::Limits,
    ) -> Result<stateline_core::history::History, DiskError> {
        stateline_core::history::History::restore(limits, self.rows(HISTORY)?)
            .map_err(|c| damaged(&self.path, &c.0))
    }

    /// Loads the receipts of idempotent writes kept with the store, trimmed to `limits`.
    pub fn load_receipts(
        &self,
        limits: stateline_core::receipts::Limits,
    ) -> Result<stateline_core::receipts::Receipts, DiskError> {
        stateline_core::receipts::Receipts::restore(limits, self.rows(RECEIPTS)?)
            .map_err(|c| damaged(&self.path, &c.0))
    }

    // Every row of a table keyed by sequence number; none when the table does not exist (a
    // file written before it was kept: it is created by the next write transaction).
    fn rows(&self, table: TableDefinition<u64, &[u8]>) -> Result<Vec<(u64, Vec<u8>)>, DiskError> {
        self.apply_unapplied()?;
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = guard
            .as_ref()
            .ok_or_else(|| DiskError::Unavailable(self.unavailable_reason()))?;
        let tx = db.begin_read().map_err(io)?;
        let mut rows = Vec::new();
        match tx.open_table(table) {
            Ok(t) => {
                for row in t.iter().map_err(io)? {
                    let (k, v) = row.map_err(io)?;
                    rows.push((k.value(), v.value().to_vec()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(io(e)),
        }
        Ok(rows)
    }

    /// Test hook: the next `n` commits fail (as a full disk would), writing nothing. redb is not
    /// touched, so this does not exercise the re-open; [`Disk::fail_writes`] does.
    pub fn fail_next_commits(&self, n: u32) {
        self.fail_next.store(n, SeqCst);
    }

    /// Test hook: while on, every write redb makes to the file fails with "No space left on
    /// device", exactly as a full disk makes it fail (redb then refuses everything until the
    /// database is re-opened). Turning it off is "freeing space".
    pub fn fail_writes(&self, on: bool) {
        self.faults.full.store(on, SeqCst);
    }

    /// Test hook: while on, every fsync fails after the writes before it went through (the
    /// ambiguous outcome of a failed fsync: the data may or may not be on the disk).
    pub fn fail_syncs(&self, on: bool) {
        self.faults.sync.store(on, SeqCst);
    }

    /// Test hook: while on, redb's writes to its file and syncs wait (those of the write-ahead
    /// log do not), so a checkpoint stays in its commit, before anything of it reaches the file,
    /// until this is turned off, and a test can write meanwhile.
    pub fn hold_redb_writes(&self, on: bool) {
        self.faults.set_hold(on);
    }

    /// Test hook: how many of redb's writes and syncs wait on [`Disk::hold_redb_writes`] now.
    pub fn held_redb_writes(&self) -> u32 {
        self.faults.held.load(SeqCst)
    }

    /// Test hook: every commit first waits `ms` milliseconds, so a test can act while writes
    /// are pending.
    pub fn delay_commits(&self, ms: u64) {
        self.delay_ms.store(ms, SeqCst);
    }

    /// Test hook: groups whose write-ahead record would reach `n` bytes are committed straight to
    /// redb ([`wal::DIRECT_BYTES`] by default).
    pub fn set_direct_bytes(&self, n: u64) {
        self.direct_bytes.store(n, SeqCst);
    }

    /// Why the store is failing now (`None`: it is not known to be failing).
    pub fn failure(&self) -> Option<String> {
        if let Some(b) = self.broken.get() {
            return Some(b.clone());
        }
        self.retry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reason
            .clone()
    }

    fn unavailable_reason(&self) -> String {
        self.failure()
            .unwrap_or_else(|| "the database is closed after a failed commit".into())
    }

    /// Writes batches of changes as one record of the write-ahead log and syncs it (one fsync
    /// for all); redb gets them at the next checkpoint ([`Disk::checkpoint`], which this runs
    /// when one is due). Batches without changes need nothing written: if there are only such,
    /// nothing is.
    ///
    /// On failure nothing of the batches is on disk (a record whose sync failed is overwritten
    /// with zeros), and the error is [`DiskError::Unavailable`] with what failed. Once the record
    /// is synced the commit succeeds even if the checkpoint fails: redb is then closed and
    /// re-opened (now, and if that fails too, before a later commit, at most once every
    /// [`RETRY_EVERY`], because redb refuses every write after an I/O error until it is), and
    /// the re-open applies the log again.
    pub fn commit<'a>(
        &self,
        batches: impl IntoIterator<Item = &'a [Change]>,
    ) -> Result<(), DiskError> {
        self.commit_with_history(batches, [], [])?;
        self.checkpoint_if_due();
        Ok(())
    }

    /// [`Disk::commit`], writing the key history's and the receipts' deltas in the same
    /// transaction, and leaving a due checkpoint to [`Disk::checkpoint_if_due`].
    pub fn commit_with_history<'a>(
        &self,
        batches: impl IntoIterator<Item = &'a [Change]>,
        history: impl IntoIterator<Item = &'a Delta>,
        receipts: impl IntoIterator<Item = &'a Delta>,
    ) -> Result<(), DiskError> {
        let batches: Vec<&[Change]> = batches.into_iter().filter(|b| !b.is_empty()).collect();
        let history: Vec<&Delta> = history.into_iter().filter(|d| !d.is_empty()).collect();
        let receipts: Vec<&Delta> = receipts.into_iter().filter(|d| !d.is_empty()).collect();
        if batches.is_empty() && history.is_empty() && receipts.is_empty() {
            return Ok(());
        }
        let delay = self.delay_ms.load(SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if let Some(why) = self.broken.get() {
            return Err(DiskError::Unavailable(why.clone()));
        }
        if self
            .fail_next
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(DiskError::Unavailable(
                "no space left on device (injected failure)".into(),
            ));
        }
        let (ops, last) = encode_group(&batches, &history, &receipts);
        if self.wal.lock().unwrap_or_else(|p| p.into_inner()).is_none()
            || ops.0.len() as u64 >= self.direct_bytes.load(SeqCst)
        {
            // A file opened only to be read (no log), or a group too large for the log.
            return self.commit_synced(&ops.0, last);
        }
        // redb must be open (a failure closed it): the re-open applies the log's records first,
        // so this group lands after them.
        self.ensure_open()?;
        // Durable once this returns: acknowledged whatever follows. redb gets the group at the
        // next checkpoint (a failure there closes redb, and its re-open applies the log).
        self.append(ops, last)
    }

    /// Runs a checkpoint if one is due (every [`wal::CHECKPOINT_GROUPS`] groups or
    /// [`wal::CHECKPOINT_BYTES`] of records). [`Disk::commit`] does it after each commit; the
    /// [`Committer`] on a thread of its own, so no writer waits for it. A failure
    /// is the next commit's to report (it closed redb, whose re-open applies the log).
    pub fn checkpoint_if_due(&self) {
        if !matches!(self.checkpoint_need(), Need::None) {
            let _ = self.checkpoint();
        }
    }

    // Commits to redb, in one synced commit, the log's groups not applied yet and then `group`
    // (encoded). With a log this is also a checkpoint: it records the log's next
    // generation (every record in the file is then old, redb holding every group) and the log
    // starts over. The log stays locked throughout, so no group is appended between what the
    // commit applies and the log's restart. `last` is the group's last sequence number: the
    // store's is raised to it before a failure elsewhere can re-open redb (which checks that
    // redb holds what the store committed).
    fn commit_synced(&self, group: &[u8], last: Option<u64>) -> Result<(), DiskError> {
        let _one = self.ckpt.lock().unwrap_or_else(|p| p.into_inner());
        self.write(|db| {
            // Lock order: `db` (held by `write`), then `wal`.
            let mut guard = self.wal.lock().unwrap_or_else(|p| p.into_inner());
            let next = guard.as_ref().map(|w| w.gen + 1);
            let unapplied = guard.as_ref().map_or(&[][..], |w| &w.unapplied[..]);
            let tx = db.begin_write()?;
            self.apply(
                &tx,
                unapplied
                    .iter()
                    .map(Vec::as_slice)
                    .chain(std::iter::once(group)),
            )?;
            if let Some(next) = next {
                tx.open_table(META)?.insert("wal_gen", next)?;
            }
            tx.commit()?;
            if let Some(last) = last {
                self.seq.fetch_max(last, SeqCst);
            }
            if let (Some(w), Some(next)) = (guard.as_mut(), next) {
                w.restart(next);
            }
            Ok(())
        })
    }

    // Applies the log's groups not applied yet to redb without a sync (the log has them), so a
    // reader of redb (a backup) sees every acknowledged write.
    fn apply_unapplied(&self) -> Result<(), DiskError> {
        let waiting = (self.wal.lock().unwrap_or_else(|p| p.into_inner()).as_ref())
            .is_some_and(|w| !w.unapplied.is_empty());
        if !waiting {
            return Ok(());
        }
        // No checkpoint runs meanwhile: redb then holds every generation before this one.
        let _one = self.ckpt.lock().unwrap_or_else(|p| p.into_inner());
        self.write_keeping_failure(|db| {
            // Lock order: `db` (held by `write`), then `wal`.
            let mut guard = self.wal.lock().unwrap_or_else(|p| p.into_inner());
            let Some(w) = guard.as_mut().filter(|w| !w.unapplied.is_empty()) else {
                return Ok(());
            };
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::None)?;
            self.apply(&tx, w.unapplied.iter().map(Vec::as_slice))?;
            tx.commit()?;
            w.unapplied.clear();
            Ok(())
        })
    }

    // Appends one record to the write-ahead log and syncs it. A failure is the store's failure
    // until a later append (or the probe) succeeds. `last` is the group's last sequence number:
    // the store's is raised to it together with the record, under the log's lock.
    fn append(&self, ops: Ops, last: Option<u64>) -> Result<(), DiskError> {
        let mut guard = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let w = guard.as_mut().expect("a store with a log");
        let mut r = w.append(&ops.0, &self.faults);
        if r.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::StorageFull)
            && w.groups > 0
        {
            // The log cannot grow: a checkpoint lets it start over at the beginning of its file,
            // in space it already has. (It fails too when redb cannot grow either.)
            drop(guard);
            let ok = self.checkpoint().is_ok();
            guard = self.wal.lock().unwrap_or_else(|p| p.into_inner());
            let w = guard.as_mut().expect("a store with a log");
            if ok && w.groups == 0 {
                r = w.append(&ops.0, &self.faults);
            }
        }
        match r {
            Ok(()) => {
                let w = guard.as_mut().expect("a store with a log");
                w.unapplied.push(ops.0);
                if let Some(last) = last {
                    self.seq.fetch_max(last, SeqCst);
                }
                drop(guard);
                // The log takes writes again: the store is not failing (lock order: `retry`
                // before `wal`, released above).
                *self.retry.lock().unwrap_or_else(|p| p.into_inner()) = Retry::default();
                Ok(())
            }
            Err(e) => {
                let why = describe_io(&e);
                drop(guard);
                let mut r = self.retry.lock().unwrap_or_else(|p| p.into_inner());
                r.reason = Some(why.clone());
                Err(DiskError::Unavailable(why))
            }
        }
    }

    // Whether a checkpoint is due, with one look at the log (the commit thread asks after every
    // group).
    fn checkpoint_need(&self) -> Need {
        let guard = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(w) if w.checkpoint_overdue() => Need::Overdue,
            Some(w) if w.checkpoint_due() => Need::Due,
            _ => Need::None,
        }
    }

    /// Makes redb hold every group of the write-ahead log so far: takes them, moves the log on to
    /// its next generation (in its other file, so groups are appended meanwhile), and commits
    /// them with that generation's number in one synced commit. Waits for a checkpoint already
    /// running. Runs every [`wal::CHECKPOINT_GROUPS`] groups and when the store is dropped. On
    /// failure redb is closed and re-opened, and the re-open applies both generations' records.
    pub fn checkpoint(&self) -> Result<(), DiskError> {
        let _one = self.ckpt.lock().unwrap_or_else(|p| p.into_inner());
        let (gen, groups) = {
            let mut guard = self.wal.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut() {
                Some(w) if w.groups > 0 => (w.gen, w.next_generation()),
                _ => return Ok(()),
            }
        };
        self.write(|db| {
            let tx = db.begin_write()?;
            self.apply(&tx, groups.iter().map(Vec::as_slice))?;
            tx.open_table(META)?.insert("wal_gen", gen + 1)?;
            tx.commit()?;
            Ok(())
        })?;
        if let Some(w) = self.wal.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            w.retire(gen);
        }
        Ok(())
    }

    /// Checks that the store can be written again: re-opens it if it was closed (ignoring the
    /// once-a-second limit) and commits a small transaction. The [`Committer`] calls it while the
    /// store is failing and no write comes.
    pub fn probe(&self) -> Result<(), DiskError> {
        if let Some(why) = self.broken.get() {
            return Err(DiskError::Unavailable(why.clone()));
        }
        self.retry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .not_before = None;
        self.write(|db| {
            let tx = db.begin_write()?;
            tx.open_table(META)?.insert("format", FORMAT)?;
            tx.commit()?;
            Ok(())
        })?;
        // That synced commit made redb hold every group applied so far: record it as a
        // checkpoint, so a start need not apply them again. Then the log must take a record too
        // (an empty one: applying it does nothing).
        self.checkpoint()?;
        if self.wal.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            self.append(Ops::default(), None)?;
            *self.retry.lock().unwrap_or_else(|p| p.into_inner()) = Retry::default();
        }
        Ok(())
    }

    // Runs one write transaction on the open database (re-opening it first if a failure closed
    // it); on failure closes it and tries to re-open it at once. Success clears the store's
    // failure: redb took a commit.
    fn write(&self, f: impl FnOnce(&Database) -> Result<(), redb::Error>) -> Result<(), DiskError> {
        self.write_keeping_failure(f)?;
        *self.retry.lock().unwrap_or_else(|p| p.into_inner()) = Retry::default();
        Ok(())
    }

    // [`Disk::write`] for a transaction that says nothing of the store's health (applying the
    // waiting groups for a reader): a failure it did not cause (a log sync) stays reported.
    fn write_keeping_failure(
        &self,
        f: impl FnOnce(&Database) -> Result<(), redb::Error>,
    ) -> Result<(), DiskError> {
        self.ensure_open()?;
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let Some(db) = guard.as_ref() else {
            return Err(DiskError::Unavailable(self.unavailable_reason()));
        };
        match catch_unwind(AssertUnwindSafe(|| f(db))) {
            Ok(Ok(())) => Ok(()),
            failed => {
                drop(guard);
                let why = match failed {
                    Ok(Err(e)) => describe(&e),
                    _ => "redb panicked during the commit".into(),
                };
                self.close_and_reopen(&why);
                Err(DiskError::Unavailable(why))
            }
        }
    }

    // Applies encoded groups (one write-ahead record each) in `tx`, as applying them one after
    // the other would; returns the last sequence number they wrote. Each row gets only the last
    // operation the groups have for it, which is what it holds after all of them: a key written
    // in many of the groups a checkpoint applies is written once, and a change-log record that
    // the log's bound trims before the end is never inserted.
    fn apply<'a>(
        &self,
        tx: &WriteTransaction,
        groups: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Option<u64>, redb::Error> {
        let mut entries: BTreeMap<&str, Option<&[u8]>> = BTreeMap::new();
        let mut log: BTreeMap<u64, &[u8]> = BTreeMap::new();
        let mut history: BTreeMap<u64, Option<&[u8]>> = BTreeMap::new();
        let mut receipts: BTreeMap<u64, Option<&[u8]>> = BTreeMap::new();
        let mut last = None;
        for g in groups {
            for op in wal::decode(g).map_err(redb::Error::Corrupted)? {
                match op {
                    Op::EntryPut(k, v) => {
                        entries.insert(k, Some(v));
                    }
                    Op::EntryDel(k) => {
                        entries.insert(k, None);
                    }
                    Op::LogPut(seq, v) => {
                        log.insert(seq, v);
                    }
                    Op::HistoryPut(seq, v) => {
                        history.insert(seq, Some(v));
                    }
                    Op::HistoryDel(seq) => {
                        history.insert(seq, None);
                    }
                    Op::ReceiptPut(seq, v) => {
                        receipts.insert(seq, Some(v));
                    }
                    Op::ReceiptDel(seq) => {
                        receipts.insert(seq, None);
                    }
                    Op::LastSeq(seq) => last = Some(seq),
                }
            }
        }
        let mut table = tx.open_table(ENTRIES)?;
        for (k, v) in entries {
            match v {
                Some(v) => table.insert(k, v)?,
                None => table.remove(k)?,
            };
        }
        // Keep the log table bounded: the records more than `log_keep` before the last one go
        // (the bound of the last group, the highest: each group's own would drop less).
        let keep_from = last.map(|seq| seq.saturating_sub(self.log_keep as u64));
        let mut table = tx.open_table(LOG)?;
        for (seq, v) in log {
            if keep_from.is_none_or(|from| seq > from) {
                table.insert(seq, v)?;
            }
        }
        if let Some(from) = keep_from {
            if table.first()?.is_some_and(|(k, _)| k.value() <= from) {
                table.retain_in(..=from, |_, _| false)?;
            }
        }
        for (name, rows) in [(HISTORY, history), (RECEIPTS, receipts)] {
            let mut table = tx.open_table(name)?;
            for (seq, v) in rows {
                match v {
                    Some(v) => table.insert(seq, v)?,
                    None => table.remove(seq)?,
                };
            }
        }
        if let Some(seq) = last {
            tx.open_table(META)?.insert("last_seq", seq)?;
        }
        Ok(last)
    }

    // Closes the database after a failed commit (redb refuses everything after an I/O error
    // until it is re-opened) and tries to re-open it now; if that fails, a later commit retries.
    fn close_and_reopen(&self, why: &str) {
        {
            let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
            // Dropping closes it (a live read transaction of a backup keeps the file open until it
            // ends; the re-open then fails and is retried).
            drop(slot.take());
        }
        {
            let mut r = self.retry.lock().unwrap_or_else(|p| p.into_inner());
            r.reason = Some(why.to_string());
            r.not_before = None;
        }
        let _ = self.ensure_open();
    }

    // Re-opens a database a failed commit closed, at most once every RETRY_EVERY; checks that the
    // re-opened file holds exactly what this process committed.
    fn ensure_open(&self) -> Result<(), DiskError> {
        if self.db.read().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(());
        }
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        let first = retry.reason.clone().unwrap_or_default();
        if retry.not_before.is_some_and(|t| Instant::now() < t) {
            return Err(DiskError::Unavailable(first));
        }
        // Open it, then apply the write-ahead log's records (the groups applied since the last
        // checkpoint were only in the closed database's memory).
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let db = open_db(&self.path, &self.faults).map_err(|e| describe(&e.into()))?;
            self.recover(&db)?;
            Ok::<_, String>(db)
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            failed => {
                let e = match failed {
                    Ok(Err(e)) => e,
                    _ => "redb panicked".into(),
                };
                retry.not_before = Some(Instant::now() + RETRY_EVERY);
                let why = if first.is_empty() || first == e {
                    e
                } else {
                    format!("{first}; re-opening the database failed: {e}")
                };
                return Err(DiskError::Unavailable(why));
            }
        };
        // The file must hold what this process committed, no more and no less.
        let on_disk = (|| -> Result<u64, redb::Error> {
            let tx = db.begin_read()?;
            let meta = tx.open_table(META)?;
            let v = meta.get("last_seq")?.map_or(0, |v| v.value());
            Ok(v)
        })();
        let expected = self.seq.load(SeqCst);
        match on_disk {
            Ok(v) if v == expected => {
                *slot = Some(db);
                retry.not_before = None;
                Ok(())
            }
            other => {
                let found = match other {
                    Ok(v) => format!("changes through version {v:x}"),
                    Err(e) => format!("an unreadable sequence number ({})", describe(&e)),
                };
                let why = format!(
                    "after a failed commit the re-opened database holds {found}, but this server committed through version {expected:x}; restart the server so it loads what the file holds"
                );
                let _ = self.broken.set(why.clone());
                Err(DiskError::Unavailable(why))
            }
        }
    }

    // Copies every table of the open database into `copy` in one read transaction (a consistent
    // snapshot while writes go on); returns the number of keys.
    fn copy_into(&self, copy: &Database) -> Result<u64, DiskError> {
        // Every acknowledged write into redb first: the groups since the last checkpoint wait in
        // memory (writes acknowledged after this may or may not be in the copy).
        self.apply_unapplied()?;
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = guard
            .as_ref()
            .ok_or_else(|| DiskError::Unavailable(self.unavailable_reason()))?;
        let rx = db.begin_read().map_err(io)?;
        let wx = copy.begin_write().map_err(io)?;
        let mut keys = 0;
        {
            let mut meta = wx.open_table(META).map_err(io)?;
            for row in rx.open_table(META).map_err(io)?.iter().map_err(io)? {
                let (k, v) = row.map_err(io)?;
                // The copy holds every write (the groups since the last checkpoint were applied
                // above), and no write-ahead log goes with it: it starts with none.
                if k.value() != "wal_gen" {
                    meta.insert(k.value(), v.value()).map_err(io)?;
                }
            }
            let mut entries = wx.open_table(ENTRIES).map_err(io)?;
            for row in rx.open_table(ENTRIES).map_err(io)?.iter().map_err(io)? {
                let (k, v) = row.map_err(io)?;
                entries.insert(k.value(), v.value()).map_err(io)?;
                keys += 1;
            }
            // The change log, the key history and the receipts of idempotent writes: a restored
            // store resumes clients, lists versions and answers resent writes as this one did.
            for table in [LOG, HISTORY, RECEIPTS] {
                let mut out = wx.open_table(table).map_err(io)?;
                let src = match rx.open_table(table) {
                    Ok(t) => t,
                    // A file written before the table was kept.
                    Err(redb::TableError::TableDoesNotExist(_)) => continue,
                    Err(e) => return Err(io(e)),
                };
                for row in src.iter().map_err(io)? {
                    let (k, v) = row.map_err(io)?;
                    out.insert(k.value(), v.value()).map_err(io)?;
                }
            }
        }
        drop(rx);
        drop(guard);
        wx.commit().map_err(io)?;
        Ok(keys)
    }

    // A consistent copy in a new temporary file in `dir` (unique name: concurrent backups never
    // share one), synced; the file is removed when the returned path is dropped.
    fn copy_to_temp(&self, dir: &Path) -> Result<(tempfile::TempPath, u64), DiskError> {
        let tmp = tempfile::Builder::new()
            .prefix(BACKUP_PREFIX)
            .tempfile_in(dir)
            .map_err(|e| DiskError::Io(format!("temporary file in {}: {e}", dir.display())))?
            .into_temp_path();
        let copy = Database::create(&tmp).map_err(|e| DiskError::Open {
            path: tmp.to_path_buf(),
            message: e.to_string(),
        })?;
        let keys = self.copy_into(&copy)?;
        drop(copy);
        Ok((tmp, keys))
    }

    /// A consistent copy of the database (one read transaction) in a temporary file of its own
    /// in the data folder, open for reading: what `GET /_backup` streams. Any number may be taken
    /// at once; each file is gone once the [`Snapshot`] is dropped (at once on Unix, where the
    /// open file stays readable).
    pub fn snapshot(&self) -> Result<Snapshot, DiskError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let (tmp, keys) = self.copy_to_temp(dir)?;
        let file = File::open(&tmp).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        #[cfg(unix)]
        let keep = {
            drop(tmp);
            None
        };
        #[cfg(not(unix))]
        let keep = Some(tmp);
        Ok(Snapshot {
            file,
            len,
            keys,
            _path: keep,
        })
    }

    /// Writes a consistent copy of the database (one read transaction) to `out`, atomically (a
    /// temporary file of its own renamed into place). Returns the number of keys written.
    pub fn backup(&self, out: &Path) -> Result<u64, DiskError> {
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let (tmp, keys) = self.copy_to_temp(dir)?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        tmp.persist(out).map_err(|e| io(e.error))?;
        Ok(keys)
    }

    /// Replaces the database in `dir` with a backup, after checking the backup opens and loads.
    /// Takes the data folder's lock, so it refuses (with [`DiskError::Busy`]) while a server runs
    /// on `dir`.
    pub fn restore(backup: &Path, dir: &Path) -> Result<u64, DiskError> {
        let _lock = DirLock::acquire(dir)?;
        let keys = {
            let b = Disk::open_existing(backup)?;
            let (store, _) = b.load(usize::MAX, usize::MAX)?;
            store.len() as u64
        };
        let target = dir.join(FILE_NAME);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{FILE_NAME}.restore-"))
            .tempfile_in(dir)
            .map_err(io)?
            .into_temp_path();
        fs::copy(backup, &tmp).map_err(io)?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        tmp.persist(&target).map_err(|e| io(e.error))?;
        // The old store's write-ahead log does not belong to the restored one (which has no log
        // generation, so its records would be ignored anyway).
        for name in WAL_NAMES {
            match fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        sync_dir(dir);
        Ok(keys)
    }

    fn open_existing(path: &Path) -> Result<Disk, DiskError> {
        if !path.is_file() {
            return Err(DiskError::Open {
                path: path.to_path_buf(),
                message: "no such file".into(),
            });
        }
        check_file(path)?;
        let db = guarded(path, || {
            Database::open(path).map_err(|e| DiskError::Open {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        })?;
        Ok(Disk {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            log_keep: usize::MAX,
            seq: AtomicU64::new(0),
            retry: Mutex::default(),
            broken: OnceLock::new(),
            faults: Arc::default(),
            fail_next: Default::default(),
            delay_ms: Default::default(),
            direct_bytes: AtomicU64::new(wal::DIRECT_BYTES),
            wal: Mutex::new(None),
            ckpt: Mutex::new(()),
            _lock: None,
        })
    }
}

impl Drop for Disk {
    // A clean stop leaves redb holding everything, so the next start has no log to apply.
    fn drop(&mut self) {
        let _ = self.checkpoint();
    }
}

// One group's row operations, in the order redb gets them: the history's and the receipts'
// deltas, then each change's entry and log record, then the last sequence number.
fn encode_group(
    batches: &[&[Change]],
    history: &[&Delta],
    receipts: &[&Delta],
) -> (Ops, Option<u64>) {
    let mut ops = Ops::default();
    for d in history {
        for (seq, bytes) in &d.put {
            ops.push(Op::HistoryPut(*seq, bytes));
        }
        for seq in &d.drop {
            ops.push(Op::HistoryDel(*seq));
        }
    }
    for d in receipts {
        for (seq, bytes) in &d.put {
            ops.push(Op::ReceiptPut(*seq, bytes));
        }
        for seq in &d.drop {
            ops.push(Op::ReceiptDel(*seq));
        }
    }
    let mut buf = Vec::new();
    let mut last = None;
    for c in batches.iter().copied().flatten() {
        match &c.entry {
            Some(e) => {
                buf.clear();
                encode_entry(&mut buf, e);
                ops.push(Op::EntryPut(&c.key, &buf));
            }
            None => ops.push(Op::EntryDel(&c.key)),
        }
        ops.push(Op::LogPut(c.seq, &encode_log(c)));
        last = Some(c.seq);
    }
    if let Some(last) = last {
        ops.push(Op::LastSeq(last));
    }
    (ops, last)
}

// Removes backup copies a crash left in the data folder (the caller holds the folder's lock).
fn remove_stale_backups(dir: &Path) {
    let Ok(list) = fs::read_dir(dir) else {
        return;
    };
    for e in list.flatten() {
        if e.file_name().to_string_lossy().starts_with(BACKUP_PREFIX) {
            let _ = fs::remove_file(e.path());
        }
    }
}

// Makes a rename in `dir` durable (Unix; elsewhere a no-op).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Told whether a batch is durable (`Ok`) or was rolled back (`Err` with the reason).
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// One batch of changes waiting for its commit, and who to tell.
pub struct Job {
    /// The changes (one operation's), in sequence order. Empty for a barrier: a job that only
    /// waits for every job queued before it (`done(Ok)` once they are durable, `Err` if they
    /// were rolled back).
    pub changes: Vec<Change>,
    /// The key history's additions and removals that go with them (the engine's
    /// `take_history_delta`, taken under the same lock).
    pub history: Delta,
    /// The receipts of idempotent writes that go with them (the engine's
    /// `take_receipts_delta`, taken under the same lock).
    pub receipts: Delta,
    /// Called once the batch is durable, or failed.
    pub done: Done,
}

/// What the committer hands the server after each group: the jobs it committed, or on failure
/// the jobs that failed. `drain` returns every job queued since, which after a failure must be
/// failed too (they were applied after the failed ones, and memory must be rolled back newest
/// first); call it while holding the lock under which jobs are applied and submitted.
///
/// `Ok` with no jobs at all is the probe of a failing store succeeding: the store is writable
/// again although no write came.
pub type OnGroup = Box<dyn FnMut(Result<(), DiskError>, Vec<Job>, &dyn Fn() -> Vec<Job>) + Send>;

/// Group commit: a thread that takes every job queued while the previous commit ran and commits
/// them in one transaction, so N concurrent writers cost about one fsync; and a second thread
/// that runs the checkpoints meanwhile.
#[derive(Debug)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

// Whether the log needs a checkpoint: none, one (run on the checkpoint thread), or one the
// commit thread must wait for: the generation reached [`wal::OVERDUE`] times the bounds while the
// checkpoint before it still runs, and waiting bounds the groups held in memory.
enum Need {
    None,
    Due,
    Overdue,
}

/// Most jobs folded into one commit; bounds the latency of the first writer in a group.
pub const MAX_GROUP: usize = 4096;

// How long the commit thread keeps looking for the next job (yielding its core meanwhile) before
// it sleeps. A sleeping thread's wake-up costs tens of microseconds (more in a VM), paid on every
// write of a writer that waits for each acknowledgement; the next write of such a writer comes one
// round trip after the last acknowledgement, well within this. RocksDB's write thread does the same
// (`write_thread_max_yield_usec`). At most this much CPU is spent per group, and none when jobs
// are already queued. Measured in docs/BENCHMARKS.md ("Durable writes").
const SPIN: Duration = Duration::from_micros(200);

// The next job, if one comes within [`SPIN`].
fn spin_recv(rx: &mpsc::Receiver<Job>) -> Option<Job> {
    let t = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(j) => return Some(j),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {
                if t.elapsed() >= SPIN {
                    return None;
                }
                std::thread::yield_now();
            }
        }
    }
}

impl Committer {
    /// Starts the commit thread, and the thread that runs the checkpoints (so the writers of the
    /// group that made one due, and of the groups after it, do not wait for it).
    pub fn start(disk: Arc<Disk>, mut on_group: OnGroup) -> Committer {
        let (tx, rx) = mpsc::channel::<Job>();
        // One pending request is enough: the checkpoint takes every group logged until it runs.
        let (due_tx, due_rx) = mpsc::sync_channel::<()>(1);
        let checkpoints = disk.clone();
        std::thread::Builder::new()
            .name("stateline-checkpoint".into())
            .spawn(move || {
                // Ends when the commit thread does (it holds the sender).
                while due_rx.recv().is_ok() {
                    checkpoints.checkpoint_if_due();
                }
            })
            .expect("spawning the checkpoint thread");
        std::thread::Builder::new()
            .name("stateline-commit".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    let first = if failing {
                        // A failing store is probed once a second, so it is found writable again
                        // (and reported healthy) even when no write comes to retry it.
                        match rx.recv_timeout(RETRY_EVERY) {
                            Ok(j) => j,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                if disk.probe().is_ok() {
                                    failing = false;
                                    on_group(Ok(()), Vec::new(), &|| Vec::new());
                                }
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    } else {
                        match spin_recv(&rx) {
                            Some(j) => j,
                            None => match rx.recv() {
                                Ok(j) => j,
                                Err(_) => break,
                            },
                        }
                    };
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(j) => group.push(j),
                            Err(_) => break,
                        }
                    }
                    let r = disk.commit_with_history(
                        group.iter().map(|j| j.changes.as_slice()),
                        group.iter().map(|j| &j.history),
                        group.iter().map(|j| &j.receipts),
                    );
                    if group.iter().any(|j| !j.changes.is_empty()) {
                        failing = r.is_err();
                    }
                    let drain = || rx.try_iter().collect::<Vec<Job>>();
                    on_group(r, group, &drain);
                    // After the acknowledgements: a checkpoint runs beside the next groups, on
                    // its own thread, unless the log has grown so far past the bounds while the
                    // last one ran that this thread waits for it (bounding the memory held).
                    match disk.checkpoint_need() {
                        Need::Overdue => {
                            let _ = disk.checkpoint();
                        }
                        Need::Due => {
                            let _ = due_tx.try_send(());
                        }
                        Need::None => {}
                    }
                }
            })
            .expect("spawning the commit thread");
        Committer { tx }
    }

    /// Queues a batch; returns false if the committer has stopped.
    pub fn submit(&self, job: Job) -> bool {
        self.tx.send(job).is_ok()
    }

    /// Queues a batch, or gives it back if the committer has stopped.
    // The job comes back whole (its changes are rolled back and its `done` told): a move on a
    // path taken once, when the commit thread is gone, so its size costs nothing.
    #[allow(clippy::result_large_err)]
    pub fn submit_or_return(&self, job: Job) -> Result<(), Job> {
        self.tx.send(job).map_err(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use stateline_core::engine::{Cond, Config, Engine, Op};
    use stateline_core::key::Pattern;
    use stateline_core::{Filters, Tick, Ttl};

    fn set(e: &mut Engine, k: &str, v: serde_json::Value) -> Vec<Change> {
        e.execute_as_system(
            Tick::from_wall(10),
            Op::Set {
                key: k.into(),
                value: v.into(),
                ttl: Ttl::After(1_000_000),
                cond: Cond::Always,
            },
        )
        .unwrap()
        .changes
    }

    #[test]
    fn survives_a_reopen_with_revisions_sequence_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let (seq_before, v_mid);
        {
            let disk = Disk::open(dir.path(), 1000).unwrap();
            let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
            let a = set(&mut e, "a/1", json!({"x":1}));
            disk.commit([a.as_slice()]).unwrap();
            v_mid = e.store().last_seq();
            let b = set(&mut e, "a/1", json!({"x":2}));
            let c = set(&mut e, "a/2", json!("two"));
            let d = e
                .execute_as_system(
                    Tick::from_wall(11),
                    Op::Delete {
                        target: "a/2".into(),
                        cond: Cond::Always,
                    },
                )
                .unwrap()
                .changes;
            disk.commit([b.as_slice(), c.as_slice(), d.as_slice()])
                .unwrap();
            seq_before = e.store().last_seq();
        }
        let disk = Disk::open(dir.path(), 1000).unwrap();
        let (store, log) = disk.load(1000, 1 << 20).unwrap();
        assert_eq!(
            store.last_seq(),
            seq_before,
            "sequence survives, deletes included"
        );
        let e = store.get("a/1").unwrap();
        assert_eq!(
            (e.data(), e.revision, e.expires.get().is_some()),
            (&json!({"x":2}), 1, true)
        );
        assert!(store.get("a/2").is_none());
        let missed = log
            .since(v_mid, store.last_seq(), &Pattern::parse("a/*").unwrap())
            .unwrap();
        assert_eq!(
            missed.len(),
            1,
            "a/2 was created and deleted: squashed away; a/1 updated"
        );
        let engine = Engine::restore(
            Tick::from_wall(20),
            store,
            log,
            Config::default(),
            Filters::new(),
        );
        assert_eq!(engine.store().len(), 1);
    }

    #[test]
    fn backup_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 1000).unwrap();
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        for i in 0..10 {
            let c = set(&mut e, &format!("k/{i}"), json!(i));
            disk.commit([c.as_slice()]).unwrap();
        }
        let out = dir.path().join("backup.redb");
        assert_eq!(disk.backup(&out).unwrap(), 10);
        let other = tempfile::tempdir().unwrap();
        assert_eq!(Disk::restore(&out, other.path()).unwrap(), 10);
        let (store, _) = Disk::open(other.path(), 1000)
            .unwrap()
            .load(10, 1 << 20)
            .unwrap();
        assert_eq!(store.len(), 10);
        assert_eq!(store.last_seq(), e.store().last_seq());
        assert!(Disk::restore(&dir.path().join("missing"), other.path()).is_err());
    }

    #[test]
    fn log_table_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 5).unwrap();
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        for i in 0..20 {
            let c = set(&mut e, "k", json!(i));
            disk.commit([c.as_slice()]).unwrap();
        }
        let (_, log) = disk.load(100, 1 << 20).unwrap();
        assert!(log.len() <= 5, "{}", log.len());
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = Disk::open(&file.join("sub"), 10).unwrap_err().to_string();
        assert!(
            err.contains("data directory") && err.contains("--memory"),
            "{err}"
        );
    }

    #[test]
    fn group_commit_acks_every_job() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::open(dir.path(), 1000).unwrap());
        let (seen_tx, seen_rx) = mpsc::channel();
        let committer = Committer::start(
            disk.clone(),
            Box::new(move |r, jobs, _drain| {
                seen_tx.send(jobs.len()).unwrap();
                for j in jobs {
                    (j.done)(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                }
            }),
        );
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        let mut acks = Vec::new();
        for i in 0..50 {
            let (tx, rx) = mpsc::channel();
            assert!(committer.submit(Job {
                changes: set(&mut e, &format!("k/{i}"), json!(i)),
                history: Default::default(),
                receipts: Default::default(),
                done: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            }));
            acks.push(rx);
        }
        for rx in acks {
            assert_eq!(rx.recv().unwrap(), Ok(()));
        }
        let groups: usize = seen_rx.try_iter().count();
        assert!(groups <= 50);
        let (store, _) = disk.load(10, 1 << 20).unwrap();
        assert_eq!(store.len(), 50);
    }

    // A committer on `disk` that tells every job its group's result.
    fn committer(disk: &Arc<Disk>) -> Committer {
        Committer::start(
            disk.clone(),
            Box::new(|r, jobs, _drain| {
                for j in jobs {
                    (j.done)(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                }
            }),
        )
    }

    // Queues a write of `key`; the receiver gets its acknowledgement.
    fn submit(c: &Committer, e: &mut Engine, key: &str) -> mpsc::Receiver<Result<(), String>> {
        let (tx, rx) = mpsc::channel();
        assert!(c.submit(Job {
            changes: set(e, key, json!(key)),
            history: Default::default(),
            receipts: Default::default(),
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        }));
        rx
    }

    // Writes `keys` one group each, every one acknowledged before the next.
    fn write_one_by_one(c: &Committer, e: &mut Engine, keys: std::ops::Range<usize>) {
        for i in keys {
            let ack = submit(c, e, &format!("k/{i}")).recv_timeout(Duration::from_secs(30));
            assert_eq!(ack, Ok(Ok(())), "write {i}");
        }
    }

    // Waits for `f`, at most 30 s.
    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(30), "waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn writes_go_on_while_a_checkpoint_commits_and_a_crash_then_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::open(dir.path(), 100_000).unwrap());
        let c = committer(&disk);
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        let n = wal::CHECKPOINT_GROUPS as usize;
        disk.hold_redb_writes(true);
        write_one_by_one(&c, &mut e, 0..n);
        // The last of those groups made a checkpoint due: it runs on its own thread, and its
        // commit waits before its first write to redb's file while the hook holds it.
        wait_for("the checkpoint's first write", || {
            disk.held_redb_writes() == 1
        });
        write_one_by_one(&c, &mut e, n..n + 20);
        assert_eq!(disk.held_redb_writes(), 1, "the checkpoint still runs");
        assert_eq!(
            disk.wal.lock().unwrap().as_ref().unwrap().groups,
            20,
            "the next generation holds the groups written meanwhile"
        );
        // A crash now: redb's file lacks the checkpoint's commit; the log's two files have both
        // generations.
        let crashed = crash_copy(dir.path());
        assert_eq!(redb_only(crashed.path()).len(), 0);
        let (store, log) = load_dir(crashed.path());
        assert_eq!(store.len(), n + 20);
        assert_eq!(log.len(), n + 20);
        assert_eq!(store.last_seq(), e.store().last_seq());
        disk.hold_redb_writes(false);
        wait_for("the checkpoint's end", || disk.ckpt.try_lock().is_ok());
        let crashed = crash_copy(dir.path());
        assert_eq!(
            redb_only(crashed.path()).len(),
            n,
            "redb holds the generation the checkpoint took"
        );
        assert_eq!(load_dir(crashed.path()).0.len(), n + 20);

        // A checkpoint slower than the next generation's growth: at twice the bounds the commit
        // thread waits for it, and the next write is acknowledged only after it.
        disk.hold_redb_writes(true);
        write_one_by_one(&c, &mut e, n + 20..2 * n);
        wait_for("the second checkpoint's first write", || {
            disk.held_redb_writes() == 1
        });
        let overdue = wal::OVERDUE as usize * n;
        write_one_by_one(&c, &mut e, 2 * n..2 * n + overdue);
        let next = submit(&c, &mut e, "k/next");
        assert_eq!(
            next.recv_timeout(Duration::from_millis(300)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "the commit thread waits for the running checkpoint"
        );
        {
            let w = disk.wal.lock().unwrap();
            let w = w.as_ref().unwrap();
            assert_eq!(w.groups as usize, overdue, "no group past the bound");
            assert_eq!(w.unapplied.len(), overdue);
        }
        disk.hold_redb_writes(false);
        assert_eq!(next.recv_timeout(Duration::from_secs(30)), Ok(Ok(())));
        wait_for("the checkpoints' end", || {
            disk.ckpt.try_lock().is_ok() && matches!(disk.checkpoint_need(), Need::None)
        });
        let total = 2 * n + overdue + 1;
        let crashed = crash_copy(dir.path());
        assert_eq!(load_dir(crashed.path()).0.len(), total);
        drop(c);
        let (store, _) = disk.load(10, 1 << 20).unwrap();
        assert_eq!(store.len(), total);
        assert_eq!(store.last_seq(), e.store().last_seq());
    }

    #[test]
    fn a_checkpoint_that_fails_while_the_next_generation_is_written_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::open(dir.path(), 100_000).unwrap());
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        let write = |e: &mut Engine, k: &str| {
            let c = set(e, k, json!(k));
            disk.commit([c.as_slice()]).unwrap();
        };
        for i in 0..5 {
            write(&mut e, &format!("before/{i}"));
        }
        disk.hold_redb_writes(true);
        let running = {
            let d = disk.clone();
            std::thread::spawn(move || d.checkpoint())
        };
        wait_for("the checkpoint's first write", || {
            disk.held_redb_writes() == 1
        });
        for i in 0..3 {
            write(&mut e, &format!("during/{i}"));
        }
        // The disk is full: nothing of the checkpoint's commit reaches redb's file, redb is
        // closed, and its re-open fails too while the disk is full.
        disk.fail_writes(true);
        disk.hold_redb_writes(false);
        assert!(running.join().unwrap().is_err());
        assert!(disk.failure().is_some());
        disk.fail_writes(false);
        // Re-opened, redb gets both generations from the log's files.
        disk.probe().unwrap();
        assert!(disk.failure().is_none());
        write(&mut e, "after");
        let crashed = crash_copy(dir.path());
        assert_eq!(
            redb_only(crashed.path()).len(),
            8,
            "the re-open committed both generations"
        );
        let (store, log) = load_dir(crashed.path());
        assert_eq!((store.len(), log.len()), (9, 9));
        assert_eq!(store.last_seq(), e.store().last_seq());
    }

    // Writes `n` keys, 50 per commit.
    fn fill(disk: &Disk, e: &mut Engine, n: usize) {
        fill_in(disk, e, n, 50);
    }

    // Writes `n` keys, `group` per commit.
    fn fill_in(disk: &Disk, e: &mut Engine, n: usize, group: usize) {
        let batches: Vec<Vec<Change>> = (0..n)
            .map(|i| {
                set(
                    e,
                    &format!("k/{i:05}"),
                    json!({"i": i, "pad": "x".repeat(40)}),
                )
            })
            .collect();
        for g in batches.chunks(group) {
            disk.commit(g.iter().map(Vec::as_slice)).unwrap();
        }
    }

    #[test]
    fn an_empty_or_foreign_file_is_refused_not_started_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"").unwrap();
        let err = Disk::open(dir.path(), 10).unwrap_err().to_string();
        assert!(
            err.contains(FILE_NAME)
                && err.contains("empty (0 bytes)")
                && err.contains("stateline restore"),
            "{err}"
        );
        assert_eq!(
            fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
            0,
            "left as it was"
        );
        fs::write(dir.path().join(FILE_NAME), b"{\"not\": \"redb\"}").unwrap();
        let err = Disk::open(dir.path(), 10).unwrap_err().to_string();
        assert!(err.contains("not a redb database"), "{err}");
    }

    #[test]
    fn one_process_per_folder_and_restore_refuses_a_used_folder() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 1000).unwrap();
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        fill(&disk, &mut e, 3);
        let err = Disk::open(dir.path(), 1000).unwrap_err().to_string();
        assert!(err.contains("in use by"), "{err}");
        let other = tempfile::tempdir().unwrap();
        let backup = other.path().join("b.redb");
        disk.backup(&backup).unwrap();
        let err = Disk::restore(&backup, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("in use by") && err.contains("stop it first"),
            "{err}"
        );
        let (store, _) = disk.load(10, 1 << 20).unwrap();
        assert_eq!(store.len(), 3, "the store is untouched");
        drop(disk);
        assert_eq!(Disk::restore(&backup, dir.path()).unwrap(), 3);
    }

    #[test]
    fn snapshots_at_once_each_get_their_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::open(dir.path(), 1000).unwrap());
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        fill(&disk, &mut e, 200);
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let d = disk.clone();
                std::thread::spawn(move || d.snapshot().unwrap())
            })
            .collect();
        let snaps: Vec<Snapshot> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for (i, mut s) in snaps.into_iter().enumerate() {
            assert_eq!(s.keys, 200);
            let out = dir.path().join(format!("copy-{i}.redb"));
            let mut f = File::create(&out).unwrap();
            assert_eq!(std::io::copy(&mut s.file, &mut f).unwrap(), s.len);
            let other = tempfile::tempdir().unwrap();
            assert_eq!(Disk::restore(&out, other.path()).unwrap(), 200);
        }
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(BACKUP_PREFIX))
            .collect();
        assert!(left.is_empty(), "temporary copies left: {left:?}");
    }

    // A store in a new folder with `n` acknowledged writes of `e`, then `fault` switched on and
    // one more write (of `key`, from another engine) that fails.
    struct Failed {
        dir: tempfile::TempDir,
        disk: Disk,
        e: Engine,
        write: Vec<Change>,
        err: String,
    }

    fn failed_write(n: usize, fault: impl FnOnce(&Disk), key: &str) -> Failed {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 1000).unwrap();
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        fill(&disk, &mut e, n);
        fault(&disk);
        let mut other = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        let write = set(&mut other, key, json!(1));
        let err = disk.commit([write.as_slice()]).unwrap_err().to_string();
        Failed {
            dir,
            disk,
            e,
            write,
            err,
        }
    }

    #[test]
    fn a_full_disk_closes_and_reopens_the_database_and_writing_resumes() {
        let Failed {
            dir,
            disk,
            mut e,
            write: lost,
            err,
        } = failed_write(5, |d| d.fail_writes(true), "lost");
        assert!(
            err.starts_with("storage unavailable: no space left on device"),
            "{err}"
        );
        // Still full: every write fails the same clear way, none with redb's "Previous I/O error".
        let again = disk.commit([lost.as_slice()]).unwrap_err().to_string();
        assert!(again.contains("no space left on device"), "{again}");
        assert!(disk.failure().is_some());
        assert!(disk.probe().is_err(), "still full");
        // Space is back: the probe re-opens the database and writes.
        disk.fail_writes(false);
        disk.probe().unwrap();
        assert!(disk.failure().is_none());
        let c = set(&mut e, "k/after", json!("ok"));
        disk.commit([c.as_slice()]).unwrap();
        let (store, _) = disk.load(100, 1 << 20).unwrap();
        assert_eq!(store.len(), 6);
        assert!(store.get("lost").is_none());
        assert_eq!(store.last_seq(), e.store().last_seq());
        drop(disk);
        let (store, log) = Disk::open(dir.path(), 1000)
            .unwrap()
            .load(100, 1 << 20)
            .unwrap();
        assert_eq!((store.len(), log.len()), (6, 6));
    }

    #[test]
    fn a_damaged_page_is_refused_with_advice_and_repair_salvages_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2000;
        let last_seq = {
            // A short log, so most keys exist only in the entries table.
            let disk = Disk::open(dir.path(), 50).unwrap();
            let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
            fill(&disk, &mut e, n);
            e.store().last_seq()
        };
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        // Flip a bit inside a value near the middle of the entries table (in every copy of it:
        // pages redb freed may still hold an older one).
        let needle = br#"{"i":1000,"#;
        let at: Vec<usize> = (0..bytes.len() - needle.len())
            .filter(|i| &bytes[*i..*i + needle.len()] == needle)
            .collect();
        assert!(!at.is_empty(), "the value is in the file");
        for i in at {
            bytes[i + 3] ^= 0x01;
        }
        fs::write(&path, &bytes).unwrap();

        let opened = Disk::open(dir.path(), 50).and_then(|d| d.load(100, 1 << 20).map(|_| ()));
        let err = opened.unwrap_err().to_string();
        assert!(
            err.contains("damaged") && err.contains("stateline repair --data"),
            "{err}"
        );

        let report = repair(dir.path()).unwrap();
        let text = report.to_string();
        assert!(!report.intact, "{text}");
        assert!(!report.lost.is_empty(), "{text}");
        assert!(report.kept.is_file(), "{text}");
        assert!(
            report.keys > (n as u64) / 2 && report.keys < n as u64,
            "{text}"
        );
        let disk = Disk::open(dir.path(), 50).unwrap();
        let (store, log) = disk.load(100, 1 << 20).unwrap();
        assert_eq!(store.len() as u64, report.keys);
        assert!(store.get("k/00000").is_some() && store.get("k/01999").is_some());
        assert!(
            store.get("k/01000").is_none(),
            "the damaged key is not made up"
        );
        assert_eq!(log.len(), 0, "clients resume with a snapshot");
        assert_eq!(
            store.last_seq(),
            last_seq + 1,
            "versions move past every client's"
        );
        eprintln!("{text}");
    }

    #[test]
    fn a_commit_whose_sync_failed_does_not_come_back() {
        let Failed {
            dir,
            disk,
            mut e,
            err,
            ..
        } = failed_write(2, |d| d.fail_syncs(true), "maybe");
        assert!(err.contains("fsync failed"), "{err}");
        assert!(disk.failure().is_some());
        assert!(disk.probe().is_err(), "still failing");
        disk.fail_syncs(false);
        // Its record was overwritten: writing goes on after the last acknowledged write, and
        // neither this process nor the next start applies the failed one.
        disk.probe().unwrap();
        assert!(disk.failure().is_none());
        let later = set(&mut e, "later", json!(1));
        disk.commit([later.as_slice()]).unwrap();
        drop(disk);
        let (store, _) = Disk::open(dir.path(), 1000)
            .unwrap()
            .load(100, 1 << 20)
            .unwrap();
        assert!(store.get("maybe").is_none());
        assert!(store.get("later").is_some());
        assert_eq!(store.last_seq(), e.store().last_seq());
    }

    #[test]
    fn the_next_acknowledged_commit_clears_a_failure_and_a_backup_does_not() {
        let Failed {
            dir, disk, mut e, ..
        } = failed_write(2, |d| d.fail_syncs(true), "maybe");
        // A backup reads while the store fails: it does not make the store look healthy.
        let out = dir.path().join("copy.redb");
        let _ = disk.backup(&out);
        assert!(disk.failure().is_some(), "a backup cleared the failure");
        // Syncs work again: the next acknowledged write says so, with no probe.
        disk.fail_syncs(false);
        let next = set(&mut e, "next", json!(1));
        disk.commit([next.as_slice()]).unwrap();
        assert_eq!(disk.failure(), None);
    }

    // Copies the store's two files, as a crash leaves them: redb's file holds what its last synced
    // commit wrote, and the log what was synced.
    fn crash_copy(from: &Path) -> tempfile::TempDir {
        let to = tempfile::tempdir().unwrap();
        for f in [FILE_NAME, WAL_NAMES[0], WAL_NAMES[1]] {
            fs::copy(from.join(f), to.path().join(f)).unwrap();
        }
        to
    }

    // The store in `dir` as a start loads it.
    fn load_dir(dir: &Path) -> (Store, Log) {
        Disk::open(dir, 100_000)
            .unwrap()
            .load(100_000, 1 << 24)
            .unwrap()
    }

    // The store in redb's file alone, as it is on disk (no write-ahead log applied).
    fn redb_only(dir: &Path) -> Store {
        Disk::open_existing(&dir.join(FILE_NAME))
            .unwrap()
            .load(100, 1 << 20)
            .unwrap()
            .0
    }

    #[test]
    fn acknowledged_writes_survive_a_crash_between_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 1000).unwrap();
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        // 7 groups of 50: no checkpoint yet, so redb's file has none of them.
        fill(&disk, &mut e, 350);
        let gone = e
            .execute_as_system(
                Tick::from_wall(10),
                Op::Delete {
                    target: "k/00007".into(),
                    cond: Cond::Always,
                },
            )
            .unwrap()
            .changes;
        disk.commit([gone.as_slice()]).unwrap();
        let crashed = crash_copy(dir.path());
        assert_eq!(
            redb_only(crashed.path()).len(),
            0,
            "redb's file alone lacks them"
        );
        let again = Disk::open(crashed.path(), 1000).unwrap();
        let (store, log) = again.load(1000, 1 << 20).unwrap();
        assert_eq!(store.len(), 349);
        assert!(store.get("k/00007").is_none(), "the delete is applied too");
        assert_eq!(store.last_seq(), e.store().last_seq());
        assert_eq!(log.len(), 351, "every change is in the log");
        // Applied at that start: a second crash right after it loses nothing either.
        let second = crash_copy(crashed.path());
        drop(again);
        let (store, _) = load_dir(second.path());
        assert_eq!(store.len(), 349);
    }

    // Every row of every table, as bytes, and the last sequence number.
    type Rows = (
        Vec<(String, Vec<u8>)>,
        Vec<(&'static str, u64, Vec<u8>)>,
        u64,
    );
    fn dump(disk: &Disk) -> Rows {
        let guard = disk.db.read().unwrap();
        let tx = guard.as_ref().unwrap().begin_read().unwrap();
        let entries = tx
            .open_table(ENTRIES)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value().to_string(), v.value().to_vec())
            })
            .collect();
        let mut rows = Vec::new();
        for (name, t) in [("log", LOG), ("history", HISTORY), ("receipts", RECEIPTS)] {
            let Ok(table) = tx.open_table(t) else {
                continue;
            };
            for r in table.iter().unwrap() {
                let (k, v) = r.unwrap();
                rows.push((name, k.value(), v.value().to_vec()));
            }
        }
        let last = tx
            .open_table(META)
            .unwrap()
            .get("last_seq")
            .unwrap()
            .map_or(0, |v| v.value());
        (entries, rows, last)
    }

    #[test]
    fn applying_groups_together_leaves_what_applying_them_one_by_one_does() {
        // Groups that overwrite and delete keys, put key-history versions that later groups
        // trim away, and write more change-log records than the bound of 10 keeps.
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        e.restore_history(stateline_core::history::History::new(
            stateline_core::history::Limits {
                keep: 2,
                max_bytes: 1 << 20,
            },
        ));
        let mut groups = Vec::new();
        for i in 0..60 {
            let changes = if i % 7 == 6 {
                e.execute_as_system(
                    Tick::from_wall(10 + i),
                    Op::Delete {
                        target: format!("k/{}", i % 5),
                        cond: Cond::Always,
                    },
                )
                .map(|a| a.changes)
                .unwrap_or_default()
            } else {
                set(&mut e, &format!("k/{}", i % 5), json!(i))
            };
            let history = e.take_history_delta();
            groups.push(encode_group(&[changes.as_slice()], &[&history], &[]).0 .0);
        }
        let (one, all) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (one, all) = (
            Disk::open(one.path(), 10).unwrap(),
            Disk::open(all.path(), 10).unwrap(),
        );
        for g in &groups {
            one.write(|db| {
                let tx = db.begin_write()?;
                one.apply(&tx, [g.as_slice()])?;
                tx.commit()?;
                Ok(())
            })
            .unwrap();
        }
        all.write(|db| {
            let tx = db.begin_write()?;
            all.apply(&tx, groups.iter().map(Vec::as_slice))?;
            tx.commit()?;
            Ok(())
        })
        .unwrap();
        let (a, b) = (dump(&one), dump(&all));
        assert_eq!(a, b);
        // What the groups left: keys, a trimmed history and the last 10 log records.
        assert!(!a.0.is_empty() && a.1.iter().any(|r| r.0 == "history"));
        assert_eq!(a.1.iter().filter(|r| r.0 == "log").count(), 10);
        assert_eq!(a.2, e.store().last_seq());
    }

    #[test]
    fn checkpoints_keep_the_log_short_and_a_crash_after_one_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 100_000).unwrap();
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        let n = wal::CHECKPOINT_GROUPS as usize * 2 + 10;
        for i in 0..n {
            let c = set(&mut e, &format!("k/{i}"), json!(i));
            disk.commit([c.as_slice()]).unwrap();
        }
        {
            let guard = disk.wal.lock().unwrap();
            let w = guard.as_ref().unwrap();
            assert_eq!(w.groups, 10, "two checkpoints ran");
            assert_eq!(
                w.unapplied.len(),
                10,
                "the groups since the last checkpoint wait for the next one, not in redb"
            );
        }
        let crashed = crash_copy(dir.path());
        {
            let store = redb_only(crashed.path());
            assert_eq!(
                store.len(),
                n - 10,
                "redb holds every group up to the last checkpoint"
            );
        }
        let (store, _) = load_dir(crashed.path());
        assert_eq!(store.len(), n);
        assert_eq!(store.last_seq(), e.store().last_seq());
    }

    #[test]
    fn a_probe_is_a_checkpoint_and_a_start_skips_what_redb_holds() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 1000).unwrap();
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        fill(&disk, &mut e, 100);
        disk.probe().unwrap();
        assert_eq!(
            disk.wal.lock().unwrap().as_ref().unwrap().groups,
            1,
            "the probe's record only"
        );
        let c = set(&mut e, "k/after", json!(1));
        disk.commit([c.as_slice()]).unwrap();
        let crashed = crash_copy(dir.path());
        let store = redb_only(crashed.path());
        assert_eq!(
            store.len(),
            100,
            "redb's file has the groups before the probe"
        );
        let again = Disk::open(crashed.path(), 1000).unwrap();
        let (store, _) = again.load(100, 1 << 20).unwrap();
        assert_eq!(store.len(), 101);
        assert_eq!(store.last_seq(), e.store().last_seq());
    }

    #[test]
    fn repair_applies_the_log_records_the_file_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 1000).unwrap();
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        fill(&disk, &mut e, 300);
        let crashed = crash_copy(dir.path());
        let report = repair(crashed.path()).unwrap();
        assert_eq!(report.wal_records, 6, "{report}");
        assert!(report.intact, "{report}");
        assert!(crashed.path().read_dir().unwrap().flatten().any(|f| f
            .file_name()
            .to_string_lossy()
            .starts_with("stateline.wal.damaged-")));
        let again = Disk::open(crashed.path(), 1000).unwrap();
        let (store, log) = again.load(1000, 1 << 20).unwrap();
        assert_eq!(store.len(), 300);
        assert_eq!(log.len(), 300);
        assert_eq!(store.last_seq(), e.store().last_seq());
        // Repaired, the store starts a new log: the old records are not applied again.
        drop(again);
        let (store, _) = load_dir(crashed.path());
        assert_eq!(store.len(), 300);
    }

    #[test]
    fn a_group_too_large_for_the_log_goes_straight_to_redb() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path(), 1000).unwrap();
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        fill_in(&disk, &mut e, 3, 1);
        disk.set_direct_bytes(2000);
        fill_in(&disk, &mut e, 50, 50);
        assert_eq!(
            disk.wal.lock().unwrap().as_ref().unwrap().groups,
            0,
            "a checkpoint"
        );
        let c = set(&mut e, "k/small", json!(1));
        disk.commit([c.as_slice()]).unwrap();
        assert_eq!(disk.wal.lock().unwrap().as_ref().unwrap().groups, 1);
        let crashed = crash_copy(dir.path());
        assert_eq!(
            redb_only(crashed.path()).len(),
            50,
            "the large group and the ones before"
        );
        let (store, _) = load_dir(crashed.path());
        assert_eq!(store.len(), 51);
        assert_eq!(store.last_seq(), e.store().last_seq());
    }

    #[test]
    fn a_restore_drops_the_old_log() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("backup.redb");
        let data = dir.path().join("data");
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        {
            let disk = Disk::open(&data, 1000).unwrap();
            fill(&disk, &mut e, 3);
            disk.backup(&out).unwrap();
            fill(&disk, &mut e, 2);
        }
        assert!(data.join(WAL_NAME).is_file());
        assert_eq!(Disk::restore(&out, &data).unwrap(), 3);
        assert!(!data.join(WAL_NAME).exists());
        let (store, _) = Disk::open(&data, 1000).unwrap().load(100, 1 << 20).unwrap();
        assert_eq!(store.len(), 3);
    }
}

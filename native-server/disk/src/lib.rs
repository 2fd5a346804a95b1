//! Durable storage for the native server: one redb file, loaded into memory at start.
//!
//! Owns the on-disk layout (entries, the change log, the last sequence number), the group commit
//! that lets many concurrent writers share one fsync, and consistent backups. It knows nothing of
//! HTTP or subscribers: it stores [`Change`]s the core produced and gives back a [`Store`] and a
//! [`Log`] at start. redb is crash-safe: a commit either lands whole or not at all, so after a
//! crash the file holds exactly the acknowledged writes.
//!
//! Layout: table `entries`: key → an entry; table `log`: seq → a change-log record (both in the
//! core's byte layout, `stateline_core::codec`); table `meta`: `"last_seq"` → u64, `"format"` → 1.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use stateline_core::codec::{decode_entry, decode_log, encode_entry, encode_log, Corrupt};
use stateline_core::log::Log;
use stateline_core::store::{Change, Store};

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT: u64 = 1;

/// The file inside the data directory.
pub const FILE_NAME: &str = "stateline.redb";

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
    /// The database file cannot be opened (locked by another process, corrupt, wrong format).
    #[error("database {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb said.
        message: String,
    },
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

/// An open database.
pub struct Disk {
    db: Database,
    path: PathBuf,
    log_keep: usize,
    // Fault injection for tests: this many next commits fail as a full disk would.
    fail_next: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("path", &self.path).finish()
    }
}

fn corrupt(c: Corrupt) -> DiskError {
    DiskError::Corrupt(c.0)
}

impl Disk {
    /// Opens (creating if needed) the database in `dir`. Refuses clearly when the directory is
    /// not writable, the disk is full, or another process holds the file.
    pub fn open(dir: &Path, log_keep: usize) -> Result<Disk, DiskError> {
        let dir_err = |source| DiskError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_err)?;
        // Probe: write and sync a small file, so a read-only or full disk is reported at start,
        // not at the first acknowledged write.
        let probe = dir.join(".stateline-write-test");
        fs::write(&probe, [0u8; 4096])
            .and_then(|_| fs::File::open(&probe)?.sync_all())
            .map_err(dir_err)?;
        let _ = fs::remove_file(&probe);
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| DiskError::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let disk = Disk {
            db,
            path,
            log_keep,
            fail_next: Default::default(),
        };
        let tx = disk.db.begin_write().map_err(io)?;
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
                        path: disk.path.clone(),
                        message: format!(
                            "format {other} is not supported (this build reads format {FORMAT})"
                        ),
                    })
                }
            }
            tx.open_table(ENTRIES).map_err(io)?;
            tx.open_table(LOG).map_err(io)?;
        }
        tx.commit().map_err(io)?;
        Ok(disk)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads everything: the store (entries and last sequence number) and the change log, so
    /// versions clients hold stay valid across the restart.
    pub fn load(&self, log_entries: usize, log_bytes: usize) -> Result<(Store, Log), DiskError> {
        let tx = self.db.begin_read().map_err(io)?;
        let meta = tx.open_table(META).map_err(io)?;
        let last_seq = meta.get("last_seq").map_err(io)?.map_or(0, |v| v.value());
        let entries = tx.open_table(ENTRIES).map_err(io)?;
        let mut loaded = Vec::with_capacity(entries.len().map_err(io)? as usize);
        for row in entries.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            loaded.push((
                Arc::<str>::from(k.value()),
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

    /// Test hook: the next `n` commits fail (as a full disk would), writing nothing.
    pub fn fail_next_commits(&self, n: u32) {
        self.fail_next.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes batches of changes in one transaction and syncs it to disk (one fsync for all).
    pub fn commit<'a>(
        &self,
        batches: impl IntoIterator<Item = &'a [Change]>,
    ) -> Result<(), DiskError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .fail_next
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(DiskError::Io(
                "injected failure: no space left on device".into(),
            ));
        }
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut entries = tx.open_table(ENTRIES).map_err(io)?;
            let mut log = tx.open_table(LOG).map_err(io)?;
            let mut meta = tx.open_table(META).map_err(io)?;
            let mut last = None;
            let mut buf = Vec::new();
            for c in batches.into_iter().flatten() {
                match &c.entry {
                    Some(e) => {
                        buf.clear();
                        encode_entry(&mut buf, e);
                        entries.insert(&*c.key, buf.as_slice()).map_err(io)?;
                    }
                    None => {
                        entries.remove(&*c.key).map_err(io)?;
                    }
                }
                log.insert(c.seq, encode_log(c).as_slice()).map_err(io)?;
                last = Some(c.seq);
            }
            if let Some(last) = last {
                meta.insert("last_seq", last).map_err(io)?;
                // Keep the log table bounded: drop the oldest records beyond `log_keep`.
                let keep_from = last.saturating_sub(self.log_keep as u64);
                if log
                    .first()
                    .map_err(io)?
                    .is_some_and(|(k, _)| k.value() <= keep_from)
                {
                    log.retain_in(..=keep_from, |_, _| false).map_err(io)?;
                }
            }
        }
        tx.commit().map_err(io)?;
        Ok(())
    }

    /// Writes a consistent copy of the database (one read transaction) to `out`, atomically (a
    /// temporary file renamed into place). Returns the number of keys written.
    pub fn backup(&self, out: &Path) -> Result<u64, DiskError> {
        let tmp = out.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let copy = Database::create(&tmp).map_err(|e| DiskError::Open {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
        let rx = self.db.begin_read().map_err(io)?;
        let wx = copy.begin_write().map_err(io)?;
        let mut keys = 0;
        {
            let mut meta = wx.open_table(META).map_err(io)?;
            for row in rx.open_table(META).map_err(io)?.iter().map_err(io)? {
                let (k, v) = row.map_err(io)?;
                meta.insert(k.value(), v.value()).map_err(io)?;
            }
            let mut entries = wx.open_table(ENTRIES).map_err(io)?;
            for row in rx.open_table(ENTRIES).map_err(io)?.iter().map_err(io)? {
                let (k, v) = row.map_err(io)?;
                entries.insert(k.value(), v.value()).map_err(io)?;
                keys += 1;
            }
            let mut log = wx.open_table(LOG).map_err(io)?;
            for row in rx.open_table(LOG).map_err(io)?.iter().map_err(io)? {
                let (k, v) = row.map_err(io)?;
                log.insert(k.value(), v.value()).map_err(io)?;
            }
        }
        wx.commit().map_err(io)?;
        drop(copy);
        fs::rename(&tmp, out).map_err(io)?;
        Ok(keys)
    }

    /// Replaces the database in `dir` with a backup, after checking the backup opens and loads.
    /// The server must not be running on `dir`.
    pub fn restore(backup: &Path, dir: &Path) -> Result<u64, DiskError> {
        let keys = {
            let b = Disk::open_existing(backup)?;
            let (store, _) = b.load(usize::MAX, usize::MAX)?;
            store.len() as u64
        };
        fs::create_dir_all(dir).map_err(|source| DiskError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let target = dir.join(FILE_NAME);
        let tmp = dir.join(format!("{FILE_NAME}.restore"));
        fs::copy(backup, &tmp).map_err(io)?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        fs::rename(&tmp, &target).map_err(io)?;
        Ok(keys)
    }

    fn open_existing(path: &Path) -> Result<Disk, DiskError> {
        if !path.is_file() {
            return Err(DiskError::Open {
                path: path.to_path_buf(),
                message: "no such file".into(),
            });
        }
        let db = Database::open(path).map_err(|e| DiskError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Disk {
            db,
            path: path.to_path_buf(),
            log_keep: usize::MAX,
            fail_next: Default::default(),
        })
    }
}

/// Told whether a batch is durable (`Ok`) or was rolled back (`Err` with the reason).
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// One batch of changes waiting for its commit, and who to tell.
pub struct Job {
    /// The changes (one operation's), in sequence order.
    pub changes: Vec<Change>,
    /// Called once the batch is durable, or failed.
    pub done: Done,
}

/// What the committer hands the server after each group: the jobs it committed, or on failure
/// the jobs that failed. `drain` returns every job queued since, which after a failure must be
/// failed too (they were applied after the failed ones, and memory must be rolled back newest
/// first); call it while holding the lock under which jobs are applied and submitted.
pub type OnGroup = Box<dyn FnMut(Result<(), DiskError>, Vec<Job>, &dyn Fn() -> Vec<Job>) + Send>;

/// Group commit: a thread that takes every job queued while the previous commit ran and commits
/// them in one transaction, so N concurrent writers cost about one fsync.
#[derive(Debug)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

/// Most jobs folded into one commit; bounds the latency of the first writer in a group.
pub const MAX_GROUP: usize = 4096;

impl Committer {
    /// Starts the commit thread.
    pub fn start(disk: Arc<Disk>, mut on_group: OnGroup) -> Committer {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("stateline-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(j) => group.push(j),
                            Err(_) => break,
                        }
                    }
                    let r = disk.commit(group.iter().map(|j| j.changes.as_slice()));
                    let drain = || rx.try_iter().collect::<Vec<Job>>();
                    on_group(r, group, &drain);
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
        e.execute(
            Tick::from_wall(10),
            Op::Set {
                key: k.into(),
                value: v,
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
                .execute(
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
            (&*e.data, e.revision, e.expires.is_some()),
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
}

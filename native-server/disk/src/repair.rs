//! Salvage of a damaged data file (`stateline repair`): keep what is readable, say what is not.
//!
//! redb checks every page's checksum when asked to ([`redb::Builder::set_check_integrity_on_open`])
//! and can repair a file whose last commit was torn, but one damaged page anywhere else (a flipped
//! bit on the disk) leaves the whole file refused. Repair works on copies, never on the file
//! itself, and keeps the damaged file beside the result:
//!
//! 1. redb's own check and repair. If it passes, every record is read (and decoded) from the
//!    checked copy: nothing is lost unless a record does not decode.
//! 2. Otherwise the file is read without the check, each table from both ends: forward until the
//!    first unreadable page, then backward from the last key until one. Keys between the two
//!    points are lost, except those the change log names: they are read one by one where their
//!    page is intact, or rebuilt from their newest change-log record (which holds the whole
//!    entry). Reading a damaged file may make redb panic; every read is guarded.
//! 3. A file that was not closed cleanly (the server crashed or was killed) cannot be opened at
//!    all once damaged: redb repairs it at every open, and the repair verifies the checksums the
//!    damage breaks. Its pages are then scanned for records, as SQLite's `.recover` does: every
//!    leaf page whose pairs decode as entries or change-log records, the newest version of each
//!    key winning, a newer change-log record (a delete included) replacing it. Pages redb had
//!    freed are scanned too (nothing says which are free), so the report asks for a review.
//!
//! The writes acknowledged since the last checkpoint are in the write-ahead log
//! ([`crate::wal`]), not in redb's file: the records at the start of the log's two files are
//! applied to what was salvaged, the older generation's first, each change only if it is newer
//! than the file's sequence number (when it could be read) and than the salvaged version of its
//! key, so records already in redb change nothing. A copy of each of the log's files is kept
//! beside the damaged file.
//!
//! The result is written as a fresh database in place of the file. When anything may be missing,
//! the sequence number moves one past the highest seen and the change log is dropped, so every
//! client resumes with a full snapshot rather than trusting a cache of keys that are gone.

use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use stateline_core::codec::{decode_entry, decode_log, encode_entry};

use crate::{check_file, io, sync_dir, DirLock, DiskError, ENTRIES, FILE_NAME, FORMAT, LOG, META};

/// What [`repair`] found and did.
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    /// Keys in the repaired store.
    pub keys: u64,
    /// Of those, keys rebuilt from the change log (their own record was unreadable).
    pub from_log: u64,
    /// Change-log records kept.
    pub log_records: u64,
    /// The repaired store's sequence number.
    pub last_seq: u64,
    /// redb's integrity check passed (possibly after redb repaired a torn last commit) and every
    /// record decoded: nothing was lost.
    pub intact: bool,
    /// redb's check found the file in need of repair and repaired it.
    pub redb_repaired: bool,
    /// What could not be read, one line each.
    pub lost: Vec<String>,
    /// Records of the write-ahead log applied to what was salvaged.
    pub wal_records: u64,
    /// Where the damaged file was kept.
    pub kept: PathBuf,
}

impl std::fmt::Display for Repaired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "repaired: {} keys ({} rebuilt from the change log), {} change-log records, version {:x}",
            self.keys, self.from_log, self.log_records, self.last_seq
        )?;
        if self.wal_records > 0 {
            writeln!(
                f,
                "applied {} records of the write-ahead log (writes acknowledged since its last checkpoint)",
                self.wal_records
            )?;
        }
        if self.redb_repaired {
            writeln!(
                f,
                "redb's integrity check repaired the file (after a crash this loses nothing; after damage it may have gone back to an earlier commit)"
            )?;
        }
        if self.intact {
            writeln!(f, "nothing was lost")?;
        } else {
            writeln!(f, "lost or unreadable:")?;
            for l in &self.lost {
                writeln!(f, "  - {l}")?;
            }
            writeln!(
                f,
                "clients resume with a full snapshot (the change log was dropped and the version moved on)"
            )?;
        }
        write!(f, "the damaged file is kept as {}", self.kept.display())
    }
}

// What was read.
#[derive(Default)]
struct Salvage {
    entries: BTreeMap<String, Vec<u8>>,
    log: BTreeMap<u64, Vec<u8>>,
    meta_seq: Option<u64>,
    lost: Vec<String>,
    from_log: u64,
}

/// Salvages the database in `dir` in place: see the module docs. Takes the data folder's lock,
/// so it refuses while a server runs there. The damaged file is kept as
/// `stateline.redb.damaged-<unix seconds>`.
pub fn repair(dir: &Path) -> Result<Repaired, DiskError> {
    let _lock = DirLock::acquire(dir)?;
    let path = dir.join(FILE_NAME);
    if !path.is_file() {
        return Err(DiskError::Open {
            path,
            message: "no such file: there is nothing to repair".into(),
        });
    }
    // An empty file or one that is not redb at all holds nothing to salvage.
    check_file(&path)?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kept = dir.join(format!("{FILE_NAME}.damaged-{secs}"));
    fs::copy(&path, &kept).map_err(|e| DiskError::Io(format!("{}: {e}", kept.display())))?;

    let redb_repaired = Arc::new(AtomicBool::new(false));
    let checked = {
        let work = work_copy(&path, dir)?;
        let flag = redb_repaired.clone();
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let mut b = redb::Builder::new();
            b.set_check_integrity_on_open(true)
                .set_repair_callback(move |_| flag.store(true, Ordering::SeqCst));
            b.create(&work)
        }));
        match opened {
            Ok(Ok(db)) => Ok(read_all(&db)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("redb panicked".into()),
        }
    };
    let mut s = match checked {
        Ok(s) => s,
        Err(why) => {
            // The flag was set by the attempt that failed: nothing was repaired.
            redb_repaired.store(false, Ordering::SeqCst);
            let work = work_copy(&path, dir)?;
            let mut s = Salvage::default();
            s.lost.push(format!(
                "redb's integrity check failed ({why}): every record was read as stored, around unreadable pages; a damaged byte inside a value that still parses cannot be told apart, so check values that matter"
            ));
            let opened = catch_unwind(AssertUnwindSafe(|| Database::open(&work)));
            match opened {
                Ok(Ok(db)) => {
                    let mut read = read_all(&db);
                    read.lost.splice(0..0, s.lost.drain(..));
                    read
                }
                failed => {
                    // A file not closed cleanly (a crash) is repaired by redb at every open, and
                    // that repair verifies the checksums it cannot pass: redb reads nothing of it.
                    // Scan its pages for records instead, as SQLite's `.recover` does.
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "it panicked".into(),
                    };
                    let bytes = fs::read(&path).map_err(io)?;
                    let mut read = scan_pages(&bytes);
                    if read.entries.is_empty() && read.log.is_empty() {
                        return Err(DiskError::Open {
                            path,
                            message: format!(
                                "redb cannot open the file ({why}) and no record could be found in it: nothing can be salvaged; restore a backup with `stateline restore`"
                            ),
                        });
                    }
                    read.lost.insert(0, format!(
                        "redb cannot open the file even without its check ({why}): records were recovered by scanning its pages, newest version of each key first. Review the result: a key deleted before the change log's window may be back with an old value, a key whose newest record was damaged may be back at an older one, and a damaged byte inside a value that still parses cannot be told apart"
                    ));
                    read
                }
            }
        }
    };
    let wal_records = apply_wal(dir, secs, &mut s)?;
    let intact = s.lost.is_empty();

    // The sequence number: the highest seen anywhere; one more when something may be missing, so
    // no client's version passes for current.
    let highest = highest_seq(&s);
    let last_seq = if intact { highest } else { highest + 1 };
    if intact {
        // The log must cover every version from its first record on: keep its unbroken tail.
        let mut keep_from = None;
        let mut expect = last_seq;
        for seq in s.log.keys().rev() {
            if *seq != expect {
                break;
            }
            keep_from = Some(*seq);
            expect = seq.saturating_sub(1);
        }
        match keep_from {
            Some(from) => s.log.retain(|k, _| *k >= from),
            None => s.log.clear(),
        }
    } else {
        s.log.clear();
    }

    // Write the result beside the file, then move it into place.
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{FILE_NAME}.repair-"))
        .tempfile_in(dir)
        .map_err(io)?
        .into_temp_path();
    {
        let db = Database::create(&tmp).map_err(io)?;
        let tx = db.begin_write().map_err(io)?;
        {
            let mut meta = tx.open_table(META).map_err(io)?;
            meta.insert("format", FORMAT).map_err(io)?;
            meta.insert("last_seq", last_seq).map_err(io)?;
            let mut entries = tx.open_table(ENTRIES).map_err(io)?;
            for (k, v) in &s.entries {
                entries.insert(k.as_str(), v.as_slice()).map_err(io)?;
            }
            let mut log = tx.open_table(LOG).map_err(io)?;
            for (k, v) in &s.log {
                log.insert(*k, v.as_slice()).map_err(io)?;
            }
        }
        tx.commit().map_err(io)?;
    }
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    sync_dir(dir);
    Ok(Repaired {
        keys: s.entries.len() as u64,
        from_log: s.from_log,
        log_records: s.log.len() as u64,
        last_seq,
        intact,
        redb_repaired: redb_repaired.load(Ordering::SeqCst),
        lost: s.lost,
        wal_records,
        kept,
    })
}

// Keeps a copy of the write-ahead log's files beside the damaged file and applies the changes of its
// records that are newer than everything salvaged (the repaired file has no log generation, so
// the next start sets the log aside as old). Returns how many records had such changes.
fn apply_wal(dir: &Path, secs: u64, s: &mut Salvage) -> Result<u64, DiskError> {
    let mut any = false;
    for name in crate::WAL_NAMES {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        any = true;
        let kept = dir.join(format!("{name}.damaged-{secs}"));
        fs::copy(&path, &kept).map_err(|e| DiskError::Io(format!("{}: {e}", kept.display())))?;
    }
    if !any {
        return Ok(0);
    }
    let records = crate::wal::read_at_start(dir)
        .map_err(|e| DiskError::Io(format!("{}: {e}", dir.display())))?;
    // Every change up to the file's sequence number is in it (redb's file holds a prefix of the
    // log's changes); a page scan may also find pages of later, unsynced commits, so each change
    // is also checked against its key's salvaged version.
    let floor = s.meta_seq.unwrap_or(0);
    let mut applied = 0;
    for r in &records {
        let ops = match crate::wal::decode(r) {
            Ok(ops) => ops,
            Err(e) => {
                s.lost.push(format!(
                    "a record of the write-ahead log ({e}) and the ones after it"
                ));
                break;
            }
        };
        let mut newer = false;
        // Each change is its entry's put or delete, then its log record (with its sequence
        // number).
        let mut entry = None;
        for op in ops {
            use crate::wal::Op;
            match op {
                Op::EntryPut(..) | Op::EntryDel(_) => entry = Some(op),
                Op::LogPut(seq, v) if seq > floor => {
                    let older = |s: &Salvage, k: &str| {
                        s.entries
                            .get(k)
                            .map(|e| decode_entry(e).map_or(0, |e| e.seq) < seq)
                    };
                    match entry.take() {
                        Some(Op::EntryPut(k, e)) if older(s, k) != Some(false) => {
                            s.entries.insert(k.to_string(), e.to_vec());
                            newer = true;
                        }
                        Some(Op::EntryDel(k)) if older(s, k) == Some(true) => {
                            s.entries.remove(k);
                            newer = true;
                        }
                        _ => {}
                    }
                    s.log.entry(seq).or_insert_with(|| v.to_vec());
                }
                Op::LogPut(..) => entry = None,
                Op::LastSeq(seq) if seq > floor => {
                    s.meta_seq = Some(s.meta_seq.map_or(seq, |m| m.max(seq)));
                }
                // Repair keeps neither the key history nor the receipts.
                _ => {}
            }
        }
        applied += u64::from(newer);
    }
    Ok(applied)
}

// The highest sequence number in what was salvaged.
fn highest_seq(s: &Salvage) -> u64 {
    s.entries
        .values()
        .filter_map(|v| decode_entry(v).ok().map(|e| e.seq))
        .chain(s.log.keys().copied())
        .chain(s.meta_seq)
        .max()
        .unwrap_or(0)
}

// A private copy to read (redb's open may write to the file it opens).
fn work_copy(path: &Path, dir: &Path) -> Result<tempfile::TempPath, DiskError> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{FILE_NAME}.salvage-"))
        .tempfile_in(dir)
        .map_err(io)?
        .into_temp_path();
    fs::copy(path, &tmp).map_err(io)?;
    Ok(tmp)
}

fn quote(k: &Option<String>) -> String {
    match k {
        Some(k) => format!("{k:?}"),
        None => "the start".into(),
    }
}

// Runs one read step, turning an error or a panic into a message.
fn step<T>(f: impl FnOnce() -> Result<T, redb::Error>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("redb panicked reading it".into()),
    }
}

// Reads every table of `db`.
fn read_all(db: &Database) -> Salvage {
    let mut s = Salvage::default();
    let tx = match step(|| Ok(db.begin_read()?)) {
        Ok(tx) => tx,
        Err(e) => {
            s.lost.push(format!("nothing could be read: {e}"));
            return s;
        }
    };
    s.meta_seq = match step(|| {
        let meta = tx.open_table(META)?;
        let v = meta.get("last_seq")?.map_or(0, |v| v.value());
        Ok(v)
    }) {
        Ok(v) => Some(v),
        Err(e) => {
            s.lost
                .push(format!("the sequence number (meta table: {e})"));
            None
        }
    };
    read_log(&tx, &mut s);
    read_entries(&tx, &mut s);
    s
}

fn read_log(tx: &ReadTransaction, s: &mut Salvage) {
    let mut bad = 0u64;
    let mut add = |s: &mut Salvage, k: u64, v: &[u8]| {
        if decode_log(k, v).is_ok() {
            s.log.insert(k, v.to_vec());
        } else {
            bad += 1;
        }
    };
    let mut last = None;
    let fwd = step(|| {
        let t = tx.open_table(LOG)?;
        for row in t.iter()? {
            let (k, v) = row?;
            add(s, k.value(), v.value());
            last = Some(k.value());
        }
        Ok(())
    });
    if let Err(e) = fwd {
        let mut first = None;
        let _ = step(|| {
            let t = tx.open_table(LOG)?;
            for row in t.iter()?.rev() {
                let (k, v) = row?;
                if last.is_some_and(|l| k.value() <= l) {
                    break;
                }
                add(s, k.value(), v.value());
                first = Some(k.value());
            }
            Ok(())
        });
        s.lost.push(format!(
            "change-log records after {} and before {} ({e})",
            last.map_or("the start".into(), |l| format!("{l:x}")),
            first.map_or("the end".into(), |f| format!("{f:x}")),
        ));
    }
    if bad > 0 {
        s.lost
            .push(format!("{bad} change-log records that do not decode"));
    }
}

fn read_entries(tx: &ReadTransaction, s: &mut Salvage) {
    let mut undecodable: Vec<String> = Vec::new();
    let mut add = |s: &mut Salvage, k: &str, v: &[u8]| {
        if decode_entry(v).is_ok() {
            s.entries.insert(k.to_string(), v.to_vec());
        } else {
            undecodable.push(k.to_string());
        }
    };
    let mut last: Option<String> = None;
    let fwd = step(|| {
        let t = tx.open_table(ENTRIES)?;
        for row in t.iter()? {
            let (k, v) = row?;
            add(s, k.value(), v.value());
            last = Some(k.value().to_string());
        }
        Ok(())
    });
    let mut gap = None;
    if let Err(e) = fwd {
        let mut first: Option<String> = None;
        let _ = step(|| {
            let t = tx.open_table(ENTRIES)?;
            for row in t.iter()?.rev() {
                let (k, v) = row?;
                if last.as_deref().is_some_and(|l| k.value() <= l) {
                    break;
                }
                add(s, k.value(), v.value());
                first = Some(k.value().to_string());
            }
            Ok(())
        });
        gap = Some((last.clone(), first.clone(), e));
    }
    // The newest change-log record of every key it names.
    let mut newest: BTreeMap<String, (u64, Option<Vec<u8>>)> = BTreeMap::new();
    for (seq, rec) in &s.log {
        if let Ok((_, key, _, _, entry)) = decode_log(*seq, rec) {
            newest.insert(
                key.to_string(),
                (
                    *seq,
                    entry.map(|e| {
                        let mut b = Vec::new();
                        encode_entry(&mut b, &e);
                        b
                    }),
                ),
            );
        }
    }
    let in_gap = |k: &str, gap: &Option<(Option<String>, Option<String>, String)>| {
        gap.as_ref().is_some_and(|(lo, hi, _)| {
            lo.as_deref().is_none_or(|lo| k > lo) && hi.as_deref().is_none_or(|hi| k < hi)
        })
    };
    let mut from_log = 0u64;
    let mut probed = 0u64;
    if let Some((lo, hi, e)) = &gap {
        // Keys the log names inside the gap: their own page may be intact.
        for key in newest.keys().filter(|k| in_gap(k, &gap)) {
            let got = step(|| {
                let t = tx.open_table(ENTRIES)?;
                let v = t.get(key.as_str())?.map(|v| v.value().to_vec());
                Ok(v)
            });
            if let Ok(Some(v)) = got {
                if decode_entry(&v).is_ok() {
                    s.entries.insert(key.clone(), v);
                    probed += 1;
                }
            }
        }
        s.lost.push(format!(
            "the entries after {} and before {} ({e}): keys the change log does not name are lost",
            quote(lo),
            quote(hi)
        ));
    }
    // Rebuild from the log what could not be read: keys in the gap and records that do not
    // decode, when the log's record is newer than anything read.
    let unread: Vec<String> = newest
        .keys()
        .filter(|k| in_gap(k, &gap) || undecodable.contains(k))
        .cloned()
        .collect();
    for key in unread {
        let (seq, entry) = &newest[&key];
        let have = s
            .entries
            .get(&key)
            .and_then(|v| decode_entry(v).ok())
            .map(|e| e.seq);
        if have.is_some_and(|h| h >= *seq) {
            continue;
        }
        match entry {
            Some(b) => {
                s.entries.insert(key.clone(), b.clone());
                from_log += 1;
            }
            None => {
                s.entries.remove(&key);
            }
        }
    }
    undecodable.retain(|k| !s.entries.contains_key(k));
    for k in undecodable {
        s.lost
            .push(format!("the record of key {k:?} does not decode"));
    }
    if gap.is_some() {
        s.lost.push(format!(
            "{probed} keys inside the unreadable range were read one by one, {from_log} rebuilt from the change log"
        ));
    }
    s.from_log = from_log;
}

// The page size of every redb file this crate writes (redb's default, not configurable).
const PAGE: usize = 4096;
// redb's leaf page tag (its btree format: type byte, reserved byte, u16 pair count, then the
// end offsets of variable-width keys and of variable-width values (u32, from the page start),
// then the keys, then the values).
const LEAF: u8 = 1;

// The pairs of a leaf page at `at`, if it parses as one with keys of `key_width` bytes (None:
// variable) and variable-width values.
fn leaf_pairs(file: &[u8], at: usize, key_width: Option<usize>) -> Option<Vec<(&[u8], &[u8])>> {
    let page = file.get(at..)?;
    if *page.first()? != LEAF {
        return None;
    }
    let n = u16::from_le_bytes(page.get(2..4)?.try_into().ok()?) as usize;
    if n == 0 {
        return None;
    }
    let u32_at = |o: usize| -> Option<usize> {
        Some(u32::from_le_bytes(page.get(o..o + 4)?.try_into().ok()?) as usize)
    };
    let key_ends = if key_width.is_none() { n } else { 0 };
    let values_table = 4 + 4 * key_ends;
    let keys_start = values_table + 4 * n;
    let mut pairs = Vec::with_capacity(n);
    let mut key_start = keys_start;
    let key_end = |i: usize| -> Option<usize> {
        match key_width {
            Some(w) => Some(keys_start + w * (i + 1)),
            None => u32_at(4 + 4 * i),
        }
    };
    let mut value_start = key_end(n - 1)?;
    for i in 0..n {
        let ke = key_end(i)?;
        let ve = u32_at(values_table + 4 * i)?;
        if ke < key_start || ve < value_start {
            return None;
        }
        pairs.push((page.get(key_start..ke)?, page.get(value_start..ve)?));
        key_start = ke;
        value_start = ve;
    }
    Some(pairs)
}

// Finds every record in the raw pages of a file redb cannot open: entries (a key and an entry
// that decodes) and change-log records; the newest version of each key wins, and a change-log
// record newer than a key's entry (a delete included) replaces it.
fn scan_pages(file: &[u8]) -> Salvage {
    let mut s = Salvage::default();
    let mut best: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    for at in (PAGE..file.len()).step_by(PAGE) {
        if file[at] != LEAF {
            continue;
        }
        if let Some(pairs) = leaf_pairs(file, at, None) {
            for (k, v) in pairs {
                let (Ok(key), Ok(e)) = (std::str::from_utf8(k), decode_entry(v)) else {
                    continue;
                };
                if best.get(key).is_none_or(|(seq, _)| e.seq > *seq) {
                    best.insert(key.to_string(), (e.seq, v.to_vec()));
                }
            }
        }
        if let Some(pairs) = leaf_pairs(file, at, Some(8)) {
            for (k, v) in pairs {
                let Ok(seq) = <[u8; 8]>::try_from(k).map(u64::from_le_bytes) else {
                    continue;
                };
                if decode_log(seq, v).is_ok() {
                    s.log.insert(seq, v.to_vec());
                }
            }
        }
    }
    for (seq, rec) in &s.log {
        let Ok((_, key, _, _, entry)) = decode_log(*seq, rec) else {
            continue;
        };
        if best.get(&*key).is_some_and(|(have, _)| have >= seq) {
            continue;
        }
        match entry {
            Some(e) => {
                let mut b = Vec::new();
                encode_entry(&mut b, &e);
                best.insert(key.to_string(), (*seq, b));
                s.from_log += 1;
            }
            None => {
                best.remove(&*key);
            }
        }
    }
    s.entries = best.into_iter().map(|(k, (_, v))| (k, v)).collect();
    s
}

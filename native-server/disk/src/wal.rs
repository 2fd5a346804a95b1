//! The write-ahead log in front of redb: where a group of writes becomes durable.
//!
//! A redb commit writes and syncs every page its change touched (on a store of some size, a dozen
//! pages scattered over the file for one small write: the B-tree paths of the entries, the log,
//! the metadata, the allocator's state). The log instead writes one record, in place, into a file
//! that was filled with zeros when it was created, and syncs it with `fdatasync`: one sequential
//! write and no change to the file's size to journal. A group is acknowledged once its record is
//! synced, and kept in memory (`Wal::unapplied`); every [`CHECKPOINT_GROUPS`] groups (or
//! [`CHECKPOINT_BYTES`] of records) one redb commit with a sync applies all of them and makes them
//! durable in redb. Applying each group to redb on its own, even without a sync, cost most of a
//! durable write's CPU (redb rebuilds the B-tree pages a commit touches): one commit for all of
//! them rebuilds a page once.
//!
//! Generations tell the current records from old ones left in the files. The log has two files
//! ([`WAL_NAMES`]): generation `g` is written from the start of file `g % 2`. redb's `meta` table
//! holds the generation (`"wal_gen"`) whose records are not yet known to be in redb; each record
//! carries its generation. A checkpoint takes the groups of the generation being written, moves
//! the log on to the next generation in the other file, and then, while writes go on into that
//! file, commits the groups it took together with the next generation number: after that commit
//! the first file's records are old. So a group's writers never wait for a checkpoint (unless one
//! is so slow that the next generation reaches twice the bounds: then it waits, which bounds the
//! memory the groups take). At start (and after a failed commit re-opened redb) the records of
//! redb's generation and of the one after it (a checkpoint may have been running) are applied
//! again, in order, each up to its first record that is not whole: every operation in a record
//! sets or removes a row, so applying one twice changes nothing. A torn last record (a crash
//! during its write) fails its checksum and was never acknowledged.
//!
//! Record: generation (u64) · payload length (u32) · CRC-32 of the three (u32) · payload. The
//! payload is the list of row operations of one group (`Ops`), all little-endian.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use crate::backend::Faults;

/// The log's two files inside the data directory: generation `g` is written to `WAL_NAMES[g % 2]`,
/// so the next generation's records go on while a checkpoint commits the last one's.
pub const WAL_NAMES: [&str; 2] = ["stateline.wal", "stateline.wal.1"];

/// The first of [`WAL_NAMES`] (a store written before the log had two files has only this one).
pub const WAL_NAME: &str = WAL_NAMES[0];

/// Size each of the log's files is filled to when it is created. Records are written in place
/// inside it, so a sync has no file growth to record. Twice [`CHECKPOINT_BYTES`]: the records of
/// one generation stay inside it unless a checkpoint runs late or one group alone is larger (a
/// group past the end still works: the file grows, and that sync costs more). On a disk with less
/// free space than this the file is not filled (and records grow it).
pub const WAL_BYTES: u64 = 2 * CHECKPOINT_BYTES;

/// A checkpoint is due after this many groups. Until it they wait in memory (their payloads, a few
/// hundred bytes each for ordinary writes), and a start after a crash applies them again; the
/// checkpoint applies them all in one synced redb commit, which rebuilds each B-tree page they
/// touch once. Writes go on into the log's other file while it runs.
pub const CHECKPOINT_GROUPS: u32 = 128;

/// A group whose record would reach this size skips the log and is committed straight to redb
/// with a sync (which is then also a checkpoint): the log would have to grow that far past its
/// filled 512 KiB and stay that size, and a record's length is 32 bits. Only a group of very large
/// values gets there (the server's bodies are at most 10 MiB by default).
pub const DIRECT_BYTES: u64 = 64 << 20;

/// A checkpoint is also due once the records of this generation reach this many bytes (large
/// values). Until a checkpoint a write's payload is held in memory beside its record, and the
/// checkpoint's copy-on-write needs room for their pages in redb; after a full disk, writing
/// resumes once that much is free. 256 KiB keeps it small, while a group of ordinary writes is a
/// few hundred bytes (so for them [`CHECKPOINT_GROUPS`] comes first).
pub const CHECKPOINT_BYTES: u64 = 256 << 10;

/// How far past the bounds above a generation may grow while the checkpoint of the one before it
/// still runs (writes go on meanwhile): at this many times them the writer runs the checkpoint
/// itself, waiting for the running one first. This bounds the groups held in memory (at most
/// two generations, the one being checkpointed and the one being written, each under this many
/// times the bounds plus one group) and keeps a generation inside its filled file.
pub const OVERDUE: u32 = 2;

const HEADER: usize = 16;

/// The log's files, the generation being written and where its next record goes.
///
/// The payloads are what [`Wal::read`] returns; each one's last sequence number (if it wrote
/// changes) is found with [`last_seq`].
#[derive(Debug)]
pub(crate) struct Wal {
    files: [File; 2],
    paths: [PathBuf; 2],
    /// The generation of the records written now (into `files[gen % 2]`).
    pub gen: u64,
    /// Where the next record goes (the end of this generation's records).
    pub end: u64,
    /// Groups written in this generation.
    pub groups: u32,
    /// The payloads of this generation's records not yet applied to redb, in order: a group is
    /// applied at the next checkpoint, with every other one since the last, in its one synced
    /// commit (or before a backup reads redb). Bounded as the records are ([`OVERDUE`] times
    /// [`CHECKPOINT_BYTES`] plus one group, or times [`CHECKPOINT_GROUPS`] groups).
    pub unapplied: Vec<Vec<u8>>,
}

impl Wal {
    /// Opens the log's files in `dir`, creating them (filled with zeros to [`WAL_BYTES`] and
    /// synced) when they are missing or shorter. `gen` is redb's `wal_gen`: 0 for a store that
    /// has none (new, restored or repaired), whose log files, if any, are left over from another
    /// store and are emptied first (its generations would otherwise start over and could match old
    /// records). The generation written next is set by [`Wal::restart`] once the records are
    /// applied ([`Wal::read`]).
    pub fn open(dir: &Path, gen: u64) -> io::Result<Wal> {
        let open = |name: &str| -> io::Result<(File, PathBuf)> {
            let path = dir.join(name);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(gen == 0)
                .open(&path)?;
            fill(&file)?;
            Ok((file, path))
        };
        let (f0, p0) = open(WAL_NAMES[0])?;
        let (f1, p1) = open(WAL_NAMES[1])?;
        crate::sync_dir(dir);
        Ok(Wal {
            files: [f0, f1],
            paths: [p0, p1],
            gen,
            end: 0,
            groups: 0,
            unapplied: Vec::new(),
        })
    }

    /// The payloads of the whole records of generation `gen` and then of `gen + 1`, in order:
    /// what redb may lack when its `wal_gen` is `gen` (the next generation has records when a
    /// checkpoint was running). Each generation's records are read from whichever file starts
    /// with them (a store from before the log had two files wrote every generation to the first).
    pub fn read(&self, gen: u64) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut used = None;
        for g in [gen, gen + 1] {
            for (i, file) in self.files.iter().enumerate() {
                if used == Some(i) {
                    continue;
                }
                let (records, _) = records(file, g)?;
                if !records.is_empty() {
                    out.extend(records);
                    used = Some(i);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Writes one record at the end and syncs it: once this returns `Ok` the group is durable.
    /// On failure the record is overwritten with zeros (best effort) and `end` stays, so a record
    /// reported failed is not applied at the next start, and the next record takes its place.
    pub fn append(&mut self, payload: &[u8], faults: &Faults) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::other("a group of writes over 4 GiB"))?;
        let mut rec = Vec::with_capacity(HEADER + payload.len());
        rec.extend_from_slice(&self.gen.to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        let crc = checksum(&rec, payload);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(payload);
        let file = &self.files[(self.gen % 2) as usize];
        let r = faults.check().and_then(|()| {
            write_at(file, &rec, self.end)?;
            if faults.sync.load(Relaxed) {
                return Err(io::Error::other("fsync failed (injected)"));
            }
            file.sync_data()
        });
        match r {
            Ok(()) => {
                self.end += rec.len() as u64;
                self.groups += 1;
                Ok(())
            }
            Err(e) => {
                let _ = write_at(file, &[0u8; HEADER], self.end).and_then(|()| file.sync_data());
                Err(e)
            }
        }
    }

    /// Whether the records of this generation are enough for a checkpoint.
    pub fn checkpoint_due(&self) -> bool {
        self.groups >= CHECKPOINT_GROUPS || self.end >= CHECKPOINT_BYTES
    }

    /// Whether they are [`OVERDUE`] times that: the writer then waits for a checkpoint.
    pub fn checkpoint_overdue(&self) -> bool {
        self.groups >= OVERDUE * CHECKPOINT_GROUPS || self.end >= OVERDUE as u64 * CHECKPOINT_BYTES
    }

    /// Moves the log on to the next generation, written from the start of the other file, and
    /// returns this generation's groups not applied yet, for a checkpoint to commit together with
    /// the next generation's number. Call only when no checkpoint is running: the other file's
    /// records must already be in redb.
    pub fn next_generation(&mut self) -> Vec<Vec<u8>> {
        self.gen += 1;
        self.end = 0;
        self.groups = 0;
        std::mem::take(&mut self.unapplied)
    }

    /// After redb committed (with a sync) a generation past `gen`: `gen`'s file holds only old
    /// records. Its first record's header is zeroed (not synced: best effort), so the file no
    /// longer starts with a chain of old records, which `repair` (reading the log without redb's
    /// generation) would take for current ones; a start does not depend on it.
    pub fn retire(&self, gen: u64) {
        if gen % 2 != self.gen % 2 {
            let _ = write_at(&self.files[(gen % 2) as usize], &[0u8; HEADER], 0);
        }
    }

    /// After redb committed (with a sync) `gen` as its `wal_gen` with every record in both files
    /// applied: they are all old, and the next record goes to the start of `gen`'s file. Both
    /// files' first headers are zeroed and synced (best effort, as in [`Wal::retire`]).
    pub fn restart(&mut self, gen: u64) {
        self.gen = gen;
        self.end = 0;
        self.groups = 0;
        self.unapplied.clear();
        for f in &self.files {
            let _ = write_at(f, &[0u8; HEADER], 0).and_then(|()| f.sync_data());
        }
    }

    /// The file written now.
    pub fn path(&self) -> &Path {
        &self.paths[(self.gen % 2) as usize]
    }
}

// Fills `file` with zeros to WAL_BYTES (and syncs it) if it is shorter.
fn fill(file: &File) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len >= WAL_BYTES {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = len;
    let filled = (|| {
        while at < WAL_BYTES {
            let n = zeros.len().min((WAL_BYTES - at) as usize);
            write_at(file, &zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_all()
    })();
    match filled {
        Ok(()) => Ok(()),
        // A disk too full to hold it: give the space back and go on without it (records then
        // grow the file, and each sync costs more). Anything else is an error.
        Err(e) if e.kind() == io::ErrorKind::StorageFull => {
            file.set_len(len)?;
            file.sync_all()
        }
        Err(e) => Err(e),
    }
}

// The whole records of generation `gen` from the start of `file`, and where they end. No record
// has generation 0 (a store's first is 2), so a file of zeros has none.
fn records(file: &File, gen: u64) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let len = file.metadata()?.len();
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut head = [0u8; HEADER];
    while gen != 0 && at + HEADER as u64 <= len {
        read_at(file, &mut head, at)?;
        let g = u64::from_le_bytes(head[0..8].try_into().expect("8 bytes"));
        let n = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
        if g != gen || at + HEADER as u64 + n > len {
            break;
        }
        let mut payload = vec![0u8; n as usize];
        read_at(file, &mut payload, at + HEADER as u64)?;
        if checksum(&head[0..12], &payload) != crc {
            break;
        }
        out.push(payload);
        at += HEADER as u64 + n;
    }
    Ok((out, at))
}

/// The whole records at the start of the log's files in `dir`, without knowing redb's
/// generation (for `repair`, when the damaged file cannot say): each file's records of whatever
/// generation its first one has, the lower generation first. They are the current generations'
/// when they have any; otherwise older ones', already in redb, which the caller must tell apart
/// by sequence number.
pub(crate) fn read_at_start(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut found = Vec::new();
    for name in WAL_NAMES {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let file = File::open(&path)?;
        if file.metadata()?.len() < HEADER as u64 {
            continue;
        }
        let mut head = [0u8; 8];
        read_at(&file, &mut head, 0)?;
        let gen = u64::from_le_bytes(head);
        let (records, _) = records(&file, gen)?;
        if !records.is_empty() {
            found.push((gen, records));
        }
    }
    found.sort_by_key(|(gen, _)| *gen);
    Ok(found.into_iter().flat_map(|(_, r)| r).collect())
}

// Positional writes and reads: the log is written in place, never through a shared cursor.
#[cfg(unix)]
fn write_at(f: &File, buf: &[u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, at)
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, at)
}

#[cfg(windows)]
fn write_at(f: &File, mut buf: &[u8], mut at: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_write(buf, at)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => {
                buf = &buf[n..];
                at += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(windows)]
fn read_at(f: &File, mut buf: &mut [u8], mut at: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_read(buf, at)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                at += n as u64;
            }
        }
    }
    Ok(())
}

fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// One group's row operations, encoded: what a redb write transaction does to apply it.
#[derive(Debug, Default)]
pub(crate) struct Ops(pub Vec<u8>);

/// A decoded row operation.
#[derive(Debug, PartialEq)]
pub(crate) enum Op<'a> {
    EntryPut(&'a str, &'a [u8]),
    EntryDel(&'a str),
    LogPut(u64, &'a [u8]),
    HistoryPut(u64, &'a [u8]),
    HistoryDel(u64),
    ReceiptPut(u64, &'a [u8]),
    ReceiptDel(u64),
    /// The sequence number of the group's last change (then the log table is trimmed).
    LastSeq(u64),
}

impl Ops {
    pub fn push(&mut self, op: Op<'_>) {
        let b = &mut self.0;
        let bytes = |b: &mut Vec<u8>, v: &[u8]| {
            b.extend_from_slice(&(v.len() as u32).to_le_bytes());
            b.extend_from_slice(v);
        };
        match op {
            Op::EntryPut(k, v) => {
                b.push(1);
                bytes(b, k.as_bytes());
                bytes(b, v);
            }
            Op::EntryDel(k) => {
                b.push(2);
                bytes(b, k.as_bytes());
            }
            Op::LogPut(s, v) | Op::HistoryPut(s, v) | Op::ReceiptPut(s, v) => {
                b.push(match op {
                    Op::LogPut(..) => 3,
                    Op::HistoryPut(..) => 4,
                    _ => 6,
                });
                b.extend_from_slice(&s.to_le_bytes());
                bytes(b, v);
            }
            Op::HistoryDel(s) | Op::ReceiptDel(s) | Op::LastSeq(s) => {
                b.push(match op {
                    Op::HistoryDel(_) => 5,
                    Op::ReceiptDel(_) => 7,
                    _ => 8,
                });
                b.extend_from_slice(&s.to_le_bytes());
            }
        }
    }
}

/// The sequence number a group's record ends at (its [`Op::LastSeq`]), if it wrote changes.
pub(crate) fn last_seq(payload: &[u8]) -> Option<u64> {
    decode(payload).ok()?.iter().rev().find_map(|op| match op {
        Op::LastSeq(s) => Some(*s),
        _ => None,
    })
}

/// Decodes an encoded [`Ops`]; `Err` names what is wrong (a record that passed its checksum but
/// does not decode was written by a different build).
pub(crate) fn decode(mut b: &[u8]) -> Result<Vec<Op<'_>>, String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err("a write-ahead record ends inside an operation".into());
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn u64_(b: &mut &[u8]) -> Result<u64, String> {
        Ok(u64::from_le_bytes(take(b, 8)?.try_into().expect("8 bytes")))
    }
    fn bytes<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let n = u32::from_le_bytes(take(b, 4)?.try_into().expect("4 bytes")) as usize;
        take(b, n)
    }
    fn key<'a>(b: &mut &'a [u8]) -> Result<&'a str, String> {
        std::str::from_utf8(bytes(b)?)
            .map_err(|_| "a write-ahead record holds a key that is not UTF-8".into())
    }
    let mut out = Vec::new();
    while let Some((&tag, rest)) = b.split_first() {
        b = rest;
        out.push(match tag {
            1 => Op::EntryPut(key(&mut b)?, bytes(&mut b)?),
            2 => Op::EntryDel(key(&mut b)?),
            3 => Op::LogPut(u64_(&mut b)?, bytes(&mut b)?),
            4 => Op::HistoryPut(u64_(&mut b)?, bytes(&mut b)?),
            5 => Op::HistoryDel(u64_(&mut b)?),
            6 => Op::ReceiptPut(u64_(&mut b)?, bytes(&mut b)?),
            7 => Op::ReceiptDel(u64_(&mut b)?),
            8 => Op::LastSeq(u64_(&mut b)?),
            t => {
                return Err(format!(
                    "a write-ahead record holds an unknown operation {t}"
                ))
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(n: u64) -> Vec<u8> {
        let mut o = Ops::default();
        o.push(Op::EntryPut("a/b", b"value"));
        o.push(Op::EntryDel("c"));
        o.push(Op::LogPut(n, b"log"));
        o.push(Op::HistoryPut(n, b"h"));
        o.push(Op::HistoryDel(1));
        o.push(Op::ReceiptPut(n, b"r"));
        o.push(Op::ReceiptDel(2));
        o.push(Op::LastSeq(n));
        o.0
    }

    #[test]
    fn operations_round_trip_and_garbage_is_refused() {
        let b = ops(7);
        let d = decode(&b).unwrap();
        assert_eq!(d.len(), 8);
        assert_eq!(d[0], Op::EntryPut("a/b", b"value"));
        assert_eq!(d[7], Op::LastSeq(7));
        assert!(decode(&b[..b.len() - 1]).is_err());
        assert!(decode(&[9]).is_err());
        // Any bytes (a record from another build that passed its checksum): an error or
        // operations, never a panic. Every cut of a valid record, and every byte flipped.
        for n in 0..b.len() {
            let _ = decode(&b[..n]);
            let mut flipped = b.clone();
            flipped[n] ^= 0xff;
            let _ = decode(&flipped);
        }
        assert_eq!(last_seq(&b), Some(7));
        assert_eq!(last_seq(&Ops::default().0), None);
    }

    #[test]
    fn only_whole_records_of_the_current_generations_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = Faults::default();
        let mut w = Wal::open(dir.path(), 2).unwrap();
        for file in &w.files {
            assert_eq!(file.metadata().unwrap().len(), WAL_BYTES, "filled");
        }
        for i in 0..3 {
            w.append(&ops(i), &f).unwrap();
        }
        let end = w.end;
        // A fourth record torn in the middle (a crash during its write).
        let mut torn = Wal::open(dir.path(), 2).unwrap();
        torn.end = end;
        torn.append(&ops(3), &f).unwrap();
        write_at(&torn.files[0], &[0xff; 3], end + 20).unwrap();
        let mut r = Wal::open(dir.path(), 2).unwrap();
        assert_eq!(r.read(2).unwrap(), vec![ops(0), ops(1), ops(2)]);
        // A checkpoint takes generation 2's groups and the log goes on with generation 3 in the
        // other file: a start whose redb has generation 2 applies both, one with 3 only the
        // second.
        r.unapplied = vec![ops(0), ops(1), ops(2)];
        assert_eq!(r.next_generation(), vec![ops(0), ops(1), ops(2)]);
        assert!(r.unapplied.is_empty());
        assert_eq!((r.gen, r.end, r.groups), (3, 0, 0));
        r.append(&ops(4), &f).unwrap();
        r.append(&ops(5), &f).unwrap();
        assert_eq!(
            r.read(2).unwrap(),
            vec![ops(0), ops(1), ops(2), ops(4), ops(5)]
        );
        assert_eq!(r.read(3).unwrap(), vec![ops(4), ops(5)]);
        // Once redb holds generation 2, its file no longer starts with its records.
        r.retire(2);
        assert_eq!(r.read(2).unwrap(), vec![ops(4), ops(5)]);
        assert_eq!(read_at_start(dir.path()).unwrap(), vec![ops(4), ops(5)]);
        // The next generation after that goes back to the first file, over the old records.
        r.unapplied = vec![ops(4), ops(5)];
        r.next_generation();
        r.append(&ops(6), &f).unwrap();
        assert_eq!(r.read(3).unwrap(), vec![ops(4), ops(5), ops(6)]);
        assert_eq!(r.read(4).unwrap(), vec![ops(6)]);
        assert_eq!(
            read_at_start(dir.path()).unwrap(),
            vec![ops(4), ops(5), ops(6)],
            "the older generation first"
        );
        // A start applied everything: no record is current any more; new ones overwrite them.
        r.restart(6);
        assert!(r.read(4).unwrap().is_empty());
        assert!(read_at_start(dir.path()).unwrap().is_empty());
        r.append(&ops(9), &f).unwrap();
        let again = Wal::open(dir.path(), 6).unwrap();
        assert_eq!(again.read(6).unwrap(), vec![ops(9)]);
        assert!(again.read(7).unwrap().is_empty());
        // A store without a generation empties both files.
        let emptied = Wal::open(dir.path(), 0).unwrap();
        assert!(emptied.read(6).unwrap().is_empty());
        assert!(read_at_start(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_generation_in_the_first_file_is_found_whatever_its_number() {
        // A store from before the log had two files wrote every generation to the first.
        let dir = tempfile::tempdir().unwrap();
        let f = Faults::default();
        let mut w = Wal::open(dir.path(), 7).unwrap();
        w.append(&ops(1), &f).unwrap();
        w.append(&ops(2), &f).unwrap();
        let [first, second] = WAL_NAMES.map(|n| dir.path().join(n));
        std::fs::copy(&second, &first).unwrap();
        write_at(&w.files[1], &[0u8; HEADER], 0).unwrap();
        let r = Wal::open(dir.path(), 7).unwrap();
        assert_eq!(r.read(7).unwrap(), vec![ops(1), ops(2)]);
        assert_eq!(read_at_start(dir.path()).unwrap(), vec![ops(1), ops(2)]);
    }

    #[test]
    fn a_failed_sync_leaves_no_record_behind() {
        let dir = tempfile::tempdir().unwrap();
        let f = Faults::default();
        let mut w = Wal::open(dir.path(), 5).unwrap();
        w.append(&ops(1), &f).unwrap();
        f.sync.store(true, Relaxed);
        assert!(w.append(&ops(2), &f).is_err());
        f.sync.store(false, Relaxed);
        let r = Wal::open(dir.path(), 5).unwrap();
        assert_eq!(
            r.read(5).unwrap(),
            vec![ops(1)],
            "the failed record is not read back"
        );
        f.full.store(true, Relaxed);
        assert!(
            w.append(&ops(3), &f).is_err(),
            "a full disk fails the append"
        );
        f.full.store(false, Relaxed);
        w.append(&ops(4), &f).unwrap();
        let r = Wal::open(dir.path(), 5).unwrap();
        assert_eq!(r.read(5).unwrap(), vec![ops(1), ops(4)]);
    }
}

//! The write-ahead log in front of redb: where a group of writes becomes durable.
//!
//! A redb commit writes and syncs every page its change touched (on a store of some size, a dozen
//! pages scattered over the file for one small write: the B-tree paths of the entries, the log,
//! the metadata, the allocator's state). The log instead writes one record, in place, into a file
//! that was filled with zeros when it was created, and syncs it with `fdatasync`: one sequential
//! write and no change to the file's size to journal. A group is acknowledged once its record is
//! synced, and kept in memory (`Wal::unapplied`); every [`CHECKPOINT_GROUPS`] groups (or
//! [`CHECKPOINT_BYTES`] of records) one redb commit with a sync applies all of them and makes them
//! durable in redb, and the log starts over from its beginning. Applying each group to redb on
//! its own, even without a sync, cost most of a durable write's CPU (redb rebuilds the B-tree
//! pages a commit touches): one commit for all of them rebuilds a page once.
//!
//! Generations tell the current records from old ones left in the file. redb's `meta` table holds
//! the generation (`"wal_gen"`) whose records are not yet known to be in redb; each record carries
//! its generation. A checkpoint commits the next generation number together with redb's pages, so
//! after it every record in the file is old. At start (and after a failed commit re-opened redb)
//! the records of the current generation are applied again, in order, up to the first one that
//! is not whole: every operation in a record sets or removes a row, so applying one twice changes
//! nothing. A torn last record (a crash during its write) fails its checksum and was never
//! acknowledged.
//!
//! Record: generation (u64) · payload length (u32) · CRC-32 of the three (u32) · payload. The
//! payload is the list of row operations of one group (`Ops`), all little-endian.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use crate::backend::Faults;

/// The log's file inside the data directory.
pub const WAL_NAME: &str = "stateline.wal";

/// Size the log's file is filled to when it is created. Records are written in place inside it, so
/// a sync has no file growth to record. Twice [`CHECKPOINT_BYTES`]: the records of one generation
/// stay inside it unless one group alone is larger (a group past the end still works: the file
/// grows, and that sync costs more). On a disk with less free space than this the file is not
/// filled (and records grow it).
pub const WAL_BYTES: u64 = 2 * CHECKPOINT_BYTES;

/// A checkpoint is due after this many groups. Until it they wait in memory (their payloads, a few
/// hundred bytes each for ordinary writes), and a start after a crash applies them again; the
/// checkpoint applies them all in one synced redb commit, which rebuilds each B-tree page they
/// touch once, and the writes that come while it runs wait for it.
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

const HEADER: usize = 16;

/// The log file, the generation being written and where the next record goes.
///
/// The payloads are what [`Wal::read`] returns; each one's last sequence number (if it wrote
/// changes) is found with [`last_seq`].
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    /// The generation of the records written now.
    pub gen: u64,
    /// Where the next record goes (the end of this generation's records).
    pub end: u64,
    /// Groups written in this generation.
    pub groups: u32,
    /// The payloads of this generation's records not yet applied to redb, in order: a group is
    /// applied at the next checkpoint, with every other one since the last, in its one synced
    /// commit (or before a backup reads redb). Bounded as the records are ([`CHECKPOINT_BYTES`]
    /// plus one group, or [`CHECKPOINT_GROUPS`] groups).
    pub unapplied: Vec<Vec<u8>>,
}

impl Wal {
    /// Opens the log in `dir`, creating it (filled with zeros to [`WAL_BYTES`] and synced) when it
    /// is missing or shorter. `gen` is redb's `wal_gen`: 0 for a store that has none (new,
    /// restored or repaired), whose log file, if any, is left over from another store and is
    /// emptied first (its generations would otherwise start over and could match old records).
    pub fn open(dir: &Path, gen: u64) -> io::Result<Wal> {
        let path = dir.join(WAL_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(gen == 0)
            .open(&path)?;
        let len = file.metadata()?.len();
        if len < WAL_BYTES {
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            let filled = (|| {
                while at < WAL_BYTES {
                    let n = zeros.len().min((WAL_BYTES - at) as usize);
                    write_at(&file, &zeros[..n], at)?;
                    at += n as u64;
                }
                file.sync_all()
            })();
            if let Err(e) = filled {
                // A disk too full to hold it: give the space back and go on without it (records
                // then grow the file, and each sync costs more). Anything else is an error.
                if e.kind() != io::ErrorKind::StorageFull {
                    return Err(e);
                }
                file.set_len(len)?;
                file.sync_all()?;
            }
            crate::sync_dir(dir);
        }
        Ok(Wal {
            file,
            path,
            gen,
            end: 0,
            groups: 0,
            unapplied: Vec::new(),
        })
    }

    /// The payloads of this generation's whole records, in order, and sets `end` after the last.
    pub fn read(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let (out, end) = records(&self.file, self.gen)?;
        self.end = end;
        self.groups = out.len() as u32;
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
        let r = faults.check().and_then(|()| {
            write_at(&self.file, &rec, self.end)?;
            if faults.sync.load(Relaxed) {
                return Err(io::Error::other("fsync failed (injected)"));
            }
            self.file.sync_data()
        });
        match r {
            Ok(()) => {
                self.end += rec.len() as u64;
                self.groups += 1;
                Ok(())
            }
            Err(e) => {
                let _ = write_at(&self.file, &[0u8; HEADER], self.end)
                    .and_then(|()| self.file.sync_data());
                Err(e)
            }
        }
    }

    /// Whether the records of this generation are enough for a checkpoint.
    pub fn checkpoint_due(&self) -> bool {
        self.groups >= CHECKPOINT_GROUPS || self.end >= CHECKPOINT_BYTES
    }

    /// After redb committed (with a sync) `gen` as its `wal_gen`: every record in the file is
    /// old, and the next one goes to the start. The first record's header is zeroed (and synced),
    /// so the file no longer starts with a chain of old records, which `repair` (reading the log
    /// without redb's generation) would otherwise take for the current ones. That is best effort:
    /// a start does not depend on it.
    pub fn restart(&mut self, gen: u64) {
        self.gen = gen;
        self.end = 0;
        self.groups = 0;
        self.unapplied.clear();
        let _ = write_at(&self.file, &[0u8; HEADER], 0).and_then(|()| self.file.sync_data());
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

// The whole records of generation `gen` from the start of `file`, and where they end.
fn records(file: &File, gen: u64) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let len = file.metadata()?.len();
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut head = [0u8; HEADER];
    while at + HEADER as u64 <= len {
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

/// The whole records at the start of the log file at `path`, of whatever generation the first
/// one has, without knowing redb's (for `repair`, when the damaged file cannot say). They are
/// the current generation's when it has any; otherwise an older one's, already in redb, which
/// the caller must tell apart by sequence number.
pub(crate) fn read_at_start(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let file = File::open(path)?;
    let mut head = [0u8; 8];
    if file.metadata()?.len() < HEADER as u64 {
        return Ok(Vec::new());
    }
    read_at(&file, &mut head, 0)?;
    match u64::from_le_bytes(head) {
        0 => Ok(Vec::new()),
        gen => Ok(records(&file, gen)?.0),
    }
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
    fn only_whole_records_of_the_current_generation_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = Faults::default();
        let mut w = Wal::open(dir.path(), 1).unwrap();
        assert_eq!(w.file.metadata().unwrap().len(), WAL_BYTES, "filled");
        for i in 0..3 {
            w.append(&ops(i), &f).unwrap();
        }
        let end = w.end;
        // A fourth record torn in the middle (a crash during its write).
        let mut torn = Wal::open(dir.path(), 1).unwrap();
        torn.end = end;
        torn.append(&ops(3), &f).unwrap();
        write_at(&torn.file, &[0xff; 3], end + 20).unwrap();
        let mut r = Wal::open(dir.path(), 1).unwrap();
        let got = r.read().unwrap();
        assert_eq!(got, vec![ops(0), ops(1), ops(2)]);
        assert_eq!(r.end, end);
        // The next generation: none of them is current any more; new records overwrite them.
        r.restart(2);
        r.append(&ops(9), &f).unwrap();
        let mut again = Wal::open(dir.path(), 2).unwrap();
        assert_eq!(again.read().unwrap(), vec![ops(9)]);
        let mut old = Wal::open(dir.path(), 1).unwrap();
        assert!(old.read().unwrap().is_empty());
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
        let mut r = Wal::open(dir.path(), 5).unwrap();
        assert_eq!(
            r.read().unwrap(),
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
        let mut r = Wal::open(dir.path(), 5).unwrap();
        assert_eq!(r.read().unwrap(), vec![ops(1), ops(4)]);
    }
}

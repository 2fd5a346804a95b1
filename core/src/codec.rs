//! The byte layout of stored entries and change-log records, shared by every adapter's storage
//! (the native server's redb file, the edge worker's Durable Object SQLite), so a record means the
//! same everywhere and a backup could move between them.
//!
//! Owns only encoding and decoding; it never decides what to store or when. All integers are
//! little-endian and 64-bit: timestamps in nanoseconds do not fit a JavaScript number, so the
//! edge stores these bytes as blobs rather than as separate integer columns.
//!
//! - entry: `created i64, updated i64, revision u64, seq u64, expires i64 (i64::MIN for none),
//!   JSON value bytes`
//! - log record: `revision u64, existed u8, present u8, key length u32, key, [created before the
//!   change i64 if existed], [entry]`

use crate::store::Key;

use crate::store::{Change, Entry, JsonText, MaybeTime};

/// A record that cannot be decoded: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record {0}")]
pub struct Corrupt(pub String);

/// A decoded change-log record: `(seq, key, revision, created before the change, entry)`, as
/// [`crate::log::Log::restore`] takes it.
pub type LogRecord = (u64, Key, u64, Option<i64>, Option<Entry>);

/// Appends an entry's bytes to `out`.
pub fn encode_entry(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(&e.created.to_le_bytes());
    out.extend_from_slice(&e.updated.to_le_bytes());
    out.extend_from_slice(&e.revision.to_le_bytes());
    out.extend_from_slice(&e.seq.to_le_bytes());
    out.extend_from_slice(&e.expires.get().unwrap_or(i64::MIN).to_le_bytes());
    out.extend_from_slice(&e.json);
}

fn take8(b: &[u8], at: usize) -> Result<[u8; 8], Corrupt> {
    b.get(at..at.saturating_add(8))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Corrupt("short entry".into()))
}

/// Decodes an entry. Its JSON is checked here (a corrupt record is refused, never stored) but
/// not kept as a tree: that is built when first needed ([`Entry::data`]).
pub fn decode_entry(b: &[u8]) -> Result<Entry, Corrupt> {
    let created = i64::from_le_bytes(take8(b, 0)?);
    let updated = i64::from_le_bytes(take8(b, 8)?);
    let revision = u64::from_le_bytes(take8(b, 16)?);
    let seq = u64::from_le_bytes(take8(b, 24)?);
    let expires = i64::from_le_bytes(take8(b, 32)?);
    let json = &b[40..];
    crate::json::check_stored(json).map_err(|e| Corrupt(format!("value of seq {seq}: {e}")))?;
    let (tree, json) = Entry::from_json(JsonText::from(json));
    Ok(Entry {
        created,
        updated,
        revision,
        seq,
        expires: MaybeTime::from((expires != i64::MIN).then_some(expires)),
        json,
        tree,
    })
}

/// A change as a change-log record (its sequence number is the record's key, not in the bytes).
pub fn encode_log(c: &Change) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(64 + c.key.len() + c.entry.as_ref().map_or(0, |e| e.json.len()));
    out.extend_from_slice(&c.revision.to_le_bytes());
    out.push(c.prev.is_some() as u8);
    out.push(c.entry.is_some() as u8);
    out.extend_from_slice(&(c.key.len() as u32).to_le_bytes());
    out.extend_from_slice(c.key.as_bytes());
    if let Some(p) = &c.prev {
        out.extend_from_slice(&p.created.to_le_bytes());
    }
    if let Some(e) = &c.entry {
        encode_entry(&mut out, e);
    }
    out
}

/// Decodes the change-log record stored under `seq`.
pub fn decode_log(seq: u64, b: &[u8]) -> Result<LogRecord, Corrupt> {
    let bad = || Corrupt(format!("log record {seq}"));
    let revision = u64::from_le_bytes(take8(b, 0)?);
    let existed = *b.get(8).ok_or_else(bad)? != 0;
    let present = *b.get(9).ok_or_else(bad)? != 0;
    let klen = u32::from_le_bytes(
        b.get(10..14)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(bad)?,
    ) as usize;
    // The length is read from the record: on a 32-bit target (the edge worker's wasm32) `14 +
    // klen` can overflow `usize`, so the end is computed with a check.
    let end = 14usize.checked_add(klen).ok_or_else(bad)?;
    let key = std::str::from_utf8(b.get(14..end).ok_or_else(bad)?).map_err(|_| bad())?;
    let mut at = end;
    let prev_created = if existed {
        at += 8;
        Some(i64::from_le_bytes(take8(b, at - 8)?))
    } else {
        None
    };
    let entry = if present {
        Some(decode_entry(b.get(at..).ok_or_else(bad)?)?)
    } else {
        None
    };
    Ok((seq, key.into(), revision, prev_created, entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Engine, Filters, Op, Tick, Ttl};

    #[test]
    fn entries_and_log_records_round_trip() {
        let t = Tick {
            wall_ns: 1_700_000_000_000_000_000,
            mono_ns: 5,
        };
        let mut e = Engine::new(t, Config::default(), Filters::default());
        let set = |e: &mut Engine, v: serde_json::Value| {
            e.execute_as_system(
                t,
                Op::Set {
                    key: "a/b".into(),
                    value: v.into(),
                    ttl: Ttl::After(1_000_000_000),
                    cond: Default::default(),
                },
            )
            .unwrap()
            .changes
        };
        set(&mut e, serde_json::json!({"x": 1}));
        let c = set(&mut e, serde_json::json!({"x": [1, "two"]})).remove(0);
        let (seq, key, rev, prev, entry) = decode_log(c.seq, &encode_log(&c)).unwrap();
        let entry = entry.unwrap();
        assert_eq!((seq, &*key, rev), (c.seq, "a/b", 1));
        assert_eq!(prev, c.prev.as_ref().map(|p| p.created));
        let want = c.entry.as_ref().unwrap();
        assert_eq!(
            (
                entry.created,
                entry.updated,
                entry.revision,
                entry.seq,
                entry.expires
            ),
            (
                want.created,
                want.updated,
                want.revision,
                want.seq,
                want.expires
            )
        );
        assert_eq!((&entry.json, entry.data()), (&want.json, want.data()));
        assert!(decode_entry(&[1, 2, 3]).is_err());
        // A value the parser would refuse is a corrupt record, not a tree that fails later.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in [&b"[1,"[..], b"\"\xff\"", b"\"\\ud800\"", deep.as_bytes()] {
            let mut b = Vec::new();
            encode_entry(&mut b, want);
            b.truncate(40);
            b.extend_from_slice(bad);
            assert!(
                decode_entry(&b).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode_log(9, &[0; 12]).is_err());
    }

    #[test]
    fn lengths_past_the_record_are_corrupt_not_a_panic() {
        // A key length of u32::MAX: past the end of any record, and past usize::MAX on wasm32
        // when 14 is added without a check.
        let mut rec = vec![0u8; 8];
        rec.extend_from_slice(&[1, 1]);
        rec.extend_from_slice(&u32::MAX.to_le_bytes());
        rec.extend_from_slice(b"key");
        assert!(decode_log(1, &rec).is_err());
        // A key that fits, then the previous `created` cut short.
        let mut rec = vec![0u8; 8];
        rec.extend_from_slice(&[1, 0]);
        rec.extend_from_slice(&3u32.to_le_bytes());
        rec.extend_from_slice(b"key\x01\x02");
        assert_eq!(decode_log(1, &rec), Err(Corrupt("short entry".into())));
    }
}

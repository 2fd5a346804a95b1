//! Key history: the last versions of each key (`GET /<key>?history=N`).
//!
//! Owns, per key, its latest versions (a write's value, or a delete), newest last, bounded per
//! key ([`Limits::keep`], the server's `--history`) and in total bytes ([`Limits::max_bytes`]:
//! the oldest versions of the whole store go first). It is fed every change the engine applies
//! (with the time it was applied), independently of the change log, so trimming the log for
//! resumes never shortens a key's history. What it adds and drops is queued as a [`Delta`]
//! for the adapter's storage (a redb table natively, a SQLite table at the edge), written in the
//! same transaction as the changes; at start the stored versions are given back
//! ([`History::restore`]) and trimmed to the limits again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::Corrupt;
use crate::store::Change;

/// Versions kept per key by default (`--history`). A history is for "what did this hold
/// lately, who changed it when": a few dozen versions answer that, and a hot key written a
/// thousand times a second must not keep thousands.
pub const DEFAULT_KEEP: usize = 32;

/// Bytes of values (plus [`OVERHEAD`] per version) kept for every key's history together, by
/// default (`--history-bytes`). Keys are created and deleted forever (push lists with limits),
/// and a deleted key keeps its history, so a per-key bound alone would grow without end.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// Bookkeeping bytes charged per version on top of its key and value.
pub const OVERHEAD: usize = 64;

/// The bounds of a [`History`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Versions kept per key, and the largest `?history=N` accepted; 0 turns history off.
    pub keep: usize,
    /// Bytes kept in total (see [`DEFAULT_MAX_BYTES`]).
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            keep: DEFAULT_KEEP,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The store sequence number of the change.
    pub seq: u64,
    /// The key's revision after the change (a delete: the previous revision plus one).
    pub revision: u64,
    /// Clock time the change was applied (ns, as `created`/`updated`).
    pub updated: i64,
    /// The value's JSON, or `None` for a delete.
    pub json: Option<Bytes>,
}

impl Version {
    fn cost(&self, key: &str) -> usize {
        OVERHEAD + key.len() + self.json.as_ref().map_or(0, Bytes::len)
    }
}

/// What storage must do to hold the same history as memory: write these versions (keyed by
/// their sequence number; the bytes are [`encode`]d), then remove these sequence numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// `(seq, encoded version)` to write.
    pub put: Vec<(u64, Vec<u8>)>,
    /// Sequence numbers to remove.
    pub drop: Vec<u64>,
}

impl Delta {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.drop.is_empty()
    }
}

/// The histories of every key. See the module docs.
#[derive(Debug, Default)]
pub struct History {
    keys: HashMap<Arc<str>, VecDeque<Version>>,
    // Every kept version by sequence number: the oldest of the store goes first.
    order: BTreeMap<u64, Arc<str>>,
    bytes: usize,
    limits: Limits,
    delta: Delta,
    // Whether storage takes the delta (else nothing is queued for it).
    stored: bool,
}

impl History {
    /// An empty history with these bounds.
    pub fn new(limits: Limits) -> History {
        History {
            limits,
            ..History::default()
        }
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Versions kept, over all keys.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bytes charged to the kept versions.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records a change applied at clock time `at` (a delete's time; a write's own
    /// `updated`, or `created` for a new key, is used instead).
    pub fn push(&mut self, c: &Change, at: i64) {
        if self.limits.keep == 0 {
            return;
        }
        let v = Version {
            seq: c.seq,
            revision: c.revision,
            updated: c.entry.as_ref().map_or(at, |e| {
                if e.updated != 0 {
                    e.updated
                } else {
                    e.created
                }
            }),
            json: c.entry.as_ref().map(|e| e.json.clone()),
        };
        if self.stored {
            self.delta.put.push((v.seq, encode(&c.key, &v)));
        }
        self.insert(c.key.clone(), v);
    }

    fn insert(&mut self, key: Arc<str>, v: Version) {
        self.bytes += v.cost(&key);
        self.order.insert(v.seq, key.clone());
        // Most keys are written once or a few times: room for one version at first, not the
        // four a first push would allocate (a version is 56 bytes, for every key).
        let versions = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| VecDeque::with_capacity(1));
        versions.push_back(v);
        while versions.len() > self.limits.keep {
            let old = versions.pop_front().expect("longer than keep");
            self.bytes -= old.cost(&key);
            self.order.remove(&old.seq);
            if self.stored {
                self.delta.drop.push(old.seq);
            }
        }
        while self.bytes > self.limits.max_bytes && self.order.len() > 1 {
            let Some((seq, k)) = self.order.pop_first() else {
                break;
            };
            self.remove_oldest(&k, seq);
        }
    }

    // Removes `k`'s oldest version, which is `seq` (the store's oldest).
    fn remove_oldest(&mut self, k: &Arc<str>, seq: u64) {
        if let Some(versions) = self.keys.get_mut(k) {
            if let Some(old) = versions.pop_front() {
                debug_assert_eq!(old.seq, seq);
                self.bytes -= old.cost(k);
            }
            if versions.is_empty() {
                self.keys.remove(k);
            }
        }
        if self.stored {
            self.delta.drop.push(seq);
        }
    }

    /// Forgets changes from `seq` on (their durable commit failed and they were reverted; they
    /// are the newest of their keys). Versions their pushes trimmed are not brought back.
    pub fn undo_from(&mut self, seq: u64) {
        let gone: Vec<(u64, Arc<str>)> = self
            .order
            .range(seq..)
            .map(|(s, k)| (*s, k.clone()))
            .collect();
        for (s, k) in gone {
            self.order.remove(&s);
            if let Some(versions) = self.keys.get_mut(&k) {
                if let Some(pos) = versions.iter().rposition(|v| v.seq == s) {
                    let v = versions.remove(pos).expect("found");
                    self.bytes -= v.cost(&k);
                }
                if versions.is_empty() {
                    self.keys.remove(&k);
                }
            }
        }
        self.delta.put.retain(|(s, _)| *s < seq);
    }

    /// Says that storage keeps this history: from now on every version added or dropped is
    /// queued for [`History::take_delta`] (without storage nothing is queued).
    pub fn store_in_storage(&mut self) {
        self.stored = true;
    }

    /// Takes what storage must write since the last call.
    pub fn take_delta(&mut self) -> Delta {
        std::mem::take(&mut self.delta)
    }

    /// A history given back by storage: `rows` are `(seq, encoded version)` in any order. Rows
    /// beyond the limits (a smaller `--history`, or a crash between a write and the removal of
    /// what it trimmed) are dropped again and queued in the delta for storage to remove.
    pub fn restore(
        limits: Limits,
        rows: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> Result<History, Corrupt> {
        let mut h = History::new(limits);
        h.stored = true;
        let mut decoded = Vec::new();
        for (seq, bytes) in rows {
            let (key, v) = decode(seq, &bytes)?;
            decoded.push((key, v));
        }
        decoded.sort_by_key(|(_, v)| v.seq);
        for (key, v) in decoded {
            if limits.keep == 0 {
                h.delta.drop.push(v.seq);
            } else {
                h.insert(key, v);
            }
        }
        Ok(h)
    }

    /// The newest `n` versions of `key`, newest first.
    pub fn versions(&self, key: &str, n: usize) -> Vec<&Version> {
        self.keys
            .get(key)
            .map(|v| v.iter().rev().take(n).collect())
            .unwrap_or_default()
    }

    /// The JSON array `GET /<key>?history=N` answers: newest first,
    /// `{"revision","updated","data"}` or `{"revision","updated","deleted":true}`.
    pub fn json(&self, key: &str, n: usize) -> Vec<u8> {
        let mut out = Vec::from(&b"["[..]);
        for (i, v) in self.versions(key, n).into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(
                format!(
                    "{{\"revision\":{},\"updated\":{},\"version\":\"{:x}\",",
                    v.revision, v.updated, v.seq
                )
                .as_bytes(),
            );
            match &v.json {
                Some(j) => {
                    out.extend_from_slice(b"\"data\":");
                    out.extend_from_slice(j);
                }
                None => out.extend_from_slice(b"\"deleted\":true"),
            }
            out.push(b'}');
        }
        out.push(b']');
        out
    }
}

/// A stored version's bytes: `u32` key length (LE), the key, `u64` revision, `i64` time,
/// `u8` 1 (a value, its JSON follows) or 0 (a delete).
pub fn encode(key: &str, v: &Version) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + key.len() + v.json.as_ref().map_or(0, Bytes::len));
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&v.revision.to_le_bytes());
    out.extend_from_slice(&v.updated.to_le_bytes());
    match &v.json {
        Some(j) => {
            out.push(1);
            out.extend_from_slice(j);
        }
        None => out.push(0),
    }
    out
}

/// Reads [`encode`]'s bytes back (the sequence number is the row's key).
pub fn decode(seq: u64, b: &[u8]) -> Result<(Arc<str>, Version), Corrupt> {
    let bad = || Corrupt(format!("history record {seq} is truncated or malformed"));
    let len =
        u32::from_le_bytes(b.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let rest = &b[4..];
    let key = std::str::from_utf8(rest.get(..len).ok_or_else(bad)?).map_err(|_| bad())?;
    let rest = &rest[len..];
    let num = |r: &[u8]| -> Result<[u8; 8], Corrupt> {
        r.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())
    };
    let revision = u64::from_le_bytes(num(rest)?);
    let updated = i64::from_le_bytes(num(&rest[8..])?);
    let json = match rest.get(16) {
        Some(1) => Some(Bytes::copy_from_slice(&rest[17..])),
        Some(0) if rest.len() == 17 => None,
        _ => return Err(bad()),
    };
    Ok((
        key.into(),
        Version {
            seq,
            revision,
            updated,
            json,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Entry;

    fn change(seq: u64, key: &str, revision: u64, value: Option<&str>) -> Change {
        Change {
            seq,
            key: key.into(),
            revision,
            entry: value.map(|v| {
                let (tree, json) = Entry::value(serde_json::from_str(v).unwrap());
                Entry {
                    created: 10,
                    updated: seq as i64 * 100,
                    revision,
                    seq,
                    expires: None,
                    json,
                    tree,
                }
            }),
            prev: None,
            patch: None,
        }
    }

    #[test]
    fn keeps_the_newest_per_key_newest_first_with_deletes() {
        let mut h = History::new(Limits {
            keep: 3,
            max_bytes: 1 << 20,
        });
        h.store_in_storage();
        h.push(&change(1, "a", 0, Some("1")), 0);
        h.push(&change(2, "b", 0, Some("\"x\"")), 0);
        h.push(&change(3, "a", 1, Some("2")), 0);
        h.push(&change(4, "a", 2, None), 444);
        h.push(&change(5, "a", 0, Some("{\"z\":3}")), 0);
        let v = h.versions("a", 10);
        assert_eq!(
            v.iter().map(|v| v.seq).collect::<Vec<_>>(),
            vec![5, 4, 3],
            "the oldest beyond 3 is dropped"
        );
        assert_eq!(v[1].json, None);
        assert_eq!(v[1].updated, 444);
        assert_eq!(
            String::from_utf8(h.json("a", 2)).unwrap(),
            r#"[{"revision":0,"updated":500,"version":"5","data":{"z":3}},{"revision":2,"updated":444,"version":"4","deleted":true}]"#
        );
        assert_eq!(h.json("nothing", 5), b"[]");
        let d = h.take_delta();
        assert_eq!(d.put.len(), 5);
        assert_eq!(d.drop, vec![1]);
        assert!(h.take_delta().is_empty());
    }

    #[test]
    fn the_total_bound_drops_the_oldest_of_the_store() {
        let one = OVERHEAD + 1 + 1;
        let mut h = History::new(Limits {
            keep: 10,
            max_bytes: one * 3,
        });
        h.store_in_storage();
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            h.push(&change(i as u64 + 1, k, 0, Some("1")), 0);
        }
        assert_eq!(h.len(), 3);
        assert!(h.versions("a", 5).is_empty());
        assert_eq!(h.bytes(), one * 3);
        assert_eq!(h.take_delta().drop, vec![1]);
    }

    #[test]
    fn restores_what_was_stored_and_trims_to_new_limits() {
        let mut h = History::new(Limits::default());
        h.store_in_storage();
        for i in 1..=5 {
            h.push(&change(i, "名前/😀", i - 1, Some(&i.to_string())), 0);
        }
        h.push(&change(6, "名前/😀", 5, None), 777);
        let rows = h.take_delta().put;
        let back = History::restore(Limits::default(), rows.clone()).unwrap();
        assert_eq!(back.json("名前/😀", 10), h.json("名前/😀", 10));
        let mut small = History::restore(
            Limits {
                keep: 2,
                max_bytes: 1 << 20,
            },
            rows.into_iter().rev(),
        )
        .unwrap();
        assert_eq!(
            small
                .versions("名前/😀", 10)
                .iter()
                .map(|v| v.seq)
                .collect::<Vec<_>>(),
            vec![6, 5]
        );
        assert_eq!(small.take_delta().drop, vec![1, 2, 3, 4]);
        assert!(decode(1, &[1, 0]).is_err());
        assert!(decode(1, &[]).is_err());
    }

    #[test]
    fn undo_forgets_reverted_changes() {
        let mut h = History::new(Limits::default());
        h.store_in_storage();
        h.push(&change(1, "a", 0, Some("1")), 0);
        h.take_delta();
        h.push(&change(2, "a", 1, Some("2")), 0);
        h.push(&change(3, "b", 0, Some("2")), 0);
        h.undo_from(2);
        assert_eq!(h.len(), 1);
        assert!(h.versions("b", 1).is_empty());
        assert!(h.take_delta().put.is_empty());
        // Without storage nothing is queued.
        let mut m = History::new(Limits::default());
        m.push(&change(1, "a", 0, Some("1")), 0);
        assert!(m.take_delta().is_empty());
    }
}

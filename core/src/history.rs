//! Key history: the last versions of each key (`GET /<key>?history=N`).
//!
//! Owns, per key, its latest versions (a write's value, or a delete), newest last, bounded per
//! key ([`Limits::keep`], the server's `--history`) and in total bytes ([`Limits::max_bytes`]:
//! the oldest versions of the whole store go first). It is fed every change the engine applies
//! (with the time it was applied), independently of the change log, so trimming the log for
//! resumes never shortens a key's history.
//!
//! A key's current value is not kept here: the store holds it, and a reader shows it first
//! ([`History::json`] takes it). A write moves the value it replaces in (a key written once has
//! no history record at all, in memory or on disk); a delete moves the deleted value in, then
//! the delete itself, which stays the newest version until the key is written again.
//!
//! What it adds and drops is queued as a [`Delta`] for the adapter's storage (a redb table natively, a SQLite table at the edge), written in the
//! same transaction as the changes; at start the stored versions are given back
//! ([`History::restore`]) and trimmed to the limits again.

use crate::store::Key;
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::codec::Corrupt;
use crate::store::{Change, JsonText};

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
    pub json: Option<JsonText>,
}

impl Version {
    fn cost(&self, key: &str) -> usize {
        OVERHEAD + key.len() + self.json.as_ref().map_or(0, |j| j.len())
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
    keys: HashMap<Key, VecDeque<Version>>,
    // Every kept version by sequence number: the oldest of the store goes first.
    order: BTreeMap<u64, Key>,
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

    /// Records a change applied at clock time `at` (a delete's time): the value it replaced or
    /// deleted becomes a version here, and so does a delete. A write's new value stays in the
    /// store only.
    pub fn push(&mut self, c: &Change, at: i64) {
        let keep = self.limits.keep;
        if keep == 0 {
            return;
        }
        // A key that exists shows its current value as one of its `keep` newest versions.
        let live = c.entry.is_some();
        let room = keep - usize::from(live);
        let replaced = c.prev.as_ref().filter(|_| room > 0).map(|prev| Version {
            seq: prev.seq,
            revision: prev.revision,
            updated: written_at(prev),
            json: Some(prev.json.clone()),
        });
        let deleted = (!live).then(|| Version {
            seq: c.seq,
            revision: c.revision,
            updated: at,
            json: None,
        });
        if replaced.is_none() && deleted.is_none() {
            // A key's first write: it may still have versions from before a delete.
            self.trim(&c.key, room);
        } else {
            self.add(&c.key, replaced.into_iter().chain(deleted), true, room);
        }
        self.bound_total();
    }

    // Keeps `versions` as `key`'s newest, in order, then drops its oldest beyond `room`, with
    // one lookup of the key (every write of a key written before runs this); `write`: queue
    // them for storage (else they are there).
    fn add(
        &mut self,
        key: &Key,
        versions: impl IntoIterator<Item = Version>,
        write: bool,
        room: usize,
    ) {
        let History {
            keys,
            order,
            bytes,
            delta,
            stored,
            ..
        } = self;
        // Most keys are written a few times: room for one version at first, not the four a
        // first push would allocate (a version is 56 bytes).
        let kept = keys
            .entry(key.clone())
            .or_insert_with(|| VecDeque::with_capacity(1));
        for v in versions {
            if *stored && write {
                // Storage applies a delta's puts before its drops: a version written again
                // after its removal was queued (a current value settled away at start, or
                // given back by a revert, then replaced) must not be removed after it.
                if let Some(i) = delta.drop.iter().rposition(|s| *s == v.seq) {
                    delta.drop.remove(i);
                }
                delta.put.push((v.seq, encode(key, &v)));
            }
            *bytes += v.cost(key);
            order.insert(v.seq, key.clone());
            kept.push_back(v);
        }
        if trim_to(kept, room, key, order, bytes, delta, *stored) {
            keys.remove(key);
        }
    }

    // Drops the oldest versions of the whole store while over the total bound.
    fn bound_total(&mut self) {
        while self.bytes > self.limits.max_bytes && self.order.len() > 1 {
            let Some((seq, k)) = self.order.pop_first() else {
                break;
            };
            self.remove_oldest(&k, seq);
        }
    }

    // Drops `key`'s oldest versions beyond `room`: one lookup of the key (a key at its bound
    // drops one version on every write, so this runs on every write).
    fn trim(&mut self, key: &Key, room: usize) {
        let Some(versions) = self.keys.get_mut(key) else {
            return;
        };
        let (order, bytes, delta) = (&mut self.order, &mut self.bytes, &mut self.delta);
        if trim_to(versions, room, key, order, bytes, delta, self.stored) {
            self.keys.remove(key);
        }
    }

    // Forgets the version `seq` of `key` (it is current again, or it never was), and its row.
    fn forget(&mut self, key: &Key, seq: u64) {
        if self.order.remove(&seq).is_none() {
            return;
        }
        if let Some(versions) = self.keys.get_mut(key) {
            if let Some(pos) = versions.iter().rposition(|v| v.seq == seq) {
                let v = versions.remove(pos).expect("found");
                self.bytes -= v.cost(key);
            }
            if versions.is_empty() {
                self.keys.remove(key);
            }
        }
        unwrite(&mut self.delta, self.stored, seq);
    }

    // Removes `k`'s oldest version, which is `seq` (the store's oldest).
    fn remove_oldest(&mut self, k: &Key, seq: u64) {
        if let Some(versions) = self.keys.get_mut(k) {
            if let Some(old) = versions.pop_front() {
                debug_assert_eq!(old.seq, seq);
                self.bytes -= old.cost(k);
            }
            if versions.is_empty() {
                self.keys.remove(k);
            }
        }
        unwrite(&mut self.delta, self.stored, seq);
    }

    /// Forgets what `changes` added (their durable commit failed and they were reverted; they
    /// are the newest changes, oldest first): the versions they wrote, and the values they
    /// replaced, which are current again. Versions their pushes trimmed are not brought back.
    pub fn undo(&mut self, changes: &[Change]) {
        let Some(first) = changes.first().map(|c| c.seq) else {
            return;
        };
        let mut gone: Vec<(u64, Key)> = self
            .order
            .range(first..)
            .map(|(s, k)| (*s, k.clone()))
            .collect();
        gone.extend(
            changes
                .iter()
                .filter_map(|c| Some((c.prev.as_ref()?.seq, c.key.clone())))
                .filter(|(s, _)| *s < first),
        );
        for (s, k) in gone {
            self.forget(&k, s);
        }
    }

    /// Settles a history given back by storage against the store it was restored with
    /// (`current` gives a key's current sequence number, `None` for a key that does not exist):
    /// a version that is a key's current value is dropped (storage written before current
    /// values were left to the store holds one per key), and a key that exists keeps `keep - 1`
    /// versions beside its current one. What is dropped is queued for storage to remove.
    pub fn settle(&mut self, current: impl Fn(&str) -> Option<u64>) {
        let keys: Vec<Key> = self.keys.keys().cloned().collect();
        for k in keys {
            let Some(seq) = current(&k) else {
                continue;
            };
            let newest = self.keys.get(&k).and_then(|v| v.back()).map(|v| v.seq);
            if newest == Some(seq) {
                self.forget(&k, seq);
            }
            self.trim(&k, self.limits.keep.saturating_sub(1));
        }
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
                // The row is already stored: only what trimming drops is queued.
                h.add(&key, [v], false, limits.keep);
                h.bound_total();
            }
        }
        Ok(h)
    }

    /// The newest `n` versions of `key` kept here (its current value is the store's), newest
    /// first.
    pub fn versions(&self, key: &str, n: usize) -> Vec<&Version> {
        self.keys
            .get(key)
            .map(|v| v.iter().rev().take(n).collect())
            .unwrap_or_default()
    }

    /// The JSON array `GET /<key>?history=N` answers: newest first, the key's `current` entry
    /// (the store's; `None` when it does not exist) then its versions here,
    /// `{"revision","updated","version","data"}` or `{..,"deleted":true}` for a delete.
    pub fn json(&self, key: &str, current: Option<&crate::store::Entry>, n: usize) -> Vec<u8> {
        let now = current.map(|e| Version {
            seq: e.seq,
            revision: e.revision,
            updated: written_at(e),
            json: Some(e.json.clone()),
        });
        let older = self.keys.get(key).into_iter().flat_map(|v| v.iter().rev());
        // A current value found here too (never, once settled) is shown once.
        let older = older.filter(|v| Some(v.seq) != now.as_ref().map(|c| c.seq));
        let mut out = Vec::from(&b"["[..]);
        for (i, v) in now.iter().chain(older).take(n).enumerate() {
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

/// When `e`'s value was written: its `updated`, or `created` for a key never updated.
fn written_at(e: &crate::store::Entry) -> i64 {
    if e.updated != 0 {
        e.updated
    } else {
        e.created
    }
}

/// A stored version's bytes: `u32` key length (LE), the key, `u64` revision, `i64` time,
/// `u8` 1 (a value, its JSON follows) or 0 (a delete).
pub fn encode(key: &str, v: &Version) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + key.len() + v.json.as_ref().map_or(0, |j| j.len()));
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
pub fn decode(seq: u64, b: &[u8]) -> Result<(Key, Version), Corrupt> {
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
        Some(1) => Some(JsonText::from(&rest[17..])),
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

// Storage must not hold version `seq`: its row is not written if it is still queued in `delta`
// (a version trimmed by the change that added it), else it is removed (when `stored`: storage
// takes the delta).
// Drops `key`'s oldest versions in `kept` beyond `room` from every record of them; returns
// whether none is left (the caller removes the key).
fn trim_to(
    kept: &mut VecDeque<Version>,
    room: usize,
    key: &str,
    order: &mut BTreeMap<u64, Key>,
    bytes: &mut usize,
    delta: &mut Delta,
    stored: bool,
) -> bool {
    while kept.len() > room {
        let Some(old) = kept.pop_front() else {
            break;
        };
        *bytes -= old.cost(key);
        order.remove(&old.seq);
        unwrite(delta, stored, old.seq);
    }
    kept.is_empty()
}

fn unwrite(delta: &mut Delta, stored: bool, seq: u64) {
    match delta.put.iter().rposition(|(s, _)| *s == seq) {
        Some(i) => {
            delta.put.remove(i);
        }
        // Written by an earlier commit (or by one that failed, which wrote nothing: removing a
        // row that is not there is harmless).
        None if stored => delta.drop.push(seq),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Entry, Store, Ttl};

    // A store and the history the engine would feed from its changes.
    struct T {
        s: Store,
        h: History,
    }

    impl T {
        fn new(keep: usize, max_bytes: usize) -> T {
            let mut h = History::new(Limits { keep, max_bytes });
            h.store_in_storage();
            T {
                s: Store::new(0),
                h,
            }
        }

        // Written at 100 × its sequence number.
        fn put(&mut self, k: &str, v: &str) -> Change {
            let now = (self.s.last_seq() as i64 + 1) * 100;
            let data = Entry::value(serde_json::from_str(v).unwrap());
            let c = self.s.put(k, data, now, Ttl::Clear, None);
            self.h.push(&c, 0);
            c
        }

        fn del(&mut self, k: &str, at: i64) -> Change {
            let c = self.s.remove(k).unwrap();
            self.h.push(&c, at);
            c
        }

        fn json(&self, k: &str, n: usize) -> String {
            String::from_utf8(self.h.json(k, self.s.get(k), n)).unwrap()
        }

        fn seqs(&self, k: &str) -> Vec<u64> {
            self.h.versions(k, 100).iter().map(|v| v.seq).collect()
        }
    }

    #[test]
    fn keeps_what_was_replaced_newest_first_with_deletes() {
        let mut t = T::new(3, 1 << 20);
        t.put("a", "1");
        t.put("b", "\"x\"");
        t.put("a", "2");
        t.del("a", 444);
        t.put("a", "{\"z\":3}");
        // The current value (5) is the store's; with it, 3 versions: the oldest (1) went.
        assert_eq!(t.seqs("a"), vec![4, 3]);
        assert_eq!(
            t.json("a", 3),
            r#"[{"revision":0,"updated":500,"version":"5","data":{"z":3}},{"revision":2,"updated":444,"version":"4","deleted":true},{"revision":1,"updated":300,"version":"3","data":2}]"#
        );
        assert_eq!(
            t.json("a", 1),
            r#"[{"revision":0,"updated":500,"version":"5","data":{"z":3}}]"#
        );
        // A key written once has no history of its own, and still shows its value.
        assert!(t.h.versions("b", 1).is_empty());
        assert_eq!(
            t.json("b", 5),
            r#"[{"revision":0,"updated":200,"version":"2","data":"x"}]"#
        );
        assert_eq!(t.json("nothing", 5), "[]");
        // Version 1 was trimmed before it was written: neither written nor removed.
        let d = t.h.take_delta();
        assert_eq!(
            d.put.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert!(d.drop.is_empty());
        assert!(t.h.take_delta().is_empty());
        assert_eq!(t.h.len(), 2);
    }

    #[test]
    fn one_version_per_key_is_the_current_one_or_the_delete() {
        let mut t = T::new(1, 1 << 20);
        t.put("a", "1");
        t.put("a", "2");
        assert_eq!(t.h.len(), 0, "the current value is the one version");
        t.del("a", 7);
        assert_eq!(t.seqs("a"), vec![3]);
        assert_eq!(
            t.json("a", 1),
            r#"[{"revision":2,"updated":7,"version":"3","deleted":true}]"#
        );
        // The value the delete removed was trimmed by it: never written.
        let d = t.h.take_delta();
        assert_eq!(d.put.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3]);
        assert!(d.drop.is_empty());
        t.put("a", "3");
        assert_eq!(t.h.len(), 0, "the delete is older than the current value");
        assert_eq!(t.h.take_delta().drop, vec![3]);
    }

    #[test]
    fn the_total_bound_drops_the_oldest_of_the_store() {
        let one = OVERHEAD + 1 + 1;
        let mut t = T::new(10, one * 3);
        for k in ["a", "b", "c", "d"] {
            t.put(k, "1");
        }
        for k in ["a", "b", "c", "d"] {
            t.put(k, "2");
        }
        assert_eq!(t.h.len(), 3);
        assert!(t.h.versions("a", 5).is_empty());
        assert_eq!(t.seqs("b"), vec![2]);
        assert_eq!(t.h.bytes(), one * 3);
        // a's first version was trimmed by the write that added it: never written.
        let d = t.h.take_delta();
        assert_eq!(
            d.put.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(d.drop.is_empty());
        assert_eq!(
            t.json("a", 5),
            r#"[{"revision":1,"updated":500,"version":"5","data":2}]"#
        );
    }

    #[test]
    fn restores_what_was_stored_and_trims_to_new_limits() {
        let mut t = T::new(DEFAULT_KEEP, DEFAULT_MAX_BYTES);
        let k = "名前/😀";
        for i in 1..=5 {
            t.put(k, &i.to_string());
        }
        t.del(k, 777);
        let rows = t.h.take_delta().put;
        let mut back = History::restore(Limits::default(), rows.clone()).unwrap();
        back.settle(|_| None);
        assert_eq!(back.json(k, None, 10), t.h.json(k, None, 10));
        assert_eq!(back.len(), 6);
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
                .versions(k, 10)
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
    fn settling_drops_current_values_that_storage_kept() {
        // Rows as storage written before current values were left to the store holds them:
        // every version of `k`, the current one (4) included.
        let mut t = T::new(3, 1 << 20);
        let row = |seq: u64| {
            let v = Version {
                seq,
                revision: seq - 1,
                updated: seq as i64,
                json: Some(JsonText::from(seq.to_string().as_bytes())),
            };
            (seq, encode("k", &v))
        };
        for i in 1..=4 {
            t.put("k", &i.to_string());
        }
        let mut h = History::restore(t.h.limits(), (1..=4).map(row)).unwrap();
        assert_eq!(h.take_delta().drop, vec![1], "three kept");
        h.settle(|k| (k == "k").then_some(4));
        assert_eq!(
            h.versions("k", 10)
                .iter()
                .map(|v| v.seq)
                .collect::<Vec<_>>(),
            vec![3, 2],
            "the current value went, and the key keeps two beside it"
        );
        assert_eq!(h.take_delta().drop, vec![4]);
        let shown = String::from_utf8(h.json("k", t.s.get("k"), 3)).unwrap();
        assert_eq!(shown.matches("\"version\":\"4\"").count(), 1, "{shown}");
        assert_eq!(shown.matches("\"version\"").count(), 3, "{shown}");
        // Settled again (the next start): nothing changes.
        h.settle(|k| (k == "k").then_some(4));
        assert!(h.take_delta().is_empty());
        // Settled, then replaced before the next commit: version 4 is written, not removed
        // (storage applies puts before drops).
        let mut h = History::restore(t.h.limits(), (1..=4).map(row)).unwrap();
        h.settle(|k| (k == "k").then_some(4));
        h.push(&t.put("k", "5"), 0);
        let d = h.take_delta();
        assert_eq!(d.put.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![4]);
        assert_eq!(d.drop, vec![1, 2], "never 4");
        assert_eq!(
            h.versions("k", 10)
                .iter()
                .map(|v| v.seq)
                .collect::<Vec<_>>(),
            vec![4, 3]
        );
    }

    #[test]
    fn undo_forgets_reverted_changes_and_what_they_replaced() {
        let mut t = T::new(DEFAULT_KEEP, DEFAULT_MAX_BYTES);
        t.put("a", "1");
        t.put("a", "2");
        t.h.take_delta();
        let reverted = vec![t.put("a", "3"), t.put("b", "2"), t.del("a", 9)];
        assert_eq!(t.seqs("a"), vec![5, 3, 2, 1]);
        t.s.undo(&reverted);
        t.h.undo(&reverted);
        // Version 2 is current again: only 1 is history.
        assert_eq!(t.seqs("a"), vec![1]);
        assert!(t.h.versions("b", 1).is_empty());
        assert_eq!(t.h.len(), 1);
        assert!(
            t.h.take_delta().is_empty(),
            "queued rows unqueued, nothing to remove"
        );
        // When the failed commit took the rows already, they are removed (they were never
        // written; removing them is harmless).
        let reverted = vec![t.put("a", "3")];
        t.h.take_delta();
        t.s.undo(&reverted);
        t.h.undo(&reverted);
        assert_eq!(t.seqs("a"), vec![1]);
        assert_eq!(t.h.take_delta().drop, vec![2]);
        // Given back and replaced before the next commit: written, not removed.
        let reverted = vec![t.put("a", "3")];
        t.h.take_delta();
        t.s.undo(&reverted);
        t.h.undo(&reverted);
        t.put("a", "4");
        let d = t.h.take_delta();
        assert_eq!(d.put.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2]);
        assert!(d.drop.is_empty(), "{:?}", d.drop);
        // Without storage nothing is queued.
        let mut m = History::new(Limits::default());
        let mut s = Store::new(0);
        for v in ["1", "2"] {
            let c = s.put(
                "a",
                Entry::value(serde_json::from_str(v).unwrap()),
                1,
                Ttl::Clear,
                None,
            );
            m.push(&c, 0);
        }
        assert_eq!(m.len(), 1);
        assert!(m.take_delta().is_empty());
    }
}

//! The change log: recent changes, so a client that was away gets exactly what it missed.
//!
//! Owns a window of the latest changes, bounded in entries and in bytes, and the squashing of
//! that window per key (gobi's rules, §5). A version is a store sequence number: a client at
//! version `v` has seen every change up to `v`. The log covers `v` when every change after `v` is
//! still in the window; otherwise the client must take a snapshot. It holds entries, not frames.

use crate::store::Key;
use std::collections::{HashMap, VecDeque};

use crate::key::Pattern;
use crate::store::{Change, Entry, JsonText, MaybeTime};

/// What the log keeps of an entry: its JSON text, never its parsed tree. A tree costs about 25
/// times its text (a `{}` is 2 bytes of JSON and ~80 bytes parsed), and a superseded entry's tree
/// would live on in the log alone; the bytes are what the log is charged for, so the bytes are
/// what it holds. The tree is parsed again only when a client resumes.
#[derive(Debug, Clone)]
struct Kept {
    created: i64,
    updated: i64,
    expires: MaybeTime,
    json: JsonText,
}

impl Kept {
    fn of(e: &Entry) -> Kept {
        Kept {
            created: e.created,
            updated: e.updated,
            expires: e.expires,
            json: e.json.clone(),
        }
    }

    fn entry(&self, revision: u64, seq: u64) -> Entry {
        // The tree is built again only if the resuming client's frame needs one.
        let (tree, json) = Entry::from_json(self.json.clone());
        Entry {
            created: self.created,
            updated: self.updated,
            revision,
            seq,
            expires: self.expires,
            json,
            tree,
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    seq: u64,
    key: Key,
    revision: u64,
    // `created` of the entry before this change (for resuming list subscriptions by position).
    prev_created: MaybeTime,
    entry: Option<Kept>,
}

impl Record {
    // What the record is charged against the log's byte bound (computed, not kept: the window
    // holds up to `--log-entries` records, and a field would cost 8 bytes in each).
    fn cost(&self) -> usize {
        RECORD_OVERHEAD + self.key.len() + self.entry.as_ref().map_or(0, |e| e.json.len())
    }
}

/// What a key went through since a version, squashed to one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Missed {
    /// The key did not exist at the version and exists now.
    Create(Key, Entry),
    /// The key existed at the version and exists now (changed, or deleted and created again).
    Update(Key, Entry),
    /// The key existed at the version and is gone; the revision of the delete.
    Delete(Key, u64, u64),
}

impl Missed {
    /// The key concerned.
    pub fn key(&self) -> &Key {
        match self {
            Missed::Create(k, _) | Missed::Update(k, _) | Missed::Delete(k, _, _) => k,
        }
    }

    /// The sequence number of the last change folded into this step.
    pub fn seq(&self) -> u64 {
        match self {
            Missed::Create(_, e) | Missed::Update(_, e) => e.seq,
            Missed::Delete(_, _, seq) => *seq,
        }
    }
}

/// The log could not answer: the version is older than the window (or from another history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("version is too old for the change log; take a snapshot")]
pub struct TooOld;

/// The change log. See the module docs.
#[derive(Debug)]
pub struct Log {
    records: VecDeque<Record>,
    // Every version >= floor is covered (the change right after floor is the oldest kept).
    floor: u64,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

/// Bookkeeping bytes charged per record on top of its key and value.
const RECORD_OVERHEAD: usize = 96;

impl Log {
    /// An empty log starting after `last_seq`, keeping at most `max_entries` changes and about
    /// `max_bytes` bytes of keys and values.
    pub fn new(last_seq: u64, max_entries: usize, max_bytes: usize) -> Log {
        Log {
            records: VecDeque::new(),
            floor: last_seq,
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Oldest covered version.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Number of changes kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes charged to the kept changes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends a change, dropping the oldest ones beyond the bounds.
    pub fn push(&mut self, c: &Change) {
        self.push_record(
            c.seq,
            c.key.clone(),
            c.revision,
            c.prev.as_ref().map(|p| p.created),
            c.entry.clone(),
        );
    }

    /// A log restored from disk: `floor` is the version before the first record, and `records`
    /// are `(seq, key, revision, created before the change if the key existed, entry after)` in
    /// sequence order.
    pub fn restore(
        floor: u64,
        records: impl IntoIterator<Item = (u64, Key, u64, Option<i64>, Option<Entry>)>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Log {
        let mut log = Log::new(floor, max_entries, max_bytes);
        for (seq, key, revision, prev_created, entry) in records {
            log.push_record(seq, key, revision, prev_created, entry);
        }
        log
    }

    fn push_record(
        &mut self,
        seq: u64,
        key: Key,
        revision: u64,
        prev_created: Option<i64>,
        entry: Option<Entry>,
    ) {
        let record = Record {
            seq,
            key,
            revision,
            prev_created: MaybeTime::from(prev_created),
            entry: entry.as_ref().map(Kept::of),
        };
        // A full window makes room before the push: a deque at its capacity doubles it.
        if self.records.len() >= self.max_entries.max(1) {
            self.drop_oldest();
        }
        if self.records.len() == self.records.capacity() {
            // The window grows by doubling, but never past its bound: a deque's own growth
            // would give a window of 100,000 records room for 131,072 (31% more), and a record
            // slot is 72 bytes.
            let room = self.max_entries.saturating_sub(self.records.len()).max(1);
            self.records
                .reserve_exact(self.records.len().max(16).min(room));
        }
        self.bytes += record.cost();
        self.records.push_back(record);
        while self.records.len() > self.max_entries
            || (self.bytes > self.max_bytes && self.records.len() > 1)
        {
            self.drop_oldest();
        }
        if self.max_entries == 0 {
            self.floor = seq;
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(r) = self.records.pop_front() {
            self.bytes -= r.cost();
            self.floor = r.seq;
        }
    }

    /// Forgets changes from `seq` on (their write was rolled back).
    pub fn truncate_from(&mut self, seq: u64) {
        while self.records.back().is_some_and(|r| r.seq >= seq) {
            if let Some(r) = self.records.pop_back() {
                self.bytes -= r.cost();
            }
        }
    }

    /// Whether every change after `version` up to `last_seq` is in the window.
    pub fn covers(&self, version: u64, last_seq: u64) -> bool {
        version >= self.floor && version <= last_seq
    }

    /// The sequence number of the change that gave `key` revision `revision`, if still kept (used to
    /// resume an SSE stream from AtomKV's `key:revision` event id).
    pub fn find(&self, key: &str, revision: u64) -> Option<u64> {
        self.records
            .iter()
            .rev()
            .find(|r| &*r.key == key && r.revision == revision)
            .map(|r| r.seq)
    }

    /// What keys matching `pattern` went through after `version`, one step per key, ordered by the
    /// last change of each key. Squashing: create+delete → nothing; create+update → create;
    /// update+delete → delete; delete+create → update; update+update → update.
    pub fn since(
        &self,
        version: u64,
        last_seq: u64,
        pattern: &Pattern,
    ) -> Result<Vec<Missed>, TooOld> {
        Ok(self
            .since_with_origin(version, last_seq, pattern)?
            .into_iter()
            .map(|(m, _)| m)
            .collect())
    }

    /// Like [`Log::since`] (changes after `version` up to `last_seq`), with each key's `created`
    /// at `version` (`None` if it did not exist then), which places it in the list the client holds.
    pub fn since_with_origin(
        &self,
        version: u64,
        last_seq: u64,
        pattern: &Pattern,
    ) -> Result<Vec<(Missed, Option<i64>)>, TooOld> {
        if !self.covers(version, last_seq) {
            return Err(TooOld);
        }
        let start = self.records.partition_point(|r| r.seq <= version);
        // key -> (created at version, index of the last record)
        let mut seen: HashMap<&str, (Option<i64>, usize)> = HashMap::new();
        for (i, r) in self
            .records
            .iter()
            .enumerate()
            .skip(start)
            .take_while(|(_, r)| r.seq <= last_seq)
        {
            if pattern.matches(&r.key) {
                seen.entry(&r.key)
                    .and_modify(|s| s.1 = i)
                    .or_insert((r.prev_created.get(), i));
            }
        }
        let mut steps: Vec<(usize, Missed, Option<i64>)> = seen
            .into_values()
            .filter_map(|(origin, i)| {
                let r = &self.records[i];
                let m = match (&r.entry, origin.is_some()) {
                    (None, false) => return None,
                    (None, true) => Missed::Delete(r.key.clone(), r.revision, r.seq),
                    (Some(e), false) => Missed::Create(r.key.clone(), e.entry(r.revision, r.seq)),
                    (Some(e), true) => Missed::Update(r.key.clone(), e.entry(r.revision, r.seq)),
                };
                Some((i, m, origin))
            })
            .collect();
        steps.sort_by_key(|(i, _, _)| *i);
        Ok(steps.into_iter().map(|(_, m, o)| (m, o)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, Ttl};
    use serde_json::json;

    fn setup() -> (Store, Log) {
        (Store::new(10), Log::new(10, 1000, 1 << 20))
    }

    fn put(s: &mut Store, l: &mut Log, k: &str, v: i64) {
        let c = s.put(k, Entry::value(json!(v)), v, Ttl::Clear, None);
        l.push(&c);
    }

    fn del(s: &mut Store, l: &mut Log, k: &str) {
        let c = s.remove(k).unwrap();
        l.push(&c);
    }

    fn steps(l: &Log, s: &Store, v: u64, p: &str) -> Vec<String> {
        l.since(v, s.last_seq(), &Pattern::parse(p).unwrap())
            .unwrap()
            .iter()
            .map(|m| match m {
                Missed::Create(k, e) => format!("create {k}={}", e.data()),
                Missed::Update(k, e) => format!("update {k}={}", e.data()),
                Missed::Delete(k, _, _) => format!("delete {k}"),
            })
            .collect()
    }

    #[test]
    fn the_window_holds_no_room_beyond_its_bound() {
        // A slot of the window: keep it small (see `MaybeTime`).
        if cfg!(target_pointer_width = "64") {
            assert_eq!(size_of::<Record>(), 72);
        }
        let mut s = Store::new(0);
        let mut log = Log::new(0, 1000, usize::MAX);
        for i in 0..5000 {
            log.push(&s.put(
                &format!("k{i}"),
                Entry::value(json!(i)),
                i,
                Ttl::Clear,
                None,
            ));
            assert!(log.records.capacity() <= 1000, "{}", log.records.capacity());
        }
        assert_eq!(log.len(), 1000);
        assert_eq!(log.floor(), 4000);
        let bytes: usize = log.records.iter().map(Record::cost).sum();
        assert_eq!(log.bytes(), bytes);
        // An empty window keeps nothing.
        let mut none = Log::new(0, 0, usize::MAX);
        none.push(&s.put("k", Entry::value(json!(1)), 1, Ttl::Clear, None));
        assert_eq!((none.len(), none.floor(), none.bytes()), (0, 5001, 0));
    }

    #[test]
    fn squashing_rules() {
        let (mut s, mut l) = setup();
        put(&mut s, &mut l, "x/upd", 1); // 11
        put(&mut s, &mut l, "x/del", 1); // 12
        put(&mut s, &mut l, "x/re", 1); // 13
        let v = s.last_seq();
        put(&mut s, &mut l, "x/cd", 1); // create then delete: nothing
        del(&mut s, &mut l, "x/cd");
        put(&mut s, &mut l, "x/cu", 1); // create then update: create
        put(&mut s, &mut l, "x/cu", 2);
        put(&mut s, &mut l, "x/upd", 2); // update then update: update (latest)
        put(&mut s, &mut l, "x/upd", 3);
        put(&mut s, &mut l, "x/del", 2); // update then delete: delete
        del(&mut s, &mut l, "x/del");
        del(&mut s, &mut l, "x/re"); // delete then create: update
        put(&mut s, &mut l, "x/re", 5);
        put(&mut s, &mut l, "other", 1);
        assert_eq!(
            steps(&l, &s, v, "x/*"),
            [
                "create x/cu=2",
                "update x/upd=3",
                "delete x/del",
                "update x/re=5"
            ]
        );
        assert_eq!(steps(&l, &s, s.last_seq(), "x/*"), Vec::<String>::new());
        assert_eq!(steps(&l, &s, v, "other"), ["create other=1"]);
    }

    #[test]
    fn bounded_and_too_old() {
        let mut s = Store::new(0);
        let mut l = Log::new(0, 3, 1 << 20);
        for i in 0..5 {
            put(&mut s, &mut l, "k", i);
        }
        assert_eq!(l.len(), 3);
        assert_eq!(l.floor(), 2);
        let p = Pattern::parse("k").unwrap();
        assert_eq!(l.since(1, 5, &p), Err(TooOld));
        assert!(l.since(2, 5, &p).is_ok());
        assert_eq!(
            l.since(6, 5, &p),
            Err(TooOld),
            "a version from the future is another history"
        );
        let mut small = Log::new(0, 100, 400);
        for i in 0..10 {
            let c = s.put(
                "big",
                Entry::value(json!("x".repeat(150 + i))),
                1,
                Ttl::Clear,
                None,
            );
            small.push(&c);
        }
        assert!(small.bytes() <= 400 && !small.is_empty());
    }

    #[test]
    fn charged_for_what_it_holds() {
        // Values whose tree is ~25 times their text: the log holds their text only, so the
        // bytes it is charged are the bytes it keeps, and its budget bounds its memory.
        let mut s = Store::new(0);
        let budget = 64 << 10;
        let mut l = Log::new(0, 1000, budget);
        let body = format!("[{}{{}}]", "{},".repeat(2000));
        let mut trees = Vec::new();
        for i in 0..40 {
            let v = crate::json::parse(body.as_bytes(), 64).unwrap();
            let c = s.put("k", Entry::value(v), i, Ttl::Clear, None);
            // Built, as a subscriber's diff would build it.
            let e = c.entry.as_ref().unwrap();
            e.data();
            trees.push(e.tree.clone());
            l.push(&c);
        }
        del(&mut s, &mut l, "k");
        assert!(s.is_empty());
        assert!(l.bytes() <= budget, "{} > {budget}", l.bytes());
        assert!(l.len() < 40, "the oldest were dropped");
        // No record keeps a tree alive: only this test holds them now.
        assert!(trees.iter().all(|t| t.is_built() && t.holders() == 1));
        // Resuming parses the text again, exactly.
        let steps = l.since(l.floor(), s.last_seq(), &Pattern::parse("k").unwrap());
        assert!(matches!(steps.as_deref(), Ok([Missed::Delete(..)])));
        // The text kept is the text written, numbers included (which needs exact numbers: without
        // them the parser rounds the big one before anything is logged).
        if !cfg!(feature = "exact-numbers") {
            return;
        }
        let mut s2 = Store::new(0);
        let mut l2 = Log::new(0, 10, 1 << 20);
        put(&mut s2, &mut l2, "n", 1);
        let c = s2.put(
            "n",
            Entry::value(
                crate::json::parse(b"{\"x\":123456789012345678901234567890,\"a\":-0}", 8).unwrap(),
            ),
            2,
            Ttl::Clear,
            None,
        );
        l2.push(&c);
        let m = l2
            .since(1, s2.last_seq(), &Pattern::parse("n").unwrap())
            .unwrap();
        let Missed::Update(_, e) = &m[0] else {
            panic!("{m:?}")
        };
        assert_eq!(&*e.json, b"{\"x\":123456789012345678901234567890,\"a\":-0}");
        assert_eq!(crate::json::encode(e.data()), &*e.json);
        assert_eq!((e.revision, e.seq), (1, 2));
    }

    #[test]
    fn find_and_truncate() {
        let (mut s, mut l) = setup();
        put(&mut s, &mut l, "a", 1);
        put(&mut s, &mut l, "a", 2);
        assert_eq!(l.find("a", 1), Some(12));
        l.truncate_from(12);
        assert_eq!(l.find("a", 1), None);
        assert_eq!(l.len(), 1);
    }
}

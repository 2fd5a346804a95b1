//! The store: every key's current entry, revisions, sequence numbers and TTL deadlines.
//!
//! Owns the in-memory map and the rules for what a write does to an entry (created/updated,
//! revision, sequence, expiry). Every mutation returns a [`Change`] that carries enough to undo it,
//! so the engine can make multi-key operations all-or-nothing and roll back a write whose durable
//! commit failed. It knows nothing of HTTP, filters or subscribers, and never reads a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use once_cell::race::OnceBox;

use serde_json::Value;

use crate::key::{Pattern, Segment};

/// A stored key's text, shared by everything that names the key (the ordered map, the glob
/// index, the TTL deadlines, the change log, changes and frames).
// One allocation of a reference count and the bytes (triomphe's `Arc`, which has no weak
// count): with `std::sync::Arc` a key of 12 bytes took 16 + 12 bytes, a 48-byte block with the
// allocator's header; it takes 8 + 12 now, a 32-byte block. Every stored key has one.
pub type Key = triomphe::Arc<str>;

/// A stored value's compact JSON: one allocation holding the text, its length and its reference
/// count, behind a one-word pointer, shared by the store, the change log, the key history and
/// every clone of the entry. (A `Bytes` made from an owned buffer allocates a second, shared
/// header at its first clone, and its handle is four words: an entry and a change-log record are
/// each in every stored key's cost.)
#[derive(Clone)]
pub struct JsonText(triomphe::ThinArc<(), u8>);

/// Texts compare by their bytes.
impl PartialEq for JsonText {
    fn eq(&self, other: &JsonText) -> bool {
        **self == **other
    }
}

impl Eq for JsonText {}

impl std::ops::Deref for JsonText {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.slice
    }
}

impl AsRef<[u8]> for JsonText {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<&[u8]> for JsonText {
    fn from(text: &[u8]) -> JsonText {
        JsonText(triomphe::ThinArc::from_header_and_slice((), text))
    }
}

impl From<Vec<u8>> for JsonText {
    fn from(text: Vec<u8>) -> JsonText {
        JsonText::from(&text[..])
    }
}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonText({:?})", String::from_utf8_lossy(self))
    }
}

/// A clock time (ns) or none, in 8 bytes where `Option<i64>` takes 16: a key's TTL deadline in
/// every stored entry and change-log record, and a record's previous `created`. `i64::MIN`
/// stands for none, as in a stored entry's bytes: no clock reading or deadline is that
/// (deadlines saturate upwards).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MaybeTime(i64);

impl MaybeTime {
    /// None.
    pub const NONE: MaybeTime = MaybeTime(i64::MIN);

    /// The time, if there is one.
    pub fn get(self) -> Option<i64> {
        (self.0 != i64::MIN).then_some(self.0)
    }
}

impl From<Option<i64>> for MaybeTime {
    fn from(at: Option<i64>) -> MaybeTime {
        MaybeTime(at.unwrap_or(i64::MIN))
    }
}

impl std::fmt::Debug for MaybeTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// One stored value with its metadata. Cheap to clone: the value's bytes and tree are shared.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Clock time of creation (ns).
    pub created: i64,
    /// Clock time of the last write, 0 if never updated (ooo's rule).
    pub updated: i64,
    /// Per-key revision: 0 on create, +1 per write (AtomKV).
    pub revision: u64,
    /// Store sequence number of the change that produced this entry.
    pub seq: u64,
    /// Clock time at which the key expires, if it has a TTL.
    pub expires: MaybeTime,
    /// The value's compact JSON, serialized once per write: what is stored, logged, sent and
    /// answered.
    pub json: JsonText,
    /// The parsed value, built from `json` the first time something needs it ([`Entry::data`]).
    pub tree: Tree,
}

impl Entry {
    /// Builds an entry's value part from a parsed value: its compact JSON, and the tree, kept
    /// (see [`Tree`] for how long).
    pub fn value(data: Value) -> (Tree, JsonText) {
        // Exactly as long as the text: the encoder's buffer grows in steps (128 bytes for a
        // small value), and every stored key would keep the slack. So the value is encoded
        // into this thread's scratch buffer and copied once: an encoder's buffer of its own
        // would be one allocation and free more on every write.
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // A buffer grown past this by a large value is not kept for the thread's life.
        const KEEP: usize = 64 << 10;
        let json = SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            crate::json::encode_into(&data, buf);
            let json = JsonText::from(&buf[..]);
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
            json
        });
        (Tree::built(data), json)
    }

    /// The value part of an entry for a written value: its tree's, or its canonical text with
    /// no tree until one is needed.
    pub fn given(value: crate::engine::Given) -> (Tree, JsonText) {
        match value {
            crate::engine::Given::Tree(v) => Entry::value(v),
            crate::engine::Given::Text(t, _) => Entry::from_json(t),
        }
    }

    /// The value part of an entry from JSON text this process encoded (from storage, the change
    /// log, another node): the tree is built when first needed.
    pub fn from_json(json: JsonText) -> (Tree, JsonText) {
        (Tree::default(), json)
    }

    /// The parsed value: built from [`Entry::json`] on first use, and shared with the clones
    /// made after that.
    pub fn data(&self) -> &Value {
        self.tree.get(&self.json)
    }

    /// The entity tag of this representation: the sequence number that wrote it, quoted.
    pub fn etag(&self) -> String {
        Etag::of(self.seq).as_str().to_string()
    }
}

/// The ETag of a version: its sequence number in hex, quoted (`"1f"`), written on the stack.
/// Every write's answer carries one: `format!` grew a string for it (an allocation and a
/// reallocation per write, a few percent of the server's CPU per write in a profile).
pub struct Etag {
    buf: [u8; 18],
    len: usize,
}

impl Etag {
    /// The ETag of the version with sequence number `seq`.
    pub fn of(seq: u64) -> Etag {
        // A u64 is at most 16 hex digits: with the quotes, 18 bytes always hold it. All 16 are
        // made at once, eight to a word (every write and read answers with one or two: a table
        // lookup per digit was 150 instructions for a 16-digit version, this is a third of
        // that, and std's formatter costs ten times it), and the leading zeros left out.
        let digits = (64 - (seq | 1).leading_zeros()).div_ceil(4) as usize;
        let mut all = [0u8; 16];
        all[..8].copy_from_slice(&hex8((seq >> 32) as u32));
        all[8..].copy_from_slice(&hex8(seq as u32));
        let mut buf = [0u8; 18];
        buf[0] = b'"';
        buf[1..=digits].copy_from_slice(&all[16 - digits..]);
        buf[digits + 1] = b'"';
        Etag {
            buf,
            len: digits + 2,
        }
    }

    /// The quoted text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The quoted text's bytes (ASCII), for a header value without checking them as UTF-8.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The hex digits alone, unquoted (`1f`): how the store's version (`X-Version`, `?v=`) is
    /// written.
    pub fn hex(&self) -> &[u8] {
        &self.buf[1..self.len - 1]
    }
}

// The eight lowercase hex digits of `v`, most significant first: each nibble spread into a byte
// of its own, then every byte made a digit at once (`0`-`9` is 0x30 on, `a`-`f` 0x27 further).
fn hex8(v: u32) -> [u8; 8] {
    let mut x = u64::from(v);
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in the bytes of nibbles above 9 (adding 6 carries them into bit 4, never further).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * 0x27).to_be_bytes()
}

/// A stored value's parsed tree, built from its JSON text the first time something needs it (a
/// diff for a subscriber, a merge, a counter, a rule).
///
/// A tree costs many times its text (a 56-byte object is about 900 bytes parsed), and most stored
/// keys are only ever read as bytes (a `GET`, a snapshot, a subscriber's first frame). So a key
/// keeps its tree only while something uses it: a write keeps the new value's tree when the
/// value it replaces had one (a key with subscribers that get diffs, or one that is patched),
/// and drops it otherwise; the next use builds it again, once, and the engine gives the tree a
/// change's copy of the entry built to the stored entry ([`Store::adopt_tree`]).
///
/// A clone shares the tree when it is built, and builds its own when it is not.
// The slot is a pointer set once (`OnceBox`, 8 bytes, null while nothing is built), so a key
// without a tree has no allocation for it. It was an `Arc<OnceBox<Value>>` that every clone of
// the entry shared, built or not: 32 bytes with the allocator's header, for every stored key. A
// built tree costs a 32-byte box more per copy of its entry than it did. Two threads building
// the same tree at once both parse, and one result is kept.
#[derive(Default)]
pub struct Tree(OnceBox<Arc<Value>>);

impl Clone for Tree {
    fn clone(&self) -> Tree {
        match self.0.get() {
            Some(t) => Tree(OnceBox::with_value(Box::new(Arc::clone(t)))),
            None => Tree::default(),
        }
    }
}

impl Tree {
    /// A tree already built.
    pub fn built(v: Value) -> Tree {
        Tree(OnceBox::with_value(Box::new(Arc::new(v))))
    }

    /// Whether the tree has been built.
    pub fn is_built(&self) -> bool {
        self.0.get().is_some()
    }

    /// How many copies of entries hold this tree (0 while it is not built).
    #[cfg(test)]
    pub(crate) fn holders(&self) -> usize {
        self.0.get().map_or(0, Arc::strong_count)
    }

    /// The tree of `json` (the text it belongs to), built now if it was not.
    pub fn get(&self, json: &[u8]) -> &Value {
        self.0.get_or_init(|| {
            // The text was encoded by this process (or another Stateline) from a parsed value,
            // so it parses (numbers are kept exactly as written, object order is kept); `null`
            // is unreachable and only keeps a corrupt value from panicking.
            let v = serde_json::from_slice(json);
            debug_assert!(v.is_ok(), "a stored value's JSON parses");
            Box::new(Arc::new(v.unwrap_or(Value::Null)))
        })
    }
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_built() {
            "Tree(built)"
        } else {
            "Tree"
        })
    }
}

/// A tree is a cache of its entry's JSON: entries compare by their JSON.
impl PartialEq for Tree {
    fn eq(&self, _: &Tree) -> bool {
        true
    }
}

/// One effect of an operation on one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Store-wide sequence number, strictly increasing.
    pub seq: u64,
    /// The key.
    pub key: Key,
    /// The revision this change gives the key (for a delete: the previous revision plus one).
    pub revision: u64,
    /// The new entry, or `None` when the key was deleted.
    pub entry: Option<Entry>,
    /// The entry before the change, or `None` when the key did not exist.
    pub prev: Option<Entry>,
    /// When the write was itself an RFC 6902 patch of the value, that patch, so subscribers get it
    /// instead of a diff of whole documents.
    pub patch: Option<Arc<json_patch::Patch>>,
}

impl Change {
    /// Whether the change deleted the key.
    pub fn is_delete(&self) -> bool {
        self.entry.is_none()
    }
}

/// What a write does to a key's TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Remove any TTL (a plain set, like Redis `SET`).
    Clear,
    /// Keep the key's current deadline (patches, counters).
    Keep,
    /// Expire this many ns after the write.
    After(i64),
}

/// The keys by their segments, so a glob (`*/x`, `*/*/name`) is answered from the keys it can
/// match instead of a walk over every key: a glob costs the smallest of its candidate sets (the
/// keys of its depth with one of its literal segments at that position, the keys under its
/// literal first segment, or every key of its depth when it has no literal), never the whole
/// keyspace.
///
/// A key of two or more segments is indexed at its positions after the first: the first
/// segment is usually a namespace that most keys share (`users/...`), and the keys under a
/// literal first segment are a range of the ordered map already (see `Store::scan_counted`), so
/// that set would cost a slot for every stored key and find nothing the map does not. A key of
/// one segment is indexed at position 0, where a glob `*` finds the keys of depth 1.
// A set of keys, sharing the store's allocations.
type Keys = HashSet<Key>;

// Segment `pos` of a key.
fn segment(key: &str, pos: usize) -> &str {
    key.split('/').nth(pos).unwrap_or_default()
}

// The keys of depth d with one segment at one position, held without a copy of the segment's
// text: most segments after the first are unique to their key (`users/u0000123/profile`), and a
// copy would be an allocation for every stored key. The posting's table knows the position, so
// the text is read from a key that has it. 16 bytes, one table slot for a unique segment
// (`a_posting_is_two_words`).
#[derive(Debug)]
enum Posting {
    // The only key with the segment.
    One(Key),
    // Two or more keys.
    Many(Box<Many>),
}

#[derive(Debug)]
struct Many {
    keys: Keys,
    // One of `keys`, whose segment at the posting's position is the posting's text.
    held: Key,
}

impl Posting {
    // A key with this posting's segment.
    fn key(&self) -> &Key {
        match self {
            Posting::One(key) => key,
            Posting::Many(many) => &many.held,
        }
    }
}

// The postings of one (depth, position), found by the text of their segment. Segments are
// hashed with std's keyed hasher: keys come from clients.
#[derive(Debug, Default)]
struct Postings(hashbrown::HashTable<Posting>);

// The keys a glob can match, borrowed from the index.
#[derive(Clone, Copy)]
enum Candidates<'a> {
    One(&'a Key),
    Many(&'a Keys),
    // Every key of one depth: the keys of every posting at a position every key of that depth
    // has (0 for depth 1, else 1), and their count.
    Depth(&'a Postings, usize),
}

// The keys of one posting.
fn posting(p: &Posting) -> impl Iterator<Item = &Key> {
    let (one, many) = match p {
        Posting::One(key) => (Some(key), None),
        Posting::Many(many) => (None, Some(&many.keys)),
    };
    one.into_iter().chain(many.into_iter().flatten())
}

impl<'a> Candidates<'a> {
    fn len(self) -> usize {
        match self {
            Candidates::One(_) => 1,
            Candidates::Many(keys) => keys.len(),
            Candidates::Depth(_, n) => n,
        }
    }

    fn iter(self) -> impl Iterator<Item = &'a Key> {
        let (one, many, depth) = match self {
            Candidates::One(k) => (Some(k), None, None),
            Candidates::Many(keys) => (None, Some(keys), None),
            Candidates::Depth(postings, _) => (None, None, Some(postings)),
        };
        one.into_iter()
            .chain(many.into_iter().flatten())
            .chain(depth.into_iter().flat_map(|p| p.0.iter().flat_map(posting)))
    }
}

#[derive(Debug, Default)]
struct SegIndex {
    // (depth, position) -> segment -> keys of that depth with that segment at that position.
    postings: HashMap<(u16, u16), Postings>,
    // depth -> how many keys have that many segments.
    depths: HashMap<u16, usize>,
    hasher: std::hash::RandomState,
}

// Keys are at most `MAX_KEY_LEN` (1024) bytes, so depths and positions fit in u16.
fn small(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

// The first position indexed for keys of a depth: see `SegIndex`.
fn first_indexed(depth: usize) -> usize {
    usize::from(depth > 1)
}

impl SegIndex {
    fn insert(&mut self, key: &Key) {
        let depth = key.split('/').count();
        let hasher = &self.hasher;
        for (i, seg) in key.split('/').enumerate().skip(first_indexed(depth)) {
            let table = self.postings.entry((small(depth), small(i))).or_default();
            let found = table.0.entry(
                hasher.hash_one(seg),
                |p| segment(p.key(), i) == seg,
                |p| hasher.hash_one(segment(p.key(), i)),
            );
            match found {
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(Posting::One(key.clone()));
                }
                hashbrown::hash_table::Entry::Occupied(mut o) => {
                    let p = o.get_mut();
                    match p {
                        Posting::Many(many) => {
                            many.keys.insert(key.clone());
                        }
                        // Indexed already (cannot happen: only new keys are inserted).
                        Posting::One(first) if first == key => {}
                        // A second key with this segment: its posting becomes a set of both.
                        Posting::One(first) => {
                            let held = first.clone();
                            let keys: Keys = [held.clone(), key.clone()].into_iter().collect();
                            *p = Posting::Many(Box::new(Many { keys, held }));
                        }
                    }
                }
            }
        }
        *self.depths.entry(small(depth)).or_default() += 1;
    }

    fn remove(&mut self, key: &Key) {
        let depth = key.split('/').count();
        let hasher = &self.hasher;
        for (i, seg) in key.split('/').enumerate().skip(first_indexed(depth)) {
            let pos = (small(depth), small(i));
            let Some(table) = self.postings.get_mut(&pos) else {
                continue;
            };
            let Ok(mut found) = table
                .0
                .find_entry(hasher.hash_one(seg), |p| segment(p.key(), i) == seg)
            else {
                continue;
            };
            let p = found.get_mut();
            match p {
                Posting::One(only) => {
                    if only == key {
                        found.remove();
                    }
                }
                Posting::Many(many) => {
                    many.keys.remove(&**key);
                    let mut rest = many.keys.iter();
                    match (rest.next(), rest.next()) {
                        // One key alone again, without a set.
                        (Some(last), None) => *p = Posting::One(last.clone()),
                        (None, _) => {
                            found.remove();
                        }
                        // The key the segment was read from goes: another one holds it.
                        (Some(other), Some(_)) => {
                            if many.held == *key {
                                many.held = other.clone();
                            }
                        }
                    }
                }
            }
            if table.0.is_empty() {
                self.postings.remove(&pos);
            }
        }
        if let Some(n) = self.depths.get_mut(&small(depth)) {
            *n -= 1;
            if *n == 0 {
                self.depths.remove(&small(depth));
            }
        }
    }

    /// The smallest set of keys the index has that holds every match of a glob with these
    /// segments (`None`: no key can match). A literal first segment is not looked up here: the
    /// caller scans the map's range under it when that is smaller.
    fn candidates(&self, segs: &[Segment]) -> Option<Candidates<'_>> {
        let depth = segs.len();
        let every = self
            .postings
            .get(&(small(depth), small(first_indexed(depth))))?;
        let mut best = Candidates::Depth(every, *self.depths.get(&small(depth))?);
        for (i, seg) in segs.iter().enumerate().skip(first_indexed(depth)) {
            if let Segment::Lit(l) = seg {
                let table = self.postings.get(&(small(depth), small(i)))?;
                let found = table
                    .0
                    .find(self.hasher.hash_one(&**l), |p| segment(p.key(), i) == &**l)?;
                let keys = match found {
                    Posting::One(key) => Candidates::One(key),
                    Posting::Many(many) => Candidates::Many(&many.keys),
                };
                if keys.len() < best.len() {
                    best = keys;
                }
            }
        }
        Some(best)
    }
}

/// The map of keys. See the module docs.
#[derive(Debug, Default)]
pub struct Store {
    // An entry is boxed: the B-tree's nodes hold a key and a pointer (24 bytes) instead of the
    // 88-byte entry inline, and keys written in ascending order (the usual ids) leave its nodes
    // about half full, so the slack costs a pointer's worth per empty slot, not an entry's.
    // An update writes into the existing box.
    map: BTreeMap<Key, Box<Entry>>,
    index: SegIndex,
    // Ordered by deadline so the next expiry is the first element.
    deadlines: BTreeSet<(i64, Key)>,
    last_seq: u64,
    bytes: usize,
}

impl Store {
    /// An empty store whose first change will get `last_seq + 1`.
    pub fn new(last_seq: u64) -> Store {
        Store {
            last_seq,
            ..Store::default()
        }
    }

    /// A store loaded from disk: entries as they were written, and the sequence number of the last
    /// change (which may be larger than any entry's, when the last changes were deletes).
    pub fn load(last_seq: u64, entries: impl IntoIterator<Item = (Key, Entry)>) -> Store {
        // Built in one pass from the keys sorted (a later duplicate wins, as a write would):
        // the map's nodes come out full, where inserting keys in ascending order one by one
        // leaves them about half full, about 24 bytes more for every key loaded.
        let map: BTreeMap<Key, Box<Entry>> =
            entries.into_iter().map(|(k, e)| (k, Box::new(e))).collect();
        let mut s = Store::new(last_seq);
        for (k, e) in &map {
            s.last_seq = s.last_seq.max(e.seq);
            s.bytes += e.json.len();
            if let Some(d) = e.expires.get() {
                s.deadlines.insert((d, k.clone()));
            }
            s.index.insert(k);
        }
        s.map = map;
        s
    }

    /// The newest `created`/`updated` timestamp of any entry (0 when empty).
    pub fn newest_timestamp(&self) -> i64 {
        self.map
            .values()
            .map(|e| e.created.max(e.updated))
            .max()
            .unwrap_or(0)
    }

    /// The sequence number of the latest change.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store has no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of stored JSON values (a memory gauge).
    pub fn value_bytes(&self) -> usize {
        self.bytes
    }

    /// The entry of a key.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.map.get(key).map(|e| &**e)
    }

    // A key's interned key and entry.
    fn entry(&self, key: &str) -> Option<(&Key, &Entry)> {
        self.map.get_key_value(key).map(|(k, e)| (k, &**e))
    }

    /// The interned key, when present.
    pub fn key_arc(&self, key: &str) -> Option<Key> {
        self.map.get_key_value(key).map(|(k, _)| k.clone())
    }

    /// Every (key, entry) matching a pattern, in key order. A key costs one lookup, a subtree
    /// the keys below it, a glob the smallest candidate set of the segment index or, for a
    /// literal first segment, the keys under it when they are fewer (at most twice the smallest
    /// set, see [`Store::scan_visits`]); none walks the whole keyspace unless it matches all of
    /// it.
    pub fn scan<'a>(
        &'a self,
        pattern: &'a Pattern,
    ) -> impl Iterator<Item = (&'a Key, &'a Entry)> + 'a {
        self.scan_counted(pattern).0.into_iter()
    }

    /// How many stored entries a [`Store::scan`] of `pattern` looks at (matches included):
    /// the measure of its cost, for tests and gauges.
    pub fn scan_visits(&self, pattern: &Pattern) -> usize {
        self.scan_counted(pattern).1
    }

    fn scan_counted<'a>(&'a self, pattern: &Pattern) -> (Vec<(&'a Key, &'a Entry)>, usize) {
        match pattern {
            Pattern::Key(k) => {
                let hit: Vec<_> = self.entry(k).into_iter().collect();
                (hit, 1)
            }
            Pattern::Subtree(_) => {
                let prefix = pattern.scan_prefix();
                let mut visited = 0;
                let hits = self
                    .under(prefix)
                    .inspect(|_| visited += 1)
                    .filter(|(k, _)| pattern.matches(k))
                    .collect();
                (hits, visited)
            }
            Pattern::Glob(_, segs) => {
                let Some(keys) = self.index.candidates(segs) else {
                    return (Vec::new(), 0);
                };
                let mut visited = 0;
                // A literal first segment: the map's range under it, already in key order, when
                // it holds no more keys than the index's candidates (keys of other depths under
                // it included). The walk stops once it has seen more, so the glob costs at most
                // twice its smallest candidate set.
                if let (Some(Segment::Lit(first)), true) = (segs.first(), segs.len() > 1) {
                    let prefix = format!("{first}/");
                    let mut hits = Vec::new();
                    let mut whole = true;
                    for (k, e) in self.under(&prefix) {
                        visited += 1;
                        if visited > keys.len() {
                            whole = false;
                            break;
                        }
                        if pattern.matches(k) {
                            hits.push((k, e));
                        }
                    }
                    if whole {
                        return (hits, visited);
                    }
                }
                let mut hits: Vec<_> = keys
                    .iter()
                    .filter(|k| pattern.matches(k))
                    .filter_map(|k| self.entry(k))
                    .collect();
                hits.sort_unstable_by(|a, b| a.0.cmp(b.0));
                (hits, visited + keys.len())
            }
        }
    }

    /// Every (key, entry) matching a pattern, newest first (created descending, then key descending
    /// so that the order is total and the same everywhere).
    pub fn list(&self, pattern: &Pattern) -> Vec<(Key, Entry)> {
        let mut v: Vec<_> = self
            .scan(pattern)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        v.sort_by(|a, b| newest_first(&a.0, &a.1, &b.0, &b.1));
        v
    }

    /// All keys in order, for paging.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.map.keys()
    }

    /// Keys starting with `prefix`, in order (a range of the map, not a walk of every key).
    pub fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Key> + 'a {
        self.under(prefix).map(|(k, _)| k)
    }

    // The entries whose keys start with `prefix`, in key order: a range of the map.
    fn under<'a, 'p>(
        &'a self,
        prefix: &'p str,
    ) -> impl Iterator<Item = (&'a Key, &'a Entry)> + use<'a, 'p> {
        self.map
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k, &**e))
    }

    fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Writes a value. `created`/`updated` follow ooo: a new key gets `created = now, updated = 0`;
    /// an existing key keeps `created` and gets `updated = now`.
    pub fn put(
        &mut self,
        key: &str,
        data: (Tree, JsonText),
        now: i64,
        ttl: Ttl,
        patch: Option<Arc<json_patch::Patch>>,
    ) -> Change {
        // One lookup for the shared key and the previous entry (this runs for every write).
        let (key, prev) = match self.map.get_key_value(key) {
            Some((k, e)) => (k.clone(), Some(Entry::clone(e))),
            None => (Key::from(key), None),
        };
        let seq = self.next_seq();
        let (created, updated, revision) = match &prev {
            None => (now, 0, 0),
            Some(p) => (p.created, now, p.revision + 1),
        };
        let expires = match ttl {
            Ttl::Clear => None,
            Ttl::Keep => prev.as_ref().and_then(|p| p.expires.get()),
            Ttl::After(ns) => Some(now.saturating_add(ns)),
        };
        // The tree stays only when the value it replaces had one built (see [`Tree`]).
        let tree = if prev.as_ref().is_some_and(|p| p.tree.is_built()) {
            data.0
        } else {
            Tree::default()
        };
        let entry = Entry {
            created,
            updated,
            revision,
            seq,
            expires: MaybeTime::from(expires),
            json: data.1,
            tree,
        };
        self.install(&key, Some(entry.clone()));
        Change {
            seq,
            key,
            revision,
            entry: Some(entry),
            prev,
            patch,
        }
    }

    /// Writes an entry exactly as given (rename keeps `created`; replication and loading keep all).
    pub fn put_entry(&mut self, key: &str, mut entry: Entry) -> Change {
        let key: Key = self.key_arc(key).unwrap_or_else(|| key.into());
        let prev = self.get(&key).cloned();
        entry.seq = self.next_seq();
        let (seq, revision) = (entry.seq, entry.revision);
        self.install(&key, Some(entry.clone()));
        Change {
            seq,
            key,
            revision,
            entry: Some(entry),
            prev,
            patch: None,
        }
    }

    /// Deletes a key; `None` when it does not exist.
    pub fn remove(&mut self, key: &str) -> Option<Change> {
        let key = self.key_arc(key)?;
        let prev = self.get(&key).cloned()?;
        let seq = self.next_seq();
        self.install(&key, None);
        Some(Change {
            seq,
            key,
            revision: prev.revision + 1,
            entry: None,
            prev: Some(prev),
            patch: None,
        })
    }

    /// Gives the stored entry the tree that `change`'s copy of it has built (a subscriber's
    /// diff, a patch or a counter parsed the value), so that the key's next write keeps its
    /// value's tree (see [`Tree`]). Nothing happens when the key has been written since, or
    /// its entry has a tree already.
    pub fn adopt_tree(&mut self, change: &Change) {
        let Some(built) = change.entry.as_ref().filter(|e| e.tree.is_built()) else {
            return;
        };
        if let Some(stored) = self.map.get_mut(&*change.key) {
            if stored.seq == change.seq && !stored.tree.is_built() {
                stored.tree = built.tree.clone();
            }
        }
    }

    fn install(&mut self, key: &Key, entry: Option<Entry>) {
        let old = match entry {
            Some(e) => {
                self.bytes += e.json.len();
                if let Some(d) = e.expires.get() {
                    self.deadlines.insert((d, key.clone()));
                }
                // Replaces in one walk of the map, in the existing box.
                match self.map.entry(key.clone()) {
                    std::collections::btree_map::Entry::Occupied(mut o) => {
                        Some(std::mem::replace(&mut **o.get_mut(), e))
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(Box::new(e));
                        self.index.insert(key);
                        None
                    }
                }
            }
            None => {
                let old = self.map.remove(key);
                if old.is_some() {
                    self.index.remove(key);
                }
                old.map(|e| *e)
            }
        };
        if let Some(old) = old {
            self.bytes -= old.json.len();
            if let Some(d) = old.expires.get() {
                // Unless the new entry expires at the same moment (then that one stays).
                let same = self.get(key).and_then(|e| e.expires.get()) == Some(d);
                if !same {
                    self.deadlines.remove(&(d, key.clone()));
                }
            }
        }
    }

    /// Applies a change made elsewhere (another node, a replica log, the disk at startup) with its
    /// own sequence number, which must be larger than every sequence number seen so far.
    pub fn apply_external(&mut self, change: &Change) -> bool {
        if change.seq <= self.last_seq {
            return false;
        }
        self.last_seq = change.seq;
        self.install(&change.key, change.entry.clone());
        true
    }

    /// Undoes changes, newest first. They must be the latest changes of this store.
    pub fn undo(&mut self, changes: &[Change]) {
        for c in changes.iter().rev() {
            self.install(&c.key, c.prev.clone());
            debug_assert_eq!(c.seq, self.last_seq, "undo out of order");
            self.last_seq = c.seq - 1;
        }
    }

    /// The earliest TTL deadline.
    pub fn next_deadline(&self) -> Option<i64> {
        self.deadlines.iter().next().map(|(d, _)| *d)
    }

    /// Keys whose deadline is at or before `now`, earliest first.
    pub fn expired(&self, now: i64) -> Vec<Key> {
        self.deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, k)| k.clone())
            .collect()
    }
}

/// The list order: newest first, ties broken by key, descending.
pub fn newest_first(ka: &str, a: &Entry, kb: &str, b: &Entry) -> std::cmp::Ordering {
    b.created.cmp(&a.created).then_with(|| kb.cmp(ka))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(x: Value) -> (Tree, JsonText) {
        Entry::value(x)
    }

    #[test]
    fn created_updated_revision_seq() {
        let mut s = Store::new(100);
        let c1 = s.put("a", v(json!(1)), 10, Ttl::Clear, None);
        assert_eq!((c1.seq, c1.revision), (101, 0));
        let e = s.get("a").unwrap();
        assert_eq!((e.created, e.updated, e.revision), (10, 0, 0));
        let c2 = s.put("a", v(json!(2)), 20, Ttl::Clear, None);
        assert_eq!((c2.seq, c2.revision), (102, 1));
        let e = s.get("a").unwrap();
        assert_eq!(
            (e.created, e.updated, e.revision, &*e.json),
            (10, 20, 1, &b"2"[..])
        );
        let d = s.remove("a").unwrap();
        assert_eq!((d.seq, d.revision), (103, 2));
        assert!(s.remove("a").is_none());
        assert_eq!(s.last_seq(), 103);
    }

    #[test]
    fn a_tree_is_kept_only_while_something_uses_it() {
        let mut s = Store::new(0);
        let built = |s: &Store| s.get("k").unwrap().tree.is_built();
        // Written and read only as text: no tree is kept.
        s.put("k", v(json!({"a": 1})), 1, Ttl::Clear, None);
        assert!(!built(&s));
        let c = s.put("k", v(json!({"a": 2})), 2, Ttl::Clear, None);
        assert!(!built(&s));
        // A diff needs the trees: built from the text, in the change's copies of the entries.
        assert_eq!(*c.prev.as_ref().unwrap().data(), json!({"a": 1}));
        assert_eq!(*c.entry.as_ref().unwrap().data(), json!({"a": 2}));
        assert!(!built(&s));
        // The engine gives the stored entry the tree its change built, once.
        s.adopt_tree(&c);
        assert!(built(&s));
        let tree = c.entry.as_ref().unwrap().tree.holders();
        s.adopt_tree(&c);
        assert_eq!(c.entry.as_ref().unwrap().tree.holders(), tree);
        // From then on a write keeps its value's tree, which the next diff needs.
        let c = s.put("k", v(json!({"a": 3})), 3, Ttl::Clear, None);
        assert!(c.prev.unwrap().tree.is_built() && c.entry.unwrap().tree.is_built());
        assert!(built(&s));
        // A new key starts without one.
        let big = crate::json::parse(b"[123456789012345678901234567890,-0,1.50]", 8).unwrap();
        s.put("n", v(big), 4, Ttl::Clear, None);
        let e = s.get("n").unwrap();
        assert!(!e.tree.is_built());
        // Built from the text, the numbers are the ones written, digit for digit.
        #[cfg(feature = "exact-numbers")]
        assert_eq!(
            e.data().to_string(),
            "[123456789012345678901234567890,-0,1.50]"
        );
        assert_eq!(crate::json::encode(e.data()), &*e.json);
    }

    #[test]
    fn undo_restores_everything() {
        let mut s = Store::new(0);
        s.put("a", v(json!(1)), 1, Ttl::After(100), None);
        let before_bytes = s.value_bytes();
        let c = vec![
            s.put("a", v(json!("long value")), 2, Ttl::Clear, None),
            s.put("b", v(json!(2)), 3, Ttl::Clear, None),
            s.remove("a").unwrap(),
        ];
        s.undo(&c);
        assert_eq!(s.last_seq(), 1);
        assert_eq!(s.len(), 1);
        assert_eq!(*s.get("a").unwrap().data(), json!(1));
        assert_eq!(s.next_deadline(), Some(101));
        assert_eq!(s.value_bytes(), before_bytes);
    }

    #[test]
    fn ttl_index() {
        let mut s = Store::new(0);
        s.put("a", v(json!(1)), 0, Ttl::After(50), None);
        s.put("b", v(json!(1)), 0, Ttl::After(10), None);
        s.put("c", v(json!(1)), 0, Ttl::Clear, None);
        assert_eq!(s.next_deadline(), Some(10));
        assert_eq!(s.expired(10), vec![Key::from("b")]);
        s.put("b", v(json!(2)), 5, Ttl::Keep, None);
        assert_eq!(s.get("b").unwrap().expires.get(), Some(10));
        // Rewritten with the same deadline: still in the index.
        assert_eq!(s.next_deadline(), Some(10));
        assert_eq!(s.expired(10), vec![Key::from("b")]);
        s.remove("a");
        assert_eq!(s.expired(100), vec![Key::from("b")]);
        s.put("a", v(json!(1)), 7, Ttl::After(43), None);
        s.put("b", v(json!(2)), 6, Ttl::Clear, None);
        assert_eq!(s.next_deadline(), Some(50));
    }

    #[test]
    fn list_is_newest_first_and_scans_by_prefix() {
        let mut s = Store::new(0);
        for (k, t) in [
            ("books/a", 3),
            ("books/b", 1),
            ("books/c", 2),
            ("booksx", 9),
            ("books/a/x", 9),
        ] {
            s.put(k, v(json!(t)), t, Ttl::Clear, None);
        }
        let p = Pattern::parse("books/*").unwrap();
        let keys: Vec<_> = s.list(&p).into_iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["books/a", "books/c", "books/b"]);
    }

    #[test]
    fn globs_visit_their_candidates_not_the_keyspace() {
        let mut s = Store::new(0);
        for i in 0..2000 {
            s.put(&format!("k{i}/a/b"), v(json!(i)), 1, Ttl::Clear, None);
            s.put(
                &format!("user{i}/profile"),
                v(json!(i)),
                1,
                Ttl::Clear,
                None,
            );
        }
        s.put("x/nomatch", v(json!(1)), 1, Ttl::Clear, None);
        s.put("y/nomatch", v(json!(1)), 1, Ttl::Clear, None);
        let p = |g: &str| Pattern::parse(g).unwrap();
        fn keys_of(s: &Store, g: &str) -> Vec<String> {
            let p = Pattern::parse(g).unwrap();
            s.scan(&p).map(|(k, _)| k.to_string()).collect()
        }
        // A leading `*`: only the two keys with that segment are looked at.
        assert_eq!(keys_of(&s, "*/nomatch"), ["x/nomatch", "y/nomatch"]);
        assert_eq!(s.scan_visits(&p("*/nomatch")), 2);
        // No key of that depth or with that segment: nothing is looked at.
        assert_eq!(s.scan_visits(&p("*/missing")), 0);
        assert_eq!(s.scan_visits(&p("*/*/*/*")), 0);
        assert_eq!(s.scan_visits(&p("*/a/nothing")), 0);
        // The smallest literal decides: `*/a/b` has 2000 candidates, `k7/*/b` one.
        assert_eq!(keys_of(&s, "k7/*/b"), ["k7/a/b"]);
        assert_eq!(s.scan_visits(&p("k7/*/b")), 1);
        // Only stars: every key of that depth, which is what it matches.
        assert_eq!(s.scan(&p("*/*/*")).count(), 2000);
        assert_eq!(s.scan_visits(&p("*/*/*")), 2000);
        // Deletes leave the index.
        s.remove("x/nomatch");
        assert_eq!(keys_of(&s, "*/nomatch"), ["y/nomatch"]);
        assert_eq!(s.scan_visits(&p("*/nomatch")), 1);
        s.remove("y/nomatch");
        assert_eq!(s.scan_visits(&p("*/nomatch")), 0);
        // Key order, as before.
        let all: Vec<String> = keys_of(&s, "*/profile");
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
    }

    #[test]
    fn a_segment_outlives_the_key_it_was_read_from() {
        let mut s = Store::new(0);
        let p = |g: &str| Pattern::parse(g).unwrap();
        fn keys_of(s: &Store, g: &str) -> Vec<String> {
            let p = Pattern::parse(g).unwrap();
            s.scan(&p).map(|(k, _)| k.to_string()).collect()
        }
        // `shared` is read from the first key that has it; the others join its posting.
        for k in ["a/shared/x", "bb/shared/y", "ccc/shared/z"] {
            s.put(k, v(json!(1)), 1, Ttl::Clear, None);
        }
        s.put("a/shared/x", v(json!(2)), 1, Ttl::Clear, None);
        assert_eq!(s.scan_visits(&p("*/shared/*")), 3);
        // The key the segment was read from goes: the others keep it (read from one of them,
        // at its own offset).
        s.remove("a/shared/x");
        assert_eq!(keys_of(&s, "*/shared/*"), ["bb/shared/y", "ccc/shared/z"]);
        assert_eq!(s.scan_visits(&p("*/shared/*")), 2);
        s.remove("ccc/shared/z");
        assert_eq!(keys_of(&s, "*/shared/*"), ["bb/shared/y"]);
        assert_eq!(s.scan_visits(&p("*/shared/*")), 1);
        // Every key of a depth, with no literal: counted, and found through the second segment.
        s.put("a/other/x", v(json!(1)), 1, Ttl::Clear, None);
        s.put("a/shared/x", v(json!(1)), 1, Ttl::Clear, None);
        assert_eq!(
            keys_of(&s, "*/*/*"),
            ["a/other/x", "a/shared/x", "bb/shared/y"]
        );
        assert_eq!(s.scan_visits(&p("*/*/*")), 3);
        assert_eq!(keys_of(&s, "a/*/x"), ["a/other/x", "a/shared/x"]);
        for k in ["a/other/x", "a/shared/x", "bb/shared/y"] {
            s.remove(k);
        }
        assert_eq!(s.scan_visits(&p("*/*/*")), 0);
        assert!(s.index.postings.is_empty() && s.index.depths.is_empty());
    }

    #[test]
    fn a_literal_first_segment_scans_the_range_under_it_when_that_is_smaller() {
        let mut s = Store::new(0);
        let p = |g: &str| Pattern::parse(g).unwrap();
        for i in 0..100 {
            s.put(
                &format!("users/u{i:03}/profile"),
                v(json!(i)),
                1,
                Ttl::Clear,
                None,
            );
            s.put(&format!("other{i:03}/x"), v(json!(i)), 1, Ttl::Clear, None);
        }
        for k in ["users/a", "users/b", "users/c"] {
            s.put(k, v(json!(1)), 1, Ttl::Clear, None);
        }
        fn keys_of(s: &Store, g: &str) -> Vec<String> {
            let p = Pattern::parse(g).unwrap();
            s.scan(&p).map(|(k, _)| k.to_string()).collect()
        }
        // 103 keys of depth 2; the 103 under `users/` are the smaller set (ties go to the range).
        assert_eq!(keys_of(&s, "users/*"), ["users/a", "users/b", "users/c"]);
        assert_eq!(s.scan_visits(&p("users/*")), 103);
        // The range holds more than the 100 keys with `profile` at position 2: the walk stops
        // after 101 and the posting answers.
        assert_eq!(keys_of(&s, "users/*/profile").len(), 100);
        assert_eq!(s.scan_visits(&p("users/*/profile")), 101 + 100);
        // A literal after the first that only one key has: the walk of the range gives up at
        // its second key.
        assert_eq!(keys_of(&s, "users/*/x"), Vec::<String>::new());
        assert_eq!(keys_of(&s, "*/u007/*"), ["users/u007/profile"]);
        assert_eq!(s.scan_visits(&p("*/u007/*")), 1);
        assert_eq!(keys_of(&s, "users/u007/*"), ["users/u007/profile"]);
        assert_eq!(s.scan_visits(&p("users/u007/*")), 2 + 1);
        // Nothing under the first segment: nothing is looked at.
        assert_eq!(keys_of(&s, "nobody/*"), Vec::<String>::new());
        assert_eq!(s.scan_visits(&p("nobody/*")), 0);
        // Keys of one segment are found by `*`.
        s.put("top", v(json!(1)), 1, Ttl::Clear, None);
        assert_eq!(keys_of(&s, "*"), ["top"]);
        assert_eq!(s.scan_visits(&p("*")), 1);
    }

    #[test]
    fn an_etag_is_the_sequence_number_in_hex_quoted() {
        for seq in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            0x1f2e3d,
            0x9a9a_9a9a,
            1 << 32,
            u64::MAX,
        ] {
            assert_eq!(Etag::of(seq).as_str(), format!("\"{seq:x}\""));
            assert_eq!(Etag::of(seq).hex(), format!("{seq:x}").as_bytes());
        }
    }

    proptest::proptest! {
        #[test]
        fn any_etag_is_std_hex(seq: u64, shift in 0u32..64) {
            for s in [seq, seq >> shift] {
                let e = Etag::of(s);
                proptest::prop_assert_eq!(e.as_str(), format!("\"{s:x}\""));
            }
        }
    }

    #[test]
    fn a_posting_is_two_words() {
        // A key whose segment no other key has at its position costs one slot of this size in
        // its position's table (the glob index's share of memory per stored key).
        if cfg!(target_pointer_width = "64") {
            assert_eq!(size_of::<Posting>(), 16);
        }
    }

    proptest::proptest! {
        // Whatever keys were written and deleted, a glob finds exactly the keys a walk over
        // every key would, in key order.
        #[test]
        fn a_glob_finds_what_a_walk_finds(
            ops in proptest::collection::vec(
                (proptest::bool::weighted(0.7), proptest::collection::vec(0u8..4, 1..4)),
                0..60,
            ),
            globs in proptest::collection::vec(
                proptest::collection::vec(proptest::option::weighted(0.6, 0u8..4), 1..4),
                1..8,
            ),
        ) {
            let seg = |n: u8| ["a", "b", "ab", "c"][usize::from(n)];
            let mut s = Store::new(0);
            for (put, segs) in &ops {
                let key = segs.iter().map(|&n| seg(n)).collect::<Vec<_>>().join("/");
                if *put {
                    s.put(&key, v(json!(1)), 1, Ttl::Clear, None);
                } else {
                    s.remove(&key);
                }
            }
            for g in &globs {
                let text = g
                    .iter()
                    .map(|n| n.map_or("*", seg))
                    .collect::<Vec<_>>()
                    .join("/");
                let pattern = Pattern::parse(&text).unwrap();
                let found: Vec<String> = s.scan(&pattern).map(|(k, _)| k.to_string()).collect();
                let walked: Vec<String> = s
                    .keys()
                    .filter(|k| pattern.matches(k))
                    .map(|k| k.to_string())
                    .collect();
                proptest::prop_assert_eq!(found, walked, "glob {}", text);
            }
        }
    }

    #[test]
    fn an_entry_fits_a_small_allocation() {
        // The map boxes every entry: 56 bytes take a 64-byte block of the allocator (with its
        // header), 64 bytes an 80-byte one, for every stored key.
        if cfg!(target_pointer_width = "64") {
            assert_eq!(size_of::<Entry>(), 56);
        }
        let (tree, json) = Entry::value(json!({"a": [1, "x"]}));
        assert_eq!(&*json, br#"{"a":[1,"x"]}"#);
        assert_eq!(json, JsonText::from(&br#"{"a":[1,"x"]}"#[..]));
        assert_ne!(json, JsonText::from(&b"{}"[..]));
        assert!(tree.is_built());
        assert_eq!(MaybeTime::from(Some(0)).get(), Some(0));
        assert_eq!(MaybeTime::from(None).get(), None);
        assert_eq!(MaybeTime::NONE, MaybeTime::from(None));
    }

    #[test]
    fn a_loaded_store_is_the_store_its_writes_made() {
        let mut written = Store::new(0);
        written.put("b/x", v(json!({"n": 1})), 5, Ttl::After(100), None);
        written.put("a", v(json!([1, 2])), 6, Ttl::Clear, None);
        written.put("c/x", v(json!("s")), 7, Ttl::Clear, None);
        written.put("a", v(json!(3)), 8, Ttl::Clear, None);
        let mut entries: Vec<_> = written
            .keys()
            .map(|k| (k.clone(), written.get(k).unwrap().clone()))
            .collect();
        entries.reverse();
        // Out of order, and a stale duplicate first: the later one wins.
        let stale = (Key::from("a"), written.get("b/x").unwrap().clone());
        let loaded = Store::load(9, std::iter::once(stale).chain(entries));
        assert_eq!(loaded.last_seq(), 9);
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded.value_bytes(), written.value_bytes());
        for k in written.keys() {
            assert_eq!(loaded.get(k), written.get(k));
        }
        assert_eq!(loaded.next_deadline(), written.next_deadline());
        let glob = Pattern::parse("*/x").unwrap();
        let keys =
            |s: &Store| -> Vec<String> { s.scan(&glob).map(|(k, _)| k.to_string()).collect() };
        assert_eq!(keys(&loaded), ["b/x", "c/x"]);
        assert_eq!(loaded.scan_visits(&glob), 2);
    }

    #[test]
    fn external_changes_keep_their_sequence() {
        let mut a = Store::new(0);
        let mut b = Store::new(0);
        let c = a.put("k", v(json!(1)), 1, Ttl::Clear, None);
        assert!(b.apply_external(&c));
        assert!(!b.apply_external(&c), "replayed change is ignored");
        assert_eq!(b.get("k"), a.get("k"));
        assert_eq!(b.last_seq(), 1);
    }
}

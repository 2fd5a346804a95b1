//! Subscription pools: who listens to what, and the one frame per pool for each change.
//!
//! Owns the trie from key segments to pools, each pool's cached view (the object, the sorted
//! list, or nothing for event streams) and version, and the encoding of frames: ooo's
//! snapshot/patch envelope (§1.7), the same envelope tagged with the subscription for the
//! multiplexed `/_ws`, and AtomKV's SSE events (§2). For each published batch of changes a pool
//! yields at most one frame, and the adapter writes those same bytes to every subscriber of the
//! pool: nothing here is per subscriber. It does not know sockets; subscribers are counted only.

use crate::store::Key;
use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;

use crate::filter::Filters;
use crate::key::{Pattern, Segment};
use crate::log::{Log, Missed};
use crate::meta;
use crate::rules::Audience;
use crate::store::{newest_first, Change, Entry, Store};

#[cfg(feature = "coalescing")]
mod coalesce;
#[cfg(feature = "coalescing")]
pub use coalesce::{coalesce, COALESCE_MAX_BYTES};

/// A pool's identity, stable while it has subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(pub u64);

/// How a pool's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    /// ooo's envelope `{"snapshot","version","data"}`, sent as a binary WebSocket frame.
    Ooo,
    /// The same envelope with `"sub":"<pattern>"` first, for the multiplexed `/_ws`.
    Mux,
    /// AtomKV's server-sent events: `data:<json>\nid:/<key>:<revision>:<version>\n\n`.
    Sse,
}

/// One frame for every subscriber of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The pool.
    pub pool: PoolId,
    /// The bytes to send, the same for each subscriber.
    pub bytes: Bytes,
    /// Whether a subscriber that has not been sent this frame yet may get it folded into the
    /// next one with [`coalesce`]: true for the snapshot/patch envelopes (ooo's WebSocket,
    /// `/_ws`), false for SSE events (every event is promised, with its id).
    pub coalesce: bool,
}

/// What a subscriber gets first when it joins.
#[derive(Debug, Clone, PartialEq)]
pub enum Join {
    /// Its version is current: nothing to send.
    Current,
    /// Send this frame (a snapshot, or for SSE the current values as events).
    Frame(Bytes),
    /// SSE resume: send this frame, made of only what was missed since its version.
    Missed(Bytes),
}

#[derive(Debug)]
enum View {
    Object(Option<Entry>),
    List(Vec<(Key, Entry)>),
    Events,
}

#[derive(Debug)]
struct Pool {
    pattern: Pattern,
    enc: Encoding,
    // Who this pool is for: its view holds only the keys this audience may read, and its frames
    // go only to subscribers of this audience (never shared across audiences).
    audience: Audience,
    subscribers: usize,
    // The view reflects every change up to this sequence number.
    seq: u64,
    // The version sent with the last frame (what a client holds).
    version: u64,
    view: View,
    // With read filters, the filtered view last sent; frames are diffs of filtered views.
    filtered: Option<Value>,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    exact: Vec<PoolId>,
    subtree: Vec<PoolId>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.exact.is_empty()
            && self.subtree.is_empty()
    }
}

/// Where a pattern sits in the trie: its segments and whether it is a subtree.
fn trie_path(p: &Pattern) -> (Vec<Segment>, bool) {
    match p {
        Pattern::Key(k) => (
            k.split('/').map(|s| Segment::Lit(s.into())).collect(),
            false,
        ),
        Pattern::Glob(_, segs) => (segs.clone(), false),
        Pattern::Subtree(pre) if pre.is_empty() => (Vec::new(), true),
        Pattern::Subtree(pre) => (
            pre.split('/').map(|s| Segment::Lit(s.into())).collect(),
            true,
        ),
    }
}

/// Gauges of one pool, for the state API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    /// The pool.
    pub id: PoolId,
    /// Its pattern, as clients spell it.
    pub pattern: String,
    /// Its encoding.
    pub encoding: Encoding,
    /// Subscribers counted by the adapter.
    pub subscribers: usize,
    /// Version of the last frame.
    pub version: u64,
    /// Whom the pool is for (`all`, `public`, or `token[claims]`).
    pub audience: String,
}

/// The pools. See the module docs.
#[derive(Debug, Default)]
pub struct Pools {
    pools: HashMap<PoolId, Pool>,
    by_key: HashMap<(Pattern, Encoding, Audience), PoolId>,
    root: Node,
    next_id: u64,
    // The sequence number of the last published change: every pool's view is current through it.
    published: u64,
    // Joins that asked to resume from a version, by what they got first (see `Pools::resumes`).
    resumed: u64,
    resume_snapshots: u64,
}

impl Pools {
    /// No pools.
    pub fn new() -> Pools {
        Pools::default()
    }

    /// Number of pools.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Whether there are no pools.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Total subscribers over all pools.
    pub fn subscribers(&self) -> usize {
        self.pools.values().map(|p| p.subscribers).sum()
    }

    /// Joins that gave a version to resume from (`/_ws` `v`, `?v=`, `Last-Event-ID`), by what
    /// they were sent first: `(resumed, snapshots)`. Resumed: only what changed since (or
    /// nothing). Snapshot: the whole view, because the change log no longer reaches back to
    /// that version or the changes would be longer than the view.
    pub fn resumes(&self) -> (u64, u64) {
        (self.resumed, self.resume_snapshots)
    }

    /// Gauges of every pool, ordered by pattern.
    pub fn info(&self) -> Vec<PoolInfo> {
        let mut v: Vec<_> = self
            .pools
            .iter()
            .map(|(id, p)| PoolInfo {
                id: *id,
                pattern: p.pattern.as_str(),
                encoding: p.enc,
                subscribers: p.subscribers,
                version: p.version,
                audience: p.audience.label(),
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.pattern, a.encoding, &a.audience).cmp(&(&b.pattern, b.encoding, &b.audience))
        });
        v
    }

    /// The pattern of a pool.
    pub fn pattern(&self, id: PoolId) -> Option<&Pattern> {
        self.pools.get(&id).map(|p| &p.pattern)
    }

    /// The audience of a pool.
    pub fn audience(&self, id: PoolId) -> Option<&Audience> {
        self.pools.get(&id).map(|p| &p.audience)
    }

    /// Adds a subscriber to the pool for `(pattern, enc)`, creating it from the store if needed,
    /// and returns what to send first. `version` is the client's last version (ooo `?v=`,
    /// `Last-Event-ID`, `/_ws` resume); `initial` asks SSE for the current values (ooo and `/_ws`
    /// always start with a snapshot).
    // The pool needs the three read-only parts of the engine it is built from; the engine is the
    // only caller.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        pattern: Pattern,
        enc: Encoding,
        version: Option<u64>,
        initial: bool,
        audience: Audience,
        store: &Store,
        log: &Log,
        filters: &Filters,
    ) -> (PoolId, Join) {
        let pool_key = (pattern, enc, audience);
        let id = match self.by_key.get(&pool_key) {
            Some(id) => *id,
            None => self.create(pool_key, store, filters),
        };
        let pool = self.pools.get_mut(&id).expect("pool just found or created");
        pool.subscribers += 1;
        // The view is current through this sequence number: every publish covers all pools.
        let upto = pool.seq.max(self.published);
        // Replay covers only what this audience may read.
        let missed = version.map(|v| {
            log.since_with_origin(v, upto, &pool.pattern).map(|m| {
                m.into_iter()
                    .filter(|(s, _)| filters.visible(s.key(), &pool.audience))
                    .collect::<Vec<_>>()
            })
        });
        // A `/_ws` or ooo resume made of the missed changes (not a snapshot).
        let mut resumed = false;
        let first = match (missed, enc) {
            (Some(Ok(m)), _) if m.is_empty() => Join::Current,
            (Some(Ok(m)), Encoding::Sse) => {
                let steps: Vec<Missed> = m.into_iter().map(|(s, _)| s).collect();
                Join::Missed(encode_missed(&steps, filters))
            }
            (_, Encoding::Sse) if !initial && version.is_none() => Join::Current,
            (_, Encoding::Sse) => Join::Frame(current_events(
                &pool.pattern,
                &pool.audience,
                store,
                filters,
            )),
            (Some(Ok(m)), _) => {
                let (b, snapshot) = pool.resume(&m, upto, filters);
                resumed = !snapshot;
                Join::Frame(b)
            }
            _ => Join::Frame(pool.snapshot(filters, upto)),
        };
        if version.is_some() {
            match (&first, resumed) {
                (Join::Current | Join::Missed(_), _) | (Join::Frame(_), true) => self.resumed += 1,
                (Join::Frame(_), false) => self.resume_snapshots += 1,
            }
        }
        (id, first)
    }

    fn create(
        &mut self,
        (pattern, enc, audience): (Pattern, Encoding, Audience),
        store: &Store,
        filters: &Filters,
    ) -> PoolId {
        let id = PoolId(self.next_id);
        self.next_id += 1;
        let view = build_view(&pattern, enc, &audience, store, filters);
        let seq = store.last_seq();
        let mut pool = Pool {
            pattern: pattern.clone(),
            enc,
            audience: audience.clone(),
            subscribers: 0,
            seq,
            version: seq,
            view,
            filtered: None,
        };
        if enc != Encoding::Sse && filters.has_read_filters(&pattern.as_str()) {
            pool.filtered = Some(pool.filtered_view(filters));
        }
        let (segs, subtree) = trie_path(&pattern);
        let mut node = &mut self.root;
        for s in segs {
            node = match s {
                Segment::Lit(l) => node.children.entry(l).or_default(),
                Segment::Star => node.star.get_or_insert_with(Default::default),
            };
        }
        if subtree {
            node.subtree.push(id)
        } else {
            node.exact.push(id)
        }
        self.by_key.insert((pattern, enc, audience), id);
        self.pools.insert(id, pool);
        id
    }

    /// Removes a subscriber; the pool goes away with its last one. Returns whether it did.
    pub fn leave(&mut self, id: PoolId) -> bool {
        let Some(pool) = self.pools.get_mut(&id) else {
            return false;
        };
        pool.subscribers = pool.subscribers.saturating_sub(1);
        if pool.subscribers > 0 {
            return false;
        }
        let pool = self.pools.remove(&id).expect("present");
        self.by_key
            .remove(&(pool.pattern.clone(), pool.enc, pool.audience.clone()));
        let (segs, subtree) = trie_path(&pool.pattern);
        remove_from(&mut self.root, &segs, subtree, id);
        true
    }

    /// Appends to `out` the pools whose pattern matches `key`. Cost grows with the key's depth
    /// (and the `*` branches on the way), not with the number of pools.
    pub fn matching(&self, key: &str, out: &mut Vec<PoolId>) {
        let segs: Vec<&str> = key.split('/').collect();
        let mut stack: Vec<(&Node, usize)> = vec![(&self.root, 0)];
        while let Some((node, i)) = stack.pop() {
            if i == segs.len() {
                out.extend_from_slice(&node.exact);
                continue;
            }
            out.extend_from_slice(&node.subtree);
            if let Some(c) = node.children.get(segs[i]) {
                stack.push((c, i + 1));
            }
            if let Some(s) = &node.star {
                stack.push((s, i + 1));
            }
        }
    }

    /// Routes one operation's changes (in sequence order) to the pools and returns at most one
    /// frame per pool.
    pub fn publish(&mut self, changes: &[Change], filters: &Filters) -> Vec<Frame> {
        let mut order: Vec<PoolId> = Vec::new();
        let mut per_pool: HashMap<PoolId, Vec<&Change>> = HashMap::new();
        let mut ids = Vec::new();
        for c in changes {
            ids.clear();
            self.matching(&c.key, &mut ids);
            for id in &ids {
                per_pool
                    .entry(*id)
                    .or_insert_with(|| {
                        order.push(*id);
                        Vec::new()
                    })
                    .push(c);
            }
        }
        if let Some(last) = changes.last() {
            self.published = self.published.max(last.seq);
        }
        let mut frames = Vec::new();
        for id in order {
            let Some(pool) = self.pools.get_mut(&id) else {
                continue;
            };
            // Changes already in the view (the pool was built after they were applied) are skipped.
            let newer: Vec<&Change> = per_pool[&id]
                .iter()
                .copied()
                .filter(|c| c.seq > pool.seq)
                .collect();
            let Some(last) = newer.last() else {
                continue;
            };
            pool.seq = last.seq;
            // Keys this pool's audience may not read never reach its view or its frames.
            let cs: Vec<&Change> = newer
                .into_iter()
                .filter(|c| filters.visible(&c.key, &pool.audience))
                .collect();
            if cs.is_empty() {
                continue;
            }
            if let Some(bytes) = pool.apply(&cs, filters) {
                frames.push(Frame {
                    pool: id,
                    bytes,
                    coalesce: pool.enc != Encoding::Sse,
                });
            }
        }
        frames
    }
}

impl Pools {
    /// After the changes from `first_seq` on were reverted (their commit failed): every pool whose
    /// view was built while they were applied is rebuilt from the store and yields a snapshot (for
    /// SSE, the current values), so its subscribers resync to what is really stored.
    pub fn rebuild_after_revert(
        &mut self,
        first_seq: u64,
        store: &Store,
        filters: &Filters,
    ) -> Vec<Frame> {
        let last = store.last_seq();
        let mut frames = Vec::new();
        for (id, pool) in self.pools.iter_mut() {
            if pool.seq < first_seq {
                continue;
            }
            pool.view = build_view(&pool.pattern, pool.enc, &pool.audience, store, filters);
            pool.seq = last;
            pool.version = last;
            if pool.filtered.is_some() {
                pool.filtered = Some(pool.filtered_view(filters));
            }
            let bytes = match pool.enc {
                Encoding::Sse => current_events(&pool.pattern, &pool.audience, store, filters),
                _ => pool.snapshot(filters, last),
            };
            if !bytes.is_empty() {
                frames.push(Frame {
                    pool: *id,
                    bytes,
                    coalesce: pool.enc != Encoding::Sse,
                });
            }
        }
        self.published = self.published.min(last);
        frames
    }
}

// A pool's view from the store: the object, the list of keys the audience may read, or nothing.
fn build_view(
    pattern: &Pattern,
    enc: Encoding,
    audience: &Audience,
    store: &Store,
    filters: &Filters,
) -> View {
    match (pattern, enc) {
        (_, Encoding::Sse) => View::Events,
        (Pattern::Key(k), _) => View::Object(store.get(k).cloned()),
        (p, _) => {
            let mut items = store.list(p);
            items.retain(|(k, _)| filters.visible(k, audience));
            View::List(items)
        }
    }
}

fn remove_from(node: &mut Node, segs: &[Segment], subtree: bool, id: PoolId) -> bool {
    match segs.split_first() {
        None => {
            let v = if subtree {
                &mut node.subtree
            } else {
                &mut node.exact
            };
            v.retain(|x| *x != id);
        }
        Some((Segment::Lit(l), rest)) => {
            if let Some(c) = node.children.get_mut(l) {
                if remove_from(c, rest, subtree, id) {
                    node.children.remove(l);
                }
            }
        }
        Some((Segment::Star, rest)) => {
            if let Some(c) = node.star.as_deref_mut() {
                if remove_from(c, rest, subtree, id) {
                    node.star = None;
                }
            }
        }
    }
    node.is_empty()
}

impl Pool {
    /// `revs` are the keys this frame changes with their new revisions, in sequence order; only
    /// `/_ws` frames carry them (as `"revs":[["<key>",<revision>],..]`), because ooo's meta object
    /// has no revision and the JS client needs one per key (AtomKV's `[key, value, revision]`).
    fn envelope(&self, snapshot: bool, version: u64, revs: &[(&str, u64)], data: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(data.len() + 64 + revs.len() * 24);
        out.push(b'{');
        if self.enc == Encoding::Mux {
            out.extend_from_slice(b"\"sub\":");
            meta::push_str(&mut out, &self.pattern.as_str());
            out.push(b',');
        }
        out.extend_from_slice(if snapshot {
            b"\"snapshot\":true"
        } else {
            b"\"snapshot\":false"
        });
        out.extend_from_slice(format!(",\"version\":\"{version:x}\"").as_bytes());
        if self.enc == Encoding::Mux {
            out.extend_from_slice(b",\"revs\":[");
            for (i, (k, r)) in revs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'[');
                meta::push_str(&mut out, k);
                out.extend_from_slice(format!(",{r}]").as_bytes());
            }
            out.push(b']');
        }
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data);
        out.push(b'}');
        out.into()
    }

    fn view_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.view {
            View::Object(Some(e)) => meta::write(&mut out, self.pattern.scan_prefix(), e),
            View::Object(None) => out.extend_from_slice(meta::EMPTY_OBJECT),
            View::List(items) => meta::write_list(&mut out, items.iter().map(|(k, e)| (&**k, e))),
            View::Events => {}
        }
        out
    }

    fn filtered_view(&self, filters: &Filters) -> Value {
        match &self.view {
            View::Object(e) => {
                let key = self.pattern.scan_prefix();
                match e {
                    Some(e) => filters
                        .read_object_value(key, meta::value(key, e))
                        .unwrap_or_else(
                            |_| serde_json::json!({"created":0,"updated":0,"index":"","data":null}),
                        ),
                    None => meta::empty_value(),
                }
            }
            View::List(items) => {
                let p = self.pattern.as_str();
                let list = items
                    .iter()
                    .filter_map(|(k, e)| filters.read_object_value(k, meta::value(k, e)).ok())
                    .collect();
                Value::Array(filters.read_list_values(&p, list).unwrap_or_default())
            }
            View::Events => Value::Null,
        }
    }

    fn snapshot(&self, filters: &Filters, upto: u64) -> Bytes {
        let version = upto.max(self.version);
        let revs = self.view_revs();
        match (&self.view, &self.filtered) {
            (View::Events, _) => Bytes::new(),
            (_, Some(_)) => self.envelope(
                true,
                version,
                &revs,
                &crate::json::encode(&self.filtered_view(filters)),
            ),
            _ => self.envelope(true, version, &revs, &self.view_bytes()),
        }
    }

    /// Every key of the view with its revision, oldest change first (so a client that diffs a
    /// snapshot against what it held reports the differences in the order they were made).
    fn view_revs(&self) -> Vec<(&str, u64)> {
        if self.enc != Encoding::Mux {
            return Vec::new();
        }
        match &self.view {
            View::Object(Some(e)) => vec![(self.pattern.scan_prefix(), e.revision)],
            View::List(items) => {
                let mut v: Vec<(&str, u64, u64)> = items
                    .iter()
                    .map(|(k, e)| (&**k, e.revision, e.seq))
                    .collect();
                v.sort_by_key(|x| x.2);
                v.into_iter().map(|(k, r, _)| (k, r)).collect()
            }
            View::Object(None) | View::Events => Vec::new(),
        }
    }

    /// The first frame for a client that holds this pool's view as of an older version: for an
    /// unfiltered list, the missed changes as positional ops against the list the client holds
    /// (rebuilt from the log); otherwise, or when that is longer than the list, a snapshot.
    /// Whether it is a snapshot comes with it.
    fn resume(
        &self,
        steps: &[(Missed, Option<i64>)],
        upto: u64,
        filters: &Filters,
    ) -> (Bytes, bool) {
        let (View::List(items), None) = (&self.view, &self.filtered) else {
            return (self.snapshot(filters, upto), true);
        };
        let origin: HashMap<&str, Option<i64>> =
            steps.iter().map(|(m, o)| (&**m.key(), *o)).collect();
        // The client's list: today's items minus those created since, at their old `created`,
        // plus those deleted since.
        let mut old: Vec<(Key, i64)> = items
            .iter()
            .filter_map(|(k, e)| match origin.get(&**k) {
                Some(None) => None,
                Some(Some(c)) => Some((k.clone(), *c)),
                None => Some((k.clone(), e.created)),
            })
            .collect();
        for (m, o) in steps {
            if let (Missed::Delete(k, ..), Some(c)) = (m, o) {
                old.push((k.clone(), *c));
            }
        }
        let order = |a: &(Key, i64), b: &(Key, i64)| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0));
        old.sort_by(order);
        let mut ops: Vec<Vec<u8>> = Vec::new();
        for (m, o) in steps {
            let find = |old: &Vec<(Key, i64)>, c: i64| {
                old.binary_search_by(|p| order(p, &(m.key().clone(), c)))
            };
            if let Some(c) = o {
                if let Ok(i) = find(&old, *c) {
                    match m {
                        Missed::Update(k, e) if e.created == *c => {
                            ops.push(replace_op(&format!("/{i}"), &meta::bytes(k, e)));
                            continue;
                        }
                        _ => {
                            old.remove(i);
                            ops.push(
                                format!("{{\"op\":\"remove\",\"path\":\"/{i}\"}}").into_bytes(),
                            );
                        }
                    }
                }
            }
            if let Missed::Create(k, e) | Missed::Update(k, e) = m {
                let j = find(&old, e.created).unwrap_or_else(|j| j);
                old.insert(j, (k.clone(), e.created));
                let mut op = format!("{{\"op\":\"add\",\"path\":\"/{j}\",\"value\":").into_bytes();
                meta::write(&mut op, k, e);
                op.push(b'}');
                ops.push(op);
            }
        }
        if ops.len() > items.len() {
            return (self.snapshot(filters, upto), true);
        }
        let revs: Vec<(&str, u64)> = steps
            .iter()
            .map(|(m, _)| match m {
                Missed::Create(k, e) | Missed::Update(k, e) => (&**k, e.revision),
                Missed::Delete(k, rev, _) => (&**k, *rev),
            })
            .collect();
        (
            self.envelope(false, upto.max(self.version), &revs, &join_ops(&ops)),
            false,
        )
    }

    fn apply(&mut self, cs: &[&Change], filters: &Filters) -> Option<Bytes> {
        let version = cs[cs.len() - 1].seq;
        let revs: Vec<(&str, u64)> = if self.enc == Encoding::Mux {
            cs.iter().map(|c| (&*c.key, c.revision)).collect()
        } else {
            Vec::new()
        };
        if let View::Events = self.view {
            let mut out = Vec::new();
            for c in cs {
                encode_event(&mut out, c, filters);
            }
            self.version = version;
            return Some(out.into());
        }
        if self.filtered.is_some() {
            self.update_view(cs);
            let new = self.filtered_view(filters);
            let old = self.filtered.replace(new.clone()).unwrap_or(Value::Null);
            let patch = json_patch::diff(&old, &new);
            if patch.is_empty() {
                return None;
            }
            self.version = version;
            return Some(self.envelope(
                false,
                version,
                &revs,
                &crate::json::encode(&serde_json::to_value(&patch).ok()?),
            ));
        }
        let frame = match &mut self.view {
            View::Object(cur) => {
                let old = cur.take();
                let last = cs[cs.len() - 1];
                let patch = if cs.len() == 1 {
                    last.patch.as_deref()
                } else {
                    None
                };
                // Diffed against the change's own entry before the view keeps a copy of it: the
                // tree a diff builds is then the one the copy shares and the stored entry keeps
                // for the key's next write (`store::Tree`).
                let ops = match (&old, &last.entry) {
                    (Some(o), Some(n)) => {
                        let usable =
                            patch.filter(|_| last.prev.as_ref().is_some_and(|p| p.seq == o.seq));
                        object_ops(o, n, usable)
                    }
                    _ => None,
                };
                *cur = last.entry.clone();
                match (&old, &*cur) {
                    (None, None) => None,
                    (None, Some(_)) => Some((true, self.view_bytes())),
                    (Some(_), Some(_)) => ops.map(|ops| (false, ops)),
                    (Some(_), None) => Some((false, DELETE_OPS.to_vec())),
                }
            }
            View::List(items) => {
                let mut ops: Vec<Vec<u8>> = Vec::new();
                for c in cs {
                    list_change(items, c, &mut ops);
                }
                if ops.is_empty() {
                    None
                } else if ops.len() > 1 && ops.len() > items.len() {
                    // Cheaper to resend the list (a glob delete empties it in one frame).
                    let mut out = Vec::new();
                    meta::write_list(&mut out, items.iter().map(|(k, e)| (&**k, e)));
                    Some((true, out))
                } else {
                    Some((false, join_ops(&ops)))
                }
            }
            View::Events => None,
        };
        let (snapshot, data) = frame?;
        self.version = version;
        Some(self.envelope(snapshot, version, &revs, &data))
    }

    fn update_view(&mut self, cs: &[&Change]) {
        match &mut self.view {
            View::Object(cur) => *cur = cs[cs.len() - 1].entry.clone(),
            View::List(items) => {
                let mut sink = Vec::new();
                for c in cs {
                    list_change(items, c, &mut sink);
                }
            }
            View::Events => {}
        }
    }
}

const DELETE_OPS: &[u8] = br#"[{"op":"replace","path":"/created","value":0},{"op":"replace","path":"/updated","value":0},{"op":"replace","path":"/index","value":""},{"op":"remove","path":"/path"},{"op":"replace","path":"/data","value":{}}]"#;

fn join_ops(ops: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ops.iter().map(|o| o.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, o) in ops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(o);
    }
    out.push(b']');
    out
}

fn replace_op(path: &str, value: &[u8]) -> Vec<u8> {
    let mut o = format!("{{\"op\":\"replace\",\"path\":\"{path}\",\"value\":").into_bytes();
    o.extend_from_slice(value);
    o.push(b'}');
    o
}

/// Ops turning the meta object of `o` into that of `n` (same key). Uses the write's own patch of
/// the value when there is one, else a diff of the values.
fn object_ops(o: &Entry, n: &Entry, patch: Option<&json_patch::Patch>) -> Option<Vec<u8>> {
    let mut ops = Vec::new();
    if o.created != n.created {
        ops.push(replace_op("/created", n.created.to_string().as_bytes()));
    }
    if o.updated != n.updated {
        ops.push(replace_op("/updated", n.updated.to_string().as_bytes()));
    }
    if o.json != n.json {
        let diff;
        let data_ops: &[json_patch::PatchOperation] = match patch {
            Some(p) => p,
            None => {
                diff = json_patch::diff(o.data(), n.data());
                &diff
            }
        };
        for op in data_ops {
            let mut v = serde_json::to_value(op).ok()?;
            for field in ["path", "from"] {
                if let Some(Value::String(s)) = v.get_mut(field) {
                    *s = format!("/data{s}");
                }
            }
            ops.push(crate::json::encode(&v));
        }
    }
    if ops.is_empty() {
        None
    } else {
        Some(join_ops(&ops))
    }
}

fn position(items: &[(Key, Entry)], key: &str, e: &Entry) -> Result<usize, usize> {
    items.binary_search_by(|(k, x)| newest_first(k, x, key, e))
}

/// Applies one change to a sorted list view, appending positional ops (ooo's list patches).
fn list_change(items: &mut Vec<(Key, Entry)>, c: &Change, ops: &mut Vec<Vec<u8>>) {
    let old = c
        .prev
        .as_ref()
        .and_then(|p| position(items, &c.key, p).ok());
    match (old, &c.entry) {
        (Some(i), Some(n)) if items[i].1.created == n.created => {
            items[i].1 = n.clone();
            ops.push(replace_op(&format!("/{i}"), &meta::bytes(&c.key, n)));
        }
        (old, Some(n)) => {
            if let Some(i) = old {
                items.remove(i);
                ops.push(format!("{{\"op\":\"remove\",\"path\":\"/{i}\"}}").into_bytes());
            }
            let j = position(items, &c.key, n).unwrap_or_else(|j| j);
            items.insert(j, (c.key.clone(), n.clone()));
            let mut o = format!("{{\"op\":\"add\",\"path\":\"/{j}\",\"value\":").into_bytes();
            meta::write(&mut o, &c.key, n);
            o.push(b'}');
            ops.push(o);
        }
        (Some(i), None) => {
            items.remove(i);
            ops.push(format!("{{\"op\":\"remove\",\"path\":\"/{i}\"}}").into_bytes());
        }
        (None, None) => {}
    }
}

/// The bare value a reader of `key` may see, after read filters; `None` when filtered out.
fn sse_data(key: &str, e: &Entry, filters: &Filters) -> Option<Vec<u8>> {
    if !filters.has_read_filters(key) {
        return Some(e.json.to_vec());
    }
    let m = filters.read_object_value(key, meta::value(key, e)).ok()?;
    Some(crate::json::encode(m.get("data").unwrap_or(&Value::Null)))
}

/// One event. Its id is AtomKV's `/<key>:<revision>` followed by `:<version>`, the store sequence
/// number of the change in hex: a key's revisions start again at 0 when it is created after a
/// delete, so `key:revision` alone may name two points of the stream; the version is unique and
/// ordered, and `Last-Event-ID` resumes from it. AtomKV's client splits the id on `:` and reads
/// the first two fields, so it is unaffected.
fn push_event(out: &mut Vec<u8>, key: &str, revision: u64, seq: u64, data: Option<&[u8]>) {
    match data {
        Some(d) => {
            out.extend_from_slice(b"data:");
            out.extend_from_slice(d);
        }
        None => out.extend_from_slice(b"event:delete\ndata:null"),
    }
    // The key as in a URL path (percent-encoded beyond ASCII letters, digits and `_.-/`), so the
    // id is ASCII (a header on the way back) and `:` only separates its fields.
    let key = crate::key::encode_http_path(key);
    out.extend_from_slice(format!("\nid:/{key}:{revision}:{seq:x}\n\n").as_bytes());
}

fn encode_event(out: &mut Vec<u8>, c: &Change, filters: &Filters) {
    match &c.entry {
        Some(e) => {
            if let Some(d) = sse_data(&c.key, e, filters) {
                push_event(out, &c.key, c.revision, c.seq, Some(&d));
            }
        }
        None => push_event(out, &c.key, c.revision, c.seq, None),
    }
}

fn encode_missed(m: &[Missed], filters: &Filters) -> Bytes {
    let mut out = Vec::new();
    for step in m {
        match step {
            Missed::Create(k, e) | Missed::Update(k, e) => {
                if let Some(d) = sse_data(k, e, filters) {
                    push_event(&mut out, k, e.revision, e.seq, Some(&d));
                }
            }
            Missed::Delete(k, rev, seq) => push_event(&mut out, k, *rev, *seq, None),
        }
    }
    out.into()
}

/// SSE initial values (and resync): the current value of every key matching `pattern`, as
/// events, in the order of their last change (oldest first), so the last event is the newest
/// and its id's version covers every event before it: a stream cut in the middle of these
/// resumes from the last one it got without losing the rest (they changed after it).
fn current_events(
    pattern: &Pattern,
    audience: &Audience,
    store: &Store,
    filters: &Filters,
) -> Bytes {
    let mut out = Vec::new();
    let items: Vec<(Key, Entry)> = match pattern {
        Pattern::Key(k) => store
            .get(k)
            .map(|e| vec![(k.as_ref().into(), e.clone())])
            .unwrap_or_default(),
        p => {
            let mut items: Vec<_> = store.scan(p).map(|(k, e)| (k.clone(), e.clone())).collect();
            items.sort_by_key(|(_, e)| e.seq);
            items
        }
    };
    for (k, e) in &items {
        if !filters.visible(k, audience) {
            continue;
        }
        if let Some(d) = sse_data(k, e, filters) {
            push_event(&mut out, k, e.revision, e.seq, Some(&d));
        }
    }
    out.into()
}

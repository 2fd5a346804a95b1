//! The engine: one Stateline state (clock, store, log, filters and rules, pools) driven by its
//! adapter.
//!
//! Owns the order of effects. Inputs arrive through [`Engine::execute`] (typed operations),
//! [`Engine::handle_timeout`] (TTL expiry) and the front door in [`crate::web`]; each returns
//! the [`Change`]s it applied. The adapter makes them durable if it has a disk, then calls
//! [`Engine::publish`] to get one frame per affected pool, or [`Engine::revert`] if the commit
//! failed. Time enters as a [`Tick`]; nothing here blocks, sleeps or touches a socket.
//!
//! Every operation takes one path (`run`, in `engine/checks.rs`): its doc lists the order of
//! the checks, all of them before the first mutation. The files of this module: `ops` (what
//! each kind of [`Op`] reads, touches, computes and mutates), `access` (identities, rules,
//! schemas, denials), `subscriptions` (pools and frames), `time` (clock and TTL),
//! `replication` (a cluster node's hooks).

use crate::store::Key;
use std::collections::VecDeque;

use serde_json::Value;

use crate::clock::{Clock, Tick};
use crate::error::Error;
use crate::filter::Filters;
use crate::history::History;
use crate::json;
use crate::log::Log;
use crate::pool::{Frame, Pools};
use crate::receipts::{Named, Receipts, Seen, Unordered};
use crate::rules::{Identity, Rules};
use crate::store::{Change, Entry, JsonText, Store, Ttl};

mod access;
mod checks;
mod lease;
mod ops;
mod replication;
mod server_value;
mod subscriptions;
#[cfg(test)]
mod tests;
mod time;
mod tx;
#[cfg(test)]
mod tx_tests;

pub use access::{Denial, DenialReason, DeniedStats};

/// Limits and knobs. Defaults follow ooo where it has one.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body in bytes (ooo: 10 MiB).
    pub max_body: usize,
    /// Deepest JSON nesting accepted in a value.
    pub max_depth: usize,
    /// Changes kept in the log for resume.
    pub log_entries: usize,
    /// Bytes of keys and values kept in the log for resume.
    pub log_bytes: usize,
    /// Origins allowed by CORS; `*` allows any.
    pub cors_origins: Vec<String>,
    /// Largest page of the keys API (ooo: 500).
    pub max_keys_page: usize,
    /// Most JSON values (nodes) one body or `/_ws` message may hold (see [`json::MAX_NODES`]):
    /// a parsed tree costs ~25 times its text, so bytes alone do not bound memory.
    pub max_nodes: usize,
    /// Host names (`name` or `name:port`) this server is reached by, besides `localhost`,
    /// `127.0.0.1` and `[::1]`: a request whose `Origin` is its own `Host` is same-origin only
    /// when that host is one of these (else a rebinding DNS name would pass as same-origin).
    pub allowed_hosts: Vec<String>,
    /// Key history (`GET /<key>?history=N`): versions kept per key (the largest `N`; 0 turns
    /// history off) and bytes kept in total (see [`crate::history`] for why each).
    pub history: crate::history::Limits,
    /// Idempotent writes (`rid`, `Idempotency-Key`): receipts kept and their bytes (see
    /// [`crate::receipts`] for why each).
    pub receipts: crate::receipts::Limits,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body: 10 << 20,
            max_depth: 64,
            log_entries: 100_000,
            log_bytes: 64 << 20,
            cors_origins: vec!["*".into()],
            max_keys_page: 500,
            max_nodes: json::MAX_NODES,
            allowed_hosts: Vec::new(),
            history: crate::history::Limits::default(),
            receipts: crate::receipts::Limits::default(),
        }
    }
}

/// A write's precondition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cond {
    /// None.
    #[default]
    Always,
    /// AtomKV `PUT` + `X-Revision: n`: `n` must be the current revision plus one (0 creates).
    NextRevision(u64),
    /// `If-Match`: the current entity tag must be one of these (`*`: the key must exist).
    IfMatch(Vec<String>),
    /// `If-None-Match: *`: the key must not exist.
    IfAbsent,
}

/// How a `PATCH` body is read.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchKind {
    /// ooo's deep merge (the default for `application/json`).
    Merge(Value),
    /// RFC 7396 merge patch (`application/merge-patch+json`).
    MergePatch(Value),
    /// RFC 6902 JSON Patch (`application/json-patch+json`).
    JsonPatch(json_patch::Patch),
}

/// The value a set or a push gives: a tree, or JSON text that is exactly what storing the tree would
/// write ([`json::canonical`]). A body that arrives compact is kept as its bytes: stored and
/// logged as they are, with its tree built only if something needs one (a write filter, a
/// schema, a server value, a subscriber's diff), which is most of a small write's cost saved.
#[derive(Debug, Clone)]
pub enum Given {
    /// A parsed value.
    Tree(Value),
    /// Canonical JSON text, with its nesting depth ([`json::depth`]).
    Text(JsonText, usize),
}

impl From<Value> for Given {
    fn from(v: Value) -> Given {
        Given::Tree(v)
    }
}

/// Values compare as values, whichever way each is held.
impl PartialEq for Given {
    fn eq(&self, other: &Given) -> bool {
        match (self, other) {
            (Given::Tree(a), Given::Tree(b)) => a == b,
            (Given::Text(a, _), Given::Text(b, _)) => a == b,
            (Given::Text(t, _), Given::Tree(v)) | (Given::Tree(v), Given::Text(t, _)) => {
                **t == json::encode(v)[..]
            }
        }
    }
}

impl Given {
    /// `body` as text when it is canonical under these limits, else `None` (parse it).
    pub fn text(body: &[u8], max_depth: usize, max_nodes: usize) -> Option<Given> {
        json::canonical(body, max_depth, max_nodes).map(|d| Given::Text(JsonText::from(body), d))
    }

    /// The tree, built from the text if that is what this holds.
    pub fn tree(&mut self) -> &mut Value {
        if let Given::Text(t, _) = self {
            let v = text_tree(t);
            *self = Given::Tree(v);
        }
        match self {
            Given::Tree(v) => v,
            // Replaced by its tree just above.
            Given::Text(..) => unreachable!("a text was replaced by its tree"),
        }
    }

    /// The tree, built from the text if that is what this holds.
    pub fn into_tree(self) -> Value {
        match self {
            Given::Tree(v) => v,
            Given::Text(t, _) => text_tree(&t),
        }
    }

    /// The JSON text the value is stored as (the tree's compact encoding).
    pub fn json_text(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Given::Tree(v) => json::encode(v).into(),
            Given::Text(t, _) => (&**t).into(),
        }
    }
}

// A canonical text's tree. It always parses (`json::canonical` checked the grammar, UTF-8 and
// the nesting); `null` stands in for what cannot happen rather than a panic.
fn text_tree(t: &JsonText) -> Value {
    serde_json::from_slice(t).unwrap_or(Value::Null)
}

/// A typed operation: what HTTP routes, `/_ws` messages and the Rust API all become.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create or replace a key.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Given,
        /// TTL change.
        ttl: Ttl,
        /// Precondition.
        cond: Cond,
    },
    /// Add a value under `prefix/*` with a new time-ordered key.
    Push {
        /// The glob `prefix/*`.
        target: String,
        /// The value.
        value: Given,
        /// TTL change.
        ttl: Ttl,
    },
    /// Patch an existing key.
    Patch {
        /// The key.
        key: String,
        /// The patch.
        patch: PatchKind,
        /// Precondition.
        cond: Cond,
    },
    /// Delete a key, or every key matching a glob.
    Delete {
        /// Key or glob.
        target: String,
        /// Precondition (keys only).
        cond: Cond,
    },
    /// Add `by` to an integer, creating it when missing.
    Incr {
        /// The key.
        key: String,
        /// The amount (may be negative).
        by: i64,
        /// TTL change.
        ttl: Ttl,
    },
    /// Read and delete in one step.
    Take {
        /// The key.
        key: String,
    },
    /// Move a key atomically.
    Rename {
        /// Source key.
        from: String,
        /// Target key.
        to: String,
        /// Replace the target if it exists.
        overwrite: bool,
    },
    /// A transaction: every compare holds, then every write applies in order, or nothing
    /// changes (see [`Tx`]).
    Tx(Tx),
}

/// A transaction (`POST /_tx`, the `tx` op on `/_ws`): compares on any keys, judged against the
/// state before the first write, then writes applied in order (each sees the ones before it),
/// all or nothing, with one frame per pool for the whole.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tx {
    /// The compares (etcd's `compare`), all of which must hold.
    pub compares: Vec<Compare>,
    /// The writes: [`Op::Set`], [`Op::Push`], [`Op::Patch`], [`Op::Delete`] and [`Op::Incr`].
    pub writes: Vec<Op>,
}

/// Most writes one transaction may hold: each is checked and applied under the engine's one
/// lock, and a cluster orders the whole as one JetStream atomic batch, which holds at most
/// 1000 messages (a write may change more than one key: keep room for a limit's evictions).
pub const MAX_TX_WRITES: usize = 100;

/// Most compares one transaction may hold: each is one lookup, and 100 is more keys than any
/// invariant a client checks in one step spans.
pub const MAX_TX_COMPARES: usize = 100;

/// A transaction's precondition on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key exists with this revision.
    Revision {
        /// The key.
        key: String,
        /// Its revision.
        revision: u64,
    },
    /// The key does not exist.
    Absent {
        /// The key.
        key: String,
    },
    /// The key exists.
    Exists {
        /// The key.
        key: String,
    },
}

impl Compare {
    /// The key compared.
    pub fn key(&self) -> &str {
        match self {
            Compare::Revision { key, .. } | Compare::Absent { key } | Compare::Exists { key } => {
                key
            }
        }
    }
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A key now holds this entry.
    Written(Key, Entry),
    /// Keys were deleted (how many).
    Deleted(usize),
    /// A key was read and deleted; its last entry.
    Taken(Key, Entry),
    /// A transaction: each write's outcome, in order.
    Tx(TxOutcome),
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct TxOutcome {
    /// Each write's op name (as on `/_ws`: `set`, `push`, ...) and outcome, in the order of
    /// [`Tx::writes`].
    pub results: Vec<(&'static str, Outcome)>,
    /// The version the transaction leaves the state at: its last change's sequence number (the
    /// current one if it changed nothing).
    pub version: u64,
}

impl Outcome {
    /// Gives the outcome the version `seq` its last change got in another log; a
    /// transaction's writes keep their distance from its last change (a cluster orders a
    /// transaction as one batch of consecutive sequence numbers).
    pub fn restamp(&mut self, seq: u64) {
        match self {
            Outcome::Written(_, e) => e.seq = seq,
            Outcome::Tx(tx) => {
                for (_, r) in &mut tx.results {
                    if let Outcome::Written(_, e) = r {
                        e.seq = seq.saturating_sub(tx.version.saturating_sub(e.seq));
                    }
                }
                tx.version = seq;
            }
            Outcome::Deleted(_) | Outcome::Taken(..) => {}
        }
    }
}

/// An applied operation: its outcome and the changes to persist and publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// What happened.
    pub outcome: Outcome,
    /// The changes, in sequence order.
    pub changes: Vec<Change>,
}

impl Applied {
    /// Gives the outcome the version its last change got when another log ordered it (a
    /// cluster node computes the outcome first; see [`crate::replica`]).
    pub fn restamp(&mut self, seq: u64) {
        self.outcome.restamp(seq);
    }
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Operations applied.
    pub writes: u64,
    /// Operations refused.
    pub refused: u64,
    /// Frames produced for pools.
    pub frames: u64,
    /// Bytes of frames produced (each sent to every subscriber of its pool).
    pub frame_bytes: u64,
    /// Keys expired by TTL.
    pub expired: u64,
    /// Writes answered from a receipt instead of applied again (a client's retry).
    pub repeats: u64,
    /// Requests refused by the access rules, by reason.
    pub denied: DeniedStats,
}

/// The state machine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    clock: Clock,
    store: Store,
    log: Log,
    // The filters, and the access rules (`Engine::rules`): pools read both.
    filters: Filters,
    pools: Pools,
    config: Config,
    started: i64,
    stats: Stats,
    frames: VecDeque<Frame>,
    denials: VecDeque<Denial>,
    // An external log orders every write (a cluster node): see `Engine::order_elsewhere`.
    ordered_elsewhere: bool,
    // A transaction is running: after-write hooks wait for its end (it may be undone).
    in_tx: bool,
    history: History,
    receipts: Receipts,
    // A cluster node's last write with an id, computed but not ordered yet (see
    // `Engine::take_unordered`).
    unordered: Option<Unordered>,
}

impl Engine {
    /// A fresh, empty state. The first sequence number is the clock's time at start, so versions
    /// a client kept from an earlier in-memory run are never mistaken for this run's.
    pub fn new(tick: Tick, config: Config, filters: Filters) -> Engine {
        let mut clock = Clock::new(tick);
        let started = clock.now(tick);
        let first = started.max(0) as u64;
        Engine::with_store(clock, Store::new(first), config, filters, started)
    }

    /// A state over an existing store (loaded from disk), continuing its sequence.
    pub fn from_store(tick: Tick, store: Store, config: Config, filters: Filters) -> Engine {
        let mut clock = Clock::new(tick);
        let started = clock.now(tick);
        Engine::with_store(clock, store, config, filters, started)
    }

    /// A state restored from disk: the store and the change log as they were, so clients resume
    /// across a restart instead of taking a snapshot.
    pub fn restore(tick: Tick, store: Store, log: Log, config: Config, filters: Filters) -> Engine {
        let newest = store.newest_timestamp();
        let mut e = Engine::from_store(tick, store, config, filters);
        e.log = log;
        // Timestamps stay above the stored ones even if the wall clock went back while down.
        e.clock.advance_past(newest);
        e
    }

    fn with_store(
        clock: Clock,
        store: Store,
        config: Config,
        filters: Filters,
        started: i64,
    ) -> Engine {
        let log = Log::new(store.last_seq(), config.log_entries, config.log_bytes);
        let history = History::new(config.history);
        let receipts = Receipts::new(config.receipts);
        Engine {
            clock,
            store,
            log,
            filters,
            pools: Pools::new(),
            config,
            started,
            stats: Stats::default(),
            frames: VecDeque::new(),
            denials: VecDeque::new(),
            ordered_elsewhere: false,
            in_tx: false,
            history,
            receipts,
            unordered: None,
        }
    }

    /// The store (read-only).
    pub fn store(&self) -> &Store {
        &self.store
    }
    /// Every key's history (read-only).
    pub fn history(&self) -> &History {
        &self.history
    }
    /// Takes what storage must write to hold the same history as memory (see
    /// [`crate::history::Delta`]): adapters with storage call it with every commit.
    pub fn take_history_delta(&mut self) -> crate::history::Delta {
        self.history.take_delta()
    }
    /// Installs a history given back by storage at start (see [`History::restore`]).
    pub fn restore_history(&mut self, mut history: History) {
        history.store_in_storage();
        history.settle(|k| self.store.get(k).map(|e| e.seq));
        self.history = history;
    }
    /// The receipts of idempotent writes (read-only).
    pub fn receipts(&self) -> &Receipts {
        &self.receipts
    }
    /// Takes what storage must write to hold the same receipts as memory (see
    /// [`crate::receipts`]): adapters with storage call it with every commit, as
    /// [`Engine::take_history_delta`].
    pub fn take_receipts_delta(&mut self) -> crate::receipts::Delta {
        self.receipts.take_delta()
    }
    /// Installs the receipts given back by storage at start (see [`Receipts::restore`]).
    pub fn restore_receipts(&mut self, mut receipts: Receipts) {
        receipts.store_in_storage();
        self.receipts = receipts;
    }
    /// The change log (read-only).
    pub fn log(&self) -> &Log {
        &self.log
    }
    /// The filters, and the access rules they carry.
    pub fn filters(&self) -> &Filters {
        &self.filters
    }
    /// The filters, to register more.
    pub fn filters_mut(&mut self) -> &mut Filters {
        &mut self.filters
    }
    /// The access rules, if any: the ones installed in the filters with
    /// [`Filters::set_rules`].
    pub fn rules(&self) -> Option<&Rules> {
        self.filters.rules()
    }
    /// The pools (read-only).
    pub fn pools(&self) -> &Pools {
        &self.pools
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Clock time at start.
    pub fn started(&self) -> i64 {
        self.started
    }

    /// Applies an operation, all or nothing, as the embedding program itself: no access rules
    /// apply. Requests from clients go through [`Engine::execute`], which takes their identity.
    pub fn execute_as_system(&mut self, tick: Tick, op: Op) -> Result<Applied, Error> {
        self.execute(tick, op, &Identity::System)
    }

    /// Applies an operation, all or nothing, for `who`: keys, access rules, static mode,
    /// delete filters, existence and preconditions, the new value, write filters, JSON depth
    /// and the rule's schema are checked, in that order, before anything changes (then the
    /// limits and TTLs of the filters and rules apply). The changes are applied to memory and
    /// logged but not yet published: call
    /// [`Engine::publish`] after making them durable, or [`Engine::revert`] if that failed.
    pub fn execute(&mut self, tick: Tick, op: Op, who: &Identity) -> Result<Applied, Error> {
        let r = self.run(tick, op, who);
        match &r {
            Ok(a) => {
                self.stats.writes += 1;
                let at = self.clock.peek(tick);
                for c in &a.changes {
                    self.log.push(c);
                    // A cluster node's proposal is withdrawn at once: its history comes with
                    // the ordered change (`apply_ordered`).
                    if !self.ordered_elsewhere {
                        self.history.push(c, at);
                    }
                }
            }
            Err(_) => self.stats.refused += 1,
        }
        r
    }

    /// [`Engine::execute`] for a write that carries the client's id `rid` (`/_ws` `rid`, the
    /// `Idempotency-Key` header): the first time it is applied and its outcome remembered; a
    /// repeat by the same caller gets that outcome again with no changes (nothing is applied
    /// twice), and a repeat for another write is refused (see [`crate::receipts`]). Without an
    /// id, or with receipts off (`--receipts 0`), this is [`Engine::execute`].
    ///
    /// A cluster node (see [`Engine::order_elsewhere`]) answers repeats it knows of but
    /// remembers nothing here: the write waits in [`Engine::take_unordered`] until its ordered
    /// answer comes ([`Engine::remember_ordered`]).
    pub fn execute_once(
        &mut self,
        tick: Tick,
        op: Op,
        who: &Identity,
        rid: Option<&str>,
    ) -> Result<Applied, Error> {
        let Some(rid) = rid.filter(|_| self.receipts.limits().keep > 0) else {
            return self.execute(tick, op, who);
        };
        crate::receipts::check_id(rid)?;
        let write = Named::new(who.subject().as_deref(), rid, &op);
        if let Some(outcome) = self.answered(&write)? {
            return Ok(Applied {
                outcome,
                changes: Vec::new(),
            });
        }
        let a = self.execute(tick, op, who)?;
        if self.ordered_elsewhere {
            self.unordered = Some(Unordered {
                write,
                outcome: a.outcome.clone(),
            });
        } else {
            let (seq, changed) = match a.changes.last() {
                Some(c) => (c.seq, true),
                None => (self.store.last_seq(), false),
            };
            self.receipts.record(write, &a.outcome, seq, changed);
        }
        Ok(a)
    }

    /// Whether `op` with the client's id `rid` was applied already (by `who`): its outcome if
    /// so, `None` if it is new; refused if the id is malformed or was used for another write.
    /// [`Engine::execute_once`] asks this first; a cluster node asks it before forwarding.
    pub fn repeated(
        &mut self,
        op: &Op,
        who: &Identity,
        rid: &str,
    ) -> Result<Option<Outcome>, Error> {
        if self.receipts.limits().keep == 0 {
            return Ok(None);
        }
        crate::receipts::check_id(rid)?;
        self.answered(&Named::new(who.subject().as_deref(), rid, op))
    }

    // What the receipts say about `w`, counted in the stats.
    fn answered(&mut self, w: &Named) -> Result<Option<Outcome>, Error> {
        match self.receipts.check(w) {
            Err(e) => {
                self.stats.refused += 1;
                Err(e)
            }
            Ok(Seen::Again(_, outcome)) => {
                self.stats.repeats += 1;
                Ok(Some(outcome))
            }
            Ok(Seen::New) => Ok(None),
        }
    }

    /// Takes the write with a client's id that the last [`Engine::execute_once`] computed on a
    /// cluster node (taken under the same lock): remember it with
    /// [`Engine::remember_ordered`] once the cluster ordered it.
    pub fn take_unordered(&mut self) -> Option<Unordered> {
        self.unordered.take()
    }

    /// Remembers a write with a client's id that the cluster ordered, its last change at
    /// `seq`, in memory only: one taken with [`Engine::take_unordered`] (HTTP), or a `/_ws`
    /// write's ([`crate::session::Forward::remember`]).
    pub fn remember_ordered(&mut self, mut u: Unordered, seq: Option<u64>) {
        if let Some(seq) = seq {
            u.outcome.restamp(seq);
        }
        let at = self.store.last_seq();
        self.receipts.record(u.write, &u.outcome, at, false);
    }

    /// Rolls back applied-but-unpublished changes (their durable commit failed). They must be the
    /// latest changes applied.
    pub fn revert(&mut self, changes: &[Change]) {
        if let Some(first) = changes.first() {
            self.store.undo(changes);
            self.log.truncate_from(first.seq);
            self.history.undo(changes);
            self.receipts.undo_from(first.seq);
            // A pool joined while these changes were applied saw them: it resyncs.
            let frames = self
                .pools
                .rebuild_after_revert(first.seq, &self.store, &self.filters);
            self.frames.extend(frames);
        }
    }
}

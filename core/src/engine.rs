//! The engine: one Stateline state (clock, store, log, filters, pools) driven by its adapter.
//!
//! Owns the order of effects. Inputs arrive through [`Engine::execute`] (typed operations),
//! [`Engine::handle_timeout`] (TTL expiry) and the HTTP function in [`crate::http`]; each returns
//! the [`Change`]s it applied. The adapter makes them durable if it has a disk, then calls
//! [`Engine::publish`] to get one frame per affected pool, or [`Engine::revert`] if the commit
//! failed. Time enters as a [`Tick`]; nothing here blocks, sleeps or touches a socket.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;

use crate::clock::{Clock, Tick};
use crate::error::Error;
use crate::filter::{Filters, Need, WriteOp};
use crate::json::{self, JsonError};
use crate::key::{self, Pattern};
use crate::log::{Log, Missed, TooOld};
use crate::pool::{Encoding, Frame, Join, PoolId, Pools};
use crate::rules::{Action, Audience, Denied, Identity};
use crate::store::{Change, Entry, Store, Ttl};

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

/// A typed operation: what HTTP routes, `/_ws` messages and the Rust API all become.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create or replace a key.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Value,
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
        value: Value,
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
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A key now holds this entry.
    Written(Arc<str>, Entry),
    /// Keys were deleted (how many).
    Deleted(usize),
    /// A key was read and deleted; its last entry.
    Taken(Arc<str>, Entry),
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
        if let Outcome::Written(_, e) = &mut self.outcome {
            e.seq = seq;
        }
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
    /// Requests refused by the access rules, by reason.
    pub denied: DeniedStats,
}

/// Refusals by the access rules, by reason (the `reason` label of `/_metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeniedStats {
    /// No token where one is needed (401).
    pub no_token: u64,
    /// A token that is malformed, badly signed or for another algorithm (401).
    pub bad_token: u64,
    /// An expired or not-yet-valid token (401).
    pub expired: u64,
    /// A valid token that the rules do not allow (403).
    pub forbidden: u64,
    /// A written value that does not match the rule's schema (400).
    pub schema: u64,
}

impl DeniedStats {
    /// `(reason, count)` pairs in a fixed order.
    pub fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("no_token", self.no_token),
            ("bad_token", self.bad_token),
            ("expired", self.expired),
            ("forbidden", self.forbidden),
            ("schema", self.schema),
        ]
    }
}

/// One refused attempt, for the adapter to log (drain with [`Engine::poll_denial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// `read`, `write` or `delete`.
    pub action: &'static str,
    /// The key (or pattern) asked for.
    pub target: String,
    /// The metrics reason (`no_token`, `bad_token`, `expired`, `forbidden`, `schema`).
    pub reason: &'static str,
    /// The token's `sub`, if it had a valid one.
    pub subject: Option<String>,
    /// The text the client was given.
    pub detail: String,
}

// Denials kept for the adapter to log between drains; older ones are dropped (still counted).
const MAX_DENIALS: usize = 1024;

/// The state machine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    clock: Clock,
    store: Store,
    log: Log,
    filters: Filters,
    pools: Pools,
    config: Config,
    started: i64,
    stats: Stats,
    frames: VecDeque<Frame>,
    denials: VecDeque<Denial>,
    // An external log orders every write (a cluster node): see `Engine::order_elsewhere`.
    ordered_elsewhere: bool,
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
        }
    }

    /// The store (read-only).
    pub fn store(&self) -> &Store {
        &self.store
    }
    /// The change log (read-only).
    pub fn log(&self) -> &Log {
        &self.log
    }
    /// The filters.
    pub fn filters(&self) -> &Filters {
        &self.filters
    }
    /// The filters, to register more.
    pub fn filters_mut(&mut self) -> &mut Filters {
        &mut self.filters
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

    /// The next clock timestamp (strictly increasing).
    pub fn now(&mut self, tick: Tick) -> i64 {
        self.clock.now(tick)
    }

    /// Slews the clock towards the wall clock; call about once a second.
    pub fn correct_clock(&mut self, tick: Tick) {
        self.clock.correct(tick);
    }

    /// The clock stream's frame (ooo `ws://host/`): the time as a decimal string.
    pub fn clock_frame(&mut self, tick: Tick) -> bytes::Bytes {
        self.clock.now(tick).to_string().into()
    }

    /// Who presents `token` now: verified against the access rules' keys with the wall clock
    /// of `tick`. Without rules every caller is anonymous (and everything is allowed).
    pub fn identify(&self, tick: Tick, token: Option<&str>) -> Identity {
        match self.filters.rules() {
            None => Identity::Anonymous,
            Some(r) => r.identify(token, tick.wall_ns.div_euclid(1_000_000_000)),
        }
    }

    fn record(&mut self, action: Action, target: &str, who: &Identity, e: &Error) {
        let reason = match e {
            Error::Unauthorized(_) | Error::NoToken(_) => match who {
                Identity::Invalid(t) if t.label() == "expired" || t.label() == "not_yet_valid" => {
                    self.stats.denied.expired += 1;
                    "expired"
                }
                Identity::Invalid(_) => {
                    self.stats.denied.bad_token += 1;
                    "bad_token"
                }
                _ => {
                    self.stats.denied.no_token += 1;
                    "no_token"
                }
            },
            Error::Forbidden(_) => {
                self.stats.denied.forbidden += 1;
                "forbidden"
            }
            Error::Schema(_) => {
                self.stats.denied.schema += 1;
                "schema"
            }
            _ => return,
        };
        if self.denials.len() >= MAX_DENIALS {
            self.denials.pop_front();
        }
        self.denials.push_back(Denial {
            action: action.as_str(),
            target: target.to_string(),
            reason,
            subject: who.subject(),
            detail: e.to_string(),
        });
    }

    /// The next refused attempt to log.
    pub fn poll_denial(&mut self) -> Option<Denial> {
        self.denials.pop_front()
    }

    /// Checks the access rules for `who` doing `action` on `key`; a refusal is counted and
    /// queued for the adapter's log. Always allowed without rules.
    pub fn authorize(&mut self, action: Action, key: &str, who: &Identity) -> Result<(), Error> {
        let Some(rules) = self.filters.rules() else {
            return Ok(());
        };
        let e = match rules.check(action, key, who) {
            Ok(()) => return Ok(()),
            Err(Denied::NoToken(m)) => Error::NoToken(m),
            Err(Denied::BadToken(t)) => Error::Unauthorized(t.to_string()),
            Err(Denied::Forbidden(m)) => Error::Forbidden(m),
        };
        self.record(action, key, who, &e);
        Err(e)
    }

    /// Refuses a caller whose token was refused, for routes that are not about one key (lists,
    /// subscriptions to globs, the keys API): they still answer 401, never a silently public view.
    pub fn authorize_caller(&mut self, target: &str, who: &Identity) -> Result<(), Error> {
        if let (Some(_), Identity::Invalid(t)) = (self.filters.rules(), who) {
            let e = Error::Unauthorized(t.to_string());
            self.record(Action::Read, target, who, &e);
            return Err(e);
        }
        Ok(())
    }

    /// Whether `who` may read `key` (for filtering lists; nothing is recorded).
    pub fn can_read(&self, key: &str, who: &Identity) -> bool {
        self.filters
            .rules()
            .is_none_or(|r| r.check(Action::Read, key, who).is_ok())
    }

    // The rule's JSON Schema, on the value about to be stored (after write filters).
    fn validate(&mut self, key: &str, v: &Value, who: &Identity) -> Result<(), Error> {
        let Some(schema) = self
            .filters
            .rules()
            .and_then(|r| r.rule_for(key))
            .and_then(|r| r.schema.clone())
        else {
            return Ok(());
        };
        schema.validate(v).map_err(|detail| {
            let e = Error::Schema(format!("{key}: {detail}"));
            self.record(Action::Write, key, who, &e);
            e
        })
    }

    /// Applies an operation, all or nothing, as the embedding program itself: no access rules
    /// apply. Requests from clients go through [`Engine::execute`], which takes their identity.
    pub fn execute_as_system(&mut self, tick: Tick, op: Op) -> Result<Applied, Error> {
        self.execute(tick, op, &Identity::System)
    }

    /// Applies an operation, all or nothing, for `who`: the access rules are checked (and the
    /// schema, TTL and limits of the rule for each key applied) before anything changes. The
    /// changes are applied to memory and logged but not yet published: call
    /// [`Engine::publish`] after making them durable, or [`Engine::revert`] if that failed.
    pub fn execute(&mut self, tick: Tick, op: Op, who: &Identity) -> Result<Applied, Error> {
        let r = self.execute_inner(tick, op, who);
        match &r {
            Ok(a) => {
                self.stats.writes += 1;
                for c in &a.changes {
                    self.log.push(c);
                }
            }
            Err(_) => self.stats.refused += 1,
        }
        r
    }

    fn check_cond(&self, key: &str, cond: &Cond) -> Result<(), Error> {
        if let Cond::Always = cond {
            // Most writes: no lookup.
            return Ok(());
        }
        let cur = self.store.get(key);
        match cond {
            Cond::Always => Ok(()),
            Cond::NextRevision(n) => {
                let current = cur.map_or(-1, |e| e.revision as i128);
                if *n as i128 == current + 1 {
                    Ok(())
                } else {
                    Err(Error::RevisionConflict)
                }
            }
            Cond::IfMatch(tags) => match cur {
                Some(e) if tags.iter().any(|t| t == "*" || *t == e.etag()) => Ok(()),
                _ => Err(Error::Precondition(
                    "If-Match does not match the current version",
                )),
            },
            Cond::IfAbsent => match cur {
                None => Ok(()),
                Some(_) => Err(Error::Precondition("the key exists (If-None-Match: *)")),
            },
        }
    }

    fn check_value(&self, v: &Value) -> Result<(), Error> {
        let d = json::depth(v);
        if d > self.config.max_depth {
            return Err(JsonError::TooDeep {
                depth: d,
                max: self.config.max_depth,
            }
            .into());
        }
        Ok(())
    }

    // Deletes that a limit filter asks for before `key` is written (oldest beyond the count).
    fn limit_victims(&self, key: &str) -> (Vec<Arc<str>>, Option<i64>) {
        let Some((pattern, limit)) = self.filters.limit_for(key) else {
            return (Vec::new(), None);
        };
        let mut victims = Vec::new();
        if let Some(count) = limit.count {
            // After the write the key is one of the `count` kept, so keep `count - 1` others,
            // newest first, whether the key is new or not.
            victims = self
                .store
                .list(pattern)
                .into_iter()
                .filter(|(k, _)| &**k != key)
                .skip(count.saturating_sub(1))
                .map(|(k, _)| k)
                .collect();
        }
        (victims, limit.max_age_ns)
    }

    fn write_value(
        &mut self,
        key: &str,
        value: Value,
        now: i64,
        ttl: Ttl,
        patch: Option<Arc<json_patch::Patch>>,
    ) -> Vec<Change> {
        let (victims, max_age) = self.limit_victims(key);
        let mut changes: Vec<Change> = victims
            .iter()
            .filter_map(|k| self.store.remove(k))
            .collect();
        let ttl = match (max_age, self.store.get(key), ttl) {
            (Some(age), None, Ttl::Clear | Ttl::Keep) => Ttl::After(age),
            (Some(_), Some(_), Ttl::Clear) => Ttl::Keep,
            _ => ttl,
        };
        // The rule's default TTL for writes that set none (and counters that create the key).
        let rule_ttl = self
            .filters
            .rules()
            .and_then(|r| r.rule_for(key))
            .and_then(|r| r.ttl_ns);
        let ttl = match (rule_ttl, ttl, self.store.get(key).is_some()) {
            (Some(d), Ttl::Clear, _) | (Some(d), Ttl::Keep, false) => Ttl::After(d),
            _ => ttl,
        };
        changes.push(self.store.put(key, Entry::value(value), now, ttl, patch));
        changes
    }

    fn execute_inner(&mut self, tick: Tick, op: Op, who: &Identity) -> Result<Applied, Error> {
        match op {
            Op::Set {
                key,
                value,
                ttl,
                cond,
            } => {
                key::validate_key(&key)?;
                self.authorize(Action::Write, &key, who)?;
                self.filters.check(Need::Write, &key)?;
                self.check_cond(&key, &cond)?;
                let value = self.filters.apply_write(&key, value)?;
                self.check_value(&value)?;
                self.validate(&key, &value, who)?;
                let now = self.clock.now(tick);
                let changes = self.write_value(&key, value, now, ttl, None);
                Ok(self.written(changes))
            }
            Op::Push { target, value, ttl } => {
                let prefix = key::validate_push(&target)?.to_string();
                let index = format!("{:x}", self.clock.now(tick));
                let key = if prefix.is_empty() {
                    index
                } else {
                    format!("{prefix}/{index}")
                };
                // The rules judge the key the push creates, like any other write.
                self.authorize(Action::Write, &key, who)?;
                self.filters.check(Need::Write, &target)?;
                let value = self.filters.apply_write(&target, value)?;
                self.check_value(&value)?;
                self.validate(&key, &value, who)?;
                let now = self.clock.now(tick);
                let changes = self.write_value(&key, value, now, ttl, None);
                Ok(self.written(changes))
            }
            Op::Patch { key, patch, cond } => {
                key::validate_key(&key)?;
                // A patch reads too: its errors (and RFC 6902 `test`) tell what the value holds.
                self.authorize(Action::Read, &key, who)?;
                self.authorize(Action::Write, &key, who)?;
                self.filters.check(Need::Write, &key)?;
                let cur = self.store.get(&key).ok_or(Error::NotFound)?;
                self.check_cond(&key, &cond)?;
                let (value, used) = match patch {
                    PatchKind::Merge(p) => (json::ooo_merge(&cur.data, &p)?, None),
                    PatchKind::MergePatch(p) => (json::merge_patch(&cur.data, &p), None),
                    PatchKind::JsonPatch(p) => (json::json_patch(&cur.data, &p)?, Some(p)),
                };
                // The write's own patch goes to subscribers only if no filter rewrote the value.
                let (filtered, used) = if self.filters.has_write_filters(&key) {
                    let filtered = self.filters.apply_write(&key, value.clone())?;
                    let same = filtered == value;
                    (filtered, used.filter(|_| same))
                } else {
                    (value, used)
                };
                self.check_value(&filtered)?;
                self.validate(&key, &filtered, who)?;
                let used = used.map(Arc::new);
                let now = self.clock.now(tick);
                let changes = self.write_value(&key, filtered, now, Ttl::Keep, used);
                Ok(self.written(changes))
            }
            Op::Delete { target, cond } => {
                let pattern = Pattern::parse(&target)?;
                // A glob delete considers only the keys the caller may read (as lists and the keys
                // API do): a key it may not read is neither deleted nor named in a refusal, so the
                // answer never tells whether such a key exists.
                let mut glob_keys: Vec<Arc<str>> = Vec::new();
                if let Pattern::Key(_) = pattern {
                    self.authorize(Action::Delete, &target, who)?;
                } else {
                    // Refused whole if it covers one readable key the caller may not delete:
                    // never a partial write.
                    self.authorize_caller(&target, who)?;
                    glob_keys = self
                        .store
                        .scan(&pattern)
                        .map(|(k, _)| k.clone())
                        .filter(|k| self.can_read(k, who))
                        .collect();
                    for k in &glob_keys {
                        self.authorize(Action::Delete, k, who)?;
                    }
                }
                self.filters.check(Need::Delete, &target)?;
                self.filters.check_delete(&target)?;
                match pattern {
                    Pattern::Key(_) => {
                        if self.store.get(&target).is_none() {
                            return Err(Error::NotFound);
                        }
                        self.check_cond(&target, &cond)?;
                        let c = self.store.remove(&target).into_iter().collect::<Vec<_>>();
                        self.after(&c);
                        Ok(Applied {
                            outcome: Outcome::Deleted(1),
                            changes: c,
                        })
                    }
                    _ => {
                        if cond != Cond::Always {
                            return Err(Error::BadRequest(
                                "preconditions apply to single keys, not globs".into(),
                            ));
                        }
                        let changes: Vec<Change> = glob_keys
                            .iter()
                            .filter_map(|k| self.store.remove(k))
                            .collect();
                        self.after(&changes);
                        Ok(Applied {
                            outcome: Outcome::Deleted(changes.len()),
                            changes,
                        })
                    }
                }
            }
            Op::Incr { key, by, ttl } => {
                key::validate_key(&key)?;
                // The reply carries the new value: reading is needed too.
                self.authorize(Action::Read, &key, who)?;
                self.authorize(Action::Write, &key, who)?;
                self.filters.check(Need::Write, &key)?;
                let value = match self.store.get(&key) {
                    None => by,
                    Some(e) => {
                        // Numbers are kept as written: one beyond 64-bit integers (or a
                        // fraction) is refused, never rounded.
                        let n = e.data.as_i64().ok_or_else(|| {
                            Error::Counter(if e.data.is_number() {
                                format!(
                                    "{key} holds a number that is not an integer from -2^63 to 2^63-1"
                                )
                            } else {
                                format!("{key} does not hold an integer")
                            })
                        })?;
                        n.checked_add(by)
                            .ok_or_else(|| Error::Counter(format!("{key} would overflow")))?
                    }
                };
                let value = self.filters.apply_write(&key, Value::from(value))?;
                self.validate(&key, &value, who)?;
                let now = self.clock.now(tick);
                let ttl = if ttl == Ttl::Clear { Ttl::Keep } else { ttl };
                let changes = self.write_value(&key, value, now, ttl, None);
                Ok(self.written(changes))
            }
            Op::Take { key } => {
                key::validate_key(&key)?;
                self.authorize(Action::Read, &key, who)?;
                self.authorize(Action::Delete, &key, who)?;
                self.filters.check(Need::Read, &key)?;
                self.filters.check(Need::Delete, &key)?;
                self.filters.check_delete(&key)?;
                let c = self.store.remove(&key).ok_or(Error::NotFound)?;
                let entry = c.prev.clone().expect("a delete has a previous entry");
                let k = c.key.clone();
                let changes = vec![c];
                self.after(&changes);
                Ok(Applied {
                    outcome: Outcome::Taken(k, entry),
                    changes,
                })
            }
            Op::Rename {
                from,
                to,
                overwrite,
            } => {
                key::validate_key(&from)?;
                key::validate_key(&to)?;
                if from == to {
                    return Err(Error::BadRequest(
                        "rename: source and target are the same key".into(),
                    ));
                }
                // Both ends: the value moves from a key the caller reads and deletes to one it
                // writes.
                self.authorize(Action::Read, &from, who)?;
                self.authorize(Action::Delete, &from, who)?;
                self.authorize(Action::Write, &to, who)?;
                self.filters.check(Need::Delete, &from)?;
                self.filters.check(Need::Write, &to)?;
                self.filters.check_delete(&from)?;
                let src = self.store.get(&from).ok_or(Error::NotFound)?.clone();
                let target = self.store.get(&to).cloned();
                if target.is_some() && !overwrite {
                    return Err(Error::Exists(to));
                }
                let value = self.filters.apply_write(&to, (*src.data).clone())?;
                self.validate(&to, &value, who)?;
                let now = self.clock.now(tick);
                let mut changes = vec![self.store.remove(&from).expect("checked above")];
                let (data, json) = if value == *src.data {
                    (src.data.clone(), src.json.clone())
                } else {
                    Entry::value(value)
                };
                let entry = Entry {
                    created: src.created,
                    updated: now,
                    revision: target.map_or(0, |t| t.revision + 1),
                    seq: 0,
                    expires: src.expires,
                    data,
                    json,
                };
                changes.push(self.store.put_entry(&to, entry));
                Ok(self.written(changes))
            }
        }
    }

    fn written(&mut self, changes: Vec<Change>) -> Applied {
        self.after(&changes);
        let last = changes.last().expect("a write has a change");
        let outcome = Outcome::Written(last.key.clone(), last.entry.clone().expect("a write sets"));
        Applied { outcome, changes }
    }

    // After-write hooks of an operation this engine applied. When an external log orders the
    // writes, they run when the ordered change is applied instead (once, never for a proposal
    // the log refused).
    fn after(&self, changes: &[Change]) {
        if !self.ordered_elsewhere {
            self.notify(changes);
        }
    }

    fn notify(&self, changes: &[Change]) {
        for c in changes {
            self.filters.notify_write(
                &c.key,
                if c.is_delete() {
                    WriteOp::Delete
                } else {
                    WriteOp::Set
                },
            );
        }
    }

    /// Deletes every key whose TTL has passed and returns those changes (to persist and publish).
    pub fn handle_timeout(&mut self, tick: Tick) -> Vec<Change> {
        let now = self.clock.peek(tick);
        let keys = self.store.expired(now);
        let changes: Vec<Change> = keys.iter().filter_map(|k| self.store.remove(k)).collect();
        for c in &changes {
            self.log.push(c);
        }
        self.stats.expired += changes.len() as u64;
        self.after(&changes);
        changes
    }

    /// The clock time of the next TTL deadline, if any.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.store.next_deadline()
    }

    /// How many ns from `tick` until the next TTL deadline (0 if due).
    pub fn timeout_in(&self, tick: Tick) -> Option<u64> {
        self.poll_timeout()
            .map(|d| d.saturating_sub(self.clock.peek(tick)).max(0) as u64)
    }

    /// Publishes applied changes: queues one frame per affected pool (drain with
    /// [`Engine::poll_frame`]).
    pub fn publish(&mut self, changes: &[Change]) {
        if changes.is_empty() || self.pools.is_empty() {
            return;
        }
        for f in self.pools.publish(changes, &self.filters) {
            self.stats.frames += 1;
            self.stats.frame_bytes += f.bytes.len() as u64;
            self.frames.push_back(f);
        }
    }

    /// The next frame to send to every subscriber of its pool.
    pub fn poll_frame(&mut self) -> Option<Frame> {
        self.frames.pop_front()
    }

    /// Rolls back applied-but-unpublished changes (their durable commit failed). They must be the
    /// latest changes applied.
    pub fn revert(&mut self, changes: &[Change]) {
        if let Some(first) = changes.first() {
            self.store.undo(changes);
            self.log.truncate_from(first.seq);
            // A pool joined while these changes were applied saw them: it resyncs.
            let frames = self
                .pools
                .rebuild_after_revert(first.seq, &self.store, &self.filters);
            self.frames.extend(frames);
        }
    }

    /// Says that an external log orders every write of this engine (a cluster node: see
    /// [`crate::replica`]): after-write hooks then run when [`Engine::apply_ordered`] applies a
    /// change, not when an operation computes its proposal.
    pub fn order_elsewhere(&mut self) {
        self.ordered_elsewhere = true;
    }

    /// Takes back changes [`Engine::execute`] just applied, under the same lock, before anyone
    /// saw them (not published; no pool joined since): memory and the log are as they were.
    /// A cluster node does this with every write and lets the cluster's log order it instead
    /// (see [`crate::replica`]).
    pub fn withdraw(&mut self, changes: &[Change]) {
        if let Some(first) = changes.first() {
            self.store.undo(changes);
            self.log.truncate_from(first.seq);
            self.stats.writes = self.stats.writes.saturating_sub(1);
        }
    }

    /// Applies one change an external log ordered, with that log's sequence number (which must be
    /// above every one applied so far; an older one is ignored and `None` returned). The entry's
    /// revision and timestamps are kept as the proposing node computed them. The change is logged
    /// but not published: call [`Engine::publish`] with it.
    pub fn apply_ordered(
        &mut self,
        seq: u64,
        key: Arc<str>,
        entry: Option<Entry>,
    ) -> Option<Change> {
        if seq <= self.store.last_seq() {
            return None;
        }
        let key = self.store.key_arc(&key).unwrap_or(key);
        let prev = self.store.get(&key).cloned();
        let entry = entry.map(|mut e| {
            e.seq = seq;
            // Timestamps of changes made elsewhere keep this node's clock ahead of them.
            self.clock.advance_past(e.created.max(e.updated));
            e
        });
        let revision = match (&entry, &prev) {
            (Some(e), _) => e.revision,
            (None, Some(p)) => p.revision + 1,
            (None, None) => 0,
        };
        let change = Change {
            seq,
            key,
            revision,
            entry,
            prev,
            patch: None,
        };
        self.store.apply_external(&change);
        if change.entry.is_none() && change.prev.is_none() {
            // A delete of a key this node never had: only the sequence number moves.
            return None;
        }
        self.log.push(&change);
        self.stats.writes += 1;
        self.notify(std::slice::from_ref(&change));
        Some(change)
    }

    /// The keys whose TTL has passed at `tick`, with the sequence number of their entry, without
    /// deleting them (a cluster node proposes their deletes instead: [`crate::replica`]).
    pub fn due(&self, tick: Tick) -> Vec<(Arc<str>, u64)> {
        let now = self.clock.peek(tick);
        self.store
            .expired(now)
            .into_iter()
            .filter_map(|k| self.store.get(&k).map(|e| e.seq).map(|s| (k, s)))
            .collect()
    }

    /// Joins a pool as the embedding program itself (sees everything, no access rules); clients
    /// join through [`Engine::join`], which takes their identity.
    pub fn join_as_system(
        &mut self,
        pattern: Pattern,
        enc: Encoding,
        version: Option<u64>,
        initial: bool,
    ) -> Result<(PoolId, Join), Error> {
        self.join(pattern, enc, version, initial, &Identity::System)
    }

    /// Joins a pool for `who`; see [`Pools::join`]. Refused by static mode without a read
    /// filter, and by the access rules for a key `who` may not read. A glob or subtree joins the
    /// pool of `who`'s audience, which holds only the keys that audience may read.
    pub fn join(
        &mut self,
        pattern: Pattern,
        enc: Encoding,
        version: Option<u64>,
        initial: bool,
        who: &Identity,
    ) -> Result<(PoolId, Join), Error> {
        let audience = self.audience(&pattern, who)?;
        self.filters.check(Need::Read, &pattern.as_str())?;
        Ok(self.pools.join(
            pattern,
            enc,
            version,
            initial,
            audience,
            &self.store,
            &self.log,
            &self.filters,
        ))
    }

    /// What `who` sees of `pattern`: refused (and recorded) for a key it may not read or a
    /// refused token; for a glob or subtree, its audience (every key it may read).
    pub fn audience(&mut self, pattern: &Pattern, who: &Identity) -> Result<Audience, Error> {
        let Some(rules) = self.filters.rules() else {
            return Ok(Audience::all());
        };
        match pattern {
            Pattern::Key(k) => {
                let k = k.to_string();
                self.authorize(Action::Read, &k, who)?;
                // Everyone allowed to read one key sees the same value: one pool for them all
                // (and the key is visible to it).
                Ok(Audience::all())
            }
            p => {
                let a = rules.audience(p, who);
                self.authorize_caller(&p.as_str(), who)?;
                Ok(a)
            }
        }
    }

    /// Whether a subscriber of `pool` (on `pattern`) may stay in it as `who`: the same pool is
    /// what `who` would join. After a connection changes its token (`/_ws` `auth`), the adapter
    /// drops the subscriptions this says no to.
    pub fn keeps_pool(&mut self, pattern: &Pattern, pool: PoolId, who: &Identity) -> bool {
        match self.audience(pattern, who) {
            Ok(a) => self.pools.audience(pool) == Some(&a),
            Err(_) => false,
        }
    }

    /// Leaves a pool.
    pub fn leave(&mut self, id: PoolId) {
        self.pools.leave(id);
    }

    /// What keys matching `pattern` went through since `version`.
    pub fn missed(&self, version: u64, pattern: &Pattern) -> Result<Vec<Missed>, TooOld> {
        self.log.since(version, self.store.last_seq(), pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use serde_json::json;

    fn engine() -> Engine {
        Engine::new(Tick::from_wall(1_000), Config::default(), Filters::new())
    }

    fn t(n: i64) -> Tick {
        Tick::from_wall(1_000 + n)
    }

    fn set(e: &mut Engine, k: &str, v: Value) -> Result<Applied, Error> {
        e.execute_as_system(
            t(1),
            Op::Set {
                key: k.into(),
                value: v,
                ttl: Ttl::Clear,
                cond: Cond::Always,
            },
        )
    }

    #[test]
    fn failed_operations_change_nothing() {
        let mut e = engine();
        set(&mut e, "a", json!({"nest":{"x":1}})).unwrap();
        let seq = e.store().last_seq();
        let bad = [
            Op::Set {
                key: "a/".into(),
                value: json!(1),
                ttl: Ttl::Clear,
                cond: Cond::Always,
            },
            Op::Set {
                key: "a".into(),
                value: json!(1),
                ttl: Ttl::Clear,
                cond: Cond::NextRevision(5),
            },
            Op::Patch {
                key: "a".into(),
                patch: PatchKind::Merge(json!({"nest":"x"})),
                cond: Cond::Always,
            },
            Op::Patch {
                key: "a".into(),
                patch: PatchKind::JsonPatch(
                    serde_json::from_value(
                        json!([{"op":"add","path":"/y","value":1},{"op":"remove","path":"/zz"}]),
                    )
                    .unwrap(),
                ),
                cond: Cond::Always,
            },
            Op::Patch {
                key: "missing".into(),
                patch: PatchKind::Merge(json!({})),
                cond: Cond::Always,
            },
            Op::Delete {
                target: "missing".into(),
                cond: Cond::Always,
            },
            Op::Incr {
                key: "a".into(),
                by: 1,
                ttl: Ttl::Keep,
            },
            Op::Rename {
                from: "missing".into(),
                to: "b".into(),
                overwrite: false,
            },
            Op::Push {
                target: "a/*/b".into(),
                value: json!(1),
                ttl: Ttl::Clear,
            },
        ];
        for op in bad {
            assert!(e.execute_as_system(t(2), op.clone()).is_err(), "{op:?}");
        }
        assert_eq!(e.store().last_seq(), seq);
        assert_eq!(*e.store().get("a").unwrap().data, json!({"nest":{"x":1}}));
        assert_eq!(e.stats().refused, 9);
    }

    #[test]
    fn counters_take_rename_ttl() {
        let mut e = engine();
        let incr = |e: &mut Engine, by| {
            e.execute_as_system(
                t(1),
                Op::Incr {
                    key: "c".into(),
                    by,
                    ttl: Ttl::Keep,
                },
            )
        };
        incr(&mut e, 5).unwrap();
        incr(&mut e, 2).unwrap();
        incr(&mut e, -10).unwrap();
        assert_eq!(*e.store().get("c").unwrap().data, json!(-3));
        assert_eq!(e.store().get("c").unwrap().revision, 2);
        set(&mut e, "big", json!(i64::MAX)).unwrap();
        assert!(matches!(
            e.execute_as_system(
                t(1),
                Op::Incr {
                    key: "big".into(),
                    by: 1,
                    ttl: Ttl::Keep
                }
            ),
            Err(Error::Counter(_))
        ));

        let a = e
            .execute_as_system(t(2), Op::Take { key: "c".into() })
            .unwrap();
        assert!(matches!(a.outcome, Outcome::Taken(_, ref en) if *en.data == json!(-3)));
        assert!(e.store().get("c").is_none());
        assert_eq!(
            e.execute_as_system(t(2), Op::Take { key: "c".into() }),
            Err(Error::NotFound)
        );

        set(&mut e, "x", json!(1)).unwrap();
        set(&mut e, "y", json!(2)).unwrap();
        let created = e.store().get("x").unwrap().created;
        assert_eq!(
            e.execute_as_system(
                t(3),
                Op::Rename {
                    from: "x".into(),
                    to: "y".into(),
                    overwrite: false
                }
            ),
            Err(Error::Exists("y".into()))
        );
        let r = e
            .execute_as_system(
                t(3),
                Op::Rename {
                    from: "x".into(),
                    to: "y".into(),
                    overwrite: true,
                },
            )
            .unwrap();
        assert_eq!(r.changes.len(), 2);
        assert!(e.store().get("x").is_none());
        let y = e.store().get("y").unwrap();
        assert_eq!(
            ((*y.data).clone(), y.created, y.revision),
            (json!(1), created, 1)
        );

        e.execute_as_system(
            t(4),
            Op::Set {
                key: "tmp".into(),
                value: json!(1),
                ttl: Ttl::After(100),
                cond: Cond::Always,
            },
        )
        .unwrap();
        assert!(e.handle_timeout(t(50)).is_empty());
        assert!(e.timeout_in(t(50)).is_some());
        let expired = e.handle_timeout(t(200));
        assert_eq!(expired.len(), 1);
        assert!(e.store().get("tmp").is_none() && e.poll_timeout().is_none());
    }

    #[test]
    fn limit_keeps_the_newest() {
        let mut f = Filters::new();
        f.limit(
            "limited/*",
            crate::filter::Limit {
                count: Some(3),
                max_age_ns: None,
            },
        )
        .unwrap();
        let mut e = Engine::new(Tick::from_wall(0), Config::default(), f);
        for i in 0..8 {
            e.execute_as_system(
                t(i),
                Op::Push {
                    target: "limited/*".into(),
                    value: json!(i),
                    ttl: Ttl::Clear,
                },
            )
            .unwrap();
        }
        let list = e.store().list(&Pattern::parse("limited/*").unwrap());
        let vals: Vec<_> = list.iter().map(|(_, en)| (*en.data).clone()).collect();
        assert_eq!(vals, [json!(7), json!(6), json!(5)]);
    }

    #[test]
    fn limit_by_age_expires_items() {
        let mut f = Filters::new();
        f.limit(
            "recent/*",
            crate::filter::Limit {
                count: None,
                max_age_ns: Some(100),
            },
        )
        .unwrap();
        let mut e = Engine::new(Tick::from_wall(0), Config::default(), f);
        e.execute_as_system(
            t(0),
            Op::Push {
                target: "recent/*".into(),
                value: json!(1),
                ttl: Ttl::Clear,
            },
        )
        .unwrap();
        e.execute_as_system(
            t(60),
            Op::Push {
                target: "recent/*".into(),
                value: json!(2),
                ttl: Ttl::Clear,
            },
        )
        .unwrap();
        assert!(e.handle_timeout(t(90)).is_empty());
        let gone = e.handle_timeout(t(120));
        assert_eq!(gone.len(), 1, "the first item is older than 100 ns");
        assert_eq!(
            *e.store().list(&Pattern::parse("recent/*").unwrap())[0]
                .1
                .data,
            json!(2)
        );
        assert_eq!(e.handle_timeout(t(200)).len(), 1);
    }

    #[test]
    fn restored_engine_timestamps_stay_above_stored_ones() {
        let mut e = engine();
        set(&mut e, "a", json!(1)).unwrap();
        let created = e.store().get("a").unwrap().created;
        let store = Store::load(
            e.store().last_seq(),
            [("a".into(), e.store().get("a").unwrap().clone())],
        );
        let log = Log::new(store.last_seq(), 10, 1 << 20);
        // The wall clock is now an hour before the stored write.
        let back = Tick::from_wall(created - 3_600_000_000_000);
        let mut r = Engine::restore(back, store, log, Config::default(), Filters::new());
        r.execute_as_system(
            back,
            Op::Push {
                target: "l/*".into(),
                value: json!(1),
                ttl: Ttl::Clear,
            },
        )
        .unwrap();
        let pushed = r.store().list(&Pattern::parse("l/*").unwrap())[0].1.created;
        assert!(pushed > created, "{pushed} > {created}");
    }

    #[test]
    fn a_pool_joined_before_a_revert_resyncs() {
        let mut e = engine();
        set(&mut e, "k", json!(1)).unwrap();
        let a = set(&mut e, "k", json!(2)).unwrap();
        // A subscriber joins while the write waits for its commit: its snapshot holds 2.
        let (id, first) = e
            .join_as_system(Pattern::parse("k").unwrap(), Encoding::Ooo, None, true)
            .unwrap();
        let Join::Frame(b) = first else {
            panic!("snapshot expected")
        };
        assert!(std::str::from_utf8(&b).unwrap().contains(r#""data":2"#));
        e.revert(&a.changes);
        let f = e.poll_frame().expect("a resync frame");
        assert_eq!(f.pool, id);
        let text = std::str::from_utf8(&f.bytes).unwrap();
        assert!(
            text.contains(r#""snapshot":true"#) && text.contains(r#""data":1"#),
            "{text}"
        );
        assert!(e.poll_frame().is_none());
        // Later writes reach it as usual.
        let b = set(&mut e, "k", json!(3)).unwrap();
        e.publish(&b.changes);
        assert!(e.poll_frame().is_some());
    }

    #[test]
    fn revert_undoes_a_write_and_its_log() {
        let mut e = engine();
        set(&mut e, "a", json!(1)).unwrap();
        let seq = e.store().last_seq();
        let a = set(&mut e, "a", json!(2)).unwrap();
        e.revert(&a.changes);
        assert_eq!(e.store().last_seq(), seq);
        assert_eq!(*e.store().get("a").unwrap().data, json!(1));
        assert_eq!(
            e.missed(seq, &Pattern::parse("a").unwrap()).unwrap(),
            vec![]
        );
    }

    fn ruled() -> (Engine, Identity, Identity) {
        use crate::rules::{Inline, Rules};
        let rules = Rules::from_toml_str(
            r#"
            [auth]
            hs256_secret = "0123456789abcdef-engine"
            [[rule]]
            pattern = "private/{sub}/**"
            read = "owner"
            write = "owner"
            delete = "owner"
            [[rule]]
            pattern = "**"
            read = "public"
            write = "public"
            delete = "public"
            [[rule]]
            pattern = "typed/*"
            read = "public"
            write = "public"
            schema = { type = "integer" }
            ttl_secs = 5
            "#,
            &Inline,
        )
        .unwrap();
        let mut f = Filters::new();
        f.set_rules(rules).unwrap();
        let e = Engine::new(Tick::from_wall(1_000), Config::default(), f);
        let tok = |sub: &str| {
            crate::token::sign_hs256(
                &json!({"sub": sub, "exp": 4_000_000_000i64}),
                b"0123456789abcdef-engine",
            )
        };
        let alice = e.identify(t(1), Some(&tok("alice")));
        let bob = e.identify(t(1), Some(&tok("bob")));
        assert!(matches!(alice, Identity::User(_)));
        (e, alice, bob)
    }

    fn set_as(e: &mut Engine, k: &str, v: Value, who: &Identity) -> Result<Applied, Error> {
        e.execute(
            t(1),
            Op::Set {
                key: k.into(),
                value: v,
                ttl: Ttl::Clear,
                cond: Cond::Always,
            },
            who,
        )
    }

    #[test]
    fn glob_deletes_consider_only_readable_keys() {
        let (mut e, alice, bob) = ruled();
        let anon = Identity::Anonymous;
        set_as(&mut e, "private/alice/a", json!("secret"), &alice).unwrap();
        set_as(&mut e, "public/x/y", json!(1), &anon).unwrap();
        set_as(&mut e, "typed/1", json!(1), &anon).unwrap();
        let del = |e: &mut Engine, g: &str, who: &Identity| {
            e.execute(
                t(2),
                Op::Delete {
                    target: g.into(),
                    cond: Cond::Always,
                },
                who,
            )
        };
        // Only alice's key matches: nothing the caller may read, so nothing happens, and the
        // answer is the same as for a glob that matches nothing (it tells no name).
        for who in [&anon, &bob] {
            let seq = e.store().last_seq();
            let a = del(&mut e, "private/*/*", who).unwrap();
            assert_eq!((a.outcome, a.changes.len()), (Outcome::Deleted(0), 0));
            assert_eq!(e.store().last_seq(), seq);
        }
        // A readable key the caller may not delete is refused, and named: it may read it.
        let err = del(&mut e, "*/*", &anon).unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN, "{err}");
        assert!(err.to_string().contains("typed/1") && !err.to_string().contains("alice"));
        // A broad glob deletes what the caller may read and delete, and leaves alice's key.
        let a = del(&mut e, "*/*/*", &anon).unwrap();
        assert_eq!(a.outcome, Outcome::Deleted(1));
        assert!(e.store().get("public/x/y").is_none());
        assert!(e.store().get("private/alice/a").is_some());
        // The owner's glob covers her key.
        let a = del(&mut e, "private/*/*", &alice).unwrap();
        assert_eq!(a.outcome, Outcome::Deleted(1));
    }

    #[test]
    fn rules_refuse_before_anything_changes() {
        let (mut e, alice, bob) = ruled();
        let anon = Identity::Anonymous;
        set_as(&mut e, "private/alice/a", json!("secret"), &alice).unwrap();
        set_as(&mut e, "public/x", json!(1), &anon).unwrap();
        set_as(&mut e, "public/x/y", json!(1), &anon).unwrap();
        set_as(&mut e, "typed/1", json!(1), &anon).unwrap();
        let seq = e.store().last_seq();
        let denied = [
            (
                Op::Set {
                    key: "private/alice/a".into(),
                    value: json!(0),
                    ttl: Ttl::Clear,
                    cond: Cond::NextRevision(9),
                },
                &bob,
                StatusCode::FORBIDDEN,
            ),
            (
                Op::Set {
                    key: "private/alice/b".into(),
                    value: json!(0),
                    ttl: Ttl::Clear,
                    cond: Cond::Always,
                },
                &anon,
                StatusCode::UNAUTHORIZED,
            ),
            (
                Op::Push {
                    target: "private/alice/*".into(),
                    value: json!(0),
                    ttl: Ttl::Clear,
                },
                &bob,
                StatusCode::FORBIDDEN,
            ),
            (
                Op::Patch {
                    key: "private/alice/a".into(),
                    patch: PatchKind::Merge(json!({})),
                    cond: Cond::Always,
                },
                &bob,
                StatusCode::FORBIDDEN,
            ),
            (
                Op::Delete {
                    target: "private/alice/a".into(),
                    cond: Cond::Always,
                },
                &anon,
                StatusCode::UNAUTHORIZED,
            ),
            // The glob covers a public key too: refused whole.
            (
                // A glob over a key bob may read but not delete: refused whole.
                Op::Delete {
                    target: "*/*".into(),
                    cond: Cond::Always,
                },
                &bob,
                StatusCode::FORBIDDEN,
            ),
            (
                Op::Incr {
                    key: "private/alice/n".into(),
                    by: 1,
                    ttl: Ttl::Keep,
                },
                &bob,
                StatusCode::FORBIDDEN,
            ),
            (
                Op::Take {
                    key: "private/alice/a".into(),
                },
                &bob,
                StatusCode::FORBIDDEN,
            ),
            (
                Op::Rename {
                    from: "private/alice/a".into(),
                    to: "public/stolen".into(),
                    overwrite: true,
                },
                &bob,
                StatusCode::FORBIDDEN,
            ),
            (
                Op::Rename {
                    from: "public/x".into(),
                    to: "private/alice/planted".into(),
                    overwrite: true,
                },
                &bob,
                StatusCode::FORBIDDEN,
            ),
            (
                Op::Set {
                    key: "typed/1".into(),
                    value: json!("not an integer"),
                    ttl: Ttl::Clear,
                    cond: Cond::Always,
                },
                &anon,
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (op, who, status) in denied {
            let r = e.execute(t(2), op.clone(), who);
            assert_eq!(r.map(|_| ()).map_err(|e| e.status()), Err(status), "{op:?}");
        }
        assert_eq!(e.store().last_seq(), seq, "nothing changed");
        assert_eq!(
            *e.store().get("private/alice/a").unwrap().data,
            json!("secret")
        );
        assert_eq!(e.stats().denied.forbidden, 8);

        assert_eq!(e.stats().denied.no_token, 2);
        assert_eq!(e.stats().denied.schema, 1);
        let d = e.poll_denial().unwrap();
        assert_eq!(
            (d.action, d.reason, d.subject.as_deref()),
            ("write", "forbidden", Some("bob"))
        );
        // The owner may; the rule's default TTL applies to a write without one.
        e.execute(
            t(3),
            Op::Delete {
                target: "private/alice/*".into(),
                cond: Cond::Always,
            },
            &alice,
        )
        .unwrap();
        set_as(&mut e, "typed/1", json!(7), &anon).unwrap();
        assert!(e.store().get("typed/1").unwrap().expires.is_some());
        // The embedding program is not bound by the rules.
        set_as(&mut e, "private/carol/x", json!(1), &Identity::System).unwrap();
    }

    #[test]
    fn pools_are_per_audience() {
        let (mut e, alice, bob) = ruled();
        let anon = Identity::Anonymous;
        let all = Pattern::Subtree("".into());
        let v0 = e.store().last_seq();
        let (pa, _) = e
            .join(all.clone(), Encoding::Mux, None, true, &alice)
            .unwrap();
        let (pb, _) = e
            .join(all.clone(), Encoding::Mux, None, true, &bob)
            .unwrap();
        let (pn, _) = e
            .join(all.clone(), Encoding::Mux, None, true, &anon)
            .unwrap();
        let (pn2, _) = e
            .join(all.clone(), Encoding::Mux, None, true, &Identity::Anonymous)
            .unwrap();
        assert_eq!(pn, pn2, "anonymous subscribers share one pool");
        assert!(pa != pb && pa != pn && pb != pn);
        let a = set_as(&mut e, "private/alice/a", json!("alice-secret"), &alice).unwrap();
        e.publish(&a.changes);
        let frames: Vec<Frame> = std::iter::from_fn(|| e.poll_frame()).collect();
        assert_eq!(frames.len(), 1, "only alice's pool gets a frame");
        assert_eq!(frames[0].pool, pa);
        // Replay from an old version leaves out what the audience may not read.
        let (_, j) = e
            .join(all.clone(), Encoding::Sse, Some(v0), false, &bob)
            .unwrap();
        assert_eq!(j, Join::Current);
        let (_, j) = e
            .join(all.clone(), Encoding::Sse, Some(v0), false, &alice)
            .unwrap();
        assert!(
            matches!(j, Join::Missed(b) if std::str::from_utf8(&b).unwrap().contains("alice-secret"))
        );
        // A protected key cannot be joined at all by others.
        let key = Pattern::parse("private/alice/a").unwrap();
        assert_eq!(
            e.join(key.clone(), Encoding::Ooo, None, true, &bob)
                .map(|_| ())
                .map_err(|e| e.status()),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            e.join(key, Encoding::Ooo, None, true, &anon)
                .map(|_| ())
                .map_err(|e| e.status()),
            Err(StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn atomkv_revisions() {
        let mut e = engine();
        let put = |e: &mut Engine, n| {
            e.execute_as_system(
                t(1),
                Op::Set {
                    key: "x".into(),
                    value: json!(n),
                    ttl: Ttl::Clear,
                    cond: Cond::NextRevision(n),
                },
            )
        };
        put(&mut e, 0).unwrap();
        assert_eq!(put(&mut e, 0), Err(Error::RevisionConflict));
        put(&mut e, 1).unwrap();
        let tag = e.store().get("x").unwrap().etag();
        let ifm = |tags: Vec<String>| Op::Set {
            key: "x".into(),
            value: json!(9),
            ttl: Ttl::Clear,
            cond: Cond::IfMatch(tags),
        };
        assert!(matches!(
            e.execute_as_system(t(1), ifm(vec!["\"nope\"".into()])),
            Err(Error::Precondition(_))
        ));
        e.execute_as_system(t(1), ifm(vec![tag])).unwrap();
        let absent = Op::Set {
            key: "x".into(),
            value: json!(1),
            ttl: Ttl::Clear,
            cond: Cond::IfAbsent,
        };
        assert!(matches!(
            e.execute_as_system(t(1), absent),
            Err(Error::Precondition(_))
        ));
    }
}

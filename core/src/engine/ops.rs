//! The operations, one kind at a time: what each reads from its [`Op`], what the checks of
//! [`Engine::run`] look at for it, how it computes its new value and how it mutates.

use crate::store::Key;
use std::sync::Arc;

use serde_json::Value;

use super::{Applied, Cond, Engine, Given, Op, Outcome, PatchKind};
use crate::clock::{Clock, Tick};
use crate::error::Error;
use crate::filter::{Need, WriteOp};
use crate::json;
use crate::key::{self, Pattern};
use crate::rules::Action;
use crate::store::{Change, Entry, Ttl};

/// An operation whose keys were read (step 1 of [`Engine::run`]): what it touches. What it
/// brings towards the new value is its [`Source`].
#[derive(Debug)]
pub(super) enum Plan {
    /// [`Op::Set`].
    Set { key: String, ttl: Ttl, cond: Cond },
    /// [`Op::Push`]: `key` is the key it creates under `glob`.
    Push { glob: String, key: String, ttl: Ttl },
    /// [`Op::Patch`].
    Patch { key: String, cond: Cond },
    /// [`Op::Delete`] of one key.
    DeleteKey { key: String, cond: Cond },
    /// [`Op::Delete`] of every key matching a glob or subtree.
    DeleteGlob {
        glob: String,
        pattern: Pattern,
        cond: Cond,
    },
    /// [`Op::Incr`].
    Incr { key: String, ttl: Ttl },
    /// [`Op::Take`].
    Take { key: String },
    /// [`Op::Rename`].
    Rename {
        from: String,
        to: String,
        overwrite: bool,
    },
}

/// Where an operation's new value comes from (step 6 of [`Engine::run`]).
#[derive(Debug)]
pub(super) enum Source {
    /// No new value: a delete or a take.
    Nothing,
    /// The request's value (set, push).
    Given(Given),
    /// The request's patch, on the current value.
    Patch(PatchKind),
    /// The current integer plus this (a missing key counts as 0).
    Add(i64),
    /// The rename source's value.
    Moved,
}

impl Source {
    /// Whether the value is made from the request's JSON (its depth is checked).
    pub(super) fn is_from_request(&self) -> bool {
        matches!(self, Source::Given(_) | Source::Patch(_))
    }
}

/// What the preconditions (step 5) found: the entry the new value is computed from (a patch's
/// or a counter's key, a rename's source) and a rename's existing target.
#[derive(Debug, Default)]
pub(super) struct Found {
    pub(super) current: Option<Entry>,
    pub(super) target: Option<Entry>,
}

impl Plan {
    /// Step 1: reads the keys. A push takes its key's time-ordered name from the clock.
    pub(super) fn read(op: Op, clock: &mut Clock, tick: Tick) -> Result<(Plan, Source), Error> {
        Ok(match op {
            Op::Set {
                key,
                value,
                ttl,
                cond,
            } => {
                key::validate_key(&key)?;
                (Plan::Set { key, ttl, cond }, Source::Given(value))
            }
            Op::Push { target, value, ttl } => {
                let prefix = key::validate_push(&target)?;
                let index = format!("{:x}", clock.now(tick));
                let key = if prefix.is_empty() {
                    index
                } else {
                    format!("{prefix}/{index}")
                };
                let plan = Plan::Push {
                    glob: target,
                    key,
                    ttl,
                };
                (plan, Source::Given(value))
            }
            Op::Patch { key, patch, cond } => {
                key::validate_key(&key)?;
                (Plan::Patch { key, cond }, Source::Patch(patch))
            }
            Op::Delete { target, cond } => {
                let plan = match Pattern::parse(&target)? {
                    Pattern::Key(_) => Plan::DeleteKey { key: target, cond },
                    pattern => Plan::DeleteGlob {
                        glob: target,
                        pattern,
                        cond,
                    },
                };
                (plan, Source::Nothing)
            }
            Op::Incr { key, by, ttl } => {
                key::validate_key(&key)?;
                (Plan::Incr { key, ttl }, Source::Add(by))
            }
            Op::Take { key } => {
                key::validate_key(&key)?;
                (Plan::Take { key }, Source::Nothing)
            }
            Op::Tx(_) => {
                return Err(Error::BadRequest(
                    "a transaction cannot hold another transaction".into(),
                ))
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
                let plan = Plan::Rename {
                    from,
                    to,
                    overwrite,
                };
                (plan, Source::Moved)
            }
        })
    }

    /// Step 2: the keys the access rules judge, each with the action, in order (a glob delete
    /// is judged key by key instead: see [`Engine::run`]).
    pub(super) fn access(&self) -> [Option<(Action, &str)>; 3] {
        use Action::{Delete, Read, Write};
        match self {
            // The rules judge the key a push creates, like any other write.
            Plan::Set { key, .. } | Plan::Push { key, .. } => [Some((Write, key)), None, None],
            // A patch reads too: its errors (and RFC 6902 `test`) tell what the value holds;
            // a counter's reply carries the new value.
            Plan::Patch { key, .. } | Plan::Incr { key, .. } => {
                [Some((Read, key)), Some((Write, key)), None]
            }
            Plan::DeleteKey { key, .. } => [Some((Delete, key)), None, None],
            Plan::DeleteGlob { .. } => [None, None, None],
            Plan::Take { key } => [Some((Read, key)), Some((Delete, key)), None],
            // Both ends: the value moves from a key the caller reads and deletes to one it
            // writes.
            Plan::Rename { from, to, .. } => {
                [Some((Read, from)), Some((Delete, from)), Some((Write, to))]
            }
        }
    }

    /// Step 3: what static mode needs a filter for, target by target.
    pub(super) fn needs(&self) -> [Option<(Need, &str)>; 2] {
        match self {
            Plan::Set { key, .. } | Plan::Patch { key, .. } | Plan::Incr { key, .. } => {
                [Some((Need::Write, key)), None]
            }
            Plan::Push { glob, .. } => [Some((Need::Write, glob)), None],
            Plan::DeleteKey { key: target, .. } | Plan::DeleteGlob { glob: target, .. } => {
                [Some((Need::Delete, target)), None]
            }
            Plan::Take { key } => [Some((Need::Read, key)), Some((Need::Delete, key))],
            Plan::Rename { from, to, .. } => [Some((Need::Delete, from)), Some((Need::Write, to))],
        }
    }

    /// Step 4: the key or glob whose delete filters are asked.
    pub(super) fn deleted(&self) -> Option<&str> {
        match self {
            Plan::DeleteKey { key: t, .. } | Plan::DeleteGlob { glob: t, .. } => Some(t),
            Plan::Take { key } => Some(key),
            Plan::Rename { from, .. } => Some(from),
            Plan::Set { .. } | Plan::Push { .. } | Plan::Patch { .. } | Plan::Incr { .. } => None,
        }
    }

    /// The key the operation writes (a rename: its target; its rule's schema applies to the
    /// new value), or the key or glob it deletes.
    pub(super) fn target(&self) -> &str {
        match self {
            Plan::Set { key, .. }
            | Plan::Push { key, .. }
            | Plan::Patch { key, .. }
            | Plan::Incr { key, .. } => key,
            Plan::Rename { to, .. } => to,
            Plan::DeleteKey { key, .. } | Plan::Take { key } => key,
            Plan::DeleteGlob { glob, .. } => glob,
        }
    }

    /// Where the write filters of a new value are looked up: the key written, or a push's glob.
    pub(super) fn write_filter_target(&self) -> &str {
        match self {
            Plan::Push { glob, .. } => glob,
            _ => self.target(),
        }
    }
}

/// A new value, and the JSON Patch that made it (forwarded to subscribers as the write's diff).
type NewValue = (Given, Option<json_patch::Patch>);

impl Engine {
    /// Step 6: the new value, if the operation writes one.
    pub(super) fn new_value(
        &self,
        plan: &Plan,
        source: Source,
        found: &Found,
    ) -> Result<Option<NewValue>, Error> {
        let current = || {
            found
                .current
                .as_ref()
                .expect("step 5 found the current entry")
        };
        Ok(Some(match source {
            Source::Nothing => return Ok(None),
            Source::Given(v) => (v, None),
            Source::Patch(patch) => {
                let cur = current().data();
                match patch {
                    PatchKind::Merge(p) => (json::ooo_merge(cur, &p)?.into(), None),
                    PatchKind::MergePatch(p) => (json::merge_patch(cur, &p).into(), None),
                    PatchKind::JsonPatch(p) => (json::json_patch(cur, &p)?.into(), Some(p)),
                }
            }
            Source::Add(by) => (Value::from(counter(plan.target(), found, by)?).into(), None),
            Source::Moved => (current().data().clone().into(), None),
        }))
    }

    /// The mutation, one function per kind of operation. Every check passed: nothing here
    /// fails.
    pub(super) fn apply(
        &mut self,
        tick: Tick,
        plan: Plan,
        new: Option<NewValue>,
        found: Found,
        readable: Vec<Key>,
    ) -> Applied {
        match (plan, new) {
            (Plan::Set { key, ttl, .. } | Plan::Push { key, ttl, .. }, Some((value, _))) => {
                self.set(tick, &key, value, ttl)
            }
            (Plan::Patch { key, .. }, Some((value, forward))) => {
                self.patch(tick, &key, value, forward)
            }
            (Plan::Incr { key, ttl }, Some((value, _))) => self.incr(tick, &key, value, ttl),
            (Plan::Rename { from, to, .. }, Some((value, _))) => {
                self.rename(tick, &from, &to, value.into_tree(), found)
            }
            (Plan::DeleteKey { key, .. }, None) => self.delete_key(&key),
            (Plan::DeleteGlob { .. }, None) => self.delete_glob(&readable),
            (Plan::Take { key }, None) => self.take(&key),
            (plan, new) => unreachable!(
                "step 6 makes a new value for exactly the writes: {plan:?}, {}",
                new.is_some()
            ),
        }
    }

    // `Op::Set` and `Op::Push`.
    fn set(&mut self, tick: Tick, key: &str, value: Given, ttl: Ttl) -> Applied {
        let now = self.clock.now(tick);
        let changes = self.write_value(key, value, now, ttl, None);
        self.written(changes)
    }

    // `Op::Patch`: the TTL stays.
    fn patch(
        &mut self,
        tick: Tick,
        key: &str,
        value: Given,
        forward: Option<json_patch::Patch>,
    ) -> Applied {
        let forward = forward.map(Arc::new);
        let now = self.clock.now(tick);
        let changes = self.write_value(key, value, now, Ttl::Keep, forward);
        self.written(changes)
    }

    // `Op::Incr`: a counter keeps its TTL unless the operation sets one.
    fn incr(&mut self, tick: Tick, key: &str, value: Given, ttl: Ttl) -> Applied {
        let now = self.clock.now(tick);
        let ttl = if ttl == Ttl::Clear { Ttl::Keep } else { ttl };
        let changes = self.write_value(key, value, now, ttl, None);
        self.written(changes)
    }

    // `Op::Rename`: the entry moves with its creation time and expiry; the target's revision
    // goes on from the entry it replaces.
    fn rename(&mut self, tick: Tick, from: &str, to: &str, value: Value, found: Found) -> Applied {
        let src = found.current.expect("step 5 found the source");
        let now = self.clock.now(tick);
        let mut changes = vec![self.store.remove(from).expect("checked above")];
        let (data, json) = if value == *src.data() {
            (src.tree.clone(), src.json.clone())
        } else {
            Entry::value(value)
        };
        let entry = Entry {
            created: src.created,
            updated: now,
            revision: found.target.map_or(0, |t| t.revision + 1),
            seq: 0,
            expires: src.expires,
            json,
            tree: data,
        };
        changes.push(self.store.put_entry(to, entry));
        self.written(changes)
    }

    // `Op::Delete` of one key.
    fn delete_key(&mut self, key: &str) -> Applied {
        let c = self.store.remove(key).into_iter().collect::<Vec<_>>();
        self.after(&c);
        Applied {
            outcome: Outcome::Deleted(1),
            changes: c,
        }
    }

    // `Op::Delete` of a glob: the keys the access rules let the caller see.
    fn delete_glob(&mut self, keys: &[Key]) -> Applied {
        let changes: Vec<Change> = keys.iter().filter_map(|k| self.store.remove(k)).collect();
        self.after(&changes);
        Applied {
            outcome: Outcome::Deleted(changes.len()),
            changes,
        }
    }

    // `Op::Take`.
    fn take(&mut self, key: &str) -> Applied {
        let c = self.store.remove(key).expect("checked above");
        let entry = c.prev.clone().expect("a delete has a previous entry");
        let k = c.key.clone();
        let changes = vec![c];
        self.after(&changes);
        Applied {
            outcome: Outcome::Taken(k, entry),
            changes,
        }
    }

    // Deletes that a limit filter asks for before `key` is written (oldest beyond the count).
    fn limit_victims(&self, key: &str) -> (Vec<Key>, Option<i64>) {
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

    // Stores a new value (set, push, patch, counter): first the evictions of the key's limit,
    // then the TTL a limit or the key's rule gives a write that sets none.
    fn write_value(
        &mut self,
        key: &str,
        value: Given,
        now: i64,
        ttl: Ttl,
        patch: Option<Arc<json_patch::Patch>>,
    ) -> Vec<Change> {
        let (victims, max_age) = self.limit_victims(key);
        // Room for the write's own change too.
        let mut changes: Vec<Change> = Vec::with_capacity(victims.len() + 1);
        changes.extend(victims.iter().filter_map(|k| self.store.remove(k)));
        let exists = self.store.get(key).is_some();
        let ttl = match (max_age, exists, ttl) {
            (Some(age), false, Ttl::Clear | Ttl::Keep) => Ttl::After(age),
            (Some(_), true, Ttl::Clear) => Ttl::Keep,
            _ => ttl,
        };
        // The rule's default TTL for writes that set none (and counters that create the key).
        let rule_ttl = self
            .rules()
            .and_then(|r| r.rule_for(key))
            .and_then(|r| r.ttl_ns);
        let ttl = match (rule_ttl, ttl, exists) {
            (Some(d), Ttl::Clear, _) | (Some(d), Ttl::Keep, false) => Ttl::After(d),
            _ => ttl,
        };
        changes.push(self.store.put(key, Entry::given(value), now, ttl, patch));
        changes
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
    pub(super) fn after(&self, changes: &[Change]) {
        if !self.ordered_elsewhere && !self.in_tx {
            self.notify(changes);
        }
    }

    pub(super) fn notify(&self, changes: &[Change]) {
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
}

// A counter's next value. Numbers are kept as written: one beyond 64-bit integers (or a
// fraction) is refused, never rounded.
fn counter(key: &str, found: &Found, by: i64) -> Result<i64, Error> {
    let Some(e) = &found.current else {
        return Ok(by);
    };
    let n = e.data().as_i64().ok_or_else(|| {
        Error::Counter(if e.data().is_number() {
            format!("{key} holds a number that is not an integer from -2^63 to 2^63-1")
        } else {
            format!("{key} does not hold an integer")
        })
    })?;
    n.checked_add(by)
        .ok_or_else(|| Error::Counter(format!("{key} would overflow")))
}

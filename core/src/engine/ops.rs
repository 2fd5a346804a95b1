//! The operations: checks, values and mutations of each `Op`.

use std::sync::Arc;

use serde_json::Value;

use super::{Applied, Cond, Engine, Op, Outcome, PatchKind};
use crate::clock::Tick;
use crate::error::Error;
use crate::filter::{Need, WriteOp};
use crate::json::{self, JsonError};
use crate::key::{self, Pattern};
use crate::rules::{Action, Identity};
use crate::store::{Change, Entry, Ttl};

impl Engine {
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

    pub(super) fn execute_inner(
        &mut self,
        tick: Tick,
        op: Op,
        who: &Identity,
    ) -> Result<Applied, Error> {
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
    pub(super) fn after(&self, changes: &[Change]) {
        if !self.ordered_elsewhere {
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

//! The one path every operation takes, and the order of its checks.

use crate::store::Key;

use super::ops::{Found, Plan};
use super::{Applied, Cond, Engine, Given, Op};
use crate::clock::Tick;
use crate::error::Error;
use crate::json::{self, JsonError};
use crate::rules::{Action, Identity};

impl Engine {
    /// Runs one operation for `who`: every [`Op`] goes through here, and nothing else mutates
    /// for an operation. The checks run in this order, all of them before the first mutation,
    /// and the first that fails is the answer:
    ///
    /// 1. **Keys**: each key or glob is well formed ([`Op::Push`]: its glob, then the key it
    ///    creates from the clock; [`Op::Rename`]: two different keys).
    /// 2. **Access rules**: every key the operation touches, for every action its rule must
    ///    grant (a patch and a counter read and write, a take reads and deletes, a rename reads
    ///    and deletes its source and writes its target). A glob delete checks the caller's
    ///    token, then every key of the glob the caller may read (only those are deleted).
    /// 3. **Static mode**: a filter of the kind each target needs ([`Need`]).
    /// 4. **Delete filters** of the key or glob deleted (a take, a rename's source).
    /// 5. **Existence and preconditions**: the key must exist (patch, delete, take, rename
    ///    source), the rename target must not (unless `overwrite`), then the [`Cond`]
    ///    (refused on a glob).
    /// 6. **The new value**: server values (`{".sv":"timestamp"}`) in the request's value or
    ///    patch become the write's timestamp in ms; then the given value, or one computed from
    ///    the current one (a patch, a counter, the renamed value); a patch or a counter that
    ///    does not apply fails here.
    /// 7. **Write filters** of the target (a push: its glob), in registration order.
    /// 8. **JSON depth** of a value made from the request's JSON (set, push, patch).
    /// 9. **Schema** of the rule for the key written.
    ///
    /// Then the operation mutates ([`Plan`]'s kinds, one function each): the clock's
    /// timestamp, the evictions of a limit, the default TTL of a limit or rule, the store.
    ///
    /// [`Need`]: crate::filter::Need
    pub(super) fn run(&mut self, tick: Tick, op: Op, who: &Identity) -> Result<Applied, Error> {
        if let Op::Tx(tx) = op {
            return self.run_tx(tick, tx, who);
        }
        // 1.
        let (plan, source) = Plan::read(op, &mut self.clock, tick)?;
        // 2.
        let readable = self.check_rules(&plan, who)?;
        self.run_checked(tick, plan, source, readable, who)
    }

    /// Steps 3 to 9 of [`Engine::run`] and the mutation, for an operation whose keys and
    /// access rules were checked (a transaction checks every write's before the first runs).
    pub(super) fn run_checked(
        &mut self,
        tick: Tick,
        plan: Plan,
        source: super::ops::Source,
        readable: Vec<Key>,
        who: &Identity,
    ) -> Result<Applied, Error> {
        // 3.
        for (need, target) in plan.needs().into_iter().flatten() {
            self.filters.check(need, target)?;
        }
        // 4.
        if let Some(target) = plan.deleted() {
            self.filters.check_delete(target)?;
        }
        // 5.
        let found = self.check_preconditions(&plan)?;
        // 6.
        let mut source = source;
        if super::server_value::present(&source) {
            // The timestamp the write is about to be stamped with (nothing reads the clock
            // between here and the mutation).
            super::server_value::resolve(&mut source, self.clock.next(tick))?;
        }
        let from_request = source.is_from_request();
        let Some((value, forward)) = self.new_value(&plan, source, &found)? else {
            return Ok(self.apply(tick, plan, None, found, readable));
        };
        // 7.
        let (mut value, forward) =
            self.write_filters(plan.write_filter_target(), value, forward)?;
        // 8.
        if from_request {
            self.check_depth(&value)?;
        }
        // 9.
        self.check_schema(plan.target(), &mut value, who)?;
        Ok(self.apply(tick, plan, Some((value, forward)), found, readable))
    }

    // Step 2. Returns the keys a glob delete deletes: the ones the caller may read (as lists
    // and the keys API show them), so a key it may not read is neither deleted nor named in a
    // refusal, and the answer never tells whether such a key exists.
    pub(super) fn check_rules(&mut self, plan: &Plan, who: &Identity) -> Result<Vec<Key>, Error> {
        if let Plan::DeleteGlob { glob, pattern, .. } = plan {
            // Refused whole if it covers one readable key the caller may not delete: never a
            // partial write.
            self.authorize_caller(glob, who)?;
            let keys: Vec<Key> = self
                .store
                .scan(pattern)
                .map(|(k, _)| k.clone())
                .filter(|k| self.can_read(k, who))
                .collect();
            for k in &keys {
                self.authorize(Action::Delete, k, who)?;
            }
            return Ok(keys);
        }
        for (action, key) in plan.access().into_iter().flatten() {
            self.authorize(action, key, who)?;
        }
        Ok(Vec::new())
    }

    // Step 5.
    fn check_preconditions(&self, plan: &Plan) -> Result<Found, Error> {
        let mut found = Found::default();
        match plan {
            Plan::Set { key, cond, .. } => self.check_cond(key, cond)?,
            Plan::Push { .. } => {}
            Plan::Patch { key, cond } => {
                let current = self.store.get(key).ok_or(Error::NotFound)?;
                self.check_cond(key, cond)?;
                // A patch applies to the parsed value: built in the stored entry, not in a copy,
                // so the write keeps its new value's tree for the key's next patch (the store
                // keeps a tree where the value it replaces had one: see `store::Tree`).
                current.data();
                found.current = Some(current.clone());
            }
            Plan::DeleteKey { key, cond } => {
                if self.store.get(key).is_none() {
                    return Err(Error::NotFound);
                }
                self.check_cond(key, cond)?;
            }
            Plan::DeleteGlob { cond, .. } => {
                if *cond != Cond::Always {
                    return Err(Error::BadRequest(
                        "preconditions apply to single keys, not globs".into(),
                    ));
                }
            }
            Plan::Incr { key, .. } => found.current = self.store.get(key).cloned(),
            Plan::Take { key } => {
                if self.store.get(key).is_none() {
                    return Err(Error::NotFound);
                }
            }
            Plan::Rename {
                from,
                to,
                overwrite,
            } => {
                found.current = Some(self.store.get(from).ok_or(Error::NotFound)?.clone());
                found.target = self.store.get(to).cloned();
                if found.target.is_some() && !overwrite {
                    return Err(Error::Exists(to.clone()));
                }
            }
        }
        Ok(found)
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

    // Step 7. A write's own JSON Patch goes to subscribers only if no filter rewrote the value.
    fn write_filters(
        &self,
        target: &str,
        value: Given,
        forward: Option<json_patch::Patch>,
    ) -> Result<(Given, Option<json_patch::Patch>), Error> {
        // Without a filter the value goes on as it is (a text stays a text).
        if !self.filters.has_write_filters(target) {
            return Ok((value, forward));
        }
        let value = value.into_tree();
        if forward.is_some() {
            let filtered = self.filters.apply_write(target, value.clone())?;
            let same = filtered == value;
            Ok((filtered.into(), forward.filter(|_| same)))
        } else {
            Ok((self.filters.apply_write(target, value)?.into(), forward))
        }
    }

    // Step 8.
    fn check_depth(&self, v: &Given) -> Result<(), Error> {
        let d = match v {
            Given::Tree(v) => json::depth(v),
            Given::Text(_, d) => *d,
        };
        if d > self.config.max_depth {
            return Err(JsonError::TooDeep {
                depth: d,
                max: self.config.max_depth,
            }
            .into());
        }
        Ok(())
    }
}

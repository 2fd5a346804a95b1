//! Transactions ([`Op::Tx`]): compares on any keys, then writes of any kind, all or nothing.

use crate::store::Key;

use super::ops::Plan;
use super::{Applied, Compare, Engine, Op, Outcome, Tx, TxOutcome, MAX_TX_COMPARES, MAX_TX_WRITES};
use crate::clock::Tick;
use crate::error::{CompareFailed, Error};
use crate::key;
use crate::rules::{Action, Identity};
use crate::store::Change;

impl Engine {
    /// Runs a transaction for `who`. The checks run in this order, and the first that fails is
    /// the answer, with nothing changed:
    ///
    /// 1. **Shape**: at most [`MAX_TX_WRITES`] writes and [`MAX_TX_COMPARES`] compares; each
    ///    write is a set, push, patch, delete or counter.
    /// 2. **Keys and access rules of every write** (steps 1 and 2 of [`Engine::run`], write by
    ///    write), then **of every compare**: its key is well formed and the caller may read it
    ///    (a compare tells whether the key exists and its revision). No write has run yet.
    /// 3. **Compares**, in order, against the state before the first write:
    ///    [`Error::Compare`] names the first that does not hold.
    /// 4. **Writes**, in order, each through steps 3 to 9 of [`Engine::run`] and applied, so
    ///    each sees the ones before it (a set then a patch of one key). A write refused here
    ///    undoes the ones applied before it ([`Error::TxWrite`] names it).
    ///
    /// The changes of every write form one [`Applied`], so a store commits them together and
    /// each pool gets one frame for the whole; a key written more than once has one change,
    /// from its entry before the transaction to its entry after it (a cluster orders each key
    /// of a batch once against its last sequence number). After-write hooks run once, at the
    /// end.
    pub(super) fn run_tx(&mut self, tick: Tick, tx: Tx, who: &Identity) -> Result<Applied, Error> {
        let Tx { compares, writes } = tx;
        // 1.
        if writes.len() > MAX_TX_WRITES {
            return Err(Error::BadRequest(format!(
                "a transaction holds at most {MAX_TX_WRITES} writes ({} given)",
                writes.len()
            )));
        }
        if compares.len() > MAX_TX_COMPARES {
            return Err(Error::BadRequest(format!(
                "a transaction holds at most {MAX_TX_COMPARES} compares ({} given)",
                compares.len()
            )));
        }
        let at = |index: usize| {
            move |e: Error| Error::TxWrite {
                index,
                error: Box::new(e),
            }
        };
        // 2.
        let mut plans = Vec::with_capacity(writes.len());
        for (i, op) in writes.into_iter().enumerate() {
            if !matches!(
                op,
                Op::Set { .. }
                    | Op::Push { .. }
                    | Op::Patch { .. }
                    | Op::Delete { .. }
                    | Op::Incr { .. }
            ) {
                return Err(at(i)(Error::BadRequest(
                    "a transaction's writes are set, push, patch, del and incr".into(),
                )));
            }
            let name = crate::mux::op_name(&op);
            let (plan, source) = Plan::read(op, &mut self.clock, tick).map_err(at(i))?;
            self.check_rules(&plan, who).map_err(at(i))?;
            plans.push((name, plan, source));
        }
        for c in &compares {
            key::validate_key(c.key())?;
            self.authorize(Action::Read, c.key(), who)?;
        }
        // 3.
        for (index, c) in compares.iter().enumerate() {
            let found = self.store.get(c.key());
            let why = match (c, found) {
                (Compare::Revision { revision, .. }, Some(e)) if e.revision == *revision => None,
                (Compare::Revision { revision, .. }, Some(e)) => Some(format!(
                    "revision {} where {revision} was expected",
                    e.revision
                )),
                (Compare::Revision { revision, .. }, None) => Some(format!(
                    "the key does not exist (revision {revision} was expected)"
                )),
                (Compare::Absent { .. }, None) | (Compare::Exists { .. }, Some(_)) => None,
                (Compare::Absent { .. }, Some(e)) => {
                    Some(format!("the key exists (revision {})", e.revision))
                }
                (Compare::Exists { .. }, None) => Some("the key does not exist".into()),
            };
            if let Some(why) = why {
                return Err(Error::Compare(Box::new(CompareFailed {
                    index,
                    key: c.key().to_string(),
                    why,
                })));
            }
        }
        // 4.
        self.in_tx = true;
        let mut changes: Vec<Change> = Vec::new();
        let mut results = Vec::with_capacity(plans.len());
        let mut failed = None;
        for (i, (name, plan, source)) in plans.into_iter().enumerate() {
            // A glob delete deletes what matches when it runs: the writes before it count.
            let readable = if matches!(plan, Plan::DeleteGlob { .. }) {
                match self.check_rules(&plan, who) {
                    Ok(r) => r,
                    Err(e) => {
                        failed = Some(at(i)(e));
                        break;
                    }
                }
            } else {
                Vec::<Key>::new()
            };
            match self.run_checked(tick, plan, source, readable, who) {
                Ok(a) => {
                    changes.extend(a.changes);
                    results.push((name, a.outcome));
                }
                Err(e) => {
                    failed = Some(at(i)(e));
                    break;
                }
            }
        }
        self.in_tx = false;
        if let Some(e) = failed {
            self.store.undo(&changes);
            return Err(e);
        }
        let changes = self.coalesce(changes, &mut results);
        self.after(&changes);
        let version = changes.last().map_or(self.store.last_seq(), |c| c.seq);
        Ok(Applied {
            outcome: Outcome::Tx(TxOutcome { results, version }),
            changes,
        })
    }

    // One change per key: the writes are undone and each key written again once, from its
    // entry before the transaction to its last one, in the order of its last change. A key
    // created and deleted within the transaction has no change left. Each result names the
    // sequence number of its key's one change.
    fn coalesce(
        &mut self,
        changes: Vec<Change>,
        results: &mut [(&'static str, Outcome)],
    ) -> Vec<Change> {
        let mut seen = std::collections::HashSet::with_capacity(changes.len());
        if changes.iter().all(|c| seen.insert(c.key.clone())) {
            return changes;
        }
        self.store.undo(&changes);
        let mut last: std::collections::HashMap<Key, usize> =
            std::collections::HashMap::with_capacity(changes.len());
        for (i, c) in changes.iter().enumerate() {
            last.insert(c.key.clone(), i);
        }
        let mut out: Vec<Change> = Vec::with_capacity(last.len());
        for (i, c) in changes.into_iter().enumerate() {
            if last.get(&c.key) != Some(&i) {
                continue;
            }
            let existed = self.store.get(&c.key).is_some();
            let redone = match c.entry {
                Some(entry) => Some(self.store.put_entry(&c.key, entry)),
                None if existed => self.store.remove(&c.key),
                None => None,
            };
            out.extend(redone);
        }
        let seq_of: std::collections::HashMap<&str, u64> =
            out.iter().map(|c| (&*c.key, c.seq)).collect();
        for (_, r) in results.iter_mut() {
            if let Outcome::Written(k, e) = r {
                if let Some(seq) = seq_of.get(&**k) {
                    e.seq = *seq;
                }
            }
        }
        out
    }
}

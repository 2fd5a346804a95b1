//! Replication hooks: what a cluster node needs when an external log orders the writes.

use crate::store::Key;

use super::Engine;
use crate::clock::Tick;
use crate::store::{Change, Entry};

impl Engine {
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
    pub fn apply_ordered(&mut self, seq: u64, key: Key, entry: Option<Entry>) -> Option<Change> {
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
        // A delete carries no time: the time this node applied it, after every time it has
        // seen (so a key's history is in strictly increasing time).
        let at = match &change.entry {
            Some(_) => self.clock.latest(),
            None => {
                let at = self.clock.latest().saturating_add(1);
                self.clock.advance_past(at);
                at
            }
        };
        self.history.push(&change, at);
        self.stats.writes += 1;
        self.notify(std::slice::from_ref(&change));
        Some(change)
    }

    /// The keys whose TTL has passed at `tick`, with the sequence number of their entry, without
    /// deleting them (a cluster node proposes their deletes instead: [`crate::replica`]).
    pub fn due(&self, tick: Tick) -> Vec<(Key, u64)> {
        let now = self.clock.peek(tick);
        self.store
            .expired(now)
            .into_iter()
            .filter_map(|k| self.store.get(&k).map(|e| e.seq).map(|s| (k, s)))
            .collect()
    }
}

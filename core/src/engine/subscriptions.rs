//! Subscriptions: joining and leaving pools, publishing changes to them, and their frames.

use super::Engine;
use crate::error::Error;
use crate::filter::Need;
use crate::key::Pattern;
use crate::log::{Missed, TooOld};
use crate::pool::{Encoding, Frame, Join, PoolId};
use crate::rules::{Action, Audience, Identity};
use crate::store::Change;

impl Engine {
    /// Publishes applied changes: queues one frame per affected pool (drain with
    /// [`Engine::poll_frame`]).
    pub fn publish(&mut self, changes: &[Change]) {
        if changes.is_empty() || self.pools.is_empty() {
            return;
        }
        // The changes whose entries have no tree yet: a pool's diff may build one, which the
        // stored entry then keeps for the key's next write (see `store::Tree`).
        let unbuilt: Vec<usize> = (0..changes.len())
            .filter(|&i| {
                changes[i]
                    .entry
                    .as_ref()
                    .is_some_and(|e| !e.tree.is_built())
            })
            .collect();
        for f in self.pools.publish(changes, &self.filters) {
            self.stats.frames += 1;
            self.stats.frame_bytes += f.bytes.len() as u64;
            self.frames.push_back(f);
        }
        for i in unbuilt {
            self.store.adopt_tree(&changes[i]);
        }
    }

    /// The next frame to send to every subscriber of its pool.
    pub fn poll_frame(&mut self) -> Option<Frame> {
        self.frames.pop_front()
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

    /// Joins a pool for `who`; see [`Pools::join`](crate::pool::Pools::join). Refused by static mode without a read
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
        let Some(rules) = self.rules() else {
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

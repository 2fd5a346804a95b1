//! Leases: re-arming the TTL of a key a connection holds (see `crate::session`'s leases).

use super::Engine;
use crate::clock::Tick;
use crate::error::Error;
use crate::store::{Change, Ttl};

impl Engine {
    /// Re-arms a leased key: the same value, a TTL of `ttl_ns` from now, only while the key
    /// still holds the entry whose entity tag is `etag` (the lease's own write). The change is
    /// applied and logged like any write (a new revision): make it durable, then publish it.
    /// No access rules run: the caller checked them when the lease was taken. Refused with 404
    /// when the key is gone and 412 when another write replaced the lease's entry.
    pub fn rearm(
        &mut self,
        tick: Tick,
        key: &str,
        etag: &str,
        ttl_ns: i64,
    ) -> Result<Change, Error> {
        let e = self.store.get(key).ok_or(Error::NotFound)?;
        if e.etag() != etag {
            return Err(Error::Precondition("the lease's entry was replaced"));
        }
        let data = (e.tree.clone(), e.json.clone());
        let now = self.clock.now(tick);
        let c = self.store.put(key, data, now, Ttl::After(ttl_ns), None);
        self.log.push(&c);
        // Its history too: a renewal is a revision like any other, so the history's revisions
        // have no gaps.
        self.history.push(&c, self.clock.peek(tick));
        self.stats.writes += 1;
        self.after(std::slice::from_ref(&c));
        Ok(c)
    }

    /// The engine clock's time at `tick` without advancing it (ns; what TTL deadlines are
    /// measured in).
    pub fn clock_at(&self, tick: Tick) -> i64 {
        self.clock.peek(tick)
    }
}

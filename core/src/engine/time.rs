//! Time: the clock, and TTL expiry.

use super::Engine;
use crate::clock::Tick;
use crate::store::Change;

impl Engine {
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

    /// Deletes every key whose TTL has passed and returns those changes (to persist and publish).
    pub fn handle_timeout(&mut self, tick: Tick) -> Vec<Change> {
        let now = self.clock.peek(tick);
        let keys = self.store.expired(now);
        let changes: Vec<Change> = keys.iter().filter_map(|k| self.store.remove(k)).collect();
        for c in &changes {
            self.log.push(c);
            self.history.push(c, now);
        }
        self.stats.expired += changes.len() as u64;
        self.after(&changes);
        changes
    }

    /// How long `e` has left before its TTL deletes it, in ns (at least 1 while it is stored),
    /// or `None` when it has no TTL.
    pub fn ttl_left(&self, tick: Tick, e: &crate::store::Entry) -> Option<i64> {
        e.expires
            .get()
            .map(|at| at.saturating_sub(self.clock.peek(tick)).max(1))
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
}

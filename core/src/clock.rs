//! The monotonic clock as a pure state machine (ooo's `monotonic` package, §1.9).
//!
//! Owns the mapping from clock readings to Stateline timestamps: nanoseconds since the Unix epoch,
//! strictly increasing, never going backwards when the wall clock steps, and slewed back towards
//! the wall clock by at most 1 ms per second. It never reads a clock itself: the adapter passes a
//! [`Tick`] (its monotonic and wall readings) into every call.

/// One reading of the host's clocks, taken by the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Wall-clock time, nanoseconds since the Unix epoch (may jump when NTP steps).
    pub wall_ns: i64,
    /// A monotonic reading in nanoseconds from an arbitrary origin (never goes back on a sane host;
    /// the clock copes if it does).
    pub mono_ns: u64,
}

impl Tick {
    /// A tick for hosts with a single clock (Workers, tests): both readings from one value.
    pub fn from_wall(wall_ns: i64) -> Tick {
        Tick {
            wall_ns,
            mono_ns: wall_ns.max(0) as u64,
        }
    }
}

/// Largest correction applied per [`Clock::correct`] call (ooo: 1 ms per 1 s loop).
pub const SLEW_NS: i64 = 1_000_000;

/// The clock. See the module docs.
#[derive(Debug, Clone)]
pub struct Clock {
    base_wall: i64,
    base_mono: u64,
    offset: i64,
    last: i64,
}

impl Clock {
    /// Starts the clock at the wall time of `tick`.
    pub fn new(tick: Tick) -> Clock {
        Clock {
            base_wall: tick.wall_ns,
            base_mono: tick.mono_ns,
            offset: 0,
            last: i64::MIN,
        }
    }

    fn raw(&self, mono_ns: u64) -> i64 {
        let elapsed = mono_ns.saturating_sub(self.base_mono).min(i64::MAX as u64) as i64;
        self.base_wall
            .saturating_add(elapsed)
            .saturating_add(self.offset)
    }

    /// The next timestamp: the corrected monotonic time, or one more than the previous timestamp,
    /// whichever is larger, so no two calls ever return the same or a smaller value.
    pub fn now(&mut self, tick: Tick) -> i64 {
        let t = self.raw(tick.mono_ns).max(self.last.saturating_add(1));
        self.last = t;
        t
    }

    /// What the next [`Clock::now`] with this `tick` will return, without advancing: a write
    /// that needs its own timestamp before it is applied (a server value) reads it here.
    pub fn next(&self, tick: Tick) -> i64 {
        self.raw(tick.mono_ns).max(self.last.saturating_add(1))
    }

    /// The latest timestamp handed out (or the start time), without a reading.
    pub fn latest(&self) -> i64 {
        self.last.max(self.base_wall.saturating_add(self.offset))
    }

    /// Never hand out `t` or anything below it again: used after a restart, so timestamps stay
    /// above those already stored even if the wall clock went back while the process was down.
    pub fn advance_past(&mut self, t: i64) {
        self.last = self.last.max(t);
    }

    /// The latest timestamp handed out (or the raw reading, if later), without advancing.
    pub fn peek(&self, tick: Tick) -> i64 {
        self.raw(tick.mono_ns).max(self.last)
    }

    /// Slews towards the wall clock; the adapter calls this about once a second. If ahead, subtract up
    /// to [`SLEW_NS`]; if behind by more than 1 ms, add [`SLEW_NS`]. Timestamps stay strictly increasing
    /// because [`Clock::now`] never returns less than the previous value plus one.
    pub fn correct(&mut self, tick: Tick) {
        let diff = self.raw(tick.mono_ns).saturating_sub(tick.wall_ns);
        if diff > 0 {
            self.offset -= diff.min(SLEW_NS);
        } else if diff < -SLEW_NS {
            self.offset += SLEW_NS;
        }
    }

    /// How far the clock is from the wall clock, in ns (positive: ahead).
    pub fn skew(&self, tick: Tick) -> i64 {
        self.raw(tick.mono_ns).saturating_sub(tick.wall_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn follows_the_monotonic_reading() {
        let mut c = Clock::new(Tick {
            wall_ns: 100 * S,
            mono_ns: 5,
        });
        assert_eq!(
            c.now(Tick {
                wall_ns: 0,
                mono_ns: 5
            }),
            100 * S
        );
        assert_eq!(
            c.now(Tick {
                wall_ns: 0,
                mono_ns: 5 + 10
            }),
            100 * S + 10
        );
        // Same reading twice: still strictly increasing.
        assert_eq!(
            c.now(Tick {
                wall_ns: 0,
                mono_ns: 15
            }),
            100 * S + 11
        );
    }

    #[test]
    fn wall_step_backwards_is_slewed_not_jumped() {
        let mut c = Clock::new(Tick {
            wall_ns: 1000 * S,
            mono_ns: 0,
        });
        let before = c.now(Tick {
            wall_ns: 1000 * S,
            mono_ns: S as u64,
        });
        // NTP steps the wall clock back by one hour.
        let mut prev = before;
        for i in 2..=10u64 {
            let tick = Tick {
                wall_ns: (1000 - 3600 + i as i64) * S,
                mono_ns: i * S as u64,
            };
            c.correct(tick);
            let t = c.now(tick);
            assert!(t > prev);
            prev = t;
        }
        // Nine corrections of at most 1 ms each.
        assert!(prev >= before + 8 * S - 9 * SLEW_NS);
    }

    #[test]
    fn advance_past_a_restored_timestamp() {
        let mut c = Clock::new(Tick {
            wall_ns: 100,
            mono_ns: 0,
        });
        c.advance_past(5_000);
        assert_eq!(
            c.now(Tick {
                wall_ns: 100,
                mono_ns: 1
            }),
            5_001
        );
    }

    #[test]
    fn converges_forward_when_behind() {
        let mut c = Clock::new(Tick {
            wall_ns: 0,
            mono_ns: 0,
        });
        let tick = Tick {
            wall_ns: 5 * SLEW_NS,
            mono_ns: 0,
        };
        for _ in 0..10 {
            c.correct(tick);
        }
        assert!(c.skew(tick).abs() <= SLEW_NS);
    }

    proptest! {
        #[test]
        fn never_goes_backwards(start in 0i64..i64::MAX / 4, steps in prop::collection::vec((0u64..2_000_000_000, -3_600_000_000_000i64..3_600_000_000_000, any::<bool>()), 1..200)) {
            let mut mono = 0u64;
            let mut c = Clock::new(Tick { wall_ns: start, mono_ns: mono });
            let mut last = i64::MIN;
            for (dm, dw, correct) in steps {
                mono += dm;
                let tick = Tick { wall_ns: start + dw, mono_ns: mono };
                if correct { c.correct(tick); }
                let t = c.now(tick);
                prop_assert!(t > last);
                last = t;
            }
        }
    }
}

//! # stateline-core
//!
//! Stateline's semantics as sans-IO state machines: keys and globs, the store with revisions and
//! sequence numbers, the monotonic clock, JSON merge and patch, filters, the change log, the
//! subscription pools and their frames, HTTP as a pure function, and the client's sync state
//! machine. Time, input and randomness
//! enter as arguments; effects (changes to persist, frames to send, deadlines) leave as return
//! values. The native server, the edge worker and the browser client drive the same code.
//!
//! **Architecture invariant:** this crate does no IO. It names no async runtime, no socket, no
//! file and no system clock (`clippy.toml` forbids `SystemTime::now`/`Instant::now`), and it
//! builds for `wasm32-unknown-unknown` unchanged.

#![deny(clippy::disallowed_methods)]
#![warn(missing_docs)]

pub mod clock;
pub mod codec;
pub mod engine;
pub mod error;
pub mod filter;
pub mod history;
pub mod json;
pub mod key;
pub mod log;
pub mod meta;
pub mod mux;
pub mod pool;
pub mod receipts;
pub mod replica;
pub mod rules;
pub mod session;
pub mod store;
pub mod sync;
pub mod token;
pub mod web;

pub use clock::{Clock, Tick};
pub use engine::{Applied, Cond, Config, Engine, Given, Op, Outcome, PatchKind};
pub use error::Error;
pub use filter::Filters;
pub use key::Pattern;
pub use pool::{Encoding, Frame, Join, PoolId};
pub use rules::{Action, Audience, Identity, Rules};
pub use store::{Change, Entry, Store, Ttl};

//! HTTP semantics as a pure function, and the front door every request enters once.
//!
//! [`serve`] (in `front`) takes a request whose body the adapter read (or the reason it could
//! not), the time and what the host knows about itself ([`Host`]), and returns what to do
//! ([`Action`]): respond with these bytes (after persisting these changes), upgrade to this kind
//! of socket, open this SSE stream, serve this embedded file, stream a backup, run an embedding
//! program's endpoint. Below it: reading a request (`request`: what it wants, who sends it, its
//! origin), the routes of ooo (§1.4) and AtomKV (§2) and the extended `/_` routes (`routes`),
//! writing answers (`response`: CORS, ooo's plain-text errors, problem documents on Stateline's
//! own routes, SSE framing) and `/_metrics` (`metrics`). The adapters (native server, edge
//! worker) call exactly this; they own only sockets, disks and timers.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::clock::Tick;
use crate::engine::{Applied, Cond, Engine, Given, Op, Outcome, PatchKind};
use crate::error::Error;
use crate::filter::Need;
use crate::json;
use crate::key::{KeyError, Pattern};
use crate::meta;
use crate::rules::{Action as RuleAction, Identity};
use crate::store::{Change, Entry, Ttl};

/// The response to send and the changes to persist and publish (in that order) before sending it.
#[derive(Debug)]
pub struct HttpOutcome {
    /// The response.
    pub response: Response<Bytes>,
    /// Changes applied to memory, not yet published.
    pub changes: Vec<Change>,
}

/// A subscription asked for over HTTP (WebSocket upgrade or SSE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// What to watch.
    pub pattern: Pattern,
    /// The client's version, if it sent one it can resume from.
    pub version: Option<u64>,
    /// SSE: send the current values first (`?initial=1`).
    pub initial: bool,
}

/// What a request wants from the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A plain request: call [`handle`].
    Http,
    /// `GET /` without `?api=`: the UI for browsers (`wants_html`), the client script otherwise.
    Root {
        /// The `Accept` header prefers HTML.
        wants_html: bool,
    },
    /// WebSocket upgrade on `/`: ooo's clock stream.
    Clock,
    /// WebSocket upgrade on `/_ws`: the multiplexed protocol.
    Mux,
    /// WebSocket upgrade on a key, glob or subtree: ooo's per-path subscription.
    Subscribe(Subscription),
    /// `Accept: text/event-stream` on a key, glob or subtree: SSE.
    Events(Subscription),
}

mod deflate;
mod front;
mod history;
mod metrics;
mod request;
mod response;
mod routes;

pub use deflate::*;
pub use front::*;
pub use metrics::*;
pub use request::*;
pub use response::*;
pub use routes::*;

//! One connection's session: its identity, its subscriptions, its limits and its token deadline,
//! and what one `/_ws` message (or one ooo/SSE subscription request) does to them.
//!
//! Sans-IO in quinn-proto's shape: the adapter hands in what arrived ([`Session::handle`],
//! [`Session::subscribe`]) with the engine and the time, and gets back [`Effects`]: the reply
//! bytes, the first frame to send after it, the pools to attach the connection's queue to or
//! detach it from, the changes to make durable before the reply goes out, and whether the
//! deadline or the state to keep moved. The native server, the edge's Durable Object and the
//! core's own test server all drive this one type; each keeps only transport (sockets, queues,
//! attachments, storage transactions, timers).
//!
//! A `/_ws` connection may also hold leased keys and register on-close writes (`end.rs`): the
//! adapter renews the leases ([`Session::renew_in`], [`Session::renew`]) and, once the
//! connection ends however it ends, commits and publishes what [`Session::end`] (or, in a
//! cluster, [`Session::end_writes`]) returns, exactly once.
//!
//! **Invariant:** every message gets exactly one reply, and a reply to a write is sent only after
//! the frames that write produced were queued, so a client sees its own change before the
//! acknowledgement; a subscription's first frame follows the reply that accepted it.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::engine::{Applied, Op};
use crate::mux::{self, Request};
use crate::{Change, Encoding, Engine, Error, Identity, Join, Pattern, PoolId, Tick};

/// Why the server closes a WebSocket. Code and reason are part of the wire contract
/// (docs/protocol.md, "Close codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The token the connection was opened (or authenticated) with expired.
    TokenExpired,
    /// The subscription was refused after the handshake (e.g. by a filter).
    Refused,
    /// The connection's send queue overflowed; reconnect with `?v=<last version>`.
    Lagging,
    /// No answer to a ping within the interval.
    PingTimeout,
    /// The server is shutting down.
    GoingAway,
    /// The peer broke the WebSocket protocol.
    Protocol,
    /// A message was not completed within the message timeout (policy violation).
    MessageTimeout,
    /// A message was larger than the body cap.
    TooBig,
    /// A subscription started while writes were pending and their commit failed, so its first
    /// frame (which showed them) is never sent; subscribe again (RFC 6455 "Try Again Later").
    TryAgain,
}

impl Close {
    /// The close frame's code.
    pub const fn code(self) -> u16 {
        match self {
            Close::TokenExpired => 4001,
            Close::Refused => 4003,
            Close::Lagging => 4008,
            Close::PingTimeout => 4009,
            Close::GoingAway => 1001,
            Close::Protocol => 1002,
            Close::MessageTimeout => 1008,
            Close::TooBig => 1009,
            Close::TryAgain => 1013,
        }
    }

    /// The close frame's reason.
    pub const fn reason(self) -> &'static str {
        match self {
            Close::TokenExpired => "token expired",
            Close::Refused => "subscription refused",
            Close::Lagging => "lagging, resume with ?v=",
            Close::PingTimeout => "ping timeout",
            Close::GoingAway => "server shutting down",
            Close::Protocol => "protocol error",
            Close::MessageTimeout => "message not completed in time",
            Close::TooBig => "message too big",
            Close::TryAgain => "storage failed, subscribe again",
        }
    }
}

/// A connection's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Subscriptions one connection may hold: bounds the pool state a client can make the server
    /// keep with one socket. Default [`MAX_SUBSCRIPTIONS`].
    pub subscriptions: usize,
    /// The bytes a connection's kept state (its token and its patterns) may take, where the host
    /// keeps that state in a bounded place: the edge stores it in the socket's hibernation
    /// attachment, which Cloudflare caps at 2 KiB. `None`: no such bound.
    pub state_bytes: Option<usize>,
    /// Keys one connection may hold with a lease (`"lease": true`). Default [`MAX_LEASES`].
    pub leases: usize,
    /// On-close writes one connection may register. Default [`MAX_ONCLOSE`].
    pub onclose: usize,
    /// A leased key's TTL in ns: renewed while the connection lives (when half of it is left),
    /// so after a crash the key expires by itself at most this long after its connection died.
    /// Default [`LEASE_TTL`].
    pub lease_ttl: i64,
    /// How long a connection that holds leases or on-close writes may send nothing before the
    /// host takes it for gone (ns), closes it with [`Close::PingTimeout`] and runs its end
    /// writes: for a host that cannot ping its peers (the edge). `None` (the default): the host
    /// detects dead peers itself (the native server pings, `--ping-interval`). The sync clients
    /// send something at least every 20 s (a `ping` when they have nothing else to send).
    pub silence: Option<i64>,
}

/// The [`Limits::silence`] the edge uses: 60 s, three of the sync clients' 20 s ping intervals,
/// so one lost ping never ends a live connection, and a hung tab's presence is gone within a
/// minute and a half (this, plus the alarm's renewal cadence).
pub const SILENCE: i64 = 60_000_000_000;

/// The default of [`Limits::subscriptions`]. A browser tab rarely holds more than a few dozen;
/// 1024 leaves room for generous pages while keeping a hostile client's pool state small.
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// The default of [`Limits::leases`]. Each lease is a key deleted (and renewed) for the
/// connection under the engine's lock; a presence client holds one or a few per room it shows,
/// so 64 is generous while bounding what one connection's end costs.
pub const MAX_LEASES: usize = 64;

/// The default of [`Limits::onclose`]. Each is a write run under the engine's lock when the
/// connection ends, so one connection's end stays a handful of writes, not a batch job.
pub const MAX_ONCLOSE: usize = 16;

/// The default of [`Limits::lease_ttl`]: 60 s. Short enough that a crashed server's leased keys
/// are gone a minute after it comes back; long enough that renewing (every 30 s, one write per
/// lease) costs little.
pub const LEASE_TTL: i64 = 60_000_000_000;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            subscriptions: MAX_SUBSCRIPTIONS,
            state_bytes: None,
            leases: MAX_LEASES,
            onclose: MAX_ONCLOSE,
            lease_ttl: LEASE_TTL,
            silence: None,
        }
    }
}

/// What the adapter sends in answer to one message.
#[derive(Debug)]
pub enum Reply {
    /// Send these bytes now (before [`Effects::first`]).
    Now(Bytes),
    /// A write: make `changes` durable and publish them (which queues their frames), then send
    /// [`Write::ok`]; if that fails, send [`Write::failed`] instead (nothing was changed).
    Write(Write),
    /// A refusal. It is an answer about the state, so where writes are still pending (a disk's
    /// group commit) it waits for their commit before it is sent.
    Refusal(Refusal),
    /// The operation is ordered elsewhere (a cluster's log): run it there and answer with
    /// [`Forward::answer`] or [`Forward::unavailable`].
    Forward(Forward),
}

/// A write waiting for its commit.
#[derive(Debug)]
pub struct Write {
    /// The changes to make durable, then publish.
    pub changes: Vec<Change>,
    /// The acknowledgement.
    pub ok: Bytes,
    id: Value,
}

impl Write {
    /// The reply when the changes could not be made durable (they were rolled back): 503.
    pub fn failed(&self, why: &str) -> Bytes {
        mux::reply_error(&self.id, &Error::storage(why))
    }
}

/// A refusal waiting for the pending writes it may have seen.
#[derive(Debug)]
pub struct Refusal {
    /// The refusal.
    pub no: Bytes,
    id: Value,
}

impl Refusal {
    /// The reply when the writes the refusal saw were rolled back: 503.
    pub fn failed(&self, why: &str) -> Bytes {
        mux::reply_error(&self.id, &Error::storage(why))
    }
}

/// An operation to run in another log's order (a cluster).
#[derive(Debug)]
pub struct Forward {
    /// The operation.
    pub op: Op,
    /// Who asked for it.
    pub who: Identity,
    id: Value,
    name: &'static str,
    // A lease it takes or renews: its answer goes to `Session::forwarded`.
    lease: Option<Leasing>,
    /// The write's own id (`rid`): its ordered answer is remembered ([`Forward::remember`]).
    pub rid: Option<String>,
}

/// What a forwarded write does to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leasing {
    /// A `set`, `patch` or `push` with `"lease": true`.
    Take,
    /// The connection's own renewal: nobody waits for a reply.
    Renew,
}

impl Forward {
    /// Whether the client waits for a reply to it ([`Forward::answer`]); a lease's renewal
    /// has none.
    pub fn replies(&self) -> bool {
        self.lease != Some(Leasing::Renew)
    }

    /// The reply once the operation ran: `seq` is the version the other log gave its change.
    pub fn answer(&self, r: Result<Applied, Error>, seq: Option<u64>) -> Bytes {
        match r {
            Ok(mut a) => {
                if let Some(seq) = seq {
                    a.restamp(seq);
                }
                mux::reply_applied(&self.id, self.name, &a)
            }
            Err(e) => mux::reply_error(&self.id, &e),
        }
    }

    /// Remembers the ordered answer of a write that carried the client's id (`rid`) on this
    /// node ([`Engine::remember_ordered`]), so a repeat sent here is answered instead of
    /// ordered again. Nothing for a refusal or a write without an id.
    pub fn remember(&self, engine: &mut Engine, r: Result<&Applied, &Error>, seq: Option<u64>) {
        let (Some(rid), Ok(a)) = (&self.rid, r) else {
            return;
        };
        let u = crate::receipts::Unordered {
            write: crate::receipts::Named::new(self.who.subject().as_deref(), rid, &self.op),
            outcome: a.outcome.clone(),
        };
        engine.remember_ordered(u, seq);
    }

    /// The reply when the other log could not take it (unreachable, no leader): 503 with why.
    pub fn unavailable(&self, why: &str) -> Bytes {
        mux::reply_error(&self.id, &Error::Unavailable(why.to_string()))
    }
}

/// What one message did.
#[derive(Debug)]
pub struct Effects {
    /// The answer.
    pub reply: Reply,
    /// A new subscription's first frame, sent right after the reply.
    pub first: Option<Bytes>,
    /// A pool the session joined: the adapter sends this connection its frames from now on.
    pub joined: Option<PoolId>,
    /// Pools the session left: the adapter stops sending their frames and calls
    /// [`Engine::leave`] once for each.
    pub left: Vec<PoolId>,
    /// The token deadline moved ([`Session::deadline`]): re-arm the timer.
    pub deadline_moved: bool,
    /// The state a host keeps for the connection (token, patterns) changed: save it again.
    pub state_changed: bool,
}

impl Effects {
    fn reply(b: Bytes) -> Effects {
        Effects {
            reply: Reply::Now(b),
            first: None,
            joined: None,
            left: Vec::new(),
            deadline_moved: false,
            state_changed: false,
        }
    }
}

/// One connection's session.
#[derive(Debug)]
pub struct Session {
    who: Identity,
    token: Option<String>,
    subs: Vec<(Pattern, PoolId)>,
    limits: Limits,
    namespace: Option<String>,
    ordered_elsewhere: bool,
    deadline: Option<i64>,
    // Keys the connection holds, each with the entity tag of the lease's last write: deleted
    // (if still that write) when the connection ends.
    leases: Vec<end::Lease>,
    // Writes registered with `onclose`, in registration order.
    onclose: Vec<end::OnClose>,
    next_handle: u64,
    // The engine clock's time (ns) of the last message from the peer.
    heard: Option<i64>,
    // Leases a cluster is ordering (taken, not answered yet): the renewal timer stays armed.
    taking: usize,
}

/// The JSON bytes a [`Limits::state_bytes`] counts for one pattern: its text, its quotes and a
/// separator (patterns are ASCII without quotes or backslashes, so nothing is escaped).
fn pattern_cost(p: &Pattern) -> usize {
    p.as_str().len() + 4
}

impl Session {
    /// A session for a connection opened by `who` with `token` (the bearer token as presented,
    /// which a host that rebuilds sessions needs again). Refused when the token alone is over
    /// the state limit.
    pub fn open(
        engine: &Engine,
        who: Identity,
        token: Option<String>,
        limits: Limits,
    ) -> Result<Session, Error> {
        if let Some(max) = limits.state_bytes {
            if token.as_ref().map_or(0, String::len) > max {
                return Err(Error::TokenTooLarge(max));
            }
        }
        let deadline = deadline(engine, &who);
        Ok(Session {
            who,
            token,
            subs: Vec::new(),
            limits,
            namespace: None,
            ordered_elsewhere: false,
            deadline,
            leases: Vec::new(),
            onclose: Vec::new(),
            next_handle: 0,
            heard: None,
            taking: 0,
        })
    }

    /// Binds the session to one namespace (the first key segment): messages naming keys or
    /// patterns outside it are refused. The edge's namespace mode serves one namespace per
    /// object.
    pub fn within_namespace(mut self, ns: impl Into<String>) -> Session {
        self.namespace = Some(ns.into()).filter(|n: &String| !n.is_empty());
        self
    }

    /// Writes are ordered by another log (a cluster): they come back as [`Reply::Forward`].
    pub fn ordered_elsewhere(mut self) -> Session {
        self.ordered_elsewhere = true;
        self
    }

    /// Who the connection speaks for.
    pub fn who(&self) -> &Identity {
        &self.who
    }

    /// The token behind [`Session::who`], as presented.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The subscriptions, in the order they were made.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&Pattern, PoolId)> {
        self.subs.iter().map(|(p, i)| (p, *i))
    }

    /// When the connection must be closed with [`Close::TokenExpired`]: the token's `exp` plus
    /// the rules' leeway, in Unix seconds (`None`: no token, or no `exp`).
    pub fn deadline(&self) -> Option<i64> {
        self.deadline
    }

    /// Whether the deadline has passed at `tick`.
    pub fn expired(&self, tick: Tick) -> bool {
        self.deadline
            .is_some_and(|d| d < tick.wall_ns.div_euclid(1_000_000_000))
    }

    /// Leaves every pool (the connection ended): the pools to detach from, each to be left once.
    pub fn close(&mut self) -> Vec<PoolId> {
        self.subs.drain(..).map(|(_, p)| p).collect()
    }

    /// Forgets a pool the host already left (a lagging subscriber cut off by the publisher).
    pub fn forget(&mut self, pool: PoolId) {
        self.subs.retain(|(_, p)| *p != pool);
    }

    fn state_len(&self, token: Option<&str>, extra: usize) -> usize {
        token.map_or(0, str::len)
            + self
                .subs
                .iter()
                .map(|(p, _)| pattern_cost(p))
                .sum::<usize>()
            + self.leases.iter().map(end::Lease::cost).sum::<usize>()
            + self.onclose.iter().map(end::OnClose::cost).sum::<usize>()
            + extra
    }

    /// Subscribes to `pattern` (an ooo WebSocket or SSE request, a `/_ws` `sub`, or a host
    /// rebuilding a session), after `admit` (an embedding program's own check, `Err(reason)`
    /// refuses with 403). Returns the pool and the first frame to send, if any.
    pub fn subscribe(
        &mut self,
        engine: &mut Engine,
        pattern: Pattern,
        enc: Encoding,
        version: Option<u64>,
        initial: bool,
        admit: &mut dyn FnMut(&Pattern, &Identity) -> Result<(), String>,
    ) -> Result<(PoolId, Option<Bytes>), Error> {
        if self.subs.iter().any(|(p, _)| *p == pattern) {
            return Err(Error::BadRequest(format!(
                "already subscribed to {}",
                pattern.as_str()
            )));
        }
        if self.subs.len() >= self.limits.subscriptions {
            return Err(Error::BadRequest(format!(
                "at most {} subscriptions per connection",
                self.limits.subscriptions
            )));
        }
        if let Some(max) = self.limits.state_bytes {
            if self.state_len(self.token.as_deref(), pattern_cost(&pattern)) > max {
                return Err(Error::BadRequest(format!(
                    "too many subscriptions on one connection: their patterns and the token \
                     must fit {max} bytes (the edge keeps them in the socket's hibernation \
                     attachment); open another connection"
                )));
            }
        }
        admit(&pattern, &self.who).map_err(Error::Forbidden)?;
        let (pool, first) = engine.join(pattern.clone(), enc, version, initial, &self.who)?;
        self.subs.push((pattern, pool));
        let first = match first {
            Join::Current => None,
            Join::Frame(b) | Join::Missed(b) => Some(b).filter(|b| !b.is_empty()),
        };
        Ok((pool, first))
    }

    /// Handles one `/_ws` message. `admit` is as for [`Session::subscribe`].
    pub fn handle(
        &mut self,
        engine: &mut Engine,
        tick: Tick,
        msg: &[u8],
        admit: &mut dyn FnMut(&Pattern, &Identity) -> Result<(), String>,
    ) -> Effects {
        self.heard = Some(engine.clock_at(tick));
        let c = engine.config();
        let m = match mux::parse_limited(msg, c.max_depth, c.max_nodes) {
            Ok(m) => m,
            Err(r) => return Effects::reply(mux::reply_error(&r.id, &r.error)),
        };
        let id = m.id;
        let rid = m.rid;
        if let Some(why) = self.outside(&m.request) {
            return Effects::reply(mux::reply_error(&id, &Error::BadRequest(why)));
        }
        match m.request {
            Request::Ping => Effects::reply(mux::reply_ok(&id, Value::Null)),
            Request::Auth { token } => self.auth(engine, tick, &id, token),
            Request::Sub { pattern, version } => {
                match self.subscribe(engine, pattern.clone(), Encoding::Mux, version, true, admit) {
                    Ok((pool, first)) => Effects {
                        first,
                        joined: Some(pool),
                        state_changed: true,
                        ..Effects::reply(mux::reply_sub(&id, &pattern))
                    },
                    Err(e) => Effects::reply(mux::reply_error(&id, &e)),
                }
            }
            Request::Unsub { pattern } => match self.subs.iter().position(|(p, _)| *p == pattern) {
                Some(i) => {
                    let (_, pool) = self.subs.remove(i);
                    Effects {
                        left: vec![pool],
                        state_changed: true,
                        ..Effects::reply(mux::reply_sub(&id, &pattern))
                    }
                }
                None => {
                    let e = Error::BadRequest(format!("not subscribed to {}", pattern.as_str()));
                    Effects::reply(mux::reply_error(&id, &e))
                }
            },
            Request::Leased(op) => self.lease(engine, tick, id, op),
            Request::OnClose { op, raw } => self.register_onclose(engine, &id, op, raw),
            Request::OnCloseCancel { handle } => self.cancel_onclose(&id, handle),
            Request::Op(op) => {
                let name = mux::op_name(&op);
                if let (true, Some(r)) = (self.ordered_elsewhere, rid.as_deref()) {
                    // A repeat this node answered before is answered again, not forwarded.
                    match engine.repeated(&op, &self.who, r) {
                        Ok(None) => {}
                        Ok(Some(outcome)) => {
                            let a = Applied {
                                outcome,
                                changes: Vec::new(),
                            };
                            return Effects::reply(mux::reply_applied(&id, name, &a));
                        }
                        Err(e) => return Effects::reply(mux::reply_error(&id, &e)),
                    }
                }
                if self.ordered_elsewhere {
                    return Effects {
                        reply: Reply::Forward(Forward {
                            op,
                            who: self.who.clone(),
                            id,
                            name,
                            lease: None,
                            rid,
                        }),
                        ..Effects::reply(Bytes::new())
                    };
                }
                let reply = match engine.execute_once(tick, op, &self.who, rid.as_deref()) {
                    Ok(mut a) => {
                        let changes = std::mem::take(&mut a.changes);
                        Reply::Write(Write {
                            changes,
                            ok: mux::reply_applied(&id, name, &a),
                            id,
                        })
                    }
                    Err(e) => Reply::Refusal(Refusal {
                        no: mux::reply_error(&id, &e),
                        id,
                    }),
                };
                Effects {
                    reply,
                    ..Effects::reply(Bytes::new())
                }
            }
        }
    }

    /// `auth`: verify the token; on success it replaces the connection's identity, and every
    /// subscription the new identity would not see the same way (another audience, or a key it
    /// may not read) is left and named in `dropped`. A refused token changes nothing.
    fn auth(&mut self, engine: &mut Engine, tick: Tick, id: &Value, token: String) -> Effects {
        let new = engine.identify(tick, Some(&token));
        if let Err(e) = engine.authorize_caller("_ws auth", &new) {
            return Effects::reply(mux::reply_error(id, &e));
        }
        if let Some(max) = self.limits.state_bytes {
            if token.len() > max || self.state_len(Some(&token), 0) > max {
                return Effects::reply(mux::reply_error(id, &Error::TokenTooLarge(max)));
            }
        }
        let mut dropped = Vec::new();
        let mut left = Vec::new();
        self.subs.retain(|(pattern, pool)| {
            let keep = engine.keeps_pool(pattern, *pool, &new);
            if !keep {
                dropped.push(pattern.as_str());
                left.push(*pool);
            }
            keep
        });
        let reply = json!({
            "subject": new.subject(),
            "exp": new.expires(),
            "dropped": dropped,
        });
        self.deadline = deadline(engine, &new);
        self.who = new;
        self.token = Some(token);
        Effects {
            left,
            deadline_moved: true,
            state_changed: true,
            ..Effects::reply(mux::reply_ok(id, reply))
        }
    }

    /// Why a message may not run on a connection bound to a namespace, if it may not.
    fn outside(&self, req: &Request) -> Option<String> {
        let ns = self.namespace.as_deref()?;
        let outside = |what: &str| {
            Some(format!(
                "{what} is outside this connection's namespace \"{ns}\" (namespace mode: one \
                 /_ws connection per namespace, /_ws?ns=<first key segment>)"
            ))
        };
        match req {
            Request::Sub { pattern, .. } | Request::Unsub { pattern } => {
                match pattern_namespace(pattern) {
                    Some(n) if n == ns => None,
                    _ => outside(&pattern.as_str()),
                }
            }
            Request::Op(op) | Request::Leased(op) | Request::OnClose { op, .. } => op_keys(op)
                .into_iter()
                .find(|k| key_namespace(k.trim_start_matches('/')) != ns)
                .and_then(outside),
            Request::Ping | Request::Auth { .. } | Request::OnCloseCancel { .. } => None,
        }
    }
}

/// When a connection opened with `who`'s token must end: `exp` plus the rules' leeway.
fn deadline(engine: &Engine, who: &Identity) -> Option<i64> {
    let exp = who.expires()?;
    let leeway = engine
        .filters()
        .rules()
        .map_or(0, |r| r.verifier().leeway_secs);
    Some(exp.saturating_add(leeway))
}

/// The namespace a key belongs to: its first segment.
pub fn key_namespace(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// The one namespace a pattern stays within, or `None` when it spans namespaces (a `*` first
/// segment, or the whole tree).
pub fn pattern_namespace(p: &Pattern) -> Option<String> {
    let text = p.as_str();
    let first = text.split('/').next().unwrap_or("");
    if first.is_empty() || first == "*" {
        None
    } else {
        Some(first.to_string())
    }
}

/// Every key an operation touches (a rename touches two; a transaction, those of its compares
/// and writes).
pub fn op_keys(op: &Op) -> Vec<&str> {
    match op {
        Op::Set { key, .. } | Op::Patch { key, .. } | Op::Incr { key, .. } | Op::Take { key } => {
            vec![key]
        }
        Op::Push { target, .. } | Op::Delete { target, .. } => vec![target],
        Op::Rename { from, to, .. } => vec![from, to],
        Op::Tx(tx) => tx
            .compares
            .iter()
            .map(|c| c.key())
            .chain(tx.writes.iter().flat_map(op_keys))
            .collect(),
    }
}

mod end;
pub use end::EndWrite;

#[cfg(test)]
mod tests;

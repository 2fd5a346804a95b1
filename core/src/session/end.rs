//! What a connection leaves behind: leased keys and on-close writes, and the writes that run
//! when it ends.
//!
//! A `/_ws` `set`, `patch` or `push` with `"lease": true` writes its key with a TTL of
//! [`Limits::lease_ttl`](super::Limits::lease_ttl) and records the key with the entity tag of
//! that write. While the connection lives the adapter renews each lease when half of its TTL is
//! left ([`Session::renew_in`], [`Session::renew`]); when it ends, the key is deleted if it
//! still holds the lease's write. Any other write to the key (by anyone, the holder too without
//! `lease`) ends the lease: the key is then neither renewed nor deleted. After a crash nothing
//! renews it, and the key expires by its TTL.
//!
//! An `onclose` registers a `set`, `patch` or `del` that runs when the connection ends. Both
//! are checked against the access rules when registered and run through
//! [`Engine::execute`] with the connection's identity when they fire; a token that expired by
//! then fires nothing (its leased keys expire by their TTL instead).
//!
//! [`Session::end_writes`] hands them out exactly once, on-close writes in registration order
//! first, then the lease releases; [`Session::end`] runs them on this engine.

use bytes::Bytes;
use serde_json::{json, Value};

use super::{Effects, Forward, Leasing, Refusal, Reply, Session, Write};
use crate::engine::{Applied, Cond, Op, Outcome};
use crate::mux;
use crate::rules::Action;
use crate::store::Ttl;
use crate::{Change, Engine, Error, Identity, Pattern, Tick};

/// A key the connection holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lease {
    pub(super) key: String,
    pub(super) etag: String,
    // A renewal of it is being ordered by a cluster (see `Session::renewals`).
    pub(super) pending: bool,
}

impl Lease {
    // The bytes it takes in a host's kept state: key and tag as JSON strings, escapes included.
    pub(super) fn cost(&self) -> usize {
        escaped_len(&self.key) + escaped_len(&self.etag) + 8
    }
}

/// A registered on-close write.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OnClose {
    pub(super) handle: u64,
    pub(super) op: Op,
    pub(super) raw: String,
}

impl OnClose {
    pub(super) fn cost(&self) -> usize {
        escaped_len(&self.raw) + 28
    }
}

fn escaped_len(s: &str) -> usize {
    s.len() + s.bytes().filter(|b| matches!(b, b'"' | b'\\')).count() + 2
}

/// One write to run because a connection ended.
#[derive(Debug, Clone)]
pub struct EndWrite {
    /// The operation: a registered on-close write, or a lease's release (a delete of the key
    /// that must still hold the lease's write).
    pub op: Op,
    /// The connection's identity, which the access rules judge it with.
    pub who: Identity,
}

fn op_key(op: &Op) -> Option<&str> {
    match op {
        Op::Set { key, .. } | Op::Patch { key, .. } => Some(key),
        Op::Delete { target, .. } => Some(target),
        _ => None,
    }
}

impl Session {
    /// The keys the connection holds with their leases' entity tags (for hosts that keep the
    /// session outside memory).
    pub fn leases(&self) -> impl Iterator<Item = (&str, &str)> {
        self.leases
            .iter()
            .map(|l| (l.key.as_str(), l.etag.as_str()))
    }

    /// The registered on-close writes: handle and message, in registration order.
    pub fn onclose_writes(&self) -> impl Iterator<Item = (u64, &str)> {
        self.onclose.iter().map(|w| (w.handle, w.raw.as_str()))
    }

    /// Gives a rebuilt session (a woken edge object) the leases and on-close writes it had.
    /// Entries that no longer parse or do not fit the limits are left out.
    pub fn restore_end_state(
        &mut self,
        engine: &Engine,
        leases: impl IntoIterator<Item = (String, String)>,
        onclose: impl IntoIterator<Item = (u64, String)>,
    ) {
        for (key, etag) in leases {
            if self.leases.len() < self.limits.leases {
                self.leases.push(Lease {
                    key,
                    etag,
                    pending: false,
                });
            }
        }
        for (handle, raw) in onclose {
            if self.onclose.len() >= self.limits.onclose {
                break;
            }
            if let Ok(m) = mux::parse_for(raw.as_bytes(), engine.config()) {
                if let mux::Request::Op(op) = m.request {
                    self.onclose.push(OnClose { handle, op, raw });
                    self.next_handle = self.next_handle.max(handle);
                }
            }
        }
    }

    /// `set`/`patch`/`push` with `"lease": true`.
    pub(super) fn lease(&mut self, engine: &mut Engine, tick: Tick, id: Value, op: Op) -> Effects {
        let refuse = |e: &Error| Effects::reply(mux::reply_error(&id, e));
        let known = match &op {
            Op::Set { key, .. } | Op::Patch { key, .. } => {
                self.leases.iter().any(|l| l.key == *key)
            }
            _ => false,
        };
        if !known && self.leases.len() >= self.limits.leases {
            // Leases whose key another write took over no longer count.
            self.leases.retain(|l| holds(engine, l));
            if self.leases.len() >= self.limits.leases {
                return refuse(&Error::BadRequest(format!(
                    "at most {} leased keys per connection",
                    self.limits.leases
                )));
            }
        }
        if let Some(max) = self.limits.state_bytes {
            // A push's key is its prefix, a slash and a 16-digit index; a tag is 16 digits.
            let key_len = match &op {
                Op::Set { key, .. } | Op::Patch { key, .. } => key.len(),
                Op::Push { target, .. } => target.len() + 17,
                _ => 0,
            };
            let extra = if known { 0 } else { key_len * 2 + 20 + 8 + 4 };
            if self.state_len(self.token.as_deref(), extra) > max {
                return refuse(&Error::BadRequest(format!(
                    "too many leases on one connection: its leases, on-close writes, patterns \
                     and token must fit {max} bytes (the edge keeps them in the socket's \
                     hibernation attachment); open another connection"
                )));
            }
        }
        if self.expired(tick) {
            return refuse(&Error::Unauthorized("the token expired".into()));
        }
        let ttl = self.limits.lease_ttl;
        let name = mux::op_name(&op);
        let is_patch = matches!(op, Op::Patch { .. });
        let op = match op {
            Op::Set {
                key, value, cond, ..
            } => Op::Set {
                key,
                value,
                ttl: Ttl::After(ttl),
                cond,
            },
            Op::Push { target, value, .. } => Op::Push {
                target,
                value,
                ttl: Ttl::After(ttl),
            },
            other => other,
        };
        if self.ordered_elsewhere {
            return self.lease_elsewhere(engine, id, op, name, known);
        }
        let mut a = match engine.execute(tick, op, &self.who) {
            Ok(a) => a,
            Err(e) => {
                return Effects {
                    reply: Reply::Refusal(Refusal {
                        no: mux::reply_error(&id, &e),
                        id,
                    }),
                    ..Effects::reply(Bytes::new())
                }
            }
        };
        let Outcome::Written(key, entry) = &a.outcome else {
            // Set, patch and push always write.
            engine.revert(&a.changes);
            return refuse(&Error::BadRequest("a lease needs a write".into()));
        };
        let key = key.to_string();
        // The lease deletes the key when the connection ends: the caller must be allowed to.
        if let Err(e) = engine.authorize(Action::Delete, &key, &self.who) {
            engine.revert(&a.changes);
            let e = match e {
                Error::Forbidden(m) => Error::Forbidden(format!(
                    "a lease deletes its key when the connection ends, and {m}"
                )),
                other => other,
            };
            return refuse(&e);
        }
        let mut etag = entry.etag();
        if is_patch {
            // A patch keeps the key's TTL: the lease's is set by re-arming the patched entry,
            // in the same commit.
            match engine.rearm(tick, &key, &etag, ttl) {
                Ok(c) => {
                    if let (Some(e), Outcome::Written(_, out)) = (&c.entry, &mut a.outcome) {
                        etag = e.etag();
                        *out = e.clone();
                    }
                    a.changes.push(c);
                }
                Err(e) => {
                    engine.revert(&a.changes);
                    return refuse(&e);
                }
            }
        }
        match self.leases.iter_mut().find(|l| l.key == key) {
            Some(l) => l.etag = etag,
            None => self.leases.push(Lease {
                key,
                etag,
                pending: false,
            }),
        }
        let changes = std::mem::take(&mut a.changes);
        Effects {
            reply: Reply::Write(Write {
                changes,
                ok: mux::reply_applied(&id, name, &a),
                id,
            }),
            state_changed: true,
            ..Effects::reply(Bytes::new())
        }
    }

    /// `onclose`: checked against the rules now (and again when it fires), then kept.
    pub(super) fn register_onclose(
        &mut self,
        engine: &mut Engine,
        id: &Value,
        op: Op,
        raw: String,
    ) -> Effects {
        let refuse = |e: &Error| Effects::reply(mux::reply_error(id, e));
        if self.onclose.len() >= self.limits.onclose {
            return refuse(&Error::BadRequest(format!(
                "at most {} onclose writes per connection",
                self.limits.onclose
            )));
        }
        let w = OnClose {
            handle: self.next_handle + 1,
            op,
            raw,
        };
        if let Some(max) = self.limits.state_bytes {
            if self.state_len(self.token.as_deref(), w.cost()) > max {
                return refuse(&Error::BadRequest(format!(
                    "too many onclose writes on one connection: its leases, on-close writes, \
                     patterns and token must fit {max} bytes (the edge keeps them in the \
                     socket's hibernation attachment); open another connection"
                )));
            }
        }
        if let Err(e) = self.check_onclose(engine, &w.op) {
            return refuse(&e);
        }
        self.next_handle = w.handle;
        let handle = w.handle;
        self.onclose.push(w);
        Effects {
            state_changed: true,
            ..Effects::reply(mux::reply_ok(id, json!({ "onclose": handle })))
        }
    }

    // The rules an on-close write needs, asked now: its key well formed, and the actions its
    // rule must grant (a patch reads and writes; a glob delete needs a valid token).
    fn check_onclose(&mut self, engine: &mut Engine, op: &Op) -> Result<(), Error> {
        let Some(target) = op_key(op) else {
            return Err(Error::BadRequest(
                "an onclose write is a set, patch or del".into(),
            ));
        };
        let pattern = Pattern::parse(target)?;
        match (op, &pattern) {
            (Op::Delete { .. }, Pattern::Key(_)) => {
                engine.authorize(Action::Delete, target, &self.who)
            }
            (Op::Delete { .. }, _) => engine.authorize_caller(target, &self.who),
            (_, Pattern::Key(_)) => {
                if matches!(op, Op::Patch { .. }) {
                    engine.authorize(Action::Read, target, &self.who)?;
                }
                engine.authorize(Action::Write, target, &self.who)
            }
            _ => Err(Error::BadRequest(format!(
                "an onclose set or patch names one key, not {target}"
            ))),
        }
    }

    /// `onclose_cancel`.
    pub(super) fn cancel_onclose(&mut self, id: &Value, handle: u64) -> Effects {
        match self.onclose.iter().position(|w| w.handle == handle) {
            Some(i) => {
                self.onclose.remove(i);
                Effects {
                    state_changed: true,
                    ..Effects::reply(mux::reply_ok(id, json!({ "onclose": handle })))
                }
            }
            None => Effects::reply(mux::reply_error(
                id,
                &Error::BadRequest(format!(
                    "no onclose write {handle} on this connection (cancelled already?)"
                )),
            )),
        }
    }

    /// How long from `tick` until a lease needs renewing (ns; 0: now), `None` without leases.
    pub fn renew_in(&self, engine: &Engine, tick: Tick) -> Option<u64> {
        let now = engine.clock_at(tick);
        self.leases
            .iter()
            .map(|l| match engine.store().get(&l.key) {
                // Its renewal is being ordered: looked at again in a quarter of the TTL.
                _ if l.pending => self.limits.lease_ttl / 4,
                Some(e) if e.etag() == l.etag => match e.expires.get() {
                    Some(x) => x
                        .saturating_sub(self.limits.lease_ttl / 2)
                        .saturating_sub(now),
                    None => 0,
                },
                // Gone or replaced: renewing forgets it.
                _ => 0,
            })
            // A lease a cluster is ordering is looked at again in a quarter of the TTL.
            .chain((self.taking > 0).then_some(self.limits.lease_ttl / 4))
            .min()
            .map(|ns| ns.max(0) as u64)
    }

    /// Renews every lease with half of its TTL or less left (and forgets those whose key
    /// another write took over). Returns the changes to make durable, then publish. Nothing is
    /// renewed once the token expired (the connection is being closed).
    pub fn renew(&mut self, engine: &mut Engine, tick: Tick) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.expired(tick) {
            return changes;
        }
        let now = engine.clock_at(tick);
        let ttl = self.limits.lease_ttl;
        self.leases.retain_mut(|l| {
            let due = match engine.store().get(&l.key) {
                Some(e) if e.etag() == l.etag => e
                    .expires
                    .get()
                    .is_none_or(|x| x.saturating_sub(ttl / 2) <= now),
                _ => return false,
            };
            if !due {
                return true;
            }
            match engine.rearm(tick, &l.key, &l.etag, ttl) {
                Ok(c) => {
                    if let Some(e) = &c.entry {
                        l.etag = e.etag();
                    }
                    changes.push(c);
                    true
                }
                Err(_) => false,
            }
        });
        changes
    }

    /// The writes to run because the connection ended, handed out once (later calls return
    /// nothing): the on-close writes in registration order, then a delete of each leased key
    /// that still holds its lease's write, all as the connection's identity. None when its
    /// token expired: the on-close writes are dropped, the leased keys expire by their TTL.
    pub fn end_writes(&mut self, tick: Tick) -> Vec<EndWrite> {
        let onclose = std::mem::take(&mut self.onclose);
        let leases = std::mem::take(&mut self.leases);
        if self.expired(tick) {
            return Vec::new();
        }
        let who = &self.who;
        onclose
            .into_iter()
            .map(|w| w.op)
            .chain(leases.into_iter().map(|l| Op::Delete {
                target: l.key,
                cond: Cond::IfMatch(vec![l.etag]),
            }))
            .map(|op| EndWrite {
                op,
                who: who.clone(),
            })
            .collect()
    }

    /// Runs [`Session::end_writes`] on `engine`, each through [`Engine::execute`] (a refused one,
    /// a release whose key changed since, is skipped), and returns every change, in order, to
    /// make durable and publish as one batch. Call once when the connection ends, however it
    /// ends (with [`Session::close`] for its pools).
    pub fn end(&mut self, engine: &mut Engine, tick: Tick) -> Vec<Change> {
        let mut changes = Vec::new();
        for w in self.end_writes(tick) {
            if let Ok(a) = engine.execute(tick, w.op, &w.who) {
                changes.extend(a.changes);
            }
        }
        changes
    }

    // A lease on a node of a cluster: checked here, ordered by the cluster like any write, and
    // held once it is (`Session::forwarded`).
    fn lease_elsewhere(
        &mut self,
        engine: &mut Engine,
        id: Value,
        op: Op,
        name: &'static str,
        known: bool,
    ) -> Effects {
        let refuse = |e: &Error| Effects::reply(mux::reply_error(&id, e));
        // The key the lease deletes when the connection ends (a push's: one its glob names,
        // as the stream names it only when it orders the push).
        let key = match &op {
            Op::Set { key, .. } => key.clone(),
            Op::Patch { key, .. } if known => key.clone(),
            Op::Patch { .. } => {
                return refuse(&Error::BadRequest(
                    "on a node of a cluster a lease is taken with set or push; a patch with \
                     lease keeps the lease of a key this connection holds"
                        .into(),
                ))
            }
            Op::Push { target, .. } => match crate::key::validate_push(target) {
                Ok("") => "0".to_string(),
                Ok(prefix) => format!("{prefix}/0"),
                Err(e) => return refuse(&e.into()),
            },
            _ => return refuse(&Error::BadRequest("a lease needs a write".into())),
        };
        if let Err(e) = engine.authorize(Action::Delete, &key, &self.who) {
            let e = match e {
                Error::Forbidden(m) => Error::Forbidden(format!(
                    "a lease deletes its key when the connection ends, and {m}"
                )),
                other => other,
            };
            return refuse(&e);
        }
        self.taking += 1;
        Effects {
            reply: Reply::Forward(Forward {
                op,
                who: self.who.clone(),
                id,
                name,
                lease: Some(Leasing::Take),
                rid: None,
            }),
            ..Effects::reply(Bytes::new())
        }
    }

    /// On a node of a cluster: the renewals of the leases that are due, as writes for the
    /// cluster to order (each a `set` of the key's value with the lease's TTL, if the key still
    /// holds the lease's write), without replies; pass each answer to [`Session::forwarded`].
    /// Leases whose key another write took over are forgotten. A lease is renewed once at a
    /// time. Nothing once the token expired.
    pub fn renewals(&mut self, engine: &Engine, tick: Tick) -> Vec<Forward> {
        let mut out = Vec::new();
        if self.expired(tick) {
            return out;
        }
        let now = engine.clock_at(tick);
        let ttl = self.limits.lease_ttl;
        let who = self.who.clone();
        self.leases.retain_mut(|l| {
            if l.pending {
                return true;
            }
            let Some(e) = engine.store().get(&l.key).filter(|e| e.etag() == l.etag) else {
                return false;
            };
            if e.expires
                .get()
                .is_some_and(|x| x.saturating_sub(ttl / 2) > now)
            {
                return true;
            }
            l.pending = true;
            out.push(Forward {
                op: Op::Set {
                    key: l.key.clone(),
                    value: e.data().clone().into(),
                    ttl: Ttl::After(ttl),
                    cond: Cond::IfMatch(vec![l.etag.clone()]),
                },
                who: who.clone(),
                id: Value::Null,
                name: "set",
                lease: Some(Leasing::Renew),
                rid: None,
            });
            true
        });
        out
    }

    /// What a cluster answered to a [`Forward`] of this connection: a lease taken or renewed
    /// is held with the entity tag the cluster gave its write (`seq`); a renewal refused
    /// (another write replaced the lease's) forgets the lease; one the cluster could not order
    /// is tried again at the next renewal. Other writes change nothing here.
    pub fn forwarded(&mut self, f: &Forward, r: Result<&Applied, &Error>, seq: Option<u64>) {
        let Some(kind) = f.lease else {
            return;
        };
        if kind == Leasing::Take {
            self.taking = self.taking.saturating_sub(1);
        }
        let key_of = |op: &Op| match op {
            Op::Set { key, .. } | Op::Patch { key, .. } => Some(key.clone()),
            _ => None,
        };
        match r {
            Ok(a) => {
                let mut outcome = a.outcome.clone();
                if let Some(seq) = seq {
                    outcome.restamp(seq);
                }
                let Outcome::Written(key, entry) = outcome else {
                    return;
                };
                let (key, etag) = (key.to_string(), entry.etag());
                let room = self.leases.len() < self.limits.leases;
                match self.leases.iter_mut().find(|l| l.key == key) {
                    Some(l) => {
                        l.etag = etag;
                        l.pending = false;
                    }
                    None if kind == Leasing::Take && room => self.leases.push(Lease {
                        key,
                        etag,
                        pending: false,
                    }),
                    None => {}
                }
            }
            Err(e) => {
                let Some(key) = key_of(&f.op) else {
                    return;
                };
                let unavailable = matches!(e, Error::Unavailable(_) | Error::Storage(_));
                if kind == Leasing::Renew && !unavailable {
                    self.leases.retain(|l| l.key != key);
                } else if let Some(l) = self.leases.iter_mut().find(|l| l.key == key) {
                    l.pending = false;
                }
            }
        }
    }

    /// Whether the connection leaves anything behind (leases or on-close writes).
    pub fn has_end_writes(&self) -> bool {
        !self.leases.is_empty() || !self.onclose.is_empty()
    }

    /// When the peer last sent a message (engine clock, ns), for a host that keeps it across
    /// restarts of its own ([`Session::restore_heard`]).
    pub fn heard(&self) -> Option<i64> {
        self.heard
    }

    /// Gives a rebuilt session (a woken edge object) the time its peer was last heard.
    pub fn restore_heard(&mut self, at: i64) {
        self.heard = Some(at);
    }

    /// When a connection that holds end writes is to be taken for gone for its silence
    /// ([`Limits::silence`](super::Limits::silence); engine clock, ns): `None` when the host pings its peers itself,
    /// or the connection leaves nothing behind.
    pub fn silent_after(&self) -> Option<i64> {
        let silence = self.limits.silence?;
        if !self.has_end_writes() {
            return None;
        }
        Some(self.heard?.saturating_add(silence))
    }

    /// Whether the connection has been silent too long at `tick` (see
    /// [`Session::silent_after`]): the host closes it with [`super::Close::PingTimeout`],
    /// which runs its end writes.
    pub fn silent(&self, engine: &Engine, tick: Tick) -> bool {
        self.silent_after()
            .is_some_and(|at| engine.clock_at(tick) >= at)
    }
}

// Whether the lease's write is still the key's entry.
fn holds(engine: &Engine, l: &Lease) -> bool {
    engine
        .store()
        .get(&l.key)
        .is_some_and(|e| e.etag() == l.etag)
}

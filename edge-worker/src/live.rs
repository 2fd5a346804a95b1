//! An object's state while it is in memory: its engine, each connection's session (the core's),
//! which connections receive each pool's frames, and fan-out to sockets and SSE streams.

use std::collections::HashMap;

use bytes::Bytes;
use futures_channel::mpsc;
use serde::{Deserialize, Serialize};
use stateline_core::key::Pattern;
use stateline_core::rules::Identity;
use stateline_core::session::{Close, Limits, Session};
use stateline_core::{Change, Encoding, Engine, Error, PoolId, Tick};
use worker::{Result, WebSocket};

// A `/_ws` socket's subscriptions live in its attachment, which the runtime caps at 2 KiB; this
// bounds how many patterns one edge socket may hold (the native server allows 1024).
pub(crate) const MAX_ATTACHMENT: usize = 2000;

pub(crate) fn tick() -> Tick {
    Tick::from_wall((js_sys::Date::now() * 1e6) as i64)
}

pub(crate) fn now_ms() -> i64 {
    js_sys::Date::now() as i64
}

/// What a socket is, stored in its attachment so a woken object can serve it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Attachment {
    /// Unique among this object's sockets.
    pub(crate) id: u32,
    /// `ooo`, `mux` or `clock`.
    pub(crate) kind: String,
    /// The namespace a `/_ws` socket is bound to (namespace mode).
    pub(crate) ns: String,
    /// The HTTP paths of its subscriptions (`/books/*`, `/books/`).
    pub(crate) subs: Vec<String>,
    /// The bearer token it presented (handshake or `/_ws` auth), verified again when a woken
    /// object rebuilds its pools: access rules apply to hibernated sockets as to live ones.
    #[serde(default)]
    pub(crate) token: Option<String>,
    /// The keys a `/_ws` socket holds with a lease, each with its lease's entity tag: deleted
    /// when the socket closes, even if the object was evicted meanwhile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) leases: Vec<(String, String)>,
    /// Its registered on-close writes: handle and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) onclose: Vec<(u64, String)>,
    /// When the peer was last heard (engine clock, in ms: a JavaScript number holds it
    /// exactly, where ns would not fit), saved at most every [`HEARD_EVERY`]: a woken object
    /// still knows how long a socket that holds end writes has been silent.
    #[serde(default)]
    pub(crate) heard_ms: i64,
}

/// How far the saved [`Attachment::heard`] may trail the last message (ns): saving the
/// attachment with every message would cost a storage write each; 10 s is a sixth of the
/// silence limit ([`stateline_core::session::SILENCE`]).
pub(crate) const HEARD_EVERY: i64 = 10_000_000_000;

pub(crate) fn http_path(p: &Pattern) -> String {
    match p.as_str() {
        s if s == "/" => s,
        s => format!("/{s}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    Ws(u32),
    Sse(u32),
}

/// The object's state while it is in memory.
pub(crate) struct Live {
    pub(crate) engine: Engine,
    pub(crate) ns: String,
    pub(crate) subs: HashMap<PoolId, Vec<Sub>>,
    /// Each WebSocket's and SSE stream's session (the core's): its identity, subscriptions and
    /// token deadline.
    pub(crate) sessions: HashMap<u32, Session>,
    pub(crate) sockets: HashMap<u32, WebSocket>,
    pub(crate) sse: HashMap<u32, mpsc::Sender<Result<Vec<u8>>>>,
    pub(crate) clocks: Vec<u32>,
    /// Requests this object answered since it was loaded (for `/_metrics`).
    pub(crate) requests: u64,
    pub(crate) next_id: u32,
    pub(crate) log_keep: usize,
    /// Changes made by connections that ended (their on-close writes and lease releases),
    /// applied and waiting for the object to commit and publish them.
    pub(crate) ended: Vec<Change>,
    /// [`Limits::silence`] of this object's sockets (ns): `STATELINE_SILENCE_SECS`, or
    /// [`stateline_core::session::SILENCE`].
    pub(crate) silence: i64,
}

impl Live {
    /// Whether connection `id`'s token expired (with the rules' leeway): it is closed with 4001
    /// instead of being sent more, as the native server does.
    pub(crate) fn expired(&self, id: u32, t: Tick) -> bool {
        self.sessions.get(&id).is_some_and(|s| s.expired(t))
    }

    /// How long until a connection's lease needs renewing (ns), for the alarm.
    pub(crate) fn renew_in(&self, t: Tick) -> Option<u64> {
        self.sessions
            .values()
            .filter_map(|s| s.renew_in(&self.engine, t))
            .min()
    }

    /// Renews every lease that is due; returns the changes to commit and the sockets whose
    /// attachment must be saved again.
    pub(crate) fn renew(&mut self, t: Tick) -> (Vec<Change>, Vec<u32>) {
        let mut changes = Vec::new();
        let mut moved = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            if s.leases().next().is_none() {
                continue;
            }
            let before: Vec<(String, String)> = s
                .leases()
                .map(|(k, e)| (k.to_string(), e.to_string()))
                .collect();
            changes.extend(s.renew(&mut self.engine, t));
            if s.leases()
                .map(|(k, e)| (k.to_string(), e.to_string()))
                .collect::<Vec<_>>()
                != before
            {
                moved.push(*id);
            }
        }
        (changes, moved)
    }

    /// The earliest token deadline among open connections (Unix seconds), for the alarm.
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        self.sessions.values().filter_map(Session::deadline).min()
    }

    /// Closes every connection whose token expired (4001 on sockets; SSE streams end).
    /// The earliest time a connection is to be taken for gone for its silence (engine clock,
    /// ns), for the alarm.
    pub(crate) fn next_silent(&self) -> Option<i64> {
        self.sessions
            .values()
            .filter_map(Session::silent_after)
            .min()
    }

    /// Closes every connection that holds end writes and has said nothing for the silence
    /// limit (4009, as the native server closes a peer that stops answering pings); its end
    /// writes go to [`Live::ended`].
    pub(crate) fn close_silent(&mut self, t: Tick) {
        let silent: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.silent(&self.engine, t))
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            if let Some(ws) = self.sockets.get(&id) {
                let c = Close::PingTimeout;
                let _ = ws.close(Some(c.code()), Some(c.reason()));
            }
            self.drop_conn(id);
        }
    }

    pub(crate) fn close_expired(&mut self, t: Tick) {
        let expired: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expired(t))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(ws) = self.sockets.get(&id) {
                let c = Close::TokenExpired;
                let _ = ws.close(Some(c.code()), Some(c.reason()));
            }
            self.drop_conn(id);
        }
    }

    pub(crate) fn fan_out(&mut self) {
        let t = tick();
        while let Some(frame) = self.engine.poll_frame() {
            let Some(targets) = self.subs.get(&frame.pool) else {
                continue;
            };
            let mut dead = Vec::new();
            for target in targets {
                match *target {
                    Sub::Ws(id) => {
                        if self.expired(id, t) {
                            if let Some(ws) = self.sockets.get(&id) {
                                let c = Close::TokenExpired;
                                let _ = ws.close(Some(c.code()), Some(c.reason()));
                            }
                            dead.push(id);
                        } else if let Some(ws) = self.sockets.get(&id) {
                            if ws.send_with_bytes(&frame.bytes).is_err() {
                                dead.push(id);
                            }
                        }
                    }
                    Sub::Sse(id) => {
                        let full = self.expired(id, t)
                            || self
                                .sse
                                .get_mut(&id)
                                .is_none_or(|tx| tx.try_send(Ok(frame.bytes.to_vec())).is_err());
                        if full {
                            dead.push(id);
                        }
                    }
                }
            }
            for id in dead {
                self.drop_conn(id);
            }
        }
    }

    /// Subscribes connection `sub`'s session (an ooo socket, an SSE stream, or a hibernated
    /// socket's pattern) and sends it that pool's frames from now on.
    pub(crate) fn subscribe(
        &mut self,
        sub: Sub,
        p: &Pattern,
        enc: Encoding,
        version: Option<u64>,
        initial: bool,
    ) -> std::result::Result<Option<Bytes>, Error> {
        let (Sub::Ws(id) | Sub::Sse(id)) = sub;
        let Some(session) = self.sessions.get_mut(&id) else {
            return Err(Error::NoRoute);
        };
        let (pool, first) = session.subscribe(
            &mut self.engine,
            p.clone(),
            enc,
            version,
            initial,
            &mut admit,
        )?;
        self.subs.entry(pool).or_default().push(sub);
        Ok(first)
    }

    pub(crate) fn leave_pool(&mut self, id: u32, pool: PoolId) {
        if let Some(v) = self.subs.get_mut(&pool) {
            v.retain(|s| !matches!(*s, Sub::Ws(x) | Sub::Sse(x) if x == id));
            if v.is_empty() {
                self.subs.remove(&pool);
            }
        }
        self.engine.leave(pool);
    }

    /// Forgets a connection: its pools, its socket or stream, its clock subscription; runs what
    /// it leaves behind (on-close writes, lease releases) into [`Live::ended`], for the object
    /// to commit.
    pub(crate) fn drop_conn(&mut self, id: u32) {
        if let Some(mut s) = self.sessions.remove(&id) {
            for pool in s.close() {
                self.leave_pool(id, pool);
            }
            let ended = s.end(&mut self.engine, tick());
            self.ended.extend(ended);
        }
        self.sockets.remove(&id);
        self.sse.remove(&id);
        self.clocks.retain(|c| *c != id);
    }

    pub(crate) fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }
}

/// The edge has no embedding program to add subscription checks: the rules decide alone.
pub(crate) fn admit(_: &Pattern, _: &Identity) -> std::result::Result<(), String> {
    Ok(())
}

/// A socket's session limits: its patterns and token must fit the hibernation attachment
/// beside the attachment's own fields.
pub(crate) fn limits(att: &Attachment, silence: i64) -> Limits {
    let bare = Attachment {
        subs: Vec::new(),
        token: None,
        leases: Vec::new(),
        onclose: Vec::new(),
        ..att.clone()
    };
    let base = serde_json::to_string(&bare).map_or(MAX_ATTACHMENT, |s| s.len());
    Limits {
        state_bytes: Some(MAX_ATTACHMENT.saturating_sub(base)),
        // Workers cannot ping a peer: a silent one is found by the alarm.
        silence: Some(silence),
        ..Limits::default()
    }
}

/// The attachment that describes `session` now.
pub(crate) fn attachment_of(att: &Attachment, session: &Session) -> Attachment {
    Attachment {
        subs: session.subscriptions().map(|(p, _)| http_path(p)).collect(),
        token: session.token().map(str::to_string),
        leases: session
            .leases()
            .map(|(k, e)| (k.to_string(), e.to_string()))
            .collect(),
        onclose: session
            .onclose_writes()
            .map(|(h, w)| (h, w.to_string()))
            .collect(),
        heard_ms: session.heard().map_or(att.heard_ms, |ns| ns / 1_000_000),
        ..att.clone()
    }
}

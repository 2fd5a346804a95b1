//! What a client keeps across a reload (the JS client's `persist` option keeps it in
//! IndexedDB; this module only says what to keep and takes it back).
//!
//! - A subscription's cache: [`Client::cache`] gives its version, its view and each key's
//!   state as one JSON document, consistent with each other; [`Client::restore_cache`] takes
//!   it back. A later subscription to that pattern starts from it: its first update comes at
//!   once, marked `cached` (not confirmed by the server), and the subscription resumes from the
//!   stored version, so the server sends only what changed since (or a snapshot, diffed against
//!   the cache, when its change log no longer reaches back). When the server takes the
//!   subscription, an update with no changes, unmarked, says the cache is confirmed; what
//!   changed since follows as any change.
//! - The outbox: [`Client::outbox_message`] gives a write as it goes on the wire, with its id
//!   (`rid`); [`Client::restore_write`] queues it again after a reload. A write the server
//!   already applied before the reload is answered from its receipt, not applied again, so each
//!   write is applied once whether or not its answer arrived before the reload.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{Client, Event, Failure, Known, Write};
use crate::key::Pattern;

/// A cache taken back from storage, waiting for its pattern to be subscribed.
#[derive(Debug)]
pub(super) struct Stored {
    view: Value,
    version: u64,
    known: BTreeMap<String, Known>,
}

fn bad(detail: &str) -> Failure {
    Failure::local("bad-cache", detail)
}

impl Client {
    /// Subscription `pattern`'s cache as one JSON document to store:
    /// `{"version": "<hex>", "view": .., "known": {"<key>": [revision, created, updated]}}`.
    /// `None` while it has no confirmed view (before the server's first frame).
    pub fn cache(&self, pattern: &str) -> Option<Value> {
        let sub = self.subs.get(pattern)?;
        let (Some(view), Some(version)) = (&sub.view, sub.version) else {
            return None;
        };
        let known: Map<String, Value> = sub
            .known
            .iter()
            .map(|(k, s)| (k.clone(), json!([s.revision, s.created, s.updated])))
            .collect();
        Some(json!({"version": format!("{version:x}"), "view": view, "known": known}))
    }

    /// Takes back a cache [`Client::cache`] gave for `pattern`. A subscription to it made
    /// later starts from it (see the module docs); a subscription that already has a view keeps
    /// its own. Refused (`bad-cache`), and nothing kept, when the document is not one.
    pub fn restore_cache(&mut self, pattern: &str, cache: &Value) -> Result<(), Failure> {
        let pattern = Pattern::parse(pattern)
            .map_err(|e| bad(&e.to_string()))?
            .as_str();
        let version = cache
            .get("version")
            .and_then(Value::as_str)
            .and_then(crate::web::parse_version)
            .ok_or_else(|| bad("no version"))?;
        let view = cache
            .get("view")
            .filter(|v| v.is_object() || v.is_array())
            .ok_or_else(|| bad("no view"))?;
        let mut known = BTreeMap::new();
        for (k, s) in cache
            .get("known")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no key states"))?
        {
            let n = |i: usize| {
                s.get(i)
                    .and_then(Value::as_i64)
                    .ok_or_else(|| bad("bad key state"))
            };
            known.insert(
                k.clone(),
                Known {
                    revision: n(0)?,
                    created: n(1)?,
                    updated: n(2)?,
                },
            );
        }
        let stored = Stored {
            view: view.clone(),
            version,
            known,
        };
        match self.subs.get(&pattern) {
            Some(sub) if sub.view.is_some() => {}
            Some(_) => {
                // Subscribed, waiting for the server's first frame: start from the cache now,
                // and resume from it on the next connection.
                self.stored.push((pattern.clone(), stored));
                self.start_cached(&pattern);
            }
            None => {
                self.stored.retain(|(p, _)| *p != pattern);
                self.stored.push((pattern, stored));
            }
        }
        Ok(())
    }

    /// A new or waiting subscription takes its stored cache, if there is one: its listeners
    /// get the cached value at once, marked `cached`.
    pub(super) fn start_cached(&mut self, pattern: &str) {
        let Some(i) = self.stored.iter().position(|(p, _)| p == pattern) else {
            return;
        };
        let (_, stored) = self.stored.swap_remove(i);
        let Some(sub) = self.subs.get_mut(pattern) else {
            return;
        };
        if sub.view.is_some() {
            return;
        }
        sub.view = Some(stored.view);
        sub.version = Some(stored.version);
        sub.known = stored.known;
        sub.cached = true;
        let fresh = std::mem::take(&mut sub.fresh);
        if !fresh.is_empty() {
            let ev = self.initial_update(pattern, fresh);
            self.events.push_back(ev);
        }
    }

    /// Write `req` as it goes on the wire (without the socket's `id`), while it waits for its
    /// answer: what an outbox keeps. `None` for a write not waiting, or one that is taken again
    /// by other means (a leased write, a disconnect write).
    pub fn outbox_message(&self, req: u64) -> Option<Value> {
        let w = self.queue.iter().find(|w| w.req == req).or_else(|| {
            self.pending.get(&req).and_then(|p| match p {
                super::Pending::Write(w) => Some(w),
                _ => None,
            })
        })?;
        let held = w.msg.get("lease").and_then(Value::as_bool) == Some(true)
            || w.msg.get("op").and_then(Value::as_str) == Some("onclose");
        (!held).then(|| Value::Object(w.msg.clone()))
    }

    /// Queues a write [`Client::outbox_message`] gave before a reload, with its id as it was,
    /// after the writes already queued. Returns the request id its [`Event::Reply`] carries
    /// (marked `queued`).
    pub fn restore_write(&mut self, msg: Value) -> u64 {
        let req = self.id();
        let Value::Object(msg) = msg else {
            self.events.push_back(Event::Reply {
                req,
                queued: true,
                result: Err(Failure::local(
                    "bad-request",
                    "a write must be a JSON object",
                )),
            });
            return req;
        };
        self.apply_local(req, &msg);
        let w = Write {
            req,
            msg,
            queued: true,
        };
        self.enqueue(w);
        req
    }

    /// The server took subscription `pattern` (resuming from the stored version, if it had
    /// one): a cache it showed is confirmed, with an update of no changes, unmarked. What
    /// changed since comes in the frame after the reply, as any change.
    pub(super) fn confirm(&mut self, pattern: &str) {
        let Some(sub) = self.subs.get_mut(pattern) else {
            return;
        };
        if !std::mem::replace(&mut sub.cached, false) {
            return;
        }
        let listeners = sub.settled();
        if listeners.is_empty() {
            return;
        }
        let sub = &self.subs[pattern];
        let ev = Event::Update {
            pattern: sub.path.clone(),
            listeners,
            initial: false,
            version: sub.version.unwrap_or(0),
            value: self.user_value(sub),
            changes: Vec::new(),
            cached: false,
        };
        self.events.push_back(ev);
    }
}

//! Optimistic local writes ([`super::Config::optimistic`]): a `set`, `patch` or `del` of one
//! key is shown to this client's own subscribers at once, as a change marked `pending`, and
//! reconciled when the server answers.
//!
//! Each such write is a [`Local`]: the key and the value it leaves (from the value the page
//! sees now: the newest pending write of the key, else the server's). What a subscriber sees of
//! a key is its newest pending write if it has one, else the server's state. Server changes to
//! a key with a pending write are kept (the cache follows the server) but not reported: they are
//! hidden under it. When the server answers, the write's [`Local`] goes and the key shows what
//! is under it. Each subscription is compared in its own view (two covering one key may be at
//! different versions of it): a change is reported only if that differs from what was shown:
//! nothing when the server stored what the page showed, the server's value when another writer
//! got there in between, the value before when the write was refused (its rollback).
//!
//! Not optimistic: writes of a glob or subtree, leased writes, `push` (its key is the server's),
//! `incr`, `take`, `rename`, transactions, a `patch` of a key the page does not see, and values
//! holding a server value (`{".sv": ..}`), which only the server can fill in.

use serde_json::{Map, Value};

use super::{entries, Client, Event, KeyChange};
use crate::json;
use crate::key::Pattern;

/// A pending optimistic write.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Local {
    req: u64,
    key: String,
    // The key's value after it; `None`: deleted.
    after: Option<Value>,
}

impl Local {
    /// The key it writes.
    pub(super) fn key(&self) -> &str {
        &self.key
    }
}

impl Client {
    /// Pending writes' changes on top of a subscription's first changes: a pending key shows
    /// its pending value (or is gone when deleted), and a pending new key is added last.
    pub(super) fn overlay_changes(&self, sub: &super::Sub, changes: &mut Vec<KeyChange>) {
        if self.local.is_empty() {
            return;
        }
        let Ok(pattern) = Pattern::parse(&sub.path) else {
            return;
        };
        let mut keys: Vec<&str> = Vec::new();
        for l in &self.local {
            if pattern.matches(&l.key) && !keys.contains(&l.key.as_str()) {
                keys.push(&l.key);
            }
        }
        for k in keys {
            let top = self.local_top(k).cloned().flatten();
            match (changes.iter().position(|c| c.key == k), top) {
                (Some(i), Some(v)) => {
                    let c = &mut changes[i];
                    c.value = Some(v);
                    c.revision = -1;
                    c.pending = true;
                }
                (Some(i), None) => {
                    changes.remove(i);
                }
                (None, Some(v)) => changes.push(KeyChange {
                    key: k.to_string(),
                    value: Some(v),
                    revision: -1,
                    created: 0,
                    updated: 0,
                    pending: true,
                }),
                (None, None) => {}
            }
        }
    }

    /// What the newest pending write of `key` leaves, if there is one.
    pub(super) fn local_top(&self, key: &str) -> Option<&Option<Value>> {
        self.local
            .iter()
            .rev()
            .find(|l| l.key == key)
            .map(|l| &l.after)
    }

    // The patterns of the subscriptions holding a view that covers `key`.
    fn covering(&self, key: &str) -> Vec<String> {
        self.subs
            .iter()
            .filter(|(p, s)| {
                s.view.is_some() && Pattern::parse(p).is_ok_and(|pat| pat.matches(key))
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    // The server's state of `key` in the view of subscription `pattern`: (created, updated,
    // data), or `None` when absent.
    fn server_state(&self, pattern: &str, key: &str) -> Option<(i64, i64, Value)> {
        let view = self.subs.get(pattern)?.view.as_ref()?;
        entries(view)
            .into_iter()
            .find(|(k, ..)| k == key)
            .map(|(_, c, u, d)| (c, u, d.clone()))
    }

    // What the page sees of `key` now: its newest pending write, else the server's value (from
    // the first covering subscription), `None` when absent; `Err` when no subscription sees it.
    fn seen(&self, key: &str, covering: &[String]) -> Result<Option<Value>, ()> {
        let p = covering.first().ok_or(())?;
        Ok(self.seen_by(key, p))
    }

    // What the subscription `pattern` shows of `key` now: its newest pending write, else the
    // server's value in that subscription's view. Two subscriptions covering a key may hold
    // different server versions of it (each has its own frames, and one may be behind).
    fn seen_by(&self, key: &str, pattern: &str) -> Option<Value> {
        match self.local_top(key) {
            Some(v) => v.clone(),
            None => self.server_state(pattern, key).map(|(_, _, d)| d),
        }
    }

    /// A write the user just made (request `req`): if it is optimistic, its value is shown to
    /// the subscriptions that see the key, as a pending change.
    pub(super) fn apply_local(&mut self, req: u64, msg: &Map<String, Value>) {
        if !self.config.optimistic || msg.get("lease").and_then(Value::as_bool) == Some(true) {
            return;
        }
        let Some(key) = msg.get("key").and_then(Value::as_str) else {
            return;
        };
        let key = key.trim_start_matches('/');
        if key.is_empty() || key.ends_with('/') || key.split('/').any(|s| s.contains('*')) {
            return;
        }
        if msg
            .get("value")
            .is_some_and(|v| json::encode(v).windows(5).any(|w| w == b"\".sv\""))
        {
            return;
        }
        let covering = self.covering(key);
        let Ok(before) = self.seen(key, &covering) else {
            return;
        };
        let after = match msg.get("op").and_then(Value::as_str) {
            Some("set") => match msg.get("value") {
                Some(v) => Some(v.clone()),
                None => return,
            },
            Some("del") => None,
            Some("patch") => {
                let (Some(cur), Some(p)) = (&before, msg.get("value")) else {
                    return;
                };
                let patched = match msg.get("type").and_then(Value::as_str).unwrap_or("merge") {
                    "merge" => json::ooo_merge(cur, p).ok(),
                    "merge-patch" => Some(json::merge_patch(cur, p)),
                    "json-patch" => json::parse_patch(p.clone())
                        .ok()
                        .and_then(|p| json::json_patch(cur, &p).ok()),
                    _ => None,
                };
                match patched {
                    Some(v) => Some(v),
                    None => return,
                }
            }
            _ => return,
        };
        // Reported to each subscription whose own view differs: one that is behind shows the
        // write even when another already holds that value from the server.
        let differs: Vec<String> = covering
            .into_iter()
            .filter(|p| self.seen_by(key, p) != after)
            .collect();
        self.local.push(Local {
            req,
            key: key.to_string(),
            after: after.clone(),
        });
        if !differs.is_empty() {
            self.report_key(key, &differs, after, true);
        }
    }

    /// The server answered request `req` (or it failed locally): its pending write goes, and
    /// the key shows what is under it, reported where that differs from what was shown.
    pub(super) fn settle_local(&mut self, req: u64) {
        let Some(i) = self.local.iter().position(|l| l.req == req) else {
            return;
        };
        let gone = self.local.remove(i);
        if self.local[i..].iter().any(|l| l.key == gone.key) {
            // A newer pending write of the key is still what is shown.
            return;
        }
        // Every covering subscription showed `gone.after`; each now shows what is under it in
        // its own view, reported where that differs.
        let pending = self.local_top(&gone.key).is_some();
        for p in self.covering(&gone.key) {
            let now = self.seen_by(&gone.key, &p);
            if now != gone.after {
                self.report_key(&gone.key, std::slice::from_ref(&p), now, pending);
            }
        }
    }

    // Reports `key` as now holding `value` to every covering subscription's listeners.
    fn report_key(&mut self, key: &str, covering: &[String], value: Option<Value>, pending: bool) {
        for p in covering {
            let server = self.server_state(p, key);
            let Some(sub) = self.subs.get(p) else {
                continue;
            };
            let revision = match (pending, sub.known.get(key)) {
                (false, Some(k)) => k.revision,
                _ => -1,
            };
            let (created, updated) = server.as_ref().map_or((0, 0), |(c, u, _)| (*c, *u));
            let change = KeyChange {
                key: key.to_string(),
                value: value.clone(),
                revision,
                created: if value.is_some() { created } else { 0 },
                updated: if value.is_some() { updated } else { 0 },
                pending,
            };
            let listeners = sub.settled();
            if listeners.is_empty() {
                continue;
            }
            let ev = Event::Update {
                pattern: sub.path.clone(),
                listeners,
                initial: false,
                version: sub.version.unwrap_or(0),
                value: self.user_value(sub),
                changes: vec![change],
                cached: sub.cached,
            };
            self.events.push_back(ev);
        }
    }

    /// The value users see of a subscription: the server's view with the pending writes on
    /// top (a key's data, `null` when absent; or a list of items, newest first, a pending new
    /// key first of all).
    pub(super) fn user_value(&self, sub: &super::Sub) -> Value {
        let server = super::user_value(sub);
        if self.local.is_empty() {
            return server;
        }
        let Ok(pattern) = Pattern::parse(&sub.path) else {
            return server;
        };
        match server {
            Value::Array(items) => {
                let mut items = items;
                let mut keys: Vec<&str> = self
                    .local
                    .iter()
                    .map(|l| l.key.as_str())
                    .filter(|k| pattern.matches(k))
                    .collect();
                keys.dedup();
                let mut added = Vec::new();
                for k in keys {
                    let top = self.local_top(k).cloned().flatten();
                    let at = items.iter().position(|it| it["key"] == k);
                    match (at, top) {
                        (Some(i), Some(v)) => {
                            items[i]["value"] = v;
                            items[i]["revision"] = Value::from(-1);
                        }
                        (Some(i), None) => {
                            items.remove(i);
                        }
                        (None, Some(v)) => added.push(serde_json::json!({
                            "key": k, "value": v, "revision": -1, "created": 0, "updated": 0,
                        })),
                        (None, None) => {}
                    }
                }
                added.reverse();
                added.extend(items);
                Value::Array(added)
            }
            v => match &pattern {
                Pattern::Key(k) => match self.local_top(k) {
                    Some(top) => top.clone().unwrap_or(Value::Null),
                    None => v,
                },
                _ => v,
            },
        }
    }
}

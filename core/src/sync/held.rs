//! What a connection holds on the server and the client must take again after a reconnect:
//! leased keys (`"lease": true` writes, deleted by the server when the connection ends) and
//! disconnect writes (`onclose` registrations, carried out by the server when it ends).
//!
//! - **Leases.** Every acknowledged leased `set`, `patch` or `push` is remembered per key as the
//!   writes that recreate it: a `set` (a push becomes a `set` of the key the server named), with
//!   later RFC 7396 merge patches of that key folded into its value with the core's own code
//!   (other patches are kept after it, in order, at most [`MAX_HELD_WRITES`] per key). Any
//!   other acknowledged write of the key without `lease` (`set`, `patch`, `del`, `incr`, ...)
//!   drops it: the server ends a lease on such a write. (A write by another client ends it too;
//!   this client cannot tell, and takes the key again after its next reconnect.) On every reconnect the held writes are sent
//!   again, before the queued writes, each with `"lease": true` and without `rev`/`ifAbsent`
//!   (the old connection's end deleted the key, so the compare would fail).
//! - **Disconnect writes.** `{"op":"onclose","write":{..}}` is not queued like a write: it is a
//!   registration, sent on the current connection and again on every later one. The user's reply
//!   comes with the first acknowledgement and names a handle that stays the same across
//!   reconnects (the request id); the server's handle of the moment is kept beside it, so
//!   `{"op":"onclose_cancel","onclose":<handle>}` is translated before it is sent. A cancel of a
//!   registration that is not live on the current connection (offline, or still in flight) is
//!   done locally: the registration is forgotten (and cancelled on the server as soon as its
//!   acknowledgement arrives).
//!
//! [`Client::close`] forgets both (a closed client starts afresh; the server carried out the
//! disconnect writes when the socket closed).

use serde_json::{json, Map, Value};

use super::{Client, Event, Failure, Io, Pending, State, Write};
use crate::json;

/// Writes kept per leased key to recreate it (its `set`, then patches that could not be folded
/// into it): bounds the memory of a page that patches a leased key forever in a way that cannot
/// be folded (e.g. a JSON Patch whose test fails locally). Past it, the oldest patch is dropped
/// (the key is recreated from the rest).
pub const MAX_HELD_WRITES: usize = 32;

/// A disconnect write registered by the user.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OnClose {
    /// The `onclose` message as the user gave it (without `id`).
    msg: Map<String, Value>,
    /// The server's handle on the current connection, once acknowledged there.
    server: Option<u64>,
    /// Sent on the current connection, not acknowledged yet.
    sent: bool,
    /// The user had its reply (the first acknowledgement, or a failure).
    reported: bool,
}

/// The leased keys and disconnect writes a client holds. Vectors searched linearly, not maps: a
/// page holds a handful, and each map type would add kilobytes to the browser client's wasm.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// Leased key → the writes that recreate it, in the order the leases were taken.
    leases: Vec<(String, Vec<Map<String, Value>>)>,
    /// The user's handle (the registering request's id) → the registration, oldest first.
    onclose: Vec<(u64, OnClose)>,
    /// A cancel in flight (its request id) → the user's handle it cancels.
    cancels: Vec<(u64, u64)>,
}

/// Removes and returns the value at `k` of an association list.
fn take<K: PartialEq, V>(list: &mut Vec<(K, V)>, k: &K) -> Option<V> {
    let i = list.iter().position(|(x, _)| x == k)?;
    Some(list.remove(i).1)
}

fn find<'a, K: PartialEq, V>(list: &'a mut [(K, V)], k: &K) -> Option<&'a mut V> {
    list.iter_mut().find(|(x, _)| x == k).map(|(_, v)| v)
}

fn op(msg: &Map<String, Value>) -> &str {
    msg.get("op").and_then(Value::as_str).unwrap_or("")
}

fn key(msg: &Map<String, Value>) -> Option<String> {
    msg.get("key")
        .and_then(Value::as_str)
        .map(|k| k.trim_start_matches('/').to_string())
}

fn leased(msg: &Map<String, Value>) -> bool {
    msg.get("lease").and_then(Value::as_bool) == Some(true)
}

/// A patch message applied to a value: RFC 7396 merge patches only (the others are kept as
/// they are and sent after the `set`; folding them would bring their merge code into the
/// browser client's wasm, which has a size budget).
fn fold(value: &Value, patch: &Map<String, Value>) -> Option<Value> {
    match patch.get("type").and_then(Value::as_str) {
        Some("merge-patch") => Some(json::merge_patch(value, patch.get("value")?)),
        _ => None,
    }
}

impl Held {
    /// Notes an acknowledged write (`reply`: the server's fields) for the leases it makes or ends.
    fn acknowledged(&mut self, msg: &Map<String, Value>, reply: &Map<String, Value>) {
        if !leased(msg) {
            // Any other write to the key (a set, patch, del, incr, take or rename without
            // `lease`) ends its lease on the server: it is not taken again.
            for f in ["key", "to"] {
                if let Some(k) = msg.get(f).and_then(Value::as_str) {
                    take(&mut self.leases, &k.trim_start_matches('/').to_string());
                }
            }
            return;
        }
        match op(msg) {
            "set" => {
                let Some(k) = key(msg) else { return };
                let mut m = msg.clone();
                m.remove("rev");
                m.remove("ifAbsent");
                m.remove("ifMatch");
                m.insert("key".into(), Value::String(k.clone()));
                take(&mut self.leases, &k);
                self.leases.push((k, vec![m]));
            }
            "push" => {
                let Some(k) = reply.get("key").and_then(Value::as_str) else {
                    return;
                };
                let m = json!({"op": "set", "key": k, "value": msg.get("value").cloned().unwrap_or(Value::Null), "lease": true});
                let Value::Object(m) = m else { return };
                let k = k.to_string();
                take(&mut self.leases, &k);
                self.leases.push((k, vec![m]));
            }
            "patch" => {
                let Some(k) = key(msg) else { return };
                if !self.leases.iter().any(|(x, _)| *x == k) {
                    self.leases.push((k.clone(), Vec::new()));
                }
                let Some(held) = find(&mut self.leases, &k) else {
                    return;
                };
                let mut m = msg.clone();
                m.remove("ifMatch");
                m.remove("rev");
                m.insert("key".into(), Value::String(k));
                if let Some(last) = held.last_mut().filter(|l| op(l) == "set") {
                    if let Some(v) = last.get("value").and_then(|v| fold(v, &m)) {
                        last.insert("value".into(), v);
                        return;
                    }
                }
                held.push(m);
                if held.len() > MAX_HELD_WRITES {
                    held.remove(usize::from(op(&held[0]) == "set"));
                }
            }
            _ => {}
        }
    }
}

impl Client {
    /// The leased keys held (to be taken again after a reconnect), in key order.
    pub fn leases(&self) -> Vec<String> {
        self.held.leases.iter().map(|(k, _)| k.clone()).collect()
    }

    /// The disconnect writes registered (the users' handles), in order.
    pub fn disconnect_writes(&self) -> Vec<u64> {
        self.held.onclose.iter().map(|(h, _)| *h).collect()
    }

    /// `write` of an `onclose` registration or an `onclose_cancel`: handled here, not queued.
    /// Returns false for any other message.
    pub(super) fn write_held(&mut self, req: u64, msg: &Map<String, Value>) -> bool {
        match op(msg) {
            "onclose" => {
                // Bounded like the write queue: a page registering forever while offline.
                if self.held.onclose.len() >= self.config.max_queue {
                    self.events.push_back(Event::Reply {
                        req,
                        queued: false,
                        result: Err(Failure::local(
                            "queue-full",
                            "too many disconnect writes are registered",
                        )),
                    });
                    return true;
                }
                self.held.onclose.push((
                    req,
                    OnClose {
                        msg: msg.clone(),
                        server: None,
                        sent: false,
                        reported: false,
                    },
                ));
                if self.state == State::Open {
                    self.send_onclose(req);
                }
                true
            }
            "onclose_cancel" => {
                self.cancel_onclose(req, msg);
                true
            }
            _ => false,
        }
    }

    fn send_onclose(&mut self, handle: u64) {
        let Some(reg) = find(&mut self.held.onclose, &handle) else {
            return;
        };
        reg.sent = true;
        reg.server = None;
        let mut m = reg.msg.clone();
        let id = self.next_id;
        self.next_id += 1;
        m.insert("id".into(), Value::from(id));
        self.io.push_back(Io::Send(Value::Object(m).to_string()));
        self.pending.insert(id, Pending::OnClose(handle));
    }

    fn cancel_onclose(&mut self, req: u64, msg: &Map<String, Value>) {
        let handle = msg.get("onclose").and_then(Value::as_u64);
        let Some(reg) = handle.and_then(|h| take(&mut self.held.onclose, &h)) else {
            self.events.push_back(Event::Reply {
                req,
                queued: false,
                result: Err(Failure {
                    status: 404,
                    code: "not-found".into(),
                    detail: "no disconnect write has this handle".into(),
                }),
            });
            return;
        };
        let handle = handle.unwrap_or_default();
        if !reg.reported {
            // Cancelled before the server acknowledged it: the registering call resolves, saying so.
            self.events.push_back(Event::Reply {
                req: handle,
                queued: false,
                result: Ok(json!({"onclose": handle, "cancelled": true})),
            });
        }
        match reg.server {
            Some(h) if self.state == State::Open => {
                let w = Write {
                    req,
                    msg: match json!({"op": "onclose_cancel", "onclose": h}) {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    },
                    queued: false,
                };
                self.held.cancels.push((req, handle));
                self.send_write(w);
            }
            // Not live on this connection: nothing on the server to cancel (a registration in
            // flight is cancelled when its acknowledgement names its handle).
            _ => self.events.push_back(Event::Reply {
                req,
                queued: false,
                result: Ok(json!({"onclose": handle, "cancelled": true})),
            }),
        }
    }

    /// The acknowledgement (or refusal) of a registration sent by [`Client::send_onclose`].
    pub(super) fn on_onclose_reply(
        &mut self,
        handle: u64,
        result: Result<Map<String, Value>, Failure>,
    ) {
        let server = result
            .as_ref()
            .ok()
            .and_then(|m| m.get("onclose"))
            .and_then(Value::as_u64);
        let Some(reg) = find(&mut self.held.onclose, &handle) else {
            // Cancelled while in flight: cancel it on the server now.
            if let Some(h) = server {
                let id = self.next_id;
                self.next_id += 1;
                self.pending.insert(id, Pending::Internal);
                self.io.push_back(Io::Send(
                    json!({"id": id, "op": "onclose_cancel", "onclose": h}).to_string(),
                ));
            }
            return;
        };
        reg.sent = false;
        match result {
            Ok(mut m) => {
                reg.server = server;
                if !reg.reported {
                    reg.reported = true;
                    m.insert("onclose".into(), Value::from(handle));
                    self.events.push_back(Event::Reply {
                        req: handle,
                        queued: false,
                        result: Ok(Value::Object(m)),
                    });
                }
            }
            Err(f) => {
                // Refused (on a later connection too: e.g. the token expired): forgotten.
                let reported = reg.reported;
                take(&mut self.held.onclose, &handle);
                if !reported {
                    self.events.push_back(Event::Reply {
                        req: handle,
                        queued: false,
                        result: Err(f),
                    });
                }
            }
        }
    }

    /// An acknowledged user write: leases made or ended; a cancel's reply names the user's handle.
    pub(super) fn held_acknowledged(&mut self, w: &Write, reply: &mut Map<String, Value>) {
        if let Some(handle) = take(&mut self.held.cancels, &w.req) {
            reply.insert("onclose".into(), Value::from(handle));
            return;
        }
        self.held.acknowledged(&w.msg, reply);
    }

    /// A user write failed: a cancel in flight forgets its translation.
    pub(super) fn held_failed(&mut self, w: &Write) {
        take(&mut self.held.cancels, &w.req);
    }

    /// The socket opened: take the leases again and register the disconnect writes again, before
    /// the queued writes are sent.
    pub(super) fn retake_held(&mut self) {
        let writes: Vec<Map<String, Value>> = self
            .held
            .leases
            .iter()
            .flat_map(|(_, w)| w.iter().cloned())
            .collect();
        for mut m in writes {
            let id = self.next_id;
            self.next_id += 1;
            m.insert("id".into(), Value::from(id));
            m.insert("lease".into(), Value::Bool(true));
            self.pending.insert(id, Pending::Internal);
            self.io.push_back(Io::Send(Value::Object(m).to_string()));
        }
        let handles = self.disconnect_writes();
        for h in handles {
            self.send_onclose(h);
        }
    }

    /// The socket was lost: no registration is live any more (the server carried them out); a
    /// cancel in flight has nothing left to cancel, so it succeeds. Returns the cancels' replies
    /// to report instead of failing them.
    pub(super) fn held_lost(&mut self, inflight: &mut Vec<Write>) {
        for (_, reg) in self.held.onclose.iter_mut() {
            reg.server = None;
            reg.sent = false;
        }
        let cancels = std::mem::take(&mut self.held.cancels);
        inflight.retain(|w| match cancels.iter().find(|(r, _)| *r == w.req) {
            Some(&(_, handle)) => {
                self.events.push_back(Event::Reply {
                    req: w.req,
                    queued: w.queued,
                    result: Ok(json!({"onclose": handle, "cancelled": true})),
                });
                false
            }
            None => true,
        });
    }

    /// [`Client::close`]: forget leases and registrations; a registration not yet acknowledged
    /// fails with `closed`.
    pub(super) fn held_closed(&mut self) {
        self.held.leases.clear();
        self.held.cancels.clear();
        for (handle, reg) in std::mem::take(&mut self.held.onclose) {
            if !reg.reported {
                self.events.push_back(Event::Reply {
                    req: handle,
                    queued: false,
                    result: Err(Failure::local("closed", "the client was closed")),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;

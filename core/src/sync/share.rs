//! One `/_ws` socket for many clients: the JS client's `shareTabs`, where the tabs of one browser
//! share the socket of one of them (the leader).
//!
//! Every tab still runs its own [`super::Client`]; its socket is a virtual connection to the
//! leader's [`Hub`], which multiplexes them onto the one socket:
//!
//! - A request (a write, a ping, `auth`, `onclose`, ...) gets an id of the hub's on the socket,
//!   and its reply goes back to the connection that sent it, with its own id.
//! - A subscription is made on the socket once per pattern, and its frames go to every
//!   connection that subscribed to it. The first connection's `v` is sent, so it resumes. A
//!   connection that joins a pattern already subscribed needs a first frame of its own: the
//!   hub subscribes again (unsub, then sub without a version), and the snapshot that brings
//!   goes to all of them; each client diffs a snapshot against its cache, so nobody is told a
//!   change twice. An unsub is answered by the hub, and the socket's subscription goes with its
//!   last connection.
//! - A connection that ends (its tab closed or crashed) leaves what the server would do for a
//!   socket that ends: its disconnect writes are run (cancelled, then sent as writes) and its
//!   leased keys deleted. Its other requests' replies are dropped.
//! - When the socket closes, every connection is closed: each client reconnects with its own
//!   backoff and resumes from its versions, and resends its writes in flight, whose ids (`rid`)
//!   make a repeat harmless. So a leader that goes hands over without losing a write or an
//!   update.
//!
//! Frames are passed on as the text the server sent; the hub reads only their `sub` field.

use std::collections::VecDeque;

use serde_json::{json, Map, Value};

/// What the hub asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Send this text on the socket.
    Server(String),
    /// Deliver this text to connection `conn`.
    Conn(u64, String),
}

// Where the reply to a request the hub sent goes.
#[derive(Debug)]
enum Route {
    // To a connection, under its own id; `lease`/`onclose` say what to remember when it is ok.
    Conn {
        conn: u64,
        id: Value,
        keep: Keep,
    },
    // A subscription of `pattern` for the connections that wait for its reply.
    Sub {
        pattern: String,
        joining: Vec<(u64, Value)>,
    },
    // Nobody waits (an unsub, a write a connection left behind).
    None,
}

#[derive(Debug, Clone)]
enum Keep {
    Nothing,
    Lease,
    OnClose(Value),
    Cancel(u64),
}

#[derive(Debug)]
struct Shared {
    pattern: String,
    // Connections that get its frames.
    members: Vec<u64>,
    // A sub is on its way to the server (its reply has not come).
    pending: bool,
    // Connections that asked while it was pending: they join with another sub after it.
    waiting: Vec<(u64, Value)>,
}

// What a connection holds on the socket: its leased keys and disconnect writes, by the handle
// the server gave (the connection's own handle is that number too: it is passed through).
#[derive(Debug, Default)]
struct Held {
    conn: u64,
    leases: Vec<String>,
    oncloses: Vec<(u64, Value)>,
}

/// The multiplexer. See the module docs.
#[derive(Debug, Default)]
pub struct Hub {
    next_id: u64,
    routes: Vec<(u64, Route)>,
    subs: Vec<Shared>,
    held: Vec<Held>,
    out: VecDeque<Out>,
}

fn text(v: &Value) -> String {
    v.to_string()
}

fn with_id(mut m: Map<String, Value>, id: Value) -> String {
    m.insert("id".into(), id);
    Value::Object(m).to_string()
}

impl Hub {
    /// A hub whose socket is about to open.
    pub fn new() -> Hub {
        Hub {
            next_id: 1,
            ..Hub::default()
        }
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Option<Out> {
        self.out.pop_front()
    }

    fn send(&mut self, mut m: Map<String, Value>, route: Route) {
        let id = self.next_id;
        self.next_id += 1;
        m.insert("id".into(), Value::from(id));
        self.out
            .push_back(Out::Server(Value::Object(m).to_string()));
        self.routes.push((id, route));
    }

    fn sub(&mut self, pattern: &str, v: Option<Value>, joining: Vec<(u64, Value)>) {
        let mut m = Map::new();
        m.insert("op".into(), json!("sub"));
        m.insert("path".into(), json!(pattern));
        if let Some(v) = v {
            m.insert("v".into(), v);
        }
        self.send(
            m,
            Route::Sub {
                pattern: pattern.to_string(),
                joining,
            },
        );
    }

    fn unsub(&mut self, pattern: &str) {
        let mut m = Map::new();
        m.insert("op".into(), json!("unsub"));
        m.insert("path".into(), json!(pattern));
        self.send(m, Route::None);
    }

    /// A message from connection `conn` (what its client would send on a socket).
    pub fn from_conn(&mut self, conn: u64, msg: &str) {
        let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(msg) else {
            return;
        };
        let id = m.remove("id").unwrap_or(Value::Null);
        match m.get("op").and_then(Value::as_str) {
            Some("sub") => {
                let pattern = m
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                self.join(conn, id, pattern, m.remove("v"));
            }
            Some("unsub") => {
                let pattern = m
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                self.leave(conn, &pattern);
                let reply = json!({"id": id, "ok": true, "sub": pattern});
                self.out.push_back(Out::Conn(conn, text(&reply)));
            }
            op => {
                let keep = match op {
                    Some("set" | "patch" | "push")
                        if m.get("lease").and_then(Value::as_bool) == Some(true) =>
                    {
                        Keep::Lease
                    }
                    Some("onclose") => Keep::OnClose(m.get("write").cloned().unwrap_or_default()),
                    Some("onclose_cancel") => {
                        Keep::Cancel(m.get("onclose").and_then(Value::as_u64).unwrap_or(0))
                    }
                    _ => Keep::Nothing,
                };
                self.send(m, Route::Conn { conn, id, keep });
            }
        }
    }

    fn join(&mut self, conn: u64, id: Value, pattern: String, v: Option<Value>) {
        let Some(i) = self.subs.iter().position(|s| s.pattern == pattern) else {
            self.subs.push(Shared {
                pattern: pattern.clone(),
                members: Vec::new(),
                pending: true,
                waiting: Vec::new(),
            });
            self.sub(&pattern, v, vec![(conn, id)]);
            return;
        };
        let s = &mut self.subs[i];
        s.members.retain(|c| *c != conn);
        if s.pending {
            s.waiting.push((conn, id));
            return;
        }
        // Subscribed already: again, for a snapshot every member diffs.
        s.pending = true;
        self.unsub(&pattern);
        self.sub(&pattern, None, vec![(conn, id)]);
    }

    fn leave(&mut self, conn: u64, pattern: &str) {
        let Some(i) = self.subs.iter().position(|s| s.pattern == pattern) else {
            return;
        };
        let s = &mut self.subs[i];
        s.members.retain(|c| *c != conn);
        s.waiting.retain(|(c, _)| *c != conn);
        let joining = self.routes.iter().any(|(_, r)| {
            matches!(r, Route::Sub { pattern: p, joining } if p == pattern && joining.iter().any(|(c, _)| *c != conn))
        });
        let s = &self.subs[i];
        if s.members.is_empty() && s.waiting.is_empty() && !joining {
            self.subs.remove(i);
            self.unsub(pattern);
        }
    }

    /// Connection `conn` ended: it leaves its subscriptions, and its disconnect writes and
    /// leased keys are carried out as the server would for a socket that ended.
    pub fn conn_gone(&mut self, conn: u64) {
        let patterns: Vec<String> = self
            .subs
            .iter()
            .filter(|s| s.members.contains(&conn) || s.waiting.iter().any(|(c, _)| *c == conn))
            .map(|s| s.pattern.clone())
            .collect();
        for (_, r) in &mut self.routes {
            match r {
                Route::Conn { conn: c, .. } if *c == conn => *r = Route::None,
                Route::Sub { joining, .. } => joining.retain(|(c, _)| *c != conn),
                _ => {}
            }
        }
        for p in patterns {
            self.leave(conn, &p);
        }
        // Subscriptions only this connection was joining.
        let orphans: Vec<String> = self
            .subs
            .iter()
            .filter(|s| s.members.is_empty() && s.waiting.is_empty())
            .filter(|s| {
                !self.routes.iter().any(|(_, r)| {
                    matches!(r, Route::Sub { pattern, joining } if *pattern == s.pattern && !joining.is_empty())
                })
            })
            .map(|s| s.pattern.clone())
            .collect();
        for p in orphans {
            self.subs.retain(|s| s.pattern != p);
            self.unsub(&p);
        }
        if let Some(i) = self.held.iter().position(|h| h.conn == conn) {
            let h = self.held.swap_remove(i);
            for (handle, write) in h.oncloses {
                let mut m = Map::new();
                m.insert("op".into(), json!("onclose_cancel"));
                m.insert("onclose".into(), json!(handle));
                self.send(m, Route::None);
                if let Value::Object(w) = write {
                    self.send(w, Route::None);
                }
            }
            for key in h.leases {
                let mut m = Map::new();
                m.insert("op".into(), json!("del"));
                m.insert("key".into(), json!(key));
                self.send(m, Route::None);
            }
        }
    }

    fn held_mut(&mut self, conn: u64) -> &mut Held {
        let i = match self.held.iter().position(|h| h.conn == conn) {
            Some(i) => i,
            None => {
                self.held.push(Held {
                    conn,
                    ..Held::default()
                });
                self.held.len() - 1
            }
        };
        &mut self.held[i]
    }

    /// A message from the socket.
    pub fn from_server(&mut self, msg: &str) {
        if let Some(pattern) = frame_pattern(msg) {
            if let Some(s) = self.subs.iter().find(|s| s.pattern == pattern) {
                for c in &s.members {
                    self.out.push_back(Out::Conn(*c, msg.to_string()));
                }
            }
            return;
        }
        let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(msg) else {
            return;
        };
        let Some(id) = m.get("id").and_then(Value::as_u64) else {
            return;
        };
        let Some(i) = self.routes.iter().position(|(r, _)| *r == id) else {
            return;
        };
        let (_, route) = self.routes.swap_remove(i);
        let ok = m.get("ok").and_then(Value::as_bool) == Some(true);
        match route {
            Route::None => {}
            Route::Conn { conn, id, keep } => {
                if ok {
                    match keep {
                        Keep::Nothing => {}
                        Keep::Lease => {
                            if let Some(k) = m.get("key").and_then(Value::as_str) {
                                let k = k.to_string();
                                let h = self.held_mut(conn);
                                if !h.leases.contains(&k) {
                                    h.leases.push(k);
                                }
                            }
                        }
                        Keep::OnClose(w) => {
                            if let Some(handle) = m.get("onclose").and_then(Value::as_u64) {
                                self.held_mut(conn).oncloses.push((handle, w));
                            }
                        }
                        Keep::Cancel(handle) => {
                            self.held_mut(conn).oncloses.retain(|(h, _)| *h != handle);
                        }
                    }
                }
                m.remove("id");
                self.out.push_back(Out::Conn(conn, with_id(m, id)));
            }
            Route::Sub { pattern, joining } => self.on_sub_reply(pattern, joining, m, ok),
        }
    }

    fn on_sub_reply(
        &mut self,
        pattern: String,
        joining: Vec<(u64, Value)>,
        mut m: Map<String, Value>,
        ok: bool,
    ) {
        m.remove("id");
        for (c, id) in &joining {
            self.out
                .push_back(Out::Conn(*c, with_id(m.clone(), id.clone())));
        }
        let Some(i) = self.subs.iter().position(|s| s.pattern == pattern) else {
            // Everyone left meanwhile.
            if ok {
                self.unsub(&pattern);
            }
            return;
        };
        let s = &mut self.subs[i];
        s.pending = false;
        if ok {
            for (c, _) in joining {
                if !s.members.contains(&c) {
                    s.members.push(c);
                }
            }
        }
        let waiting = std::mem::take(&mut s.waiting);
        if !waiting.is_empty() {
            // They need a first frame of their own: subscribed again, a snapshot for all.
            s.pending = true;
            if ok || !s.members.is_empty() {
                self.unsub(&pattern);
            }
            self.sub(&pattern, None, waiting);
        } else if s.members.is_empty() {
            self.subs.swap_remove(i);
            if ok {
                self.unsub(&pattern);
            }
        }
    }
}

/// The pattern of a subscription frame (`{"sub":"<pattern>",...}`, as the server writes them),
/// read without parsing the rest of it.
fn frame_pattern(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("{\"sub\":\"")?;
    let mut escaped = false;
    for (i, b) in rest.bytes().enumerate() {
        match b {
            b'\\' if !escaped => escaped = true,
            // As a Value: a typed `from_str::<String>` would link serde's error messages,
            // and with them float formatting, into the browser client (17 KB).
            b'"' if !escaped => {
                return match serde_json::from_str::<Value>(&msg[7..9 + i]) {
                    Ok(Value::String(p)) => Some(p),
                    _ => None,
                };
            }
            _ => escaped = false,
        }
    }
    None
}

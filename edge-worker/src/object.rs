//! The Durable Object: one core `Engine` in memory, written through to SQLite storage before
//! anything is acknowledged, with hibernatable WebSockets.
//!
//! Owns the object's lifecycle: loading the engine from storage on first use after a start or an
//! eviction (revisions, sequence numbers and the change log included), rebuilding the pools of
//! hibernated sockets from their attachments, fan-out of the core's frames to sockets and SSE
//! streams, and the alarm that drives TTL expiry and the clock stream. Everything is synchronous
//! between reading a request body and answering, so the object's events never interleave with a
//! write half-done.

use std::cell::{RefCell, RefMut};
use std::collections::HashMap;

use bytes::Bytes;
use futures_channel::mpsc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stateline_core::http::{self as core_http, Kind};
use stateline_core::key::Pattern;
use stateline_core::mux::{self, Request as MuxRequest};
use stateline_core::rules::{Identity, Resolve, Rules};
use stateline_core::{Change, Config, Encoding, Engine, Error, Filters, PoolId, Tick};
use worker::{
    durable_object, DurableObject, Env, Request, Response, Result, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

use crate::{convert, route, sql};

/// Header the worker sets to tell an object its namespace (`""` in single mode).
pub const NS_HEADER: &str = "x-stateline-namespace";
/// Internal: a namespace object announces itself to the registry (the system object).
pub const REGISTER: &str = "/_edge/register";
/// Internal: the registry lists the namespaces in use.
pub const NAMESPACES: &str = "/_edge/namespaces";
/// The Durable Object binding in wrangler.toml.
pub const BINDING: &str = "NAMESPACES";

// A `/_ws` socket's subscriptions live in its attachment, which the runtime caps at 2 KiB; this
// bounds how many patterns one edge socket may hold (the native server allows 1024).
const MAX_ATTACHMENT: usize = 2000;
// SSE streams have no hibernation; each one keeps a bounded queue, and a stream that falls this
// far behind is closed (the client resumes with Last-Event-ID) rather than grow without bound.
const SSE_QUEUE: usize = 256;
// ooo's clock stream ticks once a second.
const CLOCK_NS: i64 = 1_000_000_000;

fn tick() -> Tick {
    Tick::from_wall((js_sys::Date::now() * 1e6) as i64)
}

fn now_ms() -> i64 {
    js_sys::Date::now() as i64
}

/// What a socket is, stored in its attachment so a woken object can serve it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attachment {
    /// Unique among this object's sockets.
    id: u32,
    /// `ooo`, `mux` or `clock`.
    kind: String,
    /// The namespace a `/_ws` socket is bound to (namespace mode).
    ns: String,
    /// The HTTP paths of its subscriptions (`/books/*`, `/books/`).
    subs: Vec<String>,
    /// The bearer token it presented (handshake or `/_ws` auth), verified again when a woken
    /// object rebuilds its pools: access rules apply to hibernated sockets as to live ones.
    #[serde(default)]
    token: Option<String>,
}

fn http_path(p: &Pattern) -> String {
    match p.as_str() {
        s if s == "/" => s,
        s => format!("/{s}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    Ws(u32),
    Sse(u32),
}

/// The object's state while it is in memory.
struct Live {
    engine: Engine,
    ns: String,
    subs: HashMap<PoolId, Vec<Sub>>,
    /// Pools per socket id, to leave them when the socket goes.
    joined: HashMap<u32, Vec<(String, PoolId)>>,
    sockets: HashMap<u32, WebSocket>,
    sse: HashMap<u32, mpsc::Sender<Result<Vec<u8>>>>,
    /// Who each connection is (access rules); checked for expiry before each frame.
    who: HashMap<u32, Identity>,
    clocks: Vec<u32>,
    /// Requests this object answered since it was loaded (for `/_metrics`).
    requests: u64,
    next_id: u32,
    log_keep: usize,
}

impl Live {
    /// Connections whose token expired (with the rules' leeway) are closed with 4001 instead of
    /// being sent more, as the native server does.
    fn expired(&self, id: u32, now_secs: i64) -> bool {
        let leeway = self
            .engine
            .filters()
            .rules()
            .map_or(0, |r| r.verifier().leeway_secs);
        self.who
            .get(&id)
            .and_then(Identity::expires)
            .is_some_and(|exp| exp.saturating_add(leeway) < now_secs)
    }

    fn fan_out(&mut self) {
        let now_secs = (js_sys::Date::now() / 1000.0) as i64;
        while let Some(frame) = self.engine.poll_frame() {
            let Some(targets) = self.subs.get(&frame.pool) else {
                continue;
            };
            let mut dead = Vec::new();
            for t in targets {
                match *t {
                    Sub::Ws(id) => {
                        if self.expired(id, now_secs) {
                            if let Some(ws) = self.sockets.get(&id) {
                                let _ = ws.close(Some(4001), Some("token expired"));
                            }
                            dead.push(id);
                        } else if let Some(ws) = self.sockets.get(&id) {
                            if ws.send_with_bytes(&frame.bytes).is_err() {
                                dead.push(id);
                            }
                        }
                    }
                    Sub::Sse(id) => {
                        let full = self.expired(id, now_secs)
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

    fn join(
        &mut self,
        sub: Sub,
        p: &Pattern,
        enc: Encoding,
        version: Option<u64>,
        initial: bool,
        who: &Identity,
    ) -> std::result::Result<Option<Bytes>, Error> {
        let (Sub::Ws(id) | Sub::Sse(id)) = sub;
        let (pool, first) = self.engine.join(p.clone(), enc, version, initial, who)?;
        self.subs.entry(pool).or_default().push(sub);
        self.joined
            .entry(id)
            .or_default()
            .push((http_path(p), pool));
        Ok(match first {
            stateline_core::Join::Current => None,
            stateline_core::Join::Frame(b) | stateline_core::Join::Missed(b) => {
                Some(b).filter(|b| !b.is_empty())
            }
        })
    }

    fn leave(&mut self, id: u32, path: &str) -> bool {
        let Some(list) = self.joined.get_mut(&id) else {
            return false;
        };
        let Some(i) = list.iter().position(|(p, _)| p == path) else {
            return false;
        };
        let (_, pool) = list.swap_remove(i);
        self.leave_pool(id, pool);
        true
    }

    fn leave_pool(&mut self, id: u32, pool: PoolId) {
        if let Some(v) = self.subs.get_mut(&pool) {
            v.retain(|s| !matches!(*s, Sub::Ws(x) | Sub::Sse(x) if x == id));
            if v.is_empty() {
                self.subs.remove(&pool);
            }
        }
        self.engine.leave(pool);
    }

    /// Forgets a connection: its pools, its socket or stream, its clock subscription.
    fn drop_conn(&mut self, id: u32) {
        for (_, pool) in self.joined.remove(&id).unwrap_or_default() {
            self.leave_pool(id, pool);
        }
        self.sockets.remove(&id);
        self.sse.remove(&id);
        self.who.remove(&id);
        self.clocks.retain(|c| *c != id);
    }

    fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }
}

/// One namespace's (or, in single mode, the whole deployment's) state.
#[durable_object]
pub struct Namespace {
    state: State,
    env: Env,
    live: RefCell<Option<Live>>,
}

impl Namespace {
    /// The in-memory state, loaded from storage on first use (after a start or an eviction), with
    /// the pools of every hibernated socket rebuilt from its attachment.
    fn live(&self) -> Result<RefMut<'_, Live>> {
        let mut slot = self.live.borrow_mut();
        if slot.is_none() {
            *slot = Some(self.load().map_err(worker::Error::RustError)?);
        }
        Ok(RefMut::map(slot, |s| s.as_mut().expect("loaded above")))
    }

    fn load(&self) -> std::result::Result<Live, String> {
        let storage = self.state.storage();
        let db = storage.sql();
        sql::init(&db)?;
        let config = Config::default();
        let log_keep = config.log_entries;
        let (store, log) = sql::load(&db, &config)?;
        let ns = sql::meta(&db, "namespace")?.unwrap_or_default();
        let mut filters = Filters::default();
        if let Some(rules) = rules(&self.env)? {
            filters
                .set_rules(rules)
                .map_err(|e| format!("STATELINE_RULES: {e}"))?;
        }
        let engine = Engine::restore(tick(), store, log, config, filters);
        let mut live = Live {
            engine,
            ns,
            subs: HashMap::new(),
            joined: HashMap::new(),
            sockets: HashMap::new(),
            sse: HashMap::new(),
            who: HashMap::new(),
            clocks: Vec::new(),
            requests: 0,
            next_id: 0,
            log_keep,
        };
        // Hibernated sockets: every change was fanned out before the object went away (the
        // object is only evicted when idle), so each socket holds the current state and joins
        // at the current version: nothing to resend, nothing missed.
        let current = live.engine.store().last_seq();
        let t = tick();
        for ws in self.state.get_websockets() {
            let Ok(Some(att)) = ws.deserialize_attachment::<Attachment>() else {
                continue;
            };
            live.next_id = live.next_id.max(att.id);
            match att.kind.as_str() {
                "clock" => live.clocks.push(att.id),
                _ => {
                    let enc = if att.kind == "mux" {
                        Encoding::Mux
                    } else {
                        Encoding::Ooo
                    };
                    // The token is verified again: one that expired meanwhile gets no frames.
                    let who = live.engine.identify(t, att.token.as_deref());
                    for path in &att.subs {
                        if let Ok(p) = Pattern::from_http_path(path, true) {
                            let _ = live.join(Sub::Ws(att.id), &p, enc, Some(current), false, &who);
                        }
                    }
                    live.who.insert(att.id, who);
                }
            }
            live.sockets.insert(att.id, ws);
        }
        Ok(live)
    }

    /// Makes `changes` durable, then publishes them; on a storage failure memory is rolled back.
    fn commit(&self, live: &mut Live, changes: Vec<Change>) -> std::result::Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        if let Err(e) = sql::commit(&self.state.storage(), &changes, live.log_keep) {
            live.engine.revert(&changes);
            return Err(e);
        }
        live.engine.publish(&changes);
        live.fan_out();
        Ok(())
    }

    /// Arms the alarm for the next TTL expiry or clock tick, whichever comes first.
    async fn arm(&self) -> Result<()> {
        let (ttl_ns, clocks) = {
            let live = self.live()?;
            (live.engine.timeout_in(tick()), !live.clocks.is_empty())
        };
        let mut at: Option<i64> = ttl_ns.map(|ns| now_ms() + (ns / 1_000_000) as i64 + 1);
        if clocks {
            let c = now_ms() + CLOCK_NS / 1_000_000;
            at = Some(at.map_or(c, |a| a.min(c)));
        }
        let storage = self.state.storage();
        if let Some(ms) = at {
            let current = storage.get_alarm().await?;
            if current.is_none_or(|c| c > ms) {
                // An i64 would be an offset; this is a point in time.
                let when = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ms as f64));
                storage.set_alarm(worker::ScheduledTime::new(when)).await?;
            }
        }
        Ok(())
    }

    async fn serve(&self, mut req: Request) -> Result<Response> {
        let ns = req.headers().get(NS_HEADER)?.unwrap_or_default();
        let head = convert::head(&req)?;
        // Internal routes, reachable only from other objects (the worker refuses `/_edge/`).
        match head.uri().path() {
            REGISTER => return self.register(&head),
            NAMESPACES => return self.namespaces(),
            _ => {}
        }
        let token = core_http::token(&head);
        // Identify once; subscriptions are authorised before any upgrade, so a refused WebSocket
        // or SSE request gets its 401/403 as an HTTP answer, as on the native server.
        let (kind, who) = {
            let mut live = self.live()?;
            if live.ns != ns {
                sql::set_meta(&self.state.storage().sql(), "namespace", &ns)
                    .map_err(worker::Error::RustError)?;
                live.ns = ns.clone();
            }
            live.requests += 1;
            if head.uri().path() == "/_metrics" {
                // The adapter's counters (this object's, since it was loaded), then the core's.
                let body = format!(
                    "# HELP stateline_requests_total HTTP requests received by this object since it was loaded.\n# TYPE stateline_requests_total counter\nstateline_requests_total {}\n# HELP stateline_connections Open WebSocket and SSE connections of this object.\n# TYPE stateline_connections gauge\nstateline_connections {}\n{}",
                    live.requests,
                    live.sockets.len() + live.sse.len(),
                    core_http::metrics(&live.engine)
                );
                return convert::text(200, "text/plain; version=0.0.4; charset=utf-8", body);
            }
            let who = live.engine.identify(tick(), token.as_deref());
            let kind = match core_http::classify(&live.engine, &head) {
                Ok(k @ (Kind::Subscribe(_) | Kind::Events(_))) => {
                    let (Kind::Subscribe(sub) | Kind::Events(sub)) = &k else {
                        unreachable!("matched above")
                    };
                    core_http::authorize_subscription(&mut live.engine, &head, sub, &who).map(|_| k)
                }
                Ok(Kind::Mux) => core_http::authorize_connection(&mut live.engine, &head, &who)
                    .map(|_| Kind::Mux),
                other => other,
            };
            log_denials(&mut live.engine);
            (kind, who)
        };
        match kind {
            Err(r) => {
                // Refused before its body was read (an Origin or a URL token the core refuses):
                // read it anyway, as workerd restarts the worker when the forwarded body stream
                // is still being written after the answer ("Can't read from request stream after
                // response has been sent"). It is within the size cap: the worker refused larger.
                if convert::has_body(&req.method()) {
                    let _ = req.bytes().await;
                }
                convert::response(r)
            }
            Ok(Kind::Http) => self.http(&mut req, head, &who).await,
            Ok(Kind::Root { .. }) => convert::problem(404, "no-route", "served by the worker"),
            Ok(Kind::Events(sub)) => self.events(&head, sub, who),
            Ok(Kind::Clock) => self.accept(&head, "clock", None, &ns, token, who),
            Ok(Kind::Mux) => self.accept(&head, "mux", None, &ns, token, who),
            Ok(Kind::Subscribe(sub)) => self.accept(&head, "ooo", Some(sub), &ns, token, who),
        }
    }

    async fn http(
        &self,
        req: &mut Request,
        head: http::Request<Bytes>,
        who: &Identity,
    ) -> Result<Response> {
        let max = Config::default().max_body;
        if core_http::declares_too_large(head.headers(), max) {
            // Refused before reading a byte of it, as the native server does (problem+json on
            // Stateline's own routes, ooo's text elsewhere). The worker refuses such requests
            // before forwarding them; this covers a request that reaches the object directly.
            return convert::with_cors(core_http::too_large(head.uri().path(), max));
        }
        let body = if convert::has_body(&req.method()) {
            Bytes::from(req.bytes().await.unwrap_or_default())
        } else {
            Bytes::new()
        };
        let (parts, _) = head.into_parts();
        let full = http::Request::from_parts(parts, body);
        let path = full.uri().path().to_string();
        let wrote = {
            let mut live = self.live()?;
            let out = core_http::handle_as(&mut live.engine, tick(), &full, who);
            log_denials(&mut live.engine);
            let wrote = !out.changes.is_empty();
            if let Err(e) = self.commit(&mut live, out.changes) {
                let err = Error::Storage(e);
                let detail = format!("{err}; nothing was changed");
                return if path.starts_with("/_") {
                    convert::problem(500, err.code(), &detail)
                } else {
                    convert::text(500, "text/plain; charset=utf-8", format!("{detail}\n"))
                };
            }
            (wrote, convert::response(out.response))
        };
        if wrote.0 {
            // The alarm is re-armed by `fetch` after every request.
            self.announce().await?;
        }
        wrote.1
    }

    fn events(
        &self,
        head: &http::Request<Bytes>,
        sub: core_http::Subscription,
        who: Identity,
    ) -> Result<Response> {
        let (tx, rx) = mpsc::channel::<Result<Vec<u8>>>(SSE_QUEUE);
        let mut live = self.live()?;
        let id = live.next_id();
        live.sse.insert(id, tx);
        let joined = live.join(
            Sub::Sse(id),
            &sub.pattern,
            Encoding::Sse,
            sub.version,
            sub.initial,
            &who,
        );
        live.who.insert(id, who);
        match joined {
            Ok(first) => {
                if let Some(tx) = live.sse.get_mut(&id) {
                    let _ = tx.try_send(Ok(b":stateline\n\n".to_vec()));
                    if let Some(b) = first {
                        let _ = tx.try_send(Ok(b.to_vec()));
                    }
                }
            }
            Err(e) => {
                live.drop_conn(id);
                return convert::refused(&e);
            }
        }
        let mut headers = http::HeaderMap::new();
        core_http::cors_headers(&live.engine, head.headers(), &mut headers);
        let h = convert::headers(&headers)?;
        h.set("content-type", "text/event-stream")?;
        h.set("cache-control", "no-cache")?;
        Ok(Response::from_stream(rx)?.with_headers(h))
    }

    fn accept(
        &self,
        head: &http::Request<Bytes>,
        kind: &str,
        sub: Option<core_http::Subscription>,
        ns: &str,
        token: Option<String>,
        who: Identity,
    ) -> Result<Response> {
        let pair = WebSocketPair::new()?;
        let ws = pair.server;
        let mut live = self.live()?;
        let id = live.next_id();
        let mut att = Attachment {
            id,
            kind: kind.into(),
            ns: ns.into(),
            subs: vec![],
            token,
        };
        if serde_json::to_string(&att).map_or(usize::MAX, |s| s.len()) > MAX_ATTACHMENT {
            return convert::problem(
                431,
                "token-too-large",
                "the token does not fit this socket's hibernation attachment (2 KiB)",
            );
        }
        let mut first = None;
        match (kind, &sub) {
            ("clock", _) => {
                first = Some(live.engine.clock_frame(tick()));
                live.clocks.push(id);
            }
            ("ooo", Some(s)) => {
                match live.join(
                    Sub::Ws(id),
                    &s.pattern,
                    Encoding::Ooo,
                    s.version,
                    true,
                    &who,
                ) {
                    Ok(f) => {
                        first = f;
                        att.subs.push(http_path(&s.pattern));
                    }
                    Err(e) => {
                        live.drop_conn(id);
                        return convert::refused(&e);
                    }
                }
            }
            _ => {}
        }
        live.who.insert(id, who);
        self.state
            .accept_websocket_with_tags(&ws, &[&id.to_string()]);
        ws.serialize_attachment(&att)?;
        if let Some(b) = first {
            ws.send_with_bytes(&b)?;
        }
        live.sockets.insert(id, ws);
        drop(live);
        // Browsers put the token in `Sec-WebSocket-Protocol: bearer, <token>`: the server must
        // choose `bearer` or the browser drops the connection.
        let bearer = head
            .headers()
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("bearer"));
        let r = Response::from_websocket(pair.client)?;
        if bearer {
            r.headers().set("sec-websocket-protocol", "bearer")?;
        }
        Ok(r)
    }

    /// After this namespace's first write, tells the registry it exists (once: remembered in
    /// storage), so the keys API and the UI can list keys across namespaces.
    async fn announce(&self) -> Result<()> {
        let ns = {
            let live = self.live()?;
            live.ns.clone()
        };
        if ns.is_empty() || ns == route::SYSTEM {
            return Ok(());
        }
        let db = self.state.storage().sql();
        if sql::meta(&db, "registered")
            .map_err(worker::Error::RustError)?
            .is_some()
        {
            return Ok(());
        }
        let stub = self
            .env
            .durable_object(BINDING)?
            .id_from_name(route::SYSTEM)?
            .get_stub()?;
        let url = format!("https://registry{REGISTER}?ns={ns}");
        let r = stub.fetch_with_str(&url).await?;
        if r.status_code() == 200 {
            sql::set_meta(&db, "registered", "1").map_err(worker::Error::RustError)?;
        }
        Ok(())
    }

    fn register(&self, head: &http::Request<Bytes>) -> Result<Response> {
        let ns = core_http::query_pairs(head.uri().query().unwrap_or(""))
            .into_iter()
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v)
            .unwrap_or_default();
        if ns.is_empty() {
            return convert::problem(400, "bad-request", "ns is required");
        }
        let db = self.state.storage().sql();
        sql::add_namespace(&db, &ns).map_err(worker::Error::RustError)?;
        Response::ok("registered")
    }

    fn namespaces(&self) -> Result<Response> {
        let db = self.state.storage().sql();
        let list = sql::namespaces(&db).map_err(worker::Error::RustError)?;
        Response::from_json(&list)
    }

    fn mux_message(&self, ws: &WebSocket, msg: &[u8]) -> Result<bool> {
        let Ok(Some(mut att)) = ws.deserialize_attachment::<Attachment>() else {
            return Ok(false);
        };
        let mut live = self.live()?;
        let depth = live.engine.config().max_depth;
        let nodes = live.engine.config().max_nodes;
        let t = tick();
        let mut wrote = false;
        let who = live.who.get(&att.id).cloned().unwrap_or_default();
        let (reply, first) = match mux::parse_limited(msg, depth, nodes) {
            Err(r) => (mux::reply_error(&r.id, &r.error), None),
            Ok(m) => {
                let outside = (!att.ns.is_empty())
                    .then(|| route::mux_outside(&att.ns, &m.request))
                    .flatten();
                if let Some(why) = outside {
                    (mux::reply_error(&m.id, &Error::BadRequest(why)), None)
                } else {
                    match m.request {
                        MuxRequest::Ping => (mux::reply_ok(&m.id, Value::Null), None),
                        MuxRequest::Auth { token } => {
                            (mux_auth(&mut live, ws, &mut att, t, &m.id, token)?, None)
                        }
                        MuxRequest::Sub { pattern, version } => {
                            let path = http_path(&pattern);
                            if att.subs.contains(&path) {
                                let e = Error::BadRequest(format!(
                                    "already subscribed to {}",
                                    pattern.as_str()
                                ));
                                (mux::reply_error(&m.id, &e), None)
                            } else {
                                let mut next = att.clone();
                                next.subs.push(path.clone());
                                let size =
                                    serde_json::to_string(&next).map_or(usize::MAX, |s| s.len());
                                if size > MAX_ATTACHMENT {
                                    let e = Error::BadRequest(format!(
                                        "too many subscriptions on one edge socket (their patterns must fit {MAX_ATTACHMENT} bytes); open another connection"
                                    ));
                                    (mux::reply_error(&m.id, &e), None)
                                } else {
                                    match live.join(
                                        Sub::Ws(att.id),
                                        &pattern,
                                        Encoding::Mux,
                                        version,
                                        true,
                                        &who,
                                    ) {
                                        Ok(first) => {
                                            ws.serialize_attachment(&next)?;
                                            (mux::reply_sub(&m.id, &pattern), first)
                                        }
                                        Err(e) => (mux::reply_error(&m.id, &e), None),
                                    }
                                }
                            }
                        }
                        MuxRequest::Unsub { pattern } => {
                            let path = http_path(&pattern);
                            if live.leave(att.id, &path) {
                                att.subs.retain(|p| *p != path);
                                ws.serialize_attachment(&att)?;
                                (mux::reply_sub(&m.id, &pattern), None)
                            } else {
                                let e = Error::BadRequest(format!(
                                    "not subscribed to {}",
                                    pattern.as_str()
                                ));
                                (mux::reply_error(&m.id, &e), None)
                            }
                        }
                        MuxRequest::Op(op) => {
                            let name = mux::op_name(&op);
                            let done = live.engine.execute(t, op, &who);
                            log_denials(&mut live.engine);
                            match done {
                                Ok(mut a) => {
                                    let changes = std::mem::take(&mut a.changes);
                                    wrote = !changes.is_empty();
                                    // Frames first, then the acknowledgement: the client sees
                                    // its own change before the reply, as on the native server.
                                    match self.commit(&mut live, changes) {
                                        Ok(()) => (mux::reply_applied(&m.id, name, &a), None),
                                        Err(e) => {
                                            (mux::reply_error(&m.id, &Error::Storage(e)), None)
                                        }
                                    }
                                }
                                Err(e) => (mux::reply_error(&m.id, &e), None),
                            }
                        }
                    }
                }
            }
        };
        ws.send_with_bytes(&reply)?;
        if let Some(f) = first {
            ws.send_with_bytes(&f)?;
        }
        Ok(wrote)
    }
}

impl DurableObject for Namespace {
    fn new(state: State, env: Env) -> Self {
        Namespace {
            state,
            env,
            live: RefCell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let r = self.serve(req).await?;
        // A clock subscriber or a TTL may need the alarm.
        self.arm().await?;
        Ok(r)
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let bytes = match message {
            WebSocketIncomingMessage::String(s) => s.into_bytes(),
            WebSocketIncomingMessage::Binary(b) => b,
        };
        let kind = ws
            .deserialize_attachment::<Attachment>()
            .ok()
            .flatten()
            .map(|a| a.kind);
        if kind.as_deref() == Some("mux") {
            // Loads the object first if this message woke it (rebuilding every socket's pools).
            if self.mux_message(&ws, &bytes)? {
                self.announce().await?;
                self.arm().await?;
            }
        }
        // ooo's per-path sockets and the clock stream ignore what clients send, as ooo does.
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _clean: bool,
    ) -> Result<()> {
        if let Ok(Some(att)) = ws.deserialize_attachment::<Attachment>() {
            let mut live = self.live()?;
            live.drop_conn(att.id);
        }
        let _ = ws.close(Some(code.clamp(1000, 4999) as u16), Some(reason));
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> Result<()> {
        if let Ok(Some(att)) = ws.deserialize_attachment::<Attachment>() {
            let mut live = self.live()?;
            live.drop_conn(att.id);
        }
        Ok(())
    }

    async fn alarm(&self) -> Result<Response> {
        {
            let mut live = self.live()?;
            let t = tick();
            live.engine.correct_clock(t);
            let expired = live.engine.handle_timeout(t);
            if let Err(e) = self.commit(&mut live, expired) {
                worker::console_error!("ttl expiry not stored, retried at the next alarm: {e}");
            }
            if !live.clocks.is_empty() {
                let frame = live.engine.clock_frame(t);
                let ids = live.clocks.clone();
                for id in ids {
                    let ok = live
                        .sockets
                        .get(&id)
                        .is_some_and(|ws| ws.send_with_bytes(&frame).is_ok());
                    if !ok {
                        live.drop_conn(id);
                    }
                }
            }
        }
        self.arm().await?;
        Response::ok("")
    }
}

/// Resolves `${VAR}` references of the rules file against the worker's variables and secrets.
struct EnvResolve<'a>(&'a Env);

impl Resolve for EnvResolve<'_> {
    fn env(&self, name: &str) -> Option<String> {
        self.0
            .secret(name)
            .map(|s| s.to_string())
            .or_else(|_| self.0.var(name).map(|v| v.to_string()))
            .ok()
    }

    fn file(&self, path: &str) -> std::result::Result<String, String> {
        Err(format!(
            "{path}: a worker has no files; put the key inline in STATELINE_RULES"
        ))
    }
}

/// The access rules from `STATELINE_RULES` (the rules file's text, TOML or JSON; bundled in
/// wrangler.toml or given with `--var`), if set. A rules file that does not load is an error on
/// every request rather than an open door.
fn rules(env: &Env) -> std::result::Result<Option<Rules>, String> {
    let Ok(text) = env.var("STATELINE_RULES").map(|v| v.to_string()) else {
        return Ok(None);
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let r = if text.trim_start().starts_with('{') {
        Rules::from_json_str(&text, &EnvResolve(env))
    } else {
        Rules::from_toml_str(&text, &EnvResolve(env))
    };
    r.map(Some).map_err(|e| format!("STATELINE_RULES: {e}"))
}

/// The denials the core recorded, to the worker's log (the audit trail; also counted in
/// `/_metrics`).
fn log_denials(engine: &mut Engine) {
    while let Some(d) = engine.poll_denial() {
        worker::console_log!(
            "denied action={} target={} reason={} subject={} detail={}",
            d.action,
            d.target,
            d.reason,
            d.subject.as_deref().unwrap_or("-"),
            d.detail
        );
    }
}

/// `/_ws` `auth`: a new token for the connection. Subscriptions the new identity would see
/// differently are dropped (and listed), as on the native server; a refused token changes
/// nothing.
fn mux_auth(
    live: &mut Live,
    ws: &WebSocket,
    att: &mut Attachment,
    t: Tick,
    id: &Value,
    token: String,
) -> Result<Bytes> {
    let new = live.engine.identify(t, Some(&token));
    if let Identity::Invalid(_) = new {
        let e = live
            .engine
            .authorize_caller("_ws auth", &new)
            .expect_err("an invalid token is refused");
        log_denials(&mut live.engine);
        return Ok(mux::reply_error(id, &e));
    }
    let mut next = att.clone();
    next.token = Some(token);
    if serde_json::to_string(&next).map_or(usize::MAX, |s| s.len()) > MAX_ATTACHMENT {
        let e = Error::BadRequest(
            "the token does not fit this socket's hibernation attachment (2 KiB)".into(),
        );
        return Ok(mux::reply_error(id, &e));
    }
    let mut dropped = Vec::new();
    let joined = live.joined.get(&att.id).cloned().unwrap_or_default();
    for (path, pool) in joined {
        let Ok(p) = Pattern::from_http_path(&path, true) else {
            continue;
        };
        if !live.engine.keeps_pool(&p, pool, &new) {
            live.leave(att.id, &path);
            next.subs.retain(|s| *s != path);
            dropped.push(p.as_str());
        }
    }
    log_denials(&mut live.engine);
    ws.serialize_attachment(&next)?;
    *att = next;
    let reply = serde_json::json!({
        "subject": new.subject(),
        "exp": new.expires(),
        "dropped": dropped,
    });
    live.who.insert(att.id, new);
    Ok(mux::reply_ok(id, reply))
}

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
use stateline_core::key::Pattern;
use stateline_core::rules::{Identity, Resolve, Rules};
use stateline_core::session::{Limits, Reply, Session};
use stateline_core::web::{self, Action, Host, Metric, Socket};
use stateline_core::{Change, Config, Encoding, Engine, Error, Filters};
use worker::{
    durable_object, DurableObject, Env, Request, Response, Result, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

use crate::live::{admit, attachment_of, limits, now_ms, tick, Attachment, Live, Sub, HEARD_EVERY};
use crate::{convert, route, sql};

/// Header the worker sets to tell an object its namespace (`""` in single mode).
pub const NS_HEADER: &str = "x-stateline-namespace";
/// Internal: a namespace object announces itself to the registry (the system object).
pub const REGISTER: &str = "/_edge/register";
/// Internal: the registry lists the namespaces in use.
pub const NAMESPACES: &str = "/_edge/namespaces";
/// The Durable Object binding in wrangler.toml.
pub const BINDING: &str = "NAMESPACES";

// SSE streams have no hibernation; each one keeps a bounded queue, and a stream that falls this
// far behind is closed (the client resumes with Last-Event-ID) rather than grow without bound.
const SSE_QUEUE: usize = 256;
// ooo's clock stream ticks once a second.
const CLOCK_NS: i64 = 1_000_000_000;

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
        let history_limits = config.history;
        let receipt_limits = config.receipts;
        // Tests shorten it; a deployment keeps the default.
        let silence = self
            .env
            .var("STATELINE_SILENCE_SECS")
            .ok()
            .and_then(|v| v.to_string().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e6)
            .map_or(stateline_core::session::SILENCE, |s| (s * 1e9) as i64);
        let mut engine = Engine::restore(tick(), store, log, config, filters);
        engine.restore_history(sql::load_history(&db, history_limits)?);
        engine.restore_receipts(sql::load_receipts(&db, receipt_limits)?);
        let mut live = Live {
            engine,
            ns,
            subs: HashMap::new(),
            sessions: HashMap::new(),
            sockets: HashMap::new(),
            sse: HashMap::new(),
            clocks: Vec::new(),
            requests: 0,
            next_id: 0,
            log_keep,
            ended: Vec::new(),
            silence,
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
                    // The token is verified again: one that expired meanwhile gets no frames
                    // (and the alarm closes its socket).
                    let who = live.engine.identify(t, att.token.as_deref());
                    // The token fitted when it was stored, so opening cannot fail.
                    if let Ok(mut session) = Session::open(
                        &live.engine,
                        who,
                        att.token.clone(),
                        limits(&att, live.silence),
                    ) {
                        if att.kind == "mux" {
                            session = session.within_namespace(att.ns.clone());
                        }
                        session.restore_end_state(
                            &live.engine,
                            att.leases.clone(),
                            att.onclose.clone(),
                        );
                        // An attachment from before `heard` was kept: heard now.
                        let heard = if att.heard_ms > 0 {
                            att.heard_ms.saturating_mul(1_000_000)
                        } else {
                            live.engine.clock_at(t)
                        };
                        session.restore_heard(heard);
                        live.sessions.insert(att.id, session);
                        for path in &att.subs {
                            if let Ok(p) = Pattern::from_http_path(path, true) {
                                let _ =
                                    live.subscribe(Sub::Ws(att.id), &p, enc, Some(current), false);
                            }
                        }
                    }
                }
            }
            live.sockets.insert(att.id, ws);
        }
        Ok(live)
    }

    /// Makes `changes` durable, then publishes them; on a storage failure memory is rolled back.
    /// Connections that ended meanwhile (a socket found dead while fanning out) leave writes
    /// behind: they are committed and published after, in turn, until none is left.
    fn commit(&self, live: &mut Live, changes: Vec<Change>) -> std::result::Result<(), String> {
        self.commit_one(live, changes)?;
        self.flush_ended(live);
        Ok(())
    }

    fn commit_one(&self, live: &mut Live, changes: Vec<Change>) -> std::result::Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        let history = live.engine.take_history_delta();
        let receipts = live.engine.take_receipts_delta();
        let storage = self.state.storage();
        if let Err(e) = sql::commit(&storage, &changes, history, receipts, live.log_keep) {
            live.engine.revert(&changes);
            return Err(e);
        }
        live.engine.publish(&changes);
        live.fan_out();
        Ok(())
    }

    /// Commits and publishes the writes of connections that ended ([`Live::ended`]). If storage
    /// fails they are rolled back: leased keys then expire by their TTL.
    fn flush_ended(&self, live: &mut Live) {
        loop {
            let ended = std::mem::take(&mut live.ended);
            if ended.is_empty() {
                return;
            }
            if let Err(e) = self.commit_one(live, ended) {
                worker::console_error!("disconnect writes not stored: {e}");
            }
        }
    }

    /// Arms the alarm for the next TTL expiry, clock tick or token deadline (a connection
    /// whose token expires is closed then, even if it is idle), whichever comes first.
    async fn arm(&self) -> Result<()> {
        let (ttl_ns, clocks, deadline, renew_ns, silent) = {
            let live = self.live()?;
            let t = tick();
            (
                live.engine.timeout_in(t),
                !live.clocks.is_empty(),
                live.next_deadline(),
                live.renew_in(t),
                live.next_silent(),
            )
        };
        let mut at: Option<i64> = ttl_ns.map(|ns| now_ms() + (ns / 1_000_000) as i64 + 1);
        if let Some(ns) = renew_ns {
            // The leases' renewal (a lease's TTL must not run out while its socket lives).
            let r = now_ms() + (ns / 1_000_000) as i64 + 1;
            at = Some(at.map_or(r, |a| a.min(r)));
        }
        if let Some(ns) = silent {
            // A socket that holds end writes and went silent (engine clock: wall time in ns).
            let s = ns / 1_000_000 + 1;
            at = Some(at.map_or(s, |a| a.min(s)));
        }
        if clocks {
            let c = now_ms() + CLOCK_NS / 1_000_000;
            at = Some(at.map_or(c, |a| a.min(c)));
        }
        if let Some(secs) = deadline {
            // Just past the deadline's second: `Session::expired` is strict.
            let d = secs.saturating_add(1).saturating_mul(1000);
            at = Some(at.map_or(d, |a| a.min(d)));
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
        let token = web::token(&head);
        // The body first, whole (the worker refused a declared oversize before forwarding): the
        // front door answers a body that could not be read, as the native server does. It is
        // read even when the answer will not need it: workerd restarts the worker when a
        // forwarded body stream is still being written after the answer.
        let max = Config::default().max_body;
        let (body, body_error) = if web::declares_too_large(head.headers(), max) {
            (Bytes::new(), Some(Error::TooLarge(max)))
        } else if convert::has_body(&req.method()) {
            match req.bytes().await {
                Ok(b) if b.len() > max => (Bytes::new(), Some(Error::TooLarge(max))),
                Ok(b) => (Bytes::from(b), None),
                Err(_) => (Bytes::new(), Some(Error::BodyUnreadable)),
            }
        } else {
            (Bytes::new(), None)
        };
        let (parts, _) = head.into_parts();
        let full = http::Request::from_parts(parts, body);
        let (action, wrote) = {
            let mut live = self.live()?;
            if live.ns != ns {
                sql::set_meta(&self.state.storage().sql(), "namespace", &ns)
                    .map_err(worker::Error::RustError)?;
                live.ns = ns.clone();
            }
            live.requests += 1;
            let metrics = [
                Metric {
                    name: "stateline_requests_total",
                    kind: "counter",
                    help: "HTTP requests received by this object since it was loaded.",
                    value: live.requests,
                },
                Metric {
                    name: "stateline_connections",
                    kind: "gauge",
                    help: "Open WebSocket and SSE connections of this object.",
                    value: (live.sockets.len() + live.sse.len()) as u64,
                },
            ];
            let host = Host {
                metrics: &metrics,
                body_error,
                ..Host::default()
            };
            let action = web::serve(&mut live.engine, tick(), &full, &host);
            log_denials(&mut live.engine);
            match action {
                Action::Respond(out) => {
                    let wrote = !out.changes.is_empty();
                    let response = match self.commit(&mut live, out.changes) {
                        Ok(()) => out.response,
                        Err(e) => web::refusal(&live.engine, &full, &Error::storage(&e)),
                    };
                    (Ok(response), wrote)
                }
                // The worker serves the UI and the client script from its bundle; there is no
                // embedding program (no backups, no endpoints) at the edge.
                Action::Asset { .. } | Action::Backup | Action::Endpoint { .. } => (
                    Ok(web::refusal(&live.engine, &full, &Error::NoRoute)),
                    false,
                ),
                other => (Err(other), false),
            }
        };
        if wrote {
            // The alarm is re-armed by `fetch` after every request.
            self.announce().await?;
        }
        match action {
            Ok(response) => convert::response(response),
            Err(Action::Events { sub, who }) => self.events(&full, sub, who),
            Err(Action::Upgrade { socket, who }) => match socket {
                Socket::Clock => self.accept(&full, "clock", None, &ns, token, who),
                Socket::Mux => self.accept(&full, "mux", None, &ns, token, who),
                Socket::Subscribe(sub) => self.accept(&full, "ooo", Some(sub), &ns, token, who),
            },
            Err(_) => convert::response(web::refusal(&self.live()?.engine, &full, &Error::NoRoute)),
        }
    }

    fn events(
        &self,
        head: &http::Request<Bytes>,
        sub: web::Subscription,
        who: Identity,
    ) -> Result<Response> {
        let (tx, rx) = mpsc::channel::<Result<Vec<u8>>>(SSE_QUEUE);
        let mut live = self.live()?;
        let session = match Session::open(&live.engine, who, None, Limits::default()) {
            Ok(s) => s,
            Err(e) => return convert::response(web::refusal(&live.engine, head, &e)),
        };
        let id = live.next_id();
        live.sse.insert(id, tx);
        live.sessions.insert(id, session);
        let joined = live.subscribe(
            Sub::Sse(id),
            &sub.pattern,
            Encoding::Sse,
            sub.version,
            sub.initial,
        );
        match joined {
            Ok(first) => {
                if let Some(tx) = live.sse.get_mut(&id) {
                    let _ = tx.try_send(Ok(web::SSE_HELLO.to_vec()));
                    if let Some(b) = first {
                        let _ = tx.try_send(Ok(b.to_vec()));
                    }
                }
            }
            Err(e) => {
                live.drop_conn(id);
                return convert::response(web::refusal(&live.engine, head, &e));
            }
        }
        let h = convert::headers(&web::sse_headers(&live.engine, head.headers()))?;
        Ok(Response::from_stream(rx)?.with_headers(h))
    }

    fn accept(
        &self,
        head: &http::Request<Bytes>,
        kind: &str,
        sub: Option<web::Subscription>,
        ns: &str,
        token: Option<String>,
        who: Identity,
    ) -> Result<Response> {
        let pair = WebSocketPair::new()?;
        let ws = pair.server;
        let mut live = self.live()?;
        let id = live.next_id();
        let att = Attachment {
            id,
            kind: kind.into(),
            ns: ns.into(),
            subs: vec![],
            token: token.clone(),
            leases: vec![],
            onclose: vec![],
            heard_ms: 0,
        };
        let mut first = None;
        if kind == "clock" {
            first = Some(live.engine.clock_frame(tick()));
            live.clocks.push(id);
        } else {
            let mut session =
                match Session::open(&live.engine, who, token, limits(&att, live.silence)) {
                    Ok(s) => s,
                    Err(e) => return convert::response(web::refusal(&live.engine, head, &e)),
                };
            if kind == "mux" {
                session = session.within_namespace(ns);
            }
            live.sessions.insert(id, session);
            if let Some(s) = &sub {
                match live.subscribe(Sub::Ws(id), &s.pattern, Encoding::Ooo, s.version, true) {
                    Ok(f) => first = f,
                    Err(e) => {
                        live.drop_conn(id);
                        return convert::response(web::refusal(&live.engine, head, &e));
                    }
                }
            }
        }
        let att = match live.sessions.get(&id) {
            Some(session) => attachment_of(&att, session),
            None => att,
        };
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
        let bearer = web::offers_bearer(head.headers());
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
        let ns = web::query_pairs(head.uri().query().unwrap_or(""))
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

    /// A socket closed or failed: its connection ends, and what it leaves behind (on-close
    /// writes, lease releases) is committed and published, exactly once (its session is gone
    /// after the first call).
    async fn socket_ended(&self, ws: &WebSocket) -> Result<()> {
        let Ok(Some(att)) = ws.deserialize_attachment::<Attachment>() else {
            return Ok(());
        };
        let wrote = {
            let mut live = self.live()?;
            live.drop_conn(att.id);
            let wrote = !live.ended.is_empty();
            self.flush_ended(&mut live);
            wrote
        };
        if wrote {
            self.arm().await?;
        }
        Ok(())
    }

    /// One `/_ws` message: the core's [`Session`] decides; this moves its effects (pools,
    /// the attachment, the commit) and sends the reply, then the first frame. Returns whether
    /// the alarm or the registry may need attention (a write, or a moved token deadline).
    fn mux_message(&self, ws: &WebSocket, msg: &[u8]) -> Result<bool> {
        let Ok(Some(att)) = ws.deserialize_attachment::<Attachment>() else {
            return Ok(false);
        };
        let mut live = self.live()?;
        let t = tick();
        let Live {
            engine, sessions, ..
        } = &mut *live;
        let Some(session) = sessions.get_mut(&att.id) else {
            return Ok(false);
        };
        let fx = session.handle(engine, t, msg, &mut admit);
        // The time it was heard is saved now and then, for a woken object's silence check.
        let heard_moved = session.has_end_writes()
            && session.heard().is_some_and(|h| {
                h.saturating_sub(att.heard_ms.saturating_mul(1_000_000)) >= HEARD_EVERY
            });
        let saved = (fx.state_changed || heard_moved).then(|| attachment_of(&att, session));
        log_denials(&mut live.engine);
        for pool in fx.left {
            live.leave_pool(att.id, pool);
        }
        if let Some(pool) = fx.joined {
            live.subs.entry(pool).or_default().push(Sub::Ws(att.id));
        }
        if let Some(next) = saved {
            ws.serialize_attachment(&next)?;
        }
        let mut wrote = false;
        let reply = match fx.reply {
            Reply::Now(b) => b,
            Reply::Write(mut w) => {
                let changes = std::mem::take(&mut w.changes);
                wrote = !changes.is_empty();
                // Frames first, then the acknowledgement: the client sees its own change before
                // the reply, as on the native server.
                match self.commit(&mut live, changes) {
                    Ok(()) => w.ok,
                    Err(e) => w.failed(&e),
                }
            }
            // Storage is synchronous here: nothing is pending, so a refusal is final now.
            Reply::Refusal(r) => r.no,
            Reply::Forward(f) => f.unavailable("the edge orders its own writes"),
        };
        ws.send_with_bytes(&reply)?;
        if let Some(f) = fx.first {
            ws.send_with_bytes(&f)?;
        }
        Ok(wrote || fx.deadline_moved)
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
        self.socket_ended(&ws).await?;
        let _ = ws.close(Some(code.clamp(1000, 4999) as u16), Some(reason));
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> Result<()> {
        self.socket_ended(&ws).await
    }

    async fn alarm(&self) -> Result<Response> {
        {
            let mut live = self.live()?;
            let t = tick();
            live.close_expired(t);
            live.close_silent(t);
            self.flush_ended(&mut live);
            live.engine.correct_clock(t);
            let (renewed, moved) = live.renew(t);
            if let Err(e) = self.commit(&mut live, renewed) {
                worker::console_error!("lease renewal not stored, retried at the next alarm: {e}");
            }
            for id in moved {
                let saved = live.sessions.get(&id).zip(live.sockets.get(&id));
                if let Some((session, ws)) = saved {
                    if let Ok(Some(att)) = ws.deserialize_attachment::<Attachment>() {
                        let _ = ws.serialize_attachment(attachment_of(&att, session));
                    }
                }
            }
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
            self.flush_ended(&mut live);
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

//! # stateline-wasm-client
//!
//! The WebAssembly half of Stateline's JavaScript client. It wires the core's sync state machine
//! (`stateline_core::sync`) to the host's WebSocket, `fetch` and timers, and nothing else: what
//! to send, what a frame means, when to reconnect and what to report all come from the core.
//! The JS wrapper (`js/api.js`) turns the events into the `Stateline` and `AtomKV` APIs.
//!
//! It runs in browsers, Node 20+ and Workers, so it binds nothing through a global prototype:
//! the WebSocket constructor is passed in (Node 20 has none; the wrapper passes the `ws`
//! package's), sockets are called structurally, and `fetch` and `setTimeout` are the globals
//! all three have. Values cross the boundary as JSON text, which turns 64-bit integers into JS
//! numbers instead of BigInts (which a `u64` crossing the boundary would become).
//!
//! **Invariant:** no sync logic here. A decision this file makes beyond moving bytes belongs in
//! the core, where it is tested without a browser.

#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use js_sys::{Array, Function, Promise, Reflect};
use serde_json::{json, Value};
use stateline_core::sync::{Client as Core, Config, Event, Failure, Io, KeyChange, State};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

#[wasm_bindgen]
extern "C" {
    /// A WebSocket as browsers, Workers and Node's `ws` package all shape it, called by property
    /// name (never through `WebSocket.prototype`, which Node 20 does not have).
    type Socket;
    #[wasm_bindgen(method, structural, catch)]
    fn send(this: &Socket, data: &str) -> Result<(), JsValue>;
    #[wasm_bindgen(method, structural, catch)]
    fn close(this: &Socket) -> Result<(), JsValue>;
    #[wasm_bindgen(method, structural, setter = binaryType)]
    fn set_binary_type(this: &Socket, t: &str);
    #[wasm_bindgen(method, structural, setter = onopen)]
    fn set_onopen(this: &Socket, f: Option<&Function>);
    #[wasm_bindgen(method, structural, setter = onmessage)]
    fn set_onmessage(this: &Socket, f: Option<&Function>);
    #[wasm_bindgen(method, structural, setter = onclose)]
    fn set_onclose(this: &Socket, f: Option<&Function>);
    #[wasm_bindgen(method, structural, setter = onerror)]
    fn set_onerror(this: &Socket, f: Option<&Function>);

    // The globals every host has; bound by name so one build serves browsers, Node and Workers.
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(req: &web_sys::Request) -> Promise;
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
}

fn now() -> u64 {
    js_sys::Date::now() as u64
}

fn jitter() -> f64 {
    js_sys::Math::random()
}

struct Inner {
    core: Core,
    base: String,
    ws_url: String,
    // A bearer token for servers with access rules: offered as the `bearer` WebSocket
    // subprotocol (browsers cannot set headers on a WebSocket) and sent on `fetch` reads.
    token: Option<String>,
    ctor: Function,
    on_event: Function,
    socket: Option<Socket>,
    // The open socket's handlers; replaced (and the old socket's detached) on every connect, so
    // a late event from a dead socket can never reach the state machine.
    handlers: Vec<Closure<dyn FnMut(JsValue)>>,
    timer: Option<JsValue>,
    timer_at: Option<u64>,
    // One closure for every timer, made once: a timer never allocates.
    tick: Option<Closure<dyn FnMut()>>,
}

thread_local! {
    // A handler that does nothing, made once and never freed (one per module instance): what a
    // dropped socket keeps as its `error` handler. Node's `ws` package emits `error` when a socket
    // still connecting is closed ("closed before the connection was established") and, as a
    // Node event emitter, throws an `error` nobody listens to: an uncaught exception that would
    // crash the program. Browsers and Workers only call it, which is harmless.
    static IGNORE: JsValue = Closure::<dyn FnMut(JsValue)>::new(|_: JsValue| {}).into_js_value();
}

impl Inner {
    fn drop_socket(&mut self) {
        if let Some(s) = self.socket.take() {
            s.set_onopen(None);
            s.set_onmessage(None);
            s.set_onclose(None);
            IGNORE.with(|f| s.set_onerror(Some(f.unchecked_ref())));
            // `close` on a socket that is still connecting is allowed (browsers, Workers and `ws`
            // abort the handshake); should a host throw anyway, the socket is being dropped.
            let _ = s.close();
        }
        self.handlers.clear();
    }

    fn open_socket(&mut self, me: &Weak<RefCell<Inner>>) -> Result<(), JsValue> {
        self.drop_socket();
        let args = match &self.token {
            Some(t) => Array::of2(
                &JsValue::from_str(&self.ws_url),
                &Array::of2(&JsValue::from_str("bearer"), &JsValue::from_str(t)),
            ),
            None => Array::of1(&JsValue::from_str(&self.ws_url)),
        };
        let s: Socket = Reflect::construct(&self.ctor, &args)?.unchecked_into();
        s.set_binary_type("arraybuffer");
        let on = |f: fn(&mut Core, JsValue)| {
            let me = me.clone();
            Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
                if let Some(rc) = me.upgrade() {
                    f(&mut rc.borrow_mut().core, ev);
                    drive(&rc);
                }
            })
        };
        let open = on(|c, _| c.handle_open(now()));
        let message = on(|c, ev| {
            let data = Reflect::get(&ev, &JsValue::from_str("data")).unwrap_or(JsValue::NULL);
            match data.as_string() {
                Some(text) => c.handle_message(now(), text.as_bytes()),
                None => c.handle_message(now(), &js_sys::Uint8Array::new(&data).to_vec()),
            }
        });
        // A failed handshake fires `error` then `close`; the state machine ignores the second.
        let close = on(|c, _| c.handle_close(now(), jitter()));
        let error = on(|c, _| c.handle_close(now(), jitter()));
        s.set_onopen(Some(open.as_ref().unchecked_ref()));
        s.set_onmessage(Some(message.as_ref().unchecked_ref()));
        s.set_onclose(Some(close.as_ref().unchecked_ref()));
        s.set_onerror(Some(error.as_ref().unchecked_ref()));
        self.handlers = vec![open, message, close, error];
        self.socket = Some(s);
        Ok(())
    }

    fn schedule(&mut self) {
        let next = self.core.poll_timeout();
        if next == self.timer_at {
            return;
        }
        if let Some(t) = self.timer.take() {
            clear_timeout(&t);
        }
        self.timer_at = next;
        if let (Some(at), Some(tick)) = (next, &self.tick) {
            let ms = at.saturating_sub(now()) as f64;
            self.timer = Some(set_timeout(tick.as_ref().unchecked_ref(), ms));
        }
    }
}

/// Carries out what the state machine asks (socket, sends, timer), then hands its events to
/// JS. Events are delivered after the borrow ends: a JS callback may call back into the client.
fn drive(rc: &Rc<RefCell<Inner>>) {
    let mut events = Vec::new();
    let on_event = {
        let mut inner = rc.borrow_mut();
        // Bounded: each connect either opens a socket or reports a close, which asks for nothing.
        for _ in 0..100_000 {
            let Some(io) = inner.core.poll_io() else {
                break;
            };
            match io {
                Io::Connect => {
                    if inner.open_socket(&Rc::downgrade(rc)).is_err() {
                        inner.core.handle_close(now(), jitter());
                    }
                }
                Io::Send(m) => {
                    if let Some(s) = &inner.socket {
                        // A send on a socket that just died fails; its close event follows.
                        let _ = s.send(&m);
                    }
                }
                Io::Close => inner.drop_socket(),
            }
        }
        while let Some(e) = inner.core.poll_event() {
            events.push(e);
        }
        inner.schedule();
        inner.on_event.clone()
    };
    for e in events {
        let _ = on_event.call1(&JsValue::NULL, &JsValue::from_str(&event_json(&e)));
    }
}

fn failure_json(f: &Failure) -> Value {
    json!({"status": f.status, "code": f.code, "detail": f.detail, "conflict": f.is_conflict()})
}

fn change_json(c: &KeyChange) -> Value {
    json!({
        "key": c.key,
        "value": c.value,
        "deleted": c.value.is_none(),
        "revision": c.revision,
        "created": c.created,
        "updated": c.updated,
        "pending": c.pending,
    })
}

/// An event as JSON text for the wrapper (numbers, never BigInts).
fn event_json(e: &Event) -> String {
    let v = match e {
        Event::State(s) => json!({"type": "state", "state": s.as_str()}),
        Event::Update {
            pattern,
            listeners,
            initial,
            version,
            value,
            changes,
            cached,
        } => json!({
            "type": "update",
            "cached": cached,
            "pattern": pattern,
            "listeners": listeners,
            "initial": initial,
            "version": format!("{version:x}"),
            "value": value,
            "changes": changes.iter().map(change_json).collect::<Vec<_>>(),
        }),
        Event::Reply {
            req,
            queued,
            result,
        } => match result {
            Ok(v) => json!({"type": "reply", "req": req, "queued": queued, "ok": true, "value": v}),
            Err(f) => {
                json!({"type": "reply", "req": req, "queued": queued, "ok": false, "error": failure_json(f)})
            }
        },
        Event::SubFailed {
            pattern,
            listeners,
            error,
        } => json!({
            "type": "subFailed",
            "pattern": pattern,
            "listeners": listeners,
            "error": failure_json(error),
        }),
    };
    v.to_string()
}

fn num(config: &Value, field: &str, default: u64) -> u64 {
    config.get(field).and_then(Value::as_u64).unwrap_or(default)
}

/// One connection to one Stateline server (one multiplexed `/_ws` socket), with its
/// subscriptions, write queue and reconnects.
#[wasm_bindgen]
pub struct Client {
    inner: Rc<RefCell<Inner>>,
}

#[wasm_bindgen]
impl Client {
    /// `base`: the server's `http(s)://` URL. `ws_ctor`: a WebSocket constructor. `on_event`:
    /// called with each event as JSON text. `config`: JSON text with optional `backoffBase`,
    /// `backoffMax`, `pingInterval`, `pingTimeout` (ms) and `maxQueue`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        base: &str,
        ws_ctor: Function,
        on_event: Function,
        config: &str,
    ) -> Result<Client, JsValue> {
        let base = base.trim_end_matches('/').to_string();
        let ws_url = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/_ws")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/_ws")
        } else {
            return Err(JsValue::from_str(
                "Stateline: the base URL must start with http:// or https://",
            ));
        };
        let c: Value = serde_json::from_str(config).unwrap_or(Value::Null);
        let d = Config::default();
        let config = Config {
            backoff_base: num(&c, "backoffBase", d.backoff_base),
            backoff_max: num(&c, "backoffMax", d.backoff_max),
            ping_interval: num(&c, "pingInterval", d.ping_interval),
            ping_timeout: num(&c, "pingTimeout", d.ping_timeout),
            max_queue: num(&c, "maxQueue", d.max_queue as u64) as usize,
            write_ids: c
                .get("writeIds")
                .and_then(Value::as_str)
                .map(str::to_string),
            optimistic: c.get("optimistic").and_then(Value::as_bool) == Some(true),
        };
        let inner = Rc::new(RefCell::new(Inner {
            core: Core::new(config),
            base,
            ws_url,
            token: c
                .get("token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string),
            ctor: ws_ctor,
            on_event,
            socket: None,
            handlers: Vec::new(),
            timer: None,
            timer_at: None,
            tick: None,
        }));
        let me = Rc::downgrade(&inner);
        let tick = Closure::<dyn FnMut()>::new(move || {
            if let Some(rc) = me.upgrade() {
                {
                    let mut i = rc.borrow_mut();
                    i.timer = None;
                    i.timer_at = None;
                    i.core.handle_timeout(now(), jitter());
                }
                drive(&rc);
            }
        });
        inner.borrow_mut().tick = Some(tick);
        Ok(Client { inner })
    }

    /// Starts (or restarts after `close`) connecting.
    pub fn connect(&self) {
        self.inner.borrow_mut().core.connect(now());
        drive(&self.inner);
    }

    /// Closes the socket and stops reconnecting; writes not yet acknowledged fail.
    pub fn close(&self) {
        self.inner.borrow_mut().core.close();
        drive(&self.inner);
        let mut i = self.inner.borrow_mut();
        i.drop_socket();
        if let Some(t) = i.timer.take() {
            clear_timeout(&t);
        }
        i.timer_at = None;
    }

    /// `"connecting"`, `"open"`, `"waiting"` or `"closed"`.
    pub fn state(&self) -> String {
        self.inner.borrow().core.state().as_str().to_string()
    }

    /// Whether the socket is open.
    #[wasm_bindgen(js_name = isOpen)]
    pub fn is_open(&self) -> bool {
        self.inner.borrow().core.state() == State::Open
    }

    /// Writes waiting for a connection.
    pub fn queued(&self) -> u32 {
        self.inner.borrow().core.queued() as u32
    }

    /// Sends (or queues) a write, a `/_ws` message as JSON text without `id`. Returns the id its
    /// `reply` event will carry.
    pub fn write(&self, msg: &str) -> Result<f64, JsValue> {
        let v: Value = serde_json::from_str(msg)
            .map_err(|e| JsValue::from_str(&format!("Stateline: not JSON: {e}")))?;
        let id = self.inner.borrow_mut().core.write(v);
        drive(&self.inner);
        Ok(id as f64)
    }

    /// Write `req` as it goes on the wire, with its id, while it waits for its answer (JSON
    /// text): what the `persist` option keeps in its outbox. `undefined` when there is nothing
    /// to keep (answered, leased, a disconnect write).
    #[wasm_bindgen(js_name = outboxMessage)]
    pub fn outbox_message(&self, req: f64) -> Option<String> {
        let m = self.inner.borrow().core.outbox_message(req as u64)?;
        Some(m.to_string())
    }

    /// Queues a write `outboxMessage` gave before a reload, its id unchanged; returns the id
    /// its `reply` event carries.
    #[wasm_bindgen(js_name = restoreWrite)]
    pub fn restore_write(&self, msg: &str) -> Result<f64, JsValue> {
        let v: Value = serde_json::from_str(msg)
            .map_err(|e| JsValue::from_str(&format!("Stateline: not JSON: {e}")))?;
        let id = self.inner.borrow_mut().core.restore_write(v);
        drive(&self.inner);
        Ok(id as f64)
    }

    /// Subscription `pattern`'s cache to store (JSON text), `undefined` before the server's
    /// first frame.
    pub fn cache(&self, pattern: &str) -> Option<String> {
        Some(self.inner.borrow().core.cache(pattern)?.to_string())
    }

    /// Takes back a cache `cache` gave: a subscription to `pattern` starts from it. Throws the
    /// failure (JSON text) when it is not one.
    #[wasm_bindgen(js_name = restoreCache)]
    pub fn restore_cache(&self, pattern: &str, cache: &str) -> Result<(), JsValue> {
        let v: Value = serde_json::from_str(cache).unwrap_or(Value::Null);
        let r = self.inner.borrow_mut().core.restore_cache(pattern, &v);
        drive(&self.inner);
        r.map_err(|f| JsValue::from_str(&failure_json(&f).to_string()))
    }

    /// Subscribes `listener` (an integer the caller picks) to a key, glob or subtree; returns the
    /// pattern as `update` events name it. Throws on an invalid path.
    pub fn subscribe(&self, listener: f64, path: &str) -> Result<String, JsValue> {
        let r = self
            .inner
            .borrow_mut()
            .core
            .subscribe(listener as u64, path);
        drive(&self.inner);
        r.map_err(|f| JsValue::from_str(&failure_json(&f).to_string()))
    }

    /// Drops a listener.
    pub fn unsubscribe(&self, listener: f64) {
        self.inner.borrow_mut().core.unsubscribe(listener as u64);
        drive(&self.inner);
    }

    /// The cached value of a subscription as JSON text (`undefined` before its first frame).
    pub fn value(&self, pattern: &str) -> Option<String> {
        self.inner
            .borrow()
            .core
            .value(pattern)
            .map(|v| v.to_string())
    }

    /// `GET /<key>` through `fetch`: resolves to JSON text
    /// `{"status","revision","body"}` (`body` the parsed meta object, or the error text).
    pub fn get(&self, key: &str) -> Promise {
        self.request("GET", key, None)
    }

    /// An HTTP request to `<base>/<path>` through `fetch` (`body`: JSON text, sent as
    /// `application/json`), with the bearer token: resolves to JSON text
    /// `{"status","revision","body"}` (`body` parsed as JSON, or the text).
    pub fn request(&self, method: &str, path: &str, body: Option<String>) -> Promise {
        let url = format!(
            "{}/{}",
            self.inner.borrow().base,
            path.trim_start_matches('/')
        );
        let token = self.inner.borrow().token.clone();
        let method = method.to_string();
        future_to_promise(async move {
            let init = web_sys::RequestInit::new();
            init.set_method(&method);
            if let Some(b) = &body {
                init.set_body(&JsValue::from_str(b));
            }
            let req = web_sys::Request::new_with_str_and_init(&url, &init)?;
            req.headers().set("accept", "application/json")?;
            if body.is_some() {
                req.headers().set("content-type", "application/json")?;
            }
            if let Some(t) = token {
                req.headers().set("authorization", &format!("Bearer {t}"))?;
            }
            let resp: web_sys::Response =
                JsFuture::from(global_fetch(&req)).await?.unchecked_into();
            let status = resp.status();
            let revision = resp
                .headers()
                .get("x-revision")?
                .and_then(|r| r.parse::<i64>().ok());
            let text = JsFuture::from(resp.text()?)
                .await?
                .as_string()
                .unwrap_or_default();
            let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            Ok(JsValue::from_str(
                &json!({"status": status, "revision": revision, "body": body}).to_string(),
            ))
        })
    }
}

/// The hub of a leader tab (`shareTabs`): the tabs' virtual connections multiplexed onto its one
/// socket (`stateline_core::sync::share`). Each call returns what to do as a flat array:
/// `[to, text, to, text, ...]`, `to` 0 for the socket, else the connection's id.
#[wasm_bindgen]
pub struct Hub {
    inner: stateline_core::sync::share::Hub,
}

#[wasm_bindgen]
impl Hub {
    /// A hub for a socket that just opened.
    #[wasm_bindgen(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Hub {
        Hub {
            inner: stateline_core::sync::share::Hub::new(),
        }
    }

    fn drain(&mut self) -> Array {
        use stateline_core::sync::share::Out;
        let out = Array::new();
        while let Some(o) = self.inner.poll() {
            let (to, text) = match o {
                Out::Server(t) => (0.0, t),
                Out::Conn(c, t) => (c as f64, t),
            };
            out.push(&JsValue::from_f64(to));
            out.push(&JsValue::from_str(&text));
        }
        out
    }

    /// A message connection `conn` sent.
    #[wasm_bindgen(js_name = fromConn)]
    pub fn from_conn(&mut self, conn: f64, msg: &str) -> Array {
        self.inner.from_conn(conn as u64, msg);
        self.drain()
    }

    /// A message from the socket.
    #[wasm_bindgen(js_name = fromServer)]
    pub fn from_server(&mut self, msg: &str) -> Array {
        self.inner.from_server(msg);
        self.drain()
    }

    /// Connection `conn` ended (its tab closed, or it closed its socket).
    #[wasm_bindgen(js_name = connGone)]
    pub fn conn_gone(&mut self, conn: f64) -> Array {
        self.inner.conn_gone(conn as u64);
        self.drain()
    }
}

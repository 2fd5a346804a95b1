//! The client's sync state machine over the multiplexed `/_ws` protocol.
//!
//! Owns what a client knows and promises: one cache per subscription (the ooo view the server's
//! frames describe, plus each key's last reported revision), applying snapshots and RFC 6902
//! patches with the core's own patch code ([`crate::json`]), the version of each subscription and
//! resuming from it after a reconnect, the queue of writes made while offline (sent in order on
//! reconnect; a failed compare-and-swap comes back as a visible conflict), request ids and their
//! replies, a liveness ping, and the reconnect backoff schedule.
//!
//! It does no IO, like the rest of the core and in the style of quinn-proto: the adapter (the JS
//! client's `stateline-wasm-client`, the Rust client `stateline-client`, or a test) reports what
//! happened with `handle_*(now, ..)` and drains what to do with
//! [`Client::poll_io`] (open a socket, send a text message, close it), [`Client::poll_event`]
//! (views, replies, state changes) and [`Client::poll_timeout`] (when to call
//! [`Client::handle_timeout`]). Time is milliseconds on any monotonic clock the adapter likes;
//! randomness (the backoff jitter) is an argument.
//!
//! **Invariant:** a change is reported at most once per subscription and never lost: a frame
//! reports the keys it names (`revs`) whose `(created, updated, revision)` differ from what was
//! last reported; a snapshot after a reconnect is diffed against the cache, so what the client
//! already saw is not reported again and what it missed is.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{json, Map, Value};

use crate::json;
use crate::key::Pattern;

mod held;
mod local;
mod persist;
pub mod share;
pub use held::MAX_HELD_WRITES;

/// Knobs of the client. Times are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// First reconnect delay.
    pub backoff_base: u64,
    /// Largest reconnect delay.
    pub backoff_max: u64,
    /// A ping is sent this often (the first one this long after the socket opens, then this
    /// long after each answer), however busy the socket is.
    pub ping_interval: u64,
    /// The connection is given up when a ping (or the opening handshake) gets no answer in this
    /// long.
    pub ping_timeout: u64,
    /// Writes held while offline (and in flight). Past it a write fails at once with
    /// `queue-full`, so a page that writes while the server is away cannot grow memory forever.
    pub max_queue: usize,
    /// A prefix for the ids every write carries (`rid`, `<prefix>.<request id>`), unique to this
    /// client (the caller draws it at random: 16 random bytes in hex, say). The server answers
    /// a repeated id instead of applying it again, so every write in flight when the socket
    /// drops is sent again after the reconnect, pushes and counters included. `None`: writes
    /// carry no id, and a push, counter, take, rename or transaction in flight then fails with
    /// `connection-lost` (its outcome is unknown).
    pub write_ids: Option<String>,
    /// Optimistic local writes: a `set`, `patch` or `del` of one key is shown to this client's
    /// own subscribers at once (a change marked `pending`) and reconciled with the server's
    /// answer: a refused write is rolled back and the rollback reported (see the `local`
    /// module). Off: changes are reported as the server sends them.
    pub optimistic: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            backoff_base: 250,
            backoff_max: 10_000,
            ping_interval: 20_000,
            ping_timeout: 10_000,
            max_queue: 10_000,
            write_ids: None,
            optimistic: false,
        }
    }
}

/// The reconnect delay before attempt `attempt` (0 for the first retry): exponential from
/// `base`, capped at `max`, then scaled by `0.5 + jitter / 2` ("equal jitter": never less than
/// half the step, so clients spread out without reconnecting in a burst). `jitter` is in `[0, 1]`
/// (clamped); the caller draws it, so this stays deterministic.
pub fn backoff(config: &Config, attempt: u32, jitter: f64) -> u64 {
    let step = config
        .backoff_base
        .saturating_mul(1u64 << attempt.min(30))
        .min(config.backoff_max);
    let j = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((step as f64) * (0.5 + j / 2.0)).round() as u64
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started, or closed by the user.
    Closed,
    /// A socket is being opened.
    Connecting,
    /// The socket is open; subscriptions and writes flow.
    Open,
    /// The socket was lost; waiting for the backoff delay before the next attempt.
    Waiting,
}

impl State {
    /// The name used in events (`"open"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Connecting => "connecting",
            State::Open => "open",
            State::Waiting => "waiting",
        }
    }
}

/// What the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// Open a WebSocket to `<base>/_ws`; report with [`Client::handle_open`] or
    /// [`Client::handle_close`].
    Connect,
    /// Send this text message on the open socket.
    Send(String),
    /// Close the socket (it is not answering, or the user closed the client). Do not report its
    /// close: the state machine already moved on.
    Close,
}

/// Why a request failed: the server's error, or a local one (`status` 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status of the server's error, 0 for local failures.
    pub status: u16,
    /// Machine-readable code (`revision-conflict`, `connection-lost`, ...).
    pub code: String,
    /// Human-readable text.
    pub detail: String,
}

impl Failure {
    fn local(code: &str, detail: &str) -> Failure {
        Failure {
            status: 0,
            code: code.into(),
            detail: detail.into(),
        }
    }

    /// Whether a precondition (revision, ETag, absence) did not hold.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self.code.as_str(),
            "revision-conflict" | "precondition-failed" | "exists"
        )
    }
}

/// One key as a subscription saw it change.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyChange {
    /// The key.
    pub key: String,
    /// Its value, `None` when it was deleted.
    pub value: Option<Value>,
    /// Its revision (for a delete, the delete's revision); -1 when the server did not say.
    pub revision: i64,
    /// `created` of the entry (0 when deleted).
    pub created: i64,
    /// `updated` of the entry (0 when deleted or never updated).
    pub updated: i64,
    /// An optimistic local write the server has not answered yet ([`Config::optimistic`]); its
    /// revision is -1.
    pub pending: bool,
}

/// What the client tells its user.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The connection state changed.
    State(State),
    /// A subscription's value: the first one (`initial`), then after every frame that changed
    /// something. `listeners` are the subscriber ids to deliver to.
    Update {
        /// The pattern, as the server names it (`books/*`, `a/`, `key`).
        pattern: String,
        /// Who gets it.
        listeners: Vec<u64>,
        /// The first value a listener gets (every current key is in `changes`).
        initial: bool,
        /// The subscription's version after this update.
        version: u64,
        /// The current value: for a key its data (`null` when absent); for a glob or subtree the
        /// items, newest first, each `{"key","value","revision","created","updated"}`.
        value: Value,
        /// The keys that changed, in the order they were changed.
        changes: Vec<KeyChange>,
        /// The value is a cache kept from before (see [`Client::restore_cache`]) that the
        /// server has not confirmed yet; the first update after the server's frame is not.
        cached: bool,
    },
    /// A write finished: the server's reply fields, or why it failed.
    Reply {
        /// The id [`Client::write`] returned.
        req: u64,
        /// Whether the write was queued while offline and sent on a reconnect.
        queued: bool,
        /// The reply (`key`, `revision`, ...) or the failure.
        result: Result<Value, Failure>,
    },
    /// The server refused a subscription (bad path, filter, limit); its listeners are dropped.
    SubFailed {
        /// The pattern.
        pattern: String,
        /// The listeners that were subscribed.
        listeners: Vec<u64>,
        /// Why.
        error: Failure,
    },
}

/// A write the user asked for: a `/_ws` message without its `id`.
#[derive(Debug, Clone, PartialEq)]
struct Write {
    req: u64,
    msg: Map<String, Value>,
    // Sent on an earlier connection or made while offline.
    queued: bool,
}

impl Write {
    /// Whether sending it twice is harmless: a write with an id (`rid`) is answered, not
    /// applied, the second time; plain sets, merges and deletes land on the same state, and a
    /// compare-and-swap sent twice fails visibly the second time. Pushes, counters, takes,
    /// renames and transactions without an id would apply twice, so an in-flight one is failed
    /// instead of resent.
    fn resendable(&self) -> bool {
        self.msg.get("rid").is_some_and(Value::is_string)
            || matches!(
                self.msg.get("op").and_then(Value::as_str),
                Some("set" | "patch" | "del")
            )
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Sub(String),
    Unsub,
    Write(Write),
    Ping,
    // A registration of a disconnect write (the user's handle); see `held`.
    OnClose(u64),
    // A lease taken again after a reconnect: its reply is not reported.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    revision: i64,
    created: i64,
    updated: i64,
}

#[derive(Debug)]
struct Sub {
    path: String,
    listeners: Vec<u64>,
    // The ooo view the frames describe (meta object or list); None until the first snapshot.
    view: Option<Value>,
    version: Option<u64>,
    // Each present key's last reported state.
    known: BTreeMap<String, Known>,
    // Listeners that have not had their initial value yet.
    fresh: Vec<u64>,
    // The view is a stored cache the server has not confirmed yet (see `persist`).
    cached: bool,
}

impl Sub {
    /// The listeners that have had their first value: the ones a change is reported to.
    fn settled(&self) -> Vec<u64> {
        self.listeners
            .iter()
            .copied()
            .filter(|l| !self.fresh.contains(l))
            .collect()
    }
}

/// The client. See the module docs.
#[derive(Debug)]
pub struct Client {
    config: Config,
    state: State,
    subs: BTreeMap<String, Sub>,
    by_listener: HashMap<u64, String>,
    next_id: u64,
    // Requests sent on the current socket, by id.
    pending: HashMap<u64, Pending>,
    // Writes waiting for a socket, oldest first.
    queue: VecDeque<Write>,
    io: VecDeque<Io>,
    events: VecDeque<Event>,
    attempt: u32,
    reconnect_at: Option<u64>,
    // Open: when to ping next. Connecting / ping sent: when to give up.
    ping_at: Option<u64>,
    deadline: Option<u64>,
    // Leased keys and disconnect writes, taken again after every reconnect.
    held: held::Held,
    // Optimistic writes the server has not answered, oldest first.
    local: Vec<local::Local>,
    // Caches taken back from storage, by pattern, until subscribed (see `persist`). A vector,
    // not a map: each map type adds kilobytes of generic code to the browser client.
    stored: Vec<(String, persist::Stored)>,
}

impl Client {
    /// A client that has not connected yet.
    pub fn new(config: Config) -> Client {
        Client {
            config,
            state: State::Closed,
            subs: BTreeMap::new(),
            by_listener: HashMap::new(),
            next_id: 1,
            pending: HashMap::new(),
            queue: VecDeque::new(),
            io: VecDeque::new(),
            events: VecDeque::new(),
            attempt: 0,
            reconnect_at: None,
            ping_at: None,
            deadline: None,
            held: held::Held::default(),
            local: Vec::new(),
            stored: Vec::new(),
        }
    }

    /// The connection state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Writes waiting for a connection.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn set_state(&mut self, s: State) {
        if self.state != s {
            self.state = s;
            self.events.push_back(Event::State(s));
        }
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Starts connecting (also after [`Client::close`]).
    pub fn connect(&mut self, now: u64) {
        if matches!(self.state, State::Closed | State::Waiting) {
            self.start_connect(now);
        }
    }

    fn start_connect(&mut self, now: u64) {
        self.reconnect_at = None;
        self.ping_at = None;
        self.deadline = Some(now + self.config.ping_timeout);
        self.set_state(State::Connecting);
        self.io.push_back(Io::Connect);
    }

    /// Closes for good (until [`Client::connect`]): writes not yet acknowledged fail with
    /// `closed`.
    pub fn close(&mut self) {
        if matches!(self.state, State::Connecting | State::Open) {
            self.io.push_back(Io::Close);
        }
        let lost: Vec<Write> = self
            .pending
            .drain()
            .filter_map(|(_, p)| match p {
                Pending::Write(w) => Some(w),
                _ => None,
            })
            .chain(self.queue.drain(..))
            .collect();
        for w in sorted(lost) {
            self.fail(w, Failure::local("closed", "the client was closed"));
        }
        self.held_closed();
        self.reconnect_at = None;
        self.ping_at = None;
        self.deadline = None;
        self.set_state(State::Closed);
    }

    /// The socket opened: (re)subscribe everything, resuming from each version, then send the
    /// queued writes in order.
    pub fn handle_open(&mut self, now: u64) {
        if self.state != State::Connecting {
            return;
        }
        self.attempt = 0;
        self.deadline = None;
        self.ping_at = Some(now + self.config.ping_interval);
        self.set_state(State::Open);
        let paths: Vec<String> = self.subs.keys().cloned().collect();
        for p in paths {
            self.send_sub(&p);
        }
        self.retake_held();
        while let Some(w) = self.queue.pop_front() {
            self.send_write(w);
        }
    }

    /// The socket closed or failed to open. Writes in flight are queued again when resending
    /// them is harmless, else failed with `connection-lost` (their outcome is unknown); the next
    /// attempt is scheduled after the backoff delay. `jitter` is a random number in `[0, 1]`.
    pub fn handle_close(&mut self, now: u64, jitter: f64) {
        if !matches!(self.state, State::Connecting | State::Open) {
            return;
        }
        self.lose_connection(now, jitter);
    }

    fn lose_connection(&mut self, now: u64, jitter: f64) {
        let mut inflight: Vec<Write> = self
            .pending
            .drain()
            .filter_map(|(_, p)| match p {
                Pending::Write(w) => Some(w),
                _ => None,
            })
            .collect();
        self.held_lost(&mut inflight);
        let mut again = Vec::new();
        for w in sorted(inflight) {
            if w.resendable() {
                again.push(Write { queued: true, ..w });
            } else {
                self.fail(
                    w,
                    Failure::local(
                        "connection-lost",
                        "the connection was lost before the server answered; the write may or may not have been applied",
                    ),
                );
            }
        }
        // In-flight writes were made before the queued ones: they go first.
        for w in again.into_iter().rev() {
            self.queue.push_front(w);
        }
        self.ping_at = None;
        self.deadline = None;
        let delay = backoff(&self.config, self.attempt, jitter);
        self.attempt = self.attempt.saturating_add(1);
        self.reconnect_at = Some(now + delay);
        self.set_state(State::Waiting);
    }

    /// When [`Client::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<u64> {
        [self.reconnect_at, self.ping_at, self.deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: reconnect when the backoff is over, ping every [`Config::ping_interval`],
    /// give the socket up when a ping (or the handshake) went unanswered.
    pub fn handle_timeout(&mut self, now: u64, jitter: f64) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.io.push_back(Io::Close);
            self.lose_connection(now, jitter);
            return;
        }
        if self.state == State::Waiting && self.reconnect_at.is_some_and(|t| now >= t) {
            self.start_connect(now);
            return;
        }
        if self.state == State::Open && self.ping_at.is_some_and(|t| now >= t) {
            let id = self.id();
            self.pending.insert(id, Pending::Ping);
            self.io
                .push_back(Io::Send(json!({"id": id, "op": "ping"}).to_string()));
            self.ping_at = None;
            self.deadline = Some(now + self.config.ping_timeout);
        }
    }

    /// Subscribes `listener` (an id the caller picks, unique per client) to a key, a glob or a
    /// subtree (`a/`). Leading `/` is accepted (AtomKV paths). The listener's first
    /// [`Event::Update`] is the current value (`initial`), then every change.
    pub fn subscribe(&mut self, listener: u64, path: &str) -> Result<String, Failure> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let pattern = Pattern::from_http_path(&format!("/{trimmed}"), true)
            .map_err(|e| Failure::local("invalid-key", &e.to_string()))?
            .as_str();
        self.by_listener.insert(listener, pattern.clone());
        if let Some(sub) = self.subs.get_mut(&pattern) {
            sub.listeners.push(listener);
            if sub.view.is_some() {
                let ev = self.initial_update(&pattern, vec![listener]);
                self.events.push_back(ev);
            } else {
                sub.fresh.push(listener);
            }
            return Ok(pattern);
        }
        self.subs.insert(
            pattern.clone(),
            Sub {
                path: pattern.clone(),
                listeners: vec![listener],
                view: None,
                version: None,
                known: BTreeMap::new(),
                fresh: vec![listener],
                cached: false,
            },
        );
        self.start_cached(&pattern);
        if self.state == State::Open {
            self.send_sub(&pattern);
        }
        Ok(pattern)
    }

    /// Drops a listener; the server subscription goes with its last listener.
    pub fn unsubscribe(&mut self, listener: u64) {
        let Some(pattern) = self.by_listener.remove(&listener) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&pattern) else {
            return;
        };
        sub.listeners.retain(|l| *l != listener);
        sub.fresh.retain(|l| *l != listener);
        if !sub.listeners.is_empty() {
            return;
        }
        self.subs.remove(&pattern);
        if self.state == State::Open {
            let id = self.id();
            self.pending.insert(id, Pending::Unsub);
            self.io.push_back(Io::Send(
                json!({"id": id, "op": "unsub", "path": pattern}).to_string(),
            ));
        }
    }

    fn send_sub(&mut self, pattern: &str) {
        let id = self.id();
        let mut m = json!({"id": id, "op": "sub", "path": pattern});
        if let Some(v) = self.subs.get(pattern).and_then(|s| s.version) {
            m["v"] = Value::String(format!("{v:x}"));
        }
        self.pending.insert(id, Pending::Sub(pattern.to_string()));
        self.io.push_back(Io::Send(m.to_string()));
    }

    /// Queues a write: `msg` is a `/_ws` message without `id` (`{"op":"set","key":..,"value":..}`,
    /// `push`, `patch`, `del`, `incr`, `take`, `rename`). Sent now when open, else when the
    /// connection comes back. Returns the request id its [`Event::Reply`] will carry.
    ///
    /// A leased write (`"lease": true`) is taken again after every reconnect; `onclose` is a
    /// registration kept across reconnects, whose reply names the request id as its handle
    /// (`onclose_cancel` takes that handle): see the `held` module.
    pub fn write(&mut self, msg: Value) -> u64 {
        let req = self.id();
        let Value::Object(mut msg) = msg else {
            self.events.push_back(Event::Reply {
                req,
                queued: false,
                result: Err(Failure::local(
                    "bad-request",
                    "a write must be a JSON object",
                )),
            });
            return req;
        };
        msg.remove("id");
        if self.write_held(req, &msg) {
            return req;
        }
        self.apply_local(req, &msg);
        if let Some(prefix) = &self.config.write_ids {
            let write = matches!(
                msg.get("op").and_then(Value::as_str),
                Some("set" | "push" | "patch" | "del" | "incr" | "take" | "rename" | "tx")
            );
            // A leased write takes no id: it is taken again after every reconnect instead.
            let leased = msg.get("lease").and_then(Value::as_bool) == Some(true);
            if write && !leased && !msg.contains_key("rid") {
                msg.insert("rid".into(), Value::String(format!("{prefix}.{req}")));
            }
        }
        let w = Write {
            req,
            msg,
            queued: self.state != State::Open,
        };
        self.enqueue(w);
        req
    }

    // Sends a write now when open, else queues it (refused when the queue is full).
    fn enqueue(&mut self, w: Write) {
        if self.state == State::Open {
            self.send_write(w);
        } else if self.queue.len() + self.pending.len() >= self.config.max_queue {
            self.fail(
                w,
                Failure::local(
                    "queue-full",
                    "too many writes are waiting for the connection",
                ),
            );
        } else {
            self.queue.push_back(w);
        }
    }

    fn send_write(&mut self, w: Write) {
        let mut m = w.msg.clone();
        m.insert("id".into(), Value::from(w.req));
        self.io.push_back(Io::Send(Value::Object(m).to_string()));
        self.pending.insert(w.req, Pending::Write(w));
    }

    fn fail(&mut self, w: Write, f: Failure) {
        self.settle_local(w.req);
        self.events.push_back(Event::Reply {
            req: w.req,
            queued: w.queued,
            result: Err(f),
        });
    }

    /// A message from the server (text or binary, UTF-8 JSON).
    pub fn handle_message(&mut self, now: u64, msg: &[u8]) {
        if self.state != State::Open {
            return;
        }
        // Any message shows the server is alive. Pings go on every interval all the same
        // (the next one an interval after this answer): a server that cannot ping its peers
        // (the edge) takes a connection that holds leases or on-close writes and sends
        // nothing for a minute for gone, however much it receives.
        if self.ping_at.is_none() {
            self.ping_at = Some(now + self.config.ping_interval);
        }
        self.deadline = None;
        let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(msg) else {
            return;
        };
        if let Some(ok) = m.get("ok").and_then(Value::as_bool) {
            self.on_reply(m, ok);
        } else if m.contains_key("sub") && m.contains_key("data") {
            self.on_frame(m);
        }
    }

    fn on_reply(&mut self, mut m: Map<String, Value>, ok: bool) {
        let Some(id) = m.get("id").and_then(Value::as_u64) else {
            return;
        };
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let failure = || {
            let e = m.get("error").cloned().unwrap_or(Value::Null);
            Failure {
                status: e.get("status").and_then(Value::as_u64).unwrap_or(0) as u16,
                code: e
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .into(),
                detail: e.get("detail").and_then(Value::as_str).unwrap_or("").into(),
            }
        };
        match p {
            Pending::Write(w) => {
                let result = if ok {
                    m.remove("id");
                    m.remove("ok");
                    self.held_acknowledged(&w, &mut m);
                    Ok(Value::Object(m))
                } else {
                    self.held_failed(&w);
                    Err(failure())
                };
                // What the write showed is reconciled before its answer is reported.
                self.settle_local(w.req);
                self.events.push_back(Event::Reply {
                    req: w.req,
                    queued: w.queued,
                    result,
                });
            }
            Pending::Sub(pattern) if !ok => {
                let error = failure();
                if let Some(sub) = self.subs.remove(&pattern) {
                    for l in &sub.listeners {
                        self.by_listener.remove(l);
                    }
                    self.events.push_back(Event::SubFailed {
                        pattern,
                        listeners: sub.listeners,
                        error,
                    });
                }
            }
            Pending::OnClose(handle) => {
                let result = if ok {
                    m.remove("id");
                    m.remove("ok");
                    Ok(m)
                } else {
                    Err(failure())
                };
                self.on_onclose_reply(handle, result);
            }
            Pending::Sub(pattern) => self.confirm(&pattern),
            Pending::Unsub | Pending::Ping | Pending::Internal => {}
        }
    }

    fn on_frame(&mut self, mut m: Map<String, Value>) {
        let Some(pattern) = m.get("sub").and_then(Value::as_str).map(str::to_string) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&pattern) else {
            // A frame for a subscription dropped meanwhile.
            return;
        };
        let snapshot = m.get("snapshot").and_then(Value::as_bool).unwrap_or(false);
        let version = m
            .get("version")
            .and_then(Value::as_str)
            .and_then(crate::web::parse_version);
        let data = m.remove("data").unwrap_or(Value::Null);
        let revs: Vec<(String, i64)> = match m.get("revs") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|r| Some((r.get(0)?.as_str()?.to_string(), r.get(1)?.as_i64()?)))
                .collect(),
            _ => Vec::new(),
        };
        let view = if snapshot {
            Some(data)
        } else {
            match (&sub.view, json::parse_patch(data)) {
                (Some(v), Ok(p)) => json::json_patch(v, &p).ok(),
                _ => None,
            }
        };
        let Some(view) = view else {
            // The patch does not apply to what we hold: we are out of step. Start over with a
            // snapshot (diffed against the cache, so nothing is reported twice).
            sub.view = None;
            sub.version = None;
            self.resync(&pattern);
            return;
        };
        sub.version = version.or(sub.version);
        let mut changes = diff(sub, &view, &revs, snapshot);
        sub.view = Some(view);
        // A key with a pending optimistic write shows that write: the server's change is in the
        // cache, and reported when the write is answered if it differs (see `local`).
        let local = &self.local;
        changes.retain(|c| !local.iter().any(|l| l.key() == c.key));
        let rest = sub.settled();
        let fresh = std::mem::take(&mut sub.fresh);
        if !fresh.is_empty() {
            let ev = self.initial_update(&pattern, fresh);
            self.events.push_back(ev);
        }
        if !changes.is_empty() && !rest.is_empty() {
            let sub = &self.subs[&pattern];
            let ev = Event::Update {
                pattern: sub.path.clone(),
                listeners: rest,
                initial: false,
                version: sub.version.unwrap_or(0),
                value: self.user_value(sub),
                changes,
                cached: false,
            };
            self.events.push_back(ev);
        }
    }

    fn resync(&mut self, pattern: &str) {
        if self.state != State::Open {
            return;
        }
        let id = self.id();
        self.pending.insert(id, Pending::Unsub);
        self.io.push_back(Io::Send(
            json!({"id": id, "op": "unsub", "path": pattern}).to_string(),
        ));
        self.send_sub(pattern);
    }

    /// The next thing to do with the socket.
    pub fn poll_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }

    /// The next event for the user.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The cached value of a subscription (as in [`Event::Update`]), if it has one.
    pub fn value(&self, pattern: &str) -> Option<Value> {
        let sub = self.subs.get(pattern)?;
        sub.view.as_ref()?;
        Some(self.user_value(sub))
    }

    /// The version a subscription holds.
    pub fn version(&self, pattern: &str) -> Option<u64> {
        self.subs.get(pattern)?.version
    }
}

fn sorted(mut ws: Vec<Write>) -> Vec<Write> {
    ws.sort_by_key(|w| w.req);
    ws
}

fn int(v: &Value, field: &str) -> i64 {
    v.get(field).and_then(Value::as_i64).unwrap_or(0)
}

/// The keys a view holds: key → (created, updated, data).
fn entries(view: &Value) -> Vec<(String, i64, i64, &Value)> {
    match view {
        Value::Array(items) => items.iter().filter_map(entry).collect(),
        m @ Value::Object(_) => entry(m).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// One meta object; the absent object (no `path`) is no entry.
fn entry(m: &Value) -> Option<(String, i64, i64, &Value)> {
    let path = m.get("path")?.as_str()?.to_string();
    Some((path, int(m, "created"), int(m, "updated"), m.get("data")?))
}

/// What changed between the cache and `view`, given the keys the frame names, in its order.
fn diff(sub: &mut Sub, view: &Value, revs: &[(String, i64)], snapshot: bool) -> Vec<KeyChange> {
    let now: HashMap<String, (i64, i64, &Value)> = entries(view)
        .into_iter()
        .map(|(k, c, u, d)| (k, (c, u, d)))
        .collect();
    let mut changes = Vec::new();
    let mut named: Vec<&str> = Vec::with_capacity(revs.len());
    for (k, rev) in revs {
        named.push(k);
        match now.get(k) {
            Some(&(c, u, d)) => changes.extend(changed(sub, k, *rev, c, u, d)),
            None => {
                if sub.known.remove(k).is_some() {
                    changes.push(deleted(k, *rev));
                }
            }
        }
    }
    if snapshot {
        // Keys gone while we were away (the snapshot does not name them).
        let gone: Vec<String> = sub
            .known
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            if sub.known.remove(&k).is_some() {
                // The snapshot cannot say which revision the delete had (the key may have been
                // written again before it went): unknown.
                changes.push(deleted(&k, -1));
            }
        }
        // A server that sends no `revs` (not Stateline's) still gets its keys reported, once.
        for (k, (c, u, d)) in &now {
            if !named.contains(&k.as_str()) {
                changes.extend(changed(sub, k, -1, *c, *u, d));
            }
        }
    }
    changes
}

/// The change to report for key `k` now at this state, if the cache does not hold it yet (the
/// cache is updated).
fn changed(
    sub: &mut Sub,
    k: &str,
    revision: i64,
    created: i64,
    updated: i64,
    data: &Value,
) -> Option<KeyChange> {
    let state = Known {
        revision,
        created,
        updated,
    };
    if sub.known.get(k) == Some(&state) {
        return None;
    }
    sub.known.insert(k.to_string(), state);
    Some(KeyChange {
        key: k.to_string(),
        value: Some(data.clone()),
        revision,
        created,
        updated,
        pending: false,
    })
}

fn deleted(k: &str, revision: i64) -> KeyChange {
    KeyChange {
        key: k.to_string(),
        value: None,
        revision,
        created: 0,
        updated: 0,
        pending: false,
    }
}

/// The value the server's view gives: a key's data (`null` when absent), or a list of items
/// ([`Client::user_value`] puts pending optimistic writes on top).
fn user_value(sub: &Sub) -> Value {
    let Some(view) = &sub.view else {
        return Value::Null;
    };
    let item = |(k, c, u, d): (String, i64, i64, &Value)| {
        let rev = sub.known.get(&k).map_or(-1, |s| s.revision);
        json!({"key": k, "value": d, "revision": rev, "created": c, "updated": u})
    };
    match view {
        Value::Array(_) => Value::Array(entries(view).into_iter().map(item).collect()),
        v => entries(v)
            .into_iter()
            .next()
            .map_or(Value::Null, |(_, _, _, d)| d.clone()),
    }
}

impl Client {
    /// The first update for new listeners of subscription `pattern`: the current value, every
    /// present key as a change (oldest change first), pending optimistic writes on top.
    fn initial_update(&self, pattern: &str, listeners: Vec<u64>) -> Event {
        let sub = &self.subs[pattern];
        let mut changes: Vec<KeyChange> = sub
            .view
            .as_ref()
            .map(entries)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, c, u, d)| KeyChange {
                revision: sub.known.get(&k).map_or(-1, |s| s.revision),
                key: k,
                value: Some(d.clone()),
                created: c,
                updated: u,
                pending: false,
            })
            .collect();
        changes.sort_by_key(|c| (c.updated.max(c.created), c.key.clone()));
        self.overlay_changes(sub, &mut changes);
        Event::Update {
            pattern: sub.path.clone(),
            listeners,
            initial: true,
            version: sub.version.unwrap_or(0),
            value: self.user_value(sub),
            changes,
            cached: sub.cached,
        }
    }
}

#[cfg(test)]
mod tests;

//! The live connection: one `/_ws` socket driven by the core's sync state machine.
//!
//! [`Live`] holds the state machine and, per listener, where its events go. Calls from the user
//! (subscribe, unsubscribe, write) go into the state machine under a lock and wake the driver, a
//! tokio task that owns the socket and the timer: it carries out `poll_io`, hands `poll_event`s
//! to their subscription or write, sleeps until `poll_timeout`, and reports the socket's opening,
//! messages and close back with `handle_*`. The lock is never held across an `.await`.
//!
//! The driver holds only a weak reference, so it ends (closing the socket) when the last
//! [`Client`](crate::Client) clone and [`Subscription`] are gone.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::stream::{SplitStream, StreamExt};
use futures_util::SinkExt;
use serde_json::Value;
use stateline_core::sync::{self, Config, Failure, Io, KeyChange, State};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ClientError;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Ws, WsError>> + Send>>;

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Its value: the first one (`initial`), then after every frame that changed something.
    Update(Update),
    /// The live connection's state changed (every subscription on it is told): `Waiting` after a
    /// lost connection, `Connecting` and `Open` again when it resumes.
    State(State),
    /// The server refused the subscription (bad path, filter, limit, access rules); nothing
    /// follows.
    Failed(Failure),
}

/// A subscription's value after a change, as the sync state machine reports it
/// ([`sync::Event::Update`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The pattern, as the server names it (`todos/*`, `todos/`, `key`).
    pub pattern: String,
    /// The first value this subscription gets: every current key is in `changes`.
    pub initial: bool,
    /// The version held after this update (resumed from after a reconnect).
    pub version: u64,
    /// For a key its data (`null` when absent); for a glob or subtree the items in the server's
    /// order (newest first), each `{"key","value","revision","created","updated"}`.
    pub value: Value,
    /// The keys that changed, in the order they were changed; a change is reported once.
    pub changes: Vec<KeyChange>,
}

struct Inner {
    core: sync::Client,
    // Whether the driver was started (with the first subscription or write).
    started: bool,
    next_listener: u64,
    listeners: HashMap<u64, mpsc::UnboundedSender<Event>>,
    replies: HashMap<u64, oneshot::Sender<Result<Value, Failure>>>,
}

/// The live connection shared by a client, its clones and its subscriptions.
pub(crate) struct Live {
    url: String,
    epoch: Instant,
    inner: Mutex<Inner>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `try_lock`: formatting must not wait on (or deadlock with) the driver.
        let state = self.inner.try_lock().ok().map(|i| i.core.state());
        f.debug_struct("Live")
            .field("url", &self.url)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // The driver wakes, finds no connection to serve and ends.
        self.wake.notify_one();
    }
}

/// A random number in `[0, 1)` for the backoff jitter: std's per-instance random hash keys, so
/// no random number crate is needed for this.
fn jitter() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// This client's prefix for write ids: 128 random bits (std's per-instance random hash keys)
/// in hex, so no two clients share an id.
fn write_ids() -> String {
    let a = RandomState::new().build_hasher().finish();
    let b = RandomState::new().build_hasher().finish();
    format!("{a:016x}{b:016x}")
}

impl Live {
    pub(crate) fn new(url: String, mut config: Config) -> Live {
        if config.write_ids.is_none() {
            config.write_ids = Some(write_ids());
        }
        Live {
            url,
            epoch: Instant::now(),
            inner: Mutex::new(Inner {
                core: sync::Client::new(config),
                started: false,
                next_listener: 1,
                listeners: HashMap::new(),
                replies: HashMap::new(),
            }),
            wake: Arc::new(Notify::new()),
        }
    }

    #[cfg(test)]
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Milliseconds on the connection's monotonic clock, the state machine's `now`.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere leaves the state machine consistent between calls: go on with it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> State {
        self.lock().core.state()
    }

    /// Starts the driver (and the connection) the first time something needs it.
    fn ensure_started(self: &Arc<Live>, inner: &mut Inner) {
        if inner.started {
            return;
        }
        inner.started = true;
        inner.core.connect(self.now());
        tokio::spawn(drive(
            Arc::downgrade(self),
            Arc::clone(&self.wake),
            self.url.clone(),
        ));
    }
}

pub(crate) fn subscribe(live: &Arc<Live>, path: &str) -> Result<Subscription, ClientError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (listener, pattern) = {
        let mut inner = live.lock();
        let listener = inner.next_listener;
        inner.next_listener += 1;
        let pattern = inner
            .core
            .subscribe(listener, path)
            .map_err(ClientError::Failed)?;
        inner.listeners.insert(listener, tx);
        live.ensure_started(&mut inner);
        (listener, pattern)
    };
    live.wake.notify_one();
    Ok(Subscription {
        live: Arc::clone(live),
        listener,
        pattern,
        rx,
    })
}

pub(crate) async fn write(live: &Arc<Live>, msg: Value) -> Result<Value, ClientError> {
    let (tx, rx) = oneshot::channel();
    {
        let mut inner = live.lock();
        live.ensure_started(&mut inner);
        // Its reply is an event the driver hands out only after this lock is released.
        let req = inner.core.write(msg);
        inner.replies.insert(req, tx);
    }
    live.wake.notify_one();
    match rx.await {
        Ok(r) => r.map_err(ClientError::Failed),
        Err(_) => Err(ClientError::Failed(Failure {
            status: 0,
            code: "closed".into(),
            detail: "the live connection ended".into(),
        })),
    }
}

/// A live subscription. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    live: Arc<Live>,
    listener: u64,
    pattern: String,
    // Unbounded, as the JS client's iterators: a consumer that reads slowly never loses an event
    // and never holds up the other subscriptions of the connection (memory grows instead).
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut inner = self.live.lock();
            inner.core.unsubscribe(self.listener);
            inner.listeners.remove(&self.listener);
        }
        self.live.wake.notify_one();
    }
}

impl Subscription {
    /// The pattern, as the server names it (`/todos/*` → `todos/*`).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The next event; `None` once the subscription was refused ([`Event::Failed`] came first).
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next update, skipping state changes, waiting at most `limit`; `None` on timeout or
    /// when the subscription was refused.
    pub async fn next_update(&mut self, limit: Duration) -> Option<Update> {
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Event::Update(u))) => return Some(u),
                Ok(Some(Event::State(_))) => continue,
                _ => return None,
            }
        }
    }

    /// The value it holds now (as in [`Update::value`]), `None` before the first frame.
    pub fn value(&self) -> Option<Value> {
        self.live.lock().core.value(&self.pattern)
    }

    /// The version it holds now.
    pub fn version(&self) -> Option<u64> {
        self.live.lock().core.version(&self.pattern)
    }
}

/// Hands the state machine's events to their subscriptions and writes.
fn dispatch(inner: &mut Inner) {
    while let Some(e) = inner.core.poll_event() {
        match e {
            sync::Event::State(s) => {
                for tx in inner.listeners.values() {
                    let _ = tx.send(Event::State(s));
                }
            }
            sync::Event::Update {
                pattern,
                listeners,
                initial,
                version,
                value,
                changes,
                ..
            } => {
                let u = Update {
                    pattern,
                    initial,
                    version,
                    value,
                    changes,
                };
                for l in listeners {
                    if let Some(tx) = inner.listeners.get(&l) {
                        let _ = tx.send(Event::Update(u.clone()));
                    }
                }
            }
            sync::Event::Reply { req, result, .. } => {
                if let Some(tx) = inner.replies.remove(&req) {
                    let _ = tx.send(result);
                }
            }
            sync::Event::SubFailed {
                listeners, error, ..
            } => {
                for l in listeners {
                    // Dropping the sender ends the subscription's stream after this event.
                    if let Some(tx) = inner.listeners.remove(&l) {
                        let _ = tx.send(Event::Failed(error.clone()));
                    }
                }
            }
        }
    }
}

/// Writes what the driver hands it, in order, so a slow socket never stops the reading side.
/// Ends (closing the socket) when the driver drops its sender.
async fn writer(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    while let Some(m) = rx.recv().await {
        if sink.feed(Message::Text(m.into())).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if sink.feed(Message::Text(m.into())).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// The open socket: its reading half here, its writing half in a [`writer`] task.
struct Open {
    read: SplitStream<Ws>,
    send: mpsc::UnboundedSender<String>,
}

async fn drive(live: Weak<Live>, wake: Arc<Notify>, url: String) {
    let mut connecting: Option<Connecting> = None;
    let mut open: Option<Open> = None;
    loop {
        let Some(l) = live.upgrade() else {
            return;
        };
        let deadline = {
            let mut inner = l.lock();
            while let Some(io) = inner.core.poll_io() {
                match io {
                    Io::Connect => {
                        open = None;
                        let url = url.clone();
                        connecting = Some(Box::pin(async move {
                            tokio_tungstenite::connect_async(url)
                                .await
                                .map(|(ws, _)| ws)
                        }));
                    }
                    Io::Send(m) => {
                        if let Some(o) = &open {
                            // A socket that just died: its close is reported by the reading side.
                            let _ = o.send.send(m);
                        }
                    }
                    Io::Close => {
                        connecting = None;
                        open = None;
                    }
                }
            }
            dispatch(&mut inner);
            inner
                .core
                .poll_timeout()
                .map(|ms| l.epoch + Duration::from_millis(ms))
        };
        // Not held across the wait: the last user handle going away must drop the connection.
        drop(l);
        tokio::select! {
            _ = wake.notified() => {}
            r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                let Some(l) = live.upgrade() else { return };
                let now = l.now();
                let mut inner = l.lock();
                match r {
                    Ok(ws) => {
                        let (sink, read) = ws.split();
                        let (send, rx) = mpsc::unbounded_channel();
                        tokio::spawn(writer(sink, rx));
                        open = Some(Open { read, send });
                        inner.core.handle_open(now);
                    }
                    Err(_) => inner.core.handle_close(now, jitter()),
                }
            }
            m = async { open.as_mut().expect("guarded").read.next().await }, if open.is_some() => {
                let Some(l) = live.upgrade() else { return };
                let now = l.now();
                let mut inner = l.lock();
                match m {
                    Some(Ok(Message::Text(t))) => inner.core.handle_message(now, t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => inner.core.handle_message(now, &b),
                    // Pings are answered by tungstenite itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_)) | Err(_)) | None => {
                        open = None;
                        inner.core.handle_close(now, jitter());
                    }
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                let Some(l) = live.upgrade() else { return };
                let now = l.now();
                l.lock().core.handle_timeout(now, jitter());
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

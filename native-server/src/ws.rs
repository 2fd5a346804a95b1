//! WebSocket connections: ooo's per-path subscriptions, the clock stream, and the multiplexed
//! `/_ws`.
//!
//! Owns the handshake checks (Origin allow-list, the `bearer` subprotocol), the socket buffer
//! sizes, and each connection's task: it writes frames from the connection's bounded queue
//! (coalesced into one flush), pings, reads, and closes with a documented code. The `/_ws`
//! message format is the core's (`stateline_core::mux`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use stateline_core::session::{Close, Forward, Limits, Reply, Session};
use stateline_core::web::{self, Socket, Subscription};
use stateline_core::{Encoding, Error, Identity};

use crate::routes::refused;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::deflate::{Deflate, InflatedTooLarge};
use crate::frames::{Deadline, MessageTimedOut};
use crate::hub::{Queue, Registration, Shared, Sink};

/// An upgraded connection: tungstenite over the socket, with the message deadline and the
/// compression layer (passing through unless `--ws-deflate` was agreed) in between.
type WebSocket = WebSocketStream<Deflate<Deadline<TokioIo<hyper::upgrade::Upgraded>>>>;

// Socket buffers. tungstenite reserves 128 KiB each for reading and writing by default, which
// alone breaks the per-idle-subscriber budget; frames larger than these still go through (the
// buffers grow for them), they just do not stay reserved by default. The read buffer is also
// what tungstenite zeroes before every read attempt, and the connection loop attempts a read
// after every frame it sends: 1 KiB is 16 cache lines per delivery instead of 64, and the most
// a read syscall takes from the socket (a 1 MiB message is 1,024 reads; subscribers send little).
const READ_BUFFER: usize = 1 << 10;
const WRITE_BUFFER: usize = 4 << 10;

/// Upgrades (the front door checked the handshake); the connection then runs in its own task as `who` (the
/// access rules were checked for the subscription before this).
///
/// The handshake is done here rather than by axum's extractor so the upgraded socket can be
/// wrapped in the message deadline ([`Deadline`]) before tungstenite reads from it. The checks
/// and refusals are the extractor's (RFC 6455, section 4.2.1).
pub async fn upgrade(
    sh: Arc<Shared>,
    req: Request<Bytes>,
    kind: Socket,
    who: Identity,
) -> Response {
    // The front door checked the handshake (`web::serve`), the Origin and Host, and who asks.
    if *sh.shutdown.borrow() {
        return refused(
            &sh,
            &req,
            &Error::Unavailable("the server is shutting down".into()),
        );
    }
    let (mut parts, _body) = req.into_parts();
    let h = &parts.headers;
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        let req = Request::from_parts(parts, Bytes::new());
        return refused(&sh, &req, &Error::BadRequest("no Sec-WebSocket-Key".into()));
    };
    let accept = derive_accept_key(key.as_bytes());
    // `Sec-WebSocket-Protocol: bearer, <token>` (browsers cannot set Authorization on a
    // WebSocket): the token was read with the request (`web::token`); the server selects
    // `bearer` as the protocol, as the browser requires one of those it offered.
    let bearer = web::offers_bearer(h);
    // Compression when switched on and the client offers terms the core accepts.
    let deflate = sh
        .limits
        .ws_deflate
        .then(|| web::permessage_deflate(h))
        .flatten();
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        // A connection hyper cannot upgrade (HTTP/2 without extended CONNECT).
        let req = Request::from_parts(parts, Bytes::new());
        let e = Error::BadRequest("this connection cannot be upgraded to a WebSocket".into());
        return refused(&sh, &req, &e);
    };
    let max = sh.limits.max_body;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let timeout = sh.limits.message_timeout;
    let terms = deflate.as_ref().map(|d| d.client_no_context_takeover);
    // Each kind's loop is boxed: the task's own future is only as large as the upgrade, and a
    // connection holds the state of its kind's loop alone (an ooo subscriber's is about 3 KiB,
    // a `/_ws` connection's about 5 KiB; unboxed, every task would be the largest of them).
    let fut = async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = Deadline::new(TokioIo::new(upgraded), timeout);
        let io = match terms {
            Some(no_context) => Deflate::on(io, no_context, max),
            None => Deflate::off(io),
        };
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        match kind {
            Socket::Subscribe(sub) => Box::pin(ooo(sh, socket, sub, who)).await,
            Socket::Clock => Box::pin(clock(sh, socket)).await,
            Socket::Mux => Box::pin(mux_conn(sh, socket, who)).await,
        }
    };
    tokio::spawn(fut);
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = r.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        out.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(d) = deflate {
        out.insert(header::SEC_WEBSOCKET_EXTENSIONS, d.response);
    }
    if bearer {
        out.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer"),
        );
    }
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Lagging,
    PingTimeout,
    Shutdown,
    PeerClosed,
    Protocol,
    TooBig,
    MessageTimeout,
    WriteFailed,
    Refused,
    TokenExpired,
    RolledBack,
}

impl Exit {
    fn close(self) -> Option<Close> {
        match self {
            Exit::Lagging => Some(Close::Lagging),
            Exit::PingTimeout => Some(Close::PingTimeout),
            Exit::Shutdown => Some(Close::GoingAway),
            Exit::Protocol => Some(Close::Protocol),
            Exit::TooBig => Some(Close::TooBig),
            Exit::MessageTimeout => Some(Close::MessageTimeout),
            Exit::Refused => Some(Close::Refused),
            Exit::TokenExpired => Some(Close::TokenExpired),
            Exit::RolledBack => Some(Close::TryAgain),
            Exit::PeerClosed | Exit::WriteFailed => None,
        }
    }
}

async fn ooo(sh: Arc<Shared>, socket: WebSocket, sub: Subscription, who: Identity) {
    let (mut reg, sink, rx) = sh.connect();
    let tick = sh.tick();
    let pattern = sub.pattern.as_str();
    tracing::debug!(conn = reg.conn, %pattern, subject = who.subject().as_deref().unwrap_or("-"), "ws subscribe");
    let joined = {
        let mut hub = sh.lock();
        Session::open(&hub.engine, who, None, Limits::default()).and_then(|mut session| {
            let (pool, first) = hub.subscribe(&mut session, &sub, Encoding::Ooo, true, &sink)?;
            if let Some(b) = first {
                sink.offer(b);
            }
            sh.hold_until_committed(&hub, &reg.ctl);
            Ok((pool, session))
        })
    };
    match joined {
        Ok((pool, session)) => {
            reg.pools.push(pool);
            reg.expires = crate::hub::deadline_at(tick, session.deadline());
            // Not needed once subscribed (an ooo socket sends no requests): not kept in the
            // connection's task for as long as it is open.
            drop(session);
            drop(sink);
            let (socket, reg, exit) = run(&sh, socket, reg, rx, |_, _| false).await;
            finish(&sh, socket, reg, exit).await;
        }
        Err(e) => {
            tracing::debug!(%pattern, error = %e, "ws subscription refused");
            finish(&sh, socket, reg, Exit::Refused).await;
        }
    }
}

async fn clock(sh: Arc<Shared>, socket: WebSocket) {
    let (mut reg, sink, rx) = sh.connect();
    {
        let tick = sh.tick();
        let mut hub = sh.lock();
        hub.join_clock(tick, &sink);
    }
    reg.clock = true;
    drop(sink);
    let (socket, reg, exit) = run(&sh, socket, reg, rx, |_, _| false).await;
    finish(&sh, socket, reg, exit).await;
}

async fn mux_conn(sh: Arc<Shared>, socket: WebSocket, who: Identity) {
    let (mut reg, sink, rx) = sh.connect();
    tracing::debug!(
        conn = reg.conn,
        subject = who.subject().as_deref().unwrap_or("-"),
        "mux connected"
    );
    let cluster = sh.cluster.get().cloned();
    let limits = Limits {
        lease_ttl: i64::try_from(sh.limits.lease_ttl.as_nanos()).unwrap_or(i64::MAX),
        ..Limits::default()
    };
    let session = {
        let hub = sh.lock();
        Session::open(&hub.engine, who, None, limits)
    };
    // Without a host-kept state limit, opening cannot fail.
    let Ok(mut session) = session else {
        finish(&sh, socket, reg, Exit::Refused).await;
        return;
    };
    if cluster.is_some() {
        session = session.ordered_elsewhere();
    }
    reg.expires = crate::hub::deadline_at(sh.tick(), session.deadline());
    // Shared with the cluster writer, which gives it the answers to its leases. Locked briefly,
    // never across an await, and before the hub's lock when both are taken.
    let session = Arc::new(Mutex::new(session));
    // The connection keeps one sender to queue its own replies; the hub holds clones per pool.
    let own = sink;
    let shared = sh.clone();
    // In a cluster, the connection's writes are ordered one after another by a task of its own
    // (each waits for JetStream), so they reach the stream in the order the client sent them.
    let writes = cluster
        .as_ref()
        .map(|c| cluster_writer(&shared, c, &own, &session));
    let (socket, mut reg, exit) = run(&sh, socket, reg, rx, |reg, event| match event {
        Event::Message(msg) => {
            mux_message(
                &shared,
                reg,
                &session,
                &own,
                msg,
                writes.as_ref().map(|w| &w.0),
            );
            true
        }
        Event::Renew => {
            renew(&shared, reg, &session, writes.as_ref().map(|w| &w.0));
            false
        }
    })
    .await;
    // Stop sending first (a lagging connection stops counting at once), then run what the
    // connection leaves behind, then say why with the close frame.
    reg.unregister();
    end(&sh, &session, cluster.as_ref(), writes).await;
    finish(&sh, socket, reg, exit).await;
}

// The connection's session (a panic elsewhere while it was locked leaves it as it was).
fn locked(session: &Mutex<Session>) -> std::sync::MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs what a `/_ws` connection leaves behind (its on-close writes, then the release of its
/// leased keys), however it ended, and waits until they are durable and published: the
/// connection counts as open until then, so a shutdown waits for them (within `--drain`).
async fn end(
    sh: &Arc<Shared>,
    session: &Mutex<Session>,
    cluster: Option<&Arc<crate::cluster::Cluster>>,
    writes: Option<(
        tokio::sync::mpsc::UnboundedSender<Forward>,
        tokio::task::JoinHandle<()>,
    )>,
) {
    if let (Some(cluster), Some((tx, task))) = (cluster, writes) {
        // After the connection's own writes still in flight (leases among them): they were
        // sent first.
        drop(tx);
        let _ = task.await;
        let end_writes = locked(session).end_writes(sh.tick());
        for w in end_writes {
            let r = cluster
                .write(sh, |hub, tick| {
                    crate::cluster::Step::op(hub, tick, &w.op, &w.who)
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "a disconnect write could not be ordered");
            }
        }
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    {
        let mut session = locked(session);
        if !session.has_end_writes() {
            return;
        }
        let tick = sh.tick();
        let mut hub = sh.lock();
        let changes = session.end(&mut hub.engine, tick);
        hub.log_denials();
        if changes.is_empty() {
            return;
        }
        let wake = crate::hub::sets_expiry(&changes);
        sh.persist(
            &mut hub,
            changes,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        if wake {
            sh.ttl_wake.notify_one();
        }
    }
    match rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // Rolled back: leased keys expire by their TTL.
            tracing::warn!(error = %e, "disconnect writes could not be committed")
        }
        Err(_) => tracing::warn!("disconnect writes: the commit thread stopped"),
    }
}

/// Renews the connection's leases that are due and re-arms the renewal timer. In a cluster
/// the renewals are writes the connection's writer has the cluster order.
fn renew(
    sh: &Shared,
    reg: &mut Registration,
    session: &Mutex<Session>,
    cluster: Option<&tokio::sync::mpsc::UnboundedSender<Forward>>,
) {
    let mut session = locked(session);
    let session = &mut *session;
    let tick = sh.tick();
    let mut hub = sh.lock();
    if let Some(q) = cluster {
        for f in session.renewals(&hub.engine, tick) {
            // A writer that stopped: the connection is ending, its leases with it.
            let _ = q.send(f);
        }
        reg.renew_at = renewal_at(&hub, session, tick);
        return;
    }
    let changes = session.renew(&mut hub.engine, tick);
    let n = changes.len();
    if n > 0 {
        sh.persist(
            &mut hub,
            changes,
            Box::new(move |r| {
                if let Err(e) = r {
                    tracing::warn!(error = %e, leases = n, "lease renewal could not be committed");
                }
            }),
        );
    }
    reg.renew_at = renewal_at(&hub, session, tick);
    drop(hub);
    if n > 0 {
        sh.ttl_wake.notify_one();
    }
}

// When the session's next lease renewal is due, on the runtime's clock.
fn renewal_at(
    hub: &crate::hub::Hub,
    session: &Session,
    tick: stateline_core::Tick,
) -> Option<tokio::time::Instant> {
    let ns = session.renew_in(&hub.engine, tick)?;
    // At least a millisecond apart, so a lease that cannot be renewed does not spin.
    Some(tokio::time::Instant::now() + Duration::from_nanos(ns.max(1_000_000)))
}

// Starts the task that orders a connection's writes through the cluster and replies to each.
fn cluster_writer(
    sh: &Arc<Shared>,
    cluster: &Arc<crate::cluster::Cluster>,
    sink: &Sink,
    session: &Arc<Mutex<Session>>,
) -> (
    tokio::sync::mpsc::UnboundedSender<Forward>,
    tokio::task::JoinHandle<()>,
) {
    // Unbounded here, bounded by `--ws-inflight`: the connection stops reading once that many
    // requests await their reply.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Forward>();
    let (sh, cluster, sink) = (sh.clone(), cluster.clone(), sink.clone());
    let session = session.clone();
    let task = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            let r = cluster
                .write(&sh, |hub, tick| {
                    crate::cluster::Step::op(hub, tick, &f.op, &f.who)
                })
                .await;
            if let (Some(_), Ok((r, seq))) = (&f.rid, &r) {
                f.remember(&mut sh.lock().engine, r.as_ref(), *seq);
            }
            // A lease taken or renewed is held with the version the cluster gave it.
            match &r {
                Ok((r, seq)) => locked(&session).forwarded(&f, r.as_ref(), *seq),
                Err(e) => locked(&session).forwarded(&f, Err(&Error::Unavailable(e.clone())), None),
            }
            if !f.replies() {
                continue;
            }
            sink.reply(match r {
                Ok((r, seq)) => f.answer(r, seq),
                Err(e) => f.unavailable(&e),
            });
        }
    });
    (tx, task)
}

/// Handles one `/_ws` message under the hub lock (the core's [`Session`] decides; this moves
/// its effects): the reply is queued after the frames the operation produced, so a client sees
/// its own change before the acknowledgement. Every message gets exactly one reply
/// ([`Sink::reply`], never dropped), now or once its write is durable: the connection counts
/// them to bound what it has in flight.
fn mux_message(
    sh: &Shared,
    reg: &mut Registration,
    session: &Mutex<Session>,
    sink: &Sink,
    msg: &[u8],
    cluster: Option<&tokio::sync::mpsc::UnboundedSender<Forward>>,
) {
    let tick = sh.tick();
    let mut wrote = false;
    {
        let mut session = locked(session);
        let session = &mut *session;
        let mut hub = sh.lock();
        let ext = hub.ext.clone();
        let fx = session.handle(&mut hub.engine, tick, msg, &mut |p, who| {
            ext.subscribe(p, who)
        });
        hub.log_denials();
        for pool in fx.left {
            reg.pools.retain(|p| *p != pool);
            hub.leave(pool, reg.conn);
        }
        if let Some(pool) = fx.joined {
            hub.attach(pool, sink);
            reg.pools.push(pool);
            sh.hold_until_committed(&hub, &reg.ctl);
        }
        if fx.deadline_moved {
            reg.expires = crate::hub::deadline_at(tick, session.deadline());
        }
        if fx.state_changed || matches!(fx.reply, Reply::Write(_) | Reply::Forward(_)) {
            reg.renew_at = renewal_at(&hub, session, tick);
        }
        match fx.reply {
            Reply::Now(b) => sink.reply(b),
            Reply::Write(mut w) => {
                let changes = std::mem::take(&mut w.changes);
                wrote = crate::hub::sets_expiry(&changes);
                let sink = sink.clone();
                // The acknowledgement waits for the commit (with a disk); the frames are queued
                // just before it, so the client still sees its change first.
                sh.persist(
                    &mut hub,
                    changes,
                    Box::new(move |r| {
                        sink.reply(match r {
                            Ok(()) => w.ok,
                            Err(e) => w.failed(&e),
                        })
                    }),
                );
            }
            Reply::Refusal(no) => {
                // A refusal is an answer about the state too: with writes pending it waits for
                // their commit (`Shared::after_pending`).
                let sink = sink.clone();
                sh.after_pending(
                    &hub,
                    Box::new(move |r| {
                        sink.reply(match r {
                            Ok(()) => no.no,
                            Err(e) => no.failed(&e),
                        })
                    }),
                );
            }
            Reply::Forward(f) => match cluster {
                Some(q) => {
                    if let Err(e) = q.send(f) {
                        sink.reply(e.0.unavailable("the connection's writer stopped"));
                    }
                }
                None => sink.reply(f.unavailable("this server is not in a cluster")),
            },
        }
        if let Some(f) = fx.first {
            sink.offer(f);
        }
    }
    if wrote {
        sh.ttl_wake.notify_one();
    }
}

/// What the connection loop hands to its connection's handler.
enum Event<'a> {
    /// A message from the peer.
    Message(&'a [u8]),
    /// [`Registration::renew_at`] passed: renew the leases due.
    Renew,
}

/// The connection loop: write queued frames, ping, read, and stop on the first reason to close;
/// returns the socket, the registration and why, for the caller to finish.
///
/// `on_event` handles one message from the peer and says whether it will be answered (a
/// `/_ws` request): while `--ws-inflight` answers are pending the socket is not read, so a
/// pipelining client is slowed by TCP instead of having its acknowledgements dropped.
async fn run(
    sh: &Shared,
    mut socket: WebSocket,
    mut reg: Registration,
    mut rx: Queue,
    mut on_event: impl FnMut(&mut Registration, Event<'_>) -> bool,
) -> (WebSocket, Registration, Exit) {
    let limits = &sh.limits;
    let mut shutdown = sh.shutdown.clone();
    let interval = limits.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut awaiting_pong = false;
    // Requests read whose reply has not been taken from the queue yet.
    let mut inflight = 0usize;
    let ctl = reg.ctl.clone();
    // With compression agreed, a broadcast frame goes out compressed once for all (a reply is
    // this connection's own: the socket layer compresses it).
    let deflated = socket.get_ref().is_on();
    // The reasons to close are waited for by futures made once per connection, not once per
    // frame: a `Notified` or `changed()` built in the loop would enter and leave its waiter
    // list (a lock each way) for every frame delivered.
    let closing = async {
        tokio::select! {
            biased;
            _ = ctl.wake.notified() => Exit::Lagging,
            _ = shutdown.wait_for(|s| *s) => Exit::Shutdown,
        }
    };
    tokio::pin!(closing);
    // The token's expiry (`auth` on `/_ws` can move it): one timer, reset when it changes.
    let mut expires = reg.expires;
    let expiry = crate::hub::until(expires);
    tokio::pin!(expiry);
    // The next lease renewal, if the connection holds leases.
    let mut renew_at = reg.renew_at;
    let renewal = crate::hub::until(renew_at);
    tokio::pin!(renewal);
    let exit = loop {
        if ctl.is_lagged() {
            break Exit::Lagging;
        }
        if ctl.hold_failed() {
            break Exit::RolledBack;
        }
        if reg.expires != expires {
            expires = reg.expires;
            expiry.set(crate::hub::until(expires));
        }
        if reg.renew_at != renew_at {
            renew_at = reg.renew_at;
            renewal.set(crate::hub::until(renew_at));
        }
        let reading = inflight < limits.ws_inflight;
        tokio::select! {
            biased;
            e = &mut closing => break e,
            _ = &mut expiry => break Exit::TokenExpired,
            _ = &mut renewal => {
                // Done: wait for nothing until the handler sets the next renewal.
                renew_at = None;
                renewal.set(crate::hub::until(None));
                reg.renew_at = None;
                on_event(&mut reg, Event::Renew);
            }
            // Held: a subscription's first frame waits for the commit of the writes it shows.
            _ = ctl.released.notified(), if ctl.is_held() => {}
            m = rx.recv(), if !ctl.is_held() => {
                let Some((first, reply)) = m else { break Exit::WriteFailed };
                inflight = inflight.saturating_sub(usize::from(reply));
                // Batch: everything already queued goes out with one flush. Bounded by the
                // queue's capacity so a fast publisher cannot keep this loop from reading.
                let message = |b: Bytes, reply: bool| {
                    if deflated && !reply {
                        sh.deflate_frames.message(b)
                    } else {
                        Message::Binary(b)
                    }
                };
                let write = async {
                    socket.feed(message(first, reply)).await?;
                    for _ in 1..limits.queue {
                        match rx.try_recv() {
                            Some((b, reply)) => {
                                inflight = inflight.saturating_sub(usize::from(reply));
                                socket.feed(message(b, reply)).await?
                            }
                            None => break,
                        }
                    }
                    socket.flush().await
                };
                tokio::select! {
                    r = tokio::time::timeout(limits.write_timeout, write) => match r {
                        Ok(Ok(())) => {}
                        _ => break Exit::WriteFailed,
                    },
                    e = &mut closing => break e,
                }
            }
            _ = ping.tick() => {
                // Not reading (replies pending) is the server's wait, not the peer's silence.
                if awaiting_pong && reading {
                    break Exit::PingTimeout;
                }
                awaiting_pong = true;
                let sent = tokio::time::timeout(
                    limits.write_timeout,
                    socket.send(Message::Ping(Bytes::from_static(b"stateline"))),
                ).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break Exit::WriteFailed;
                }
            }
            m = socket.next(), if reading => match m {
                None => break Exit::PeerClosed,
                Some(Err(e)) => {
                    tracing::debug!(conn = reg.conn, error = %e, "websocket read error");
                    break match e {
                        WsError::Capacity(_) => Exit::TooBig,
                        WsError::Io(io) if io.get_ref().is_some_and(|i| i.is::<InflatedTooLarge>()) => {
                            Exit::TooBig
                        }
                        WsError::Io(io) if io.get_ref().is_some_and(|i| i.is::<MessageTimedOut>()) => {
                            Exit::MessageTimeout
                        }
                        _ => Exit::Protocol,
                    };
                }
                Some(Ok(msg)) => {
                    awaiting_pong = false;
                    let answered = match msg {
                        Message::Text(t) => on_event(&mut reg, Event::Message(t.as_bytes())),
                        Message::Binary(b) => on_event(&mut reg, Event::Message(&b)),
                        Message::Close(_) => break Exit::PeerClosed,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => false,
                    };
                    inflight += usize::from(answered);
                }
            },
        }
    };
    (socket, reg, exit)
}

/// Leaves the pools first (so a lagging subscriber stops counting at once), then says why with a
/// close frame, bounded by the write timeout (the peer may not be reading at all).
async fn finish(sh: &Shared, mut socket: WebSocket, mut reg: Registration, exit: Exit) {
    reg.unregister();
    match exit {
        // Worth an operator's attention: a client that cannot keep up, or a dead peer.
        Exit::Lagging | Exit::PingTimeout | Exit::WriteFailed | Exit::MessageTimeout => {
            tracing::info!(conn = reg.conn, ?exit, "websocket closed by the server")
        }
        _ => tracing::debug!(conn = reg.conn, ?exit, "websocket closing"),
    }
    if let Some(close) = exit.close() {
        let frame = Message::Close(Some(CloseFrame {
            code: close.code().into(),
            reason: Utf8Bytes::from_static(close.reason()),
        }));
        let limit = sh.limits.write_timeout.min(Duration::from_secs(5));
        let _ = tokio::time::timeout(limit, socket.send(frame)).await;
    }
    drop(reg);
}

//! Plain HTTP, `GET /` and the embedded files (client script, UI), and Server-Sent Events.
//!
//! Owns reading request bodies under the size cap and the deadline, handing them to the core's
//! HTTP function, and streaming SSE frames from a connection's queue. What a route means is the
//! core's business (`stateline_core::web`); this module only moves bytes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::Request;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use stateline_core::session::{Limits, Session};
use stateline_core::web::{self, Action, Backups, Host, Metric, Subscription};
use stateline_core::Encoding;

use std::sync::atomic::Ordering;

use crate::hub::Shared;
use crate::ws;

/// The one handler (as an axum fallback, for [`crate::router`]).
pub async fn entry(State(sh): State<Arc<Shared>>, req: Request<Body>) -> Response {
    serve_request(sh, req).await
}

/// Serves one request: reads its body (under the cap and the deadline), hands it to the core's
/// front door once (`web::serve`), and does what comes back.
pub async fn serve_request(sh: Arc<Shared>, req: Request<Body>) -> Response {
    serve_on(sh, req, None).await
}

/// [`serve_request`] on one of the accept loop's connections (`conn`: what its IO shares with
/// its requests, for an SSE stream to take the socket over).
pub(crate) async fn serve_on(
    sh: Arc<Shared>,
    req: Request<Body>,
    conn: Option<&Arc<crate::listen::ConnHandoff>>,
) -> Response {
    sh.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    // For the debug line at the end only: not copied (nor the clock read) when it is not
    // written.
    let traced = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        (
            parts.method.clone(),
            parts.uri.path().to_string(),
            std::time::Instant::now(),
        )
    });
    let (bytes, body_error) = match read_body(&sh, &parts, body).await {
        Ok(b) => (b, None),
        Err(e) => (Bytes::new(), Some(e)),
    };
    let req = Request::from_parts(parts, bytes);
    let ext = sh.ext.get().cloned().unwrap_or_default();
    let resp = match front_door(&sh, &req, &ext, body_error).await {
        Door::Answered(r) => r,
        Door::Action(action) => match action {
            // `front_door` answers plain requests itself, with their commits: none is left here.
            Action::Respond(out) => out.response.map(Body::from),
            Action::Asset { path, head } => asset(&sh, &req, &path, head),
            // The rare actions' futures are boxed, so they do not add to every request's.
            Action::Backup => Box::pin(backup(&sh, &req)).await,
            Action::Events { sub, who } => events(&sh, &req, sub, who, conn),
            Action::Upgrade { socket, who } => {
                Box::pin(ws::upgrade(sh.clone(), req, socket, who)).await
            }
            Action::Endpoint { who } => Box::pin(endpoint(&sh, req, &ext, who)).await,
        },
    };
    if let Some((method, path, started)) = traced {
        tracing::debug!(%method, %path, status = resp.status().as_u16(), us = started.elapsed().as_micros() as u64, "request");
    }
    resp
}

/// What the front door left for the adapter: an answer made (a plain request, committed), or an
/// action to carry out.
enum Door {
    Answered(Response),
    Action(Action),
}

/// The core's hooks, as the builder registered them.
struct Hooks<'a>(&'a crate::ext::Extensions);

impl web::Hooks for Hooks<'_> {
    fn audit(&self, req: &Request<Bytes>, who: &stateline_core::Identity) -> Result<(), String> {
        let r = self.0.audit(&crate::ext::AuditEvent {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
            identity: who,
        });
        if let Err(why) = &r {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), reason = %why, "refused by the audit hook");
        }
        r
    }

    fn endpoint(&self, method: &http::Method, path: &str) -> Option<bool> {
        self.0.route(method, path).map(|(_, h)| h.is_ok())
    }

    fn describe(&self) -> serde_json::Value {
        self.0.describe()
    }
}

/// The adapter's counters for `/_metrics`: requests, open connections, resident memory.
fn adapter_metrics(sh: &Shared) -> Vec<Metric<'static>> {
    let mut metrics = vec![
        Metric {
            name: "stateline_requests_total",
            kind: "counter",
            help: "HTTP requests received (every route).",
            value: sh.requests.load(Ordering::Relaxed),
        },
        Metric {
            name: "stateline_connections",
            kind: "gauge",
            help: "Open WebSocket and SSE connections.",
            value: sh.live() as u64,
        },
    ];
    if let Some(v) = resident_bytes() {
        metrics.push(Metric {
            name: "process_resident_memory_bytes",
            kind: "gauge",
            help: "Resident memory size in bytes.",
            value: v,
        });
    }
    metrics
}

/// The process's resident memory (Linux: /proc/self/statm, in pages of 4 KiB).
fn resident_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
}

/// What this server knows about itself for the front door ([`Host`]), gathered once a request.
struct Known<'a> {
    starting: Option<String>,
    cluster_problem: Option<String>,
    metrics: Vec<Metric<'static>>,
    hooks: Hooks<'a>,
    backups: Backups<'a>,
}

impl Known<'_> {
    /// The host as the core sees it, with the store's failure (if any) and the body's.
    fn host<'s>(
        &'s self,
        storage_error: Option<&'s str>,
        body_error: Option<stateline_core::Error>,
    ) -> Host<'s> {
        Host {
            starting: self.starting.as_deref(),
            unhealthy: self.cluster_problem.as_deref().or(storage_error),
            metrics: &self.metrics,
            hooks: Some(&self.hooks),
            backups: self.backups,
            body_error,
            checks_handshakes: true,
        }
    }
}

/// How many times an answer is computed again because the pending writes it saw were rolled
/// back (the store is failing while writes keep coming), before it is given up with 503.
const READ_ATTEMPTS: u32 = 4;

/// Runs the front door under the hub lock: plain answers are committed here (their writes made
/// durable first; in a cluster, ordered by JetStream), anything else is handed back.
async fn front_door(
    sh: &Arc<Shared>,
    req: &Request<Bytes>,
    ext: &crate::ext::Extensions,
    body_error: Option<stateline_core::Error>,
) -> Door {
    let hooks = Hooks(ext);
    // The adapter's own counters, gathered only for `/_metrics` (reading the resident memory
    // is a file read: not for every request).
    let metrics = if req.uri().path() == "/_metrics" {
        adapter_metrics(sh)
    } else {
        Vec::new()
    };
    let backups = match sh.limits.backup_token.as_deref() {
        None => Backups::Off,
        Some(token) => Backups::On {
            token,
            store: sh.disk.get().is_some(),
        },
    };
    let cluster = sh.cluster.get();
    let starting = cluster.and_then(|c| c.not_ready());
    let cluster_problem = cluster.and_then(|c| c.problem());
    let known = Known {
        starting,
        cluster_problem,
        metrics,
        hooks,
        backups,
    };
    if let Some(cluster) = cluster {
        // Boxed: the cluster's write future is most of this one's size, and every request's
        // future is moved (copied) into its connection's slot whole.
        return Box::pin(clustered(sh, cluster, req, &known, body_error)).await;
    }
    let mut attempt = 0;
    let mut body_error = body_error;
    loop {
        attempt += 1;
        let tick = sh.tick();
        let mut wake_timer = false;
        let (response, wait, wrote) = {
            let mut hub = sh.lock_yielding().await;
            let storage_error = hub.storage_error().map(str::to_string);
            let h = known.host(storage_error.as_deref(), body_error.take());
            let out = match web::serve(&mut hub.engine, tick, req, &h) {
                Action::Respond(out) => out,
                other => {
                    hub.log_denials();
                    return Door::Action(other);
                }
            };
            hub.log_denials();
            let wrote = !out.changes.is_empty();
            if !wrote && !sh.pending(&hub) {
                // The common read: no write is pending, so what it saw is committed.
                (out.response, None, false)
            } else if !sh.is_durable() {
                // In memory, a write is committed once published: no commit to wait for.
                wake_timer = crate::hub::sets_expiry(&out.changes);
                hub.commit(&out.changes);
                (out.response, None, wrote)
            } else {
                // A write waits for its commit; an answer that saw pending writes waits for
                // theirs (`Shared::after_pending`).
                wake_timer = crate::hub::sets_expiry(&out.changes);
                let (tx, rx) = tokio::sync::oneshot::channel();
                sh.persist(
                    &mut hub,
                    out.changes,
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                );
                (out.response, Some(rx), wrote)
            }
        };
        if wake_timer {
            sh.ttl_wake.notify_one();
        }
        let Some(rx) = wait else {
            return Door::Answered(response.map(Body::from));
        };
        // Acknowledge only once the write is on disk (at once in memory mode).
        match rx
            .await
            .unwrap_or_else(|_| Err("the commit was dropped".into()))
        {
            Ok(()) => return Door::Answered(response.map(Body::from)),
            Err(e) if wrote || attempt >= READ_ATTEMPTS => {
                return Door::Answered(refused(sh, req, &stateline_core::Error::storage(&e)))
            }
            // What the answer saw was rolled back: compute it again from what is left.
            Err(_) => continue,
        }
    }
}

/// [`front_door`] on a cluster node: the write is ordered by JetStream before it is answered.
async fn clustered(
    sh: &Arc<Shared>,
    cluster: &crate::cluster::Cluster,
    req: &Request<Bytes>,
    known: &Known<'_>,
    body_error: Option<stateline_core::Error>,
) -> Door {
    let method = req.method().clone();
    let mut body_error = body_error;
    let r = cluster
        .write(sh, |hub, tick| {
            let h = known.host(None, body_error.take());
            match web::serve(&mut hub.engine, tick, req, &h) {
                Action::Respond(out) => {
                    hub.log_denials();
                    let stale = out.changes.is_empty()
                        && web::refusal_may_be_stale(&method, out.response.status());
                    crate::cluster::Step {
                        answer: Ok(out.response),
                        changes: out.changes,
                        stale,
                    }
                }
                other => {
                    hub.log_denials();
                    crate::cluster::Step {
                        answer: Err(other),
                        changes: Vec::new(),
                        stale: false,
                    }
                }
            }
        })
        .await;
    match r {
        Ok((Ok(mut response), seq)) => {
            if let Some(seq) = seq {
                web::restamp(&mut response, seq);
            }
            web::remember(&mut sh.lock().engine, &mut response, seq);
            Door::Answered(response.map(Body::from))
        }
        Ok((Err(action), _)) => Door::Action(action),
        Err(e) => Door::Answered(refused(sh, req, &stateline_core::Error::Unavailable(e))),
    }
}

/// The core's answer to a request refused with `e` (problem document or ooo's text, CORS).
pub(crate) fn refused(sh: &Shared, req: &Request<Bytes>, e: &stateline_core::Error) -> Response {
    let hub = sh.lock();
    web::refusal(&hub.engine, req, e).map(Body::from)
}

/// Runs a custom endpoint's handler (the front door found it and the audit hook passed).
async fn endpoint(
    sh: &Arc<Shared>,
    req: Request<Bytes>,
    ext: &crate::ext::Extensions,
    who: stateline_core::Identity,
) -> Response {
    let (parts, body) = req.into_parts();
    let Some((vars, Ok(handler))) = ext.route(&parts.method, parts.uri.path()) else {
        let req = Request::from_parts(parts, body);
        return refused(sh, &req, &stateline_core::Error::MethodNotAllowed);
    };
    let query = web::query_pairs(parts.uri.query().unwrap_or(""));
    let r = handler(crate::ext::EndpointRequest {
        method: parts.method.clone(),
        vars,
        query,
        headers: parts.headers.clone(),
        body,
        identity: who,
        state: crate::State::new(sh.clone()),
    })
    .await;
    with_cors(sh, &parts.headers, r.map(Body::from))
}

fn with_cors(sh: &Shared, req: &HeaderMap, mut r: Response) -> Response {
    let hub = sh.lock();
    web::cors_headers(&hub.engine, req, r.headers_mut());
    r
}

/// Reads a request body under the cap (never more than `--max-body` bytes buffered) and the
/// deadline (a client trickling bytes cannot hold a task forever). The error says why it could
/// not be read; the core answers it.
async fn read_body(
    sh: &Arc<Shared>,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Bytes, stateline_core::Error> {
    let max = sh.limits.max_body;
    if web::declares_too_large(&parts.headers, max) {
        return Err(stateline_core::Error::TooLarge(max));
    }
    // Most bodies are whole in the connection's buffer when the request is handed over (or
    // there is none): those are taken as they are, without the collector, its copy and its
    // deadline timer, which were 4% of a small write's instructions.
    let mut body = body;
    let mut first = Bytes::new();
    if axum::body::HttpBody::is_end_stream(&body) {
        return Ok(first);
    }
    match std::pin::pin!(body.frame()).now_or_never() {
        None => {}
        Some(None) => return Ok(first),
        Some(Some(Err(_))) => return Err(stateline_core::Error::BodyUnreadable),
        Some(Some(Ok(frame))) => {
            // A trailers frame carries no data: the body goes on (or ends) after it.
            first = frame.into_data().unwrap_or_default();
            if first.len() > max {
                return Err(stateline_core::Error::TooLarge(max));
            }
            if axum::body::HttpBody::is_end_stream(&body) {
                return Ok(first);
            }
        }
    }
    let rest = Limited::new(body, max - first.len()).collect();
    let read = tokio::time::timeout(sh.limits.deadline, rest).await;
    match read {
        Err(_) => Err(stateline_core::Error::Deadline),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(stateline_core::Error::TooLarge(max))
        }
        Ok(Err(_)) => Err(stateline_core::Error::BodyUnreadable),
        Ok(Ok(c)) if first.is_empty() => Ok(c.to_bytes()),
        Ok(Ok(c)) => {
            let rest = c.to_bytes();
            let mut whole = bytes::BytesMut::with_capacity(first.len() + rest.len());
            whole.extend_from_slice(&first);
            whole.extend_from_slice(&rest);
            Ok(whole.freeze())
        }
    }
}

/// `GET /_backup`: a consistent snapshot of the store (one read transaction), as a redb file.
/// Off unless the server was started with `--backup-token`; the request must carry it.
async fn backup(sh: &Arc<Shared>, req: &Request<Bytes>) -> Response {
    let headers = req.headers();
    let Some(disk) = sh.disk.get().cloned() else {
        // The front door answered 409 already when there is no store; this cannot happen.
        return refused(
            sh,
            req,
            &stateline_core::Error::storage("there is no store"),
        );
    };
    // The copy reads the whole store: off the async threads. Each backup gets a temporary file
    // of its own (any number may run at once), streamed from disk, never held in memory; the
    // file is gone once the response body is dropped (at once on Unix, where it stays readable).
    let made = tokio::task::spawn_blocking(move || {
        let snap = disk.snapshot()?;
        let file = snap
            .file
            .try_clone()
            .map_err(|e| stateline_disk::DiskError::Io(e.to_string()))?;
        Ok::<_, stateline_disk::DiskError>((snap, file))
    })
    .await;
    match made {
        Ok(Ok((snap, file))) => {
            let (keys, len) = (snap.keys, snap.len);
            tracing::info!(keys, bytes = len, "backup served");
            let file = tokio::fs::File::from_std(file);
            let chunks = futures_util::stream::unfold(Some((file, snap)), |state| async move {
                use tokio::io::AsyncReadExt;
                let (mut file, snap) = state?;
                let mut buf = bytes::BytesMut::zeroed(64 << 10);
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(buf.freeze()), Some((file, snap))))
                    }
                    // The body fails: with its length announced, the client sees it cut short.
                    Err(e) => Some((Err(e), None)),
                }
            });
            let mut r = Response::new(Body::from_stream(chunks));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            r.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"stateline-backup.redb\""),
            );
            if let Ok(v) = HeaderValue::from_str(&keys.to_string()) {
                r.headers_mut().insert("x-keys", v);
            }
            with_cors(sh, headers, r)
        }
        // The snapshot could not be made (a failing disk, or its task died): 503 with why.
        Ok(Err(e)) => refused(sh, req, &stateline_core::Error::storage(&e.to_string())),
        Err(e) => refused(sh, req, &stateline_core::Error::storage(&e.to_string())),
    }
}

/// The client script and the UI (`stateline-assets`, embedded at build time), with CORS.
fn asset(sh: &Shared, req: &Request<Bytes>, path: &str, head: bool) -> Response {
    match stateline_assets::serve(path, head, req.headers()) {
        Some(r) => with_cors(sh, req.headers(), r.map(Body::from)),
        None => refused(sh, req, &stateline_core::Error::NoRoute),
    }
}

/// An SSE stream: headers at once, then the first frame (initial values or what was missed),
/// then one chunk per published frame, with keep-alive comments in between.
///
/// On a connection the accept loop serves (`conn` given), the stream leaves hyper once the head
/// is sent ([`crate::handoff`]) and its own task writes the chunks; embedded in another router,
/// hyper streams the body.
fn events(
    sh: &Arc<Shared>,
    req: &Request<Bytes>,
    sub: Subscription,
    who: stateline_core::Identity,
    conn: Option<&Arc<crate::listen::ConnHandoff>>,
) -> Response {
    let (mut reg, sink, rx) = sh.connect();
    let tick = sh.tick();
    let joined = {
        let mut hub = sh.lock();
        Session::open(&hub.engine, who, None, Limits::default()).and_then(|mut session| {
            let (pool, first) =
                hub.subscribe(&mut session, &sub, Encoding::Sse, sub.initial, &sink)?;
            if let Some(b) = first {
                sink.offer(b);
            }
            sh.hold_until_committed(&hub, &reg.ctl);
            Ok((pool, session, web::sse_headers(&hub.engine, req.headers())))
        })
    };
    let (pool, session, headers) = match joined {
        Ok(j) => j,
        Err(e) => {
            drop(reg);
            return refused(sh, req, &e);
        }
    };
    reg.pools.push(pool);
    drop(sink);
    let keepalive = sh.limits.sse_keepalive;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = SseStream {
        reg,
        rx,
        shutdown: sh.shutdown.clone(),
        ticker,
        // The stream ends when the token it was opened with expires: `EventSource`
        // reconnects, and must bring a fresh token.
        expires: crate::hub::deadline_at(tick, session.deadline()),
        hello: true,
    };
    // Only HTTP/1.1 answers with a chunked body, which the stream's task then continues; a HEAD
    // has no body to continue.
    let detach = conn
        .filter(|_| req.version() == http::Version::HTTP_11 && req.method() == http::Method::GET)
        .and_then(|c| c.arm());
    let mut r = match detach {
        Some((socket, body)) => {
            tokio::spawn(stream.run_detached(socket, sh.limits.write_timeout));
            Response::new(Body::new(body))
        }
        None => Response::new(Body::from_stream(futures_util::stream::unfold(
            stream,
            |mut s| async move {
                let b = s.next(std::future::pending()).await?;
                Some((Ok::<_, std::convert::Infallible>(b), s))
            },
        ))),
    };
    *r.headers_mut() = headers;
    r
}

/// The line that starts a chunk of `len` bytes: its size in hex and CRLF (at most 18 bytes).
fn chunk_head(len: usize) -> ([u8; 18], usize) {
    use std::io::Write as _;
    let mut head = [0u8; 18];
    let mut rest = &mut head[..];
    // 16 hex digits at most, and CRLF: it fits.
    let _ = write!(rest, "{len:x}\r\n");
    let n = 18 - rest.len();
    (head, n)
}

/// An open SSE stream: what it needs to find its next chunk.
struct SseStream {
    reg: crate::hub::Registration,
    rx: crate::hub::Queue,
    shutdown: tokio::sync::watch::Receiver<bool>,
    ticker: tokio::time::Interval,
    expires: Option<tokio::time::Instant>,
    /// Whether [`web::SSE_HELLO`] is still to be sent.
    hello: bool,
}

impl SseStream {
    /// The next chunk of the body, or `None` when the stream ends (shutdown, the subscriber
    /// lagged, its token expired, or `gone` completed: the client left).
    async fn next(&mut self, gone: impl std::future::Future<Output = ()>) -> Option<Bytes> {
        if std::mem::take(&mut self.hello) {
            return Some(Bytes::from_static(web::SSE_HELLO));
        }
        tokio::pin!(gone);
        loop {
            // A first frame that showed a write since rolled back is never sent: the stream
            // ends and `EventSource` reconnects.
            let ctl = &self.reg.ctl;
            if *self.shutdown.borrow() || ctl.is_lagged() || ctl.hold_failed() {
                return None;
            }
            return tokio::select! {
                _ = ctl.wake.notified() => None,
                _ = self.shutdown.changed() => None,
                _ = crate::hub::until(self.expires) => None,
                _ = &mut gone => None,
                // Held: the first frame waits for the commit of the writes it shows.
                _ = ctl.released.notified(), if ctl.is_held() => continue,
                m = self.rx.recv(), if !ctl.is_held() => m.map(|(b, _)| b),
                _ = self.ticker.tick() => Some(Bytes::from_static(web::SSE_KEEPALIVE)),
            };
        }
    }

    /// The stream after it left hyper: waits for the socket, then writes every chunk of the
    /// response itself (HTTP/1.1 chunked encoding, as hyper did), and the last chunk when the
    /// stream ends. It is dropped without it when the client closes, a write fails or takes
    /// longer than `write_timeout`, or the stream must end while a write is stuck (the
    /// subscriber lagged, or the server shuts down).
    async fn run_detached(
        mut self,
        socket: tokio::sync::oneshot::Receiver<crate::listen::Socket>,
        write_timeout: std::time::Duration,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // No socket: hyper gave up on the connection before the head was sent. A client that
        // does not even read the head is let go like one that stops reading later: when the
        // stream lags or the server shuts down (hyper then drops the socket).
        let mut io = tokio::select! {
            s = socket => match s {
                Ok(io) => io,
                Err(_) => return,
            },
            _ = self.reg.ctl.wake.notified() => return,
            _ = self.shutdown.wait_for(|s| *s) => return,
        };
        loop {
            // The client sends nothing on an SSE connection; end-of-file means it left. Bytes
            // it sends anyway are read and dropped (a request pipelined behind the stream would
            // never be answered).
            let gone = async {
                let mut scratch = [0u8; 64];
                while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {}
            };
            let Some(b) = self.next(gone).await else {
                break;
            };
            let (head, n) = chunk_head(b.len());
            let mut chunk = bytes::Buf::chain(bytes::Buf::chain(&head[..n], b), &b"\r\n"[..]);
            let written = tokio::select! {
                r = tokio::time::timeout(write_timeout, io.write_all_buf(&mut chunk)) => {
                    matches!(r, Ok(Ok(())))
                }
                _ = self.reg.ctl.wake.notified() => false,
                _ = self.shutdown.wait_for(|s| *s) => false,
            };
            if !written {
                return;
            }
        }
        let end = async {
            io.write_all(b"0\r\n\r\n").await?;
            io.shutdown().await
        };
        let _ =
            tokio::time::timeout(write_timeout.min(std::time::Duration::from_secs(5)), end).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_heads_are_hex_sizes() {
        for (len, want) in [
            (0, "0\r\n"),
            (5, "5\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (255, "ff\r\n"),
            (65_536, "10000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let (head, n) = chunk_head(len);
            assert_eq!(std::str::from_utf8(&head[..n]).unwrap(), want);
            assert_eq!(format!("{len:x}\r\n"), want);
        }
    }

    /// Every request's future is moved whole into its connection's slot (a copy of its size per
    /// request): the rare paths (cluster writes, upgrades, backups, custom endpoints) are boxed
    /// so that they do not make every plain request's future as large as theirs (4.9 KB before).
    #[test]
    fn a_requests_future_stays_small() {
        let args = crate::ServeArgs::memory();
        let clocks = crate::hub::Clocks::new();
        let engine = stateline_core::Engine::new(
            clocks.tick(),
            args.core_config(),
            stateline_core::Filters::new(),
        );
        let sh = Shared::new(
            engine,
            clocks,
            crate::hub::Limits::from_args(&args),
            tokio::sync::watch::channel(false).1,
        );
        let req = Request::new(Bytes::new());
        let ext = crate::ext::Extensions::default();
        let door = size_of_val(&front_door(&sh, &req, &ext, None));
        assert!(door <= 1024, "front_door's future is {door} bytes");
        let whole = size_of_val(&serve_on(sh.clone(), Request::new(Body::empty()), None));
        assert!(whole <= 2560, "serve_on's future is {whole} bytes");
    }
}

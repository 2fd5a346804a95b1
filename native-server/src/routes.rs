//! Plain HTTP, `GET /` and the embedded files (client script, UI), and Server-Sent Events.
//!
//! Owns reading request bodies under the size cap and the deadline, handing them to the core's
//! HTTP function, and streaming SSE frames from a connection's queue. What a route means is the
//! core's business (`stateline_core::http`); this module only moves bytes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use stateline_core::http::{self as core_http, Kind, Subscription};
use stateline_core::Encoding;

use std::sync::atomic::Ordering;

use crate::hub::Shared;
use crate::ws;

/// The one handler (as an axum fallback, for [`crate::router`]).
pub async fn entry(State(sh): State<Arc<Shared>>, req: Request<Body>) -> Response {
    serve_request(sh, req).await
}

/// Serves one request: asks the core what it is and who asks, then answers it.
pub async fn serve_request(sh: Arc<Shared>, req: Request<Body>) -> Response {
    let started = std::time::Instant::now();
    sh.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if path == "/_backup" {
        // Its own token (`--backup-token`), not a JWT: the route is outside the rules.
        return backup(&sh, req.headers()).await;
    }
    if (method == http::Method::GET || method == http::Method::HEAD)
        && (path == "/_client.js" || path.starts_with("/_ui/"))
    {
        return asset(&sh, req.headers(), &path, method == http::Method::HEAD);
    }
    if path == "/_metrics" && (method == http::Method::GET || method == http::Method::HEAD) {
        return metrics(&sh, req.headers());
    }
    if let Some(why) = sh.cluster.get().and_then(|c| c.not_ready()) {
        // Catching up with the cluster at start: nothing this node would answer is current yet.
        if path == "/_health" {
            return unhealthy(&sh, req.headers(), "starting", &why);
        }
        return cluster_failed(&sh, req.headers(), &path, &why);
    }
    let tick = sh.tick();
    // Identify once; the subscription checks run before any upgrade, so a refused WebSocket or
    // SSE request gets its 401/403 as an HTTP answer.
    let (kind, who, ext) = {
        let mut hub = sh.lock();
        let who = hub.engine.identify(tick, core_http::token(&req).as_deref());
        let kind = match core_http::classify(&hub.engine, &req) {
            Ok(k @ (Kind::Subscribe(_) | Kind::Events(_))) => {
                let (Kind::Subscribe(sub) | Kind::Events(sub)) = &k else {
                    unreachable!("matched above")
                };
                core_http::authorize_subscription(&mut hub.engine, &req, sub, &who).map(|_| k)
            }
            Ok(Kind::Mux) => {
                core_http::authorize_connection(&mut hub.engine, &req, &who).map(|_| Kind::Mux)
            }
            other => other,
        };
        hub.log_denials();
        (kind, who, hub.ext.clone())
    };
    let audit = ext.audit(&crate::ext::AuditEvent {
        method: &method,
        path: &path,
        headers: req.headers(),
        identity: &who,
    });
    if let Err(why) = audit {
        tracing::warn!(%method, %path, reason = %why, "refused by the audit hook");
        return refused_by_audit(&sh, req.headers(), &path, &why);
    }
    if let Some((vars, handler)) = ext.route(&method, &path) {
        return match handler {
            Ok(h) => endpoint(&sh, req, vars, h, who).await,
            Err(status) => with_cors(
                &sh,
                req.headers(),
                text(status, "method not allowed for this endpoint\n"),
            ),
        };
    }
    if path == "/"
        && req.uri().query().is_some_and(|q| {
            core_http::query_pairs(q)
                .iter()
                .any(|(k, v)| k == "api" && v == "endpoints")
        })
    {
        let mut r = Response::new(Body::from(ext.describe().to_string()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return with_cors(&sh, req.headers(), r);
    }
    let resp = match kind {
        Err(r) => r.map(Body::from),
        Ok(Kind::Http) => plain(&sh, req, &who).await,
        Ok(Kind::Root { .. }) => root(&sh, req.headers(), method == http::Method::HEAD),
        Ok(Kind::Events(sub)) => events(&sh, req.headers(), sub, who),
        Ok(k @ (Kind::Clock | Kind::Mux | Kind::Subscribe(_))) => {
            ws::upgrade(sh, req, k, who).await
        }
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), us = started.elapsed().as_micros() as u64, "request");
    resp
}

/// `GET /_metrics`: Prometheus text. The engine's counters (writes, refusals, denials by
/// reason, subscriptions, pools) and the adapter's (requests, open connections).
fn metrics(sh: &Shared, headers: &HeaderMap) -> Response {
    let mut out = String::new();
    out.push_str(&format!(
        "# HELP stateline_requests_total HTTP requests received (every route).\n# TYPE stateline_requests_total counter\nstateline_requests_total {}\n",
        sh.requests.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "# HELP stateline_connections Open WebSocket and SSE connections.\n# TYPE stateline_connections gauge\nstateline_connections {}\n",
        sh.live()
    ));
    {
        let hub = sh.lock();
        out.push_str(&core_http::metrics(&hub.engine));
    }
    // The process's resident memory (Linux: /proc/self/statm, in pages of 4 KiB), as the
    // Prometheus client libraries name it.
    if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
    {
        out.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
            pages * 4096
        ));
    }
    let mut r = Response::new(Body::from(out));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    with_cors(sh, headers, r)
}

fn refused_by_audit(sh: &Shared, headers: &HeaderMap, path: &str, why: &str) -> Response {
    let detail = format!("ooo: request is not authorized: {why}");
    let mut r = if path.starts_with("/_") {
        problem(
            sh,
            headers,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &detail,
        )
    } else {
        with_cors(
            sh,
            headers,
            text_owned(StatusCode::UNAUTHORIZED, format!("{detail}\n")),
        )
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        core_http::www_authenticate(why, headers.contains_key(header::AUTHORIZATION)),
    );
    r
}

fn text_owned(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Reads the body (under the cap and the deadline) and runs a custom endpoint's handler.
async fn endpoint(
    sh: &Arc<Shared>,
    req: Request<Body>,
    vars: std::collections::BTreeMap<String, String>,
    handler: crate::ext::Handler,
    who: stateline_core::Identity,
) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match read_body(sh, &parts, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let query = core_http::query_pairs(parts.uri.query().unwrap_or(""));
    let r = handler(crate::ext::EndpointRequest {
        method: parts.method.clone(),
        vars,
        query,
        headers: parts.headers.clone(),
        body: bytes,
        identity: who,
        state: crate::State::new(sh.clone()),
    })
    .await;
    with_cors(sh, &parts.headers, r.map(Body::from))
}

fn text(status: StatusCode, body: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn with_cors(sh: &Shared, req: &HeaderMap, mut r: Response) -> Response {
    let hub = sh.lock();
    core_http::cors_headers(&hub.engine, req, r.headers_mut());
    r
}

fn too_large(sh: &Shared, path: &str, req: &HeaderMap) -> Response {
    with_cors(
        sh,
        req,
        core_http::too_large(path, sh.limits.max_body).map(Body::from),
    )
}

// Reads a request body under the cap (never more than `--max-body` bytes buffered) and the
// deadline (a client trickling bytes cannot hold a task forever); the error is the answer.
async fn read_body(
    sh: &Arc<Shared>,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Bytes, Response> {
    let max = sh.limits.max_body;
    if core_http::declares_too_large(&parts.headers, max) {
        return Err(too_large(sh, parts.uri.path(), &parts.headers));
    }
    let read = tokio::time::timeout(sh.limits.deadline, Limited::new(body, max).collect()).await;
    match read {
        Err(_) => Err(with_cors(
            sh,
            &parts.headers,
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "ooo: server deadline reached\n",
            ),
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(too_large(sh, parts.uri.path(), &parts.headers))
        }
        Ok(Err(_)) => Err(with_cors(
            sh,
            &parts.headers,
            text(StatusCode::BAD_REQUEST, "could not read the request body\n"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// How many times an answer is computed again because the pending writes it saw were rolled
/// back (the store is failing while writes keep coming), before it is given up with 503.
const READ_ATTEMPTS: u32 = 4;

async fn plain(sh: &Arc<Shared>, req: Request<Body>, who: &stateline_core::Identity) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match read_body(sh, &parts, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req = Request::from_parts(parts, bytes);
    let health = req.uri().path() == "/_health";
    if let Some(cluster) = sh.cluster.get() {
        return clustered(sh, cluster, req, who, health).await;
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tick = sh.tick();
        let mut wake_timer = false;
        let (response, wait, wrote) = {
            let mut hub = sh.lock();
            if health {
                if let Some(why) = hub.storage_error().map(str::to_string) {
                    drop(hub);
                    return unhealthy(sh, req.headers(), "unavailable", &why);
                }
            }
            let out = core_http::handle_as(&mut hub.engine, tick, &req, who);
            hub.log_denials();
            let wrote = !out.changes.is_empty();
            if !wrote && !sh.pending(&hub) {
                // The common read: no write is pending, so what it saw is committed.
                (out.response, None, false)
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
            return response.map(Body::from);
        };
        // Acknowledge only once the write is on disk (at once in memory mode).
        match rx
            .await
            .unwrap_or_else(|_| Err("the commit was dropped".into()))
        {
            Ok(()) => return response.map(Body::from),
            Err(e) if wrote || attempt >= READ_ATTEMPTS => {
                return storage_failed(sh, req.headers(), req.uri().path(), &e)
            }
            // What the answer saw was rolled back: compute it again from what is left.
            Err(_) => continue,
        }
    }
}

/// A request in cluster mode: computed on this node's state, its writes ordered by JetStream
/// (`cluster::Cluster::write`), answered once this node applied them.
async fn clustered(
    sh: &Arc<Shared>,
    cluster: &crate::cluster::Cluster,
    req: Request<Bytes>,
    who: &stateline_core::Identity,
    health: bool,
) -> Response {
    if health {
        if let Some(why) = cluster.problem() {
            return unhealthy(sh, req.headers(), "unavailable", &why);
        }
    }
    let method = req.method().clone();
    let r = cluster
        .write(sh, |hub, tick| {
            let out = core_http::handle_as(&mut hub.engine, tick, &req, who);
            hub.log_denials();
            let stale = out.changes.is_empty()
                && core_http::refusal_may_be_stale(&method, out.response.status());
            crate::cluster::Step {
                answer: out.response,
                changes: out.changes,
                stale,
            }
        })
        .await;
    match r {
        Ok((mut response, seq)) => {
            if let Some(seq) = seq {
                core_http::restamp(&mut response, seq);
            }
            response.map(Body::from)
        }
        Err(e) => cluster_failed(sh, req.headers(), req.uri().path(), &e),
    }
}

/// 503 for a write the cluster did not take (NATS unreachable, no JetStream leader, too much
/// contention), with the reason as it was found.
fn cluster_failed(sh: &Shared, headers: &HeaderMap, path: &str, e: &str) -> Response {
    service_unavailable(sh, headers, path, e)
}

/// `GET /_health` while the store is failing (as etcd's health reports its NOSPACE alarm, until a
/// commit succeeds again) or a cluster node cannot serve: 503 with the reason.
fn unhealthy(sh: &Shared, headers: &HeaderMap, status: &str, why: &str) -> Response {
    let body = {
        let hub = sh.lock();
        serde_json::json!({
            "status": status,
            "reason": why,
            "keys": hub.engine.store().len(),
            "seq": format!("{:x}", hub.engine.store().last_seq()),
        })
    };
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    with_cors(sh, headers, r)
}

fn problem(
    sh: &Shared,
    headers: &HeaderMap,
    status: StatusCode,
    code: &str,
    detail: &str,
) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
    });
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    with_cors(sh, headers, r)
}

/// `GET /_backup`: a consistent snapshot of the store (one read transaction), as a redb file.
/// Off unless the server was started with `--backup-token`; the request must carry it.
async fn backup(sh: &Arc<Shared>, headers: &HeaderMap) -> Response {
    let Some(token) = sh.limits.backup_token.as_deref() else {
        return problem(
            sh,
            headers,
            StatusCode::NOT_FOUND,
            "backup-disabled",
            "backups are off; start the server with --backup-token",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(token) {
        return problem(
            sh,
            headers,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "GET /_backup needs Authorization: Bearer <the --backup-token>",
        );
    }
    let Some(disk) = sh.disk.get().cloned() else {
        return problem(
            sh,
            headers,
            StatusCode::CONFLICT,
            "no-store",
            "this server runs with --memory: there is no store to back up",
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
        Ok(Err(e)) => {
            let status = if matches!(e, stateline_disk::DiskError::Unavailable(_)) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            problem(sh, headers, status, "storage", &e.to_string())
        }
        Err(e) => problem(
            sh,
            headers,
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            &e.to_string(),
        ),
    }
}

/// Why a write was not made durable, as clients and `/_health` say it:
/// `storage unavailable: <what failed>`.
pub(crate) fn unavailable(e: &str) -> String {
    if e.starts_with("storage unavailable") {
        e.to_string()
    } else {
        format!("storage unavailable: {e}")
    }
}

/// 503 for a write that could not be made durable (and was rolled back), or an answer whose view
/// kept being rolled back: the store is failing (`/_health` says why) and recovers by itself.
fn storage_failed(sh: &Shared, headers: &HeaderMap, path: &str, e: &str) -> Response {
    let detail = format!("{}; nothing was changed", unavailable(e));
    service_unavailable(sh, headers, path, &detail)
}

// 503 with `detail`: a problem document on the `/_` routes, plain text on keys.
fn service_unavailable(sh: &Shared, headers: &HeaderMap, path: &str, detail: &str) -> Response {
    let code = stateline_core::Error::Storage(String::new()).code();
    if path.starts_with("/_") {
        return problem(sh, headers, StatusCode::SERVICE_UNAVAILABLE, code, detail);
    }
    let mut r = Response::new(Body::from(format!("{detail}\n")));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    with_cors(sh, headers, r)
}

/// The client script and the UI (`stateline-assets`, embedded at build time), with CORS.
fn asset(sh: &Shared, req: &HeaderMap, path: &str, head: bool) -> Response {
    match stateline_assets::serve(path, head, req) {
        Some(r) => with_cors(sh, req, r.map(Body::from)),
        None => with_cors(sh, req, text(StatusCode::NOT_FOUND, "no such file\n")),
    }
}

/// `GET /`: the UI for browsers, the client script for anything else (AtomKV hosts its library
/// at `/`, so `<script src="http://host/">` works).
fn root(sh: &Shared, req: &HeaderMap, head: bool) -> Response {
    asset(sh, req, "/", head)
}

/// An SSE stream: headers at once, then the first frame (initial values or what was missed),
/// then one chunk per published frame, with keep-alive comments in between.
fn events(
    sh: &Arc<Shared>,
    req: &HeaderMap,
    sub: Subscription,
    who: stateline_core::Identity,
) -> Response {
    let (mut reg, sink, rx) = sh.connect();
    let joined = {
        let mut hub = sh.lock();
        hub.join(
            sub.pattern.clone(),
            Encoding::Sse,
            sub.version,
            sub.initial,
            &sink,
            &who,
        )
        .map(|(id, first)| {
            if let Some(b) = first {
                sink.offer(b);
            }
            sh.hold_until_committed(&hub, &reg.ctl);
            id
        })
    };
    let id = match joined {
        Ok(id) => id,
        Err(e) => {
            drop(reg);
            let mut r = Response::new(Body::from(format!("{e}\n")));
            *r.status_mut() = e.status();
            return with_cors(sh, req, r);
        }
    };
    reg.pools.insert(sub.pattern, id);
    drop(sink);
    let keepalive = sh.limits.sse_keepalive;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The stream ends when the token it was opened with expires: `EventSource` reconnects,
    // and must bring a fresh token.
    let expires = sh.token_deadline(&who);
    let state = (
        reg,
        rx,
        sh.shutdown.clone(),
        ticker,
        Some(Bytes::from_static(b":stateline\n\n")),
    );
    let stream = futures_util::stream::unfold(
        state,
        move |(reg, mut rx, mut shutdown, mut ticker, hello)| async move {
            if let Some(h) = hello {
                return Some((
                    Ok::<_, std::convert::Infallible>(h),
                    (reg, rx, shutdown, ticker, None),
                ));
            }
            let next = loop {
                // A first frame that showed a write since rolled back is never sent: the stream
                // ends and `EventSource` reconnects.
                if *shutdown.borrow() || reg.ctl.is_lagged() || reg.ctl.hold_failed() {
                    return None;
                }
                break tokio::select! {
                    _ = reg.ctl.wake.notified() => None,
                    _ = shutdown.changed() => None,
                    _ = crate::hub::until(expires) => None,
                    // Held: the first frame waits for the commit of the writes it shows.
                    _ = reg.ctl.released.notified(), if reg.ctl.is_held() => continue,
                    m = rx.recv(), if !reg.ctl.is_held() => m.map(|(b, _)| b),
                    _ = ticker.tick() => Some(Bytes::from_static(b":keep-alive\n\n")),
                };
            };
            next.map(|b| (Ok(b), (reg, rx, shutdown, ticker, None)))
        },
    );
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_cors(sh, req, r).into_response()
}

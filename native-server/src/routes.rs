//! Plain HTTP, `GET /` (the UI placeholder for HTML, else the client script), and Server-Sent
//! Events.
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

use crate::hub::Shared;
use crate::ws;

/// The one handler: asks the core what the request is, then serves it.
pub async fn entry(State(sh): State<Arc<Shared>>, req: Request<Body>) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if path == "/_backup" {
        return backup(&sh, req.headers()).await;
    }
    if path == "/_client.js" && (method == http::Method::GET || method == http::Method::HEAD) {
        return with_cors(&sh, req.headers(), crate::script::response(req.headers()));
    }
    let kind = {
        let hub = sh.lock();
        core_http::classify(&hub.engine, &req)
    };
    let resp = match kind {
        Err(r) => r.map(Body::from),
        Ok(Kind::Http) => plain(&sh, req).await,
        Ok(Kind::Root { wants_html }) => root(&sh, req.headers(), wants_html),
        Ok(Kind::Events(sub)) => events(&sh, req.headers(), sub),
        Ok(k @ (Kind::Clock | Kind::Mux | Kind::Subscribe(_))) => ws::upgrade(sh, req, k).await,
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), us = started.elapsed().as_micros() as u64, "request");
    resp
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
    let r = if path.starts_with("/_") {
        let mut r = Response::new(Body::from(
            r#"{"type":"about:blank","title":"Payload Too Large","status":413,"code":"too-large","detail":"Request Entity Too Large"}"#,
        ));
        *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        r
    } else {
        // ooo's (Go http.Error) text.
        text(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large\n")
    };
    with_cors(sh, req, r)
}

async fn plain(sh: &Arc<Shared>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let max = sh.limits.max_body;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(sh, parts.uri.path(), &parts.headers);
    }
    // The body is read under the cap (never more than `max` bytes buffered) and the deadline (a
    // client trickling bytes cannot hold a task forever).
    let read = tokio::time::timeout(sh.limits.deadline, Limited::new(body, max).collect()).await;
    let bytes: Bytes = match read {
        Err(_) => {
            return with_cors(
                sh,
                &parts.headers,
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ooo: server deadline reached\n",
                ),
            )
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return too_large(sh, parts.uri.path(), &parts.headers)
        }
        Ok(Err(_)) => {
            return with_cors(
                sh,
                &parts.headers,
                text(StatusCode::BAD_REQUEST, "could not read the request body\n"),
            )
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    let req = Request::from_parts(parts, bytes);
    let tick = sh.tick();
    let (response, durable) = {
        let mut hub = sh.lock();
        let out = core_http::handle(&mut hub.engine, tick, &req);
        if out.changes.is_empty() {
            (out.response, None)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            sh.persist(
                &mut hub,
                out.changes,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            (out.response, Some(rx))
        }
    };
    if let Some(rx) = durable {
        // Acknowledge only once the write is on disk (at once in memory mode).
        let committed = rx
            .await
            .unwrap_or_else(|_| Err("the commit was dropped".into()));
        sh.ttl_wake.notify_one();
        if let Err(e) = committed {
            return storage_failed(sh, req.headers(), req.uri().path(), &e);
        }
    }
    response.map(Body::from)
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
    let tmp = disk
        .path()
        .with_extension(format!("backup-{}", std::process::id()));
    // The copy reads the whole file: off the async threads.
    let made = tokio::task::spawn_blocking(move || {
        let keys = disk.backup(&tmp)?;
        let bytes = std::fs::read(&tmp).map_err(|e| stateline_disk::DiskError::Io(e.to_string()));
        let _ = std::fs::remove_file(&tmp);
        bytes.map(|b| (keys, b))
    })
    .await;
    match made {
        Ok(Ok((keys, bytes))) => {
            tracing::info!(keys, bytes = bytes.len(), "backup served");
            let mut r = Response::new(Body::from(bytes));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"stateline-backup.redb\""),
            );
            if let Ok(v) = HeaderValue::from_str(&keys.to_string()) {
                r.headers_mut().insert("x-keys", v);
            }
            with_cors(sh, headers, r)
        }
        Ok(Err(e)) => problem(
            sh,
            headers,
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            &e.to_string(),
        ),
        Err(e) => problem(
            sh,
            headers,
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            &e.to_string(),
        ),
    }
}

/// 500 for a write that could not be made durable (and was rolled back).
fn storage_failed(sh: &Shared, headers: &HeaderMap, path: &str, e: &str) -> Response {
    let err = stateline_core::Error::Storage(e.to_string());
    let detail = format!("{err}; nothing was changed");
    if path.starts_with("/_") {
        return problem(
            sh,
            headers,
            StatusCode::INTERNAL_SERVER_ERROR,
            err.code(),
            &detail,
        );
    }
    let mut r = Response::new(Body::from(format!("{detail}\n")));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    with_cors(sh, headers, r)
}

const PLACEHOLDER_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Stateline</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>Stateline is running</h1>
<p>The web UI is not built yet: it comes with issue 8 (“The web UI: browse, edit and watch the data live”).</p>
<p>Meanwhile the API works: <code>POST /key</code> with a JSON body, <code>GET /key</code>,
<code>GET /?api=keys</code>, WebSocket <code>ws://host/key</code>, SSE with
<code>Accept: text/event-stream</code>, and the multiplexed socket at <code>/_ws</code>.
See README.md and docs/protocol.md.</p>
</body></html>
"#;

fn root(sh: &Shared, req: &HeaderMap, wants_html: bool) -> Response {
    if !wants_html {
        // AtomKV hosts its library at `/`: a `<script src="http://host/">` gets the client.
        return with_cors(sh, req, crate::script::response(req));
    }
    let mut r = Response::new(Body::from(PLACEHOLDER_HTML));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_cors(sh, req, r)
}

/// An SSE stream: headers at once, then the first frame (initial values or what was missed),
/// then one chunk per published frame, with keep-alive comments in between.
fn events(sh: &Arc<Shared>, req: &HeaderMap, sub: Subscription) -> Response {
    let (mut reg, sink, rx) = sh.connect();
    let joined = {
        let mut hub = sh.lock();
        hub.join(
            sub.pattern.clone(),
            Encoding::Sse,
            sub.version,
            sub.initial,
            &sink,
        )
        .map(|(id, first)| {
            if let Some(b) = first {
                sink.offer(b);
            }
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
    let state = (
        reg,
        rx,
        sh.shutdown.clone(),
        ticker,
        Some(Bytes::from_static(b":stateline\n\n")),
    );
    let stream = futures_util::stream::unfold(
        state,
        |(reg, mut rx, mut shutdown, mut ticker, hello)| async move {
            if let Some(h) = hello {
                return Some((
                    Ok::<_, std::convert::Infallible>(h),
                    (reg, rx, shutdown, ticker, None),
                ));
            }
            if *shutdown.borrow() || reg.ctl.is_lagged() {
                return None;
            }
            let next = tokio::select! {
                _ = reg.ctl.wake.notified() => None,
                _ = shutdown.changed() => None,
                m = rx.recv() => m,
                _ = ticker.tick() => Some(Bytes::from_static(b":keep-alive\n\n")),
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

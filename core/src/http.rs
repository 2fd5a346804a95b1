//! HTTP semantics as a pure function: request + tick → response + changes.
//!
//! Owns the routes of ooo (§1.4) and AtomKV (§2), the extended routes (`ETag`, `If-Match`,
//! `If-None-Match`, RFC 6902/7396 `PATCH`, counters, TTL, take, rename, health), their status
//! codes and error texts, and CORS. ooo's routes keep ooo's plain-text errors; the routes new in
//! Stateline answer with problem documents (`application/problem+json`). It also tells an
//! adapter what a request wants when it is not plain HTTP ([`classify`]: a WebSocket
//! subscription, the clock stream, `/_ws`, SSE, or the UI/client script at `/`). The adapters
//! (native server, edge worker) call exactly this; they own only sockets and disks.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::clock::Tick;
use crate::engine::{Applied, Cond, Engine, Op, Outcome, PatchKind};
use crate::error::Error;
use crate::filter::Need;
use crate::json;
use crate::key::{KeyError, Pattern};
use crate::meta;
use crate::rules::{Action as RuleAction, Identity};
use crate::store::{Change, Entry, Ttl};

/// The response to send and the changes to persist and publish (in that order) before sending it.
#[derive(Debug)]
pub struct HttpOutcome {
    /// The response.
    pub response: Response<Bytes>,
    /// Changes applied to memory, not yet published.
    pub changes: Vec<Change>,
}

/// A subscription asked for over HTTP (WebSocket upgrade or SSE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// What to watch.
    pub pattern: Pattern,
    /// The client's version, if it sent one it can resume from.
    pub version: Option<u64>,
    /// SSE: send the current values first (`?initial=1`).
    pub initial: bool,
}

/// What a request wants from the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A plain request: call [`handle`].
    Http,
    /// `GET /` without `?api=`: the UI for browsers (`wants_html`), the client script otherwise.
    Root {
        /// The `Accept` header prefers HTML.
        wants_html: bool,
    },
    /// WebSocket upgrade on `/`: ooo's clock stream.
    Clock,
    /// WebSocket upgrade on `/_ws`: the multiplexed protocol.
    Mux,
    /// WebSocket upgrade on a key, glob or subtree: ooo's per-path subscription.
    Subscribe(Subscription),
    /// `Accept: text/event-stream` on a key, glob or subtree: SSE.
    Events(Subscription),
}

/// Whether the request asks for a WebSocket (`Upgrade` compared case-insensitively, unlike ooo).
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
    })
}

/// Whether the request declares (`Content-Length`) a body larger than `max_body`: it is refused
/// with [`too_large`] before a byte of it is read.
pub fn declares_too_large(headers: &HeaderMap, max_body: usize) -> bool {
    header_str(headers, header::CONTENT_LENGTH)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max_body as u64)
}

/// The 413 for a body over the cap, as [`handle`] answers it: a problem document on Stateline's
/// `/_` routes, ooo's text elsewhere. Without CORS headers (the adapter adds its own), for an
/// adapter that refuses before it has the body or the engine.
pub fn too_large(path: &str, max_body: usize) -> Response<Bytes> {
    let e = Error::TooLarge(max_body);
    let status = e.status();
    let (ctype, body) = if path.starts_with("/_") {
        (PROBLEM, problem_body(&e))
    } else {
        (TEXT, Bytes::from(format!("{e}\n")))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// The answer to a connection beyond the server's connection limit (the adapter sends it and
/// closes): 503 with `Retry-After`, so a client backs off instead of waiting in a listen queue.
pub fn too_many_connections(retry_after_secs: u64) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from_static(
        b"too many connections: the server is at its connection limit, retry later\n",
    ));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Whether `Accept` lists `text/event-stream` (other types may be listed too, unlike AtomKV).
pub fn wants_events(headers: &HeaderMap) -> bool {
    header_str(headers, header::ACCEPT).is_some_and(|a| {
        a.split(',').any(|p| {
            p.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
    })
}

fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Decodes `application/x-www-form-urlencoded` query pairs.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_get<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("" | "1" | "true" | "yes"))
}

/// Parses a version as clients send it (lowercase hex, ooo's `?v=`). Anything else is no version.
pub fn parse_version(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// The bearer token a request carries: `Authorization: Bearer <t>`; on a WebSocket upgrade
/// `Sec-WebSocket-Protocol: bearer, <t>` (browsers cannot set headers on a WebSocket); on an SSE
/// request `?access_token=<t>` or `?token=<t>` (`EventSource` cannot set headers either).
pub fn token<B>(req: &Request<B>) -> Option<String> {
    let h = req.headers();
    if let Some(a) = header_str(h, header::AUTHORIZATION) {
        let (scheme, t) = a.trim().split_once(' ').unwrap_or((a, ""));
        if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() {
            return Some(t.trim().to_string());
        }
    }
    if is_websocket(h) {
        let offered: Vec<&str> = h
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if let Some(i) = offered
            .iter()
            .position(|p| p.eq_ignore_ascii_case("bearer"))
        {
            if let Some(t) = offered.get(i + 1).filter(|t| !t.is_empty()) {
                return Some(t.to_string());
            }
        }
    }
    if opens_event_stream(req) {
        let q = query_pairs(req.uri().query().unwrap_or(""));
        if let Some(t) = query_get(&q, "access_token").or_else(|| query_get(&q, "token")) {
            if !t.is_empty() {
                return Some(t.to_string());
            }
        }
    }
    None
}

/// Whether the request opens an SSE stream (what [`classify`] calls [`Kind::Events`]): a `GET`
/// whose `Accept` lists `text/event-stream`, not a WebSocket, on a key, glob or subtree. Only
/// these may carry their token in the URL (`EventSource` cannot set headers; a URL ends up in
/// logs and histories, so nothing else may).
fn opens_event_stream<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    req.method() == Method::GET
        && wants_events(req.headers())
        && !is_websocket(req.headers())
        && !(path.starts_with("/_") && path != "/")
        && !(path == "/"
            && query_get(&query_pairs(req.uri().query().unwrap_or("")), "api").is_some())
}

/// A token in the URL (`?access_token=`, `?token=`) where it is not honoured: refused rather
/// than silently ignored, so a client learns at once that it must use `Authorization`.
fn url_token_misused<B>(req: &Request<B>) -> Option<Error> {
    let q = req.uri().query()?;
    let named = query_pairs(q)
        .iter()
        .any(|(k, _)| k == "access_token" || k == "token");
    (named && !opens_event_stream(req)).then(|| {
        Error::BadRequest(
            "a token in the URL (?access_token=, ?token=) is accepted only on a GET that opens an \
             SSE stream (Accept: text/event-stream); send it as Authorization: Bearer <token> \
             (on a WebSocket: the subprotocols bearer, <token>)"
                .into(),
        )
    })
}

/// The host name of a `Host` value or of an origin's authority (`name:port` → `name`,
/// `[::1]:80` → `[::1]`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Hosts every server answers to as itself (loopback), besides [`Config::allowed_hosts`].
///
/// [`Config::allowed_hosts`]: crate::engine::Config::allowed_hosts
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Whether `host` (a `Host` header) names this server: a loopback name or one of the configured
/// hosts (`name` matches on any port, `name:port` on that port only).
fn host_served(engine: &Engine, host: &str) -> bool {
    let name = host_name(host);
    LOOPBACK_HOSTS.iter().any(|h| h.eq_ignore_ascii_case(name))
        || engine
            .config()
            .allowed_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
}

/// The origin check, for every request and WebSocket handshake, before anything runs: a request
/// with an `Origin` header is refused (403) unless `--allow-origin` allows any (`*`), lists that
/// origin, or the origin is the request's own `Host` **and** that host is one this server serves
/// (its loopback names and `--allow-host`), so a DNS name rebound to this server does not pass
/// as same-origin. CORS alone only hides answers from a page; this keeps a disallowed page's
/// requests from running at all.
pub fn origin_refused(engine: &Engine, h: &HeaderMap) -> Option<Error> {
    let origin = header_str(h, header::ORIGIN)?;
    let allow = &engine.config().cors_origins;
    if allow.is_empty()
        || allow
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return None;
    }
    let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
    let same = header_str(h, header::HOST)
        .is_some_and(|host| host.eq_ignore_ascii_case(authority) && host_served(engine, host));
    if same {
        return None;
    }
    Some(Error::Forbidden(format!(
        "origin {origin} is not allowed (see --allow-origin, --allow-host)"
    )))
}

/// The answer to a request refused before it runs (origin, token in the URL): a problem
/// document on the `/_` routes, ooo's plain text elsewhere.
fn early_refusal<B>(engine: &Engine, req: &Request<B>) -> Option<Response<Bytes>> {
    let e = origin_refused(engine, req.headers()).or_else(|| url_token_misused(req))?;
    let path = req.uri().path();
    Some(if path.starts_with("/_") {
        problem(engine, req.headers(), &e)
    } else {
        plain_error(engine, req.headers(), &e, req.method().as_str(), "")
    })
}

/// Checks, before a WebSocket upgrade or an SSE response, that `who` may open this subscription
/// (a key it may read; any glob or subtree, whose frames are then filtered to what it may
/// read). The error is the response to send (401 with `WWW-Authenticate`, or 403).
// The error is the response itself, built once and sent as is; boxing it buys nothing.
#[allow(clippy::result_large_err)]
pub fn authorize_subscription<B>(
    engine: &mut Engine,
    req: &Request<B>,
    sub: &Subscription,
    who: &Identity,
) -> Result<(), Response<Bytes>> {
    engine
        .audience(&sub.pattern, who)
        .map(|_| ())
        .map_err(|e| plain_error(engine, req.headers(), &e, "GET", req.uri().path()))
}

/// Checks a connection that is not about one key (`/_ws`): only a refused token is refused
/// here (401); each subscription and operation is checked on its own later.
#[allow(clippy::result_large_err)]
pub fn authorize_connection<B>(
    engine: &mut Engine,
    req: &Request<B>,
    who: &Identity,
) -> Result<(), Response<Bytes>> {
    engine
        .authorize_caller(req.uri().path(), who)
        .map_err(|e| problem(engine, req.headers(), &e))
}

/// Tells the adapter what a request wants. An invalid subscription path is answered with the
/// error response to send.
// The error is the response itself, built once and sent as is; boxing it buys nothing.
#[allow(clippy::result_large_err)]
pub fn classify<B>(engine: &Engine, req: &Request<B>) -> Result<Kind, Response<Bytes>> {
    if let Some(r) = early_refusal(engine, req) {
        return Err(r);
    }
    let path = match crate::key::decode_http_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => return Err(plain_error(engine, req.headers(), &e.into(), "GET", "")),
    };
    let path = &*path;
    let q = query_pairs(req.uri().query().unwrap_or(""));
    let ws = is_websocket(req.headers());
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    if !get {
        return Ok(Kind::Http);
    }
    if path == "/" {
        if ws {
            return Ok(Kind::Clock);
        }
        if query_get(&q, "api").is_some() {
            return Ok(Kind::Http);
        }
        if !wants_events(req.headers()) {
            let html =
                header_str(req.headers(), header::ACCEPT).is_some_and(|a| a.contains("text/html"));
            return Ok(Kind::Root { wants_html: html });
        }
    }
    if path == "/_ws" && ws {
        return Ok(Kind::Mux);
    }
    let sse = wants_events(req.headers());
    if !(ws || sse) || (path.starts_with("/_") && path != "/") {
        return Ok(Kind::Http);
    }
    let err = |e: Error| Err(plain_error(engine, req.headers(), &e, "GET", path));
    let pattern = match Pattern::from_http_path(path, true) {
        Ok(p) => p,
        Err(e) => return err(e.into()),
    };
    if let Err(e) = engine.filters().check(Need::Read, &pattern.as_str()) {
        return err(e.into());
    }
    let mut version = query_get(&q, "v").and_then(parse_version);
    if sse {
        if let Some(id) =
            header_str(req.headers(), "last-event-id").filter(|i| !i.trim().is_empty())
        {
            match resume_version(engine, id) {
                Some(v) => version = Some(v),
                // Resuming from an id this server never sent would silently start over; say so.
                None => {
                    return err(Error::BadRequest(format!(
                        "Last-Event-ID {id:?} is not an event id of this server (they look like /<key>:<revision>:<version>); reconnect without it to start from the current values"
                    )))
                }
            }
        }
        let initial = truthy(query_get(&q, "initial"));
        return Ok(Kind::Events(Subscription {
            pattern,
            version,
            initial,
        }));
    }
    Ok(Kind::Subscribe(Subscription {
        pattern,
        version,
        initial: true,
    }))
}

/// The version an SSE stream resumes from, given its `Last-Event-ID`. Ids are
/// `/<key>:<revision>:<version>` (the version: the store sequence number of that change, in hex;
/// AtomKV's clients split on `:` and read the first two fields only), unique and ordered across
/// the whole stream. An old-style `/<key>:<revision>` is looked up in the log (a key's revisions
/// start again after a delete, so such an id may be ambiguous; one the log no longer holds
/// resumes from nothing: the current values). `None` for text that is no id of ours.
fn resume_version(engine: &Engine, id: &str) -> Option<u64> {
    let mut parts = id.trim().rsplitn(3, ':');
    let (last, mid, first) = (parts.next(), parts.next(), parts.next());
    match (first, mid, last) {
        (Some(_), Some(rev), Some(v)) if rev.parse::<u64>().is_ok() => parse_version(v),
        (None, Some(k), Some(rev)) if k.starts_with('/') => {
            let r: u64 = rev.parse().ok()?;
            Some(engine.log().find(&k[1..], r).unwrap_or(0))
        }
        _ => None,
    }
}

/// Headers every response carries: AtomKV's CORS set, narrowed to the configured origins.
pub fn cors_headers(engine: &Engine, req: &HeaderMap, out: &mut HeaderMap) {
    cors(&engine.config().cors_origins, req, out)
}

/// [`cors_headers`] for a host without an engine at hand (the edge's worker): `origins` as in
/// [`Config::cors_origins`](crate::engine::Config::cors_origins).
pub fn cors(origins: &[String], req: &HeaderMap, out: &mut HeaderMap) {
    // Static values, parsed once: every response carries these (AtomKV's contract).
    let allow = if origins.iter().any(|o| o == "*") {
        Some(HeaderValue::from_static("*"))
    } else {
        header_str(req, header::ORIGIN)
            .filter(|o| origins.iter().any(|a| a.eq_ignore_ascii_case(o)))
            .and_then(|o| HeaderValue::from_str(o).ok())
    };
    if let Some(a) = allow {
        if a != "*" {
            out.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, a);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("*"),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("*"),
        );
        out.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("X-Revision, ETag, X-Version"),
        );
    }
}

/// The comment an SSE stream starts with: the headers and a first byte go out at once, so
/// proxies and `EventSource` see the stream open before the first event.
pub const SSE_HELLO: &[u8] = b":stateline\n\n";

/// The comment an idle SSE stream sends at the keep-alive interval, so proxies do not close it.
pub const SSE_KEEPALIVE: &[u8] = b":keep-alive\n\n";

/// The headers of an SSE response: the event-stream type, no caching, no proxy buffering
/// (nginx's `X-Accel-Buffering`), and CORS.
pub fn sse_headers(engine: &Engine, req: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    cors_headers(engine, req, &mut h);
    h
}

/// Whether a WebSocket handshake offers the `bearer` subprotocol (`Sec-WebSocket-Protocol:
/// bearer, <token>`, as browsers must send a token): the server then selects `bearer`, or the
/// browser drops the connection.
pub fn offers_bearer(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("bearer"))
}

/// The answer to a request refused with `e`, as every route answers errors: a problem document
/// (RFC 9457) on Stateline's own `/_` routes, ooo's plain text elsewhere; CORS and, for a 401,
/// the `WWW-Authenticate` challenge included.
pub fn refusal<B>(engine: &Engine, req: &Request<B>, e: &Error) -> Response<Bytes> {
    let path = req.uri().path();
    if path.starts_with("/_") {
        problem(engine, req.headers(), e)
    } else {
        plain_error(engine, req.headers(), e, req.method().as_str(), path)
    }
}

/// `X-Revision`, AtomKV's revision header.
const X_REVISION: HeaderName = HeaderName::from_static("x-revision");

fn respond(
    engine: &Engine,
    req: &HeaderMap,
    status: StatusCode,
    ctype: Option<&'static str>,
    body: Bytes,
) -> Response<Bytes> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    // Room for every header a response gets (CORS, type, revision, ETag) without regrowing
    // the map, which was a tenth of a write's time in the core's benchmark.
    *r.headers_mut() = HeaderMap::with_capacity(12);
    if let Some(c) = ctype {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(c));
    }
    cors_headers(engine, req, r.headers_mut());
    r
}

/// RFC 6750's challenge for a 401. A request that sent a token which was refused gets
/// `error="invalid_token"` with the reason; one that sent none gets the bare challenge (§3.1: "the
/// resource server SHOULD NOT include an error code or other error information").
pub fn www_authenticate(detail: &str, token_sent: bool) -> HeaderValue {
    const BARE: HeaderValue = HeaderValue::from_static("Bearer realm=\"stateline\"");
    if !token_sent {
        return BARE;
    }
    let detail: String = detail
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
        .take(200)
        .collect();
    HeaderValue::from_str(&format!(
        "Bearer realm=\"stateline\", error=\"invalid_token\", error_description=\"{}\"",
        detail.trim()
    ))
    .unwrap_or(BARE)
}

/// The challenge a 401 for `e` carries, if `e` is a 401.
fn challenge(r: &mut Response<Bytes>, e: &Error) {
    let v = match e {
        Error::Unauthorized(why) => www_authenticate(why, true),
        Error::NoToken(why) => www_authenticate(why, false),
        // An embedding program's audit hook: the bare challenge, as it says nothing of a token.
        Error::NotAuthorized(_) => www_authenticate("", false),
        _ => return,
    };
    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const PROBLEM: &str = "application/problem+json";

/// ooo's (and AtomKV's) plain-text error: the message and a newline, as Go's `http.Error` writes.
/// `path` is the request's (decoded) path, named where ooo's own text would not say which key.
fn plain_error(
    engine: &Engine,
    req: &HeaderMap,
    e: &Error,
    method: &str,
    path: &str,
) -> Response<Bytes> {
    let text = match (e, method) {
        (Error::Key(KeyError::GlobNotAllowed), "PATCH") => {
            "ooo: glob pattern not allowed for this operation".into()
        }
        (Error::Key(k), "PUT") => format!("invalid key: {k}"),
        (Error::Key(k), _) => format!("ooo: key is not valid: {k}"),
        (Error::NotFound, "GET" | "HEAD") if path.len() > 1 => {
            // ooo's text first (clients match on it), then which key.
            format!("ooo: empty key: nothing is stored at {}", &path[1..])
        }
        (Error::NotFound, "GET" | "HEAD") => "ooo: empty key".into(),
        (Error::NotFound, "DELETE") => "storage: not found".into(),
        (Error::NotFound, _) => "ooo: not found".into(),
        (e, _) => e.to_string(),
    };
    let mut r = respond(
        engine,
        req,
        e.status(),
        Some(TEXT),
        format!("{text}\n").into(),
    );
    challenge(&mut r, e);
    r
}

/// A problem document (RFC 9457) for the routes new in Stateline.
fn problem(engine: &Engine, req: &HeaderMap, e: &Error) -> Response<Bytes> {
    let mut r = respond(engine, req, e.status(), Some(PROBLEM), problem_body(e));
    challenge(&mut r, e);
    r
}

/// The bytes of `e`'s problem document: `{"type","title","status","code","detail"}`.
fn problem_body(e: &Error) -> Bytes {
    problem_json(e.status(), e.code(), &e.to_string())
}

/// The one shape of every problem document (RFC 9457).
fn problem_json(status: StatusCode, code: &str, detail: &str) -> Bytes {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
    });
    json::encode(&body).into()
}

/// A problem document with a host's own code (e.g. the edge's `spans-namespaces`), without
/// CORS headers, for a host that answers before it has an engine (add [`cors`]).
pub fn problem_with(status: StatusCode, code: &str, detail: &str) -> Response<Bytes> {
    let mut r = Response::new(problem_json(status, code, detail));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM));
    r
}

fn entry_headers(r: &mut Response<Bytes>, e: &Entry) {
    let h = r.headers_mut();
    h.insert(X_REVISION, HeaderValue::from(e.revision));
    if let Ok(v) = HeaderValue::from_str(&e.etag()) {
        h.insert(header::ETAG, v);
    }
}

/// Gives a write's answer the version its change got when another log ordered it (a cluster
/// node computes the answer first, with the version it expected; see [`crate::replica`]).
pub fn restamp(r: &mut Response<Bytes>, seq: u64) {
    if r.headers().contains_key(header::ETAG) {
        if let Ok(v) = HeaderValue::from_str(&format!("\"{seq:x}\"")) {
            r.headers_mut().insert(header::ETAG, v);
        }
    }
}

/// Whether a refused write may have been refused on a state older than the cluster's (not
/// found, a failed precondition or compare-and-swap, a conflict): a cluster node catches up
/// and computes it once more before it answers.
pub fn refusal_may_be_stale(method: &Method, status: StatusCode) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED
        )
}

fn parse_ttl(q: &[(String, String)], h: &HeaderMap) -> Result<Ttl, Error> {
    let raw = query_get(q, "ttl").or_else(|| header_str(h, "x-ttl"));
    let Some(raw) = raw else {
        return Ok(Ttl::Clear);
    };
    let secs: f64 = raw
        .trim()
        .parse()
        .map_err(|_| Error::BadRequest(format!("invalid ttl {raw:?}: seconds expected")))?;
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(Error::BadRequest(format!(
            "invalid ttl {raw:?}: must be more than 0 and less than 1e9 seconds"
        )));
    }
    Ok(Ttl::After((secs * 1e9) as i64))
}

fn conditions(h: &HeaderMap) -> Result<Cond, Error> {
    if let Some(m) = header_str(h, header::IF_MATCH) {
        return Ok(Cond::IfMatch(
            m.split(',')
                .map(|t| t.trim().trim_start_matches("W/").to_string())
                .collect(),
        ));
    }
    if let Some(m) = header_str(h, header::IF_NONE_MATCH) {
        if m.trim() == "*" {
            return Ok(Cond::IfAbsent);
        }
        return Err(Error::BadRequest(
            "If-None-Match on a write must be \"*\"".into(),
        ));
    }
    Ok(Cond::Always)
}

fn body_json(engine: &Engine, body: &[u8]) -> Result<Value, Error> {
    let c = engine.config();
    Ok(json::parse_limited(body, c.max_depth, c.max_nodes)?)
}

/// Answers a plain HTTP request for whoever its bearer token says (see [`token`]). Changes in
/// the outcome are applied to memory but not published.
pub fn handle(engine: &mut Engine, tick: Tick, req: &Request<Bytes>) -> HttpOutcome {
    let who = engine.identify(tick, token(req).as_deref());
    handle_as(engine, tick, req, &who)
}

/// Answers a plain HTTP request for `who` (the adapter identified the caller already).
pub fn handle_as(
    engine: &mut Engine,
    tick: Tick,
    req: &Request<Bytes>,
    who: &Identity,
) -> HttpOutcome {
    // Borrowed, not copied: this runs for every request.
    let h = req.headers();
    let method = req.method();
    let q = query_pairs(req.uri().query().unwrap_or(""));
    // Decoded once, here: every route below sees the key the client meant (`caf%C3%A9` is
    // refused for its `é`, not its `%`).
    let path = match crate::key::decode_http_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            return HttpOutcome {
                response: plain_error(engine, h, &e.into(), method.as_str(), ""),
                changes: vec![],
            }
        }
    };
    let path = &*path;
    let plain = |e: &Engine, err: Error| HttpOutcome {
        response: plain_error(e, h, &err, method.as_str(), path),
        changes: vec![],
    };

    if let Some(response) = early_refusal(engine, req) {
        return HttpOutcome {
            response,
            changes: vec![],
        };
    }
    if method == Method::OPTIONS {
        return HttpOutcome {
            response: respond(engine, h, StatusCode::NO_CONTENT, None, Bytes::new()),
            changes: vec![],
        };
    }
    if req.body().len() > engine.config().max_body {
        return HttpOutcome {
            response: {
                let mut r = too_large(req.uri().path(), engine.config().max_body);
                cors_headers(engine, h, r.headers_mut());
                r
            },
            changes: vec![],
        };
    }
    if path == "/" {
        return match (method.as_str(), query_get(&q, "api")) {
            ("GET" | "HEAD", Some(api)) => match api_route(engine, &q, api, who) {
                Ok(v) => HttpOutcome {
                    response: respond(
                        engine,
                        h,
                        StatusCode::OK,
                        Some(JSON),
                        json::encode(&v).into(),
                    ),
                    changes: vec![],
                },
                Err(e) => plain(engine, e),
            },
            ("GET" | "HEAD", None) => plain(engine, Error::NoRoute),
            _ => plain(engine, Error::MethodNotAllowed),
        };
    }
    if let Some(rest) = path.strip_prefix("/_") {
        let r = extended(engine, tick, method, rest, &q, h, req.body(), who);
        return match r {
            Ok((response, changes)) => HttpOutcome { response, changes },
            Err(e) => HttpOutcome {
                response: problem(engine, h, &e),
                changes: vec![],
            },
        };
    }
    match data_route(engine, tick, method, path, &q, h, req.body(), who) {
        Ok((response, changes)) => {
            let mut response = response;
            if method == Method::HEAD {
                *response.body_mut() = Bytes::new();
            }
            HttpOutcome { response, changes }
        }
        Err(e) => plain(engine, e),
    }
}

type Routed = Result<(Response<Bytes>, Vec<Change>), Error>;

fn index_body(key: &str) -> Bytes {
    // `{"index":"<last segment>"}`, written directly: this is every POST's answer.
    let last = crate::key::last_segment(key);
    let mut out = Vec::with_capacity(last.len() + 12);
    out.extend_from_slice(br#"{"index":"#);
    // A string always serializes.
    let _ = serde_json::to_writer(&mut out, last);
    out.push(b'}');
    out.into()
}

fn written(
    engine: &Engine,
    h: &HeaderMap,
    a: Applied,
    body: Option<Bytes>,
    status: StatusCode,
) -> Routed {
    let (key, entry) = match &a.outcome {
        Outcome::Written(k, e) | Outcome::Taken(k, e) => (k.clone(), e.clone()),
        Outcome::Deleted(_) => {
            return Ok((
                respond(engine, h, StatusCode::NO_CONTENT, None, Bytes::new()),
                a.changes,
            ))
        }
    };
    let body = body.unwrap_or_else(|| index_body(&key));
    let mut r = respond(engine, h, status, Some(JSON), body);
    entry_headers(&mut r, &entry);
    Ok((r, a.changes))
}

// One argument per part of the request: this is the router.
#[allow(clippy::too_many_arguments)]
fn data_route(
    engine: &mut Engine,
    tick: Tick,
    method: &Method,
    path: &str,
    q: &[(String, String)],
    h: &HeaderMap,
    body: &[u8],
    who: &Identity,
) -> Routed {
    match method.as_str() {
        "GET" | "HEAD" => {
            // `GET /prefix/` lists the subtree, as SSE on the same URL streams it.
            let pattern = Pattern::from_http_path(path, true)?;
            // Before anything else (even 404): a refusal must not tell whether the key exists.
            match &pattern {
                Pattern::Key(k) => engine.authorize(RuleAction::Read, k, who)?,
                p => engine.authorize_caller(&p.as_str(), who)?,
            }
            engine.filters().check(Need::Read, &pattern.as_str())?;
            read(engine, h, &pattern, who)
        }
        "POST" => {
            let target = path.strip_prefix('/').ok_or(KeyError::NoLeadingSlash)?;
            let pattern = Pattern::from_http_path(path, false)?;
            let ttl = parse_ttl(q, h)?;
            let value = body_json(engine, body)?;
            let op = match pattern {
                Pattern::Key(_) => Op::Set {
                    key: target.into(),
                    value,
                    ttl,
                    cond: conditions(h)?,
                },
                _ => Op::Push {
                    target: target.into(),
                    value,
                    ttl,
                },
            };
            let a = engine.execute(tick, op, who)?;
            written(engine, h, a, None, StatusCode::OK)
        }
        "PUT" => {
            // AtomKV's compare-and-swap, with its order of checks; If-Match works too.
            let key = match Pattern::from_http_path(path, false)? {
                Pattern::Key(k) => k,
                _ => return Err(KeyError::GlobNotAllowed.into()),
            };
            let cond = match header_str(h, "x-revision") {
                Some(r) => {
                    Cond::NextRevision(r.trim().parse().map_err(|_| Error::InvalidRevision)?)
                }
                None => match conditions(h)? {
                    Cond::Always => return Err(Error::MissingRevision),
                    c => c,
                },
            };
            let value = body_json(engine, body).map_err(|e| match e {
                Error::Json(json::JsonError::Syntax(_)) => {
                    Error::Json(json::JsonError::Syntax("not a JSON value".into()))
                }
                e => e,
            })?;
            let ttl = parse_ttl(q, h)?;
            let a = engine.execute(
                tick,
                Op::Set {
                    key: key.to_string(),
                    value,
                    ttl,
                    cond,
                },
                who,
            )?;
            written(engine, h, a, Some(Bytes::new()), StatusCode::OK)
        }
        "PATCH" => {
            let key = match Pattern::from_http_path(path, false)? {
                Pattern::Key(k) => k,
                _ => return Err(KeyError::GlobNotAllowed.into()),
            };
            let v = body_json(engine, body)?;
            let ctype = header_str(h, header::CONTENT_TYPE)
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let patch = match ctype.as_str() {
                "application/json-patch+json" => PatchKind::JsonPatch(json::parse_patch(v)?),
                "application/merge-patch+json" => PatchKind::MergePatch(v),
                _ => PatchKind::Merge(v),
            };
            let a = engine.execute(
                tick,
                Op::Patch {
                    key: key.to_string(),
                    patch,
                    cond: conditions(h)?,
                },
                who,
            )?;
            written(engine, h, a, None, StatusCode::OK)
        }
        "DELETE" => {
            let target = path.strip_prefix('/').ok_or(KeyError::NoLeadingSlash)?;
            Pattern::from_http_path(path, false)?;
            let a = engine.execute(
                tick,
                Op::Delete {
                    target: target.into(),
                    cond: conditions(h)?,
                },
                who,
            )?;
            written(engine, h, a, None, StatusCode::NO_CONTENT)
        }
        _ => Err(Error::MethodNotAllowed),
    }
}

fn read(engine: &Engine, h: &HeaderMap, pattern: &Pattern, who: &Identity) -> Routed {
    let filters = engine.filters();
    let version = format!("{:x}", engine.store().last_seq());
    let mut r = match pattern {
        Pattern::Key(k) => {
            let e = engine.store().get(k).ok_or(Error::NotFound)?;
            if let Some(inm) = header_str(h, header::IF_NONE_MATCH) {
                if inm
                    .split(',')
                    .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == e.etag())
                {
                    let mut r = respond(engine, h, StatusCode::NOT_MODIFIED, None, Bytes::new());
                    entry_headers(&mut r, e);
                    return Ok((r, vec![]));
                }
            }
            let body = if filters.has_read_filters(k) {
                let m = filters.read_object_value(k, meta::value(k, e))?;
                if m.get("created") == Some(&json!(0)) && m.get("index") == Some(&json!("")) {
                    return Err(Error::NotFound);
                }
                json::encode(&m).into()
            } else {
                meta::bytes(k, e)
            };
            let mut r = respond(engine, h, StatusCode::OK, Some(JSON), body);
            entry_headers(&mut r, e);
            r
        }
        p => {
            let mut items = engine.store().list(p);
            // A list never includes a key the caller may not read.
            if engine.filters().rules().is_some() {
                items.retain(|(k, _)| engine.can_read(k, who));
            }
            let p_str = p.as_str();
            let body: Bytes = if filters.has_read_filters(&p_str)
                || items.iter().any(|(k, _)| filters.has_read_filters(k))
            {
                let list = items
                    .iter()
                    .filter_map(|(k, e)| filters.read_object_value(k, meta::value(k, e)).ok())
                    .collect();
                json::encode(&Value::Array(filters.read_list_values(&p_str, list)?)).into()
            } else {
                let mut out = Vec::new();
                meta::write_list(&mut out, items.iter().map(|(k, e)| (&**k, e)));
                out.into()
            };
            respond(engine, h, StatusCode::OK, Some(JSON), body)
        }
    };
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&version) {
        r.headers_mut().insert("x-version", v);
    }
    Ok((r, vec![]))
}

// One argument per part of the request: this is the router.
#[allow(clippy::too_many_arguments)]
fn extended(
    engine: &mut Engine,
    tick: Tick,
    method: &Method,
    rest: &str,
    q: &[(String, String)],
    h: &HeaderMap,
    body: &[u8],
    who: &Identity,
) -> Routed {
    let (route, key) = rest.split_once('/').unwrap_or((rest, ""));
    let post_only = |m: &Method| {
        if m == Method::POST {
            Ok(())
        } else {
            Err(Error::MethodNotAllowed)
        }
    };
    match route {
        "health" => {
            let v = json!({"status": "ok", "keys": engine.store().len(), "seq": format!("{:x}", engine.store().last_seq())});
            Ok((
                respond(
                    engine,
                    h,
                    StatusCode::OK,
                    Some(JSON),
                    json::encode(&v).into(),
                ),
                vec![],
            ))
        }
        "incr" => {
            post_only(method)?;
            let by = if body.iter().all(u8::is_ascii_whitespace) {
                1
            } else {
                body_json(engine, body)?.as_i64().ok_or_else(|| {
                    Error::BadRequest(
                        "incr: body must be an integer from -2^63 to 2^63-1 (no fraction)".into(),
                    )
                })?
            };
            let ttl = match parse_ttl(q, h)? {
                Ttl::Clear => Ttl::Keep,
                t => t,
            };
            let a = engine.execute(
                tick,
                Op::Incr {
                    key: key.into(),
                    by,
                    ttl,
                },
                who,
            )?;
            let Outcome::Written(k, e) = &a.outcome else {
                unreachable!("incr writes")
            };
            let body =
                json::encode(&json!({"key": &**k, "value": *e.data, "revision": e.revision}));
            written(engine, h, a.clone(), Some(body.into()), StatusCode::OK)
        }
        "take" => {
            post_only(method)?;
            let a = engine.execute(tick, Op::Take { key: key.into() }, who)?;
            let Outcome::Taken(k, e) = &a.outcome else {
                unreachable!("take takes")
            };
            let body = meta::bytes(k, e);
            written(engine, h, a.clone(), Some(body), StatusCode::OK)
        }
        "rename" => {
            post_only(method)?;
            let v = body_json(engine, body)?;
            let to = v.get("to").and_then(Value::as_str).ok_or_else(|| {
                Error::BadRequest("rename: body must be {\"to\": \"<key>\"}".into())
            })?;
            let overwrite = v.get("overwrite").and_then(Value::as_bool).unwrap_or(false);
            let a = engine.execute(
                tick,
                Op::Rename {
                    from: key.into(),
                    to: to.into(),
                    overwrite,
                },
                who,
            )?;
            let Outcome::Written(k, e) = &a.outcome else {
                unreachable!("rename writes")
            };
            let body = json::encode(&json!({"from": key, "to": &**k, "revision": e.revision}));
            written(engine, h, a.clone(), Some(body.into()), StatusCode::OK)
        }
        _ => Err(Error::NoRoute),
    }
}

fn api_route(
    engine: &mut Engine,
    q: &[(String, String)],
    api: &str,
    who: &Identity,
) -> Result<Value, Error> {
    engine.authorize_caller("/?api", who)?;
    let engine = &*engine;
    match api {
        "keys" => {
            let kp = KeysPage::parse(q, engine.config().max_keys_page)?;
            let filter = kp.filter.as_str();
            let glob = if filter.contains('*') {
                Some(Pattern::parse(filter)?)
            } else {
                None
            };
            // A glob goes through the store's segment index, a prefix through its order: the
            // page costs what the filter matches, not the whole keyspace.
            let matched: Vec<&str> = match &glob {
                Some(g) => engine.store().scan(g).map(|(k, _)| &**k).collect(),
                None => engine
                    .store()
                    .keys_with_prefix(filter)
                    .map(|k| &**k)
                    .collect(),
            };
            let keys: Vec<&str> = matched
                .into_iter()
                // Key names can be personal too: only those the caller may read.
                .filter(|k| engine.can_read(k, who))
                .collect();
            let page_keys = &keys[kp.range(keys.len())];
            // Each listed key's metadata too, in the same order, so a listing needs no GET per key.
            let items: Vec<Value> = page_keys
                .iter()
                .filter_map(|k| {
                    let e = engine.store().get(k)?;
                    Some(json!({"key": k, "created": e.created, "updated": e.updated, "revision": e.revision}))
                })
                .collect();
            Ok(kp.body(page_keys, &items, keys.len()))
        }
        "info" => Ok(json!({
            "name": "stateline",
            "version": env!("CARGO_PKG_VERSION"),
            "keys": engine.store().len(),
            "valueBytes": engine.store().value_bytes(),
            "pools": engine.pools().len(),
            "subscribers": engine.pools().subscribers(),
            "static": engine.filters().is_static(),
            "seq": format!("{:x}", engine.store().last_seq()),
            "logEntries": engine.log().len(),
            "logFloor": format!("{:x}", engine.log().floor()),
            "started": engine.started(),
        })),
        "filters" => Ok(json!({
            "static": engine.filters().is_static(),
            "filters": engine.filters().describe().into_iter().map(|(p, k)| json!({"path": p, "kind": k})).collect::<Vec<_>>(),
            "rules": engine.filters().rules().map(|r| r.describe()),
        })),
        "state" => {
            let mut pools = engine.pools().info();
            // A key subscription names its key: shown only to those who may read it.
            pools.retain(|p| {
                Pattern::parse(&p.pattern)
                    .map(|pat| !matches!(pat, Pattern::Key(_)) || engine.can_read(&p.pattern, who))
                    .unwrap_or(true)
            });
            Ok(json!({
                "pools": pools.iter().map(|p| json!({
                    "key": p.pattern,
                    "connections": p.subscribers,
                    "encoding": format!("{:?}", p.encoding).to_lowercase(),
                    "version": format!("{:x}", p.version),
                    "audience": p.audience,
                })).collect::<Vec<_>>(),
                "totalConnections": engine.pools().subscribers(),
            }))
        }
        // Custom endpoints belong to an embedding server, which answers this itself; a server
        // without any (the edge, a plain `stateline serve`) has none to list.
        "endpoints" => Ok(json!({"endpoints": []})),
        other => Err(Error::BadRequest(format!(
            "unknown api {other:?}; known: keys, info, filters, state, endpoints"
        ))),
    }
}

/// The engine's counters in Prometheus text format (the adapter adds its own: requests,
/// connections).
pub fn metrics(engine: &Engine) -> String {
    use std::fmt::Write;
    let st = engine.stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "stateline_writes_total",
        "counter",
        "Operations applied (writes of every kind).",
        &[(String::new(), st.writes)],
    );
    metric(
        "stateline_refused_total",
        "counter",
        "Operations refused (any reason).",
        &[(String::new(), st.refused)],
    );
    let denied: Vec<(String, u64)> = st
        .denied
        .by_reason()
        .iter()
        .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n))
        .collect();
    metric(
        "stateline_denied_total",
        "counter",
        "Attempts refused by the access rules, by reason.",
        &denied,
    );
    metric(
        "stateline_subscriptions",
        "gauge",
        "Subscribers over all pools.",
        &[(String::new(), engine.pools().subscribers() as u64)],
    );
    metric(
        "stateline_pools",
        "gauge",
        "Subscription pools (one per pattern, encoding and audience).",
        &[(String::new(), engine.pools().len() as u64)],
    );
    metric(
        "stateline_keys",
        "gauge",
        "Keys stored.",
        &[(String::new(), engine.store().len() as u64)],
    );
    metric(
        "stateline_frames_total",
        "counter",
        "Frames produced for pools (each sent to every subscriber of its pool).",
        &[(String::new(), st.frames)],
    );
    metric(
        "stateline_expired_total",
        "counter",
        "Keys expired by TTL.",
        &[(String::new(), st.expired)],
    );
    out
}

/// Parses an HTTP method name for adapters that receive it as text.
pub fn method(s: &str) -> Option<Method> {
    Method::from_bytes(s.as_bytes()).ok()
}

/// The keys API's page (`GET /?api=keys&filter=&page=&limit=`): parsed and answered here, for
/// the core's own listing and for a host that merges several (the edge, across namespaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysPage {
    /// From 1.
    pub page: usize,
    /// Keys per page, from 1 to the server's `max_keys_page`.
    pub limit: usize,
    /// A key prefix, or a glob.
    pub filter: String,
}

impl KeysPage {
    /// Reads `page` (default 1), `limit` (default 50, at most `max`) and `filter` (default
    /// none); a bad value is a 400 that says what is allowed.
    pub fn parse(q: &[(String, String)], max: usize) -> Result<KeysPage, Error> {
        let page = match query_get(q, "page") {
            Some(p) => p
                .parse()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| Error::BadRequest("page must be a number from 1".into()))?,
            None => 1,
        };
        let limit = match query_get(q, "limit") {
            Some(l) => l
                .parse()
                .ok()
                .filter(|l| (1..=max).contains(l))
                .ok_or_else(|| Error::BadRequest(format!("limit must be from 1 to {max}")))?,
            None => 50,
        };
        let filter = query_get(q, "filter").unwrap_or("").to_string();
        Ok(KeysPage {
            page,
            limit,
            filter,
        })
    }

    /// The index range of this page in a listing of any length.
    pub fn range(&self, total: usize) -> std::ops::Range<usize> {
        let start = (self.page - 1).saturating_mul(self.limit).min(total);
        start..start.saturating_add(self.limit).min(total)
    }

    /// The answer: this page's keys and their metadata items (in the same order) and the total.
    pub fn body<K: serde::Serialize>(&self, keys: &[K], items: &[Value], total: usize) -> Value {
        json!({"keys": keys, "items": items, "total": total, "page": self.page, "limit": self.limit, "filter": self.filter})
    }
}

// ---------------------------------------------------------------------------------------------
// The front door: one call per request.

/// Where an embedding program's socket kinds go (an ooo subscription, the clock stream, `/_ws`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socket {
    /// ooo's per-path subscription.
    Subscribe(Subscription),
    /// ooo's clock stream.
    Clock,
    /// The multiplexed `/_ws`.
    Mux,
}

/// What the adapter does with a request, as [`serve`] decides it.
#[derive(Debug)]
pub enum Action {
    /// Persist and publish `changes` (if any), then send `response`. With pending writes, the
    /// answer waits for their commit too (it may have seen them).
    Respond(HttpOutcome),
    /// Upgrade to a WebSocket of this kind, for `who` (already authorized).
    Upgrade {
        /// The kind of socket.
        socket: Socket,
        /// Who opened it.
        who: Identity,
    },
    /// Open an SSE stream (headers: [`sse_headers`], first bytes: [`SSE_HELLO`]).
    Events {
        /// What it watches.
        sub: Subscription,
        /// Who opened it.
        who: Identity,
    },
    /// Serve the embedded file at `path` (the UI, the client script) with CORS; `head`: no body.
    Asset {
        /// `/` (the UI for browsers, the client script otherwise), `/_client.js` or `/_ui/...`.
        path: String,
        /// A `HEAD` request.
        head: bool,
    },
    /// Stream a backup of the store (`GET /_backup` with the backup token).
    Backup,
    /// Run the embedding program's endpoint for this route, for `who`.
    Endpoint {
        /// Who asked (the audit hook passed).
        who: Identity,
    },
}

/// An embedding program's checks and routes (the native server's builder API).
pub trait Hooks {
    /// Refuses a request before it runs (401, in ooo's words, with this reason).
    fn audit(&self, req: &Request<Bytes>, who: &Identity) -> Result<(), String>;
    /// Whether one of its endpoints serves `path`: `Some(true)` for this method, `Some(false)`
    /// when the path is its but the method is not (405).
    fn endpoint(&self, method: &Method, path: &str) -> Option<bool>;
    /// Its endpoints, for `GET /?api=endpoints`.
    fn describe(&self) -> Value;
}

/// One counter or gauge only the adapter knows, for `/_metrics`.
#[derive(Debug, Clone, Copy)]
pub struct Metric<'a> {
    /// The metric's name.
    pub name: &'a str,
    /// `counter` or `gauge`.
    pub kind: &'a str,
    /// The `# HELP` text.
    pub help: &'a str,
    /// Its value.
    pub value: u64,
}

/// `GET /_backup`: whether the host makes backups, with which token.
#[derive(Debug, Clone, Copy, Default)]
pub enum Backups<'a> {
    /// Off: the host was started without a backup token.
    #[default]
    Off,
    /// On: the request must carry `Authorization: Bearer <token>`; `store` says whether there is
    /// a store to back up (not in memory mode).
    On {
        /// The backup token.
        token: &'a str,
        /// Whether the host has a store.
        store: bool,
    },
}

/// What the host knows about itself that answers depend on.
#[derive(Default)]
pub struct Host<'a> {
    /// Why nothing this server would answer is current yet (a cluster node catching up): every
    /// request gets 503 with it; `/_health` says `starting`.
    pub starting: Option<&'a str>,
    /// Why writes fail now (the store, or the cluster's log): `/_health` answers 503 with it.
    pub unhealthy: Option<&'a str>,
    /// The adapter's own counters and gauges, listed first in `/_metrics`.
    pub metrics: &'a [Metric<'a>],
    /// The embedding program's hooks, if any.
    pub hooks: Option<&'a dyn Hooks>,
    /// `GET /_backup`.
    pub backups: Backups<'a>,
    /// The body could not be read (too large, broken off, too slow): why.
    pub body_error: Option<Error>,
}

/// The front door: the adapter hands each request here once (its body read under the cap and
/// the deadline, or the reason it could not be in [`Host::body_error`]) and does what comes
/// back. Every status, error body, CORS header and access decision is made here.
pub fn serve(engine: &mut Engine, tick: Tick, req: &Request<Bytes>, host: &Host<'_>) -> Action {
    let respond = |response| {
        Action::Respond(HttpOutcome {
            response,
            changes: vec![],
        })
    };
    let path = req.uri().path();
    let method = req.method();
    let get = method == Method::GET || method == Method::HEAD;
    if get && (path == "/_client.js" || path.starts_with("/_ui/")) {
        return Action::Asset {
            path: path.to_string(),
            head: method == Method::HEAD,
        };
    }
    if path == "/_backup" {
        // Its own token, not a JWT: the route is outside the rules.
        return backup(engine, req, host.backups);
    }
    if get && path == "/_metrics" {
        return respond(metrics_response(engine, req.headers(), host.metrics));
    }
    if let Some(why) = host.starting {
        if path == "/_health" {
            return respond(unhealthy(engine, req.headers(), "starting", why));
        }
        return respond(refusal(engine, req, &Error::Unavailable(why.to_string())));
    }
    if let Some(e) = &host.body_error {
        return respond(refusal(engine, req, e));
    }
    let who = engine.identify(tick, token(req).as_deref());
    let kind = match classify(engine, req) {
        Ok(k @ (Kind::Subscribe(_) | Kind::Events(_))) => {
            let (Kind::Subscribe(sub) | Kind::Events(sub)) = &k else {
                return respond(refusal(engine, req, &Error::NoRoute));
            };
            authorize_subscription(engine, req, sub, &who).map(|_| k)
        }
        Ok(Kind::Mux) => authorize_connection(engine, req, &who).map(|_| Kind::Mux),
        other => other,
    };
    if let Some(hooks) = host.hooks {
        if let Err(why) = hooks.audit(req, &who) {
            return respond(refusal(engine, req, &Error::NotAuthorized(why)));
        }
        match hooks.endpoint(method, path) {
            Some(true) => return Action::Endpoint { who },
            Some(false) => return respond(refusal(engine, req, &Error::MethodNotAllowed)),
            None => {}
        }
        let q = query_pairs(req.uri().query().unwrap_or(""));
        if path == "/" && query_get(&q, "api") == Some("endpoints") {
            let body = json::encode(&hooks.describe()).into();
            return respond(respond_with(
                engine,
                req.headers(),
                StatusCode::OK,
                JSON,
                body,
            ));
        }
    }
    match kind {
        Err(r) => respond(r),
        Ok(Kind::Http) => {
            if path == "/_health" {
                if let Some(why) = host.unhealthy {
                    return respond(unhealthy(engine, req.headers(), "unavailable", why));
                }
            }
            Action::Respond(handle_as(engine, tick, req, &who))
        }
        Ok(Kind::Root { .. }) => Action::Asset {
            path: "/".into(),
            head: method == Method::HEAD,
        },
        Ok(Kind::Events(sub)) => Action::Events { sub, who },
        Ok(Kind::Clock) => Action::Upgrade {
            socket: Socket::Clock,
            who,
        },
        Ok(Kind::Mux) => Action::Upgrade {
            socket: Socket::Mux,
            who,
        },
        Ok(Kind::Subscribe(sub)) => Action::Upgrade {
            socket: Socket::Subscribe(sub),
            who,
        },
    }
}

fn respond_with(
    engine: &Engine,
    req: &HeaderMap,
    status: StatusCode,
    ctype: &'static str,
    body: Bytes,
) -> Response<Bytes> {
    respond(engine, req, status, Some(ctype), body)
}

/// `GET /_health` when this server cannot serve writes (`status`: `unavailable`, or `starting`
/// while a cluster node catches up): 503 with the reason, as etcd's health reports its NOSPACE
/// alarm, until it can again.
fn unhealthy(engine: &Engine, req: &HeaderMap, status: &str, why: &str) -> Response<Bytes> {
    let v = json!({
        "status": status,
        "reason": why,
        "keys": engine.store().len(),
        "seq": format!("{:x}", engine.store().last_seq()),
    });
    respond_with(
        engine,
        req,
        StatusCode::SERVICE_UNAVAILABLE,
        JSON,
        json::encode(&v).into(),
    )
}

/// `/_metrics`: the adapter's own counters first, then the engine's, as Prometheus text.
fn metrics_response(engine: &Engine, req: &HeaderMap, extra: &[Metric<'_>]) -> Response<Bytes> {
    use std::fmt::Write;
    let mut out = String::new();
    for m in extra {
        let _ = writeln!(
            out,
            "# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}",
            m.name, m.help, m.kind, m.value
        );
    }
    out.push_str(&metrics(engine));
    respond_with(
        engine,
        req,
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        out.into(),
    )
}

/// Compares two byte strings in time that depends on their lengths only, not on where they
/// differ (a backup token must not leak through response timing).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn backup<B>(engine: &Engine, req: &Request<B>, backups: Backups<'_>) -> Action {
    let refuse = |status: StatusCode, code: &'static str, detail: &str| {
        let body = problem_json(status, code, detail);
        Action::Respond(HttpOutcome {
            response: respond_with(engine, req.headers(), status, PROBLEM, body),
            changes: vec![],
        })
    };
    let Backups::On { token, store } = backups else {
        return refuse(
            StatusCode::NOT_FOUND,
            "backup-disabled",
            "backups are off; start the server with --backup-token",
        );
    };
    // The scheme in any case (RFC 9110), as for access tokens.
    let given = header_str(req.headers(), header::AUTHORIZATION)
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "GET /_backup needs Authorization: Bearer <the --backup-token>",
        );
    }
    if !store {
        return refuse(
            StatusCode::CONFLICT,
            "no-store",
            "this server runs with --memory: there is no store to back up",
        );
    }
    Action::Backup
}

//! Reading a request: what it wants ([`classify`]), who sends it ([`token`]), whether its
//! origin and host may ([`origin_refused`]), and its query.

use super::*;

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

pub(super) fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The request headers a write may carry and rarely does. A `HeaderMap` lookup hashes the name
/// and probes whether or not the header is there, and every write asked for all four: about 500
/// of a small write's 27,000 instructions (`bench/scripts/instructions-per-write.sh`), where one
/// pass over the few names a request has ([`ReqHeaders::of`]) costs a fraction of that.
#[derive(Clone, Copy)]
pub(super) enum Rare {
    IfMatch,
    IfNoneMatch,
    Ttl,
    IdempotencyKey,
}

// The names as statics: looked up by reference, nothing is built or dropped per lookup.
static IF_MATCH_NAME: HeaderName = header::IF_MATCH;
static IF_NONE_MATCH_NAME: HeaderName = header::IF_NONE_MATCH;
static TTL_NAME: HeaderName = X_TTL;
static IDEMPOTENCY_KEY_NAME: HeaderName = IDEMPOTENCY_KEY;

impl Rare {
    #[cfg(test)]
    const ALL: [Rare; 4] = [
        Rare::IfMatch,
        Rare::IfNoneMatch,
        Rare::Ttl,
        Rare::IdempotencyKey,
    ];

    fn name(self) -> &'static HeaderName {
        match self {
            Rare::IfMatch => &IF_MATCH_NAME,
            Rare::IfNoneMatch => &IF_NONE_MATCH_NAME,
            Rare::Ttl => &TTL_NAME,
            Rare::IdempotencyKey => &IDEMPOTENCY_KEY_NAME,
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A request's headers, with a note of which [`Rare`] ones it has, taken in one pass over its
/// header names. It reads as the `HeaderMap` it wraps; [`ReqHeaders::rare`] answers for a rare
/// header without a lookup when the request does not have it.
pub(super) struct ReqHeaders<'h> {
    map: &'h HeaderMap,
    rare: u8,
}

impl<'h> ReqHeaders<'h> {
    pub(super) fn of(map: &'h HeaderMap) -> ReqHeaders<'h> {
        let mut rare = 0;
        // Each name once, however many values it has, as its lowercase text: a name of another
        // length is told apart without comparing its bytes, which costs less than comparing it
        // with each of the four names. The texts are those of [`Rare::name`] (the tests below
        // would fail otherwise).
        for name in map.keys() {
            rare |= match name.as_str() {
                "if-match" => Rare::IfMatch.bit(),
                "if-none-match" => Rare::IfNoneMatch.bit(),
                "x-ttl" => Rare::Ttl.bit(),
                "idempotency-key" => Rare::IdempotencyKey.bit(),
                _ => 0,
            };
        }
        ReqHeaders { map, rare }
    }

    /// The first value of a rare header, as `HeaderMap::get` gives it.
    pub(super) fn rare(&self, r: Rare) -> Option<&'h HeaderValue> {
        if self.rare & r.bit() == 0 {
            return None;
        }
        self.map.get(r.name())
    }

    /// [`ReqHeaders::rare`] as text ([`header_str`]).
    pub(super) fn rare_str(&self, r: Rare) -> Option<&'h str> {
        self.rare(r).and_then(|v| v.to_str().ok())
    }
}

impl std::ops::Deref for ReqHeaders<'_> {
    type Target = HeaderMap;

    fn deref(&self) -> &HeaderMap {
        self.map
    }
}

/// Decodes `application/x-www-form-urlencoded` query pairs.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    // Most requests have no query: no splitting then.
    if query.is_empty() {
        return Vec::new();
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

pub(super) fn pct_decode(s: &str) -> String {
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

pub(super) fn query_get<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub(super) fn truthy(v: Option<&str>) -> bool {
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
    token_sniffed(req, Sniff::of(req))
}

/// What a `GET` (or `HEAD`) asks for in its headers: a WebSocket upgrade (`Upgrade`), an SSE
/// stream (`Accept`). Found once per request, in one pass over the header names: the front
/// door asked each of [`token`] and [`classify`], and looking a header up hashes its name and
/// probes, present or not (four lookups, about a tenth of a small read's instructions in the
/// core).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Sniff {
    ws: bool,
    sse: bool,
}

impl Sniff {
    pub(super) fn of<B>(req: &Request<B>) -> Sniff {
        let (method, h) = (req.method(), req.headers());
        if method != Method::GET && method != Method::HEAD {
            return Sniff {
                ws: false,
                sse: false,
            };
        }
        let (mut upgrade, mut accept) = (false, false);
        for name in h.keys() {
            match name.as_str() {
                "upgrade" => upgrade = true,
                "accept" => accept = true,
                _ => {}
            }
        }
        Sniff {
            ws: upgrade && is_websocket(h),
            sse: accept && wants_events(h),
        }
    }
}

/// [`token`] with the request's [`Sniff`] at hand.
pub(super) fn token_sniffed<B>(req: &Request<B>, sniff: Sniff) -> Option<String> {
    let h = req.headers();
    if let Some(a) = header_str(h, header::AUTHORIZATION) {
        let (scheme, t) = a.trim().split_once(' ').unwrap_or((a, ""));
        if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() {
            return Some(t.trim().to_string());
        }
    }
    // Only a GET upgrades (most requests are writes: their headers are not searched).
    if req.method() == Method::GET && sniff.ws {
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
    if opens_event_stream(req, sniff) {
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
pub(super) fn opens_event_stream<B>(req: &Request<B>, sniff: Sniff) -> bool {
    let path = req.uri().path();
    req.method() == Method::GET
        && sniff.sse
        && !sniff.ws
        && !(path.starts_with("/_") && path != "/")
        && !(path == "/"
            && query_get(&query_pairs(req.uri().query().unwrap_or("")), "api").is_some())
}

/// A token in the URL (`?access_token=`, `?token=`) where it is not honoured: refused rather
/// than silently ignored, so a client learns at once that it must use `Authorization`.
pub(super) fn url_token_misused<B>(req: &Request<B>, sniff: Sniff) -> Option<Error> {
    let q = req.uri().query()?;
    let named = query_pairs(q)
        .iter()
        .any(|(k, _)| k == "access_token" || k == "token");
    (named && !opens_event_stream(req, sniff)).then(|| {
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
pub(super) fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Hosts every server answers to as itself (loopback), besides [`Config::allowed_hosts`].
///
/// [`Config::allowed_hosts`]: crate::engine::Config::allowed_hosts
pub(super) const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Whether `host` (a `Host` header) names this server: a loopback name or one of the configured
/// hosts (`name` matches on any port, `name:port` on that port only).
pub(super) fn host_served(engine: &Engine, host: &str) -> bool {
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
    let allow = &engine.config().cors_origins;
    // Every origin allowed (the default): nothing to look up. Looking `Origin` up first cost
    // every request a hash and a probe, answered the same way.
    if allow.is_empty() || allow.iter().any(|a| a == "*") {
        return None;
    }
    let origin = header_str(h, header::ORIGIN)?;
    if allow.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
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
pub(super) fn early_refusal<B>(
    engine: &Engine,
    req: &Request<B>,
    sniff: Sniff,
) -> Option<Response<Bytes>> {
    let e = origin_refused(engine, req.headers()).or_else(|| url_token_misused(req, sniff))?;
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
    classify_sniffed(engine, req, Sniff::of(req))
}

/// [`classify`] with the request's [`Sniff`] at hand.
#[allow(clippy::result_large_err)]
pub(super) fn classify_sniffed<B>(
    engine: &Engine,
    req: &Request<B>,
    sniff: Sniff,
) -> Result<Kind, Response<Bytes>> {
    if let Some(r) = early_refusal(engine, req, sniff) {
        return Err(r);
    }
    // Every write is a plain request: the route decodes its path and query itself, once.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(Kind::Http);
    }
    let path = match crate::key::decode_http_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => return Err(plain_error(engine, req.headers(), &e.into(), "GET", "")),
    };
    let path = &*path;
    let q = query_pairs(req.uri().query().unwrap_or(""));
    let Sniff { ws, sse } = sniff;
    if path == "/" {
        if ws {
            return Ok(Kind::Clock);
        }
        if query_get(&q, "api").is_some() {
            return Ok(Kind::Http);
        }
        if !sse {
            let html =
                header_str(req.headers(), header::ACCEPT).is_some_and(|a| a.contains("text/html"));
            return Ok(Kind::Root { wants_html: html });
        }
    }
    if path == "/_ws" && ws {
        return Ok(Kind::Mux);
    }
    if !(ws || sse) || (path.starts_with("/_") && path != "/") {
        return Ok(Kind::Http);
    }
    let err = |e: Error| Err(plain_error(engine, req.headers(), &e, "GET", path));
    let pattern = match Pattern::from_http_path(path, true) {
        Ok(p) => p,
        Err(e) => return err(e.into()),
    };
    if let Err(e) = engine.filters().check(Need::Read, &pattern.text()) {
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
pub(super) fn resume_version(engine: &Engine, id: &str) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        // Whatever a request's headers are (any of the rare ones, in any case, some twice,
        // among common ones and custom ones of the same lengths), a rare header reads as
        // `HeaderMap::get` reads it.
        #[test]
        fn rare_headers_read_as_a_lookup(
            names in proptest::collection::vec(proptest::sample::select(vec![
                "If-Match", "if-none-match", "X-TTL", "x-ttl", "Idempotency-Key",
                "host", "content-type", "content-length", "x-tt1", "idempotency-kez",
                "if-modified-since", "x-request-id",
            ]), 0..8),
        ) {
            let mut map = HeaderMap::new();
            for (i, n) in names.iter().enumerate() {
                map.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from(i as u64),
                );
            }
            let h = ReqHeaders::of(&map);
            for r in Rare::ALL {
                proptest::prop_assert_eq!(h.rare(r), map.get(r.name()));
                proptest::prop_assert_eq!(h.rare_str(r), header_str(&map, r.name()));
            }
        }
    }

    proptest::proptest! {
        // Whatever a request's headers and method are, its sniff says what the lookups say: a
        // `GET` or `HEAD` upgrades to a WebSocket or asks for SSE as `is_websocket` and
        // `wants_events` find, any other method asks for neither.
        #[test]
        fn a_sniff_reads_as_the_lookups(
            headers in proptest::collection::vec((
                proptest::sample::select(vec![
                    "Upgrade", "upgrade", "Accept", "accept", "host", "accepts", "upgrades",
                    "connection", "x-upgrade",
                ]),
                proptest::sample::select(vec![
                    "websocket", "h2c, WebSocket", "text/event-stream", "*/*",
                    "text/html, text/event-stream;q=0.9", "keep-alive, Upgrade",
                ]),
            ), 0..6),
            method in proptest::sample::select(vec!["GET", "HEAD", "POST", "DELETE"]),
        ) {
            let mut b = Request::builder().method(method).uri("/k");
            for (n, v) in &headers {
                b = b.header(*n, *v);
            }
            let req = b.body(()).unwrap();
            let get = method == "GET" || method == "HEAD";
            proptest::prop_assert_eq!(
                Sniff::of(&req),
                Sniff {
                    ws: get && is_websocket(req.headers()),
                    sse: get && wants_events(req.headers()),
                }
            );
        }
    }

    #[test]
    fn a_request_without_rare_headers_has_none() {
        let mut map = HeaderMap::new();
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let h = ReqHeaders::of(&map);
        for r in Rare::ALL {
            assert_eq!(h.rare(r), None);
        }
        // It still reads as the map it wraps.
        assert_eq!(
            header_str(&h, header::CONTENT_TYPE),
            Some("application/json")
        );
        map.insert(X_TTL, HeaderValue::from_static("5"));
        map.append(X_TTL, HeaderValue::from_static("6"));
        assert_eq!(ReqHeaders::of(&map).rare_str(Rare::Ttl), Some("5"));
    }
}

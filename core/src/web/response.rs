//! Writing a response: CORS, the error bodies (ooo's text or a problem document), challenges,
//! entry headers, and SSE framing.

use super::*;

// Whether every origin is allowed (`*` among the configured ones).
fn any_origin(origins: &[String]) -> bool {
    origins.iter().any(|o| o == "*")
}

/// Headers every response carries: AtomKV's CORS set, narrowed to the configured origins.
pub fn cors_headers(engine: &Engine, req: &HeaderMap, out: &mut HeaderMap) {
    cors(&engine.config().cors_origins, req, out)
}

/// [`cors_headers`] for a host without an engine at hand (the edge's worker): `origins` as in
/// [`Config::cors_origins`](crate::engine::Config::cors_origins).
pub fn cors(origins: &[String], req: &HeaderMap, out: &mut HeaderMap) {
    // Static values, parsed once: every response carries these (AtomKV's contract).
    let allow = if any_origin(origins) {
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
            HeaderValue::from_static("X-Revision, ETag, X-Version, X-TTL"),
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
/// `engine` is the engine, or the CORS origins of a host that answers without one.
pub fn refusal<B>(engine: &(impl Cors + ?Sized), req: &Request<B>, e: &Error) -> Response<Bytes> {
    let path = req.uri().path();
    if path.starts_with("/_") {
        problem(engine, req.headers(), e)
    } else {
        plain_error(engine, req.headers(), e, req.method().as_str(), path)
    }
}

/// `X-Revision`, AtomKV's revision header.
pub(super) const X_REVISION: HeaderName = HeaderName::from_static("x-revision");
/// `X-Version`: the store's version (its last sequence number, hex) when a read was answered.
pub(super) const X_VERSION: HeaderName = HeaderName::from_static("x-version");
// Request headers the routes read, named once: looking a header up by a `&str` parses and
// checks the name on every request.
pub(super) const X_TTL: HeaderName = HeaderName::from_static("x-ttl");
pub(super) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The headers of a JSON answer when every origin is allowed, made once (see [`respond`]).
static JSON_ANY_ORIGIN: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
    let mut h = HeaderMap::with_capacity(12);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    cors(&["*".to_string()], &HeaderMap::new(), &mut h);
    h
});

/// [`JSON_ANY_ORIGIN`] with the version headers at their places, holding nothing yet: a copy
/// of a map has no room beyond what it holds, and adding two headers to it grew it (half of
/// the answer's cost), where setting a header it has does not.
static JSON_ANY_ORIGIN_VERSIONED: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
    let mut h = JSON_ANY_ORIGIN.clone();
    h.insert(X_REVISION, HeaderValue::from_static(""));
    h.insert(header::ETAG, HeaderValue::from_static(""));
    h
});

/// [`JSON_ANY_ORIGIN_VERSIONED`] with a read's headers at their places ([`read_headers`]):
/// `Cache-Control: no-cache`, and `X-Version` holding nothing yet.
static JSON_ANY_ORIGIN_READ: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
    let mut h = JSON_ANY_ORIGIN_VERSIONED.clone();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    h.insert(X_VERSION, HeaderValue::from_static(""));
    h
});

const NO_CACHE: &str = "no-cache";

/// A key's value as `GET` answers it: [`respond_versioned`] with [`read_headers`], the store
/// being at `last_seq`.
pub(super) fn respond_read(
    engine: &(impl Cors + ?Sized),
    req: &HeaderMap,
    body: Bytes,
    (revision, seq): (u64, u64),
    last_seq: u64,
) -> Response<Bytes> {
    if !any_origin(engine.cors_origins()) {
        let mut r = respond_versioned(engine, req, StatusCode::OK, body, (revision, seq));
        read_headers(&mut r, last_seq);
        return r;
    }
    let mut r = Response::new(body);
    *r.headers_mut() = JSON_ANY_ORIGIN_READ.clone();
    set_versions(r.headers_mut(), revision, seq, Some(last_seq));
    r
}

/// The headers of every read's answer: `Cache-Control: no-cache` (a value changes at any
/// time), and `X-Version`, the store's version when it was read (`last_seq`).
pub(super) fn read_headers(r: &mut Response<Bytes>, last_seq: u64) {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    if let Ok(v) = HeaderValue::from_bytes(crate::store::Etag::of(last_seq).hex()) {
        h.insert(X_VERSION, v);
    }
}

/// [`respond`] with a JSON body and a version's headers ([`version_headers`]): a write's
/// answer (a key's value is [`respond_read`]).
pub(super) fn respond_versioned(
    engine: &(impl Cors + ?Sized),
    req: &HeaderMap,
    status: StatusCode,
    body: Bytes,
    (revision, seq): (u64, u64),
) -> Response<Bytes> {
    let mut r = if any_origin(engine.cors_origins()) {
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = JSON_ANY_ORIGIN_VERSIONED.clone();
        r
    } else {
        respond(engine, req, status, Some(JSON), body)
    };
    version_headers(&mut r, revision, seq);
    r
}

pub(super) fn respond(
    engine: &(impl Cors + ?Sized),
    req: &HeaderMap,
    status: StatusCode,
    ctype: Option<&'static str>,
    body: Bytes,
) -> Response<Bytes> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let origins = engine.cors_origins();
    if ctype == Some(JSON) && any_origin(origins) {
        // A JSON answer with every origin allowed (most answers): its headers are the same
        // every time, so they are a copy of one map made once. Building the map and its five
        // headers anew was 4% of a small write's instructions, the copy is a fifth of that.
        *r.headers_mut() = JSON_ANY_ORIGIN.clone();
        return r;
    }
    // Room for every header a response gets (CORS, type, revision, ETag) without regrowing
    // the map, which was a tenth of a write's time in the core's benchmark.
    *r.headers_mut() = HeaderMap::with_capacity(12);
    if let Some(c) = ctype {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(c));
    }
    cors(origins, req, r.headers_mut());
    r
}

/// Where the CORS origins come from: an engine's configuration, or a list a host has at hand
/// without an engine (the edge's worker).
pub trait Cors {
    /// The allowed origins (`*`: any), as [`Config::cors_origins`](crate::engine::Config::cors_origins).
    fn cors_origins(&self) -> &[String];
}

impl Cors for Engine {
    fn cors_origins(&self) -> &[String] {
        &self.config().cors_origins
    }
}

impl Cors for [String] {
    fn cors_origins(&self) -> &[String] {
        self
    }
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
pub(super) fn challenge(r: &mut Response<Bytes>, e: &Error) {
    let v = match e {
        Error::Unauthorized(why) => www_authenticate(why, true),
        Error::NoToken(why) => www_authenticate(why, false),
        // An embedding program's audit hook: the bare challenge, as it says nothing of a token.
        Error::NotAuthorized(_) => www_authenticate("", false),
        _ => return,
    };
    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
}

pub(super) const TEXT: &str = "text/plain; charset=utf-8";
pub(super) const JSON: &str = "application/json";
pub(super) const PROBLEM: &str = "application/problem+json";

/// ooo's (and AtomKV's) plain-text error: the message and a newline, as Go's `http.Error` writes.
/// `path` is the request's (decoded) path, named where ooo's own text would not say which key.
pub(super) fn plain_error(
    engine: &(impl Cors + ?Sized),
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
pub(super) fn problem(
    engine: &(impl Cors + ?Sized),
    req: &HeaderMap,
    e: &Error,
) -> Response<Bytes> {
    let mut r = respond(engine, req, e.status(), Some(PROBLEM), problem_body(e));
    challenge(&mut r, e);
    r
}

/// The bytes of `e`'s problem document: `{"type","title","status","code","detail"}`.
pub(super) fn problem_body(e: &Error) -> Bytes {
    match e.members() {
        None => problem_json(e.status(), e.code(), &e.to_string()),
        Some(Value::Object(more)) => {
            let mut body = problem_value(e.status(), e.code(), &e.to_string());
            if let Value::Object(o) = &mut body {
                o.extend(more);
            }
            json::encode(&body).into()
        }
        Some(_) => problem_json(e.status(), e.code(), &e.to_string()),
    }
}

/// The one shape of every problem document (RFC 9457).
pub(super) fn problem_json(status: StatusCode, code: &str, detail: &str) -> Bytes {
    json::encode(&problem_value(status, code, detail)).into()
}

fn problem_value(status: StatusCode, code: &str, detail: &str) -> Value {
    json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
    })
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

pub(super) fn entry_headers(r: &mut Response<Bytes>, e: &Entry) {
    version_headers(r, e.revision, e.seq)
}

/// [`entry_headers`] from the version's revision and sequence number.
pub(super) fn version_headers(r: &mut Response<Bytes>, revision: u64, seq: u64) {
    set_versions(r.headers_mut(), revision, seq, None);
}

// Sets a version's headers, and the store's version if given, where the map has them (the
// placeholders of [`JSON_ANY_ORIGIN_VERSIONED`] and [`JSON_ANY_ORIGIN_READ`], every write's and
// read's answer): walking the template's headers and comparing their names costs less than
// looking them up (hashing them) and less than inserting them. What the map lacks is inserted.
fn set_versions(h: &mut HeaderMap, revision: u64, seq: u64, last_seq: Option<u64>) {
    let mut revision = Some(HeaderValue::from(revision));
    let mut etag = HeaderValue::from_bytes(crate::store::Etag::of(seq).as_bytes()).ok();
    let mut version =
        last_seq.and_then(|s| HeaderValue::from_bytes(crate::store::Etag::of(s).hex()).ok());
    for (name, value) in h.iter_mut() {
        if name == header::ETAG {
            if let Some(v) = etag.take() {
                *value = v;
            }
        } else if name == X_REVISION {
            if let Some(v) = revision.take() {
                *value = v;
            }
        } else if version.is_some() && name == X_VERSION {
            if let Some(v) = version.take() {
                *value = v;
            }
        }
    }
    if let Some(v) = revision {
        h.insert(X_REVISION, v);
    }
    if let Some(v) = etag {
        h.insert(header::ETAG, v);
    }
    if let Some(v) = version {
        h.insert(X_VERSION, v);
    }
}

/// Gives a write's answer the version its change got when another log ordered it (a cluster
/// node computes the answer first, with the version it expected; see [`crate::replica`]).
pub fn restamp(r: &mut Response<Bytes>, seq: u64) {
    if let Some(TxAnswer(mut outcome)) = r.extensions_mut().remove() {
        outcome.restamp(seq);
        *r.body_mut() = tx_body(&outcome);
        return;
    }
    if r.headers().contains_key(header::ETAG) {
        if let Ok(v) = HeaderValue::from_bytes(crate::store::Etag::of(seq).as_bytes()) {
            r.headers_mut().insert(header::ETAG, v);
        }
    }
}

/// Remembers the id of a cluster node's write once the cluster ordered it, its last change at
/// `seq` (nothing for an answer without one): a repeat sent to this node is then answered.
pub fn remember(engine: &mut Engine, r: &mut Response<Bytes>, seq: Option<u64>) {
    if let Some(u) = r.extensions_mut().remove::<crate::receipts::Unordered>() {
        engine.remember_ordered(u, seq);
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

#[cfg(test)]
mod tests {
    use super::*;

    // The headers of an answer as they are built one by one.
    fn built(origins: &[String], req: &HeaderMap, ctype: &'static str) -> Vec<(String, String)> {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        cors(origins, req, &mut h);
        listed(&h)
    }

    fn listed(h: &HeaderMap) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn an_answer_has_the_same_headers_whichever_way_they_are_made() {
        let any = vec!["*".to_string()];
        let one = vec!["https://app.example".to_string()];
        let mut req = HeaderMap::new();
        req.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example"),
        );
        for (origins, ctype) in [(&any, JSON), (&any, PROBLEM), (&one, JSON), (&one, PROBLEM)] {
            let r = respond(
                &origins[..],
                &req,
                StatusCode::OK,
                Some(ctype),
                Bytes::new(),
            );
            assert_eq!(
                listed(r.headers()),
                built(origins, &req, ctype),
                "{origins:?} {ctype}"
            );
        }
        // With a version: the same as adding its headers to the answer, in the same order.
        for origins in [&any, &one] {
            let mut want = respond(&origins[..], &req, StatusCode::OK, Some(JSON), Bytes::new());
            version_headers(&mut want, 7, 0x1f);
            let r = respond_versioned(&origins[..], &req, StatusCode::OK, Bytes::new(), (7, 0x1f));
            assert_eq!(listed(r.headers()), listed(want.headers()), "{origins:?}");
            assert_eq!(r.headers()[header::ETAG], "\"1f\"");
            assert_eq!(r.headers()[X_REVISION], "7");
        }
        // A read's answer: the same as adding `Cache-Control` and `X-Version` to a versioned
        // answer, in the same order (as the headers were added before the shared map had them).
        for origins in [&any, &one] {
            let mut want =
                respond_versioned(&origins[..], &req, StatusCode::OK, Bytes::new(), (7, 0x1f));
            want.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            want.headers_mut()
                .insert("x-version", HeaderValue::from_static("2a"));
            let r = respond_read(&origins[..], &req, Bytes::new(), (7, 0x1f), 0x2a);
            assert_eq!(listed(r.headers()), listed(want.headers()), "{origins:?}");
            let mut bare = respond(&origins[..], &req, StatusCode::OK, Some(JSON), Bytes::new());
            read_headers(&mut bare, 0);
            assert_eq!(bare.headers()[X_VERSION], "0");
            assert_eq!(bare.headers()[header::CACHE_CONTROL], "no-cache");
        }
        let again = respond_read(&any[..], &req, Bytes::new(), (9, 0x21), u64::MAX);
        assert_eq!(again.headers()[X_VERSION], "ffffffffffffffff");
        assert_eq!(again.headers()[header::ETAG], "\"21\"");
        assert_eq!(again.headers()[X_REVISION], "9");
        // The shared maps are copied, not changed by an answer's own headers.
        let again = respond(&any[..], &req, StatusCode::OK, Some(JSON), Bytes::new());
        assert_eq!(listed(again.headers()), built(&any, &req, JSON));
        let again = respond_versioned(&any[..], &req, StatusCode::OK, Bytes::new(), (8, 0x20));
        assert_eq!(again.headers()[header::ETAG], "\"20\"");
        assert_eq!(again.headers()[X_REVISION], "8");
    }
}

//! The routes of plain HTTP requests: ooo's and AtomKV's data routes, the extended `/_` routes
//! and the `/?api=` queries ([`handle_as`]).

use super::*;

pub(super) fn parse_ttl(q: &[(String, String)], h: &ReqHeaders) -> Result<Ttl, Error> {
    let raw = query_get(q, "ttl").or_else(|| h.rare_str(Rare::Ttl));
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

pub(super) fn conditions(h: &ReqHeaders) -> Result<Cond, Error> {
    if let Some(m) = h.rare_str(Rare::IfMatch) {
        return Ok(Cond::IfMatch(
            m.split(',')
                .map(|t| t.trim().trim_start_matches("W/").to_string())
                .collect(),
        ));
    }
    if let Some(m) = h.rare_str(Rare::IfNoneMatch) {
        if m.trim() == "*" {
            return Ok(Cond::IfAbsent);
        }
        return Err(Error::BadRequest(
            "If-None-Match on a write must be \"*\"".into(),
        ));
    }
    Ok(Cond::Always)
}

pub(super) fn body_json(engine: &Engine, body: &[u8]) -> Result<Value, Error> {
    let c = engine.config();
    Ok(json::parse_limited(body, c.max_depth, c.max_nodes)?)
}

/// A set's body: its bytes when they are what storing its tree would write (no tree is built
/// then), else its tree, under the same limits and with the same errors as [`body_json`].
pub(super) fn body_given(engine: &Engine, body: &[u8]) -> Result<Given, Error> {
    let c = engine.config();
    match Given::text(body, c.max_depth, c.max_nodes) {
        Some(g) => Ok(g),
        None => Ok(body_json(engine, body)?.into()),
    }
}

/// Answers a plain HTTP request for whoever its bearer token says (see [`token`]). Changes in
/// the outcome are applied to memory but not published.
pub fn handle(engine: &mut Engine, tick: Tick, req: &Request<Bytes>) -> HttpOutcome {
    let sniff = Sniff::of(req);
    if let Some(response) = early_refusal(engine, req, sniff) {
        return HttpOutcome {
            response,
            changes: vec![],
        };
    }
    let who = engine.identify(tick, token_sniffed(req, sniff).as_deref());
    handle_as(engine, tick, req, &who)
}

/// Answers a plain HTTP request for `who` (the front door identified the caller and ran
/// [`classify`], which refuses a disallowed origin or a token in the URL first). A write
/// answered from its receipt (a repeated `Idempotency-Key`) says so in `Idempotent-Replayed:
/// true`.
pub(crate) fn handle_as(
    engine: &mut Engine,
    tick: Tick,
    req: &Request<Bytes>,
    who: &Identity,
) -> HttpOutcome {
    let repeats = engine.stats().repeats;
    // Only this request's own write may ride on its answer.
    engine.take_unordered();
    let mut out = route(engine, tick, req, who);
    // A cluster node's write with an id: remembered once the cluster ordered it.
    if let Some(u) = engine.take_unordered() {
        if out.response.status().is_success() {
            out.response.extensions_mut().insert(u);
        }
    }
    if engine.stats().repeats > repeats {
        out.response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    out
}

/// [`Engine::execute_once`] with the request's `Idempotency-Key`, if it has one.
fn exec(
    engine: &mut Engine,
    h: &ReqHeaders,
    tick: Tick,
    op: Op,
    who: &Identity,
) -> Result<Applied, Error> {
    let rid = match h.rare(Rare::IdempotencyKey) {
        None => None,
        Some(v) => Some(crate::receipts::from_header(v.to_str().map_err(|_| {
            Error::BadRequest("Idempotency-Key must be visible ASCII".into())
        })?)?),
    };
    engine.execute_once(tick, op, who, rid.as_deref())
}

fn route(engine: &mut Engine, tick: Tick, req: &Request<Bytes>, who: &Identity) -> HttpOutcome {
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
        let hs = ReqHeaders::of(h);
        let r = extended(engine, tick, method, rest, &q, &hs, req.body(), who);
        return match r {
            Ok((response, changes)) => HttpOutcome { response, changes },
            Err(e) => HttpOutcome {
                response: problem(engine, h, &e),
                changes: vec![],
            },
        };
    }
    match data_route(
        engine,
        tick,
        method,
        path,
        &q,
        &ReqHeaders::of(h),
        req.body(),
        who,
    ) {
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

pub(super) fn index_body(key: &str) -> Bytes {
    // `{"index":"<last segment>"}`, written directly: this is every POST's answer.
    let last = crate::key::last_segment(key);
    let mut out = Vec::with_capacity(last.len() + 12);
    out.extend_from_slice(br#"{"index":"#);
    // A string always serializes.
    let _ = serde_json::to_writer(&mut out, last);
    out.push(b'}');
    out.into()
}

/// A transaction's answer, kept on its response so a cluster node can give it the versions
/// the cluster's log gave its changes ([`super::restamp`]).
#[derive(Debug, Clone)]
pub(super) struct TxAnswer(pub(super) Outcome);

/// The keys a `POST /_tx` body compares and writes (none if it does not parse: the route
/// refuses it with the reason), for a host that places a transaction before it runs it (the
/// edge: one Durable Object per namespace).
pub fn tx_keys(body: &[u8]) -> Vec<String> {
    let Ok(Value::Object(o)) = json::parse_limited(body, 64, json::MAX_NODES) else {
        return Vec::new();
    };
    match crate::mux::tx(&o, &Value::Null) {
        Ok(tx) => crate::session::op_keys(&Op::Tx(tx))
            .into_iter()
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The body of a transaction's answer: `{"ok":true,"version":..,"results":[..]}`.
pub(super) fn tx_body(outcome: &Outcome) -> Bytes {
    let mut v = json!({"ok": true});
    if let (Value::Object(o), Value::Object(more)) =
        (&mut v, crate::mux::applied_fields("tx", outcome))
    {
        o.extend(more);
    }
    json::encode(&v).into()
}

pub(super) fn written(
    engine: &Engine,
    h: &HeaderMap,
    a: Applied,
    body: Option<Bytes>,
    status: StatusCode,
) -> Routed {
    // The answer needs the entry's version only: not a copy of it (a copy of an entry with a
    // built tree allocates).
    let (body, revision, seq) = match &a.outcome {
        Outcome::Written(k, e) | Outcome::Taken(k, e) => {
            (body.unwrap_or_else(|| index_body(k)), e.revision, e.seq)
        }
        Outcome::Deleted(_) => {
            return Ok((
                respond(engine, h, StatusCode::NO_CONTENT, None, Bytes::new()),
                a.changes,
            ))
        }
        Outcome::Tx(_) => {
            let mut r = respond(engine, h, status, Some(JSON), tx_body(&a.outcome));
            r.extensions_mut().insert(TxAnswer(a.outcome));
            return Ok((r, a.changes));
        }
    };
    let r = respond_versioned(engine, h, status, body, (revision, seq));
    Ok((r, a.changes))
}

// One argument per part of the request: this is the router.
#[allow(clippy::too_many_arguments)]
pub(super) fn data_route(
    engine: &mut Engine,
    tick: Tick,
    method: &Method,
    path: &str,
    q: &[(String, String)],
    h: &ReqHeaders,
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
                p => engine.authorize_caller(&p.text(), who)?,
            }
            engine.filters().check(Need::Read, &pattern.text())?;
            if let Some(n) = query_get(q, "history") {
                return history::read(engine, h, &pattern, n);
            }
            let mut r = read(engine, h, &pattern, who)?;
            history::add_ttl(engine, tick, &pattern, &mut r.0);
            Ok(r)
        }
        "POST" => {
            let target = path.strip_prefix('/').ok_or(KeyError::NoLeadingSlash)?;
            let glob = crate::key::http_path_is_glob(path)?;
            let ttl = parse_ttl(q, h)?;
            let op = match glob {
                false => Op::Set {
                    key: target.into(),
                    value: body_given(engine, body)?,
                    ttl,
                    cond: conditions(h)?,
                },
                true => Op::Push {
                    target: target.into(),
                    value: body_given(engine, body)?,
                    ttl,
                },
            };
            let a = exec(engine, h, tick, op, who)?;
            written(engine, h, a, None, StatusCode::OK)
        }
        "PUT" => {
            // AtomKV's compare-and-swap, with its order of checks; If-Match works too.
            let key = match Pattern::from_http_path(path, false)? {
                Pattern::Key(k) => k,
                _ => return Err(KeyError::GlobNotAllowed.into()),
            };
            let cond = match header_str(h, X_REVISION) {
                Some(r) => {
                    Cond::NextRevision(r.trim().parse().map_err(|_| Error::InvalidRevision)?)
                }
                None => match conditions(h)? {
                    Cond::Always => return Err(Error::MissingRevision),
                    c => c,
                },
            };
            let value = body_given(engine, body).map_err(|e| match e {
                Error::Json(json::JsonError::Syntax(_)) => {
                    Error::Json(json::JsonError::Syntax("not a JSON value".into()))
                }
                e => e,
            })?;
            let ttl = parse_ttl(q, h)?;
            let a = exec(
                engine,
                h,
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
            let a = exec(
                engine,
                h,
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
            let a = exec(
                engine,
                h,
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

pub(super) fn read(engine: &Engine, h: &HeaderMap, pattern: &Pattern, who: &Identity) -> Routed {
    let filters = engine.filters();
    let last_seq = engine.store().last_seq();
    let Pattern::Key(k) = pattern else {
        return read_list(engine, h, pattern, who, last_seq);
    };
    let e = engine.store().get(k).ok_or(Error::NotFound)?;
    if let Some(inm) = header_str(h, header::IF_NONE_MATCH) {
        if inm
            .split(',')
            .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == e.etag())
        {
            let mut r = respond(engine, h, StatusCode::NOT_MODIFIED, None, Bytes::new());
            entry_headers(&mut r, e);
            read_headers(&mut r, last_seq);
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
    // Its headers all at once, the read's with the version's.
    let r = respond_read(engine, h, body, (e.revision, e.seq), last_seq);
    Ok((r, vec![]))
}

// [`read`] of a glob or a subtree: the keys it matches that the caller may read.
fn read_list(engine: &Engine, h: &HeaderMap, p: &Pattern, who: &Identity, last_seq: u64) -> Routed {
    let filters = engine.filters();
    let mut items = engine.store().list(p);
    // A list never includes a key the caller may not read.
    if filters.rules().is_some() {
        items.retain(|(k, _)| engine.can_read(k, who));
    }
    let p_str = p.text();
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
    let mut r = respond(engine, h, StatusCode::OK, Some(JSON), body);
    read_headers(&mut r, last_seq);
    Ok((r, vec![]))
}

// One argument per part of the request: this is the router.
#[allow(clippy::too_many_arguments)]
pub(super) fn extended(
    engine: &mut Engine,
    tick: Tick,
    method: &Method,
    rest: &str,
    q: &[(String, String)],
    h: &ReqHeaders,
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
            let a = exec(
                engine,
                h,
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
                json::encode(&json!({"key": &**k, "value": *e.data(), "revision": e.revision}));
            written(engine, h, a.clone(), Some(body.into()), StatusCode::OK)
        }
        "take" => {
            post_only(method)?;
            let a = exec(engine, h, tick, Op::Take { key: key.into() }, who)?;
            let Outcome::Taken(k, e) = &a.outcome else {
                unreachable!("take takes")
            };
            let body = meta::bytes(k, e);
            written(engine, h, a.clone(), Some(body), StatusCode::OK)
        }
        "tx" if key.is_empty() => {
            post_only(method)?;
            let Value::Object(o) = body_json(engine, body)? else {
                return Err(Error::BadRequest(
                    "tx: the body must be a JSON object {\"if\":[...],\"then\":[...]}".into(),
                ));
            };
            let tx = crate::mux::tx(&o, &Value::Null).map_err(|r| r.error)?;
            let a = exec(engine, h, tick, Op::Tx(tx), who)?;
            written(engine, h, a, None, StatusCode::OK)
        }
        "rename" => {
            post_only(method)?;
            let v = body_json(engine, body)?;
            let to = v.get("to").and_then(Value::as_str).ok_or_else(|| {
                Error::BadRequest("rename: body must be {\"to\": \"<key>\"}".into())
            })?;
            let overwrite = v.get("overwrite").and_then(Value::as_bool).unwrap_or(false);
            let a = exec(
                engine,
                h,
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

pub(super) fn api_route(
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

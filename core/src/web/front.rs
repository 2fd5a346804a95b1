//! The front door: one call per request ([`serve`]) that tells the adapter what to do.

use super::*;

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
    /// The host completes WebSocket handshakes itself (the native server), so the front door
    /// checks them (RFC 6455, section 4.2.1) before an upgrade. Off where the platform has
    /// checked them already (Workers hand the object only a request it can upgrade).
    pub checks_handshakes: bool,
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
    let sniff = Sniff::of(req);
    let who = engine.identify(tick, token_sniffed(req, sniff).as_deref());
    let kind = match classify_sniffed(engine, req, sniff) {
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
        if path == "/"
            && query_get(&query_pairs(req.uri().query().unwrap_or("")), "api") == Some("endpoints")
        {
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
    if host.checks_handshakes && matches!(kind, Ok(Kind::Clock | Kind::Mux | Kind::Subscribe(_))) {
        if let Err(e) = websocket_handshake(req) {
            return respond(refusal(engine, req, &e));
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

pub(super) fn respond_with(
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
pub(super) fn unhealthy(
    engine: &Engine,
    req: &HeaderMap,
    status: &str,
    why: &str,
) -> Response<Bytes> {
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

/// Compares two byte strings in time that depends on their lengths only, not on where they
/// differ (a backup token must not leak through response timing).
pub(super) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

pub(super) fn backup<B>(engine: &Engine, req: &Request<B>, backups: Backups<'_>) -> Action {
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

/// The checks of a WebSocket opening handshake (RFC 6455, section 4.2.1) a server makes before
/// it upgrades: `GET`, `Connection: upgrade`, `Upgrade: websocket`, version 13 and a key.
fn websocket_handshake<B>(req: &Request<B>) -> Result<(), Error> {
    let h = req.headers();
    let has = |name: HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
        })
    };
    if req.method() != Method::GET {
        return Err(Error::MethodNotAllowed);
    }
    let missing = if !has(header::CONNECTION, "upgrade") {
        "a WebSocket handshake needs `Connection: upgrade`"
    } else if !has(header::UPGRADE, "websocket") {
        "a WebSocket handshake needs `Upgrade: websocket`"
    } else if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        "a WebSocket handshake needs `Sec-WebSocket-Version: 13`"
    } else if !h.contains_key(header::SEC_WEBSOCKET_KEY) {
        "a WebSocket handshake needs a `Sec-WebSocket-Key`"
    } else {
        return Ok(());
    };
    Err(Error::BadRequest(missing.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Filters};

    fn ws_request(skip: &str) -> Request<Bytes> {
        let mut b = Request::builder().method("GET").uri("/_ws");
        for (k, v) in [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ] {
            if k != skip {
                b = b.header(k, v);
            }
        }
        b.body(Bytes::new()).unwrap()
    }

    #[test]
    fn a_websocket_handshake_is_checked_before_the_upgrade() {
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        let t = Tick::from_wall(2);
        let host = Host {
            checks_handshakes: true,
            ..Host::default()
        };
        assert!(matches!(
            serve(&mut e, t, &ws_request(""), &host),
            Action::Upgrade {
                socket: Socket::Mux,
                ..
            }
        ));
        for (skip, says) in [
            ("connection", "Connection: upgrade"),
            ("sec-websocket-version", "Sec-WebSocket-Version: 13"),
            ("sec-websocket-key", "Sec-WebSocket-Key"),
        ] {
            let Action::Respond(out) = serve(&mut e, t, &ws_request(skip), &host) else {
                panic!("without {skip}: not refused");
            };
            assert_eq!(out.response.status(), StatusCode::BAD_REQUEST, "{skip}");
            let body = String::from_utf8_lossy(out.response.body()).into_owned();
            assert!(body.contains(says), "{skip}: {body}");
            assert!(out.changes.is_empty());
        }
    }

    #[test]
    fn a_body_that_could_not_be_read_changes_nothing() {
        let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
        let req = Request::builder()
            .method("PUT")
            .uri("/k")
            .body(Bytes::from_static(b"1"))
            .unwrap();
        let host = Host {
            body_error: Some(Error::BodyUnreadable),
            ..Host::default()
        };
        let Action::Respond(out) = serve(&mut e, Tick::from_wall(2), &req, &host) else {
            panic!("refused with an answer");
        };
        assert_eq!(out.response.status(), StatusCode::BAD_REQUEST);
        assert!(out.changes.is_empty());
        assert!(e.store().get("k").is_none());
    }
}

//! Access rules over the wire, with `examples/rules.toml`: keys below `private/<user>/` belong
//! to the token whose `sub` is `<user>`; everything else is public. For every route and protocol
//! a protected key is attacked without a token, with an expired token, with another user's
//! token, and through globs that cover it: every attempt is refused (401/403) or filtered, the
//! protected value never appears in a body or a frame, and nothing changes. The owner's
//! attempts succeed.

use http::Method;
use serde_json::{json, Value};
use stateline_conformance::{
    next_event, next_json, send_text, unique, Server, Sse, Ws, WsEvent, QUIET, SOON,
};
use stateline_core::token::sign_hs256;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Tokens {
    alice: String,
    bob: String,
    // Alice's own token, expired an hour ago (beyond the 30 s leeway).
    expired: String,
}

fn tokens(secret: &str) -> Tokens {
    let t = |sub: &str, exp: i64| sign_hs256(&json!({"sub": sub, "exp": exp}), secret.as_bytes());
    Tokens {
        alice: t("alice", now() + 600),
        bob: t("bob", now() + 600),
        expired: t("alice", now() - 3600),
    }
}

/// A protected key of alice's with a unique marker value, written by alice.
struct Fixture {
    server: Server,
    tok: Tokens,
    dir: String,
    key: String,
    marker: String,
}

async fn fixture() -> Option<Fixture> {
    let (server, secret) = Server::with_rules().await?;
    let tok = tokens(&secret);
    let u = unique("r");
    let dir = format!("private/alice/{u}");
    let key = format!("{dir}/secret");
    let marker = format!("TOPSECRET{u}");
    let c = server.client();
    let auth = format!("Bearer {}", tok.alice);
    let r = c
        .request(
            Method::POST,
            &format!("/{key}"),
            &[("authorization", &auth)],
            json!({ "m": marker }).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "the owner writes: {}", r.text());
    Some(Fixture {
        server,
        tok,
        dir,
        key,
        marker,
    })
}

impl Fixture {
    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    /// (label, Authorization header, expected status) for each attacker.
    fn attackers(&self) -> Vec<(&'static str, Option<String>, u16)> {
        vec![
            ("no token", None, 401),
            ("expired", Some(Fixture::bearer(&self.tok.expired)), 401),
            ("bob", Some(Fixture::bearer(&self.tok.bob)), 403),
        ]
    }

    async fn req(
        &self,
        m: Method,
        path: &str,
        auth: Option<&str>,
        body: &str,
    ) -> stateline_client::Response {
        let mut h: Vec<(&str, &str)> = vec![];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        self.server
            .client()
            .request(m, path, &h, body.to_string())
            .await
            .unwrap()
    }

    /// The owner's view of the key: (revision, body). Proves nothing changed.
    async fn owner_view(&self) -> (String, String) {
        let a = Fixture::bearer(&self.tok.alice);
        let r = self
            .req(Method::GET, &format!("/{}", self.key), Some(&a), "")
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let list = self
            .req(Method::GET, &format!("/{}/*", self.dir), Some(&a), "")
            .await;
        (
            r.header("x-revision").unwrap_or("").to_string(),
            format!("{}{}", r.text(), list.text()),
        )
    }

    fn assert_no_leak(&self, what: &str, body: &str) {
        assert!(
            !body.contains(&self.marker),
            "{what}: the protected value leaked: {body}"
        );
    }
}

#[tokio::test]
async fn rest_reads_lists_and_keys_api() {
    let Some(f) = fixture().await else { return };
    let key_path = format!("/{}", f.key);
    let globs = [
        format!("/{}/*", f.dir),
        "/private/*/*/*".to_string(),
        "/*/*/*/*".to_string(),
    ];
    for (who, auth, status) in f.attackers() {
        let r = f.req(Method::GET, &key_path, auth.as_deref(), "").await;
        assert_eq!(r.status, status, "GET {key_path} as {who}: {}", r.text());
        f.assert_no_leak(who, &r.text());
        if status == 401 {
            // RFC 6750 §3.1: no error code for a request that sent no credentials; a refused
            // token is named as such.
            let challenge = r.header("www-authenticate").unwrap_or("");
            if auth.is_none() {
                assert_eq!(challenge, "Bearer realm=\"stateline\"", "{who}");
            } else {
                assert!(
                    challenge.starts_with("Bearer realm=\"stateline\", error=\"invalid_token\""),
                    "{who}: {challenge}"
                );
            }
        }
        let r = f.req(Method::HEAD, &key_path, auth.as_deref(), "").await;
        assert_eq!(r.status, status, "HEAD as {who}");
        for g in &globs {
            let r = f.req(Method::GET, g, auth.as_deref(), "").await;
            f.assert_no_leak(who, &r.text());
            if who == "expired" {
                assert_eq!(r.status, 401, "GET {g} with an expired token");
            } else {
                assert_eq!(r.status, 200, "GET {g} as {who}");
                assert!(
                    !r.text().contains(&f.key),
                    "{who}: {g} lists the key: {}",
                    r.text()
                );
            }
        }
        for q in [
            "/?api=keys",
            "/?api=keys&filter=private",
            "/?api=keys&filter=private/*/*/*",
            "/?api=state",
        ] {
            let r = f.req(Method::GET, q, auth.as_deref(), "").await;
            assert!(!r.text().contains(&f.key), "{who}: {q}: {}", r.text());
        }
    }
    // The owner reads, lists and sees the key in the keys API.
    let a = Fixture::bearer(&f.tok.alice);
    let r = f.req(Method::GET, &key_path, Some(&a), "").await;
    assert!(r.status == 200 && r.text().contains(&f.marker));
    let r = f.req(Method::GET, &globs[1], Some(&a), "").await;
    assert!(r.text().contains(&f.marker), "{}", r.text());
    let r = f
        .req(Method::GET, "/?api=keys&filter=private", Some(&a), "")
        .await;
    assert!(r.text().contains(&f.key), "{}", r.text());
    // The rest stays public.
    let open = format!("/public/{}", unique("p"));
    assert_eq!(f.req(Method::POST, &open, None, "1").await.status, 200);
    assert_eq!(f.req(Method::GET, &open, None, "").await.status, 200);
    // Denials are counted by reason.
    let m = f.req(Method::GET, "/_metrics", None, "").await.text();
    let count = |reason: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(&format!("stateline_denied_total{{reason=\"{reason}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        count("no_token") >= 2 && count("expired") >= 2 && count("forbidden") >= 2,
        "{m}"
    );
    assert!(m.contains("stateline_requests_total") && m.contains("stateline_connections"));
}

#[tokio::test]
async fn rest_writes_of_every_kind_are_refused() {
    let Some(f) = fixture().await else { return };
    let before = f.owner_view().await;
    let k = &f.key;
    let d = &f.dir;
    let other = format!("public/{}", unique("o"));
    assert_eq!(
        f.req(Method::POST, &format!("/{other}"), None, "{\"pub\":1}")
            .await
            .status,
        200
    );
    // (method, path, body, extra headers)
    type Attempt<'a> = (Method, String, &'a str, Vec<(&'a str, &'a str)>);
    let attempts: Vec<Attempt> = vec![
        (Method::POST, format!("/{k}"), "{\"m\":\"owned\"}", vec![]),
        (
            Method::POST,
            format!("/{d}/*"),
            "{\"m\":\"pushed\"}",
            vec![],
        ),
        (Method::POST, format!("/{d}/new"), "1", vec![]),
        (Method::PUT, format!("/{k}"), "2", vec![("x-revision", "1")]),
        (Method::PATCH, format!("/{k}"), "{\"m\":\"x\"}", vec![]),
        (
            Method::PATCH,
            format!("/{k}"),
            "[{\"op\":\"test\",\"path\":\"/m\",\"value\":\"x\"}]",
            vec![("content-type", "application/json-patch+json")],
        ),
        (Method::DELETE, format!("/{k}"), "", vec![]),
        (Method::DELETE, format!("/{d}/*"), "", vec![]),
        (Method::DELETE, "/private/*/*/*".into(), "", vec![]),
        (Method::POST, format!("/_incr/{d}/n"), "1", vec![]),
        (Method::POST, format!("/_take/{k}"), "", vec![]),
        (Method::POST, format!("/_rename/{k}"), "", vec![]),
        (Method::POST, format!("/_rename/{other}"), "", vec![]),
    ];
    let rename_out = json!({"to": other, "overwrite": true}).to_string();
    let rename_in = json!({"to": format!("{d}/planted"), "overwrite": true}).to_string();
    for (who, auth, status) in f.attackers() {
        for (m, path, body, extra) in &attempts {
            let body = match path.as_str() {
                p if p == format!("/_rename/{k}") => rename_out.as_str(),
                p if p == format!("/_rename/{other}") => rename_in.as_str(),
                _ => body,
            };
            let mut h: Vec<(&str, &str)> = extra.clone();
            if let Some(a) = &auth {
                h.push(("authorization", a));
            }
            let r = f
                .server
                .client()
                .request(m.clone(), path, &h, body.to_string())
                .await
                .unwrap();
            // A glob delete considers only keys the caller may read: over keys it may not read
            // it deletes nothing and answers 204, as if they did not exist (a refused token
            // still gets 401).
            let status = if *m == Method::DELETE && path.contains('*') && who != "expired" {
                204
            } else {
                status
            };
            assert_eq!(r.status, status, "{m} {path} as {who}: {}", r.text());
            f.assert_no_leak(who, &r.text());
            if path.starts_with("/_") {
                assert_eq!(
                    r.header("content-type"),
                    Some("application/problem+json"),
                    "{m} {path}"
                );
            }
        }
    }
    assert_eq!(f.owner_view().await, before, "nothing changed");
    let pubv = f.req(Method::GET, &format!("/{other}"), None, "").await;
    assert!(pubv.text().contains("\"pub\":1"), "{}", pubv.text());
    // The owner may do all of it.
    let a = Fixture::bearer(&f.tok.alice);
    let rename = json!({"to": format!("{d}/m")}).to_string();
    for (m, path, body) in [
        (Method::PATCH, format!("/{k}"), "{\"x\":1}"),
        (Method::POST, format!("/{d}/*"), "1"),
        (Method::POST, format!("/_incr/{d}/n"), "1"),
        (Method::POST, format!("/_rename/{d}/n"), rename.as_str()),
        (Method::POST, format!("/_take/{d}/m"), ""),
        (Method::DELETE, format!("/{d}/*"), ""),
    ] {
        let r = f.req(m.clone(), &path, Some(&a), body).await;
        assert!(
            r.status.is_success(),
            "{m} {path} as the owner: {}",
            r.status
        );
    }
    assert_eq!(
        f.req(Method::GET, &format!("/{k}"), Some(&a), "")
            .await
            .status,
        404
    );
}

async fn ws_with(
    server: &Server,
    path: &str,
    token: Option<&str>,
) -> Result<(Ws, Option<String>), u16> {
    let url = server.client().ws_url(path);
    let mut req = url.as_str().into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("bearer, {t}").parse().unwrap(),
        );
    }
    match tokio::time::timeout(SOON, tokio_tungstenite::connect_async(req)).await {
        Err(_) => panic!("connect {url}: timeout"),
        Ok(Ok((ws, resp))) => Ok((
            ws,
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        )),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(r))) => Err(r.status().as_u16()),
        Ok(Err(e)) => panic!("connect {url}: {e}"),
    }
}

/// Reads every frame for a while and returns them as one text.
async fn drain(ws: &mut Ws) -> String {
    let mut all = String::new();
    while let WsEvent::Data(b, _) = next_event(ws, QUIET).await {
        all.push_str(&String::from_utf8_lossy(&b));
        all.push('\n');
    }
    all
}

#[tokio::test]
async fn ooo_websocket_per_path() {
    let Some(f) = fixture().await else { return };
    let version = f
        .req(Method::GET, "/_health", None, "")
        .await
        .json()
        .unwrap()["seq"]
        .as_str()
        .unwrap()
        .to_string();
    let key_path = format!("/{}", f.key);
    // The key itself: refused at the handshake.
    assert_eq!(ws_with(&f.server, &key_path, None).await.err(), Some(401));
    assert_eq!(
        ws_with(&f.server, &key_path, Some(&f.tok.expired))
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        ws_with(&f.server, &key_path, Some(&f.tok.bob)).await.err(),
        Some(403)
    );
    assert_eq!(
        ws_with(&f.server, &format!("/{}/*", f.dir), Some(&f.tok.expired))
            .await
            .err(),
        Some(401)
    );
    // Globs and subtrees that cover it: open, but the key never shows, not even on resume.
    let covering = [
        format!("/{}/*", f.dir),
        "/private/*/*/*".to_string(),
        "/private/".to_string(),
        format!("/private/*/*/*?v={version}"),
        "/private/?v=1".to_string(),
    ];
    let mut watchers = Vec::new();
    for p in &covering {
        for t in [None, Some(f.tok.bob.as_str())] {
            let (mut ws, proto) = ws_with(&f.server, p, t).await.expect("glob open");
            if t.is_some() {
                assert_eq!(proto.as_deref(), Some("bearer"), "bearer protocol echoed");
            }
            let first = drain(&mut ws).await;
            f.assert_no_leak(p, &first);
            watchers.push((p.clone(), ws));
        }
    }
    // The owner subscribes (token as the bearer subprotocol) and writes: only she sees it.
    let (mut own, proto) = ws_with(&f.server, &key_path, Some(&f.tok.alice))
        .await
        .unwrap();
    assert_eq!(proto.as_deref(), Some("bearer"));
    let snap = next_json(&mut own).await;
    assert!(snap.to_string().contains(&f.marker), "{snap}");
    let a = Fixture::bearer(&f.tok.alice);
    let marker2 = format!("{}-again", f.marker);
    let r = f
        .req(
            Method::POST,
            &key_path,
            Some(&a),
            &json!({"m": marker2}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    let got = next_json(&mut own).await;
    assert!(got.to_string().contains(&marker2), "{got}");
    let (mut own_glob, _) = ws_with(&f.server, "/private/", Some(&f.tok.alice))
        .await
        .unwrap();
    assert!(drain(&mut own_glob).await.contains(&marker2));
    for (p, mut ws) in watchers {
        let frames = drain(&mut ws).await;
        f.assert_no_leak(&p, &frames);
        assert!(
            !frames.contains(&marker2) && !frames.contains(&f.key),
            "{p}: {frames}"
        );
    }
}

async fn mux(f: &Fixture, token: Option<&str>) -> Ws {
    ws_with(&f.server, "/_ws", token)
        .await
        .expect("mux opens")
        .0
}

/// Sends a request and returns its reply, collecting data frames seen on the way.
async fn call(ws: &mut Ws, msg: Value, seen: &mut String) -> Value {
    let id = msg["id"].clone();
    send_text(ws, &msg).await;
    loop {
        let v = next_json(ws).await;
        if v.get("ok").is_some() && v["id"] == id {
            return v;
        }
        seen.push_str(&v.to_string());
    }
}

#[tokio::test]
async fn mux_socket_subscriptions_writes_and_auth() {
    let Some(f) = fixture().await else { return };
    assert_eq!(
        ws_with(&f.server, "/_ws", Some(&f.tok.expired)).await.err(),
        Some(401)
    );
    let k = f.key.clone();
    let d = f.dir.clone();
    let ops = |n: i64| {
        vec![
            json!({"id": n, "op": "sub", "path": k}),
            json!({"id": n + 1, "op": "set", "key": k, "value": {"m": "owned"}}),
            json!({"id": n + 2, "op": "push", "path": format!("{d}/*"), "value": 1}),
            json!({"id": n + 3, "op": "patch", "key": k, "value": {"m": "x"}}),
            json!({"id": n + 4, "op": "del", "key": k}),
            json!({"id": n + 5, "op": "del", "key": format!("{d}/*")}),
            json!({"id": n + 6, "op": "incr", "key": format!("{d}/n")}),
            json!({"id": n + 7, "op": "take", "key": k}),
            json!({"id": n + 8, "op": "rename", "key": k, "to": "public/x", "overwrite": true}),
        ]
    };
    let before = f.owner_view().await;
    let mut seen = String::new();
    // Anonymous, then after a refused (expired) auth, then as bob.
    let mut ws = mux(&f, None).await;
    for (round, expect) in [(0, 401), (100, 401), (200, 403)] {
        if round == 100 {
            let r = call(
                &mut ws,
                json!({"id": "a1", "op": "auth", "token": f.tok.expired}),
                &mut seen,
            )
            .await;
            assert_eq!(r["error"]["status"], 401, "{r}");
        }
        if round == 200 {
            let r = call(
                &mut ws,
                json!({"id": "a2", "op": "auth", "token": f.tok.bob}),
                &mut seen,
            )
            .await;
            assert_eq!(
                (r["ok"].clone(), r["subject"].clone()),
                (json!(true), json!("bob")),
                "{r}"
            );
        }
        for m in ops(round) {
            let r = call(&mut ws, m.clone(), &mut seen).await;
            if m["op"] == "del" && m["key"].as_str().is_some_and(|k| k.contains('*')) {
                // A glob delete considers only keys the caller may read: none here.
                assert_eq!(r["deleted"], json!(0), "{m} -> {r}");
                continue;
            }
            assert_eq!(r["error"]["status"], expect, "{m} -> {r}");
        }
        for (i, p) in [format!("{d}/*"), "private/".into(), "private/*/*/*".into()]
            .iter()
            .enumerate()
        {
            let r = call(
                &mut ws,
                json!({"id": round + 50 + i as i64, "op": "sub", "path": p, "v": "1"}),
                &mut seen,
            )
            .await;
            assert_eq!(r["ok"], true, "{r}");
            let r = call(
                &mut ws,
                json!({"id": round + 60 + i as i64, "op": "unsub", "path": p}),
                &mut seen,
            )
            .await;
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    // Bob keeps a subtree subscription while alice writes.
    let r = call(
        &mut ws,
        json!({"id": "s", "op": "sub", "path": "private/"}),
        &mut seen,
    )
    .await;
    assert_eq!(r["ok"], true);
    assert_eq!(f.owner_view().await, before, "nothing changed");
    let mut own = mux(&f, Some(&f.tok.alice)).await;
    let mut own_seen = String::new();
    let r = call(
        &mut own,
        json!({"id": 1, "op": "sub", "path": k}),
        &mut own_seen,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(
        &mut own,
        json!({"id": 2, "op": "set", "key": k, "value": {"m": format!("{}-mux", f.marker)}}),
        &mut own_seen,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(own_seen.contains(&f.marker), "{own_seen}");
    seen.push_str(&drain(&mut ws).await);
    f.assert_no_leak("bob's /_ws", &seen);
    assert!(!seen.contains(&f.key), "{seen}");
    // Switching identity on the socket drops subscriptions the new one would see differently.
    let r = call(
        &mut own,
        json!({"id": 3, "op": "auth", "token": f.tok.bob}),
        &mut own_seen,
    )
    .await;
    assert_eq!(r["dropped"], json!([k]), "{r}");
}

#[tokio::test]
async fn sse_key_subtree_and_resume() {
    let Some(f) = fixture().await else { return };
    let key_path = format!("/{}", f.key);
    let refused = [
        (String::new(), 401),
        (format!("?token={}", f.tok.expired), 401),
        (format!("?access_token={}", f.tok.expired), 401),
        (format!("?token={}", f.tok.bob), 403),
    ];
    for (q, status) in &refused {
        let s = Sse::open(
            &f.server,
            &format!("{key_path}{q}"),
            "text/event-stream",
            "",
        )
        .await;
        assert!(
            s.head.starts_with(&format!("HTTP/1.1 {status}")),
            "{q}: {}",
            s.head
        );
        let sub = Sse::open(&f.server, &format!("/private/{q}"), "text/event-stream", "").await;
        if q.contains(&f.tok.expired) {
            assert!(sub.head.starts_with("HTTP/1.1 401"), "{}", sub.head);
        }
    }
    // Subtrees with initial values and resume from the start: the key never appears.
    let last_id = format!("Last-Event-ID: /{}:0\r\n", f.key);
    let mut open = Vec::new();
    for q in [
        "?initial=1".to_string(),
        format!("?initial=1&token={}", f.tok.bob),
    ] {
        for (path, extra) in [
            (format!("/private/{q}"), ""),
            (format!("/{}/{q}", f.dir), ""),
            (format!("/private/{q}"), last_id.as_str()),
        ] {
            let mut s = Sse::open(&f.server, &path, "text/event-stream", extra).await;
            assert!(s.head.starts_with("HTTP/1.1 200"), "{path}: {}", s.head);
            s.drain_for(QUIET).await;
            f.assert_no_leak(&path, &s.text());
            open.push((path, s));
        }
    }
    // The owner's stream (token in the query, for EventSource) gets her write; the others not.
    let mut own = Sse::open(
        &f.server,
        &format!("/{}/?access_token={}", f.dir, f.tok.alice),
        "text/event-stream",
        "",
    )
    .await;
    assert!(own.head.starts_with("HTTP/1.1 200"), "{}", own.head);
    let marker2 = format!("{}-sse", f.marker);
    let a = Fixture::bearer(&f.tok.alice);
    let r = f
        .req(
            Method::POST,
            &key_path,
            Some(&a),
            &json!({"m": marker2}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(own.wait_for(&marker2, SOON).await, "{}", own.text());
    let mut resumed = Sse::open(
        &f.server,
        &format!("/private/?token={}", f.tok.alice),
        "text/event-stream",
        &last_id,
    )
    .await;
    assert!(
        resumed.wait_for(&marker2, SOON).await,
        "owner resumes: {}",
        resumed.text()
    );
    for (path, mut s) in open {
        s.drain_for(QUIET).await;
        f.assert_no_leak(&path, &s.text());
        assert!(!s.text().contains(&marker2), "{path}: {}", s.text());
    }
}

#[tokio::test]
async fn glob_writes_never_name_keys_the_caller_may_not_read() {
    let Some(f) = fixture().await else { return };
    let before = f.owner_view().await;
    // Bob may read (and delete) his own keys only; alice's are invisible to him.
    let u = f.dir.rsplit('/').next().unwrap().to_string();
    let bob_dir = format!("private/bob/{u}");
    let bob = Fixture::bearer(&f.tok.bob);
    let r = f
        .req(Method::POST, &format!("/{bob_dir}/x"), Some(&bob), "1")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Bob's globs stay within this test's keys (`u`): the server may be shared.
    let mine = format!("/private/*/{u}/*");
    for (who, auth, globs) in [
        (
            "no token",
            None,
            ["/private/*/*/*", "/*/alice/*/*", mine.as_str()],
        ),
        (
            "bob",
            Some(bob.as_str()),
            ["/*/alice/*/*", "/private/alice/*/*", mine.as_str()],
        ),
    ] {
        for glob in globs {
            let r = f.req(Method::DELETE, glob, auth, "").await;
            assert_eq!(
                r.status,
                204,
                "DELETE {glob} as {who} covers nothing it may read: {}",
                r.text()
            );
            assert!(
                !r.text().contains("alice") && !r.text().contains(&f.key),
                "a refusal never names an unreadable key: {}",
                r.text()
            );
        }
    }
    assert_eq!(f.owner_view().await, before, "alice's keys are untouched");
    // Bob's own key matched his last glob and he may delete it: it is gone.
    let r = f
        .req(Method::GET, &format!("/{bob_dir}/x"), Some(&bob), "")
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test]
async fn url_tokens_only_open_event_streams() {
    let Some(f) = fixture().await else { return };
    let before = f.owner_view().await;
    let k = &f.key;
    let t = &f.tok.alice;
    // The owner's valid token in the URL: honoured for an SSE GET only.
    let sse = Sse::open(
        &f.server,
        &format!("/{k}?access_token={t}&initial=1"),
        "text/event-stream",
        "",
    )
    .await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    drop(sse);
    let take = json!({"to": format!("{}/moved", f.dir)}).to_string();
    for (m, path, body) in [
        (Method::POST, format!("/{k}?access_token={t}"), "{\"m\":1}"),
        (Method::PUT, format!("/{k}?token={t}"), "{\"m\":1}"),
        (Method::DELETE, format!("/{k}?access_token={t}"), ""),
        (Method::POST, format!("/_take/{k}?access_token={t}"), ""),
        (
            Method::POST,
            format!("/_rename/{k}?access_token={t}"),
            take.as_str(),
        ),
        (Method::GET, format!("/{k}?access_token={t}"), ""),
    ] {
        for accept in ["text/event-stream", "application/json"] {
            if m == Method::GET && accept == "text/event-stream" {
                continue; // that one opens an event stream: the one place a URL token is read
            }
            let r = f
                .server
                .client()
                .request(m.clone(), &path, &[("accept", accept)], body.to_string())
                .await
                .unwrap();
            assert_eq!(r.status, 400, "{m} {path} ({accept}): {}", r.text());
            assert!(
                r.text().contains("Authorization"),
                "the refusal says what to do: {}",
                r.text()
            );
            f.assert_no_leak("url token", &r.text());
        }
    }
    assert_eq!(f.owner_view().await, before, "nothing changed");
}

/// A socket that stays idle past its token's expiry (plus the rules' leeway) is closed with 4001
/// on time: ooo's per-path socket and `/_ws` alike, on the native server and at the edge (whose
/// object arms an alarm for the deadline instead of noticing only when it next sends a frame).
#[tokio::test]
async fn an_idle_socket_is_closed_when_its_token_expires() {
    let Some((server, secret)) = Server::with_rules().await else {
        return;
    };
    // Expired 27 s ago: inside the 30 s leeway of examples/rules.toml for 3 more seconds.
    let tok = sign_hs256(
        &json!({"sub": "alice", "exp": now() - 27}),
        secret.as_bytes(),
    );
    let dir = unique("idle");
    let paths = [format!("/private/alice/{dir}/*"), "/_ws".to_string()];
    let mut sockets = Vec::new();
    for path in &paths {
        let (ws, _) = ws_with(&server, path, Some(&tok))
            .await
            .unwrap_or_else(|s| panic!("{path}: refused with {s} while the token is valid"));
        sockets.push(ws);
    }
    let (mut ooo, mut mux) = (sockets.remove(0), sockets.remove(0));
    // The ooo socket gets its (empty) snapshot; the `/_ws` one answers a ping: both are open.
    assert!(matches!(
        next_event(&mut ooo, SOON).await,
        WsEvent::Data(..)
    ));
    send_text(&mut mux, &json!({"id": 1, "op": "ping"})).await;
    assert_eq!(next_json(&mut mux).await["ok"], json!(true));
    // Idle from here on: nothing is written, so only a timer can close them.
    let limit = std::time::Duration::from_secs(12);
    for (name, ws) in [("ooo", &mut ooo), ("/_ws", &mut mux)] {
        match next_event(ws, limit).await {
            WsEvent::Close(code) => assert_eq!(code, Some(4001), "{name}: close code"),
            other => panic!("{name}: expected a 4001 close within {limit:?}, got {other:?}"),
        }
    }
}

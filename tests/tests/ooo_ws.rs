//! ooo's WebSocket protocol: the cases ooo's own client relies on, plus the handshake details
//! (case-insensitive `Upgrade`, the `bearer` subprotocol).

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use stateline_conformance::{
    apply, assert_quiet, connections, next_event, next_json, raw, raw_ws, read_to_eof, read_until,
    unique, wait_connections, ws, PathSub, Server, WsEvent, SOON,
};

fn empty() -> Value {
    json!({"created":0,"updated":0,"index":"","data":{}})
}

fn is_hex(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()))
}

#[tokio::test]
async fn case12_14_object_subscription() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("obj");
    let mut w = ws(&s, &format!("/{k}")).await;
    let first = match next_event(&mut w, SOON).await {
        WsEvent::Data(b, binary) => {
            assert!(binary, "ooo frames are binary");
            serde_json::from_slice::<Value>(&b).unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(first["snapshot"], json!(true));
    assert!(is_hex(&first["version"]));
    assert_eq!(first["data"], empty());
    let mut cache = Value::Null;
    apply(&mut cache, &first);

    c.set(&k, &json!({"n":1})).await.unwrap();
    let f = next_json(&mut w).await;
    assert_eq!(f["snapshot"], json!(true), "previous was empty: a snapshot");
    apply(&mut cache, &f);
    assert_eq!(cache["data"], json!({"n":1}));
    assert_ne!(f["version"], first["version"]);

    c.set(&k, &json!({"n":2})).await.unwrap();
    let g = next_json(&mut w).await;
    assert_eq!(g["snapshot"], json!(false));
    assert!(g["data"].is_array());
    apply(&mut cache, &g);
    assert_eq!(cache["data"]["n"], json!(2));
    assert!(cache["updated"].as_i64().unwrap() > 0);
    assert_ne!(g["version"], f["version"]);

    c.delete(&k).await.unwrap();
    let d = next_json(&mut w).await;
    apply(&mut cache, &d);
    assert_eq!(cache, empty());
}

#[tokio::test]
async fn case15_list_subscription() {
    let s = Server::start().await;
    let c = s.client();
    let items = unique("items");
    let mut w = ws(&s, &format!("/{items}/*")).await;
    let first = next_json(&mut w).await;
    assert_eq!(
        (first["snapshot"].clone(), first["data"].clone()),
        (json!(true), json!([]))
    );
    let mut cache = Value::Null;
    apply(&mut cache, &first);

    let id = c
        .push(&format!("{items}/*"), &json!({"t":1}))
        .await
        .unwrap();
    let f = next_json(&mut w).await;
    assert_eq!(f["data"].as_array().unwrap().len(), 1);
    assert_eq!(f["data"][0]["op"], json!("add"));
    assert_eq!(f["data"][0]["path"], json!("/0"));
    apply(&mut cache, &f);

    c.set(&format!("{items}/{id}"), &json!({"t":2}))
        .await
        .unwrap();
    let f = next_json(&mut w).await;
    assert_eq!(f["data"].as_array().unwrap().len(), 1);
    assert_eq!(f["data"][0]["op"], json!("replace"));
    apply(&mut cache, &f);
    assert_eq!(cache[0]["data"], json!({"t":2}));

    c.delete(&format!("{items}/{id}")).await.unwrap();
    let f = next_json(&mut w).await;
    assert_eq!(f["data"], json!([{"op":"remove","path":"/0"}]));
    apply(&mut cache, &f);

    for i in 0..5 {
        c.push(&format!("{items}/*"), &json!(i)).await.unwrap();
        let f = next_json(&mut w).await;
        apply(&mut cache, &f);
    }
    // Compare as a set sorted by created (the live order is not part of ooo's contract).
    let mut got: Vec<Value> = cache.as_array().unwrap().clone();
    got.sort_by_key(|m| std::cmp::Reverse(m["created"].as_i64().unwrap()));
    let listed = c.list(&format!("{items}/*")).await.unwrap();
    assert_eq!(got, listed);

    c.delete(&format!("{items}/*")).await.unwrap();
    let f = next_json(&mut w).await;
    assert_eq!(
        (f["snapshot"].clone(), f["data"].clone()),
        (json!(true), json!([]))
    );
    assert_quiet(&mut w).await;
}

#[tokio::test]
async fn case16_limit_list_at_the_limit() {
    let Some(s) = Server::with_flags(&["--limit", "limited/*=3"]).await else {
        return;
    };
    let c = s.client();
    let mut w = ws(&s, "/limited/*").await;
    let mut cache = Value::Null;
    apply(&mut cache, &next_json(&mut w).await);
    for i in 0..6 {
        c.push("limited/*", &json!(i)).await.unwrap();
        let f = next_json(&mut w).await;
        if i >= 3 {
            let ops: Vec<&str> = f["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["op"].as_str().unwrap())
                .collect();
            assert_eq!(ops, ["remove", "add"], "{f}");
        }
        apply(&mut cache, &f);
        assert!(cache.as_array().unwrap().len() <= 3);
    }
    let data: Vec<Value> = c
        .list("limited/*")
        .await
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, [json!(5), json!(4), json!(3)]);
}

#[tokio::test]
async fn case17_version_check_on_reconnect() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("ver");
    c.set(&k, &json!(1)).await.unwrap();
    let mut w = ws(&s, &format!("/{k}")).await;
    let mut v = next_json(&mut w).await["version"].clone();
    c.set(&k, &json!(2)).await.unwrap();
    v = next_json(&mut w).await["version"]
        .as_str()
        .map(Value::from)
        .unwrap_or(v);
    drop(w);
    let v = v.as_str().unwrap().to_string();
    let mut again = ws(&s, &format!("/{k}?v={v}")).await;
    assert_quiet(&mut again).await;
    // Still live after a quiet start.
    c.set(&k, &json!(3)).await.unwrap();
    let f = next_json(&mut again).await;
    assert_eq!(f["snapshot"], json!(false));
    let mut fresh = ws(&s, &format!("/{k}?v=0")).await;
    let f = next_json(&mut fresh).await;
    assert_eq!(f["snapshot"], json!(true));
    assert_eq!(f["data"]["data"], json!(3));
}

#[tokio::test]
async fn case18_clock_stream() {
    let s = Server::start().await;
    let mut w = ws(&s, "/").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let mut last = 0i64;
    for i in 0..3 {
        let limit = if i == 0 {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3)
        };
        let b = match next_event(&mut w, limit).await {
            WsEvent::Data(b, true) => b,
            other => panic!("clock frame {i}: {other:?}"),
        };
        let t = std::str::from_utf8(&b).unwrap();
        assert!(t.chars().all(|c| c.is_ascii_digit()), "{t}");
        let t: i64 = t.parse().unwrap();
        assert!(
            (t - now).abs() < 60_000_000_000,
            "within a minute of the wall clock"
        );
        assert!(t > last, "strictly increasing");
        if i > 1 {
            // Ticks of the server's one clock timer are about 1 s apart: the clock really
            // advances. The first frame is sent when the socket opens, anywhere in the timer's
            // second, so the first tick may follow it by any fraction of a second.
            assert!(t - last > 300_000_000, "frames {} ns apart", t - last);
        }
        last = t;
    }
}

#[tokio::test]
async fn case19_origin_allow_list() {
    let Some(s) = Server::with_flags(&["--allow-origin", "http://good.example"]).await else {
        return;
    };
    let (_, head) = raw_ws(&s, "/x", "Origin: http://evil.example\r\n").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (_, head) = raw_ws(&s, "/x", "Origin: http://good.example\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, head) = raw_ws(&s, "/x", "").await;
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "no Origin: accepted. {head}"
    );
    // Same origin as the server's own address: accepted.
    let own = format!("Origin: http://{}\r\n", s.authority());
    let (_, head) = raw_ws(&s, "/x", &own).await;
    assert!(head.starts_with("HTTP/1.1 101"), "own origin: {head}");
    let (_, head) = raw_ws(&s, "/_ws", &own).await;
    assert!(head.starts_with("HTTP/1.1 101"), "own origin, /_ws: {head}");
}

#[tokio::test]
async fn dns_rebinding_host_is_not_same_origin() {
    // A page on evil.example whose name was rebound to this server's address sends
    // `Host: evil.example` and `Origin: http://evil.example`: they agree, but the server does not
    // serve evil.example, so this is not same-origin.
    let Some(s) = Server::with_flags(&["--allow-origin", "http://good.example"]).await else {
        return;
    };
    let handshake = |path: &str, host: &str, origin: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let port = s.authority().rsplit(':').next().unwrap().to_string();
    for (path, host, origin, want) in [
        (
            "/x",
            "evil.example".to_string(),
            "http://evil.example".to_string(),
            "403",
        ),
        (
            "/_ws",
            "evil.example".to_string(),
            "http://evil.example".to_string(),
            "403",
        ),
        (
            "/",
            "evil.example:80".to_string(),
            "http://evil.example:80".to_string(),
            "403",
        ),
        (
            "/x",
            format!("localhost:{port}"),
            format!("http://localhost:{port}"),
            "101",
        ),
        (
            "/x",
            s.authority().to_string(),
            format!("http://{}", s.authority()),
            "101",
        ),
    ] {
        let mut tcp = raw(&s, &handshake(path, &host, &origin), b"").await;
        let mut buf = Vec::new();
        read_until(&mut tcp, &mut buf, b"\r\n\r\n", SOON).await;
        let head = String::from_utf8_lossy(&buf);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {want}")),
            "{path} Host {host} Origin {origin}: {head}"
        );
    }
    // The operator may name the hosts it serves.
    let Some(s) = Server::with_flags(&[
        "--allow-origin",
        "http://good.example",
        "--allow-host",
        "state.example",
    ])
    .await
    else {
        return;
    };
    let mut tcp = raw(
        &s,
        &handshake("/x", "state.example:8443", "http://state.example:8443"),
        b"",
    )
    .await;
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, b"\r\n\r\n", SOON).await;
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[tokio::test]
async fn case20_silent_peer_is_closed() {
    let Some(s) = Server::with_flags(&["--ping-interval", "300ms"]).await else {
        return;
    };
    let c = s.client();
    // A hand-made client that completes the handshake and then never reads nor answers pings.
    let (mut tcp, head) = raw_ws(&s, "/silent", "").await;
    assert!(head.starts_with("HTTP/1.1 101"));
    assert_eq!(wait_connections(&c, 1).await, 1);
    let mut buf = Vec::new();
    assert!(
        read_to_eof(&mut tcp, &mut buf, Duration::from_secs(5)).await,
        "the server closes a peer that does not answer pings"
    );
    assert_eq!(connections(&c).await, 0);
    // A client that answers pings (tungstenite does while reading) stays.
    let mut w = ws(&s, "/alive").await;
    next_json(&mut w).await;
    assert!(matches!(
        next_event(&mut w, Duration::from_millis(1500)).await,
        WsEvent::Timeout
    ));
    assert_eq!(connections(&c).await, 1);
}

#[tokio::test]
async fn upgrade_is_case_insensitive_and_bearer_is_accepted() {
    let s = Server::start().await;
    let k = unique("up");
    // Against a server running access rules (STATELINE_JWT_SECRET set for the suite) the token
    // must be a valid one; otherwise any token is carried.
    let token = match std::env::var("STATELINE_JWT_SECRET") {
        Ok(secret) if stateline_conformance::external().is_some() => {
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
                + 600;
            stateline_core::token::sign_hs256(
                &serde_json::json!({"sub": "up", "exp": exp}),
                secret.as_bytes(),
            )
        }
        _ => "abc.def".to_string(),
    };
    let head = format!(
        "GET /{k} HTTP/1.1\r\nHost: {}\r\nConnection: upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: bearer, {token}\r\n\r\n",
        s.authority()
    );
    let mut tcp = raw(&s, &head, b"").await;
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, b"\r\n\r\n", SOON).await;
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("sec-websocket-protocol: bearer"), "{text}");
    // A plain GET on the same path is still REST.
    let r = s
        .client()
        .request(Method::GET, &format!("/{k}"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}

/// A per-path subscription as ooo's Go client reads it: a key's first frame is a snapshot of its
/// (empty) meta object, later changes are patches; a list's items come newest first.
#[tokio::test]
async fn path_subscription_snapshot_then_patches_lists_newest_first() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("sub");
    let mut sub = PathSub::open(&s, &format!("/{k}")).await;
    let (_, snap, v) = sub.next(SOON).await.expect("first frame");
    assert!(snap);
    assert_eq!(v["created"], json!(0));
    c.set(&k, &json!({"n":1})).await.unwrap();
    let (_, _, v) = sub.next(SOON).await.unwrap();
    assert_eq!(v["data"], json!({"n":1}));
    c.set(&k, &json!({"n":2})).await.unwrap();
    let (_, snap, v) = sub.next(SOON).await.unwrap();
    assert!(!snap, "a patch");
    assert_eq!(v["data"], json!({"n":2}));

    let l = unique("subl");
    let mut list = PathSub::open(&s, &format!("/{l}/*")).await;
    assert_eq!(list.next(SOON).await.unwrap().2, json!([]));
    for i in 0..3 {
        c.push(&format!("{l}/*"), &json!(i)).await.unwrap();
        let (_, _, v) = list.next(SOON).await.unwrap();
        assert_eq!(v.as_array().unwrap().len(), i + 1);
        assert_eq!(v[0]["data"], json!(i), "newest first");
    }
}

/// Reconnecting with a version the server does not know (an in-memory server restarted) gets a
/// snapshot with a new version, and changes flow again.
#[tokio::test]
async fn path_resume_after_a_restart_gets_a_snapshot() {
    let Some(mut s) = Server::with_flags(&[]).await else {
        return;
    };
    let c = s.client();
    let mut sub = PathSub::open(&s, "/re").await;
    sub.next(SOON).await.unwrap();
    c.set("re", &json!(1)).await.unwrap();
    let (v1, _, _) = sub.next(SOON).await.unwrap();
    s.restart().await;
    match sub.next(SOON).await {
        Err(WsEvent::Close(_) | WsEvent::Ended) => {}
        other => panic!("the old connection should end: {other:?}"),
    }
    sub.reopen(&s).await;
    let (v2, snap, v) = sub.next(SOON).await.expect("a frame after ?v=");
    assert!(snap, "an unknown version gets a snapshot");
    assert_ne!(v2, v1);
    assert_eq!(v["created"], json!(0), "the new server starts empty");
    c.set("re", &json!(2)).await.unwrap();
    let (_, _, v) = sub.next(SOON).await.unwrap();
    assert_eq!(v["data"], json!(2));
}

//! Key history (`GET /<key>?history=N`), UTF-8 keys, server timestamps and the remaining TTL
//! (docs/protocol.md §1, §2).

use http::Method;
use serde_json::{json, Value};
use stateline_conformance::{edge_mode, next_json, send_text, unique, ws, Server, Sse, SOON};
use stateline_core::key::encode_http_path;
use stateline_core::token::sign_hs256;

fn body(r: &stateline_client::Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("not JSON: {}", r.text()))
}

#[tokio::test]
async fn history_lists_sets_patches_and_deletes_newest_first() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("h");
    let path = format!("/{k}");
    c.set(&k, &json!({"a": 1})).await.unwrap();
    c.set(&k, &json!({"a": 2})).await.unwrap();
    let r = c
        .request(Method::PATCH, &path, &[], r#"{"b":3}"#)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.request(Method::DELETE, &path, &[], "").await.unwrap();
    assert_eq!(r.status, 204);
    c.set(&k, &json!("again")).await.unwrap();

    let r = c
        .request(Method::GET, &format!("{path}?history=10"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let h = body(&r);
    let h = h.as_array().unwrap();
    let shape: Vec<(Value, Value, Value)> = h
        .iter()
        .map(|v| {
            (
                v["revision"].clone(),
                v["data"].clone(),
                v["deleted"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (json!(0), json!("again"), Value::Null),
            (json!(3), Value::Null, json!(true)),
            (json!(2), json!({"a": 2, "b": 3}), Value::Null),
            (json!(1), json!({"a": 2}), Value::Null),
            (json!(0), json!({"a": 1}), Value::Null),
        ]
    );
    let times: Vec<i64> = h.iter().map(|v| v["updated"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] > w[1]), "{times:?}");
    // `updated` is the meta object's clock (ns).
    let meta = body(&c.request(Method::GET, &path, &[], "").await.unwrap());
    assert_eq!(meta["created"].as_i64().unwrap(), times[0]);

    // N bounds what comes back.
    let r = c
        .request(Method::GET, &format!("{path}?history=2"), &[], "")
        .await
        .unwrap();
    assert_eq!(body(&r).as_array().unwrap().len(), 2);
    // Refusals: 0, garbage, over the limit, a glob; a key never written: 404.
    for q in ["0", "x", "-1", "100000"] {
        let r = c
            .request(Method::GET, &format!("{path}?history={q}"), &[], "")
            .await
            .unwrap();
        assert_eq!(r.status, 400, "history={q}: {}", r.text());
    }
    let r = c
        .request(Method::GET, &format!("{path}?history=100000"), &[], "")
        .await
        .unwrap();
    assert!(r.text().contains("limit of 32"), "{}", r.text());
    let r = c
        .request(Method::GET, &format!("/{k}x/*?history=1"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let r = c
        .request(
            Method::GET,
            &format!("/{}?history=3", unique("none")),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test]
async fn history_is_read_under_the_keys_rules() {
    let Some((s, secret)) = Server::with_rules().await else {
        return;
    };
    let c = s.client();
    let user = unique("u");
    let k = format!("private/{user}/notes");
    let exp = 4_000_000_000i64;
    let tok = sign_hs256(&json!({"sub": user, "exp": exp}), secret.as_bytes());
    let other = sign_hs256(
        &json!({"sub": "someone-else", "exp": exp}),
        secret.as_bytes(),
    );
    let auth = format!("Bearer {tok}");
    let r = c
        .request(
            Method::POST,
            &format!("/{k}"),
            &[("authorization", &auth)],
            "1",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .request(
            Method::GET,
            &format!("/{k}?history=5"),
            &[("authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body(&r)[0]["data"], json!(1));
    // Whoever may not read the key gets what a read gets.
    for who in [None, Some(format!("Bearer {other}"))] {
        let h: Vec<(&str, &str)> = who.iter().map(|a| ("authorization", a.as_str())).collect();
        let read = c
            .request(Method::GET, &format!("/{k}"), &h, "")
            .await
            .unwrap();
        let hist = c
            .request(Method::GET, &format!("/{k}?history=5"), &h, "")
            .await
            .unwrap();
        assert!(read.status == 401 || read.status == 403, "{}", read.text());
        assert_eq!((hist.status, hist.text()), (read.status, read.text()));
    }
}

#[tokio::test]
async fn utf8_keys_round_trip_everywhere() {
    let s = Server::start().await;
    let c = s.client();
    let p = unique("名前");
    let keys = [
        format!("{p}/alice@example.com"),
        format!("{p}/名前"),
        format!("{p}/😀"),
        format!("{p}/a \"quoted\" key"),
    ];
    let sse = Sse::open(
        &s,
        &format!("/{}/", encode_http_path(&p)),
        "text/event-stream",
        "",
    )
    .await;
    let ns = match edge_mode().as_deref() {
        Some("namespace") => format!("?ns={}", encode_http_path(&p)),
        _ => String::new(),
    };
    let mut w = ws(&s, &format!("/_ws{ns}")).await;
    send_text(&mut w, &json!({"id":1,"op":"sub","path":format!("{p}/*")})).await;
    assert_eq!(next_json(&mut w).await["ok"], json!(true));
    assert_eq!(next_json(&mut w).await["data"], json!([]));
    let mut sse = sse;
    for (i, k) in keys.iter().enumerate() {
        c.set(k, &json!(i)).await.unwrap();
        let frame = next_json(&mut w).await;
        assert_eq!(frame["revs"][0][0], json!(k), "{frame}");
        let r = c.get(k).await.unwrap().expect("stored");
        assert_eq!(r["path"], json!(k));
        assert_eq!(r["data"], json!(i));
        let id = format!("id:/{}:0:", encode_http_path(k));
        assert!(sse.wait_for(&id, SOON).await, "{id} in {}", sse.text());
    }
    // A write over /_ws carries the key raw.
    let k = format!("{p}/über");
    send_text(&mut w, &json!({"id":2,"op":"set","key":k,"value":true})).await;
    let frame = next_json(&mut w).await;
    assert_eq!(frame["revs"][0][0], json!(k));
    assert_eq!(next_json(&mut w).await["key"], json!(k));
    // Lists and globs name them.
    let list = c.list(&format!("{p}/*")).await.unwrap();
    let mut paths: Vec<String> = list
        .iter()
        .map(|m| m["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    let mut want: Vec<String> = keys.to_vec();
    want.push(k.clone());
    want.sort();
    assert_eq!(paths, want);
    // Refused: a `*` inside a segment, control characters.
    for bad in ["a*b", "a%00b", "a%0Ab", "a%7Fb"] {
        let r = c
            .request(
                Method::POST,
                &format!("/{}/{bad}", encode_http_path(&p)),
                &[],
                "1",
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    send_text(
        &mut w,
        &json!({"id":3,"op":"set","key":format!("{p}/a\u{1}b"),"value":1}),
    )
    .await;
    let r = next_json(&mut w).await;
    assert_eq!(r["error"]["code"], json!("invalid-key"), "{r}");
}

#[tokio::test]
async fn a_server_timestamp_becomes_the_write_time_in_ms() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("ts");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    c.set(
        &k,
        &json!({"at": {".sv": "timestamp"}, "deep": [{"t": {".sv": "timestamp"}}]}),
    )
    .await
    .unwrap();
    let m = c.get(&k).await.unwrap().expect("stored");
    let at = m["data"]["at"].as_i64().expect("a number");
    assert!((at - now).abs() < 60_000, "{at} vs {now}");
    assert_eq!(m["data"]["deep"][0]["t"], json!(at));
    assert_eq!(at, m["created"].as_i64().unwrap() / 1_000_000);
    let r = c
        .request(
            Method::PATCH,
            &format!("/{k}"),
            &[],
            r#"{"seen":{".sv":"timestamp"}}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let m = c.get(&k).await.unwrap().expect("stored");
    assert_eq!(
        m["data"]["seen"].as_i64().unwrap(),
        m["updated"].as_i64().unwrap() / 1_000_000
    );
    let r = c
        .request(Method::POST, &format!("/{k}"), &[], r#"{".sv":"nope"}"#)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn the_remaining_ttl_is_in_the_meta_object_and_a_header() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("ttl");
    let r = c
        .request(Method::POST, &format!("/{k}?ttl=30"), &[], "1")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = c
        .request(Method::GET, &format!("/{k}"), &[], "")
        .await
        .unwrap();
    let h: f64 = r.headers["x-ttl"].to_str().unwrap().parse().unwrap();
    assert!(h > 20.0 && h <= 30.0, "{h}");
    let ttl = body(&r)["ttl"].as_f64().unwrap();
    assert!(ttl > 20.0 && ttl <= 30.0, "{ttl}");
    // No TTL: neither.
    c.set(&k, &json!(2)).await.unwrap();
    let r = c
        .request(Method::GET, &format!("/{k}"), &[], "")
        .await
        .unwrap();
    assert!(r.headers.get("x-ttl").is_none());
    assert!(body(&r).get("ttl").is_none());
}

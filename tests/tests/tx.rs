//! Transactions: `POST /_tx` and the `tx` op on `/_ws` (docs/protocol.md): compares on any
//! keys, writes of any kind, all or nothing under one version, one frame per pool.

use http::Method;
use serde_json::{json, Value};
use stateline_conformance::{assert_quiet, differs, mux, next_json, send_text, unique, Server, Ws};

async fn post_tx(s: &Server, body: &Value) -> (u16, Value) {
    let r = s
        .client()
        .request(
            Method::POST,
            "/_tx",
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
        .unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status.as_u16(), v)
}

// The value a key holds, if it exists.
async fn get(s: &Server, key: &str) -> Option<Value> {
    s.client()
        .get(key)
        .await
        .unwrap()
        .map(|meta| meta["data"].clone())
}

async fn reply(w: &mut Ws, id: i64) -> Value {
    for _ in 0..20 {
        let m = next_json(w).await;
        if m.get("ok").is_some() && m["id"] == json!(id) {
            return m;
        }
    }
    panic!("no reply to {id}");
}

#[tokio::test]
async fn a_transaction_whose_compares_hold_applies_every_write() {
    let s = Server::start().await;
    let c = s.client();
    let p = unique("tx");
    c.set(&format!("{p}/a"), &json!(1)).await.unwrap();
    c.set(&format!("{p}/a"), &json!(2)).await.unwrap();
    let (status, v) = post_tx(
        &s,
        &json!({
            "if": [{"key": format!("{p}/a"), "revision": 1},
                   {"key": format!("{p}/b"), "absent": true}],
            "then": [{"op": "set", "key": format!("{p}/b"), "value": {"x": 1}},
                     {"op": "patch", "key": format!("{p}/b"), "value": {"y": 2}},
                     {"op": "incr", "key": format!("{p}/n"), "by": 3},
                     {"op": "push", "path": format!("{p}/l/*"), "value": "item"},
                     {"op": "del", "key": format!("{p}/a")}]
        }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], json!(true));
    assert!(v["version"].is_string(), "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 5, "{v}");
    assert_eq!(r[0]["key"], json!(format!("{p}/b")));
    assert_eq!(r[1]["revision"], json!(1));
    assert_eq!(r[2]["value"], json!(3));
    assert!(r[3]["index"].is_string(), "{v}");
    assert_eq!(r[4]["deleted"], json!(1));
    assert_eq!(
        get(&s, &format!("{p}/b")).await,
        Some(json!({"x": 1, "y": 2}))
    );
    assert_eq!(get(&s, &format!("{p}/n")).await, Some(json!(3)));
    assert_eq!(get(&s, &format!("{p}/a")).await, None);
    // The version is the last write's: the ETag of the last key written.
    let last = c
        .request(Method::GET, &format!("/{p}/n"), &[], "")
        .await
        .unwrap();
    let etag = last.header("etag").unwrap().trim_matches('"').to_string();
    let version = u64::from_str_radix(v["version"].as_str().unwrap(), 16).unwrap();
    assert!(
        u64::from_str_radix(&etag, 16).unwrap() < version,
        "{etag} {v}"
    );
}

#[tokio::test]
async fn a_failed_compare_changes_nothing_and_names_the_compare() {
    let s = Server::start().await;
    let c = s.client();
    let p = unique("tx");
    c.set(&format!("{p}/a"), &json!("keep")).await.unwrap();
    for (compare, index) in [
        (json!([{"key": format!("{p}/a"), "revision": 5}]), 0),
        (
            json!([{"key": format!("{p}/a"), "exists": true},
                   {"key": format!("{p}/a"), "absent": true}]),
            1,
        ),
        (json!([{"key": format!("{p}/zz"), "exists": true}]), 0),
    ] {
        let (status, v) = post_tx(
            &s,
            &json!({"if": compare,
                    "then": [{"op": "set", "key": format!("{p}/b"), "value": 1},
                             {"op": "set", "key": format!("{p}/a"), "value": "lost"}]}),
        )
        .await;
        assert_eq!(status, 409, "{v}");
        assert_eq!(v["code"], json!("precondition-failed"), "{v}");
        assert_eq!(v["compare"]["index"], json!(index), "{v}");
        assert!(v["compare"]["key"].is_string(), "{v}");
        assert_eq!(get(&s, &format!("{p}/a")).await, Some(json!("keep")));
        assert_eq!(get(&s, &format!("{p}/b")).await, None);
    }
}

#[tokio::test]
async fn a_refused_write_undoes_the_ones_before_it() {
    let s = Server::start().await;
    let c = s.client();
    let p = unique("tx");
    c.set(&format!("{p}/text"), &json!("not a number"))
        .await
        .unwrap();
    let (status, v) = post_tx(
        &s,
        &json!({"then": [{"op": "set", "key": format!("{p}/b"), "value": 1},
                         {"op": "incr", "key": format!("{p}/text")}]}),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], json!("counter"), "{v}");
    assert_eq!(v["write"], json!(1), "{v}");
    assert_eq!(get(&s, &format!("{p}/b")).await, None);
    // Bad input: 400 with the reason, nothing changed.
    for (body, says) in [
        (json!([1]), "JSON object"),
        (json!({"if": [{"key": format!("{p}/b")}]}), "if[0]"),
        (
            json!({"then": [{"op": "take", "key": format!("{p}/b")}]}),
            "cannot be part",
        ),
        (
            json!({"then": [{"op": "set", "key": format!("{p}/b")}]}),
            "value",
        ),
    ] {
        let (status, v) = post_tx(&s, &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["detail"].as_str().unwrap_or("").contains(says), "{v}");
    }
    let r = c.request(Method::GET, "/_tx", &[], "").await.unwrap();
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(get(&s, &format!("{p}/b")).await, None);
}

#[tokio::test]
async fn subscribers_see_a_transaction_as_one_frame_and_ws_answers_it() {
    let s = Server::start().await;
    let p = unique("tx");
    let mut w = mux(&s, &p).await;
    send_text(&mut w, &json!({"id":1,"op":"sub","path":format!("{p}/*")})).await;
    assert_eq!(reply(&mut w, 1).await["ok"], json!(true));
    let snap = next_json(&mut w).await;
    assert_eq!(snap["snapshot"], json!(true), "{snap}");
    send_text(
        &mut w,
        &json!({"id":2,"op":"tx",
                "if":[{"key":format!("{p}/a"),"absent":true}],
                "then":[{"op":"set","key":format!("{p}/a"),"value":1},
                        {"op":"set","key":format!("{p}/b"),"value":2},
                        {"op":"set","key":format!("{p}/c"),"value":3}]}),
    )
    .await;
    let frame = next_json(&mut w).await;
    assert_eq!(frame["sub"], json!(format!("{p}/*")), "{frame}");
    let ack = next_json(&mut w).await;
    assert_eq!(ack["id"], json!(2), "one frame, then the reply: {ack}");
    assert_eq!(ack["ok"], json!(true), "{ack}");
    assert_eq!(ack["results"].as_array().map(Vec::len), Some(3), "{ack}");
    assert_eq!(frame["version"], ack["version"], "{frame} {ack}");
    // A failed compare: an error reply naming it, no frame.
    send_text(
        &mut w,
        &json!({"id":3,"op":"tx",
                "if":[{"key":format!("{p}/a"),"absent":true}],
                "then":[{"op":"del","key":format!("{p}/b")}]}),
    )
    .await;
    let r = next_json(&mut w).await;
    assert_eq!(r["id"], json!(3), "{r}");
    assert_eq!(r["ok"], json!(false));
    assert_eq!(r["error"]["status"], json!(409), "{r}");
    assert_eq!(r["error"]["code"], json!("precondition-failed"), "{r}");
    assert_eq!(r["error"]["compare"]["index"], json!(0), "{r}");
    assert_quiet(&mut w).await;
    assert_eq!(get(&s, &format!("{p}/b")).await, Some(json!(2)));
}

#[tokio::test]
async fn a_transaction_across_namespaces_at_the_edge_is_refused() {
    let s = Server::start().await;
    let a = unique("txa");
    let b = unique("txb");
    let (status, v) = post_tx(
        &s,
        &json!({"then": [{"op": "set", "key": format!("{a}/x"), "value": 1},
                         {"op": "set", "key": format!("{b}/x"), "value": 2}]}),
    )
    .await;
    if differs("spans-namespaces") {
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["code"], json!("spans-namespaces"), "{v}");
        assert_eq!(get(&s, &format!("{a}/x")).await, None);
    } else {
        assert_eq!(status, 200, "{v}");
        assert_eq!(get(&s, &format!("{b}/x")).await, Some(json!(2)));
    }
}

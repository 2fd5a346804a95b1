//! The multiplexed WebSocket `/_ws` (docs/protocol.md): many subscriptions and writes on one
//! socket, request ids, acknowledgements, errors, resume from a version.

use serde_json::{json, Value};
use stateline_conformance::{
    apply, assert_mux_needs_namespace, assert_quiet, call, differs, next_event, next_json,
    send_text, unique, ws, Server, WsEvent, SOON,
};

#[tokio::test]
async fn subscribe_write_and_acknowledge() {
    let s = Server::start().await;
    if differs("mux-per-namespace") {
        return assert_mux_needs_namespace(&s).await;
    }
    let mut w = ws(&s, "/_ws").await;
    let p = unique("m");
    let r = call(&mut w, json!({"id":1,"op":"sub","path":format!("{p}/*")})).await;
    assert_eq!(r, json!({"id":1,"ok":true,"sub":format!("{p}/*")}));
    let snap = next_json(&mut w).await;
    assert_eq!(snap["sub"], json!(format!("{p}/*")));
    assert_eq!(
        (snap["snapshot"].clone(), snap["data"].clone()),
        (json!(true), json!([]))
    );
    let mut list = Value::Null;
    apply(&mut list, &snap);

    let r = call(
        &mut w,
        json!({"id":"k","op":"sub","path":format!("{p}/one")}),
    )
    .await;
    assert_eq!(r["ok"], json!(true));
    let mut obj = Value::Null;
    apply(&mut obj, &next_json(&mut w).await);
    assert_eq!(obj["created"], json!(0));

    // set: the frames for both subscriptions come before the acknowledgement.
    send_text(
        &mut w,
        &json!({"id":2,"op":"set","key":format!("{p}/one"),"value":{"n":1}}),
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_json(&mut w).await);
    }
    let ack = got.pop().unwrap();
    assert_eq!(
        (
            ack["id"].clone(),
            ack["ok"].clone(),
            ack["revision"].clone()
        ),
        (json!(2), json!(true), json!(0))
    );
    assert_eq!(ack["key"], json!(format!("{p}/one")));
    for f in &got {
        if f["sub"] == json!(format!("{p}/*")) {
            apply(&mut list, f);
        } else {
            assert_eq!(f["sub"], json!(format!("{p}/one")));
            apply(&mut obj, f);
        }
    }
    assert_eq!(obj["data"], json!({"n":1}));
    assert_eq!(list.as_array().unwrap().len(), 1);

    let r = call(
        &mut w,
        json!({"id":3,"op":"push","path":format!("{p}/*"),"value":2}),
    )
    .await;
    assert_eq!(r["ok"], json!(true));
    assert!(r["index"].as_str().is_some_and(|i| !i.is_empty()));
    let r = call(
        &mut w,
        json!({"id":4,"op":"patch","key":format!("{p}/one"),"value":{"m":2}}),
    )
    .await;
    assert_eq!(r["revision"], json!(1));
    let r = call(
        &mut w,
        json!({"id":5,"op":"incr","key":format!("{p}c"),"by":5}),
    )
    .await;
    assert_eq!(r["value"], json!(5));
    let r = call(&mut w, json!({"id":6,"op":"take","key":format!("{p}c")})).await;
    assert_eq!(r["value"], json!(5));
    let r = call(
        &mut w,
        json!({"id":7,"op":"rename","key":format!("{p}/one"),"to":format!("{p}/two")}),
    )
    .await;
    assert_eq!(r["ok"], json!(true), "{r}");
    let r = call(&mut w, json!({"id":8,"op":"del","key":format!("{p}/*")})).await;
    assert_eq!(r["deleted"], json!(2));
    let r = call(&mut w, json!({"id":9,"op":"ping"})).await;
    assert_eq!(r, json!({"id":9,"ok":true}));

    let c = s.client();
    assert!(c.list(&format!("{p}/*")).await.unwrap().is_empty());

    // unsub: no more frames for that pattern.
    let r = call(
        &mut w,
        json!({"id":10,"op":"unsub","path":format!("{p}/*")}),
    )
    .await;
    assert_eq!(r["ok"], json!(true));
    let r = call(
        &mut w,
        json!({"id":11,"op":"unsub","path":format!("{p}/one")}),
    )
    .await;
    assert_eq!(r["ok"], json!(true));
    c.push(&format!("{p}/*"), &json!(1)).await.unwrap();
    assert_quiet(&mut w).await;
}

#[tokio::test]
async fn errors_are_replies_and_nothing_is_stored() {
    let s = Server::start().await;
    if differs("mux-per-namespace") {
        return assert_mux_needs_namespace(&s).await;
    }
    let c = s.client();
    let mut w = ws(&s, "/_ws").await;
    let k = unique("e");
    let cases = [
        (
            json!({"id":1,"op":"set","key":"a//b","value":1}),
            400,
            "invalid-key",
        ),
        (json!({"id":2,"op":"set","key":k}), 400, "bad-request"),
        (json!({"id":3,"op":"fly"}), 400, "bad-request"),
        (
            json!({"id":4,"op":"patch","key":k,"value":{}}),
            404,
            "not-found",
        ),
        (
            json!({"id":5,"op":"set","key":k,"value":1,"rev":3}),
            409,
            "revision-conflict",
        ),
        (
            json!({"id":6,"op":"unsub","path":"nothing"}),
            400,
            "bad-request",
        ),
        (
            json!({"id":7,"op":"sub","path":"a/*/b:"}),
            400,
            "invalid-key",
        ),
    ];
    for (req, status, code) in cases {
        let r = call(&mut w, req.clone()).await;
        assert_eq!(r["ok"], json!(false), "{req}");
        assert_eq!(r["error"]["status"], json!(status), "{req}: {r}");
        assert_eq!(r["error"]["code"], json!(code), "{req}: {r}");
        assert!(r["error"]["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // Not JSON at all, and too deep: an error with id null, the socket stays open.
    send_text(&mut w, &json!("{oops")).await;
    let r = next_json(&mut w).await;
    assert_eq!(
        (r["id"].clone(), r["ok"].clone()),
        (Value::Null, json!(false))
    );
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let msg = format!(r#"{{"id":8,"op":"set","key":"{k}","value":{deep}}}"#);
    futures_util::SinkExt::send(
        &mut w,
        tokio_tungstenite::tungstenite::Message::Text(msg.into()),
    )
    .await
    .unwrap();
    let r = next_json(&mut w).await;
    assert_eq!(r["ok"], json!(false));
    assert_eq!(r["error"]["code"], json!("invalid-json"));
    // Subscribing twice to the same pattern is refused.
    call(&mut w, json!({"id":9,"op":"sub","path":k})).await;
    next_json(&mut w).await;
    let r = call(&mut w, json!({"id":10,"op":"sub","path":k})).await;
    assert_eq!(r["ok"], json!(false));
    assert!(c.get(&k).await.unwrap().is_none(), "nothing stored");
    let r = call(&mut w, json!({"id":11,"op":"ping"})).await;
    assert_eq!(r["ok"], json!(true));
}

#[tokio::test]
async fn resume_from_a_version() {
    let s = Server::start().await;
    if differs("mux-per-namespace") {
        return assert_mux_needs_namespace(&s).await;
    }
    let c = s.client();
    let k = unique("res");
    c.set(&k, &json!(1)).await.unwrap();
    let mut w = ws(&s, "/_ws").await;
    call(&mut w, json!({"id":1,"op":"sub","path":k})).await;
    let v = next_json(&mut w).await["version"]
        .as_str()
        .unwrap()
        .to_string();
    drop(w);
    let mut w = ws(&s, "/_ws").await;
    let r = call(&mut w, json!({"id":1,"op":"sub","path":k,"v":v})).await;
    assert_eq!(r["ok"], json!(true));
    assert_quiet(&mut w).await;
    c.set(&k, &json!(2)).await.unwrap();
    let f = next_json(&mut w).await;
    assert_eq!(
        (f["sub"].clone(), f["snapshot"].clone()),
        (json!(k), json!(false))
    );
    // Each frame names the keys it changes with their revisions (the meta object has none).
    assert_eq!(f["revs"], json!([[k, 1]]));
    // An unknown version: a snapshot.
    let mut w2 = ws(&s, "/_ws").await;
    call(&mut w2, json!({"id":1,"op":"sub","path":k,"v":"1"})).await;
    let f = next_json(&mut w2).await;
    assert_eq!(f["snapshot"], json!(true));
    assert_eq!(f["revs"], json!([[k, 1]]));
    assert!(matches!(
        next_event(&mut w2, std::time::Duration::from_millis(10)).await,
        WsEvent::Timeout
    ));
    let _ = SOON;
}

//! Idempotent writes (docs/protocol.md, "Idempotent writes"): a write carrying an id (`rid` on
//! `/_ws`, `Idempotency-Key` over HTTP) is applied once; a repeat of the id by the same caller
//! gets the first answer, on any connection; an id reused for another write is refused with 422
//! and changes nothing.

use http::Method;
use serde_json::{json, Value};
use stateline_conformance::{call, mux, unique, Server};

// The items of a list (`GET p/*`).
async fn items(s: &Server, p: &str) -> Vec<Value> {
    let r = s
        .client()
        .request(Method::GET, &format!("/{p}/*"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200);
    serde_json::from_slice::<Value>(&r.body)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn value(s: &Server, key: &str) -> Option<Value> {
    s.client()
        .get(key)
        .await
        .unwrap()
        .map(|meta| meta["data"].clone())
}

#[tokio::test]
async fn a_repeated_push_is_answered_with_its_first_key_on_any_connection() {
    let s = Server::start().await;
    let p = unique("idem");
    let rid = format!("{p}-push-1");
    let push = |id: i64| json!({"id": id, "op": "push", "path": format!("{p}/*"), "value": {"n": 1}, "rid": rid});
    let mut w = mux(&s, &p).await;
    let first = call(&mut w, push(1)).await;
    assert_eq!(first["ok"], json!(true), "{first}");
    let again = call(&mut w, push(2)).await;
    assert_eq!(again["ok"], json!(true), "{again}");
    assert_eq!(again["id"], json!(2));
    for f in ["key", "index", "revision", "etag"] {
        assert_eq!(again[f], first[f], "{f}");
    }
    // The connection is gone (the answer was lost, say): a new one sends it again.
    drop(w);
    let mut w = mux(&s, &p).await;
    let third = call(&mut w, push(3)).await;
    assert_eq!(third["key"], first["key"]);
    assert_eq!(items(&s, &p).await.len(), 1, "applied once");
    // Another id is another push.
    let other = call(
        &mut w,
        json!({"id": 4, "op": "push", "path": format!("{p}/*"), "value": {"n": 1}, "rid": format!("{p}-push-2")}),
    )
    .await;
    assert_ne!(other["key"], first["key"]);
    assert_eq!(items(&s, &p).await.len(), 2);
}

#[tokio::test]
async fn counters_and_transactions_answer_their_first_result() {
    let s = Server::start().await;
    let p = unique("idem");
    let n = format!("{p}/n");
    let mut w = mux(&s, &p).await;
    let incr = |id: i64, rid: &str| json!({"id": id, "op": "incr", "key": n, "by": 5, "rid": rid});
    assert_eq!(call(&mut w, incr(1, "a")).await["value"], json!(5));
    assert_eq!(call(&mut w, incr(2, "b")).await["value"], json!(10));
    // `a` again: its own count, and the counter does not move.
    let again = call(&mut w, incr(3, "a")).await;
    assert_eq!(again["ok"], json!(true), "{again}");
    assert_eq!(again["value"], json!(5));
    assert_eq!(value(&s, &n).await, Some(json!(10)));

    let tx = |id: i64| {
        json!({"id": id, "op": "tx", "rid": format!("{p}-tx"),
               "if": [{"key": n, "exists": true}],
               "then": [{"op": "incr", "key": n, "by": 1}, {"op": "set", "key": format!("{p}/s"), "value": "x"}]})
    };
    let first = call(&mut w, tx(4)).await;
    assert_eq!(first["ok"], json!(true), "{first}");
    let again = call(&mut w, tx(5)).await;
    assert_eq!(again["version"], first["version"]);
    assert_eq!(again["results"], first["results"]);
    assert_eq!(value(&s, &n).await, Some(json!(11)));
}

#[tokio::test]
async fn an_id_used_for_another_write_is_refused_and_changes_nothing() {
    let s = Server::start().await;
    let p = unique("idem");
    let k = format!("{p}/k");
    let mut w = mux(&s, &p).await;
    let set = |id: i64, v: i64| json!({"id": id, "op": "set", "key": k, "value": v, "rid": "same"});
    assert_eq!(call(&mut w, set(1, 1)).await["ok"], json!(true));
    let r = call(&mut w, set(2, 2)).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["error"]["status"], json!(422));
    assert_eq!(r["error"]["code"], json!("idempotency-key-reused"));
    assert_eq!(value(&s, &k).await, Some(json!(1)));
    // Over HTTP, the same id and caller: the same refusal.
    let r = s
        .client()
        .request(
            Method::POST,
            &format!("/{k}"),
            &[("idempotency-key", "same")],
            "3",
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 422);
    // ooo's routes answer errors in plain text (a problem document on `/_` routes).
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("already used for another write"), "{body}");
    assert_eq!(value(&s, &k).await, Some(json!(1)));
}

#[tokio::test]
async fn an_idempotency_key_over_http_answers_the_repeat_and_says_so() {
    let s = Server::start().await;
    let c = s.client();
    let p = unique("idem");
    let key = format!("{p}-key-1");
    let post = || async {
        c.request(
            Method::POST,
            &format!("/{p}/*"),
            &[("idempotency-key", key.as_str())],
            r#"{"m":"hello"}"#,
        )
        .await
        .unwrap()
    };
    let first = post().await;
    assert_eq!(first.status.as_u16(), 200);
    assert!(first.header("idempotent-replayed").is_none());
    let again = post().await;
    assert_eq!(again.status.as_u16(), 200);
    assert_eq!(again.body, first.body, "the same index");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("etag"), first.header("etag"));
    assert_eq!(items(&s, &p).await.len(), 1);

    // A transaction, and a quoted key (the draft's structured-field string).
    let body = json!({"then": [{"op": "incr", "key": format!("{p}/n")}]}).to_string();
    let tx = || async {
        c.request(
            Method::POST,
            "/_tx",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "\"tx-1\""),
            ],
            body.clone(),
        )
        .await
        .unwrap()
    };
    let first = tx().await;
    let again = tx().await;
    assert_eq!(first.status.as_u16(), 200);
    assert_eq!(again.body, first.body);
    assert_eq!(value(&s, &format!("{p}/n")).await, Some(json!(1)));

    // A malformed key is refused and nothing is written.
    let r = c
        .request(
            Method::POST,
            &format!("/{p}/bad"),
            &[("idempotency-key", "has space")],
            "1",
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 400);
    assert_eq!(value(&s, &format!("{p}/bad")).await, None);
}

#[tokio::test]
async fn rid_is_refused_where_it_means_nothing() {
    let s = Server::start().await;
    let p = unique("idem");
    let mut w = mux(&s, &p).await;
    for (i, m) in [
        json!({"op": "sub", "path": format!("{p}/a"), "rid": "x"}),
        json!({"op": "set", "key": format!("{p}/a"), "value": 1, "rid": 7}),
        json!({"op": "set", "key": format!("{p}/a"), "value": 1, "rid": ""}),
        json!({"op": "set", "key": format!("{p}/a"), "value": 1, "rid": "x".repeat(129)}),
        json!({"op": "set", "key": format!("{p}/a"), "value": 1, "lease": true, "rid": "x"}),
        json!({"op": "tx", "then": [{"op": "set", "key": format!("{p}/a"), "value": 1, "rid": "x"}]}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = m;
        m["id"] = json!(i);
        let r = call(&mut w, m.clone()).await;
        assert_eq!(r["ok"], json!(false), "{m} -> {r}");
        assert_eq!(r["error"]["status"], json!(400), "{m} -> {r}");
    }
    assert_eq!(value(&s, &format!("{p}/a")).await, None);
}

//! A WebSocket subscriber that falls behind: the frames it has not been sent yet are folded
//! into one (docs/protocol.md, "Coalescing"). Whatever it is sent applies in order to what it
//! holds, versions only grow, each `/_ws` frame names each key once with its newest revision,
//! and it ends at the last value. SSE keeps every event (checked in `atomkv_sse.rs`).

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use stateline_conformance::{
    apply, call, differs, mux, next_event, next_json, unique, ws, Server, WsEvent,
};

/// Writes enough that a subscriber which does not read fills its socket's buffers (its
/// receive buffer, about 128 KiB, and the 16 KiB the server lets the kernel keep unsent):
/// 300 values of 8 KiB, about 2.4 MB.
const WRITES: u64 = 300;

/// Write `i`: 8 KiB that all differ from the previous write's (so its patch is 8 KiB too).
fn value(i: u64) -> Value {
    json!({"i": i, "pad": format!("{i:08}").repeat(1024)})
}

fn version(f: &Value) -> u64 {
    u64::from_str_radix(f["version"].as_str().expect("a version"), 16).expect("hex")
}

/// Reads frames (after the first) until the cache holds write `WRITES - 1`; returns how many,
/// and the last frame's `revs` (`/_ws`).
async fn catch_up(
    w: &mut stateline_conformance::Ws,
    cache: &mut Value,
    mut last: u64,
) -> (u64, Value) {
    let mut frames = 0;
    loop {
        let f = match next_event(w, Duration::from_secs(20)).await {
            WsEvent::Data(b, _) => serde_json::from_slice::<Value>(&b).expect("JSON frame"),
            other => panic!("after {frames} frames: {other:?}"),
        };
        if f.get("ok").is_some() {
            continue;
        }
        frames += 1;
        let v = version(&f);
        assert!(v > last, "version {v:x} after {last:x}");
        last = v;
        if let Some(revs) = f.get("revs").and_then(Value::as_array) {
            assert_eq!(revs.len(), 1, "one key, named once: {revs:?}");
        }
        apply(cache, &f);
        if cache["data"]["i"] == json!(WRITES - 1) {
            return (frames, f["revs"].clone());
        }
    }
}

async fn writes(s: &Server, k: &str) {
    let c = s.client();
    for i in 0..WRITES {
        c.set(k, &value(i)).await.unwrap();
    }
}

#[tokio::test]
async fn an_ooo_subscriber_behind_gets_where_the_key_is() {
    let s = Server::start().await;
    let k = unique("behind");
    s.client().set(&k, &json!({"i": -1})).await.unwrap();
    let mut w = ws(&s, &format!("/{k}")).await;
    let first = next_json(&mut w).await;
    let mut cache = Value::Null;
    apply(&mut cache, &first);
    // The subscriber reads nothing while the writes land.
    writes(&s, &k).await;
    let (frames, _) = catch_up(&mut w, &mut cache, version(&first)).await;
    assert_eq!(cache["data"], value(WRITES - 1), "ends at the last value");
    if differs("no-coalescing") {
        assert_eq!(frames, WRITES, "every frame");
    } else {
        assert!(frames < WRITES / 2, "{frames} frames for {WRITES} writes");
    }
    eprintln!("{frames} frames for {WRITES} writes");
}

#[tokio::test]
async fn a_mux_subscriber_behind_gets_where_the_key_is() {
    let s = Server::start().await;
    let ns = unique("behindmux");
    let k = format!("{ns}/k");
    s.client().set(&k, &json!({"i": -1})).await.unwrap();
    let mut w = mux(&s, &ns).await;
    let r = call(&mut w, json!({"id": 1, "op": "sub", "path": k})).await;
    assert_eq!(r["ok"], json!(true), "{r}");
    let first = next_json(&mut w).await;
    assert_eq!(first["snapshot"], json!(true));
    let mut cache = Value::Null;
    apply(&mut cache, &first);
    writes(&s, &k).await;
    let head = s
        .client()
        .request(Method::GET, &format!("/{k}"), &[], Bytes::new())
        .await
        .unwrap();
    let revision: u64 = head.header("x-revision").unwrap().parse().unwrap();
    let (frames, revs) = catch_up(&mut w, &mut cache, version(&first)).await;
    assert_eq!(cache["data"], value(WRITES - 1), "ends at the last value");
    assert_eq!(
        revs,
        json!([[k, revision]]),
        "named with its newest revision"
    );
    if differs("no-coalescing") {
        assert_eq!(frames, WRITES, "every frame");
    } else {
        assert!(frames < WRITES / 2, "{frames} frames for {WRITES} writes");
    }
}

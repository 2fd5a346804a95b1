//! Presence and disconnect writes on `/_ws` (docs/protocol.md, "Leases and on-close writes"):
//! a key written with `"lease": true` is deleted when its connection ends, however it ends, and
//! a subscriber of the room's glob sees the join and the leave as ordinary changes; `onclose`
//! writes run once, in registration order, and never once cancelled.

use std::time::Duration;

use futures_util::SinkExt;

use serde_json::{json, Value};
use stateline_conformance::{
    apply, call, client_frame, next_data, next_json, raw_ws, unique, ws, Server, Ws, SOON,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

// Every connection names its namespace (the edge's namespace mode serves one per `/_ws`; the
// native server and the edge's single mode ignore it): all keys of a test live under `ns`.
fn mux_path(ns: &str) -> String {
    format!("/_ws?ns={ns}")
}

/// A subscriber of a room's glob, with the list it holds.
struct Watcher {
    w: Ws,
    room: String,
    list: Value,
}

impl Watcher {
    async fn open(s: &Server, ns: &str, room: &str) -> Watcher {
        let mut w = ws(s, &mux_path(ns)).await;
        let r = call(
            &mut w,
            json!({"id":"sub","op":"sub","path":format!("{room}/*")}),
        )
        .await;
        assert_eq!(r["ok"], json!(true), "{r}");
        let mut list = Value::Null;
        apply(&mut list, &next_json(&mut w).await);
        Watcher {
            w,
            room: room.to_string(),
            list,
        }
    }

    fn present(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["index"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Applies frames until the room holds exactly `who` (bounded).
    async fn until(&mut self, who: &[&str], limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.present() != who {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "the room should hold {who:?}, holds {:?}",
                self.present()
            );
            match stateline_conformance::next_event(&mut self.w, left).await {
                stateline_conformance::WsEvent::Data(b, _) => {
                    let f: Value = serde_json::from_slice(&b).expect("json");
                    if f["sub"] == json!(format!("{}/*", self.room)) {
                        apply(&mut self.list, &f);
                    }
                }
                other => panic!("watcher: {other:?}; room holds {:?}", self.present()),
            }
        }
    }
}

/// A hand-made `/_ws` client over a raw socket, to drop it without a close frame or to stop
/// answering pings.
async fn raw_client(s: &Server, ns: &str) -> TcpStream {
    let (t, head) = raw_ws(s, &mux_path(ns), "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    t
}

async fn raw_call(t: &mut TcpStream, req: Value) -> Value {
    t.write_all(&client_frame(true, 1, req.to_string().as_bytes()))
        .await
        .expect("send");
    let b = next_data(t, SOON).await.expect("a reply");
    serde_json::from_slice(&b).expect("json")
}

#[tokio::test]
async fn a_subscriber_sees_join_and_leave_for_a_clean_close_and_a_dropped_socket() {
    let s = Server::start().await;
    let ns = unique("pres");
    let room = format!("{ns}/room");
    let mut watcher = Watcher::open(&s, &ns, &room).await;

    // Ann joins and leaves cleanly (a close frame).
    let mut ann = ws(&s, &mux_path(&ns)).await;
    let r = call(
        &mut ann,
        json!({"id":1,"op":"set","key":format!("{room}/ann"),"value":{"name":"Ann"},"lease":true}),
    )
    .await;
    assert_eq!(r["ok"], json!(true), "{r}");
    watcher.until(&["ann"], SOON).await;
    // Bob joins from two tabs: two leases on two keys.
    let mut bob = raw_client(&s, &ns).await;
    let r = raw_call(
        &mut bob,
        json!({"id":1,"op":"set","key":format!("{room}/bob-1"),"value":{"name":"Bob"},"lease":true}),
    )
    .await;
    assert_eq!(r["ok"], json!(true), "{r}");
    let mut bob2 = ws(&s, &mux_path(&ns)).await;
    let r = call(
        &mut bob2,
        json!({"id":1,"op":"set","key":format!("{room}/bob-2"),"value":{"name":"Bob"},"lease":true}),
    )
    .await;
    assert_eq!(r["ok"], json!(true), "{r}");
    watcher.until(&["ann", "bob-1", "bob-2"], SOON).await;

    ann.send(Message::Close(None)).await.expect("close");
    drop(ann);
    watcher.until(&["bob-1", "bob-2"], SOON).await;

    // Bob's first tab is killed: the TCP connection goes away without a close frame.
    drop(bob);
    watcher.until(&["bob-2"], SOON).await;
    // His other tab still holds its key.
    let r = call(&mut bob2, json!({"id":2,"op":"ping"})).await;
    assert_eq!(r["ok"], json!(true));
    assert!(s
        .client()
        .get(&format!("{room}/bob-2"))
        .await
        .expect("get")
        .is_some());
    drop(bob2);
    watcher.until(&[], SOON).await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_leaves() {
    // Natively: a server of its own with a short ping interval. The edge cannot ping: it takes
    // a socket that holds leases and sends nothing for its silence limit for gone (the suite's
    // workerd runs with STATELINE_SILENCE_SECS, which it also tells this test). Another
    // external server (a cluster node) pings at its own interval: skipped.
    let (s, limit) = match Server::with_flags(&["--ping-interval", "300ms"]).await {
        Some(s) => (s, Duration::from_secs(5)),
        None if stateline_conformance::edge_mode().is_some() => {
            let silence: f64 = std::env::var("STATELINE_SILENCE_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .expect("the edge suite runs with STATELINE_SILENCE_SECS");
            (
                Server::start().await,
                Duration::from_secs_f64(silence) + Duration::from_secs(5),
            )
        }
        None => return,
    };
    let ns = unique("pres");
    let room = format!("{ns}/room");
    let mut watcher = Watcher::open(&s, &ns, &room).await;
    let mut silent = raw_client(&s, &ns).await;
    let r = raw_call(
        &mut silent,
        json!({"id":1,"op":"set","key":format!("{room}/zed"),"value":1,"lease":true}),
    )
    .await;
    assert_eq!(r["ok"], json!(true), "{r}");
    watcher.until(&["zed"], SOON).await;
    // The raw client never reads or sends again, so it never answers a ping: closed with 4009
    // within two intervals (the edge: after its silence limit), and its key is gone.
    watcher.until(&[], limit).await;
    drop(silent);
}

#[tokio::test]
async fn disconnect_writes_fire_once_in_order_and_never_when_cancelled() {
    let s = Server::start().await;
    let ns = unique("pres");
    let room = format!("{ns}/room");
    let status = format!("{room}/status");
    let cancelled = format!("{ns}/cancelled");
    let mut watcher = Watcher::open(&s, &ns, &room).await;
    let mut w = ws(&s, &mux_path(&ns)).await;
    let mut handles = Vec::new();
    for (i, v) in ["leaving", "gone"].iter().enumerate() {
        let r = call(
            &mut w,
            json!({"id":i,"op":"onclose","write":{"op":"set","key":status,"value":v}}),
        )
        .await;
        assert_eq!(r["ok"], json!(true), "{r}");
        handles.push(r["onclose"].as_u64().expect("a handle"));
    }
    assert_ne!(handles[0], handles[1]);
    let r = call(
        &mut w,
        json!({"id":"c","op":"onclose","write":{"op":"set","key":cancelled,"value":1}}),
    )
    .await;
    let h = r["onclose"].clone();
    let r = call(&mut w, json!({"id":"x","op":"onclose_cancel","onclose":h})).await;
    assert_eq!(r, json!({"id":"x","ok":true,"onclose":h}));
    // A write the server could not take is refused when registered.
    let r = call(
        &mut w,
        json!({"id":"bad","op":"onclose","write":{"op":"incr","key":status}}),
    )
    .await;
    assert_eq!(r["error"]["status"], json!(400), "{r}");
    // Nothing ran yet.
    assert!(s.client().get(&status).await.expect("get").is_none());
    w.send(Message::Close(None)).await.expect("close");
    drop(w);
    watcher.until(&["status"], SOON).await;
    // Both writes, in order, once: the value is the second, its revision 1.
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let r = s
            .client()
            .request(http::Method::GET, &format!("/{status}"), &[], "")
            .await
            .expect("get");
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if v["data"] == json!("gone") {
            let rev = r
                .headers
                .get("x-revision")
                .and_then(|h| h.to_str().ok())
                .map(str::to_string);
            assert_eq!(rev.as_deref(), Some("1"), "set twice, in order");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "got {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.client().get(&cancelled).await.expect("get").is_none(),
        "a cancelled write never fires"
    );
}

#[tokio::test]
async fn leases_and_onclose_refuse_what_they_cannot_do() {
    let s = Server::start().await;
    let ns = unique("pres");
    let mut w = ws(&s, &mux_path(&ns)).await;
    for (i, bad) in [
        json!({"op":"set","key":format!("{ns}/k"),"value":1,"lease":true,"ttl":5}),
        json!({"op":"del","key":format!("{ns}/k"),"lease":true}),
        json!({"op":"onclose","write":{"id":1,"op":"set","key":format!("{ns}/k"),"value":1}}),
        json!({"op":"onclose_cancel","onclose":12345}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = bad.clone();
        req["id"] = json!(i);
        let r = call(&mut w, req).await;
        assert_eq!(r["error"]["status"], json!(400), "{bad}: {r}");
    }
    // The lease cap: 64 keys per connection.
    for i in 0..64 {
        let r = call(
            &mut w,
            json!({"id":i,"op":"set","key":format!("{ns}/l/{i}"),"value":i,"lease":true}),
        )
        .await;
        if r["ok"] != json!(true) {
            // The edge's attachment (2 KiB) fills before 64 leases: refused with 400 all the same.
            assert_eq!(r["error"]["status"], json!(400), "{r}");
            assert!(stateline_conformance::edge_mode().is_some(), "{r}");
            return;
        }
    }
    let r = call(
        &mut w,
        json!({"id":"over","op":"set","key":format!("{ns}/l/x"),"value":1,"lease":true}),
    )
    .await;
    assert_eq!(r["error"]["status"], json!(400), "{r}");
    assert!(s
        .client()
        .get(&format!("{ns}/l/x"))
        .await
        .expect("get")
        .is_none());
}

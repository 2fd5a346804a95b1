//! The Rust client module (`stateline_server::client`): REST helpers, subscriptions, reconnect
//! and resume.

use std::time::Duration;

use serde_json::json;
use stateline_conformance::client::Event;
use stateline_conformance::{unique, Server, SOON};

#[tokio::test]
async fn rest_helpers() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("ck");
    assert_eq!(c.get(&k).await.unwrap(), None);
    assert_eq!(c.set(&k, &json!({"a":1})).await.unwrap(), k);
    assert_eq!(c.get(&k).await.unwrap().unwrap()["data"], json!({"a":1}));
    let l = unique("cl");
    let i = c.push(&format!("{l}/*"), &json!(1)).await.unwrap();
    assert_eq!(
        c.list(&format!("{l}/*")).await.unwrap()[0]["index"],
        json!(i)
    );
    c.delete(&k).await.unwrap();
    assert_eq!(c.get(&k).await.unwrap(), None);
    assert!(
        c.delete(&k).await.is_err(),
        "deleting a missing key is an error"
    );
    assert!(c.set("bad//key", &json!(1)).await.is_err());
}

#[tokio::test]
async fn subscribe_and_subscribe_list() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("sub");
    let mut sub = c.subscribe(&k);
    let (_, snap, v) = sub.next_update(SOON).await.expect("first update");
    assert!(snap);
    assert_eq!(v["created"], json!(0));
    c.set(&k, &json!({"n":1})).await.unwrap();
    let (_, _, v) = sub.next_update(SOON).await.unwrap();
    assert_eq!(v["data"], json!({"n":1}));
    c.set(&k, &json!({"n":2})).await.unwrap();
    let (_, snap, v) = sub.next_update(SOON).await.unwrap();
    assert!(!snap, "a patch");
    assert_eq!(v["data"], json!({"n":2}));

    let l = unique("subl");
    let mut list = c.subscribe_list(&format!("{l}/*"));
    assert_eq!(list.next_update(SOON).await.unwrap().2, json!([]));
    for i in 0..3 {
        c.push(&format!("{l}/*"), &json!(i)).await.unwrap();
        let (_, _, v) = list.next_update(SOON).await.unwrap();
        assert_eq!(v.as_array().unwrap().len(), i + 1);
        assert_eq!(v[0]["data"], json!(i), "newest first");
    }
}

#[tokio::test]
async fn reconnects_after_a_restart() {
    let Some(mut s) = Server::with_flags(&[]).await else {
        return;
    };
    let c = s.client();
    let mut sub = c.subscribe("re");
    sub.next_update(SOON).await.unwrap();
    c.set("re", &json!(1)).await.unwrap();
    let (v1, _, _) = sub.next_update(SOON).await.unwrap();
    s.restart().await;
    // The old connection ends, the client reconnects with ?v=<v1>: the new server does not know
    // that version, so it sends a snapshot (an in-memory server starts empty).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut saw_disconnect = false;
    let snapshot = loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(Event::Disconnected { .. })) => saw_disconnect = true,
            Ok(Some(Event::Update {
                version,
                snapshot,
                value,
            })) => break (version, snapshot, value),
            other => panic!("no update after restart: {other:?}"),
        }
    };
    assert!(saw_disconnect);
    assert!(snapshot.1);
    assert_ne!(snapshot.0, v1);
    assert_eq!(snapshot.2["created"], json!(0));
    c.set("re", &json!(2)).await.unwrap();
    let (_, _, v) = sub.next_update(SOON).await.unwrap();
    assert_eq!(v["data"], json!(2));
}

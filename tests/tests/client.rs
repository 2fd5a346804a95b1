//! The Rust client (`stateline-client`) against the server: REST helpers, and live subscriptions
//! and writes over `/_ws` through the core's sync state machine (reconnect and resume included).
//! ooo's per-path WebSocket protocol, which the client does not use, is in `ooo_ws.rs`.

use std::time::Duration;

use serde_json::{json, Value};
use stateline_client::{Client, ClientError, Config, Event, State};
use stateline_conformance::{differs, unique, Server, SOON};

/// A client whose live connection serves the namespace `ns` where the target serves one per
/// `/_ws` socket (the documented difference `mux-per-namespace`).
fn live(s: &Server, ns: &str) -> Client {
    let c = s.client();
    if differs("mux-per-namespace") {
        c.with_live(Config::default(), Some(ns))
    } else {
        c
    }
}

fn keys(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|i| i["key"].as_str().expect("key").to_string())
        .collect()
}

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
async fn subscribe_to_a_key_and_a_glob() {
    let s = Server::start().await;
    let p = unique("live");
    let c = live(&s, &p);
    let k = format!("{p}/k");
    let mut sub = c.subscribe(&format!("/{k}")).unwrap();
    assert_eq!(sub.pattern(), k);
    let u = sub.next_update(SOON).await.expect("first update");
    assert!(u.initial);
    assert_eq!((u.value, u.changes.len()), (Value::Null, 0), "absent");
    c.set(&k, &json!({"n":1})).await.unwrap();
    let u = sub.next_update(SOON).await.unwrap();
    assert!(!u.initial);
    assert_eq!(u.value, json!({"n":1}));
    assert_eq!(u.changes.len(), 1);
    assert_eq!(
        (u.changes[0].key.as_str(), u.changes[0].revision),
        (k.as_str(), 0)
    );
    assert_eq!(sub.value(), Some(json!({"n":1})));
    assert_eq!(sub.version(), Some(u.version));

    // A glob: items in the server's order, newest first, each change reported once.
    let mut list = c.subscribe(&format!("{p}/l/*")).unwrap();
    assert_eq!(list.next_update(SOON).await.unwrap().value, json!([]));
    let mut pushed = Vec::new();
    for i in 0..3 {
        let index = c.push(&format!("{p}/l/*"), &json!(i)).await.unwrap();
        pushed.insert(0, format!("{p}/l/{index}"));
        let u = list.next_update(SOON).await.unwrap();
        assert_eq!(keys(&u.value), pushed, "newest first");
        assert_eq!(u.value[0]["value"], json!(i));
        assert_eq!(u.changes.len(), 1);
        assert_eq!(u.changes[0].key, pushed[0]);
    }
    c.delete(&pushed[1]).await.unwrap();
    let u = list.next_update(SOON).await.unwrap();
    assert_eq!(u.changes.len(), 1);
    assert_eq!(
        (&u.changes[0].key, &u.changes[0].value),
        (&pushed[1], &None)
    );
    assert_eq!(keys(&u.value), vec![pushed[0].clone(), pushed[2].clone()]);

    // A second subscription to the same pattern gets the current value at once.
    let mut again = c.subscribe(&format!("{p}/l/*")).unwrap();
    let u = again.next_update(SOON).await.unwrap();
    assert!(u.initial);
    assert_eq!(u.changes.len(), 2);

    // An invalid path fails at once, without asking the server.
    assert!(matches!(
        c.subscribe("a//b"),
        Err(ClientError::Failed(f)) if f.status == 0 && f.code == "invalid-key"
    ));
}

#[tokio::test]
async fn writes_over_the_live_connection() {
    let s = Server::start().await;
    let p = unique("lw");
    let c = live(&s, &p);
    let k = format!("{p}/k");
    let r = c
        .write(json!({"op":"set","key":k,"value":{"a":1}}))
        .await
        .unwrap();
    assert_eq!((&r["key"], &r["revision"]), (&json!(k), &json!(0)));
    let r = c
        .write(json!({"op":"push","path":format!("{p}/l/*"),"value":1}))
        .await
        .unwrap();
    assert!(r["index"].is_string(), "{r}");
    assert_eq!(
        c.get(&k).await.unwrap().expect("written")["data"],
        json!({"a":1})
    );
    // A compare-and-swap on a stale revision is a visible conflict and changes nothing.
    let e = c
        .write(json!({"op":"set","key":k,"value":2,"rev":0}))
        .await
        .unwrap_err();
    let ClientError::Failed(f) = e else {
        panic!("{e:?}");
    };
    assert!(f.is_conflict(), "{f:?}");
    assert_eq!(f.status, 409);
    assert_eq!(c.get(&k).await.unwrap().unwrap()["data"], json!({"a":1}));
    assert_eq!(c.state(), State::Open);
}

#[tokio::test]
async fn reconnects_after_a_restart_and_reports_what_changed() {
    let Some(mut s) = Server::with_flags(&[]).await else {
        return;
    };
    let c = s.client();
    let mut sub = c.subscribe("re/*").unwrap();
    sub.next_update(SOON).await.unwrap();
    c.set("re/a", &json!(1)).await.unwrap();
    let u = sub.next_update(SOON).await.unwrap();
    assert_eq!(keys(&u.value), ["re/a"]);
    s.restart().await;
    // The client waits (the core's backoff), connects again and resumes from its version: the
    // new in-memory server does not know it and sends a snapshot, which the core diffs against
    // the cache: re/a is reported gone, once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut states = Vec::new();
    let u = loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(Event::State(st))) => states.push(st),
            Ok(Some(Event::Update(u))) => break u,
            other => panic!("no update after the restart: {other:?} (states {states:?})"),
        }
    };
    assert!(states.contains(&State::Waiting), "{states:?}");
    assert_eq!(states.last(), Some(&State::Open), "{states:?}");
    assert_eq!(u.value, json!([]));
    assert_eq!(u.changes.len(), 1);
    assert_eq!(
        (u.changes[0].key.as_str(), &u.changes[0].value),
        ("re/a", &None)
    );
    c.set("re/b", &json!(2)).await.unwrap();
    let u = sub.next_update(SOON).await.unwrap();
    assert_eq!(keys(&u.value), ["re/b"]);
    assert_eq!(u.changes.len(), 1);
}

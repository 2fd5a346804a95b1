//! Key history survives a restart on the same data folder (it is kept in the store's redb
//! file), trimmed to a smaller `--history` when the server comes back with one. The server
//! listens on 127.0.0.1 and is stopped by the handle this test started.

mod common;

use common::start;
use http::Method;
use serde_json::{json, Value};
use stateline_client::Client;

async fn history(c: &Client, key: &str, n: usize) -> (u16, Value) {
    let r = c
        .request(Method::GET, &format!("/{key}?history={n}"), &[], "")
        .await
        .unwrap();
    (
        r.status.as_u16(),
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn history_survives_a_restart_and_follows_a_new_limit() {
    let root = std::env::temp_dir().join(format!("stateline-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("data");
    let (server, base) = start(&dir, &["--log-entries", "2"]);
    let c = Client::new(&base).unwrap();
    for i in 0..5 {
        c.set("h/k", &json!(i)).await.unwrap();
    }
    c.delete("h/k").await.unwrap();
    c.set("h/名前", &json!("x")).await.unwrap();
    // The change log keeps 2 changes; the history keeps every version of the key.
    let (status, before) = history(&c, "h/k", 32).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before.as_array().unwrap().len(), 6);
    assert_eq!(before[0]["deleted"], json!(true));
    drop(server);

    let (server, base) = start(&dir, &[]);
    let c = Client::new(&base).unwrap();
    assert_eq!(history(&c, "h/k", 32).await, (200, before.clone()));
    let (_, utf8) = history(&c, "h/%E5%90%8D%E5%89%8D", 5).await;
    assert_eq!(utf8[0]["data"], json!("x"));
    drop(server);

    // A smaller limit trims what was kept, on disk too.
    let (server, base) = start(&dir, &["--history", "2"]);
    let c = Client::new(&base).unwrap();
    let (_, trimmed) = history(&c, "h/k", 2).await;
    assert_eq!(trimmed, json!(before.as_array().unwrap()[..2]));
    c.set("h/k", &json!("after")).await.unwrap();
    drop(server);
    let (_server, base) = start(&dir, &["--history", "10"]);
    let c = Client::new(&base).unwrap();
    let (_, after) = history(&c, "h/k", 10).await;
    assert_eq!(after.as_array().unwrap().len(), 2, "{after}");
    assert_eq!(after[0]["data"], json!("after"));
    assert_eq!(after[1]["deleted"], json!(true));
    drop(_server);
    let _ = std::fs::remove_dir_all(&root);
}

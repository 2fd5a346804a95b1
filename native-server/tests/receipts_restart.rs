//! Idempotent writes across a restart: the ids of writes the store kept are kept with it (the
//! redb table `receipts`, written in the write's own transaction), so a client that resends a
//! write after the server came back gets the first answer and the write is applied once. The
//! server listens on 127.0.0.1 and is stopped by the handle this test started.

mod common;

use common::start;
use http::Method;
use serde_json::Value;
use stateline_client::Client;

async fn push(c: &Client, id: &str) -> stateline_client::Response {
    c.request(
        Method::POST,
        "/r/list/*",
        &[("idempotency-key", id)],
        r#"{"n":1}"#,
    )
    .await
    .unwrap()
}

async fn count(c: &Client) -> usize {
    let r = c.request(Method::GET, "/r/list/*", &[], "").await.unwrap();
    serde_json::from_slice::<Value>(&r.body)
        .unwrap()
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn a_write_resent_after_a_restart_is_applied_once() {
    let root = std::env::temp_dir().join(format!("stateline-receipts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("data");
    let (server, base) = start(&dir, &[]);
    let c = Client::new(&base).unwrap();
    let first = push(&c, "resend-1").await;
    assert_eq!(first.status.as_u16(), 200);
    for i in 0..3 {
        push(&c, &format!("other-{i}")).await;
    }
    drop(server);

    let (server, base) = start(&dir, &[]);
    let c = Client::new(&base).unwrap();
    let again = push(&c, "resend-1").await;
    assert_eq!(again.status.as_u16(), 200);
    assert_eq!(again.body, first.body, "the first answer");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(count(&c).await, 4);
    // The id still names that write: another write under it is refused.
    let r = c
        .request(
            Method::POST,
            "/r/other",
            &[("idempotency-key", "resend-1")],
            "1",
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 422);
    drop(server);

    // A window of 2 at start keeps the newest two ids: the oldest is a new write again.
    let (server, base) = start(&dir, &["--receipts", "2"]);
    let c = Client::new(&base).unwrap();
    assert_eq!(
        push(&c, "other-2").await.header("idempotent-replayed"),
        Some("true")
    );
    assert!(push(&c, "resend-1")
        .await
        .header("idempotent-replayed")
        .is_none());
    assert_eq!(count(&c).await, 5);
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
}

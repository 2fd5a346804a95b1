//! The embedding API through the example (`examples/embedded.rs`): static mode, composing write
//! filters, a delete filter, the audit hook, a custom endpoint listed at `/?api=endpoints`, and
//! subscribe hooks, over real sockets.

#[path = "../examples/embedded.rs"]
mod embedded;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::Method;
use stateline_client::Client;
use stateline_server::ServeArgs;

#[tokio::test]
async fn embedded_server_filters_audit_endpoints_hooks() {
    let watchers = Arc::new(AtomicUsize::new(0));
    let server = embedded::build(ServeArgs::memory(), watchers.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    let c = Client::new(&url).unwrap();
    let key = [("x-api-key", "letmein")];
    let post =
        |path: &'static str, body: &'static str, h: &'static [(&'static str, &'static str)]| {
            let c = c.clone();
            async move { c.request(Method::POST, path, h, body).await.unwrap() }
        };
    // The audit hook refuses writes without the key (401), before any filter runs.
    let r = post("/books/dune", r#"{"title":"Dune","shelf":"scifi"}"#, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    // Both write filters apply: validation, then the rewrite.
    let r = post(
        "/books/dune",
        r#"{"shelf":"scifi"}"#,
        &[("x-api-key", "letmein")],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (400, "a book needs a title\n".into())
    );
    let r = post(
        "/books/dune",
        r#"{"title":"Dune","shelf":"scifi"}"#,
        &[("x-api-key", "letmein")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = c.get("books/dune").await.unwrap().unwrap();
    assert_eq!(got["data"]["shelved"], true, "{got}");
    let r = post(
        "/books/classic",
        r#"{"title":"Emma","shelf":"scifi"}"#,
        &[("x-api-key", "letmein")],
    )
    .await;
    assert_eq!(r.status, 200);
    // Static mode: nothing else is a route.
    let r = post("/films/alien", "{}", &[("x-api-key", "letmein")]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("route not defined"));
    // The delete filter keeps the classic.
    let r = c
        .request(Method::DELETE, "/books/classic", &key, "")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    // The endpoint answers from the state, and is described.
    let r = c
        .request(Method::GET, "/shelves/scifi", &[], "")
        .await
        .unwrap();
    assert_eq!(
        r.json().unwrap(),
        serde_json::json!({"shelf":"scifi","books":2})
    );
    let r = c
        .request(Method::PUT, "/shelves/scifi", &key, "")
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    let r = c
        .request(Method::GET, "/?api=endpoints", &[], "")
        .await
        .unwrap();
    let e = r.json().unwrap();
    assert_eq!(e["endpoints"][0]["path"], "/shelves/{shelf}", "{e}");
    assert_eq!(
        e["endpoints"][0]["methods"]["GET"]["response"]["books"],
        "integer"
    );
    // Subscribe hooks: books may be watched (and are counted), other patterns are refused.
    let (mut ws, _) = tokio_tungstenite::connect_async(c.ws_url("/books/*"))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(first.is_some());
    assert_eq!(watchers.load(Ordering::SeqCst), 1);
    drop(ws);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while watchers.load(Ordering::SeqCst) != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        watchers.load(Ordering::SeqCst),
        0,
        "the unsubscribe hook ran"
    );
    let mut mux = tokio_tungstenite::connect_async(c.ws_url("/_ws"))
        .await
        .unwrap()
        .0;
    use futures_util::SinkExt;
    mux.send(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"id":1,"op":"sub","path":"logs/*"}"#.into(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), mux.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.into_data()).unwrap();
    assert_eq!(reply["error"]["status"], 403, "{reply}");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
}

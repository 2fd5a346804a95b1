//! AtomKV's HTTP and SSE: its documented cases (`PUT` with
//! `X-Revision`, conflicts, SSE events, CORS), and SSE beyond AtomKV (initial
//! value, `Last-Event-ID` resume, keep-alive comments, `Accept` lists, headers at once).

use std::time::Duration;

use http::Method;
use serde_json::json;
use stateline_conformance::{unique, Server, Sse, QUIET, SOON};

#[tokio::test]
async fn case21_post_and_revisions() {
    let s = Server::start().await;
    let c = s.client();
    let k = format!("{}/b", unique("a"));
    let r = c
        .request(Method::POST, &format!("/{k}"), &[], r#"{"b":1, "a":2}"#)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let g = c
        .request(Method::GET, &format!("/{k}"), &[], "")
        .await
        .unwrap();
    assert_eq!(g.json().unwrap()["data"], json!({"a":2,"b":1}));
    assert_eq!(g.header("x-revision"), Some("0"));
    c.request(Method::POST, &format!("/{k}"), &[], "2")
        .await
        .unwrap();
    let g = c
        .request(Method::GET, &format!("/{k}"), &[], "")
        .await
        .unwrap();
    assert_eq!(g.header("x-revision"), Some("1"));
}

#[tokio::test]
async fn case22_put_compare_and_swap() {
    let s = Server::start().await;
    let c = s.client();
    let x = format!("/{}", unique("x"));
    let put = |rev: Option<&'static str>| {
        let c = c.clone();
        let x = x.clone();
        async move {
            let h: Vec<(&str, &str)> = rev.map(|r| vec![("x-revision", r)]).unwrap_or_default();
            c.request(Method::PUT, &x, &h, "1").await.unwrap()
        }
    };
    assert_eq!(put(Some("0")).await.status, 200);
    let r = put(Some("0")).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (409, "revision conflict\n")
    );
    assert_eq!(put(Some("1")).await.status, 200);
    let r = put(None).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (400, "missing revision\n")
    );
    let r = put(Some("abc")).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (400, "invalid revision\n")
    );
}

#[tokio::test]
async fn case23_errors() {
    let s = Server::start().await;
    let c = s.client();
    let r = c
        .request(Method::GET, &format!("/{}", unique("nope")), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let a = unique("a");
    // AtomKV refuses a GET on a subtree; Stateline lists it, as SSE on the same URL streams it
    // (docs/protocol.md, "Deviations").
    let r = c
        .request(Method::GET, &format!("/{a}/"), &[], "")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "[]"));
    assert_eq!(
        c.request(Method::POST, &format!("/{a}//b"), &[], "1")
            .await
            .unwrap()
            .status,
        400
    );
    let r = c
        .request(Method::POST, &format!("/{a}"), &[], "{bad")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("invalid JSON"), "{}", r.text());
}

#[tokio::test]
async fn case24_sse_subtree_and_key() {
    let s = Server::start().await;
    let c = s.client();
    let p = unique("s");
    let mut tree = Sse::open(&s, &format!("/{p}/"), "text/event-stream", "").await;
    let mut key = Sse::open(&s, &format!("/{p}/k"), "text/event-stream", "").await;
    assert!(tree.head.starts_with("HTTP/1.1 200"));
    assert!(tree
        .head
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    tree.drain_for(QUIET).await;
    assert!(!tree.text().contains("data:"), "no event at subscribe time");
    c.request(Method::POST, &format!("/{p}/k"), &[], r#"{"v":1}"#)
        .await
        .unwrap();
    c.request(Method::POST, &format!("/{p}/kk/x"), &[], r#""deep""#)
        .await
        .unwrap();
    c.request(Method::POST, &format!("/{p}x"), &[], "0")
        .await
        .unwrap();
    let e1 = format!("data:{{\"v\":1}}\nid:/{p}/k:0:");
    let e2 = format!("data:\"deep\"\nid:/{p}/kk/x:0:");
    assert!(tree.wait_for(&e2, SOON).await, "{}", tree.text());
    tree.drain_for(QUIET).await;
    let t = tree.text();
    assert!(t.contains(&e1), "{t}");
    assert_eq!(t.matches("data:").count(), 2, "nothing for /{p}x: {t}");
    assert!(key.wait_for(&e1, SOON).await);
    key.drain_for(QUIET).await;
    assert_eq!(key.text().matches("data:").count(), 1, "{}", key.text());
}

#[tokio::test]
async fn case25_cors_everywhere() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("cors");
    for (m, path, body) in [
        (Method::POST, format!("/{k}"), "1"),
        (Method::GET, format!("/{k}"), ""),
        (Method::GET, format!("/{}", unique("missing")), ""),
        (Method::OPTIONS, format!("/{k}"), ""),
        (Method::PUT, format!("/{k}"), "1"),
        (Method::GET, "/_health".to_string(), ""),
        (Method::GET, "/?api=keys".to_string(), ""),
    ] {
        let r = c
            .request(m.clone(), &path, &[("origin", "http://page.example")], body)
            .await
            .unwrap();
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("*"),
            "{m} {path}"
        );
        let exposed = r.header("access-control-expose-headers").unwrap_or("");
        assert!(exposed.contains("X-Revision"), "{m} {path}: {exposed}");
    }
}

#[tokio::test]
async fn sse_initial_value_and_accept_lists() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("init");
    c.request(Method::POST, &format!("/{k}"), &[], r#"{"v":1}"#)
        .await
        .unwrap();
    let mut sse = Sse::open(
        &s,
        &format!("/{k}?initial=1"),
        "text/html, text/event-stream;q=0.9",
        "",
    )
    .await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    assert!(
        sse.wait_for(&format!("data:{{\"v\":1}}\nid:/{k}:0:"), SOON)
            .await,
        "{}",
        sse.text()
    );
    c.request(Method::POST, &format!("/{k}"), &[], r#"{"v":2}"#)
        .await
        .unwrap();
    assert!(
        sse.wait_for(&format!("data:{{\"v\":2}}\nid:/{k}:1:"), SOON)
            .await
    );
    c.delete(&k).await.unwrap();
    assert!(
        sse.wait_for(&format!("event:delete\ndata:null\nid:/{k}:"), SOON)
            .await,
        "{}",
        sse.text()
    );
    // Without initial=1 and on a missing key: headers at once, no event.
    let mut quiet = Sse::open(&s, &format!("/{}", unique("none")), "text/event-stream", "").await;
    assert!(quiet.head.starts_with("HTTP/1.1 200"));
    quiet.drain_for(QUIET).await;
    assert!(!quiet.text().contains("data:"));
}

#[tokio::test]
async fn sse_last_event_id_resumes() {
    let s = Server::start().await;
    let c = s.client();
    let p = unique("r");
    c.request(Method::POST, &format!("/{p}/a"), &[], "1")
        .await
        .unwrap();
    let mut first = Sse::open(&s, &format!("/{p}/"), "text/event-stream", "").await;
    c.request(Method::POST, &format!("/{p}/a"), &[], "2")
        .await
        .unwrap();
    assert!(first.wait_for(&format!("id:/{p}/a:1:"), SOON).await);
    drop(first);
    // Missed while away: two writes to a, one to b.
    c.request(Method::POST, &format!("/{p}/a"), &[], "3")
        .await
        .unwrap();
    c.request(Method::POST, &format!("/{p}/b"), &[], "4")
        .await
        .unwrap();
    let mut again = Sse::open(
        &s,
        &format!("/{p}/"),
        "text/event-stream",
        &format!("Last-Event-ID: /{p}/a:1\r\n"),
    )
    .await;
    assert!(
        again.wait_for(&format!("data:4\nid:/{p}/b:0:"), SOON).await,
        "{}",
        again.text()
    );
    let t = again.text();
    assert!(t.contains(&format!("data:3\nid:/{p}/a:2:")), "{t}");
    assert!(
        !t.contains(&format!("id:/{p}/a:1:")),
        "nothing already seen: {t}"
    );
}

/// The version at the end of the last event id for `key:rev` in an SSE text
/// (`id:/<key>:<rev>:<version>`).
fn id_of(text: &str, key_rev: &str) -> String {
    let start = text
        .rfind(&format!("id:/{key_rev}:"))
        .unwrap_or_else(|| panic!("no id for {key_rev} in {text}"));
    let line = text[start..].lines().next().unwrap();
    line.trim_start_matches("id:").to_string()
}

#[tokio::test]
async fn sse_ids_are_unique_across_a_key_created_again() {
    // A key's revision starts again at 0 when it is created after a delete, so `key:revision`
    // names two points of the stream; the version in the id tells them apart.
    let s = Server::start().await;
    let c = s.client();
    let p = unique("r");
    let mut first = Sse::open(&s, &format!("/{p}/"), "text/event-stream", "").await;
    c.request(Method::POST, &format!("/{p}/z"), &[], r#""a1""#)
        .await
        .unwrap();
    c.request(Method::POST, &format!("/{p}/z"), &[], r#""a2""#)
        .await
        .unwrap();
    assert!(
        first
            .wait_for(&format!("data:\"a2\"\nid:/{p}/z:1:"), SOON)
            .await
    );
    c.delete(&format!("{p}/z")).await.unwrap();
    assert!(
        first.wait_for("event:delete", SOON).await,
        "{}",
        first.text()
    );
    first.drain_for(QUIET).await;
    let t = first.text();
    let seen = id_of(&t, &format!("{p}/z:1"));
    let deleted = id_of(&t, &format!("{p}/z:2"));
    drop(first);
    // Missed while away: z created again (revisions 0 and 1 once more) and a change to other.
    c.request(Method::POST, &format!("/{p}/z"), &[], r#""b1""#)
        .await
        .unwrap();
    c.request(Method::POST, &format!("/{p}/other"), &[], "7")
        .await
        .unwrap();
    c.request(Method::POST, &format!("/{p}/z"), &[], r#""b2""#)
        .await
        .unwrap();
    for (from, what) in [
        (&seen, "the first life's last write"),
        (&deleted, "the delete"),
    ] {
        let mut again = Sse::open(
            &s,
            &format!("/{p}/"),
            "text/event-stream",
            &format!("Last-Event-ID: {from}\r\n"),
        )
        .await;
        assert!(
            again
                .wait_for(&format!("data:\"b2\"\nid:/{p}/z:1:"), SOON)
                .await,
            "resumed from {what}: {}",
            again.text()
        );
        assert!(
            again
                .wait_for(&format!("data:7\nid:/{p}/other:0:"), SOON)
                .await,
            "resumed from {what}, the change to other is replayed: {}",
            again.text()
        );
        let t = again.text();
        assert!(
            !t.contains("\"a1\"") && !t.contains("\"a2\""),
            "nothing already seen: {t}"
        );
        // Ids are unique and ordered: the versions grow along the stream.
        let versions: Vec<u64> = t
            .lines()
            .filter_map(|l| l.strip_prefix("id:"))
            .map(|id| u64::from_str_radix(id.rsplit(':').next().unwrap(), 16).unwrap())
            .collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{t}");
    }
}

#[tokio::test]
async fn sse_keep_alive_comments() {
    let Some(s) = Server::with_flags(&["--sse-keepalive", "200ms"]).await else {
        return;
    };
    let mut sse = Sse::open(&s, "/ka", "text/event-stream", "").await;
    assert!(
        sse.wait_for(":keep-alive\n\n", Duration::from_secs(3))
            .await,
        "{}",
        sse.text()
    );
}

//! What a new user meets in the first hour, trying the README's examples: each answer is the
//! documented one, and each refusal says what to do instead (docs/protocol.md §2, §5).

use http::Method;
use serde_json::{json, Value};
use stateline_conformance::{
    differs, find, next_json, raw, read_until, send_text, unique, upload, ws, Server, SOON,
};

#[tokio::test]
async fn a_subtree_lists_like_its_stream() {
    let s = Server::start().await;
    let c = s.client();
    let p = unique("todos");
    c.set(&format!("{p}/a"), &json!({"t": "milk"}))
        .await
        .unwrap();
    c.set(&format!("{p}/b/c"), &json!({"t": "eggs"}))
        .await
        .unwrap();
    c.set(&format!("{p}x"), &json!(1)).await.unwrap();
    let r = c
        .request(Method::GET, &format!("/{p}/"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let list: Value = serde_json::from_slice(&r.body).unwrap();
    let paths: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [format!("{p}/b/c"), format!("{p}/a")],
        "every key below it at any depth, newest first, not {p}x"
    );
}

#[tokio::test]
async fn refusals_say_what_to_do() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("p");
    c.set(&k, &json!({"a": 1})).await.unwrap();
    let before = c
        .request(Method::GET, &format!("/{k}"), &[], "")
        .await
        .unwrap();
    // A merge whose body is not an object: 400 with the way out, nothing changed.
    for body in ["[1,2]", "5"] {
        let r = c
            .request(Method::PATCH, &format!("/{k}"), &[], body)
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains("must be a JSON object"), "{}", r.text());
    }
    let after = c
        .request(Method::GET, &format!("/{k}"), &[], "")
        .await
        .unwrap();
    assert_eq!(
        before.header("x-revision"),
        after.header("x-revision"),
        "no new revision"
    );
    // A missing key is named.
    let m = unique("missing");
    let r = c
        .request(Method::GET, &format!("/{m}"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        format!("ooo: empty key: nothing is stored at {m}\n")
    );
    // A percent-encoded character is named as the character, not its '%'.
    let r = c
        .request(Method::GET, &format!("/{k}caf%09"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("'\\t'"), "{}", r.text());
    // An encoded allowed character is that character.
    let r = c
        .request(Method::GET, &format!("/{}", k.replace('-', "%2D")), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // The API list names every api.
    let r = c.request(Method::GET, "/?api=nope", &[], "").await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("endpoints"), "{}", r.text());
    let r = c
        .request(Method::GET, "/?api=endpoints", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["endpoints"].is_array(), "{v}");
}

#[tokio::test]
async fn too_large_names_the_limit() {
    let s = Server::start().await;
    // Declared, not sent: the server answers from the header alone.
    for path in [format!("/{}", unique("big")), "/_incr/big".to_string()] {
        if differs("unsent-body") {
            let head = upload(&s, &path, (10 << 20) + 1).await;
            assert!(head.starts_with("HTTP/1.1 413"), "{head}");
            continue;
        }
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 999999999\r\nConnection: close\r\n\r\n",
            s.authority()
        );
        let mut t = raw(&s, &head, b"").await;
        let mut buf = Vec::new();
        read_until(&mut t, &mut buf, b"--max-body", SOON).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(find(&buf, b"--max-body").is_some(), "{text}");
    }
}

#[tokio::test]
async fn mux_push_to_a_key_says_push_needs_a_list() {
    let s = Server::start().await;
    let p = unique("w");
    let path = if differs("mux-per-namespace") {
        format!("/_ws?ns={p}")
    } else {
        "/_ws".to_string()
    };
    let mut w = ws(&s, &path).await;
    send_text(
        &mut w,
        &json!({"id":1,"op":"push","path":format!("{p}/c"),"value":1}),
    )
    .await;
    let r = next_json(&mut w).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    let detail = r["error"]["detail"].as_str().unwrap_or("");
    assert!(detail.contains("push needs a list pattern"), "{r}");
    assert!(!detail.contains("glob pattern must be"), "{r}");
}

#[tokio::test]
async fn a_garbage_last_event_id_is_refused_not_ignored() {
    let s = Server::start().await;
    let c = s.client();
    let k = unique("sse");
    c.set(&k, &json!(1)).await.unwrap();
    for id in ["garbage", "/x:notanumber", "1:2:zz"] {
        let r = tokio::time::timeout(
            SOON,
            c.request(
                Method::GET,
                &format!("/{k}"),
                &[("accept", "text/event-stream"), ("last-event-id", id)],
                "",
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{id}: the stream opened instead of a 400"))
        .unwrap();
        assert_eq!(r.status, 400, "{id}: {}", r.text());
        assert!(r.text().contains("Last-Event-ID"), "{}", r.text());
    }
}

//! A write whose durable commit fails is answered 503 and leaves nothing behind: memory rolls
//! back to what is on disk, readers and subscribers never see it, `/_health` reports the failure
//! until a commit succeeds again, and writing resumes by itself once the cause is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use serde_json::{json, Value};
use stateline_client::Client;
use stateline_core::Filters;
use stateline_disk::Disk;
use stateline_server::hub::{Clocks, Limits};
use stateline_server::{open_store, router, Cli, Command, ServeArgs, Shared};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Running {
    args: ServeArgs,
    dir: std::path::PathBuf,
    shared: Arc<Shared>,
    disk: Arc<Disk>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    c: Client,
    addr: std::net::SocketAddr,
}

async fn start(name: &str) -> Running {
    let dir = std::env::temp_dir().join(format!("stateline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cli = Cli::parse_from(["stateline", "serve", "--data", dir.to_str().unwrap()]);
    let Command::Serve(args) = cli.command else {
        panic!("serve")
    };
    let clocks = Clocks::new();
    let (engine, disk) = open_store(&args, &clocks, Filters::new()).unwrap();
    let disk = disk.expect("a durable store");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    std::mem::forget(stop);
    let shared = Shared::new(engine, clocks, Limits::from_args(&args), stop_rx);
    shared.attach_disk(disk.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(shared.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let c = Client::new(&format!("http://{addr}")).unwrap();
    Running {
        args,
        dir,
        shared,
        disk,
        server,
        c,
        addr,
    }
}

impl Running {
    async fn req(&self, method: http::Method, path: &str, body: &str) -> (u16, String) {
        let r = self
            .c
            .request(method, path, &[], body.to_string())
            .await
            .unwrap();
        (
            r.status.as_u16(),
            String::from_utf8_lossy(&r.body).into_owned(),
        )
    }
    async fn post(&self, path: &str, body: &str) -> (u16, String) {
        self.req(http::Method::POST, path, body).await
    }
    async fn value(&self, key: &str) -> Option<Value> {
        self.c.get(key).await.unwrap().map(|v| v["data"].clone())
    }

    /// Waits until a write after `seq` is applied in memory (its commit may still be pending).
    async fn applied_since(&self, seq: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.shared.lock().engine.store().last_seq() <= seq {
            assert!(Instant::now() < deadline, "the write was never applied");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops the server and opens the data folder again, as a restart does.
    async fn restart(self) -> stateline_core::Engine {
        self.server.abort();
        let Running {
            args, shared, disk, ..
        } = self;
        drop(shared);
        drop(disk);
        // The aborted server task lets go of the folder when it is dropped; retry until then.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match open_store(&args, &Clocks::new(), Filters::new()) {
                Ok((engine, _)) => break engine,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }
}

#[tokio::test]
async fn failed_commit_is_a_503_and_changes_nothing() {
    let s = start("commit-failure").await;
    let dir = s.dir.clone();
    assert_eq!(s.post("/k", r#"{"v":1}"#).await.0, 200);
    let seq_before = s.shared.lock().engine.store().last_seq();
    s.disk.fail_next_commits(1);
    let (status, body) = s.post("/k", r#"{"v":2}"#).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("storage unavailable: no space left on device")
            && body.contains("nothing was changed"),
        "{body}"
    );
    let (status, body) = s.post("/_incr/counter", "1").await;
    assert_eq!(status, 200, "the failure was one commit only: {body}");
    s.disk.fail_next_commits(1);
    assert_eq!(s.post("/other", "1").await.0, 503);

    // Memory matches the disk: the failed writes are gone, revisions and sequence untouched by them.
    assert_eq!(s.value("k").await, Some(json!({"v":1})));
    assert!(s.value("other").await.is_none());
    {
        let hub = s.shared.lock();
        assert_eq!(hub.engine.store().get("k").unwrap().revision, 0);
        assert_eq!(
            hub.engine.store().last_seq(),
            seq_before + 1,
            "only the counter was added"
        );
    }
    assert_eq!(s.post("/k", r#"{"v":3}"#).await.0, 200);
    let r = s.c.request(http::Method::GET, "/k", &[], "").await.unwrap();
    assert_eq!(r.headers.get("x-revision").unwrap(), "1");

    // And what was acknowledged is what a restart finds.
    let engine = s.restart().await;
    assert_eq!(*engine.store().get("k").unwrap().data(), json!({"v":3}));
    assert!(engine.store().get("other").is_none());
    assert_eq!(engine.store().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_full_disk_answers_503_with_the_reason_and_recovers_by_itself() {
    let s = start("disk-full").await;
    let dir = s.dir.clone();
    assert_eq!(s.post("/a", "1").await.0, 200);
    assert_eq!(s.req(http::Method::GET, "/_health", "").await.0, 200);

    // Every write redb makes fails as on a full disk (redb then refuses everything until the
    // database is re-opened: the state that used to need a restart).
    s.disk.fail_writes(true);
    let (status, body) = s.post("/b", "1").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("storage unavailable: no space left on device"),
        "{body}"
    );
    let (status, body) = s.req(http::Method::GET, "/_health", "").await;
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "unavailable");
    assert!(
        health["reason"]
            .as_str()
            .unwrap()
            .contains("no space left on device"),
        "{body}"
    );
    for _ in 0..3 {
        // Deletes too: each one is a retry, answered with the same clear reason.
        let (status, body) = s.req(http::Method::DELETE, "/a", "").await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("no space left on device") && !body.contains("Previous I/O"),
            "{body}"
        );
    }
    let (status, body) = s.post("/_incr/n", "1").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with('{'),
        "a problem document on /_ routes: {body}"
    );
    // Reads go on, from what is committed.
    assert_eq!(s.value("a").await, Some(json!(1)));
    assert!(s.value("b").await.is_none());

    // Space is back. No write comes: the store is probed, `/_health` turns 200 by itself.
    s.disk.fail_writes(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = s.req(http::Method::GET, "/_health", "").await;
        if status == 200 {
            assert!(body.contains(r#""status":"ok""#), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still unhealthy: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.post("/b", "2").await.0, 200);
    assert_eq!(s.req(http::Method::DELETE, "/a", "").await.0, 204);

    // Full again, then freed: a write retries the store itself (once a second at most).
    s.disk.fail_writes(true);
    assert_eq!(s.post("/c", "1").await.0, 503);
    s.disk.fail_writes(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.post("/c", "3").await.0 != 200 {
        assert!(Instant::now() < deadline, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.req(http::Method::GET, "/_health", "").await.0, 200);

    let engine = s.restart().await;
    let store = engine.store();
    assert!(store.get("a").is_none());
    assert_eq!(*store.get("b").unwrap().data(), json!(2));
    assert_eq!(*store.get("c").unwrap().data(), json!(3));
    assert_eq!(store.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads everything an SSE stream sends until it ends or `limit` passes.
async fn sse(addr: std::net::SocketAddr, path: &str, limit: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            // The stream ended (chunked terminator).
            if out.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Every message a WebSocket gets until it closes or `limit` passes, and its close code.
async fn ws(url: String, send: Option<&str>, limit: Duration) -> (Vec<String>, Option<u16>) {
    use tokio_tungstenite::tungstenite::Message;
    let (mut sock, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    if let Some(m) = send {
        futures_util::SinkExt::send(&mut sock, Message::text(m))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    let mut code = None;
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(m)) = sock.next().await {
            match m {
                Message::Binary(b) => got.push(String::from_utf8_lossy(&b).into_owned()),
                Message::Text(t) => got.push(t.to_string()),
                Message::Close(f) => {
                    code = f.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
    })
    .await;
    (got, code)
}

#[tokio::test]
async fn readers_and_subscribers_never_see_a_write_that_is_rolled_back() {
    let s = start("no-dirty-reads").await;
    let dir = s.dir.clone();
    assert_eq!(s.post("/k", r#"{"v":"committed"}"#).await.0, 200);
    let base_ws = format!("ws://{}", s.addr);
    let seq = s.shared.lock().engine.store().last_seq();

    // The next commit takes 1.5 s and fails: the write is in memory, pending, all that time.
    s.disk.delay_commits(1500);
    s.disk.fail_next_commits(1);
    let writer = {
        let c = s.c.clone();
        tokio::spawn(async move {
            c.request(http::Method::POST, "/k", &[], r#"{"v":"rolled-back"}"#)
                .await
                .unwrap()
        })
    };
    s.applied_since(seq).await;
    // Readers of every kind arrive while it is pending.
    let get = async {
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(s.value("k").await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    };
    let list = s.c.list("*");
    let ooo = ws(format!("{base_ws}/k"), None, Duration::from_secs(3));
    let mux = ws(
        format!("{base_ws}/_ws"),
        Some(r#"{"op":"sub","id":1,"path":"k"}"#),
        Duration::from_secs(3),
    );
    let events = sse(s.addr, "/k?initial=1", Duration::from_secs(3));
    let (seen, list, ooo, mux, events) = tokio::join!(get, list, ooo, mux, events);
    let w = writer.await.unwrap();
    assert_eq!(
        w.status.as_u16(),
        503,
        "{}",
        String::from_utf8_lossy(&w.body)
    );

    for v in &seen {
        assert_eq!(v, &Some(json!({"v":"committed"})), "GET saw {v:?}");
    }
    let list = serde_json::to_string(&list.unwrap()).unwrap();
    assert!(!list.contains("rolled-back"), "a list showed it: {list}");
    for (what, (frames, code)) in [("ooo", &ooo), ("/_ws", &mux)] {
        let all = frames.join("\n");
        assert!(
            !all.contains("rolled-back"),
            "{what} frames showed it: {all}"
        );
        // The subscription started on the pending write, which failed: the socket closes with
        // 1013 and the client subscribes again.
        assert_eq!(*code, Some(1013), "{what}: {all}");
    }
    assert!(!events.contains("rolled-back"), "SSE showed it: {events}");

    // A pending write that succeeds is seen, once committed, by a reader that came meanwhile.
    s.disk.delay_commits(400);
    let seq = s.shared.lock().engine.store().last_seq();
    let writer = {
        let c = s.c.clone();
        tokio::spawn(async move {
            c.request(http::Method::POST, "/k", &[], r#"{"v":"new"}"#)
                .await
                .unwrap()
        })
    };
    s.applied_since(seq).await;
    let (v, (frames, _)) = tokio::join!(
        s.value("k"),
        ws(format!("{base_ws}/k"), None, Duration::from_millis(1500))
    );
    assert_eq!(v, Some(json!({"v":"new"})));
    assert!(frames[0].contains(r#""new""#), "{frames:?}");
    assert_eq!(writer.await.unwrap().status.as_u16(), 200);
    s.disk.delay_commits(0);

    // Nothing pending: a subscription gets its snapshot at once, as before.
    let (frames, _) = ws(format!("{base_ws}/k"), None, Duration::from_millis(300)).await;
    assert!(frames[0].contains(r#""new""#), "{frames:?}");
    let _ = s.restart().await;
    let _ = std::fs::remove_dir_all(&dir);
}

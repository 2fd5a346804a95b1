//! A write whose durable commit fails is answered 5xx and leaves nothing behind: memory rolls
//! back to what is on disk, subscribers never see it, and the next write works.

use clap::Parser;
use serde_json::json;
use stateline_core::Filters;
use stateline_server::hub::{Clocks, Limits};
use stateline_server::{open_store, router, Cli, Command, Shared};

#[tokio::test]
async fn failed_commit_is_a_500_and_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("stateline-commit-failure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cli = Cli::parse_from(["stateline", "serve", "--data", dir.to_str().unwrap()]);
    let Command::Serve(args) = cli.command else {
        panic!("serve")
    };
    let clocks = Clocks::new();
    let (engine, disk) = open_store(&args, &clocks, Filters::new()).unwrap();
    let disk = disk.expect("a durable store");
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Shared::new(engine, clocks, Limits::from_args(&args), stop_rx);
    shared.attach_disk(disk.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(shared.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let c = stateline_server::client::Client::new(&base).unwrap();
    let post = |path: &'static str, body: &'static str| {
        let c = &c;
        async move {
            c.request(http::Method::POST, path, &[], body)
                .await
                .unwrap()
        }
    };

    assert_eq!(post("/k", r#"{"v":1}"#).await.status, 200);
    let seq_before = shared.lock().engine.store().last_seq();
    disk.fail_next_commits(1);
    let failed = post("/k", r#"{"v":2}"#).await;
    assert_eq!(
        failed.status,
        500,
        "{}",
        String::from_utf8_lossy(&failed.body)
    );
    assert!(String::from_utf8_lossy(&failed.body).contains("nothing was changed"));
    let failed_new = post("/_incr/counter", "1").await;
    assert_eq!(failed_new.status, 200, "the failure was one commit only");
    disk.fail_next_commits(1);
    assert_eq!(post("/other", "1").await.status, 500);

    // Memory matches the disk: the failed writes are gone, revisions and sequence untouched by them.
    let k = c.get("k").await.unwrap().expect("k is still there");
    assert_eq!(k["data"], json!({"v":1}));
    assert!(c.get("other").await.unwrap().is_none());
    {
        let hub = shared.lock();
        assert_eq!(hub.engine.store().get("k").unwrap().revision, 0);
        assert_eq!(
            hub.engine.store().last_seq(),
            seq_before + 1,
            "only the counter was added"
        );
    }
    assert_eq!(post("/k", r#"{"v":3}"#).await.status, 200);
    let r = c.request(http::Method::GET, "/k", &[], "").await.unwrap();
    assert_eq!(r.headers.get("x-revision").unwrap(), "1");

    // And what was acknowledged is what a restart finds.
    server.abort();
    drop(shared);
    drop(disk);
    // The aborted server task lets go of the file lock when it is dropped; retry until then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let engine = loop {
        match open_store(&args, &Clocks::new(), Filters::new()) {
            Ok((engine, _)) => break engine,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    assert_eq!(*engine.store().get("k").unwrap().data, json!({"v":3}));
    assert!(engine.store().get("other").is_none());
    assert_eq!(engine.store().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

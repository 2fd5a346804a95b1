//! Online backup through the running server (`GET /_backup`, `stateline backup`) and restore into
//! a new data folder (`stateline restore`), with the binaries as a user runs them: concurrent
//! backups each get their own file, and a restore never replaces the store of a running server.

mod common;

use std::process::{Command, Stdio};

use common::Server;

// The server on `dir`, with `--backup-token` when given: the suite's start, which retries on
// another port when another test's server took the one it picked.
fn start(dir: &std::path::Path, token: Option<&str>) -> (Server, String) {
    match token {
        Some(t) => common::start(dir, &["--backup-token", t]),
        None => common::start(dir, &[]),
    }
}

// A push with an idempotency key: the same key each time.
async fn push_once(c: &stateline_client::Client) -> stateline_client::Response {
    c.request(
        http::Method::POST,
        "/list/*",
        &[("idempotency-key", "before-backup")],
        "1",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn backup_while_serving_then_restore() {
    let root = std::env::temp_dir().join(format!("stateline-backup-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (server, base) = start(&root.join("a"), Some("s3cret"));
    let c = stateline_client::Client::new(&base).unwrap();
    for i in 0..50 {
        c.set(&format!("items/{i}"), &serde_json::json!({"i": i}))
            .await
            .unwrap();
    }
    c.set("items/7", &serde_json::json!({"i": 7, "v": 2}))
        .await
        .unwrap();
    let pushed = push_once(&c).await;
    assert_eq!(pushed.status, 200);
    let get = |auth: Option<&'static str>| {
        let c = &c;
        async move {
            let h: Vec<(&str, &str)> = auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
            c.request(http::Method::GET, "/_backup", &h, "")
                .await
                .unwrap()
        }
    };
    assert_eq!(get(None).await.status, 401);
    assert_eq!(get(Some("Bearer wrong")).await.status, 401);
    let ok = get(Some("Bearer s3cret")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers.get("x-keys").unwrap(), "51");

    let out = root.join("backup.redb");
    let status = Command::new(env!("CARGO_BIN_EXE_stateline"))
        .args(["backup", "--url", &base, "--token", "s3cret", "--out"])
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // Writes after the backup are not in it.
    c.set("items/late", &serde_json::json!(1)).await.unwrap();
    drop(server);

    let status = Command::new(env!("CARGO_BIN_EXE_stateline"))
        .args(["restore", "--data"])
        .arg(root.join("b"))
        .arg("--from")
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (_server, base) = start(&root.join("b"), None);
    let c = stateline_client::Client::new(&base).unwrap();
    assert_eq!(
        c.get("items/7").await.unwrap().unwrap()["data"],
        serde_json::json!({"i": 7, "v": 2})
    );
    // The key history and the ids of idempotent writes came with the backup.
    let h = c
        .request(http::Method::GET, "/items/7?history=5", &[], "")
        .await
        .unwrap();
    let h: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
    assert_eq!(h.as_array().map(Vec::len), Some(2), "{h}");
    let again = push_once(&c).await;
    assert_eq!(again.body, pushed.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert!(c.get("items/late").await.unwrap().is_none());
    let off = c
        .request(http::Method::GET, "/_backup", &[], "")
        .await
        .unwrap();
    assert_eq!(off.status, 404, "backups are off without --backup-token");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn concurrent_backups_all_succeed_and_each_restores() {
    let root = std::env::temp_dir().join(format!("stateline-backups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("a");
    let (_server, base) = start(&data, Some("s3cret"));
    let c = stateline_client::Client::new(&base).unwrap();
    for i in 0..300 {
        c.set(
            &format!("items/{i}"),
            &serde_json::json!({"i": i, "pad": "x".repeat(200)}),
        )
        .await
        .unwrap();
    }
    let backups = (0..6).map(|_| {
        let c = c.clone();
        async move {
            c.request(
                http::Method::GET,
                "/_backup",
                &[("authorization", "Bearer s3cret")],
                "",
            )
            .await
            .unwrap()
        }
    });
    let got = futures_util::future::join_all(backups).await;
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.headers.get("x-keys").unwrap(), "300");
        assert_eq!(
            r.headers.get("content-length").unwrap().to_str().unwrap(),
            r.body.len().to_string()
        );
        let out = root.join(format!("backup-{i}.redb"));
        std::fs::write(&out, &r.body).unwrap();
        let into = root.join(format!("restored-{i}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stateline"));
        let out = cmd
            .args(["restore", "--data"])
            .arg(&into)
            .arg("--from")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let disk = stateline_disk::Disk::open(&into, 1000).unwrap();
        let (store, _) = disk.load(1000, 1 << 20).unwrap();
        assert_eq!(store.len(), 300);
    }
    // Every temporary copy is gone.
    let left: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("backup"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn restore_refuses_a_folder_a_server_uses_and_the_data_stays() {
    let root = std::env::temp_dir().join(format!("stateline-restore-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("a");
    let (server, base) = start(&data, Some("t"));
    let c = stateline_client::Client::new(&base).unwrap();
    c.set("before", &serde_json::json!(1)).await.unwrap();
    let backup = root.join("old.redb");
    let status = Command::new(env!("CARGO_BIN_EXE_stateline"))
        .args(["backup", "--url", &base, "--token", "t", "--out"])
        .arg(&backup)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    c.set("after", &serde_json::json!(2)).await.unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_stateline"))
        .args(["restore", "--data"])
        .arg(&data)
        .arg("--from")
        .arg(&backup)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore must refuse: {err}");
    assert!(err.contains("in use by") && err.contains("pid"), "{err}");
    // The server goes on, with its file: a write now is still there after a restart.
    c.set("later", &serde_json::json!(3)).await.unwrap();
    drop(server);
    let (_server, base) = start(&data, None);
    let c = stateline_client::Client::new(&base).unwrap();
    for k in ["before", "after", "later"] {
        assert!(c.get(k).await.unwrap().is_some(), "{k} is gone");
    }
    let _ = std::fs::remove_dir_all(&root);
}

//! A really full disk, against real redb: the data folder is a small tmpfs mounted for the test
//! (root only; without the right to mount, the test says so and passes). The server answers 503
//! with the reason while the disk is full, `/_health` says it, and writing resumes by itself
//! once space is freed, with no restart; a restart then finds exactly the acknowledged writes.
//! The suite's other storage failure tests inject the same error without mounting anything
//! (`Disk::fail_writes`, tests/commit_failure.rs).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::start;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(size: &str) -> Result<Mount, String> {
        let dir = std::env::temp_dir().join(format!("stateline-tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Mount(dir))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn a_full_tmpfs_answers_503_and_writing_resumes_when_space_is_freed() {
    let mount = match Mount::tmpfs("3m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here ({e}); the injected-failure tests in tests/commit_failure.rs cover the same path");
            return;
        }
    };
    let data = mount.0.join("data");
    // Space to free later.
    let ballast = mount.0.join("ballast");
    std::fs::write(&ballast, vec![1u8; 1 << 20]).unwrap();
    let (server, base) = start(&data, &[]);
    let c = stateline_client::Client::new(&base).unwrap();
    let req = |m: http::Method, path: String, body: String| {
        let c = c.clone();
        async move {
            let r = c.request(m, &path, &[], body).await.unwrap();
            (
                r.status.as_u16(),
                String::from_utf8_lossy(&r.body).into_owned(),
            )
        }
    };

    // Fill the disk.
    let big = format!("\"{}\"", "x".repeat(32 << 10));
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let (status, body) = req(http::Method::POST, format!("/fill/{i}"), big.clone()).await;
        match status {
            200 => acknowledged.push(i),
            503 => {
                refused = Some((i, body));
                break;
            }
            s => panic!("write {i}: {s} {body}"),
        }
    }
    let (failed_at, body) = refused.expect("the disk never filled up");
    eprintln!("the disk was full after {} writes", acknowledged.len());
    assert!(!acknowledged.is_empty());
    assert!(
        body.contains("storage unavailable: no space left on device"),
        "{body}"
    );
    let (status, body) = req(http::Method::GET, "/_health".into(), String::new()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no space left on device"), "{body}");
    for _ in 0..3 {
        let (status, body) = req(http::Method::POST, "/more".into(), big.clone()).await;
        assert_eq!(status, 503);
        assert!(!body.contains("Previous I/O"), "{body}");
    }
    // Reads go on.
    assert!(c.get("fill/0").await.unwrap().is_some());

    // Free space: no restart, writing resumes.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = req(http::Method::POST, "/after".into(), "1".into()).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = req(http::Method::GET, "/_health".into(), String::new()).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = req(http::Method::DELETE, "/fill/0".into(), String::new()).await;
    assert_eq!(status, 204);

    drop(server);
    let (_server, base) = start(&data, &[]);
    let c = stateline_client::Client::new(&base).unwrap();
    assert!(c.get("fill/0").await.unwrap().is_none());
    for i in &acknowledged[1..] {
        assert!(
            c.get(&format!("fill/{i}")).await.unwrap().is_some(),
            "fill/{i} lost"
        );
    }
    assert!(c.get(&format!("fill/{failed_at}")).await.unwrap().is_none());
    assert!(c.get("more").await.unwrap().is_none());
    assert_eq!(
        c.get("after").await.unwrap().unwrap()["data"],
        serde_json::json!(1)
    );
}

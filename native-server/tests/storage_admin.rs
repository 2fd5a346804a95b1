//! The data file as an operator meets it, with the binary: a file that is not a Stateline
//! database is refused at start (never silently started over), a damaged one is refused with
//! advice and `stateline repair` salvages what is readable, and neither `repair` nor `restore`
//! touches a folder a server is using.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{port, serve_cmd, start};

/// The flags these tests serve with: a short change log, so a repair's log replay is small.
const FLAGS: &[&str] = &["--log-entries", "10"];

/// Runs `serve` expecting it to refuse: its exit status and stderr (killed after 20 s).
fn serve_refused(dir: &Path) -> (bool, String) {
    let mut child = serve_cmd(dir, port(), FLAGS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn stateline(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stateline"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap()
}

fn root(name: &str) -> PathBuf {
    let r = std::env::temp_dir().join(format!("stateline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&r);
    std::fs::create_dir_all(&r).unwrap();
    r
}

#[test]
fn an_empty_data_file_is_refused_not_started_over() {
    let dir = root("empty-file");
    let file = dir.join("stateline.redb");
    std::fs::write(&file, b"").unwrap();
    let (ok, err) = serve_refused(&dir);
    assert!(!ok, "must not start: {err}");
    assert!(
        err.contains(&file.display().to_string())
            && err.contains("empty (0 bytes)")
            && err.contains("stateline restore"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "left untouched");
    std::fs::write(&file, b"hello, not a database").unwrap();
    let (ok, err) = serve_refused(&dir);
    assert!(!ok && err.contains("not a redb database"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_damaged_page_is_refused_and_repair_salvages_the_rest() {
    let dir = root("repair");
    let n = 400;
    {
        let (_server, base) = start(&dir, FLAGS);
        let c = stateline_client::Client::new(&base).unwrap();
        for i in 0..n {
            c.set(
                &format!("items/{i:04}"),
                &serde_json::json!({"i": i, "pad": "x".repeat(100)}),
            )
            .await
            .unwrap();
        }
        // `repair` refuses while the server holds the folder.
        let out = stateline(&["repair", "--data"], &dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("in use by"), "{err}");
    }
    // One flipped bit inside a stored value (in every copy of the page: redb may keep freed
    // copies of it in the file).
    let file = dir.join("stateline.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let needle = br#"{"i":200,"pad""#;
    let hits: Vec<usize> = (0..bytes.len() - needle.len())
        .filter(|i| &bytes[*i..*i + needle.len()] == needle)
        .collect();
    assert!(!hits.is_empty());
    for i in hits {
        bytes[i + 3] ^= 0x01;
    }
    std::fs::write(&file, &bytes).unwrap();

    let (ok, err) = serve_refused(&dir);
    assert!(!ok, "must not start on a damaged file: {err}");
    assert!(
        err.contains("damaged") && err.contains("stateline repair --data"),
        "{err}"
    );

    let out = stateline(&["repair", "--data"], &dir);
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    eprintln!("{report}");
    assert!(
        report.contains("lost or unreadable") && report.contains("kept as"),
        "{report}"
    );
    let kept: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        kept.len(),
        3,
        "the damaged file and the write-ahead log's two files are kept: {kept:?}"
    );
    for name in ["stateline.redb", "stateline.wal", "stateline.wal.1"] {
        let prefix = format!("{name}.damaged-");
        assert!(kept.iter().any(|k| k.starts_with(&prefix)), "{kept:?}");
    }

    let (_server, base) = start(&dir, FLAGS);
    let c = stateline_client::Client::new(&base).unwrap();
    assert!(c.get("items/0000").await.unwrap().is_some());
    assert!(c
        .get(&format!("items/{:04}", n - 1))
        .await
        .unwrap()
        .is_some());
    assert!(
        c.get("items/0200").await.unwrap().is_none(),
        "the damaged value is not served"
    );
    let all = c.list("items/*").await.unwrap();
    assert!(all.len() > n / 2 && all.len() < n, "{} keys", all.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_clean_stop_leaves_no_write_ahead_records_to_apply() {
    let dir = root("clean-stop");
    let (mut server, base) = start(&dir, FLAGS);
    let c = stateline_client::Client::new(&base).unwrap();
    for i in 0..50 {
        c.set(
            &format!("stop/{i}"),
            &serde_json::json!({ "i": i, "f": 2.50 }),
        )
        .await
        .unwrap();
    }
    // Each of the log's files starts with its first record's generation; 0 is none.
    let first_generations = || {
        ["stateline.wal", "stateline.wal.1"].map(|name| {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            u64::from_le_bytes(bytes[..8].try_into().unwrap())
        })
    };
    assert_ne!(
        first_generations(),
        [0, 0],
        "50 groups are fewer than a checkpoint's 128: the log holds them"
    );
    let pid = server.0.id();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {pid}"))
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        first_generations(),
        [0, 0],
        "the stop's checkpoint left no current record"
    );
    let (_server, base) = start(&dir, FLAGS);
    let c = stateline_client::Client::new(&base).unwrap();
    let got = c.get("stop/49").await.unwrap().expect("kept");
    assert_eq!(got["data"]["i"], 49, "{got}");
    let _ = std::fs::remove_dir_all(&dir);
}

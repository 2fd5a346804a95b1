//! The live connection against a real server: the built `stateline` binary (`STATELINE_BIN`, else
//! `target/debug/stateline`; `cargo build -p stateline-server --bin stateline` first), started on
//! a free port and killed by its PID when the test ends, as the conformance suite does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use stateline_client::{Client, Config, Event, State, Subscription, Update};

const SOON: Duration = Duration::from_secs(5);

fn binary() -> PathBuf {
    if let Ok(b) = std::env::var("STATELINE_BIN") {
        return b.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join("stateline")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A `stateline serve` process: in memory, or on a data folder that outlives restarts.
struct Server {
    url: String,
    port: u16,
    data: Option<PathBuf>,
    child: Option<Child>,
}

impl Server {
    async fn start(data: Option<&Path>) -> Server {
        let port = free_port();
        let mut s = Server {
            url: format!("http://127.0.0.1:{port}"),
            port,
            data: data.map(Path::to_path_buf),
            child: None,
        };
        s.launch().await;
        s
    }

    fn spawn(&mut self) {
        let bin = binary();
        assert!(
            bin.exists(),
            "{} not found: build it first (cargo build -p stateline-server --bin stateline), or set STATELINE_BIN",
            bin.display()
        );
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--addr")
            .arg(format!("127.0.0.1:{}", self.port));
        match &self.data {
            Some(d) => cmd.arg("--data").arg(d),
            None => cmd.arg("--memory"),
        };
        let child = cmd
            .env("STATELINE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the stateline binary");
        self.child = Some(child);
    }

    async fn wait_healthy(&self) {
        let c = Client::new(&self.url).unwrap();
        for _ in 0..200 {
            if let Ok(r) = c.request(http::Method::GET, "/_health", &[], "").await {
                if r.status == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server on port {} did not become healthy in 5 s", self.port);
    }

    async fn launch(&mut self) {
        self.spawn();
        self.wait_healthy().await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Subscriber connections the server counts (`/?api=state`).
    async fn connections(&self) -> u64 {
        let c = Client::new(&self.url).unwrap();
        let r = c
            .request(http::Method::GET, "/?api=state", &[], "")
            .await
            .unwrap();
        r.json().unwrap()["totalConnections"].as_u64().unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A folder under the target directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = binary()
            .parent()
            .unwrap()
            .join("tmp")
            .join(format!("client-{name}-{}-{t}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Quick reconnects, so the tests do not wait on the default schedule.
fn quick() -> Config {
    Config {
        backoff_base: 50,
        backoff_max: 200,
        ..Config::default()
    }
}

fn keys(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|i| i["key"].as_str().expect("key").to_string())
        .collect()
}

/// The next update, and the connection states seen before it.
async fn update_after_states(sub: &mut Subscription, limit: Duration) -> (Vec<State>, Update) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut states = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(Event::State(s))) => states.push(s),
            Ok(Some(Event::Update(u))) => return (states, u),
            other => panic!("no update: {other:?} (states {states:?})"),
        }
    }
}

/// A durable server restarts: the subscription reconnects, resumes from its version, and every
/// change (made before, by a write queued while the server was down, and after) is reported
/// exactly once; the queued write is acknowledged once the connection is back.
#[tokio::test]
async fn reconnects_and_resumes_across_a_restart() {
    let dir = TempDir::new("resume");
    let mut s = Server::start(Some(&dir.0)).await;
    let c = Client::new(&s.url).unwrap().with_live(quick(), None);
    let mut sub = c.subscribe("t/*").unwrap();
    let (states, u) = update_after_states(&mut sub, SOON).await;
    assert_eq!(states, [State::Connecting, State::Open]);
    assert!(u.initial);
    assert_eq!(u.value, json!([]));
    c.set("t/a", &json!(1)).await.unwrap();
    let u = sub.next_update(SOON).await.unwrap();
    assert_eq!(keys(&u.value), ["t/a"]);
    let before = u.version;

    s.kill();
    let writer = {
        let c = c.clone();
        tokio::spawn(async move { c.write(json!({"op":"set","key":"t/b","value":2})).await })
    };
    // The client notices the lost socket and waits for the next attempt.
    let deadline = tokio::time::Instant::now() + SOON;
    while c.state() == State::Open {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the close went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.launch().await;
    let reply = tokio::time::timeout(SOON, writer)
        .await
        .expect("the queued write is answered after the reconnect")
        .unwrap()
        .expect("the queued write succeeds");
    assert_eq!(reply["key"], json!("t/b"));

    // What the subscription reports across the reconnect: t/b once, t/a never again.
    let (states, u) = update_after_states(&mut sub, SOON).await;
    assert!(states.contains(&State::Waiting), "{states:?}");
    assert_eq!(states.last(), Some(&State::Open), "{states:?}");
    assert!(!u.initial);
    assert!(u.version > before);
    assert_eq!(keys(&u.value), ["t/b", "t/a"], "newest first");
    let changed: Vec<&str> = u.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(changed, ["t/b"]);

    c.set("t/c", &json!(3)).await.unwrap();
    let u = sub.next_update(SOON).await.unwrap();
    assert_eq!(keys(&u.value), ["t/c", "t/b", "t/a"]);
    assert_eq!(u.changes.len(), 1);
    assert_eq!(u.changes[0].key, "t/c");
    assert_eq!(sub.value(), Some(u.value));
    // Nothing else is pending: no update is reported twice.
    assert!(sub.next_update(Duration::from_millis(300)).await.is_none());
}

/// No server at first: the client retries on the core's backoff schedule until one starts.
#[tokio::test]
async fn retries_until_the_server_is_up() {
    let port = free_port();
    let c = Client::new(&format!("http://127.0.0.1:{port}"))
        .unwrap()
        .with_live(quick(), None);
    let mut sub = c.subscribe("k").unwrap();
    let mut waits = 0;
    while waits < 2 {
        match tokio::time::timeout(SOON, sub.next()).await {
            Ok(Some(Event::State(State::Waiting))) => waits += 1,
            Ok(Some(Event::State(_))) => {}
            other => panic!("expected connection attempts, got {other:?}"),
        }
    }
    let mut s = Server {
        url: format!("http://127.0.0.1:{port}"),
        port,
        data: None,
        child: None,
    };
    s.launch().await;
    let (_, u) = update_after_states(&mut sub, SOON).await;
    assert!(u.initial);
    assert_eq!(u.value, Value::Null);
    assert_eq!(c.state(), State::Open);
}

/// The live connection ends with the last handle: dropping the client and its subscriptions
/// closes the socket; the server counts no subscriber.
#[tokio::test]
async fn the_connection_ends_with_the_last_handle() {
    let s = Server::start(None).await;
    let c = Client::new(&s.url).unwrap();
    let mut sub = c.subscribe("k").unwrap();
    sub.next_update(SOON).await.unwrap();
    assert_eq!(s.connections().await, 1);
    drop(c);
    // The subscription alone keeps it open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.connections().await, 1);
    drop(sub);
    let deadline = tokio::time::Instant::now() + SOON;
    while s.connections().await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the socket stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

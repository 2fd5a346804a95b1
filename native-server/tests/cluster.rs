//! Cluster mode against real processes: three `nats-server` processes form a JetStream cluster and
//! `stateline serve --cluster ... --cluster-replicas 3` nodes serve one state through it.
//!
//! Each case starts its own NATS cluster and its own nodes on free 127.0.0.1 ports (one case at a
//! time: they share two cores) and kills every process it started, by its own handle, when it
//! ends, pass or fail; a failing case prints the last lines of every process's log and keeps the
//! logs in its temporary folder (`STATELINE_TEST_LOG` sets the nodes' log filter, default
//! `info`). Every wait is bounded.
//!
//! nats-server (2.12 or newer: JetStream's atomic batch publish) comes from `NATS_SERVER_BIN`,
//! else from `.tools/nats/bin/nats-server` as `bash scripts/ensure-nats.sh` installs it (`npm
//! test` runs that first); without it these tests fail and say so. The fresh node's catch-up time
//! and a few other measurements are printed: see them with
//! `cargo test -p stateline-server --test cluster -- --nocapture`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use stateline_client::{Client, Response};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// One case at a time: each runs six or more processes on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest any single request may take.
const REQUEST: Duration = Duration::from_secs(20);
/// How long a node may take to answer `/_health` with 200 after it starts.
const HEALTHY: Duration = Duration::from_secs(60);
/// How long replicated state may take to show on every node.
const CONVERGE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Processes

/// The nats-server to run, or a failure that says how to get one.
fn nats_bin() -> PathBuf {
    let bin = match std::env::var_os("NATS_SERVER_BIN").filter(|s| !s.is_empty()) {
        Some(b) => PathBuf::from(b),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats/bin/nats-server"),
    };
    let out = Command::new(&bin).arg("--version").output();
    let version = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => panic!(
            "nats-server not found ({}: {e}): the cluster tests need nats-server 2.12 or newer; \
             run `bash scripts/ensure-nats.sh` (installs it into .tools/nats), or set \
             NATS_SERVER_BIN",
            bin.display()
        ),
    };
    // "nats-server: v2.15.1"
    let v = version.rsplit('v').next().unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (2, 12),
        "{} is {version:?}: the cluster tests need nats-server 2.12 or newer; run \
         `bash scripts/ensure-nats.sh`",
        bin.display()
    );
    bin
}

/// `n` ports nothing listens on right now (all held until all are chosen, so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A process this test started, SIGKILLed (by its handle) when dropped.
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create a log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it still runs (false once it exited or was killed).
    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last `n` lines of its log.
    fn tail(&self, n: usize) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A stateline node.
struct Node {
    proc: Proc,
    port: u16,
}

/// Three NATS servers with JetStream in one cluster, and the stateline nodes on it.
struct Cluster {
    name: String,
    dir: PathBuf,
    nats: Vec<Proc>,
    nats_client: Vec<u16>,
    nats_monitor: Vec<u16>,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts the NATS cluster, waits until JetStream has a meta leader, then starts `nodes`
    /// stateline nodes together and waits until each answers `/_health` with 200.
    async fn start(name: &str, nodes: usize) -> Cluster {
        let bin = nats_bin();
        let dir =
            std::env::temp_dir().join(format!("stateline-cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test folder");
        let ports = free_ports(9);
        let (client, route, monitor) = (&ports[0..3], &ports[3..6], &ports[6..9]);
        let routes: Vec<String> = route
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut c = Cluster {
            name: name.to_string(),
            dir: dir.clone(),
            nats: Vec::new(),
            nats_client: client.to_vec(),
            nats_monitor: monitor.to_vec(),
            nodes: Vec::new(),
        };
        for i in 0..3 {
            let server = format!("n{}", i + 1);
            let mut cmd = Command::new(&bin);
            cmd.args(["--server_name", &server, "--addr", "127.0.0.1"])
                .args(["--port", &client[i].to_string()])
                .args(["--http_port", &monitor[i].to_string()])
                .args(["--cluster", &routes[i], "--cluster_name", "stateline-test"])
                .args(["--routes", &routes.join(","), "--jetstream", "--store_dir"])
                .arg(dir.join(&server));
            c.nats.push(Proc::spawn(
                &format!("nats-server {server}"),
                &mut cmd,
                dir.join(format!("{server}.log")),
            ));
        }
        c.wait_jetstream(&[0, 1, 2], Duration::from_secs(30)).await;
        for _ in 0..nodes {
            c.spawn_node();
        }
        for i in 0..nodes {
            c.wait_healthy(i, HEALTHY).await;
        }
        c
    }

    /// Waits until each listed NATS server says it is healthy and names a JetStream meta leader.
    async fn wait_jetstream(&mut self, servers: &[usize], limit: Duration) {
        let deadline = Instant::now() + limit;
        for &i in servers {
            let mon = Client::new(&format!("http://127.0.0.1:{}", self.nats_monitor[i])).unwrap();
            loop {
                let health = call(&mon, Method::GET, "/healthz", &[], "").await;
                let jsz = call(&mon, Method::GET, "/jsz", &[], "").await;
                let leader = jsz
                    .as_ref()
                    .ok()
                    .and_then(|r| r.json().ok())
                    .and_then(|v| v["meta_cluster"]["leader"].as_str().map(str::to_string))
                    .unwrap_or_default();
                if matches!(&health, Ok(r) if r.status == 200) && !leader.is_empty() {
                    break;
                }
                if !self.nats[i].running() || Instant::now() > deadline {
                    panic!(
                        "{}: JetStream not ready after {limit:?} (healthz: {:?})\n{}",
                        self.nats[i].name,
                        health.map(|r| r.text()),
                        self.nats[i].tail(30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Starts one more stateline node (not waiting for it); returns its index.
    fn spawn_node(&mut self) -> usize {
        let i = self.nodes.len();
        let port = free_ports(1)[0];
        // Each node lists the NATS servers starting at a different one, so the nodes are spread
        // over the servers.
        let urls: Vec<String> = (0..3)
            .map(|k| format!("nats://127.0.0.1:{}", self.nats_client[(i + k) % 3]))
            .collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stateline"));
        cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--cluster", &urls.join(",")])
            .args(["--cluster-stream", &format!("stateline-{}", self.name)])
            .args(["--cluster-replicas", "3"])
            .env_remove("STATELINE_DATA")
            .env_remove("STATELINE_MEMORY")
            .env_remove("STATELINE_CLUSTER")
            .env(
                "STATELINE_LOG",
                std::env::var("STATELINE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let name = format!("stateline node {} (127.0.0.1:{port})", node_name(i));
        let log = self.dir.join(format!("node{}.log", node_name(i)));
        self.nodes.push(Node {
            proc: Proc::spawn(&name, &mut cmd, log),
            port,
        });
        i
    }

    /// Waits until node `i` answers `GET /_health` with 200; how long that took from now.
    async fn wait_healthy(&mut self, i: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        let c = self.client(i);
        loop {
            let last = match call(&c, Method::GET, "/_health", &[], "").await {
                Ok(r) if r.status == 200 => return start.elapsed(),
                Ok(r) => format!("{} {}", r.status, r.text()),
                Err(e) => e,
            };
            let node = &mut self.nodes[i].proc;
            if !node.running() {
                panic!(
                    "{} exited before it was healthy:\n{}",
                    node.name,
                    node.tail(40)
                );
            }
            if start.elapsed() > limit {
                panic!(
                    "{}: /_health not 200 after {limit:?}; last answer: {last}\n{}",
                    node.name,
                    node.tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn client(&self, i: usize) -> Client {
        Client::new(&self.url(i)).unwrap()
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    fn authority(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }

    /// The NATS server (index) that leads the stream's Raft group, if a monitor says.
    async fn stream_leader(&self) -> Option<usize> {
        let stream = format!("stateline-{}", self.name);
        for &m in &self.nats_monitor {
            let mon = Client::new(&format!("http://127.0.0.1:{m}")).unwrap();
            let Ok(r) = call(&mon, Method::GET, "/jsz?streams=true", &[], "").await else {
                continue;
            };
            let Ok(v) = r.json() else { continue };
            for acc in v["account_details"].as_array().into_iter().flatten() {
                for s in acc["stream_detail"].as_array().into_iter().flatten() {
                    if s["name"] == stream.as_str() {
                        if let Some(l) = s["cluster"]["leader"].as_str() {
                            let n: usize = l.trim_start_matches('n').parse().ok()?;
                            return Some(n - 1);
                        }
                    }
                }
            }
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in self.nodes.iter().map(|n| &n.proc).chain(self.nats.iter()) {
                eprintln!(
                    "\n----- last lines of {} ({}) -----\n{}",
                    p.name,
                    p.log.display(),
                    p.tail(25)
                );
            }
        }
        // The nodes first, then the NATS servers.
        for n in &mut self.nodes {
            n.proc.kill();
        }
        for p in &mut self.nats {
            p.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "\nthe logs (and JetStream stores) are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn node_name(i: usize) -> char {
    (b'A' + i as u8) as char
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A request that fails (instead of hanging) after [`REQUEST`].
async fn call(
    c: &Client,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Response, String> {
    let what = format!("{method} {}{path}", c.base());
    match tokio::time::timeout(REQUEST, c.request(method, path, headers, body)).await {
        Err(_) => Err(format!("{what}: no answer in {REQUEST:?}")),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Ok(Ok(r)) => Ok(r),
    }
}

/// `POST /key` with a JSON value; Ok only for a 2xx.
async fn write(c: &Client, key: &str, value: &Value) -> Result<Response, String> {
    let r = call(
        c,
        Method::POST,
        &format!("/{key}"),
        &[("content-type", "application/json")],
        value.to_string(),
    )
    .await?;
    if r.status.is_success() {
        Ok(r)
    } else {
        Err(format!(
            "POST {}/{key}: {} {}",
            c.base(),
            r.status,
            r.text()
        ))
    }
}

/// Retries `check` every 100 ms until it holds; fails with its last complaint after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("{what}: still not so after {limit:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Every key below `prefix` (a subtree listing, `GET /prefix/`) and its data.
async fn subtree(c: &Client, prefix: &str) -> Result<BTreeMap<String, Value>, String> {
    let r = call(c, Method::GET, &format!("/{prefix}/"), &[], "").await?;
    if r.status != 200 {
        return Err(format!(
            "GET {}/{prefix}/: {} {}",
            c.base(),
            r.status,
            r.text()
        ));
    }
    let items = r.json().map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for it in items.as_array().ok_or("the listing is not an array")? {
        let path = it["path"]
            .as_str()
            .ok_or("an item without path")?
            .to_string();
        out.insert(path, it["data"].clone());
    }
    Ok(out)
}

/// Whether every `(key, value)` in `want` is on node `c` (a listing of `prefix`); a complaint
/// naming what is missing or different otherwise.
async fn has_all(c: &Client, prefix: &str, want: &[(String, Value)]) -> Result<(), String> {
    let have = subtree(c, prefix).await?;
    let missing: Vec<String> = want
        .iter()
        .filter(|(k, v)| have.get(k) != Some(v))
        .map(|(k, v)| format!("{k}={v} (node has {:?})", have.get(k)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} acknowledged writes missing or different on {}, e.g. {:?}",
            missing.len(),
            want.len(),
            c.base(),
            &missing[..missing.len().min(5)]
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events

/// One SSE event.
#[derive(Debug, Default, Clone)]
struct SseEvent {
    event: String,
    data: String,
    id: String,
}

impl SseEvent {
    /// The id's `/<key>:<revision>:<version>`: (key, revision, version).
    fn parts(&self) -> (String, u64, u64) {
        let mut it = self.id.rsplitn(3, ':');
        let version = it.next().and_then(|v| u64::from_str_radix(v, 16).ok());
        let rev = it.next().and_then(|r| r.parse().ok());
        let key = it.next();
        match (key, rev, version) {
            (Some(k), Some(r), Some(v)) => (k.to_string(), r, v),
            _ => panic!("SSE id {:?} is not /<key>:<revision>:<version>", self.id),
        }
    }
}

/// An SSE stream read through hyper (which undoes the chunked encoding).
struct Sse {
    body: hyper::body::Incoming,
    buf: String,
    conn: tokio::task::JoinHandle<()>,
    _sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Sse {
    /// `GET path` with `Accept: text/event-stream` (and `Last-Event-ID` when resuming); returns
    /// once the response headers are in.
    async fn open(authority: &str, path: &str, last_event_id: Option<&str>) -> Sse {
        let stream = tokio::time::timeout(REQUEST, TcpStream::connect(authority))
            .await
            .unwrap_or_else(|_| panic!("connect {authority}: timeout"))
            .unwrap_or_else(|e| panic!("connect {authority}: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", authority)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = tokio::time::timeout(
            REQUEST,
            sender.send_request(req.body(Empty::new()).unwrap()),
        )
        .await
        .unwrap_or_else(|_| panic!("SSE {authority}{path}: no response headers in {REQUEST:?}"))
        .unwrap_or_else(|e| panic!("SSE {authority}{path}: {e}"));
        assert_eq!(resp.status(), 200, "SSE {authority}{path}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            ct.starts_with("text/event-stream"),
            "SSE {authority}{path}: {ct}"
        );
        Sse {
            body: resp.into_body(),
            buf: String::new(),
            conn,
            _sender: sender,
        }
    }

    /// The next event (comments skipped), or why there is none within `limit`.
    async fn next(&mut self, limit: Duration) -> Result<SseEvent, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut any = false;
                for line in block.lines() {
                    if line.is_empty() || line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => ev.event = value.to_string(),
                        "data" => {
                            if !ev.data.is_empty() {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(value);
                        }
                        "id" => ev.id = value.to_string(),
                        _ => {}
                    }
                    any = true;
                }
                if any {
                    return Ok(ev);
                }
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Err(format!("no event within {limit:?}")),
                Ok(None) => return Err("the stream ended".into()),
                Ok(Some(Err(e))) => return Err(format!("the stream failed: {e}")),
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&d));
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSockets

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws(url: &str) -> Ws {
    tokio::time::timeout(REQUEST, tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|_| panic!("connect {url}: timeout"))
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

/// The next data message as JSON, `None` if none arrives within `limit`.
async fn ws_next(ws: &mut Ws, limit: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Binary(b)))) => {
                return Some(serde_json::from_slice(&b).expect("a JSON frame"))
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(t.as_str()).expect("a JSON frame"))
            }
            Ok(Some(Ok(Message::Close(f)))) => panic!("the socket closed: {f:?}"),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cases

/// (a) A subscriber on node B (SSE) and one on node C (`/_ws`) see the writes made on node A in
/// order: SSE every one, `/_ws` every one or a later state in its place (a WebSocket frame the
/// subscriber has not been sent yet is folded into the next, docs/protocol.md §6), ending at
/// the last; and the same change carries the same version on both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_other_nodes_see_every_write_in_order() {
    const N: u64 = 100;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("order", 3).await;
    let a = cluster.client(0);

    let mut sse = Sse::open(&cluster.authority(1), "/a/seq", None).await;
    let mut mux = ws(&format!("ws://{}/_ws", cluster.authority(2))).await;
    mux.send(Message::Text(
        json!({"id": 1, "op": "sub", "path": "a/seq"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply = ws_next(&mut mux, REQUEST).await.expect("the sub reply");
    assert_eq!(reply["ok"], true, "{reply}");
    let first = ws_next(&mut mux, REQUEST).await.expect("the first frame");
    assert_eq!(first["snapshot"], true, "{first}");
    let mut cache = first["data"].clone();

    for i in 0..N {
        write(&a, "a/seq", &json!(i)).await.unwrap();
    }

    // SSE on B: every value, in order, revisions 0.., versions increasing.
    let mut sse_versions = BTreeMap::new();
    let mut events = Vec::new();
    while events.last().map(|e: &SseEvent| e.parts().1) != Some(N - 1) {
        let ev = sse
            .next(CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("SSE on B after {} events (of {N}): {e}", events.len()));
        let (key, rev, version) = ev.parts();
        assert_eq!(key, "/a/seq", "SSE on B: {ev:?}");
        assert_eq!(
            ev.data,
            rev.to_string(),
            "SSE on B: value and revision: {ev:?}"
        );
        if let Some((_, v)) = sse_versions.last_key_value() {
            assert!(version > *v, "SSE on B: versions must increase: {ev:?}");
        }
        sse_versions.insert(rev, version);
        events.push(ev);
        assert!(
            events.len() <= N as usize,
            "SSE on B: more events than writes"
        );
    }
    let missing: Vec<u64> = (0..N).filter(|r| !sse_versions.contains_key(r)).collect();
    assert!(
        missing.is_empty(),
        "SSE on B: revisions {missing:?} of 0..{N} never arrived (each was written on A, one \
         after the other); the events had revisions {:?}",
        sse_versions.keys().collect::<Vec<_>>()
    );

    // /_ws on C: revisions in order up to the last (any skipped one folded into a later frame),
    // the value after each frame, the versions of B.
    let mut revs = Vec::new();
    while revs.last() != Some(&(N - 1)) {
        let f = ws_next(&mut mux, CONVERGE).await.unwrap_or_else(|| {
            panic!(
                "/_ws on C: no frame after revisions {revs:?} (expected up to {})",
                N - 1
            )
        });
        if f["snapshot"] == true {
            cache = f["data"].clone();
        } else {
            let ops: Vec<json_patch::PatchOperation> =
                serde_json::from_value(f["data"].clone()).expect("an RFC 6902 patch");
            json_patch::patch(&mut cache, &ops).expect("the patch applies");
        }
        let frame_revs: Vec<u64> = f["revs"]
            .as_array()
            .expect("revs")
            .iter()
            .map(|p| p[1].as_u64().expect("a revision"))
            .collect();
        let top = *frame_revs.last().expect("a frame names its revisions");
        assert_eq!(
            cache["data"],
            json!(top),
            "/_ws on C: the value after revision {top}"
        );
        let version = u64::from_str_radix(f["version"].as_str().unwrap(), 16).unwrap();
        assert_eq!(
            Some(&version),
            sse_versions.get(&top),
            "revision {top}: the version on C (/_ws) differs from B's (SSE)"
        );
        assert!(
            revs.last()
                .is_none_or(|&prev| frame_revs.iter().all(|&r| r > prev)),
            "/_ws on C: revisions {frame_revs:?} after {revs:?}: out of order or twice"
        );
        revs.extend(frame_revs);
    }
}

/// (b) 3 nodes × 4 writers each add 1 to one counter 50 times with compare-and-swap (read the
/// value and `X-Revision`, `PUT` with `X-Revision: rev+1`, retry on 409): exactly 600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_across_nodes_loses_no_increment() {
    const WRITERS: usize = 4;
    const EACH: u64 = 50;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("cas", 3).await;
    let clients: Vec<Client> = (0..3).map(|i| cluster.client(i)).collect();
    write(&clients[0], "b/counter", &json!(0)).await.unwrap();
    for c in &clients {
        eventually(
            "the counter exists on every node",
            CONVERGE,
            || async move {
                let r = call(c, Method::GET, "/b/counter", &[], "").await?;
                (r.status == 200)
                    .then_some(())
                    .ok_or(format!("{}", r.status))
            },
        )
        .await;
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut tasks = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        for w in 0..WRITERS {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let who = format!("node {} writer {w}", node_name(n));
                let (mut done, mut conflicts) = (0u64, 0u64);
                while done < EACH {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "{who}: {done} of {EACH} after 90 s ({conflicts} conflicts)"
                        ));
                    }
                    let r = call(&c, Method::GET, "/b/counter", &[], "").await?;
                    if r.status != 200 {
                        return Err(format!("{who}: GET {} {}", r.status, r.text()));
                    }
                    let rev: u64 = r
                        .header("x-revision")
                        .and_then(|v| v.parse().ok())
                        .ok_or(format!("{who}: no X-Revision"))?;
                    let value = r.json().map_err(|e| e.to_string())?["data"]
                        .as_u64()
                        .ok_or(format!("{who}: not a number: {}", r.text()))?;
                    let next = (rev + 1).to_string();
                    let w = call(
                        &c,
                        Method::PUT,
                        "/b/counter",
                        &[("x-revision", &next), ("content-type", "application/json")],
                        (value + 1).to_string(),
                    )
                    .await?;
                    match w.status.as_u16() {
                        200 => done += 1,
                        409 => conflicts += 1,
                        s => return Err(format!("{who}: PUT X-Revision {next}: {s} {}", w.text())),
                    }
                }
                Ok(conflicts)
            }));
        }
    }
    let mut conflicts = 0;
    let mut errors = Vec::new();
    for t in tasks {
        match t.await.expect("writer task") {
            Ok(c) => conflicts += c,
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "writers failed: {errors:#?}");
    let want = 3 * WRITERS as u64 * EACH;
    println!("compare-and-swap: {want} increments, {conflicts} conflicts (409) retried");
    for c in &clients {
        eventually(
            "the counter is 600 on every node",
            CONVERGE,
            || async move {
                let r = call(c, Method::GET, "/b/counter", &[], "").await?;
                let v = r.json().map_err(|e| e.to_string())?["data"].clone();
                let rev = r.header("x-revision").unwrap_or("").to_string();
                if v == json!(want) && rev == want.to_string() {
                    Ok(())
                } else {
                    Err(format!("{}: value {v}, X-Revision {rev}", c.base()))
                }
            },
        )
        .await;
    }
}

/// (b, without compare-and-swap) 3 nodes × 4 writers each `POST /_incr` one counter 25 times:
/// a node whose increment lost the race to another node computes it again, so every request is
/// answered 200 and the counter is exactly 300.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_from_every_node_are_all_counted() {
    const WRITERS: usize = 4;
    const EACH: u64 = 25;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("incr", 3).await;
    let clients: Vec<Client> = (0..3).map(|i| cluster.client(i)).collect();
    let mut tasks = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        for w in 0..WRITERS {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for k in 0..EACH {
                    let r = call(&c, Method::POST, "/_incr/b/hits", &[], "").await?;
                    if r.status != 200 {
                        return Err(format!(
                            "node {} writer {w}, increment {k}: {} {}",
                            node_name(n),
                            r.status,
                            r.text()
                        ));
                    }
                }
                Ok(())
            }));
        }
    }
    let errors: Vec<String> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .filter_map(|r| r.expect("writer task").err())
        .collect();
    assert!(errors.is_empty(), "increments failed: {errors:#?}");
    let want = 3 * WRITERS as u64 * EACH;
    for c in &clients {
        eventually(
            "the counter is 300 on every node",
            CONVERGE,
            || async move {
                let r = call(c, Method::GET, "/b/hits", &[], "").await?;
                let v = r.json().map_err(|e| e.to_string())?["data"].clone();
                (v == json!(want))
                    .then_some(())
                    .ok_or(format!("{}: {v}", c.base()))
            },
        )
        .await;
    }
}

/// (c) A client following a subtree over SSE on node A moves to node C mid-stream with
/// `Last-Event-ID` and gets every later change exactly once; and a version from A is current on
/// C (an ooo WebSocket with `?v=` gets nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_moved_to_another_node_resumes_without_gap_or_duplicate() {
    const N: usize = 200;
    const SWITCH_AFTER: usize = 70;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("resume", 3).await;
    let clients: Vec<Client> = (0..3).map(|i| cluster.client(i)).collect();

    let mut sse = Sse::open(&cluster.authority(0), "/c/", None).await;
    // The writes go to every node in turn, one after the other (so in this order).
    let writer = {
        let clients = clients.clone();
        tokio::spawn(async move {
            for i in 0..N {
                write(&clients[i % 3], &format!("c/k{i:03}"), &json!(i)).await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<(), String>(())
        })
    };
    let mut seen: Vec<SseEvent> = Vec::new();
    while seen.len() < SWITCH_AFTER {
        let ev = sse
            .next(CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("SSE on A after {} events: {e}", seen.len()));
        seen.push(ev);
    }
    drop(sse);
    let last_id = seen.last().unwrap().id.clone();
    let mut sse = Sse::open(&cluster.authority(2), "/c/", Some(&last_id)).await;
    let resumed_at = seen.len();
    while seen.last().map(|e| e.parts().0) != Some(format!("/c/k{:03}", N - 1)) {
        let ev = sse.next(CONVERGE).await.unwrap_or_else(|e| {
            panic!(
                "SSE on C (resumed with Last-Event-ID {last_id}) after {} events in all: {e}",
                seen.len()
            )
        });
        seen.push(ev);
        assert!(seen.len() <= N + 50, "far more events than writes");
    }
    writer.await.unwrap().unwrap();

    let keys: Vec<String> = seen.iter().map(|e| e.parts().0).collect();
    let want: Vec<String> = (0..N).map(|i| format!("/c/k{i:03}")).collect();
    if keys != want {
        let dups: Vec<&String> = keys
            .iter()
            .enumerate()
            .filter(|(i, k)| keys[..*i].contains(k))
            .map(|(_, k)| k)
            .collect();
        let gaps: Vec<&String> = want.iter().filter(|k| !keys.contains(k)).collect();
        panic!(
            "switched from A to C after {resumed_at} events (Last-Event-ID {last_id}): \
             duplicates {dups:?}, missing {gaps:?}, order {keys:?}"
        );
    }
    for (i, e) in seen.iter().enumerate() {
        assert_eq!(e.data, i.to_string(), "{e:?}");
        if i > 0 {
            assert!(
                e.parts().2 > seen[i - 1].parts().2,
                "versions must increase across the switch: {:?} then {e:?}",
                seen[i - 1]
            );
        }
    }

    // The same subtree's version on A is current on C: `?v=` sends nothing there.
    let mut on_a = ws(&format!("ws://{}/c/", cluster.authority(0))).await;
    let snap = ws_next(&mut on_a, REQUEST).await.expect("a snapshot on A");
    assert_eq!(snap["data"].as_array().map(Vec::len), Some(N), "{snap}");
    let v = snap["version"].as_str().expect("version").to_string();
    let mut on_c = ws(&format!("ws://{}/c/?v={v}", cluster.authority(2))).await;
    if let Some(f) = ws_next(&mut on_c, Duration::from_millis(600)).await {
        panic!("C sent a frame for ?v={v} (A's current version of c/): {f}");
    }
}

/// (d) A node is SIGKILLed while it acknowledges writes: every write it acknowledged is on the
/// other nodes, which keep serving (and writing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_killed_node() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("nodekill", 3).await;
    let clients: Vec<Client> = (0..3).map(|i| cluster.client(i)).collect();
    let acked: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let on_a = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Four writers on A, one on B.
    for (w, node) in [0, 0, 0, 0, 1].into_iter().enumerate() {
        let (c, acked, on_a, stop) = (
            clients[node].clone(),
            acked.clone(),
            on_a.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for n in 0..100_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("d/{}{w}/{n}", node_name(node));
                match write(&c, &key, &json!(n)).await {
                    Ok(_) => {
                        acked.lock().unwrap().push((key, json!(n)));
                        if node == 0 {
                            *on_a.lock().unwrap() += 1;
                        }
                    }
                    // A's writers stop at the kill; B's must not fail.
                    Err(e) if node == 0 => return Ok(e),
                    Err(e) => return Err(e),
                }
            }
            Ok(String::new())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while *on_a.lock().unwrap() < 300 {
        assert!(
            Instant::now() < deadline,
            "A acknowledged fewer than 300 writes in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.nodes[0].proc.kill();
    let killed_after = *on_a.lock().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            panic!("the writer on B failed after A was killed: {e}");
        }
    }
    let acked = acked.lock().unwrap().clone();
    println!(
        "node kill: A killed after {killed_after} acknowledged writes; {} acknowledged in all",
        acked.len()
    );
    for c in &clients[1..] {
        eventually(
            "every acknowledged write on the surviving nodes",
            CONVERGE,
            || has_all(c, "d", &acked),
        )
        .await;
        let r = call(c, Method::GET, "/_health", &[], "").await.unwrap();
        assert_eq!(r.status, 200, "{}: /_health {}", c.base(), r.text());
    }
}

/// (e) With 3 replicas, the NATS server leading the stream is SIGKILLed: every acknowledged write
/// is still there, and writes on every node succeed again after the election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nats_server_loses_no_acknowledged_write() {
    const BEFORE: usize = 30;
    const AFTER: usize = 30;
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("natskill", 3).await;
    let clients: Vec<Client> = (0..3).map(|i| cluster.client(i)).collect();

    /// One node's writer: its acknowledged writes (key, value, sent, answered) and its failures.
    #[derive(Default)]
    struct Writer {
        acked: Vec<(String, Value, Instant, Instant)>,
        failed: Vec<(Instant, String)>,
    }
    let writers: Vec<Arc<Mutex<Writer>>> = (0..3).map(|_| Arc::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, state, stop) = (c.clone(), writers[i].clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..100_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("e/{}/{n}", node_name(i));
                let sent = Instant::now();
                match write(&c, &key, &json!(n)).await {
                    Ok(_) => {
                        let done = Instant::now();
                        state
                            .lock()
                            .unwrap()
                            .acked
                            .push((key, json!(n), sent, done));
                    }
                    Err(e) => {
                        state.lock().unwrap().failed.push((sent, e));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    // Acknowledged writes per node that were sent after `since`.
    let count_since = |since: Option<Instant>| -> Vec<usize> {
        writers
            .iter()
            .map(|w| {
                let w = w.lock().unwrap();
                w.acked
                    .iter()
                    .filter(|a| since.is_none_or(|s| a.2 > s))
                    .count()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_since(None).iter().any(|&n| n < BEFORE) {
        assert!(
            Instant::now() < deadline,
            "fewer than {BEFORE} acknowledged writes per node in 20 s: {:?}",
            count_since(None)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leader = cluster.stream_leader().await;
    let victim = leader.unwrap_or(0);
    let killed = Instant::now();
    cluster.nats[victim].kill();
    println!(
        "NATS kill: killed n{} ({})",
        victim + 1,
        if leader.is_some() {
            "the stream leader"
        } else {
            "the monitors named no stream leader"
        }
    );

    let limit = Duration::from_secs(45);
    while count_since(Some(killed)).iter().any(|&n| n < AFTER) {
        if killed.elapsed() > limit {
            stop.store(true, Ordering::SeqCst);
            let errors: Vec<String> = writers
                .iter()
                .map(|w| {
                    let w = w.lock().unwrap();
                    format!("{} failed, last: {:?}", w.failed.len(), w.failed.last())
                })
                .collect();
            panic!(
                "acknowledged writes per node sent since the kill of n{}: {:?} after {limit:?} \
                 (wanted {AFTER} each); failures: {errors:#?}",
                victim + 1,
                count_since(Some(killed))
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let mut acked = Vec::new();
    for (i, w) in writers.iter().enumerate() {
        let w = w.lock().unwrap();
        let first_after = w.acked.iter().find(|a| a.2 > killed).map(|a| a.3 - killed);
        let slowest = w.acked.iter().map(|a| a.3 - a.2).max();
        println!(
            "NATS kill: node {}: first write sent after the kill acknowledged {first_after:?} \
             after it; slowest acknowledged write {slowest:?}; {} writes failed{}",
            node_name(i),
            w.failed.len(),
            w.failed
                .first()
                .map(|(t, e)| format!(
                    ", the first sent {:?} after the kill: {e}",
                    t.saturating_duration_since(killed)
                ))
                .unwrap_or_default()
        );
        acked.extend(w.acked.iter().map(|(k, v, _, _)| (k.clone(), v.clone())));
    }
    for (i, c) in clients.iter().enumerate() {
        eventually("every acknowledged write on every node", CONVERGE, || {
            has_all(c, "e", &acked)
        })
        .await;
        cluster.wait_healthy(i, CONVERGE).await;
    }
}

/// (f) A fresh node joins after 10,000 writes (sets over 2,500 keys, then 100 deletes) and
/// serves the same state as the others: each key's value, revision, created and updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_catches_up_after_ten_thousand_writes() {
    const KEYS: u64 = 2500;
    const SETS: u64 = 9900;
    const DELETES: u64 = 100;
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("catchup", 3).await;

    // Sets pipelined over /_ws, even writes on A and odd on B (so each key is written by one
    // node), then, once every set is acknowledged, the deletes on C.
    let started = Instant::now();
    let mut sets = Vec::new();
    for node in 0..2u64 {
        let url = format!("ws://{}/_ws", cluster.authority(node as usize));
        let ops: Vec<Value> = (0..SETS)
            .filter(|i| i % 2 == node)
            .map(|i| json!({"id": i, "op": "set", "key": format!("f/k{:04}", i % KEYS), "value": {"i": i}}))
            .collect();
        sets.push(tokio::spawn(async move { pipeline(&url, ops).await }));
    }
    for t in sets {
        t.await.unwrap();
    }
    let deletes: Vec<Value> = (0..DELETES)
        .map(|k| json!({"id": k, "op": "del", "key": format!("f/k{k:04}")}))
        .collect();
    pipeline(&format!("ws://{}/_ws", cluster.authority(2)), deletes).await;
    println!(
        "catch-up: {} writes acknowledged in {:?}",
        SETS + DELETES,
        started.elapsed()
    );

    // What every node must serve: key -> (value, revision).
    let mut want: BTreeMap<String, (Value, u64)> = BTreeMap::new();
    for i in 0..SETS {
        let key = format!("f/k{:04}", i % KEYS);
        let rev = want.get(&key).map_or(0, |(_, r)| r + 1);
        want.insert(key, (json!({"i": i}), rev));
    }
    for k in 0..DELETES {
        want.remove(&format!("f/k{k:04}"));
    }

    let fresh = cluster.spawn_node();
    let took = cluster.wait_healthy(fresh, Duration::from_secs(90)).await;
    println!(
        "catch-up: a fresh node caught up on {} writes ({} keys) in {took:?} (start to /_health 200)",
        SETS + DELETES,
        want.len()
    );

    let reference = node_state(&cluster.client(fresh)).await.unwrap();
    let mut wrong: Vec<String> = Vec::new();
    for (k, (v, rev)) in &want {
        match reference.get(k) {
            Some(s) if &s.data == v && s.revision == *rev => {}
            other => wrong.push(format!("{k}: want {v} revision {rev}, has {other:?}")),
        }
    }
    for k in reference.keys().filter(|k| !want.contains_key(*k)) {
        wrong.push(format!("{k}: should not exist"));
    }
    assert!(
        wrong.is_empty(),
        "the fresh node's state: {} keys wrong, e.g. {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    let reference = &reference;
    for i in 0..3 {
        let c = &cluster.client(i);
        eventually(
            "every node serves the fresh node's state",
            CONVERGE,
            || async move {
                let s = node_state(c).await?;
                if &s == reference {
                    return Ok(());
                }
                let diff: Vec<String> = reference
                    .iter()
                    .filter(|(k, v)| s.get(*k) != Some(v))
                    .map(|(k, v)| format!("{k}: fresh {v:?}, node {:?}", s.get(k)))
                    .chain(
                        s.keys()
                            .filter(|k| !reference.contains_key(*k))
                            .map(|k| format!("{k}: only on the node")),
                    )
                    .take(5)
                    .collect();
                Err(format!("node {} differs: {diff:#?}", node_name(i)))
            },
        )
        .await;
    }
}

/// Sends every op over one `/_ws` socket without waiting (the server paces the reads) and checks
/// that each gets an ok reply.
async fn pipeline(url: &str, ops: Vec<Value>) {
    let total = ops.len();
    let (mut tx, mut rx) = ws(url).await.split();
    let sender = tokio::spawn(async move {
        for op in ops {
            tx.send(Message::Text(op.to_string().into())).await?;
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(tx)
    });
    let mut ok = 0;
    while ok < total {
        let m = tokio::time::timeout(Duration::from_secs(30), rx.next())
            .await
            .unwrap_or_else(|_| panic!("{url}: {ok} of {total} replies, then nothing for 30 s"));
        let v: Value = match m {
            Some(Ok(Message::Binary(b))) => serde_json::from_slice(&b).unwrap(),
            Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("{url}: after {ok} of {total} replies: {other:?}"),
        };
        assert_eq!(v["ok"], true, "{url}: a write was refused: {v}");
        ok += 1;
    }
    let _tx = sender.await.unwrap().expect("send");
}

/// A key's state as a node serves it.
#[derive(Debug, Clone, PartialEq)]
struct KeyState {
    data: Value,
    revision: u64,
    created: Value,
    updated: Value,
}

/// Every key below `f/` on a node: the data from a subtree listing, the revision, created and
/// updated from `GET /?api=keys` (500 a page).
async fn node_state(c: &Client) -> Result<BTreeMap<String, KeyState>, String> {
    let data = subtree(c, "f").await?;
    let mut out = BTreeMap::new();
    for page in 1..=100 {
        let r = call(
            c,
            Method::GET,
            &format!("/?api=keys&filter=f/&limit=500&page={page}"),
            &[],
            "",
        )
        .await?;
        if r.status != 200 {
            return Err(format!(
                "{}: ?api=keys: {} {}",
                c.base(),
                r.status,
                r.text()
            ));
        }
        let v = r.json().map_err(|e| e.to_string())?;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        for it in items {
            let key = it["key"].as_str().unwrap_or_default().to_string();
            let state = KeyState {
                data: data.get(&key).cloned().unwrap_or(Value::Null),
                revision: it["revision"].as_u64().unwrap_or(u64::MAX),
                created: it["created"].clone(),
                updated: it["updated"].clone(),
            };
            out.insert(key, state);
        }
    }
    if out.len() != data.len() {
        return Err(format!(
            "{}: ?api=keys lists {} keys, GET /f/ {}",
            c.base(),
            out.len(),
            data.len()
        ));
    }
    Ok(out)
}

/// While every NATS server is gone, a node keeps serving reads from its copy, answers writes
/// 503 with the reason (changing nothing), and `/_health` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_reads_go_on_and_writes_answer_503() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("nonats", 1).await;
    let c = cluster.client(0);
    write(&c, "u/kept", &json!("before")).await.unwrap();
    for p in &mut cluster.nats {
        p.kill();
    }
    let read = call(&c, Method::GET, "/u/kept", &[], "").await.unwrap();
    assert_eq!(read.status, 200, "reads are served: {}", read.text());
    assert_eq!(read.json().unwrap()["data"], json!("before"));
    let w = call(&c, Method::POST, "/u/new", &[], "1").await.unwrap();
    assert_eq!(w.status, 503, "{}", w.text());
    assert!(w.text().contains("NATS is unreachable"), "{}", w.text());
    let gone = call(&c, Method::GET, "/u/new", &[], "").await.unwrap();
    assert_eq!(gone.status, 404, "the refused write changed nothing");
    let h = call(&c, Method::GET, "/_health", &[], "").await.unwrap();
    assert_eq!(h.status, 503);
    let reason = h.json().unwrap()["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(reason.contains("NATS is unreachable"), "{reason}");
}

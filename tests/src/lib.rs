//! The conformance harness: where the server is, and small helpers to speak HTTP, WebSocket and
//! SSE to it over real sockets.
//!
//! The server's base URL comes from `STATELINE_URL` (e.g. `http://127.0.0.1:8800`), so the same
//! suite runs against the native server and the edge worker. When it is unset, each test starts
//! the built `stateline` binary (`STATELINE_BIN`, else `target/debug/stateline`) on 127.0.0.1
//! with a free port and `--memory`, and kills that process by its PID when the test ends. Tests
//! that need server flags (static mode, limits, short intervals) run only against a server they
//! start themselves and are skipped (with a note) when `STATELINE_URL` is set.
//!
//! Keys are unique per test (`unique`), so tests can share one external server. Every wait is
//! bounded.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use stateline_client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket client stream.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A short wait for things that should happen at once.
pub const SOON: Duration = Duration::from_secs(5);
/// How long to wait to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(400);

/// A server under test.
#[derive(Debug)]
pub struct Server {
    /// `http://host:port`.
    pub url: String,
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
}

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

/// Whether tests run against an external server (`STATELINE_URL`).
pub fn external() -> Option<String> {
    std::env::var("STATELINE_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('/').to_string())
}

impl Server {
    /// The server for ordinary tests: `STATELINE_URL`, or a fresh `stateline serve --memory`.
    pub async fn start() -> Server {
        if let Some(url) = external() {
            return Server {
                url,
                child: None,
                args: vec![],
                env: vec![],
                port: 0,
            };
        }
        Server::spawn(&[]).await
    }

    /// A server started with extra flags; `None` (test skipped) when `STATELINE_URL` is set.
    pub async fn with_flags(flags: &[&str]) -> Option<Server> {
        if external().is_some() {
            eprintln!("skipped: needs its own server with {flags:?} (STATELINE_URL is set)");
            return None;
        }
        Some(Server::spawn(flags).await)
    }

    /// A server enforcing `examples/rules.toml`, and the HS256 secret its tokens are signed
    /// with. Against `STATELINE_URL` the external server must have been started with that rules
    /// file and `STATELINE_JWT_SECRET`, which this process must see too; without the secret the
    /// test is skipped (with a note).
    pub async fn with_rules() -> Option<(Server, String)> {
        let env_secret = std::env::var("STATELINE_JWT_SECRET")
            .ok()
            .filter(|s| !s.is_empty());
        if external().is_some() {
            let Some(secret) = env_secret else {
                eprintln!("skipped: the rules tests need STATELINE_JWT_SECRET (the external server's, started with --rules examples/rules.toml)");
                return None;
            };
            return Some((Server::start().await, secret));
        }
        let secret = env_secret.unwrap_or_else(|| "conformance-secret-0123456789".to_string());
        let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/rules.toml");
        let rules = rules.to_string_lossy().into_owned();
        let port = free_port();
        let mut s = Server {
            url: format!("http://127.0.0.1:{port}"),
            child: None,
            args: vec!["--rules".into(), rules],
            env: vec![("STATELINE_JWT_SECRET".into(), secret.clone())],
            port,
        };
        s.launch().await;
        Some((s, secret))
    }

    async fn spawn(flags: &[&str]) -> Server {
        let port = free_port();
        let args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let mut s = Server {
            url: format!("http://127.0.0.1:{port}"),
            child: None,
            args,
            env: vec![],
            port,
        };
        s.launch().await;
        s
    }

    async fn launch(&mut self) {
        let bin = binary();
        assert!(
            bin.exists(),
            "{} not found: build it first (cargo build -p stateline-server), or set STATELINE_BIN or STATELINE_URL",
            bin.display()
        );
        let child = Command::new(&bin)
            .arg("serve")
            .arg("--memory")
            .arg("--addr")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "STATELINE_LOG",
                std::env::var("STATELINE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the stateline binary");
        self.child = Some(child);
        let c = self.client();
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

    /// The PID of the process this test started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM to the process this test started (by PID).
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            // The shell's builtin `kill`, so no procps package is needed.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -TERM {pid}"))
                .status();
        }
    }

    /// Waits (bounded) for the process to exit; its exit success.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<bool> {
        let child = self.child.as_mut()?;
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st.success());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Kills the process (by PID) and starts it again on the same port and flags.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client for it.
    pub fn client(&self) -> Client {
        Client::new(&self.url).expect("valid base url")
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.url["http://".len()..]
    }

    /// The server's resident memory in KiB (only for a process this test started, on Linux).
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A documented difference of the edge worker from the native server (README, "The edge").
#[derive(Debug)]
pub struct Difference {
    /// Named in the tests that meet it.
    pub id: &'static str,
    /// The edge modes (`STATELINE_EDGE`) it applies to.
    pub modes: &'static [&'static str],
    /// What differs and why.
    pub what: &'static str,
}

/// Every documented difference. A case that meets one asserts the documented behaviour instead.
pub const DIFFERENCES: &[Difference] = &[
    Difference {
        id: "spans-namespaces",
        modes: &["namespace"],
        what: "a pattern, list, rename or transaction that spans namespaces (first key \
               segments) is refused with 400: each namespace is its own Durable Object",
    },
    Difference {
        id: "mux-per-namespace",
        modes: &["namespace"],
        what: "/_ws serves one namespace per connection (/_ws?ns=<namespace>); without ns it is \
               refused with 400",
    },
    Difference {
        id: "dot-segments",
        modes: &["namespace", "single"],
        what: "the Workers runtime resolves `.` and `..` URL segments (WHATWG URL) before the \
               worker sees the request, so /a/../b addresses b instead of being refused",
    },
    Difference {
        id: "unsent-body",
        modes: &["namespace", "single"],
        what: "local workerd (wrangler dev) does not send the worker's answer to a request whose \
               declared body has not arrived, so an oversized body is refused with 413 once it \
               is sent; a client that declares one and sends nothing waits",
    },
    Difference {
        id: "truncated-body",
        modes: &["namespace", "single"],
        what: "local workerd (wrangler dev) answers a request whose client breaks its body off \
               with its own 503 (\"your worker restarted mid-request\") before the worker can \
               refuse it with 400; nothing is changed either way",
    },
    Difference {
        id: "no-coalescing",
        modes: &["namespace", "single"],
        what: "the Workers runtime buffers a WebSocket's outgoing messages itself, so a \
               subscriber that reads slowly is sent every frame (none are coalesced)",
    },
    Difference {
        id: "ws-deflate-runtime",
        modes: &["namespace", "single"],
        what: "the Workers runtime negotiates WebSocket compression (permessage-deflate) itself \
               whenever a client offers it; the native server only with --ws-deflate",
    },
    Difference {
        id: "ws-framing",
        modes: &["namespace", "single"],
        what: "WebSocket framing is the Workers runtime's: it rejects a malformed frame (workerd \
               logs close code 1002), but the local dev proxy may keep the TCP connection open",
    },
];

/// The edge worker's mode when the target is the edge (`STATELINE_EDGE=namespace|single`).
pub fn edge_mode() -> Option<String> {
    std::env::var("STATELINE_EDGE")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Whether the target has the documented difference `id`; says so on stderr. The caller then
/// checks the documented behaviour instead of the native one.
pub fn differs(id: &str) -> bool {
    let d = DIFFERENCES
        .iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("unknown difference {id}"));
    match target_mode() {
        Some(m) if d.modes.contains(&m.as_str()) => {
            eprintln!("documented difference ({m}) {id}: {}", d.what);
            true
        }
        _ => false,
    }
}

/// The kind of target when it is not a lone native server: the edge worker's mode, or
/// `cluster` when `STATELINE_CLUSTER` is set (the target is a node of a cluster).
pub fn target_mode() -> Option<String> {
    edge_mode().or_else(|| {
        std::env::var("STATELINE_CLUSTER")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|_| "cluster".to_string())
    })
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A key segment unique to this run and call (`name` + time + counter).
pub fn unique(name: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{name}{:x}x{n}", t & 0xffff_ffff_ffff)
}

/// The documented difference `mux-per-namespace`: `/_ws` without `?ns=` is refused with a 400
/// that says how to connect.
pub async fn assert_mux_needs_namespace(server: &Server) {
    let (_t, head) = raw_ws(server, "/_ws", "").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let r = server
        .client()
        .request(
            http::Method::GET,
            "/_ws",
            &[("upgrade", "websocket"), ("connection", "upgrade")],
            "",
        )
        .await
        .expect("request");
    assert!(r.text().contains("/_ws?ns="), "{}", r.text());
}

/// Sends a `/_ws` request and returns its reply: the message with the request's `id` (frames
/// of the socket's subscriptions may come first; up to 50 of them are read past).
pub async fn call(w: &mut Ws, req: Value) -> Value {
    let id = req["id"].clone();
    send_text(w, &req).await;
    for _ in 0..50 {
        let m = next_json(w).await;
        if m.get("ok").is_some() && m["id"] == id {
            return m;
        }
    }
    panic!("no reply to {req}");
}

/// `/_ws` for keys under the namespace `p` (their first segment): the edge in namespace mode
/// serves one namespace per `/_ws` socket, named with `?ns=`; elsewhere a socket takes any key.
pub fn mux_path(p: &str) -> String {
    if differs("mux-per-namespace") {
        format!("/_ws?ns={p}")
    } else {
        "/_ws".to_string()
    }
}

/// A `/_ws` socket for keys under `p` ([`mux_path`]).
pub async fn mux(server: &Server, p: &str) -> Ws {
    ws(server, &mux_path(p)).await
}

/// Opens a WebSocket to `path` (with query).
pub async fn ws(server: &Server, path: &str) -> Ws {
    let url = server.client().ws_url(path);
    let (ws, _) = tokio::time::timeout(SOON, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .unwrap_or_else(|_| panic!("connect {url}: timeout"))
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

/// What a WebSocket yielded.
#[derive(Debug)]
pub enum WsEvent {
    /// A data message (binary or text) and whether it was binary.
    Data(Bytes, bool),
    /// A close frame and its code.
    Close(Option<u16>),
    /// The stream ended or failed.
    Ended,
    /// Nothing within the limit.
    Timeout,
}

/// The next non-ping message within `limit`.
pub async fn next_event(ws: &mut Ws, limit: Duration) -> WsEvent {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return WsEvent::Timeout,
            Ok(None) | Ok(Some(Err(_))) => return WsEvent::Ended,
            Ok(Some(Ok(m))) => match m {
                Message::Binary(b) => return WsEvent::Data(b, true),
                Message::Text(t) => {
                    return WsEvent::Data(Bytes::from(t.as_str().to_owned()), false)
                }
                Message::Close(f) => return WsEvent::Close(f.map(|f| u16::from(f.code))),
                _ => continue,
            },
        }
    }
}

/// The next message as JSON; panics if none arrives within [`SOON`].
pub async fn next_json(ws: &mut Ws) -> Value {
    match next_event(ws, SOON).await {
        WsEvent::Data(b, _) => serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&b))),
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// Asserts that no data message arrives for a while.
pub async fn assert_quiet(ws: &mut Ws) {
    if let WsEvent::Data(b, _) = next_event(ws, QUIET).await {
        panic!("unexpected frame: {}", String::from_utf8_lossy(&b));
    }
}

/// Sends a text message (a `/_ws` request).
pub async fn send_text(ws: &mut Ws, v: &Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// Applies an ooo frame (snapshot or RFC 6902 patch) to a cache.
pub fn apply(cache: &mut Value, frame: &Value) {
    if frame["snapshot"] == Value::Bool(true) {
        *cache = frame["data"].clone();
    } else {
        let p: json_patch_lite::Patch =
            serde_json::from_value(frame["data"].clone()).expect("patch");
        json_patch_lite::apply(cache, &p).expect("patch applies");
    }
}

/// One ooo WebSocket subscription on a path (`/key`, `/list/*`), read by hand: the cache its
/// frames describe (a snapshot, then RFC 6902 patches, applied with [`apply`]) and the last
/// version. Reconnecting is the test's own step ([`PathSub::reopen`], with `?v=`), so ooo's
/// per-path protocol is checked without a client state machine in between.
#[derive(Debug)]
pub struct PathSub {
    ws: Ws,
    path: String,
    /// The value the frames so far describe (the meta object, or the list of them).
    pub cache: Value,
    /// The version of the last frame.
    pub version: Option<String>,
}

impl PathSub {
    /// Opens `path` (a key or a glob, with its leading `/`, no query).
    pub async fn open(server: &Server, path: &str) -> PathSub {
        PathSub {
            ws: ws(server, path).await,
            path: path.to_string(),
            cache: Value::Null,
            version: None,
        }
    }

    /// Opens the path again with `?v=<last version>` (as ooo's clients reconnect).
    pub async fn reopen(&mut self, server: &Server) {
        let target = match &self.version {
            Some(v) => format!("{}?v={v}", self.path),
            None => self.path.clone(),
        };
        self.ws = ws(server, &target).await;
    }

    /// The next frame, applied to the cache: its version, whether it was a snapshot, and the
    /// cache after it. What ended the wait otherwise (close, end, timeout) is the error.
    pub async fn next(&mut self, limit: Duration) -> Result<(String, bool, Value), WsEvent> {
        let b = match next_event(&mut self.ws, limit).await {
            WsEvent::Data(b, _) => b,
            other => return Err(other),
        };
        let frame: Value = serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&b)));
        apply(&mut self.cache, &frame);
        let version = frame["version"].as_str().unwrap_or_default().to_string();
        self.version = Some(version.clone());
        Ok((
            version,
            frame["snapshot"] == Value::Bool(true),
            self.cache.clone(),
        ))
    }
}

/// A tiny RFC 6902 subset (add, remove, replace) to check frames independently of the server's
/// patch library.
pub mod json_patch_lite {
    use serde_json::Value;

    /// A patch.
    pub type Patch = Vec<Value>;

    fn parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
        let mut parts: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let last = parts.pop().ok_or("empty path")?;
        let mut cur = doc;
        for p in parts {
            cur = match cur {
                Value::Object(m) => m.get_mut(&p).ok_or(format!("no {p}"))?,
                Value::Array(a) => {
                    let i: usize = p.parse().map_err(|_| format!("bad index {p}"))?;
                    a.get_mut(i).ok_or(format!("no index {i}"))?
                }
                _ => return Err(format!("cannot descend into {p}")),
            };
        }
        Ok((cur, last))
    }

    /// Applies `patch` to `doc`.
    pub fn apply(doc: &mut Value, patch: &Patch) -> Result<(), String> {
        for op in patch {
            let kind = op["op"].as_str().ok_or("op")?;
            let path = op["path"].as_str().ok_or("path")?;
            let (target, last) = parent(doc, path)?;
            match (kind, target) {
                ("add", Value::Array(a)) => {
                    let i = if last == "-" {
                        a.len()
                    } else {
                        last.parse().map_err(|_| "index")?
                    };
                    if i > a.len() {
                        return Err(format!("add at {i} beyond {}", a.len()));
                    }
                    a.insert(i, op["value"].clone());
                }
                ("replace", Value::Array(a)) => {
                    let i: usize = last.parse().map_err(|_| "index")?;
                    *a.get_mut(i).ok_or("replace index")? = op["value"].clone();
                }
                ("remove", Value::Array(a)) => {
                    let i: usize = last.parse().map_err(|_| "index")?;
                    if i >= a.len() {
                        return Err(format!("remove {i} beyond {}", a.len()));
                    }
                    a.remove(i);
                }
                ("add" | "replace", Value::Object(m)) => {
                    m.insert(last, op["value"].clone());
                }
                ("remove", Value::Object(m)) => {
                    m.remove(&last).ok_or("remove missing")?;
                }
                (k, _) => return Err(format!("unsupported op {k} at {path}")),
            }
        }
        Ok(())
    }
}

/// A raw HTTP/1.1 exchange over a new TCP connection: writes `head` (+ body) and returns the
/// stream for reading (used for SSE and hand-made WebSocket handshakes).
pub async fn raw(server: &Server, head: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(server.authority())
        .await
        .expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    s
}

/// Sends `POST path` declaring and sending `len` bytes of body while reading; returns the
/// response head (empty if the connection ended without one). Writing stops at the first
/// failure (the server may close once it has answered) and once the answer is in.
pub async fn upload(s: &Server, path: &str, len: usize) -> String {
    let stream = TcpStream::connect(s.authority()).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        s.authority()
    );
    let writer = tokio::spawn(async move {
        if w.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 256 << 10];
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            if w.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            sent += n;
        }
    });
    let mut buf = Vec::new();
    let read = async {
        let mut b = [0u8; 4096];
        while find(&buf, b"\r\n\r\n").is_none() {
            match r.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), read).await;
    writer.abort();
    String::from_utf8_lossy(&buf).into_owned()
}

/// A masked client frame (mask key 0, so the payload goes as is), for hand-made WebSocket
/// traffic: fragments, control frames, bad opcodes.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let n = payload.len();
    if n < 126 {
        v.push(0x80 | n as u8);
    } else {
        v.push(0x80 | 126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    }
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(payload);
    v
}

/// Reads server frames until a data frame (its payload) or the end (`None`), within `limit`.
pub async fn next_data(t: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let read = async {
        loop {
            let mut h = [0u8; 2];
            t.read_exact(&mut h).await.ok()?;
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut l = [0u8; 2];
                t.read_exact(&mut l).await.ok()?;
                len = u64::from(u16::from_be_bytes(l));
            } else if len == 127 {
                let mut l = [0u8; 8];
                t.read_exact(&mut l).await.ok()?;
                len = u64::from_be_bytes(l);
            }
            let mut p = vec![0u8; len as usize];
            t.read_exact(&mut p).await.ok()?;
            match h[0] & 0x0f {
                0x1 | 0x2 => return Some(p),
                0x8 => return None,
                _ => {}
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

/// Reads from `s` until `needle` appears in what was read, or `limit` passes, or EOF.
pub async fn read_until(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    needle: &[u8],
    limit: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 8192];
    loop {
        if find(buf, needle).is_some() {
            return true;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return find(buf, needle).is_some(),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads until EOF (true) or `limit` (false).
pub async fn read_to_eof(s: &mut TcpStream, buf: &mut Vec<u8>, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 65536];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Err(_) => return false,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An SSE stream opened with raw HTTP; `text()` is the decoded body so far.
#[derive(Debug)]
pub struct Sse {
    stream: TcpStream,
    raw: Vec<u8>,
    /// The response head.
    pub head: String,
}

impl Sse {
    /// Opens `GET path` with `Accept` and extra header lines (each ending in `\r\n`).
    pub async fn open(server: &Server, path: &str, accept: &str, extra: &str) -> Sse {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\n{extra}\r\n",
            server.authority()
        );
        let mut stream = raw(server, &head, b"").await;
        let mut raw = Vec::new();
        assert!(
            read_until(&mut stream, &mut raw, b"\r\n\r\n", SOON).await,
            "SSE response head did not arrive at once"
        );
        let end = find(&raw, b"\r\n\r\n").unwrap_or(0) + 4;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let rest = raw[end..].to_vec();
        Sse {
            stream,
            raw: rest,
            head,
        }
    }

    /// The body read so far, de-chunked.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        let mut b = &self.raw[..];
        if !self
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return String::from_utf8_lossy(b).into_owned();
        }
        while let Some(i) = find(b, b"\r\n") {
            let Ok(n) = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16) else {
                break;
            };
            if b.len() < i + 2 + n + 2 {
                // Partial chunk: take what is there.
                out.extend_from_slice(&b[(i + 2).min(b.len())..]);
                break;
            }
            out.extend_from_slice(&b[i + 2..i + 2 + n]);
            b = &b[i + 2 + n + 2..];
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads until the decoded body contains `needle` (true), or `limit` passes (false).
    pub async fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut chunk = [0u8; 8192];
        loop {
            if self.text().contains(needle) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return self.text().contains(needle),
                Ok(Ok(n)) => self.raw.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Keeps reading for `d` (to be sure nothing else arrives).
    pub async fn drain_for(&mut self, d: Duration) {
        let _ = self.wait_for("\u{0}never\u{0}", d).await;
    }

    /// Reads until the server ends the stream (the last chunk, or the connection closes: true)
    /// or `limit` passes (false).
    pub async fn wait_end(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut chunk = [0u8; 65536];
        loop {
            if self.raw.starts_with(b"0\r\n\r\n") || find(&self.raw, b"\r\n0\r\n\r\n").is_some() {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Err(_) => return false,
                Ok(Ok(n)) => self.raw.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// The server's `/?api=state` total of connections.
pub async fn connections(c: &Client) -> u64 {
    let r = c
        .request(http::Method::GET, "/?api=state", &[], "")
        .await
        .expect("state api");
    r.json().expect("json")["totalConnections"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits (up to [`SOON`]) until the server counts `n` subscriber connections, and returns the
/// last count seen: tests assert on it instead of sleeping and hoping.
pub async fn wait_connections(c: &Client, n: u64) -> u64 {
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let now = connections(c).await;
        if now == n || std::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw WebSocket handshake on `path` with extra header lines; returns the stream and the
/// response head (empty if none came within [`SOON`]). The head is read a byte at a time, so
/// a first frame the server sends in the same packet stays in the stream for the caller.
pub async fn raw_ws(server: &Server, path: &str, extra: &str) -> (TcpStream, String) {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n",
        server.authority()
    );
    let mut s = raw(server, &head, b"").await;
    let mut buf = Vec::new();
    let read = async {
        while !buf.ends_with(b"\r\n\r\n") {
            match s.read_u8().await {
                Ok(b) => buf.push(b),
                Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(SOON, read).await;
    (s, String::from_utf8_lossy(&buf).into_owned())
}

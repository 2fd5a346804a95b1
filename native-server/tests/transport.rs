//! Transport limits of the native server: a pipelining `/_ws` client on a durable server gets
//! every acknowledgement (its reads are paused instead), a WebSocket message left unfinished is
//! closed at `--message-timeout`, and connections beyond `--max-connections` are answered 503 at
//! once while a freed slot is reused.

use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use stateline_server::{Cli, Command, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A server on a free port with these flags, stopped when the returned sender is dropped.
async fn start(flags: &[&str]) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut argv = vec!["stateline", "serve"];
    argv.extend_from_slice(flags);
    let Command::Serve(args) = Cli::parse_from(argv).command else {
        panic!("serve")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder().args(args).build().unwrap();
    tokio::spawn(async move {
        let _ = server
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await;
    });
    (addr, tx)
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("stateline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_on_a_durable_server_gets_every_ack() {
    const WRITES: u64 = 2000;
    let dir = TempDir::new("pipelining");
    let (addr, _stop) = start(&["--data", dir.0.to_str().unwrap()]).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/_ws"))
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    // Writes everything as fast as the socket takes it while the reader below reads.
    let writer = tokio::spawn(async move {
        for i in 0..WRITES {
            let m = json!({"id": i, "op": "set", "key": format!("pipe/{i}"), "value": i});
            tx.send(Message::Text(m.to_string().into())).await.unwrap();
        }
        tx
    });
    let mut acked = 0u64;
    let mut errors = Vec::new();
    let read = async {
        while acked + (errors.len() as u64) < WRITES {
            match rx.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["ok"] == json!(true) {
                        acked += 1;
                    } else {
                        errors.push(v);
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    let v: Value = serde_json::from_slice(&b).unwrap();
                    if v["ok"] == json!(true) {
                        acked += 1;
                    } else {
                        errors.push(v);
                    }
                }
                Some(Ok(Message::Close(c))) => panic!("closed after {acked} acks: {c:?}"),
                Some(Ok(_)) => {}
                other => panic!("socket ended after {acked} acks: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("every write answered within 120 s");
    assert!(errors.is_empty(), "errors: {errors:?}");
    assert_eq!(acked, WRITES);
    let mut tx = writer.await.unwrap();
    // Still open: one more request is answered.
    tx.send(Message::Text(
        json!({"id": "last", "op": "ping"}).to_string().into(),
    ))
    .await
    .unwrap();
    let last = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str::<Value>(&t).unwrap(),
                Some(Ok(Message::Binary(b))) => return serde_json::from_slice(&b).unwrap(),
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(last["id"], json!("last"));
}

/// A masked client frame (mask key 0, so the payload goes as is).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
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

/// Opens a WebSocket by hand on `path` and returns the socket after the 101.
async fn raw_ws(addr: &str, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "handshake cut short");
        got.push(b[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s
}

/// Reads server frames until a close frame; returns its code, or `None` if the socket ended
/// without one.
async fn close_code(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<u16> {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.ok()?;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.ok()?;
            len = u64::from(u16::from_be_bytes(l));
        } else if len == 127 {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).await.ok()?;
            len = u64::from_be_bytes(l);
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await.ok()?;
        if h[0] & 0x0f == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

#[tokio::test]
async fn an_unfinished_message_is_closed_at_the_message_timeout() {
    let (addr, _stop) = start(&["--memory", "--message-timeout", "500ms"]).await;
    for path in ["/_ws", "/frag/key"] {
        let mut s = raw_ws(&addr, path).await;
        // The first fragment of a text message, never finished; then pings, as an attacker
        // keeping the connection alive would send.
        s.write_all(&client_frame(false, 0x1, &[b'x'; 1000]))
            .await
            .unwrap();
        let (mut r, mut w) = s.into_split();
        let pinger = tokio::spawn(async move {
            for _ in 0..100 {
                if w.write_all(&client_frame(true, 0x9, b"hi")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let code = tokio::time::timeout(Duration::from_secs(10), close_code(&mut r))
            .await
            .expect("closed within 10 s");
        pinger.abort();
        assert_eq!(code, Some(1008), "{path}");
    }
    // A message finished in time is served as usual.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/_ws"))
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"id": 1, "op": "ping"}).to_string().into(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(reply, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{reply:?}"
    );
}

/// Sends `GET /_health` on a new connection and returns the response head (bounded wait).
async fn health(addr: &str, keep: bool) -> (String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let conn = if keep { "keep-alive" } else { "close" };
    let req = format!("GET /_health HTTP/1.1\r\nHost: {addr}\r\nConnection: {conn}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    let read = async {
        // Until the head and a body are in (the health body is small).
        loop {
            let n = s.read(&mut b).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(i) = text.find("\r\n\r\n") {
                let len = text[..i]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if got.len() >= i + 4 + len {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer within 5 s");
    (String::from_utf8_lossy(&got).into_owned(), s)
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_a_freed_slot_is_reused() {
    let (addr, _stop) = start(&["--memory", "--max-connections", "2"]).await;
    let (a, held_a) = health(&addr, true).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let (b, held_b) = health(&addr, true).await;
    assert!(b.starts_with("HTTP/1.1 200"), "{b}");
    // Both slots are held by idle keep-alive connections: the next one is refused at once.
    for _ in 0..3 {
        let (over, _) = health(&addr, true).await;
        let lower = over.to_ascii_lowercase();
        assert!(over.starts_with("HTTP/1.1 503"), "{over}");
        assert!(lower.contains("retry-after: 1"), "{over}");
        assert!(lower.contains("too many connections"), "{over}");
    }
    drop(held_a);
    // The slot comes back once the server has seen the close (bounded wait, no timing).
    let mut reused = false;
    for _ in 0..100 {
        let (r, _) = health(&addr, false).await;
        if r.starts_with("HTTP/1.1 200") {
            reused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reused, "a freed slot is reused");
    drop(held_b);
}

#[test]
fn the_open_file_limit_is_raised_and_sizes_the_default_cap() {
    let (before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let now = stateline_server::raise_fd_limit().expect("the limit is readable");
    assert!(
        now >= before && now <= hard,
        "{before} -> {now} (hard {hard})"
    );
    #[cfg(target_os = "linux")]
    assert_eq!(now, hard, "the soft limit is raised to the hard limit");
    if now < u64::from(u32::MAX) {
        assert_eq!(
            stateline_server::default_max_connections(),
            (now as usize).saturating_sub(64).max(16)
        );
    }
}

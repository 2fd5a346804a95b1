//! Crash test: writers write at full speed and record every acknowledged write; the
//! server is killed with SIGKILL at a random moment and restarted on the same data directory;
//! every acknowledged write must be there with its revision, and no write may be half there.
//! Repeated 20 times on one data directory. Servers listen on 127.0.0.1; each is stopped by the
//! PID this test started.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: usize = 8;
const ROUNDS: usize = 20;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server process; killed when dropped, so a failing assertion never leaves it running.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_stateline"))
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start stateline");
    let child = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            if request(&mut s, "GET", "/_health", "").map(|r| r.0) == Some(200) {
                return child;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("server did not become healthy");
}

/// One HTTP/1.1 request on a keep-alive connection: (status, X-Revision, body).
fn request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, Option<u64>, String)> {
    // Bounded: a stuck server fails the test instead of hanging it.
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let (mut len, mut rev) = (0usize, None);
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        if let Some(v) = l.strip_prefix("x-revision:") {
            rev = v.trim().parse().ok();
        }
    }
    let mut b = vec![0; len];
    r.read_exact(&mut b).ok()?;
    Some((status, rev, String::from_utf8_lossy(&b).into_owned()))
}

#[derive(Default, Clone)]
struct Acked {
    // Last acknowledged (value, revision) of the writer's counter key.
    counter: Option<(u64, u64)>,
    // Keys created with an acknowledgement.
    created: Vec<String>,
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = std::env::temp_dir().join(format!("stateline-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(vec![Acked::default(); WRITERS]));
    let mut next_value = [0u64; WRITERS];
    let mut total_acks = 0usize;
    let mut seed = 0x9e3779b97f4a7c15u64 ^ std::process::id() as u64;
    for round in 0..ROUNDS {
        let port = free_port();
        let mut child = start(&dir, port);
        // Verify everything acknowledged so far survived the previous kill.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        for (w, a) in acked.lock().unwrap().iter().enumerate() {
            if let Some((v, rev)) = a.counter {
                let (st, got_rev, body) =
                    request(&mut s, "GET", &format!("/crash/w{w}"), "").unwrap();
                assert_eq!(
                    st, 200,
                    "round {round}: acknowledged counter of writer {w} lost"
                );
                let data: serde_json::Value = serde_json::from_str(&body).unwrap();
                let got = data["data"]["v"].as_u64().unwrap();
                let got_rev = got_rev.unwrap();
                assert!(
                    got >= v && got_rev >= rev,
                    "round {round}: writer {w} acked v{v} r{rev}, found v{got} r{got_rev}"
                );
                assert_eq!(
                    data["data"]["check"].as_u64(),
                    Some(got * 7),
                    "a write is whole or absent"
                );
                next_value[w] = got + 1;
            }
            for k in &a.created {
                let (st, _, _) = request(&mut s, "GET", &format!("/{k}"), "").unwrap();
                assert_eq!(st, 200, "round {round}: acknowledged create of {k} lost");
            }
        }
        // Write at full speed from WRITERS connections, then kill at a random moment.
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (w, &start) in next_value.iter().enumerate() {
            let (acked, stop) = (acked.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                    return 0;
                };
                let mut v = start;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 100_000 {
                    let body = format!(
                        "{{\"v\":{v},\"check\":{},\"pad\":\"{}\"}}",
                        v * 7,
                        "x".repeat((v % 50) as usize)
                    );
                    match request(&mut s, "POST", &format!("/crash/w{w}"), &body) {
                        Some((200, Some(rev), _)) => {
                            acked.lock().unwrap()[w].counter = Some((v, rev));
                            n += 1;
                        }
                        _ => return n,
                    }
                    if v % 10 == 0 {
                        let key = format!("crash/new/w{w}-{v}");
                        match request(&mut s, "POST", &format!("/{key}"), "1") {
                            Some((200, _, _)) => acked.lock().unwrap()[w].created.push(key),
                            _ => return n,
                        }
                    }
                    v += 1;
                }
                n
            }));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 350));
        // SIGKILL: no shutdown path runs.
        child.0.kill().expect("kill the server we started");
        let _ = child.0.wait();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            total_acks += t.join().unwrap();
        }
    }
    // Last check after the final kill.
    let port = free_port();
    let child = start(&dir, port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for (w, a) in acked.lock().unwrap().iter().enumerate() {
        if let Some((v, rev)) = a.counter {
            let (st, got_rev, body) = request(&mut s, "GET", &format!("/crash/w{w}"), "").unwrap();
            assert_eq!(st, 200);
            let data: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(data["data"]["v"].as_u64().unwrap() >= v && got_rev.unwrap() >= rev);
        }
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{ROUNDS} kills, {total_acks} acknowledged writes checked");
    assert!(
        total_acks > ROUNDS * 10,
        "the writers did write ({total_acks})"
    );
}

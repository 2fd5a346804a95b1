//! The four scenarios of docs/BENCHMARKS.md, each against any system: HTTP/SET write throughput, fan-out
//! delivery (latency, rate, lost, duplicated), idle subscriber memory, and bytes per update for a
//! small change to a large document. Every loop is bounded in count and time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::peers::{Running, System};
use crate::proto::{self, Http, Redis};

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// A log-linear latency histogram in µs, shared by many tasks (~1.5% resolution).
pub struct Hist {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Hist {
    pub fn new() -> Hist {
        Hist {
            buckets: (0..(1024 + 64 * 40)).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
    fn index(us: u64) -> usize {
        if us < 1024 {
            return us as usize;
        }
        let log = 63 - us.leading_zeros() as u64;
        (1024 + 64 * (log - 10) + ((us >> (log - 6)) & 63)) as usize
    }
    fn value(i: usize) -> u64 {
        if i < 1024 {
            return i as u64;
        }
        let log = (i - 1024) / 64 + 10;
        let sub = ((i - 1024) % 64) as u64;
        (1u64 << log) + (sub << (log - 6))
    }
    pub fn record(&self, us: u64) {
        let i = Hist::index(us).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
    pub fn percentile(&self, p: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let want = ((total as f64) * p).ceil() as u64;
        let mut acc = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Ordering::Relaxed);
            if acc >= want {
                return Hist::value(i) as f64 / 1000.0;
            }
        }
        self.max_ms()
    }
    pub fn max_ms(&self) -> f64 {
        self.max.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

/// Result of a write-throughput (or read-throughput) run.
#[derive(Debug, Clone, Default)]
pub struct Writes {
    pub ops_per_sec: f64,
    /// Acknowledged writes (or answered reads) in all.
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// N connections, each writing sequentially for `secs`: Stateline `POST /bench/w<c>`, Redis `SET`.
pub async fn writes(run: &Running, conns: usize, secs: f64) -> Result<Writes, String> {
    writes_to(run.system, &[run.addr], conns, secs).await
}

/// [`writes`] with the connections spread over several servers of one system (connection `c`
/// goes to `addrs[c % addrs.len()]`): the nodes of a cluster.
pub async fn writes_to(
    sys: System,
    addrs: &[SocketAddr],
    conns: usize,
    secs: f64,
) -> Result<Writes, String> {
    sequential(sys, addrs, conns, secs, false).await
}

/// N connections, each reading one key sequentially for `secs` (the value a write of the write
/// scenario stores, written once first): Stateline `GET /bench/r<c>`, Redis `GET`.
pub async fn reads(run: &Running, conns: usize, secs: f64) -> Result<Writes, String> {
    sequential(run.system, &[run.addr], conns, secs, true).await
}

// [`writes_to`], or with `read` each connection's key written once and then read.
async fn sequential(
    sys: System,
    addrs: &[SocketAddr],
    conns: usize,
    secs: f64,
    read: bool,
) -> Result<Writes, String> {
    let hist = Arc::new(Hist::new());
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, hist, errors) = (addrs[c % addrs.len()], hist.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let body = br#"{"m":"a small value of about forty bytes"}"#;
            let tally = |ok: bool, t: Instant| {
                if ok {
                    hist.record(t.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            };
            match sys {
                System::Stateline
                | System::StatelineDurable
                | System::Cluster1
                | System::Cluster3 => {
                    let mut h = Http::connect(addr).await.map_err(|e| e.to_string())?;
                    let path = format!("/bench/{}{c}", if read { "r" } else { "w" });
                    let json = "application/json";
                    if read {
                        let status = h.request_status("POST", &path, json, body).await;
                        if !matches!(status, Ok(200)) {
                            return Err(format!("reads: writing {path} first: {status:?}"));
                        }
                    }
                    let (method, sent): (&str, &[u8]) =
                        if read { ("GET", b"") } else { ("POST", body) };
                    while Instant::now() < stop {
                        let t = Instant::now();
                        let status = h.request_status(method, &path, json, sent).await;
                        tally(matches!(status, Ok(200)), t);
                    }
                }
                System::Redis | System::RedisAof => {
                    let mut r = Redis::connect(addr).await.map_err(|e| e.to_string())?;
                    let key = format!("bench:{}{c}", if read { "r" } else { "w" });
                    if read {
                        r.cmd(&[b"SET", key.as_bytes(), body])
                            .await
                            .map_err(|e| format!("reads: writing {key} first: {e}"))?;
                    }
                    while Instant::now() < stop {
                        let t = Instant::now();
                        let ok = if read {
                            r.bulk(&[b"GET", key.as_bytes()]).await.ok() == Some(body.len())
                        } else {
                            r.cmd(&[b"SET", key.as_bytes(), body]).await.is_ok()
                        };
                        tally(ok, t);
                    }
                }
                other => {
                    let what = if read { "reads" } else { "writes" };
                    return Err(format!("{what}: {} not supported", other.name()));
                }
            }
            Ok::<(), String>(())
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let el = start.elapsed().as_secs_f64();
    Ok(Writes {
        ops_per_sec: hist.count() as f64 / el,
        count: hist.count(),
        p50_ms: hist.percentile(0.5),
        p99_ms: hist.percentile(0.99),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// N connections, each sending `depth` writes at a time without waiting for their answers
/// (HTTP/1.1 pipelining; Redis: pipelined `SET`s), then reading the `depth` answers, for `secs`.
/// Returns acknowledged writes per second; any write not acknowledged is an error.
pub async fn writes_pipelined(
    run: &Running,
    conns: usize,
    depth: usize,
    secs: f64,
) -> Result<f64, String> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let (sys, addr) = (run.system, run.addr);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let body = br#"{"m":"a small value of about forty bytes"}"#;
            match sys {
                System::Stateline | System::StatelineDurable => {
                    let mut h = Http::connect(addr).await.map_err(|e| e.to_string())?;
                    let path = format!("/bench/p{c}");
                    while Instant::now() < stop {
                        let ok = h
                            .pipelined("POST", &path, "application/json", body, depth)
                            .await
                            .map_err(|e| e.to_string())?;
                        if ok != depth {
                            return Err(format!(
                                "{} of {depth} pipelined writes refused",
                                depth - ok
                            ));
                        }
                        done.fetch_add(depth as u64, Ordering::Relaxed);
                    }
                }
                System::Redis | System::RedisAof => {
                    let mut r = Redis::connect(addr).await.map_err(|e| e.to_string())?;
                    let key = format!("bench:p{c}");
                    while Instant::now() < stop {
                        r.pipelined(&[b"SET", key.as_bytes(), body], depth)
                            .await
                            .map_err(|e| e.to_string())?;
                        done.fetch_add(depth as u64, Ordering::Relaxed);
                    }
                }
                other => return Err(format!("pipelined writes: {} not supported", other.name())),
            }
            Ok::<(), String>(())
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Writes `keys` distinct Stateline keys `/<prefix>/k<i>` (a ~40-byte value each) over `conns`
/// keep-alive connections spread over `addrs`, each write waiting for its acknowledgement.
/// Returns the acknowledged writes per second; any refused write is an error.
pub async fn fill(
    addrs: &[SocketAddr],
    prefix: &str,
    keys: u64,
    conns: usize,
) -> Result<f64, String> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, prefix) = (addrs[c % addrs.len()], prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let mut h = Http::connect(addr).await.map_err(|e| e.to_string())?;
            let body = br#"{"m":"a small value of about forty bytes"}"#;
            let mut i = c as u64;
            while i < keys {
                let path = format!("/{prefix}/k{i:07}");
                match h
                    .request_status("POST", &path, "application/json", body)
                    .await
                {
                    Ok(200) => {}
                    Ok(s) => return Err(format!("fill: {path} answered {s}")),
                    Err(e) => return Err(format!("fill: {path}: {e}")),
                }
                i += conns as u64;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(keys as f64 / start.elapsed().as_secs_f64())
}

/// The 56-byte JSON object stored under key number `i` in [`stored_keys`].
pub fn stored_value(i: u64) -> String {
    format!(r#"{{"id":"u{i:07}","name":"user {i:07}","ok":false,"n":1}}"#)
}

/// Server memory per stored key: resident memory after writing `keys` distinct keys (each
/// holding [`stored_value`], a 56-byte JSON object) over `conns` connections, minus the resident
/// memory before, over `keys`. Stateline: `POST /mem/u<i>` (a plain set); Redis: `SET mem:u<i>`.
pub async fn stored_keys(run: &Running, keys: u64, conns: usize) -> Result<f64, String> {
    let before = run.rss();
    let (sys, addr) = (run.system, run.addr);
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut i = c as u64;
            match sys {
                System::Stateline | System::StatelineDurable => {
                    let mut h = Http::connect(addr).await.map_err(|e| e.to_string())?;
                    while i < keys {
                        let path = format!("/mem/u{i:07}");
                        let body = stored_value(i);
                        match h
                            .request_status("POST", &path, "application/json", body.as_bytes())
                            .await
                        {
                            Ok(200) => {}
                            Ok(s) => return Err(format!("stored_keys: {path} answered {s}")),
                            Err(e) => return Err(format!("stored_keys: {path}: {e}")),
                        }
                        i += conns as u64;
                    }
                }
                System::Redis | System::RedisAof => {
                    let mut r = Redis::connect(addr).await.map_err(|e| e.to_string())?;
                    while i < keys {
                        let key = format!("mem:u{i:07}");
                        r.cmd(&[b"SET", key.as_bytes(), stored_value(i).as_bytes()])
                            .await
                            .map_err(|e| format!("stored_keys: SET {key}: {e}"))?;
                        i += conns as u64;
                    }
                }
                other => return Err(format!("stored_keys: {} not supported", other.name())),
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    // Let the server finish what the last acknowledgements started (log trimming, frees).
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(run.rss().saturating_sub(before) as f64 / keys.max(1) as f64)
}

/// Result of a fan-out run.
#[derive(Debug, Clone, Default)]
pub struct Fanout {
    pub delivered_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Updates of state lost. For a system that promises every message (Redis, NATS, etcd):
    /// messages some subscriber never got. For Stateline, whose WebSocket frames coalesce
    /// (a subscriber behind gets one frame from its version to the current one): subscriber
    /// and key pairs that did not end at the key's last write.
    pub lost: u64,
    pub duplicated: u64,
    /// Messages a subscriber got after a later message of the same writer.
    pub out_of_order: u64,
    /// Messages folded away by coalescing (Stateline): written, never sent on their own, the
    /// subscriber got a later value of the key instead. Per subscriber, on average.
    pub skipped_per_sub: f64,
    /// Writes per second the writer achieved (it waits for each acknowledgement).
    pub writes_per_sec: f64,
    /// The writer's acknowledgement latency (send to answer; for NATS, the time to hand the
    /// message to the socket, as core NATS acknowledges nothing).
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
}

struct Seen {
    bits: Vec<u8>,
    unique: u64,
    dup: u64,
    out_of_order: u64,
    /// The newest message received of each writer.
    by_writer: Vec<Option<u64>>,
    /// The last message received for each key (one key, or the glob's 16).
    by_key: Vec<Option<u64>>,
}

/// Whether the system's subscribers may get a later state instead of every message (Stateline's
/// coalescing WebSocket frames); the others deliver every message.
fn coalesces(s: System) -> bool {
    matches!(
        s,
        System::Stateline | System::StatelineDurable | System::Cluster1 | System::Cluster3
    )
}

/// S subscribers on one key (or a glob over 16 keys), one writer sending `messages` values at
/// `rate` per second (0: as fast as acknowledged, with 4 writer connections).
pub async fn fanout(
    run: &Running,
    subs: usize,
    glob: bool,
    messages: u64,
    rate: u64,
    tag: &str,
) -> Result<Fanout, String> {
    let at = Endpoints {
        system: run.system,
        write: run.addr,
        subscribe: run.addr,
    };
    let writers = if rate == 0 { 4 } else { 1 };
    fanout_between(at, subs, glob, messages, rate, writers, tag).await
}

/// Where a fan-out run writes and where its subscribers are: the same server, or two nodes of
/// a cluster (a write on one, delivered by the other).
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub system: System,
    pub write: SocketAddr,
    pub subscribe: SocketAddr,
}

/// [`fanout`] with the writers on `at.write` and the subscribers on `at.subscribe`, and
/// `writers` writer connections sharing `rate` (each at `rate / writers`). Writer `w` sends
/// messages `w`, `w + writers`, …; with `glob`, message `i` goes to key `k<i % 16>`, so with 2,
/// 4, 8 or 16 writers no two writers share a key (a cluster orders each key's writes, and two
/// writers on one key would conflict).
#[allow(clippy::too_many_arguments)]
pub async fn fanout_between(
    at: Endpoints,
    subs: usize,
    glob: bool,
    messages: u64,
    rate: u64,
    writers: usize,
    tag: &str,
) -> Result<Fanout, String> {
    let acks = Arc::new(Hist::new());
    let hist = Arc::new(Hist::new());
    let last_delivery = Arc::new(AtomicU64::new(0));
    let total_unique = Arc::new(AtomicU64::new(0));
    let keys = if glob { 16 } else { 1 };
    let mut readies = Vec::new();
    let mut handles = Vec::new();
    let seen_all: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>> = Arc::new(Mutex::new(Vec::new()));
    let ns = format!("fan{tag}");
    for _ in 0..subs {
        let (tx, rx) = oneshot::channel();
        readies.push(rx);
        let seen = Arc::new(Mutex::new(Seen {
            bits: vec![0; messages as usize],
            unique: 0,
            dup: 0,
            out_of_order: 0,
            by_writer: vec![None; writers],
            by_key: vec![None; keys],
        }));
        seen_all.lock().unwrap().push(seen.clone());
        let (hist, last, total) = (hist.clone(), last_delivery.clone(), total_unique.clone());
        let on_marker = move |i: u64, t: u64| {
            let now = now_ns();
            let mut s = seen.lock().unwrap();
            if let Some(b) = s.bits.get_mut(i as usize) {
                if *b == 0 {
                    *b = 1;
                    s.unique += 1;
                    total.fetch_add(1, Ordering::Relaxed);
                    hist.record(now.saturating_sub(t) / 1000);
                    last.fetch_max(now, Ordering::Relaxed);
                    let w = i as usize % writers;
                    if s.by_writer[w].is_some_and(|j| j > i) {
                        s.out_of_order += 1;
                    } else {
                        s.by_writer[w] = Some(i);
                    }
                    s.by_key[i as usize % keys] = Some(i);
                } else {
                    s.dup += 1;
                }
            }
            s.unique < messages
        };
        let addr = at.subscribe;
        let sys = at.system;
        let ns = ns.clone();
        handles.push(tokio::spawn(async move {
            let go = on_marker;
            let mut more = true;
            let mut feed = |buf: &[u8]| {
                proto::scan(buf, |i, t| more = go(i, t) && more);
                more
            };
            let r = match sys {
                System::Stateline
                | System::StatelineDurable
                | System::Cluster1
                | System::Cluster3 => {
                    let path = if glob {
                        format!("/{ns}/*")
                    } else {
                        format!("/{ns}/k")
                    };
                    proto::tcp_subscribe(
                        addr,
                        proto::ws_upgrade(addr, &path),
                        b"\r\n\r\n",
                        &mut feed,
                        tx,
                    )
                    .await
                    .map_err(|e| e.to_string())
                }
                System::Redis | System::RedisAof => {
                    let hello = if glob {
                        proto::resp(&[b"PSUBSCRIBE", format!("{ns}:*").as_bytes()])
                    } else {
                        proto::resp(&[b"SUBSCRIBE", format!("{ns}:k").as_bytes()])
                    };
                    let ack: &'static [u8] = if glob { b"psubscribe" } else { b"subscribe" };
                    proto::tcp_subscribe(addr, hello, ack, &mut feed, tx)
                        .await
                        .map_err(|e| e.to_string())
                }
                System::Nats => {
                    let subj = if glob {
                        format!("{ns}.*")
                    } else {
                        format!("{ns}.k")
                    };
                    proto::nats_subscribe(addr, &subj, &mut feed, tx)
                        .await
                        .map_err(|e| e.to_string())
                }
                System::Etcd => {
                    let key = if glob {
                        format!("/{ns}/")
                    } else {
                        format!("/{ns}/k")
                    };
                    // Ready once etcd confirms the watch ("created"), not at the response headers.
                    let mut tx = Some(tx);
                    let f = |chunk: &[u8]| {
                        if chunk.windows(9).any(|w| w == b"\"created\"") {
                            if let Some(t) = tx.take() {
                                let _ = t.send(());
                            }
                        }
                        proto::scan_etcd(chunk, |i, t| more = go(i, t) && more, |_| {});
                        more
                    };
                    proto::etcd_watch(addr, &key, glob, f, oneshot::channel().0)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            r
        }));
    }
    for r in readies {
        tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .map_err(|_| "subscribers did not get ready in 30 s")?
            .map_err(|_| "a subscriber failed to connect")?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = now_ns();
    let mut wt = Vec::new();
    for w in 0..writers {
        let (addr, sys, ns, acks) = (at.write, at.system, ns.clone(), acks.clone());
        wt.push(tokio::spawn(async move {
            let mut http = None;
            let mut redis = None;
            let mut nats = None;
            match sys {
                System::Stateline
                | System::StatelineDurable
                | System::Cluster1
                | System::Cluster3
                | System::Etcd => {
                    http = Some(Http::connect(addr).await.map_err(|e| e.to_string())?)
                }
                System::Redis | System::RedisAof => {
                    redis = Some(Redis::connect(addr).await.map_err(|e| e.to_string())?)
                }
                System::Nats => {
                    use tokio::io::AsyncWriteExt;
                    let mut s = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| e.to_string())?;
                    s.set_nodelay(true).map_err(|e| e.to_string())?;
                    s.write_all(b"CONNECT {\"verbose\":false}\r\n")
                        .await
                        .map_err(|e| e.to_string())?;
                    nats = Some(s);
                }
            }
            let mut tick = (rate > 0).then(|| {
                tokio::time::interval(Duration::from_nanos(
                    1_000_000_000 * writers as u64 / rate.max(1),
                ))
            });
            let mut i = w as u64;
            while i < messages {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let k = if glob {
                    format!("k{}", i % 16)
                } else {
                    "k".to_string()
                };
                let sent = now_ns();
                let m = proto::marker(i, sent);
                match sys {
                    System::Stateline
                    | System::StatelineDurable
                    | System::Cluster1
                    | System::Cluster3 => {
                        let body = format!("{{\"m\":\"{m}\"}}");
                        let (s, b) = http
                            .as_mut()
                            .unwrap()
                            .request(
                                "POST",
                                &format!("/{ns}/{k}"),
                                "application/json",
                                body.as_bytes(),
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                        if s != 200 {
                            return Err(format!(
                                "write answered {s}: {}",
                                String::from_utf8_lossy(&b)
                            ));
                        }
                    }
                    System::Etcd => {
                        let body = format!(
                            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                            proto::b64(format!("/{ns}/{k}").as_bytes()),
                            proto::b64(m.as_bytes())
                        );
                        let (s, _) = http
                            .as_mut()
                            .unwrap()
                            .request("POST", "/v3/kv/put", "application/json", body.as_bytes())
                            .await
                            .map_err(|e| e.to_string())?;
                        if s != 200 {
                            return Err(format!("etcd put answered {s}"));
                        }
                    }
                    System::Redis | System::RedisAof => {
                        redis
                            .as_mut()
                            .unwrap()
                            .cmd(&[b"PUBLISH", format!("{ns}:{k}").as_bytes(), m.as_bytes()])
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    System::Nats => {
                        use tokio::io::AsyncWriteExt;
                        let s = nats.as_mut().unwrap();
                        s.write_all(format!("PUB {ns}.{k} {}\r\n{m}\r\n", m.len()).as_bytes())
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                acks.record((now_ns() - sent) / 1000);
                i += writers as u64;
            }
            if let Some(mut s) = nats {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // Flush: PING and wait for PONG, so every PUB above has reached the server.
                s.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
                let mut buf = [0u8; 256];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            }
            Ok::<(), String>(())
        }));
    }
    for t in wt {
        t.await.map_err(|e| e.to_string())??;
    }
    let writer_secs = (now_ns() - start) as f64 / 1e9;
    let expected = messages * subs as u64;
    // Where each key ended: with coalescing, what every subscriber must end at.
    let finals: Option<Vec<Option<u64>>> = if coalesces(at.system) {
        let mut http = Http::connect(at.write).await.map_err(|e| e.to_string())?;
        let mut f = Vec::new();
        for k in 0..keys {
            let path = if glob {
                format!("/{ns}/k{k}")
            } else {
                format!("/{ns}/k")
            };
            let (_, body) = http
                .request("GET", &path, "application/json", b"")
                .await
                .map_err(|e| e.to_string())?;
            let mut last = None;
            proto::scan(&body, |i, _| last = Some(i));
            f.push(last);
        }
        Some(f)
    } else {
        None
    };
    let all_final = || {
        finals.as_ref().is_some_and(|f| {
            seen_all
                .lock()
                .unwrap()
                .iter()
                .all(|s| s.lock().unwrap().by_key == *f)
        })
    };
    // Wait for deliveries to finish: until every subscriber has everything (or, with
    // coalescing, every key's last value), or nothing new for 3 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_total = 0;
    let mut still = Instant::now();
    while total_unique.load(Ordering::Relaxed) < expected
        && !all_final()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = total_unique.load(Ordering::Relaxed);
        if t != last_total {
            last_total = t;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    for h in &handles {
        h.abort();
    }
    let (mut unique, mut dup, mut out_of_order, mut not_final) = (0, 0, 0, 0);
    // Which messages went missing, and for how many subscribers: said when any did.
    let mut missed = std::collections::BTreeMap::<usize, u64>::new();
    for s in seen_all.lock().unwrap().iter() {
        let s = s.lock().unwrap();
        unique += s.unique;
        dup += s.dup;
        out_of_order += s.out_of_order;
        if let Some(f) = &finals {
            not_final += s.by_key.iter().zip(f).filter(|(a, b)| a != b).count() as u64;
        } else {
            for (i, _) in s.bits.iter().enumerate().filter(|(_, b)| **b == 0) {
                *missed.entry(i).or_default() += 1;
            }
        }
    }
    if !missed.is_empty() {
        let shown: Vec<String> = missed
            .iter()
            .take(12)
            .map(|(i, n)| format!("#{i} by {n}"))
            .collect();
        eprintln!(
            "   {} of {messages} messages missed by some subscriber: {}{}",
            missed.len(),
            shown.join(", "),
            if missed.len() > 12 { ", …" } else { "" }
        );
    }
    if not_final > 0 {
        eprintln!("   {not_final} subscriber keys did not end at the key's last write");
    }
    let elapsed = (last_delivery.load(Ordering::Relaxed).saturating_sub(start)) as f64 / 1e9;
    Ok(Fanout {
        delivered_per_sec: if elapsed > 0.0 {
            unique as f64 / elapsed
        } else {
            0.0
        },
        p50_ms: hist.percentile(0.5),
        p99_ms: hist.percentile(0.99),
        max_ms: hist.max_ms(),
        lost: if finals.is_some() {
            not_final
        } else {
            expected - unique
        },
        duplicated: dup,
        out_of_order,
        skipped_per_sub: if finals.is_some() {
            (expected - unique) as f64 / subs.max(1) as f64
        } else {
            0.0
        },
        writes_per_sec: messages as f64 / writer_secs.max(1e-9),
        ack_p50_ms: acks.percentile(0.5),
        ack_p99_ms: acks.percentile(0.99),
    })
}

/// Server memory per idle subscriber: RSS after opening `n` subscriptions minus RSS before, over n.
/// `sse` selects Stateline's SSE instead of its WebSocket.
pub async fn idle(run: &Running, n: usize, sse: bool, tag: &str) -> Result<f64, String> {
    let before = run.rss();
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut readies = Vec::new();
    let mut handles = Vec::new();
    for c in 0..n {
        let (tx, rx) = oneshot::channel();
        readies.push(rx);
        let (addr, sys, stop, tag) = (run.addr, run.system, stop.clone(), tag.to_string());
        handles.push(tokio::spawn(async move {
            let hold = async move {
                match sys {
                    System::Stateline
                    | System::StatelineDurable
                    | System::Cluster1
                    | System::Cluster3
                        if sse =>
                    {
                        let _ = proto::http_stream(
                            addr,
                            "GET",
                            &format!("/idle{tag}/k"),
                            "Accept: text/event-stream\r\n",
                            b"",
                            |_| true,
                            tx,
                        )
                        .await;
                    }
                    System::Stateline
                    | System::StatelineDurable
                    | System::Cluster1
                    | System::Cluster3 => {
                        let _ = proto::tcp_subscribe(
                            addr,
                            proto::ws_upgrade(addr, &format!("/idle{tag}/k")),
                            b"\r\n\r\n",
                            |_| true,
                            tx,
                        )
                        .await;
                    }
                    System::Redis | System::RedisAof => {
                        let _ = proto::tcp_subscribe(
                            addr,
                            proto::resp(&[b"SUBSCRIBE", format!("idle{tag}:k").as_bytes()]),
                            b"subscribe",
                            |_| true,
                            tx,
                        )
                        .await;
                    }
                    System::Nats => {
                        let _ = proto::nats_subscribe(addr, &format!("idle{tag}.k"), |_| true, tx)
                            .await;
                    }
                    System::Etcd => {
                        let key = format!("/idle{tag}/k");
                        let _ = proto::etcd_watch(addr, &key, false, |_| true, tx).await;
                    }
                }
            };
            tokio::select! {
                _ = hold => {}
                _ = stop.notified() => {}
            }
        }));
        if c % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut ok = 0;
    for r in readies {
        if tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            ok += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = run.rss();
    for h in &handles {
        h.abort();
    }
    stop.notify_waiters();
    tokio::time::sleep(Duration::from_millis(500)).await;
    if ok < n {
        return Err(format!("only {ok} of {n} subscriptions opened"));
    }
    Ok((after.saturating_sub(before)) as f64 / n as f64)
}

/// Bytes a subscriber receives per update when one small field of a ~100 KiB document changes.
pub async fn patch_bytes(run: &Running, updates: u64, tag: &str) -> Result<f64, String> {
    let fields: Vec<String> = (0..1600)
        .map(|i| format!("\"field{i:05}\":\"value-{i:032}-pad\""))
        .collect();
    let doc = |n: u64| format!("{{\"counter\":{n},{}}}", fields.join(","));
    let received = Arc::new(AtomicU64::new(0));
    let (tx, rx) = oneshot::channel();
    let (addr, sys) = (run.addr, run.system);
    let key = format!("doc{tag}");
    let first = doc(0);
    if matches!(
        sys,
        System::Stateline | System::StatelineDurable | System::Cluster1 | System::Cluster3
    ) {
        let (s, _) = Http::connect(addr)
            .await
            .map_err(|e| e.to_string())?
            .request(
                "POST",
                &format!("/{key}"),
                "application/json",
                first.as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if s != 200 {
            return Err(format!("initial write answered {s}"));
        }
    }
    let (r2, k2) = (received.clone(), key.clone());
    let sub = tokio::spawn(async move {
        let mut skip_first = matches!(
            sys,
            System::Stateline | System::StatelineDurable | System::Cluster1 | System::Cluster3
        );
        let mut count = |n: usize| {
            if skip_first {
                skip_first = false;
                return;
            }
            r2.fetch_add(n as u64, Ordering::Relaxed);
        };
        match sys {
            System::Stateline | System::StatelineDurable | System::Cluster1 | System::Cluster3 => {
                let _ = proto::ws_subscribe(
                    &format!("ws://{addr}/{k2}"),
                    |b| {
                        count(b.len());
                        true
                    },
                    tx,
                )
                .await;
            }
            System::Redis | System::RedisAof => {
                let _ = proto::tcp_subscribe(
                    addr,
                    proto::resp(&[b"SUBSCRIBE", k2.as_bytes()]),
                    b"subscribe",
                    |b| {
                        r2.fetch_add(b.len() as u64, Ordering::Relaxed);
                        true
                    },
                    tx,
                )
                .await;
            }
            System::Nats => {
                let count = |b: &[u8]| {
                    r2.fetch_add(b.len() as u64, Ordering::Relaxed);
                    true
                };
                let _ = proto::nats_subscribe(addr, &k2, count, tx).await;
            }
            System::Etcd => {
                let count = |b: &[u8]| {
                    r2.fetch_add(b.len() as u64, Ordering::Relaxed);
                    true
                };
                let _ = proto::etcd_watch(addr, &format!("/{k2}"), false, count, tx).await;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .map_err(|_| "subscriber not ready")?
        .map_err(|_| "subscriber failed")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = received.load(Ordering::Relaxed);
    let mut http = Http::connect(addr).await.map_err(|e| e.to_string())?;
    let mut redis = if matches!(sys, System::Redis | System::RedisAof) {
        Some(Redis::connect(addr).await.map_err(|e| e.to_string())?)
    } else {
        None
    };
    let mut nats = None;
    if sys == System::Nats {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"CONNECT {\"verbose\":false}\r\n")
            .await
            .map_err(|e| e.to_string())?;
        nats = Some(s);
    }
    for n in 1..=updates {
        let d = doc(n);
        match sys {
            System::Stateline | System::StatelineDurable | System::Cluster1 | System::Cluster3 => {
                http.request("POST", &format!("/{key}"), "application/json", d.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            System::Redis | System::RedisAof => {
                redis
                    .as_mut()
                    .unwrap()
                    .cmd(&[b"PUBLISH", key.as_bytes(), d.as_bytes()])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            System::Nats => {
                use tokio::io::AsyncWriteExt;
                nats.as_mut()
                    .unwrap()
                    .write_all(format!("PUB {key} {}\r\n{d}\r\n", d.len()).as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            System::Etcd => {
                let body = format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    proto::b64(format!("/{key}").as_bytes()),
                    proto::b64(d.as_bytes())
                );
                http.request("POST", "/v3/kv/put", "application/json", body.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sub.abort();
    Ok((received.load(Ordering::Relaxed) - before) as f64 / updates as f64)
}

/// What a WebSocket subscriber costs per update with and without compression.
#[derive(Debug, Clone, Copy)]
pub struct DeflateCost {
    /// Bytes on the wire (frame headers included) per update, per subscriber.
    pub wire_per_update: f64,
    /// Bytes on the wire of the first frame (the whole document).
    pub first_frame: f64,
    /// Server CPU per update, all subscribers included (µs).
    pub cpu_us_per_update: f64,
}

/// A ~100 KiB document (1,600 fields); `whole` changes every field's value with `n`, otherwise
/// only the counter.
fn big_doc(n: u64, whole: bool) -> String {
    let fields: Vec<String> = (0..1600)
        .map(|i| {
            if whole {
                format!("\"field{i:05}\":\"value-{i:032}-{n:08}\"")
            } else {
                format!("\"field{i:05}\":\"value-{i:032}-pad\"")
            }
        })
        .collect();
    format!("{{\"counter\":{n},{}}}", fields.join(","))
}

/// `subs` hand-made WebSocket subscribers of one ~100 KiB document on a Stateline server
/// started with `--ws-deflate`, offering compression (`offer`) or not, while one writer makes
/// `updates` changes (small or `whole`). Every compressed frame is inflated and parsed, so a
/// frame the server compressed wrong fails the run.
pub async fn deflate_cost(
    run: &Running,
    subs: usize,
    updates: u64,
    whole: bool,
    offer: bool,
    tag: &str,
) -> Result<DeflateCost, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = run.addr;
    let key = format!("deflate{tag}{}{}", u8::from(whole), u8::from(offer));
    let mut http = Http::connect(addr).await.map_err(|e| e.to_string())?;
    let (s, _) = http
        .request(
            "POST",
            &format!("/{key}"),
            "application/json",
            big_doc(0, whole).as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
    if s != 200 {
        return Err(format!("initial write answered {s}"));
    }
    let wire = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let firsts = Arc::new(AtomicU64::new(0));
    let failed: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..subs {
        let mut t = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let ext = if offer {
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"
        } else {
            ""
        };
        let head = format!("GET /{key} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n");
        t.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut h = Vec::new();
        while !h.ends_with(b"\r\n\r\n") {
            h.push(t.read_u8().await.map_err(|e| e.to_string())?);
        }
        let h = String::from_utf8_lossy(&h).to_ascii_lowercase();
        if !h.starts_with("http/1.1 101") || h.contains("permessage-deflate") != offer {
            return Err(format!("handshake: {h}"));
        }
        let (wire, first, frames, firsts, failed) = (
            wire.clone(),
            first.clone(),
            frames.clone(),
            firsts.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut t = tokio::io::BufReader::with_capacity(64 << 10, t);
            let mut got_first = false;
            loop {
                let mut hd = [0u8; 2];
                if t.read_exact(&mut hd).await.is_err() {
                    return;
                }
                let (len, extra) = match hd[1] & 0x7f {
                    126 => (u64::from(t.read_u16().await.unwrap_or(0)), 2),
                    127 => (t.read_u64().await.unwrap_or(0), 8),
                    n => (u64::from(n), 0),
                };
                let mut p = vec![0u8; len as usize];
                if t.read_exact(&mut p).await.is_err() {
                    return;
                }
                if hd[0] & 0x0f != 0x1 && hd[0] & 0x0f != 0x2 {
                    continue;
                }
                let bytes = 2 + extra + len;
                let plain = if hd[0] & 0x40 != 0 {
                    let mut d = flate2::Decompress::new(false);
                    p.extend_from_slice(&[0, 0, 0xff, 0xff]);
                    let mut out = Vec::with_capacity(256 << 10);
                    match d.decompress_vec(&p, &mut out, flate2::FlushDecompress::Sync) {
                        Ok(_) => out,
                        Err(e) => {
                            *failed.lock().unwrap() = Some(format!("inflate: {e}"));
                            return;
                        }
                    }
                } else {
                    p
                };
                if serde_json::from_slice::<serde_json::Value>(&plain).is_err() {
                    *failed.lock().unwrap() = Some("a frame that is not JSON".into());
                    return;
                }
                if got_first {
                    wire.fetch_add(bytes, Ordering::Relaxed);
                    frames.fetch_add(1, Ordering::Relaxed);
                } else {
                    got_first = true;
                    first.fetch_add(bytes, Ordering::Relaxed);
                    firsts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Every subscriber has its first frame (bounded).
    let ready = Instant::now();
    while firsts.load(Ordering::Relaxed) < subs as u64 {
        if ready.elapsed() > Duration::from_secs(10) || tasks.iter().any(|t| t.is_finished()) {
            return Err(format!(
                "{} of {subs} subscribers got the document",
                firsts.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first_total = first.load(Ordering::Relaxed);
    let cpu0 = crate::cluster::cpu_secs(run.pid);
    for n in 1..=updates {
        let (s, _) = http
            .request(
                "POST",
                &format!("/{key}"),
                "application/json",
                big_doc(n, whole).as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if s != 200 {
            return Err(format!("write answered {s}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Bounded wait for the deliveries to finish (every subscriber at the last update or 10 s).
    let done = Instant::now();
    while frames.load(Ordering::Relaxed) < updates * subs as u64
        && done.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = crate::cluster::cpu_secs(run.pid) - cpu0;
    for t in &tasks {
        t.abort();
    }
    if let Some(e) = failed.lock().unwrap().take() {
        return Err(e);
    }
    let got = frames.load(Ordering::Relaxed);
    if got == 0 {
        return Err("no update arrived".into());
    }
    Ok(DeflateCost {
        // Per update, per subscriber: coalescing may fold updates, so divide by what was sent.
        wire_per_update: wire.load(Ordering::Relaxed) as f64 / (updates as f64 * subs as f64),
        first_frame: first_total as f64 / subs as f64,
        cpu_us_per_update: cpu * 1e6 / updates as f64,
    })
}

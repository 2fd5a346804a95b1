//! # stateline-server
//!
//! The native server: a thin tokio/axum adapter around `stateline-core`. It owns sockets,
//! timers, limits and shutdown; every semantic decision (routes, status codes, frames, versions)
//! is the core's. Entry points: [`serve`] (run on a bound listener until a shutdown signal) and
//! the `stateline` binary (`src/main.rs`). The Rust client is its own crate, `stateline-client`.
//!
//! **Architecture invariant:** the engine lives behind one `std::sync::Mutex` that is never held
//! across an `.await`; frames are encoded once per pool by the core and the same bytes go to
//! every subscriber through bounded per-connection queues.

pub mod cluster;
pub mod config;
pub mod ext;
pub mod frames;
pub mod hub;
pub mod routes;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use stateline_core::Engine;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Cli, Command, ServeArgs};
pub use hub::Shared;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A flag has a bad value.
    #[error("configuration: {0}")]
    Config(String),
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The data folder or its database cannot be used.
    #[error("{0}")]
    Storage(String),
}

/// The router: one fallback handler, because the core decides what every path means.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(routes::entry).with_state(shared)
}

/// Opens the store `--data` names (or none with `--memory`) and builds the engine from it: the
/// keys, revisions, sequence numbers and change log as they were, so clients resume across a
/// restart.
pub fn open_store(
    args: &ServeArgs,
    clocks: &hub::Clocks,
    filters: stateline_core::Filters,
) -> Result<(Engine, Option<Arc<stateline_disk::Disk>>), ServeError> {
    let config = args.core_config();
    if !args.cluster.is_empty() {
        // Versions are the cluster stream's sequence numbers, from 1.
        let store = stateline_core::Store::new(0);
        return Ok((
            Engine::from_store(clocks.tick(), store, config, filters),
            None,
        ));
    }
    if args.memory {
        tracing::info!("--memory: no disk; state is gone when the server stops");
        return Ok((Engine::new(clocks.tick(), config, filters), None));
    }
    let started = std::time::Instant::now();
    let disk = stateline_disk::Disk::open(&args.data, config.log_entries)
        .map_err(|e| ServeError::Storage(e.to_string()))?;
    let (store, log) = disk
        .load(config.log_entries, config.log_bytes)
        .map_err(|e| ServeError::Storage(e.to_string()))?;
    tracing::info!(
        data = %disk.path().display(),
        keys = store.len(),
        log = log.len(),
        ms = started.elapsed().as_millis() as u64,
        "store loaded"
    );
    let engine = Engine::restore(clocks.tick(), store, log, config, filters);
    Ok((engine, Some(Arc::new(disk))))
}

/// Runs the server on `listener` until `signal` completes, then shuts down gracefully: stops
/// accepting, closes WebSockets with 1001 and ends SSE streams, and waits for in-flight requests
/// up to `--drain`. The same as `Server::builder().args(args).build()?.serve(..)`.
pub async fn serve(
    args: ServeArgs,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Server::builder()
        .args(args)
        .build()?
        .serve(listener, signal)
        .await
}

/// Why a registration on the [`Builder`] was refused (at registration, never a silent
/// first match).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A filter's pattern is bad, or a limit overlaps another.
    #[error("{0}")]
    Filter(#[from] stateline_core::filter::FilterError),
    /// An endpoint's path is bad or overlaps another.
    #[error("{0}")]
    Endpoint(#[from] ext::EndpointError),
}

/// An embeddable Stateline server (ooo's `ooo.Server`): filters, static mode, access rules, an
/// audit hook, custom endpoints and subscribe hooks, registered on a [`Builder`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use stateline_server::{Server, ServeArgs};
/// let server = Server::builder()
///     .args(ServeArgs::memory())
///     .open("books/*")?
///     .write("books/*", |_key, v| {
///         if v.get("title").is_some() { Ok(v) } else { Err("a book needs a title".into()) }
///     })?
///     .audit(|ev| if ev.path.starts_with("/admin") { Err("no".into()) } else { Ok(()) })
///     .static_mode(true)
///     .build()?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8800").await?;
/// server.serve(listener, stateline_server::shutdown_signal()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    args: ServeArgs,
    filters: stateline_core::Filters,
    ext: ext::Extensions,
}

/// Registers filters, rules, hooks and endpoints, then builds a [`Server`].
#[derive(Debug)]
pub struct Builder {
    args: ServeArgs,
    filters: stateline_core::Filters,
    ext: ext::Extensions,
}

use stateline_core::filter::{Limit, WriteOp};

impl Server {
    /// A builder with `stateline serve --memory` defaults.
    pub fn builder() -> Builder {
        Builder {
            args: ServeArgs::memory(),
            filters: stateline_core::Filters::new(),
            ext: ext::Extensions::default(),
        }
    }

    /// Runs until `signal` completes; see [`serve`].
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let args = self.args;
        let (stop_tx, stop_rx) = watch::channel(false);
        let limits = hub::Limits::from_args(&args);
        let clocks = hub::Clocks::new();
        let (engine, disk) = open_store(&args, &clocks, self.filters)?;
        let shared = Shared::new(engine, clocks, limits, stop_rx.clone());
        shared.lock().ext = Arc::new(self.ext);
        if let Some(disk) = disk {
            shared.attach_disk(disk);
        }
        if !args.cluster.is_empty() {
            // Until it has caught up with the cluster, the node answers 503 (`/_health` says
            // why), so a load balancer's health check keeps clients away.
            let cluster = cluster::Cluster::connect(&args).await?;
            let _ = shared.cluster.set(cluster.clone());
            let sh = shared.clone();
            tokio::spawn(async move { cluster.start(sh).await });
        }
        run_shared(args, shared, listener, signal, stop_tx, stop_rx).await
    }
}

impl Builder {
    /// Server settings (as the command line gives them); `--static`, `--open`, `--limit` and
    /// `--rules` add to what is registered here.
    pub fn args(mut self, args: ServeArgs) -> Builder {
        self.args = args;
        self
    }
    /// Access rules (as `--rules` loads them; see `stateline_core::rules`).
    pub fn rules(mut self, rules: stateline_core::Rules) -> Result<Builder, BuildError> {
        self.filters.set_rules(rules)?;
        Ok(self)
    }
    /// Static mode: only paths with a filter can be used.
    pub fn static_mode(mut self, on: bool) -> Builder {
        self.filters.set_static(on);
        self
    }
    /// Opens a pattern for every operation in static mode.
    pub fn open(mut self, pattern: &str) -> Result<Builder, BuildError> {
        self.filters.open(pattern)?;
        Ok(self)
    }
    /// Validates or rewrites values written under `pattern` (`Err` refuses with 400).
    pub fn write(
        mut self,
        pattern: &str,
        f: impl Fn(&str, serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync + 'static,
    ) -> Result<Builder, BuildError> {
        self.filters.write(pattern, Arc::new(f))?;
        Ok(self)
    }
    /// Told after every write or delete under `pattern`.
    pub fn after_write(
        mut self,
        pattern: &str,
        f: impl Fn(&str, WriteOp) + Send + Sync + 'static,
    ) -> Result<Builder, BuildError> {
        self.filters.after_write(pattern, Arc::new(f))?;
        Ok(self)
    }
    /// Rewrites or refuses a meta object read under `pattern`.
    pub fn read_object(
        mut self,
        pattern: &str,
        f: impl Fn(&str, serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync + 'static,
    ) -> Result<Builder, BuildError> {
        self.filters.read_object(pattern, Arc::new(f))?;
        Ok(self)
    }
    /// Rewrites or refuses a list read through the glob `pattern`.
    pub fn read_list(
        mut self,
        pattern: &str,
        f: impl Fn(&str, Vec<serde_json::Value>) -> Result<Vec<serde_json::Value>, String>
            + Send
            + Sync
            + 'static,
    ) -> Result<Builder, BuildError> {
        self.filters.read_list(pattern, Arc::new(f))?;
        Ok(self)
    }
    /// Allows or refuses deletes under `pattern`.
    pub fn delete(
        mut self,
        pattern: &str,
        f: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Result<Builder, BuildError> {
        self.filters.delete(pattern, Arc::new(f))?;
        Ok(self)
    }
    /// ooo's LimitFilter; a limit overlapping another is refused.
    pub fn limit(mut self, pattern: &str, limit: Limit) -> Result<Builder, BuildError> {
        self.filters.limit(pattern, limit)?;
        Ok(self)
    }
    /// The audit hook (request middleware): sees every request with its identity first;
    /// `Err(reason)` answers 401. Several hooks run in registration order.
    pub fn audit(
        mut self,
        f: impl Fn(&ext::AuditEvent<'_>) -> Result<(), String> + Send + Sync + 'static,
    ) -> Builder {
        self.ext.audit.push(Arc::new(f));
        self
    }
    /// A custom endpoint, listed at `/?api=endpoints`; overlapping paths are refused.
    pub fn endpoint(mut self, e: ext::Endpoint) -> Result<Builder, BuildError> {
        self.ext.add_endpoint(e)?;
        Ok(self)
    }
    /// Told before every subscription is joined; `Err(reason)` refuses it.
    pub fn on_subscribe(
        mut self,
        f: impl Fn(&stateline_core::Pattern, &stateline_core::Identity) -> Result<(), String>
            + Send
            + Sync
            + 'static,
    ) -> Builder {
        self.ext.on_subscribe.push(Arc::new(f));
        self
    }
    /// Told when a subscriber leaves a pattern.
    pub fn on_unsubscribe(
        mut self,
        f: impl Fn(&stateline_core::Pattern) + Send + Sync + 'static,
    ) -> Builder {
        self.ext.on_unsubscribe.push(Arc::new(f));
        self
    }
    /// Adds the command line's filters and builds the server.
    pub fn build(mut self) -> Result<Server, ServeError> {
        self.args
            .apply_filters(&mut self.filters)
            .map_err(ServeError::Config)?;
        Ok(Server {
            args: self.args,
            filters: self.filters,
            ext: self.ext,
        })
    }
}

/// The server's state, for custom endpoint handlers: read keys and run operations as a caller.
#[derive(Debug, Clone)]
pub struct State {
    sh: Arc<Shared>,
}

impl State {
    pub(crate) fn new(sh: Arc<Shared>) -> State {
        State { sh }
    }

    /// The value stored at `key` (rules do not apply: the handler decides). This is the live
    /// state, which may include writes whose commit is still pending (unlike HTTP reads, which
    /// wait for it); [`State::execute`] waits for it.
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        let hub = self.sh.lock();
        hub.engine.store().get(key).map(|e| (*e.data).clone())
    }

    /// Every key matching `pattern` (a key, glob or subtree `a/`) with its value, newest first
    /// (rules do not apply).
    pub fn list(&self, pattern: &str) -> Vec<(String, serde_json::Value)> {
        let Ok(p) = stateline_core::Pattern::from_http_path(&format!("/{pattern}"), true) else {
            return Vec::new();
        };
        let hub = self.sh.lock();
        hub.engine
            .store()
            .list(&p)
            .into_iter()
            .map(|(k, e)| (k.to_string(), (*e.data).clone()))
            .collect()
    }

    /// Runs an operation as `who` (use `Identity::System` to bypass the rules), waits until it
    /// is durable and published, and returns what it did.
    pub async fn execute(
        &self,
        op: stateline_core::Op,
        who: &stateline_core::Identity,
    ) -> Result<stateline_core::Applied, stateline_core::Error> {
        if let Some(cluster) = self.sh.cluster.get() {
            let r = cluster
                .write(&self.sh, |hub, tick| cluster::Step::op(hub, tick, &op, who))
                .await;
            return match r {
                Ok((Ok(mut a), seq)) => {
                    if let Some(seq) = seq {
                        a.restamp(seq);
                    }
                    Ok(a)
                }
                Ok((Err(e), _)) => Err(e),
                Err(e) => Err(stateline_core::Error::Storage(e)),
            };
        }
        let tick = self.sh.tick();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let wake;
        let applied = {
            let mut hub = self.sh.lock();
            let r = hub.engine.execute(tick, op, who);
            hub.log_denials();
            let mut a = r?;
            let changes = std::mem::take(&mut a.changes);
            wake = hub::sets_expiry(&changes);
            self.sh.persist(
                &mut hub,
                changes.clone(),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            a.changes = changes;
            a
        };
        if wake {
            self.sh.ttl_wake.notify_one();
        }
        match rx.await {
            Ok(Ok(())) => Ok(applied),
            Ok(Err(e)) => Err(stateline_core::Error::Storage(e)),
            Err(_) => Err(stateline_core::Error::Storage(
                "the commit was dropped".into(),
            )),
        }
    }
}

/// Says at start what is on, so an operator sees a missing flag before a client does.
fn log_settings(args: &ServeArgs, shared: &Shared) {
    let rules = shared.lock().engine.filters().rules().map(|r| r.len());
    let storage = if !args.cluster.is_empty() {
        format!(
            "cluster: JetStream stream {} on {} ({} replicas asked)",
            args.cluster_stream,
            args.cluster.join(","),
            args.cluster_replicas
        )
    } else if args.memory {
        "memory (--memory: gone when the server stops)".to_string()
    } else {
        format!("{}", args.data.join("stateline.redb").display())
    };
    tracing::info!(
        storage = %storage,
        rules = %match (&args.rules, rules) {
            (Some(p), Some(n)) => format!("{} ({n} rules)", p.display()),
            _ => "off: every key is open to everyone (--rules FILE)".to_string(),
        },
        backups = if args.backup_token.is_some() { "on (GET /_backup)" } else { "off (--backup-token)" },
        origins = %args.allow_origin.join(","),
        static_mode = args.static_mode,
        max_body = args.max_body,
        "settings"
    );
    if rules == Some(0) {
        tracing::warn!(
            "the rules file has no [[rule]]: a key no rule matches is closed, so every request will be refused"
        );
    }
}

async fn run_shared(
    args: ServeArgs,
    shared: Arc<Shared>,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let timers = tokio::spawn(timer_task(shared.clone()));
    log_settings(&args, &shared);
    tracing::info!(addr = %listener.local_addr()?, "listening");

    let max_connections = args.max_connections.unwrap_or_else(default_max_connections);
    tracing::info!(max_connections, "connection limit");
    let server = accept_loop(
        listener,
        shared.clone(),
        stop_rx.clone(),
        args.header_timeout,
        max_connections.max(1),
    );
    let drain = args.drain;
    let stopper = async move {
        signal.await;
        tracing::info!(drain_secs = drain.as_secs_f64(), "shutting down");
        let _ = stop_tx.send(true);
        tokio::time::sleep(drain).await;
        stop_tx
    };
    tokio::select! {
        r = server => r?,
        _stop_tx = stopper => tracing::warn!("drain deadline passed with requests still open"),
    }
    // Upgraded sockets are not tracked by the HTTP server: wait for their tasks to send 1001.
    let deadline = tokio::time::Instant::now() + drain;
    while shared.live() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    timers.abort();
    tracing::info!(open = shared.live(), "stopped");
    Ok(())
}

/// File descriptors kept out of `--max-connections`' default: the store, the listener, standard
/// streams, a backup download, and the short-lived 503 answers to connections over the limit
/// ([`REFUSING`]). Redis keeps 32; the 503 answers need their own.
const FD_RESERVE: usize = 64;

/// Connections over the limit being answered 503 at once; past this many they are closed
/// without an answer (a flood must not spend the reserve).
const REFUSING: usize = 32;

/// How often, at most, the connection limit is logged while it refuses connections.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long a connection over the limit may take to send its request head before it is closed
/// without its 503 (it must not hold a descriptor for the whole `--header-timeout`).
const REFUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Raises the soft open-file limit to the hard limit (as Redis and nginx do), so the default
/// `--max-connections` is not the distribution's 1024. Returns the soft limit now in force;
/// `None` where it cannot be read.
pub fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            fd_limit()
        }
    }
}

/// The soft open-file limit in force (`None` where there is none or it cannot be read).
fn fd_limit() -> Option<u64> {
    if !rlimit::Resource::NOFILE.is_supported() {
        return None;
    }
    rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
}

/// `--max-connections` when not given: the open-file limit minus a reserve of 64 (at least 16);
/// 10,000 (Redis' `maxclients`) where the platform has no such limit or it is unlimited.
pub fn default_max_connections() -> usize {
    match fd_limit() {
        Some(n) if n < u64::from(u32::MAX) => (n as usize).saturating_sub(FD_RESERVE).max(16),
        _ => 10_000,
    }
}

/// A client connection that holds one of the `--max-connections` slots until it is closed
/// (after an upgrade too: the upgraded socket owns it).
struct Counted<T> {
    io: T,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Answers a connection over the limit: reads its request head (so closing does not reset the
/// answer away), sends the core's 503 with `Retry-After`, and closes, all within
/// [`REFUSE_TIMEOUT`].
async fn refuse_connection(io: tokio::net::TcpStream) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        let r = stateline_core::http::too_many_connections(1);
        Ok::<_, std::convert::Infallible>(r.map(http_body_util::Full::new))
    });
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(REFUSE_TIMEOUT);
    let conn = b.serve_connection(TokioIo::new(io), svc);
    let _ = tokio::time::timeout(REFUSE_TIMEOUT * 2, conn).await;
}

/// Accepts connections and serves HTTP/1.1 on each (with upgrades for WebSockets) until `stop`
/// flips, then asks every connection to finish its current request and waits for them all.
/// Unlike `axum::serve`, hyper gets a timer here, so a client that sends its request headers too
/// slowly (slowloris) is dropped after `header_timeout`. Requests go straight to
/// [`routes::serve_request`]: the core routes every path, so a router in front of it (the
/// [`router`] for embedding) would only add a boxed service call per request.
///
/// At most `max_connections` client connections are open at once (WebSockets and SSE streams
/// included); one more is answered 503 at once and closed (Redis' `maxclients`).
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
    max_connections: usize,
) -> Result<(), std::io::Error> {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};

    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let refusing = Arc::new(tokio::sync::Semaphore::new(REFUSING));
    // Logged when the limit is first reached, then at most once a minute while connections are
    // refused (with how many were), so a flood does not flood the log.
    let mut warned: Option<tokio::time::Instant> = None;
    let mut refused = 0u64;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (io, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = io.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if warned.is_none_or(|t| t.elapsed() >= LIMIT_LOG_EVERY) {
                warned = Some(tokio::time::Instant::now());
                tracing::warn!(
                    max_connections,
                    refused,
                    "connection limit reached: new connections get 503 until one closes"
                );
                refused = 0;
            }
            // Answered outside `conns`: shutdown does not wait for them, and a flood of them
            // beyond `REFUSING` is closed without an answer.
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse_connection(io).await;
                    drop(permit);
                });
            }
            continue;
        };
        let io = Counted { io, _slot: slot };
        let sh = shared.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let sh = sh.clone();
            async move {
                let r = routes::serve_request(sh, req.map(axum::body::Body::new)).await;
                Ok::<_, std::convert::Infallible>(r)
            }
        });
        let mut conn_stop = stop.clone();
        conns.spawn(async move {
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = b.serve_connection(TokioIo::new(io), svc).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // The guard `wait_for` returns is dropped inside, before the next await.
                _ = async { drop(conn_stop.wait_for(|s| *s).await) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// The one timer task: clock correction and the clock stream once a second, and TTL expiry at
/// the next deadline (re-read after every write).
async fn timer_task(sh: Arc<Shared>) {
    let second = Duration::from_secs(1);
    let mut next_clock = tokio::time::Instant::now() + second;
    loop {
        let ttl_in = {
            let tick = sh.tick();
            let mut hub = sh.lock();
            if tokio::time::Instant::now() >= next_clock {
                hub.engine.correct_clock(tick);
                hub.clock_tick(tick);
                // A second from this tick, not from the one due: after a stall (a loaded machine)
                // the clock stream resumes at its pace instead of sending the missed ticks in a
                // burst.
                next_clock = tokio::time::Instant::now() + second;
            }
            // In a cluster, expiry is proposed to JetStream like any delete (once per key for
            // the cluster) and applied when the stream delivers it.
            if let Some(cluster) = sh.cluster.get() {
                cluster.expire(&hub, tick);
            }
            // While the store is failing, expiry waits for it (checked once a second): each
            // attempt would be rolled back, and the keys would expire again at once.
            let expired = if hub.storage_error().is_some() || sh.cluster.get().is_some() {
                Vec::new()
            } else {
                hub.engine.handle_timeout(tick)
            };
            if !expired.is_empty() {
                let n = expired.len();
                sh.persist(
                    &mut hub,
                    expired,
                    Box::new(move |r| {
                        if let Err(e) = r {
                            // Rolled back: the keys come back and expire at the next deadline.
                            tracing::error!(error = %e, keys = n, "TTL expiry could not be committed");
                        }
                    }),
                );
            }
            if hub.storage_error().is_some() {
                None
            } else {
                hub.engine.timeout_in(tick)
            }
        };
        let mut wake = next_clock;
        // A cluster's expiry in flight is waited for (the delete arrives through the stream),
        // not proposed again every millisecond.
        let least = match sh.cluster.get() {
            Some(c) if c.expiring() => 50_000_000,
            _ => 1_000_000,
        };
        if let Some(ns) = ttl_in {
            wake = wake.min(tokio::time::Instant::now() + Duration::from_nanos(ns.max(least)));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = sh.ttl_wake.notified() => {}
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

//! Listening: the accept loop with its connection limit, the timers (TTL expiry, the clock
//! stream), the settings logged at start, and shutdown.

use super::*;

/// Says at start what is on, so an operator sees a missing flag before a client does.
pub(crate) fn log_settings(args: &ServeArgs, shared: &Shared) {
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
        ws_compression = if args.ws_deflate { "on (permessage-deflate)" } else { "off (--ws-deflate)" },
        "settings"
    );
    if rules == Some(0) {
        tracing::warn!(
            "the rules file has no [[rule]]: a key no rule matches is closed, so every request will be refused"
        );
    }
}

pub(crate) async fn run_shared(
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
    // A clean stop leaves redb holding every acknowledged write, so the next start has no
    // write-ahead records to apply (a stop without it loses nothing: the start applies them).
    if let Some(disk) = shared.disk.get().cloned() {
        match tokio::task::spawn_blocking(move || disk.checkpoint()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the last checkpoint failed; the next start applies the write-ahead log")
            }
            Err(e) => tracing::warn!(error = %e, "the last checkpoint did not run"),
        }
    }
    tracing::info!(open = shared.live(), "stopped");
    Ok(())
}

/// File descriptors kept out of `--max-connections`' default: the store, the listener, standard
/// streams, a backup download, and the short-lived 503 answers to connections over the limit
/// ([`REFUSING`]). Redis keeps 32; the 503 answers need their own.
pub(crate) const FD_RESERVE: usize = 64;

/// Connections over the limit being answered 503 at once; past this many they are closed
/// without an answer (a flood must not spend the reserve).
pub(crate) const REFUSING: usize = 32;

/// How often, at most, the connection limit is logged while it refuses connections.
pub(crate) const LIMIT_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long a connection over the limit may take to send its request head before it is closed
/// without its 503 (it must not hold a descriptor for the whole `--header-timeout`).
pub(crate) const REFUSE_TIMEOUT: Duration = Duration::from_secs(2);

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
pub(crate) fn fd_limit() -> Option<u64> {
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

/// A client connection's socket, as an SSE stream takes it over from hyper.
pub(crate) type Socket = Counted<tokio::net::TcpStream>;

/// What a connection's IO shares with its requests (see [`crate::handoff`]).
pub(crate) type ConnHandoff = handoff::Handoff<Socket>;

/// A client connection that holds one of the `--max-connections` slots until it is closed
/// (after an upgrade too: the upgraded socket owns it).
pub(crate) struct Counted<T> {
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
pub(crate) async fn refuse_connection(io: tokio::net::TcpStream) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        let r = stateline_core::web::too_many_connections(1);
        Ok::<_, std::convert::Infallible>(r.map(http_body_util::Full::new))
    });
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(REFUSE_TIMEOUT);
    let conn = b.serve_connection(TokioIo::new(io), svc);
    let _ = tokio::time::timeout(REFUSE_TIMEOUT * 2, conn).await;
}

/// Caps the bytes the kernel keeps unsent for `io` (see `--unsent`); Linux only, ignored elsewhere
/// and when it fails (the kernel's default stays).
fn unsent_limit(io: &tokio::net::TcpStream, bytes: u32) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if bytes > 0 {
        if let Err(e) = socket2::SockRef::from(io).set_tcp_notsent_lowat(bytes) {
            tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (io, bytes);
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
pub(crate) async fn accept_loop(
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
        unsent_limit(&io, shared.limits.unsent);
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
        let hand = ConnHandoff::new();
        let io = handoff::Detachable::new(Counted { io, _slot: slot }, hand.clone());
        let sh = shared.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let sh = sh.clone();
            let hand = hand.clone();
            async move {
                // Parsed behind an SSE request that took the socket: never served, and hyper
                // closes its side of the connection.
                if hand.taken() {
                    return Err(std::io::Error::other(
                        "a request pipelined behind an SSE stream",
                    ));
                }
                let r = routes::serve_on(sh, req.map(axum::body::Body::new), Some(&hand)).await;
                Ok(r)
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
pub(crate) async fn timer_task(sh: Arc<Shared>) {
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

//! # stateline-server
//!
//! The native server: a thin tokio/axum adapter around `stateline-core`. It owns sockets,
//! timers, limits and shutdown; every semantic decision (routes, status codes, frames, versions)
//! is the core's. Entry points: [`serve`] (run on a bound listener until a shutdown signal), the
//! `stateline` binary (`src/main.rs`), and [`client`], the Rust client used by the conformance
//! suite.
//!
//! **Architecture invariant:** the engine lives behind one `std::sync::Mutex` that is never held
//! across an `.await`; frames are encoded once per pool by the core and the same bytes go to
//! every subscriber through bounded per-connection queues.

pub mod client;
pub mod config;
pub mod hub;
pub mod routes;
pub mod script;
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
/// up to `--drain`.
pub async fn serve(
    args: ServeArgs,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let filters = args.filters().map_err(ServeError::Config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = hub::Limits::from_args(&args);
    let clocks = hub::Clocks::new();
    let (engine, disk) = open_store(&args, &clocks, filters)?;
    let shared = Shared::new(engine, clocks, limits, stop_rx.clone());
    if let Some(disk) = disk {
        shared.attach_disk(disk);
    }
    let timers = tokio::spawn(timer_task(shared.clone()));
    let app = router(shared.clone());
    tracing::info!(addr = %listener.local_addr()?, "listening");

    let server = accept_loop(listener, app, stop_rx.clone(), args.header_timeout);
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

/// Accepts connections and serves HTTP/1.1 on each (with upgrades for WebSockets) until `stop`
/// flips, then asks every connection to finish its current request and waits for them all.
/// Unlike `axum::serve`, hyper gets a timer here, so a client that sends its request headers too
/// slowly (slowloris) is dropped after `header_timeout`.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) -> Result<(), std::io::Error> {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

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
        let svc = TowerToHyperService::new(app.clone());
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
                next_clock += second;
            }
            let expired = hub.engine.handle_timeout(tick);
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
            hub.engine.timeout_in(tick)
        };
        let mut wake = next_clock;
        if let Some(ns) = ttl_in {
            wake = wake.min(tokio::time::Instant::now() + Duration::from_nanos(ns.max(1_000_000)));
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

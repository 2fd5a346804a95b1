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
    /// The socket or the data folder failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The router: one fallback handler, because the core decides what every path means.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(routes::entry).with_state(shared)
}

/// Prepares `--data` (until durable storage lands, issue 6: the folder and a marker file).
fn prepare_data(args: &ServeArgs) -> Result<(), ServeError> {
    if args.memory {
        tracing::info!("--memory: no disk; state is gone when the server stops");
        return Ok(());
    }
    std::fs::create_dir_all(&args.data)?;
    let marker = args.data.join("STATELINE");
    if !marker.exists() {
        std::fs::write(
            &marker,
            "Stateline data folder. Durable storage arrives with issue 6; until then the server keeps state in memory.\n",
        )?;
    }
    tracing::warn!(data = %args.data.display(), "durable storage is not wired in yet (issue 6): state is kept in memory");
    Ok(())
}

/// Runs the server on `listener` until `signal` completes, then shuts down gracefully: stops
/// accepting, closes WebSockets with 1001 and ends SSE streams, and waits for in-flight requests
/// up to `--drain`.
pub async fn serve(
    args: ServeArgs,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    prepare_data(&args)?;
    let filters = args.filters().map_err(ServeError::Config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = hub::Limits::from_args(&args);
    let clocks = hub::Clocks::new();
    let engine = Engine::new(clocks.tick(), args.core_config(), filters);
    let shared = Shared::new(engine, clocks, limits, stop_rx.clone());
    let timers = tokio::spawn(timer_task(shared.clone()));
    let app = router(shared.clone());
    tracing::info!(addr = %listener.local_addr()?, "listening");

    let mut graceful = stop_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|s| *s).await;
    });
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
            hub.commit(&expired);
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

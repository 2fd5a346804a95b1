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
pub mod deflate;
mod embed;
pub mod ext;
pub mod frames;
mod handoff;
pub mod hub;
mod listen;
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
pub use embed::{BuildError, Builder, Server, State};
pub use hub::Shared;
use listen::*;
pub use listen::{default_max_connections, raise_fd_limit, shutdown_signal};

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
    let limits = config.history;
    let limits_receipts = config.receipts;
    let mut engine = Engine::restore(clocks.tick(), store, log, config, filters);
    let history = disk
        .load_history(limits)
        .map_err(|e| ServeError::Storage(e.to_string()))?;
    engine.restore_history(history);
    let receipts = disk
        .load_receipts(limits_receipts)
        .map_err(|e| ServeError::Storage(e.to_string()))?;
    engine.restore_receipts(receipts);
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

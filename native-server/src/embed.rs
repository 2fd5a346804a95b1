//! The embedding API: [`Server::builder`] registers filters, rules, hooks and endpoints;
//! [`State`] is what a custom endpoint's handler reads and writes through.

use super::*;

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
        let ext = Arc::new(self.ext);
        let _ = shared.ext.set(ext.clone());
        shared.lock().ext = ext;
        if let Some(disk) = disk {
            shared.attach_disk(disk);
        }
        if !args.cluster.is_empty() {
            // Until it has caught up with the cluster, the node answers 503 (`/_health` says
            // why), so a load balancer's health check keeps clients away.
            let cluster = cluster::Cluster::connect(&args).await?;
            // The stream orders every write: after-write hooks and key history follow the
            // ordered changes, not this node's proposals.
            shared.lock().engine.order_elsewhere();
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
        hub.engine.store().get(key).map(|e| e.data().clone())
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
            .map(|(k, e)| (k.to_string(), e.data().clone()))
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

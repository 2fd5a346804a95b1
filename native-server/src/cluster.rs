//! Cluster mode (`--cluster`): NATS JetStream orders and stores every change, and every node
//! applies them in that order, its own included.
//!
//! Owns the NATS side only: connecting, the stream, publishing a write's messages with their
//! preconditions (`Nats-Expected-Last-Subject-Sequence`; an operation on several keys as one
//! atomic batch), the consumer that applies the stream, and waiting for it. What a write becomes,
//! its preconditions and how a delivered message changes the store are the core's
//! ([`stateline_core::replica`]).
//!
//! The write path: under the hub lock the operation runs as on one node and is taken back at
//! once (nobody saw it); its messages go to JetStream; once JetStream acknowledges them (stored
//! on the configured replicas) and this node's consumer has applied them, the client is answered
//! (so it reads its own write here). If another node changed one of the keys first, JetStream
//! refuses the batch: the node catches up and computes the operation again (a compare-and-swap
//! the client asked for is then judged on the current value, and may answer 409).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use jetstream_extra::batch_publish::BatchPublishExt;
use stateline_core::replica::{self, Delivered, Write};
use stateline_core::{Change, Identity, Tick};
use tokio::sync::watch;

use crate::hub::{Hub, Shared};
use crate::{ServeArgs, ServeError};

/// How long one publish attempt or JetStream API call waits for its answer. A single write is
/// tried again with the same `Nats-Msg-Id` (stored at most once) until `ELECTION_GRACE`, so an
/// attempt sent to a stream leader that just died costs this, not the whole election.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an atomic batch's commit waits for its acknowledgement. A batch cannot be
/// deduplicated, so it is not retried after its commit was sent: it waits out an election.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write keeps retrying while JetStream has no stream leader (a NATS server of the
/// cluster went away and the others are electing one, which takes a few seconds).
const ELECTION_GRACE: Duration = Duration::from_secs(15);

/// How long a write waits for the NATS client to reconnect before it answers 503.
const RECONNECT_GRACE: Duration = Duration::from_secs(2);

/// The timeout of creating the consumer (retried until it succeeds).
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a change JetStream acknowledged may take to come back through this node's consumer
/// before the consumer is restarted (normally well under a millisecond).
const STALL: Duration = Duration::from_secs(1);

/// How many times one operation is computed again after another node changed its keys first,
/// before it answers 503 (a key written by many nodes at once). Each attempt first catches up
/// with the stream, so one attempt is usually enough.
const MAX_ATTEMPTS: u32 = 100;

/// How many changes of each key the stream keeps. Only the latest is needed for the state; the
/// ones before it let a node whose consumer is behind (by up to this many writes to one key)
/// still deliver every change to its subscribers instead of skipping to the latest. Catching up
/// reads at most this many messages per key.
const HISTORY: i64 = 64;

/// JetStream's limit on the messages of one atomic batch: an operation that changes more keys
/// (a glob delete of many keys) is refused in cluster mode.
pub const MAX_BATCH: usize = 1000;

/// How often catching up reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A node's link to the cluster.
#[derive(Debug)]
pub struct Cluster {
    client: async_nats::Client,
    js: jetstream::Context,
    js_consumer: jetstream::Context,
    stream: String,
    // Subjects are `<prefix>.<key token>`.
    prefix: String,
    // The sequence number of the last change this node applied.
    applied: watch::Sender<u64>,
    // Whether the node caught up with the stream at start.
    ready: AtomicBool,
    // Batch ids: this node's random part and a counter.
    nonce: u64,
    counter: AtomicU64,
    // Keys whose expiry this node is proposing (each proposed once at a time).
    expiring: Mutex<std::collections::HashSet<stateline_core::store::Key>>,
    // Notified when the NATS client (re)connects.
    reconnected: Arc<tokio::sync::Notify>,
}

/// Why a write could not be ordered.
#[derive(Debug)]
pub enum Refusal {
    /// Another node changed one of its keys first: catch up and compute it again.
    Conflict,
    /// JetStream did not take it (unreachable, no leader, timed out): answer 503 with this.
    Unavailable(String),
}

/// What one attempt at an operation gave: the answer as computed on this node's state, the
/// changes it made (empty for a read or a refusal), and whether a refusal may come from a state
/// older than the cluster's.
pub struct Step<T> {
    /// The answer.
    pub answer: T,
    /// The changes, applied to the engine under the lock (taken back before publishing).
    pub changes: Vec<Change>,
    /// A refusal that catching up may change (not found, failed precondition).
    pub stale: bool,
}

impl Step<Result<stateline_core::Applied, stateline_core::Error>> {
    /// One attempt at a typed operation (`/_ws`, the embedding API) for `who`.
    pub fn op(hub: &mut Hub, tick: Tick, op: &stateline_core::Op, who: &Identity) -> Self {
        let r = hub.engine.execute(tick, op.clone(), who);
        hub.log_denials();
        match r {
            Ok(mut a) => Step {
                changes: std::mem::take(&mut a.changes),
                answer: Ok(a),
                stale: false,
            },
            Err(e) => Step {
                stale: e.may_be_stale(),
                answer: Err(e),
                changes: Vec::new(),
            },
        }
    }
}

impl Cluster {
    /// Connects to NATS and makes sure the stream exists with the settings cluster mode needs.
    /// Retries while NATS is unreachable (a node may start before NATS), logging each attempt.
    pub async fn connect(args: &ServeArgs) -> Result<Arc<Cluster>, ServeError> {
        let mut servers = Vec::new();
        for url in &args.cluster {
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s));
            let addr = url.parse::<async_nats::ServerAddr>().ok().filter(|_| ok);
            match addr {
                Some(a) => servers.push(a),
                None => {
                    return Err(ServeError::Config(format!(
                        "--cluster {url}: give NATS server URLs like nats://127.0.0.1:4222"
                    )))
                }
            }
        }
        let urls = args.cluster.join(",");
        let reconnected = Arc::new(tokio::sync::Notify::new());
        // The first connection is not a reconnection: the consumer starts after it anyway.
        let connected_before = Arc::new(AtomicBool::new(false));
        let mut attempt = 0u32;
        let client = loop {
            let on_connect = reconnected.clone();
            let before = connected_before.clone();
            attempt += 1;
            let mut opts = async_nats::ConnectOptions::new()
                .name(format!("stateline {}", args.addr))
                .connection_timeout(Duration::from_secs(5))
                // Reconnects forever: while NATS is away writes answer 503 and reads go on.
                .max_reconnects(None)
                .event_callback(move |e| {
                    let on_connect = on_connect.clone();
                    let before = before.clone();
                    async move {
                    match e {
                        async_nats::Event::Connected => {
                            tracing::info!("cluster: NATS connected");
                            // The consumer may have been on the server that went away: it
                            // resubscribes at once instead of waiting for missed heartbeats.
                            if before.swap(true, Ordering::AcqRel) {
                                on_connect.notify_one();
                            }
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("cluster: NATS disconnected; writes answer 503 until it is back")
                        }
                        other => tracing::info!(event = %other, "cluster: NATS"),
                    }
                    }
                });
            if let Some(f) = &args.cluster_creds {
                opts = opts.credentials_file(f).await.map_err(|e| {
                    ServeError::Config(format!("--cluster-creds {}: {e}", f.display()))
                })?;
            }
            if let (Some(u), Some(p)) = (&args.cluster_user, &args.cluster_password) {
                opts = opts.user_and_password(u.clone(), p.clone());
            }
            if let Some(t) = &args.cluster_token {
                opts = opts.token(t.clone());
            }
            match opts.connect(servers.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(attempt, servers = %urls, error = %e, "cluster: cannot reach NATS yet; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        // Creating the consumer again after a NATS server went away is retried often with a
        // short timeout: it succeeds as soon as JetStream has elected its new leaders.
        let mut js_consumer = jetstream::new(client.clone());
        js_consumer.set_timeout(CONSUMER_TIMEOUT);
        let name = args.cluster_stream.clone();
        let prefix = format!("{name}.k");
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            // The last HISTORY changes of each key (a delete included): the stream is the state
            // plus a tail, and a node that starts reads both in one pass.
            max_messages_per_subject: HISTORY,
            num_replicas: args.cluster_replicas as usize,
            storage: stream::StorageType::File,
            allow_atomic_publish: true,
            // Retried publishes (an acknowledgement lost to a dropped connection) are stored once.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let mut attempt = 0u32;
        let info = loop {
            attempt += 1;
            match js.get_or_create_stream(config.clone()).await {
                Ok(mut s) => match s.info().await {
                    Ok(i) => break i.clone(),
                    Err(e) => tracing::warn!(attempt, error = %e, "cluster: stream info; retrying"),
                },
                Err(e) if attempt < 60 => {
                    tracing::warn!(attempt, stream = %name, error = %e, "cluster: JetStream not ready (needs nats-server -js, 2.12 or newer); retrying in 1s")
                }
                Err(e) => {
                    return Err(ServeError::Storage(format!(
                        "cluster: cannot create or open the JetStream stream {name}: {e} (nats-server must run with JetStream enabled, version 2.12 or newer, and --cluster-replicas at most its number of servers)"
                    )))
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let c = &info.config;
        if c.max_messages_per_subject != HISTORY || !c.allow_atomic_publish {
            return Err(ServeError::Config(format!(
                "cluster: the stream {name} exists with other settings (max messages per subject {}, atomic publish {}); give another --cluster-stream, or delete it",
                c.max_messages_per_subject, c.allow_atomic_publish
            )));
        }
        if c.num_replicas != args.cluster_replicas as usize {
            tracing::warn!(
                stream = %name,
                replicas = c.num_replicas,
                asked = args.cluster_replicas,
                "cluster: the stream exists with another replica count; keeping it (change it with `nats stream edit`)"
            );
        }
        tracing::info!(stream = %name, replicas = c.num_replicas, messages = info.state.messages, last_seq = info.state.last_sequence, "cluster: stream ready");
        let nonce = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(std::process::id() as u128);
            h.finish()
        };
        Ok(Arc::new(Cluster {
            client,
            js,
            js_consumer,
            stream: name,
            prefix,
            applied: watch::channel(0).0,
            ready: AtomicBool::new(false),
            nonce,
            counter: AtomicU64::new(1),
            expiring: Mutex::default(),
            reconnected,
        }))
    }

    /// Whether the node caught up at start and NATS is connected; else why not (for
    /// `/_health`).
    pub fn problem(&self) -> Option<String> {
        if !self.ready.load(Ordering::Acquire) {
            return Some("cluster: catching up with the stream".into());
        }
        match self.client.connection_state() {
            async_nats::connection::State::Connected => None,
            s => Some(format!(
                "cluster: NATS is unreachable ({s}); writes answer 503, reads are served from this node's copy"
            )),
        }
    }

    /// Why the node does not serve yet (catching up with the stream at start), if it does not.
    pub fn not_ready(&self) -> Option<String> {
        (!self.ready.load(Ordering::Acquire)).then(|| {
            format!(
                "cluster: catching up with the stream (applied {} changes so far); try again shortly",
                self.applied()
            )
        })
    }

    /// The sequence number of the last change applied here.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Starts applying the stream and returns once this node has caught up with it (every
    /// change stored when it started), logging progress.
    pub async fn start(self: &Arc<Self>, sh: Arc<Shared>) {
        let started = Instant::now();
        let target = loop {
            match self.last_seq().await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot read the stream's state; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let me = self.clone();
        tokio::spawn(async move { me.apply_loop(sh).await });
        let mut rx = self.applied.subscribe();
        let mut last_report = Instant::now();
        loop {
            let now = *rx.borrow_and_update();
            if now >= target {
                break;
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                tracing::info!(applied = now, of = target, "cluster: catching up");
                last_report = Instant::now();
            }
            let _ = tokio::time::timeout(PROGRESS_EVERY, rx.changed()).await;
        }
        self.ready.store(true, Ordering::Release);
        tracing::info!(
            seq = target,
            ms = started.elapsed().as_millis() as u64,
            "cluster: caught up; serving"
        );
    }

    // The stream's last sequence number.
    async fn last_seq(&self) -> Result<u64, String> {
        let mut s = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| format!("cluster: stream {}: {e}", self.stream))?;
        let i = s
            .info()
            .await
            .map_err(|e| format!("cluster: stream {}: {e}", self.stream))?;
        Ok(i.state.last_sequence)
    }

    // Applies the stream in its order, forever: an ordered consumer from the first message
    // (it recreates itself after a gap or a lost connection, from the last one delivered).
    async fn apply_loop(self: Arc<Self>, sh: Arc<Shared>) {
        loop {
            let r = tokio::select! {
                r = self.consume(&sh, self.applied() + 1) => r,
                _ = self.reconnected.notified() => Err("NATS reconnected".into()),
            };
            match r {
                Ok(()) => tracing::warn!("cluster: the stream ended; resubscribing"),
                Err(e) => {
                    tracing::warn!(error = %e, from = self.applied() + 1, "cluster: consumer restarts")
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn consume(&self, sh: &Shared, from: u64) -> Result<(), String> {
        let stream = self
            .js_consumer
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{}.>", self.prefix),
                deliver_policy: if from <= 1 {
                    consumer::DeliverPolicy::All
                } else {
                    consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    }
                },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let strip = self.prefix.len() + 1;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| e.to_string())?;
            let (seq, pending) = match m.info() {
                Ok(i) => (i.stream_sequence, i.pending),
                Err(e) => return Err(format!("a message without its stream info: {e}")),
            };
            let key = match m.subject.get(strip..).map(replica::key_from_token) {
                Some(Ok(k)) => k,
                _ => {
                    tracing::error!(seq, subject = %m.subject, "cluster: a message on a subject that names no key; skipped");
                    continue;
                }
            };
            let mut hub = sh.lock();
            let Hub {
                engine, replica, ..
            } = &mut *hub;
            let changes = replica.receive(
                engine,
                Delivered {
                    seq,
                    key: &key,
                    payload: &m.payload,
                    pending,
                },
            );
            match changes {
                Ok(changes) => {
                    let expiry = crate::hub::sets_expiry(&changes);
                    hub.commit(&changes);
                    let applied = hub.engine.store().last_seq();
                    drop(hub);
                    if expiry {
                        sh.ttl_wake.notify_one();
                    }
                    self.applied.send_if_modified(|a| {
                        let moved = applied > *a;
                        *a = (*a).max(applied);
                        moved
                    });
                }
                Err(e) => {
                    drop(hub);
                    tracing::error!(seq, key = %key, error = %e, "cluster: a message this node cannot read; skipped")
                }
            }
        }
        Ok(())
    }

    // A write while NATS is unreachable answers at once rather than after the publish timeout,
    // once the client had `RECONNECT_GRACE` to find another server (it does within milliseconds
    // when one NATS server of several goes away).
    async fn connected(&self) -> Result<(), Refusal> {
        let deadline = Instant::now() + RECONNECT_GRACE;
        loop {
            match self.client.connection_state() {
                async_nats::connection::State::Connected => return Ok(()),
                s if Instant::now() >= deadline => {
                    return Err(Refusal::Unavailable(format!(
                        "cluster: NATS is unreachable ({s}); nothing was written"
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    // Waits until this node applied `seq`. JetStream acknowledged it, so it is in the stream: if
    // the consumer does not deliver it within `STALL`, the consumer is presumed lost (its server
    // went away; missed heartbeats would tell only after several seconds) and restarted.
    async fn wait_applied(&self, seq: u64) -> Result<(), String> {
        let mut rx = self.applied.subscribe();
        let started = Instant::now();
        let mut kicked = false;
        loop {
            // After the restart, as long as JetStream may take to elect new leaders; past it the
            // write answers 503 though it is stored (and will appear), as a timed-out write does
            // on any replicated store.
            let wait = if kicked { ELECTION_GRACE } else { STALL };
            let reached = tokio::time::timeout(wait, rx.wait_for(|a| *a >= seq))
                .await
                .map(|r| r.is_ok());
            match reached {
                Ok(true) => return Ok(()),
                _ if !kicked => {
                    tracing::warn!(seq, "cluster: a stored change is not delivered yet; restarting the consumer");
                    self.reconnected.notify_one();
                    kicked = true;
                }
                _ => {
                    return Err(format!(
                        "cluster: the write is stored (version {seq:x}) but this node has not applied it within {}s",
                        started.elapsed().as_secs()
                    ))
                }
            }
        }
    }

    /// Waits until this node has applied every change the stream held when called: what a
    /// refusal that may be stale is judged on again.
    pub async fn catch_up(&self) -> Result<(), String> {
        let last = self.last_seq().await?;
        self.wait_applied(last).await
    }

    fn batch_id(&self) -> u128 {
        ((self.nonce as u128) << 64) | self.counter.fetch_add(1, Ordering::Relaxed) as u128
    }

    fn subject(&self, key: &str) -> String {
        format!("{}.{}", self.prefix, replica::subject_token(key))
    }

    /// Publishes one operation's writes (atomically when several) and waits until this node
    /// applied them. Returns the sequence number of the last.
    pub async fn order(&self, writes: Vec<Write>) -> Result<u64, Refusal> {
        // Each payload becomes `Bytes` once, however often it is sent again.
        let writes: Vec<(Write, Bytes)> = writes
            .into_iter()
            .map(|mut w| {
                let p = Bytes::from(std::mem::take(&mut w.payload));
                (w, p)
            })
            .collect();
        self.connected().await?;
        let seq = match writes.len() {
            0 => return Ok(self.applied()),
            1 => {
                let (w, payload) = &writes[0];
                // The same id on every attempt: a retry of a write JetStream stored but whose
                // acknowledgement was lost is answered with the original (deduplicated).
                let id = format!("{:032x}", self.batch_id());
                let deadline = Instant::now() + ELECTION_GRACE;
                loop {
                    let publish = jetstream::message::PublishMessage::build()
                        .payload(payload.clone())
                        .expected_last_subject_sequence(w.expect)
                        .message_id(&id);
                    let sent = match self.js.send_publish(self.subject(&w.key), publish).await {
                        Ok(ack) => ack.await,
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok(ack) => break ack.sequence,
                        Err(e) if transient(&e) && Instant::now() < deadline => {
                            tracing::debug!(error = %e, "cluster: no stream leader yet; retrying the write");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(publish_refusal(e)),
                    }
                }
            }
            n if n > MAX_BATCH => {
                return Err(Refusal::Unavailable(format!(
                    "cluster: one operation may change at most {MAX_BATCH} keys (JetStream's atomic batch limit); this one changes {n}"
                )))
            }
            _ => {
                let deadline = Instant::now() + ELECTION_GRACE;
                loop {
                    match self.publish_batch(&writes).await {
                        Ok(seq) => break seq,
                        // The first message is sent as a request: refused there, nothing of the
                        // batch is stored, so it is tried again while the stream has no leader.
                        Err((true, Refusal::Unavailable(e))) if Instant::now() < deadline => {
                            tracing::debug!(error = %e, "cluster: no stream leader yet; retrying the batch");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err((_, r)) => return Err(r),
                    }
                }
            }
        };
        self.wait_applied(seq)
            .await
            .map(|()| seq)
            .map_err(Refusal::Unavailable)
    }

    // Publishes an operation's writes as one atomic batch. On failure, says whether it failed on
    // the first message (nothing of the batch stored).
    async fn publish_batch(&self, writes: &[(Write, Bytes)]) -> Result<u64, (bool, Refusal)> {
        let mut batch = self.js.batch_publish().timeout(BATCH_TIMEOUT).build();
        let last = writes.len() - 1;
        for (i, (w, payload)) in writes.iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                w.expect.to_string().as_str(),
            );
            let m = jetstream::message::OutboundMessage {
                subject: self.subject(&w.key).into(),
                payload: payload.clone(),
                headers: Some(headers),
            };
            if i < last {
                batch
                    .add_message(m)
                    .await
                    .map_err(|e| (i == 0, batch_refusal(e)))?;
            } else {
                let ack = batch
                    .commit_message(m)
                    .await
                    .map_err(|e| (false, batch_refusal(e)))?;
                return Ok(ack.sequence);
            }
        }
        Err((true, Refusal::Unavailable("cluster: an empty batch".into())))
    }

    /// Proposes the deletes of keys whose TTL passed (call under the hub lock, from the timer):
    /// each at most once at a time from this node; a delete another node made first is
    /// refused by JetStream and forgotten.
    pub fn expire(self: &Arc<Self>, hub: &Hub, tick: Tick) {
        let writes = hub.replica.expired(&hub.engine, tick);
        let mut expiring = self.expiring.lock().unwrap_or_else(|p| p.into_inner());
        for w in writes {
            if !expiring.insert(w.key.clone()) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                let key = w.key.clone();
                match me.order(vec![w]).await {
                    Ok(_) | Err(Refusal::Conflict) => {}
                    Err(Refusal::Unavailable(e)) => {
                        tracing::warn!(key = %key, error = %e, "cluster: TTL expiry not stored; retried")
                    }
                }
                me.expiring
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
            });
        }
    }

    /// Whether a key's expiry is being proposed (the timer waits for it instead of spinning).
    pub fn expiring(&self) -> bool {
        !self
            .expiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Runs one operation through the cluster: `compute` runs it under the hub lock on this
    /// node's state; its changes are taken back and published; on a conflict the node catches
    /// up and `compute` runs again. A refusal that may be stale is judged again once caught up.
    /// Returns the answer and, when it wrote, the version JetStream gave its last change.
    pub async fn write<T>(
        &self,
        sh: &Shared,
        mut compute: impl FnMut(&mut Hub, Tick) -> Step<T>,
    ) -> Result<(T, Option<u64>), String> {
        let mut caught_up = false;
        for attempt in 1..=MAX_ATTEMPTS {
            // The lock is held for this block only (never across an await).
            let next = {
                let tick = sh.tick();
                let mut hub = sh.lock();
                let step = compute(&mut hub, tick);
                if !step.changes.is_empty() {
                    let batch = self.batch_id();
                    let Hub {
                        engine, replica, ..
                    } = &mut *hub;
                    let writes = replica.propose(engine, &step.changes, batch);
                    Ok((step.answer, writes))
                } else if step.stale && !caught_up {
                    Err(None)
                } else {
                    Err(Some(step.answer))
                }
            };
            let (answer, writes) = match next {
                Ok(w) => w,
                Err(Some(answer)) => return Ok((answer, None)),
                Err(None) => {
                    self.catch_up().await?;
                    caught_up = true;
                    continue;
                }
            };
            match self.order(writes).await {
                Ok(seq) => return Ok((answer, Some(seq))),
                Err(Refusal::Conflict) => {
                    tracing::debug!(
                        attempt,
                        "cluster: a key changed on another node first; computing again"
                    );
                    self.catch_up().await?;
                    caught_up = true;
                }
                Err(Refusal::Unavailable(e)) => return Err(e),
            }
        }
        Err(format!(
            "cluster: the keys kept changing on other nodes ({MAX_ATTEMPTS} attempts); try again"
        ))
    }
}

// JetStream's "wrong last sequence" (10071; 10164 for a subject's expectation on 2.12+): a key
// changed since the write was computed.
const WRONG_LAST_SEQUENCE: [u64; 2] = [10071, 10164];

// A publish that failed because the stream has no leader right now ("no responders", reported as
// no stream for the subject) or that timed out waiting for one: retried with the same id.
fn transient(e: &jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::context::PublishErrorKind;
    matches!(
        e.kind(),
        PublishErrorKind::StreamNotFound
            | PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
    )
}

fn publish_refusal(e: jetstream::context::PublishError) -> Refusal {
    use async_nats::jetstream::context::PublishErrorKind;
    // nats-server 2.12+ answers a stale expectation with error code 10164, which async-nats
    // does not map to `WrongLastSequence`; its text names it either way.
    let stale = e.to_string().contains("wrong last sequence");
    match e.kind() {
        PublishErrorKind::WrongLastSequence => Refusal::Conflict,
        _ if stale => Refusal::Conflict,
        _ => Refusal::Unavailable(format!("cluster: JetStream did not store the write: {e}")),
    }
}

fn batch_refusal(e: jetstream_extra::batch_publish::BatchPublishError) -> Refusal {
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(api) = s.downcast_ref::<jetstream::Error>() {
            if WRONG_LAST_SEQUENCE.contains(&api.error_code().0) {
                return Refusal::Conflict;
            }
        }
        source = s.source();
    }
    if e.to_string().contains("wrong last sequence") {
        return Refusal::Conflict;
    }
    Refusal::Unavailable(format!(
        "cluster: JetStream did not store the operation: {e}"
    ))
}

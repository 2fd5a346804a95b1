//! The shared state of a running server: the engine behind one lock, who listens to which pool,
//! and each connection's bounded send queue.
//!
//! Owns fan-out (the same frame bytes to every subscriber of a pool) and the slow-subscriber rule
//! (a full queue cuts that one subscriber off, never blocks the publisher). It does not read or
//! write sockets; the connection tasks in `ws` and `routes` do.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use stateline_core::session::Session;
use stateline_core::web::Subscription;
use stateline_core::{Change, Encoding, Engine, Error, PoolId, Tick};
use stateline_disk::{Committer, Disk, DiskError, Done, Job};
use tokio::sync::{watch, Notify};

use crate::config::ServeArgs;

/// How many times a request's task tries the hub lock, yielding to its worker's other tasks
/// between tries, before it blocks on it (`Shared::lock_yielding`). The hub is held for a few
/// microseconds per request; 8 yields cover a holder's whole request on another thread, while
/// a holder that takes longer (a large document, a slow rule) is waited for by sleeping.
pub const LOCK_YIELDS: u32 = 8;

/// Per-connection control shared between the publisher (under the hub lock) and the connection
/// task: set when the send queue overflowed, and the holds of [`Shared::hold_until_committed`].
#[derive(Debug, Default)]
pub struct Ctl {
    lagged: AtomicBool,
    /// Broadcast frames queued and not yet taken by the connection task (replies do not count).
    queued: AtomicUsize,
    /// Wakes the connection task when it must close.
    pub wake: Notify,
    // Subscriptions joined while writes were pending, not yet committed: until they are, the
    // connection sends nothing from its queue (its first frame may show those writes).
    held: AtomicUsize,
    // One of those writes was rolled back: the first frame showed it, the connection must close.
    hold_failed: AtomicBool,
    /// Wakes the connection task when a hold ends.
    pub released: Notify,
}

impl Ctl {
    /// Whether this connection fell behind and must be closed.
    pub fn is_lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }

    /// Whether the connection must not send from its queue yet (a subscription's first frame
    /// waits for the commit of the writes it shows).
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire) > 0
    }

    /// Whether a write a held first frame showed was rolled back: the connection must close
    /// without sending it (the client subscribes again).
    pub fn hold_failed(&self) -> bool {
        self.hold_failed.load(Ordering::Acquire)
    }
}

/// One queued frame: a broadcast (counted against `--queue`), a broadcast that later frames of
/// its pool may still be folded into while it waits (a [`Slot`]), or a reply to the
/// connection's own request (never dropped; bounded by `--ws-inflight` instead).
#[derive(Debug)]
enum Item {
    Frame(Bytes),
    Slot(Arc<Slot>),
    Reply(Bytes),
}

/// A queued frame of a pool whose frames coalesce (see [`stateline_core::pool::coalesce`]):
/// the publisher replaces its bytes with a composed frame while the connection task has not
/// taken them; the task takes them out (leaving `None`), after which the next frame of the pool
/// is queued anew.
#[derive(Debug)]
pub struct Slot(Mutex<Option<Bytes>>);

/// Composed frames of one published frame, by the bytes they were composed from: every
/// subscriber that held the same unsent frame (a shared buffer) gets the same composed frame,
/// composed once. Keys are buffer addresses, valid while those buffers are alive (the slots
/// hold them for the whole fan-out of one frame).
#[derive(Default)]
struct Composed(HashMap<(usize, usize), Option<Bytes>>);

/// One subscriber of one pool: its connection's queue and the frame of this pool it has not
/// taken yet, if frames of the pool coalesce.
#[derive(Debug)]
struct Member {
    sink: Sink,
    pending: Option<Arc<Slot>>,
}

/// One connection's queue: what its senders pushed, in order, and the connection task's waker.
///
/// Not a tokio `mpsc` channel: that one allocates a block of 32 items (about 1.3 KiB) per
/// channel up front, which an idle subscriber would carry for nothing. This one holds what is
/// queued (a `VecDeque` that grows with use) and a waker.
#[derive(Debug, Default)]
struct Chan {
    items: Mutex<VecDeque<Item>>,
    waker: AtomicWaker,
    // Live `Sink`s: at 0 the task's `recv` ends (nothing can be queued any more).
    senders: AtomicUsize,
    // The task's `Queue` is gone: nothing is queued any more.
    closed: AtomicBool,
}

impl Chan {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Item>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending half of one connection's queue.
#[derive(Debug)]
pub struct Sink {
    conn: u64,
    // At most `cap` broadcast frames (shared bytes, not copies) wait here: a subscriber that does
    // not read is cut off past that instead of growing memory or slowing the publisher. Replies
    // to the connection's own requests go through the same queue (so a client sees its own
    // change before the acknowledgement) but are never refused: the connection stops reading
    // requests while `--ws-inflight` replies are pending, which bounds them.
    chan: Arc<Chan>,
    cap: usize,
    ctl: Arc<Ctl>,
}

impl Clone for Sink {
    fn clone(&self) -> Sink {
        self.chan.senders.fetch_add(1, Ordering::AcqRel);
        Sink {
            conn: self.conn,
            chan: self.chan.clone(),
            cap: self.cap,
            ctl: self.ctl.clone(),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.chan.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.chan.waker.wake();
        }
    }
}

impl Sink {
    /// Counts one more broadcast frame against the queue's capacity. At capacity, marks the
    /// connection as lagging and wakes its task, which closes it, and returns false: the frame
    /// is dropped (the client resumes from its version).
    fn admit(&self) -> bool {
        if self.ctl.queued.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.ctl.queued.fetch_sub(1, Ordering::AcqRel);
            if !self.ctl.lagged.swap(true, Ordering::AcqRel) {
                self.ctl.wake.notify_one();
            }
            return false;
        }
        true
    }

    /// Queues a counted frame and wakes the connection task.
    fn send(&self, i: Item) {
        if !self.push(i) {
            // The connection is gone; nothing waits for the frame.
            self.ctl.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Queues `i` and wakes the task; false if the task's queue is gone.
    fn push(&self, i: Item) -> bool {
        {
            let mut q = self.chan.lock();
            if self.chan.closed.load(Ordering::Acquire) {
                return false;
            }
            q.push_back(i);
        }
        self.chan.waker.wake();
        true
    }

    /// Queues a broadcast frame without waiting. A full queue marks the connection as lagging
    /// and wakes its task, which closes it; the frame is dropped (the client resumes from its
    /// version). Returns whether the connection is (now) lagging.
    pub fn offer(&self, b: Bytes) -> bool {
        if !self.admit() {
            return true;
        }
        self.send(Item::Frame(b));
        false
    }

    /// Queues a frame of a pool whose frames coalesce: if the frame of that pool queued before
    /// (`pending`) has not been taken yet, the two become one (composed once per distinct
    /// pending frame, see [`Composed`]) and nothing new is queued; otherwise, or if they do not
    /// compose, it is queued like [`Sink::offer`]. Returns whether the connection is lagging.
    fn offer_coalescing(
        &self,
        pending: &mut Option<Arc<Slot>>,
        b: &Bytes,
        composed: &mut Composed,
    ) -> bool {
        if let Some(slot) = pending {
            let mut held = slot.0.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(old) = held.as_ref() {
                let c = composed
                    .0
                    .entry((old.as_ptr() as usize, old.len()))
                    .or_insert_with(|| stateline_core::pool::coalesce(old, b));
                if let Some(c) = c {
                    *held = Some(c.clone());
                    return false;
                }
            } else if Arc::strong_count(slot) == 1 {
                // Taken and dropped by the connection task: only this member holds the slot,
                // so it is queued again instead of allocating another.
                if !self.admit() {
                    return true;
                }
                *held = Some(b.clone());
                drop(held);
                self.send(Item::Slot(slot.clone()));
                return false;
            }
        }
        if !self.admit() {
            return true;
        }
        let slot = Arc::new(Slot(Mutex::new(Some(b.clone()))));
        *pending = Some(slot.clone());
        self.send(Item::Slot(slot));
        false
    }

    /// Queues the reply to one of the connection's own requests (an acknowledgement or an
    /// error). Never dropped and never counted as lagging: the connection bounds these by how
    /// many requests it lets be in flight.
    pub fn reply(&self, b: Bytes) {
        self.push(Item::Reply(b));
    }
}

/// A connection's queue: its first sending half and its receiving half, `cap` broadcast frames.
fn queue(conn: u64, cap: usize) -> (Sink, Queue) {
    let chan = Arc::new(Chan {
        senders: AtomicUsize::new(1),
        ..Chan::default()
    });
    let ctl = Arc::new(Ctl::default());
    let queue = Queue {
        chan: chan.clone(),
        ctl: ctl.clone(),
    };
    (
        Sink {
            conn,
            chan,
            cap,
            ctl,
        },
        queue,
    )
}

/// The receiving half of one connection's queue (read by its task).
#[derive(Debug)]
pub struct Queue {
    chan: Arc<Chan>,
    ctl: Arc<Ctl>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Frames queued from now on would wait for nobody; those queued are dropped.
        let items = {
            let mut q = self.chan.lock();
            self.chan.closed.store(true, Ordering::Release);
            std::mem::take(&mut *q)
        };
        drop(items);
    }
}

impl Queue {
    /// The frame an item holds and whether it is a reply (`None` for a slot already emptied,
    /// which cannot happen: only this task empties slots, once each).
    fn take(&self, i: Item) -> Option<(Bytes, bool)> {
        match i {
            Item::Reply(b) => Some((b, true)),
            Item::Frame(b) => {
                self.ctl.queued.fetch_sub(1, Ordering::AcqRel);
                Some((b, false))
            }
            Item::Slot(s) => {
                self.ctl.queued.fetch_sub(1, Ordering::AcqRel);
                let b = s.0.lock().unwrap_or_else(PoisonError::into_inner).take()?;
                Some((b, false))
            }
        }
    }

    /// The next frame and whether it is a reply; `None` when every sender is gone and nothing
    /// is queued.
    pub async fn recv(&mut self) -> Option<(Bytes, bool)> {
        std::future::poll_fn(|cx| {
            if let Some(f) = self.try_recv() {
                return std::task::Poll::Ready(Some(f));
            }
            self.chan.waker.register(cx.waker());
            // Again after registering: a frame pushed in between woke the old waker.
            if let Some(f) = self.try_recv() {
                return std::task::Poll::Ready(Some(f));
            }
            if self.chan.senders.load(Ordering::Acquire) == 0 {
                return std::task::Poll::Ready(None);
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The next frame if one is queued now.
    pub fn try_recv(&mut self) -> Option<(Bytes, bool)> {
        loop {
            let i = self.chan.lock().pop_front()?;
            if let Some(f) = self.take(i) {
                return Some(f);
            }
        }
    }
}

/// Everything behind the one lock.
#[derive(Debug)]
pub struct Hub {
    /// The core state.
    pub engine: Engine,
    subs: HashMap<PoolId, Vec<Member>>,
    clocks: Vec<Sink>,
    /// Hooks and endpoints registered on the builder (set once at start).
    pub ext: Arc<crate::ext::Extensions>,
    // With a disk: the sequence number through which every change is committed. Changes after
    // it are applied in memory and waiting for their group commit ("pending").
    durable: u64,
    // With a disk: why the last commit failed, until one succeeds again (`/_health` says it).
    storage_error: Option<String>,
    /// In cluster mode: what the core keeps beside the engine to apply the cluster's log.
    pub replica: stateline_core::replica::Replica,
}

impl Hub {
    /// Publishes applied changes and queues every resulting frame to its pool's subscribers.
    pub fn commit(&mut self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.engine.publish(changes);
        self.fan_out();
    }

    /// Sends every frame the engine has queued to the subscribers of its pool.
    pub fn fan_out(&mut self) {
        let mut lagging = Vec::new();
        while let Some(f) = self.engine.poll_frame() {
            if let Some(list) = self.subs.get_mut(&f.pool) {
                let mut composed = Composed::default();
                for m in list {
                    // `Bytes` clones share one buffer: the frame is encoded once per pool.
                    let lagged = if f.coalesce {
                        m.sink
                            .offer_coalescing(&mut m.pending, &f.bytes, &mut composed)
                    } else {
                        m.sink.offer(f.bytes.clone())
                    };
                    if lagged {
                        lagging.push((f.pool, m.sink.conn));
                    }
                }
            }
        }
        // A lagging subscriber leaves its pools at once: no more frames are queued for it, even
        // if its task cannot run yet (an SSE body is only polled when the socket is writable).
        for (pool, conn) in lagging {
            self.leave(pool, conn);
        }
    }

    /// Subscribes a connection's session to `pattern` (an ooo WebSocket or an SSE stream) and
    /// attaches its sink, returning the first frame to send (if any). The caller queues that
    /// frame before releasing the lock, so no broadcast can slip in between.
    pub fn subscribe(
        &mut self,
        session: &mut Session,
        sub: &Subscription,
        enc: Encoding,
        initial: bool,
        sink: &Sink,
    ) -> Result<(PoolId, Option<Bytes>), Error> {
        let ext = self.ext.clone();
        let joined = session.subscribe(
            &mut self.engine,
            sub.pattern.clone(),
            enc,
            sub.version,
            initial,
            &mut |p, who| ext.subscribe(p, who),
        );
        self.log_denials();
        let (pool, first) = joined?;
        self.attach(pool, sink);
        Ok((pool, first))
    }

    /// Sends a pool's frames to `sink` from now on (the session joined it).
    pub fn attach(&mut self, pool: PoolId, sink: &Sink) {
        self.subs.entry(pool).or_default().push(Member {
            sink: sink.clone(),
            pending: None,
        });
    }

    /// Logs every attempt the access rules refused since the last call (the engine counts them
    /// for `/_metrics`; this is the audit trail).
    pub fn log_denials(&mut self) {
        while let Some(d) = self.engine.poll_denial() {
            // Info, the binary's default level: an audit trail, not an alarm for the operator.
            tracing::info!(
                action = d.action.as_str(),
                target = %d.target,
                reason = d.reason.as_str(),
                subject = d.subject.as_deref().unwrap_or("-"),
                detail = %d.detail,
                "denied"
            );
        }
    }

    /// Removes one connection from one pool.
    pub fn leave(&mut self, id: PoolId, conn: u64) {
        if let Some(list) = self.subs.get_mut(&id) {
            let before = list.len();
            list.retain(|m| m.sink.conn != conn);
            if list.len() < before && !self.ext.on_unsubscribe.is_empty() {
                if let Some(p) = self.engine.pools().pattern(id) {
                    self.ext.unsubscribe(p);
                }
            }
            for _ in list.len()..before {
                self.engine.leave(id);
            }
            if list.is_empty() {
                self.subs.remove(&id);
            }
        }
    }

    /// Adds a clock-stream subscriber and queues the current time for it.
    pub fn join_clock(&mut self, tick: Tick, sink: &Sink) {
        sink.offer(self.engine.clock_frame(tick));
        self.clocks.push(sink.clone());
    }

    /// Sends one clock frame to every clock subscriber.
    pub fn clock_tick(&mut self, tick: Tick) {
        if self.clocks.is_empty() {
            return;
        }
        let f = self.engine.clock_frame(tick);
        self.clocks.retain(|s| !s.offer(f.clone()));
    }

    /// Number of clock subscribers.
    pub fn clock_subscribers(&self) -> usize {
        self.clocks.len()
    }

    /// Why the store is failing (the last commit failed and none has succeeded since), if it is.
    pub fn storage_error(&self) -> Option<&str> {
        self.storage_error.as_deref()
    }
}

/// Settings the connection tasks need (copied out of [`ServeArgs`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body / `/_ws` message.
    pub max_body: usize,
    /// Request deadline.
    pub deadline: Duration,
    /// Broadcast frames per connection queue.
    pub queue: usize,
    /// Requests a `/_ws` connection may have in flight (replies not yet sent) before the server
    /// stops reading it.
    pub ws_inflight: usize,
    /// Time a WebSocket peer has to finish a message it started.
    pub message_timeout: Duration,
    /// WebSocket ping interval.
    pub ping_interval: Duration,
    /// The TTL of a `/_ws` leased key (`--lease-ttl`).
    pub lease_ttl: Duration,
    /// One socket write's limit.
    pub write_timeout: Duration,
    /// SSE keep-alive interval.
    pub sse_keepalive: Duration,
    /// Allowed origins for WebSocket handshakes (`*`: any).
    pub allow_origin: Vec<String>,
    /// Token that enables `GET /_backup`.
    pub backup_token: Option<String>,
    /// Bytes a client socket may hold that the kernel has not sent yet (`TCP_NOTSENT_LOWAT`).
    pub unsent: u32,
    /// Offer WebSocket compression (`permessage-deflate`) to clients that ask for it.
    pub ws_deflate: bool,
}

impl Limits {
    /// From the flags.
    pub fn from_args(a: &ServeArgs) -> Limits {
        Limits {
            max_body: a.max_body,
            deadline: a.deadline,
            queue: a.queue.max(1),
            ws_inflight: a.ws_inflight.max(1),
            message_timeout: a.message_timeout,
            ping_interval: a.ping_interval,
            // A lease shorter than a second would be renewed in a busy loop.
            lease_ttl: a.lease_ttl.max(Duration::from_secs(1)),
            write_timeout: a.write_timeout,
            sse_keepalive: a.sse_keepalive,
            allow_origin: a.allow_origin.clone(),
            backup_token: a.backup_token.clone().filter(|t| !t.is_empty()),
            unsent: a.unsent,
            ws_deflate: a.ws_deflate,
        }
    }
}

/// The server's shared state, one per process.
#[derive(Debug)]
pub struct Shared {
    // One std Mutex around all semantic state: operations are short and never await while holding
    // it, and a single lock is what keeps join + first frame atomic with respect to publishes.
    hub: Mutex<Hub>,
    /// Limits.
    pub limits: Limits,
    /// Flips to `true` when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Woken after writes so the timer task re-reads the next TTL deadline.
    pub ttl_wake: Notify,
    next_conn: AtomicU64,
    live: AtomicUsize,
    /// Requests answered (every route), for `/_metrics`.
    pub requests: AtomicU64,
    clocks: Clocks,
    /// The durable store, when not `--memory` (set once at start).
    pub disk: OnceLock<Arc<Disk>>,
    // Group commit: batches are queued under the hub lock, so the queue is in sequence order.
    committer: OnceLock<Committer>,
    /// In cluster mode (`--cluster`): the link to NATS JetStream, which orders every write.
    pub cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    /// The builder's hooks and endpoints (set once at start, the same as [`Hub::ext`]), for
    /// the front door outside the lock.
    pub ext: OnceLock<Arc<crate::ext::Extensions>>,
    /// Broadcast frames compressed once for every connection that agreed compression.
    pub deflate_frames: crate::deflate::FrameCache,
}

/// The host's clocks as the core wants them: wall time, and a monotonic reading from one origin.
/// Every [`Tick`] given to one engine must come from the same `Clocks` (the engine's clock
/// measures elapsed time between monotonic readings).
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    epoch: Instant,
}

impl Default for Clocks {
    fn default() -> Clocks {
        Clocks::new()
    }
}

impl Clocks {
    /// Starts the monotonic origin now.
    pub fn new() -> Clocks {
        Clocks {
            epoch: Instant::now(),
        }
    }

    /// Reads both clocks.
    pub fn tick(&self) -> Tick {
        let mono = self.epoch.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
            .unwrap_or(0);
        Tick {
            wall_ns: wall,
            mono_ns: mono,
        }
    }
}

impl Shared {
    /// A server state around an engine.
    /// `engine` must have been created with a tick from `clocks`.
    pub fn new(
        engine: Engine,
        clocks: Clocks,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            hub: Mutex::new(Hub {
                engine,
                subs: HashMap::new(),
                clocks: Vec::new(),
                ext: Arc::default(),
                durable: 0,
                storage_error: None,
                replica: Default::default(),
            }),
            limits,
            shutdown,
            ttl_wake: Notify::new(),
            next_conn: AtomicU64::new(1),
            live: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            clocks,
            disk: OnceLock::new(),
            committer: OnceLock::new(),
            cluster: OnceLock::new(),
            ext: OnceLock::new(),
            deflate_frames: Default::default(),
        })
    }

    /// The hub. A panic while it was held leaves it poisoned; its state is still consistent
    /// (every core call is all-or-nothing), so later callers go on with it.
    pub fn lock(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hub, for a request's task: while another thread holds it, the task yields to the
    /// other tasks of its worker (reading, parsing and answering other connections) instead of
    /// putting the thread to sleep on the lock. A thread that sleeps on the lock costs a futex
    /// wait, a futex wake from the thread that unlocks, and two context switches: on two cores
    /// that was about a sixth of the server's CPU per HTTP write. After [`LOCK_YIELDS`] tries it
    /// blocks like [`Shared::lock`], so a task never spins for long behind a long holder.
    pub async fn lock_yielding(&self) -> MutexGuard<'_, Hub> {
        for _ in 0..LOCK_YIELDS {
            match self.hub.try_lock() {
                Ok(hub) => return hub,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            };
            tokio::task::yield_now().await;
        }
        self.lock()
    }

    /// Reads the clocks for the core.
    pub fn tick(&self) -> Tick {
        self.clocks.tick()
    }

    /// Open WebSocket and SSE connections.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// A new connection: its queue and its registration (which unregisters it when dropped).
    pub fn connect(self: &Arc<Shared>) -> (Registration, Sink, Queue) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(1, Ordering::AcqRel);
        let (sink, queue) = queue(conn, self.limits.queue);
        let reg = Registration {
            shared: self.clone(),
            conn,
            pools: Vec::new(),
            clock: false,
            ctl: sink.ctl.clone(),
            expires: None,
            renew_at: None,
        };
        (reg, sink, queue)
    }
}

/// The moment a session's deadline (Unix seconds, [`Session::deadline`]) falls, on the runtime's
/// clock.
pub fn deadline_at(tick: Tick, deadline: Option<i64>) -> Option<tokio::time::Instant> {
    let now = tick.wall_ns.div_euclid(1_000_000_000);
    let left = deadline?.saturating_sub(now).max(0) as u64;
    Some(tokio::time::Instant::now() + Duration::from_secs(left))
}

/// Completes at `deadline`, or never.
pub async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Shared {
    /// Makes the server durable: every later write is committed to `disk` (group commit) before
    /// it is published to subscribers and acknowledged.
    pub fn attach_disk(self: &Arc<Shared>, disk: Arc<Disk>) {
        let weak: Weak<Shared> = Arc::downgrade(self);
        let committer = Committer::start(
            disk.clone(),
            Box::new(
                move |result: Result<(), DiskError>,
                      jobs: Vec<Job>,
                      drain: &dyn Fn() -> Vec<Job>| {
                    let Some(sh) = weak.upgrade() else {
                        for j in jobs {
                            (j.done)(Err("the server is stopping".into()));
                        }
                        return;
                    };
                    let mut hub = sh.lock();
                    match result {
                        Ok(()) => {
                            // Barriers (jobs without changes) write nothing: only a group that
                            // wrote, or the probe (no jobs at all), shows the store works again.
                            let wrote =
                                jobs.is_empty() || jobs.iter().any(|j| !j.changes.is_empty());
                            for j in jobs {
                                // Durable: publish to subscribers, then acknowledge.
                                hub.commit(&j.changes);
                                if let Some(c) = j.changes.last() {
                                    hub.durable = hub.durable.max(c.seq);
                                }
                                (j.done)(Ok(()));
                            }
                            if wrote {
                                if let Some(was) = hub.storage_error.take() {
                                    tracing::warn!(was = %was, "storage recovered: commits succeed again");
                                }
                            }
                        }
                        Err(e) => {
                            // Everything queued after the failed group was applied after it: roll all
                            // of it back, newest first, so memory matches the disk again.
                            let mut all = jobs;
                            all.extend(drain());
                            let msg = e.to_string();
                            if hub.storage_error.is_none() {
                                tracing::error!(error = %e, writes = all.len(), "commit failed; rolling back unacknowledged writes; writes answer 503 until a commit succeeds (retried with each write, and probed every second)");
                            } else {
                                tracing::debug!(error = %e, writes = all.len(), "commit failed again");
                            }
                            hub.storage_error = Some(msg.clone());
                            for j in all.iter().rev() {
                                hub.engine.revert(&j.changes);
                            }
                            // Pools built while those writes were applied resync with a snapshot.
                            hub.fan_out();
                            for j in all {
                                (j.done)(Err(msg.clone()));
                            }
                        }
                    }
                },
            ),
        );
        // Under the lock, so no write applied before the committer takes over is left behind
        // `durable` (it would count as pending forever).
        let mut hub = self.lock();
        hub.durable = hub.engine.store().last_seq();
        let _ = self.disk.set(disk);
        let _ = self.committer.set(committer);
    }

    /// Hands applied changes on: in memory mode they are published at once and `done(Ok)` runs
    /// now; with a disk they are queued for the group commit and `done` runs once they are
    /// durable (and published) or rolled back. Call with the hub lock held (`hub` is its guard),
    /// so the commit queue stays in sequence order.
    ///
    /// An operation that changed nothing (a read, a refusal, a delete of nothing) has its answer
    /// computed from memory, which may hold pending writes: `done` then runs as
    /// [`Shared::after_pending`] says, so the answer is given only once what it saw is committed.
    pub fn persist(&self, hub: &mut Hub, changes: Vec<Change>, done: Done) {
        if changes.is_empty() {
            self.after_pending(hub, done);
            return;
        }
        match self.committer.get() {
            None => {
                hub.commit(&changes);
                done(Ok(()));
            }
            Some(c) => {
                let first = changes[0].seq;
                // A stopped commit thread cannot make this durable: undo it now.
                let history = hub.engine.take_history_delta();
                let receipts = hub.engine.take_receipts_delta();
                if let Err(job) = c.submit_or_return(Job {
                    changes,
                    history,
                    receipts,
                    done,
                }) {
                    tracing::error!(seq = first, "commit thread is gone; rolling back");
                    hub.engine.revert(&job.changes);
                    (job.done)(Err("the commit thread stopped".into()));
                }
            }
        }
    }

    /// Whether writes go to disk.
    pub fn is_durable(&self) -> bool {
        self.committer.get().is_some()
    }

    /// Whether memory holds writes whose commit has not finished (never in memory mode). Call
    /// with the hub lock held.
    pub fn pending(&self, hub: &Hub) -> bool {
        self.committer.get().is_some() && hub.engine.store().last_seq() > hub.durable
    }

    /// Readers see committed state only (docs/protocol.md §2): an answer computed from memory
    /// while writes are pending may show them, and one of them may still fail and be rolled back.
    /// So such an answer waits: `done(Ok)` runs once every write applied so far is committed
    /// (the answer is then true of the disk), `done(Err)` if they were rolled back (the caller
    /// computes its answer again). With nothing pending, `done(Ok)` runs at once.
    ///
    /// Why waiting, rather than answering from the state before the pending writes: memory keeps
    /// only the newest state of each key, and the wait is a barrier in the commit queue (a job
    /// with no changes, which costs no disk write), so it costs nothing when no write is pending
    /// and at most one group commit (one fsync) when one is: etcd's linearizable read.
    /// Call with the hub lock held, so the barrier is queued behind the writes the answer saw.
    pub fn after_pending(&self, hub: &Hub, done: Done) {
        if !self.pending(hub) {
            done(Ok(()));
            return;
        }
        let Some(c) = self.committer.get() else {
            done(Ok(()));
            return;
        };
        if let Err(job) = c.submit_or_return(Job {
            changes: Vec::new(),
            history: Default::default(),
            receipts: Default::default(),
            done,
        }) {
            (job.done)(Err("the commit thread stopped".into()));
        }
    }

    /// After a subscription was joined under the hub lock: if writes are pending, its first frame
    /// (queued already) may show them, so the connection is held (sends nothing from its queue)
    /// until they are committed; if they are rolled back instead, the connection is told to
    /// close without sending it (its client subscribes again). Nothing happens when no write is
    /// pending.
    pub fn hold_until_committed(&self, hub: &Hub, ctl: &Arc<Ctl>) {
        if !self.pending(hub) {
            return;
        }
        ctl.held.fetch_add(1, Ordering::AcqRel);
        let c = ctl.clone();
        self.after_pending(
            hub,
            Box::new(move |r| {
                if r.is_err() {
                    c.hold_failed.store(true, Ordering::Release);
                }
                c.held.fetch_sub(1, Ordering::AcqRel);
                c.released.notify_one();
            }),
        );
    }
}

/// What one connection is subscribed to; dropping it leaves every pool (never drop it while
/// holding the hub lock).
#[derive(Debug)]
pub struct Registration {
    shared: Arc<Shared>,
    /// The connection id.
    pub conn: u64,
    /// Pools the connection's sink is attached to.
    pub pools: Vec<PoolId>,
    /// Whether it is a clock subscriber.
    pub clock: bool,
    /// Lag flag and wake-up.
    pub ctl: Arc<Ctl>,
    /// When the connection's token expires: the connection is closed then (4001).
    pub expires: Option<tokio::time::Instant>,
    /// When the connection's next lease is due for renewal (`/_ws` leased keys).
    pub renew_at: Option<tokio::time::Instant>,
}

impl Registration {
    /// Leaves every pool now (the connection is closing); idempotent.
    pub fn unregister(&mut self) {
        if self.pools.is_empty() && !self.clock {
            return;
        }
        let mut hub = self.shared.lock();
        for id in self.pools.drain(..) {
            hub.leave(id, self.conn);
        }
        if self.clock {
            hub.clocks.retain(|s| s.conn != self.conn);
            self.clock = false;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.unregister();
        self.shared.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether applying `changes` may move the next TTL deadline earlier, so the timer task must
/// re-read it. Only a change that leaves an expiry does; waking the timer on every write would
/// cost a task wakeup and a lock per request (docs/BENCHMARKS.md, the HTTP write profile).
pub fn sets_expiry(changes: &[Change]) -> bool {
    changes
        .iter()
        .any(|c| c.entry.as_ref().is_some_and(|e| e.expires.get().is_some()))
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    fn frame(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn in_order_bounded_and_ended_by_the_last_sender() {
        let (sink, mut q) = queue(1, 2);
        let other = sink.clone();
        assert!(!sink.offer(frame("a")));
        sink.reply(frame("r"));
        assert!(!other.offer(frame("b")));
        // Full: the third broadcast frame is refused and the connection marked lagging; a
        // reply is never refused.
        assert!(other.offer(frame("c")));
        assert!(sink.ctl.is_lagged());
        sink.reply(frame("s"));
        let got: Vec<(Bytes, bool)> = std::iter::from_fn(|| q.try_recv()).collect();
        assert_eq!(
            got,
            [
                (frame("a"), false),
                (frame("r"), true),
                (frame("b"), false),
                (frame("s"), true)
            ]
        );
        // A waiting task is woken by a frame, and by the last sender going.
        let waiting = tokio::spawn(async move {
            let first = q.recv().await;
            let end = q.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        sink.reply(frame("t"));
        drop(sink);
        tokio::task::yield_now().await;
        drop(other);
        let (first, end) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(first, Some((frame("t"), true)));
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn coalescing_slots_fold_until_taken() {
        let (sink, mut q) = queue(1, 8);
        let mut pending = None;
        let mut composed = Composed::default();
        let f = |v: u64, m: &str| {
            Bytes::from(format!(
                r#"{{"snapshot":false,"version":"{v:x}","data":[{{"op":"replace","path":"/data","value":"{m}"}}]}}"#
            ))
        };
        assert!(!sink.offer_coalescing(&mut pending, &f(1, "a"), &mut composed));
        composed = Composed::default();
        assert!(!sink.offer_coalescing(&mut pending, &f(2, "b"), &mut composed));
        // One frame queued, holding the newer value.
        let (b, reply) = q.try_recv().unwrap();
        assert!(!reply);
        assert_eq!(b, f(2, "b"));
        assert!(q.try_recv().is_none());
        // Taken: the next frame is queued anew (the same slot, reused).
        composed = Composed::default();
        assert!(!sink.offer_coalescing(&mut pending, &f(3, "c"), &mut composed));
        assert_eq!(q.try_recv().unwrap().0, f(3, "c"));
        assert_eq!(sink.ctl.queued.load(Ordering::Acquire), 0);
        // A gone connection refuses frames (and does not count them).
        drop(q);
        composed = Composed::default();
        assert!(!sink.offer_coalescing(&mut pending, &f(4, "d"), &mut composed));
        assert!(!sink.offer(f(5, "e")));
        assert_eq!(sink.ctl.queued.load(Ordering::Acquire), 0);
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        let args = ServeArgs::memory();
        let clocks = Clocks::new();
        let engine = Engine::new(
            clocks.tick(),
            args.core_config(),
            stateline_core::Filters::new(),
        );
        Shared::new(
            engine,
            clocks,
            Limits::from_args(&args),
            watch::channel(false).1,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_behind_another_thread_gets_the_hub_once_it_is_let_go() {
        let sh = shared();
        // Free: taken at once.
        drop(sh.lock_yielding().await);
        // Held by another thread for longer than the yields last: the task falls back to
        // blocking and gets the hub after the holder lets it go, with the holder's write seen.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = {
            let sh = sh.clone();
            std::thread::spawn(move || {
                let mut hub = sh.lock();
                held_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                hub.durable = 7;
            })
        };
        held_rx.recv().unwrap();
        let started = Instant::now();
        let durable = sh.lock_yielding().await.durable;
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_eq!(durable, 7);
        holder.join().unwrap();
        // A poisoned hub is still handed out (its state is consistent).
        let sh2 = sh.clone();
        let _ = std::thread::spawn(move || {
            let _hub = sh2.lock();
            panic!("poison the hub");
        })
        .join();
        assert_eq!(sh.lock_yielding().await.durable, 7);
    }
}

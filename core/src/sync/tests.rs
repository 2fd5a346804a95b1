//! The client state machine against a simulated `/_ws` server made of the real engine, pools and
//! mux codec (no sockets): what a browser would see, with disconnects at any point.

use super::*;
use crate::engine::{Config as EngineConfig, Engine};
use crate::filter::Filters;
use crate::pool::PoolId;
use crate::session::{Limits, Reply, Session};
use crate::store::Change;
use crate::{Identity, Tick};
use proptest::prelude::*;

/// One server connection: its session (the core's, as both servers drive it), the pools it
/// receives frames from, and the messages on their way to the client.
struct Conn {
    session: Session,
    pools: Vec<PoolId>,
    to_client: VecDeque<Vec<u8>>,
}

impl Conn {
    fn new(e: &Engine) -> Conn {
        Conn {
            session: Session::open(e, Identity::Anonymous, None, Limits::default())
                .expect("no state limit"),
            pools: Vec::new(),
            to_client: VecDeque::new(),
        }
    }
}

struct Server {
    e: Engine,
    now: i64,
    conn: Option<Conn>,
    // Every change applied, in order: the truth a client's reports are checked against.
    history: Vec<Change>,
}

impl Server {
    fn new(log_entries: usize) -> Server {
        let cfg = EngineConfig {
            log_entries,
            ..EngineConfig::default()
        };
        Server {
            e: Engine::new(Tick::from_wall(1_000_000), cfg, Filters::new()),
            now: 1_000_000,
            conn: None,
            history: Vec::new(),
        }
    }

    fn tick(&mut self) -> Tick {
        self.now += 1_000;
        Tick::from_wall(self.now)
    }

    fn drop_conn(&mut self) {
        if let Some(mut c) = self.conn.take() {
            for id in c.session.close() {
                self.e.leave(id);
            }
            // What the connection leaves behind: its on-close writes, then its lease releases.
            let t = self.tick();
            let changes = c.session.end(&mut self.e, t);
            self.history.extend(changes.iter().cloned());
            self.e.publish(&changes);
            while self.e.poll_frame().is_some() {}
        }
    }

    /// Runs an operation for another client (or this one) and fans its frames out.
    fn run(&mut self, op: crate::Op) -> Result<crate::Applied, crate::Error> {
        let t = self.tick();
        let a = self.e.execute_as_system(t, op)?;
        self.history.extend(a.changes.iter().cloned());
        self.e.publish(&a.changes);
        while let Some(f) = self.e.poll_frame() {
            if let Some(c) = &mut self.conn {
                if c.pools.contains(&f.pool) {
                    c.to_client.push_back(f.bytes.to_vec());
                }
            }
        }
        Ok(a)
    }

    /// One `/_ws` message, through the core's session: the reply after the frames its write
    /// produced, a subscription's first frame after its reply.
    fn receive(&mut self, msg: &str) {
        let t = self.tick();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let fx = conn
            .session
            .handle(&mut self.e, t, msg.as_bytes(), &mut |_, _| Ok(()));
        for id in fx.left {
            conn.pools.retain(|p| *p != id);
            self.e.leave(id);
        }
        if let Some(id) = fx.joined {
            conn.pools.push(id);
        }
        let reply = match fx.reply {
            Reply::Now(b) => b,
            Reply::Refusal(r) => r.no,
            Reply::Forward(f) => f.unavailable("not a cluster"),
            Reply::Write(mut w) => {
                let changes = std::mem::take(&mut w.changes);
                self.history.extend(changes.iter().cloned());
                self.e.publish(&changes);
                while let Some(f) = self.e.poll_frame() {
                    if conn.pools.contains(&f.pool) {
                        conn.to_client.push_back(f.bytes.to_vec());
                    }
                }
                w.ok
            }
        };
        conn.to_client.push_back(reply.to_vec());
        if let Some(b) = fx.first {
            conn.to_client.push_back(b.to_vec());
        }
    }
}

/// A client wired to the simulated server, recording what it reported.
struct Rig {
    c: Client,
    s: Server,
    now: u64,
    events: Vec<Event>,
    sent: Vec<String>,
}

impl Rig {
    fn new(log_entries: usize) -> Rig {
        Rig::with(Config::default(), log_entries)
    }

    fn with(config: Config, log_entries: usize) -> Rig {
        let mut r = Rig {
            c: Client::new(config),
            s: Server::new(log_entries),
            now: 0,
            events: Vec::new(),
            sent: Vec::new(),
        };
        r.c.connect(0);
        r.pump();
        r
    }

    /// Carries out the client's IO (sockets open at once) and collects its events.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let Some(io) = self.c.poll_io() else { break };
            match io {
                Io::Connect => {
                    self.s.drop_conn();
                    self.s.conn = Some(Conn::new(&self.s.e));
                    self.c.handle_open(self.now);
                }
                Io::Send(m) => {
                    self.sent.push(m.clone());
                    self.s.receive(&m);
                }
                Io::Close => self.s.drop_conn(),
            }
        }
        while let Some(e) = self.c.poll_event() {
            self.events.push(e);
        }
    }

    /// Delivers up to `n` server messages.
    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(m) = self.s.conn.as_mut().and_then(|c| c.to_client.pop_front()) else {
                break;
            };
            self.c.handle_message(self.now, &m);
            self.pump();
        }
    }

    fn deliver_all(&mut self) {
        for _ in 0..100 {
            self.deliver(10_000);
            if self.s.conn.as_ref().is_none_or(|c| c.to_client.is_empty()) {
                break;
            }
        }
    }

    /// The socket dies: undelivered messages are lost.
    fn disconnect(&mut self) {
        self.s.drop_conn();
        self.c.handle_close(self.now, 0.5);
        self.pump();
    }

    /// Time passes until the client reconnects.
    fn reconnect(&mut self) {
        if let Some(t) = self.c.poll_timeout() {
            self.now = self.now.max(t);
            self.c.handle_timeout(self.now, 0.5);
            self.pump();
        }
    }

    fn set(&mut self, key: &str, v: Value) {
        self.s
            .run(crate::Op::Set {
                key: key.into(),
                value: v.into(),
                ttl: crate::Ttl::Clear,
                cond: crate::Cond::Always,
            })
            .unwrap();
    }

    fn changes(&self, pattern: &str) -> Vec<KeyChange> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Update {
                    pattern: p,
                    changes,
                    ..
                } if p == pattern => Some(changes.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn replies(&self) -> Vec<(u64, bool, Result<Value, Failure>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Reply {
                    req,
                    queued,
                    result,
                } => Some((*req, *queued, result.clone())),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn backoff_schedule() {
    let c = Config::default();
    let check = |attempt, jitter, want| assert_eq!(backoff(&c, attempt, jitter), want);
    check(0, 1.0, 250);
    check(0, 0.0, 125);
    check(1, 1.0, 500);
    check(3, 1.0, 2_000);
    check(6, 1.0, 10_000); // capped
    check(60, 1.0, 10_000); // no overflow
    check(2, 0.5, 750);
    check(2, 7.0, 1_000); // jitter clamped
    check(2, f64::NAN, 500);
}

#[test]
fn subscribes_and_reports_initial_value_then_changes() {
    let mut r = Rig::new(1_000);
    r.set("a/x", json!(1));
    r.c.subscribe(1, "a/*").unwrap();
    r.c.subscribe(2, "/a/x").unwrap();
    r.pump();
    r.deliver_all();
    let first: Vec<_> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Update {
                pattern,
                initial: true,
                value,
                ..
            } => Some((pattern.clone(), value.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(first.len(), 2);
    assert_eq!(first[1], ("a/x".to_string(), json!(1)));
    assert_eq!(first[0].1[0]["key"], json!("a/x"));
    assert_eq!(first[0].1[0]["revision"], json!(0));
    r.set("a/x", json!(2));
    r.set("a/y", json!(3));
    r.deliver_all();
    let ch = r.changes("a/*");
    let got: Vec<_> = ch
        .iter()
        .map(|c| (c.key.as_str(), c.value.clone(), c.revision))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a/x", Some(json!(1)), 0),
            ("a/x", Some(json!(2)), 1),
            ("a/y", Some(json!(3)), 0)
        ]
    );
    assert_eq!(r.c.value("a/x"), Some(json!(2)));
    // A late listener on an existing subscription gets the cached value at once.
    r.c.subscribe(3, "a/x").unwrap();
    r.pump();
    assert!(matches!(
        r.events.last(),
        Some(Event::Update { listeners, initial: true, value, .. }) if listeners == &vec![3] && value == &json!(2)
    ));
}

#[test]
fn deletes_are_reported_with_their_revision() {
    let mut r = Rig::new(1_000);
    r.c.subscribe(1, "d/").unwrap();
    r.pump();
    r.set("d/k", json!("v"));
    r.s.run(crate::Op::Delete {
        target: "d/k".into(),
        cond: crate::Cond::Always,
    })
    .unwrap();
    r.deliver_all();
    let ch = r.changes("d/");
    assert_eq!(ch.len(), 2);
    assert_eq!((ch[1].value.clone(), ch[1].revision), (None, 1));
    assert_eq!(r.c.value("d/"), Some(json!([])));
}

#[test]
fn resumes_from_version_without_duplicates_and_without_loss() {
    let mut r = Rig::new(1_000);
    r.c.subscribe(1, "r/*").unwrap();
    r.pump();
    r.deliver_all();
    r.set("r/a", json!(1));
    r.deliver_all();
    let v = r.c.version("r/*").unwrap();
    r.disconnect();
    assert_eq!(r.c.state(), State::Waiting);
    r.set("r/a", json!(2));
    r.set("r/b", json!(3));
    r.sent.clear();
    r.reconnect();
    let sub: Value = serde_json::from_str(&r.sent[0]).unwrap();
    assert_eq!(
        (sub["op"].as_str(), sub["v"].as_str()),
        (Some("sub"), Some(format!("{v:x}").as_str())),
        "resubscribes from its version"
    );
    assert_eq!(r.c.state(), State::Open);
    r.deliver_all();
    assert!(r.c.version("r/*").unwrap() > v);
    let got: Vec<_> = r
        .changes("r/*")
        .iter()
        .map(|c| (c.key.clone(), c.value.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("r/a".to_string(), Some(json!(1))),
            ("r/a".to_string(), Some(json!(2))),
            ("r/b".to_string(), Some(json!(3)))
        ]
    );
    // The resume frame was missed ops, not a snapshot: the sub message carried the version.
    let states: Vec<State> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::State(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        vec![
            State::Connecting,
            State::Open,
            State::Waiting,
            State::Connecting,
            State::Open
        ]
    );
}

#[test]
fn snapshot_after_a_too_old_version_is_diffed_against_the_cache() {
    // A log of 2 entries cannot cover 5 missed changes: the server sends a snapshot.
    let mut r = Rig::new(2);
    for k in ["s/a", "s/b", "s/c"] {
        r.set(k, json!(0));
    }
    r.c.subscribe(1, "s/*").unwrap();
    r.pump();
    r.deliver_all();
    r.disconnect();
    r.set("s/b", json!(1));
    r.s.run(crate::Op::Delete {
        target: "s/c".into(),
        cond: crate::Cond::Always,
    })
    .unwrap();
    r.set("s/d", json!(2));
    r.set("s/e", json!(3));
    r.set("s/f", json!(4));
    r.reconnect();
    r.deliver_all();
    let after: Vec<_> = r
        .changes("s/*")
        .into_iter()
        .skip(3)
        .map(|c| (c.key, c.value))
        .collect();
    assert_eq!(
        after,
        vec![
            ("s/b".to_string(), Some(json!(1))),
            ("s/d".to_string(), Some(json!(2))),
            ("s/e".to_string(), Some(json!(3))),
            ("s/f".to_string(), Some(json!(4))),
            ("s/c".to_string(), None),
        ]
    );
    assert_eq!(
        r.changes("s/*").last().map(|c| c.revision),
        Some(-1),
        "a delete seen through a snapshot has no known revision"
    );
}

#[test]
fn offline_writes_are_queued_and_a_failed_cas_is_a_visible_conflict() {
    let mut r = Rig::new(1_000);
    r.set("w/k", json!("server"));
    r.disconnect();
    let a = r.c.write(json!({"op":"set","key":"w/a","value":1}));
    // Expects to create w/k (revision 0), but the server already has it: a conflict.
    let b =
        r.c.write(json!({"op":"set","key":"w/k","value":"mine","rev":0}));
    let p = r.c.write(json!({"op":"push","path":"w/*","value":2}));
    r.pump();
    assert_eq!(r.c.queued(), 3);
    assert!(r.replies().is_empty());
    r.reconnect();
    r.deliver_all();
    let rs = r.replies();
    assert_eq!(rs.len(), 3);
    assert_eq!(rs[0].0, a);
    assert!(rs[0].1, "sent after a reconnect");
    assert_eq!(rs[0].2.as_ref().unwrap()["revision"], json!(0));
    assert_eq!(rs[1].0, b);
    let err = rs[1].2.clone().unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert_eq!(err.status, 409);
    assert_eq!(rs[2].0, p);
    assert!(rs[2].2.as_ref().unwrap()["key"]
        .as_str()
        .unwrap()
        .starts_with("w/"));
    assert_eq!(
        r.s.e.store().get("w/k").map(|e| e.data().clone()),
        Some(json!("server"))
    );
}

#[test]
fn in_flight_writes_are_resent_or_failed_when_the_socket_drops() {
    let mut r = Rig::new(1_000);
    // Sent, then the socket dies before the server's messages arrive.
    r.s.conn.as_mut().unwrap().to_client.clear();
    let set = r.c.write(json!({"op":"set","key":"f/a","value":1}));
    let incr = r.c.write(json!({"op":"incr","key":"f/n"}));
    r.pump();
    r.disconnect();
    let rs = r.replies();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].0, incr);
    assert_eq!(rs[0].2.clone().unwrap_err().code, "connection-lost");
    r.reconnect();
    r.deliver_all();
    let rs = r.replies();
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[1].0, set);
    assert!(rs[1].2.is_ok());
}

#[test]
fn writes_with_ids_in_flight_are_resent_and_applied_once() {
    let config = Config {
        write_ids: Some("c0ffee".into()),
        ..Config::default()
    };
    let mut r = Rig::with(config, 1_000);
    // The server applies them, then the socket dies before its answers arrive.
    r.s.conn.as_mut().unwrap().to_client.clear();
    let push = r.c.write(json!({"op":"push","path":"l/*","value":1}));
    let incr = r.c.write(json!({"op":"incr","key":"n"}));
    let tx =
        r.c.write(json!({"op":"tx","then":[{"op":"incr","key":"n","by":10}]}));
    let lease =
        r.c.write(json!({"op":"set","key":"p/me","value":1,"lease":true}));
    r.pump();
    assert_eq!(
        r.s.e.store().get("n").map(|e| e.data().clone()),
        Some(json!(11))
    );
    let rids: Vec<Value> = r
        .sent
        .iter()
        .map(|m| serde_json::from_str::<Value>(m).unwrap()["rid"].clone())
        .collect();
    assert_eq!(
        rids,
        vec![
            json!(format!("c0ffee.{push}")),
            json!(format!("c0ffee.{incr}")),
            json!(format!("c0ffee.{tx}")),
            Value::Null
        ],
        "every write but the leased one carries an id"
    );
    r.disconnect();
    assert!(r.replies().is_empty(), "nothing failed: {:?}", r.replies());
    r.reconnect();
    r.deliver_all();
    let rs = r.replies();
    let ok = |req: u64| {
        rs.iter()
            .find(|(q, _, _)| *q == req)
            .and_then(|(_, _, res)| res.clone().ok())
            .unwrap_or_else(|| panic!("no answer for {req}: {rs:?}"))
    };
    // Answered from the receipts: the first key, the first count, each applied once.
    assert_eq!(ok(incr)["value"], json!(1));
    assert_eq!(ok(tx)["results"][0]["value"], json!(11));
    let key = ok(push)["key"].as_str().unwrap().to_string();
    assert!(ok(lease)["key"] == json!("p/me"));
    assert_eq!(
        r.s.e.store().get("n").map(|e| e.data().clone()),
        Some(json!(11))
    );
    let pushed: Vec<String> =
        r.s.e
            .store()
            .scan(&Pattern::parse("l/*").unwrap())
            .map(|(k, _)| k.to_string())
            .collect();
    assert_eq!(pushed, vec![key]);
    assert_eq!(r.s.e.stats().repeats, 3);
}

#[test]
fn pings_a_quiet_server_and_gives_up_on_a_silent_one() {
    let mut r = Rig::new(1_000);
    let t = r.c.poll_timeout().unwrap();
    assert_eq!(t, Config::default().ping_interval);
    r.now = t;
    r.c.handle_timeout(r.now, 0.0);
    r.pump();
    r.deliver_all(); // the pong
    assert_eq!(
        r.c.poll_timeout(),
        Some(t + Config::default().ping_interval)
    );
    // Now the server stops answering.
    r.now = r.c.poll_timeout().unwrap();
    r.c.handle_timeout(r.now, 0.0);
    r.pump();
    r.s.conn.as_mut().unwrap().to_client.clear();
    r.now = r.c.poll_timeout().unwrap();
    r.c.handle_timeout(r.now, 0.0);
    assert_eq!(r.c.poll_io(), Some(Io::Close));
    assert_eq!(r.c.state(), State::Waiting);
    assert_eq!(
        r.c.poll_timeout(),
        Some(r.now + backoff(&Config::default(), 0, 0.0))
    );
}

#[test]
fn refused_subscription_and_invalid_paths() {
    let mut r = Rig::new(1_000);
    assert_eq!(r.c.subscribe(1, "a//b").unwrap_err().code, "invalid-key");
    assert_eq!(r.c.subscribe(2, "ok/*").unwrap(), "ok/*");
    r.c.unsubscribe(2);
    r.pump();
    r.deliver_all();
    assert_eq!(r.c.value("ok/*"), None);
    assert!(r.s.e.pools().is_empty(), "the server pool went away");
}

#[test]
fn a_patch_that_does_not_apply_resyncs_with_a_snapshot() {
    let mut r = Rig::new(1_000);
    r.set("p/k", json!({"a": 1}));
    r.c.subscribe(1, "p/k").unwrap();
    r.pump();
    r.deliver_all();
    // A corrupted frame (a patch against a path that does not exist).
    r.c.handle_message(
        r.now,
        br#"{"sub":"p/k","snapshot":false,"version":"ff","revs":[["p/k",9]],"data":[{"op":"replace","path":"/nope/x","value":1}]}"#,
    );
    r.pump();
    r.deliver_all();
    r.set("p/k", json!({"a": 2}));
    r.deliver_all();
    let got: Vec<_> = r.changes("p/k").into_iter().map(|c| c.value).collect();
    assert_eq!(got, vec![Some(json!({"a":1})), Some(json!({"a":2}))]);
}

#[derive(Debug, Clone)]
enum Step {
    Set(usize, i64),
    Delete(usize),
    Deliver(usize),
    Disconnect,
    Reconnect,
    Write(usize, i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..6usize, 0..1000i64).prop_map(|(k, v)| Step::Set(k, v)),
        1 => (0..6usize).prop_map(Step::Delete),
        4 => (0..6usize).prop_map(Step::Deliver),
        1 => Just(Step::Disconnect),
        2 => Just(Step::Reconnect),
        2 => (0..6usize, 0..1000i64).prop_map(|(k, v)| Step::Write(k, v)),
    ]
}

/// Each key's changes as the server made them: (created, revision, value).
type Hist = HashMap<String, Vec<(i64, u64, Option<Value>)>>;

fn history(s: &Server) -> Hist {
    let mut h: Hist = HashMap::new();
    for c in &s.history {
        let created = c.entry.as_ref().map_or(0, |e| e.created);
        h.entry(c.key.to_string()).or_default().push((
            created,
            c.revision,
            c.entry.as_ref().map(|e| e.data().clone()),
        ));
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// However disconnects, reconnects and deliveries interleave with writes: the client ends
    /// holding exactly the server's state, and what it reported for each key is the server's
    /// history of that key in order, never a change twice, ending at the current value.
    #[test]
    fn disconnect_reconnect_resume_never_loses_or_duplicates(
        steps in prop::collection::vec(step(), 1..60),
        small_log in any::<bool>(),
    ) {
        interleavings(&steps, small_log, false)?;
    }

    /// The same with optimistic writes: besides the page's pending guesses, what is reported
    /// follows the server's history, and the client ends at the server's state.
    #[test]
    fn optimistic_writes_end_at_the_servers_state(
        steps in prop::collection::vec(step(), 1..60),
        small_log in any::<bool>(),
    ) {
        interleavings(&steps, small_log, true)?;
    }
}

fn interleavings(steps: &[Step], small_log: bool, optimistic: bool) -> Result<(), TestCaseError> {
    let config = Config {
        optimistic,
        ..Config::default()
    };
    let mut r = Rig::with(config, if small_log { 3 } else { 1_000 });
    r.c.subscribe(1, "g/*").unwrap();
    r.c.subscribe(2, "g/k0").unwrap();
    r.pump();
    for s in steps {
        match s {
            Step::Set(k, v) => r.set(&format!("g/k{k}"), json!(v)),
            Step::Delete(k) => {
                let _ = r.s.run(crate::Op::Delete {
                    target: format!("g/k{k}"),
                    cond: crate::Cond::Always,
                });
            }
            Step::Deliver(n) => r.deliver(*n),
            Step::Disconnect => {
                if r.c.state() == State::Open {
                    r.disconnect()
                }
            }
            Step::Reconnect => r.reconnect(),
            Step::Write(k, v) => {
                r.c.write(json!({"op":"set","key":format!("g/k{k}"),"value":v}));
                r.pump();
            }
        }
    }
    for _ in 0..3 {
        if r.c.state() != State::Open {
            r.reconnect()
        }
    }
    prop_assert_eq!(r.c.state(), State::Open);
    r.deliver_all();

    // The cache equals what the server holds.
    let want: Vec<(String, Value)> =
        r.s.e
            .store()
            .list(&Pattern::parse("g/*").unwrap())
            .into_iter()
            .map(|(k, e)| (k.to_string(), e.data().clone()))
            .collect();
    let held: Vec<(String, Value)> =
        r.c.value("g/*")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["key"].as_str().unwrap().to_string(), i["value"].clone()))
            .collect();
    prop_assert_eq!(&held, &want);
    let k0 =
        r.s.e
            .store()
            .get("g/k0")
            .map(|e| e.data().clone())
            .unwrap_or(Value::Null);
    prop_assert_eq!(r.c.value("g/k0").unwrap(), k0);

    // Reports per key are an in-order subsequence of the server's history of that key.
    let hist = history(&r.s);
    for pattern in ["g/*", "g/k0"] {
        // Every report, and those that follow the server (optimistic changes are the page's
        // own guesses, marked pending; a confirmation of what was shown is not reported).
        let mut all: HashMap<String, Vec<KeyChange>> = HashMap::new();
        for c in r.changes(pattern) {
            all.entry(c.key.clone()).or_default().push(c);
        }
        for (k, reported) in &all {
            let h = &hist[k];
            let mut at = 0usize;
            for c in reported.iter().filter(|c| !c.pending) {
                let pos = h[at..].iter().position(|(cr, rev, v)| {
                    // A delete seen only through a snapshot has no known revision (-1).
                    (*rev as i64 == c.revision || (c.revision == -1 && c.value.is_none()))
                        && v == &c.value
                        && (c.value.is_none() || *cr == c.created)
                });
                prop_assert!(
                    pos.is_some(),
                    "{} reported {:?} out of order or twice; history {:?}",
                    k,
                    c,
                    h
                );
                at += pos.unwrap() + 1;
            }
            // And the last report is the key's current state.
            let last = reported.last().unwrap();
            let cur = r.s.e.store().get(k).map(|e| e.data().clone());
            prop_assert_eq!(&last.value, &cur);
            prop_assert!(optimistic || reported.iter().all(|c| !c.pending));
        }
        // Every key that exists now was reported.
        for (k, _) in &want {
            if pattern == "g/*" || k == "g/k0" {
                prop_assert!(all.contains_key(k), "{} never reported", k);
            }
        }
    }
    // Every write got exactly one reply.
    let mut ids: Vec<u64> = r.replies().iter().map(|x| x.0).collect();
    let n = ids.len();
    ids.dedup();
    prop_assert_eq!(ids.len(), n);
    let writes = steps
        .iter()
        .filter(|s| matches!(s, Step::Write(..)))
        .count();
    prop_assert_eq!(n, writes);
    Ok(())
}

/// Against the real session: a lease and a disconnect write end with each connection (the server
/// deletes the key, runs the write), and the client takes the lease again and registers the
/// write again on the next one; a cancel with the first handle reaches the registration of the
/// moment.
#[test]
fn leases_and_disconnect_writes_are_taken_again_on_every_connection() {
    let mut r = Rig::new(1000);
    r.c.subscribe(1, "presence/r/*").unwrap();
    r.c.subscribe(2, "seen/me").unwrap();
    r.pump();
    r.deliver_all();
    r.c.write(json!({"op":"set","key":"presence/r/me","value":{"n":1},"lease":true}));
    let h =
        r.c.write(json!({"op":"onclose","write":{"op":"set","key":"seen/me","value":"left"}}));
    r.pump();
    r.deliver_all();
    let members = |r: &Rig| {
        r.c.value("presence/r/*")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|i| i["key"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(members(&r), vec!["presence/r/me"]);
    assert_eq!(r.c.value("seen/me"), Some(Value::Null));
    assert!(r.replies().iter().any(|(req, _, res)| *req == h
        && res.as_ref().ok().and_then(|v| v.get("onclose")) == Some(&json!(h))));

    for round in 0..2 {
        r.disconnect();
        r.reconnect();
        r.deliver_all();
        assert_eq!(
            members(&r),
            vec!["presence/r/me"],
            "round {round}: the lease taken again"
        );
        assert_eq!(
            r.c.value("seen/me"),
            Some(json!("left")),
            "round {round}: the write ran"
        );
        r.set("seen/me", json!("back"));
        r.deliver_all();
    }
    // The lease is held by the new connection: its end deletes the key again.
    let presence: Vec<KeyChange> = r.changes("presence/r/*");
    assert!(
        presence.iter().filter(|c| c.value.is_none()).count() >= 2,
        "{presence:?}"
    );

    let k = r.c.write(json!({"op":"onclose_cancel","onclose": h}));
    r.pump();
    r.deliver_all();
    let cancelled = r
        .replies()
        .into_iter()
        .find(|(req, _, _)| *req == k)
        .expect("a reply");
    assert_eq!(cancelled.2.unwrap()["onclose"], json!(h));
    r.disconnect();
    r.reconnect();
    r.deliver_all();
    assert_eq!(
        r.c.value("seen/me"),
        Some(json!("back")),
        "cancelled: it did not run"
    );
    assert_eq!(members(&r), vec!["presence/r/me"]);
}

#[test]
fn pings_go_on_while_the_server_talks() {
    // The edge takes a silent peer that holds leases for gone: a client that only receives
    // still sends a ping every interval.
    let mut r = Rig::new(1_000);
    let interval = Config::default().ping_interval;
    r.c.subscribe(1, "busy").unwrap();
    r.pump();
    r.deliver_all();
    let sent_before = r.sent.len();
    for step in 0..30u64 {
        // A frame from the server every tenth of an interval, for three intervals.
        r.now += interval / 10;
        r.s.run(crate::Op::Set {
            key: "busy".into(),
            value: json!(step).into(),
            ttl: crate::Ttl::Clear,
            cond: crate::Cond::Always,
        })
        .unwrap();
        r.deliver_all();
        if r.c.poll_timeout().is_some_and(|at| r.now >= at) {
            r.c.handle_timeout(r.now, 0.0);
            r.pump();
            r.deliver_all();
        }
    }
    let pings = r.sent[sent_before..]
        .iter()
        .filter(|m| m.contains("\"ping\""))
        .count();
    assert!(
        pings >= 2,
        "{pings} pings in three intervals of a busy server"
    );
    assert_eq!(r.c.state(), State::Open);
}

fn optimistic() -> Rig {
    let config = Config {
        optimistic: true,
        ..Config::default()
    };
    let mut r = Rig::with(config, 1_000);
    r.set("o/a", json!({"a": 1}));
    r.c.subscribe(1, "o/*").unwrap();
    r.c.subscribe(2, "o/a").unwrap();
    r.pump();
    r.deliver_all();
    r.events.clear();
    r
}

// (key, value, revision, pending) of what a subscription reported, in order.
fn reported(r: &Rig, pattern: &str) -> Vec<(String, Option<Value>, i64, bool)> {
    r.changes(pattern)
        .into_iter()
        .map(|c| (c.key, c.value, c.revision, c.pending))
        .collect()
}

#[test]
fn an_optimistic_set_is_shown_at_once_and_its_confirmation_is_silent() {
    let mut r = optimistic();
    r.c.write(json!({"op":"set","key":"o/b","value":2}));
    r.pump();
    // Before any answer: shown, pending, on both subscriptions that see it (only the glob).
    assert_eq!(
        reported(&r, "o/*"),
        vec![("o/b".into(), Some(json!(2)), -1, true)]
    );
    assert_eq!(r.c.value("o/*").unwrap()[0]["value"], json!(2));
    r.deliver_all();
    // The server's frame and answer agree: nothing more.
    assert_eq!(reported(&r, "o/*").len(), 1);
    assert!(r.replies()[0].2.is_ok());
    // A later change of the key is reported as usual.
    r.set("o/b", json!(3));
    r.deliver_all();
    assert_eq!(
        reported(&r, "o/*")[1],
        ("o/b".into(), Some(json!(3)), 1, false)
    );
}

#[test]
fn a_refused_optimistic_write_is_rolled_back_and_reported() {
    let mut r = optimistic();
    let w =
        r.c.write(json!({"op":"set","key":"o/a","value":9,"ifMatch":"\"nope\""}));
    r.pump();
    assert_eq!(r.c.value("o/a"), Some(json!(9)));
    r.deliver_all();
    assert_eq!(
        reported(&r, "o/a"),
        vec![
            ("o/a".into(), Some(json!(9)), -1, true),
            ("o/a".into(), Some(json!({"a": 1})), 0, false)
        ]
    );
    assert_eq!(r.c.value("o/a"), Some(json!({"a": 1})));
    let rs = r.replies();
    assert_eq!(rs[0].0, w);
    assert!(rs[0].2.is_err());
    // A delete of a key that is refused comes back too.
    r.events.clear();
    r.c.write(json!({"op":"del","key":"o/a","ifMatch":"\"nope\""}));
    r.pump();
    assert_eq!(reported(&r, "o/a")[0], ("o/a".into(), None, -1, true));
    assert_eq!(r.c.value("o/*"), Some(json!([])));
    r.deliver_all();
    assert_eq!(
        reported(&r, "o/a")[1],
        ("o/a".into(), Some(json!({"a": 1})), 0, false)
    );
}

#[test]
fn an_optimistic_patch_is_reconciled_with_what_the_server_stored() {
    let mut r = optimistic();
    r.c.write(json!({"op":"patch","key":"o/a","value":{"b":2}}));
    // Another writer replaces the key before this patch reaches the server.
    r.set("o/a", json!({"x": 9}));
    r.pump();
    r.deliver_all();
    // Shown at once as the patch of what the page saw; then what the server made of it.
    assert_eq!(
        reported(&r, "o/a"),
        vec![
            ("o/a".into(), Some(json!({"a": 1, "b": 2})), -1, true),
            ("o/a".into(), Some(json!({"x": 9, "b": 2})), 2, false)
        ]
    );
    assert_eq!(r.c.value("o/a"), Some(json!({"x": 9, "b": 2})));
}

#[test]
fn optimistic_writes_made_offline_show_at_once_and_a_new_listener_sees_them() {
    let mut r = optimistic();
    r.disconnect();
    r.c.write(json!({"op":"set","key":"o/a","value":1}));
    r.c.write(json!({"op":"patch","key":"o/a","value":2,"type":"merge-patch"}));
    r.c.write(json!({"op":"set","key":"o/*","value":0}));
    r.c.write(json!({"op":"push","path":"o/*","value":0}));
    r.pump();
    // Two pending changes of o/a; the glob write and the push are not optimistic.
    assert_eq!(
        reported(&r, "o/a"),
        vec![
            ("o/a".into(), Some(json!(1)), -1, true),
            ("o/a".into(), Some(json!(2)), -1, true)
        ]
    );
    r.c.subscribe(3, "o/a").unwrap();
    r.pump();
    let late = r.events.iter().rev().find_map(|e| match e {
        Event::Update {
            listeners,
            value,
            changes,
            ..
        } if listeners == &vec![3] => Some((value.clone(), changes.clone())),
        _ => None,
    });
    let (value, changes) = late.expect("the late listener's first update");
    assert_eq!(value, json!(2));
    assert!(changes[0].pending);
    let before = reported(&r, "o/a").len();
    r.reconnect();
    r.deliver_all();
    // Each write stored what was shown: nothing more for o/a; the push is reported when the
    // server sends it.
    assert_eq!(reported(&r, "o/a").len(), before);
    assert_eq!(r.c.value("o/a"), Some(json!(2)));
    assert!(r.c.value("o/*").unwrap().as_array().unwrap().len() == 2);
}

#[test]
fn without_optimistic_changes_wait_for_the_server() {
    let mut r = Rig::new(1_000);
    r.c.subscribe(1, "o/*").unwrap();
    r.pump();
    r.deliver_all();
    r.events.clear();
    r.s.conn.as_mut().unwrap().to_client.clear();
    r.c.write(json!({"op":"set","key":"o/b","value":2}));
    r.pump();
    assert!(reported(&r, "o/*").is_empty());
}

// ---- what a client keeps across a reload (`persist`) ----------------------------------------

/// The page reloads: a new client on the same server, with what the old one kept.
fn reload(r: &mut Rig, config: Config) {
    r.c.close();
    r.pump();
    r.c = Client::new(config);
    r.events.clear();
    r.sent.clear();
}

fn updates(r: &Rig) -> Vec<(bool, bool, Value, Vec<String>)> {
    r.events
        .iter()
        .filter_map(|e| match e {
            Event::Update {
                initial,
                cached,
                value,
                changes,
                ..
            } => Some((
                *initial,
                *cached,
                value.clone(),
                changes.iter().map(|c| c.key.clone()).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn keys_of(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["key"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_kept_cache_is_shown_at_once_and_resumed_from_its_version() {
    let mut r = Rig::new(1_000);
    r.set("b/a", json!(1));
    r.set("b/b", json!(2));
    // Enough keys that the server's resume (3 ops) is shorter than a snapshot of the list.
    for i in 0..4 {
        r.set(&format!("b/x{i}"), json!(i));
    }
    r.c.subscribe(1, "b/*").unwrap();
    r.pump();
    r.deliver_all();
    let cache = r.c.cache("b/*").expect("a confirmed view");
    let v = r.c.version("b/*").unwrap();
    assert!(r.c.cache("nope").is_none());
    // While the page is gone: one key changes, one goes, one comes.
    r.set("b/b", json!(20));
    r.s.run(crate::Op::Delete {
        target: "b/a".into(),
        cond: crate::Cond::Always,
    })
    .unwrap();
    r.set("b/c", json!(3));
    reload(&mut r, Config::default());
    r.c.restore_cache("b/*", &cache).unwrap();
    r.c.subscribe(7, "/b/*").unwrap();
    r.pump();
    // At once, before any socket: the cache, marked.
    let u = updates(&r);
    assert_eq!(u.len(), 1);
    assert!(u[0].0 && u[0].1, "initial and cached: {u:?}");
    assert_eq!(
        keys_of(&u[0].2),
        vec!["b/x3", "b/x2", "b/x1", "b/x0", "b/b", "b/a"]
    );
    r.c.connect(r.now);
    r.pump();
    let sub: Value = serde_json::from_str(&r.sent[0]).unwrap();
    assert_eq!(
        sub["v"],
        json!(format!("{v:x}")),
        "resumes from the kept version"
    );
    let first =
        r.s.conn
            .as_ref()
            .unwrap()
            .to_client
            .get(1)
            .cloned()
            .unwrap();
    let first: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(
        first["snapshot"],
        json!(false),
        "a resume, not a snapshot: {first}"
    );
    assert_eq!(r.s.e.pools().resumes(), (1, 0), "counted for /_metrics");
    r.deliver_all();
    let u = updates(&r);
    assert_eq!(u.len(), 3, "{u:?}");
    assert_eq!(
        (u[1].0, u[1].1, u[1].3.len()),
        (false, false, 0),
        "confirmed: {u:?}"
    );
    assert_eq!(u[1].2, u[0].2, "what the cache held");
    assert!(!u[2].0 && !u[2].1);
    assert_eq!(u[2].3, vec!["b/b", "b/a", "b/c"]);
    assert_eq!(
        keys_of(&u[2].2),
        vec!["b/c", "b/x3", "b/x2", "b/x1", "b/x0", "b/b"]
    );
    assert_eq!(r.c.value("b/*").unwrap()[5]["value"], json!(20));
}

#[test]
fn a_kept_cache_nothing_changed_is_confirmed_by_one_empty_update() {
    let mut r = Rig::new(1_000);
    r.set("k", json!({"x": 1}));
    r.c.subscribe(1, "k").unwrap();
    r.pump();
    r.deliver_all();
    let cache = r.c.cache("k").unwrap();
    reload(&mut r, Config::default());
    r.c.connect(r.now);
    r.pump();
    // Subscribed first, restored after (the page subscribed before storage was read).
    r.c.subscribe(1, "k").unwrap();
    r.c.restore_cache("k", &cache).unwrap();
    r.pump();
    r.deliver_all();
    let u = updates(&r);
    assert_eq!(
        u,
        vec![
            (true, true, json!({"x": 1}), vec!["k".to_string()]),
            (false, false, json!({"x": 1}), vec![])
        ]
    );
}

#[test]
fn a_cache_older_than_the_log_gets_a_snapshot_diffed_against_it() {
    let mut r = Rig::new(2);
    r.set("o/a", json!(1));
    r.c.subscribe(1, "o/*").unwrap();
    r.pump();
    r.deliver_all();
    let cache = r.c.cache("o/*").unwrap();
    for i in 0..5 {
        r.set(&format!("o/n{i}"), json!(i));
    }
    reload(&mut r, Config::default());
    r.c.restore_cache("o/*", &cache).unwrap();
    r.c.subscribe(1, "o/*").unwrap();
    r.c.connect(r.now);
    r.pump();
    r.deliver_all();
    let u = updates(&r);
    assert_eq!(u.len(), 3);
    assert_eq!(
        u[2].3,
        vec!["o/n0", "o/n1", "o/n2", "o/n3", "o/n4"],
        "only what the cache lacked"
    );
    assert_eq!(r.s.e.pools().resumes(), (0, 1));
}

#[test]
fn a_bad_cache_is_refused_and_changes_nothing() {
    let mut r = Rig::new(1_000);
    for bad in [
        json!(null),
        json!({"version": "5"}),
        json!({"version": "zz", "view": {}, "known": {}}),
        json!({"version": "5", "view": {}, "known": {"k": [1]}}),
    ] {
        let e = r.c.restore_cache("k", &bad).unwrap_err();
        assert_eq!(e.code, "bad-cache");
    }
    r.c.subscribe(1, "k").unwrap();
    r.pump();
    let sub: Value = serde_json::from_str(r.sent.last().unwrap()).unwrap();
    assert!(sub.get("v").is_none(), "nothing restored: {sub}");
}

#[test]
fn an_outbox_kept_across_a_reload_is_applied_once_in_order() {
    let ids = |p: &str| Config {
        write_ids: Some(p.into()),
        ..Config::default()
    };
    let mut r = Rig::with(ids("old"), 1_000);
    // Sent and applied, but the page goes before the answer arrives.
    r.s.conn.as_mut().unwrap().to_client.clear();
    let a = r.c.write(json!({"op":"push","path":"q/*","value":"a"}));
    r.pump();
    let kept_a = r.c.outbox_message(a).expect("waiting for its answer");
    assert_eq!(kept_a["rid"], json!(format!("old.{a}")));
    // Then offline: queued, never sent.
    r.disconnect();
    let b = r.c.write(json!({"op":"push","path":"q/*","value":"b"}));
    let c = r.c.write(json!({"op":"incr","key":"q-count"}));
    let kept: Vec<Value> = [a, b, c]
        .iter()
        .map(|q| r.c.outbox_message(*q).unwrap())
        .collect();
    let lease =
        r.c.write(json!({"op":"set","key":"p/me","value":1,"lease":true}));
    assert!(
        r.c.outbox_message(lease).is_none(),
        "a lease is taken again, not kept"
    );
    reload(&mut r, ids("new"));
    let reqs: Vec<u64> = kept.into_iter().map(|m| r.c.restore_write(m)).collect();
    r.c.connect(r.now);
    r.pump();
    r.deliver_all();
    let rs = r.replies();
    assert_eq!(rs.len(), 3, "{rs:?}");
    for (i, q) in reqs.iter().enumerate() {
        assert_eq!(rs[i].0, *q, "answered in order");
        assert!(rs[i].1, "marked queued");
        assert!(rs[i].2.is_ok(), "{rs:?}");
    }
    let pushed: Vec<Value> =
        r.s.e
            .store()
            .scan(&Pattern::parse("q/*").unwrap())
            .map(|(_, e)| e.data().clone())
            .collect();
    let mut pushed = pushed;
    pushed.sort_by_key(|v| v.to_string());
    assert_eq!(pushed, vec![json!("a"), json!("b")], "each applied once");
    assert_eq!(
        r.s.e.stats().repeats,
        1,
        "the one the server had was answered"
    );
    assert_eq!(
        r.s.e.store().get("q-count").map(|e| e.data().clone()),
        Some(json!(1))
    );
}

// ---- one socket for many clients (`share::Hub`) -----------------------------------------------

/// Clients whose sockets are virtual connections to one hub, which holds the one real
/// connection to the simulated server.
struct Tabs {
    s: Server,
    hub: share::Hub,
    tabs: Vec<Tab>,
    now: u64,
    next_conn: u64,
    // Connections the hub was told are gone.
    sockets_opened: usize,
}

struct Tab {
    c: Client,
    conn: Option<u64>,
    events: Vec<Event>,
    alive: bool,
}

impl Tabs {
    fn new(n: usize) -> Tabs {
        let mut t = Tabs {
            s: Server::new(1_000),
            hub: share::Hub::new(),
            tabs: Vec::new(),
            now: 0,
            next_conn: 1,
            sockets_opened: 0,
        };
        t.open_socket();
        for i in 0..n {
            let config = Config {
                write_ids: Some(format!("tab{i}")),
                ..Config::default()
            };
            let mut c = Client::new(config);
            c.connect(0);
            t.tabs.push(Tab {
                c,
                conn: None,
                events: Vec::new(),
                alive: true,
            });
        }
        t.pump();
        t
    }

    fn open_socket(&mut self) {
        self.s.drop_conn();
        self.s.conn = Some(Conn::new(&self.s.e));
        self.hub = share::Hub::new();
        self.sockets_opened += 1;
    }

    /// Runs everything until nothing moves.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.tabs.len() {
                if !self.tabs[i].alive {
                    continue;
                }
                while let Some(io) = self.tabs[i].c.poll_io() {
                    moved = true;
                    match io {
                        Io::Connect => {
                            let conn = self.next_conn;
                            self.next_conn += 1;
                            self.tabs[i].conn = Some(conn);
                            self.tabs[i].c.handle_open(self.now);
                        }
                        Io::Send(m) => {
                            if let Some(conn) = self.tabs[i].conn {
                                self.hub.from_conn(conn, &m);
                            }
                        }
                        Io::Close => {
                            if let Some(conn) = self.tabs[i].conn.take() {
                                self.hub.conn_gone(conn);
                            }
                        }
                    }
                }
                while let Some(e) = self.tabs[i].c.poll_event() {
                    self.tabs[i].events.push(e);
                }
            }
            while let Some(out) = self.hub.poll() {
                moved = true;
                match out {
                    share::Out::Server(m) => self.s.receive(&m),
                    share::Out::Conn(conn, m) => {
                        if let Some(t) = self
                            .tabs
                            .iter_mut()
                            .find(|t| t.alive && t.conn == Some(conn))
                        {
                            t.c.handle_message(self.now, m.as_bytes());
                        }
                    }
                }
            }
            let msgs: Vec<Vec<u8>> = self
                .s
                .conn
                .as_mut()
                .map(|c| c.to_client.drain(..).collect())
                .unwrap_or_default();
            for m in msgs {
                moved = true;
                self.hub.from_server(std::str::from_utf8(&m).unwrap());
            }
            if !moved {
                break;
            }
        }
    }

    /// The shared socket drops (the leader went): every virtual connection closes, a new hub
    /// opens a new socket, and the clients reconnect after their backoff.
    fn handover(&mut self) {
        self.open_socket();
        for t in &mut self.tabs {
            t.conn = None;
            if t.alive {
                t.c.handle_close(self.now, 0.5);
            }
        }
        self.pump();
        self.now += 60_000;
        for t in &mut self.tabs {
            if t.alive {
                t.c.handle_timeout(self.now, 0.5);
            }
        }
        self.pump();
    }

    fn changes(&self, tab: usize, pattern: &str) -> Vec<(String, Option<Value>)> {
        self.tabs[tab]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Update {
                    pattern: p,
                    changes,
                    initial: false,
                    ..
                } if p == pattern => Some(changes.clone()),
                _ => None,
            })
            .flatten()
            .map(|c| (c.key, c.value))
            .collect()
    }

    fn set(&mut self, key: &str, v: Value) {
        self.s
            .run(crate::Op::Set {
                key: key.into(),
                value: v.into(),
                ttl: crate::Ttl::Clear,
                cond: crate::Cond::Always,
            })
            .unwrap();
        self.pump();
    }
}

#[test]
fn tabs_share_one_socket_and_each_sees_every_change_once() {
    let mut t = Tabs::new(2);
    t.set("s/a", json!(1));
    t.tabs[0].c.subscribe(1, "s/*").unwrap();
    t.pump();
    t.set("s/b", json!(2));
    // The second tab joins a pattern the socket has: a snapshot for both, reported once.
    t.tabs[1].c.subscribe(1, "s/*").unwrap();
    t.pump();
    t.set("s/a", json!(3));
    assert_eq!(
        t.changes(0, "s/*"),
        vec![
            ("s/b".to_string(), Some(json!(2))),
            ("s/a".to_string(), Some(json!(3)))
        ]
    );
    assert_eq!(
        t.changes(1, "s/*"),
        vec![("s/a".to_string(), Some(json!(3)))]
    );
    assert_eq!(t.tabs[0].c.value("s/*"), t.tabs[1].c.value("s/*"));
    assert_eq!(t.sockets_opened, 1);
    // Writes of both go through the one socket, each answered to its own tab.
    let a = t.tabs[0]
        .c
        .write(json!({"op":"push","path":"s/*","value":"from 0"}));
    let b = t.tabs[1].c.write(json!({"op":"incr","key":"n"}));
    t.pump();
    let reply = |tab: &Tab, req: u64| {
        tab.events.iter().find_map(|e| match e {
            Event::Reply { req: r, result, .. } if *r == req => Some(result.clone()),
            _ => None,
        })
    };
    assert!(reply(&t.tabs[0], a).unwrap().is_ok());
    assert_eq!(reply(&t.tabs[1], b).unwrap().unwrap()["value"], json!(1));
    // One tab leaves the pattern: the other keeps getting it.
    t.tabs[0].c.unsubscribe(1);
    t.pump();
    t.set("s/c", json!(4));
    assert_eq!(
        t.changes(1, "s/*").last(),
        Some(&("s/c".to_string(), Some(json!(4))))
    );
    assert_eq!(
        t.changes(0, "s/*").len(),
        3,
        "nothing after its unsubscribe"
    );
    // The last one leaves: the socket's subscription goes.
    t.tabs[1].c.unsubscribe(1);
    t.pump();
    assert_eq!(t.s.e.pools().subscribers(), 0);
}

#[test]
fn a_tab_that_closes_leaves_its_leases_and_disconnect_writes_behind() {
    let mut t = Tabs::new(2);
    t.tabs[0].c.subscribe(1, "room/*").unwrap();
    t.tabs[1].c.subscribe(1, "room/*").unwrap();
    t.tabs[0]
        .c
        .write(json!({"op":"set","key":"room/zero","value":0,"lease":true}));
    t.tabs[1]
        .c
        .write(json!({"op":"set","key":"room/one","value":1,"lease":true}));
    t.tabs[1]
        .c
        .write(json!({"op":"onclose","write":{"op":"set","key":"left","value":"one"}}));
    t.pump();
    assert!(t.s.e.store().get("room/one").is_some());
    // Tab 1 closes: its client goes with it; the hub hears its connection end.
    t.tabs[1].alive = false;
    let conn = t.tabs[1].conn.take().unwrap();
    t.hub.conn_gone(conn);
    t.pump();
    assert!(
        t.s.e.store().get("room/one").is_none(),
        "its lease released"
    );
    assert_eq!(
        t.s.e.store().get("left").map(|e| e.data().clone()),
        Some(json!("one")),
        "its disconnect write ran"
    );
    assert!(
        t.s.e.store().get("room/zero").is_some(),
        "the other tab's lease stays"
    );
    assert_eq!(
        t.changes(0, "room/*").last(),
        Some(&("room/one".to_string(), None)),
        "the other tab sees it leave"
    );
}

#[test]
fn the_leader_going_loses_no_write_and_no_update() {
    let mut t = Tabs::new(2);
    t.tabs[0].c.subscribe(1, "h/*").unwrap();
    t.tabs[1].c.subscribe(1, "h/*").unwrap();
    t.pump();
    t.set("h/a", json!(1));
    // Writes sent, applied by the server, but the socket goes before the answers arrive.
    let w0 = t.tabs[0]
        .c
        .write(json!({"op":"push","path":"h/*","value":"p0"}));
    let w1 = t.tabs[1].c.write(json!({"op":"incr","key":"h-n"}));
    for _ in 0..10 {
        while let Some(io) = t.tabs[0].c.poll_io() {
            if let Io::Send(m) = io {
                t.hub.from_conn(t.tabs[0].conn.unwrap(), &m);
            }
        }
        while let Some(io) = t.tabs[1].c.poll_io() {
            if let Io::Send(m) = io {
                t.hub.from_conn(t.tabs[1].conn.unwrap(), &m);
            }
        }
        while let Some(out) = t.hub.poll() {
            if let share::Out::Server(m) = out {
                t.s.receive(&m);
            }
        }
    }
    assert_eq!(
        t.s.e.store().get("h-n").map(|e| e.data().clone()),
        Some(json!(1))
    );
    // Meanwhile another writer changes things: the tabs must get them after the handover.
    t.s.conn.as_mut().unwrap().to_client.clear();
    t.handover();
    t.set("h/b", json!(2));
    for tab in 0..2 {
        let ok = |req: u64| {
            t.tabs[tab]
                .events
                .iter()
                .any(|e| matches!(e, Event::Reply { req: r, result: Ok(_), .. } if *r == req))
        };
        assert!(
            ok(if tab == 0 { w0 } else { w1 }),
            "tab {tab}'s write answered"
        );
    }
    assert_eq!(
        t.s.e.store().get("h-n").map(|e| e.data().clone()),
        Some(json!(1)),
        "once"
    );
    let pushed = t.s.e.store().scan(&Pattern::parse("h/*").unwrap()).count();
    assert_eq!(pushed, 3, "h/a, h/b and one push");
    for tab in 0..2 {
        let keys: Vec<String> = t.changes(tab, "h/*").into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 3, "tab {tab}: {keys:?}");
        assert_eq!(keys[0], "h/a");
        assert_eq!(keys[2], "h/b");
    }
    assert_eq!(t.tabs[0].c.value("h/*"), t.tabs[1].c.value("h/*"));
    assert_eq!(t.sockets_opened, 2);
}

#[test]
fn a_frame_names_its_pattern_without_being_parsed() {
    let mut hub = share::Hub::new();
    hub.from_conn(7, r#"{"id":1,"op":"sub","path":"a \"q\"/*"}"#);
    let Some(share::Out::Server(m)) = hub.poll() else {
        panic!("a sub")
    };
    let id = serde_json::from_str::<Value>(&m).unwrap()["id"].clone();
    hub.from_server(&format!(r#"{{"id":{id},"ok":true,"sub":"a \"q\"/*"}}"#));
    let Some(share::Out::Conn(7, reply)) = hub.poll() else {
        panic!("the reply, to its connection")
    };
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap(),
        json!({"id": 1, "ok": true, "sub": "a \"q\"/*"})
    );
    let frame = r#"{"sub":"a \"q\"/*","snapshot":true,"version":"1","data":[]}"#;
    hub.from_server(frame);
    assert_eq!(hub.poll(), Some(share::Out::Conn(7, frame.into())));
    hub.from_server(r#"{"sub":"other","data":[]}"#);
    assert_eq!(hub.poll(), None);
}

#[test]
fn an_optimistic_write_shows_in_a_subscription_that_is_behind() {
    // `g/*` has seen the server's 63 for `g/k0`, `g/k0` (its own frames not yet delivered)
    // still shows 0; the page writes 63. Each subscription reports what differs in its own
    // view: `g/k0` shows the write at once (pending), `g/*` had it already.
    let config = Config {
        optimistic: true,
        ..Config::default()
    };
    let mut r = Rig::with(config, 1_000);
    r.c.subscribe(1, "g/*").unwrap();
    r.c.subscribe(2, "g/k0").unwrap();
    r.pump();
    r.set("g/k0", json!(0));
    r.set("g/k0", json!(63));
    // The two answers, the two first snapshots, both subscriptions' frames of 0, and the list's
    // frame of 63: the key's own frame of 63 is still on its way.
    r.deliver(7);
    let shown = |r: &Rig, p: &str| -> Vec<(Option<Value>, bool)> {
        r.changes(p)
            .into_iter()
            .map(|c| (c.value, c.pending))
            .collect()
    };
    assert_eq!(shown(&r, "g/k0"), [(Some(json!(0)), false)]);
    assert_eq!(
        shown(&r, "g/*"),
        [(Some(json!(0)), false), (Some(json!(63)), false)]
    );
    r.c.write(json!({"op":"set","key":"g/k0","value":63}));
    r.pump();
    assert_eq!(
        shown(&r, "g/k0"),
        [(Some(json!(0)), false), (Some(json!(63)), true)]
    );
    assert_eq!(shown(&r, "g/*").len(), 2, "the list showed 63 already");
    // The server's frames and the answer: nothing more to show, and both end at 63.
    r.deliver_all();
    assert_eq!(shown(&r, "g/k0").len(), 2);
    assert_eq!(shown(&r, "g/*").len(), 2);
    assert_eq!(r.c.value("g/k0"), Some(json!(63)));
}

//! What a cluster node needs from the core when an external ordered log (NATS JetStream, in the
//! native server's cluster mode) orders every change, the node's own included.
//!
//! A node never applies its own writes directly. It runs the operation as usual
//! ([`Engine::execute`]), takes the changes back at once ([`Replica::propose`], under the same
//! lock, before anyone saw them), and hands the adapter one [`Write`] per changed key: the bytes to
//! publish, and the precondition the log must check (the sequence number of the key's last change,
//! 0 for none). Every node then applies what the log delivers, in its order, with the log's
//! sequence numbers as versions ([`Replica::receive`]), so all nodes hold the same store and a
//! version means the same on each.
//!
//! The log keeps the last changes of each key (the latest, a delete included, is the state), so a
//! node that starts late reads the state and the tail in one pass. An operation that changes
//! several keys is published as one atomic batch; [`Replica::receive`] applies its messages
//! together, so subscribers never see half of it.
//!
//! Message payload: `kind u8` (`b'S'` set, `b'D'` delete), `batch u128`, `index u32`, `count u32`
//! (little-endian; a single write is batch 0, index 0, count 1), then for a set the entry in
//! [`crate::codec`]'s layout (its `seq` is ignored: the log's sequence number is the version).

use crate::store::Key;
use std::collections::HashMap;

use crate::clock::Tick;
use crate::codec::{self, Corrupt};
use crate::engine::Engine;
use crate::store::{Change, Entry};

const HEADER: usize = 1 + 16 + 4 + 4;

/// One key's part of an operation, for the adapter to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The key.
    pub key: Key,
    /// The log sequence number of the key's last change the operation was computed on (0: the
    /// key never existed). The log must refuse the write if the key changed since.
    pub expect: u64,
    /// The message payload (see the module docs).
    pub payload: Vec<u8>,
}

/// One message as the log delivered it.
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a> {
    /// The log's sequence number: the change's version on every node.
    pub seq: u64,
    /// The key, from [`key_from_token`] of the message's subject.
    pub key: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// How many messages follow it in the log right now (0: this node is caught up).
    pub pending: u64,
}

/// The subject token for a key: base64url without padding, so any key is one token of a NATS
/// subject (no `.`, `*`, `>` or spaces) and decodes back exactly.
pub fn subject_token(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// The key a subject token names.
pub fn key_from_token(token: &str) -> Result<String, Corrupt> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| Corrupt(format!("subject token {token:?} is not base64url")))?;
    String::from_utf8(bytes).map_err(|_| Corrupt(format!("subject token {token:?} is not UTF-8")))
}

/// The payload of one write: see the module docs.
pub fn encode(entry: Option<&Entry>, batch: u128, index: u32, count: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entry.map_or(0, |e| 40 + e.json.len()));
    out.push(if entry.is_some() { b'S' } else { b'D' });
    out.extend_from_slice(&batch.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    if let Some(e) = entry {
        codec::encode_entry(&mut out, e);
    }
    out
}

/// A decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The batch the write belongs to (0: a single write).
    pub batch: u128,
    /// Its position in the batch.
    pub index: u32,
    /// How many writes the batch holds.
    pub count: u32,
    /// The new entry, `None` for a delete.
    pub entry: Option<Entry>,
}

/// Decodes a payload; never panics on any bytes.
pub fn decode(b: &[u8]) -> Result<Decoded, Corrupt> {
    if b.len() < HEADER {
        return Err(Corrupt("short cluster message".into()));
    }
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut batch = [0u8; 16];
    batch.copy_from_slice(&b[1..17]);
    let (index, count) = (u32_at(17), u32_at(21));
    if count == 0 || index >= count {
        return Err(Corrupt(format!(
            "cluster message {index} of {count} in its batch"
        )));
    }
    let entry = match b[0] {
        b'S' => Some(codec::decode_entry(&b[HEADER..])?),
        b'D' if b.len() == HEADER => None,
        k => return Err(Corrupt(format!("cluster message kind {k}"))),
    };
    Ok(Decoded {
        batch: u128::from_le_bytes(batch),
        index,
        count,
        entry,
    })
}

/// A node's replication state beside its [`Engine`]: the last change of each deleted key (the
/// precondition a write to it needs) and the batch being received.
#[derive(Debug, Default)]
pub struct Replica {
    // Deleted keys and the sequence number of their delete, which the log still holds as the
    // key's last message. One entry per deleted key.
    tombstones: HashMap<Key, u64>,
    // The batch being received: its id, the last index seen, and its writes.
    open: Option<(u128, u32)>,
    group: Vec<(u64, Key, Option<Entry>)>,
}

impl Replica {
    /// An empty replica (a node starting from an empty store).
    pub fn new() -> Replica {
        Replica::default()
    }

    /// Takes back `changes`, which `engine` applied under the caller's lock and nobody has seen
    /// (not published, no pool joined since), and returns what the log must order instead: one
    /// [`Write`] per change, in order, with its precondition. `batch` names the operation when it
    /// has several changes (unique per operation in the cluster: the adapter draws it).
    pub fn propose(&self, engine: &mut Engine, changes: &[Change], batch: u128) -> Vec<Write> {
        let count = u32::try_from(changes.len()).unwrap_or(u32::MAX);
        let batch = if count > 1 { batch } else { 0 };
        let writes = changes
            .iter()
            .enumerate()
            .map(|(i, c)| Write {
                key: c.key.clone(),
                expect: self.expect(c),
                payload: encode(c.entry.as_ref(), batch, i as u32, count),
            })
            .collect();
        engine.withdraw(changes);
        writes
    }

    // The log sequence number of the key's last change before `c` (0: none in the log).
    fn expect(&self, c: &Change) -> u64 {
        match &c.prev {
            Some(p) => p.seq,
            None => self.tombstones.get(&c.key).copied().unwrap_or(0),
        }
    }

    /// The keys whose TTL has passed, as deletes to publish (each on its own: expiry is not one
    /// operation). Every node proposes them; the precondition lets exactly one delete per key
    /// through, so expiry happens once for the cluster.
    pub fn expired(&self, engine: &Engine, tick: Tick) -> Vec<Write> {
        engine
            .due(tick)
            .into_iter()
            .map(|(key, seq)| Write {
                payload: encode(None, 0, 0, 1),
                key,
                expect: seq,
            })
            .collect()
    }

    /// Takes one delivered message. Returns the changes applied (to publish to subscribers), or
    /// nothing while a batch is incomplete. A batch is applied whole once its last message
    /// arrives; one whose earlier messages the log no longer holds (a later write to the same key
    /// replaced them) is applied with what is left when the next message is not part of it or
    /// the node is caught up.
    pub fn receive(&mut self, engine: &mut Engine, m: Delivered) -> Result<Vec<Change>, Corrupt> {
        let d = decode(m.payload)?;
        let mut out = Vec::new();
        if let Some((open, last)) = self.open {
            if d.batch == 0 || open != d.batch || d.index <= last {
                out = self.flush(engine);
            }
        }
        self.group.push((m.seq, m.key.into(), d.entry));
        self.open = Some((d.batch, d.index));
        if d.index + 1 == d.count || m.pending == 0 || d.batch == 0 {
            out.extend(self.flush(engine));
        }
        Ok(out)
    }

    /// Applies the batch being received, whatever it holds.
    pub fn flush(&mut self, engine: &mut Engine) -> Vec<Change> {
        self.open = None;
        let mut out = Vec::with_capacity(self.group.len());
        for (seq, key, entry) in self.group.drain(..) {
            if entry.is_none() {
                self.tombstones.insert(key.clone(), seq);
            } else {
                self.tombstones.remove(&key);
            }
            if let Some(c) = engine.apply_ordered(seq, key, entry) {
                out.push(c);
            }
        }
        out
    }

    /// How many deleted keys are remembered.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Cond, Config, Op};
    use crate::filter::Filters;
    use crate::store::{Store, Tree, Ttl};
    use serde_json::json;
    use std::sync::Arc;

    fn tick() -> Tick {
        Tick {
            mono_ns: 1_000_000,
            wall_ns: 1_700_000_000_000_000_000,
        }
    }

    fn node() -> (Engine, Replica) {
        let mut e = Engine::from_store(tick(), Store::new(0), Config::default(), Filters::new());
        e.order_elsewhere();
        (e, Replica::new())
    }

    fn set(key: &str, v: serde_json::Value) -> Op {
        Op::Set {
            key: key.into(),
            value: v.into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        }
    }

    fn del(target: &str) -> Op {
        Op::Delete {
            target: target.into(),
            cond: Cond::Always,
        }
    }

    // Runs `op` on a node and publishes its proposal to the log.
    fn write(e: &mut Engine, r: &Replica, log: &mut Log, op: Op) {
        let x = e.execute_as_system(tick(), op).unwrap();
        log.publish(&r.propose(e, &x.changes, 0)).unwrap();
    }

    // A log: assigns sequence numbers and checks each write's precondition like JetStream's
    // expected-last-subject-sequence; an operation is all or nothing.
    #[derive(Default)]
    struct Log {
        msgs: Vec<(u64, String, Vec<u8>)>,
        last: HashMap<String, u64>,
    }

    impl Log {
        fn publish(&mut self, writes: &[Write]) -> Result<u64, ()> {
            for w in writes {
                if self.last.get(&*w.key).copied().unwrap_or(0) != w.expect {
                    return Err(());
                }
            }
            for w in writes {
                let seq = self.msgs.len() as u64 + 1;
                self.last.insert(w.key.to_string(), seq);
                self.msgs.push((seq, w.key.to_string(), w.payload.clone()));
            }
            Ok(self.msgs.len() as u64)
        }

        fn deliver(&self, e: &mut Engine, r: &mut Replica, from: u64) -> Vec<Change> {
            let mut out = Vec::new();
            let total = self.msgs.len() as u64;
            for (seq, key, p) in self.msgs.iter().filter(|(s, _, _)| *s > from) {
                out.extend(recv(e, r, *seq, key, p, total - seq));
            }
            out
        }
    }

    fn recv(
        e: &mut Engine,
        r: &mut Replica,
        seq: u64,
        key: &str,
        p: &[u8],
        pending: u64,
    ) -> Vec<Change> {
        let m = Delivered {
            seq,
            key,
            payload: p,
            pending,
        };
        r.receive(e, m).unwrap()
    }

    #[test]
    fn a_proposal_changes_nothing_until_the_log_delivers_it() {
        let (mut e, r) = node();
        let a = e.execute_as_system(tick(), set("a", json!(1))).unwrap();
        let writes = r.propose(&mut e, &a.changes, 7);
        assert!(e.store().get("a").is_none(), "withdrawn");
        assert_eq!(e.store().last_seq(), 0);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].expect, 0);
        let d = decode(&writes[0].payload).unwrap();
        assert_eq!((d.batch, d.index, d.count), (0, 0, 1));
        assert_eq!(*d.entry.unwrap().data(), json!(1));
    }

    #[test]
    fn nodes_apply_the_log_in_its_order_with_its_sequence_numbers() {
        let (mut a, mut ra) = node();
        let (mut b, mut rb) = node();
        let mut log = Log::default();
        let x = a
            .execute_as_system(tick(), set("k", json!("from a")))
            .unwrap();
        let w = ra.propose(&mut a, &x.changes, 1);
        assert_eq!(log.publish(&w), Ok(1));
        // b computed on the same (empty) state: its precondition fails, nothing is stored.
        let y = b
            .execute_as_system(tick(), set("k", json!("from b")))
            .unwrap();
        let w = rb.propose(&mut b, &y.changes, 2);
        assert_eq!(log.publish(&w), Err(()));
        log.deliver(&mut a, &mut ra, 0);
        log.deliver(&mut b, &mut rb, 0);
        // b retries on the state the log gave it.
        let y = b
            .execute_as_system(tick(), set("k", json!("from b")))
            .unwrap();
        let w = rb.propose(&mut b, &y.changes, 3);
        assert_eq!(w[0].expect, 1);
        assert_eq!(log.publish(&w), Ok(2));
        let ca = log.deliver(&mut a, &mut ra, 1);
        log.deliver(&mut b, &mut rb, 1);
        for e in [&a, &b] {
            let k = e.store().get("k").unwrap();
            assert_eq!((k.seq, k.revision, k.data()), (2, 1, &json!("from b")));
            assert_eq!(e.store().last_seq(), 2);
        }
        // The change a received carries what subscribers need: the previous entry.
        assert_eq!(ca.len(), 1);
        assert_eq!(*ca[0].prev.as_ref().unwrap().data(), json!("from a"));
    }

    #[test]
    fn a_deleted_key_is_written_against_its_delete() {
        let (mut e, mut r) = node();
        let mut log = Log::default();
        write(&mut e, &r, &mut log, set("k", json!(1)));
        log.deliver(&mut e, &mut r, 0);
        let d = e.execute_as_system(tick(), del("k")).unwrap();
        let w = r.propose(&mut e, &d.changes, 0);
        assert_eq!(w[0].expect, 1);
        log.publish(&w).unwrap();
        let c = log.deliver(&mut e, &mut r, 1);
        assert!(c[0].is_delete());
        assert_eq!(r.tombstones(), 1);
        let x = e.execute_as_system(tick(), set("k", json!(2))).unwrap();
        let w = r.propose(&mut e, &x.changes, 0);
        assert_eq!(w[0].expect, 2, "the delete is the key's last message");
        log.publish(&w).unwrap();
        log.deliver(&mut e, &mut r, 2);
        assert_eq!(r.tombstones(), 0);
        assert_eq!(e.store().get("k").unwrap().revision, 0, "a new key");
    }

    #[test]
    fn a_batch_is_applied_whole() {
        let (mut e, mut r) = node();
        let mut log = Log::default();
        write(&mut e, &r, &mut log, set("a/1", json!(1)));
        // Not delivered yet: a/1 is not in e, so a/2's proposal is computed without it.
        write(&mut e, &r, &mut log, set("a/2", json!(2)));
        log.deliver(&mut e, &mut r, 0);
        let d = e.execute_as_system(tick(), del("a/*")).unwrap();
        let w = r.propose(&mut e, &d.changes, 99);
        assert_eq!(w.len(), 2);
        assert_eq!(decode(&w[1].payload).unwrap().batch, 99);
        log.publish(&w).unwrap();
        // The first message alone (more pending) applies nothing.
        let (seq, key, p) = &log.msgs[2];
        let first = recv(&mut e, &mut r, *seq, key, p, 1);
        assert!(first.is_empty());
        assert_eq!(e.store().len(), 2);
        let (seq, key, p) = &log.msgs[3];
        let rest = recv(&mut e, &mut r, *seq, key, p, 0);
        assert_eq!(rest.len(), 2);
        assert_eq!(e.store().len(), 0);
        assert_eq!(e.store().last_seq(), 4);
    }

    #[test]
    fn a_batch_cut_short_by_compaction_is_applied_with_what_is_left() {
        let (mut e, mut r) = node();
        // Part 0 of batch 5 was replaced in the log by a later write; part 1 and the next single
        // write remain.
        let entry = Entry {
            created: 1,
            updated: 0,
            revision: 0,
            seq: 0,
            expires: crate::store::MaybeTime::NONE,
            json: b"1"[..].into(),
            tree: Tree::built(json!(1)),
        };
        let p1 = encode(Some(&entry), 5, 1, 2);
        let p2 = encode(Some(&entry), 0, 0, 1);
        let got = recv(&mut e, &mut r, 3, "b", &p1, 1);
        assert!(got.is_empty() || got.len() == 1);
        let got2 = recv(&mut e, &mut r, 4, "c", &p2, 0);
        assert_eq!(got.len() + got2.len(), 2);
        assert_eq!(e.store().last_seq(), 4);
    }

    #[test]
    fn a_message_seen_twice_is_applied_once() {
        let (mut e, mut r) = node();
        let mut log = Log::default();
        write(&mut e, &r, &mut log, set("k", json!(1)));
        assert_eq!(log.deliver(&mut e, &mut r, 0).len(), 1);
        assert_eq!(log.deliver(&mut e, &mut r, 0).len(), 0);
        assert_eq!(e.store().get("k").unwrap().revision, 0);
    }

    #[test]
    fn expiry_is_proposed_against_the_entry_it_deletes() {
        let (mut e, mut r) = node();
        let mut log = Log::default();
        let x = e
            .execute_as_system(
                tick(),
                Op::Set {
                    key: "t".into(),
                    value: json!(1).into(),
                    ttl: Ttl::After(1_000),
                    cond: Cond::Always,
                },
            )
            .unwrap();
        log.publish(&r.propose(&mut e, &x.changes, 0)).unwrap();
        log.deliver(&mut e, &mut r, 0);
        let later = Tick {
            mono_ns: tick().mono_ns + 1_000_000_000,
            wall_ns: tick().wall_ns + 1_000_000_000,
        };
        let w = r.expired(&e, later);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].expect, 1);
        assert_eq!(e.store().len(), 1, "nothing deleted locally");
        // Two nodes propose it: the log lets one through.
        assert!(log.publish(&w).is_ok());
        assert!(log.publish(&w).is_err());
    }

    #[test]
    fn after_write_hooks_run_once_per_ordered_change_never_for_a_proposal() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let seen = Arc::new(AtomicUsize::new(0));
        let mut f = Filters::new();
        let s2 = seen.clone();
        f.after_write(
            "*",
            Arc::new(move |_, _| {
                s2.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        let mut e = Engine::from_store(tick(), Store::new(0), Config::default(), f);
        e.order_elsewhere();
        let mut r = Replica::new();
        let mut log = Log::default();
        write(&mut e, &r, &mut log, set("k", json!(1)));
        assert_eq!(seen.load(Ordering::SeqCst), 0, "a proposal runs no hook");
        log.deliver(&mut e, &mut r, 0);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn tokens_and_payloads_round_trip_and_garbage_is_refused() {
        let long = "名".repeat(crate::key::MAX_KEY_LEN / 3);
        for k in [
            "a",
            "a/b.c",
            "x-y_z/1/2",
            "é/ü",
            "users/alice@example.com",
            "名前/😀",
            "a \"b\" c:d%e?f#g",
            &long,
        ] {
            crate::key::validate_key(k).unwrap();
            let t = subject_token(k);
            assert!(!t.contains(['.', '*', '>', ' ']));
            assert_eq!(key_from_token(&t).unwrap(), k);
        }
        assert!(key_from_token("!!").is_err());
        for bad in [&b""[..], b"S", &[b'X'; 30], &encode(None, 0, 1, 1)] {
            assert!(decode(bad).is_err());
        }
        let mut d = encode(None, 0, 0, 1);
        d.push(1);
        assert!(decode(&d).is_err(), "a delete carries no entry");
    }
}

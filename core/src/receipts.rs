//! Receipts of idempotent writes: a write may carry an id of the client's choosing (`"rid"` on
//! `/_ws`, the `Idempotency-Key` header over HTTP); the engine remembers the answer it gave,
//! and a repeat of the same id by the same caller is answered with that answer instead of being
//! applied again. A client that lost its connection before the acknowledgement came can then
//! resend any write, `push` and `incr` included, without applying it twice.
//!
//! Owns the window of remembered ids: bounded by count ([`Limits::keep`], the server's
//! `--receipts`) and bytes ([`Limits::max_bytes`]), oldest out first. An id is scoped to its
//! caller (a token's `sub`, or the anonymous caller), so nobody can read or suppress another
//! caller's write by guessing its id. A repeat with the same id but a different write is refused
//! (422, `idempotency-key-reused`, the IETF Idempotency-Key draft's answer) and changes nothing.
//! A refused write leaves no receipt: it changed nothing, so its repeat is judged afresh.
//!
//! Receipts of writes that changed something are queued as a [`Delta`] for the adapter's
//! storage, keyed by the sequence number of the write's last change, and written in the same
//! transaction as the changes: a write is durable exactly when its receipt is, so a restart
//! never forgets the id of a write it kept. Receipts of writes that changed nothing (a delete of
//! a missing key) are kept in memory only. At start the stored receipts are given back
//! ([`Receipts::restore`]).

use crate::store::Key;
use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::codec::Corrupt;
use crate::engine::{Cond, Op, Outcome, PatchKind, TxOutcome};
use crate::error::Error;
use crate::json;
use crate::store::{Entry, Tree, Ttl};

pub use crate::history::Delta;

/// Receipts kept by default (`--receipts`). A client resends what it wrote while its connection
/// was down: a few hundred writes for a busy tab. 100,000 covers that for thousands of clients
/// reconnecting at once (a server restart) and costs about 15 MB at most.
pub const DEFAULT_KEEP: usize = 100_000;

/// Bytes kept for all receipts together by default: [`DEFAULT_KEEP`] receipts of ordinary
/// writes fit, and a window of `take`s of large values cannot hold more than this.
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;

/// Bookkeeping bytes charged per receipt on top of its id and encoded answer.
pub const OVERHEAD: usize = 96;

/// Longest id accepted: a UUID is 36 characters, a ULID 26; 128 leaves room for a prefix.
pub const MAX_ID_LEN: usize = 128;

/// The bounds of [`Receipts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Receipts kept; 0 turns idempotent writes off (an id is then accepted and ignored).
    pub keep: usize,
    /// Bytes kept in total.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            keep: DEFAULT_KEEP,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Checks an id: 1 to [`MAX_ID_LEN`] characters, visible ASCII (no space, no quotes). An HTTP
/// `Idempotency-Key` may be a quoted string (the draft's structured field): its quotes are
/// removed by [`from_header`].
pub fn check_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::BadRequest(format!(
            "a write's id (rid, Idempotency-Key) is 1 to {MAX_ID_LEN} characters"
        )));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(Error::BadRequest(
            "a write's id (rid, Idempotency-Key) is visible ASCII without quotes or backslashes"
                .into(),
        ));
    }
    Ok(())
}

/// The id in an `Idempotency-Key` header's value: a token, or a quoted string.
pub fn from_header(v: &str) -> Result<String, Error> {
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v);
    check_id(v)?;
    Ok(v.to_string())
}

/// A cluster node's write with the client's id, computed but not yet ordered: what to remember
/// once the cluster's log ordered it ([`crate::Engine::remember_ordered`]). An HTTP answer
/// carries it as a response extension ([`crate::web::remember`]).
#[derive(Debug, Clone)]
pub struct Unordered {
    pub(crate) write: Named,
    pub(crate) outcome: Outcome,
}

/// A write named by a client's id: the id scoped to its caller ([`Receipts::scoped`]), the
/// write's [`fingerprint`] and its op name, computed once per write.
#[derive(Debug, Clone)]
pub struct Named {
    id: Key,
    fingerprint: u64,
    op: &'static str,
}

impl Named {
    /// `op` sent by the caller whose token's `sub` is `subject` (none: anonymous) under `rid`.
    pub fn new(subject: Option<&str>, rid: &str, op: &Op) -> Named {
        Named {
            id: Receipts::scoped(subject, rid),
            fingerprint: fingerprint(op),
            op: crate::mux::op_name(op),
        }
    }
}

/// One remembered answer.
#[derive(Debug, Clone, PartialEq)]
struct Receipt {
    // The sequence number of the write's last change (the version it left the state at, for a
    // write that changed nothing): the order receipts leave in.
    seq: u64,
    // Whether storage holds it (it changed something and storage keeps receipts).
    stored: bool,
    fingerprint: u64,
    op: &'static str,
    outcome: Outcome,
    cost: usize,
    // Its place in `Receipts::order`, after `seq`.
    arrival: u64,
}

/// The window of remembered ids. See the module docs.
#[derive(Debug, Default)]
pub struct Receipts {
    by_id: HashMap<Key, Receipt>,
    // Every receipt by (seq, arrival): the oldest goes first.
    order: BTreeMap<(u64, u64), Key>,
    arrivals: u64,
    bytes: usize,
    limits: Limits,
    delta: Delta,
    // Whether storage takes the delta (else nothing is queued for it).
    stored: bool,
}

/// What a remembered id says about a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// The id is new: apply the write.
    New,
    /// The same write was applied: answer with this outcome (of this op).
    Again(&'static str, Outcome),
}

impl Receipts {
    /// An empty window with these bounds.
    pub fn new(limits: Limits) -> Receipts {
        Receipts {
            limits,
            ..Receipts::default()
        }
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Receipts kept.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Bytes charged to the kept receipts.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The key an id is kept under: scoped to its caller (`subject`, the token's `sub`; none
    /// for the anonymous caller).
    pub fn scoped(subject: Option<&str>, id: &str) -> Key {
        // `sub` may hold any character; the id holds no space, so "<id> <sub>" is unambiguous.
        match subject {
            Some(s) => format!("{id} {s}").into(),
            None => id.into(),
        }
    }

    /// What the write's id says about it: new, seen for this same write (its outcome), or
    /// refused (seen for another write).
    pub fn check(&self, w: &Named) -> Result<Seen, Error> {
        let Some(r) = self.by_id.get(&w.id) else {
            return Ok(Seen::New);
        };
        if r.fingerprint != w.fingerprint {
            return Err(Error::IdempotencyKeyReused);
        }
        Ok(Seen::Again(r.op, r.outcome.clone()))
    }

    /// Remembers the outcome of the write `w`: `seq` is its last change's sequence number, or
    /// the current version with `changed` false when it changed nothing.
    pub fn record(&mut self, w: Named, outcome: &Outcome, seq: u64, changed: bool) {
        if self.limits.keep == 0 {
            return;
        }
        let Named {
            id,
            fingerprint,
            op,
        } = w;
        let outcome = slim(op, outcome);
        let stored = changed && self.stored;
        let mut r = Receipt {
            seq,
            stored,
            fingerprint,
            op,
            outcome,
            cost: 0,
            arrival: 0,
        };
        let encoded = encode(&id, &r);
        r.cost = OVERHEAD + encoded.len();
        if stored {
            self.delta.put.push((seq, encoded));
        }
        self.insert(id, r);
    }

    fn insert(&mut self, id: Key, mut r: Receipt) {
        if let Some(old) = self.by_id.remove(&id) {
            self.forget(&old);
        }
        self.arrivals += 1;
        r.arrival = self.arrivals;
        self.bytes += r.cost;
        self.order.insert((r.seq, r.arrival), id.clone());
        self.by_id.insert(id, r);
        while self.by_id.len() > self.limits.keep
            || (self.bytes > self.limits.max_bytes && self.by_id.len() > 1)
        {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(old) = self.by_id.remove(&oldest) {
                self.bytes -= old.cost;
                if old.stored {
                    self.delta.drop.push(old.seq);
                }
            }
        }
    }

    // Removes `r`'s place in the order and its bytes (it left `by_id` already).
    fn forget(&mut self, r: &Receipt) {
        self.bytes -= r.cost;
        self.order.remove(&(r.seq, r.arrival));
        if r.stored {
            self.delta.drop.push(r.seq);
        }
    }

    /// Forgets receipts of changes from `seq` on (their durable commit failed and they were
    /// reverted): a repeat applies the write again, as it must.
    pub fn undo_from(&mut self, seq: u64) {
        let gone: Vec<((u64, u64), Key)> = self
            .order
            .range((seq, 0)..)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (k, id) in gone {
            self.order.remove(&k);
            if let Some(r) = self.by_id.remove(&id) {
                self.bytes -= r.cost;
            }
        }
        self.delta.put.retain(|(s, _)| *s < seq);
    }

    /// Says that storage keeps receipts: from now on every receipt of a write that changed
    /// something is queued for [`Receipts::take_delta`].
    pub fn store_in_storage(&mut self) {
        self.stored = true;
    }

    /// Takes what storage must write since the last call.
    pub fn take_delta(&mut self) -> Delta {
        std::mem::take(&mut self.delta)
    }

    /// Receipts given back by storage: `rows` are `(seq, encoded receipt)` in any order. Rows
    /// beyond the limits (a smaller `--receipts`) are dropped and queued for storage to remove.
    pub fn restore(
        limits: Limits,
        rows: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> Result<Receipts, Corrupt> {
        let mut all = Vec::new();
        for (seq, bytes) in rows {
            let (id, r) = decode(seq, &bytes)?;
            all.push((id, r, bytes.len()));
        }
        all.sort_by_key(|(_, r, _)| r.seq);
        let mut receipts = Receipts::new(limits);
        receipts.stored = true;
        for (id, mut r, len) in all {
            if limits.keep == 0 {
                receipts.delta.drop.push(r.seq);
                continue;
            }
            r.cost = OVERHEAD + len;
            receipts.insert(id.into(), r);
        }
        Ok(receipts)
    }
}

// An outcome as a receipt keeps it: values only where the answer shows them (`incr`'s count,
// `take`'s value), so a window of receipts does not hold every written document alive.
fn slim(op: &str, o: &Outcome) -> Outcome {
    let bare = |e: &Entry, keep: bool| {
        let mut e = e.clone();
        if !keep {
            // No text, so the tree is given: `null`, what the receipt answers.
            e.tree = Tree::built(Value::Null);
            e.json = crate::store::JsonText::from(&[][..]);
        }
        e
    };
    match o {
        Outcome::Written(k, e) => Outcome::Written(k.clone(), bare(e, op == "incr")),
        Outcome::Taken(k, e) => Outcome::Taken(k.clone(), bare(e, true)),
        Outcome::Deleted(n) => Outcome::Deleted(*n),
        Outcome::Tx(tx) => Outcome::Tx(TxOutcome {
            results: tx
                .results
                .iter()
                .map(|(name, r)| (*name, slim(name, r)))
                .collect(),
            version: tx.version,
        }),
    }
}

/// A write's fingerprint: FNV-1a (64 bits) over a canonical text of the operation, stable across
/// builds and versions (it is stored), so a repeat is recognised and a reuse of an id for
/// another write is not.
pub fn fingerprint(op: &Op) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    canonical(op, &mut h);
    h.0
}

struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn field(&mut self, b: &[u8]) {
        self.bytes(&(b.len() as u64).to_le_bytes());
        self.bytes(b);
    }
    fn value(&mut self, v: &Value) {
        self.field(&json::encode(v));
    }
    // The same bytes as `value` of its tree: a text is that tree's encoding.
    fn given(&mut self, v: &crate::engine::Given) {
        self.field(&v.json_text());
    }
    fn num(&mut self, n: i128) {
        self.bytes(&n.to_le_bytes());
    }
}

fn canonical(op: &Op, h: &mut Fnv) {
    let ttl = |h: &mut Fnv, t: &Ttl| match t {
        Ttl::Clear => h.num(-1),
        Ttl::Keep => h.num(-2),
        Ttl::After(ns) => h.num(i128::from(*ns)),
    };
    let cond = |h: &mut Fnv, c: &Cond| match c {
        Cond::Always => h.field(b"always"),
        Cond::NextRevision(r) => {
            h.field(b"rev");
            h.num(i128::from(*r));
        }
        Cond::IfMatch(tags) => {
            h.field(b"ifmatch");
            for t in tags {
                h.field(t.as_bytes());
            }
        }
        Cond::IfAbsent => h.field(b"ifabsent"),
    };
    h.field(crate::mux::op_name(op).as_bytes());
    match op {
        Op::Set {
            key,
            value,
            ttl: t,
            cond: c,
        } => {
            h.field(key.as_bytes());
            h.given(value);
            ttl(h, t);
            cond(h, c);
        }
        Op::Push {
            target,
            value,
            ttl: t,
        } => {
            h.field(target.as_bytes());
            h.given(value);
            ttl(h, t);
        }
        Op::Patch {
            key,
            patch,
            cond: c,
        } => {
            h.field(key.as_bytes());
            match patch {
                PatchKind::Merge(v) => {
                    h.field(b"merge");
                    h.value(v);
                }
                PatchKind::MergePatch(v) => {
                    h.field(b"merge-patch");
                    h.value(v);
                }
                PatchKind::JsonPatch(p) => {
                    h.field(b"json-patch");
                    h.value(&serde_json::to_value(p).unwrap_or(Value::Null));
                }
            }
            cond(h, c);
        }
        Op::Delete { target, cond: c } => {
            h.field(target.as_bytes());
            cond(h, c);
        }
        Op::Incr { key, by, ttl: t } => {
            h.field(key.as_bytes());
            h.num(i128::from(*by));
            ttl(h, t);
        }
        Op::Take { key } => h.field(key.as_bytes()),
        Op::Rename {
            from,
            to,
            overwrite,
        } => {
            h.field(from.as_bytes());
            h.field(to.as_bytes());
            h.num(i128::from(*overwrite));
        }
        Op::Tx(tx) => {
            for c in &tx.compares {
                h.field(format!("{c:?}").as_bytes());
            }
            h.field(b"then");
            for w in &tx.writes {
                canonical(w, h);
            }
        }
    }
}

// A receipt on disk: `{"id":..,"fp":"<hex>","op":..,"out":<outcome>}` (the seq is the row's
// key). JSON, because it is small, rare to read (at start only) and easy to inspect.
fn encode(id: &str, r: &Receipt) -> Vec<u8> {
    json::encode(&json!({
        "id": id,
        "fp": format!("{:x}", r.fingerprint),
        "op": r.op,
        "out": outcome_json(&r.outcome),
    }))
}

fn outcome_json(o: &Outcome) -> Value {
    let entry = |k: &str, e: &Entry| {
        json!({
            "key": k, "c": e.created, "u": e.updated, "r": e.revision, "s": e.seq,
            "x": e.expires.get(), "d": *e.data(),
        })
    };
    match o {
        Outcome::Written(k, e) => json!({ "written": entry(k, e) }),
        Outcome::Taken(k, e) => json!({ "taken": entry(k, e) }),
        Outcome::Deleted(n) => json!({ "deleted": n }),
        Outcome::Tx(tx) => json!({
            "tx": tx.results.iter().map(|(n, r)| json!([n, outcome_json(r)])).collect::<Vec<_>>(),
            "v": tx.version,
        }),
    }
}

fn corrupt(seq: u64, why: &str) -> Corrupt {
    Corrupt(format!("receipt at seq {seq}: {why}"))
}

fn op_static(name: &str) -> Option<&'static str> {
    Some(match name {
        "set" => "set",
        "push" => "push",
        "patch" => "patch",
        "del" => "del",
        "incr" => "incr",
        "take" => "take",
        "rename" => "rename",
        "tx" => "tx",
        _ => return None,
    })
}

fn outcome_from(seq: u64, v: &Value) -> Result<Outcome, Corrupt> {
    let entry = |v: &Value| -> Result<(Key, Entry), Corrupt> {
        let key = v["key"].as_str().ok_or_else(|| corrupt(seq, "no key"))?;
        let int = |f: &str| v[f].as_i64().ok_or_else(|| corrupt(seq, "a bad time"));
        let uint = |f: &str| v[f].as_u64().ok_or_else(|| corrupt(seq, "a bad number"));
        let data = v["d"].clone();
        let json = if data.is_null() {
            crate::store::JsonText::from(&[][..])
        } else {
            json::encode(&data).into()
        };
        Ok((
            key.into(),
            Entry {
                created: int("c")?,
                updated: int("u")?,
                revision: uint("r")?,
                seq: uint("s")?,
                expires: crate::store::MaybeTime::from(v["x"].as_i64()),
                json,
                tree: Tree::built(data),
            },
        ))
    };
    if let Some(w) = v.get("written") {
        let (k, e) = entry(w)?;
        return Ok(Outcome::Written(k, e));
    }
    if let Some(t) = v.get("taken") {
        let (k, e) = entry(t)?;
        return Ok(Outcome::Taken(k, e));
    }
    if let Some(n) = v.get("deleted") {
        let n = n.as_u64().ok_or_else(|| corrupt(seq, "a bad count"))?;
        return Ok(Outcome::Deleted(n as usize));
    }
    if let Some(Value::Array(rs)) = v.get("tx") {
        let mut results = Vec::new();
        for r in rs {
            let name = r[0]
                .as_str()
                .and_then(op_static)
                .ok_or_else(|| corrupt(seq, "a bad op"))?;
            results.push((name, outcome_from(seq, &r[1])?));
        }
        let version = v["v"]
            .as_u64()
            .ok_or_else(|| corrupt(seq, "a bad version"))?;
        return Ok(Outcome::Tx(TxOutcome { results, version }));
    }
    Err(corrupt(seq, "an unknown outcome"))
}

fn decode(seq: u64, bytes: &[u8]) -> Result<(String, Receipt), Corrupt> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(seq, &e.to_string()))?;
    let id = v["id"].as_str().ok_or_else(|| corrupt(seq, "no id"))?;
    let fingerprint = v["fp"]
        .as_str()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| corrupt(seq, "a bad fingerprint"))?;
    let op = v["op"]
        .as_str()
        .and_then(op_static)
        .ok_or_else(|| corrupt(seq, "a bad op"))?;
    let outcome = outcome_from(seq, &v["out"])?;
    Ok((
        id.to_string(),
        Receipt {
            seq,
            stored: true,
            fingerprint,
            op,
            outcome,
            cost: 0,
            arrival: 0,
        },
    ))
}

#[cfg(test)]
mod tests;

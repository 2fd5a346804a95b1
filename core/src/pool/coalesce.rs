//! Coalescing: two frames of one pool that a subscriber has not been sent yet become one frame
//! that takes it from the first frame's starting version to the second's.
//!
//! A subscriber that falls behind (its socket is slower than the writers) would otherwise get
//! every intermediate frame, each one later than the last, and its delivery latency would grow
//! with its queue. A pool holds state, not a message stream: the subscriber only needs what
//! changed between the version it holds and the current one. The adapter keeps at most one
//! unsent frame per subscriber and pool and folds each new frame into it with [`coalesce`]; a
//! frame shared by many subscribers is folded once (the result depends only on the two frames'
//! bytes, so the adapter can share it between every subscriber that held the same unsent frame).
//!
//! Only the snapshot/patch envelopes coalesce (ooo's WebSocket and `/_ws`); SSE event streams
//! promise every event with its id and never do ([`super::Frame::coalesce`] says which).
//!
//! The composed patch is the older frame's operations followed by the newer one's (RFC 6902
//! patches compose by concatenation), minus every `replace` that a later `replace` or `remove`
//! of the same location or an enclosing one makes invisible, provided only `replace` operations
//! lie between them (an `add`, `remove` or `move` in between may shift array indices or change
//! what exists, so nothing before it is dropped on account of what comes after it). Applied to
//! what the client holds, it gives exactly what the two frames give one after the other.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A composed frame larger than this is not made: the newer frame is queued on its own
/// instead, so the queue's own bound (a number of frames per connection) still bounds a
/// subscriber that never reads. 64 KiB holds hundreds of small composed operations; a pool
/// whose frames only grow when composed (list inserts, fields added and removed in turn)
/// reaches it after that many frames and then queues like a stream.
pub const COALESCE_MAX_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    sub: Option<&'a RawValue>,
    snapshot: bool,
    #[serde(borrow)]
    version: Cow<'a, str>,
    #[serde(borrow, default)]
    revs: Option<Vec<(&'a RawValue, u64)>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct OpHead<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    path: Cow<'a, str>,
}

/// One frame with the effect of `older` followed by `newer` (two frames of the same pool, in
/// that order), or `None` when they do not compose: a patch after a snapshot, frames of another
/// kind (SSE, clock), or a result over [`COALESCE_MAX_BYTES`]. A snapshot after anything is
/// the result by itself.
pub fn coalesce(older: &[u8], newer: &Bytes) -> Option<Bytes> {
    let n: Envelope = serde_json::from_slice(newer).ok()?;
    let o: Envelope = serde_json::from_slice(older).ok()?;
    if o.sub.map(RawValue::get) != n.sub.map(RawValue::get) || o.revs.is_some() != n.revs.is_some()
    {
        return None;
    }
    if n.snapshot {
        return Some(newer.clone());
    }
    if o.snapshot {
        return None;
    }
    let mut ops: Vec<&RawValue> = serde_json::from_str(o.data.get()).ok()?;
    ops.extend(serde_json::from_str::<Vec<&RawValue>>(n.data.get()).ok()?);
    let kept = compact(&ops)?;
    let size = older.len() + newer.len();
    let mut out = Vec::with_capacity(size.min(COALESCE_MAX_BYTES));
    out.push(b'{');
    if let Some(sub) = n.sub {
        out.extend_from_slice(b"\"sub\":");
        out.extend_from_slice(sub.get().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"snapshot\":false,\"version\":\"");
    out.extend_from_slice(n.version.as_bytes());
    out.push(b'"');
    if let (Some(a), Some(b)) = (&o.revs, &n.revs) {
        // Each key once, with its newest revision, in the order of its last change: a client
        // that reports the keys a frame names reports each one once, as it is now.
        let all: Vec<&(&RawValue, u64)> = a.iter().chain(b).collect();
        out.extend_from_slice(b",\"revs\":[");
        let mut first = true;
        for (i, (k, r)) in all.iter().enumerate() {
            if all[i + 1..].iter().any(|(l, _)| l.get() == k.get()) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'[');
            out.extend_from_slice(k.get().as_bytes());
            out.extend_from_slice(format!(",{r}]").as_bytes());
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"data\":[");
    let mut first = true;
    for (op, keep) in ops.iter().zip(kept) {
        if !keep {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(op.get().as_bytes());
    }
    out.extend_from_slice(b"]}");
    (out.len() <= COALESCE_MAX_BYTES).then(|| out.into())
}

/// Which operations to keep (see the module docs); `None` if one is not an operation.
fn compact(ops: &[&RawValue]) -> Option<Vec<bool>> {
    let mut keep = vec![true; ops.len()];
    // Locations a later `replace` or `remove` overwrites, valid back to the last operation
    // (from the end) that may move or create locations.
    let mut shadow: Vec<Cow<str>> = Vec::new();
    for (i, op) in ops.iter().enumerate().rev() {
        let head: OpHead = serde_json::from_str(op.get()).ok()?;
        match &*head.op {
            "replace" => {
                if shadow.iter().any(|s| within(&head.path, s)) {
                    keep[i] = false;
                } else {
                    shadow.push(head.path);
                }
            }
            "remove" => {
                // What was before it is seen at the locations it was removed from.
                shadow.clear();
                shadow.push(head.path);
            }
            _ => shadow.clear(),
        }
    }
    Some(keep)
}

/// Whether JSON Pointer `path` is `outer` or inside it.
fn within(path: &str, outer: &str) -> bool {
    path.strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests;

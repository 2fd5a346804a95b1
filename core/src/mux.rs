//! The multiplexed WebSocket protocol (`/_ws`) as a pure function: client messages in, typed
//! requests out; outcomes in, reply bytes out.
//!
//! Owns the message format only: how a text (or binary) message from a client becomes a
//! subscription request or an [`Op`], and how acknowledgements and errors are encoded. It does
//! not know sockets, pools or queues; the adapter joins pools, runs operations through the
//! engine and writes the bytes returned here. Data frames on `/_ws` are the pools' own
//! [`crate::Encoding::Mux`] frames (`{"sub":"<pattern>","snapshot":..,"version":..,"data":..}`).
//!
//! Client messages are JSON objects with an `id` (any JSON value, echoed back; `null` if absent)
//! and an `op`:
//!
//! | op | fields | reply fields |
//! |---|---|---|
//! | `sub` | `path` (key, glob, or subtree `a/`), `v` (hex version, optional) | `sub` (the pattern, as in frames) |
//! | `unsub` | `path` | `sub` |
//! | `set` | `key`, `value`, `ttl` (s), `rev` (AtomKV next revision), `ifMatch`, `ifAbsent` | `key`, `revision`, `etag` |
//! | `push` | `path` (`prefix/*`), `value`, `ttl` | `key`, `index`, `revision`, `etag` |
//! | `patch` | `key`, `value`, `type` (`merge` default, `merge-patch`, `json-patch`), `ifMatch` | `key`, `revision`, `etag` |
//! | `del` | `key` (key or glob), `ifMatch` | `deleted` |
//! | `incr` | `key`, `by` (default 1), `ttl` | `key`, `value`, `revision` |
//! | `take` | `key` | `key`, `value`, `revision` |
//! | `rename` | `key`, `to`, `overwrite` | `key`, `revision` |
//! | `tx` | `if` (compares), `then` (writes as above, without `id`): see [`tx`] | `version` (hex), `results` (one per write) |
//! | `ping` | — | — |
//! | `auth` | `token` (a JWT) | `subject` (its `sub`), `exp`, `dropped` (subscriptions left because the new identity may not see them the same way) |
//! | `onclose` | `write` (a `set`, `patch` or `del` message without `id`) | `onclose` (the handle, a number) |
//! | `onclose_cancel` | `onclose` (a handle) | `onclose` |
//!
//! Every write (`set`, `push`, `patch`, `del`, `incr`, `take`, `rename`, `tx`) may carry `rid`,
//! an id of the client's choosing (1 to 128 visible ASCII characters): a repeat of it by the
//! same caller is answered with the first answer instead of being applied again, so a client
//! resends any write after a reconnect (see [`crate::receipts`]). In a transaction the `tx`
//! message carries it, not its writes; a leased write takes none (the client takes a lease
//! again after every reconnect instead).
//!
//! `set`, `patch` and `push` also take `"lease": true`: the key is deleted when the connection
//! ends (see [`crate::session`]; not with `ttl`, which the lease sets).
//!
//! Replies: `{"id":..,"ok":true,...}` or
//! `{"id":..,"ok":false,"error":{"status":<http status>,"code":"<Error::code>","detail":".."}}`.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::engine::{Applied, Compare, Cond, Op, Outcome, PatchKind, Tx};
use crate::error::Error;
use crate::json;
use crate::key::{self, Pattern};
use crate::store::Ttl;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Subscribe to a key, glob or subtree, resuming from `version` if given.
    Sub {
        /// The pattern.
        pattern: Pattern,
        /// The client's last version (hex on the wire).
        version: Option<u64>,
    },
    /// Drop a subscription.
    Unsub {
        /// The pattern.
        pattern: Pattern,
    },
    /// Run an operation.
    Op(Op),
    /// Liveness check; answered with an empty acknowledgement.
    Ping,
    /// Present a bearer token: it replaces the connection's identity for later messages.
    Auth {
        /// The token.
        token: String,
    },
    /// A `set`, `patch` or `push` with `"lease": true`: the key is held by the connection and
    /// deleted when it ends.
    Leased(Op),
    /// Register a write (a `set`, `patch` or `del`) to run when the connection ends.
    OnClose {
        /// The write.
        op: Op,
        /// Its message as registered (compact JSON), for hosts that keep it outside memory.
        raw: String,
    },
    /// Cancel a registered on-close write.
    OnCloseCancel {
        /// Its handle.
        handle: u64,
    },
}

/// A parsed client message: its id and what it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Echoed in the reply (`null` if the client sent none).
    pub id: Value,
    /// The write's own id (`rid`), if the client gave one: a repeat is answered, not applied
    /// again (see [`crate::receipts`]).
    pub rid: Option<String>,
    /// The request.
    pub request: Request,
}

/// A message that could not be understood: the id (if one could be read) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The id to echo.
    pub id: Value,
    /// The reason.
    pub error: Error,
}

fn bad(id: &Value, msg: impl Into<String>) -> Refused {
    Refused {
        id: id.clone(),
        error: Error::BadRequest(msg.into()),
    }
}

fn str_field<'a>(o: &'a Map<String, Value>, id: &Value, name: &str) -> Result<&'a str, Refused> {
    o.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(id, format!("field {name:?} (a string) is required")))
}

fn value_field(o: &Map<String, Value>, id: &Value) -> Result<Value, Refused> {
    o.get("value")
        .cloned()
        .ok_or_else(|| bad(id, "field \"value\" is required"))
}

fn ttl_field(o: &Map<String, Value>, id: &Value, default: Ttl) -> Result<Ttl, Refused> {
    match o.get("ttl") {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_f64() {
            Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Ttl::After((s * 1e9) as i64)),
            _ => Err(bad(
                id,
                "ttl must be a number of seconds, more than 0 and less than 1e9",
            )),
        },
    }
}

fn cond_field(o: &Map<String, Value>, id: &Value) -> Result<Cond, Refused> {
    if let Some(r) = o.get("rev") {
        return r
            .as_u64()
            .map(Cond::NextRevision)
            .ok_or_else(|| bad(id, "rev must be a non-negative integer"));
    }
    if let Some(m) = o.get("ifMatch") {
        let tag = m
            .as_str()
            .ok_or_else(|| bad(id, "ifMatch must be a string"))?;
        return Ok(Cond::IfMatch(vec![tag.to_string()]));
    }
    if o.get("ifAbsent").and_then(Value::as_bool) == Some(true) {
        return Ok(Cond::IfAbsent);
    }
    Ok(Cond::Always)
}

fn sub_pattern(o: &Map<String, Value>, id: &Value) -> Result<Pattern, Refused> {
    let path = str_field(o, id, "path")?;
    let path = path.strip_prefix('/').unwrap_or(path);
    Pattern::from_http_path(&format!("/{path}"), true).map_err(|e| Refused {
        id: id.clone(),
        error: e.into(),
    })
}

/// Parses one client message. `max_depth` bounds the nesting of values, as for HTTP bodies,
/// and [`json::MAX_NODES`] the number of values.
pub fn parse(msg: &[u8], max_depth: usize) -> Result<Message, Refused> {
    parse_limited(msg, max_depth, json::MAX_NODES)
}

/// [`parse`] with the engine's limits (`max_depth`, `max_nodes` of its config).
pub fn parse_for(msg: &[u8], config: &crate::engine::Config) -> Result<Message, Refused> {
    parse_limited(msg, config.max_depth, config.max_nodes)
}

/// [`parse`] with an explicit cap on the values (nodes) of the message.
pub fn parse_limited(msg: &[u8], max_depth: usize, max_nodes: usize) -> Result<Message, Refused> {
    // The message's own object and its fields count too: one node of slack per field is
    // plenty (a message has at most a dozen).
    let v = json::parse_limited(
        msg,
        max_depth.saturating_add(1),
        max_nodes.saturating_add(16),
    )
    .map_err(|e| Refused {
        id: Value::Null,
        error: e.into(),
    })?;
    let Value::Object(o) = v else {
        return Err(bad(&Value::Null, "a message must be a JSON object"));
    };
    let id = o.get("id").cloned().unwrap_or(Value::Null);
    let op = str_field(&o, &id, "op")?;
    let request = match op {
        "onclose" => on_close(&o, &id, max_depth, max_nodes)?,
        _ => request(op, &o, &id)?,
    };
    let request = leased(&o, &id, request)?;
    let rid = match o.get("rid") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => {
            if !matches!(request, Request::Op(_)) {
                return Err(bad(
                    &id,
                    "rid is for writes (set, push, patch, del, incr, take, rename, tx) without \
                     lease: a leased write is taken again after every reconnect instead",
                ));
            }
            crate::receipts::check_id(r).map_err(|error| Refused {
                id: id.clone(),
                error,
            })?;
            Some(r.clone())
        }
        Some(_) => return Err(bad(&id, "rid must be a string")),
    };
    Ok(Message { id, rid, request })
}

// The request a message's `op` names, from the message's fields.
fn request(op: &str, o: &Map<String, Value>, id: &Value) -> Result<Request, Refused> {
    let key = |o: &Map<String, Value>| str_field(o, id, "key").map(str::to_string);
    Ok(match op {
        "sub" => Request::Sub {
            pattern: sub_pattern(o, id)?,
            version: match o.get("v") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(
                    crate::web::parse_version(s)
                        .ok_or_else(|| bad(id, "v must be a hex version"))?,
                ),
                Some(_) => return Err(bad(id, "v must be a hex version string")),
            },
        },
        "unsub" => Request::Unsub {
            pattern: sub_pattern(o, id)?,
        },
        "ping" => Request::Ping,
        "auth" => Request::Auth {
            token: str_field(o, id, "token")?.to_string(),
        },
        "set" => Request::Op(Op::Set {
            key: key(o)?,
            value: value_field(o, id)?.into(),
            ttl: ttl_field(o, id, Ttl::Clear)?,
            cond: cond_field(o, id)?,
        }),
        "push" => Request::Op(Op::Push {
            target: str_field(o, id, "path")?.to_string(),
            value: value_field(o, id)?.into(),
            ttl: ttl_field(o, id, Ttl::Clear)?,
        }),
        "patch" => {
            let v = value_field(o, id)?;
            let patch = match o.get("type").and_then(Value::as_str).unwrap_or("merge") {
                "merge" => PatchKind::Merge(v),
                "merge-patch" => PatchKind::MergePatch(v),
                "json-patch" => PatchKind::JsonPatch(json::parse_patch(v).map_err(|e| Refused {
                    id: id.clone(),
                    error: e.into(),
                })?),
                other => {
                    return Err(Refused {
                        id: id.clone(),
                        error: Error::UnsupportedMediaType(other.to_string()),
                    })
                }
            };
            Request::Op(Op::Patch {
                key: key(o)?,
                patch,
                cond: cond_field(o, id)?,
            })
        }
        "del" => Request::Op(Op::Delete {
            target: key(o)?,
            cond: cond_field(o, id)?,
        }),
        "incr" => Request::Op(Op::Incr {
            key: key(o)?,
            by: match o.get("by") {
                None | Some(Value::Null) => 1,
                Some(b) => b
                    .as_i64()
                    .ok_or_else(|| bad(id, "by must be an integer from -2^63 to 2^63-1"))?,
            },
            ttl: ttl_field(o, id, Ttl::Keep)?,
        }),
        "take" => Request::Op(Op::Take { key: key(o)? }),
        "tx" => Request::Op(Op::Tx(tx(o, id)?)),
        "rename" => Request::Op(Op::Rename {
            from: key(o)?,
            to: str_field(o, id, "to")?.to_string(),
            overwrite: o.get("overwrite").and_then(Value::as_bool).unwrap_or(false),
        }),
        "onclose_cancel" => Request::OnCloseCancel {
            handle: o
                .get("onclose")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(id, "field \"onclose\" (a handle, a number) is required"))?,
        },
        other => {
            return Err(bad(
                id,
                format!(
                    "unknown op {other:?}; known: sub, unsub, set, push, patch, del, incr, take, rename, tx, ping, auth, onclose, onclose_cancel"
                ),
            ))
        }
    })
}

/// Parses a transaction: `{"if":[<compare>, ...],"then":[<write message without id>, ...]}`
/// (the body of `POST /_tx`, or the fields of a `tx` message). A compare is
/// `{"key":K,"revision":N}`, `{"key":K,"absent":true}` or `{"key":K,"exists":true}`; a write is
/// a `set`, `push`, `patch`, `del` or `incr` message as on `/_ws` (an `id` in it is ignored).
pub fn tx(o: &Map<String, Value>, id: &Value) -> Result<Tx, Refused> {
    let list = |name: &str| -> Result<&[Value], Refused> {
        match o.get(name) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(bad(id, format!("tx: {name:?} must be an array"))),
        }
    };
    let mut compares = Vec::new();
    for (i, c) in list("if")?.iter().enumerate() {
        let Value::Object(c) = c else {
            return Err(bad(id, format!("tx: if[{i}] must be an object")));
        };
        let key = c
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(id, format!("tx: if[{i}] needs \"key\" (a string)")))?
            .to_string();
        let compare = match (c.get("revision"), c.get("absent"), c.get("exists")) {
            (Some(r), None, None) => Compare::Revision {
                key,
                revision: r.as_u64().ok_or_else(|| {
                    bad(id, format!("tx: if[{i}].revision must be a non-negative integer"))
                })?,
            },
            (None, Some(Value::Bool(true)), None) => Compare::Absent { key },
            (None, None, Some(Value::Bool(true))) => Compare::Exists { key },
            _ => {
                return Err(bad(
                    id,
                    format!(
                        "tx: if[{i}] must be {{\"key\":K,\"revision\":N}}, {{\"key\":K,\"absent\":true}} or {{\"key\":K,\"exists\":true}}"
                    ),
                ))
            }
        };
        compares.push(compare);
    }
    let mut writes = Vec::new();
    for (i, w) in list("then")?.iter().enumerate() {
        let Value::Object(w) = w else {
            return Err(bad(id, format!("tx: then[{i}] must be an object")));
        };
        let op = w
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(id, format!("tx: then[{i}] needs \"op\"")))?;
        if !matches!(op, "set" | "push" | "patch" | "del" | "incr") {
            return Err(bad(
                id,
                format!("tx: then[{i}]: op {op:?} cannot be part of a transaction; its writes are set, push, patch, del and incr"),
            ));
        }
        if w.get("rid").is_some_and(|l| !l.is_null()) {
            return Err(bad(
                id,
                format!(
                    "tx: then[{i}]: a transaction's writes take no rid (give the tx message one)"
                ),
            ));
        }
        if w.get("lease").is_some_and(|l| !l.is_null()) {
            return Err(bad(
                id,
                format!("tx: then[{i}]: a transaction's writes take no lease (lease a key with its own set)"),
            ));
        }
        match request(op, w, id) {
            Ok(Request::Op(op)) => writes.push(op),
            Ok(_) => unreachable!("the ops above are writes"),
            Err(Refused { id, error }) => {
                return Err(Refused {
                    id,
                    error: Error::TxWrite {
                        index: i,
                        error: Box::new(error),
                    },
                })
            }
        }
    }
    Ok(Tx { compares, writes })
}

/// `"lease": true` on a `set`, `patch` or `push` makes it a [`Request::Leased`]; anywhere else
/// (or with `ttl`, which the lease sets) it is refused.
fn leased(o: &Map<String, Value>, id: &Value, request: Request) -> Result<Request, Refused> {
    match o.get("lease") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(request),
        Some(Value::Bool(true)) => {
            if o.get("ttl").is_some_and(|t| !t.is_null()) {
                return Err(bad(
                    id,
                    "lease and ttl cannot be combined: a leased key's TTL is the lease's",
                ));
            }
            match request {
                Request::Op(op @ (Op::Set { .. } | Op::Patch { .. } | Op::Push { .. })) => {
                    Ok(Request::Leased(op))
                }
                _ => Err(bad(id, "lease applies to set, patch and push only")),
            }
        }
        Some(_) => Err(bad(id, "lease must be true or false")),
    }
}

/// `onclose`: its `write` is parsed as a message of its own (under the same limits) and must be
/// a `set`, `patch` or `del` without `id` or `lease`.
fn on_close(
    o: &Map<String, Value>,
    id: &Value,
    max_depth: usize,
    max_nodes: usize,
) -> Result<Request, Refused> {
    let Some(Value::Object(w)) = o.get("write") else {
        return Err(bad(
            id,
            "field \"write\" (a set, patch or del message) is required",
        ));
    };
    if w.contains_key("id") || w.contains_key("lease") || w.contains_key("rid") {
        return Err(bad(id, "an onclose write has no id, no rid and no lease"));
    }
    if !matches!(
        w.get("op").and_then(Value::as_str),
        Some("set" | "patch" | "del")
    ) {
        return Err(bad(id, "an onclose write is a set, patch or del"));
    }
    let raw = String::from_utf8_lossy(&json::encode(&Value::Object(w.clone()))).into_owned();
    let m = parse_limited(raw.as_bytes(), max_depth, max_nodes).map_err(|r| Refused {
        id: id.clone(),
        error: r.error,
    })?;
    match m.request {
        Request::Op(op) => Ok(Request::OnClose { op, raw }),
        _ => Err(bad(id, "an onclose write is a set, patch or del")),
    }
}

fn encode(mut fields: Map<String, Value>, id: &Value, ok: bool) -> Bytes {
    let mut o = Map::new();
    o.insert("id".into(), id.clone());
    o.insert("ok".into(), Value::Bool(ok));
    o.append(&mut fields);
    json::encode(&Value::Object(o)).into()
}

/// An acknowledgement with extra fields (an object; anything else adds nothing).
pub fn reply_ok(id: &Value, fields: Value) -> Bytes {
    match fields {
        Value::Object(m) => encode(m, id, true),
        _ => encode(Map::new(), id, true),
    }
}

/// The acknowledgement of a subscription change: `{"id":..,"ok":true,"sub":"<pattern>"}`.
pub fn reply_sub(id: &Value, pattern: &Pattern) -> Bytes {
    reply_ok(id, json!({ "sub": pattern.as_str() }))
}

/// The acknowledgement of an applied operation (see the module docs for its fields).
pub fn reply_applied(id: &Value, op_name: &str, a: &Applied) -> Bytes {
    reply_ok(id, applied_fields(op_name, &a.outcome))
}

/// The fields of an operation's acknowledgement (see the module docs); a transaction's are
/// `version` and `results`, one object per write as its own op would be acknowledged.
pub fn applied_fields(op_name: &str, outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Written(k, e) => {
            let mut f = json!({"key": &**k, "revision": e.revision, "etag": e.etag()});
            if op_name == "incr" {
                f["value"] = e.data().clone();
            }
            if op_name == "push" {
                f["index"] = Value::String(key::last_segment(k).to_string());
            }
            f
        }
        Outcome::Taken(k, e) => json!({"key": &**k, "value": *e.data(), "revision": e.revision}),
        Outcome::Deleted(n) => json!({ "deleted": n }),
        Outcome::Tx(tx) => json!({
            "version": format!("{:x}", tx.version),
            "results": tx.results.iter().map(|(name, r)| applied_fields(name, r)).collect::<Vec<_>>(),
        }),
    }
}

/// The op name of a request, as the client spelled it (for [`reply_applied`]).
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Set { .. } => "set",
        Op::Push { .. } => "push",
        Op::Patch { .. } => "patch",
        Op::Delete { .. } => "del",
        Op::Incr { .. } => "incr",
        Op::Take { .. } => "take",
        Op::Rename { .. } => "rename",
        Op::Tx(_) => "tx",
    }
}

/// An error reply.
pub fn reply_error(id: &Value, e: &Error) -> Bytes {
    let mut f = Map::new();
    let mut error =
        json!({"status": e.status().as_u16(), "code": e.code(), "detail": e.to_string()});
    if let (Value::Object(o), Some(Value::Object(more))) = (&mut error, e.members()) {
        o.extend(more);
    }
    f.insert("error".into(), error);
    encode(f, id, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Config, Engine};
    use crate::filter::Filters;
    use crate::Tick;

    fn check(msg: &str, expected: Result<Request, (Value, &str)>) {
        let got = parse(msg.as_bytes(), 64);
        match (got, expected) {
            (Ok(m), Ok(r)) => assert_eq!(m.request, r, "{msg}"),
            (Err(e), Err((id, code))) => {
                assert_eq!((e.id, e.error.code()), (id, code), "{msg}: {}", e.error)
            }
            (got, want) => panic!("{msg}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_requests() {
        check(
            r#"{"id":1,"op":"sub","path":"books/*","v":"ff"}"#,
            Ok(Request::Sub {
                pattern: Pattern::parse("books/*").unwrap(),
                version: Some(255),
            }),
        );
        check(
            r#"{"id":1,"op":"sub","path":"/a/"}"#,
            Ok(Request::Sub {
                pattern: Pattern::Subtree("a".into()),
                version: None,
            }),
        );
        check(
            r#"{"op":"unsub","path":"x"}"#,
            Ok(Request::Unsub {
                pattern: Pattern::parse("x").unwrap(),
            }),
        );
        check(r#"{"id":"p","op":"ping"}"#, Ok(Request::Ping));
        check(
            r#"{"id":"a","op":"auth","token":"t.t.t"}"#,
            Ok(Request::Auth {
                token: "t.t.t".into(),
            }),
        );
        check(
            r#"{"id":"a","op":"auth"}"#,
            Err((json!("a"), "bad-request")),
        );
        check(
            r#"{"id":2,"op":"set","key":"a","value":{"x":1},"rev":0}"#,
            Ok(Request::Op(Op::Set {
                key: "a".into(),
                value: json!({"x":1}).into(),
                ttl: Ttl::Clear,
                cond: Cond::NextRevision(0),
            })),
        );
        check(
            r#"{"id":2,"op":"set","key":"a","value":1,"ttl":1.5,"ifAbsent":true}"#,
            Ok(Request::Op(Op::Set {
                key: "a".into(),
                value: json!(1).into(),
                ttl: Ttl::After(1_500_000_000),
                cond: Cond::IfAbsent,
            })),
        );
        check(
            r#"{"op":"push","path":"l/*","value":null}"#,
            Ok(Request::Op(Op::Push {
                target: "l/*".into(),
                value: Value::Null.into(),
                ttl: Ttl::Clear,
            })),
        );
        check(
            r#"{"op":"patch","key":"p","value":{"b":2},"type":"merge-patch"}"#,
            Ok(Request::Op(Op::Patch {
                key: "p".into(),
                patch: PatchKind::MergePatch(json!({"b":2})),
                cond: Cond::Always,
            })),
        );
        check(
            r#"{"op":"del","key":"l/*","ifMatch":"\"x\""}"#,
            Ok(Request::Op(Op::Delete {
                target: "l/*".into(),
                cond: Cond::IfMatch(vec!["\"x\"".into()]),
            })),
        );
        check(
            r#"{"op":"incr","key":"c","by":-3}"#,
            Ok(Request::Op(Op::Incr {
                key: "c".into(),
                by: -3,
                ttl: Ttl::Keep,
            })),
        );
        check(
            r#"{"op":"take","key":"c"}"#,
            Ok(Request::Op(Op::Take { key: "c".into() })),
        );
        check(
            r#"{"op":"rename","key":"a","to":"b","overwrite":true}"#,
            Ok(Request::Op(Op::Rename {
                from: "a".into(),
                to: "b".into(),
                overwrite: true,
            })),
        );
    }

    #[test]
    fn refuses_bad_messages() {
        check("{oops", Err((Value::Null, "invalid-json")));
        check("[1]", Err((Value::Null, "bad-request")));
        check(r#"{"id":7}"#, Err((json!(7), "bad-request")));
        check(r#"{"id":7,"op":"fly"}"#, Err((json!(7), "bad-request")));
        check(
            r#"{"id":7,"op":"set","key":"a"}"#,
            Err((json!(7), "bad-request")),
        );
        check(
            r#"{"id":7,"op":"sub","path":"a//b"}"#,
            Err((json!(7), "invalid-key")),
        );
        check(
            r#"{"id":7,"op":"sub","path":"a","v":12}"#,
            Err((json!(7), "bad-request")),
        );
        check(
            r#"{"id":7,"op":"patch","key":"a","value":1,"type":"xml"}"#,
            Err((json!(7), "unsupported-media-type")),
        );
        check(
            r#"{"id":7,"op":"patch","key":"a","value":{"op":"nope"},"type":"json-patch"}"#,
            Err((json!(7), "invalid-json")),
        );
        check(
            r#"{"id":7,"op":"set","key":"a","value":1,"ttl":-1}"#,
            Err((json!(7), "bad-request")),
        );
        let deep = format!(
            r#"{{"id":1,"op":"set","key":"a","value":{}1{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        check(&deep, Err((Value::Null, "invalid-json")));
    }

    #[test]
    fn encodes_replies() {
        let mut e = Engine::new(Tick::from_wall(1_000), Config::default(), Filters::new());
        let m = parse(br#"{"id":3,"op":"incr","key":"c","by":2}"#, 64).unwrap();
        let Request::Op(op) = m.request else {
            panic!("an op")
        };
        let name = op_name(&op);
        let a = e.execute_as_system(Tick::from_wall(2_000), op).unwrap();
        let r: Value = serde_json::from_slice(&reply_applied(&m.id, name, &a)).unwrap();
        assert_eq!(
            r,
            json!({"id":3,"ok":true,"key":"c","revision":0,"etag":a_etag(&e, "c"),"value":2})
        );
        assert_eq!(
            &reply_error(&json!("x"), &Error::NotFound)[..],
            br#"{"id":"x","ok":false,"error":{"status":404,"code":"not-found","detail":"not found"}}"#
        );
        assert_eq!(
            &reply_sub(&json!(1), &Pattern::Subtree("a".into()))[..],
            br#"{"id":1,"ok":true,"sub":"a/"}"#
        );
        assert_eq!(
            &reply_ok(&Value::Null, Value::Null)[..],
            br#"{"id":null,"ok":true}"#
        );
    }

    fn a_etag(e: &Engine, k: &str) -> String {
        e.store().get(k).unwrap().etag()
    }
}

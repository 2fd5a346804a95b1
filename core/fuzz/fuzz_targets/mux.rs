//! The `/_ws` message parser (`mux::parse_limited`), and what the adapters do with what it
//! returns: each line of the input is one client message, handled as `native-server/src/ws.rs`
//! handles it (auth, sub, unsub, operations run through the engine, published, their change-log
//! records encoded and decoded as the storage does), then the TTLs run out. Any message, in any
//! order, must get a reply, never a panic.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stateline_core::codec::{decode_log, encode_log};
use stateline_core::mux::{self, Request};
use stateline_core::{Encoding, Identity};
use stateline_core_fuzz::{engine, tick};

fuzz_target!(|data: &[u8]| {
    let mut engine = engine();
    let mut who = Identity::Anonymous;
    let mut subs = HashMap::new();
    let mut n = 0;
    for msg in data.split(|&b| b == b'\n').take(32) {
        n += 1;
        let t = tick(n);
        let (depth, nodes) = (engine.config().max_depth, engine.config().max_nodes);
        let _reply = match mux::parse_limited(msg, depth, nodes) {
            Err(r) => mux::reply_error(&r.id, &r.error),
            Ok(m) => match m.request {
                Request::Ping => mux::reply_ok(&m.id, Value::Null),
                Request::Auth { token } => {
                    let new = engine.identify(t, Some(&token));
                    if let Identity::Invalid(_) = new {
                        let e = engine
                            .authorize_caller("_ws auth", &new)
                            .expect_err("an invalid token is refused");
                        mux::reply_error(&m.id, &e)
                    } else {
                        subs.retain(|p, pool| {
                            let keep = engine.keeps_pool(p, *pool, &new);
                            if !keep {
                                engine.leave(*pool);
                            }
                            keep
                        });
                        who = new;
                        mux::reply_ok(&m.id, Value::Null)
                    }
                }
                Request::Sub { pattern, version } => {
                    match engine.join(pattern.clone(), Encoding::Mux, version, true, &who) {
                        Ok((pool, _first)) => {
                            if let Some(old) = subs.insert(pattern.clone(), pool) {
                                engine.leave(old);
                            }
                            mux::reply_sub(&m.id, &pattern)
                        }
                        Err(e) => mux::reply_error(&m.id, &e),
                    }
                }
                Request::Unsub { pattern } => {
                    if let Some(pool) = subs.remove(&pattern) {
                        engine.leave(pool);
                    }
                    mux::reply_sub(&m.id, &pattern)
                }
                Request::Op(op) => {
                    let name = mux::op_name(&op);
                    match engine.execute(t, op, &who) {
                        Ok(a) => {
                            for c in &a.changes {
                                // What the storage writes must read back as the same change.
                                let (seq, key, revision, prev, entry) =
                                    decode_log(c.seq, &encode_log(c)).expect("a change decodes");
                                assert_eq!((seq, &key, revision), (c.seq, &c.key, c.revision));
                                assert_eq!(prev, c.prev.as_ref().map(|p| p.created));
                                assert_eq!(entry, c.entry);
                            }
                            engine.publish(&a.changes);
                            mux::reply_applied(&m.id, name, &a)
                        }
                        Err(e) => mux::reply_error(&m.id, &e),
                    }
                }
            },
        };
        while engine.poll_frame().is_some() {}
        while engine.poll_denial().is_some() {}
    }
    // Every TTL has run out a day later.
    let changes = engine.handle_timeout(tick(n + 86_400_000));
    engine.publish(&changes);
    while engine.poll_frame().is_some() {}
});

//! Property tests: diff/patch round trips, and pools whose frames, replayed on an empty client
//! cache, always equal a fresh snapshot.

use proptest::prelude::*;
use serde_json::{json, Value};
use stateline_core::engine::{Cond, Config, Engine, Op, PatchKind};
use stateline_core::filter::{Filters, Limit};
use stateline_core::key::Pattern;
use stateline_core::pool::{Encoding, Join};
use stateline_core::{meta, Tick, Ttl};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        "[a-c~/]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-d~/]{0,2}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn diff_then_patch_gives_the_target(a in arb_json(), b in arb_json()) {
        let p = json_patch::diff(&a, &b);
        let mut doc = a.clone();
        json_patch::patch(&mut doc, &p).unwrap();
        prop_assert_eq!(doc, b);
    }
}

#[derive(Debug, Clone)]
enum Step {
    Set(usize, Value),
    Push(usize, Value),
    Merge(usize, Value),
    JsonPatch(usize, Value),
    Delete(usize),
    DeleteGlob(usize),
    Incr(usize),
    Rename(usize, usize),
    Expire,
    Disconnect(usize),
    Reconnect(usize),
}

const KEYS: [&str; 6] = ["a/1", "a/2", "a/3", "b/1", "a", "c/x/1"];
const GLOBS: [&str; 4] = ["a/*", "b/*", "*/1", "c/*/1"];
const PUSH: [&str; 3] = ["a/*", "b/*", "c/x/*"];

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..KEYS.len(), arb_json()).prop_map(|(k, v)| Step::Set(k, v)),
        (0..PUSH.len(), arb_json()).prop_map(|(k, v)| Step::Push(k, v)),
        (0..KEYS.len(), arb_json()).prop_map(|(k, v)| Step::Merge(k, v)),
        (0..KEYS.len(), arb_json()).prop_map(|(k, v)| Step::JsonPatch(k, v)),
        (0..KEYS.len()).prop_map(Step::Delete),
        (0..GLOBS.len()).prop_map(Step::DeleteGlob),
        (0..KEYS.len()).prop_map(Step::Incr),
        (0..KEYS.len(), 0..KEYS.len()).prop_map(|(a, b)| Step::Rename(a, b)),
        Just(Step::Expire),
        (0..18usize).prop_map(Step::Disconnect),
        (0..18usize).prop_map(Step::Reconnect),
    ]
}

fn op(step: &Step, i: usize) -> Option<Op> {
    Some(match step.clone() {
        Step::Set(k, v) => {
            let ttl = if i.is_multiple_of(5) {
                Ttl::After(3)
            } else {
                Ttl::Clear
            };
            Op::Set {
                key: KEYS[k].into(),
                value: v.into(),
                ttl,
                cond: Cond::Always,
            }
        }
        Step::Push(k, v) => Op::Push {
            target: PUSH[k].into(),
            value: v.into(),
            ttl: Ttl::Clear,
        },
        Step::Merge(k, v) => Op::Patch {
            key: KEYS[k].into(),
            patch: PatchKind::Merge(v),
            cond: Cond::Always,
        },
        Step::JsonPatch(k, v) => Op::Patch {
            key: KEYS[k].into(),
            patch: PatchKind::JsonPatch(
                serde_json::from_value(json!([{"op":"add","path":"/p","value":v}])).ok()?,
            ),
            cond: Cond::Always,
        },
        Step::Delete(k) => Op::Delete {
            target: KEYS[k].into(),
            cond: Cond::Always,
        },
        Step::DeleteGlob(g) => Op::Delete {
            target: GLOBS[g].into(),
            cond: Cond::Always,
        },
        Step::Incr(k) => Op::Incr {
            key: KEYS[k].into(),
            by: 2,
            ttl: Ttl::Keep,
        },
        Step::Rename(a, b) => Op::Rename {
            from: KEYS[a].into(),
            to: KEYS[b].into(),
            overwrite: i.is_multiple_of(2),
        },
        Step::Expire | Step::Disconnect(_) | Step::Reconnect(_) => return None,
    })
}

/// The view a fresh subscriber would get, as a value.
fn fresh(engine: &Engine, pattern: &Pattern) -> Value {
    match pattern {
        Pattern::Key(k) => match engine.store().get(k) {
            Some(e) => meta::value(k, e),
            None => meta::empty_value(),
        },
        p => Value::Array(
            engine
                .store()
                .list(p)
                .iter()
                .map(|(k, e)| meta::value(k, e))
                .collect(),
        ),
    }
}

fn apply_frame(
    cache: &mut Value,
    version: &mut String,
    bytes: &[u8],
    enc: Encoding,
    pattern: &Pattern,
) {
    let f: Value = serde_json::from_slice(bytes).expect("frames are JSON");
    if enc == Encoding::Mux {
        assert_eq!(f["sub"], json!(pattern.as_str()));
    }
    let v = f["version"].as_str().unwrap().to_string();
    assert!(
        u64::from_str_radix(&v, 16).unwrap() > u64::from_str_radix(version, 16).unwrap_or(0),
        "versions grow"
    );
    *version = v;
    if f["snapshot"] == json!(true) {
        *cache = f["data"].clone();
    } else {
        let p: json_patch::Patch =
            serde_json::from_value(f["data"].clone()).expect("patch frames hold RFC 6902");
        json_patch::patch(cache, &p).expect("patch applies to the cache");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn replaying_frames_equals_a_fresh_snapshot(
        steps in prop::collection::vec(arb_step(), 1..40),
        limited in any::<bool>(),
        log_entries in 2usize..60,
    ) {
        let mut filters = Filters::new();
        if limited {
            filters.limit("b/*", Limit { count: Some(2), max_age_ns: None }).unwrap();
        }
        let config = Config { log_entries, ..Config::default() };
        let mut e = Engine::new(Tick::from_wall(1_000), config, filters);
        let patterns: Vec<Pattern> = ["a/1", "a", "a/*", "b/*", "*/1", "c/*/1", "c/x/1"]
            .iter()
            .map(|p| Pattern::parse(p).unwrap())
            .chain([Pattern::from_http_path("/a/", true).unwrap(), Pattern::from_http_path("/", true).unwrap()])
            .collect();
        // (pool, pattern, encoding, cache, version, connected)
        let mut clients = Vec::new();
        for p in &patterns {
            for enc in [Encoding::Ooo, Encoding::Mux] {
                let (id, first) = e.join_as_system(p.clone(), enc, None, true).unwrap();
                let mut cache = Value::Null;
                let mut version = String::new();
                match first {
                    Join::Frame(b) => apply_frame(&mut cache, &mut version, &b, enc, p),
                    other => panic!("first join must be a snapshot, got {other:?}"),
                }
                clients.push((id, p.clone(), enc, cache, version, true));
            }
        }
        let rejoin = |e: &mut Engine, c: &mut (stateline_core::PoolId, Pattern, Encoding, Value, String, bool)| {
            let v = u64::from_str_radix(&c.4, 16).unwrap();
            let (id, first) = e.join_as_system(c.1.clone(), c.2, Some(v), true).unwrap();
            c.0 = id;
            c.5 = true;
            match first {
                Join::Current => {}
                Join::Frame(b) => apply_frame(&mut c.3, &mut c.4, &b, c.2, &c.1),
                Join::Missed(_) => panic!("only SSE gets events"),
            }
        };
        for (i, s) in steps.iter().enumerate() {
            let tick = Tick::from_wall(1_000 + i as i64);
            let changes = match s {
                Step::Disconnect(c) => {
                    if clients[*c].5 {
                        e.leave(clients[*c].0);
                        clients[*c].5 = false;
                    }
                    continue;
                }
                Step::Reconnect(c) => {
                    if !clients[*c].5 {
                        rejoin(&mut e, &mut clients[*c]);
                    }
                    continue;
                }
                _ => match op(s, i) {
                    Some(op) => match e.execute_as_system(tick, op) { Ok(a) => a.changes, Err(_) => continue },
                    None => e.handle_timeout(Tick::from_wall(1_000 + i as i64 + 10)),
                },
            };
            e.publish(&changes);
            let mut seen = std::collections::HashSet::new();
            while let Some(f) = e.poll_frame() {
                prop_assert!(seen.insert(f.pool), "one frame per pool per operation");
                for (id, p, enc, cache, version, connected) in clients.iter_mut() {
                    if *connected && *id == f.pool {
                        apply_frame(cache, version, &f.bytes, *enc, p);
                    }
                }
            }
        }
        for c in clients.iter_mut() {
            if !c.5 {
                rejoin(&mut e, c);
            }
        }
        for (_, p, _, cache, _, _) in &clients {
            prop_assert_eq!(cache, &fresh(&e, p), "pattern {}", p);
        }
        // Rejoining with the last version a client holds sends nothing while the log covers it,
        // and a snapshot equal to its cache once it does not.
        for (_, p, enc, cache, version, _) in &clients {
            let v = u64::from_str_radix(version, 16).unwrap();
            let (_, again) = e.join_as_system(p.clone(), *enc, Some(v), true).unwrap();
            if e.log().covers(v, e.store().last_seq()) {
                prop_assert_eq!(again, Join::Current, "pattern {}", p);
            } else {
                let Join::Frame(b) = again else { panic!("expected a snapshot") };
                let f: Value = serde_json::from_slice(&b).unwrap();
                prop_assert_eq!(&f["snapshot"], &json!(true));
                prop_assert_eq!(&f["data"], cache);
            }
        }
    }
}

#[test]
fn resume_sends_missed_changes_or_a_snapshot() {
    let mut e = Engine::new(
        Tick::from_wall(0),
        Config {
            log_entries: 4,
            ..Config::default()
        },
        Filters::new(),
    );
    let p = Pattern::from_http_path("/s/", true).unwrap();
    let set = |e: &mut Engine, k: &str, v: Value| {
        let a = e
            .execute_as_system(
                Tick::from_wall(1),
                Op::Set {
                    key: k.into(),
                    value: v.into(),
                    ttl: Ttl::Clear,
                    cond: Cond::Always,
                },
            )
            .unwrap();
        e.publish(&a.changes);
    };
    set(&mut e, "s/k", json!(1));
    let v = e.store().last_seq();
    set(&mut e, "s/k", json!(2));
    set(&mut e, "sx", json!(0));
    let (_, j) = e
        .join_as_system(p.clone(), Encoding::Sse, Some(v), false)
        .unwrap();
    // The id ends with the version of the change (unique and ordered across the stream).
    let event = format!(
        "data:2\nid:/s/k:1:{:x}\n\n",
        e.store().get("s/k").unwrap().seq
    );
    assert_eq!(j, Join::Missed(bytes::Bytes::from(event.clone())));
    for i in 0..5 {
        set(&mut e, "other", json!(i));
    }
    let (_, j) = e
        .join_as_system(p.clone(), Encoding::Sse, Some(v), false)
        .unwrap();
    assert_eq!(
        j,
        Join::Frame(bytes::Bytes::from(event)),
        "too old: resync with current values"
    );
    let (_, j) = e.join_as_system(p, Encoding::Sse, None, false).unwrap();
    assert_eq!(j, Join::Current, "AtomKV sends nothing at subscribe time");
}

#[test]
fn list_resume_sends_positional_ops_not_a_snapshot() {
    let mut e = Engine::new(Tick::from_wall(0), Config::default(), Filters::new());
    let w = |e: &mut Engine, op: Op| {
        let a = e.execute_as_system(Tick::from_wall(1), op).unwrap();
        e.publish(&a.changes);
    };
    for k in ["l/a", "l/b", "l/c", "l/d"] {
        w(
            &mut e,
            Op::Set {
                key: k.into(),
                value: json!(k).into(),
                ttl: Ttl::Clear,
                cond: Cond::Always,
            },
        );
    }
    let p = Pattern::parse("l/*").unwrap();
    let (id, first) = e
        .join_as_system(p.clone(), Encoding::Ooo, None, true)
        .unwrap();
    let Join::Frame(first) = first else { panic!() };
    let mut cache = Value::Null;
    let mut version = String::new();
    apply_frame(&mut cache, &mut version, &first, Encoding::Ooo, &p);
    e.leave(id);
    w(
        &mut e,
        Op::Set {
            key: "l/b".into(),
            value: json!("B").into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        },
    );
    w(
        &mut e,
        Op::Delete {
            target: "l/c".into(),
            cond: Cond::Always,
        },
    );
    w(
        &mut e,
        Op::Set {
            key: "l/e".into(),
            value: json!("e").into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        },
    );
    let v = u64::from_str_radix(&version, 16).unwrap();
    let (_, again) = e
        .join_as_system(p.clone(), Encoding::Ooo, Some(v), true)
        .unwrap();
    let Join::Frame(b) = again else {
        panic!("expected the missed changes")
    };
    let f: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(f["snapshot"], json!(false), "{f}");
    assert_eq!(
        f["data"].as_array().unwrap().len(),
        3,
        "replace, remove, add: {f}"
    );
    apply_frame(&mut cache, &mut version, &b, Encoding::Ooo, &p);
    assert_eq!(cache, fresh(&e, &p));
}

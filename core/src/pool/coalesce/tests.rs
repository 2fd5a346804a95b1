use super::*;
use crate::engine::{Cond, Config, Engine, Op, PatchKind};
use crate::filter::Filters;
use crate::key::Pattern;
use crate::pool::{Encoding, Join};
use crate::store::Ttl;
use crate::Tick;
use serde_json::{json, Value};

/// A frame's `revs`: each key with its revision.
type Revs = Vec<(String, u64)>;

/// A frame's parts, read back as JSON: snapshot, version, revs, data.
fn parts(b: &[u8]) -> (bool, String, Option<Revs>, Value) {
    let v: Value = serde_json::from_slice(b).expect("a frame is JSON");
    let revs = v.get("revs").map(|r| {
        r.as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap()))
            .collect()
    });
    (
        v["snapshot"].as_bool().unwrap(),
        v["version"].as_str().unwrap().to_string(),
        revs,
        v["data"].clone(),
    )
}

/// What a client holds after `frame`.
fn apply(state: &Value, frame: &[u8]) -> Value {
    let (snapshot, _, _, data) = parts(frame);
    if snapshot {
        return data;
    }
    let p = crate::json::parse_patch(data).expect("a frame's patch parses");
    crate::json::json_patch(state, &p).expect("a frame's patch applies")
}

/// A small deterministic generator (no dependency, same sequence on every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn random_op(r: &mut Lcg, keys: &[&str]) -> Op {
    let key = keys[r.next(keys.len() as u64) as usize].to_string();
    let small = |r: &mut Lcg| -> Value {
        let mut m = serde_json::Map::new();
        for f in ["a", "ab", "b", "d/e"] {
            if r.next(2) == 0 {
                let v = match r.next(4) {
                    0 => json!(r.next(100)),
                    1 => json!({"in": r.next(5), "list": [1, r.next(3)]}),
                    2 => json!([r.next(3), {"x": r.next(2)}]),
                    _ => json!(format!("s{}", r.next(10))),
                };
                m.insert(f.to_string(), v);
            }
        }
        Value::Object(m)
    };
    match r.next(10) {
        0 => Op::Delete {
            target: key,
            cond: Cond::Always,
        },
        1..=3 => Op::Patch {
            key,
            patch: PatchKind::Merge(small(r)),
            cond: Cond::Always,
        },
        _ => Op::Set {
            key,
            value: small(r).into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        },
    }
}

/// Random writes to the keys of `pattern`; every frame of its pool is applied to a client's
/// state one by one, and, from every starting frame, folded with `coalesce` for up to 12 frames
/// and applied once: both give the same state, the newest version, and each key once in `revs`
/// with its newest revision.
fn equivalent(pattern: &str, enc: Encoding, keys: &[&str], seed: u64) {
    let mut e = Engine::new(Tick::from_wall(1_000), Config::default(), Filters::new());
    let mut r = Lcg(seed);
    for k in keys {
        let _ = e.execute_as_system(
            Tick::from_wall(1_000),
            Op::Set {
                key: k.to_string(),
                value: json!({"a": 1}).into(),
                ttl: Ttl::Clear,
                cond: Cond::Always,
            },
        );
    }
    let (pool, first) = e
        .join_as_system(Pattern::parse(pattern).unwrap(), enc, None, true)
        .unwrap();
    let Join::Frame(first) = first else {
        panic!("a first frame")
    };
    let mut frames = Vec::new();
    for i in 0..300 {
        let op = random_op(&mut r, keys);
        if let Ok(a) = e.execute_as_system(Tick::from_wall(1_000 + i), op) {
            e.publish(&a.changes);
        }
        while let Some(f) = e.poll_frame() {
            assert_eq!(f.pool, pool);
            assert!(f.coalesce, "snapshot/patch frames coalesce");
            frames.push(f.bytes);
        }
    }
    assert!(frames.len() > 100, "the writes made frames");
    let mut states = vec![apply(&Value::Null, &first)];
    for f in &frames {
        let s = apply(states.last().unwrap(), f);
        states.push(s);
    }
    let mut composed = 0;
    for start in 0..frames.len() {
        let mut acc = frames[start].clone();
        for end in start + 1..(start + 12).min(frames.len()) {
            let Some(c) = coalesce(&acc, &frames[end]) else {
                // Not composable (a patch after a snapshot): queued on its own.
                assert!(parts(&acc).0 && !parts(&frames[end]).0);
                break;
            };
            composed += 1;
            acc = c;
            let (_, version, revs, _) = parts(&acc);
            assert_eq!(version, parts(&frames[end]).1);
            assert_eq!(
                apply(&states[start], &acc),
                states[end + 1],
                "frames {start}..={end} of {pattern}"
            );
            if let Some(revs) = revs {
                // Each key once, with the newest revision any of the frames gave it.
                let mut newest: Revs = Vec::new();
                for f in &frames[start..=end] {
                    for (k, rev) in parts(f).2.unwrap() {
                        newest.retain(|(x, _)| *x != k);
                        newest.push((k, rev));
                    }
                }
                if !parts(&acc).0 {
                    assert_eq!(revs, newest);
                }
            }
        }
    }
    assert!(composed > 500, "{composed} compositions checked");
}

#[test]
fn composed_frames_equal_their_sequence_on_one_key() {
    for seed in 1..4 {
        equivalent("doc", Encoding::Mux, &["doc"], seed);
        equivalent("doc", Encoding::Ooo, &["doc"], seed);
    }
}

#[test]
fn composed_frames_equal_their_sequence_on_a_list() {
    for seed in 1..4 {
        let keys = ["l/a", "l/b", "l/c", "l/d", "l/e"];
        equivalent("l/*", Encoding::Mux, &keys, seed);
        equivalent("l/*", Encoding::Ooo, &keys, seed);
    }
}

fn frame(sub: Option<&str>, snapshot: bool, version: &str, revs: &str, data: &str) -> Bytes {
    let mut s = String::from("{");
    if let Some(p) = sub {
        s += &format!("\"sub\":\"{p}\",");
    }
    s += &format!("\"snapshot\":{snapshot},\"version\":\"{version}\"");
    if sub.is_some() {
        s += &format!(",\"revs\":{revs}");
    }
    s += &format!(",\"data\":{data}}}");
    Bytes::from(s)
}

#[test]
fn replaced_values_are_dropped_and_nothing_else() {
    let a = frame(
        Some("k"),
        false,
        "1",
        r#"[["k",1]]"#,
        r#"[{"op":"replace","path":"/updated","value":1},{"op":"replace","path":"/data/m","value":"a"}]"#,
    );
    let b = frame(
        Some("k"),
        false,
        "2",
        r#"[["k",2]]"#,
        r#"[{"op":"replace","path":"/updated","value":2},{"op":"replace","path":"/data/m","value":"b"}]"#,
    );
    assert_eq!(
        &coalesce(&a, &b).unwrap()[..],
        br#"{"sub":"k","snapshot":false,"version":"2","revs":[["k",2]],"data":[{"op":"replace","path":"/updated","value":2},{"op":"replace","path":"/data/m","value":"b"}]}"#
    );
    // An add between them keeps what came before it; a replace of an enclosing location hides
    // what is inside it; a remove hides what was replaced at its location.
    let c = frame(
        None,
        false,
        "3",
        "",
        r#"[{"op":"replace","path":"/data/x/y","value":1},{"op":"add","path":"/data/z","value":1},{"op":"replace","path":"/data/w","value":1}]"#,
    );
    let d = frame(
        None,
        false,
        "4",
        "",
        r#"[{"op":"replace","path":"/data/x","value":{}},{"op":"replace","path":"/data/wx","value":2},{"op":"remove","path":"/data/w"}]"#,
    );
    assert_eq!(
        &coalesce(&c, &d).unwrap()[..],
        br#"{"snapshot":false,"version":"4","data":[{"op":"replace","path":"/data/x/y","value":1},{"op":"add","path":"/data/z","value":1},{"op":"replace","path":"/data/x","value":{}},{"op":"replace","path":"/data/wx","value":2},{"op":"remove","path":"/data/w"}]}"#
    );
}

#[test]
fn what_does_not_compose() {
    let snap = frame(Some("k"), true, "1", r#"[["k",1]]"#, r#"{"data":1}"#);
    let patch = frame(
        Some("k"),
        false,
        "2",
        r#"[["k",2]]"#,
        r#"[{"op":"replace","path":"/data","value":2}]"#,
    );
    // A patch after a snapshot: queued on its own. A snapshot after anything replaces it.
    assert_eq!(coalesce(&snap, &patch), None);
    assert_eq!(coalesce(&patch, &snap), Some(snap.clone()));
    // Another subscription, another encoding, SSE events, anything else.
    let other = frame(Some("j"), false, "3", "[]", "[]");
    assert_eq!(coalesce(&patch, &other), None);
    let ooo = frame(None, false, "3", "", "[]");
    assert_eq!(coalesce(&patch, &ooo), None);
    let sse = Bytes::from_static(b"data:1\nid:/k:1:1\n\n");
    assert_eq!(coalesce(&sse, &sse), None);
    assert_eq!(coalesce(b"{\"snapshot\":false}", &patch), None);
    // Past the size bound: queued on its own.
    let big = format!(
        r#"[{{"op":"add","path":"/data/x","value":"{}"}}]"#,
        "x".repeat(COALESCE_MAX_BYTES / 2)
    );
    let b1 = frame(None, false, "1", "", &big);
    let b2 = frame(None, false, "2", "", &big);
    assert_eq!(coalesce(&b1, &b2), None);
}

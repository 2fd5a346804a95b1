//! Transactions: compares, all or nothing, one frame per pool, rules first.

use super::*;
use crate::key::Pattern;
use crate::pool::Encoding;
use crate::rules::Inline;
use http::StatusCode;
use serde_json::json;

fn t(n: i64) -> Tick {
    Tick::from_wall(1_000 + n)
}

fn engine() -> Engine {
    Engine::new(t(0), Config::default(), Filters::new())
}

fn set(k: &str, v: Value) -> Op {
    Op::Set {
        key: k.into(),
        value: v.into(),
        ttl: Ttl::Clear,
        cond: Cond::Always,
    }
}

fn tx(compares: Vec<Compare>, writes: Vec<Op>) -> Op {
    Op::Tx(Tx { compares, writes })
}

fn rev(k: &str, revision: u64) -> Compare {
    Compare::Revision {
        key: k.into(),
        revision,
    }
}

fn value(e: &Engine, k: &str) -> Option<Value> {
    e.store().get(k).map(|e| e.data().clone())
}

#[test]
fn every_compare_holds_then_every_write_applies_in_order() {
    let mut e = engine();
    e.execute_as_system(t(1), set("a", json!(1))).unwrap();
    e.execute_as_system(t(1), set("a", json!(2))).unwrap();
    let a = e
        .execute_as_system(
            t(2),
            tx(
                vec![rev("a", 1), Compare::Absent { key: "b".into() }],
                vec![
                    set("b", json!({"x": 1})),
                    // Sees the set before it.
                    Op::Patch {
                        key: "b".into(),
                        patch: PatchKind::Merge(json!({"y": 2})),
                        cond: Cond::Always,
                    },
                    Op::Incr {
                        key: "n".into(),
                        by: 5,
                        ttl: Ttl::Keep,
                    },
                    Op::Delete {
                        target: "a".into(),
                        cond: Cond::Always,
                    },
                ],
            ),
        )
        .unwrap();
    assert_eq!(value(&e, "b"), Some(json!({"x": 1, "y": 2})));
    assert_eq!(value(&e, "n"), Some(json!(5)));
    assert_eq!(value(&e, "a"), None);
    assert_eq!(a.changes.len(), 3, "b is written twice: one change");
    let Outcome::Tx(o) = &a.outcome else {
        panic!("{:?}", a.outcome)
    };
    assert_eq!(o.version, e.store().last_seq());
    let names: Vec<&str> = o.results.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["set", "patch", "incr", "del"]);
    assert!(matches!(&o.results[3].1, Outcome::Deleted(1)));
    let body = crate::mux::applied_fields("tx", &a.outcome);
    assert_eq!(body["results"][2]["value"], json!(5));
    assert_eq!(body["version"], json!(format!("{:x}", o.version)));
}

#[test]
fn a_failed_compare_changes_nothing_and_names_itself() {
    let mut e = engine();
    e.execute_as_system(t(1), set("a", json!(1))).unwrap();
    let seq = e.store().last_seq();
    for (compares, index, why) in [
        (vec![rev("a", 0), rev("a", 3)], 1, "revision 0 where 3"),
        (vec![Compare::Absent { key: "a".into() }], 0, "exists"),
        (
            vec![Compare::Exists { key: "zz".into() }],
            0,
            "does not exist",
        ),
        (vec![rev("zz", 0)], 0, "does not exist"),
    ] {
        let err = e
            .execute_as_system(t(2), tx(compares, vec![set("b", json!(1))]))
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::CONFLICT, "{err}");
        assert_eq!(err.code(), "precondition-failed");
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(err.members().unwrap()["compare"]["index"], json!(index));
        assert_eq!(e.store().last_seq(), seq);
        assert_eq!(value(&e, "b"), None);
    }
}

#[test]
fn a_refused_write_undoes_the_writes_before_it() {
    let mut e = engine();
    e.execute_as_system(t(1), set("a", json!("text"))).unwrap();
    let seq = e.store().last_seq();
    let log = e.log().len();
    let err = e
        .execute_as_system(
            t(2),
            tx(
                vec![],
                vec![
                    set("b", json!(1)),
                    set("a", json!(2)),
                    // `a` holds no integer any more: refused.
                    Op::Incr {
                        key: "c".into(),
                        by: 1,
                        ttl: Ttl::Keep,
                    },
                    Op::Patch {
                        key: "missing".into(),
                        patch: PatchKind::Merge(json!({})),
                        cond: Cond::Always,
                    },
                ],
            ),
        )
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::NOT_FOUND, "{err}");
    assert_eq!(err.members().unwrap()["write"], json!(3));
    assert_eq!(e.store().last_seq(), seq);
    assert_eq!(e.log().len(), log);
    assert_eq!(value(&e, "a"), Some(json!("text")));
    assert_eq!(value(&e, "b"), None);
    assert_eq!(value(&e, "c"), None);
    // The engine goes on as before.
    e.execute_as_system(t(3), set("b", json!(2))).unwrap();
    assert_eq!(e.store().last_seq(), seq + 1);
}

#[test]
fn shape_limits_and_kinds() {
    let mut e = engine();
    let many = (0..=MAX_TX_WRITES)
        .map(|i| set(&format!("k{i}"), json!(i)))
        .collect();
    let err = e.execute_as_system(t(1), tx(vec![], many)).unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert!(err.to_string().contains("at most 100 writes"), "{err}");
    let many = (0..=MAX_TX_COMPARES)
        .map(|i| rev(&format!("k{i}"), 0))
        .collect();
    let err = e.execute_as_system(t(1), tx(many, vec![])).unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    for w in [
        Op::Take { key: "a".into() },
        tx(vec![], vec![]),
        set("a/", json!(1)),
    ] {
        let err = e.execute_as_system(t(1), tx(vec![], vec![w])).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err.members().unwrap()["write"], json!(0));
    }
    // Only compares: a check that changes nothing, answered with the current version.
    e.execute_as_system(t(1), set("a", json!(1))).unwrap();
    let a = e
        .execute_as_system(t(2), tx(vec![rev("a", 0)], vec![]))
        .unwrap();
    assert!(a.changes.is_empty());
    let Outcome::Tx(o) = a.outcome else { panic!() };
    assert_eq!(o.version, e.store().last_seq());
}

#[test]
fn subscribers_see_one_frame_per_pool() {
    let mut e = engine();
    let (_, _) = e
        .join_as_system(Pattern::parse("room/*").unwrap(), Encoding::Mux, None, true)
        .unwrap();
    while e.poll_frame().is_some() {}
    let a = e
        .execute_as_system(
            t(1),
            tx(
                vec![],
                vec![
                    set("room/a", json!(1)),
                    set("room/b", json!(2)),
                    Op::Delete {
                        target: "room/a".into(),
                        cond: Cond::Always,
                    },
                ],
            ),
        )
        .unwrap();
    e.publish(&a.changes);
    let frames: Vec<Frame> = std::iter::from_fn(|| e.poll_frame()).collect();
    assert_eq!(frames.len(), 1, "{frames:?}");
    let text = std::str::from_utf8(&frames[0].bytes).unwrap();
    assert!(
        text.contains(&format!("{:x}", e.store().last_seq())),
        "{text}"
    );
}

#[test]
fn every_key_is_checked_against_the_rules_before_the_first_change() {
    let rules = Rules::from_toml_str(
        r#"
        [auth]
        hs256_secret = "0123456789abcdef-tx-tests"
        [[rule]]
        pattern = "secret/{sub}/**"
        read = "owner"
        write = "owner"
        [[rule]]
        pattern = "**"
        read = "public"
        write = "public"
        delete = "public"
        "#,
        &Inline,
    )
    .unwrap();
    let mut f = Filters::new();
    f.set_rules(rules).unwrap();
    let mut e = Engine::new(t(0), Config::default(), f);
    e.execute_as_system(t(1), set("secret/alice/x", json!(1)))
        .unwrap();
    let seq = e.store().last_seq();
    let anon = Identity::Anonymous;
    // A write to a key it may not write, after one it may.
    let err = e
        .execute(
            t(2),
            tx(
                vec![],
                vec![set("open", json!(1)), set("secret/alice/y", json!(1))],
            ),
            &anon,
        )
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{err}");
    // A compare on a key it may not read: it would tell the key exists.
    let err = e
        .execute(
            t(2),
            tx(vec![rev("secret/alice/x", 0)], vec![set("open", json!(1))]),
            &anon,
        )
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(e.store().last_seq(), seq);
    assert_eq!(value(&e, "open"), None);
}

#[test]
fn a_cluster_restamps_each_write_from_the_batch_version() {
    let mut e = engine();
    let mut a = e
        .execute_as_system(
            t(1),
            tx(vec![], vec![set("a", json!(1)), set("b", json!(2))]),
        )
        .unwrap();
    a.restamp(1_000);
    let Outcome::Tx(o) = &a.outcome else { panic!() };
    assert_eq!(o.version, 1_000);
    let seqs: Vec<u64> = o
        .results
        .iter()
        .map(|(_, r)| match r {
            Outcome::Written(_, e) => e.seq,
            _ => 0,
        })
        .collect();
    assert_eq!(seqs, [999, 1_000]);
}

#[test]
fn the_wire_form_parses_and_bad_ones_are_refused_with_the_reason() {
    let m = crate::mux::parse(
        br#"{"id":7,"op":"tx","if":[{"key":"a","revision":2},{"key":"b","absent":true},{"key":"c","exists":true}],
            "then":[{"op":"set","key":"b","value":1},{"op":"push","path":"l/*","value":2},
                    {"op":"patch","key":"a","value":{"x":1},"type":"merge-patch"},{"op":"del","key":"c"},
                    {"op":"incr","key":"n","by":-2}]}"#,
        64,
    )
    .unwrap();
    let crate::mux::Request::Op(Op::Tx(tx)) = m.request else {
        panic!("{:?}", m.request)
    };
    assert_eq!(
        tx.compares,
        [
            rev("a", 2),
            Compare::Absent { key: "b".into() },
            Compare::Exists { key: "c".into() }
        ]
    );
    assert_eq!(tx.writes.len(), 5);
    for (bad, says) in [
        (r#"{"op":"tx","if":{}}"#, "\"if\" must be an array"),
        (r#"{"op":"tx","if":[{"key":"a"}]}"#, "if[0] must be"),
        (
            r#"{"op":"tx","if":[{"key":"a","revision":-1}]}"#,
            "non-negative",
        ),
        (
            r#"{"op":"tx","if":[{"key":"a","absent":false}]}"#,
            "if[0] must be",
        ),
        (
            r#"{"op":"tx","if":[{"key":"a","absent":true,"exists":true}]}"#,
            "if[0] must be",
        ),
        (
            r#"{"op":"tx","then":[{"op":"take","key":"a"}]}"#,
            "cannot be part",
        ),
        (r#"{"op":"tx","then":[{"op":"tx"}]}"#, "cannot be part"),
        (r#"{"op":"tx","then":[{"op":"set","key":"a"}]}"#, "write 0"),
        (r#"{"op":"tx","then":[1]}"#, "then[0] must be an object"),
    ] {
        let r = crate::mux::parse(bad.as_bytes(), 64).unwrap_err();
        assert_eq!(r.error.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.error.to_string().contains(says), "{bad}: {}", r.error);
    }
}

#[test]
fn a_key_written_more_than_once_has_one_change() {
    let mut e = engine();
    e.execute_as_system(t(1), set("old", json!(1))).unwrap();
    let seq = e.store().last_seq();
    let patch = |k: &str, v: Value| Op::Patch {
        key: k.into(),
        patch: PatchKind::Merge(v),
        cond: Cond::Always,
    };
    let del = |k: &str| Op::Delete {
        target: k.into(),
        cond: Cond::Always,
    };
    let a = e
        .execute_as_system(
            t(2),
            tx(
                vec![],
                vec![
                    set("b", json!({"x": 1})),
                    set("gone", json!(1)),
                    patch("b", json!({"y": 2})),
                    patch("old", json!({})),
                    del("gone"),
                    set("old", json!(3)),
                ],
            ),
        )
        .unwrap();
    let keys: Vec<&str> = a.changes.iter().map(|c| &*c.key).collect();
    assert_eq!(
        keys,
        ["b", "old"],
        "one change per key, none for one made and deleted"
    );
    let seqs: Vec<u64> = a.changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [seq + 1, seq + 2]);
    assert_eq!(e.store().last_seq(), seq + 2);
    assert!(a.changes[0].prev.is_none());
    assert_eq!(a.changes[1].prev.as_ref().map(|p| p.revision), Some(0));
    assert_eq!(value(&e, "b"), Some(json!({"x": 1, "y": 2})));
    assert_eq!(value(&e, "old"), Some(json!(3)));
    assert_eq!(e.store().get("b").unwrap().seq, seq + 1);
    assert!(e.store().get("gone").is_none());
    let Outcome::Tx(o) = &a.outcome else { panic!() };
    assert_eq!(o.version, seq + 2);
    match &o.results[0].1 {
        Outcome::Written(_, en) => assert_eq!(en.seq, seq + 1),
        other => panic!("{other:?}"),
    }
    // The log holds what subscribers resume from: the same two changes.
    assert_eq!(e.log().len(), 3);
}

//! Receipts: a repeated id is answered, not applied; ids are per caller; the window is bounded;
//! what storage keeps comes back the same.

use super::*;
use crate::clock::Tick;
use crate::engine::{Config, Engine, Tx};
use crate::filter::Filters;
use crate::rules::Identity;
use crate::token::Claims;
use serde_json::json;
use std::sync::Arc;

fn t(n: i64) -> Tick {
    Tick::from_wall(1_000 + n)
}

fn engine_with(limits: Limits) -> Engine {
    let config = Config {
        receipts: limits,
        ..Config::default()
    };
    Engine::new(t(0), config, Filters::new())
}

fn engine() -> Engine {
    engine_with(Limits::default())
}

fn user(sub: &str) -> Identity {
    let mut m = serde_json::Map::new();
    m.insert("sub".into(), json!(sub));
    Identity::User(Arc::new(Claims(m)))
}

fn push(v: Value) -> Op {
    Op::Push {
        target: "list/*".into(),
        value: v.into(),
        ttl: Ttl::Clear,
    }
}

fn incr(k: &str) -> Op {
    Op::Incr {
        key: k.into(),
        by: 1,
        ttl: Ttl::Keep,
    }
}

fn set(k: &str, v: Value) -> Op {
    Op::Set {
        key: k.into(),
        value: v.into(),
        ttl: Ttl::Clear,
        cond: Cond::Always,
    }
}

#[test]
fn a_repeated_push_is_answered_with_the_first_key_and_applied_once() {
    let mut e = engine();
    let who = Identity::Anonymous;
    let first = e
        .execute_once(t(1), push(json!({"n": 1})), &who, Some("r-1"))
        .unwrap();
    assert_eq!(first.changes.len(), 1);
    let again = e
        .execute_once(t(2), push(json!({"n": 1})), &who, Some("r-1"))
        .unwrap();
    assert!(again.changes.is_empty(), "a repeat changes nothing");
    let (Outcome::Written(k1, e1), Outcome::Written(k2, e2)) = (&first.outcome, &again.outcome)
    else {
        panic!("pushes write")
    };
    assert_eq!(k1, k2);
    assert_eq!((e1.revision, e1.seq), (e2.revision, e2.seq));
    assert_eq!(e.store().len(), 1);
    assert_eq!(e.stats().repeats, 1);
    // Without an id, the same push is a new one.
    e.execute_once(t(3), push(json!({"n": 1})), &who, None)
        .unwrap();
    assert_eq!(e.store().len(), 2);
}

#[test]
fn a_repeated_incr_answers_the_count_it_gave_first() {
    let mut e = engine();
    let who = Identity::Anonymous;
    e.execute_once(t(1), incr("c"), &who, Some("a")).unwrap();
    let second = e.execute_once(t(2), incr("c"), &who, Some("b")).unwrap();
    // `a` again, after `b`: it answers 1 (its own count) and the counter stays at 2.
    let again = e.execute_once(t(3), incr("c"), &who, Some("a")).unwrap();
    let count = |a: &crate::Applied| match &a.outcome {
        Outcome::Written(_, e) => e.data().clone(),
        o => panic!("{o:?}"),
    };
    assert_eq!(count(&second), json!(2));
    assert_eq!(count(&again), json!(1));
    assert_eq!(*e.store().get("c").unwrap().data(), json!(2));
    let reply = crate::mux::reply_applied(&json!(7), "incr", &again);
    let v: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(v["value"], json!(1));
    assert_eq!(v["revision"], json!(0));
}

#[test]
fn an_id_used_for_another_write_is_refused_and_changes_nothing() {
    let mut e = engine();
    let who = Identity::Anonymous;
    e.execute_once(t(1), set("a", json!(1)), &who, Some("x"))
        .unwrap();
    let err = e
        .execute_once(t(2), set("a", json!(2)), &who, Some("x"))
        .unwrap_err();
    assert_eq!(err, Error::IdempotencyKeyReused);
    assert_eq!(err.status().as_u16(), 422);
    assert_eq!(err.code(), "idempotency-key-reused");
    assert_eq!(*e.store().get("a").unwrap().data(), json!(1));
    // Another key, another TTL, another condition: all different writes.
    for op in [
        set("b", json!(1)),
        Op::Set {
            key: "a".into(),
            value: json!(1).into(),
            ttl: Ttl::After(5),
            cond: Cond::Always,
        },
        Op::Set {
            key: "a".into(),
            value: json!(1).into(),
            ttl: Ttl::Clear,
            cond: Cond::IfAbsent,
        },
        incr("a"),
    ] {
        assert_eq!(
            e.execute_once(t(3), op, &who, Some("x")).unwrap_err(),
            Error::IdempotencyKeyReused
        );
    }
}

#[test]
fn ids_belong_to_their_caller() {
    let mut e = engine();
    e.execute_once(t(1), push(json!(1)), &user("alice"), Some("same"))
        .unwrap();
    // Bob's write with Alice's id is his own: applied, not answered with hers.
    let bob = e
        .execute_once(t(2), push(json!(1)), &user("bob"), Some("same"))
        .unwrap();
    assert_eq!(bob.changes.len(), 1);
    let anon = e
        .execute_once(t(3), push(json!(1)), &Identity::Anonymous, Some("same"))
        .unwrap();
    assert_eq!(anon.changes.len(), 1);
    assert_eq!(e.store().len(), 3);
    assert_eq!(e.receipts().len(), 3);
}

#[test]
fn a_refused_write_leaves_no_receipt() {
    let mut e = engine();
    let who = Identity::Anonymous;
    let cas = Op::Set {
        key: "k".into(),
        value: json!(1).into(),
        ttl: Ttl::Clear,
        cond: Cond::IfMatch(vec!["\"1\"".into()]),
    };
    assert!(e.execute_once(t(1), cas.clone(), &who, Some("r")).is_err());
    assert!(e.receipts().is_empty());
    // Judged afresh: still refused (nothing holds the tag), and nothing changed.
    assert!(e.execute_once(t(2), cas, &who, Some("r")).is_err());
    assert_eq!(e.store().len(), 0);
}

#[test]
fn a_reverted_write_is_forgotten_so_its_repeat_applies() {
    let mut e = engine();
    let who = Identity::Anonymous;
    let a = e
        .execute_once(t(1), push(json!(1)), &who, Some("r"))
        .unwrap();
    e.revert(&a.changes);
    assert!(e.receipts().is_empty());
    let again = e
        .execute_once(t(2), push(json!(1)), &who, Some("r"))
        .unwrap();
    assert_eq!(again.changes.len(), 1);
    assert_eq!(e.store().len(), 1);
}

#[test]
fn the_window_keeps_the_newest_and_storage_is_told() {
    let mut e = engine_with(Limits {
        keep: 3,
        max_bytes: DEFAULT_MAX_BYTES,
    });
    e.restore_receipts(Receipts::restore(e.receipts().limits(), []).unwrap());
    let who = Identity::Anonymous;
    for i in 0..5 {
        e.execute_once(t(i), push(json!(i)), &who, Some(&format!("r{i}")))
            .unwrap();
    }
    assert_eq!(e.receipts().len(), 3);
    let d = e.take_receipts_delta();
    assert_eq!(d.put.len(), 5);
    assert_eq!(d.drop.len(), 2);
    assert_eq!(d.drop, vec![d.put[0].0, d.put[1].0]);
    // The oldest id fell out of the window: its repeat is a new write (documented).
    e.execute_once(t(9), push(json!(0)), &who, Some("r0"))
        .unwrap();
    assert_eq!(e.store().len(), 6);
    // The newest is still answered.
    let again = e
        .execute_once(t(9), push(json!(4)), &who, Some("r4"))
        .unwrap();
    assert!(again.changes.is_empty());
}

#[test]
fn the_window_is_bounded_in_bytes() {
    let mut e = engine_with(Limits {
        keep: 1000,
        max_bytes: 2_000,
    });
    let who = Identity::Anonymous;
    for i in 0..100 {
        e.execute_once(t(i), push(json!(i)), &who, Some(&format!("id-{i}")))
            .unwrap();
    }
    assert!(e.receipts().bytes() <= 2_000, "{}", e.receipts().bytes());
    assert!(e.receipts().len() > 1 && e.receipts().len() < 100);
}

#[test]
fn receipts_come_back_from_storage_the_same() {
    let mut e = engine();
    e.restore_receipts(Receipts::restore(Limits::default(), []).unwrap());
    let who = user("carol");
    let ops = [
        ("p", push(json!({"deep": [1, 2.5, "x"]}))),
        ("i", incr("n")),
        ("s", set("s", json!("v"))),
        (
            "t",
            Op::Tx(Tx {
                compares: vec![],
                writes: vec![set("a", json!(1)), incr("n")],
            }),
        ),
        ("k", Op::Take { key: "s".into() }),
        (
            "d",
            Op::Delete {
                target: "a".into(),
                cond: Cond::Always,
            },
        ),
    ];
    let mut answers = Vec::new();
    for (i, (rid, op)) in ops.iter().enumerate() {
        let a = e
            .execute_once(t(i as i64), op.clone(), &who, Some(rid))
            .unwrap();
        answers.push(crate::mux::reply_applied(
            &json!(1),
            crate::mux::op_name(op),
            &a,
        ));
    }
    let d = e.take_receipts_delta();
    assert_eq!(d.put.len(), ops.len());
    let back = Receipts::restore(Limits::default(), d.put).unwrap();
    let mut e2 = engine();
    e2.restore_receipts(back);
    for ((rid, op), first) in ops.iter().zip(answers) {
        let again = e2.execute_once(t(9), op.clone(), &who, Some(rid)).unwrap();
        assert!(again.changes.is_empty(), "{rid} applied again");
        let reply = crate::mux::reply_applied(&json!(1), crate::mux::op_name(op), &again);
        assert_eq!(
            String::from_utf8_lossy(&reply),
            String::from_utf8_lossy(&first),
            "{rid}"
        );
    }
    // A smaller window at start keeps the newest and drops the rest from storage.
    let mut e3 = engine();
    let d = {
        let mut e = engine();
        e.restore_receipts(Receipts::restore(Limits::default(), []).unwrap());
        for i in 0..4 {
            e.execute_once(t(i), push(json!(i)), &who, Some(&format!("r{i}")))
                .unwrap();
        }
        e.take_receipts_delta()
    };
    let small = Limits {
        keep: 2,
        max_bytes: DEFAULT_MAX_BYTES,
    };
    let mut back = Receipts::restore(small, d.put.clone()).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back.take_delta().drop, vec![d.put[0].0, d.put[1].0]);
    e3.restore_receipts(back);
    assert!(e3
        .execute_once(t(9), push(json!(3)), &who, Some("r3"))
        .unwrap()
        .changes
        .is_empty());
}

#[test]
fn corrupt_rows_are_reported() {
    assert!(Receipts::restore(Limits::default(), [(1, b"{".to_vec())]).is_err());
    assert!(Receipts::restore(Limits::default(), [(1, br#"{"id":"a"}"#.to_vec())]).is_err());
}

#[test]
fn ids_are_checked() {
    let mut e = engine();
    let who = Identity::Anonymous;
    for bad in ["", "has space", "quo\"te", &"x".repeat(MAX_ID_LEN + 1), "é"] {
        let err = e
            .execute_once(t(1), push(json!(1)), &who, Some(bad))
            .unwrap_err();
        assert_eq!(err.status().as_u16(), 400, "{bad:?}");
    }
    assert_eq!(e.store().len(), 0);
    assert_eq!(from_header(" \"abc-1\" ").unwrap(), "abc-1");
    assert_eq!(from_header("abc-1").unwrap(), "abc-1");
    assert!(from_header("\"\"").is_err());
}

#[test]
fn receipts_off_applies_every_repeat() {
    let mut e = engine_with(Limits {
        keep: 0,
        max_bytes: DEFAULT_MAX_BYTES,
    });
    let who = Identity::Anonymous;
    e.execute_once(t(1), push(json!(1)), &who, Some("r"))
        .unwrap();
    e.execute_once(t(2), push(json!(1)), &who, Some("r"))
        .unwrap();
    assert_eq!(e.store().len(), 2);
}

// Fingerprints are stored: a change to their canonical text would make every stored receipt
// refuse its own repeat after an upgrade. These values are fixed.
#[test]
fn fingerprints_are_stable() {
    assert_eq!(
        fingerprint(&set("a", json!({"b": [1, 2]}))),
        0xaabf_deaf_f02c_ee15
    );
    assert_eq!(fingerprint(&incr("n")), 0x7ccb_ce95_4671_f904);
    assert_ne!(fingerprint(&push(json!(1))), fingerprint(&push(json!(1.0))));
}

#[test]
fn mux_messages_carry_rid_on_writes_only() {
    let parse = |s: &str| crate::mux::parse(s.as_bytes(), 64);
    let m = parse(r#"{"id":1,"op":"push","path":"l/*","value":1,"rid":"abc"}"#).unwrap();
    assert_eq!(m.rid.as_deref(), Some("abc"));
    for bad in [
        r#"{"id":1,"op":"sub","path":"a","rid":"abc"}"#,
        r#"{"id":1,"op":"set","key":"a","value":1,"lease":true,"rid":"abc"}"#,
        r#"{"id":1,"op":"set","key":"a","value":1,"rid":5}"#,
        r#"{"id":1,"op":"set","key":"a","value":1,"rid":"a b"}"#,
        r#"{"id":1,"op":"tx","then":[{"op":"set","key":"a","value":1,"rid":"x"}]}"#,
        r#"{"id":1,"op":"onclose","write":{"op":"del","key":"a","rid":"x"}}"#,
    ] {
        let r = parse(bad).unwrap_err();
        assert_eq!(r.error.status().as_u16(), 400, "{bad}");
        assert_eq!(r.id, json!(1));
    }
}

#[test]
fn a_cluster_node_remembers_a_write_once_the_cluster_ordered_it() {
    let mut e = engine();
    e.order_elsewhere();
    let who = Identity::Anonymous;
    // The proposal: computed, remembered nowhere yet, then withdrawn (the cluster orders it).
    let a = e
        .execute_once(t(1), push(json!(1)), &who, Some("r"))
        .unwrap();
    assert!(e.receipts().is_empty());
    e.withdraw(&a.changes);
    let u = e.take_unordered().expect("the write waits for its order");
    assert!(e.take_unordered().is_none());
    // A repeat before the order came is computed again (the same write), not answered.
    assert!(e
        .execute_once(t(2), push(json!(1)), &who, Some("r"))
        .map(|a| e.withdraw(&a.changes))
        .is_ok());
    e.take_unordered();
    // Ordered at 42: a repeat now gets the answer with the cluster's version.
    e.remember_ordered(u, Some(42));
    let again = e
        .execute_once(t(3), push(json!(1)), &who, Some("r"))
        .unwrap();
    assert!(again.changes.is_empty());
    let Outcome::Written(_, entry) = &again.outcome else {
        panic!("a push writes")
    };
    assert_eq!(entry.seq, 42);
    assert!(e.take_unordered().is_none(), "a repeat waits for nothing");
    assert_eq!(
        e.execute_once(t(4), push(json!(2)), &who, Some("r"))
            .unwrap_err(),
        Error::IdempotencyKeyReused
    );
}

#[test]
fn an_id_remembered_twice_is_kept_once() {
    let mut e = engine();
    e.order_elsewhere();
    let who = Identity::Anonymous;
    // Sent twice before the first was ordered (both forwarded), then both ordered.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let a = e
            .execute_once(t(1), push(json!(1)), &who, Some("r"))
            .unwrap();
        e.withdraw(&a.changes);
        waiting.push(e.take_unordered().unwrap());
    }
    for (u, seq) in waiting.into_iter().zip([7, 9]) {
        e.remember_ordered(u, Some(seq));
    }
    assert_eq!(e.receipts().len(), 1);
    let one = e.receipts().bytes();
    let again = e
        .execute_once(t(2), push(json!(1)), &who, Some("r"))
        .unwrap();
    let Outcome::Written(_, entry) = &again.outcome else {
        panic!("a push writes")
    };
    assert_eq!(entry.seq, 9, "the later answer");
    // Its bytes were counted once: another id doubles them, no more.
    let a = e
        .execute_once(t(3), push(json!(1)), &who, Some("s"))
        .unwrap();
    e.withdraw(&a.changes);
    let u = e.take_unordered().unwrap();
    e.remember_ordered(u, Some(11));
    assert!(
        e.receipts().bytes() <= 2 * one + 8,
        "{} vs {one}",
        e.receipts().bytes()
    );
}

use super::*;
use crate::key::Pattern;
use crate::pool::{Encoding, Join};
use crate::rules::Action;
use http::StatusCode;
use serde_json::json;

fn engine() -> Engine {
    Engine::new(Tick::from_wall(1_000), Config::default(), Filters::new())
}

fn t(n: i64) -> Tick {
    Tick::from_wall(1_000 + n)
}

fn set(e: &mut Engine, k: &str, v: Value) -> Result<Applied, Error> {
    e.execute_as_system(
        t(1),
        Op::Set {
            key: k.into(),
            value: v.into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        },
    )
}

#[test]
fn failed_operations_change_nothing() {
    let mut e = engine();
    set(&mut e, "a", json!({"nest":{"x":1}})).unwrap();
    let seq = e.store().last_seq();
    let bad = [
        Op::Set {
            key: "a/".into(),
            value: json!(1).into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        },
        Op::Set {
            key: "a".into(),
            value: json!(1).into(),
            ttl: Ttl::Clear,
            cond: Cond::NextRevision(5),
        },
        Op::Patch {
            key: "a".into(),
            patch: PatchKind::Merge(json!({"nest":"x"})),
            cond: Cond::Always,
        },
        Op::Patch {
            key: "a".into(),
            patch: PatchKind::JsonPatch(
                serde_json::from_value(
                    json!([{"op":"add","path":"/y","value":1},{"op":"remove","path":"/zz"}]),
                )
                .unwrap(),
            ),
            cond: Cond::Always,
        },
        Op::Patch {
            key: "missing".into(),
            patch: PatchKind::Merge(json!({})),
            cond: Cond::Always,
        },
        Op::Delete {
            target: "missing".into(),
            cond: Cond::Always,
        },
        Op::Incr {
            key: "a".into(),
            by: 1,
            ttl: Ttl::Keep,
        },
        Op::Rename {
            from: "missing".into(),
            to: "b".into(),
            overwrite: false,
        },
        Op::Push {
            target: "a/*/b".into(),
            value: json!(1).into(),
            ttl: Ttl::Clear,
        },
    ];
    for op in bad {
        assert!(e.execute_as_system(t(2), op.clone()).is_err(), "{op:?}");
    }
    assert_eq!(e.store().last_seq(), seq);
    assert_eq!(*e.store().get("a").unwrap().data(), json!({"nest":{"x":1}}));
    assert_eq!(e.stats().refused, 9);
}

#[test]
fn counters_take_rename_ttl() {
    let mut e = engine();
    let incr = |e: &mut Engine, by| {
        e.execute_as_system(
            t(1),
            Op::Incr {
                key: "c".into(),
                by,
                ttl: Ttl::Keep,
            },
        )
    };
    incr(&mut e, 5).unwrap();
    incr(&mut e, 2).unwrap();
    incr(&mut e, -10).unwrap();
    assert_eq!(*e.store().get("c").unwrap().data(), json!(-3));
    assert_eq!(e.store().get("c").unwrap().revision, 2);
    set(&mut e, "big", json!(i64::MAX)).unwrap();
    assert!(matches!(
        e.execute_as_system(
            t(1),
            Op::Incr {
                key: "big".into(),
                by: 1,
                ttl: Ttl::Keep
            }
        ),
        Err(Error::Counter(_))
    ));

    let a = e
        .execute_as_system(t(2), Op::Take { key: "c".into() })
        .unwrap();
    assert!(matches!(a.outcome, Outcome::Taken(_, ref en) if *en.data() == json!(-3)));
    assert!(e.store().get("c").is_none());
    assert_eq!(
        e.execute_as_system(t(2), Op::Take { key: "c".into() }),
        Err(Error::NotFound)
    );

    set(&mut e, "x", json!(1)).unwrap();
    set(&mut e, "y", json!(2)).unwrap();
    let created = e.store().get("x").unwrap().created;
    assert_eq!(
        e.execute_as_system(
            t(3),
            Op::Rename {
                from: "x".into(),
                to: "y".into(),
                overwrite: false
            }
        ),
        Err(Error::Exists("y".into()))
    );
    let r = e
        .execute_as_system(
            t(3),
            Op::Rename {
                from: "x".into(),
                to: "y".into(),
                overwrite: true,
            },
        )
        .unwrap();
    assert_eq!(r.changes.len(), 2);
    assert!(e.store().get("x").is_none());
    let y = e.store().get("y").unwrap();
    assert_eq!(
        (y.data().clone(), y.created, y.revision),
        (json!(1), created, 1)
    );

    e.execute_as_system(
        t(4),
        Op::Set {
            key: "tmp".into(),
            value: json!(1).into(),
            ttl: Ttl::After(100),
            cond: Cond::Always,
        },
    )
    .unwrap();
    assert!(e.handle_timeout(t(50)).is_empty());
    assert!(e.timeout_in(t(50)).is_some());
    let expired = e.handle_timeout(t(200));
    assert_eq!(expired.len(), 1);
    assert!(e.store().get("tmp").is_none() && e.poll_timeout().is_none());
}

#[test]
fn limit_keeps_the_newest() {
    let mut f = Filters::new();
    f.limit(
        "limited/*",
        crate::filter::Limit {
            count: Some(3),
            max_age_ns: None,
        },
    )
    .unwrap();
    let mut e = Engine::new(Tick::from_wall(0), Config::default(), f);
    for i in 0..8 {
        e.execute_as_system(
            t(i),
            Op::Push {
                target: "limited/*".into(),
                value: json!(i).into(),
                ttl: Ttl::Clear,
            },
        )
        .unwrap();
    }
    let list = e.store().list(&Pattern::parse("limited/*").unwrap());
    let vals: Vec<_> = list.iter().map(|(_, en)| en.data().clone()).collect();
    assert_eq!(vals, [json!(7), json!(6), json!(5)]);
}

#[test]
fn limit_by_age_expires_items() {
    let mut f = Filters::new();
    f.limit(
        "recent/*",
        crate::filter::Limit {
            count: None,
            max_age_ns: Some(100),
        },
    )
    .unwrap();
    let mut e = Engine::new(Tick::from_wall(0), Config::default(), f);
    e.execute_as_system(
        t(0),
        Op::Push {
            target: "recent/*".into(),
            value: json!(1).into(),
            ttl: Ttl::Clear,
        },
    )
    .unwrap();
    e.execute_as_system(
        t(60),
        Op::Push {
            target: "recent/*".into(),
            value: json!(2).into(),
            ttl: Ttl::Clear,
        },
    )
    .unwrap();
    assert!(e.handle_timeout(t(90)).is_empty());
    let gone = e.handle_timeout(t(120));
    assert_eq!(gone.len(), 1, "the first item is older than 100 ns");
    assert_eq!(
        *e.store().list(&Pattern::parse("recent/*").unwrap())[0]
            .1
            .data(),
        json!(2)
    );
    assert_eq!(e.handle_timeout(t(200)).len(), 1);
}

#[test]
fn restored_engine_timestamps_stay_above_stored_ones() {
    let mut e = engine();
    set(&mut e, "a", json!(1)).unwrap();
    let created = e.store().get("a").unwrap().created;
    let store = Store::load(
        e.store().last_seq(),
        [("a".into(), e.store().get("a").unwrap().clone())],
    );
    let log = Log::new(store.last_seq(), 10, 1 << 20);
    // The wall clock is now an hour before the stored write.
    let back = Tick::from_wall(created - 3_600_000_000_000);
    let mut r = Engine::restore(back, store, log, Config::default(), Filters::new());
    r.execute_as_system(
        back,
        Op::Push {
            target: "l/*".into(),
            value: json!(1).into(),
            ttl: Ttl::Clear,
        },
    )
    .unwrap();
    let pushed = r.store().list(&Pattern::parse("l/*").unwrap())[0].1.created;
    assert!(pushed > created, "{pushed} > {created}");
}

#[test]
fn a_pool_joined_before_a_revert_resyncs() {
    let mut e = engine();
    set(&mut e, "k", json!(1)).unwrap();
    let a = set(&mut e, "k", json!(2)).unwrap();
    // A subscriber joins while the write waits for its commit: its snapshot holds 2.
    let (id, first) = e
        .join_as_system(Pattern::parse("k").unwrap(), Encoding::Ooo, None, true)
        .unwrap();
    let Join::Frame(b) = first else {
        panic!("snapshot expected")
    };
    assert!(std::str::from_utf8(&b).unwrap().contains(r#""data":2"#));
    e.revert(&a.changes);
    let f = e.poll_frame().expect("a resync frame");
    assert_eq!(f.pool, id);
    let text = std::str::from_utf8(&f.bytes).unwrap();
    assert!(
        text.contains(r#""snapshot":true"#) && text.contains(r#""data":1"#),
        "{text}"
    );
    assert!(e.poll_frame().is_none());
    // Later writes reach it as usual.
    let b = set(&mut e, "k", json!(3)).unwrap();
    e.publish(&b.changes);
    assert!(e.poll_frame().is_some());
}

#[test]
fn history_leaves_current_values_to_the_store_through_reverts_and_restarts() {
    let mut e = engine();
    set(&mut e, "a", json!(1)).unwrap();
    assert!(e.history().is_empty(), "a key written once has no history");
    let a = set(&mut e, "a", json!(2)).unwrap();
    assert_eq!(e.history().len(), 1);
    e.revert(&a.changes);
    assert!(e.history().is_empty(), "1 is current again");
    let body =
        |e: &Engine| String::from_utf8(e.history().json("a", e.store().get("a"), 5)).unwrap();
    assert!(body(&e).starts_with(r#"[{"revision":0,"#), "{}", body(&e));
    assert_eq!(body(&e).matches("version").count(), 1);
    // A history from storage that holds the current value (written by an older version of
    // this code) is settled when it is installed: the row is dropped, the value shown once.
    let seq = e.store().last_seq();
    let v = crate::history::Version {
        seq,
        revision: 0,
        updated: 1,
        json: Some(JsonText::from(&b"1"[..])),
    };
    let rows = vec![(seq, crate::history::encode("a", &v))];
    let h = History::restore(e.config().history, rows).unwrap();
    e.restore_history(h);
    assert!(e.history().is_empty());
    assert_eq!(e.take_history_delta().drop, vec![seq]);
    assert_eq!(body(&e).matches("version").count(), 1);
}

#[test]
fn revert_undoes_a_write_and_its_log() {
    let mut e = engine();
    set(&mut e, "a", json!(1)).unwrap();
    let seq = e.store().last_seq();
    let a = set(&mut e, "a", json!(2)).unwrap();
    e.revert(&a.changes);
    assert_eq!(e.store().last_seq(), seq);
    assert_eq!(*e.store().get("a").unwrap().data(), json!(1));
    assert_eq!(
        e.missed(seq, &Pattern::parse("a").unwrap()).unwrap(),
        vec![]
    );
}

fn ruled() -> (Engine, Identity, Identity) {
    use crate::rules::{Inline, Rules};
    let rules = Rules::from_toml_str(
        r#"
        [auth]
        hs256_secret = "0123456789abcdef-engine"
        [[rule]]
        pattern = "private/{sub}/**"
        read = "owner"
        write = "owner"
        delete = "owner"
        [[rule]]
        pattern = "**"
        read = "public"
        write = "public"
        delete = "public"
        [[rule]]
        pattern = "typed/*"
        read = "public"
        write = "public"
        schema = { type = "integer" }
        ttl_secs = 5
        "#,
        &Inline,
    )
    .unwrap();
    let mut f = Filters::new();
    f.set_rules(rules).unwrap();
    let e = Engine::new(Tick::from_wall(1_000), Config::default(), f);
    let tok = |sub: &str| {
        crate::token::sign_hs256(
            &json!({"sub": sub, "exp": 4_000_000_000i64}),
            b"0123456789abcdef-engine",
        )
    };
    let alice = e.identify(t(1), Some(&tok("alice")));
    let bob = e.identify(t(1), Some(&tok("bob")));
    assert!(matches!(alice, Identity::User(_)));
    (e, alice, bob)
}

fn set_as(e: &mut Engine, k: &str, v: Value, who: &Identity) -> Result<Applied, Error> {
    e.execute(
        t(1),
        Op::Set {
            key: k.into(),
            value: v.into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        },
        who,
    )
}

#[test]
fn glob_deletes_consider_only_readable_keys() {
    let (mut e, alice, bob) = ruled();
    let anon = Identity::Anonymous;
    set_as(&mut e, "private/alice/a", json!("secret"), &alice).unwrap();
    set_as(&mut e, "public/x/y", json!(1), &anon).unwrap();
    set_as(&mut e, "typed/1", json!(1), &anon).unwrap();
    let del = |e: &mut Engine, g: &str, who: &Identity| {
        e.execute(
            t(2),
            Op::Delete {
                target: g.into(),
                cond: Cond::Always,
            },
            who,
        )
    };
    // Only alice's key matches: nothing the caller may read, so nothing happens, and the
    // answer is the same as for a glob that matches nothing (it tells no name).
    for who in [&anon, &bob] {
        let seq = e.store().last_seq();
        let a = del(&mut e, "private/*/*", who).unwrap();
        assert_eq!((a.outcome, a.changes.len()), (Outcome::Deleted(0), 0));
        assert_eq!(e.store().last_seq(), seq);
    }
    // A readable key the caller may not delete is refused, and named: it may read it.
    let err = del(&mut e, "*/*", &anon).unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN, "{err}");
    assert!(err.to_string().contains("typed/1") && !err.to_string().contains("alice"));
    // A broad glob deletes what the caller may read and delete, and leaves alice's key.
    let a = del(&mut e, "*/*/*", &anon).unwrap();
    assert_eq!(a.outcome, Outcome::Deleted(1));
    assert!(e.store().get("public/x/y").is_none());
    assert!(e.store().get("private/alice/a").is_some());
    // The owner's glob covers her key.
    let a = del(&mut e, "private/*/*", &alice).unwrap();
    assert_eq!(a.outcome, Outcome::Deleted(1));
}

#[test]
fn rules_refuse_before_anything_changes() {
    let (mut e, alice, bob) = ruled();
    let anon = Identity::Anonymous;
    set_as(&mut e, "private/alice/a", json!("secret"), &alice).unwrap();
    set_as(&mut e, "public/x", json!(1), &anon).unwrap();
    set_as(&mut e, "public/x/y", json!(1), &anon).unwrap();
    set_as(&mut e, "typed/1", json!(1), &anon).unwrap();
    let seq = e.store().last_seq();
    let denied = [
        (
            Op::Set {
                key: "private/alice/a".into(),
                value: json!(0).into(),
                ttl: Ttl::Clear,
                cond: Cond::NextRevision(9),
            },
            &bob,
            StatusCode::FORBIDDEN,
        ),
        (
            Op::Set {
                key: "private/alice/b".into(),
                value: json!(0).into(),
                ttl: Ttl::Clear,
                cond: Cond::Always,
            },
            &anon,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Op::Push {
                target: "private/alice/*".into(),
                value: json!(0).into(),
                ttl: Ttl::Clear,
            },
            &bob,
            StatusCode::FORBIDDEN,
        ),
        (
            Op::Patch {
                key: "private/alice/a".into(),
                patch: PatchKind::Merge(json!({})),
                cond: Cond::Always,
            },
            &bob,
            StatusCode::FORBIDDEN,
        ),
        (
            Op::Delete {
                target: "private/alice/a".into(),
                cond: Cond::Always,
            },
            &anon,
            StatusCode::UNAUTHORIZED,
        ),
        // The glob covers a public key too: refused whole.
        (
            // A glob over a key bob may read but not delete: refused whole.
            Op::Delete {
                target: "*/*".into(),
                cond: Cond::Always,
            },
            &bob,
            StatusCode::FORBIDDEN,
        ),
        (
            Op::Incr {
                key: "private/alice/n".into(),
                by: 1,
                ttl: Ttl::Keep,
            },
            &bob,
            StatusCode::FORBIDDEN,
        ),
        (
            Op::Take {
                key: "private/alice/a".into(),
            },
            &bob,
            StatusCode::FORBIDDEN,
        ),
        (
            Op::Rename {
                from: "private/alice/a".into(),
                to: "public/stolen".into(),
                overwrite: true,
            },
            &bob,
            StatusCode::FORBIDDEN,
        ),
        (
            Op::Rename {
                from: "public/x".into(),
                to: "private/alice/planted".into(),
                overwrite: true,
            },
            &bob,
            StatusCode::FORBIDDEN,
        ),
        (
            Op::Set {
                key: "typed/1".into(),
                value: json!("not an integer").into(),
                ttl: Ttl::Clear,
                cond: Cond::Always,
            },
            &anon,
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (op, who, status) in denied {
        let r = e.execute(t(2), op.clone(), who);
        assert_eq!(r.map(|_| ()).map_err(|e| e.status()), Err(status), "{op:?}");
    }
    assert_eq!(e.store().last_seq(), seq, "nothing changed");
    assert_eq!(
        *e.store().get("private/alice/a").unwrap().data(),
        json!("secret")
    );
    assert_eq!(e.stats().denied.forbidden, 8);

    assert_eq!(e.stats().denied.no_token, 2);
    assert_eq!(e.stats().denied.schema, 1);
    let d = e.poll_denial().unwrap();
    assert_eq!(
        (d.action, d.reason, d.subject.as_deref()),
        (Action::Write, DenialReason::Forbidden, Some("bob"))
    );
    // The owner may; the rule's default TTL applies to a write without one.
    e.execute(
        t(3),
        Op::Delete {
            target: "private/alice/*".into(),
            cond: Cond::Always,
        },
        &alice,
    )
    .unwrap();
    set_as(&mut e, "typed/1", json!(7), &anon).unwrap();
    assert!(e.store().get("typed/1").unwrap().expires.get().is_some());
    // The embedding program is not bound by the rules.
    set_as(&mut e, "private/carol/x", json!(1), &Identity::System).unwrap();
}

#[test]
fn pools_are_per_audience() {
    let (mut e, alice, bob) = ruled();
    let anon = Identity::Anonymous;
    let all = Pattern::Subtree("".into());
    let v0 = e.store().last_seq();
    let (pa, _) = e
        .join(all.clone(), Encoding::Mux, None, true, &alice)
        .unwrap();
    let (pb, _) = e
        .join(all.clone(), Encoding::Mux, None, true, &bob)
        .unwrap();
    let (pn, _) = e
        .join(all.clone(), Encoding::Mux, None, true, &anon)
        .unwrap();
    let (pn2, _) = e
        .join(all.clone(), Encoding::Mux, None, true, &Identity::Anonymous)
        .unwrap();
    assert_eq!(pn, pn2, "anonymous subscribers share one pool");
    assert!(pa != pb && pa != pn && pb != pn);
    let a = set_as(&mut e, "private/alice/a", json!("alice-secret"), &alice).unwrap();
    e.publish(&a.changes);
    let frames: Vec<Frame> = std::iter::from_fn(|| e.poll_frame()).collect();
    assert_eq!(frames.len(), 1, "only alice's pool gets a frame");
    assert_eq!(frames[0].pool, pa);
    // Replay from an old version leaves out what the audience may not read.
    let (_, j) = e
        .join(all.clone(), Encoding::Sse, Some(v0), false, &bob)
        .unwrap();
    assert_eq!(j, Join::Current);
    let (_, j) = e
        .join(all.clone(), Encoding::Sse, Some(v0), false, &alice)
        .unwrap();
    assert!(
        matches!(j, Join::Missed(b) if std::str::from_utf8(&b).unwrap().contains("alice-secret"))
    );
    // A protected key cannot be joined at all by others.
    let key = Pattern::parse("private/alice/a").unwrap();
    assert_eq!(
        e.join(key.clone(), Encoding::Ooo, None, true, &bob)
            .map(|_| ())
            .map_err(|e| e.status()),
        Err(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        e.join(key, Encoding::Ooo, None, true, &anon)
            .map(|_| ())
            .map_err(|e| e.status()),
        Err(StatusCode::UNAUTHORIZED)
    );
}

#[test]
fn atomkv_revisions() {
    let mut e = engine();
    let put = |e: &mut Engine, n| {
        e.execute_as_system(
            t(1),
            Op::Set {
                key: "x".into(),
                value: json!(n).into(),
                ttl: Ttl::Clear,
                cond: Cond::NextRevision(n),
            },
        )
    };
    put(&mut e, 0).unwrap();
    assert_eq!(put(&mut e, 0), Err(Error::RevisionConflict));
    put(&mut e, 1).unwrap();
    let tag = e.store().get("x").unwrap().etag();
    let ifm = |tags: Vec<String>| Op::Set {
        key: "x".into(),
        value: json!(9).into(),
        ttl: Ttl::Clear,
        cond: Cond::IfMatch(tags),
    };
    assert!(matches!(
        e.execute_as_system(t(1), ifm(vec!["\"nope\"".into()])),
        Err(Error::Precondition(_))
    ));
    e.execute_as_system(t(1), ifm(vec![tag])).unwrap();
    let absent = Op::Set {
        key: "x".into(),
        value: json!(1).into(),
        ttl: Ttl::Clear,
        cond: Cond::IfAbsent,
    };
    assert!(matches!(
        e.execute_as_system(t(1), absent),
        Err(Error::Precondition(_))
    ));
}

#[test]
fn a_key_keeps_its_tree_while_diffs_or_patches_use_it() {
    let mut e = engine();
    let built = |e: &Engine, k: &str| e.store().get(k).unwrap().tree.is_built();
    for k in ["watched", "alone", "patched"] {
        set(&mut e, k, json!({"a": 0})).unwrap();
    }
    e.join_as_system(
        Pattern::parse("watched").unwrap(),
        Encoding::Ooo,
        None,
        true,
    )
    .unwrap();
    for i in 1..4 {
        for k in ["watched", "alone"] {
            let w = set(&mut e, k, json!({"a": i})).unwrap();
            e.publish(&w.changes);
        }
        // The subscriber's diff built the trees: the stored entry keeps the new one, so the
        // next write diffs against it without parsing the old text again.
        let f = e.poll_frame().expect("a diff frame");
        assert!(std::str::from_utf8(&f.bytes).unwrap().contains("replace"));
        assert!(e.poll_frame().is_none());
        assert!(built(&e, "watched"), "write {i}");
        // A key nobody diffs keeps no tree.
        assert!(!built(&e, "alone"), "write {i}");
    }
    // A patch parses the value it replaces, as the next patch will: its key keeps the tree.
    let patch = |e: &mut Engine, n: i64| {
        e.execute_as_system(
            t(2),
            Op::Patch {
                key: "patched".into(),
                patch: PatchKind::Merge(json!({"b": n})),
                cond: Cond::Always,
            },
        )
        .unwrap()
    };
    assert!(!built(&e, "patched"));
    patch(&mut e, 1);
    assert!(built(&e, "patched"));
    patch(&mut e, 2);
    assert_eq!(
        *e.store().get("patched").unwrap().data(),
        json!({"a": 0, "b": 2})
    );
    // A plain write after it keeps the tree too (the next diff or patch needs it).
    set(&mut e, "patched", json!(5)).unwrap();
    assert!(built(&e, "patched"));
}

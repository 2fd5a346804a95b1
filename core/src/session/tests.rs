use serde_json::{json, Value};

use super::*;
use crate::rules::{Inline, Rules};
use crate::{Config, Filters};

const SECRET: &[u8] = b"0123456789abcdef-session";

fn engine() -> Engine {
    Engine::new(Tick::from_wall(1_000), Config::default(), Filters::new())
}

fn ruled() -> Engine {
    let rules = Rules::from_toml_str(
        r#"
        [auth]
        hs256_secret = "0123456789abcdef-session"
        leeway_secs = 30
        [[rule]]
        pattern = "private/{sub}/**"
        read = "owner"
        write = "owner"
        [[rule]]
        pattern = "**"
        read = "public"
        write = "public"
        "#,
        &Inline,
    )
    .unwrap();
    let mut f = Filters::new();
    f.set_rules(rules).unwrap();
    Engine::new(Tick::from_wall(1_000), Config::default(), f)
}

fn token(sub: &str, exp: i64) -> String {
    crate::token::sign_hs256(&json!({"sub": sub, "exp": exp}), SECRET)
}

fn at_secs(s: i64) -> Tick {
    Tick::from_wall(s * 1_000_000_000)
}

fn none(_: &Pattern, _: &Identity) -> Result<(), String> {
    Ok(())
}

fn handle(s: &mut Session, e: &mut Engine, msg: Value) -> Effects {
    s.handle(e, at_secs(1_000), msg.to_string().as_bytes(), &mut none)
}

fn now(fx: &Effects) -> Value {
    match &fx.reply {
        Reply::Now(b) => serde_json::from_slice(b).unwrap(),
        other => panic!("expected a reply now, got {other:?}"),
    }
}

fn open(e: &Engine) -> Session {
    Session::open(e, Identity::Anonymous, None, Limits::default()).unwrap()
}

#[test]
fn close_codes_are_the_documented_ones() {
    let all = [
        (Close::TokenExpired, 4001),
        (Close::Refused, 4003),
        (Close::Lagging, 4008),
        (Close::PingTimeout, 4009),
        (Close::GoingAway, 1001),
        (Close::Protocol, 1002),
        (Close::MessageTimeout, 1008),
        (Close::TooBig, 1009),
        (Close::TryAgain, 1013),
    ];
    for (c, code) in all {
        assert_eq!(c.code(), code);
        assert!(!c.reason().is_empty() && c.reason().len() <= 123, "{c:?}");
    }
}

#[test]
fn sub_replies_then_sends_the_first_frame_and_unsub_leaves() {
    let mut e = engine();
    e.execute_as_system(
        at_secs(1),
        Op::Set {
            key: "a".into(),
            value: json!(1).into(),
            ttl: crate::Ttl::Clear,
            cond: crate::Cond::Always,
        },
    )
    .unwrap();
    let mut s = open(&e);
    let fx = handle(&mut s, &mut e, json!({"id": 1, "op": "sub", "path": "a"}));
    assert_eq!(now(&fx)["ok"], json!(true));
    let pool = fx.joined.expect("joined a pool");
    assert!(fx.first.is_some(), "the snapshot follows the reply");
    assert!(fx.state_changed);
    assert_eq!(s.subscriptions().count(), 1);

    let again = handle(&mut s, &mut e, json!({"id": 2, "op": "sub", "path": "a"}));
    assert_eq!(
        now(&again)["error"]["detail"],
        json!("already subscribed to a")
    );
    assert!(again.joined.is_none());

    let off = handle(&mut s, &mut e, json!({"id": 3, "op": "unsub", "path": "a"}));
    assert_eq!(now(&off)["ok"], json!(true));
    assert_eq!(off.left, vec![pool]);
    let off = handle(&mut s, &mut e, json!({"id": 4, "op": "unsub", "path": "a"}));
    assert_eq!(now(&off)["error"]["detail"], json!("not subscribed to a"));
    assert!(off.left.is_empty());
}

#[test]
fn the_subscription_cap_and_the_state_limit_refuse_and_change_nothing() {
    let mut e = engine();
    let limits = Limits {
        subscriptions: 2,
        state_bytes: None,
        ..Limits::default()
    };
    let mut s = Session::open(&e, Identity::Anonymous, None, limits).unwrap();
    for p in ["a", "b"] {
        assert!(
            handle(&mut s, &mut e, json!({"id": 1, "op": "sub", "path": p}))
                .joined
                .is_some()
        );
    }
    let fx = handle(&mut s, &mut e, json!({"id": 3, "op": "sub", "path": "c"}));
    assert_eq!(
        now(&fx)["error"]["detail"],
        json!("at most 2 subscriptions per connection")
    );
    assert_eq!(s.subscriptions().count(), 2);

    let small = Limits {
        subscriptions: 100,
        state_bytes: Some(20),
        ..Limits::default()
    };
    assert!(matches!(
        Session::open(&e, Identity::Anonymous, Some("x".repeat(21)), small.clone()),
        Err(Error::TokenTooLarge(20))
    ));
    let mut s = Session::open(&e, Identity::Anonymous, None, small).unwrap();
    assert!(handle(
        &mut s,
        &mut e,
        json!({"id": 1, "op": "sub", "path": "abcdefghij"})
    )
    .joined
    .is_some());
    let fx = handle(
        &mut s,
        &mut e,
        json!({"id": 2, "op": "sub", "path": "klmnopqrst"}),
    );
    assert_eq!(now(&fx)["error"]["status"], json!(400));
    assert!(fx.joined.is_none());
    assert_eq!(s.subscriptions().count(), 1);
}

#[test]
fn writes_wait_for_their_commit_refusals_are_answers_and_a_cluster_forwards() {
    let mut e = engine();
    let mut s = open(&e);
    let fx = handle(
        &mut s,
        &mut e,
        json!({"id": 7, "op": "set", "key": "k", "value": 5}),
    );
    let Reply::Write(w) = fx.reply else {
        panic!("a write waits for its commit")
    };
    assert_eq!(w.changes.len(), 1);
    let ok: Value = serde_json::from_slice(&w.ok).unwrap();
    assert_eq!(
        (ok["id"].clone(), ok["ok"].clone()),
        (json!(7), json!(true))
    );
    let failed: Value = serde_json::from_slice(&w.failed("disk full")).unwrap();
    assert_eq!(failed["error"]["status"], json!(503));
    assert_eq!(
        failed["error"]["detail"],
        json!("storage unavailable: disk full; nothing was changed")
    );

    let fx = handle(
        &mut s,
        &mut e,
        json!({"id": 8, "op": "take", "key": "nothing"}),
    );
    let Reply::Refusal(r) = fx.reply else {
        panic!("a refusal")
    };
    let no: Value = serde_json::from_slice(&r.no).unwrap();
    assert_eq!(no["error"]["status"], json!(404));

    let mut c = open(&e).ordered_elsewhere();
    let before = e.store().last_seq();
    let fx = handle(
        &mut c,
        &mut e,
        json!({"id": 9, "op": "set", "key": "k", "value": 6}),
    );
    let Reply::Forward(f) = fx.reply else {
        panic!("forwarded")
    };
    assert_eq!(e.store().last_seq(), before, "nothing ran here");
    let down: Value = serde_json::from_slice(&f.unavailable("no JetStream leader")).unwrap();
    assert_eq!(down["error"]["status"], json!(503));
    assert_eq!(down["error"]["detail"], json!("no JetStream leader"));
}

#[test]
fn a_namespace_bound_session_refuses_what_lies_outside() {
    let mut e = engine();
    let mut s = open(&e).within_namespace("books");
    let fx = handle(
        &mut s,
        &mut e,
        json!({"id": 1, "op": "sub", "path": "films/*"}),
    );
    assert!(now(&fx)["error"]["detail"]
        .as_str()
        .unwrap()
        .contains("outside this connection's namespace \"books\""));
    let fx = handle(
        &mut s,
        &mut e,
        json!({"id": 2, "op": "set", "key": "films/x", "value": 1}),
    );
    assert_eq!(now(&fx)["error"]["status"], json!(400));
    assert!(e.store().get("films/x").is_none());
    let fx = handle(
        &mut s,
        &mut e,
        json!({"id": 3, "op": "sub", "path": "books/*"}),
    );
    assert!(fx.joined.is_some());
}

#[test]
fn auth_moves_the_deadline_and_drops_what_the_new_identity_may_not_read() {
    let mut e = ruled();
    let alice = token("alice", 2_000);
    let who = e.identify(at_secs(1_000), Some(&alice));
    let mut s = Session::open(&e, who, Some(alice), Limits::default()).unwrap();
    assert_eq!(s.deadline(), Some(2_030), "exp plus the rules' leeway");
    assert!(!s.expired(at_secs(2_030)));
    assert!(s.expired(at_secs(2_031)));
    let fx = handle(
        &mut s,
        &mut e,
        json!({"id": 1, "op": "sub", "path": "private/alice/x"}),
    );
    let pool = fx.joined.expect("alice reads her own keys");

    let fx = handle(
        &mut s,
        &mut e,
        json!({"id": 2, "op": "auth", "token": "not-a-token"}),
    );
    assert_eq!(now(&fx)["error"]["status"], json!(401));
    assert!(!fx.deadline_moved && fx.left.is_empty());
    assert_eq!(s.deadline(), Some(2_030), "a refused token changes nothing");

    let bob = token("bob", 5_000);
    let fx = handle(&mut s, &mut e, json!({"id": 3, "op": "auth", "token": bob}));
    let r = now(&fx);
    assert_eq!(r["subject"], json!("bob"));
    assert_eq!(r["dropped"], json!(["private/alice/x"]));
    assert_eq!(fx.left, vec![pool]);
    assert!(fx.deadline_moved && fx.state_changed);
    assert_eq!(s.deadline(), Some(5_030));
    assert_eq!(s.token(), Some(bob.as_str()));
    assert_eq!(s.subscriptions().count(), 0);
}

#[test]
fn admit_refuses_with_403_and_close_hands_back_every_pool() {
    let mut e = engine();
    let mut s = open(&e);
    let mut deny = |p: &Pattern, _: &Identity| {
        if p.as_str().starts_with("secret") {
            Err("not here".to_string())
        } else {
            Ok(())
        }
    };
    let fx = s.handle(
        &mut e,
        at_secs(1),
        br#"{"id":1,"op":"sub","path":"secret/*"}"#,
        &mut deny,
    );
    assert_eq!(now(&fx)["error"]["status"], json!(403));
    let a = s
        .subscribe(
            &mut e,
            Pattern::parse("a").unwrap(),
            Encoding::Ooo,
            None,
            true,
            &mut deny,
        )
        .unwrap()
        .0;
    let b = s
        .subscribe(
            &mut e,
            Pattern::parse("b/*").unwrap(),
            Encoding::Sse,
            None,
            false,
            &mut deny,
        )
        .unwrap()
        .0;
    assert_eq!(s.close(), vec![a, b]);
    assert_eq!(s.subscriptions().count(), 0);
}

#[test]
fn malformed_messages_get_one_error_reply() {
    let mut e = engine();
    let mut s = open(&e);
    for bad in [&b"not json"[..], b"{}", br#"{"id":1,"op":"nope"}"#] {
        let fx = s.handle(&mut e, at_secs(1), bad, &mut none);
        assert_eq!(
            now(&fx)["ok"],
            json!(false),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

fn write_of(fx: Effects) -> (Vec<Change>, Value) {
    match fx.reply {
        Reply::Write(w) => (w.changes, serde_json::from_slice(&w.ok).unwrap()),
        other => panic!("expected a write, got {other:?}"),
    }
}

fn refused_with(fx: &Effects) -> u64 {
    match &fx.reply {
        Reply::Now(b) => serde_json::from_slice::<Value>(b).unwrap()["error"]["status"]
            .as_u64()
            .unwrap(),
        Reply::Refusal(r) => serde_json::from_slice::<Value>(&r.no).unwrap()["error"]["status"]
            .as_u64()
            .unwrap(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_leased_key_carries_the_lease_ttl_and_is_deleted_once_when_the_connection_ends() {
    let mut e = engine();
    let mut s = open(&e);
    let t = at_secs(1_000);
    let fx = handle(
        &mut s,
        &mut e,
        json!({"id": 1, "op": "set", "key": "presence/r/a", "value": {"n": 1}, "lease": true}),
    );
    assert!(fx.state_changed, "a host keeping state saves the lease");
    let (changes, ok) = write_of(fx);
    assert_eq!(changes.len(), 1);
    assert_eq!(ok["key"], json!("presence/r/a"));
    let entry = e.store().get("presence/r/a").unwrap().clone();
    let ttl = entry.expires.get().unwrap() - entry.updated.max(entry.created);
    assert_eq!(ttl, LEASE_TTL, "the key expires by itself after a crash");
    assert_eq!(s.leases().count(), 1);
    assert!(s.has_end_writes());

    let ended = s.end(&mut e, t);
    assert_eq!(ended.len(), 1);
    assert!(ended[0].is_delete());
    assert_eq!(&*ended[0].key, "presence/r/a");
    assert!(e.store().get("presence/r/a").is_none());
    assert!(s.end(&mut e, t).is_empty(), "end writes run exactly once");
    assert!(!s.has_end_writes());
}

#[test]
fn a_lease_ends_when_another_write_takes_the_key_and_two_tabs_are_two_leases() {
    let mut e = engine();
    let mut tab1 = open(&e);
    let mut tab2 = open(&e);
    let t = at_secs(1_000);
    for s in [&mut tab1, &mut tab2] {
        write_of(handle(
            s,
            &mut e,
            json!({"op": "set", "key": "presence/r/u1", "value": 1, "lease": true}),
        ));
    }
    // Tab 2's write replaced tab 1's: tab 1 ending leaves the key to tab 2.
    assert!(tab1.end(&mut e, t).is_empty());
    assert!(e.store().get("presence/r/u1").is_some());
    assert_eq!(tab2.end(&mut e, t).len(), 1);
    assert!(e.store().get("presence/r/u1").is_none());

    // A plain write (the holder's too) ends the lease: the key stays.
    let mut s = open(&e);
    write_of(handle(
        &mut s,
        &mut e,
        json!({"op": "set", "key": "presence/r/u2", "value": 1, "lease": true}),
    ));
    write_of(handle(
        &mut s,
        &mut e,
        json!({"op": "set", "key": "presence/r/u2", "value": 2}),
    ));
    assert!(s.end(&mut e, t).is_empty());
    assert!(e.store().get("presence/r/u2").is_some());
}

#[test]
fn a_leased_patch_and_push_get_the_lease_ttl_and_renewal_keeps_the_lease() {
    let mut e = engine();
    let mut s = open(&e);
    write_of(handle(
        &mut s,
        &mut e,
        json!({"op": "set", "key": "p/x", "value": {"a": 1}}),
    ));
    let (changes, ok) = write_of(handle(
        &mut s,
        &mut e,
        json!({"op": "patch", "key": "p/x", "value": {"b": 2}, "lease": true}),
    ));
    assert_eq!(
        changes.len(),
        2,
        "the patch, then its lease TTL, in one commit"
    );
    let entry = e.store().get("p/x").unwrap().clone();
    assert_eq!(
        ok["etag"],
        json!(entry.etag()),
        "the reply names the current entry"
    );
    assert_eq!(*entry.data(), json!({"a": 1, "b": 2}));
    assert!(entry.expires.get().is_some());
    let (_, ok) = write_of(handle(
        &mut s,
        &mut e,
        json!({"op": "push", "path": "p/list/*", "value": 1, "lease": true}),
    ));
    let pushed = ok["key"].as_str().unwrap().to_string();
    assert!(e.store().get(&pushed).unwrap().expires.get().is_some());
    assert_eq!(s.leases().count(), 2);

    // Renewal: nothing is due at first; past half the TTL every lease is re-armed.
    let t0 = at_secs(1_000);
    let due = s.renew_in(&e, t0).unwrap();
    assert!(due > 0 && due as i64 <= LEASE_TTL / 2, "{due}");
    assert!(s.renew(&mut e, t0).is_empty());
    let later = at_secs(1_000 + LEASE_TTL / 2_000_000_000 + 1);
    let renewed = s.renew(&mut e, later);
    assert_eq!(renewed.len(), 2);
    let x = e.store().get("p/x").unwrap().clone();
    assert_eq!(*x.data(), json!({"a": 1, "b": 2}), "the same value");
    assert!(
        x.expires.get().unwrap() > entry.expires.get().unwrap(),
        "a later deadline"
    );
    assert!(s.renew_in(&e, later).unwrap() > 0);
    // The renewed keys are still the lease's: the end deletes both.
    assert_eq!(s.end(&mut e, later).len(), 2);
    assert!(e.store().get("p/x").is_none());
}

#[test]
fn onclose_writes_fire_once_in_order_and_a_cancelled_one_never() {
    let mut e = engine();
    let mut s = open(&e);
    let t = at_secs(1_000);
    let mut handles = Vec::new();
    for (k, v) in [("log/a", 1), ("log/b", 2), ("log/c", 3)] {
        let fx = handle(
            &mut s,
            &mut e,
            json!({"id": k, "op": "onclose", "write": {"op": "set", "key": "last", "value": v}}),
        );
        assert!(fx.state_changed);
        let r = now(&fx);
        assert_eq!(r["id"], json!(k));
        handles.push(r["onclose"].as_u64().unwrap());
    }
    assert!(
        e.store().get("last").is_none(),
        "nothing runs before the end"
    );
    let r = now(&handle(
        &mut s,
        &mut e,
        json!({"id": 9, "op": "onclose_cancel", "onclose": handles[2]}),
    ));
    assert_eq!(r["onclose"], json!(handles[2]));
    let r = now(&handle(
        &mut s,
        &mut e,
        json!({"id": 9, "op": "onclose_cancel", "onclose": handles[2]}),
    ));
    assert_eq!(r["error"]["status"], json!(400), "cancelled already");
    let fx = handle(
        &mut s,
        &mut e,
        json!({"op": "onclose", "write": {"op": "del", "key": "gone"}}),
    );
    now(&fx);
    let ended = s.end(&mut e, t);
    // set 1, set 2 (in that order), then a delete of a missing key (nothing).
    assert_eq!(ended.len(), 2);
    assert_eq!(*e.store().get("last").unwrap().data(), json!(2));
    assert!(s.end(&mut e, t).is_empty(), "exactly once");
}

#[test]
fn end_writes_are_judged_by_the_rules_and_an_expired_token_fires_nothing() {
    let rules = Rules::from_toml_str(
        r#"
        [auth]
        hs256_secret = "0123456789abcdef-session"
        leeway_secs = 30
        [[rule]]
        pattern = "private/{sub}/**"
        read = "owner"
        write = "owner"
        delete = "owner"
        [[rule]]
        pattern = "**"
        read = "public"
        write = "public"
        "#,
        &Inline,
    )
    .unwrap();
    let mut f = Filters::new();
    f.set_rules(rules).unwrap();
    let mut e = Engine::new(Tick::from_wall(1_000), Config::default(), f);
    // Without the right to delete, a lease is refused: its end would be a delete.
    let mut anon = open(&e);
    let fx = handle(
        &mut anon,
        &mut e,
        json!({"op": "set", "key": "public/x", "value": 1, "lease": true}),
    );
    assert_eq!(refused_with(&fx), 403);
    assert!(e.store().get("public/x").is_none(), "nothing changed");
    let tok = token("ann", 2_000);
    let who = e.identify(at_secs(1_000), Some(&tok));
    let mut s = Session::open(&e, who, Some(tok), Limits::default()).unwrap();
    // Registering a write the rules refuse is refused at once.
    let fx = handle(
        &mut s,
        &mut e,
        json!({"op": "onclose", "write": {"op": "set", "key": "private/bob/x", "value": 1}}),
    );
    assert_eq!(now(&fx)["error"]["status"], json!(403));
    let fx = handle(
        &mut s,
        &mut e,
        json!({"op": "onclose", "write": {"op": "set", "key": "private/ann/x", "value": 1}}),
    );
    now(&fx);
    write_of(handle(
        &mut s,
        &mut e,
        json!({"op": "set", "key": "private/ann/here", "value": 1, "lease": true}),
    ));
    // Past exp + leeway: nothing fires; the leased key expires by its TTL instead.
    let late = at_secs(2_031);
    assert!(s.end_writes(late).is_empty());
    assert!(s.end(&mut e, late).is_empty());
    assert!(e.store().get("private/ann/x").is_none());
    assert!(e.store().get("private/ann/here").is_some());

    // In time, they fire as the connection's identity.
    let tok = token("ann", 2_000);
    let who = e.identify(at_secs(1_000), Some(&tok));
    let mut s = Session::open(&e, who, Some(tok), Limits::default()).unwrap();
    now(&handle(
        &mut s,
        &mut e,
        json!({"op": "onclose", "write": {"op": "patch", "key": "private/ann/here", "value": {"gone": true}}}),
    ));
    let ended = s.end(&mut e, at_secs(1_500));
    assert_eq!(ended.len(), 1);
}

#[test]
fn the_lease_and_onclose_caps_refuse_and_change_nothing() {
    let mut e = engine();
    let limits = Limits {
        leases: 2,
        onclose: 1,
        ..Limits::default()
    };
    let mut s = Session::open(&e, Identity::Anonymous, None, limits).unwrap();
    for k in ["l/a", "l/b"] {
        write_of(handle(
            &mut s,
            &mut e,
            json!({"op": "set", "key": k, "value": 1, "lease": true}),
        ));
    }
    // Renewing a key already held does not count.
    write_of(handle(
        &mut s,
        &mut e,
        json!({"op": "set", "key": "l/a", "value": 2, "lease": true}),
    ));
    let before = e.store().last_seq();
    let fx = handle(
        &mut s,
        &mut e,
        json!({"op": "set", "key": "l/c", "value": 1, "lease": true}),
    );
    assert_eq!(refused_with(&fx), 400);
    assert_eq!(e.store().last_seq(), before);
    assert!(e.store().get("l/c").is_none());
    now(&handle(
        &mut s,
        &mut e,
        json!({"op": "onclose", "write": {"op": "del", "key": "l/a"}}),
    ));
    let fx = handle(
        &mut s,
        &mut e,
        json!({"op": "onclose", "write": {"op": "del", "key": "l/b"}}),
    );
    assert_eq!(refused_with(&fx), 400);
    assert_eq!(s.onclose_writes().count(), 1);

    // A host-kept state bound counts leases and on-close writes too.
    let small = Limits {
        state_bytes: Some(60),
        ..Limits::default()
    };
    let mut s = Session::open(&e, Identity::Anonymous, None, small).unwrap();
    let fx = handle(
        &mut s,
        &mut e,
        json!({"op": "onclose", "write": {"op": "set", "key": "k", "value": "x".repeat(64)}}),
    );
    assert_eq!(refused_with(&fx), 400);
    assert_eq!(s.onclose_writes().count(), 0);
}

#[test]
fn lease_and_onclose_messages_are_checked_and_a_cluster_forwards_leases() {
    let mut e = engine();
    let mut s = open(&e);
    for bad in [
        json!({"op": "set", "key": "k", "value": 1, "lease": true, "ttl": 5}),
        json!({"op": "del", "key": "k", "lease": true}),
        json!({"op": "set", "key": "k", "value": 1, "lease": "yes"}),
        json!({"op": "onclose"}),
        json!({"op": "onclose", "write": {"op": "incr", "key": "k"}}),
        json!({"op": "onclose", "write": {"id": 1, "op": "set", "key": "k", "value": 1}}),
        json!({"op": "onclose", "write": {"op": "set", "key": "k"}}),
        json!({"op": "onclose", "write": {"op": "set", "key": "a/*", "value": 1}}),
        json!({"op": "onclose_cancel"}),
    ] {
        let fx = handle(&mut s, &mut e, bad.clone());
        assert_eq!(refused_with(&fx), 400, "{bad}");
    }
    assert!(!s.has_end_writes());
    // A cluster node forwards a lease (see `a_cluster_node_orders_leases_and_their_renewals`)
    // and changes nothing itself.
    let mut c = open(&e).ordered_elsewhere();
    let fx = handle(
        &mut c,
        &mut e,
        json!({"op": "set", "key": "k", "value": 1, "lease": true}),
    );
    assert!(matches!(fx.reply, Reply::Forward(_)));
    assert!(e.store().get("k").is_none());
    // A host that rebuilds sessions gets them back.
    let mut s = open(&e);
    s.restore_end_state(
        &e,
        [("a".to_string(), "\"1\"".to_string())],
        [(7, r#"{"op":"del","key":"a"}"#.to_string())],
    );
    assert_eq!(s.leases().collect::<Vec<_>>(), vec![("a", "\"1\"")]);
    assert_eq!(
        s.onclose_writes().collect::<Vec<_>>(),
        vec![(7, r#"{"op":"del","key":"a"}"#)]
    );
}

#[test]
fn a_silent_connection_that_holds_end_writes_is_taken_for_gone() {
    let mut e = engine();
    let limits = Limits {
        silence: Some(5_000_000_000),
        ..Limits::default()
    };
    let mut s = Session::open(&e, Identity::Anonymous, None, limits.clone()).unwrap();
    let t = |secs: i64| at_secs(1_000 + secs);
    // Nothing to leave behind: never silent, however long it says nothing.
    s.handle(&mut e, t(0), br#"{"id":1,"op":"ping"}"#, &mut none);
    assert_eq!(s.silent_after(), None);
    assert!(!s.silent(&e, t(100)));
    let fx = s.handle(
        &mut e,
        t(100),
        br#"{"id":2,"op":"set","key":"presence/r/a","value":1,"lease":true}"#,
        &mut none,
    );
    assert!(matches!(fx.reply, Reply::Write(_)), "{:?}", fx.reply);
    let heard = s.heard().unwrap();
    assert_eq!(s.silent_after(), Some(heard + 5_000_000_000));
    assert!(!s.silent(&e, t(104)));
    // Any message counts as heard.
    s.handle(&mut e, t(104), br#"{"id":3,"op":"ping"}"#, &mut none);
    assert!(!s.silent(&e, t(108)));
    assert!(s.silent(&e, t(110)));
    // A rebuilt session keeps the time it was last heard.
    let mut again = Session::open(&e, Identity::Anonymous, None, limits).unwrap();
    again.restore_end_state(&e, s.leases().map(|(k, v)| (k.into(), v.into())), []);
    again.restore_heard(s.heard().unwrap());
    assert!(again.silent(&e, t(110)));
    // Without a silence limit (the native server pings), never.
    let mut native = open(&e);
    native.handle(
        &mut e,
        t(110),
        br#"{"id":4,"op":"set","key":"presence/r/b","value":1,"lease":true}"#,
        &mut none,
    );
    assert!(!native.silent(&e, t(10_000)));
}

#[test]
fn a_cluster_node_orders_leases_and_their_renewals() {
    let mut e = engine();
    let mut s = open(&e).ordered_elsewhere();
    let t = |secs: i64| at_secs(1_000 + secs);
    let fx = s.handle(
        &mut e,
        t(0),
        br#"{"id":1,"op":"set","key":"presence/r/a","value":{"n":1},"lease":true}"#,
        &mut none,
    );
    let Reply::Forward(f) = fx.reply else {
        panic!("{:?}", fx.reply)
    };
    assert!(f.replies());
    assert!(
        matches!(
            &f.op,
            Op::Set {
                ttl: crate::Ttl::After(_),
                ..
            }
        ),
        "{:?}",
        f.op
    );
    // Nothing is held until the cluster has ordered it.
    assert_eq!(s.leases().count(), 0);
    let a = e.execute(t(0), f.op.clone(), &f.who).unwrap();
    s.forwarded(&f, Ok(&a), Some(0x77));
    let held: Vec<(String, String)> = s.leases().map(|(k, v)| (k.into(), v.into())).collect();
    assert_eq!(held, [("presence/r/a".to_string(), "\"77\"".to_string())]);
    // A patch of a key it does not hold is refused on a cluster node.
    let fx = s.handle(
        &mut e,
        t(0),
        br#"{"id":2,"op":"patch","key":"presence/r/zz","value":{},"lease":true}"#,
        &mut none,
    );
    assert_eq!(now(&fx)["error"]["status"], json!(400));
    // Renewals are writes for the cluster, one at a time, without replies.
    let mut e2 = engine();
    let mut s2 = open(&e2).ordered_elsewhere();
    let fx = s2.handle(
        &mut e2,
        t(0),
        br#"{"id":1,"op":"set","key":"presence/r/b","value":1,"lease":true}"#,
        &mut none,
    );
    let Reply::Forward(f) = fx.reply else {
        panic!()
    };
    let a = e2.execute(t(0), f.op.clone(), &f.who).unwrap();
    s2.forwarded(&f, Ok(&a), None);
    assert!(s2.renewals(&e2, t(1)).is_empty(), "not due yet");
    let due = s2.renewals(&e2, t(45));
    assert_eq!(due.len(), 1);
    assert!(!due[0].replies());
    assert!(s2.renewals(&e2, t(46)).is_empty(), "one renewal at a time");
    let a = e2.execute(t(45), due[0].op.clone(), &due[0].who).unwrap();
    s2.forwarded(&due[0], Ok(&a), None);
    assert_eq!(s2.leases().next().unwrap().1, a_etag(&a));
    // Another write replaced it: the renewal is refused and the lease forgotten.
    e2.execute_as_system(
        t(50),
        Op::Set {
            key: "presence/r/b".into(),
            value: json!("theirs").into(),
            ttl: crate::Ttl::Clear,
            cond: crate::Cond::Always,
        },
    )
    .unwrap();
    let due = s2.renewals(&e2, t(200));
    assert!(due.is_empty(), "a replaced lease is forgotten, not renewed");
    assert_eq!(s2.leases().count(), 0);
    // One the cluster could not order is kept and tried again.
    let mut s3 = open(&e2).ordered_elsewhere();
    let fx = s3.handle(
        &mut e2,
        t(300),
        br#"{"id":1,"op":"set","key":"presence/r/c","value":1,"lease":true}"#,
        &mut none,
    );
    let Reply::Forward(f) = fx.reply else {
        panic!()
    };
    let a = e2.execute(t(300), f.op.clone(), &f.who).unwrap();
    s3.forwarded(&f, Ok(&a), None);
    let due = s3.renewals(&e2, t(400));
    assert_eq!(due.len(), 1);
    s3.forwarded(&due[0], Err(&Error::Unavailable("down".into())), None);
    assert_eq!(s3.renewals(&e2, t(401)).len(), 1);
}

fn a_etag(a: &Applied) -> String {
    match &a.outcome {
        crate::Outcome::Written(_, e) => e.etag(),
        other => panic!("{other:?}"),
    }
}

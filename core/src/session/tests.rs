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
            value: json!(1),
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

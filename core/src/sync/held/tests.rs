//! Leases and disconnect writes across reconnects, against hand-written server replies (what a
//! server with `lease` and `onclose` answers, per docs/protocol.md).

use super::super::*;

fn open() -> Client {
    let mut c = Client::new(Config::default());
    c.connect(0);
    c.handle_open(1);
    drain(&mut c);
    c
}

/// The messages sent, parsed.
fn sent(c: &mut Client) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(io) = c.poll_io() {
        if let Io::Send(m) = io {
            out.push(serde_json::from_str(&m).unwrap());
        }
    }
    out
}

fn events(c: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn drain(c: &mut Client) {
    sent(c);
    events(c);
}

fn reply(c: &mut Client, id: &Value, fields: Value) {
    let mut m = fields;
    m["id"] = id.clone();
    m["ok"] = Value::Bool(true);
    c.handle_message(10, m.to_string().as_bytes());
}

fn refuse(c: &mut Client, id: &Value, code: &str) {
    let m = json!({"id": id, "ok": false, "error": {"status": 403, "code": code, "detail": "no"}});
    c.handle_message(10, m.to_string().as_bytes());
}

fn reconnect(c: &mut Client) {
    c.handle_close(20, 0.0);
    drain(c);
    c.handle_timeout(10_000, 0.0);
    c.handle_open(10_001);
}

fn without_id(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("id");
    v
}

fn ok_reply(evs: &[Event], req: u64) -> Value {
    for e in evs {
        if let Event::Reply {
            req: r,
            result: Ok(v),
            ..
        } = e
        {
            if *r == req {
                return v.clone();
            }
        }
    }
    panic!("no ok reply for {req} in {evs:?}");
}

#[test]
fn leased_writes_are_taken_again_after_a_reconnect() {
    let mut c = open();
    let a =
        c.write(json!({"op":"set","key":"presence/r/me","value":{"n":"ann"},"lease":true,"rev":0}));
    let m = sent(&mut c);
    reply(
        &mut c,
        &m[0]["id"],
        json!({"key":"presence/r/me","revision":0}),
    );
    // A merge patch is folded into the held value; a plain set of another key is not held.
    c.write(json!({"op":"patch","key":"presence/r/me","value":{"typing":true},"type":"merge-patch","lease":true}));
    c.write(json!({"op":"set","key":"plain","value":1}));
    let p = c.write(json!({"op":"push","path":"cursors/*","value":[1,2],"lease":true}));
    let m = sent(&mut c);
    reply(
        &mut c,
        &m[0]["id"],
        json!({"key":"presence/r/me","revision":1}),
    );
    reply(&mut c, &m[1]["id"], json!({"key":"plain","revision":0}));
    reply(
        &mut c,
        &m[2]["id"],
        json!({"key":"cursors/00ab","revision":0,"index":"00ab"}),
    );
    let evs = events(&mut c);
    assert_eq!(ok_reply(&evs, p)["key"], "cursors/00ab");
    assert!(a < p);
    assert_eq!(c.leases(), vec!["presence/r/me", "cursors/00ab"]);

    reconnect(&mut c);
    let again: Vec<Value> = sent(&mut c).into_iter().map(without_id).collect();
    assert_eq!(
        again,
        vec![
            // No `rev`: the old connection's end deleted the key.
            json!({"op":"set","key":"presence/r/me","value":{"n":"ann","typing":true},"lease":true}),
            json!({"op":"set","key":"cursors/00ab","value":[1,2],"lease":true}),
        ]
    );
    // The re-take's replies are not reported to the user.
    assert_eq!(
        events(&mut c),
        vec![Event::State(State::Connecting), Event::State(State::Open)]
    );
}

#[test]
fn a_delete_or_plain_set_ends_a_lease_and_close_forgets_them() {
    let mut c = open();
    for k in ["a", "b", "c"] {
        c.write(json!({"op":"set","key":k,"value":1,"lease":true}));
    }
    let m = sent(&mut c);
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        reply(&mut c, &m[i]["id"], json!({"key":k,"revision":0}));
    }
    c.write(json!({"op":"del","key":"a"}));
    c.write(json!({"op":"set","key":"b","value":2}));
    // A refused delete ends nothing.
    c.write(json!({"op":"del","key":"c"}));
    let m = sent(&mut c);
    reply(&mut c, &m[0]["id"], json!({"deleted":1}));
    reply(&mut c, &m[1]["id"], json!({"key":"b","revision":1}));
    refuse(&mut c, &m[2]["id"], "forbidden");
    assert_eq!(c.leases(), vec!["c"]);
    // A leased write that fails is not held.
    c.write(json!({"op":"set","key":"d","value":1,"lease":true}));
    let m = sent(&mut c);
    refuse(&mut c, &m[0]["id"], "forbidden");
    assert_eq!(c.leases(), vec!["c"]);
    // A patch without `lease` ends it too (the server ends a lease on any other write).
    c.write(json!({"op":"set","key":"e","value":{},"lease":true}));
    c.write(json!({"op":"patch","key":"e","value":{"x":1}}));
    let m = sent(&mut c);
    reply(&mut c, &m[0]["id"], json!({"key":"e","revision":0}));
    assert_eq!(c.leases(), vec!["c", "e"]);
    reply(&mut c, &m[1]["id"], json!({"key":"e","revision":1}));
    assert_eq!(c.leases(), vec!["c"]);
    c.close();
    assert!(c.leases().is_empty());
}

#[test]
fn unfoldable_patches_are_kept_in_order_and_bounded() {
    let mut c = open();
    // A leased patch of a key the client never set: kept as it is.
    c.write(json!({"op":"patch","key":"k","value":{"a":1},"lease":true}));
    let m = sent(&mut c);
    reply(&mut c, &m[0]["id"], json!({"key":"k","revision":3}));
    for i in 0..(MAX_HELD_WRITES + 5) {
        c.write(json!({"op":"patch","key":"k","value":{"i":i},"lease":true}));
        let m = sent(&mut c);
        reply(&mut c, &m[0]["id"], json!({"key":"k","revision":4 + i}));
    }
    reconnect(&mut c);
    let again = sent(&mut c);
    assert_eq!(again.len(), MAX_HELD_WRITES);
    assert_eq!(
        without_id(again.last().unwrap().clone()),
        json!({"op":"patch","key":"k","value":{"i": MAX_HELD_WRITES + 4},"lease":true})
    );
}

#[test]
fn disconnect_writes_are_registered_again_and_cancel_maps_handles() {
    let mut c = open();
    let h =
        c.write(json!({"op":"onclose","write":{"op":"set","key":"status/me","value":"offline"}}));
    let m = sent(&mut c);
    assert_eq!(
        without_id(m[0].clone()),
        json!({"op":"onclose","write":{"op":"set","key":"status/me","value":"offline"}})
    );
    reply(&mut c, &m[0]["id"], json!({"onclose": 7}));
    // The user's handle is the request id, not the server's.
    assert_eq!(ok_reply(&events(&mut c), h)["onclose"], json!(h));
    assert_eq!(c.disconnect_writes(), vec![h]);

    reconnect(&mut c);
    let m = sent(&mut c);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["op"], "onclose");
    reply(&mut c, &m[0]["id"], json!({"onclose": 1}));
    // Registered again silently: the user was answered once.
    assert_eq!(
        events(&mut c),
        vec![Event::State(State::Connecting), Event::State(State::Open)]
    );

    // Cancel with the user's handle: sent with the new server handle, answered with the user's.
    let k = c.write(json!({"op":"onclose_cancel","onclose": h}));
    let m = sent(&mut c);
    assert_eq!(
        without_id(m[0].clone()),
        json!({"op":"onclose_cancel","onclose":1})
    );
    reply(&mut c, &m[0]["id"], json!({"onclose": 1}));
    assert_eq!(ok_reply(&events(&mut c), k)["onclose"], json!(h));
    assert!(c.disconnect_writes().is_empty());
    reconnect(&mut c);
    let m = sent(&mut c);
    assert!(m.is_empty(), "nothing registered again: {m:?}");
    events(&mut c);

    // An unknown handle is refused locally; nothing is sent.
    let u = c.write(json!({"op":"onclose_cancel","onclose": 999}));
    assert!(sent(&mut c).is_empty());
    let evs = events(&mut c);
    assert!(
        matches!(&evs[..], [Event::Reply { req, result: Err(f), .. }] if *req == u && f.code == "not-found")
    );
}

#[test]
fn offline_registration_and_cancel() {
    let mut c = Client::new(Config::default());
    c.connect(0);
    // Registered while connecting: sent when the socket opens.
    let h = c.write(json!({"op":"onclose","write":{"op":"del","key":"x"}}));
    assert!(sent(&mut c).is_empty());
    c.handle_open(1);
    let m = sent(&mut c);
    assert_eq!(m[0]["op"], "onclose");
    // Cancelled while in flight: resolved at once (the registering call too); when the server's
    // acknowledgement arrives, the client cancels it there.
    let k = c.write(json!({"op":"onclose_cancel","onclose": h}));
    let evs = events(&mut c);
    assert_eq!(ok_reply(&evs, k)["cancelled"], true);
    assert_eq!(ok_reply(&evs, h)["cancelled"], true);
    reply(&mut c, &m[0]["id"], json!({"onclose": 5}));
    let m = sent(&mut c);
    assert_eq!(
        without_id(m[0].clone()),
        json!({"op":"onclose_cancel","onclose":5})
    );
    assert!(events(&mut c).is_empty());

    // A cancel in flight when the socket drops succeeds: the registration ended with it.
    let h = c.write(json!({"op":"onclose","write":{"op":"del","key":"y"}}));
    let m = sent(&mut c);
    reply(&mut c, &m[0]["id"], json!({"onclose": 6}));
    events(&mut c);
    let k = c.write(json!({"op":"onclose_cancel","onclose": h}));
    sent(&mut c);
    c.handle_close(30, 0.0);
    assert_eq!(ok_reply(&events(&mut c), k)["cancelled"], true);
    c.handle_timeout(10_000, 0.0);
    c.handle_open(10_001);
    assert!(sent(&mut c).is_empty());
}

#[test]
fn a_refused_registration_fails_and_close_fails_unacknowledged_ones() {
    let mut c = open();
    let h = c.write(json!({"op":"onclose","write":{"op":"incr","key":"n"}}));
    let m = sent(&mut c);
    refuse(&mut c, &m[0]["id"], "forbidden");
    let evs = events(&mut c);
    assert!(
        matches!(&evs[..], [Event::Reply { req, result: Err(f), .. }] if *req == h && f.code == "forbidden")
    );
    assert!(c.disconnect_writes().is_empty());

    c.handle_close(5, 0.0);
    let h = c.write(json!({"op":"onclose","write":{"op":"del","key":"z"}}));
    events(&mut c);
    c.close();
    let evs = events(&mut c);
    assert!(evs.iter().any(
        |e| matches!(e, Event::Reply { req, result: Err(f), .. } if *req == h && f.code == "closed")
    ));
    assert!(c.disconnect_writes().is_empty());
}

#[test]
fn registrations_are_bounded_by_max_queue() {
    let mut c = Client::new(Config {
        max_queue: 2,
        ..Config::default()
    });
    for _ in 0..2 {
        c.write(json!({"op":"onclose","write":{"op":"del","key":"a"}}));
    }
    let r = c.write(json!({"op":"onclose","write":{"op":"del","key":"a"}}));
    let evs = events(&mut c);
    assert!(
        matches!(&evs[..], [Event::Reply { req, result: Err(f), .. }] if *req == r && f.code == "queue-full")
    );
    assert_eq!(c.disconnect_writes().len(), 2);
}

//! The `/_ws` message path as both servers drive it: each line of the input is one client
//! message handed to a connection's `session::Session` (parsing under the limits, auth, sub,
//! unsub, operations run through the engine), whose effects are carried out as the adapters do
//! (pools left, writes published, their change-log records encoded and decoded as the storage
//! does), then the TTLs run out. Any message, in any order, must get exactly one reply, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stateline_core::codec::{decode_log, encode_log};
use stateline_core::session::{Limits, Reply, Session};
use stateline_core::Identity;
use stateline_core_fuzz::{engine, tick};

fuzz_target!(|data: &[u8]| {
    let mut engine = engine();
    let Ok(mut session) = Session::open(&engine, Identity::Anonymous, None, Limits::default())
    else {
        return;
    };
    let mut n = 0;
    for msg in data.split(|&b| b == b'\n').take(32) {
        n += 1;
        let fx = session.handle(&mut engine, tick(n), msg, &mut |_, _| Ok(()));
        for pool in fx.left {
            engine.leave(pool);
        }
        let reply = match fx.reply {
            Reply::Now(b) => b,
            Reply::Refusal(r) => r.no,
            Reply::Forward(f) => f.unavailable("not a cluster"),
            Reply::Write(w) => {
                for c in &w.changes {
                    // What the storage writes must read back as the same change.
                    let (seq, key, revision, prev, entry) =
                        decode_log(c.seq, &encode_log(c)).expect("a change decodes");
                    assert_eq!((seq, &key, revision), (c.seq, &c.key, c.revision));
                    assert_eq!(prev, c.prev.as_ref().map(|p| p.created));
                    assert_eq!(entry, c.entry);
                }
                engine.publish(&w.changes);
                w.ok
            }
        };
        assert!(!reply.is_empty(), "every message gets a reply");
        while engine.poll_frame().is_some() {}
        while engine.poll_denial().is_some() {}
    }
    for pool in session.close() {
        engine.leave(pool);
    }
    // Every TTL has run out a day later.
    let changes = engine.handle_timeout(tick(n + 86_400_000));
    engine.publish(&changes);
    while engine.poll_frame().is_some() {}
});

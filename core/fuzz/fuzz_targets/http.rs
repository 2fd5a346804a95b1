//! HTTP requests through the core's front door: `http::classify` (what the adapters ask first),
//! then `http::handle` for a plain request, or the subscription check and pool join for a
//! WebSocket or SSE one, as the servers do, on an engine with access rules.
//!
//! The input is a few requests in a readable form (the seeds are real requests), separated by a
//! line `~~~`:
//!
//! ```text
//! PUT /settings/theme?ttl=60
//! Content-Type: application/json
//! Authorization: Bearer eyJ...
//!
//! {"colour":"blue"}
//! ```
//!
//! A request line or header that `http` itself refuses (no server could hand it to the core)
//! skips that request. Any other request must get a response, never a panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use stateline_core::http::{self, Kind, Subscription};
use stateline_core::{Encoding, Engine, Tick};
use stateline_core_fuzz::{engine, tick};

fn request(text: &[u8]) -> Option<::http::Request<Bytes>> {
    let (head, body) = match text.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => (text, &b""[..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n');
    let (method, target) = lines.next()?.split_once(' ')?;
    let mut b = ::http::Request::builder().method(method).uri(target);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        b = b.header(name.trim(), value.trim());
    }
    b.body(Bytes::copy_from_slice(body)).ok()
}

fn subscribe(
    engine: &mut Engine,
    t: Tick,
    req: &::http::Request<Bytes>,
    sub: Subscription,
    enc: Encoding,
) {
    let who = engine.identify(t, http::token(req).as_deref());
    if http::authorize_subscription(engine, req, &sub, &who).is_ok() {
        // The subscription stays: the input's later requests publish to it.
        let _ = engine.join(sub.pattern, enc, sub.version, sub.initial, &who);
    }
}

fn run(engine: &mut Engine, t: Tick, req: &::http::Request<Bytes>) {
    match http::classify(engine, req) {
        Err(_refused) => {}
        Ok(Kind::Http) => {
            let out = http::handle(engine, t, req);
            engine.publish(&out.changes);
        }
        Ok(Kind::Subscribe(sub)) => subscribe(engine, t, req, sub, Encoding::Ooo),
        Ok(Kind::Events(sub)) => subscribe(engine, t, req, sub, Encoding::Sse),
        Ok(Kind::Mux | Kind::Clock) => {
            let who = engine.identify(t, http::token(req).as_deref());
            let _ = http::authorize_connection(engine, req, &who);
        }
        Ok(Kind::Root { .. }) => {}
    }
    while engine.poll_frame().is_some() {}
    while engine.poll_denial().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let mut engine = engine();
    let mut rest = data;
    let mut n = 0;
    while n < 8 && !rest.is_empty() {
        let (one, tail) = match rest.windows(5).position(|w| w == b"\n~~~\n") {
            Some(i) => (&rest[..i], &rest[i + 5..]),
            None => (rest, &b""[..]),
        };
        rest = tail;
        n += 1;
        if let Some(req) = request(one) {
            run(&mut engine, tick(n), &req);
        }
    }
});

//! HTTP requests through the core's front door, `web::serve`, as both servers hand them in
//! (with or without a body that could be read), then what its action asks for: the changes
//! published, or a subscription joined through a connection's `session::Session`, on an engine
//! with access rules.
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
//! skips that request. Any other request must get a response, never a panic. A request whose
//! first line starts with `!` stands for one whose body the server could not read.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use stateline_core::session::{Limits, Session};
use stateline_core::web::{self, Action, Host, Socket, Subscription};
use stateline_core::{Encoding, Engine, Error, Identity, Tick};
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

fn subscribe(engine: &mut Engine, sub: Subscription, enc: Encoding, who: Identity) {
    let Ok(mut session) = Session::open(engine, who, None, Limits::default()) else {
        return;
    };
    // The subscription stays: the input's later requests publish to it.
    let _ = session.subscribe(
        engine,
        sub.pattern,
        enc,
        sub.version,
        sub.initial,
        &mut |_, _| Ok(()),
    );
}

fn run(engine: &mut Engine, t: Tick, req: &::http::Request<Bytes>, unreadable: bool) {
    let host = Host {
        body_error: unreadable.then_some(Error::BodyUnreadable),
        checks_handshakes: true,
        ..Host::default()
    };
    match web::serve(engine, t, req, &host) {
        Action::Respond(out) => engine.publish(&out.changes),
        Action::Upgrade {
            socket: Socket::Subscribe(sub),
            who,
        } => subscribe(engine, sub, Encoding::Ooo, who),
        Action::Events { sub, who } => subscribe(engine, sub, Encoding::Sse, who),
        Action::Upgrade { .. }
        | Action::Asset { .. }
        | Action::Backup
        | Action::Endpoint { .. } => {}
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
        // A request written `!PUT ...` stands for one whose body could not be read.
        let (unreadable, one) = match one.strip_prefix(b"!") {
            Some(rest) => (true, rest),
            None => (false, one),
        };
        if let Some(req) = request(one) {
            run(&mut engine, tick(n), &req, unreadable);
        }
    }
});

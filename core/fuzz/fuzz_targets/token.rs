//! JWT verification (`token::Verifier::verify`): the bearer token of an HTTP request, a WebSocket
//! subprotocol or a `/_ws` `auth` message, from anyone. Keys of all three algorithms are set, so
//! every branch is reached; a refusal must be an error, never a panic.
//!
//! The first byte chooses the mode:
//! - even: the rest is the token, as a client sends it;
//! - odd: the rest is `header \n claims`, signed here with the HS256 secret, so the claims and
//!   header are parsed and checked past the signature (the fuzzer cannot forge one).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stateline_core::token::Verifier;
use stateline_core_fuzz::{sign_raw, NOW_SECS, SECRET};

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut v = Verifier::new()
            .hs256(SECRET.as_bytes())
            .and_then(|v| v.rs256_pem(include_str!("../../tests/keys/rsa_public.pem")))
            .and_then(|v| v.es256_pem(include_str!("../../tests/keys/ec_public.pem")))
            .expect("the test keys load");
        v.issuer = Some("stateline".into());
        v.audience = Some("fuzz".into());
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], rest),
        };
        sign_raw(header, claims)
    };
    // The clock is the adapter's: hours from now, and the extremes.
    let now = match mode >> 1 {
        127 => i64::MAX,
        126 => i64::MIN,
        hours => NOW_SECS + i64::from(hours) * 3600,
    };
    if let Ok(claims) = verifier().verify(&token, now) {
        // What the rules read of verified claims.
        let _ = (
            claims.text("sub"),
            claims.exp(),
            claims.has_role("roles", "admin"),
        );
    }
});

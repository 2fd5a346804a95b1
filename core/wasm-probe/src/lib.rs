//! Links every path of `stateline-core` (HTTP function, store, log, pools, frames, clock, TTL)
//! into one exported function, so the `.wasm` CI builds contains the whole core and its import
//! section shows what the core needs from its host: nothing (no `env` imports, no WASI).

use bytes::Bytes;
use stateline_core::http::handle;
use stateline_core::pool::Encoding;
use stateline_core::{Config, Engine, Filters, Pattern, Tick};

/// Runs a short scenario and returns the number of frames produced (CI only checks imports).
#[no_mangle]
pub extern "C" fn stateline_probe(now: i64) -> u32 {
    let mut e = Engine::new(Tick::from_wall(now), Config::default(), Filters::new());
    let Ok(pattern) = Pattern::parse("a/*") else {
        return 0;
    };
    let _ = e.join(pattern, Encoding::Ooo, None, true);
    let _ = e.join(Pattern::Subtree("a".into()), Encoding::Sse, Some(0), true);
    let mut frames = 0;
    for (i, (m, p, b)) in [
        ("POST", "/a/*", "{\"x\":1}"),
        ("POST", "/a/b?ttl=1", "[1]"),
        ("PATCH", "/a/b", "{}"),
    ]
    .iter()
    .enumerate()
    {
        let Ok(req) = http::Request::builder()
            .method(*m)
            .uri(*p)
            .body(Bytes::from_static(b.as_bytes()))
        else {
            return 0;
        };
        let out = handle(&mut e, Tick::from_wall(now + i as i64), &req);
        e.publish(&out.changes);
        while e.poll_frame().is_some() {
            frames += 1;
        }
    }
    let expired = e.handle_timeout(Tick::from_wall(now + 2_000_000_000));
    e.publish(&expired);
    frames
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_runs_natively() {
        assert!(super::stateline_probe(1_000) >= 3);
    }
}

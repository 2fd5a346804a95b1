//! Links every path of `stateline-core` (HTTP function, store, log, pools, frames, clock, TTL)
//! into one exported function, so the `.wasm` CI builds contains the whole core and its import
//! section shows what the core needs from its host: nothing (no `env` imports, no WASI).

use bytes::Bytes;
use stateline_core::pool::Encoding;
use stateline_core::web::handle;
use stateline_core::{Config, Engine, Filters, Pattern, Tick};

/// Runs a short scenario and returns the number of frames produced (CI only checks imports).
#[no_mangle]
pub extern "C" fn stateline_probe(now: i64) -> u32 {
    // The access rules, JWT verification and JSON Schema are linked in too.
    let mut filters = Filters::new();
    let rules = stateline_core::rules::Rules::from_toml_str(
        "[auth]\nhs256_secret = \"0123456789abcdef-probe\"\n[[rule]]\npattern = \"a/**\"\nread = [\"public\", \"token\"]\nwrite = \"public\"\ndelete = \"public\"\nschema = { type = [\"object\", \"array\"] }\n",
        &stateline_core::rules::Inline,
    );
    if let Ok(r) = rules {
        if filters.set_rules(r).is_err() {
            return 0;
        }
    }
    let mut e = Engine::new(Tick::from_wall(now), Config::default(), filters);
    let token = stateline_core::token::sign_hs256(
        &serde_json::json!({"sub": "p", "exp": now / 1_000_000_000 + 60}),
        b"0123456789abcdef-probe",
    );
    let who = e.identify(Tick::from_wall(now), Some(&token));
    let Ok(pattern) = Pattern::parse("a/*") else {
        return 0;
    };
    let _ = e.join(pattern, Encoding::Ooo, None, true, &who);
    let _ = e.join_as_system(Pattern::Subtree("a".into()), Encoding::Sse, Some(0), true);
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

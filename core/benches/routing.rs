//! Core benchmark: routing changes through many pools, and encoding frames.
//!
//! `cargo bench -p stateline-core --bench routing` prints one line per measurement; the numbers
//! are recorded in docs/BENCHMARKS.md. Plain timing loops (no harness) keep the build lean; each
//! loop has a fixed count and reports the median of five rounds.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time by design

use std::hint::black_box;
use std::time::Instant;

use serde_json::{json, Value};
use stateline_core::engine::{Cond, Op};
use stateline_core::pool::{Encoding, PoolId};
use stateline_core::store::JsonText;
use stateline_core::{Config, Engine, Entry, Filters, Pattern, Store, Tick, Ttl};

fn median_ns(rounds: usize, iters: u64, mut f: impl FnMut(u64)) -> f64 {
    let mut v: Vec<f64> = (0..rounds)
        .map(|r| {
            let t = Instant::now();
            for i in 0..iters {
                f(r as u64 * iters + i);
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn set(e: &mut Engine, key: &str, value: Value, t: i64) -> Vec<stateline_core::Change> {
    e.execute_as_system(
        Tick::from_wall(t),
        Op::Set {
            key: key.into(),
            value: value.into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        },
    )
    .expect("valid write")
    .changes
}

fn routing() {
    let mut e = Engine::new(
        Tick::from_wall(0),
        Config {
            log_entries: 1000,
            ..Config::default()
        },
        Filters::new(),
    );
    let t0 = Instant::now();
    for i in 0..100_000 {
        e.join_as_system(
            Pattern::parse(&format!("obj/{i}")).unwrap(),
            Encoding::Ooo,
            None,
            true,
        )
        .unwrap();
    }
    for j in 0..1_000 {
        e.join_as_system(
            Pattern::parse(&format!("g{j}/*")).unwrap(),
            Encoding::Ooo,
            None,
            true,
        )
        .unwrap();
    }
    println!(
        "setup: 101,000 pools joined in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let keys: Vec<String> = (0..4096)
        .map(|i| {
            if i % 2 == 0 {
                format!("obj/{}", i * 24)
            } else {
                format!("g{}/x", i % 1000)
            }
        })
        .collect();
    let mut out: Vec<PoolId> = Vec::new();
    let ns = median_ns(5, 200_000, |i| {
        out.clear();
        e.pools()
            .matching(black_box(&keys[(i % 4096) as usize]), &mut out);
        black_box(&out);
    });
    println!("route one change to its pools (101,000 pools: 100,000 keys + 1,000 globs): {ns:.0} ns/change");
    let miss: Vec<String> = (0..4096).map(|i| format!("nobody/{i}")).collect();
    let ns = median_ns(5, 200_000, |i| {
        out.clear();
        e.pools()
            .matching(black_box(&miss[(i % 4096) as usize]), &mut out);
        black_box(&out);
    });
    println!("route a change no pool wants (same pools): {ns:.0} ns/change");
    let ns = median_ns(5, 20_000, |i| {
        let k = &keys[(i % 4096) as usize];
        let c = set(&mut e, k, json!({"n": i}), 10 + i as i64);
        e.publish(&c);
        while let Some(f) = e.poll_frame() {
            black_box(f);
        }
    });
    println!(
        "write + route + encode the pool's frame (small value, same pools): {ns:.0} ns/change"
    );
}

fn doc(size: usize) -> Value {
    let n = size / 64;
    Value::Object(
        (0..n)
            .map(|i| {
                (
                    format!("field{i:05}"),
                    json!(format!("value-{i:032}-padding-xx")),
                )
            })
            .collect(),
    )
}

fn frames() {
    for (label, size) in [("1 KiB", 1024), ("100 KiB", 100 * 1024)] {
        let mut e = Engine::new(Tick::from_wall(0), Config::default(), Filters::new());
        let d = doc(size);
        let bytes = serde_json::to_vec(&d).unwrap().len();
        set(&mut e, "doc", d.clone(), 1);
        let (id, _) = e
            .join_as_system(Pattern::parse("doc").unwrap(), Encoding::Ooo, None, true)
            .unwrap();
        let iters = if size > 10_000 { 500 } else { 20_000 };
        let mut frame_len = 0;
        let ns = median_ns(5, iters, |i| {
            let mut v = d.clone();
            v["field00001"] = json!(i);
            let c = set(&mut e, "doc", v, 10 + i as i64);
            e.publish(&c);
            while let Some(f) = e.poll_frame() {
                frame_len = f.bytes.len();
            }
        });
        println!("patch frame for a small change to a {label} document ({bytes} B): {ns:.0} ns per write (parse excluded; store + diff + encode), frame {frame_len} B");
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{"op":"replace","path":"/field00001","value":1}]))
                .unwrap();
        let ns = median_ns(5, iters, |_| {
            let c = e
                .execute_as_system(
                    Tick::from_wall(1),
                    Op::Patch {
                        key: "doc".into(),
                        patch: stateline_core::PatchKind::JsonPatch(patch.clone()),
                        cond: Cond::Always,
                    },
                )
                .unwrap()
                .changes;
            e.publish(&c);
            while let Some(f) = e.poll_frame() {
                frame_len = f.bytes.len();
            }
        });
        println!("RFC 6902 PATCH of a {label} document, broadcast as the patch itself: {ns:.0} ns per write, frame {frame_len} B");
        e.leave(id);
        let ns = median_ns(5, iters, |_| {
            let (id, first) = e
                .join_as_system(Pattern::parse("doc").unwrap(), Encoding::Ooo, None, true)
                .unwrap();
            black_box(first);
            e.leave(id);
        });
        println!("snapshot frame of a {label} document (new pool): {ns:.0} ns");
    }
}

fn http_writes() {
    let mut e = Engine::new(Tick::from_wall(0), Config::default(), Filters::new());
    let body = bytes::Bytes::from_static(br#"{"m":"a small value of about forty bytes"}"#);
    let paths: Vec<String> = (0..64).map(|i| format!("/bench/w{i}")).collect();
    let ns = median_ns(5, 100_000, |i| {
        let req = http::Request::post(paths[(i % 64) as usize].as_str())
            .header("content-type", "application/json")
            .body(body.clone())
            .unwrap();
        let out = stateline_core::web::handle(&mut e, Tick::from_wall(i as i64), &req);
        e.publish(&out.changes);
        black_box(out.response);
    });
    println!("HTTP POST through the pure function (parse, write, log, response), no subscribers: {ns:.0} ns");
}

// Globs answered by the store: 200,000 keys of depth 2 under one first segment with 1,000 of
// depth 3 among them, and 1,000 keys of depth 2 under another.
fn globs() {
    let mut s = Store::new(0);
    let value = || Entry::from_json(JsonText::from(&br#"{"n":1}"#[..]));
    for i in 0..200_000 {
        s.put(&format!("users/u{i:07}"), value(), 1, Ttl::Clear, None);
    }
    for i in 0..1_000 {
        s.put(
            &format!("users/u{i:07}/profile"),
            value(),
            1,
            Ttl::Clear,
            None,
        );
        s.put(&format!("teams/t{i:07}"), value(), 1, Ttl::Clear, None);
    }
    for (glob, what) in [
        ("users/*", "200,000 matches"),
        ("teams/*", "1,000 matches"),
        ("users/*/profile", "1,000 matches"),
        ("*/u0123456", "1 match"),
    ] {
        let pattern = Pattern::parse(glob).unwrap();
        let rounds = if glob == "users/*" { 5 } else { 1_000 };
        let ns = median_ns(5, rounds, |_| {
            black_box(s.scan(&pattern).count());
        });
        println!("scan the glob {glob} in 202,000 keys, {what}: {ns:.0} ns");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    http_writes();
    routing();
    frames();
    globs();
}

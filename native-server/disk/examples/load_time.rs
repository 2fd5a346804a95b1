//! Startup cost of the durable store: writes N small keys (default 1,000,000) through the same
//! path the server uses (engine changes, group commits of 10,000), then times opening the file and
//! loading it into an engine. Recorded in docs/BENCHMARKS.md.
//!
//! `cargo run --release -p stateline-disk --example load_time -- [N] [DIR] [keep]`
//!
//! With `keep`, the folder stays afterwards: a server started with `--data DIR` serves the keys
//! (`bench/scripts/restart.sh` times that and measures its memory).
#![allow(clippy::disallowed_methods)] // measures wall time by design

use std::time::Instant;

use serde_json::json;
use stateline_core::engine::{Cond, Config, Engine, Op};
use stateline_core::{Filters, Tick, Ttl};
use stateline_disk::Disk;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("stateline-load-time"));
    let _ = std::fs::remove_dir_all(&dir);
    let disk = Disk::open(&dir, 100_000).expect("open");
    let mut e = Engine::new(
        Tick::from_wall(1),
        Config {
            log_entries: 100_000,
            ..Config::default()
        },
        Filters::new(),
    );
    let t = Instant::now();
    let mut batch = Vec::new();
    for i in 0..n {
        let op = Op::Set {
            key: format!("users/u{i:07}/profile"),
            value: json!({"n": i, "name": "a small value"}).into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        };
        batch.push(
            e.execute_as_system(Tick::from_wall(1 + i as i64), op)
                .expect("valid")
                .changes,
        );
        if batch.len() == 10_000 || i + 1 == n {
            disk.commit(batch.iter().map(|b| b.as_slice()))
                .expect("commit");
            batch.clear();
            if (i + 1) % 200_000 == 0 {
                eprintln!("  wrote {} keys", i + 1);
            }
        }
    }
    let write_s = t.elapsed().as_secs_f64();
    drop(disk);
    drop(e);
    let size = std::fs::metadata(dir.join(stateline_disk::FILE_NAME))
        .map(|m| m.len())
        .unwrap_or(0);
    let t = Instant::now();
    let disk = Disk::open(&dir, 100_000).expect("reopen");
    let (store, log) = disk.load(100_000, 64 << 20).expect("load");
    let engine = Engine::restore(
        Tick::from_wall(2),
        store,
        log,
        Config::default(),
        Filters::new(),
    );
    let load_s = t.elapsed().as_secs_f64();
    assert_eq!(engine.store().len(), n);
    println!("keys: {n}; file: {:.1} MiB; write (batches of 10,000): {write_s:.1} s; open + load into memory: {load_s:.2} s ({:.2} µs/key)", size as f64 / 1048576.0, load_s * 1e6 / n as f64);
    if args.next().as_deref() != Some("keep") {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

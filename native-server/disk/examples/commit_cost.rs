//! What one durable commit costs: a single small write committed through the store the server
//! uses (redb, fsync before it returns), against appending the same change's bytes to a plain file
//! and `fdatasync`ing it (what a write-ahead log in front of redb would do per group). Both run
//! in the same folder, interleaved in rounds, so the disk is the same for both. Recorded in
//! docs/BENCHMARKS.md ("Durable writes").
//!
//! `cargo run --release -p stateline-disk --example commit_cost -- [COMMITS] [ROUNDS] [DIR]`
#![allow(clippy::disallowed_methods)] // measures wall time by design

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;
use stateline_core::codec::encode_log;
use stateline_core::engine::{Cond, Config, Engine, Op};
use stateline_core::{Filters, Tick, Ttl};
use stateline_disk::Disk;

fn main() {
    let mut args = std::env::args().skip(1);
    let commits: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("stateline-commit-cost"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the folder");
    let disk = Disk::open(&dir.join("redb"), 1_000).expect("open");
    let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
    let mut wal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("append.log"))
        .expect("open the append file");
    let mut i = 0i64;
    let mut write = |e: &mut Engine| {
        i += 1;
        let op = Op::Set {
            key: format!("bench/k{}", i % 100),
            value: json!({"n": i, "pad": "x".repeat(40)}),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        };
        e.execute_as_system(Tick::from_wall(1 + i), op)
            .expect("valid")
            .changes
    };
    let mut redb_all = Vec::new();
    let mut append_all = Vec::new();
    let mut pre_all = Vec::new();
    for round in 1..=rounds {
        let mut redb = Vec::with_capacity(commits);
        for _ in 0..commits {
            let changes = write(&mut e);
            let t = Instant::now();
            disk.commit([changes.as_slice()]).expect("commit");
            redb.push(t.elapsed());
        }
        let mut pre = Vec::with_capacity(commits);
        {
            // A file extended to its size and synced first, then overwritten in place: the
            // fdatasync has no file-size change to journal.
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.join("prealloc.log"))
                .expect("open the preallocated file");
            f.write_all_at(&vec![0u8; commits * 256], 0).expect("fill");
            f.sync_all().expect("sync");
            let mut at = 0u64;
            for _ in 0..commits {
                let changes = write(&mut e);
                let t = Instant::now();
                let mut buf = Vec::new();
                for c in &changes {
                    let rec = encode_log(c);
                    buf.extend_from_slice(&(rec.len() as u32).to_le_bytes());
                    buf.extend_from_slice(&rec);
                }
                f.write_all_at(&buf, at).expect("write");
                at += buf.len() as u64;
                f.sync_data().expect("fdatasync");
                pre.push(t.elapsed());
            }
        }
        let mut append = Vec::with_capacity(commits);
        for _ in 0..commits {
            let changes = write(&mut e);
            let t = Instant::now();
            let mut buf = Vec::new();
            for c in &changes {
                let rec = encode_log(c);
                buf.extend_from_slice(&(rec.len() as u32).to_le_bytes());
                buf.extend_from_slice(&rec);
            }
            wal.write_all(&buf).expect("append");
            wal.sync_data().expect("fdatasync");
            append.push(t.elapsed());
        }
        eprintln!(
            "round {round}: redb commit median {:?}, append+fdatasync median {:?}, preallocated {:?}",
            pct(&mut redb, 50),
            pct(&mut append, 50),
            pct(&mut pre, 50)
        );
        pre_all.extend(pre);
        redb_all.extend(redb);
        append_all.extend(append);
    }
    let (r50, r99) = (pct(&mut redb_all, 50), pct(&mut redb_all, 99));
    let (a50, a99) = (pct(&mut append_all, 50), pct(&mut append_all, 99));
    let (p50, p99) = (pct(&mut pre_all, 50), pct(&mut pre_all, 99));
    println!(
        "| one-write commit ({commits} × {rounds} rounds) | p50 | p99 | per second (1 / p50) |"
    );
    println!("|---|---|---|---|");
    for (name, p50, p99) in [
        ("redb commit (the server's `--data` path)", r50, r99),
        ("append + fdatasync of the same bytes", a50, a99),
        ("write into a preallocated file + fdatasync", p50, p99),
    ] {
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.0} |",
            ms(p50),
            ms(p99),
            1.0 / p50.as_secs_f64()
        );
    }
    println!(
        "redb / append at p50: {:.2}×",
        r50.as_secs_f64() / a50.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort_unstable();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

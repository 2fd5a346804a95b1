//! What a durable commit costs, for one write and for a group of 128 (what 128 concurrent writers
//! make), in four ways, interleaved in rounds in one folder so the disk is the same for all:
//!
//! - the store's commit (`Disk::commit`: a record in the write-ahead log and one `fdatasync`; the
//!   groups wait in memory for a checkpoint every 128 groups or 256 KiB, which applies them to
//!   redb in one synced commit);
//! - the same rows committed straight to redb with a sync (what the store did before its log);
//! - the group's bytes appended to a plain file, then `fdatasync`;
//! - the same bytes written into a file filled with zeros beforehand, then `fdatasync` (no file
//!   growth to journal: what the log does).
//!
//! Recorded in docs/BENCHMARKS.md ("Durable writes").
//!
//! `cargo run --release -p stateline-disk --example commit_cost -- [COMMITS] [ROUNDS] [DIR]`
#![allow(clippy::disallowed_methods)] // measures wall time by design

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use redb::{Database, TableDefinition};
use serde_json::json;
use stateline_core::codec::{encode_entry, encode_log};
use stateline_core::engine::{Cond, Config, Engine, Op};
use stateline_core::store::Change;
use stateline_core::{Filters, Tick, Ttl};
use stateline_disk::Disk;

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

struct Ways {
    disk: Disk,
    raw: Database,
    append: File,
    pre: File,
    pre_at: u64,
}

#[derive(Default)]
struct Times([Vec<Duration>; 4]);

const NAMES: [&str; 4] = [
    "the store's commit",
    "straight to redb with a sync",
    "append to a plain file + fdatasync",
    "write into a file filled beforehand + fdatasync",
];

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
    let pre = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("filled.log"))
        .expect("open");
    pre.write_all_at(&vec![0u8; 256 << 20], 0).expect("fill");
    pre.sync_all().expect("sync");
    let mut w = Ways {
        disk: Disk::open(&dir.join("store"), 1_000).expect("open"),
        raw: Database::create(dir.join("raw.redb")).expect("create"),
        append: OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("append.log"))
            .expect("open"),
        pre,
        pre_at: 0,
    };
    let mut e = Engine::new(Tick::from_wall(1), Config::default(), Filters::new());
    let mut i = 0i64;
    let mut write = move || {
        i += 1;
        let op = Op::Set {
            key: format!("bench/k{}", i % 10_000),
            value: json!({"n": i, "pad": "x".repeat(40)}).into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        };
        e.execute_as_system(Tick::from_wall(1 + i), op)
            .expect("valid")
            .changes
    };
    for (label, group, n) in [("one write", 1, commits), ("128 writes", 128, commits / 4)] {
        let mut t = Times::default();
        for round in 1..=rounds {
            for (way, times) in t.0.iter_mut().enumerate() {
                for _ in 0..n {
                    let batch: Vec<Vec<Change>> = (0..group).map(|_| write()).collect();
                    let start = Instant::now();
                    commit(&mut w, way, &batch);
                    times.push(start.elapsed());
                }
            }
            eprintln!("{label}: round {round}/{rounds} done");
        }
        println!("\n| {label} per commit ({n} × {rounds} rounds) | mean | p50 | p99 |");
        println!("|---|---|---|---|");
        for (name, v) in NAMES.iter().zip(t.0.iter_mut()) {
            let mean = v.iter().sum::<Duration>() / v.len() as u32;
            println!(
                "| {name} | {:.3} ms | {:.3} ms | {:.3} ms |",
                ms(mean),
                ms(pct(v, 50)),
                ms(pct(v, 99))
            );
        }
    }
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}

fn commit(w: &mut Ways, way: usize, batch: &[Vec<Change>]) {
    match way {
        0 => w
            .disk
            .commit(batch.iter().map(Vec::as_slice))
            .expect("commit"),
        1 => {
            let tx = w.raw.begin_write().expect("begin");
            {
                let mut entries = tx.open_table(ENTRIES).expect("table");
                let mut log = tx.open_table(LOG).expect("table");
                let mut meta = tx.open_table(META).expect("table");
                let mut buf = Vec::new();
                for c in batch.iter().flatten() {
                    if let Some(en) = &c.entry {
                        buf.clear();
                        encode_entry(&mut buf, en);
                        entries.insert(&*c.key, buf.as_slice()).expect("insert");
                    }
                    log.insert(c.seq, encode_log(c).as_slice()).expect("insert");
                    meta.insert("last_seq", c.seq).expect("insert");
                }
            }
            tx.commit().expect("commit");
        }
        _ => {
            let mut buf = Vec::new();
            for c in batch.iter().flatten() {
                let rec = encode_log(c);
                buf.extend_from_slice(&(rec.len() as u32).to_le_bytes());
                buf.extend_from_slice(&rec);
            }
            if way == 2 {
                w.append.write_all(&buf).expect("append");
                w.append.sync_data().expect("fdatasync");
            } else {
                w.pre.write_all_at(&buf, w.pre_at).expect("write");
                w.pre_at += buf.len() as u64;
                w.pre.sync_data().expect("fdatasync");
            }
        }
    }
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort_unstable();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

//! `stateline-bench`: drives Stateline and its peers (Redis, NATS, etcd) over real sockets on
//! 127.0.0.1, each started by the benchmark itself, and reports medians of several rounds and
//! Stateline/peer ratios measured in the same run. See docs/BENCHMARKS.md.

mod peers;
mod proto;
mod report;
mod scenarios;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;

use peers::System;

/// Runs a scenario; a failure is reported and leaves its cells empty instead of ending the run.
macro_rules! soft {
    ($what:expr, $e:expr) => {
        match $e {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("   {} failed: {e}", $what);
                None
            }
        }
    };
}

/// Stateline's benchmark against Redis, NATS and etcd.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Rounds of every scenario; tables report medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Smaller runs (1,000 idle connections, 1 round), for a quick look.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run: writes, fanout, idle, patch, durable.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "writes,fanout,idle,patch"
    )]
    only: Vec<String>,
    /// Systems to run, by name (stateline, redis, nats, etcd).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "stateline,redis,nats,etcd"
    )]
    systems: Vec<String>,
    /// Folder for results.md, results.json and the SVG plots.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Render results.md and the plot again from a results.json of an earlier run; runs nothing.
    #[arg(long)]
    from_json: Option<PathBuf>,
}

/// metric name → system → values over rounds.
pub type Results = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

fn add(r: &mut Results, metric: &str, sys: System, v: f64) {
    r.entry(metric.to_string())
        .or_default()
        .entry(sys.name().to_string())
        .or_default()
        .push(v);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    raise_fd_limit();
    if let Err(e) = run(args).await {
        eprintln!("stateline-bench: {e}");
        std::process::exit(1);
    }
}

fn raise_fd_limit() {
    // 10,000 idle connections need more descriptors than the usual soft limit of 1024.
    let _ = std::process::Command::new("true").status();
    #[cfg(target_os = "linux")]
    {
        if let Ok(s) = std::fs::read_to_string("/proc/self/limits") {
            if let Some(l) = s.lines().find(|l| l.starts_with("Max open files")) {
                eprintln!(
                    "open files limit: {}",
                    l.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" / ")
                );
            }
        }
    }
}

/// The writes scenario at each connection count, recorded under two metric names (`{}` is the
/// count); a failed count is reported and skipped.
async fn write_series(
    r: &mut Results,
    run: &peers::Running,
    counts: &[usize],
    rate: &str,
    p99: &str,
) {
    for &conns in counts {
        let Some(w) = soft!("writes", scenarios::writes(run, conns, 3.0).await) else {
            continue;
        };
        eprintln!(
            "   writes x{conns}: {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} errors)",
            w.ops_per_sec, w.p50_ms, w.p99_ms, w.errors
        );
        add(
            r,
            &rate.replace("{}", &conns.to_string()),
            run.system,
            w.ops_per_sec,
        );
        add(
            r,
            &p99.replace("{}", &conns.to_string()),
            run.system,
            w.p99_ms,
        );
    }
}

fn render(args: &Args, r: &Results, systems: &[System]) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let md = report::markdown(r, systems);
    std::fs::write(args.out.join("results.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("results.json"), report::json(r)).map_err(|e| e.to_string())?;
    if r.keys().any(|k| k.starts_with("p99 ms, key")) {
        std::fs::write(
            args.out.join("latency.svg"),
            report::latency_svg(r, systems, &[10, 100, 1000]),
        )
        .map_err(|e| e.to_string())?;
    }
    println!("{md}");
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(path) = &args.from_json {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let r: Results =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut systems = vec![System::Stateline, System::Redis, System::Nats, System::Etcd];
        if r.values().any(|m| m.contains_key("stateline-durable")) {
            systems.extend([System::StatelineDurable, System::RedisAof]);
        }
        return render(&args, &r, &systems);
    }
    let want = |s: &str| args.only.iter().any(|o| o == s);
    let systems: Vec<System> = args
        .systems
        .iter()
        .map(|s| match s.as_str() {
            "stateline" => Ok(System::Stateline),
            "redis" => Ok(System::Redis),
            "nats" => Ok(System::Nats),
            "etcd" => Ok(System::Etcd),
            other => Err(format!("unknown system {other}")),
        })
        .collect::<Result<_, _>>()?;
    let rounds = if args.quick { 1 } else { args.rounds };
    let idle_sizes: &[usize] = if args.quick { &[1000] } else { &[1000, 10_000] };
    let sub_counts: &[usize] = &[10, 100, 1000];
    let mut r = Results::new();
    for round in 0..rounds {
        for &sys in &systems {
            let tag = format!("{round}");
            eprintln!(
                "== round {}/{rounds}: {} ({})",
                round + 1,
                sys.name(),
                sys.durability()
            );
            let run = peers::start(sys, &tag).await?;
            if want("writes") && matches!(sys, System::Stateline | System::Redis) {
                write_series(
                    &mut r,
                    &run,
                    &[1, 16, 64],
                    "writes/s, {} conns",
                    "write p99 ms, {} conns",
                )
                .await;
            }
            if want("fanout") {
                for &subs in sub_counts {
                    let Some(f) = soft!(
                        "fanout",
                        scenarios::fanout(&run, subs, false, 2000, 1000, &format!("{tag}k{subs}"))
                            .await
                    ) else {
                        continue;
                    };
                    eprintln!("   fanout key {subs} subs @1000/s: p50 {:.2} p99 {:.2} max {:.2} ms, {:.0} msg/s, lost {} dup {}", f.p50_ms, f.p99_ms, f.max_ms, f.delivered_per_sec, f.lost, f.duplicated);
                    add(
                        &mut r,
                        &format!("writes/s achieved, key, {subs} subs (target 1000)"),
                        sys,
                        f.writes_per_sec,
                    );
                    add(
                        &mut r,
                        &format!("p50 ms, key, {subs} subs @1000/s"),
                        sys,
                        f.p50_ms,
                    );
                    add(
                        &mut r,
                        &format!("p99 ms, key, {subs} subs @1000/s"),
                        sys,
                        f.p99_ms,
                    );
                    add(
                        &mut r,
                        &format!("max ms, key, {subs} subs @1000/s"),
                        sys,
                        f.max_ms,
                    );
                    add(
                        &mut r,
                        &format!("lost+dup, key, {subs} subs"),
                        sys,
                        (f.lost + f.duplicated) as f64,
                    );
                }
                let Some(g) = soft!(
                    "fanout",
                    scenarios::fanout(&run, 1000, true, 2000, 1000, &format!("{tag}g")).await
                ) else {
                    continue;
                };
                eprintln!("   fanout glob 1000 subs @1000/s: p50 {:.2} p99 {:.2} max {:.2} ms, lost {} dup {}", g.p50_ms, g.p99_ms, g.max_ms, g.lost, g.duplicated);
                add(&mut r, "p99 ms, glob, 1000 subs @1000/s", sys, g.p99_ms);
                add(
                    &mut r,
                    "lost+dup, glob, 1000 subs",
                    sys,
                    (g.lost + g.duplicated) as f64,
                );
                let Some(s) = soft!(
                    "fanout",
                    scenarios::fanout(&run, 1000, false, 3000, 0, &format!("{tag}s")).await
                ) else {
                    continue;
                };
                eprintln!("   fanout key 1000 subs, writer unthrottled: {:.0} delivered msg/s, p99 {:.2} ms, lost {} dup {}", s.delivered_per_sec, s.p99_ms, s.lost, s.duplicated);
                add(
                    &mut r,
                    "delivered msg/s, key, 1000 subs, unthrottled",
                    sys,
                    s.delivered_per_sec,
                );
                add(
                    &mut r,
                    "lost+dup, key, 1000 subs, unthrottled",
                    sys,
                    (s.lost + s.duplicated) as f64,
                );
            }
            if want("idle") {
                // Each measurement on a fresh process: memory freed by earlier scenarios would
                // otherwise be reused by the allocator and hide the cost of new connections.
                for &n in idle_sizes {
                    let fresh = peers::start(sys, &format!("{tag}iw{n}")).await?;
                    let Some(b) = soft!(
                        "idle",
                        scenarios::idle(&fresh, n, false, &format!("{tag}w{n}")).await
                    ) else {
                        continue;
                    };
                    fresh.stop().await;
                    eprintln!("   idle {n}: {:.0} B per subscriber", b);
                    add(&mut r, &format!("bytes per idle subscriber, {n}"), sys, b);
                    if matches!(sys, System::Stateline) {
                        let fresh = peers::start(sys, &format!("{tag}is{n}")).await?;
                        let Some(b) = soft!(
                            "idle",
                            scenarios::idle(&fresh, n, true, &format!("{tag}s{n}")).await
                        ) else {
                            continue;
                        };
                        fresh.stop().await;
                        eprintln!("   idle SSE {n}: {:.0} B per stream", b);
                        r.entry(format!("bytes per idle subscriber, {n}"))
                            .or_default()
                            .entry("stateline-sse".into())
                            .or_default()
                            .push(b);
                    }
                }
            }
            if want("patch") {
                let Some(b) = soft!("patch_bytes", scenarios::patch_bytes(&run, 20, &tag).await)
                else {
                    continue;
                };
                eprintln!(
                    "   patch: {:.0} B on the wire per update of a ~100 KiB document",
                    b
                );
                add(
                    &mut r,
                    "bytes per update, 100 KiB doc, small change",
                    sys,
                    b,
                );
            }
            run.stop().await;
        }
    }
    if want("durable") {
        // Acknowledged durable writes against in-memory mode and Redis appendfsync always.
        for round in 0..rounds {
            for sys in [
                System::StatelineDurable,
                System::Stateline,
                System::RedisAof,
                System::Redis,
            ] {
                eprintln!(
                    "== durable round {}/{rounds}: {} ({})",
                    round + 1,
                    sys.name(),
                    sys.durability()
                );
                let run = peers::start(sys, &format!("d{round}")).await?;
                write_series(
                    &mut r,
                    &run,
                    &[1, 16, 128],
                    "acknowledged writes/s, {} writers",
                    "acknowledged write p99 ms, {} writers",
                )
                .await;
                run.stop().await;
            }
        }
    }
    let mut systems = systems;
    if want("durable") {
        systems.extend([System::StatelineDurable, System::RedisAof]);
        if !systems.contains(&System::Redis) {
            systems.push(System::Redis);
        }
    }
    let _ = sub_counts;
    render(&args, &r, &systems)
}

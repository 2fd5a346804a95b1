//! `stateline-bench`: drives Stateline and its peers (Redis, NATS, etcd) over real sockets on
//! 127.0.0.1, each started by the benchmark itself, and reports medians of several rounds and
//! Stateline/peer ratios measured in the same run. See docs/BENCHMARKS.md.

mod cluster;
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
/// The scenarios `--only` knows.
const SCENARIOS: [&str; 9] = [
    "writes", "reads", "fanout", "idle", "patch", "deflate", "keys", "durable", "cluster",
];

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Rounds of every scenario; tables report medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Smaller runs (1,000 idle connections, 1 round), for a quick look.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run: writes, reads, fanout, idle, patch, deflate, keys, durable, cluster.
    /// The cluster scenario's results go to cluster.md and cluster.json, the others' to
    /// results.md and results.json. An unknown name is refused (a typo would run nothing).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "writes,reads,fanout,idle,patch,deflate,keys",
        value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS)
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
    /// Render results.md and the plot again from a results.json of an earlier run (or
    /// cluster.md from a cluster.json); runs nothing.
    #[arg(long)]
    from_json: Option<PathBuf>,
    /// The cluster scenario's deployments: stateline (--memory), stateline-durable (--data),
    /// stateline-cluster-1, stateline-cluster-3.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "stateline,stateline-durable,stateline-cluster-1,stateline-cluster-3"
    )]
    cluster_systems: Vec<String>,
    /// Keys written in the keys scenario (memory per stored key), each a 56-byte JSON object.
    #[arg(long, default_value_t = 200_000)]
    keys: u64,
    /// Keys written before a fresh node starts, in the cluster scenario's catch-up measurement.
    #[arg(long, default_value_t = 100_000)]
    catchup_keys: u64,
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

/// The writes scenario (or with `read` the reads scenario) at each connection count, recorded
/// under two metric names (`{}` is the count); a failed count is reported and skipped.
async fn write_series(
    r: &mut Results,
    run: &peers::Running,
    counts: &[usize],
    read: bool,
    rate: &str,
    p99: &str,
) {
    let what = if read { "reads" } else { "writes" };
    for &conns in counts {
        let w = if read {
            scenarios::reads(run, conns, 3.0).await
        } else {
            scenarios::writes(run, conns, 3.0).await
        };
        let Some(w) = soft!(what, w) else {
            continue;
        };
        eprintln!(
            "   {what} x{conns}: {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} errors)",
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

/// WebSocket compression on the ~100 KiB document, one server with `--ws-deflate`: subscribers
/// that offer it (recorded as `stateline-deflate`) against subscribers that do not
/// (`stateline`), for a small change (100 subscribers) and for every field changed (10).
async fn deflate_series(r: &mut Results, tag: &str) -> Result<(), String> {
    let run = peers::start_with(
        System::Stateline,
        &format!("{tag}deflate"),
        &["--ws-deflate"],
    )
    .await?;
    for (whole, subs, updates, what) in [
        (false, 100, 200, "small change, 100 subs"),
        (true, 10, 50, "every field changed, 10 subs"),
    ] {
        for offer in [false, true] {
            let Some(c) = soft!(
                "deflate",
                scenarios::deflate_cost(&run, subs, updates, whole, offer, tag).await
            ) else {
                continue;
            };
            let col = if offer {
                "stateline-deflate"
            } else {
                "stateline"
            };
            eprintln!(
                "   {col} ({what}): {:.0} B per update per subscriber, first frame {:.0} B, {:.0} µs server CPU per update",
                c.wire_per_update, c.first_frame, c.cpu_us_per_update
            );
            let mut put = |metric: String, v: f64| {
                r.entry(metric)
                    .or_default()
                    .entry(col.into())
                    .or_default()
                    .push(v)
            };
            put(
                format!("ws wire bytes per update per subscriber, 100 KiB doc, {what}"),
                c.wire_per_update,
            );
            put(
                format!("ws server CPU µs per update, 100 KiB doc, {what}"),
                c.cpu_us_per_update,
            );
            if !whole {
                put(
                    "ws wire bytes of the first frame, 100 KiB doc".into(),
                    c.first_frame,
                );
            }
        }
    }
    run.stop().await;
    Ok(())
}

/// Writes cluster.md and cluster.json (the cluster scenario's results).
fn render_cluster(args: &Args, r: &Results, systems: &[System]) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let md = report::cluster_markdown(r, systems);
    std::fs::write(args.out.join("cluster.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("cluster.json"), report::json(r)).map_err(|e| e.to_string())?;
    println!("{md}");
    Ok(())
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
        if r.values()
            .any(|m| m.keys().any(|s| s.starts_with("stateline-cluster")))
        {
            return render_cluster(&args, &r, &CLUSTER_SYSTEMS);
        }
        let mut systems = vec![System::Stateline, System::Redis, System::Nats, System::Etcd];
        if r.values().any(|m| m.contains_key("stateline-durable")) {
            systems.extend([System::StatelineDurable, System::RedisAof]);
        }
        return render(&args, &r, &systems);
    }
    let want = |s: &str| args.only.iter().any(|o| o == s);
    let cluster_systems: Vec<System> = args
        .cluster_systems
        .iter()
        .map(|s| {
            CLUSTER_SYSTEMS
                .into_iter()
                .find(|c| c.name() == s)
                .ok_or_else(|| format!("unknown cluster system {s}"))
        })
        .collect::<Result<_, _>>()?;
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
    // The scenarios that run on every system of --systems (durable and cluster start their own).
    let per_system = ["writes", "reads", "fanout", "idle", "patch", "deflate"]
        .iter()
        .any(|s| want(s));
    for round in (0..rounds).filter(|_| per_system) {
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
                    false,
                    "writes/s, {} conns",
                    "write p99 ms, {} conns",
                )
                .await;
                // Pipelining clients: 16 connections, each with 16 writes in flight.
                if let Some(w) = soft!(
                    "pipelined writes",
                    scenarios::writes_pipelined(&run, 16, 16, 3.0).await
                ) {
                    eprintln!("   writes x16, pipelined 16 deep: {w:.0}/s");
                    add(&mut r, "writes/s, 16 conns, pipelined 16 deep", sys, w);
                }
            }
            if want("reads") && matches!(sys, System::Stateline | System::Redis) {
                write_series(
                    &mut r,
                    &run,
                    &[1, 16, 64],
                    true,
                    "reads/s, {} conns",
                    "read p99 ms, {} conns",
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
                        (f.lost + f.duplicated + f.out_of_order) as f64,
                    );
                    if subs == 1000 {
                        add(
                            &mut r,
                            "updates coalesced per subscriber, key, 1000 subs @1000/s",
                            sys,
                            f.skipped_per_sub,
                        );
                    }
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
                    (g.lost + g.duplicated + g.out_of_order) as f64,
                );
                let Some(s) = soft!(
                    "fanout",
                    scenarios::fanout(&run, 1000, false, 3000, 0, &format!("{tag}s")).await
                ) else {
                    continue;
                };
                eprintln!("   fanout key 1000 subs, writer unthrottled: {:.0} writes/s acknowledged, {:.0} delivered msg/s, p50 {:.2} p99 {:.2} max {:.2} ms, lost {} dup {} out of order {}, {:.0} coalesced per subscriber", s.writes_per_sec, s.delivered_per_sec, s.p50_ms, s.p99_ms, s.max_ms, s.lost, s.duplicated, s.out_of_order, s.skipped_per_sub);
                add(
                    &mut r,
                    "writes/s acknowledged, key, 1000 subs, unthrottled",
                    sys,
                    s.writes_per_sec,
                );
                add(&mut r, "p50 ms, key, 1000 subs, unthrottled", sys, s.p50_ms);
                add(&mut r, "p99 ms, key, 1000 subs, unthrottled", sys, s.p99_ms);
                add(&mut r, "max ms, key, 1000 subs, unthrottled", sys, s.max_ms);
                add(
                    &mut r,
                    "updates coalesced per subscriber, key, 1000 subs, unthrottled",
                    sys,
                    s.skipped_per_sub,
                );
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
                    (s.lost + s.duplicated + s.out_of_order) as f64,
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
            if want("deflate") && sys == System::Stateline {
                deflate_series(&mut r, &tag).await?;
            }
            run.stop().await;
        }
    }
    if want("durable") {
        // Acknowledged durable writes against in-memory mode and Redis appendfsync always.
        // Stateline's two modes if --systems has stateline, Redis's two if it has redis.
        let durable_systems: Vec<System> = [
            System::StatelineDurable,
            System::Stateline,
            System::RedisAof,
            System::Redis,
        ]
        .into_iter()
        .filter(|s| match s {
            System::RedisAof | System::Redis => systems.contains(&System::Redis),
            _ => systems.contains(&System::Stateline),
        })
        .collect();
        for round in 0..rounds {
            for &sys in &durable_systems {
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
                    false,
                    "acknowledged writes/s, {} writers",
                    "acknowledged write p99 ms, {} writers",
                )
                .await;
                run.stop().await;
            }
        }
    }
    if want("keys") {
        // Memory per stored key, each measurement on a fresh process (Stateline in memory and
        // Redis without persistence: the store's own cost, not a disk cache's).
        for round in 0..rounds {
            for sys in systems
                .iter()
                .copied()
                .filter(|s| matches!(s, System::Stateline | System::Redis))
            {
                eprintln!(
                    "== keys round {}/{rounds}: {} ({})",
                    round + 1,
                    sys.name(),
                    sys.durability()
                );
                let run = peers::start(sys, &format!("m{round}")).await?;
                let b = soft!("keys", scenarios::stored_keys(&run, args.keys, 16).await);
                run.stop().await;
                if let Some(b) = b {
                    eprintln!("   {} keys: {b:.0} B resident per key", args.keys);
                    add(
                        &mut r,
                        &format!("bytes per stored key, {}", args.keys),
                        sys,
                        b,
                    );
                }
            }
        }
    }
    let mut systems = systems;
    if want("durable") {
        if systems.contains(&System::Stateline) {
            systems.push(System::StatelineDurable);
        }
        if systems.contains(&System::Redis) {
            systems.push(System::RedisAof);
        }
    }
    let _ = sub_counts;
    if want("cluster") {
        let mut rc = Results::new();
        cluster_rounds(&mut rc, rounds, &cluster_systems, args.catchup_keys).await;
        render_cluster(&args, &rc, &cluster_systems)?;
    }
    if args.only.iter().any(|o| o != "cluster") {
        render(&args, &r, &systems)?;
    }
    Ok(())
}

/// Every deployment of the cluster scenario, in the order of its table.
const CLUSTER_SYSTEMS: [System; 4] = [
    System::Stateline,
    System::StatelineDurable,
    System::Cluster1,
    System::Cluster3,
];

/// The cluster scenario's delivery latency: subscribers (each on the glob over the 16 keys the
/// writers write), the total write rate, and the writer connections sharing it (each on its own
/// 4 keys, as one writer waiting for each acknowledgement cannot do 1,000/s through a 3-node
/// cluster: its acknowledgement takes 1–3 ms).
const CLUSTER_SUBS: usize = 100;
const CLUSTER_RATE: u64 = 1000;
const CLUSTER_WRITERS: usize = 4;

/// The cluster scenario: per round, each deployment in turn (started fresh, stopped after):
/// acknowledged writes with 16 connections over its nodes; delivery latency from a writer on
/// one node to subscribers on another at a fixed rate; then `keys` keys written and the time a
/// fresh node takes to serve them.
async fn cluster_rounds(r: &mut Results, rounds: usize, systems: &[System], keys: u64) {
    for round in 0..rounds {
        for &sys in systems {
            eprintln!(
                "== cluster round {}/{rounds}: {} ({})",
                round + 1,
                sys.name(),
                sys.durability()
            );
            let tag = format!("c{round}");
            let Some(mut d) = soft!("start", cluster::Deployment::start(sys, &tag).await) else {
                continue;
            };
            let addrs = d.addrs();
            let (nats0, nodes0) = d.cpu();
            let me0 = cluster::cpu_secs(std::process::id());
            if let Some(w) = soft!("writes", scenarios::writes_to(sys, &addrs, 16, 3.0).await) {
                // Where the CPU of a write goes (all processes share this machine's cores).
                let (nats1, nodes1) = d.cpu();
                let me1 = cluster::cpu_secs(std::process::id());
                let per = |a: f64, b: f64| (b - a) * 1e6 / w.count.max(1) as f64;
                let (nats_us, nodes_us, me_us) =
                    (per(nats0, nats1), per(nodes0, nodes1), per(me0, me1));
                eprintln!(
                    "   CPU per write: Stateline {nodes_us:.1} µs, NATS {nats_us:.1} µs, load generator {me_us:.1} µs"
                );
                add(
                    r,
                    "CPU µs per write, Stateline process(es), 16 conns",
                    sys,
                    nodes_us,
                );
                if sys != System::Stateline && sys != System::StatelineDurable {
                    add(
                        r,
                        "CPU µs per write, NATS server(s), 16 conns",
                        sys,
                        nats_us,
                    );
                }
                add(r, "CPU µs per write, load generator, 16 conns", sys, me_us);
                eprintln!(
                    "   writes x16 over {} node(s): {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} errors)",
                    addrs.len(),
                    w.ops_per_sec,
                    w.p50_ms,
                    w.p99_ms,
                    w.errors
                );
                add(
                    r,
                    "acknowledged writes/s, 16 conns over the nodes",
                    sys,
                    w.ops_per_sec,
                );
                add(
                    r,
                    "acknowledged write p50 ms, 16 conns over the nodes",
                    sys,
                    w.p50_ms,
                );
                add(
                    r,
                    "acknowledged write p99 ms, 16 conns over the nodes",
                    sys,
                    w.p99_ms,
                );
                add(
                    r,
                    "errors (non-200), 16 conns over the nodes",
                    sys,
                    w.errors as f64,
                );
            }
            // Node A writes, node B's subscribers receive (the same node for one process).
            let at = scenarios::Endpoints {
                system: sys,
                write: addrs[0],
                subscribe: addrs[1 % addrs.len()],
            };
            let (subs, rate, writers) = (CLUSTER_SUBS, CLUSTER_RATE, CLUSTER_WRITERS);
            if let Some(f) = soft!(
                "delivery",
                scenarios::fanout_between(at, subs, true, 4000, rate, writers, &format!("{tag}x"))
                    .await
            ) {
                eprintln!("   node A ({writers} writers, {rate}/s) → {subs} glob subs on node B: p50 {:.2} p99 {:.2} max {:.2} ms, {:.0} writes/s, ack p50 {:.2} p99 {:.2} ms, lost {} dup {}", f.p50_ms, f.p99_ms, f.max_ms, f.writes_per_sec, f.ack_p50_ms, f.ack_p99_ms, f.lost, f.duplicated);
                let on = format!("{subs} subs on node B @{rate}/s");
                add(
                    r,
                    &format!("delivery p50 ms, writes on node A → {on}"),
                    sys,
                    f.p50_ms,
                );
                add(
                    r,
                    &format!("delivery p99 ms, writes on node A → {on}"),
                    sys,
                    f.p99_ms,
                );
                add(
                    r,
                    &format!("delivery max ms, writes on node A → {on}"),
                    sys,
                    f.max_ms,
                );
                add(
                    r,
                    &format!("lost+dup, {on}"),
                    sys,
                    (f.lost + f.duplicated) as f64,
                );
                add(r, &format!("write ack p50 ms @{rate}/s"), sys, f.ack_p50_ms);
                add(r, &format!("write ack p99 ms @{rate}/s"), sys, f.ack_p99_ms);
                add(
                    r,
                    &format!("writes/s achieved (target {rate}), {writers} writers"),
                    sys,
                    f.writes_per_sec,
                );
            }
            // One key, one writer as fast as acknowledged: how many writes/s one key takes, and
            // whether node B delivers every one of them.
            if let Some(f) = soft!(
                "one key",
                scenarios::fanout_between(at, subs, false, 2000, 0, 1, &format!("{tag}o")).await
            ) {
                eprintln!("   one key, one writer on node A unthrottled → {subs} subs on node B: {:.0} writes/s, delivery p50 {:.2} p99 {:.2} ms, lost {} dup {}", f.writes_per_sec, f.p50_ms, f.p99_ms, f.lost, f.duplicated);
                let one = format!("one key, one writer unthrottled, {subs} subs on node B");
                add(r, &format!("writes/s, {one}"), sys, f.writes_per_sec);
                add(r, &format!("delivery p99 ms, {one}"), sys, f.p99_ms);
                add(
                    r,
                    &format!("lost+dup, {one}"),
                    sys,
                    (f.lost + f.duplicated) as f64,
                );
            }
            if matches!(
                sys,
                System::StatelineDurable | System::Cluster1 | System::Cluster3
            ) {
                let fill = soft!(
                    "fill",
                    scenarios::fill(&addrs, &format!("catchup{round}"), keys, 16).await
                );
                if let Some(rate) = fill {
                    eprintln!("   {keys} keys written: {rate:.0}/s (16 conns over the nodes)");
                    add(
                        r,
                        &format!("fill writes/s, {keys} keys, 16 conns"),
                        sys,
                        rate,
                    );
                    if let Some((ms, logged)) = soft!("fresh node", d.time_fresh_node().await) {
                        eprintln!(
                            "   a fresh node serves {keys} keys after {ms:.0} ms (its log: {} ms)",
                            logged.map_or("–".into(), |l| format!("{l:.0}"))
                        );
                        add(r, &format!("start → /_health 200 ms, {keys} keys"), sys, ms);
                        if let Some(l) = logged {
                            add(
                                r,
                                &format!("caught up / store loaded ms (its log), {keys} keys"),
                                sys,
                                l,
                            );
                        }
                    }
                }
            }
            for w in d.warnings(10) {
                eprintln!("   log: {w}");
            }
            d.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_takes_known_scenarios_and_refuses_others() {
        let a = Args::try_parse_from(["stateline-bench", "--only", "writes,durable"]).unwrap();
        assert_eq!(a.only, ["writes", "durable"]);
        let d = Args::try_parse_from(["stateline-bench"]).unwrap();
        assert!(d.only.iter().all(|o| SCENARIOS.contains(&o.as_str())));
        let e = Args::try_parse_from(["stateline-bench", "--only", "writs"]).unwrap_err();
        assert!(e.to_string().contains("writs"), "{e}");
    }
}

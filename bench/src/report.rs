//! Medians, ratios, a markdown table and an SVG plot of latency against subscriber count.

use crate::peers::System;
use crate::Results;

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

pub fn markdown(r: &Results, systems: &[System]) -> String {
    let mut cols: Vec<String> = systems.iter().map(|s| s.name().to_string()).collect();
    if r.values().any(|m| m.contains_key("stateline-sse")) {
        cols.insert(1, "stateline-sse".into());
    }
    if r.values().any(|m| m.contains_key("stateline-deflate")) {
        cols.insert(1, "stateline-deflate".into());
    }
    let peers: Vec<&String> = cols
        .iter()
        .filter(|c| !c.starts_with("stateline"))
        .collect();
    let mut out = String::from("| metric (median) | ");
    out.push_str(&cols.join(" | "));
    for p in &peers {
        if p.as_str() == "redis-aof-always" {
            out.push_str(" | stateline-durable/redis-aof-always");
        } else {
            out.push_str(&format!(" | stateline/{p}"));
        }
    }
    out.push_str(" |\n|---");
    for _ in 0..cols.len() + peers.len() {
        out.push_str("|---");
    }
    out.push_str("|\n");
    for (metric, by) in r {
        out.push_str(&format!("| {metric} |"));
        for c in &cols {
            out.push_str(&format!(
                " {} |",
                by.get(c).map_or("–".into(), |v| fmt(median(v)))
            ));
        }
        for p in &peers {
            // Durable peers are compared with durable Stateline, the rest with in-memory Stateline.
            let mine = if p.as_str() == "redis-aof-always" {
                "stateline-durable"
            } else {
                "stateline"
            };
            let s = by.get(mine).map(|v| median(v));
            let ratio = match (s, by.get(*p).map(|v| median(v))) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            };
            out.push_str(&format!(" {ratio} |"));
        }
        out.push('\n');
    }
    durability(&mut out, "Durability of each system in this run", systems);
    out
}

/// The cluster scenario's table: one column per deployment, then each cluster against the
/// single in-memory process and the 3-node cluster against the 1-node one.
pub fn cluster_markdown(r: &Results, systems: &[System]) -> String {
    let cols: Vec<&str> = systems.iter().map(|s| s.name()).collect();
    let ratios: Vec<(&str, &str)> = [
        ("stateline-cluster-1", "stateline"),
        ("stateline-cluster-3", "stateline"),
        ("stateline-cluster-3", "stateline-cluster-1"),
    ]
    .into_iter()
    .filter(|(a, b)| cols.contains(a) && cols.contains(b))
    .collect();
    let mut out = String::from("| metric (median) | ");
    out.push_str(&cols.join(" | "));
    for (a, b) in &ratios {
        out.push_str(&format!(" | {a}/{b}"));
    }
    out.push_str(" |\n|---");
    for _ in 0..cols.len() + ratios.len() {
        out.push_str("|---");
    }
    out.push_str("|\n");
    for (metric, by) in r {
        // Lost and duplicated messages and errors are summed over the rounds: a median would hide a loss
        // seen in one round of three.
        let sum = metric.starts_with("lost+dup") || metric.starts_with("errors");
        let agg = |v: &Vec<f64>| if sum { v.iter().sum() } else { median(v) };
        if sum {
            out.push_str(&format!("| {metric} (sum of all rounds) |"));
        } else {
            out.push_str(&format!("| {metric} |"));
        }
        for c in &cols {
            out.push_str(&format!(
                " {} |",
                by.get(*c).map_or("–".into(), |v| fmt(agg(v)))
            ));
        }
        for (a, b) in &ratios {
            let ratio = match (by.get(*a).map(agg), by.get(*b).map(agg)) {
                (Some(x), Some(y)) if y > 0.0 && !sum => format!("{:.2}", x / y),
                _ => "–".into(),
            };
            out.push_str(&format!(" {ratio} |"));
        }
        out.push('\n');
    }
    durability(&mut out, "How each keeps its data in this run", systems);
    out
}

// The line that says how each system keeps its data.
fn durability(out: &mut String, label: &str, systems: &[System]) {
    out.push_str(&format!("\n{label}: "));
    out.push_str(
        &systems
            .iter()
            .map(|s| format!("{}: {}", s.name(), s.durability()))
            .collect::<Vec<_>>()
            .join("; "),
    );
    out.push('\n');
}

pub fn json(r: &Results) -> String {
    serde_json::to_string_pretty(r).unwrap_or_default()
}

/// A plotted line: its label, its points, and whether it is drawn solid.
type Series = (String, Vec<(f64, f64)>, bool);

/// p50 and p99 delivery latency (ms, log scale) against subscribers (log scale), one line per system.
pub fn latency_svg(r: &Results, systems: &[System], subs: &[usize]) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 400.0, 60.0, 50.0, 30.0, 150.0);
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"];
    let series: Vec<Series> = systems
        .iter()
        .flat_map(|s| {
            [("p99", true), ("p50", false)].map(|(q, solid)| {
                let pts = subs
                    .iter()
                    .filter_map(|n| {
                        let m = r
                            .get(&format!("{q} ms, key, {n} subs @1000/s"))?
                            .get(s.name())?;
                        Some((*n as f64, median(m)))
                    })
                    .collect();
                (format!("{} {q}", s.name()), pts, solid)
            })
        })
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .filter(|y| *y > 0.0)
        .collect();
    let ymin = ys
        .iter()
        .cloned()
        .fold(f64::MAX, f64::min)
        .max(0.01)
        .log10()
        .floor();
    let ymax = ys
        .iter()
        .cloned()
        .fold(0.01, f64::max)
        .log10()
        .ceil()
        .max(ymin + 1.0);
    let xmin = (*subs.first().unwrap_or(&1) as f64).log10();
    let xmax = (*subs.last().unwrap_or(&10) as f64).log10().max(xmin + 1.0);
    let px = |x: f64| left + (x.log10() - xmin) / (xmax - xmin) * (w - left - right);
    let py =
        |y: f64| top + (1.0 - (y.max(0.001).log10() - ymin) / (ymax - ymin)) * (h - top - bottom);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s.push_str(&format!("<text x=\"{left}\" y=\"18\" font-size=\"14\">Delivery latency vs subscribers (one key, 1,000 writes/s; solid p99, dashed p50)</text>\n"));
    let mut e = ymin;
    while e <= ymax {
        let y = py(10f64.powf(e));
        s.push_str(&format!("<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} ms</text>\n", w - right, left - 5.0, y + 4.0, 10f64.powf(e)));
        e += 1.0;
    }
    for n in subs {
        let x = px(*n as f64);
        s.push_str(&format!("<line x1=\"{x}\" x2=\"{x}\" y1=\"{top}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{n}</text>\n", h - bottom, h - bottom + 16.0));
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">subscribers</text>\n",
        (left + w - right) / 2.0,
        h - 10.0
    ));
    for (i, (name, pts, solid)) in series.iter().enumerate() {
        let color = colors[(i / 2) % colors.len()];
        let d: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let dash = if *solid {
            ""
        } else {
            " stroke-dasharray=\"5,4\""
        };
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
            d.join(" ")
        ));
        let ly = top + 16.0 * i as f64;
        s.push_str(&format!("<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{name}</text>\n", w - right + 10.0, w - right + 30.0, w - right + 35.0, ly + 4.0));
    }
    s.push_str("</svg>\n");
    s
}

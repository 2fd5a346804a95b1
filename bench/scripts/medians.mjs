// Medians per metric and variant of the runs bench/scripts/interleave.sh left in a folder
// (<variant>-<round>/results.json), with every round's value, as a Markdown table; with
// `--ratio a/b` (repeatable) also each metric's ratio of variant a to variant b within each
// round, and their median: a ratio in the same round is what the benchmark's targets compare,
// and it cancels most of the machine's drift between rounds.
//   node bench/scripts/medians.mjs target/interleave [--ratio after/redis]
import { readdirSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

// { metric row -> { variant -> { round -> [values] } } } from the folder's runs. A metric
// measured for two systems in one run (Stateline in memory and durable, Redis without and with
// its log) gets a row for each; the run's first system keeps the metric's name, the other's row
// is "metric (system)".
export function collect(dir) {
  const runs = readdirSync(dir)
    .map((d) => ({ d, m: /^(.*)-(\d+)$/.exec(d) }))
    .filter(({ d, m }) => m && existsSync(join(dir, d, "results.json")));
  const values = {};
  const variants = [];
  for (const { d, m } of runs.sort((a, b) => Number(a.m[2]) - Number(b.m[2]))) {
    const [, variant, round] = m;
    if (!variants.includes(variant)) variants.push(variant);
    const json = JSON.parse(readFileSync(join(dir, d, "results.json"), "utf8"));
    for (const [metric, bySystem] of Object.entries(json)) {
      const systems = Object.keys(bySystem);
      for (const [system, vs] of Object.entries(bySystem)) {
        const row = systems.length > 1 && system !== systems[0] ? `${metric} (${system})` : metric;
        (((values[row] ??= {})[variant] ??= {})[round] ??= []).push(...vs);
      }
    }
  }
  return { values, variants };
}

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
};

const all = (byRound) => Object.values(byRound ?? {}).flat();

// The rows of variant `a` paired with those of variant `b`, as [label, a's row, b's row]: the
// same row where both have it; and for a metric that each of the two has under one system of its
// own ("m (stateline-durable)" against "m (redis-aof-always)"), those two rows.
export function pairs(values, a, b) {
  const out = [];
  const own = {}; // metric -> { [variant]: [system, ...] }, rows only one of the two has
  for (const [row, byVariant] of Object.entries(values)) {
    if (byVariant[a] && byVariant[b]) {
      out.push([row, row, row]);
      continue;
    }
    const m = /^(.*) \(([^()]+)\)$/.exec(row);
    const v = byVariant[a] ? a : byVariant[b] ? b : null;
    if (m && v) ((own[m[1]] ??= {})[v] ??= []).push(m[2]);
  }
  for (const [metric, systems] of Object.entries(own)) {
    const [sa, sb] = [systems[a] ?? [], systems[b] ?? []];
    if (sa.length === 1 && sb.length === 1) {
      out.push([`${metric} (${sa[0]} / ${sb[0]})`, `${metric} (${sa[0]})`, `${metric} (${sb[0]})`]);
    }
  }
  return out.sort((x, y) => (x[0] < y[0] ? -1 : 1));
}

// Per-round ratios of a's row to b's row (rounds that have both), each round's own median.
export function ratios(values, rowA, rowB, a, b) {
  const ra = values[rowA][a];
  const rb = values[rowB][b];
  return Object.keys(ra)
    .filter((r) => rb[r]?.length && ra[r].length)
    .sort((x, y) => Number(x) - Number(y))
    .map((r) => median(ra[r]) / median(rb[r]))
    .filter((x) => Number.isFinite(x));
}

const fmt = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(2));

// `a/b` as [a, b] when both are among `variants`; anything else throws.
export function ratioNames(spec, variants) {
  const parts = spec.split("/");
  if (parts.length !== 2 || !parts.every((n) => variants.includes(n))) {
    const names = variants.join(", ");
    throw new Error(`--ratio ${spec}: expected two of the variants (${names}) as a/b`);
  }
  return parts;
}

export function render(dir, ratioArgs = []) {
  const { values, variants } = collect(dir);
  const lines = [];
  lines.push(`| metric (median of rounds) | ${variants.join(" | ")} |`);
  lines.push(`|---|${variants.map(() => "---").join("|")}|`);
  for (const metric of Object.keys(values).sort()) {
    const cells = variants.map((v) => {
      const xs = all(values[metric][v]);
      return xs.length ? `${fmt(median(xs))} (${xs.map(fmt).join(", ")})` : "–";
    });
    lines.push(`| ${metric} | ${cells.join(" | ")} |`);
  }
  for (const spec of ratioArgs) {
    const [a, b] = ratioNames(spec, variants);
    lines.push("");
    lines.push(`| metric: ${a} / ${b}, median of the rounds' ratios | ${a} / ${b} (each round) |`);
    lines.push("|---|---|");
    for (const [label, rowA, rowB] of pairs(values, a, b)) {
      const rs = ratios(values, rowA, rowB, a, b);
      if (!rs.length) continue;
      const each = rs.map((x) => x.toFixed(2)).join(", ");
      lines.push(`| ${label} | ${median(rs).toFixed(2)} (${each}) |`);
    }
  }
  return lines.join("\n");
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const args = process.argv.slice(2);
  const ratioArgs = [];
  let dir = "target/interleave";
  // `--check NAME,...`: only check the ratios against those variant names (interleave.sh, before
  // its rounds run).
  let check = null;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--ratio") ratioArgs.push(args[++i] ?? "");
    else if (args[i].startsWith("--ratio=")) ratioArgs.push(args[i].slice("--ratio=".length));
    else if (args[i] === "--check") check = (args[++i] ?? "").split(",");
    else dir = args[i];
  }
  try {
    if (check) ratioArgs.forEach((spec) => ratioNames(spec, check));
    else console.log(render(dir, ratioArgs));
  } catch (e) {
    console.error(e.message);
    process.exit(2);
  }
}

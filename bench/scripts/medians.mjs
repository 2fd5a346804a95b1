// Medians per metric and variant of the runs bench/scripts/interleave.sh left in a folder
// (<variant>-<round>/results.json), with every round's value, as a Markdown table.
//   node bench/scripts/medians.mjs target/interleave
import { readdirSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2] ?? "target/interleave";
const runs = readdirSync(dir)
  .map((d) => ({ d, m: /^(.*)-(\d+)$/.exec(d) }))
  .filter(({ d, m }) => m && existsSync(join(dir, d, "results.json")));
const variants = [...new Set(runs.map(({ m }) => m[1]))];
const values = {}; // metric -> variant -> [values by round]
for (const { d, m } of runs.sort((a, b) => Number(a.m[2]) - Number(b.m[2]))) {
  const json = JSON.parse(readFileSync(join(dir, d, "results.json"), "utf8"));
  for (const [metric, bySystem] of Object.entries(json)) {
    // A metric measured for two systems in one run (Stateline's WebSocket and SSE) gets a row
    // for each; the variant's own system keeps the metric's name.
    const systems = Object.keys(bySystem);
    for (const [system, vs] of Object.entries(bySystem)) {
      const row = systems.length > 1 && system !== systems[0] ? `${metric} (${system})` : metric;
      ((values[row] ??= {})[m[1]] ??= []).push(...vs);
    }
  }
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
};
const fmt = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(2));
console.log(`| metric (median of rounds) | ${variants.join(" | ")} |`);
console.log(`|---|${variants.map(() => "---").join("|")}|`);
for (const metric of Object.keys(values).sort()) {
  const cells = variants.map((v) => {
    const xs = values[metric][v];
    return xs ? `${fmt(median(xs))} (${xs.map(fmt).join(", ")})` : "–";
  });
  console.log(`| ${metric} | ${cells.join(" | ")} |`);
}

// Measures the edge worker locally in workerd: bundle size, time until a fresh workerd answers,
// and the first request to a new Durable Object (instantiation + loading its state) against
// later requests to the same object. Prints a Markdown table; `npm run edge:coldstart`.
import { readFileSync, mkdtempSync, rmSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { tmpdir } from "node:os";
import path from "node:path";
import { startEdge, root } from "./wrangler.mjs";

const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
const build = path.join(root, "edge-worker/build");
const wasm = readFileSync(path.join(build, "index_bg.wasm"));
const js = readFileSync(path.join(build, "index.js"));
const state = mkdtempSync(path.join(tmpdir(), "stateline-coldstart-"));
const rounds = Number(process.env.ROUNDS ?? 5);
const ready = [];
const first = [];
const warm = [];
for (let round = 0; round < rounds; round++) {
  const t0 = performance.now();
  const edge = await startEdge({ state });
  ready.push(performance.now() - t0);
  try {
    for (let i = 0; i < 10; i++) {
      const ns = `cold${round}x${i}x${Date.now().toString(36)}`;
      let t = performance.now();
      let r = await fetch(`${edge.url}/${ns}/k`, { method: "POST", body: "1" });
      await r.text();
      first.push(performance.now() - t);
      for (let j = 0; j < 5; j++) {
        t = performance.now();
        r = await fetch(`${edge.url}/${ns}/k`, { method: "POST", body: String(j) });
        await r.text();
        warm.push(performance.now() - t);
      }
    }
  } finally {
    await edge.stop();
  }
}
rmSync(state, { recursive: true, force: true });
const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
console.log(`| measure | value |\n|---|---|`);
console.log(`| worker wasm (wasm-opt -Oz) | ${kb(wasm.length)} raw, ${kb(gzipSync(wasm, { level: 9 }).length)} gzipped |`);
console.log(`| worker JS glue | ${kb(js.length)} raw, ${kb(gzipSync(js, { level: 9 }).length)} gzipped |`);
console.log(`| wrangler dev start → first answer (median of ${rounds}) | ${median(ready).toFixed(0)} ms |`);
console.log(`| first write to a new Durable Object (median of ${first.length}) | ${median(first).toFixed(1)} ms |`);
console.log(`| later writes to the same object (median of ${warm.length}) | ${median(warm).toFixed(1)} ms |`);

// bench/scripts/medians.mjs on a folder shaped like interleave.sh's: medians per variant, and the
// per-round ratios of `--ratio a/b` (rows paired by name, and a durable row with the peer's).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { collect, pairs, ratios, render } from "./medians.mjs";

const script = fileURLToPath(new URL("./medians.mjs", import.meta.url));

// Three rounds of two variants. `fast` is 2× `slow` in every round although the machine's speed
// drifts between rounds; round 2 of `fast` is missing (a failed run), so its ratio is left out.
// A metric of two systems lists them in the benchmark's order (sorted by name): the first keeps
// the metric's name.
function fixture() {
  const dir = mkdtempSync(join(tmpdir(), "medians-"));
  const put = (name, json) => {
    mkdirSync(join(dir, name));
    writeFileSync(join(dir, name, "results.json"), JSON.stringify(json));
  };
  const speed = { 1: 1, 2: 3, 3: 0.5 };
  for (const r of [1, 2, 3]) {
    const s = speed[r];
    put(`slow-${r}`, {
      "writes/s": { stateline: [100 * s] },
      "acknowledged writes/s": { redis: [50 * s], "redis-aof-always": [10 * s] },
    });
    if (r !== 2) {
      put(`fast-${r}`, {
        "writes/s": { stateline: [200 * s] },
        "acknowledged writes/s": { stateline: [100 * s], "stateline-durable": [5 * s] },
      });
    }
  }
  // Not a run: ignored.
  mkdirSync(join(dir, "notes"));
  return dir;
}

test("medians and per-round ratios", (t) => {
  const dir = fixture();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { values, variants } = collect(dir);
  assert.deepEqual(variants.sort(), ["fast", "slow"]);
  assert.deepEqual(values["writes/s"].slow, { 1: [100], 2: [300], 3: [50] });
  const p = pairs(values, "fast", "slow");
  assert.deepEqual(p, [
    ["acknowledged writes/s", "acknowledged writes/s", "acknowledged writes/s"],
    [
      "acknowledged writes/s (stateline-durable / redis-aof-always)",
      "acknowledged writes/s (stateline-durable)",
      "acknowledged writes/s (redis-aof-always)",
    ],
    ["writes/s", "writes/s", "writes/s"],
  ]);
  assert.deepEqual(ratios(values, "writes/s", "writes/s", "fast", "slow"), [2, 2]);
  assert.deepEqual(
    ratios(
      values,
      "acknowledged writes/s (stateline-durable)",
      "acknowledged writes/s (redis-aof-always)",
      "fast",
      "slow",
    ),
    [0.5, 0.5],
  );
  const out = render(dir, ["fast/slow"]);
  assert.match(out, /\| writes\/s \| 2\.00 \(2\.00, 2\.00\) \|/);
  assert.match(
    out,
    /\| acknowledged writes\/s \(stateline-durable \/ redis-aof-always\) \| 0\.50 \(0\.50, 0\.50\) \|/,
  );
  // The medians table: every round's value of each variant.
  assert.match(out, /\| writes\/s \| 150 \(200, 100\) \| 100 \(100, 300, 50\.00\) \|/);
});

test("the command line: --ratio, and a ratio naming no variant refused", (t) => {
  const dir = fixture();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const out = execFileSync(process.execPath, [script, dir, "--ratio", "fast/slow"], {
    encoding: "utf8",
  });
  assert.match(out, /fast \/ slow, median of the rounds' ratios/);
  const bad = spawnSync(process.execPath, [script, dir, "--ratio=fast/nope"], { encoding: "utf8" });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--ratio fast\/nope: expected two of the variants/);
  // interleave.sh's check before its rounds: the names it will run, no folder.
  const check = (spec) =>
    spawnSync(process.execPath, [script, "--check", "a,redis", "--ratio", spec], {
      encoding: "utf8",
    });
  assert.equal(check("a/redis").status, 0);
  assert.equal(check("a/redis").stdout, "");
  assert.equal(check("b/redis").status, 2);
  assert.equal(check("a/redis/x").status, 2);
});

// What one build of the JS client costs to deliver events (docs/HACKING.md, "Why events cross
// as JSON text"): the initial update of a 2,000-item glob, and 2,000 sets of 50 keys from a
// second client timed until the subscriber saw every change; each the median of 5 rounds.
// Usage: node bench/scripts/client-events.mjs <path of a build's esm/stateline.mjs> [rounds]
// It starts `target/debug/stateline serve --memory` on a free 127.0.0.1 port (STATELINE_BIN
// for another binary), fills it, measures, and stops it. Run it for two builds in turn,
// alternating, to compare them.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import WebSocket from "ws";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "../..");
const [esm, roundsArg] = process.argv.slice(2);
if (!esm) {
  console.error("usage: node bench/scripts/client-events.mjs <esm/stateline.mjs> [rounds]");
  process.exit(2);
}
const rounds = Number(roundsArg ?? 5);
const { Stateline } = await import(pathToFileURL(path.resolve(esm)).href);

const port = await new Promise((res) => {
  const s = createServer().listen(0, "127.0.0.1", () => {
    const p = s.address().port;
    s.close(() => res(p));
  });
});
const base = `http://127.0.0.1:${port}`;
const bin = process.env.STATELINE_BIN || path.join(root, "target/debug/stateline");
const server = spawn(bin, ["serve", "--memory", "--addr", `127.0.0.1:${port}`], { stdio: "ignore" });
try {
  for (let i = 0; i < 100; i++) {
    const ok = await fetch(`${base}/_health`).then((r) => r.ok, () => false);
    if (ok) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const pad = "x".repeat(80);
  for (let i = 0; i < 2000; i += 100) {
    await Promise.all(
      Array.from({ length: 100 }, (_, j) =>
        fetch(`${base}/big/k${i + j}`, { method: "POST", body: JSON.stringify({ i: i + j, pad }) }).then((r) => r.text()),
      ),
    );
  }
  const t = () => performance.now();
  const snapshot = async () => {
    const db = Stateline.connect(base, { shared: false, WebSocket });
    await db.ready;
    const s = t();
    await new Promise((res) => {
      const stop = db.subscribe("big/*", (u) => {
        if (u.initial) {
          stop();
          res();
        }
      });
    });
    const ms = t() - s;
    await db.close();
    return ms;
  };
  const updates = async (n) => {
    const db = Stateline.connect(base, { shared: false, WebSocket });
    let seen = 0;
    let done;
    const all = new Promise((r) => (done = r));
    await new Promise((res) =>
      db.subscribe("upd/*", (u) => {
        if (u.initial) res();
        else if ((seen += u.changes.length) >= n) done();
      }),
    );
    const s = t();
    const w = Stateline.connect(base, { shared: false, WebSocket });
    await Promise.all(Array.from({ length: n }, (_, i) => w.set(`upd/k${i % 50}`, { i, pad: "x".repeat(40) })));
    await all;
    const ms = t() - s;
    await db.close();
    await w.close();
    return ms;
  };
  const snaps = [];
  const ups = [];
  for (let r = 0; r < rounds; r++) {
    snaps.push(await snapshot());
    ups.push(await updates(2000));
  }
  const med = (a) => a.sort((x, y) => x - y)[a.length >> 1].toFixed(1);
  console.log(JSON.stringify({ esm, snapshotMs: med(snaps), updates2000Ms: med(ups) }));
} finally {
  server.kill();
}

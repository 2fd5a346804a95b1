// What one build of the JS client costs to deliver events (docs/HACKING.md, "Why events cross
// as JSON text"): the initial update of a 2,000-item glob, and 2,000 sets of 50 keys from a
// second client timed until the subscriber saw every change; each the median of 5 rounds.
// Usage: node bench/scripts/client-events.mjs <a build's esm/stateline.mjs, or its classic
// stateline.js to measure it in headless Chromium> [rounds]
// It starts `target/debug/stateline serve --memory` on a free 127.0.0.1 port (STATELINE_BIN
// for another binary), fills it, measures, and stops it. Run it for two builds in turn,
// alternating, to compare them.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import WebSocket from "ws";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "../..");
const [esm, roundsArg] = process.argv.slice(2);
if (!esm) {
  console.error("usage: node bench/scripts/client-events.mjs <esm/stateline.mjs | stateline.js> [rounds]");
  process.exit(2);
}
const rounds = Number(roundsArg ?? 5);

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
  let snaps, ups;
  if (esm.endsWith(".mjs")) {
    const { Stateline } = await import(pathToFileURL(path.resolve(esm)).href);
    ({ snaps, ups } = await measure(Stateline, base, rounds, WebSocket));
  } else {
    // The classic single-file script, in headless Chromium (the global WebSocket).
    const { launchChromium } = await import(pathToFileURL(path.join(root, "tests/js/harness.mjs")).href);
    const script = readFileSync(path.resolve(esm), "utf8");
    const web = createHttpServer((req, res) => res.writeHead(200, { "content-type": "text/html" }).end(`<!doctype html><script>${script}</script>`));
    await new Promise((r) => web.listen(0, "127.0.0.1", r));
    // Headless Chromium sometimes closes the page mid-run ("Target page, context or browser
    // has been closed", no crash event; cause not found): the run is made again, at most 3 times.
    for (let attempt = 1; ; attempt++) {
      const ctx = await launchChromium();
      try {
        const page = await ctx.newPage();
        await page.goto(`http://127.0.0.1:${web.address().port}/`);
        ({ snaps, ups } = await page.evaluate(`(${measure})(Stateline, ${JSON.stringify(base)}, ${rounds})`));
        break;
      } catch (e) {
        if (attempt === 3 || !/has been closed/.test(String(e))) throw e;
        console.error(`attempt ${attempt}: ${String(e).split("\n")[0]}; again`);
      } finally {
        await ctx.dispose().catch(() => {});
      }
    }
    web.close();
  }
  const med = (a) => a.sort((x, y) => x - y)[a.length >> 1].toFixed(1);
  console.log(JSON.stringify({ esm, snapshotMs: med(snaps), updates2000Ms: med(ups) }));
} finally {
  server.kill();
}

// The measurement, self-contained so that it also runs inside a page (its source is sent there).
async function measure(Stateline, base, rounds, WebSocket) {
  const t = () => performance.now();
  const snapshot = async () => {
    const db = Stateline.connect(base, WebSocket ? { shared: false, WebSocket } : { shared: false });
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
    const db = Stateline.connect(base, WebSocket ? { shared: false, WebSocket } : { shared: false });
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
    const w = Stateline.connect(base, WebSocket ? { shared: false, WebSocket } : { shared: false });
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
  return { snaps, ups };
}



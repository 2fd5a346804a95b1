// The client's npm module inside workerd (the Workers runtime, via `wrangler dev`), against a
// real native server: the `workerd` export loads its wasm as a module and speaks over the
// runtime's own fetch and WebSocket.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { freePort, root, Server, until } from "../harness.mjs";

test("the ES module works in workerd", { timeout: 120_000 }, async () => {
  const s = await new Server().start();
  const port = await freePort();
  const w = spawn(join(root, "node_modules/.bin/wrangler"), [
    "dev", join(root, "tests/js/workerd/worker.mjs"), "--name", "stateline-client-test",
    "--compatibility-date", "2026-04-20", "--local", "--ip", "127.0.0.1", "--port", String(port),
    "--show-interactive-dev-session=false",
  ], {
    cwd: join(root, "tests/js/workerd"),
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" },
  });
  let log = "";
  w.stdout.on("data", (d) => (log += d));
  w.stderr.on("data", (d) => (log += d));
  try {
    await until(async () => {
      if (w.exitCode !== null) throw new Error(`wrangler exited:\n${log}`);
      return fetch(`http://127.0.0.1:${port}/favicon.ico`).then(() => true, () => false);
    }, "wrangler dev", 60_000);
    const key = `wk${Date.now().toString(36)}/doc`;
    const r = await fetch(`http://127.0.0.1:${port}/?base=${encodeURIComponent(s.base)}&key=${key}`);
    const out = await r.json();
    assert.equal(r.status, 200, JSON.stringify(out) + log);
    assert.deepEqual(out.got.value, { n: 1 });
    assert.equal(out.cas.ok, true);
    assert.equal(out.stale.ok, false, "a stale compare-and-swap is a conflict");
    assert.deepEqual(out.updates.at(-1), { n: 2 });
    assert.deepEqual((await s.json(`/${key}`)).data, { n: 2 });
  } finally {
    const gone = new Promise((r) => w.once("exit", r));
    try { process.kill(-w.pid, "SIGTERM"); } catch {}
    await gone;
    await s.stop();
  }
});

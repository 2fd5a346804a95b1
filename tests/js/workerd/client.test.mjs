// The client's npm module inside workerd (the Workers runtime, via `wrangler dev`), against a
// real native server: the `workerd` export loads its wasm as a module and speaks over the
// runtime's own fetch and WebSocket.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { startEdge } from "../../../edge-worker/test-node/wrangler.mjs";
import { root, Server } from "../harness.mjs";

test("the ES module works in workerd", { timeout: 120_000 }, async () => {
  const s = await new Server().start();
  const state = mkdtempSync(join(tmpdir(), "stateline-workerd-client-"));
  const w = await startEdge({ state, script: join(root, "tests/js/workerd/worker.mjs") });
  try {
    const key = `wk${Date.now().toString(36)}/doc`;
    const r = await fetch(`${w.url}/?base=${encodeURIComponent(s.base)}&key=${key}`);
    const out = await r.json();
    assert.equal(r.status, 200, JSON.stringify(out) + w.output());
    assert.deepEqual(out.got.value, { n: 1 });
    assert.equal(out.cas.ok, true);
    assert.equal(out.stale.ok, false, "a stale compare-and-swap is a conflict");
    assert.deepEqual(out.updates.at(-1), { n: 2 });
    assert.deepEqual((await s.json(`/${key}`)).data, { n: 2 });
  } finally {
    await w.stop();
    await s.stop();
    rmSync(state, { recursive: true, force: true });
  }
});

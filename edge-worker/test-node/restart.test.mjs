// A write survives a restart of workerd with persisted state: value, revision, sequence and the
// change log (a client resuming from a version from before the restart gets what it missed), and
// the key history (kept in the object's SQLite table `history`), and the ids of idempotent
// writes (the table `receipts`): a push resent after the restart is answered, not applied again.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { startEdge, freePort } from "./wrangler.mjs";

test("writes survive a restart of workerd with persisted state", { timeout: 180_000 }, async () => {
  const state = mkdtempSync(path.join(tmpdir(), "stateline-edge-"));
  const port = await freePort();
  let edge = await startEdge({ port, state });
  try {
    const ns = `rs${Date.now().toString(36)}`;
    for (const v of [1, 2, 3]) {
      const r = await fetch(`${edge.url}/${ns}/doc`, { method: "POST", body: JSON.stringify({ v }) });
      assert.equal(r.status, 200, await r.text());
    }
    const del = await fetch(`${edge.url}/${ns}/gone`, { method: "POST", body: "1" });
    await del.text();
    await (await fetch(`${edge.url}/${ns}/gone`, { method: "DELETE" })).text();
    const hist = async (key) => {
      const r = await fetch(`${edge.url}/${ns}/${key}?history=10`);
      assert.equal(r.status, 200, key);
      return r.json();
    };
    const pushOnce = () => fetch(`${edge.url}/${ns}/list/*`, {
      method: "POST",
      headers: { "idempotency-key": `${ns}-push` },
      body: JSON.stringify({ m: 1 }),
    });
    const pushed = await pushOnce();
    assert.equal(pushed.status, 200);
    const pushedBody = await pushed.text();
    const docHistory = await hist("doc");
    assert.deepEqual(docHistory.map((v) => v.data), [{ v: 3 }, { v: 2 }, { v: 1 }]);
    const goneHistory = await hist("gone");
    assert.equal(goneHistory[0].deleted, true);
    const before = await fetch(`${edge.url}/${ns}/doc`);
    const version = before.headers.get("x-version");
    assert.equal(before.headers.get("x-revision"), "2");
    await before.text();
    await edge.stop();

    edge = await startEdge({ port, state });
    const r = await fetch(`${edge.url}/${ns}/doc`);
    assert.equal(r.status, 200);
    assert.deepEqual((await r.json()).data, { v: 3 });
    assert.equal(r.headers.get("x-revision"), "2");
    assert.equal(r.headers.get("x-version"), version, "the sequence survives");
    assert.deepEqual(await hist("doc"), docHistory, "the history survives");
    assert.deepEqual(await hist("gone"), goneHistory, "a deleted key's history survives");
    const again = await pushOnce();
    assert.equal(again.status, 200);
    assert.equal(await again.text(), pushedBody, "a resent push gets its first answer");
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    const list = await (await fetch(`${edge.url}/${ns}/list/*`)).json();
    assert.equal(list.length, 1, "the push was applied once");

    // A change after the restart, then a resume from the version held before it.
    const w = await fetch(`${edge.url}/${ns}/doc`, { method: "POST", body: JSON.stringify({ v: 4 }) });
    assert.equal(w.status, 200);
    await w.text();
    const ws = new WebSocket(`ws://127.0.0.1:${port}/${ns}/doc?v=${version}`);
    const frame = await new Promise((resolve, reject) => {
      ws.once("message", (m) => resolve(JSON.parse(String(m))));
      ws.once("error", reject);
      setTimeout(() => reject(new Error("no frame within 5 s")), 5000);
    });
    ws.close();
    assert.deepEqual(frame.data.data, { v: 4 });
    // The keys API still lists the namespace (its registry entry persisted too).
    const keys = await (await fetch(`${edge.url}/?api=keys&limit=500`)).json();
    assert.ok(keys.keys.includes(`${ns}/doc`), JSON.stringify(keys));
  } finally {
    await edge.stop();
    rmSync(state, { recursive: true, force: true });
  }
});

// The ES module (wasm-client/dist/esm/stateline.mjs) in Node against a real server: the API,
// subscriptions, offline writes and resume across a server restart.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Server, until } from "../harness.mjs";
import { Stateline, makeAtomKV } from "../../../wasm-client/dist/esm/stateline.mjs";

let s;
before(async () => {
  s = await new Server().start();
});
after(async () => {
  await s.stop();
});

test("writes, reads and compare-and-swap", async () => {
  const c = Stateline.connect(s.base, { shared: false });
  try {
    assert.equal((await c.set("n/a", { x: 1 })).revision, 0);
    const won = await c.update("n/a", { x: 2 }, 1);
    assert.deepEqual([won.ok, won.key, won.revision], [true, "n/a", 1]);
    assert.equal(won.etag, (await fetch(`${s.base}/n/a`)).headers.get("etag"));
    const lost = await c.update("n/a", { x: 3 }, 1);
    assert.equal(lost.ok, false);
    assert.equal(lost.conflict, true);
    assert.equal(lost.code, "revision-conflict");
    const got = await c.get("/n/a");
    assert.deepEqual([got.value, got.revision], [{ x: 2 }, 1]);
    assert.equal(await c.get("n/missing"), null);
    const pushed = await c.push("n/list", 5);
    assert.match(pushed.key, /^n\/list\/[0-9a-f]+$/);
    await c.patch("n/a", { y: 1 });
    assert.deepEqual((await c.get("n/a")).value, { x: 2, y: 1 });
    await c.patch("n/a", [{ op: "remove", path: "/x" }], { type: "json-patch" });
    assert.deepEqual((await c.get("n/a")).value, { y: 1 });
    assert.equal((await c.delete("n/a")).deleted, 1);
    await assert.rejects(c.delete("n/a"), (e) => e.code === "not-found" && e.status === 404);
    await assert.rejects(c.set("bad//key", 1), (e) => e.code === "invalid-key");
    const A = makeAtomKV(s.base);
    assert.deepEqual(await A.get("/n/none"), [null, -1]);
    assert.equal(await A.update("/n/fib", [0, 1], 0), true);
    assert.equal(await A.update("/n/fib", [1, 1], 0), false);
    assert.deepEqual(await A.get("/n/fib"), [[0, 1], 0]);
  } finally {
    await c.close();
    // AtomKV's shared connection (an open socket keeps the test process alive).
    await Stateline.connect(s.base).close();
  }
});

test("async iteration of a glob: the current value, then every change in order", async () => {
  const c = Stateline.connect(s.base, { shared: false });
  const w = Stateline.connect(s.base, { shared: false });
  try {
    await w.set("it/first", 0);
    const sub = c.subscribe("it/*");
    const first = (await sub.next()).value;
    assert.equal(first.initial, true);
    assert.deepEqual(first.value.map((i) => [i.key, i.value]), [["it/first", 0]]);
    const writes = [];
    for (let i = 1; i <= 200; i++) writes.push(w.set(`it/k${i % 7}`, i));
    await Promise.all(writes);
    const seen = [];
    // The consumer is slower than the writer: nothing may be dropped meanwhile.
    for await (const u of sub) {
      for (const ch of u.changes) seen.push(ch.value);
      if (seen.length >= 200) break;
    }
    assert.deepEqual(seen, Array.from({ length: 200 }, (_, i) => i + 1));
  } finally {
    await c.close();
    await w.close();
  }
});

test("offline writes are queued, a failed CAS is a visible conflict, and a restart resumes without loss", async () => {
  const c = Stateline.connect(s.base, { shared: false, backoffBase: 50, backoffMax: 200 });
  const states = [];
  const conflicts = [];
  c.on("state", (st) => states.push(st));
  c.on("conflict", (x) => conflicts.push(x));
  const seen = [];
  const unsub = c.subscribe("off/*", (u) => {
    for (const ch of u.changes) seen.push([ch.key, ch.value, ch.revision]);
  });
  try {
    await c.set("off/a", 1);
    await until(() => seen.length === 1, "the first change");
    await s.kill();
    await until(() => c.state === "waiting", "the client to notice");
    const queued = [c.set("off/b", 2), c.update("off/a", 99, 0)];
    // Writes reach the wasm client after the `ready` promise, a microtask later.
    await new Promise((r) => setImmediate(r));
    assert.equal(c.queued(), 2);
    await s.start();
    const [b, cas] = await Promise.all(queued);
    assert.equal(b.revision, 0);
    assert.equal(cas.ok, false);
    assert.equal(cas.conflict, true);
    assert.equal(conflicts.length, 1);
    assert.equal(conflicts[0].key, "off/a");
    await until(() => seen.length === 2, "the queued write's change");
    assert.deepEqual(seen, [["off/a", 1, 0], ["off/b", 2, 0]]);
    assert.deepEqual(states.slice(0, 3), ["connecting", "open", "waiting"]);
    assert.equal(states.at(-1), "open");
  } finally {
    unsub();
    await c.close();
  }
});

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
    // Compare-and-swap on the revision the caller read.
    const read = await c.get("n/a");
    assert.equal(read.revision, 0);
    const won = await c.update("n/a", { x: 2 }, read.revision);
    assert.deepEqual([won.ok, won.key, won.revision], [true, "n/a", 1]);
    assert.equal(won.etag, (await fetch(`${s.base}/n/a`)).headers.get("etag"));
    // The same read again is stale now: a conflict, and nothing written.
    const lost = await c.update("n/a", { x: 3 }, read.revision);
    assert.equal(lost.ok, false);
    assert.equal(lost.conflict, true);
    assert.equal(lost.code, "revision-conflict");
    const got = await c.get("/n/a");
    assert.deepEqual([got.value, got.revision], [{ x: 2 }, 1]);
    // A revision ahead of the key's is a conflict too (not a write).
    assert.equal((await c.update("n/a", { x: 4 }, 2)).ok, false);
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

test("async iteration of a glob: the current value, then its changes in order, ending at the last write", async () => {
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
    const last = new Map();
    // The consumer is slower than the writer: the iterator buffers, and the server may fold
    // frames the socket has not taken yet (docs/protocol.md §6, "Coalescing"), so the changes
    // are in order, never doubled, and end at each key's last write; some steps may be skipped.
    for await (const u of sub) {
      for (const ch of u.changes) {
        seen.push(ch.value);
        last.set(ch.key, ch.value);
      }
      if (seen.at(-1) === 200) break;
    }
    for (let j = 1; j < seen.length; j++) assert.ok(seen[j] > seen[j - 1], `in order: ${seen}`);
    for (const [key, v] of last) assert.equal(Number(key.slice(4)), v % 7, `${key} holds ${v}`);
    const expected = new Map();
    for (let i = 1; i <= 200; i++) expected.set(`it/k${i % 7}`, i);
    assert.deepEqual([...last].sort(), [...expected].sort(), "every key at its last write");
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
    // A compare-and-swap on a stale read (off/a was absent once): it must conflict.
    const queued = [c.set("off/b", 2), c.update("off/a", 99, null)];
    // Writes reach the wasm client after the `ready` promise, a microtask later.
    await until(() => c.queued() === 2, "both writes queued");
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

test("update: the revision read (null or -1 creates only if absent); AtomKV.update: the next revision", async () => {
  const c = Stateline.connect(s.base, { shared: false });
  const A = makeAtomKV(s.base);
  try {
    // Absent: null (what `get` gives) or -1 (what AtomKV.get gives) creates only if absent.
    assert.equal(await c.get("cas/a"), null);
    const made = await c.update("cas/a", 1, null);
    assert.deepEqual([made.ok, made.revision], [true, 0]);
    assert.equal((await c.update("cas/a", 2, null)).conflict, true, "exists now");
    assert.equal((await c.update("cas/b", 1, -1)).ok, true);
    assert.equal((await c.update("cas/b", 2, -1)).conflict, true);
    // A read-modify-write loop as a user writes it: read, compute, swap on the revision read.
    for (let i = 0; i < 3; i++) {
      const cur = await c.get("cas/a");
      const r = await c.update("cas/a", cur.value + 1, cur.revision);
      assert.deepEqual([r.ok, r.revision], [true, cur.revision + 1]);
    }
    assert.deepEqual([(await c.get("cas/a")).value, (await c.get("cas/a")).revision], [4, 3]);
    // The revision a subscription reported for the current value works the same way.
    const sub = c.subscribe("cas/a");
    const first = (await sub.next()).value;
    sub.unsubscribe();
    const rev = first.changes.at(-1).revision;
    assert.equal(rev, 3);
    assert.equal((await c.update("cas/a", 10, rev)).ok, true);
    // Not a revision: refused before anything is sent (no unconditional write by mistake).
    for (const bad of [undefined, "3", 1.5, -2]) {
      await assert.rejects(c.update("cas/a", 99, bad), TypeError, String(bad));
    }
    assert.deepEqual([(await c.get("cas/a")).value, (await c.get("cas/a")).revision], [10, 4]);

    // AtomKV's global keeps AtomKV's convention: the revision the key will have (read + 1).
    const [v, r] = await A.get("/cas/a");
    assert.deepEqual([v, r], [10, 4]);
    assert.equal(await A.update("/cas/a", 11, r), false, "the revision read is stale for AtomKV");
    assert.equal(await A.update("/cas/a", 11, r + 1), true);
    assert.equal(await A.update("/cas/new", 1, 0), true, "0 creates");
    assert.equal(await A.update("/cas/new", 2, 0), false);
    assert.deepEqual(await A.get("/cas/a"), [11, 5]);
  } finally {
    await c.close();
    await Stateline.connect(s.base).close();
  }
});

test("get on a glob or a subtree: its items, newest first, as GET gives them", async () => {
  const c = Stateline.connect(s.base, { shared: false });
  try {
    assert.deepEqual(await c.get("todo/*"), [], "none yet: an empty list");
    await c.set("todo/a", { t: "milk" });
    await c.set("todo/b", { t: "eggs" });
    await c.set("todo/sub/c", { t: "deep" });
    await c.set("todo/a", { t: "oat milk" });
    const server = await (await fetch(`${s.base}/todo/*`)).json();
    const glob = await c.get("todo/*");
    assert.ok(Array.isArray(glob), JSON.stringify(glob));
    assert.deepEqual(glob, server.map((m) => ({ key: m.path, value: m.data, created: m.created, updated: m.updated })));
    // Newest created first; a glob is one level.
    assert.deepEqual(glob.map((i) => [i.key, i.value]), [["todo/b", { t: "eggs" }], ["todo/a", { t: "oat milk" }]]);
    assert.ok(glob[1].updated > 0 && glob[0].updated === 0);
    // A subtree: every key below it, at any depth, newest first.
    const tree = await c.get("/todo/");
    assert.deepEqual(tree.map((i) => i.key), ["todo/sub/c", "todo/b", "todo/a"]);
    const serverTree = await (await fetch(`${s.base}/todo/`)).json();
    assert.deepEqual(tree.map((i) => i.key), serverTree.map((m) => m.path));
    // A key still reads as one value.
    assert.deepEqual((await c.get("todo/a")).value, { t: "oat milk" });
  } finally {
    await c.close();
  }
});

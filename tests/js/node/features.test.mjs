// The ES module's transactions, history, presence and disconnect writes in Node against a real
// server, including what a reconnect must keep: leases taken again, disconnect writes registered
// again (and still cancellable).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Server, sleep, until } from "../harness.mjs";
import { Stateline } from "../../../wasm-client/dist/esm/stateline.mjs";

let s;
before(async () => {
  s = await new Server().start();
});
after(async () => {
  await s.stop();
});

const ns = (p) => `${p}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
const get = async (server, key) => {
  const r = await fetch(`${server.base}/${key}`);
  return r.status === 404 ? null : (await r.json()).data;
};

test("transaction: all writes when every compare holds; precondition-failed and nothing written otherwise", async () => {
  const db = Stateline.connect(s.base, { shared: false });
  const n = ns("tx");
  try {
    await db.set(`${n}/a`, 1);
    const ok = await db.transaction({
      if: [{ key: `${n}/a`, revision: 0 }, { key: `${n}/b`, absent: true }],
      then: [{ op: "set", key: `${n}/a`, value: 2 }, { op: "set", key: `${n}/b`, value: "new" }, { op: "incr", key: `${n}/c` }],
    });
    assert.equal(ok.ok, true);
    assert.equal(ok.results.length, 3);
    assert.deepEqual([await get(s, `${n}/a`), await get(s, `${n}/b`), await get(s, `${n}/c`)], [2, "new", 1]);

    // The same compares again: the first no longer holds (a is at revision 1).
    const err = await db.transaction({
      if: [{ key: `${n}/a`, revision: 0 }],
      then: [{ op: "set", key: `${n}/a`, value: 3 }, { op: "del", key: `${n}/b` }],
    }).then(() => null, (e) => e);
    assert.ok(err, "rejected");
    assert.equal(err.name, "StatelineError");
    assert.equal(err.code, "precondition-failed");
    assert.equal(err.status, 409);
    assert.equal(err.conflict, true);
    assert.deepEqual(err.compare, { index: 0, key: `${n}/a` }, "names the compare that failed");
    assert.equal(err.body.code, "precondition-failed");
    assert.deepEqual([await get(s, `${n}/a`), await get(s, `${n}/b`)], [2, "new"], "nothing changed");

    // The builder sends the same thing.
    await db.set(`${n}/p`, { x: 0, y: 0 });
    const built = db.transaction().ifExists(`${n}/b`).ifRevision(`/${n}/a`, 1).delete(`${n}/b`).patch(`${n}/p`, { x: 1 }).push(`${n}/list`, "item");
    assert.deepEqual(built.toJSON().if, [{ key: `${n}/b`, exists: true }, { key: `/${n}/a`, revision: 1 }]);
    const r = await built.commit();
    assert.equal(r.ok, true);
    assert.equal(await get(s, `${n}/b`), null);
    assert.deepEqual(await get(s, `${n}/p`), { x: 1, y: 0 });
    assert.match(r.results[2].key, new RegExp(`^${n}/list/`));
    await assert.rejects(db.transaction().ifAbsent(`${n}/p`).set(`${n}/p`, 0).commit(), (e) => e.code === "precondition-failed");
    // A write that fails (a patch of an absent key) is refused whole too, naming the write.
    await assert.rejects(db.transaction().set(`${n}/q`, 1).patch(`${n}/absent`, { x: 1 }).commit(), (e) => e.status === 404 && e.write === 1);
    assert.equal(await get(s, `${n}/q`), null);
  } finally {
    await db.close();
  }
});

test("history: a key's versions, newest first, deletes marked; UTF-8 keys", async () => {
  const db = Stateline.connect(s.base, { shared: false });
  const key = `${ns("hist")}/doc`;
  try {
    await db.set(key, { v: 1 });
    await db.set(key, { v: 2 });
    await db.delete(key);
    await db.set(key, { v: 3 });
    const h = await db.history(key, 10);
    assert.deepEqual(h.map((v) => [v.revision, v.value, v.deleted]), [
      [h[0].revision, { v: 3 }, false],
      [h[1].revision, null, true],
      [1, { v: 2 }, false],
      [0, { v: 1 }, false],
    ]);
    assert.ok(h.every((v) => typeof v.updated === "number" && v.updated > 0));
    assert.equal((await db.history(key, 2)).length, 2);
    assert.deepEqual(await db.history(`${ns("none")}/x`, 5), []);
    const utf = `${ns("hist")}/café/日本`;
    await db.set(utf, "a");
    await db.set(utf, "b");
    assert.deepEqual((await db.history(utf, 5)).map((v) => v.value), ["b", "a"]);
  } finally {
    await db.close();
  }
});

test("presence: two clients in one room see each other join and leave (close and lost connection)", async () => {
  const room = ns("room");
  const a = Stateline.connect(s.base, { shared: false });
  const b = Stateline.connect(s.base, { shared: false });
  const watcher = Stateline.connect(s.base, { shared: false });
  try {
    const pa = a.presence(room, { name: "ann" });
    await pa.joined;
    const pb = b.presence(room, { name: "bob" });
    const left = [];
    pa.on("leave", (m) => left.push(m.id));
    await until(() => pa.members.length === 2 && pb.members.length === 2, "both see both");
    assert.deepEqual(pa.members.map((m) => m.value.name), ["ann", "bob"], "in join order");
    assert.deepEqual(pa.members.map((m) => m.self), [true, false]);
    assert.equal(pa.key, `presence/${room}/${a.id}`);
    assert.notEqual(a.id, b.id);

    // A watcher that does not join.
    const pw = watcher.presence(room);
    const changes = [];
    pw.on("change", (ms) => changes.push(ms.map((m) => m.value.name)));
    await until(() => pw.members.length === 2, "the watcher sees the members");
    assert.equal(await pw.joined, null);

    // The value changes with update().
    await pb.update({ name: "bob", typing: true });
    await until(() => pa.members.find((m) => m.id === b.id)?.value.typing, "the update");

    // b's connection ends (no delete from the client): the server's lease removes it.
    await b.close();
    await until(() => pa.members.length === 1, "b left for a");
    assert.deepEqual(left, [b.id]);
    assert.equal(await get(s, `presence/${room}/${b.id}`), null);

    // close(): leaves and stops watching.
    await pa.close();
    await until(() => pw.members.length === 0, "a left for the watcher");
    assert.deepEqual(changes.at(-1), []);
    pw.close();
  } finally {
    await Promise.all([a.close(), b.close(), watcher.close()]);
  }
});

test("onDisconnect: set, update and remove happen when the connection ends; cancel() stops them", async () => {
  const n = ns("od");
  const db = Stateline.connect(s.base, { shared: false });
  try {
    await db.set(`${n}/gone`, 1);
    await db.set(`${n}/patched`, { a: 1 });
    const r = await db.onDisconnect(`${n}/status`).set("offline");
    assert.equal(typeof r.onclose, "number");
    await db.onDisconnect(`${n}/patched`).update({ b: 2 });
    await db.onDisconnect(`${n}/gone`).remove();
    await db.onDisconnect(`${n}/cancelled`).set("never");
    await db.onDisconnect(`${n}/cancelled`).cancel();
    await sleep(100);
    assert.equal(await get(s, `${n}/status`), null, "nothing written while connected");
  } finally {
    await db.close();
  }
  await until(async () => (await get(s, `${n}/status`)) === "offline", "the disconnect set");
  assert.deepEqual(await get(s, `${n}/patched`), { a: 1, b: 2 });
  assert.equal(await get(s, `${n}/gone`), null);
  assert.equal(await get(s, `${n}/cancelled`), null, "a cancelled write does not happen");
});

test("after a server restart: leases are taken again, disconnect writes registered again and still cancellable", async () => {
  // In memory: the restarted server has nothing, so what exists afterwards the client re-sent.
  const m = await new Server({ args: ["--memory"] }).start();
  const db = Stateline.connect(m.base, { shared: false, backoffBase: 50, backoffMax: 200 });
  const watcher = Stateline.connect(m.base, { shared: false, backoffBase: 50, backoffMax: 200 });
  try {
    const p = db.presence("lobby", { name: "ann" });
    await p.joined;
    await db.onDisconnect("status/ann").set("offline");
    await db.onDisconnect("status/kept").set("not cancelled");
    await m.kill();
    await m.start();
    await until(async () => (await get(m, p.key)) !== null, "the lease taken again after the restart");
    assert.deepEqual(await get(m, p.key), { name: "ann" });
    // The watcher, reconnected too, sees ann in the room again.
    const pw = watcher.presence("lobby");
    await until(() => pw.members.some((x) => x.id === db.id), "the watcher sees ann");
    // cancel() still works: the handle is mapped to the new server handle.
    await db.onDisconnect("status/ann").cancel();
    await db.close();
    await until(async () => (await get(m, "status/kept")) === "not cancelled", "the registration made again fired");
    assert.equal(await get(m, "status/ann"), null, "the cancelled one did not");
    await until(() => !pw.members.some((x) => x.id === db.id), "ann left");
  } finally {
    await db.close();
    await watcher.close();
    await m.stop();
  }
});

test("presence refuses a room that is not one segment", () => {
  const db = Stateline.connect(s.base, { shared: false });
  assert.throws(() => db.presence("a/b", 1), TypeError);
  assert.throws(() => db.presence("", 1), TypeError);
  return db.close();
});

test("a server killed mid-burst of pushes and counters: after it is back each was applied exactly once, in order", async () => {
  // On disk: what the server acknowledged before the kill is still there, with the ids of those
  // writes, so the client's resends of writes whose answers the kill lost are answered, not
  // applied again.
  const d = await new Server().start();
  const db = Stateline.connect(d.base, { shared: false, backoffBase: 50, backoffMax: 200 });
  const N = 300;
  try {
    await db.set("burst/ready", true);
    const writes = [];
    let acked = 0;
    // Ten of each every 20 ms: the burst outlasts the kill, so some writes are in flight when it
    // comes and some are made while the server is away.
    const made = (async () => {
      for (let i = 0; i < N; i++) {
        writes.push(db.push("burst/list", { i }).then((r) => (acked++, r)));
        writes.push(db.incr("burst/count").then((r) => (acked++, r)));
        if (i % 10 === 9) await sleep(20);
      }
    })();
    await until(() => acked >= 20, "the first acknowledgements");
    await d.kill();
    const atKill = acked;
    await d.start();
    await made;
    const results = await Promise.all(writes);
    assert.ok(atKill < 2 * N, `the kill came mid-burst (${atKill} of ${2 * N} acknowledged)`);
    for (const r of results) assert.notEqual(r.ok, false, JSON.stringify(r));
    const list = await (await fetch(`${d.base}/burst/list/*`)).json();
    const byKey = list.slice().sort((a, b) => (a.index < b.index ? -1 : a.index > b.index ? 1 : 0));
    assert.equal(list.length, N, "no push lost, none twice");
    assert.deepEqual(byKey.map((x) => x.data.i), [...Array(N).keys()], "in the order they were made");
    assert.equal(await get(d, "burst/count"), N, "every increment once");
    // Each push's answer names its own item; the counts answered are 1..N, each once.
    assert.equal(new Set(results.filter((_, j) => j % 2 === 0).map((r) => r.key)).size, N);
    const counts = results.filter((_, j) => j % 2 === 1).map((r) => r.value).sort((a, b) => a - b);
    assert.deepEqual(counts, [...Array(N).keys()].map((x) => x + 1));
  } finally {
    await db.close();
    await d.stop();
  }
});

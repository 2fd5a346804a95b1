// The single-file script's presence, disconnect writes, transactions and history in headless
// Chromium against a real server: two pages in one room see each other join, and closing a page
// makes it leave for the other; a page's disconnect write happens when the page closes.
// A page's pushes and counters in flight when its server is killed are each applied exactly
// once after the server is back. Pages come from a static server on another port
// (cross-origin, as in browser.test.mjs).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { launchChromium, Server, staticServer, until } from "../harness.mjs";

let s, d, web, ctx;
before(async () => {
  s = await new Server().start();
  // Killed and restarted by one test, on its own data folder.
  d = await new Server().start();
  web = await staticServer({
    "/burst.html": `<!doctype html><script src="${d.base}/_client.js"></script>
<script>window.db = Stateline.connect(${JSON.stringify(d.base)}, { backoffBase: 50, backoffMax: 200 });</script>`,
    "/page.html": `<!doctype html><script src="${s.base}/_client.js"></script>
<script>
  window.db = Stateline.connect(${JSON.stringify(s.base)});
  window.errors = [];
  db.on("error", function (e) { errors.push(String(e)); });
</script>`,
  });
  ctx = await launchChromium();
});
after(async () => {
  await ctx?.dispose();
  await web?.close();
  await s?.stop();
  await d?.stop();
});

async function open() {
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`${web.url}/page.html`);
  page.errors = errors;
  return page;
}

const get = async (key) => {
  const r = await fetch(`${s.base}/${key}`);
  return r.status === 404 ? null : (await r.json()).data;
};
const ns = (p) => `${p}${Date.now().toString(36)}`;

test("two pages in one room: each sees the other join; closing one makes it leave for the other", async () => {
  const room = ns("room");
  const [a, b] = [await open(), await open()];
  const join = (page, name) => page.evaluate(([room, name]) => {
    window.p = db.presence(room, { name });
    window.seen = [];
    p.on("change", (ms) => seen.push(ms.map((m) => m.value.name)));
    return p.joined.then(() => db.id);
  }, [room, name]);
  const idA = await join(a, "ann");
  const idB = await join(b, "bob");
  assert.notEqual(idA, idB);
  const members = (page) => page.evaluate(() => p.members.map((m) => [m.value.name, m.self]));
  await until(async () => (await members(a)).length === 2 && (await members(b)).length === 2, "each page sees the other");
  assert.deepEqual(await members(a), [["ann", true], ["bob", false]]);
  assert.deepEqual(await members(b), [["ann", false], ["bob", true]]);
  assert.deepEqual(await get(`presence/${room}/${idB}`), { name: "bob" });

  // Closing page B ends its connection: the server deletes its leased key, and A sees it leave.
  await b.close();
  await until(async () => (await members(a)).length === 1, "B left for A");
  assert.deepEqual(await members(a), [["ann", true]]);
  assert.equal(await get(`presence/${room}/${idB}`), null);
  assert.deepEqual(a.errors, []);
  await a.close();
});

test("onDisconnect: the write happens when the page closes, not before; cancel() stops it", async () => {
  const n = ns("od");
  const page = await open();
  await page.evaluate(async (n) => {
    await db.set(n + "/online", true);
    await db.onDisconnect(n + "/online").remove();
    await db.onDisconnect(n + "/last").set({ bye: true });
    await db.onDisconnect(n + "/never").set(1);
    await db.onDisconnect(n + "/never").cancel();
  }, n);
  assert.equal(await get(`${n}/online`), true);
  assert.equal(await get(`${n}/last`), null);
  await page.close();
  await until(async () => (await get(`${n}/last`)) !== null, "the disconnect write");
  assert.deepEqual(await get(`${n}/last`), { bye: true });
  assert.equal(await get(`${n}/online`), null);
  assert.equal(await get(`${n}/never`), null);
});

test("transaction: success, and a precondition failure that changes nothing", async () => {
  const n = ns("tx");
  const page = await open();
  const out = await page.evaluate(async (n) => {
    await db.set(n + "/stock", 1);
    const ok = await db.transaction({
      if: [{ key: n + "/stock", revision: 0 }, { key: n + "/order", absent: true }],
      then: [{ op: "set", key: n + "/stock", value: 0 }, { op: "set", key: n + "/order", value: "paid" }],
    });
    let failed = null;
    try {
      await db.transaction().ifRevision(n + "/stock", 0).set(n + "/stock", -1).set(n + "/order", "twice").commit();
    } catch (e) {
      failed = { name: e.name, code: e.code, status: e.status, compare: e.compare };
    }
    return { ok: ok.ok, results: ok.results.length, failed };
  }, n);
  assert.deepEqual(out, {
    ok: true, results: 2,
    failed: { name: "StatelineError", code: "precondition-failed", status: 409, compare: { index: 0, key: `${n}/stock` } },
  });
  assert.equal(await get(`${n}/stock`), 0);
  assert.equal(await get(`${n}/order`), "paid");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("history: a key's versions from the page, newest first", async () => {
  const key = `${ns("hist")}/doc`;
  const page = await open();
  const h = await page.evaluate(async (key) => {
    await db.set(key, { v: 1 });
    await db.set(key, { v: 2 });
    await db.delete(key);
    await db.set(key, { v: 3 });
    return db.history(key, 10);
  }, key);
  assert.deepEqual(h.map((v) => [v.value, v.deleted]), [[{ v: 3 }, false], [null, true], [{ v: 2 }, false], [{ v: 1 }, false]]);
  assert.deepEqual(h.slice(2).map((v) => v.revision), [1, 0]);
  await page.close();
});

test("a server killed mid-burst of pushes and counters: each was applied exactly once, in order", async () => {
  const page = await ctx.newPage();
  await page.goto(`${web.url}/burst.html`);
  const N = 300;
  await page.evaluate(async (N) => {
    await db.set("burst/ready", true);
    window.acked = 0;
    window.burst = [];
    // Ten of each every 20 ms: the burst outlasts the kill, so some writes are in flight when
    // it comes and some are made while the server is away.
    window.made = (async () => {
      for (let i = 0; i < N; i++) {
        burst.push(db.push("burst/list", { i }).then((r) => (acked++, r)));
        burst.push(db.incr("burst/count").then((r) => (acked++, r)));
        if (i % 10 === 9) await new Promise((r) => setTimeout(r, 20));
      }
    })();
  }, N);
  await until(() => page.evaluate(() => acked >= 20), "the first acknowledgements");
  await d.kill();
  const atKill = await page.evaluate(() => acked);
  await d.start();
  const results = await page.evaluate(async () => (await made, Promise.all(burst)));
  assert.ok(atKill < 2 * N, `the kill came mid-burst (${atKill} of ${2 * N} acknowledged)`);
  const list = await (await fetch(`${d.base}/burst/list/*`)).json();
  assert.equal(list.length, N, "no push lost, none twice");
  const byKey = list.slice().sort((a, b) => (a.index < b.index ? -1 : a.index > b.index ? 1 : 0));
  assert.deepEqual(byKey.map((x) => x.data.i), [...Array(N).keys()], "in the order they were made");
  assert.equal((await (await fetch(`${d.base}/burst/count`)).json()).data, N, "every increment once");
  const counts = results.filter((_, j) => j % 2 === 1).map((r) => r.value).sort((a, b) => a - b);
  assert.deepEqual(counts, [...Array(N).keys()].map((x) => x + 1));
  await page.close();
});

test("optimistic writes: the page's subscriber has a set before the server answers; a refused one is rolled back", async () => {
  const page = await open();
  const key = `${ns("opt")}/doc`;
  const log = await page.evaluate(async ({ base, key }) => {
    const o = Stateline.connect(base, { shared: false, optimistic: true });
    const log = [];
    await new Promise((ready) => {
      o.subscribe(key, (u) => {
        log.push(["update", u.value, u.changes.map((c) => [c.value, c.pending, c.revision])]);
        if (u.initial) ready();
      });
    });
    const set = o.set(key, { v: 1 }).then((r) => log.push(["set answered", r.revision]));
    await set;
    // A compare-and-swap on a revision the key does not have: shown, refused, rolled back.
    const cas = await o.update(key, { v: 9 }, 5);
    log.push(["cas answered", cas.ok, cas.conflict]);
    await o.close();
    return log;
  }, { base: s.base, key });
  assert.deepEqual(log, [
    ["update", null, []],
    ["update", { v: 1 }, [[{ v: 1 }, true, -1]]],
    ["set answered", 0],
    ["update", { v: 9 }, [[{ v: 9 }, true, -1]]],
    ["update", { v: 1 }, [[{ v: 1 }, false, 0]]],
    ["cas answered", false, true],
  ]);
  assert.deepEqual(await get(key), { v: 1 });
  await page.close();
});

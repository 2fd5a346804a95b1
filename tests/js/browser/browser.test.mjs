// The single-file script in headless Chromium (Debian's, driven by playwright-core) against a
// real server: AtomKV's documented examples from a page that includes only the script tag, a
// Stateline page following a glob through 1,000 changes, and the same across a server crash.
// Pages come from a static server on another port, so every request is cross-origin (CORS).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { launchChromium, Server, staticServer, until } from "../harness.mjs";
import { Stateline } from "../../../wasm-client/dist/esm/stateline.mjs";

let s, web, ctx;
before(async () => {
  s = await new Server().start();
  web = await staticServer({
    // Nothing but the script tag: the tests drive AtomKV from outside.
    "/atomkv.html": `<!doctype html><script src="${s.base}/"></script>`,
    "/stateline.html": `<!doctype html><script src="${s.base}/_client.js"></script>
<script>
  window.seen = []; window.states = []; window.errors = [];
  window.follow = function (path) {
    var c = Stateline.connect(${JSON.stringify(s.base)}, { backoffBase: 50, backoffMax: 500 });
    c.on("state", function (st) { states.push(st); });
    c.on("error", function (e) { errors.push(String(e)); });
    c.subscribe(path, function (u) {
      window.held = u.value;
      for (var i = 0; i < u.changes.length; i++) {
        var ch = u.changes[i];
        seen.push([ch.key, ch.value && ch.value.i, ch.revision]);
      }
    });
  };
</script>`,
  });
  ctx = await launchChromium();
});
after(async () => {
  await ctx?.dispose();
  await web?.close();
  await s?.stop();
});

async function open(path) {
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`${web.url}${path}`);
  page.errors = errors;
  return page;
}

test("AtomKV's examples from a page that includes only the script tag", async () => {
  const [p1, p2] = [await open("/atomkv.html"), await open("/atomkv.html")];
  const requests = [];
  p1.on("request", (r) => requests.push(r.url()));
  assert.equal(await p1.evaluate(() => AtomKV.BASE), s.base);
  // AtomKV's README: concurrent Fibonacci increments with compare-and-swap.
  const run = (page) =>
    page.evaluate(async () => {
      async function init() {
        AtomKV.update("/fib", [0, 1], 0);
      }
      async function increment() {
        for (;;) {
          let [[a, b], revision] = await AtomKV.get("/fib");
          let next = [b, a + b];
          if (await AtomKV.update("/fib", next, revision + 1)) return next;
        }
      }
      await init();
      // Wait until the (unawaited) init is visible, as the README's "acceptably fails" implies.
      for (let i = 0; i < 200 && (await AtomKV.get("/fib"))[1] < 0; i++) await new Promise((r) => setTimeout(r, 10));
      const out = [];
      for (let i = 0; i < 25; i++) out.push(await increment());
      return out;
    });
  const [a, b] = await Promise.all([run(p1), run(p2)]);
  const fib = [[0, 1]];
  for (let i = 0; i < 50; i++) {
    const [x, y] = fib.at(-1);
    fib.push([y, x + y]);
  }
  // No lost update: together the pages made the 50 steps, each exactly once, each in order.
  const all = [...a, ...b].map((p) => p[0]).sort((x, y) => x - y);
  assert.deepEqual(all, fib.slice(1).map((p) => p[0]));
  for (const mine of [a, b]) assert.deepEqual(mine, [...mine].sort((x, y) => x[0] - y[0]));
  const r = await fetch(`${s.base}/fib`);
  assert.equal(r.headers.get("x-revision"), "50");
  assert.deepEqual((await r.json()).data, fib[50]);

  // AtomKV's monitor example: subscribe on a prefix (the whole hierarchy under it, nothing else).
  const got = p1.evaluate(async () => {
    const out = [];
    for await (let [key, value, rev] of AtomKV.subscribe("/sess1/")) {
      out.push([key, value, rev]);
      if (out.length === 4) return out;
    }
  });
  await until(() => p1.evaluate(() => true), "the page");
  // The generator subscribes when first pulled: write only once the server holds its pool.
  await until(async () => {
    const st = await s.json("/?api=state");
    return st && st.pools.some((p) => p.key === "sess1/" && p.connections > 0);
  }, "the subscription to /sess1/ on the server");
  await p2.evaluate(async () => {
    await AtomKV.set("/sess1x", "not under /sess1/");
    await AtomKV.set("/sess1/a", 1);
    await AtomKV.set("/sess1/deep/b", { v: 2 });
    await AtomKV.set("/sess1/a", 3);
    await AtomKV.update("/sess1/a", 4, 2);
  });
  assert.deepEqual(await got, [
    ["/sess1/a", 1, 0],
    ["/sess1/deep/b", { v: 2 }, 0],
    ["/sess1/a", 3, 1],
    ["/sess1/a", 4, 2],
  ]);
  // One script request, no second one for the wasm; one socket for everything.
  assert.equal(requests.filter((u) => u.endsWith(".wasm")).length, 0);
  assert.deepEqual([...p1.errors, ...p2.errors], []);
  await p1.close();
  await p2.close();
});

async function writer() {
  const w = Stateline.connect(s.base, { shared: false, backoffBase: 50, backoffMax: 500 });
  await w.ready;
  return w;
}

test("a Stateline page sees the changes of a glob in order, ending at the last, while another client writes 1,000", async () => {
  const page = await open("/stateline.html");
  await page.evaluate(() => follow("b/*"));
  await until(() => page.evaluate(() => window.held !== undefined), "the initial value");
  const w = await writer();
  try {
    // One after another, as an app writes. (Pipelining 1,000 writes at once can put the page
    // more than --queue frames behind: the server then cuts it off as lagging and it resumes
    // with what it missed squashed per key — every key's latest value, not every step.) A frame
    // the page's socket has not taken yet may be folded into the next (docs/protocol.md §6), so
    // the page may skip steps, never reorder or repeat them.
    for (let i = 0; i < 1000; i++) await w.set(`b/k${i % 10}`, { i });
    const seen = await until(async () => {
      const v = await page.evaluate(() => window.seen);
      return v.some((x) => x[1] === 999) && v;
    }, "the last change in the page").catch(async (e) => {
      const st = await page.evaluate(() => [window.seen.length, window.states, window.errors]);
      throw new Error(`${e.message}: ${JSON.stringify(st)}`);
    });
    assert.ok(seen.length <= 1000, `${seen.length} changes for 1,000 writes`);
    for (let j = 1; j < seen.length; j++) assert.ok(seen[j][1] > seen[j - 1][1], `in order at ${j}`);
    for (const [key, i, rev] of seen) {
      assert.equal(key, `b/k${i % 10}`);
      assert.equal(rev, Math.floor(i / 10), `${key}'s revision with ${i}`);
    }
    // The page holds every key's last write.
    const held = await page.evaluate(() => window.held.map((x) => [x.key, x.value.i]));
    assert.deepEqual(held.sort(), Array.from({ length: 10 }, (_, k) => [`b/k${k}`, 990 + k]).sort());
    assert.deepEqual(await page.evaluate(() => window.states), ["connecting", "open"]);
    assert.deepEqual(page.errors, []);
  } finally {
    await w.close();
    await page.close();
  }
});

test("the server restarts mid-stream: the page ends with exactly the server's state, no change twice", async () => {
  const page = await open("/stateline.html");
  await page.evaluate(() => follow("r/*"));
  await until(() => page.evaluate(() => window.held !== undefined), "the initial value");
  const w = await writer();
  try {
    // Compare-and-swap creates (null: only if absent): a write resent after the crash cannot
    // apply twice (it conflicts).
    const key = (i) => `r/k${String(i).padStart(4, "0")}`;
    const results = [];
    for (let i = 0; i < 1000; i++) results.push(w.update(key(i), { i }, null));
    await until(async () => (await page.evaluate(() => window.seen.length)) >= 300, "300 changes before the crash");
    await s.kill();
    await until(() => page.evaluate(() => window.states.includes("waiting")), "the page to see the crash");
    await s.start();
    const outcomes = await Promise.all(results);
    for (const o of outcomes) assert.ok(o.ok || o.conflict, JSON.stringify(o));
    const server = await s.json("/r/*");
    assert.equal(server.length, 1000);
    // A marker written last: changes arrive in order, so once the page has it, a duplicate of
    // any earlier change would have arrived before it.
    await w.set("r/zz-end", { i: -1 });
    await until(async () => (await page.evaluate(() => window.seen)).some((x) => x[0] === "r/zz-end"), "the marker in the page");
    const final = await page.evaluate(() => ({
      seen: window.seen.filter((x) => x[0] !== "r/zz-end"),
      held: window.held.filter((x) => x.key !== "r/zz-end"),
      states: window.states,
    }));
    // In order, each once: exactly the 1,000 creates.
    assert.deepEqual(final.seen.map((x) => x[0]), Array.from({ length: 1000 }, (_, i) => key(i)));
    assert.deepEqual(final.seen.map((x) => x[1]), Array.from({ length: 1000 }, (_, i) => i));
    // Holding exactly the server's state.
    assert.deepEqual(
      final.held.map((x) => [x.key, x.value, x.revision, x.created]),
      server.map((m) => [m.path, m.data, 0, m.created]),
    );
    assert.ok(final.states.filter((x) => x === "open").length >= 2, final.states.join(","));
    assert.deepEqual(page.errors, []);
  } finally {
    await w.close();
    await page.close();
  }
});

// The single-file script's `persist` option in headless Chromium against a real server: writes
// made offline survive a reload and reach the server once each, in order, when it is back; a
// reloaded page shows its subscriptions' cached values at once and resumes them from their
// stored versions (the server counts resumes, not snapshots); a storage failure is reported.
// The page is served by a static server of its own with the script inlined, so it reloads while
// the Stateline server is down, as an app's page would.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { launchChromium, Server, staticServer, until } from "../harness.mjs";

const script = readFileSync(new URL("../../../wasm-client/dist/stateline.js", import.meta.url), "utf8");

let s, web, ctx;
before(async () => {
  s = await new Server().start();
  web = await staticServer({
    "/app.html": `<!doctype html><script>${script}</script>
<script>
  window.errors = [];
  window.log = [];
  // The persist name from the query (each test its own, so one's leftovers never reach another).
  window.store = new URLSearchParams(location.search).get("p") || "app";
  window.db = Stateline.connect(${JSON.stringify(s.base)}, { persist: store, backoffBase: 50, backoffMax: 200 });
  db.on("error", function (e) { errors.push(e.code + " " + e.message); });
  window.versions = {};
  window.watch = function (pattern) {
    db.subscribe(pattern, function (u) {
      versions[u.path] = u.version;
      log.push({ path: u.path, initial: u.initial, cached: u.cached, value: u.value,
        changed: u.changes.map(function (c) { return c.key; }) });
    });
  };
  // Whether every watched subscription's stored cache holds the version the page was last told.
  window.stored = function () {
    return new Promise(function (resolve, reject) {
      var r = indexedDB.open("stateline:" + store + " " + ${JSON.stringify(s.base)});
      r.onerror = function () { reject(r.error); };
      r.onsuccess = function () {
        var os = r.result.transaction("caches").objectStore("caches");
        var ps = Object.keys(versions), n = ps.length, ok = true;
        if (!n) { r.result.close(); resolve(false); }
        ps.forEach(function (p) {
          var q = os.get(p);
          q.onsuccess = function () {
            ok = ok && !!q.result && JSON.parse(q.result).version === versions[p];
            if (--n === 0) { r.result.close(); resolve(ok); }
          };
        });
      };
    });
  };
  // Rows in the outbox, read from IndexedDB itself.
  window.outbox = function () {
    return new Promise(function (resolve, reject) {
      var r = indexedDB.open("stateline:" + store + " " + ${JSON.stringify(s.base)});
      r.onerror = function () { reject(r.error); };
      r.onsuccess = function () {
        var q = r.result.transaction("outbox").objectStore("outbox").count();
        q.onsuccess = function () { r.result.close(); resolve(q.result); };
      };
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

const put = (key, value) =>
  fetch(`${s.base}/${key}`, { method: "POST", body: JSON.stringify(value), headers: { "content-type": "application/json" } });

async function resumes() {
  const text = await (await fetch(`${s.base}/_metrics`)).text();
  const n = (first) => Number((text.match(new RegExp(`stateline_resumes_total\\{first="${first}"\\} (\\d+)`)) || [])[1]);
  return { changes: n("changes"), snapshot: n("snapshot") };
}

test("offline writes survive a reload and are applied once each, in order; the reload resumes from the stored versions", { timeout: 90_000 }, async () => {
  // Six items, so that one change since is shorter than a snapshot of the list.
  for (let i = 0; i < 6; i++) await put(`pa/items/x${i}`, { i });
  await put("pa/doc", { title: "first" });
  const page = await ctx.newPage();
  const crashes = [];
  page.on("pageerror", (e) => crashes.push(e));
  await page.goto(`${web.url}/app.html`);
  await page.evaluate(() => { watch("pa/items/*"); watch("pa/doc"); });
  await until(() => page.evaluate(() => log.length === 2 && log.every((u) => !u.cached)), "both subscriptions' first values");
  await until(() => page.evaluate(() => stored()), "the caches to be written");

  await s.kill();
  await until(() => page.evaluate(() => db.state !== "open"), "the page to see the server gone");
  const N = 20;
  await page.evaluate((N) => {
    for (let i = 0; i < N; i++) db.push("pa/list", { i });
    db.incr("pa/count");
    db.set("pa/last", "offline");
  }, N);
  await until(() => page.evaluate(() => outbox()).then((n) => n === N + 2), "the outbox to hold every write");

  // Reloaded while the server is away: the cached values come at once, marked.
  await page.reload();
  await page.evaluate(() => { watch("pa/items/*"); watch("pa/doc"); });
  await until(() => page.evaluate(() => log.length === 2), "the cached values");
  const cached = await page.evaluate(() => log.slice());
  assert.deepEqual(cached.map((u) => [u.path, u.initial, u.cached]), [["pa/items/*", true, true], ["pa/doc", true, true]]);
  assert.equal(cached[0].value.length, 6);
  assert.deepEqual(cached[1].value, { title: "first" });
  assert.notEqual(await page.evaluate(() => db.state), "open", "shown while the server is away");

  // The page goes; the server comes back, and another writer changes one item; the page
  // comes back.
  await page.goto("about:blank");
  await s.start();
  await put("pa/items/x0", { i: 100 });
  assert.deepEqual(await resumes(), { changes: 0, snapshot: 0 });
  await page.goto(`${web.url}/app.html`);
  await page.evaluate(() => { watch("pa/items/*"); watch("pa/doc"); });
  await until(() => page.evaluate(() => outbox()).then((n) => n === 0), "the outbox to empty");
  // Each cache confirmed (an update of no changes, unmarked), then what changed since.
  await until(() => page.evaluate(() => log.length === 5), "the confirmations and the change");
  const after = await page.evaluate(() => log.slice(2));
  const confirmations = after.filter((u) => u.changed.length === 0).map((u) => [u.path, u.initial, u.cached]).sort();
  assert.deepEqual(confirmations, [["pa/doc", false, false], ["pa/items/*", false, false]]);
  const change = after.find((u) => u.changed.length);
  assert.deepEqual([change.path, change.cached, change.changed], ["pa/items/*", false, ["pa/items/x0"]]);
  assert.deepEqual(change.value.find((i) => i.key === "pa/items/x0").value, { i: 100 });
  assert.deepEqual(await resumes(), { changes: 2, snapshot: 0 }, "both resumed from their stored versions");

  const list = await (await fetch(`${s.base}/pa/list/*`)).json();
  assert.equal(list.length, N, "every push once");
  list.sort((a, b) => (a.index < b.index ? -1 : a.index > b.index ? 1 : 0));
  assert.deepEqual(list.map((x) => x.data.i), [...Array(N).keys()], "in the order they were made");
  assert.equal((await (await fetch(`${s.base}/pa/count`)).json()).data, 1);
  assert.equal((await (await fetch(`${s.base}/pa/last`)).json()).data, "offline");
  assert.deepEqual(await page.evaluate(() => errors), []);
  assert.deepEqual(crashes, []);

  // And once more, after the caches are written: a reload with nothing waiting sends nothing
  // again, and the cache it shows has the change.
  await until(() => page.evaluate(() => stored()), "the caches to be written");
  await page.reload();
  await page.evaluate(() => { watch("pa/items/*"); });
  await until(() => page.evaluate(() => log.length === 2), "the confirmed value after a second reload");
  const again = await page.evaluate(() => log);
  assert.deepEqual(again.map((u) => [u.cached, u.changed.length]), [[true, 6], [false, 0]]);
  assert.deepEqual(again[0].value.find((i) => i.key === "pa/items/x0").value, { i: 100 });
  assert.equal((await (await fetch(`${s.base}/pa/list/*`)).json()).length, N);
  assert.equal((await (await fetch(`${s.base}/pa/count`)).json()).data, 1);
  await page.close();
});

test("a refused kept write and a storage failure are reported, not silent", { timeout: 90_000 }, async () => {
  // Up, whatever the test before left.
  if (s.proc.exitCode !== null) await s.start();
  const page = await ctx.newPage();
  await page.goto(`${web.url}/app.html?p=refused`);
  await page.evaluate(() => db.ready);
  await s.kill();
  await until(() => page.evaluate(() => db.state !== "open"), "the page to see the server gone");
  // A compare-and-swap that will lose, and a write the server refuses (a key it cannot hold).
  await page.evaluate(() => {
    window.conflicts = [];
    db.update("pb/cas", 1, 41).catch(() => {});
    db.set("pb/bad", { ".sv": "nope" }).catch(() => {});
  });
  await until(() => page.evaluate(() => outbox()).then((n) => n === 2), "two rows kept");
  await page.reload();
  await page.evaluate(() => {
    window.conflicts = [];
    db.on("conflict", (c) => conflicts.push(c.key));
  });
  await s.start();
  await until(() => page.evaluate(() => outbox()).then((n) => n === 0), "the outbox to empty");
  await until(() => page.evaluate(() => errors.length > 0 && conflicts.length > 0), "the reports");
  assert.deepEqual(await page.evaluate(() => conflicts), ["pb/cas"]);
  const errors = await page.evaluate(() => errors);
  assert.equal(errors.length, 1, errors.join("\n"));
  assert.match(errors[0], /^bad-request|^invalid/);

  // IndexedDB refusing to open (here: a newer schema already there) is an error event, and the
  // client goes on in memory.
  const other = await ctx.newPage();
  await other.goto(`${web.url}/app.html?p=other`);
  const r = await other.evaluate(async (base) => {
    await new Promise((ok) => { const q = indexedDB.open("stateline:future " + base, 99); q.onsuccess = () => { q.result.close(); ok(); }; });
    const errs = [];
    const c = Stateline.connect(base, { persist: "future", shared: false });
    c.on("error", (e) => errs.push(e.code));
    await c.ready;
    const w = await c.set("pb/mem", 5);
    await c.close();
    return { errs, revision: w.revision };
  }, s.base);
  assert.deepEqual(r, { errs: ["storage"], revision: 0 });
  await other.close();
  await page.close();
});

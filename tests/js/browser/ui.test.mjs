// The web UI in headless Chromium against a real server: create a key in one page, see it appear
// in a second page's live view, edit it there, get a visible conflict when a third client changed
// it first, delete it. Every page is screenshotted; with STATELINE_SCREENSHOTS=1 the pictures go to
// docs/screenshots/ (shown in the README), otherwise to a temporary folder, so a test run leaves
// the working tree as it was.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { launchChromium, root, Server } from "../harness.mjs";

const shots = process.env.STATELINE_SCREENSHOTS
  ? path.join(root, "docs/screenshots")
  : path.join(os.tmpdir(), "stateline-screenshots");
let server, browser;

before(async () => {
  server = await new Server().start();
  browser = await launchChromium();
  mkdirSync(shots, { recursive: true });
});
after(async () => {
  await browser?.dispose();
  await server?.stop();
});

async function page(hash, { width = 1200, height = 820 } = {}) {
  const p = await browser.newPage();
  await p.setViewportSize({ width, height });
  const outside = [];
  p.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(server.base) && !u.startsWith("data:")) outside.push(u);
  });
  p.on("pageerror", (e) => { throw e; });
  p.outside = outside;
  await p.goto(`${server.base}/${hash}`);
  await p.waitForSelector("#conn.open", { timeout: 10000 });
  return p;
}

// Replaces the JSON editor's text (CodeMirror in vanilla-jsoneditor's text mode). insertText
// types no keys, so the editor's bracket auto-closing does not interfere.
async function setEditor(p, value) {
  await p.click(".editor .cm-content");
  await p.keyboard.press("Control+A");
  await p.keyboard.press("Delete");
  await p.keyboard.insertText(JSON.stringify(value, null, 2));
}

const get = async (key) => {
  const r = await fetch(`${server.base}/${key}`);
  return r.status === 404 ? null : { ...(await r.json()), revision: r.headers.get("x-revision") };
};

test("create, watch live, edit, conflict, delete", { timeout: 120_000 }, async () => {
  const ns = `ui${Date.now().toString(36)}`;
  const key = `${ns}/greeting`;

  // Page B watches the glob before the key exists.
  const b = await page(`#/live/${ns}/*`);
  await b.waitForSelector("#live-count");

  // Page A creates the key through "New key".
  const a = await page("#/keys");
  a.once("dialog", (d) => d.accept(key));
  await a.click("#new-key");
  await a.waitForSelector(".editor .cm-content");
  await setEditor(a, { text: "hello", n: 1 });
  await a.click("#save");
  await a.waitForFunction((k) => location.hash === `#/key/${k}`, key);
  assert.deepEqual((await get(key)).data, { text: "hello", n: 1 });

  // It appears in page B's live view.
  await b.waitForSelector(`tr[data-key="${key}"]`, { timeout: 10000 });
  assert.match(await b.textContent(`tr[data-key="${key}"]`), /hello/);
  await b.screenshot({ path: path.join(shots, "live.png") });

  // Page B opens it and edits it; page A sees the change live, with what changed.
  await b.click(`tr[data-key="${key}"] a`);
  await b.waitForSelector("#save");
  await b.waitForFunction(() => document.querySelector("#rev").textContent.startsWith("rev 0"));
  await setEditor(b, { text: "hello from B", n: 2 });
  await b.click("#save");
  await b.waitForFunction(() => document.querySelector("#toast").textContent === "Saved");
  assert.deepEqual((await get(key)).data, { text: "hello from B", n: 2 });
  await a.waitForSelector("#changes li", { timeout: 10000 });
  assert.match(await a.textContent("#changes"), /replace \/text/);

  // A third client changes it first: page B (holding revision 1) gets a visible conflict, and
  // the server keeps the third client's value.
  const third = await fetch(`${server.base}/${key}`, {
    method: "PUT", headers: { "x-revision": "2" }, body: JSON.stringify({ text: "third", n: 3 }),
  });
  assert.equal(third.status, 200, await third.text());
  await setEditor(b, { text: "B again", n: 4 });
  await b.click("#save");
  await b.waitForSelector("#conflict", { timeout: 10000 });
  assert.match(await b.textContent("#conflict"), /Conflict/);
  assert.match(await b.textContent("#conflict"), /third/);
  assert.deepEqual((await get(key)).data, { text: "third", n: 3 }, "nothing overwritten");
  await b.screenshot({ path: path.join(shots, "key-conflict.png") });

  // Invalid JSON is refused before anything is sent.
  await b.click("#take-theirs");
  await b.click(".editor .cm-content");
  await b.keyboard.press("Control+A");
  await b.keyboard.insertText("{ not json");
  await b.click("#save");
  await b.waitForSelector("#outcome .error");
  assert.match(await b.textContent("#outcome"), /Not valid JSON/);
  assert.equal((await get(key)).revision, "2");

  // Delete it from page B; page A's live view says it is gone.
  b.once("dialog", (d) => d.accept());
  await b.click("#delete");
  await b.waitForFunction(() => location.hash === "#/keys");
  assert.equal(await get(key), null);
  await a.waitForFunction(() => /does not exist/.test(document.querySelector("#live-note").textContent), null, { timeout: 10000 });

  // Push to a list from the glob's page: a new time-ordered key under the prefix.
  await a.goto(`${server.base}/#/key/${ns}/list/*`);
  await a.waitForSelector("#push");
  await setEditor(a, { item: "milk" });
  await a.click("#push");
  await a.waitForFunction(() => document.querySelector("#toast").textContent.startsWith("Pushed as"));
  const list = await (await fetch(`${server.base}/${ns}/list/*`)).json();
  assert.equal(list.length, 1);
  assert.deepEqual(list[0].data, { item: "milk" });

  for (const p of [a, b]) assert.deepEqual(p.outside, [], "no request leaves the server");
  await a.close();
  await b.close();
});

test("screenshots: keys, key, state, and a phone-sized screen", { timeout: 60_000 }, async () => {
  const ns = `shot${Date.now().toString(36)}`;
  for (const [k, v] of [["books/1", { title: "Dune", year: 1965 }], ["books/2", { title: "Solaris", year: 1961 }], ["settings", { theme: "dark" }]]) {
    await fetch(`${server.base}/${ns}/${k}`, { method: "POST", body: JSON.stringify(v) });
  }
  const p = await page(`#/keys?filter=${ns}/`);
  await p.waitForSelector(`tr[data-key="${ns}/books/1"]`);
  assert.equal(await p.locator("#keys tbody tr").count(), 3);
  await p.screenshot({ path: path.join(shots, "keys.png") });

  // Glob search and paging.
  await p.goto(`${server.base}/#/keys?filter=${ns}/books/*&limit=10`);
  await p.waitForSelector(`tr[data-key="${ns}/books/2"]`);
  assert.equal(await p.locator("#keys tbody tr").count(), 2);

  await p.goto(`${server.base}/#/key/${ns}/books/1`);
  await p.waitForFunction(() => document.querySelector("#rev").textContent.startsWith("rev"));
  await p.screenshot({ path: path.join(shots, "key.png") });

  await p.goto(`${server.base}/#/state`);
  await p.waitForSelector(".card");
  assert.match(await p.textContent("#cards"), /connections/);
  assert.match(await p.textContent("#cards"), /MiB/, "the server's memory, from /_metrics");
  await p.screenshot({ path: path.join(shots, "state.png") });

  const phone = await page(`#/keys?filter=${ns}/`, { width: 390, height: 844 });
  await phone.waitForSelector(`tr[data-key="${ns}/books/1"]`);
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling on a phone (${overflow}px too wide)`);
  await phone.screenshot({ path: path.join(shots, "phone.png") });
  await phone.close();
  await p.close();
});

test("works with a token when the server requires one", { timeout: 60_000 }, async () => {
  const secret = "ui-test-secret-0123456789abcdef";
  const ruled = await new Server({ args: ["--rules", path.join(root, "examples/rules.toml")], env: { STATELINE_JWT_SECRET: secret } }).start();
  try {
    const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
    const { createHmac } = await import("node:crypto");
    const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: "alice", exp: Math.floor(Date.now() / 1000) + 600 })}`;
    const token = `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
    const key = `private/alice/note${Date.now().toString(36)}`;
    const w = await fetch(`${ruled.base}/${key}`, { method: "POST", body: '{"secret":"alice only"}', headers: { authorization: `Bearer ${token}` } });
    assert.equal(w.status, 200, await w.text());

    const p = await browser.newPage();
    await p.goto(`${ruled.base}/#/key/${key}`);
    await p.waitForSelector("#view .error");
    assert.match(await p.textContent("#view"), /401/, "without a token the key is refused");

    // The token dialog: stored in this browser, sent with every request and the live connection.
    await p.click("#token-btn");
    await p.fill("#token-input", token);
    await p.click('#token-dialog button[value="save"]');
    await p.waitForFunction(() => document.querySelector("#rev")?.textContent.startsWith("rev 0"));
    assert.match(await p.textContent("#editor"), /alice only/);
    await p.waitForSelector("#conn.open");
    // Live through the client with the token: a change by alice elsewhere shows up.
    await fetch(`${ruled.base}/${key}`, { method: "POST", body: '{"secret":"changed"}', headers: { authorization: `Bearer ${token}` } });
    await p.waitForSelector("#changes li", { timeout: 10000 });
    await p.close();
  } finally {
    await ruled.stop();
  }
});

test("the Keys page lists metadata from the keys API alone: no request per key", { timeout: 60_000 }, async () => {
  const ns = `cnt${Date.now().toString(36)}`;
  for (let i = 0; i < 6; i++) {
    await fetch(`${server.base}/${ns}/k${i}`, { method: "POST", body: JSON.stringify({ i }) });
  }
  // k2 updated twice: revision 2 and an updated time.
  for (const v of [10, 20]) await fetch(`${server.base}/${ns}/k2`, { method: "POST", body: JSON.stringify({ i: v }) });
  const p = await page("#/keys");
  const requests = [];
  p.on("request", (r) => requests.push(new URL(r.url())));
  await p.goto(`${server.base}/#/keys?filter=${ns}/`);
  await p.waitForSelector(`tr[data-key="${ns}/k5"]`);
  assert.equal(await p.locator("#keys tbody tr").count(), 6);
  const row = async (k) => (await p.locator(`tr[data-key="${ns}/${k}"] td`).allTextContents()).map((t) => t.trim());
  const meta = await (await fetch(`${server.base}/${ns}/k2`)).json();
  const k2 = await row("k2");
  assert.equal(k2[3], "2", "the revision, from the keys API");
  assert.notEqual(k2[2], "—", "an updated time");
  assert.equal(k2[2], await p.evaluate((ns) => new Date(ns / 1e6).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }), meta.updated));
  const k0 = await row("k0");
  assert.deepEqual([k0[2], k0[3]], ["—", "0"], "never updated");
  assert.notEqual(k0[1], "—", "a created time");
  // One keys API request for the listing, and not one GET of a listed key.
  const toServer = requests.filter((u) => u.origin === server.base);
  assert.equal(toServer.filter((u) => u.searchParams.get("api") === "keys").length, 1, toServer.join("\n"));
  assert.deepEqual(toServer.filter((u) => u.pathname.startsWith(`/${ns}`)).map(String), []);
  await p.close();
});

test("the key page's updated time and revision follow live changes", { timeout: 60_000 }, async () => {
  const key = `upd${Date.now().toString(36)}/doc`;
  await fetch(`${server.base}/${key}`, { method: "POST", body: '{"v":1}' });
  const p = await page(`#/key/${key}`);
  await p.waitForFunction(() => document.querySelector("#rev").textContent.startsWith("rev 0"));
  const field = (name) => p.textContent(`#meta [data-meta="${name}"] dd`);
  assert.equal(await field("updated"), "—", "never updated yet");
  assert.equal(await field("revision"), "0");
  // Written from outside: the page shows the new updated time and revision without a reload.
  for (const [v, rev] of [[2, "1"], [3, "2"]]) {
    const before = await field("updated");
    await fetch(`${server.base}/${key}`, { method: "POST", body: JSON.stringify({ v }) });
    const meta = await (await fetch(`${server.base}/${key}`)).json();
    const want = await p.evaluate((ns) => new Date(ns / 1e6).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }), meta.updated);
    await p.waitForFunction(([want, rev]) => {
      const f = (n) => document.querySelector(`#meta [data-meta="${n}"] dd`)?.textContent;
      return f("updated") === want && f("revision") === rev;
    }, [want, rev], { timeout: 10000 });
    assert.notEqual(want, "—");
    if (rev === "1") assert.notEqual(before, want);
  }
  // The draft's base stays the revision loaded (Save is a compare-and-swap on it).
  assert.equal(await field("loaded revision"), "0");
  await p.close();
});

test("State page: charts of writes/s, frames/s and connections, drawn by the page, kept across pages", { timeout: 90_000 }, async () => {
  const p = await page("#/state");
  await p.waitForSelector('[data-chart="writes"] svg');
  const points = (name) => p.getAttribute(`[data-chart="${name}"] svg`, "data-points").then(Number);
  // A subscriber and a steady writer, so every series moves.
  const ns = `chart${Date.now().toString(36)}`;
  const { Stateline } = await import("../../../wasm-client/dist/esm/stateline.mjs");
  const sub = Stateline.connect(server.base, { shared: false });
  const stop = sub.subscribe(`${ns}/*`, () => {});
  let writing = true;
  const writer = (async () => {
    for (let i = 0; writing; i++) {
      await fetch(`${server.base}/${ns}/k${i % 5}`, { method: "POST", body: JSON.stringify({ i }) });
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  try {
    await p.waitForFunction(() => Number(document.querySelector('[data-chart="writes"] svg')?.dataset.points) >= 3, null, { timeout: 20000 });
    for (const name of ["writes", "frames", "connections"]) {
      const svg = `[data-chart="${name}"] svg`;
      assert.ok((await points(name)) >= 2, `${name}: samples`);
      assert.equal(await p.locator(`${svg} polyline`).count(), 1, `${name}: a line`);
      assert.ok(Number(await p.getAttribute(svg, "data-max")) > 0, `${name}: a scale`);
    }
    await p.waitForFunction(() => Number(document.querySelector('[data-chart="writes"] svg').dataset.last) > 1, null, { timeout: 10000 });
    await p.waitForFunction(() => Number(document.querySelector('[data-chart="frames"] svg').dataset.last) > 1, null, { timeout: 10000 });
    assert.ok(Number(await p.getAttribute('[data-chart="connections"] svg', "data-last")) >= 2, "this page and the subscriber");
    assert.match(await p.textContent("#cards"), /writes \/ s/);
    assert.doesNotMatch(await p.textContent('[data-chart="writes"] figcaption'), /…/);
    // The samples live in memory while the UI is open: back on State, the history is still there.
    const before = await points("writes");
    await p.goto(`${server.base}/#/keys`);
    await p.waitForSelector("#keys");
    await p.goto(`${server.base}/#/state`);
    await p.waitForSelector('[data-chart="writes"] svg');
    assert.ok((await points("writes")) >= before, "kept across pages");
    await p.screenshot({ path: path.join(shots, "state-charts.png") });
    assert.deepEqual(p.outside, [], "nothing from a CDN");
  } finally {
    writing = false;
    await writer;
    stop();
    await sub.close();
    await p.close();
  }
});

test("State page: presence, the members of presence/*/* grouped by room, live", { timeout: 60_000 }, async () => {
  const room = `room${Date.now().toString(36)}`;
  const p = await page("#/state");
  await p.waitForSelector("#presence");
  // Any key under presence/<room>/ is a member (what db.presence writes, leased).
  await fetch(`${server.base}/presence/${room}/alice`, { method: "POST", body: '{"name":"Alice"}' });
  await fetch(`${server.base}/presence/${room}/bob`, { method: "POST", body: "true" });
  await fetch(`${server.base}/presence/${room}x/carol`, { method: "POST", body: '"here"' });
  await p.waitForSelector(`.room[data-room="${room}"] li[data-member="bob"]`, { timeout: 10000 });
  assert.equal(await p.locator(`.room[data-room="${room}"] li`).count(), 2);
  assert.match(await p.textContent(`.room[data-room="${room}"]`), /Alice/);
  assert.equal(await p.locator(`.room[data-room="${room}x"] li`).count(), 1, "another room, apart");
  await fetch(`${server.base}/presence/${room}/bob`, { method: "DELETE" });
  await p.waitForFunction((r) => document.querySelectorAll(`.room[data-room="${r}"] li`).length === 1, room, { timeout: 10000 });

  // A client that joins with db.presence appears, and disappears when its connection ends
  // (the lease).
  const { Stateline } = await import("../../../wasm-client/dist/esm/stateline.mjs");
  const c = Stateline.connect(server.base, { shared: false });
  const me = c.presence(room, { name: "Dave" });
  await me.joined;
  await p.waitForSelector(`.room[data-room="${room}"] li[data-member="${c.id}"]`, { timeout: 10000 });
  await p.screenshot({ path: path.join(shots, "state-presence.png") });
  await c.close();
  await p.waitForFunction(([r, id]) => !document.querySelector(`.room[data-room="${r}"] li[data-member="${id}"]`), [room, c.id], { timeout: 10000 });
  for (const k of [`${room}/alice`, `${room}x/carol`]) await fetch(`${server.base}/presence/${k}`, { method: "DELETE" });
  await p.close();
});

test("key page: history, a list of versions with a diff between two chosen", { timeout: 60_000 }, async () => {
  const key = `hist${Date.now().toString(36)}/doc`;
  for (const v of [{ a: 1, b: "x" }, { a: 2, b: "x" }, { a: 2, b: "y", c: true }]) {
    await fetch(`${server.base}/${key}`, { method: "POST", body: JSON.stringify(v) });
  }
  const p = await page(`#/key/${key}`);
  await p.waitForSelector("#history table");
  assert.deepEqual(await p.locator("#history tbody tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.revision)), ["2", "1", "0"]);
  // By default the previous version against the newest.
  assert.equal(await p.textContent("#diff-a"), "1");
  assert.equal(await p.textContent("#diff-b"), "2");
  // Each line: its sign and the pretty-printed JSON line (indentation and trailing comma aside).
  const lines = async (cls) => (await p.locator(`#history-diff pre span.${cls}`).allTextContents()).map((t) => t.trim().replace(/\s+/g, " ").replace(/,$/, ""));
  assert.deepEqual(await lines("del"), ['- "b": "x"']);
  assert.deepEqual((await lines("add")).sort(), ['+ "b": "y"', '+ "c": true'].sort());
  // Choose the oldest as A: the diff follows.
  await p.check('#history tr[data-revision="0"] input[name="hist-a"]');
  await p.waitForFunction(() => document.querySelector("#diff-a").textContent === "0");
  assert.ok((await lines("del")).includes('- "a": 1'));
  await p.screenshot({ path: path.join(shots, "key-history.png") });
  // A change made elsewhere shows up in the list, live.
  await fetch(`${server.base}/${key}`, { method: "DELETE" });
  await p.waitForSelector("#history tbody tr.deleted", { timeout: 10000 });
  assert.equal(await p.locator("#history tbody tr").count(), 4);
  await p.close();
});

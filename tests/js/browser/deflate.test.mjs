// WebSocket compression (`--ws-deflate`) in headless Chromium: the browser offers
// permessage-deflate by itself, keeps its compression context between messages, and the page's
// client works over the compressed socket unchanged, with large values both ways.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { launchChromium, Server, staticServer } from "../harness.mjs";

let s, web, ctx;
before(async () => {
  s = await new Server({ args: ["--ws-deflate"] }).start();
  web = await staticServer({
    "/deflate.html": `<!doctype html>
<script>
  // Every socket the page opens, to read what the handshake agreed.
  window.sockets = [];
  const Native = WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); sockets.push(this); }
  };
</script>
<script src="${s.base}/_client.js"></script>
<script>
  window.doc = function (n) {
    var d = { counter: n };
    for (var i = 0; i < 1600; i++) d["field" + String(i).padStart(5, "0")] = "value-" + String(i).padStart(32, "0") + "-pad";
    return d;
  };
  window.db = Stateline.connect(${JSON.stringify(s.base)}, { shared: false });
</script>`,
  });
  ctx = await launchChromium();
});
after(async () => {
  await ctx?.dispose();
  await web?.close();
  await s?.stop();
});

test("Chromium agrees permessage-deflate; 100 KiB values go both ways exactly", async () => {
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`${web.url}/deflate.html`);
  const key = `deflate${Date.now().toString(36)}`;
  const out = await page.evaluate(async (key) => {
    const limit = (p, what) => Promise.race([p, new Promise((_, no) => setTimeout(() => no(new Error(what)), 20000))]);
    const seen = [];
    db.subscribe(key, (u) => seen.push(u.value));
    // Several large writes in a row: the browser compresses each against the ones before.
    for (let n = 1; n <= 3; n++) await limit(db.set(key, doc(n)), `write ${n}`);
    await limit(
      new Promise((r) => {
        const t = setInterval(() => seen.at(-1)?.counter === 3 && (clearInterval(t), r()), 20);
      }),
      "the last update",
    );
    return { extensions: sockets.map((x) => x.extensions), last: seen.at(-1) };
  }, key);
  assert.ok(out.extensions.length >= 1);
  for (const e of out.extensions) assert.match(e, /^permessage-deflate/);
  const expected = await page.evaluate(() => doc(3));
  assert.deepEqual(out.last, expected);
  const stored = await (await fetch(`${s.base}/${key}`)).json();
  assert.deepEqual(stored.data, expected);
  assert.deepEqual(errors, []);
  await page.close();
});

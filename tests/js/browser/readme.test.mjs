// The README's JavaScript example, verbatim, in headless Chromium: the page is exactly the
// README's first HTML block under "JavaScript client" (only the server URL substituted), served
// from another origin, and must run to its last line without an error.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { launchChromium, root, Server, staticServer, until } from "../harness.mjs";

/** The first ```html block after the README's "## JavaScript client" heading. */
function readmeSnippet() {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("\n## JavaScript client"));
  const m = section.match(/```html\n([\s\S]*?)```/);
  assert.ok(m, "the README has an HTML example in its JavaScript section");
  return m[1];
}

let s, web, ctx;
before(async () => {
  s = await new Server().start();
  const html = readmeSnippet();
  assert.ok(html.includes("http://127.0.0.1:8800"), "the example names the default server URL");
  web = await staticServer({ "/readme.html": `<!doctype html>\n${html.replaceAll("http://127.0.0.1:8800", s.base)}` });
  ctx = await launchChromium();
});
after(async () => {
  await ctx?.dispose();
  await web?.close();
  await s?.stop();
});

test("the README's JavaScript example runs as written", { timeout: 60_000 }, async () => {
  const page = await ctx.newPage();
  const errors = [];
  const logs = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // What the example logs, as values (its first argument each time).
  page.on("console", (m) => {
    // Chromium logs every 404 as a console error (the example's `get` of an absent key, the
    // favicon): that is a read that found nothing, not a failure of the example.
    if (m.type() === "error") {
      if (!m.text().startsWith("Failed to load resource")) errors.push(m.text());
    }
    else logs.push(m.args()[0]?.jsonValue().catch(() => undefined));
  });
  try {
    await page.goto(`${web.url}/readme.html`);
    const noErrors = () => {
      if (errors.length) throw new Error(`the example failed: ${errors.join("; ")}`);
    };
    // Its writes reached the server...
    await until(async () => {
      noErrors();
      const todo = await s.json("/todos/a");
      const counter = await s.json("/counter");
      return todo && counter;
    }, "the example's writes");
    assert.deepEqual((await s.json("/todos/a")).data, { t: "milk" });
    assert.equal((await s.json("/counter")).data, 1, "the compare-and-swap created the counter");
    // ...its compare-and-swap reported success, and it got to its last line: the async
    // iteration over `settings` is subscribed on the server.
    await until(async () => {
      noErrors();
      const st = await s.json("/?api=state");
      return st && st.pools.some((p) => p.key === "settings" && p.connections > 0);
    }, "the example's last line (the subscription to settings)");
    const r = await until(async () => (await Promise.all(logs)).find((v) => v && v.ok !== undefined), "the update's result logged");
    assert.deepEqual([r.ok, r.key, r.revision], [true, "counter", 0]);
    assert.ok((await Promise.all(logs)).includes("open"), "the state callback logged open");
    noErrors();
  } finally {
    await page.close();
  }
});

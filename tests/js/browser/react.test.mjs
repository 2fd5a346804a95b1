// `stateline-client/react` in headless Chromium: a React page using `useStateline` against a
// real server re-renders on every change, says `offline` while the server is away and `live`
// again after, and reports a refused pattern as `error` without disturbing other hooks. The
// page is React (the npm packages) and the hook bundled by esbuild, served from another port.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { build } from "esbuild";
import { launchChromium, root, Server, staticServer, until } from "../harness.mjs";

let s, web, ctx;
before(async () => {
  s = await new Server().start();
  const app = `
    import React from "react";
    import { createRoot } from "react-dom/client";
    import { useStateline } from ${JSON.stringify(join(root, "wasm-client/dist/esm/react.mjs"))};
    const h = React.createElement;
    function Show({ pattern, id }) {
      const { value, status, error } = useStateline(pattern, { base: window.BASE });
      return h("p", { id }, status + "|" + JSON.stringify(value === undefined ? "undefined" : value) + "|" + (error ? error.code : ""));
    }
    function App() {
      const [n, setN] = React.useState(0);
      window.next = () => setN((x) => x + 1);
      return h("div", null,
        h(Show, { id: "doc", pattern: window.NS + "/doc" + (n ? n : "") }),
        h(Show, { id: "list", pattern: window.NS + "/list/*" }),
        h(Show, { id: "bad", pattern: "bad/x*" }));
    }
    createRoot(document.getElementById("root")).render(h(App));
  `;
  const out = await build({
    stdin: { contents: app, resolveDir: root, loader: "js" },
    bundle: true,
    format: "esm",
    write: false,
    logLevel: "silent",
    define: { "process.env.NODE_ENV": '"production"' },
  });
  const bundle = out.outputFiles[0].text.replace(/<\/script/g, "<\\/script");
  web = await staticServer({
    "/app.html": `<!doctype html><div id="root"></div>
<script>window.BASE = ${JSON.stringify(s.base)}; window.NS = "react" + Date.now().toString(36);</script>
<script type="module">${bundle}</script>`,
  });
  ctx = await launchChromium();
});
after(async () => {
  await ctx?.dispose();
  await web?.close();
  await s?.stop();
});

test("useStateline: renders the value, each change, offline while the server is away, live after; a refused pattern is its own error", async () => {
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`${web.url}/app.html`);
  const text = (id) => page.evaluate((id) => document.getElementById(id)?.textContent ?? "", id);
  const ns = await page.evaluate(() => window.NS);
  const post = async (path, body) => {
    const r = await fetch(`${s.base}/${path}`, { method: "POST", body: JSON.stringify(body) });
    assert.equal(r.status, 200, await r.text());
  };

  await until(async () => (await text("doc")) === "live|null|", "an absent key renders null");
  // Each hook has its own subscription: the list's snapshot may come after the doc's.
  await until(async () => (await text("list")) === "live|[]|", "an empty list renders []");
  await post(`${ns}/doc`, { title: "hello" });
  await until(async () => (await text("doc")) === 'live|{"title":"hello"}|', "the set");
  await post(`${ns}/list/*`, "a");
  await until(async () => (await text("list")).startsWith('live|[{"key":'), "the push");
  // The refused pattern failed alone: the others are live.
  assert.match(await text("bad"), /^error\|"undefined"\|[a-z-]+$/);
  // Not a loading/error status for the other hooks on the page.
  assert.match(await text("doc"), /^live/);

  await s.kill();
  await until(async () => (await text("doc")).startsWith("offline|"), "offline while away");
  assert.equal(await text("doc"), 'offline|{"title":"hello"}|', "the last value stays");
  await s.start();
  await until(async () => (await text("doc")).startsWith("live|"), "live again");
  await post(`${ns}/doc`, { title: "again" });
  await until(async () => (await text("doc")) === 'live|{"title":"again"}|', "a change after the restart");

  // A new pattern: its own value, not the old one's, then live.
  await page.evaluate(() => window.next());
  await until(async () => (await text("doc")) === "live|null|", "the new key (absent)");
  assert.deepEqual(errors, []);
  await page.close();
});

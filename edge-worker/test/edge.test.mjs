// The Durable Object's lifecycle, inside workerd: eviction, hibernated sockets, namespaces.
import { SELF, env, evictDurableObject } from "cloudflare:test";
import { describe, expect, it } from "vitest";

const base = "https://edge.test";
const uniq = (p) => `${p}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
const stub = (ns) => env.NAMESPACES.get(env.NAMESPACES.idFromName(ns));

async function post(key, value, headers = {}) {
  const r = await SELF.fetch(`${base}/${key}`, { method: "POST", body: JSON.stringify(value), headers });
  expect(r.status, await r.text()).toBe(200);
  return r;
}

// Reads the body too: eviction waits for requests in flight, and an unread body keeps one open.
async function version(key) {
  const r = await SELF.fetch(`${base}/${key}`);
  await r.text();
  return r.headers.get("x-version");
}

async function openSocket(path) {
  const r = await SELF.fetch(`${base}${path}`, { headers: { Upgrade: "websocket" } });
  expect(r.status).toBe(101);
  const ws = r.webSocket;
  const frames = [];
  const waiters = [];
  // Frames arrive in order; binary ones as a Blob here, so decode them in a chain to keep it.
  let chain = Promise.resolve();
  ws.addEventListener("message", (e) => {
    chain = chain.then(async () => {
      const d = e.data;
      const text = typeof d === "string" ? d
        : d instanceof Blob ? await d.text() : new TextDecoder().decode(d);
      frames.push(JSON.parse(text));
      while (waiters.length) waiters.shift()();
    });
  });
  ws.accept();
  // The next frame, waiting at most `ms`.
  ws.next = async (ms = 5000) => {
    const deadline = Date.now() + ms;
    while (!frames.length) {
      if (Date.now() > deadline) throw new Error(`no frame on ${path} within ${ms} ms`);
      await new Promise((res) => { waiters.push(res); setTimeout(res, 50); });
    }
    return frames.shift();
  };
  return ws;
}

describe("the edge worker in workerd", () => {
  it("keeps a write, its revision and the sequence across eviction of its object", async () => {
    const ns = uniq("ev");
    await post(`${ns}/doc`, { a: 1 });
    await post(`${ns}/doc`, { a: 2 });
    const before = await version(`${ns}/doc`);
    expect(before).toMatch(/^[0-9a-f]+$/);
    await evictDurableObject(stub(ns));
    const r = await SELF.fetch(`${base}/${ns}/doc`);
    expect(r.status).toBe(200);
    expect((await r.json()).data).toEqual({ a: 2 });
    expect(r.headers.get("x-revision")).toBe("1");
    // The next write continues the sequence rather than restarting it.
    await post(`${ns}/doc`, { a: 3 });
    const after = await version(`${ns}/doc`);
    expect(BigInt("0x" + after)).toBeGreaterThan(BigInt("0x" + before));
    // And a resume from the version before eviction gets exactly what was missed.
    const ws = await openSocket(`/${ns}/doc?v=${before}`);
    const f = await ws.next();
    expect(f.data.data).toEqual({ a: 3 });
    ws.close();
  });

  it("delivers the next change to sockets hibernated by an eviction", async () => {
    const ns = uniq("hib");
    await post(`${ns}/k`, 1);
    const ooo = await openSocket(`/${ns}/k`);
    expect((await ooo.next()).snapshot).toBe(true);
    const mux = await openSocket(`/_ws?ns=${ns}`);
    mux.send(JSON.stringify({ id: 1, op: "sub", path: `${ns}/*` }));
    expect((await mux.next()).ok).toBe(true);
    expect((await mux.next()).sub).toBe(`${ns}/*`);
    await evictDurableObject(stub(ns));
    await post(`${ns}/k`, 2);
    const a = await ooo.next();
    expect(a.snapshot).toBe(false);
    expect(JSON.stringify(a.data)).toContain("2");
    const b = await mux.next();
    expect(b.sub).toBe(`${ns}/*`);
    expect(JSON.stringify(b.data)).toContain("2");
    // The mux socket's subscription survived in its attachment: a message after eviction works.
    await evictDurableObject(stub(ns));
    mux.send(JSON.stringify({ id: 2, op: "set", key: `${ns}/k`, value: 3 }));
    const frame = await mux.next();
    const ack = await mux.next();
    expect(JSON.stringify(frame.data)).toContain("3");
    expect(ack).toMatchObject({ id: 2, ok: true });
    ooo.close();
    mux.close();
  });

  it("serves two namespaces from two objects and lists keys across them", async () => {
    const a = uniq("nsa");
    const b = uniq("nsb");
    await post(`${a}/1`, "x");
    await post(`${b}/1`, "y");
    const ha = await (await SELF.fetch(`${base}/_health?ns=${a}`)).json();
    const hb = await (await SELF.fetch(`${base}/_health?ns=${b}`)).json();
    expect(ha.keys).toBe(1);
    expect(hb.keys).toBe(1);
    // Distinct objects: each has its own sequence; writing in one leaves the other's alone.
    await post(`${a}/2`, "z");
    const hb2 = await (await SELF.fetch(`${base}/_health?ns=${b}`)).json();
    expect(hb2.seq).toBe(hb.seq);
    const keys = await (await SELF.fetch(`${base}/?api=keys&limit=500`)).json();
    expect(keys.keys).toEqual(expect.arrayContaining([`${a}/1`, `${a}/2`, `${b}/1`]));
    // The UI's State page sees the whole deployment: counts summed over the namespaces.
    const info = await (await SELF.fetch(`${base}/?api=info`)).json();
    expect(info.keys).toBeGreaterThanOrEqual(3);
    expect(info.namespaces).toBeGreaterThanOrEqual(2);
    const ws = await openSocket(`/${a}/1`);
    await ws.next();
    const state = await (await SELF.fetch(`${base}/?api=state`)).json();
    expect(state.pools.map((p) => p.key)).toContain(`${a}/1`);
    ws.close();
    // A glob across namespaces is refused with the reason, and changes nothing.
    const r = await SELF.fetch(`${base}/*/1`);
    expect(r.status).toBe(400);
    expect(await r.text()).toContain("spans namespaces");
  });

  it("writes through before acknowledging: storage holds the record after the reply", async () => {
    const ns = uniq("wt");
    await post(`${ns}/x`, { n: 1 });
    const rows = await import("cloudflare:test").then(({ runInDurableObject }) =>
      runInDurableObject(stub(ns), (_obj, state) =>
        state.storage.sql.exec("SELECT key FROM entries").toArray().map((r) => r.key)));
    expect(rows).toContain(`${ns}/x`);
  });
});

// A Worker that uses the client's npm module in workerd (its `workerd` export): it connects to
// the Stateline server named in `?base=`, writes, reads, subscribes and does a compare-and-swap,
// and answers what it saw. Driven by client.test.mjs.
import { Stateline } from "../../../wasm-client/dist/esm/stateline.workerd.mjs";

export default {
  async fetch(req) {
    const url = new URL(req.url);
    const base = url.searchParams.get("base");
    const key = url.searchParams.get("key");
    const c = Stateline.connect(base, { shared: false });
    try {
      await c.ready;
      const updates = [];
      const seen = new Promise((resolve) => {
        c.subscribe(key, (u) => {
          updates.push(u.value);
          if (u.value && u.value.n === 2) resolve();
        });
      });
      const set = await c.set(key, { n: 1 });
      const got = await c.get(key);
      // Compare-and-swap on the revision read; the same read again is stale.
      const cas = await c.update(key, { n: 2 }, got.revision);
      const stale = await c.update(key, { n: 3 }, got.revision);
      await Promise.race([seen, new Promise((_, rej) => setTimeout(() => rej(new Error("no update")), 5000))]);
      return Response.json({ set, got, cas, stale, updates, state: c.state });
    } catch (e) {
      return Response.json({ error: String(e && e.stack || e) }, { status: 500 });
    } finally {
      await c.close();
    }
  },
};

// WebSocket compression (`--ws-deflate`) against an independent permessage-deflate
// implementation: the `ws` package, which offers compression by default, keeps its compression
// context between messages and compresses what it sends from 1 KiB on. The client runs over it
// unchanged, values arrive exactly as written both ways, and a server without the flag leaves
// the connection uncompressed.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { Server, until } from "../harness.mjs";
import { Stateline } from "../../../wasm-client/dist/esm/stateline.mjs";

let on;
let off;
before(async () => {
  [on, off] = await Promise.all([new Server({ args: ["--ws-deflate"] }).start(), new Server().start()]);
});
after(async () => {
  await Promise.all([on.stop(), off.stop()]);
});

/** `p`, or a failure naming `what` after `ms` (a client retries a refused write forever). */
const within = (p, what, ms = 20_000) => {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
};

const ns = (p) => `${p}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

/** A ~100 KiB document whose `counter` is `n`. */
const doc = (n) => {
  const d = { counter: n };
  for (let i = 0; i < 1600; i++) d[`field${String(i).padStart(5, "0")}`] = `value-${String(i).padStart(32, "0")}-pad`;
  return d;
};

/** The `ws` WebSocket, keeping every socket it opens. */
function recording() {
  const sockets = [];
  class Recording extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  return { WebSocket: Recording, sockets };
}

/** Opens a `ws` socket on `path`: resolves with it once open. */
function open(server, path) {
  const sock = new WebSocket(`ws://127.0.0.1:${server.port}${path}`);
  return new Promise((resolve, reject) => {
    sock.once("open", () => resolve(sock));
    sock.once("error", reject);
  });
}

test("with --ws-deflate: compression is agreed and a subscription's frames inflate to the value", async () => {
  const key = ns("deflate");
  const value = doc(0);
  const r = await fetch(`${on.base}/${key}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(value) });
  assert.equal(r.status, 200);
  const sock = await open(on, `/${key}`);
  try {
    assert.equal(sock.extensions, "permessage-deflate");
    const first = await new Promise((resolve) => sock.once("message", (m) => resolve(JSON.parse(m.toString()))));
    assert.deepEqual(first.data.data, value);
  } finally {
    sock.close();
  }
});

test("without the flag: the offer is ignored", async () => {
  const sock = await open(off, "/_ws");
  try {
    assert.equal(sock.extensions, "");
  } finally {
    sock.close();
  }
});

test("the client over a compressing ws: large writes and updates arrive exactly as written", async () => {
  const rec = recording();
  const writer = Stateline.connect(on.base, { shared: false, WebSocket: rec.WebSocket });
  const reader = Stateline.connect(on.base, { shared: false, WebSocket: rec.WebSocket });
  const key = ns("big");
  try {
    // Several 100 KiB writes in a row: `ws` compresses each against the ones before it
    // (context takeover), so the server must keep its inflate state between messages.
    for (let n = 1; n <= 3; n++) await within(writer.set(key, doc(n)), `write ${n}`);
    const got = await (await fetch(`${on.base}/${key}`)).json();
    assert.deepEqual(got.data, doc(3));

    const updates = [];
    const unsub = reader.subscribe(key, (u) => updates.push(u.value));
    await until(() => updates.length >= 1, "the initial value");
    assert.deepEqual(updates.at(-1), doc(3));
    // Numbers of every kind stay as they were.
    const changed = { ...doc(4), nums: [0, -1, 1.5, 1e21, 9007199254740991, -0.000001] };
    await within(writer.set(key, changed), "the changed write");
    await until(() => updates.at(-1)?.counter === 4, "the update");
    assert.deepEqual(updates.at(-1), changed);
    unsub.unsubscribe();

    assert.ok(rec.sockets.length >= 2);
    for (const s of rec.sockets) assert.equal(s.extensions, "permessage-deflate");
  } finally {
    await Promise.all([writer.close(), reader.close()]);
  }
});

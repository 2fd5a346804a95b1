// Closing a client whose socket is still connecting, in Node: the `ws` package (Node 20's
// WebSocket) emits an `error` event when a connecting socket is closed, and an `error` nobody
// listens to is thrown as an uncaught exception. The client must swallow it: a Node program that
// closes a client during a (re)connect must not crash.
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, test } from "node:test";
import { WebSocket } from "ws";
import { Server, until } from "../harness.mjs";
import { Stateline } from "../../../wasm-client/dist/esm/stateline.mjs";

// Uncaught exceptions while a test runs: it listens itself, so it can assert there were none.
let uncaught = [];
const onUncaught = (e) => uncaught.push(e);
let s;
before(async () => {
  process.on("uncaughtException", onUncaught);
  s = await new Server().start();
});
after(async () => {
  process.off("uncaughtException", onUncaught);
  await s.stop();
});

/** A TCP server on 127.0.0.1 that accepts connections and never answers the WebSocket upgrade:
 * a client connecting to it stays `connecting` for as long as the test wants. */
async function silentServer(port = 0) {
  const sockets = [];
  const srv = createServer((sock) => {
    sock.on("error", () => {});
    sock.on("close", () => { sock.gone = true; });
    sock.resume(); // read (and drop) the upgrade request, so the peer closing is seen
    sockets.push(sock);
  });
  await new Promise((r) => srv.listen(port, "127.0.0.1", r));
  return {
    base: `http://127.0.0.1:${srv.address().port}`,
    sockets,
    close: async () => {
      for (const x of sockets) x.destroy();
      await new Promise((r) => srv.close(r));
    },
  };
}

for (const [name, opts] of [["the ws package", { WebSocket }], ["the default WebSocket", {}]]) {
  test(`close while the handshake is pending (${name}): no uncaught exception`, async () => {
    uncaught = [];
    const silent = await silentServer();
    try {
      const c = Stateline.connect(silent.base, { shared: false, ...opts });
      await c.ready;
      // The TCP connection is up and the upgrade request sent; no answer will come.
      await until(() => silent.sockets.length === 1, "the client's connection");
      assert.equal(c.state, "connecting");
      await c.close();
      assert.equal(c.state, "closed");
      // The client aborted the handshake: its end of the connection goes away...
      await until(() => silent.sockets[0].gone, "the aborted connection to close");
      // ...and `ws` reports the abort (its `error` event) on a later tick: let those run.
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(uncaught, []);
    } finally {
      await silent.close();
    }
  });
}

test("close right after connect (the socket just created): no uncaught exception", async () => {
  uncaught = [];
  // Several clients, each closed the moment it exists: the socket is constructed when the wasm
  // is ready, then closed while still connecting.
  const clients = Array.from({ length: 5 }, () => Stateline.connect(s.base, { shared: false, WebSocket }));
  await Promise.all(clients.map((c) => c.close()));
  for (const c of clients) assert.equal(c.state, "closed");
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(uncaught, []);
});

test("close during a reconnect: no uncaught exception", async () => {
  uncaught = [];
  const c = Stateline.connect(s.base, { shared: false, WebSocket, backoffBase: 10, backoffMax: 20 });
  await until(() => c.state === "open", "the client to connect");
  // The server goes away and something that never answers the upgrade takes its port: the
  // client's reconnect attempt stays connecting.
  await s.kill();
  const silent = await silentServer(s.port);
  try {
    await until(() => silent.sockets.length > 0 && c.state === "connecting", "a pending reconnect");
    await c.close();
    await until(() => silent.sockets.every((x) => x.gone), "the aborted connection to close");
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(uncaught, []);
  } finally {
    await silent.close();
    await s.start();
  }
});

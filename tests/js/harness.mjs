// Test harness for the JS client tests: a real `stateline` server on 127.0.0.1 with its own temp
// data folder (killed and restarted on the same port and data to test reconnects), and a tiny
// static file server on another port (so pages load the client cross-origin: CORS is exercised).
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.STATELINE_BIN || join(root, "target/debug/stateline");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free port on 127.0.0.1 (asked from the kernel). */
export async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const port = s.address().port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Waits (bounded) until `check()` returns a truthy value; throws with `what` otherwise. */
export async function until(check, what, ms = 20_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

export class Server {
  /** `args`: more `stateline serve` flags; `env`: more environment (e.g. a JWT secret). */
  constructor({ args = [], env = {} } = {}) {
    this.data = mkdtempSync(join(tmpdir(), "stateline-js-"));
    this.proc = null;
    this.args = args;
    this.env = env;
  }
  get base() {
    return `http://127.0.0.1:${this.port}`;
  }
  async start() {
    this.port ??= await freePort();
    this.proc = spawn(bin, ["serve", "--addr", `127.0.0.1:${this.port}`, "--data", this.data, ...this.args], {
      stdio: ["ignore", "ignore", "inherit"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn", ...this.env },
    });
    const proc = this.proc;
    await until(async () => {
      if (proc.exitCode !== null) throw new Error(`stateline exited with ${proc.exitCode}`);
      try {
        return (await fetch(`${this.base}/_health`)).ok;
      } catch {
        return false;
      }
    }, "the server to answer /_health");
    return this;
  }
  /** SIGKILL: no graceful close frames, as in a crash. */
  async kill() {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise((r) => p.once("exit", r));
    p.kill("SIGKILL");
    await gone;
  }
  async stop() {
    await this.kill();
    rmSync(this.data, { recursive: true, force: true });
  }
  async json(path) {
    const r = await fetch(`${this.base}${path}`);
    return r.status === 200 ? r.json() : null;
  }
}

/** Serves `pages` (path → HTML) on 127.0.0.1. */
export async function staticServer(pages) {
  const s = createServer((req, res) => {
    const body = pages[req.url.split("?")[0]];
    if (body === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(body);
  });
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${s.address().port}`, close: () => new Promise((r) => s.close(r)) };
}

/** Headless Chromium (Debian's, driven by playwright-core) with a fresh profile; `close()` also
 * removes the profile. The flags keep it off the network this machine cannot reach. */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  const profile = mkdtempSync(join(tmpdir(), "stateline-chromium-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
  });
  ctx.dispose = async () => {
    await ctx.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return ctx;
}

// Starts a real `stateline` (127.0.0.1, a free port, its own data folder) and headless Chromium
// (Debian's, driven by playwright-core) for the UI tests; stops both by PID.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, "../..");

const freePort = () => new Promise((resolve, reject) => {
  const s = createServer();
  s.once("error", reject);
  s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

export async function startServer() {
  const port = await freePort();
  const data = mkdtempSync(path.join(tmpdir(), "stateline-ui-"));
  const bin = process.env.STATELINE_BIN || path.join(root, "target/debug/stateline");
  const child = spawn(bin, ["serve", "--addr", `127.0.0.1:${port}`, "--data", data], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`stateline exited: ${err}`);
    try { if ((await fetch(`${url}/_health`)).ok) break; } catch {}
    if (i > 200) throw new Error(`stateline not ready on ${url}: ${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    async stop() {
      if (child.exitCode === null) {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await gone;
      }
      rmSync(data, { recursive: true, force: true });
    },
  };
}

export async function launch() {
  const profile = mkdtempSync(path.join(tmpdir(), "stateline-chromium-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  return {
    ctx,
    async close() {
      await ctx.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

// Starts and stops `wrangler dev` (workerd) for tests: 127.0.0.1 only, its own process group so
// the whole tree (wrangler, its node child, two workerd processes) stops together, by PID.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, "../..");

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// By default the edge worker (edge-worker/wrangler.toml), ready when /_health answers 200.
// `script` runs another Worker file instead (no wrangler.toml), ready when it answers at all.
export async function startEdge({ port, state, mode = "namespace", vars = {}, script, log = () => {} }) {
  port ??= await freePort();
  const args = [
    "dev", ...(script ? [script, "--name", "stateline-test", "--compatibility-date", "2026-04-20"] : []),
    "--local", "--ip", "127.0.0.1", "--port", String(port),
    "--show-interactive-dev-session=false", "--persist-to", state,
    "--var", `STATELINE_MODE:${mode}`,
    ...Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}:${v}`]),
  ];
  const child = spawn(path.join(root, "node_modules/.bin/wrangler"), args, {
    cwd: script ? path.dirname(script) : path.join(root, "edge-worker"),
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" },
  });
  let output = "";
  child.stdout.on("data", (d) => { output += d; log(String(d)); });
  child.stderr.on("data", (d) => { output += d; log(String(d)); });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`wrangler exited (${child.exitCode}):\n${output}`);
    try {
      const r = await fetch(`${url}/_health`);
      await r.body?.cancel();
      if (r.ok || script) break;
    } catch {}
    if (Date.now() > deadline) {
      stop(child);
      throw new Error(`wrangler not ready on ${url} within 60 s:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return { url, port, child, output: () => output, stop: () => stop(child) };
}

// Stops the process group and waits for it to exit (a new instance on the same port or state
// directory must not race the old one).
export async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once("exit", r));
  try { process.kill(-child.pid, "SIGTERM"); } catch {}
  const timer = setTimeout(() => { try { process.kill(-child.pid, "SIGKILL"); } catch {} }, 5000);
  await gone;
  clearTimeout(timer);
  // workerd children may outlive wrangler's own exit by a moment.
  for (let i = 0; i < 40; i++) {
    try { process.kill(-child.pid, 0); } catch { return; }
    await new Promise((r) => setTimeout(r, 100));
  }
  try { process.kill(-child.pid, "SIGKILL"); } catch {}
}

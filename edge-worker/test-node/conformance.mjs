// Runs the black-box conformance suite (tests/, the one the native server passes) unchanged
// against the edge worker in workerd, once per mode. Documented differences are asserted by the
// suite itself (STATELINE_EDGE tells it which mode it faces).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startEdge, root } from "./wrangler.mjs";

let failed = false;
for (const mode of ["namespace", "single"]) {
  const state = mkdtempSync(path.join(tmpdir(), `stateline-edge-${mode}-`));
  const edge = await startEdge({ state, mode });
  console.log(`==> conformance suite against the edge worker (${mode} mode) at ${edge.url}`);
  try {
    const r = spawnSync("cargo", ["test", "-p", "stateline-conformance", "--no-fail-fast"], {
      cwd: root,
      stdio: "inherit",
      env: { ...process.env, STATELINE_URL: edge.url, STATELINE_EDGE: mode },
    });
    if (r.status !== 0) {
      failed = true;
      console.error(`conformance suite failed against the edge worker in ${mode} mode`);
      console.error(edge.output().split("\n").slice(-40).join("\n"));
    }
  } finally {
    await edge.stop();
    rmSync(state, { recursive: true, force: true });
  }
}
process.exit(failed ? 1 : 0);

// Runs the black-box conformance suite (tests/, the one the native server passes) unchanged
// against the edge worker in workerd, once per mode. Documented differences are asserted by the
// suite itself (STATELINE_EDGE tells it which mode it faces).
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import path from "node:path";
import { startEdge, root } from "./wrangler.mjs";

// Single mode runs under the example access rules (examples/rules.toml, bundled as the
// STATELINE_RULES variable) so the suite's rules tests check the worker enforces them as the
// native server does; everything outside private/ stays public, so the other tests are the same.
// (In namespace mode the rules tests' cross-namespace globs would meet the documented refusal
// instead; the rules engine in each object is the same either way.)
const rules = readFileSync(path.join(root, "examples/rules.toml"), "utf8");
const secret = randomBytes(24).toString("hex");
let failed = false;
for (const mode of ["namespace", "single"]) {
  const state = mkdtempSync(path.join(tmpdir(), `stateline-edge-${mode}-`));
  // A short silence limit, so the case of a peer that stops answering pings ends in seconds.
  const silence = "2";
  const vars = {
    STATELINE_SILENCE_SECS: silence,
    ...(mode === "single" ? { STATELINE_RULES: rules, STATELINE_JWT_SECRET: secret } : {}),
  };
  const edge = await startEdge({ state, mode, vars });
  console.log(`==> conformance suite against the edge worker (${mode} mode${vars.STATELINE_RULES ? ", examples/rules.toml" : ""}) at ${edge.url}`);
  try {
    // CONFORMANCE_TEST=<file> runs one file of tests/tests/ (e.g. tx) instead of the whole suite.
    const only = process.env.CONFORMANCE_TEST ? ["--test", process.env.CONFORMANCE_TEST] : [];
    const r = spawnSync("cargo", ["test", "-p", "stateline-conformance", "--no-fail-fast", ...only], {
      cwd: root,
      stdio: "inherit",
      env: {
        ...process.env,
        STATELINE_URL: edge.url,
        STATELINE_EDGE: mode,
        STATELINE_SILENCE_SECS: silence,
        ...(vars.STATELINE_JWT_SECRET ? { STATELINE_JWT_SECRET: secret } : {}),
      },
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

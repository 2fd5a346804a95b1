// Builds the Stateline JS client (`npm run build:client`):
//   dist/stateline.js            one classic script, wasm inlined: globals Stateline and AtomKV
//   dist/esm/stateline.mjs       one ES module, wasm inlined (browsers, Node 20+)
//   dist/esm/stateline.workerd.mjs + stateline_bg.wasm   the ES module for Workers, which may not
//                                compile wasm from bytes at run time and import it instead
//   dist/esm/stateline.d.ts      TypeScript declarations
//   dist/esm/react.mjs + .d.ts   `stateline-client/react`: the useStateline hook (React is an
//                                optional peer dependency; the classic script does not hold it)
// Steps: cargo (wasm-release profile) → wasm-bindgen (no-modules and web glue) → wasm-opt -Oz
// (npm binaryen, explicit features) → gzip + base64 inlined, inflated at load time with the
// DecompressionStream all three hosts have. docs/HACKING.md says why each tool and flag is what it is.
import { transformSync } from "esbuild";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const run = (cmd, args, opts = {}) => {
  console.log(`$ ${cmd} ${args.join(" ")}`);
  execFileSync(cmd, args, { stdio: "inherit", cwd: root, ...opts });
};
const home = process.env.HOME || "";
const wasmBindgen = process.env.WASM_BINDGEN_BIN || "wasm-bindgen";
const wasmOpt = process.env.WASM_OPT_BIN || join(root, "node_modules/.bin/wasm-opt");
const env = { ...process.env, PATH: `${home}/.cargo/bin:${process.env.PATH}` };

run("cargo", ["build", "-p", "stateline-wasm-client", "--target", "wasm32-unknown-unknown", "--profile", "wasm-release"], { env });
// Where cargo puts its output: CARGO_TARGET_DIR when set, as for cargo itself.
const target = process.env.CARGO_TARGET_DIR || join(root, "target");
const raw = join(target, "wasm32-unknown-unknown/wasm-release/stateline_wasm_client.wasm");
const out = join(target, "stateline-wasm-client");
rmSync(out, { recursive: true, force: true });
run(wasmBindgen, [raw, "--target", "no-modules", "--out-dir", join(out, "no-modules")], { env });
run(wasmBindgen, [raw, "--target", "web", "--out-dir", join(out, "web")], { env });
const opt = join(out, "stateline_bg.wasm");
// rustc's default wasm features must be named, or binaryen 132 refuses the module.
run(wasmOpt, ["-Oz", "--enable-bulk-memory", "--enable-nontrapping-float-to-int", "--enable-sign-ext",
  "--enable-mutable-globals", "--enable-reference-types", "--enable-multivalue",
  join(out, "web/stateline_wasm_client_bg.wasm"), "-o", opt], { env });
// Both glues import the same wasm: one optimized module serves both.
const same = readFileSync(join(out, "web/stateline_wasm_client_bg.wasm")).equals(readFileSync(join(out, "no-modules/stateline_wasm_client_bg.wasm")));
if (!same) throw new Error("wasm-bindgen produced different modules for no-modules and web");

const wasm = readFileSync(opt);
const b64 = gzipSync(wasm, { level: 9 }).toString("base64");
// The API minified (its comments and whitespace would count against the size budget); its
// one top-level name, __statelineApi, is kept (esbuild renames no top-level name without a format).
const api = transformSync(readFileSync(join(here, "js/api.js"), "utf8"), { minify: true, target: "es2020", legalComments: "none" }).code;
const version = JSON.parse(readFileSync(join(here, "package.json"), "utf8")).version;
const banner = `/*! Stateline client ${version} (wasm inlined) — https://example.invalid/stateline — MIT OR Apache-2.0 */\n`;
const inflate = `function __statelineInflate(b64) {
  var bin = atob(b64), bytes = new Uint8Array(bin.length);
  for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  var s = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Response(s).arrayBuffer().then(function (b) { return new Uint8Array(b); });
}
var __statelineWasm = "${b64}";
`;

// (a) the classic script: everything inside one function, so it adds only its two globals.
const glueClassic = readFileSync(join(out, "no-modules/stateline_wasm_client.js"), "utf8");
const classic = `${banner}(function () {
// The script's own URL, read while it runs (document.currentScript is null afterwards).
var __statelineSrc = typeof document !== "undefined" && document.currentScript ? document.currentScript.src : "";
${glueClassic}
${api}
${inflate}
var __statelineLoaded;
function __statelineLoad() {
  return __statelineLoaded || (__statelineLoaded = __statelineInflate(__statelineWasm)
    .then(function (bytes) { return wasm_bindgen({ module_or_path: bytes }); })
    .then(function () { return wasm_bindgen; }));
}
var __api = __statelineApi(__statelineLoad, { WebSocket: function () { return globalThis.WebSocket; } });
globalThis.Stateline = __api.Stateline;
// AtomKV.BASE: the origin the script came from, as AtomKV's own hosted library does.
globalThis.AtomKV = __api.makeAtomKV(__statelineSrc ? new URL(__statelineSrc).origin : undefined);
})();
`;

// (b) the ES modules: the web glue (it exports initSync and Client), then the API.
// Its own exports (the raw Client class, init functions, a default) are not the package's API.
const glueWeb = readFileSync(join(out, "web/stateline_wasm_client.js"), "utf8")
  .replace(/^export \{[^}]*\};?\s*$/gm, "")
  .replace(/^export (class|function|async function|const|let) /gm, "$1 ");
const nodeWs = `async function __statelineWs() {
  if (globalThis.WebSocket) return globalThis.WebSocket;
  // Node 20 has no WebSocket global (Node 22 does): use the ws package when it is installed.
  if (typeof process === "object" && process.versions && process.versions.node) {
    try { return (await import(/* webpackIgnore: true */ "ws")).WebSocket; } catch (e) { return undefined; }
  }
  return undefined;
}
const __statelineWsCtor = await __statelineWs();
`;
const esmTail = (load) => `${api}
${nodeWs}
${load}
const __api = __statelineApi(__statelineLoad, { WebSocket: () => __statelineWsCtor });
export const Stateline = __api.Stateline;
export const connect = Stateline.connect;
export const makeAtomKV = __api.makeAtomKV;
export default Stateline;
`;
const esm = `${banner}${glueWeb}
${inflate}
${esmTail(`const __statelineReady = __statelineInflate(__statelineWasm).then((bytes) => __wbg_init({ module_or_path: bytes }));
await __statelineReady;
const __statelineLoad = () => Promise.resolve({ Client });`)}`;
const workerd = `${banner}import __statelineModule from "./stateline_bg.wasm";
${glueWeb}
initSync({ module: __statelineModule });
${esmTail(`const __statelineLoad = () => Promise.resolve({ Client });`)}`;

const dist = join(here, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, "esm"), { recursive: true });
writeFileSync(join(dist, "stateline.js"), classic);
writeFileSync(join(dist, "esm/stateline.mjs"), esm);
writeFileSync(join(dist, "esm/stateline.workerd.mjs"), workerd);
copyFileSync(opt, join(dist, "esm/stateline_bg.wasm"));
copyFileSync(join(here, "js/stateline.d.ts"), join(dist, "esm/stateline.d.ts"));
copyFileSync(join(here, "js/stateline.d.ts"), join(dist, "esm/stateline.workerd.d.ts"));
// `stateline-client/react`: the hook, next to the ES module it imports (not in the script).
copyFileSync(join(here, "js/react.mjs"), join(dist, "esm/react.mjs"));
copyFileSync(join(here, "js/react.d.ts"), join(dist, "esm/react.d.ts"));

const gz = (b) => gzipSync(b, { level: 9 }).length;
const sizes = {
  wasmCargo: readFileSync(raw).length,
  wasmBindgen: readFileSync(join(out, "web/stateline_wasm_client_bg.wasm")).length,
  wasmOpt: wasm.length,
  wasmOptGzip: gz(wasm),
  script: Buffer.byteLength(classic),
  scriptGzip: gz(Buffer.from(classic)),
  esm: Buffer.byteLength(esm),
  esmGzip: gz(Buffer.from(esm)),
};
writeFileSync(join(dist, "sizes.json"), JSON.stringify(sizes, null, 2) + "\n");
console.log(sizes);
const LIMIT = 120 * 1024;
if (sizes.scriptGzip >= LIMIT) {
  console.error(`dist/stateline.js is ${sizes.scriptGzip} bytes gzipped: over the ${LIMIT}-byte budget`);
  process.exit(1);
}

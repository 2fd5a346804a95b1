// Builds the web UI into www/dist/: index.html, app.css and app.js (the app and the JSON editor
// from npm, bundled by esbuild; no request leaves the server). `npm run build:ui`.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, statSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, "dist");
mkdirSync(dist, { recursive: true });
await build({
  entryPoints: [path.join(here, "src/app.js")],
  bundle: true,
  format: "esm",
  minify: true,
  target: ["chrome110", "firefox115", "safari16"],
  outfile: path.join(dist, "app.js"),
  legalComments: "linked",
  logLevel: "warning",
});
copyFileSync(path.join(here, "src/app.css"), path.join(dist, "app.css"));
copyFileSync(path.join(here, "index.html"), path.join(dist, "index.html"));
for (const f of ["index.html", "app.css", "app.js"]) {
  console.log(`www/dist/${f}: ${statSync(path.join(dist, f)).size} B`);
}

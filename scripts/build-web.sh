#!/usr/bin/env bash
# Builds what the native server embeds when it is compiled: the JS client (served at / and
# /_client.js) and the web UI, installing first the wasm tools and npm packages they need
# (scripts/ensure-wasm-tools.sh: the first run installs wasm-bindgen-cli). Run by npm start, the
# cluster script and scripts/build-pgo.sh before they build the server.
set -euo pipefail
cd "$(dirname "$0")/.."
printf '==> wasm tools and npm packages (the first run installs wasm-bindgen-cli: about 3 minutes)\n'
. scripts/ensure-wasm-tools.sh --client
printf '==> building the JS client (served at / and /_client.js) and the web UI\n'
node wasm-client/build.mjs
node www/build.mjs

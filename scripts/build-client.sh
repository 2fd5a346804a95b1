#!/usr/bin/env bash
# Builds the JS client (wasm-client/dist: the single-file script and the npm ES module) with the
# pinned wasm tools. The server embeds dist/stateline.js when it is compiled, so run this first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-wasm-tools.sh --client
node wasm-client/build.mjs

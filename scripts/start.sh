#!/usr/bin/env bash
# `npm start`: builds the JS client, then builds and runs the native server with embedded storage in ./data on
# 127.0.0.1:8800. Extra arguments go to `stateline serve` (try `npm start -- --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-rust.sh
printf '==> wasm tools and npm packages (the first run installs wasm-bindgen-cli: about 3 minutes)\n'
. scripts/ensure-wasm-tools.sh --client
printf '==> building the JS client (served at / and /_client.js) and the web UI\n'
node wasm-client/build.mjs
node www/build.mjs
printf '==> building stateline (release; the first build takes a few minutes)\n'
cargo build --release -p stateline-server --bin stateline
printf '==> stateline serve %s\n' "$*"
exec target/release/stateline serve "$@"

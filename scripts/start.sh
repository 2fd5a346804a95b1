#!/usr/bin/env bash
# `npm start`: builds the JS client, then builds and runs the native server with embedded storage in ./data on
# 127.0.0.1:8800. Extra arguments go to `stateline serve` (try `npm start -- --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-rust.sh
bash scripts/build-web.sh
printf '==> building stateline (release; the first build takes a few minutes)\n'
cargo build --release -p stateline-server --bin stateline
printf '==> stateline serve %s\n' "$*"
exec target/release/stateline serve "$@"

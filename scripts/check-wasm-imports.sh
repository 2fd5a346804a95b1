#!/usr/bin/env bash
# Builds the core into a .wasm (through the probe crate) and fails if it imports anything.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p stateline-wasm-probe --target wasm32-unknown-unknown --release
python3 scripts/check-wasm-imports.py target/wasm32-unknown-unknown/release/stateline_wasm_probe.wasm

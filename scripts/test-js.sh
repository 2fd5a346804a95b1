#!/usr/bin/env bash
# The JS client's tests: Node tests of the ES module and headless Chromium tests of the
# single-file script (and the UI), and the ES module inside workerd, each against real `stateline` servers they start themselves
# (target/debug/stateline, built with the client embedded, and wasm-client/dist).
# Each run is bounded: a test that leaves a socket or timer open fails instead of hanging CI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-chromium.sh
timeout 600 node --test tests/js/node/
timeout 900 node --test tests/js/browser/
timeout 300 node --test tests/js/workerd/
# The benchmark's helper scripts (bench/scripts/*.test.mjs), no server needed.
timeout 60 node --test bench/scripts/

#!/usr/bin/env bash
# Every edge test: the worker built for wasm32, tests inside workerd (eviction, hibernation,
# namespaces), a restart of workerd with persisted state, and the conformance suite against the
# worker in both modes. Called by scripts/test.sh; runnable alone.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false

step "edge: build the worker (worker-build, wasm-opt)"
bash scripts/edge.sh build

step "edge: tests inside workerd (vitest + @cloudflare/vitest-plugin)"
(cd edge-worker && ../node_modules/.bin/vitest run)

step "edge: restart of workerd with persisted state (node --test)"
node --test edge-worker/test-node/

step "edge: the conformance suite against the worker in workerd"
node edge-worker/test-node/conformance.mjs

#!/usr/bin/env bash
# The edge worker: build it, serve it locally in workerd, deploy it.
#
#   bash scripts/edge.sh build            build edge-worker/build/ (skipped when up to date)
#   PORT=8787 bash scripts/edge.sh dev    serve it on 127.0.0.1:$PORT with state persisted in
#                                         $EDGE_STATE (default data/edge); extra args go to wrangler
#   bash scripts/edge.sh deploy           deploy to your Cloudflare account (wrangler login first)
#
# npm scripts: `npm run edge:dev`, `npm run edge:deploy`. Everything it needs is installed by
# scripts/ensure-wasm-tools.sh; docs/HACKING.md says why each tool is pinned.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
say() { printf '==> %s\n' "$*" >&2; }

. scripts/ensure-rust.sh
. scripts/ensure-wasm-tools.sh
# The worker embeds the client script and the UI: build them when a fresh clone has neither
# (`npm start` and `npm test` build them on every run).
if [ ! -f wasm-client/dist/stateline.js ] || [ ! -d www/dist ]; then
  say "building the JS client and the web UI (the worker embeds them)"
  node wasm-client/build.mjs >&2
  node www/build.mjs >&2
fi

export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
export ESBUILD_BIN="$root/node_modules/.bin/esbuild"
out="$root/edge-worker/build"

build() {
  local stamp="$out/.built"
  # Up to date when nothing the worker is built from changed since the last build.
  if [ -f "$stamp" ] && [ -z "$(find edge-worker/src edge-worker/Cargo.toml core/src core/Cargo.toml assets www/dist wasm-client/dist Cargo.lock Cargo.toml \
      -newer "$stamp" -print -quit 2>/dev/null)" ]; then
    say "edge worker: up to date ($out)"
    return
  fi
  say "edge worker: worker-build --profile wasm-release (wasm-bindgen $(wasm-bindgen --version | cut -d' ' -f2))"
  (cd edge-worker && worker-build --profile wasm-release)
  say "edge worker: wasm-opt -Oz (npm binaryen)"
  "$WASM_OPT_BIN" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --enable-multivalue --enable-exception-handling \
    "$out/index_bg.wasm" -o "$out/index_bg.wasm.opt"
  mv "$out/index_bg.wasm.opt" "$out/index_bg.wasm"
  touch "$stamp"
  say "edge worker: $(wc -c < "$out/index_bg.wasm") B wasm, $(gzip -9c "$out/index_bg.wasm" | wc -c) B gzipped"
}

case "${1:-}" in
  build)
    build
    ;;
  dev)
    shift
    build
    port="${PORT:-8787}"
    state="${EDGE_STATE:-$root/data/edge}"
    mkdir -p "$state"
    say "edge worker: workerd on http://127.0.0.1:$port (state in $state)"
    cd edge-worker
    exec "$root/node_modules/.bin/wrangler" dev --local --ip 127.0.0.1 --port "$port" \
      --show-interactive-dev-session=false --persist-to "$state" "$@" </dev/null
    ;;
  deploy)
    shift
    build
    cd edge-worker
    exec "$root/node_modules/.bin/wrangler" deploy "$@"
    ;;
  *)
    echo "usage: $0 build | dev [wrangler args] | deploy [wrangler args]" >&2
    exit 2
    ;;
esac

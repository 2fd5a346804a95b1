#!/usr/bin/env bash
# Installs (idempotently, with visible progress) the wasm tools the client and the edge worker need:
#   wasm-bindgen-cli  exactly the wasm-bindgen version in Cargo.lock (the CLI must match the crate)
#   worker-build      the version in Cargo.lock's `worker` package line-up (0.8.7)
#   npm packages      from package.json (binaryen for wasm-opt, wrangler, playwright-core)
# Source it or run it; it exports WASM_BINDGEN_BIN and WASM_OPT_BIN. With --client it skips
# worker-build (only the edge worker needs it).
# docs/HACKING.md says why each tool is pinned as it is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

lock_version() { # lock_version <package> : the version Cargo.lock resolved, or empty
  awk -v name="$1" '$0 == "name = \"" name "\"" { getline; gsub(/version = |"/, ""); print; exit }' "$here/Cargo.lock"
}

WB_VERSION="$(lock_version wasm-bindgen)"
WB_VERSION="${WB_VERSION:-0.2.130}"
WORKER_BUILD_VERSION="$(lock_version worker)"
WORKER_BUILD_VERSION="${WORKER_BUILD_VERSION:-0.8.7}"

export PATH="$HOME/.cargo/bin:$PATH"

if wasm-bindgen --version 2>/dev/null | grep -q " $WB_VERSION\$"; then
  echo "wasm-bindgen-cli $WB_VERSION: present"
else
  echo "wasm-bindgen-cli $WB_VERSION: installing with cargo (about 3 minutes on 2 cores)"
  # Not --locked: its lock file pins a webpki-roots the registry index does not have.
  cargo install wasm-bindgen-cli --version "=$WB_VERSION" --force
fi

if [ "${1:-}" = "--client" ]; then
  : # `npm start` builds the browser client only: worker-build is for the edge worker.
elif worker-build --version 2>/dev/null | grep -Eq "(^| )$WORKER_BUILD_VERSION\$"; then
  echo "worker-build $WORKER_BUILD_VERSION: present"
else
  echo "worker-build $WORKER_BUILD_VERSION: installing with cargo (about 5 minutes on 2 cores)"
  cargo install worker-build --version "=$WORKER_BUILD_VERSION" --locked --force
fi

if [ ! -x "$here/node_modules/.bin/wasm-opt" ] || [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
  # `npm ci`: exactly what package-lock.json says, and the lock is never rewritten (it lists
  # every platform's optional workerd package, so npm finds nothing to add on any machine).
  # On Node 20 npm warns EBADENGINE for the edge tests' miniflare/wrangler, which declare
  # Node >= 22 and run on 20 all the same.
  echo "npm packages: installing exactly package-lock.json (npm ci; about 500 MB, a minute)"
  (cd "$here" && npm ci --no-audit --no-fund)
else
  echo "npm packages: present"
fi

export WASM_BINDGEN_BIN="$(command -v wasm-bindgen)"
export WASM_OPT_BIN="$here/node_modules/.bin/wasm-opt"

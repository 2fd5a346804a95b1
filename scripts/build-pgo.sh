#!/usr/bin/env bash
# Profile-guided release build of the server: the build for production and for the benchmark.
#
# 1. Builds the server (and the bare HTTP stack the benchmark compares it with,
#    native-server/examples/http_ceiling.rs) with LLVM's instrumentation (`-Cprofile-generate`).
# 2. Trains them: the benchmark's write, read, fan-out, patch, compression and durable scenarios
#    in quick mode (about two minutes) against the instrumented server, and its write scenario
#    against the instrumented bare stack. The load generator stops each with SIGTERM, and it
#    writes its profile as it exits.
# 3. Merges the profiles (llvm-profdata, rustup's llvm-tools component) and builds both again
#    with them (`-Cprofile-use`): the code those requests run is laid out together and optimized
#    for speed, the rest for size.
#
# Why: most of the plain build's CPU per HTTP write beyond the bare stack's is instruction-cache
# misses, not instructions (docs/BENCHMARKS.md, "CPU per HTTP write"); the profile-guided layout
# removes most of them. Paths the training does not run (lists, SSE, the admin routes) are as
# correct as in the plain build, and not faster.
#
# Output: $CARGO_TARGET_DIR/pgo/release/stateline (and examples/http_ceiling); each build has
# its own target folder, so the plain build in target/release is left as it is. About 10 minutes
# on 2 cores (two release builds from scratch and the training). `STATELINE_PGO=1 npm run bench`
# runs this, then the benchmark on its server. The training runs Stateline alone: the
# benchmark's peers (Redis, NATS, etcd) need not be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }
. scripts/ensure-rust.sh

# The server embeds the JS client and the web UI as they are when it is built (as npm start).
bash scripts/build-web.sh

# llvm-profdata merges the profiles: rustup's llvm-tools, which rust-toolchain.toml declares.
profdata="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
[ -x "$profdata" ] || { echo "llvm-profdata is missing at $profdata (the llvm-tools component that rust-toolchain.toml declares; scripts/ensure-rust.sh installs it)" >&2; exit 1; }

base="${CARGO_TARGET_DIR:-target}"
case "$base" in /*) ;; *) base="$PWD/$base" ;; esac
gen="$base/pgo-generate"
use="$base/pgo"
profiles="$gen/profiles"

step "building the load generator (plain release)"
CARGO_TARGET_DIR="$base" cargo build --release -p stateline-bench
bench="$base/release/stateline-bench"

step "building the instrumented server and bare HTTP stack ($gen)"
RUSTFLAGS="-Cprofile-generate=$profiles" CARGO_TARGET_DIR="$gen" \
  cargo build --release -p stateline-server --bin stateline --example http_ceiling
# The build's own instrumented build scripts and macros wrote profiles there too: start empty.
rm -rf "$profiles"
mkdir -p "$profiles"

step "training the server: write, read, fan-out, patch, compression and durable scenarios (quick)"
STATELINE_BIN="$gen/release/stateline" "$bench" --quick --systems stateline \
  --only writes,reads,fanout,patch,deflate,durable --out "$gen/train-server"
step "training the bare HTTP stack: write scenario (quick)"
STATELINE_BIN="$gen/release/examples/http_ceiling" "$bench" --quick --systems stateline \
  --only writes --out "$gen/train-ceiling"
shopt -s nullglob
raw=("$profiles"/*.profraw)
((${#raw[@]})) || { echo "the training wrote no profile into $profiles" >&2; exit 1; }

step "merging ${#raw[@]} profile file(s)"
"$profdata" merge -o "$gen/merged.profdata" "${raw[@]}"

step "building with the profile ($use)"
RUSTFLAGS="-Cprofile-use=$gen/merged.profdata" CARGO_TARGET_DIR="$use" \
  cargo build --release -p stateline-server --bin stateline --example http_ceiling
step "built: $use/release/stateline (and $use/release/examples/http_ceiling)"

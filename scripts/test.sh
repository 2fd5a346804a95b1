#!/usr/bin/env bash
# Runs every test there is. Installs what it needs (idempotently) and says what it does.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "toolchain: every target a script builds for is declared in rust-toolchain.toml"
bash scripts/check-toolchain.sh

step "toolchain: Rust, as rust-toolchain.toml declares it (with the wasm32 target, clippy, rustfmt, llvm-tools)"
. scripts/ensure-rust.sh

step "wasm tools, npm packages; build the JS client and the web UI (embedded in the server and the worker)"
. scripts/ensure-wasm-tools.sh
node wasm-client/build.mjs
node www/build.mjs

step "cargo fmt --check (the workspace, and the fuzz crate: a workspace of its own)"
cargo fmt --all --check
cargo fmt --check --manifest-path core/fuzz/Cargo.toml

step "cargo clippy (native, all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo clippy (the fuzz crate, native, -D warnings)"
# Into the project's target directory (not core/fuzz/target): it shares the workspace's builds.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}" cargo clippy --manifest-path core/fuzz/Cargo.toml --all-targets -- -D warnings

step "cargo doc (workspace, no dependencies, warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "dependencies: licences, bans, sources (cargo-deny, deny.toml); advisories where github.com is reachable"
bash scripts/deny.sh

step "cargo clippy (wasm32: the core, the JS client crate and the edge worker)"
cargo clippy -p stateline-core -p stateline-wasm-probe -p stateline-wasm-client -p stateline-edge --target wasm32-unknown-unknown -- -D warnings

step "core builds for wasm32 and its .wasm imports nothing from the host"
bash scripts/check-wasm-imports.sh

step "build the stateline binary (the conformance suite and the Rust client's tests start it)"
cargo build -p stateline-server --bin stateline

step "nats-server 2.12+ for the cluster tests (native-server/tests/cluster.rs)"
. scripts/ensure-nats.sh

step "cargo test (workspace: units, core cases, conformance suite against real sockets, cluster)"
# The client script was built above: its absence from the server is a failure, not a skip.
STATELINE_EXPECT_CLIENT=1 cargo test --workspace
step "conformance suite against a node of a 3-node cluster (3 NATS JetStream servers, 3 nodes: scripts/cluster.sh)"
# Ports away from the defaults, so a cluster a developer runs is left alone; the script stops
# everything it started when it gets TERM.
ctarget="${CARGO_TARGET_DIR:-target}"
# Emptied first: the wait below must not find an earlier run's "cluster running".
: >"$ctarget/cluster-suite.log"
CLUSTER_BIN="$ctarget/debug/stateline" CLUSTER_UI=0 CLUSTER_FRESH=1 CLUSTER_DIR="$ctarget/cluster-suite" \
  CLUSTER_NATS_PORT=17222 CLUSTER_ROUTE_PORT=17322 CLUSTER_MONITOR_PORT=17422 CLUSTER_HTTP_PORT=17801 \
  bash scripts/cluster.sh >"$ctarget/cluster-suite.log" 2>&1 &
cluster_pid=$!
for _ in $(seq 1 600); do
  grep -q "cluster running" "$ctarget/cluster-suite.log" 2>/dev/null && break
  kill -0 "$cluster_pid" 2>/dev/null || break
  sleep 0.2
done
if ! grep -q "cluster running" "$ctarget/cluster-suite.log"; then
  cat "$ctarget/cluster-suite.log" >&2
  kill -TERM "$cluster_pid" 2>/dev/null || true
  echo "the cluster did not start" >&2
  exit 1
fi
suite=0
# STATELINE_CLUSTER: the suite checks the documented differences of a cluster node.
STATELINE_URL=http://127.0.0.1:17802 STATELINE_CLUSTER=1 STATELINE_EXPECT_CLIENT=1 cargo test -p stateline-conformance || suite=$?
kill -TERM "$cluster_pid" 2>/dev/null || true
wait "$cluster_pid" 2>/dev/null || true
[ "$suite" = 0 ] || { echo "the conformance suite failed against a cluster node" >&2; exit "$suite"; }
# The embedded files as the edge worker builds them (no gzipped copies; the workspace build above
# unifies the feature on).
cargo test -p stateline-assets --no-default-features
# The core as the browser client builds it: no exact numbers (its values become doubles) and no
# coalescing.
cargo test -p stateline-core --no-default-features

step "fuzz: each target of core/fuzz for ${FUZZ_SECONDS:-5} s from its seed corpus (FUZZ_SECONDS to lengthen)"
bash scripts/fuzz.sh

step "JS tests (Node: the client's ES module; headless Chromium: the single-file script and the UI)"
bash scripts/test-js.sh

bash scripts/edge-test.sh

#!/usr/bin/env bash
# Runs every test there is. Installs what it needs (idempotently) and says what it does.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "toolchain: every target a script builds for is declared in rust-toolchain.toml"
bash scripts/check-toolchain.sh

step "toolchain: Rust, as rust-toolchain.toml declares it (with the wasm32 target, clippy, rustfmt)"
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
cargo clippy -p stateline-core -p stateline-wasm-probe -p stateline-client -p stateline-edge --target wasm32-unknown-unknown -- -D warnings

step "core builds for wasm32 and its .wasm imports nothing from the host"
bash scripts/check-wasm-imports.sh

step "build the stateline binary (the conformance suite starts it)"
cargo build -p stateline-server --bin stateline

step "nats-server 2.12+ for the cluster tests (native-server/tests/cluster.rs)"
. scripts/ensure-nats.sh

step "cargo test (workspace: units, core cases, conformance suite against real sockets, cluster)"
# The client script was built above: its absence from the server is a failure, not a skip.
STATELINE_EXPECT_CLIENT=1 cargo test --workspace
# The embedded files as the edge worker builds them (no gzipped copies; the workspace build above
# unifies the feature on).
cargo test -p stateline-assets --no-default-features

step "fuzz: each target of core/fuzz for ${FUZZ_SECONDS:-5} s from its seed corpus (FUZZ_SECONDS to lengthen)"
bash scripts/fuzz.sh

step "JS tests (Node: the client's ES module; headless Chromium: the single-file script and the UI)"
bash scripts/test-js.sh

bash scripts/edge-test.sh

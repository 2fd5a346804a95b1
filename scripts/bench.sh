#!/usr/bin/env bash
# The benchmark of docs/BENCHMARKS.md: installs the peers (Debian packages), builds Stateline and
# the load generator in release mode, and runs every scenario against every system on 127.0.0.1.
# Extra arguments go to stateline-bench (try --quick, or --only fanout).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }
. scripts/ensure-rust.sh
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nats-server >/dev/null || missing+=(nats-server)
command -v etcd >/dev/null || missing+=(etcd-server)
if ((${#missing[@]})); then
  step "installing peers: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
step "building stateline and stateline-bench (release)"
cargo build --release -p stateline-server -p stateline-bench
step "running: stateline-bench $*"
ulimit -n "$(ulimit -Hn)" || true
exec target/release/stateline-bench "$@"

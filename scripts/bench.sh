#!/usr/bin/env bash
# The benchmark of docs/BENCHMARKS.md: installs the peers (Debian packages), builds Stateline and
# the load generator in release mode, and runs every scenario against every system on 127.0.0.1.
# Extra arguments go to stateline-bench (try --quick, or --only fanout).
# The cluster scenario (--only cluster) needs nats-server 2.12 or newer with JetStream, which
# scripts/ensure-nats.sh provides (NATS_SERVER_BIN); the NATS peer of the other scenarios is
# Debian's nats-server. A run of the cluster scenario alone installs none of the peers.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }
. scripts/ensure-rust.sh

# The scenarios asked for (--only a,b or --only=a,b; stateline-bench's default otherwise).
only="writes,reads,fanout,idle,patch,deflate,keys"
prev=""
for a in "$@"; do
  case "$a" in
    --only=*) only="${a#--only=}" ;;
    *) [ "$prev" = --only ] && only="$a" ;;
  esac
  prev="$a"
done
peers_needed=0
cluster=0
IFS=',' read -ra scenarios <<<"$only"
for s in "${scenarios[@]}"; do
  if [ "$s" = cluster ]; then cluster=1; else peers_needed=1; fi
done

missing=()
if ((peers_needed)); then
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v nats-server >/dev/null || missing+=(nats-server)
  command -v etcd >/dev/null || missing+=(etcd-server)
fi
if ((${#missing[@]})); then
  step "installing peers: ${missing[*]}"
  bash scripts/apt-install.sh "${missing[@]}"
fi
if ((cluster)); then
  step "nats-server for cluster mode (2.12 or newer, JetStream)"
  . scripts/ensure-nats.sh
fi
step "building stateline and stateline-bench (release)"
cargo build --release -p stateline-server -p stateline-bench
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
# STATELINE_PGO=1 benchmarks the profile-guided build instead (scripts/build-pgo.sh: about 10
# minutes more, the first time and after every change).
if [ "${STATELINE_PGO:-}" = 1 ] && [ -z "${STATELINE_BIN:-}" ]; then
  step "profile-guided build (scripts/build-pgo.sh)"
  bash scripts/build-pgo.sh
  export STATELINE_BIN="$target/pgo/release/stateline"
fi
# The server the benchmark starts: the one just built (wherever CARGO_TARGET_DIR puts it).
export STATELINE_BIN="${STATELINE_BIN:-$target/release/stateline}"
step "running: stateline-bench $*"
ulimit -n "$(ulimit -Hn)" || true
exec "$target/release/stateline-bench" "$@"

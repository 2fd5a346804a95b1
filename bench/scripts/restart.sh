#!/usr/bin/env bash
# What a restart with N keys on disk costs: writes N small keys into a new data folder (the
# stateline-disk `load_time` example: `users/u0000000/profile` -> {"n":..,"name":"a small value"}),
# starts the server on it, and reports the time from spawn until `/_health` answers 200 and the
# server's resident memory then, against an empty server's (total, and per key).
#
#   cargo build --release -p stateline-server -p stateline-disk --example load_time
#   bash bench/scripts/restart.sh [N]          # N defaults to 1,000,000
#
# STATELINE_BIN picks the server (default: this tree's release build), LOAD_TIME_BIN the writer
# (default: this tree's load_time example). The folder is removed afterwards; the servers listen
# on 127.0.0.1 and are stopped by their PIDs.
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-1000000}"
bin="${STATELINE_BIN:-target/release/stateline}"
writer="${LOAD_TIME_BIN:-target/release/examples/load_time}"
for b in "$bin" "$writer"; do
  [ -x "$b" ] || { echo "$b not found: cargo build --release -p stateline-server -p stateline-disk --example load_time" >&2; exit 1; }
done
dir="$(mktemp -d -t stateline-restart.XXXXXX)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

# Starts the server on folder $1, waits (at most 600 s) for /_health 200; sets pid and took_ms.
serve() {
  local p t0 t1
  p="$(port)"
  t0=$(date +%s%N)
  RUST_LOG=warn "$bin" serve --addr "127.0.0.1:$p" --data "$1" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 30000); do
    curl -fs -o /dev/null "http://127.0.0.1:$p/_health" && break
    kill -0 "$pid" 2>/dev/null || { echo "the server exited" >&2; exit 1; }
    sleep 0.02
  done
  curl -fs -o /dev/null "http://127.0.0.1:$p/_health" || { echo "no /_health 200 within 600 s" >&2; exit 1; }
  t1=$(date +%s%N)
  took_ms=$(((t1 - t0) / 1000000))
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

mkdir "$dir/empty"
serve "$dir/empty"
empty_kib=$(rss_kib "$pid")
stop

echo "writing $n keys (load_time example)..."
"$writer" "$n" "$dir/full" keep
serve "$dir/full"
full_kib=$(rss_kib "$pid")
stop
echo "restart with $n keys: /_health 200 after ${took_ms} ms; resident $((full_kib / 1024)) MiB (empty server $((empty_kib / 1024)) MiB), $(((full_kib - empty_kib) * 1024 / n)) B per key"

#!/usr/bin/env bash
# `npm run cluster`: a local Stateline cluster on 127.0.0.1. Installs nats-server (2.12+,
# scripts/ensure-nats.sh), builds the JS client, the web UI and the release `stateline` (as
# `npm start` does), starts a 3-server NATS JetStream cluster
# and waits until JetStream has elected its meta leader, then starts 3 stateline nodes that serve
# one state through it (`--cluster ... --cluster-replicas 3`) and waits until each answers
# `GET /_health` with 200. Ctrl-C (or SIGTERM) stops everything it started, by PID. Extra
# arguments go to every `stateline serve` (e.g. `npm run cluster -- --rules examples/rules.toml`).
#
# Environment (defaults in brackets):
#   CLUSTER_DIR           folder for the JetStream stores and the logs [./cluster-data]; the state
#                         lives in JetStream, so it survives a restart of this script
#   CLUSTER_FRESH=1       delete CLUSTER_DIR first (start from an empty state)
#   CLUSTER_NATS_PORT     first NATS client port [4222]: the servers use it and the next two
#   CLUSTER_ROUTE_PORT    first NATS cluster (route) port [6222]
#   CLUSTER_MONITOR_PORT  first NATS monitoring port [8222] (/healthz, /jsz)
#   CLUSTER_HTTP_PORT     first stateline port [8801]
#   CLUSTER_STREAM        the JetStream stream's name [stateline]
#   CLUSTER_UI=0          do not build the JS client and the web UI (as `npm start` does)
#   CLUSTER_BIN           a stateline binary to run instead of building the release one (the
#                         test suite runs its debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

dir="${CLUSTER_DIR:-./cluster-data}"
nats_port="${CLUSTER_NATS_PORT:-4222}"
route_port="${CLUSTER_ROUTE_PORT:-6222}"
monitor_port="${CLUSTER_MONITOR_PORT:-8222}"
http_port="${CLUSTER_HTTP_PORT:-8801}"
stream="${CLUSTER_STREAM:-stateline}"
N=3

step "nats-server (2.12 or newer: JetStream's atomic batch publish)"
. scripts/ensure-nats.sh

step "toolchain: Rust, as rust-toolchain.toml declares it"
. scripts/ensure-rust.sh

if [ "${CLUSTER_UI:-1}" != 0 ]; then
  # As `npm start`: the nodes serve the JS client and the web UI (CLUSTER_UI=0 skips this; the
  # nodes then answer 503 for /_client.js and have no UI).
  bash scripts/build-web.sh
fi

if [ -n "${CLUSTER_BIN:-}" ]; then
  stateline="$CLUSTER_BIN"
else
  step "building stateline (release; the first build takes a few minutes)"
  cargo build --release -p stateline-server --bin stateline
  stateline="${CARGO_TARGET_DIR:-target}/release/stateline"
fi

# Nothing may listen on our ports yet: a stale cluster would answer our health checks.
busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for i in $(seq 0 $((N - 1))); do
  for p in $((nats_port + i)) $((route_port + i)) $((monitor_port + i)) $((http_port + i)); do
    if busy "$p"; then
      echo "port 127.0.0.1:$p is in use (another cluster still running?); stop it or set CLUSTER_*_PORT" >&2
      exit 1
    fi
  done
done

if [ "${CLUSTER_FRESH:-}" = 1 ]; then
  step "CLUSTER_FRESH=1: removing $dir"
  rm -rf "$dir"
fi
mkdir -p "$dir/logs"

pids=()
names=()
logs=()
stop_all() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    printf '\n==> stopping %s processes\n' "${#pids[@]}"
    # stateline nodes first (they drain their clients), then the NATS servers.
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      kill -TERM "${pids[$i]}" 2>/dev/null || true
    done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      local k
      for k in $(seq 1 150); do # at most 15 s each
        kill -0 "${pids[$i]}" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "${pids[$i]}" 2>/dev/null; then
        echo "${names[$i]} (pid ${pids[$i]}) did not stop in 15 s: killing it"
        kill -KILL "${pids[$i]}" 2>/dev/null || true
      fi
      wait "${pids[$i]}" 2>/dev/null || true
    done
    echo "stopped"
  fi
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# spawn <name> <log> <command...> : starts it in the background and remembers its PID.
spawn() {
  local name="$1" log="$2"
  shift 2
  "$@" >"$log" 2>&1 &
  pids+=("$!")
  names+=("$name")
  logs+=("$log")
}

# wait_for <what> <seconds> <pid> <command...> : runs the command every 0.2 s until it succeeds;
# fails when the process died or the time is up.
wait_for() {
  local what="$1" secs="$2" pid="$3" k
  shift 3
  for k in $(seq 1 $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$what: the process exited; its log:" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "$what: not ready after ${secs} s" >&2
  return 1
}

routes=""
for i in $(seq 0 $((N - 1))); do
  routes="${routes:+$routes,}nats://127.0.0.1:$((route_port + i))"
done
step "starting $N NATS servers with JetStream (cluster 'stateline', stores in $dir/n1..n$N)"
for i in $(seq 1 $N); do
  spawn "nats n$i" "$dir/logs/n$i.log" "$NATS_SERVER_BIN" \
    --server_name "n$i" --addr 127.0.0.1 --port $((nats_port + i - 1)) \
    --http_port $((monitor_port + i - 1)) \
    --cluster "nats://127.0.0.1:$((route_port + i - 1))" --cluster_name stateline \
    --routes "$routes" --jetstream --store_dir "$dir/n$i"
done

# JetStream is ready when every server's /healthz says ok (it answers 503 until the server has
# joined a meta group with a leader) and /jsz names the meta leader.
js_ready() {
  curl -fsS "http://127.0.0.1:$1/healthz" | grep -q '"ok"' &&
    curl -fsS "http://127.0.0.1:$1/jsz" | grep -Eq '"leader": *"n[0-9]+"'
}
for i in $(seq 1 $N); do
  if ! wait_for "nats n$i" 30 "${pids[$((i - 1))]}" js_ready $((monitor_port + i - 1)); then
    tail -n 30 "$dir/logs/n$i.log" >&2
    exit 1
  fi
done
leader="$(curl -fsS "http://127.0.0.1:$monitor_port/jsz" | sed -n 's/.*"leader": *"\(n[0-9]*\)".*/\1/p' | head -n 1)"
echo "JetStream ready: meta leader $leader"

urls=""
for i in $(seq 0 $((N - 1))); do
  urls="${urls:+$urls,}nats://127.0.0.1:$((nats_port + i))"
done
step "starting $N stateline nodes (--cluster $urls --cluster-replicas 3)"
for i in $(seq 1 $N); do
  spawn "stateline node$i" "$dir/logs/stateline$i.log" "$stateline" serve \
    --addr "127.0.0.1:$((http_port + i - 1))" \
    --cluster "$urls" --cluster-stream "$stream" --cluster-replicas 3 "$@"
done
healthy() { curl -fsS "http://127.0.0.1:$1/_health"; }
for i in $(seq 1 $N); do
  if ! wait_for "stateline node$i" 120 "${pids[$((N + i - 1))]}" healthy $((http_port + i - 1)); then
    tail -n 30 "$dir/logs/stateline$i.log" >&2
    exit 1
  fi
done

step "cluster running"
for i in $(seq 1 $N); do
  printf '  NATS n%s        pid %-8s client nats://127.0.0.1:%s  routes :%s  monitor http://127.0.0.1:%s  store %s/n%s\n' \
    "$i" "${pids[$((i - 1))]}" $((nats_port + i - 1)) $((route_port + i - 1)) $((monitor_port + i - 1)) "$dir" "$i"
done
for i in $(seq 1 $N); do
  printf '  stateline node%s pid %-8s http://127.0.0.1:%s\n' "$i" "${pids[$((N + i - 1))]}" $((http_port + i - 1))
done
cat <<EOF
  logs:            $dir/logs/
  JetStream stream '$stream', 3 replicas: the state survives a restart of this script
  (CLUSTER_FRESH=1 starts empty).

Try: curl -X POST 127.0.0.1:$http_port/greeting -d '"hi"'; curl 127.0.0.1:$((http_port + 1))/greeting
Conformance suite against a node: STATELINE_URL=http://127.0.0.1:$http_port cargo test -p stateline-conformance
Stop: Ctrl-C here (or kill -TERM $$): stops the $((2 * N)) processes above.
EOF

# Until Ctrl-C/TERM, or until one of them exits (then everything stops).
while :; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "${names[$i]} (pid ${pids[$i]}) exited; last lines of its log:" >&2
      tail -n 20 "${logs[$i]}" >&2 || true
      exit 1
    fi
  done
  sleep 1
done

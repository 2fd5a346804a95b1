#!/usr/bin/env bash
# CPU time and context switches per acknowledged write (or read), for the server and for the
# load generator, during the 16-connection phase of the write (or read) benchmark
# (docs/BENCHMARKS.md, "Why the HTTP target is missed"). Requests are counted from the
# generator's reported rate.
# Usage: bash bench/scripts/cpu-per-request.sh stateline|redis [rounds]
# Needs the release build (bash scripts/bench.sh builds it) and the peers installed.
# The environment passes through: STATELINE_BIN=target/release/examples/http_ceiling measures
# the bare HTTP stack (add CEILING_CORE=1 for the core behind a mutex), STATELINE_BIN=<path>
# any other build of the server. SCENARIO=reads measures reads (`GET` of a key) instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
sys=${1:?stateline or redis}
rounds=${2:-3}
bench=target/release/stateline-bench
[ -x "$bench" ] || { echo "build first: cargo build --release -p stateline-server -p stateline-bench" >&2; exit 1; }
if [ "$sys" = redis ]; then name=redis-server; else name=$(basename "${STATELINE_BIN:-stateline}"); fi
# The kernel keeps the first 15 characters of a process's name, which is what `pgrep -x` matches.
name="${name:0:15}"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^voluntary_ctxt_switches|^nonvoluntary_ctxt_switches/ {t += $2} END {print t}'
}
hz=$(getconf CLK_TCK)
what=${SCENARIO:-writes}
case "$what" in writes | reads) ;; *) echo "SCENARIO is writes or reads" >&2; exit 1 ;; esac
for r in $(seq "$rounds"); do
  out=$(mktemp -d)
  "$bench" --quick --systems "$sys" --only "$what" --out "$out" >"$out/log" 2>&1 &
  runner=$!
  # The generator starts the server, runs 1 connection for 3 s, then 16 for 3 s: sample 2 s
  # inside the second phase.
  sleep 4.3
  gen=$(pgrep -x stateline-bench | head -1)
  srv=$(pgrep -P "$gen" -x "$name" | head -1)
  s0=$(ticks "$srv"); g0=$(ticks "$gen"); c0=$(switches "$srv"); d0=$(switches "$gen")
  sleep 2
  s1=$(ticks "$srv"); g1=$(ticks "$gen"); c1=$(switches "$srv"); d1=$(switches "$gen")
  wait "$runner" || true
  rate=$(grep -o "$what x16: [0-9]*" "$out/log" | grep -o '[0-9]*$')
  awk -v rate="$rate" -v s=$((s1 - s0)) -v g=$((g1 - g0)) -v c=$((c1 - c0)) -v d=$((d1 - d0)) \
    -v hz="$hz" -v sys="$sys" -v r="$r" -v w="${what%s}" 'BEGIN {
    n = rate * 2
    printf "%s round %d: %d %ss/s; per %s: server %.1f us CPU, %.2f context switches; load generator %.1f us, %.2f\n",
      sys, r, rate, w, w, s * 1e6 / hz / n, c / n, g * 1e6 / hz / n, d / n }'
  rm -rf "$out"
done

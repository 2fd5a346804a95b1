#!/usr/bin/env bash
# Before/after runs of the benchmark, interleaved: each round runs every variant once, one after
# the other, so a machine that slows down or speeds up during the run affects every variant
# alike. Prints the median of every metric per variant (and each round's values).
#
#   bash bench/scripts/interleave.sh [--rounds N] [--only fanout] [--ratio A/B]... VARIANT...
#
# A VARIANT is NAME=PATH-TO-A-stateline-BINARY (run as the system `stateline`, e.g.
# before=/tmp/old/target/release/stateline after=target/release/stateline), NAME=PATH:ENV=VALUE
# to give that server an environment variable (e.g. nolowat=target/release/stateline:STATELINE_UNSENT=0),
# or a peer's name (redis, nats, etcd). Build the binaries first (a worktree of the old commit
# with its own CARGO_TARGET_DIR gives the "before"); the load generator is this tree's
# target/release/stateline-bench (cargo build --release -p stateline-bench). Each run's results
# go to target/interleave/<variant>-<round>/. `--ratio A/B` (variant names, repeatable) also
# prints each metric's ratio of A to B within each round and their median (bench/scripts/
# medians.mjs): the same-run ratio the targets use, with the machine's drift between rounds
# cancelled.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=3
only=fanout
variants=()
ratios=()
while (($#)); do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --ratio) ratios+=(--ratio "$2"); shift 2 ;;
    *) variants+=("$1"); shift ;;
  esac
done
usage="usage: $0 [--rounds N] [--only SCENARIOS] [--ratio A/B]... VARIANT..."
((${#variants[@]})) || { echo "$usage" >&2; exit 2; }
# A ratio must name two of the variants: found out now, not after the rounds have run.
names=()
for v in "${variants[@]}"; do names+=("${v%%=*}"); done
node bench/scripts/medians.mjs --check "$(IFS=,; echo "${names[*]}")" "${ratios[@]}" ||
  exit 2
bench=target/release/stateline-bench
[ -x "$bench" ] || { echo "$bench not found: cargo build --release -p stateline-bench" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" || true
out=target/interleave
rm -rf "$out"
for r in $(seq 1 "$rounds"); do
  for v in "${variants[@]}"; do
    name="${v%%=*}"
    env=()
    if [[ "$v" == *=* ]]; then
      spec="${v#*=}"
      bin="${spec%%:*}"
      [[ "$spec" == *:* ]] && env=("${spec#*:}")
      system=stateline
    else
      bin=target/release/stateline
      system="$v"
    fi
    printf '== round %s/%s: %s (%s)\n' "$r" "$rounds" "$name" "$(date +%T)"
    env "${env[@]}" STATELINE_BIN="$bin" "$bench" --rounds 1 --only "$only" --systems "$system" \
      --out "$out/$name-$r" 2>&1 | grep -E '^   ' || true
  done
done
node bench/scripts/medians.mjs "$out" "${ratios[@]}"

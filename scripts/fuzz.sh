#!/usr/bin/env bash
# Runs every fuzz target of the core (core/fuzz/fuzz_targets: the /_ws message parser, JWT
# verification, HTTP requests through the core, the storage decoders) for a bounded time each,
# starting from the seed corpus kept in core/fuzz/seeds/<target>/.
#
#   FUZZ_SECONDS=5      seconds per target (npm test and CI use the default; 60 or 600 to hunt)
#   FUZZ_TARGETS="mux"  only these targets (default: all that `cargo fuzz list` names)
#   FUZZ_SANITIZER=address  with AddressSanitizer (opt-in, see below)
#   FUZZ_KEEP_CORPUS=1  keep what the fuzzer learns in $CARGO_TARGET_DIR/fuzz/corpus/<target>/
#                       and start from it next time (default: each run starts from the seeds
#                       alone, so a run of N seconds takes N seconds: libFuzzer replays its
#                       whole corpus first, whatever the time limit)
#
# cargo-fuzz drives libFuzzer on the stable toolchain: coverage instrumentation only, no
# sanitizer (a sanitizer needs a nightly `-Z` flag; the core forbids `unsafe`, so a panic is
# what there is to find). Debug assertions and overflow checks are on. New inputs go to
# $CARGO_TARGET_DIR/fuzz/corpus/ (never committed); a crashing input to $CARGO_TARGET_DIR/fuzz/
# artifacts/, and the script fails naming it. docs/HACKING.md: reproducing a crash, adding a
# target.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

. scripts/ensure-cargo-tools.sh cargo-fuzz

seconds="${FUZZ_SECONDS:-5}"
# The targets are built from core/ below: a relative target directory is the repository's.
case "${CARGO_TARGET_DIR:-}" in
  "") export CARGO_TARGET_DIR="$root/target" ;;
  /*) ;;
  *) export CARGO_TARGET_DIR="$root/$CARGO_TARGET_DIR" ;;
esac
work="$CARGO_TARGET_DIR/fuzz"
# One set of build flags for every call (a different set rebuilds everything): 16 codegen units
# build in half the time of cargo-fuzz's default of 1, which matters more for runs of seconds.
sanitizer="${FUZZ_SANITIZER:-none}"
flags=(--sanitizer "$sanitizer" --debug-assertions --codegen-units 16)
if [ "$sanitizer" != none ]; then
  # Opt-in, never in npm test or CI: `-Zsanitizer` is unstable, and RUSTC_BOOTSTRAP=1 makes the
  # stable compiler accept it. Built apart, so the plain build is not thrown away.
  echo "fuzz: with the $sanitizer sanitizer (RUSTC_BOOTSTRAP=1: a nightly flag on the stable compiler)"
  export RUSTC_BOOTSTRAP=1
  flags+=(--target-dir "$CARGO_TARGET_DIR/fuzz-$sanitizer")
fi

cd core
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
echo "fuzz: building the targets ($(echo $targets | tr '\n' ' '); about 5 minutes on 2 cores the first time)"
cargo fuzz build "${flags[@]}"

status=0
for t in $targets; do
  # Artifacts are this run's only: a crash named below is one this run found.
  rm -rf "$work/artifacts/$t"
  [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ] || rm -rf "$work/corpus/$t"
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  log="$work/$t.log"
  echo "fuzz $t: ${seconds}s, from $(ls "fuzz/seeds/$t" | wc -l) seeds and $(ls "$work/corpus/$t" | wc -l) inputs learnt before"
  # The first directory receives new inputs; the seeds are only read.
  if cargo fuzz run "${flags[@]}" "$t" "$work/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    runs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log" | tail -1)"
    cov="$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE '(cov|corp): [^ ]+' | tr '\n' ' ' || true)"
    echo "fuzz $t: ${runs:-?}, ${cov}no crash"
  else
    status=1
    echo "fuzz $t: FAILED; the end of its output ($log):" >&2
    grep -vE '^"|^###### (Recommended|End of recommended)' "$log" | tail -40 >&2
    crash="$(ls -t "$work/artifacts/$t/" 2>/dev/null | head -1 || true)"
    if [ -n "$crash" ]; then
      echo "fuzz $t: the input is $work/artifacts/$t/$crash; reproduce it with" >&2
      echo "  (cd core && cargo fuzz run ${flags[*]} $t $work/artifacts/$t/$crash)" >&2
      echo "fix the bug with a unit test, then keep the input: cp it to core/fuzz/seeds/$t/" >&2
    fi
  fi
done
exit $status

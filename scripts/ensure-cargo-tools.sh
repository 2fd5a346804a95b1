#!/usr/bin/env bash
# Installs (idempotently, with visible progress) the cargo subcommands the checks in `npm test`
# use, each at a pinned version:
#   cargo-fuzz  the libFuzzer driver behind scripts/fuzz.sh (the fuzz targets in core/fuzz)
#   cargo-deny  the licence, ban, source (and, with network access to github.com, advisory)
#               check of the dependency tree (scripts/deny.sh, deny.toml)
# Usage: ensure-cargo-tools.sh [cargo-fuzz] [cargo-deny]   (no argument: both)
# Present at the pinned version: nothing is done (about 10 ms). docs/HACKING.md says how to bump.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
CARGO_DENY_VERSION=0.20.2

export PATH="$HOME/.cargo/bin:$PATH"

ensure() { # ensure <crate> <version> <minutes on 2 cores>
  local crate="$1" version="$2" minutes="$3" sub="${1#cargo-}"
  # `cargo fuzz --version` prints "cargo-fuzz 0.13.2"; `cargo deny --version` "cargo-deny 0.20.2".
  if cargo "$sub" --version 2>/dev/null | grep -Eq "(^| )$version\$"; then
    echo "$crate $version: present"
  else
    echo "$crate $version: installing with cargo (about $minutes minutes on 2 cores)"
    # A temporary target directory of its own: the tool's build never mixes with the project's.
    # --locked: the tool's own lock file, as its release was tested.
    env -u CARGO_TARGET_DIR cargo install "$crate" --version "=$version" --locked --force
  fi
}

tools=("$@")
[ ${#tools[@]} -eq 0 ] && tools=(cargo-fuzz cargo-deny)
for t in "${tools[@]}"; do
  case "$t" in
    cargo-fuzz) ensure cargo-fuzz "$CARGO_FUZZ_VERSION" 2 ;;
    cargo-deny) ensure cargo-deny "$CARGO_DENY_VERSION" 8 ;;
    *) echo "ensure-cargo-tools: unknown tool $t (known: cargo-fuzz, cargo-deny)" >&2; exit 2 ;;
  esac
done

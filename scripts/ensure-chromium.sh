#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests, once (idempotent, with visible progress;
# about 150 MB of packages the first time), through scripts/apt-install.sh.
set -euo pipefail
if command -v chromium >/dev/null; then
  echo "chromium: present ($(chromium --version 2>/dev/null || echo unknown version))"
else
  echo "chromium: installing Debian's package with apt-get (about a minute)"
  bash "$(dirname "$0")/apt-install.sh" chromium
fi

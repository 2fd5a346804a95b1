#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests, once (idempotent, with visible progress).
# The lock timeout lets it wait for another apt run instead of failing.
set -euo pipefail
if command -v chromium >/dev/null; then
  echo "chromium: present ($(chromium --version 2>/dev/null || echo unknown version))"
else
  echo "chromium: installing with apt-get"
  apt-get -o DPkg::Lock::Timeout=600 update
  apt-get -o DPkg::Lock::Timeout=600 install -y chromium
fi

#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests, once (idempotent, with visible progress;
# about 150 MB of packages the first time). The lock timeout lets it wait for another apt run
# instead of failing.
set -euo pipefail
if command -v chromium >/dev/null; then
  echo "chromium: present ($(chromium --version 2>/dev/null || echo unknown version))"
else
  echo "chromium: installing Debian's package with apt-get (about a minute)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y chromium
fi

#!/usr/bin/env bash
# Installs Debian packages with apt-get, as root or through sudo, with apt's own progress. The
# lock timeout lets it wait for another apt run instead of failing. Callers check first whether
# a package is needed (each install step stays idempotent).
#
#   bash scripts/apt-install.sh PACKAGE...
set -euo pipefail
(($#)) || { echo "usage: $0 PACKAGE..." >&2; exit 2; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get -o DPkg::Lock::Timeout=600 update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y "$@"

#!/usr/bin/env bash
# Makes sure the Rust toolchain that rust-toolchain.toml declares is installed, with its target and
# components. Idempotent (about 50 ms when everything is there); sourced by every script that runs
# cargo (start, test, edge, bench).
#
# rust-toolchain.toml is the one declaration. rustup installs a missing toolchain from it on the
# first cargo call, but it does not add a declared target or component to a toolchain that is
# already installed (a machine whose image ships the same version without wasm32), so we ask it
# once, here: `rustup toolchain install` with no argument installs what the file names.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v rustup >/dev/null 2>&1; then
  printf '==> installing rustup (minimal profile; the toolchain comes from rust-toolchain.toml)\n'
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
  export PATH="$HOME/.cargo/bin:$PATH"
fi
(cd "$(dirname "${BASH_SOURCE[0]}")/.." && rustup toolchain install)
# The server binary's allocator, jemalloc (tikv-jemalloc-sys), is built from its C sources with
# make and the C compiler Rust already links with.
if ! command -v make >/dev/null 2>&1; then
  printf '==> installing make with apt-get (jemalloc, the server'"'"'s allocator, is built with it)\n'
  bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" make
fi

#!/usr/bin/env bash
# Makes sure a Rust toolchain is on PATH (installs rustup's minimal profile if cargo is missing).
# Idempotent; sourced by scripts/start.sh and scripts/test.sh.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  printf '==> installing Rust (rustup, minimal profile)\n'
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
installed="$(rustup component list --installed 2>/dev/null || true)"
if command -v rustup >/dev/null 2>&1 && ! { grep -q '^clippy' <<<"$installed" && grep -q '^rustfmt' <<<"$installed"; }; then
  printf '==> installing clippy and rustfmt\n'
  rustup component add clippy rustfmt
fi

#!/usr/bin/env bash
# Usage: scripts/ensure-cargo-deny.sh
#
# Installs cargo-deny (for `make lint`'s `cargo deny check bans licenses sources`) with cargo when it is
# not on PATH yet. Building it takes several minutes, once per machine; quiet when it is there.
set -euo pipefail

version=0.20.2
cargo=${CARGO:-cargo}

if "$cargo" deny --version >/dev/null 2>&1; then
  exit 0
fi
echo "ensure-cargo-deny: installing cargo-deny $version (cargo install --locked)" >&2
"$cargo" install cargo-deny --locked --version "$version"

#!/usr/bin/env bash
# Writes .dev/config.yaml (only if it does not exist yet) for `make run`: one node on
# http://127.0.0.1:8443, SQLite metadata, local storage under ./data, console logs, and a random
# development API key for user `dev` plus random internal/link secrets (from /dev/urandom).
# Prints the development key every time, read back from the file.
# Paths in the file are relative to the repository root, where `make run` starts the node.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
config=.dev/config.yaml

rand_hex() { # 16 random bytes as 32 hex characters
  od -An -v -tx1 -N16 /dev/urandom | tr -d ' \n'
}

if [[ ! -e $config ]]; then
  umask 077
  mkdir -p .dev
  key=$(rand_hex)
  internal=$(rand_hex)
  link=$(rand_hex)
  [[ ${#key} -eq 32 && ${#internal} -eq 32 && ${#link} -eq 32 ]] || {
    echo "dev-config: could not read random bytes from /dev/urandom" >&2
    exit 1
  }
  tmp=$(mktemp "$config.XXXXXX")
  cat >"$tmp" <<EOF
# Development configuration written by scripts/dev-config.sh (not for production).
# Delete this file to get new random keys.
server:
  listen_addr: "127.0.0.1:8443"
  protocol: "http"
  external_url: "http://127.0.0.1:8443"
auth:
  api_key_users:
    dev: "$key"
  internal_proxy_secret: "$internal"
  single_use_link_secret: "$link"
backend:
  default_backend: "localfs"
  localfs_root_path: "./data"
metadata_store:
  type: "sqlite"
  sqlite_path: "./callfs.sqlite3"
log:
  level: "info"
  format: "console"
instance_discovery:
  instance_id: "node-1"
EOF
  mv "$tmp" "$config"
fi

key=$(sed -n 's/^    dev: "\([0-9A-Za-z._~+-]*\)"[[:space:]]*$/\1/p' "$config" | head -n 1)
if [[ -z $key ]]; then
  echo "dev-config: no key for user dev found in $config (delete the file to regenerate it)" >&2
  exit 1
fi
echo "Development API key (user dev): $key"

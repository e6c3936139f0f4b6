#!/usr/bin/env bash
# Proxied vs direct (issue "The cluster"): two nodes sharing one PostgreSQL; node-1 holds the files.
# Measures 4 KiB GET req/s and 1 GiB download MiB/s directly on node-1 and through node-2, and
# node-2's peak RSS while it proxies. Run through scripts/with-postgres.sh (make bench-proxy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${CALLFS_TEST_PG_DSN:?run me through scripts/with-postgres.sh}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
[[ -x target/release/callfs ]] || cargo build --release

tmp=$(mktemp -d /tmp/callfs-proxy.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
db="callfs_proxy_$RANDOM$RANDOM"
psql -q "$CALLFS_TEST_PG_DSN" -c "CREATE DATABASE $db"
dsn="${CALLFS_TEST_PG_DSN%/*}/$db"
key="proxy-bench-key-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
p1=$(port) p2=$(port)
for n in 1 2; do
  me=$([[ $n == 1 ]] && echo "$p1" || echo "$p2")
  other=$([[ $n == 1 ]] && echo 2 || echo 1)
  other_port=$([[ $n == 1 ]] && echo "$p2" || echo "$p1")
  mkdir -p "$tmp/n$n"
  cat >"$tmp/n$n/config.yaml" <<EOF
server: {listen_addr: "127.0.0.1:$me", protocol: http}
auth:
  api_key_users: {bench: "$key"}
  internal_proxy_secret: "proxy-bench-internal-0123456789"
  single_use_link_secret: "proxy-bench-link-0123456789"
backend: {localfs_root_path: "$tmp/n$n/data"}
metadata_store: {type: postgres, dsn: "$dsn"}
dlm: {type: postgres}
log: {level: error, format: console}
instance_discovery:
  instance_id: "node-$n"
  peer_endpoints: {node-$other: "http://127.0.0.1:$other_port"}
EOF
  target/release/callfs server --config "$tmp/n$n/config.yaml" 2>"$tmp/n$n/log" &
  pids+=($!)
done
proxy_pid=${pids[1]}
for p in "$p1" "$p2"; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$p/health" >/dev/null && break; sleep 0.1; done
done

auth="Authorization: Bearer $key"
head -c 4096 /dev/urandom >"$tmp/4k.bin"
head -c 1G /dev/urandom >"$tmp/1g.bin"
curl -fs -o /dev/null -H "$auth" -T "$tmp/4k.bin" "http://127.0.0.1:$p1/v1/files/b/4k.bin"
curl -fs -o /dev/null -H "$auth" -T "$tmp/1g.bin" "http://127.0.0.1:$p1/v1/files/b/1g.bin"

cat >"$tmp/get.lua" <<EOF
wrk.headers["Authorization"] = "Bearer $key"
EOF
rps() { wrk -t2 -c32 -d10s -s "$tmp/get.lua" "$1" | awk '/Requests\/sec/ {print $2}'; }
wrk -t2 -c32 -d2s -s "$tmp/get.lua" "http://127.0.0.1:$p2/v1/files/b/4k.bin" >/dev/null
direct_rps=$(rps "http://127.0.0.1:$p1/v1/files/b/4k.bin")
proxied_rps=$(rps "http://127.0.0.1:$p2/v1/files/b/4k.bin")

speed() { curl -fs -o /dev/null -w '%{speed_download}' -H "$auth" "$1"; }
echo 5 >"/proc/$proxy_pid/clear_refs" 2>/dev/null || true
direct=() proxied=()
for _ in 1 2 3; do
  direct+=("$(speed "http://127.0.0.1:$p1/v1/files/b/1g.bin")")
  proxied+=("$(speed "http://127.0.0.1:$p2/v1/files/b/1g.bin")")
done
hwm=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$proxy_pid/status")
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
d=$(median "${direct[@]}") p=$(median "${proxied[@]}")

{
  echo "| metric | direct (node-1) | proxied (via node-2) | ratio | target |"
  echo "|---|---|---|---|---|"
  awk -v a="$proxied_rps" -v b="$direct_rps" 'BEGIN {printf "| 4 KiB GET, req/s | %.0f | %.0f | %.2f× | ≥ 0.6× |\n", b, a, a / b}'
  awk -v a="$p" -v b="$d" 'BEGIN {printf "| 1 GiB download, MiB/s (median of 3) | %.1f | %.1f | %.2f× | ≥ 0.7× |\n", b / 1048576, a / 1048576, a / b}'
  awk -v k="$hwm" 'BEGIN {printf "| proxying node peak RSS (VmHWM), MiB | — | %.1f | — | < 64 MiB |\n", k / 1024}'
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores; wrk -t2 -c32 -d10s; raw download bytes/s: direct ${direct[*]}; proxied ${proxied[*]}."
} | tee bench/proxy-results.md

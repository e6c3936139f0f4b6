#!/usr/bin/env bash
# Peer-proxy connection reuse (issue "The fast path"): two nodes on one PostgreSQL, node-1 holds a
# 4 KiB file, wrk GETs it through node-2 for BENCH_DURATION (10s) at 32 connections while `ss`
# samples node-2's connections to node-1 every 0.2 s. Reuse shows as a handful of distinct local
# ports for the whole run (one pool per HTTP worker thread, keep-alive); a client per request would
# show thousands. Also prints direct and proxied req/s of the same run (noisy on a shared machine).
# Run through scripts/with-postgres.sh. Starts two nodes, stops them by pid.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${CALLFS_TEST_PG_DSN:?run me through scripts/with-postgres.sh}"
bin=${CALLFS_BIN:-target/release/callfs}
duration=${BENCH_DURATION:-10s}
tmp=$(mktemp -d /dev/shm/callfs-keepalive.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
db="callfs_ka_$RANDOM$RANDOM"
psql -q "$CALLFS_TEST_PG_DSN" -c "CREATE DATABASE $db"
dsn="${CALLFS_TEST_PG_DSN%/*}/$db"
key="ka-bench-key-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
p1=$(port) p2=$(port)
for n in 1 2; do
  me=$([[ $n == 1 ]] && echo "$p1" || echo "$p2")
  other=$([[ $n == 1 ]] && echo 2 || echo 1)
  other_port=$([[ $n == 1 ]] && echo "$p2" || echo "$p1")
  mkdir -p "$tmp/n$n"
  cat >"$tmp/n$n/config.yaml" <<CFG
server: {listen_addr: "127.0.0.1:$me", protocol: http}
auth:
  api_key_users: {bench: "$key"}
  internal_proxy_secret: "ka-bench-internal-0123456789"
  single_use_link_secret: "ka-bench-link-0123456789"
backend: {localfs_root_path: "$tmp/n$n/data"}
metadata_store: {type: postgres, dsn: "$dsn"}
dlm: {type: postgres}
log: {level: error, format: console}
instance_discovery:
  instance_id: "node-$n"
  peer_endpoints: {node-$other: "http://127.0.0.1:$other_port"}
CFG
  "$bin" server --config "$tmp/n$n/config.yaml" 2>"$tmp/n$n/log" &
  pids+=($!)
done
for p in "$p1" "$p2"; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$p/health" >/dev/null && break; sleep 0.1; done
done
auth="Authorization: Bearer $key"
head -c 4096 /dev/urandom >"$tmp/4k.bin"
curl -fs -o /dev/null -H "$auth" -T "$tmp/4k.bin" "http://127.0.0.1:$p1/v1/files/b/4k.bin"
printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$key" >"$tmp/get.lua"
rps() { wrk -t2 -c32 -d"$duration" -s "$tmp/get.lua" "$1" | awk '/Requests\/sec/ {print $2}'; }
direct=$(rps "http://127.0.0.1:$p1/v1/files/b/4k.bin")
: >"$tmp/ports"
(
  while true; do
    ss -Htn state established "( dport = :$p1 )" | awk '{print $3}' >>"$tmp/ports"
    sleep 0.2
  done
) &
sampler=$!
proxied=$(rps "http://127.0.0.1:$p2/v1/files/b/4k.bin")
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
# Connections to node-1 from anyone but wrk (wrk only talks to node-2): node-2's peer pool.
distinct=$(sort -u "$tmp/ports" | wc -l)
peak=$(awk 'NF' "$tmp/ports" | wc -l)
samples=$(( $(echo "$duration" | tr -dc 0-9) * 5 ))
echo "direct GET req/s: $direct"
echo "proxied GET req/s: $proxied"
echo "node-2 -> node-1 connections: $distinct distinct local ports over the run (sum over ~$samples samples: $peak)"

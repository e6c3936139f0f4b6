#!/usr/bin/env bash
# Instruction counts per request (issue "The fast path"): one callfs node under valgrind's
# callgrind, files on /dev/shm (tmpfs), a sequential keep-alive client. Wall-clock figures on a
# shared 2-core machine are noise; instructions are not (idle timer wake-ups add well under 1%).
#
#   bench/profile.sh sqlite|postgres get|put|head [N]
#
# PROFILE_LOG_LEVEL (error, as make bench) and PROFILE_LOG_FORMAT (console) set the node's log; at
# info every request writes its log line.
#
# After 200 warm-up requests the counters are zeroed (callgrind_control -z), N requests (2000)
# are sent, and the counters dumped: instructions/request = Ir / N over every thread of the node.
# With `postgres` (run through scripts/with-postgres.sh, dlm.type postgres) the database logs every
# statement during the measured requests and the script prints statements/request by kind.
# Prints one line per figure; PROFILE_OUT (optional) keeps the callgrind dump and an annotated
# summary. Starts one node and stops it by pid.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
store=${1:?sqlite|postgres}
op=${2:?get|put|head}
n=${3:-2000}
warm=200
bin=${CALLFS_BIN:-$repo/target/release/callfs}
under=${PROFILE_UNDER:-callgrind}

tmp=$(mktemp -d /dev/shm/callfs-profile.XXXXXX)
pid=""
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf -- "$tmp"
}
trap cleanup EXIT
cp "$bin" "$tmp/callfs"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key="profile-key-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
if [[ $store == postgres ]]; then
  : "${CALLFS_TEST_PG_DSN:?run through scripts/with-postgres.sh}"
  db="callfs_prof_$RANDOM$RANDOM"
  psql -q "$CALLFS_TEST_PG_DSN" -c "CREATE DATABASE $db"
  dsn="${CALLFS_TEST_PG_DSN%/*}/$db"
  meta="metadata_store: {type: postgres, dsn: \"$dsn\"}
dlm: {type: postgres}"
else
  meta="metadata_store: {type: sqlite, sqlite_path: \"$tmp/meta.sqlite3\"}"
fi
cat >"$tmp/config.yaml" <<EOF
server: {listen_addr: "127.0.0.1:$port", protocol: http}
auth:
  api_key_users: {bench: "$key"}
  internal_proxy_secret: "profile-internal-0123456789abcdef"
  single_use_link_secret: "profile-link-0123456789abcdef"
backend: {default_backend: localfs, localfs_root_path: "$tmp/data", localfs_fsync: true}
$meta
log: {level: ${PROFILE_LOG_LEVEL:-error}, format: ${PROFILE_LOG_FORMAT:-console}}
instance_discovery: {instance_id: "profile-node"}
EOF
if [[ $under == callgrind ]]; then
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" --dump-instr=no \
    "$tmp/callfs" server --config "$tmp/config.yaml" >"$tmp/log" 2>&1 &
else
  "$tmp/callfs" server --config "$tmp/config.yaml" >"$tmp/log" 2>&1 &
fi
pid=$!
for _ in $(seq 600); do curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs "http://127.0.0.1:$port/ready" >/dev/null || { tail -20 "$tmp/log" >&2; exit 1; }

client() { # client COUNT: COUNT sequential keep-alive requests of $op
  python3 - "$port" "$key" "$op" "$1" <<'PY'
import http.client, sys
port, key, op, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = http.client.HTTPConnection("127.0.0.1", int(port))
h = {"Authorization": "Bearer " + key}
body = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/" * 64)
if op in ("get", "head"):
    c.request("PUT", "/v1/files/b/4k.bin", body=body, headers=h); r = c.getresponse(); r.read()
for i in range(count):
    if op == "put":
        c.request("PUT", "/v1/files/put/%d.bin" % (i % 8), body=body, headers=h)
    else:
        c.request(op.upper(), "/v1/files/b/4k.bin", headers=h)
    r = c.getresponse(); r.read()
    assert r.status in (200, 201), r.status
PY
}
client "$warm"
if [[ $store == postgres ]]; then
  psql -q "$dsn" -c "ALTER SYSTEM SET log_statement = 'all'" -c "SELECT pg_reload_conf()" >/dev/null
  pglog="$(dirname "$(psql -XAtq "$dsn" -c 'show data_directory')")/postgres.log"
  sleep 0.5
  before=$(wc -l <"$pglog")
fi
[[ $under == callgrind ]] && callgrind_control -z "$pid" >/dev/null
client "$n"
if [[ $under == callgrind ]]; then
  callgrind_control -d "$pid" >/dev/null
  sleep 1
  dump=$(ls -t "$tmp"/cg.out.* | head -1)
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  echo "instructions/request $op $store: $((ir / n)) (Ir $ir over $n requests)"
  if [[ -n ${PROFILE_OUT:-} ]]; then
    cp "$dump" "$PROFILE_OUT.callgrind"
    callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | head -60 >"$PROFILE_OUT.txt" || true
  fi
fi
if [[ $store == postgres ]]; then
  sleep 0.5
  psql -q "$dsn" -c "ALTER SYSTEM RESET log_statement" -c "SELECT pg_reload_conf()" >/dev/null
  tail -n +"$((before + 1))" "$pglog" | grep -E 'LOG:  (statement|execute)' |
    grep -v -E 'ALTER SYSTEM|pg_reload_conf' >"$tmp/statements" || true
  total=$(wc -l <"$tmp/statements")
  echo "sql statements/request $op postgres: $(python3 -c "print(round($total/$n, 2))") ($total over $n requests)"
  sed -E 's/.*(statement|execute [^:]*): //' "$tmp/statements" | cut -c1-60 | sort | uniq -c | sort -rn |
    awk -v n="$n" '{c=$1; $1=""; printf "  %6.2f %s\n", c/n, $0}' | head -20
  [[ -n ${PROFILE_OUT:-} ]] && cp "$tmp/statements" "$PROFILE_OUT.sql" || true
fi

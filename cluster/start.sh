#!/usr/bin/env bash
# Usage: cluster/start.sh            (what `make cluster` runs; stop with cluster/stop.sh / `make cluster-down`)
#        cluster/start.sh --node ID  (start one node again, e.g. after `kill -9` in a failover drill)
#
# Starts a local three-node callfs cluster on 127.0.0.1, everything in the background:
#
#   PostgreSQL   private cluster in .cluster/pg on a free loopback port (or CALLFS_CLUSTER_PG_DSN)
#   node-1..3    target/release/callfs on 127.0.0.1:8441, 8442, 8443 (metadata + path locks in
#                PostgreSQL database `callfs`, own localfs roots .cluster/node-N/data, peers = the
#                other two, health_probe_interval 2s)
#   HAProxy      127.0.0.1:8440, round robin over the nodes, probing GET /ready (cluster/haproxy.cfg)
#   Prometheus   127.0.0.1:9090 with cluster/prometheus.yml + cluster/alerts.yml
#
# CALLFS_CLUSTER_PG_DSN: a PostgreSQL *server* DSN (e.g. postgres://postgres@127.0.0.1:5432/postgres)
#   to use instead of the private cluster; database `callfs` is created there if missing.
#
# State lives in .cluster/ (repository root): generated node configs (.cluster/node-N.yaml,
# rewritten on every start), logs (.cluster/*.log), data, and .cluster/secrets.env with the
# development API key (user `dev`) and the internal/link secrets, generated once and kept.
# Every pid started is appended to .cluster/pids ("<name> <pid>"), which cluster/stop.sh uses to
# stop exactly those processes. Data survives a stop/start; `cluster/stop.sh --purge` deletes it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
state=$root/.cluster
pids=$state/pids

HAPROXY_PORT=8440
NODE_PORTS=(8441 8442 8443)   # must match the targets of cluster/prometheus.yml
PROMETHEUS_PORT=9090

only_node=""
case ${1:-} in
  "") ;;
  --node)
    [[ ${2:-} =~ ^node-[123]$ ]] || { echo "usage: $0 [--node node-1|node-2|node-3]" >&2; exit 2; }
    only_node=$2
    ;;
  *) echo "usage: $0 [--node node-1|node-2|node-3]" >&2; exit 2 ;;
esac

say() { echo "cluster: $*" >&2; }
die() { say "$*"; exit 1; }

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# Something accepts connections on 127.0.0.1:$1?
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p i
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' && return
  fi
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 30000))
    port_busy "$p" || { echo "$p"; return; }
  done
  return 1
}

rand_hex() { od -An -v -tx1 -N16 /dev/urandom | tr -d ' \n'; }

record_pid() { echo "$1 $2" >>"$pids"; }

# Wait until `curl` gets a 2xx from $2, while process $1 lives; $3 = what, $4 = log, $5 = seconds.
wait_http() {
  local pid=$1 url=$2 what=$3 log=$4 secs=${5:-30} i
  for ((i = 0; i < secs * 10; i++)); do
    if ! pid_alive "$pid"; then
      say "$what exited during start-up; last lines of $log:"
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  say "$what did not answer $url within ${secs}s; last lines of $log:"
  tail -n 30 "$log" >&2 || true
  return 1
}

# Replace the database name of a postgres://... DSN (keeps user, host, port and query).
dsn_with_db() {
  local dsn=$1 db=$2 scheme rest authority query=""
  scheme=${dsn%%://*}
  rest=${dsn#*://}
  if [[ $rest == *\?* ]]; then
    query="?${rest#*\?}"
    rest=${rest%%\?*}
  fi
  authority=${rest%%/*}
  echo "${scheme}://${authority}/${db}${query}"
}

# ------------------------------------------------------------------ one node only (--node)
if [[ -n $only_node ]]; then
  [[ -s $pids ]] || die "the cluster is not running (no .cluster/pids); start it with make cluster"
  cfg=$state/$only_node.yaml
  [[ -f $cfg ]] || die "$cfg is missing; start the whole cluster with make cluster"
  old_pid=$(awk -v n="$only_node" '$1 == n { print $2 }' "$pids" | tail -n 1)
  if pid_alive "$old_pid" && [[ $(readlink "/proc/$old_pid/exe" 2>/dev/null) == */callfs* ]]; then
    die "$only_node is still running (pid $old_pid)"
  fi
  port=${NODE_PORTS[${only_node#node-} - 1]}
  port_busy "$port" && die "127.0.0.1:$port is already in use"
  bin=$root/target/release/callfs
  [[ -x $bin ]] || die "target/release/callfs is missing; run make build"
  nohup env -u CALLFS_CLUSTER_PG_DSN "$bin" server --config "$cfg" >>"$state/$only_node.log" 2>&1 </dev/null &
  new_pid=$!
  # replace the node's line in .cluster/pids so that cluster/stop.sh stops the new process
  awk -v n="$only_node" '$1 != n' "$pids" >"$pids.tmp"
  echo "$only_node $new_pid" >>"$pids.tmp"
  mv "$pids.tmp" "$pids"
  wait_http "$new_pid" "http://127.0.0.1:$port/health" "$only_node" "$state/$only_node.log" 30
  wait_http "$new_pid" "http://127.0.0.1:$port/ready" "$only_node (/ready)" "$state/$only_node.log" 30
  say "$only_node is up again on http://127.0.0.1:$port (pid $new_pid)"
  exit 0
fi

# ------------------------------------------------------------------ refuse a second cluster
mkdir -p "$state"
if [[ -s $pids ]]; then
  while read -r name pid; do
    if pid_alive "$pid"; then
      die "already running ($name, pid $pid; see .cluster/pids); run cluster/stop.sh (make cluster-down) first"
    fi
  done <"$pids"
  say "removing stale .cluster/pids (none of its processes is running)"
fi
: >"$pids"

# From here on, a failure stops whatever this run started.
cleanup_on_error() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    say "start-up failed; stopping what was started"
    "$root/cluster/stop.sh" >&2 || true
  fi
}
trap cleanup_on_error EXIT

# ------------------------------------------------------------------ dependencies
scripts/ensure-deps.sh
if ! command -v haproxy >/dev/null 2>&1; then
  say "installing haproxy (apt)"
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq >/dev/null
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends haproxy >/dev/null
  command -v haproxy >/dev/null 2>&1 || die "haproxy still missing after apt-get install"
fi
for tool in curl psql prometheus promtool; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run scripts/ensure-deps.sh; curl: apt-get install curl)"
done

bin=$root/target/release/callfs
if [[ ! -x $bin ]]; then
  say "building target/release/callfs"
  cargo build --release
fi

for port in "$HAPROXY_PORT" "${NODE_PORTS[@]}" "$PROMETHEUS_PORT"; do
  if port_busy "$port"; then
    die "127.0.0.1:$port is already in use; stop whatever listens there first"
  fi
done

haproxy -q -c -f cluster/haproxy.cfg >/dev/null || die "cluster/haproxy.cfg is invalid (haproxy -c -f cluster/haproxy.cfg)"
promtool check config cluster/prometheus.yml >/dev/null || die "cluster/prometheus.yml is invalid (promtool check config cluster/prometheus.yml)"

# ------------------------------------------------------------------ secrets (generated once)
secrets=$state/secrets.env
if [[ ! -s $secrets ]]; then
  (
    umask 077
    {
      echo "# generated once by cluster/start.sh; delete it (or cluster/stop.sh --purge) for new secrets"
      echo "CLUSTER_DEV_KEY=$(rand_hex)"
      echo "CLUSTER_INTERNAL_SECRET=$(rand_hex)"
      echo "CLUSTER_LINK_SECRET=$(rand_hex)"
    } >"$secrets"
  )
fi
# shellcheck disable=SC1090
source "$secrets"
for v in CLUSTER_DEV_KEY CLUSTER_INTERNAL_SECRET CLUSTER_LINK_SECRET; do
  [[ ${!v:-} =~ ^[0-9a-f]{32}$ ]] || die "$secrets: $v missing or malformed (delete the file to regenerate)"
done

# ------------------------------------------------------------------ PostgreSQL
if [[ -n ${CALLFS_CLUSTER_PG_DSN:-} ]]; then
  server_dsn=$CALLFS_CLUSTER_PG_DSN
  PGCONNECT_TIMEOUT=5 psql "$server_dsn" -X -A -t -q -c 'select 1' >/dev/null 2>&1 ||
    die "CALLFS_CLUSTER_PG_DSN does not answer (psql ... -c 'select 1' failed)"
  pg_desc="external ($CALLFS_CLUSTER_PG_DSN, password not shown)"
else
  bindir=""
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -rn); do
    if [[ -x $d/initdb && -x $d/pg_ctl ]]; then
      bindir=$d
      break
    fi
  done
  [[ -n $bindir ]] || die "initdb/pg_ctl not found under /usr/lib/postgresql/*/bin; run scripts/ensure-deps.sh"
  as_pg=()
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user; run scripts/ensure-deps.sh"
    as_pg=(runuser -u postgres --)
  fi
  pgdir=$state/pg
  data=$pgdir/data
  mkdir -p "$data"
  if [[ ${#as_pg[@]} -gt 0 ]]; then
    chown -R postgres: "$pgdir"
    # the postgres user must be able to reach .cluster/pg
    "${as_pg[@]}" test -x "$pgdir" || die "user postgres cannot enter $pgdir (check the permissions of its parents)"
  fi
  chmod 700 "$data"
  if [[ ! -s $data/PG_VERSION ]]; then
    say "initdb $pgdir/data"
    "${as_pg[@]}" "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
      >"$pgdir/initdb.log" 2>&1 || { cat "$pgdir/initdb.log" >&2; die "initdb failed"; }
  fi
  pg_port=$(free_port) || die "no free port for PostgreSQL"
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -l "$pgdir/postgres.log" -w -t 60 \
    -o "-p $pg_port -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null ||
    { tail -n 30 "$pgdir/postgres.log" >&2 || true; die "PostgreSQL did not start"; }
  pg_pid=$(head -n 1 "$data/postmaster.pid")
  [[ $pg_pid =~ ^[0-9]+$ ]] || die "cannot read the postmaster pid from $data/postmaster.pid"
  record_pid postgres "$pg_pid"
  server_dsn="postgres://postgres@127.0.0.1:${pg_port}/postgres?sslmode=disable"
  pg_desc="$server_dsn (pid $pg_pid, data .cluster/pg)"
fi

if [[ $(psql "$server_dsn" -X -A -t -q -c "select count(*) from pg_database where datname = 'callfs'") != 1 ]]; then
  psql "$server_dsn" -X -q -v ON_ERROR_STOP=1 -c 'CREATE DATABASE callfs' >/dev/null
fi
dsn=$(dsn_with_db "$server_dsn" callfs)

# ------------------------------------------------------------------ node configs
node_ids=(node-1 node-2 node-3)
for i in 0 1 2; do
  id=${node_ids[$i]}
  mkdir -p "$state/$id/data"
  cfg=$state/$id.yaml
  {
    echo "# generated by cluster/start.sh on every start; edit the script, not this file"
    echo "server:"
    echo "  listen_addr: \"127.0.0.1:${NODE_PORTS[$i]}\""
    echo "  protocol: \"http\""
    echo "  external_url: \"http://127.0.0.1:${HAPROXY_PORT}\""
    echo "  trusted_proxies: [\"127.0.0.1\"]"
    echo "auth:"
    echo "  api_key_users:"
    echo "    dev: \"$CLUSTER_DEV_KEY\""
    echo "  internal_proxy_secret: \"$CLUSTER_INTERNAL_SECRET\""
    echo "  single_use_link_secret: \"$CLUSTER_LINK_SECRET\""
    echo "backend:"
    echo "  default_backend: \"localfs\""
    echo "  localfs_root_path: \"$state/$id/data\""
    echo "metadata_store:"
    echo "  type: \"postgres\""
    echo "  dsn: \"$dsn\""
    echo "dlm:"
    echo "  type: \"postgres\""
    echo "log:"
    echo "  level: \"info\""
    echo "  format: \"json\""
    echo "instance_discovery:"
    echo "  instance_id: \"$id\""
    echo "  health_probe_interval: \"2s\""
    echo "  peer_endpoints:"
    for j in 0 1 2; do
      [[ $j -eq $i ]] && continue
      echo "    ${node_ids[$j]}: \"http://127.0.0.1:${NODE_PORTS[$j]}\""
    done
  } >"$cfg.tmp"
  chmod 600 "$cfg.tmp"
  mv "$cfg.tmp" "$cfg"
done

# ------------------------------------------------------------------ nodes
# Started together (migrations run under an advisory lock), then each must answer /health and /ready.
node_pids=()
for i in 0 1 2; do
  id=${node_ids[$i]}
  # CALLFS_* variables of the caller override the file (docs/configuration.md), except ours
  nohup env -u CALLFS_CLUSTER_PG_DSN "$bin" server --config "$state/$id.yaml" >>"$state/$id.log" 2>&1 </dev/null &
  node_pids+=($!)
  record_pid "$id" "$!"
done
for i in 0 1 2; do
  id=${node_ids[$i]}
  wait_http "${node_pids[$i]}" "http://127.0.0.1:${NODE_PORTS[$i]}/health" "$id" "$state/$id.log" 30
  wait_http "${node_pids[$i]}" "http://127.0.0.1:${NODE_PORTS[$i]}/ready" "$id (/ready)" "$state/$id.log" 30
done

# ------------------------------------------------------------------ HAProxy
nohup haproxy -db -f cluster/haproxy.cfg >>"$state/haproxy.log" 2>&1 </dev/null &
haproxy_pid=$!
record_pid haproxy "$haproxy_pid"
# the first /ready checks need a moment before a node is UP; /health is passed to any UP node
wait_http "$haproxy_pid" "http://127.0.0.1:${HAPROXY_PORT}/health" "haproxy" "$state/haproxy.log" 30

# ------------------------------------------------------------------ Prometheus
mkdir -p "$state/prometheus"
nohup prometheus --config.file="$root/cluster/prometheus.yml" --storage.tsdb.path="$state/prometheus" \
  --web.listen-address="127.0.0.1:${PROMETHEUS_PORT}" >>"$state/prometheus.log" 2>&1 </dev/null &
prom_pid=$!
record_pid prometheus "$prom_pid"
wait_http "$prom_pid" "http://127.0.0.1:${PROMETHEUS_PORT}/-/ready" "prometheus" "$state/prometheus.log" 60

trap - EXIT

cat <<EOF

callfs cluster is up (pids in .cluster/pids; stop with: make cluster-down)

  load balancer   http://127.0.0.1:${HAPROXY_PORT}        (HAProxy, round robin, probes GET /ready)
  node-1          http://127.0.0.1:${NODE_PORTS[0]}        log .cluster/node-1.log, data .cluster/node-1/data
  node-2          http://127.0.0.1:${NODE_PORTS[1]}        log .cluster/node-2.log, data .cluster/node-2/data
  node-3          http://127.0.0.1:${NODE_PORTS[2]}        log .cluster/node-3.log, data .cluster/node-3/data
  prometheus      http://127.0.0.1:${PROMETHEUS_PORT}        alerts: http://127.0.0.1:${PROMETHEUS_PORT}/alerts
  postgresql      $pg_desc

Development API key (user dev): $CLUSTER_DEV_KEY

  curl -H "Authorization: Bearer $CLUSTER_DEV_KEY" --data-binary 'hello' http://127.0.0.1:${NODE_PORTS[0]}/v1/files/hello.txt
  curl -H "Authorization: Bearer $CLUSTER_DEV_KEY" http://127.0.0.1:${HAPROXY_PORT}/v1/files/hello.txt
EOF

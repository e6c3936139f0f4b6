#!/usr/bin/env bash
# callfs vs nginx and dufs, one bounded run (what `make bench` runs after `cargo build --release`).
#
# Starts one callfs node (sqlite + localfs, log level error, default localfs_fsync: true), one
# unprivileged foreground nginx (static files + WebDAV PUT) and one dufs (the Rust file server a
# user would pick instead; TCP_NODELAY forced by bench/nodelay.c) on free 127.0.0.1 ports, each
# with its own root in a fresh temp dir (on tmpfs when /dev/shm has room), and measures, one
# benchmark at a time (2-core machine: client and server never share the CPU with another one):
#   1. 4 KiB GET req/s + p99  wrk --latency, GET of one file on each server
#   2. 4 KiB PUT req/s        wrk, BENCH_PUT_PATHS rotating paths (callfs PUT, nginx WebDAV, dufs)
#   3. /metrics scrape time   after >= 100,000 requests to callfs, mean of 20 curl scrapes
#   4. 1 GiB upload/download  curl -T / curl -o /dev/null, median of BENCH_LARGE_REPEAT each
#   5. callfs peak RSS        VmHWM (reset before step 4) and VmRSS sampled during step 4
#   6. metrics recording cost: step 1 against a node with recording off
#   7. informational: steps 2 and 4 (upload) again against a node with localfs_fsync: false
#      (nginx and dufs never fsync), so a PUT miss can be split into fsync cost and the rest
#   8. with CALLFS_TEST_PG_DSN (make bench runs under scripts/with-postgres.sh): two nodes on
#      PostgreSQL metadata and leases, 4 KiB GET direct on the node holding the file and proxied
#      through the other one
#   9. a mixed run (GET, PUT, listing) for BENCH_MIXED_DURATION with the node's RSS sampled
#      every second: memory must stay flat
# The machine is shared: before starting, and for every measured step, the script checks how much
# CPU processes outside this run (and the hypervisor's steal) took; a disturbed step is repeated
# (measure()), and the share is reported next to the table so a skewed figure is visible.
# Prints a markdown table and writes it to bench/results.md (override with BENCH_RESULTS).
# Every process it starts is stopped by pid and the temp dir removed on exit (Ctrl-C stops the
# whole foreground group at once; a TERM sent to this script alone takes effect when the current
# step's client returns, at most BENCH_DURATION + 30 s or curl's 600 s limit).
#
# Knobs (environment): CALLFS_BIN (default target/release/callfs), BENCH_DURATION (10s),
# BENCH_THREADS (1), BENCH_CONNECTIONS (32), BENCH_PUT_PATHS (8), BENCH_LARGE_SIZE (1G, a
# `head -c` size), BENCH_LARGE_REPEAT (3), BENCH_SKIP_NOFSYNC (set to 1 to skip step 7),
# BENCH_MIXED_DURATION (5m; 0 skips step 9), BENCH_MIN_REQUESTS (requests callfs must have served
# before the /metrics scrape, 100000), BENCH_QUIET_WAIT (seconds to wait before starting until
# other processes use <= 10% of the CPU, 600), BENCH_ATTEMPTS (tries per step when other processes
# disturbed it, 3; see measure()), BENCH_TMPDIR (parent of the temp dir; default /dev/shm when it
# has 5x BENCH_LARGE_SIZE free, else $TMPDIR or /tmp), DUFS (the dufs binary; installed with
# `cargo install dufs@0.47.0 --locked` when missing).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

CALLFS_BIN=${CALLFS_BIN:-$repo/target/release/callfs}
DURATION=${BENCH_DURATION:-10s}
THREADS=${BENCH_THREADS:-1}
CONNS=${BENCH_CONNECTIONS:-32}
PUT_PATHS=${BENCH_PUT_PATHS:-8}
LARGE_SIZE=${BENCH_LARGE_SIZE:-1G}
LARGE_REPEAT=${BENCH_LARGE_REPEAT:-3}
SKIP_NOFSYNC=${BENCH_SKIP_NOFSYNC:-0}
MIXED_DURATION=${BENCH_MIXED_DURATION:-5m}
QUIET_WAIT=${BENCH_QUIET_WAIT:-600}
ATTEMPTS=${BENCH_ATTEMPTS:-3}
DISTURB_MAX=10
RESULTS=${BENCH_RESULTS:-$here/results.md}
MIN_REQUESTS=${BENCH_MIN_REQUESTS:-100000}
# absolute, because the run works inside its temp dir
CALLFS_BIN=$(realpath -m -- "$CALLFS_BIN")
RESULTS=$(realpath -m -- "$RESULTS")
SCRAPES=20
KEY="bench-key-$(od -An -v -tx1 -N12 /dev/urandom | tr -d ' \n')"
AUTH="Bearer $KEY"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup (by pid only)
pids=()
tmp=""
stop_pid() { # stop_pid PID: TERM, wait up to 5 s, then KILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  if [[ -n $tmp && -d $tmp ]]; then rm -rf -- "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
forget_pid() { # drop a stopped pid from the cleanup list
  local keep=() p
  for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# ---------------------------------------------------------------- tools
need_apt=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]} from Debian apt"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "need ${need_apt[*]} and cannot install (not root, no sudo)"
    sudo=(sudo)
  fi
  # The Debian nginx package may try to start the system service; that instance is not ours and
  # is not used (we run our own on a loopback port).
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2 ||
    { "${sudo[@]}" apt-get update -qq >&2 &&
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
DUFS=${DUFS:-$(command -v dufs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/dufs")}
if [[ ! -x $DUFS ]]; then
  log "installing dufs 0.47.0 with cargo (crates.io)"
  cargo install dufs@0.47.0 --locked >&2 || die "cargo install dufs failed"
  DUFS="${CARGO_HOME:-$HOME/.cargo}/bin/dufs"
fi
[[ -x $CALLFS_BIN ]] || die "no callfs binary at $CALLFS_BIN (run cargo build --release)"

# ---------------------------------------------------------------- temp dir and helpers
# tmpfs when it has room for the large file five times over (source, callfs, nginx, dufs, slack)
large_bytes_wanted=$(numfmt --from=iec "$LARGE_SIZE")
if [[ -z ${BENCH_TMPDIR:-} && -d /dev/shm ]] &&
  (($(df --output=avail -B1 /dev/shm | tail -n 1) > 5 * large_bytes_wanted)); then
  BENCH_TMPDIR=/dev/shm
fi
tmp=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/callfs-bench.XXXXXX")
medium=$(df --output=fstype "$tmp" | tail -n 1)
chmod 0755 "$tmp" # nginx workers may run as nobody (below)
# A private copy, so a concurrent `cargo build` cannot swap the binary mid-run.
cp "$CALLFS_BIN" "$tmp/callfs"
bin_info="$(date -u -r "$CALLFS_BIN" +%Y-%m-%dT%H:%MZ), sha256 $(sha256sum "$tmp/callfs" | cut -c1-12)"
if head_rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null); then
  bin_info+=" (repository HEAD at run time: $head_rev)"
fi
cd "$tmp"

used_ports=" "
free_port() { # a loopback port nothing listens on and we have not handed out yet
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
    [[ $used_ports == *" $p "* ]] && continue
    if command -v ss >/dev/null 2>&1; then
      ss -Htln "sport = :$p" 2>/dev/null | grep -q . && continue
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    used_ports+="$p "
    echo "$p"
    return 0
  done
  die "no free loopback port found"
}

wait_http() { # wait_http URL SECONDS PID: until URL answers 2xx, or fail
  local url=$1 secs=$2 pid=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

median() { # median of the arguments (numbers)
  printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# bounded per step: wrk's own duration plus slack (run_wrk), curl --max-time
CURL_MAX=600
mixed_secs=$(awk -v d="$MIXED_DURATION" 'BEGIN {
  n = d + 0; u = substr(d, length(d)); if (u == "m") n *= 60; else if (u == "h") n *= 3600; print int(n) }')

# ---------------------------------------------------------------- 1 GiB source file (before any server runs)
large="$tmp/large.bin"
log "generating $LARGE_SIZE of random data"
head -c "$LARGE_SIZE" /dev/urandom >"$large"
large_bytes=$(stat -c %s "$large")
small="$tmp/small-4k.bin"
head -c 4096 /dev/urandom >"$small"
gcc -shared -fPIC -O2 -o "$tmp/nodelay.so" "$here/nodelay.c" -ldl || die "building nodelay.so failed"

# ---------------------------------------------------------------- callfs
# start_callfs NAME FSYNC [META_YAML] [DISCOVERY_YAML] -> sets cfs_pid, cfs_port, cfs_url, cfs_data.
# META_YAML replaces the SQLite metadata block (the PostgreSQL nodes); DISCOVERY_YAML adds peers.
start_callfs() {
  local name=$1 fsync=$2 dir="$tmp/$1"
  local meta=${3:-"metadata_store: {type: sqlite, sqlite_path: \"$dir/meta.sqlite3\"}"}
  local discovery=${4:-"instance_discovery: {instance_id: \"bench-$name\"}"}
  mkdir -p "$dir"
  [[ -n ${cfs_next_port:-} ]] && cfs_port=$cfs_next_port || cfs_port=$(free_port)
  cfs_next_port=""
  cfs_url="http://127.0.0.1:$cfs_port"
  cfs_data="$dir/data"
  cat >"$dir/config.yaml" <<EOF
server:
  listen_addr: "127.0.0.1:$cfs_port"
  protocol: "http"
  external_url: "$cfs_url"
auth:
  api_key_users:
    bench: "$KEY"
  internal_proxy_secret: "$INTERNAL_SECRET"
  single_use_link_secret: "bench-link-$(od -An -v -tx1 -N12 /dev/urandom | tr -d ' \n')"
backend:
  default_backend: "localfs"
  localfs_root_path: "$cfs_data"
  localfs_fsync: $fsync
$meta
log:
  level: "error"
  format: "console"
$discovery
EOF
  (cd "$dir" && exec "$tmp/callfs" server --config "$dir/config.yaml" >"$dir/callfs.log" 2>&1) &
  cfs_pid=$!
  pids+=("$cfs_pid")
  if ! wait_http "$cfs_url/ready" 60 "$cfs_pid"; then
    tail -n 20 "$dir/callfs.log" >&2 || true
    die "callfs ($name) did not become ready on $cfs_url"
  fi
  log "callfs ($name, localfs_fsync: $fsync) pid $cfs_pid on $cfs_url"
}
INTERNAL_SECRET="bench-internal-$(od -An -v -tx1 -N12 /dev/urandom | tr -d ' \n')"

# ---------------------------------------------------------------- nginx
start_nginx() { # static files and WebDAV PUT from its own root: GET/PUT /bench/...
  local dir="$tmp/nginx" run_as=()
  mkdir -p "$dir/logs" "$dir/www/bench" "$dir/body" "$dir/tmp"
  cp "$small" "$dir/www/bench/get-4k.bin"
  ngx_port=$(free_port)
  ngx_url="http://127.0.0.1:$ngx_port"
  cat >"$dir/nginx.conf" <<EOF
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/logs/error.log error;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/tmp;
  fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp;
  scgi_temp_path $dir/tmp;
  server {
    listen 127.0.0.1:$ngx_port;
    location / {
      root $dir/www;
      dav_methods PUT;
      create_full_put_path on;
      client_max_body_size 0;
    }
  }
}
EOF
  # Unprivileged: when we are root, the whole nginx runs as nobody (no master as root).
  if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null 2>&1 && id nobody >/dev/null 2>&1; then
    chown -R nobody "$dir"
    run_as=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups)
  fi
  "${run_as[@]}" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" -g 'daemon off;' \
    >"$dir/stdout.log" 2>&1 &
  ngx_pid=$!
  pids+=("$ngx_pid")
  if ! wait_http "$ngx_url/bench/get-4k.bin" 30 "$ngx_pid"; then
    cat "$dir/stdout.log" "$dir/logs/error.log" >&2 2>/dev/null || true
    die "nginx did not serve $ngx_url"
  fi
  log "$("$NGINX" -v 2>&1 | sed 's/.*version: //') pid $ngx_pid on $ngx_url"
}

# ---------------------------------------------------------------- dufs
start_dufs() { # dufs with uploads and overwrites allowed, from its own root: GET/PUT /bench/...
  local dir="$tmp/dufs"
  mkdir -p "$dir/www/bench"
  cp "$small" "$dir/www/bench/get-4k.bin"
  dufs_port=$(free_port)
  dufs_url="http://127.0.0.1:$dufs_port"
  LD_PRELOAD="$tmp/nodelay.so" "$DUFS" --bind 127.0.0.1 --port "$dufs_port" --allow-upload \
    --allow-delete "$dir/www" >"$dir/dufs.log" 2>&1 &
  dufs_pid=$!
  pids+=("$dufs_pid")
  if ! wait_http "$dufs_url/bench/get-4k.bin" 30 "$dufs_pid"; then
    cat "$dir/dufs.log" >&2 2>/dev/null || true
    die "dufs did not serve $dufs_url"
  fi
  log "$("$DUFS" --version) pid $dufs_pid on $dufs_url (TCP_NODELAY via LD_PRELOAD)"
}

# ---------------------------------------------------------------- measurements
# run_wrk NAME URL SCRIPT AUTH [PUT_PREFIX] -> prints "req/s p99-ms"; fails on errors or non-2xx/3xx
run_wrk() {
  local name=$1 url=$2 script=$3 auth=$4 prefix=${5:-} out="$tmp/wrk-$1.txt" rps bad p99 secs
  secs=$(awk -v d="$DURATION" 'BEGIN {
    n = d + 0; u = substr(d, length(d)); if (u == "m") n *= 60; else if (u == "h") n *= 3600; print int(n) }')
  BENCH_AUTH=$auth BENCH_PUT_PREFIX=$prefix BENCH_PUT_PATHS=$PUT_PATHS \
    timeout "$((secs + 30))" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout 10s --latency \
    -s "$here/wrk/$script" "$url" >"$out" 2>&1 || { cat "$out" >&2; die "wrk $name failed"; }
  sed 's/^/    /' "$out" >&2
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  bad=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {
    for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i + 0 } END {print n + 0}' "$out")
  [[ -n $rps ]] || die "wrk $name: no Requests/sec in output"
  if ((bad > 0)); then die "wrk $name: $bad failed requests or socket errors (see above)"; fi
  # "     99%    1.23ms" (wrk prints us, ms or s)
  p99=$(awk '$1 == "99%" { v = $2 + 0; if ($2 ~ /us$/) v /= 1000; else if ($2 ~ /[0-9]s$/) v *= 1000;
    printf "%.2f", v }' "$out")
  echo "$rps ${p99:-nan}"
}

# curl_put NAME URL AUTH -> bytes/s (upload of $large)
curl_put() {
  local name=$1 url=$2 auth=$3 out code speed size hdr=()
  [[ -n $auth ]] && hdr=(-H "Authorization: $auth")
  out=$(curl -sS --max-time "$CURL_MAX" -o /dev/null "${hdr[@]}" -T "$large" \
    -w '%{http_code} %{speed_upload} %{size_upload}' "$url") || die "upload $name failed"
  read -r code speed size <<<"$out"
  [[ $code == 2* && $size == "$large_bytes" ]] || die "upload $name: status $code, $size bytes sent"
  echo "$speed"
}

# curl_get NAME URL AUTH -> bytes/s (download into /dev/null, size checked)
curl_get() {
  local name=$1 url=$2 auth=$3 out code speed size hdr=()
  [[ -n $auth ]] && hdr=(-H "Authorization: $auth")
  out=$(curl -sS --max-time "$CURL_MAX" -o /dev/null "${hdr[@]}" \
    -w '%{http_code} %{speed_download} %{size_download}' "$url") || die "download $name failed"
  read -r code speed size <<<"$out"
  [[ $code == 200 && $size == "$large_bytes" ]] || die "download $name: status $code, $size bytes"
  echo "$speed"
}

http_requests_total() { # sum of callfs_http_requests_total over all label sets
  curl -fsS --max-time 30 "$cfs_url/metrics" |
    awk '/^callfs_http_requests_total[{ ]/ {n += $NF} END {printf "%d\n", n}'
}

# Other processes' CPU: the machine has 2 cores, so anything else running skews the figures. Each
# measured step sums utime+stime+cutime+cstime over every user-space process outside this run's
# process group and PostgreSQL's processes (kernel threads are left out: they mostly do our I/O; cutime makes children reaped
# during the step count), adds the hypervisor's steal time and divides by the step's CPU capacity
# from /proc/stat.
our_pgrp=""
cpu_snap() { # -> "foreign total" in clock ticks
  local f line rest foreign=0
  local -a v
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue
    rest=${line##*) }
    read -r -a v <<<"$rest" # v[1] ppid, v[2] pgrp, v[11..14] utime stime cutime cstime
    [[ ${v[1]} == 2 || ${line%% *} == 2 || ${v[2]} == "$our_pgrp" ]] && continue
    # PostgreSQL serves the nodes under test (the PostgreSQL rows): its CPU is part of the run
    [[ $line == *" (postgres) "* ]] && continue
    foreign=$((foreign + v[11] + v[12] + v[13] + v[14]))
  done
  # user nice system idle iowait irq softirq steal (guest time is already inside user); the
  # hypervisor's steal time is CPU taken from us as well, so it counts as foreign
  awk -v f="$foreign" '$1 == "cpu" {t = 0; for (i = 2; i <= 9; i++) t += $i; print f + $9, t; exit}' /proc/stat
}
foreign_share() { # foreign_share SNAP_BEFORE SNAP_AFTER -> whole percent
  awk -v b="$1" -v a="$2" 'BEGIN {
    split(b, x, " "); split(a, y, " ")
    f = y[1] - x[1]; t = y[2] - x[2]
    if (t <= 0 || f < 0) f = 0; printf "%.0f", (t > 0 ? 100 * f / t : 0) }'
}
wait_quiet() { # wait_quiet SECONDS: until a 5 s window shows <= DISTURB_MAX% foreign CPU
  local i before share=0
  for ((i = 0; i <= $1; i += 5)); do
    before=$(cpu_snap)
    sleep 5
    share=$(foreign_share "$before" "$(cpu_snap)")
    ((share <= DISTURB_MAX)) && return 0
    ((i == 0)) && log "other processes use $share% of the CPU; waiting up to ${1}s for them"
  done
  log "WARNING: other processes still use $share% of the CPU; figures will be skewed"
}
foreign_log=()
# measure LABEL CMD ARGS...: output of CMD -> $measured. A step during which other processes used
# more than DISTURB_MAX% of the CPU is repeated (after waiting for quiet), at most BENCH_ATTEMPTS
# times in all; the least disturbed attempt is kept, whatever its figure.
measure() {
  local label=$1 attempt before out share best_share=1000000 best_out=""
  shift
  for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
    before=$(cpu_snap)
    out=$("$@")
    share=$(foreign_share "$before" "$(cpu_snap)")
    log "$label: $out (other processes: $share% of the CPU)"
    if ((share < best_share)); then best_share=$share best_out=$out; fi
    ((share <= DISTURB_MAX)) && break
    if ((attempt < ATTEMPTS)); then
      log "$label was disturbed; attempt $((attempt + 1))/$ATTEMPTS after waiting for quiet"
      wait_quiet 30
    fi
  done
  measured=$best_out
  foreign_log+=("$label $best_share%")
}

status_kib() { # status_kib PID FIELD -> value in kB from /proc/PID/status
  awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"
}

# ================================================================ the run
our_pgrp=$(ps -o pgid= -p $$ | tr -d ' ')
wait_quiet "$QUIET_WAIT"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine: $(nproc) cores, kernel $(uname -r); files on $medium ($tmp); wrk -t$THREADS -c$CONNS -d$DURATION"
start_callfs main true
main_pid=$cfs_pid main_url=$cfs_url

code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: $AUTH" -T "$small" \
  "$main_url/v1/files/bench/get-4k.bin")
[[ $code == 201 ]] || die "seeding the 4 KiB file: status $code"
start_nginx
start_dufs
for u in "$main_url/v1/files" "$ngx_url" "$dufs_url"; do
  hdr=()
  [[ $u == "$main_url"* ]] && hdr=(-H "Authorization: $AUTH")
  curl -fsS "${hdr[@]}" -o "$tmp/check.bin" "$u/bench/get-4k.bin"
  cmp -s "$small" "$tmp/check.bin" || die "GET $u returned other bytes than were stored"
done

# warm_up URL SCRIPT AUTH [PREFIX]: 2 s, not measured
warm_up() {
  local save=$DURATION
  DURATION=2s
  run_wrk warm "$@" >/dev/null 2>&1 || true
  DURATION=$save
}
# bench_wrk NAME LABEL URL SCRIPT AUTH [PREFIX] -> rps_NAME and p99_NAME
bench_wrk() {
  local name=$1 label=$2
  shift 2
  measure "$label" run_wrk "$name" "$@"
  read -r "rps_$name" "p99_$name" <<<"$measured"
}

for who in callfs nginx dufs; do
  case $who in callfs) base="$main_url/v1/files" auth=$AUTH ;; nginx) base=$ngx_url auth="" ;;
    dufs) base=$dufs_url auth="" ;; esac
  log "4 KiB GET: $who"
  warm_up "$base/bench/get-4k.bin" get.lua "$auth"
  bench_wrk "get_$who" "GET $who" "$base/bench/get-4k.bin" get.lua "$auth"
done
for who in callfs nginx dufs; do
  case $who in callfs) base=$main_url prefix=/v1/files/bench/put/ auth=$AUTH ;;
    nginx) base=$ngx_url prefix=/bench/put/ auth="" ;; dufs) base=$dufs_url prefix=/bench/put/ auth="" ;; esac
  log "4 KiB PUT: $who ($PUT_PATHS rotating paths)"
  bench_wrk "put_$who" "PUT $who" "$base" put.lua "$auth" "$prefix"
done

# /metrics after >= 100,000 requests (top up with GET runs when needed, at most 20)
reqs=$(http_requests_total)
for ((i = 0; i < 20 && reqs < MIN_REQUESTS; i++)); do
  log "callfs has served $reqs requests; topping up with another GET run"
  run_wrk topup-$i "$main_url/v1/files/bench/get-4k.bin" get.lua "$AUTH" >/dev/null
  reqs=$(http_requests_total)
done
((reqs >= MIN_REQUESTS)) || die "only $reqs requests recorded, need $MIN_REQUESTS"
log "/metrics scrape x$SCRAPES after $reqs requests"
scrape_sum=0
for ((i = 0; i < SCRAPES; i++)); do
  t=$(curl -fsS --max-time 30 -o "$tmp/metrics.txt" -w '%{time_total}' "$main_url/metrics")
  scrape_sum=$(awk -v a="$scrape_sum" -v b="$t" 'BEGIN {print a + b}')
done
scrape_ms=$(awk -v s="$scrape_sum" -v n="$SCRAPES" 'BEGIN {printf "%.3f", s / n * 1000}')
scrape_bytes=$(stat -c %s "$tmp/metrics.txt")

# rss_sampler PID FILE INTERVAL: VmRSS samples (kB) until the process is gone; sets sampler_pid
rss_sampler() {
  (
    while [[ -r /proc/$1/status ]]; do
      awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status" >>"$2" 2>/dev/null || true
      sleep "$3"
    done
  ) &
  sampler_pid=$!
  pids+=("$sampler_pid")
}

# large transfers; VmHWM reset first (clear_refs 5) so it covers only this phase
hwm_reset=no
if echo 5 >"/proc/$main_pid/clear_refs" 2>/dev/null; then hwm_reset=yes; fi
rss_log="$tmp/rss.samples"
: >"$rss_log"
rss_sampler "$main_pid" "$rss_log" 0.05

declare -A up down
for ((r = 1; r <= LARGE_REPEAT; r++)); do
  log "$LARGE_SIZE upload, round $r/$LARGE_REPEAT: callfs, nginx, dufs"
  measure "upload callfs #$r" curl_put callfs "$main_url/v1/files/bench/large.bin" "$AUTH"
  up[callfs]+="$measured "
  measure "upload nginx #$r" curl_put nginx "$ngx_url/bench/large.bin" ""
  up[nginx]+="$measured "
  measure "upload dufs #$r" curl_put dufs "$dufs_url/bench/large.bin" ""
  up[dufs]+="$measured "
done
curl -fsS -H "Authorization: $AUTH" -o "$tmp/check.bin" "$main_url/v1/files/bench/large.bin"
cmp -s "$large" "$tmp/check.bin" || die "callfs returned other bytes than were uploaded"
rm -f "$tmp/check.bin"
for ((r = 1; r <= LARGE_REPEAT; r++)); do
  log "$LARGE_SIZE download, round $r/$LARGE_REPEAT: callfs, nginx, dufs"
  measure "download callfs #$r" curl_get callfs "$main_url/v1/files/bench/large.bin" "$AUTH"
  down[callfs]+="$measured "
  measure "download nginx #$r" curl_get nginx "$ngx_url/bench/large.bin" ""
  down[nginx]+="$measured "
  measure "download dufs #$r" curl_get dufs "$dufs_url/bench/large.bin" ""
  down[dufs]+="$measured "
done
hwm_kib=$(status_kib "$main_pid" VmHWM)
stop_pid "$sampler_pid"
forget_pid "$sampler_pid"
rss_max_kib=$(sort -n "$rss_log" | tail -n 1)
rss_samples=$(wc -l <"$rss_log")
# the peers' copies are no longer needed: give tmpfs back before the next nodes start
rm -f "$tmp/nginx/www/bench/large.bin" "$tmp/dufs/www/bench/large.bin"

# mixed run: memory must stay flat (samples once a second; compare the first and last minute)
mixed=no
if ((mixed_secs > 0)); then
  curl -fsS -o /dev/null -H "Authorization: $AUTH" -T "$small" "$main_url/v1/files/bench/mixed/0.bin"
  mixed_log="$tmp/rss-mixed.samples"
  : >"$mixed_log"
  rss_sampler "$main_pid" "$mixed_log" 1
  save=$DURATION
  DURATION=$MIXED_DURATION
  log "mixed run for $MIXED_DURATION (GET, PUT, listing), RSS sampled every second"
  # not through measure(): a disturbed minute does not justify another five
  before=$(cpu_snap)
  read -r rps_mixed _ <<<"$(run_wrk mixed "$main_url" mixed.lua "$AUTH")"
  foreign_log+=("mixed callfs $(foreign_share "$before" "$(cpu_snap)")%")
  DURATION=$save
  stop_pid "$sampler_pid"
  forget_pid "$sampler_pid"
  window=$((mixed_secs >= 120 ? 60 : mixed_secs / 2))
  read -r mixed_first mixed_last mixed_max <<<"$(awk -v w="$window" '{a[NR] = $1}
    END { f = 0; l = 0; m = 0
      for (i = 1; i <= NR; i++) { if (i <= w && a[i] > f) f = a[i]; if (i > NR - w && a[i] > l) l = a[i]; if (a[i] > m) m = a[i] }
      print f, l, m }' "$mixed_log")"
  mixed=yes
fi

# metrics recording cost: the same GET against a node started with recording switched off
stop_pid "$main_pid"
forget_pid "$main_pid"
BENCH_DISABLE_METRICS=1 start_callfs metricsoff true
off_pid=$cfs_pid
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: $AUTH" -T "$small" \
  "$cfs_url/v1/files/bench/get-4k.bin")
[[ $code == 201 ]] || die "seeding the 4 KiB file (metrics off): status $code"
warm_up "$cfs_url/v1/files/bench/get-4k.bin" get.lua "$AUTH"
log "4 KiB GET: callfs, metrics recording off"
bench_wrk get_off "GET callfs metrics-off" "$cfs_url/v1/files/bench/get-4k.bin" get.lua "$AUTH"
stop_pid "$off_pid"
forget_pid "$off_pid"

# informational: a node with localfs_fsync: false
nofsync=no
if [[ $SKIP_NOFSYNC != 1 ]]; then
  start_callfs nofsync false
  nf_pid=$cfs_pid
  warm_up "$cfs_url" put.lua "$AUTH" /v1/files/bench/put/
  log "4 KiB PUT: callfs, localfs_fsync: false"
  bench_wrk put_nofsync "PUT callfs no-fsync" "$cfs_url" put.lua "$AUTH" /v1/files/bench/put/
  up_nf=""
  for ((r = 1; r <= LARGE_REPEAT; r++)); do
    log "$LARGE_SIZE upload, round $r/$LARGE_REPEAT: callfs, localfs_fsync: false"
    measure "upload callfs no-fsync #$r" curl_put callfs-nofsync "$cfs_url/v1/files/bench/large.bin" "$AUTH"
    up_nf+="$measured "
  done
  stop_pid "$nf_pid"
  forget_pid "$nf_pid"
  nofsync=yes
fi

# PostgreSQL metadata and leases, two nodes: direct GET on the holder, proxied through the other
pg=no
if [[ -n ${CALLFS_TEST_PG_DSN:-} ]]; then
  db="callfs_bench_$RANDOM$RANDOM"
  psql -q "$CALLFS_TEST_PG_DSN" -c "CREATE DATABASE $db" || die "creating database $db failed"
  dsn="${CALLFS_TEST_PG_DSN%/*}/$db"
  pg_meta="metadata_store: {type: postgres, dsn: \"$dsn\"}
dlm: {type: postgres}"
  pg1_port=$(free_port) pg2_port=$(free_port)
  cfs_next_port=$pg1_port
  start_callfs pg1 true "$pg_meta" "instance_discovery:
  instance_id: pg-1
  peer_endpoints: {pg-2: \"http://127.0.0.1:$pg2_port\"}"
  pg1_pid=$cfs_pid pg1_url=$cfs_url
  cfs_next_port=$pg2_port
  start_callfs pg2 true "$pg_meta" "instance_discovery:
  instance_id: pg-2
  peer_endpoints: {pg-1: \"http://127.0.0.1:$pg1_port\"}"
  pg2_pid=$cfs_pid pg2_url=$cfs_url
  code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: $AUTH" -T "$small" \
    "$pg1_url/v1/files/bench/get-4k.bin")
  [[ $code == 201 ]] || die "seeding the 4 KiB file (PostgreSQL): status $code"
  curl -fsS -H "Authorization: $AUTH" -o "$tmp/check.bin" "$pg2_url/v1/files/bench/get-4k.bin"
  cmp -s "$small" "$tmp/check.bin" || die "the proxied GET returned other bytes than were stored"
  warm_up "$pg1_url/v1/files/bench/get-4k.bin" get.lua "$AUTH"
  log "4 KiB GET: callfs on PostgreSQL metadata, direct"
  bench_wrk get_pg "GET callfs postgres" "$pg1_url/v1/files/bench/get-4k.bin" get.lua "$AUTH"
  warm_up "$pg2_url/v1/files/bench/get-4k.bin" get.lua "$AUTH"
  log "4 KiB GET: callfs on PostgreSQL metadata, proxied through the second node"
  bench_wrk get_proxied "GET callfs proxied" "$pg2_url/v1/files/bench/get-4k.bin" get.lua "$AUTH"
  log "4 KiB PUT: callfs on PostgreSQL metadata and leases"
  bench_wrk put_pg "PUT callfs postgres" "$pg1_url" put.lua "$AUTH" /v1/files/bench/put/
  stop_pid "$pg2_pid"
  forget_pid "$pg2_pid"
  stop_pid "$pg1_pid"
  forget_pid "$pg1_pid"
  psql -q "$CALLFS_TEST_PG_DSN" -c "DROP DATABASE $db" || true
  pg=yes
fi

# ================================================================ report
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
kib_mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
verdict() { # verdict VALUE OP TARGET
  awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
    ok = (op == ">=") ? (v >= t) : (v < t); print ok ? "PASS" : "FAIL" }'
}
# row METRIC CALLFS NGINX DUFS TARGET_NGINX TARGET_DUFS (raw figures; SHOW formats them)
row() {
  local metric=$1 c=$2 n=$3 d=$4 tn=$5 td=$6 rn rd res=()
  rn=$(ratio "$c" "$n") rd=$(ratio "$c" "$d")
  [[ $tn != - ]] && res+=("$(verdict "$rn" ">=" "$tn") vs nginx")
  [[ $td != - ]] && res+=("$(verdict "$rd" ">=" "$td") vs dufs")
  printf '| %s | %s | %s | %s | %s× | %s× | %s | %s |\n' "$metric" "$($SHOW "$c")" "$($SHOW "$n")" \
    "$($SHOW "$d")" "$rn" "$rd" "$(
      [[ $tn != - ]] && printf '≥ %s× nginx' "$tn"
      [[ $tn != - && $td != - ]] && printf ', '
      [[ $td != - ]] && printf '≥ %s× dufs' "$td"
      [[ $tn == - && $td == - ]] && printf '—'
    )" "$(if ((${#res[@]})); then printf '%s, ' "${res[@]}" | sed 's/, $//'; else echo info; fi)"
}
whole() { printf '%.0f' "$1"; }
SHOW=whole
size_label=$LARGE_SIZE
[[ $LARGE_SIZE == 1G ]] && size_label="1 GiB"
# shellcheck disable=SC2086 # the lists are space-separated numbers
{
  up_c=$(median ${up[callfs]}) up_n=$(median ${up[nginx]}) up_d=$(median ${up[dufs]})
  down_c=$(median ${down[callfs]}) down_n=$(median ${down[nginx]}) down_d=$(median ${down[dufs]})
  peak_kib=$hwm_kib
  [[ -n $rss_max_kib ]] && ((rss_max_kib > peak_kib)) && peak_kib=$rss_max_kib

  echo "| metric | callfs | nginx | dufs | callfs/nginx | callfs/dufs | target | result |"
  echo "|---|---|---|---|---|---|---|---|"
  row "4 KiB GET, req/s" "$rps_get_callfs" "$rps_get_nginx" "$rps_get_dufs" 0.6 -
  SHOW=echo
  printf '| 4 KiB GET p99 latency at %s connections, ms | %s | %s | %s | — | — | reported | info |\n' \
    "$CONNS" "$p99_get_callfs" "$p99_get_nginx" "$p99_get_dufs"
  SHOW=whole
  row "4 KiB PUT, req/s" "$rps_put_callfs" "$rps_put_nginx" "$rps_put_dufs" 0.4 1.5
  SHOW=mib
  row "$size_label download, MiB/s (median of $LARGE_REPEAT)" "$down_c" "$down_n" "$down_d" 0.9 -
  row "$size_label upload, MiB/s (median of $LARGE_REPEAT)" "$up_c" "$up_n" "$up_d" 0.8 -
  printf '| callfs peak RSS during %s transfers, MiB | %s | — | — | — | — | < 64 MiB | %s |\n' \
    "$size_label" "$(kib_mib "$peak_kib")" "$(verdict "$peak_kib" "<" 65536)"
  if [[ $mixed == yes ]]; then
    flat=$(awk -v f="$mixed_first" -v l="$mixed_last" 'BEGIN {print (l <= f * 1.1 + 4096) ? "PASS" : "FAIL"}')
    printf '| callfs RSS over a %s mixed run (%.0f req/s): max of first → last %s s, MiB | %s → %s (max %s) | — | — | — | — | flat (last ≤ first × 1.1 + 4 MiB), < 64 MiB | %s, %s |\n' \
      "$MIXED_DURATION" "$rps_mixed" "$window" "$(kib_mib "$mixed_first")" "$(kib_mib "$mixed_last")" \
      "$(kib_mib "$mixed_max")" "$flat" "$(verdict "$mixed_max" "<" 65536)"
  fi
  printf '| /metrics scrape after %s requests, ms (mean of %s) | %s | — | — | — | — | < 10 ms | %s |\n' \
    "$reqs" "$SCRAPES" "$scrape_ms" "$(verdict "$scrape_ms" "<" 10)"
  overhead=$(awk -v on="$rps_get_callfs" -v off="$rps_get_off" 'BEGIN {if (off > 0) printf "%.1f", (off - on) * 100 / off; else print "n/a"}')
  printf '| metrics recording overhead, %% of 4 KiB GET (on %.0f vs off %.0f req/s) | %s%% | — | — | — | — | < 3%% | %s |\n' \
    "$rps_get_callfs" "$rps_get_off" "$overhead" "$(verdict "$overhead" "<" 3)"
  if [[ $pg == yes ]]; then
    printf '| 4 KiB GET, PostgreSQL metadata, direct, req/s (p99 %s ms) | %.0f | — | — | — | — | ≥ 0.7× the SQLite node (%.0f): %s× | %s |\n' \
      "$p99_get_pg" "$rps_get_pg" "$rps_get_callfs" "$(ratio "$rps_get_pg" "$rps_get_callfs")" \
      "$(verdict "$(ratio "$rps_get_pg" "$rps_get_callfs")" ">=" 0.7)"
    printf '| 4 KiB GET proxied through a second node (PostgreSQL), req/s (p99 %s ms) | %.0f | — | — | — | — | ≥ 0.6× direct (%.0f): %s× | %s |\n' \
      "$p99_get_proxied" "$rps_get_proxied" "$rps_get_pg" "$(ratio "$rps_get_proxied" "$rps_get_pg")" \
      "$(verdict "$(ratio "$rps_get_proxied" "$rps_get_pg")" ">=" 0.6)"
    SHOW=whole
    row "info: 4 KiB PUT, PostgreSQL metadata and leases, req/s" "$rps_put_pg" "$rps_put_nginx" "$rps_put_dufs" - -
  fi
  if [[ $nofsync == yes ]]; then
    SHOW=whole
    row "info: 4 KiB PUT, req/s, callfs localfs_fsync: false" "$rps_put_nofsync" "$rps_put_nginx" "$rps_put_dufs" - -
    SHOW=mib
    row "info: $size_label upload, MiB/s, callfs localfs_fsync: false" "$(median $up_nf)" "$up_n" "$up_d" - -
  fi
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, kernel $(uname -r), files on $medium;" \
    "$("$NGINX" -v 2>&1 | sed 's/.*version: //'), $("$DUFS" --version), $(wrk --version 2>&1 | head -n 1 | awk '{print $1, $2}')," \
    "$(curl --version | head -n 1 | awk '{print $1, $2}')."
  echo "callfs binary: built $bin_info."
  echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency (GET: one file; PUT: $PUT_PATHS rotating paths, 4096-byte body)." \
    "callfs: sqlite + localfs, log level error, request log and metrics on, localfs_fsync: true unless marked." \
    "nginx: static + WebDAV PUT, sendfile, access log off. dufs: --allow-upload --allow-delete, TCP_NODELAY forced (bench/nodelay.c)."
  echo "Large transfers: callfs, nginx, dufs PUT, $LARGE_REPEAT rounds, then GET of what each stored;" \
    "speeds are curl's %{speed_upload}/%{speed_download}."
  echo "Peak RSS: max of VmHWM (reset before the transfers: $hwm_reset) and $rss_samples VmRSS samples" \
    "(max $(kib_mib "${rss_max_kib:-0}") MiB). Scrape body: $scrape_bytes bytes."
  echo "Raw samples (bytes/s): up callfs ${up[callfs]}; nginx ${up[nginx]}; dufs ${up[dufs]}; down callfs ${down[callfs]};" \
    "nginx ${down[nginx]}; dufs ${down[dufs]}${up_nf:+; callfs no-fsync up $up_nf}."
  max_foreign=$(printf '%s\n' "${foreign_log[@]}" | awk '{v = $NF + 0; if (v > m) m = v} END {print m + 0}')
  echo "CPU used by other processes or stolen by the hypervisor during each measured step" \
    "(share of all cores; 0% = undisturbed," \
    "worst $max_foreign%): $(printf '%s, ' "${foreign_log[@]}" | sed 's/, $//')."
  if ((max_foreign > DISTURB_MAX)); then
    echo "**WARNING: other processes used up to $max_foreign% of the CPU during a measured step;" \
      "the figures above are skewed. Re-run on a quiet machine.**"
  fi
  echo "Load average (1/5/15 min) at start: $load_start; at end: $load_end (the run itself adds about 2)."
  echo "Metrics on/off: the off node runs with BENCH_DISABLE_METRICS=1 (recording skipped), measured after the main node's GET; a negative overhead is noise."
  [[ $pg == yes ]] || echo "PostgreSQL rows skipped: CALLFS_TEST_PG_DSN not set (make bench runs under scripts/with-postgres.sh)."
} >"$tmp/results.md"

cp "$tmp/results.md" "$RESULTS"
echo
cat "$tmp/results.md"
log "table written to $RESULTS"

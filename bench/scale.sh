#!/usr/bin/env bash
# Namespace scale: one directory filled to 10k, 100k (and 1M) files, then listed (issue 11, api.md §9).
#
# Starts one callfs node (sqlite + localfs, default localfs_fsync: true, log level error) in a temp
# dir on tmpfs (/dev/shm when it has room), fills /scale through the API with wrk PUTs of 1-byte
# bodies to unique names (bench/wrk/create.lua), and at each size reports:
#   - creates/s while filling this stage;
#   - full listing (GET /v1/directories/scale): total time, time to first byte, body size;
#   - a 1,000-item page from the middle (limit=1000 after a cursor reached by walking pages of
#     10,000), median of 5;
#   - node memory: VmRSS before the listings, peak VmRSS sampled every 10 ms during the full
#     listing, and VmHWM over the listings (reset with clear_refs before them when permitted).
# Writes a markdown table to bench/scale-results.md (override with BENCH_SCALE_RESULTS).
# Every process it starts is stopped by pid and the temp dir removed on exit.
#
# Knobs: CALLFS_BIN (target/release/callfs), BENCH_SCALE_MAX (largest stage, 100000; 1000000 adds
# the 1M stage, ~14 min of filling at ~1,200 creates/s), BENCH_SCALE_CONNECTIONS (16),
# BENCH_TMPDIR (parent of the temp dir; default /dev/shm, else $TMPDIR).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
CALLFS_BIN=$(realpath -m -- "${CALLFS_BIN:-$repo/target/release/callfs}")
MAX=${BENCH_SCALE_MAX:-100000}
CONNS=${BENCH_SCALE_CONNECTIONS:-16}
RESULTS=$(realpath -m -- "${BENCH_SCALE_RESULTS:-$here/scale-results.md}")
KEY="bench-key-$(od -An -v -tx1 -N12 /dev/urandom | tr -d ' \n')"
export BENCH_AUTH="Bearer $KEY"

log() { printf '[scale %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pids=()
tmp=""
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
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

command -v wrk >/dev/null 2>&1 || die "wrk is needed (apt-get install wrk)"
command -v curl >/dev/null 2>&1 || die "curl is needed"
[[ -x $CALLFS_BIN ]] || die "no callfs binary at $CALLFS_BIN (run cargo build --release)"

parent=${BENCH_TMPDIR:-}
if [[ -z $parent ]]; then
  # 1-byte files still take a page of tmpfs each: ~5 KiB per file with its inode.
  need_kib=$((MAX * 6))
  if [[ -d /dev/shm ]] && (($(df -Pk /dev/shm | awk 'NR == 2 {print $4}') > need_kib)); then
    parent=/dev/shm
  else
    parent=${TMPDIR:-/tmp}
  fi
fi
tmp=$(mktemp -d "$parent/callfs-scale.XXXXXX")
cp "$CALLFS_BIN" "$tmp/callfs"
bin_info="sha256 $(sha256sum "$tmp/callfs" | cut -c1-12)"
if rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null); then bin_info+=", repository HEAD $rev"; fi
cd "$tmp"

free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
    if command -v ss >/dev/null 2>&1; then ss -Htln "sport = :$p" 2>/dev/null | grep -q . && continue; fi
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    echo "$p"
    return 0
  done
  die "no free loopback port found"
}

port=$(free_port)
url="http://127.0.0.1:$port"
cat >"$tmp/config.yaml" <<EOF
server:
  listen_addr: "127.0.0.1:$port"
  protocol: "http"
  external_url: "$url"
auth:
  api_key_users:
    bench: "$KEY"
  internal_proxy_secret: "bench-internal-$(od -An -v -tx1 -N12 /dev/urandom | tr -d ' \n')"
  single_use_link_secret: "bench-link-$(od -An -v -tx1 -N12 /dev/urandom | tr -d ' \n')"
backend:
  default_backend: "localfs"
  localfs_root_path: "$tmp/data"
metadata_store:
  type: "sqlite"
  sqlite_path: "$tmp/meta.sqlite3"
log:
  level: "error"
  format: "console"
instance_discovery:
  instance_id: "bench-scale"
EOF
(exec "$tmp/callfs" server --config "$tmp/config.yaml" >"$tmp/callfs.log" 2>&1) &
pid=$!
pids+=("$pid")
for ((i = 0; i < 600; i++)); do
  kill -0 "$pid" 2>/dev/null || die "callfs exited: $(tail -n 5 "$tmp/callfs.log")"
  curl -fsS -o /dev/null --max-time 1 "$url/ready" 2>/dev/null && break
  sleep 0.1
done
log "callfs pid $pid on $url, files in $tmp"
curl -fsS -o /dev/null -X POST -H "Authorization: $BENCH_AUTH" "$url/v1/files/scale/" || die "mkdir /scale"

kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$pid/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
sample_rss() { # sample_rss OUT: VmRSS every 10 ms until killed
  local out=$1 v
  : >"$out"
  while :; do
    v=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$pid/status" 2>/dev/null) && echo "$v" >>"$out"
    sleep 0.01
  done
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

write_results() { # after every stage, so a run stopped early still reports what it measured
{
  echo "# Namespace scale (bench/scale.sh)"
  echo
  echo "One SQLite node, localfs on $(df -P "$tmp" | awk 'NR == 2 {print $1}') ($parent), default localfs_fsync: true;"
  echo "files created in one directory by wrk -t1 -c$CONNS (PUT of 1 byte to unique names)."
  echo "$(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), binary $bin_info. VmHWM reset before the listings: $hwm_reset."
  echo
  echo "| files | creates/s while filling | full listing | first byte | body | 1,000-item page (middle) | VmRSS before → peak during listing | VmHWM over the listings | VmRSS after |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >"$RESULTS"
}

rows=()
have=0
stage=0
for target in 10000 100000 1000000; do
  ((target <= MAX)) || break
  stage=$((stage + 1))
  want=$((target - have))
  log "stage $stage: filling /scale from $have to $target files"
  t0=$(date +%s.%N)
  wrk -t1 -c"$CONNS" -d 3600s -s "$here/wrk/create.lua" "$url" -- "$want" "s$stage" "/v1/files/scale" \
    >"$tmp/wrk-$stage.txt" 2>&1 || die "wrk failed: $(tail -n 5 "$tmp/wrk-$stage.txt")"
  t1=$(date +%s.%N)
  grep -q "errors 0" "$tmp/wrk-$stage.txt" || log "wrk reported errors: $(grep created "$tmp/wrk-$stage.txt")"
  created=$(awk '$1 == "created" {print $2}' "$tmp/wrk-$stage.txt")
  rate=$(awk -v n="$created" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')
  log "stage $stage: $created files created, $rate creates/s"
  sleep 2 # let the node settle after the burst

  rss_before=$(kib VmRSS)
  echo 5 >"/proc/$pid/clear_refs" 2>/dev/null && hwm_reset=yes || hwm_reset=no
  sample_rss "$tmp/rss-$stage.txt" &
  sampler=$!
  pids+=("$sampler")
  read -r ttfb total size < <(curl -fsS -o /dev/null -D "$tmp/h" -H "Authorization: $BENCH_AUTH" \
    -w '%{time_starttransfer} %{time_total} %{size_download}\n' "$url/v1/directories/scale")
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  peak=$(sort -n "$tmp/rss-$stage.txt" | tail -n 1)
  now=$(awk 'tolower($1) == "x-callfs-count:" {print $2 + 0}' "$tmp/h")
  have=$now

  # A cursor at the middle, reached the way a client would: pages of 10,000.
  cursor=""
  for ((left = now / 2; left > 0; left -= step)); do
    step=$((left < 10000 ? left : 10000))
    q="limit=$step${cursor:+&after=$cursor}"
    curl -fsS -D "$tmp/h" -o /dev/null -H "Authorization: $BENCH_AUTH" "$url/v1/directories/scale?$q"
    cursor=$(awk 'tolower($1) == "x-callfs-next-after:" {sub(/\r$/, "", $2); print $2}' "$tmp/h")
  done
  pages=()
  for ((i = 0; i < 5; i++)); do
    pages+=("$(curl -fsS -o "$tmp/page.json" -H "Authorization: $BENCH_AUTH" -w '%{time_total}' \
      "$url/v1/directories/scale?limit=1000${cursor:+&after=$cursor}")")
  done
  grep -q '"count":1000,' "$tmp/page.json" || die "the middle page does not hold 1000 items"
  page_ms=$(awk -v s="$(median "${pages[@]}")" 'BEGIN {printf "%.1f", s * 1000}')
  hwm=$(kib VmHWM)
  rss_after=$(kib VmRSS)
  rows+=("| $(printf "%'d" "$now") | $rate | $(awk -v s="$total" 'BEGIN {printf "%.0f", s * 1000}') ms | \
$(awk -v s="$ttfb" 'BEGIN {printf "%.1f", s * 1000}') ms | $(awk -v b="$size" 'BEGIN {printf "%.1f", b / 1e6}') MB | \
$page_ms ms | $(mib "$rss_before") → $(mib "$peak") MiB | $(mib "$hwm") MiB | $(mib "$rss_after") MiB |")
  log "stage $stage: ${rows[-1]}"
  write_results
done

cat "$RESULTS"

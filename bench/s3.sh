#!/usr/bin/env bash
# callfs over S3 vs a direct client of the same S3 server (issue 10), one bounded run; what
# `make bench-s3` runs after `cargo build --release`.
#
# Starts one s3s-fs (the S3 server of the test suite, scripts/ensure-s3.sh) and one callfs node
# (sqlite, default_backend: s3, log level error) on free 127.0.0.1 ports, both storing in a fresh
# temp dir (on /dev/shm when it has room, so the disk does not bound either side), and measures:
#   1. 1 GiB upload    curl -T through callfs (PUT /v1/files/..)  vs  curl --aws-sigv4 PUT to s3s-fs
#   2. 1 GiB download  curl -o /dev/null through callfs (GET)     vs  curl --aws-sigv4 GET from s3s-fs
#      each the median of BENCH_LARGE_REPEAT runs (%{speed_upload} / %{speed_download});
#   3. callfs peak RSS  VmHWM (reset through /proc/PID/clear_refs before step 1) after steps 1-2.
# The direct client sends one single PutObject (curl cannot do multipart); callfs sends 8 MiB parts.
# Other processes' CPU share (and hypervisor steal) is recorded for every step, like bench/run.sh,
# together with `top -bn1` before and after, so a disturbed figure is visible.
# Prints a markdown table and writes it to bench/s3-results.md (override with BENCH_RESULTS).
# Every process it starts is stopped by pid and the temp dir removed on exit.
#
# Knobs (environment): CALLFS_BIN (default target/release/callfs), S3S_FS_BIN (default s3s-fs on
# PATH or in cargo's bin folder), BENCH_LARGE_SIZE (1G, a `head -c` size), BENCH_LARGE_REPEAT (3),
# BENCH_TMPDIR (parent of the temp dir; default /dev/shm when it has 7x the size free, else
# $TMPDIR or /tmp).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

CALLFS_BIN=$(realpath -m -- "${CALLFS_BIN:-$repo/target/release/callfs}")
LARGE_SIZE=${BENCH_LARGE_SIZE:-1G}
REPEAT=${BENCH_LARGE_REPEAT:-3}
RESULTS=$(realpath -m -- "${BENCH_RESULTS:-$here/s3-results.md}")
CURL_MAX=600
KEY="bench-key-$(od -An -v -tx1 -N12 /dev/urandom | tr -d ' \n')"
AUTH="Bearer $KEY"
S3_KEY="AKBENCH$(od -An -v -tx1 -N6 /dev/urandom | tr -d ' \n')"
S3_SECRET=$(od -An -v -tx1 -N20 /dev/urandom | tr -d ' \n')
BUCKET=callfs-bench

log() { printf '[bench-s3 %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
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

# ---------------------------------------------------------------- tools
[[ -x $CALLFS_BIN ]] || die "no callfs binary at $CALLFS_BIN (run cargo build --release)"
S3S_FS_BIN=${S3S_FS_BIN:-$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")}
[[ -x $S3S_FS_BIN ]] || die "no s3s-fs at $S3S_FS_BIN (run scripts/ensure-s3.sh)"
# --aws-sigv4 appeared in curl 7.75
curl_version=$(curl --version | awk 'NR == 1 {print $2}')
[[ $(printf '%s\n' 7.75.0 "$curl_version" | sort -V | head -1) == 7.75.0 ]] ||
  die "curl $curl_version has no --aws-sigv4 (need >= 7.75)"

# ---------------------------------------------------------------- temp dir
bytes_of() { numfmt --from=iec "$1"; }
need=$(($(bytes_of "$LARGE_SIZE") * 7)) # source, direct object, 3 callfs objects (old ones wait for the sweep), multipart assembly
parent=${BENCH_TMPDIR:-}
if [[ -z $parent ]]; then
  shm_free=$(df -B1 --output=avail /dev/shm 2>/dev/null | tail -1 | tr -d ' ' || echo 0)
  if [[ -d /dev/shm && ${shm_free:-0} -gt $need ]]; then parent=/dev/shm; else parent=${TMPDIR:-/tmp}; fi
fi
tmp=$(mktemp -d "$parent/callfs-bench-s3.XXXXXX")
# Private copies, so a concurrent `cargo build` cannot swap the binary mid-run.
cp "$CALLFS_BIN" "$tmp/callfs"
bin_info="$(date -u -r "$CALLFS_BIN" +%Y-%m-%dT%H:%MZ), sha256 $(sha256sum "$tmp/callfs" | cut -c1-12)"
if head_rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null); then
  bin_info+=" (repository HEAD at run time: $head_rev)"
fi
cd "$tmp"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # wait_port PORT SECONDS PID
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$3" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
median() {
  printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

# Other processes' CPU during a step (same accounting as bench/run.sh): utime+stime+cutime+cstime
# of every user-space process outside this run's process group, plus steal, over the CPU capacity.
our_pgrp=$(ps -o pgid= -p $$ | tr -d ' ')
cpu_snap() {
  local f line rest foreign=0
  local -a v
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue
    rest=${line##*) }
    read -r -a v <<<"$rest"
    [[ ${v[1]} == 2 || ${line%% *} == 2 || ${v[2]} == "$our_pgrp" ]] && continue
    foreign=$((foreign + v[11] + v[12] + v[13] + v[14]))
  done
  awk -v f="$foreign" '$1 == "cpu" {t = 0; for (i = 2; i <= 9; i++) t += $i; print f + $9, t; exit}' /proc/stat
}
foreign_share() {
  awk -v b="$1" -v a="$2" 'BEGIN {
    split(b, x, " "); split(a, y, " "); f = y[1] - x[1]; t = y[2] - x[2]
    if (t <= 0 || f < 0) f = 0; printf "%.0f", (t > 0 ? 100 * f / t : 0) }'
}

# ---------------------------------------------------------------- source file, servers
large="$tmp/large.bin"
log "generating $LARGE_SIZE of random data in $tmp"
head -c "$LARGE_SIZE" /dev/urandom >"$large"
large_bytes=$(stat -c %s "$large")
large_sha=$(sha256sum "$large" | cut -d' ' -f1)

mkdir -p "$tmp/s3/$BUCKET"
s3_port=$(free_port)
s3_url="http://127.0.0.1:$s3_port"
"$S3S_FS_BIN" --host 127.0.0.1 --port "$s3_port" --access-key "$S3_KEY" --secret-key "$S3_SECRET" \
  "$tmp/s3" >"$tmp/s3s-fs.log" 2>&1 &
s3_pid=$!
pids+=("$s3_pid")
wait_port "$s3_port" 20 "$s3_pid" || { cat "$tmp/s3s-fs.log" >&2; die "s3s-fs did not listen"; }
log "s3s-fs ($("$S3S_FS_BIN" --version 2>/dev/null || echo '?')) pid $s3_pid on $s3_url"

cfs_port=$(free_port)
cfs_url="http://127.0.0.1:$cfs_port"
cat >"$tmp/config.yaml" <<EOF
server:
  listen_addr: "127.0.0.1:$cfs_port"
  protocol: "http"
  external_url: "$cfs_url"
auth:
  api_key_users:
    bench: "$KEY"
  internal_proxy_secret: "bench-internal-$(od -An -v -tx1 -N12 /dev/urandom | tr -d ' \n')"
  single_use_link_secret: "bench-link-$(od -An -v -tx1 -N12 /dev/urandom | tr -d ' \n')"
backend:
  default_backend: "s3"
  localfs_root_path: "$tmp/data"
  s3_bucket_name: "$BUCKET"
  s3_endpoint: "$s3_url"
  s3_region: "us-east-1"
  s3_access_key: "$S3_KEY"
  s3_secret_key: "$S3_SECRET"
metadata_store:
  type: "sqlite"
  sqlite_path: "$tmp/meta.sqlite3"
log:
  level: "error"
  format: "console"
instance_discovery:
  instance_id: "bench-s3"
EOF
"$tmp/callfs" server --config "$tmp/config.yaml" >"$tmp/callfs.log" 2>&1 &
cfs_pid=$!
pids+=("$cfs_pid")
for ((i = 0; i < 200; i++)); do
  curl -fsS -o /dev/null --max-time 1 "$cfs_url/ready" 2>/dev/null && break
  kill -0 "$cfs_pid" 2>/dev/null || { cat "$tmp/callfs.log" >&2; die "callfs exited"; }
  sleep 0.1
done
curl -fsS -o /dev/null "$cfs_url/ready" || die "callfs did not become ready on $cfs_url"
log "callfs pid $cfs_pid on $cfs_url (default_backend: s3)"

# ---------------------------------------------------------------- transfers
sig=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_KEY:$S3_SECRET" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
cfs_hdr=(-H "Authorization: $AUTH")

# transfer NAME put|get URL ARGS... -> bytes/s; status and size checked
transfer() {
  local name=$1 dir=$2 url=$3 out code speed size
  shift 3
  if [[ $dir == put ]]; then
    out=$(curl -sS --max-time "$CURL_MAX" -o /dev/null "$@" -T "$large" \
      -w '%{http_code} %{speed_upload} %{size_upload}' "$url") || die "$name failed"
  else
    out=$(curl -sS --max-time "$CURL_MAX" -o /dev/null "$@" \
      -w '%{http_code} %{speed_download} %{size_download}' "$url") || die "$name failed"
  fi
  read -r code speed size <<<"$out"
  [[ $code == 2* && $size == "$large_bytes" ]] || die "$name: status $code, $size bytes"
  echo "$speed"
}

vm_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
rss_max=0
sample_rss() { # in the background: the largest VmRSS of callfs, written to $tmp/rss-max
  local m=0 r
  while kill -0 "$cfs_pid" 2>/dev/null; do
    r=$(vm_kib "$cfs_pid" VmRSS 2>/dev/null || echo 0)
    ((r > m)) && m=$r && echo "$m" >"$tmp/rss-max"
    sleep 0.05
  done
}

top_before=$(top -bn1 | head -15)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
rss_start=$(vm_kib "$cfs_pid" VmRSS)
echo 5 >"/proc/$cfs_pid/clear_refs" 2>/dev/null || log "cannot reset VmHWM; it includes start-up"
sample_rss &
sampler=$!
pids+=("$sampler")

cpu_secs() { # cpu_secs PID -> utime + stime in seconds
  awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz}' "/proc/$1/stat"
}
declare -A speeds share cfs_cpu s3_cpu
run_step() { # run_step LABEL put|get URL ARGS...: REPEAT runs -> speeds, share, CPU s per run
  local label=$1 runs=() before s i c0 s0
  before=$(cpu_snap)
  c0=$(cpu_secs "$cfs_pid") s0=$(cpu_secs "$s3_pid")
  for ((i = 1; i <= REPEAT; i++)); do
    s=$(transfer "$label #$i" "$2" "$3" "${@:4}")
    log "$label #$i: $(mib "$s") MiB/s"
    runs+=("$s")
  done
  cfs_cpu[$label]=$(awk -v a="$c0" -v b="$(cpu_secs "$cfs_pid")" -v n="$REPEAT" 'BEGIN {printf "%.1f", (b - a) / n}')
  s3_cpu[$label]=$(awk -v a="$s0" -v b="$(cpu_secs "$s3_pid")" -v n="$REPEAT" 'BEGIN {printf "%.1f", (b - a) / n}')
  share[$label]=$(foreign_share "$before" "$(cpu_snap)")
  speeds[$label]=$(median "${runs[@]}")
  log "$label: median $(mib "${speeds[$label]}") MiB/s (other processes: ${share[$label]}% of the CPU;" \
    "CPU s per transfer: callfs ${cfs_cpu[$label]}, s3s-fs ${s3_cpu[$label]})"
}

# Informational: the same server taking the file as a multipart upload of 8 MiB parts sent one after
# another by curl (what the spec makes callfs do above 8 MiB), to show what multipart costs the
# server itself. Prints bytes/s like transfer(). (--data-binary @- holds one 8 MiB part in curl;
# curl 7.88 mis-signs `-T -` with a query string.)
direct_multipart() {
  local url="$s3_url/$BUCKET/direct-mp.bin" part=$((8 * 1048576)) upload_id n i etag start end xml
  start=$(date +%s.%N)
  upload_id=$(curl -fsS --max-time 60 "${sig[@]}" -X POST "$url?uploads=" | # "uploads=": curl 7.88 signs a bare "uploads" wrongly
    sed -n 's:.*<UploadId>\(.*\)</UploadId>.*:\1:p')
  [[ -n $upload_id ]] || die "direct multipart: no UploadId"
  n=$(((large_bytes + part - 1) / part))
  xml="<CompleteMultipartUpload>"
  for ((i = 1; i <= n; i++)); do
    etag=$(dd if="$large" bs="$part" skip=$((i - 1)) count=1 status=none |
      curl -fsS --max-time 60 "${sig[@]}" -X PUT --data-binary @- -o /dev/null -D - \
        "$url?partNumber=$i&uploadId=$upload_id" | tr -d '\r' | awk 'tolower($1) == "etag:" {print $2}')
    [[ -n $etag ]] || die "direct multipart: part $i has no ETag"
    xml+="<Part><PartNumber>$i</PartNumber><ETag>$etag</ETag></Part>"
  done
  xml+="</CompleteMultipartUpload>"
  curl -fsS --max-time "$CURL_MAX" "${sig[@]}" -X POST -H "Content-Type: application/xml" --data-binary "$xml" \
    -o /dev/null "$url?uploadId=$upload_id" || die "direct multipart: completion failed"
  end=$(date +%s.%N)
  awk -v b="$large_bytes" -v s="$start" -v e="$end" 'BEGIN {printf "%.0f", b / (e - s)}'
}
mp_runs=()
mp_before=$(cpu_snap)
mp_s0=$(cpu_secs "$s3_pid")
for ((i = 1; i <= REPEAT; i++)); do
  mp_runs+=("$(direct_multipart)")
  log "upload direct multipart #$i: $(mib "${mp_runs[-1]}") MiB/s"
done
mp_speed=$(median "${mp_runs[@]}")
mp_s3_cpu=$(awk -v a="$mp_s0" -v b="$(cpu_secs "$s3_pid")" -v n="$REPEAT" 'BEGIN {printf "%.1f", (b - a) / n}')
mp_share=$(foreign_share "$mp_before" "$(cpu_snap)")
log "upload direct multipart: median $(mib "$mp_speed") MiB/s (other processes: $mp_share% of the CPU; s3s-fs CPU s $mp_s3_cpu)"

file_url="$cfs_url/v1/files/bench/large.bin"
object_url="$s3_url/$BUCKET/direct.bin"
run_step "upload callfs" put "$file_url" "${cfs_hdr[@]}"
run_step "upload direct" put "$object_url" "${sig[@]}"
run_step "download callfs" get "$file_url" "${cfs_hdr[@]}"
run_step "download direct" get "$object_url" "${sig[@]}"

# the bytes went through whole: callfs serves exactly the source file
got_sha=$(curl -fsS --max-time "$CURL_MAX" "${cfs_hdr[@]}" "$file_url" | sha256sum | cut -d' ' -f1)
[[ $got_sha == "$large_sha" ]] || die "callfs returned other bytes than were uploaded"

hwm=$(vm_kib "$cfs_pid" VmHWM)
stop_pid "$sampler"
rss_max=$(cat "$tmp/rss-max" 2>/dev/null || echo 0)
top_after=$(top -bn1 | head -15)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
up_ratio=$(ratio "${speeds[upload callfs]}" "${speeds[upload direct]}")
down_ratio=$(ratio "${speeds[download callfs]}" "${speeds[download direct]}")
verdict() { awk -v r="$1" 'BEGIN {print (r >= 0.8 ? "yes" : "NO")}'; }
hwm_mib=$(awk -v k="$hwm" 'BEGIN {printf "%.1f", k / 1024}')
rss_ok=$(awk -v k="$hwm" 'BEGIN {print (k < 96 * 1024 ? "yes" : "NO")}')

report=$(
  cat <<EOF
# callfs over S3 vs direct S3 client (bench/s3.sh)

Run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores ($(uname -r)); callfs binary $bin_info;
s3s-fs $("$S3S_FS_BIN" --version 2>/dev/null | awk '{print $2}') on loopback, data in $parent (temp dir);
$(numfmt --to=iec "$large_bytes") random file, median of $REPEAT transfers each; curl $curl_version.
Load average before / after: $load_start / $load_end.

| Measure | callfs (default_backend: s3) | direct (curl --aws-sigv4) | ratio | target met |
|---|---|---|---|---|
| $(numfmt --to=iec "$large_bytes") upload MiB/s | $(mib "${speeds[upload callfs]}") | $(mib "${speeds[upload direct]}") | $up_ratio | $(verdict "$up_ratio") (≥ 0.8) |
| $(numfmt --to=iec "$large_bytes") download MiB/s | $(mib "${speeds[download callfs]}") | $(mib "${speeds[download direct]}") | $down_ratio | $(verdict "$down_ratio") (≥ 0.8) |
| callfs peak RSS (VmHWM) during both | $hwm_mib MiB | | | $rss_ok (< 96 MiB) |
| informational: upload vs direct 8 MiB multipart (curl, parts one after another) | $(mib "${speeds[upload callfs]}") | $(mib "$mp_speed") | $(ratio "${speeds[upload callfs]}" "$mp_speed") | |

callfs VmRSS: $((rss_start / 1024)) MiB before the transfers, $((rss_max / 1024)) MiB at most while sampled every 50 ms.
Other processes' share of the CPU (incl. steal) per step: upload callfs ${share[upload callfs]}%,
upload direct ${share[upload direct]}%, direct multipart $mp_share%, download callfs ${share[download callfs]}%, download direct ${share[download direct]}%.
CPU seconds per transfer, callfs / s3s-fs: upload through callfs ${cfs_cpu[upload callfs]} / ${s3_cpu[upload callfs]},
direct upload - / ${s3_cpu[upload direct]}, direct multipart upload - / $mp_s3_cpu, download through callfs ${cfs_cpu[download callfs]} / ${s3_cpu[download callfs]},
direct download - / ${s3_cpu[download direct]}.
The direct upload is one PutObject; callfs sends 8 MiB multipart parts (storage.md §3) with one in
flight beside the one filling; the informational row has curl send the same 8 MiB parts in sequence. Downloads are checked by size; callfs's bytes by SHA-256.

Command: \`make bench-s3\` (= \`bench/s3.sh\` after \`cargo build --release\`), with
BENCH_LARGE_SIZE=$LARGE_SIZE BENCH_LARGE_REPEAT=$REPEAT.

\`top -bn1 | head -15\` before:

\`\`\`
$top_before
\`\`\`

after:

\`\`\`
$top_after
\`\`\`
EOF
)
echo "$report"
echo "$report" >"$RESULTS"
log "wrote $RESULTS"

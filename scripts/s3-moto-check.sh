#!/usr/bin/env bash
# Usage: scripts/s3-moto-check.sh
#
# Runs the S3 suites against a second S3 implementation, moto's server, to catch dialect
# assumptions that s3s-fs does not expose (issue 10). Not part of `make test`.
#  1. installs moto's server with pip when `moto_server` is missing (`pip install 'moto[server]'`);
#  2. starts `moto_server` on a free 127.0.0.1 port and creates a fresh bucket (SigV4 PUT by curl);
#  3. runs tests/s3.rs and the `_s3::` variants of tests/api.rs with CALLFS_TEST_S3_ENDPOINT,
#     _BUCKET, _ACCESS_KEY and _SECRET_KEY pointing at it, under scripts/with-postgres.sh (so the
#     PostgreSQL variants run too);
#  4. stops that moto server (by pid) and removes its log directory, also on failure or Ctrl-C.
# Tests that must kill or inspect the S3 server (mid-upload/mid-download kills, fsck on the bucket
# folder, start-up refusals, the two-node sweep) return early against an external S3.
# Exit status: that of the test runs (0 when both passed).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[moto-check] %s\n' "$*" >&2; }

if ! command -v moto_server >/dev/null 2>&1; then
  log "installing moto's server: pip install 'moto[server]'"
  python3 -m pip install --quiet 'moto[server]'
fi
command -v moto_server >/dev/null 2>&1 || { log "moto_server not on PATH after pip install"; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/callfs-moto.XXXXXX")
moto_pid=""
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  if [[ -n $moto_pid ]] && kill -0 "$moto_pid" 2>/dev/null; then
    kill -TERM "$moto_pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$moto_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$moto_pid" 2>/dev/null || true
    wait "$moto_pid" 2>/dev/null || true
  fi
  rm -rf -- "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >"$tmp/moto.log" 2>&1 &
moto_pid=$!
endpoint="http://127.0.0.1:$port"
for ((i = 0; i < 100; i++)); do
  curl -fsS -o /dev/null --max-time 1 "$endpoint/" 2>/dev/null && break
  kill -0 "$moto_pid" 2>/dev/null || { cat "$tmp/moto.log" >&2; log "moto_server exited"; exit 1; }
  sleep 0.2
done
log "moto $(python3 -m pip show moto 2>/dev/null | awk '/^Version:/ {print $2}') pid $moto_pid on $endpoint"

# moto accepts any keys; the requests are still SigV4-signed like against AWS.
bucket="callfs-moto-$(od -An -v -tx1 -N4 /dev/urandom | tr -d ' \n')"
access_key="AKMOTO$(od -An -v -tx1 -N6 /dev/urandom | tr -d ' \n')"
secret_key=$(od -An -v -tx1 -N20 /dev/urandom | tr -d ' \n')
code=$(curl -sS -o /dev/null -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" \
  --user "$access_key:$secret_key" -X PUT "$endpoint/$bucket")
[[ $code == 200 ]] || { log "creating bucket $bucket: status $code"; exit 1; }

export CALLFS_TEST_S3_ENDPOINT=$endpoint CALLFS_TEST_S3_BUCKET=$bucket
export CALLFS_TEST_S3_ACCESS_KEY=$access_key CALLFS_TEST_S3_SECRET_KEY=$secret_key
cargo=${CARGO:-cargo}
rc=0
log "tests/s3.rs against moto"
scripts/with-postgres.sh "$cargo" test --release --test s3 -- --test-threads=1 || rc=1
log "tests/api.rs _s3:: variants against moto"
scripts/with-postgres.sh "$cargo" test --release --test api -- --test-threads=2 _s3:: || rc=1
if ((rc == 0)); then log "all passed against moto"; else log "FAILURES against moto (see above)"; fi
exit "$rc"

#!/usr/bin/env bash
# Usage: scripts/ensure-deps.sh [build|test]
#
# Install (Debian/Ubuntu, apt) what callfs needs and is not present yet:
#
#   build: pkg-config libssl-dev libpq-dev   compiling and running a node: openssl-sys links OpenSSL, and
#                                            diesel's postgres feature links libpq (pq-sys, not bundled)
#   test (the default): build, plus
#          postgresql            (initdb/pg_ctl under /usr/lib/postgresql/*/bin, psql, pg_isready)
#          prometheus            (prometheus server + promtool)
#          prometheus-alertmanager (amtool, for `amtool check-config cluster/alertmanager.yml`)
#          s3s-fs                (the S3 server of tests/s3.rs, through scripts/ensure-s3.sh)
#
# `make run` and `make check` use `build`; `make test` and cluster/start.sh use `test`.
# Idempotent and quiet when everything is there; `apt-get update` runs only when something has to
# be installed. Needs root (or passwordless sudo) only in that case.
set -euo pipefail

# package -> a command it provides ("" = check the package only)
declare -A provides=(
  [pkg-config]="pkg-config"
  [libssl-dev]=""
  [libpq-dev]=""
  [postgresql]=""
  [prometheus]="promtool"
  [prometheus-alertmanager]="amtool"
)
case ${1:-test} in
  build) order=(pkg-config libssl-dev libpq-dev) ;;
  test) order=(pkg-config libssl-dev libpq-dev postgresql prometheus prometheus-alertmanager) ;;
  *)
    echo "usage: $0 [build|test]" >&2
    exit 2
    ;;
esac

have_initdb() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

is_present() {
  local pkg=$1 cmd=${provides[$1]}
  if dpkg -s "$pkg" >/dev/null 2>&1; then
    # dpkg knows it; still make sure the tool we rely on is really there
    case $pkg in
      postgresql) have_initdb ;;
      *) [[ -z $cmd ]] || command -v "$cmd" >/dev/null 2>&1 ;;
    esac
    return
  fi
  # installed some other way (e.g. upstream tarball on PATH)?
  case $pkg in
    postgresql) have_initdb && command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1 ;;
    prometheus) command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 ;;
    *) [[ -n $cmd ]] && command -v "$cmd" >/dev/null 2>&1 ;;
  esac
}

missing=()
for pkg in "${order[@]}"; do
  is_present "$pkg" || missing+=("$pkg")
done

if [[ ${1:-test} == test ]]; then
  "$(dirname "$0")/ensure-s3.sh"
fi

[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-deps: missing ${missing[*]} and apt-get is not available; install them by hand" >&2
  exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "ensure-deps: missing ${missing[*]}; run this script as root" >&2
    exit 1
  fi
fi

echo "ensure-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# apt's chatter goes to a log that is shown only when something fails
if ! { "${sudo[@]}" apt-get update -qq && \
       "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "ensure-deps: apt-get failed (see above)" >&2
  exit 1
fi

still=()
for pkg in "${missing[@]}"; do
  is_present "$pkg" || still+=("$pkg")
done
if [[ ${#still[@]} -ne 0 ]]; then
  echo "ensure-deps: still missing after install: ${still[*]}" >&2
  exit 1
fi

#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup/forward are reached through traps
# Usage: scripts/with-postgres.sh CMD [ARGS...]
#
# Runs CMD with CALLFS_TEST_PG_DSN pointing at a PostgreSQL that answers.
#  * If CALLFS_TEST_PG_DSN is already set and `select 1` works there, CMD is simply exec'd.
#  * Otherwise a throw-away cluster is created in a temporary directory (initdb, trust auth,
#    fsync off), started on a free 127.0.0.1 port, CMD runs with
#    CALLFS_TEST_PG_DSN=postgres://postgres@127.0.0.1:PORT/postgres (and CALLFS_TEST_PG_RESTART,
#    a script that restarts that server in place), and afterwards that
#    postgres (and only that one, by pid) is stopped and the directory removed — also when CMD
#    fails or the script is interrupted. The exit status is CMD's.
# A literal `$CALLFS_TEST_PG_DSN` / `${CALLFS_TEST_PG_DSN}` inside an argument is replaced by the
# DSN, so the DSN can be passed on a command line without `sh -c`:
#   scripts/with-postgres.sh psql '$CALLFS_TEST_PG_DSN' -c 'select version()'
# Works as root (the server then runs as the `postgres` user, which PostgreSQL requires) and as
# an ordinary user (the server runs as that user). Needs the Debian `postgresql` package
# (scripts/ensure-deps.sh installs it).
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi

# Run "$@" with literal $CALLFS_TEST_PG_DSN / ${CALLFS_TEST_PG_DSN} in the arguments substituted.
expand_args() {
  local a
  args=()
  # shellcheck disable=SC2016  # the literal text $CALLFS_TEST_PG_DSN is what gets replaced
  for a in "$@"; do
    a=${a//'${CALLFS_TEST_PG_DSN}'/$CALLFS_TEST_PG_DSN}
    a=${a//'$CALLFS_TEST_PG_DSN'/$CALLFS_TEST_PG_DSN}
    args+=("$a")
  done
}

pg_answers() {
  PGCONNECT_TIMEOUT=5 psql "$1" -X -A -t -q -c 'select 1' >/dev/null 2>&1
}

if [[ -n ${CALLFS_TEST_PG_DSN:-} ]]; then
  if command -v psql >/dev/null 2>&1 && pg_answers "$CALLFS_TEST_PG_DSN"; then
    expand_args "$@"
    exec "${args[@]}"
  fi
  echo "with-postgres: CALLFS_TEST_PG_DSN is set but does not answer; starting a temporary PostgreSQL" >&2
fi

# --- locate the server binaries (newest major version first) ---------------------------------
bindir=""
mapfile -t candidates < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -rn)
for d in "${candidates[@]}"; do
  if [[ -x $d/initdb && -x $d/postgres ]]; then
    bindir=$d
    break
  fi
done
if [[ -z $bindir ]]; then
  if command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
    bindir=$(dirname "$(command -v initdb)")
  else
    echo "with-postgres: initdb/postgres not found under /usr/lib/postgresql/*/bin; run scripts/ensure-deps.sh" >&2
    exit 1
  fi
fi
pg_isready_bin=$bindir/pg_isready
[[ -x $pg_isready_bin ]] || pg_isready_bin=$(command -v pg_isready || true)
if [[ -z $pg_isready_bin ]]; then
  echo "with-postgres: pg_isready not found; run scripts/ensure-deps.sh" >&2
  exit 1
fi

# --- who runs the server ----------------------------------------------------------------------
as_pg=()
if [[ $(id -u) -eq 0 ]]; then
  if ! id postgres >/dev/null 2>&1; then
    echo "with-postgres: running as root but there is no 'postgres' user; run scripts/ensure-deps.sh" >&2
    exit 1
  fi
  if command -v runuser >/dev/null 2>&1; then
    as_pg=(runuser -u postgres --)
  else
    # shellcheck disable=SC2016  # expanded by the inner sh
    as_pg=(su postgres -s /bin/sh -c '"$0" "$@"')
  fi
fi

# --- state + cleanup --------------------------------------------------------------------------
tmp=""
pg_pid=""      # the postmaster itself (from postmaster.pid)
cmd_pid=""
wrap_pid=""    # what we started in the background (runuser, or the postmaster when not root)

pid_alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

stop_postgres() {
  local target i current
  # A restart through $CALLFS_TEST_PG_RESTART leaves a new postmaster: stop whichever runs now.
  if [[ -n ${data:-} && -r $data/postmaster.pid ]]; then
    current=$(head -n 1 "$data/postmaster.pid")
    if [[ $current =~ ^[0-9]+$ ]]; then
      pg_pid=$current
    fi
  fi
  target=${pg_pid:-$wrap_pid}
  if pid_alive "$target"; then
    kill -INT "$target" 2>/dev/null || true          # fast shutdown
    for ((i = 0; i < 300; i++)); do                  # up to 30 s
      pid_alive "$target" || break
      sleep 0.1
    done
    if pid_alive "$target"; then
      echo "with-postgres: postgres (pid $target) did not stop after SIGINT; sending SIGQUIT" >&2
      kill -QUIT "$target" 2>/dev/null || true
      sleep 1
    fi
  fi
  if [[ -n $wrap_pid ]]; then
    if pid_alive "$wrap_pid" && [[ $wrap_pid != "$target" ]]; then
      kill -TERM "$wrap_pid" 2>/dev/null || true
    fi
    wait "$wrap_pid" 2>/dev/null || true
  fi
  pg_pid=""
  wrap_pid=""
}

cleanup() {
  stop_postgres
  if [[ -n $tmp && -d $tmp ]]; then
    rm -rf -- "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# /tmp rather than $TMPDIR: the postgres user must be able to reach the directory.
tmp=$(mktemp -d /tmp/callfs-pg.XXXXXX)
data=$tmp/data
mkdir "$data"
if [[ ${#as_pg[@]} -gt 0 ]]; then
  chown -R postgres: "$tmp"
fi
chmod 700 "$tmp" "$data"

if ! (cd "$tmp" && "${as_pg[@]}" "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C \
        --no-sync >"$tmp/initdb.log" 2>&1); then
  cat "$tmp/initdb.log" >&2
  echo "with-postgres: initdb failed" >&2
  exit 1
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

started=""
for attempt in 1 2 3; do
  port=$(free_port)
  (cd "$tmp" && exec "${as_pg[@]}" "$bindir/postgres" -D "$data" -k "$tmp" -p "$port" \
      -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
      -c max_connections=300 >>"$tmp/postgres.log" 2>&1) &
  wrap_pid=$!
  for ((i = 0; i < 600; i++)); do                    # up to 60 s
    if ! pid_alive "$wrap_pid"; then
      break
    fi
    if "$pg_isready_bin" -q -h 127.0.0.1 -p "$port" -t 1 >/dev/null 2>&1; then
      started=yes
      break
    fi
    sleep 0.1
  done
  if [[ -n $started ]]; then
    break
  fi
  stop_postgres
  echo "with-postgres: postgres did not come up on port $port (attempt $attempt)" >&2
done
if [[ -z $started ]]; then
  cat "$tmp/postgres.log" >&2 || true
  echo "with-postgres: giving up" >&2
  exit 1
fi

# The postmaster's own pid (when root, $wrap_pid is runuser's).
if [[ -r $data/postmaster.pid ]]; then
  pg_pid=$(head -n 1 "$data/postmaster.pid")
fi
[[ $pg_pid =~ ^[0-9]+$ ]] || pg_pid=$wrap_pid

export CALLFS_TEST_PG_DSN="postgres://postgres@127.0.0.1:${port}/postgres"
# A command that restarts this PostgreSQL in place (same port and settings, fast shutdown), for
# tests that survive a database restart (tests/soak.rs). Cleanup stops whichever postmaster runs.
{
  echo '#!/usr/bin/env bash'
  printf 'exec'
  printf ' %q' "${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 -l "$tmp/postgres-restart.log" restart
  echo
} >"$tmp/restart.sh"
chmod 755 "$tmp/restart.sh"
export CALLFS_TEST_PG_RESTART="$tmp/restart.sh"
echo "with-postgres: temporary PostgreSQL (pid $pg_pid) at $CALLFS_TEST_PG_DSN" >&2

expand_args "$@"
# CMD runs as a background job so that a signal to this script is handled at once (bash defers
# traps while a foreground child runs); stdin is passed on explicitly (a background job would
# otherwise read /dev/null). On INT/TERM the signal is forwarded to CMD, then cleanup runs.
"${args[@]}" <&0 &
cmd_pid=$!
forward() {
  if pid_alive "$cmd_pid"; then
    kill "-$1" "$cmd_pid" 2>/dev/null || true
    wait "$cmd_pid" 2>/dev/null || true
  fi
  exit "$2"
}
trap 'forward INT 130' INT
trap 'forward TERM 143' TERM
set +e
wait "$cmd_pid"
status=$?
set -e
exit "$status"

#!/usr/bin/env bash
# Usage: cluster/stop.sh [--purge]      (what `make cluster-down` runs)
#
# Stops exactly the processes cluster/start.sh recorded in .cluster/pids ("<name> <pid>" lines),
# nothing else: each pid is signalled only if it is still alive and still runs the program it was
# recorded for (guards against a reused pid). PostgreSQL gets SIGINT (fast shutdown), the others
# SIGTERM (graceful); whatever is still alive after 30 s gets SIGKILL.
# Data, logs and secrets in .cluster/ are kept for the next start; --purge deletes .cluster/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
state=$PWD/.cluster
pids=$state/pids

purge=""
case ${1:-} in
  "") ;;
  --purge) purge=yes ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

say() { echo "cluster: $*" >&2; }
pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# The executable a recorded name must be running.
expected_exe() {
  case $1 in
    node-*) echo callfs ;;
    postgres) echo postgres ;;
    haproxy) echo haproxy ;;
    prometheus) echo prometheus ;;
    *) echo "" ;;
  esac
}

# Is pid $1 still the program recorded as $2?
is_ours() {
  local pid=$1 want exe
  want=$(expected_exe "$2")
  [[ -n $want ]] || return 1
  pid_alive "$pid" || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  exe=${exe% (deleted)}
  [[ ${exe##*/} == "$want" ]]
}

names=()
targets=()
if [[ -s $pids ]]; then
  while read -r name pid; do
    [[ -n ${name:-} && ${pid:-} =~ ^[0-9]+$ ]] || continue
    if is_ours "$pid" "$name"; then
      names+=("$name")
      targets+=("$pid")
    elif pid_alive "$pid"; then
      say "pid $pid (recorded as $name) now runs something else; leaving it alone"
    fi
  done <"$pids"
fi

# Stop in reverse start order: prometheus, haproxy, nodes, then PostgreSQL.
for ((i = ${#targets[@]} - 1; i >= 0; i--)); do
  name=${names[$i]} pid=${targets[$i]}
  if [[ $name == postgres ]]; then
    # the nodes must be gone before PostgreSQL (they hold connections and leases)
    for ((j = 0; j < 300; j++)); do
      busy=""
      for ((k = 0; k < ${#targets[@]}; k++)); do
        [[ $k -ne $i ]] && is_ours "${targets[$k]}" "${names[$k]}" && busy=yes
      done
      [[ -z $busy ]] && break
      sleep 0.1
    done
    kill -INT "$pid" 2>/dev/null || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  say "stopping $name (pid $pid)"
done

for ((i = 0; i < 300; i++)); do
  alive=""
  for ((k = 0; k < ${#targets[@]}; k++)); do
    is_ours "${targets[$k]}" "${names[$k]}" && alive=yes
  done
  [[ -z $alive ]] && break
  sleep 0.1
done
for ((k = 0; k < ${#targets[@]}; k++)); do
  if is_ours "${targets[$k]}" "${names[$k]}"; then
    say "${names[$k]} (pid ${targets[$k]}) did not stop within 30 s; sending SIGKILL"
    kill -KILL "${targets[$k]}" 2>/dev/null || true
  fi
done

rm -f "$pids"
if [[ ${#targets[@]} -eq 0 ]]; then
  say "nothing was running"
else
  say "stopped ${#targets[@]} process(es)"
fi

if [[ -n $purge && -d $state ]]; then
  rm -rf -- "$state"
  say "removed .cluster/"
fi

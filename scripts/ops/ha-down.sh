#!/usr/bin/env bash
# Stops what scripts/ops/ha-up.sh DIR started: HAProxy, both Patroni members
# and their PostgreSQL servers, etcd. Each is asked to stop (SIGTERM) and
# killed after 15 s if it has not. The data stays in DIR; remove DIR to
# start from nothing.
#
#   scripts/ops/ha-down.sh [DIR]      (default: ./.soma-ha)
set -uo pipefail

DIR="${1:-.soma-ha}"
[ -d "$DIR" ] || { echo "ha-down: no directory $DIR" >&2; exit 1; }
DIR="$(cd "$DIR" && pwd)"

log() { printf 'ha-down: %s\n' "$*" >&2; }

# The pids to stop: each program's pid file, and each PostgreSQL
# postmaster (Patroni detaches it: its pid is the first line of
# DATA/postmaster.pid).
pids_of() {
  local file="$1"
  [ -s "$file" ] && head -n 1 "$file"
}

stop() {
  local name="$1" pid="$2"
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  log "stopping $name ($pid)"
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "$name ($pid) did not stop in 15 s: killed"
  kill -KILL "$pid" 2>/dev/null
}

stop haproxy "$(pids_of "$DIR/haproxy.pid")"
# Patroni first (it would restart PostgreSQL), then the postmasters it
# leaves behind.
stop patroni-pg1 "$(pids_of "$DIR/patroni-pg1.pid")" &
stop patroni-pg2 "$(pids_of "$DIR/patroni-pg2.pid")" &
wait
for member in pg1 pg2; do
  stop "postgres $member" "$(pids_of "$DIR/$member/postmaster.pid")"
done
stop etcd "$(pids_of "$DIR/etcd.pid")"
rm -f "$DIR"/haproxy.pid "$DIR"/patroni-pg1.pid "$DIR"/patroni-pg2.pid "$DIR"/etcd.pid
log "stopped"

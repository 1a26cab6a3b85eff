#!/usr/bin/env bash
# PostgreSQL with streaming replication managed by Patroni, etcd as its
# store, and HAProxy routing to the current primary by Patroni's REST health
# check: the standard Patroni deployment, on loopback, from Debian's
# packages (patroni, etcd-server, haproxy) and the machine's PostgreSQL 15
# binaries. Two members in their own data directories under DIR, with
# synchronous replication, strict: a commit is acknowledged only once the
# synchronous standby has it, in every window (start-up, and the seconds
# after a failover, when no standby is yet in sync, included).
#
#   scripts/ops/ha-up.sh [DIR]        (default: ./.soma-ha)
#
# Prints progress on standard error and, as its last line on standard
# output, the database URL through HAProxy; writes DIR/cluster.json (the
# URL, each member's REST API and data directory) for drills. Stop everything with
# scripts/ops/ha-down.sh DIR. Nothing here touches a PostgreSQL on 5432.
#
# Ports (loopback only) start at SOMA_HA_BASE_PORT (default 25400):
#   +0 HAProxy (the primary)     +1 etcd client     +2 etcd peer
#   +10, +11 PostgreSQL pg1, pg2  +20, +21 Patroni REST pg1, pg2
#
# Failover timing: ttl 10 s, loop_wait 2 s, retry_timeout 5 s; a crashed
# postmaster is not restarted in place (primary_start_timeout 0): the
# standby takes over. The old primary rejoins as a standby by itself
# (pg_rewind).
set -euo pipefail

DIR="${1:-.soma-ha}"
BASE="${SOMA_HA_BASE_PORT:-25400}"
PG_BIN="${SOMA_HA_PG_BIN:-/usr/lib/postgresql/15/bin}"
SCOPE="${SOMA_HA_SCOPE:-soma-ha}"
WAIT_SECONDS="${SOMA_HA_WAIT_SECONDS:-90}"

HAPROXY_PORT=$((BASE))
ETCD_CLIENT=$((BASE + 1))
ETCD_PEER=$((BASE + 2))

log() { printf 'ha-up: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- packages ---------------------------------------------------------------
missing=()
command -v patroni >/dev/null || missing+=(patroni)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v curl >/dev/null || missing+=(curl)
command -v psql >/dev/null || missing+=(postgresql-client)
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]})"
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x "$PG_BIN/postgres" ] || die "no PostgreSQL binaries in $PG_BIN (SOMA_HA_PG_BIN)"

# --- who runs it ------------------------------------------------------------
# PostgreSQL refuses to run as root: as root, everything runs as `postgres`.
if [ "$(id -u)" -eq 0 ]; then
  RUN_AS=(runuser -u postgres --)
  OWNER=postgres
else
  RUN_AS=()
  OWNER="$(id -un)"
fi

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
if [ -e "$DIR/haproxy.pid" ] || [ -e "$DIR/etcd.pid" ]; then
  die "$DIR holds a stack already (stop it with scripts/ops/ha-down.sh $DIR)"
fi
mkdir -p "$DIR/etcd" "$DIR/logs"
chown "$OWNER" "$DIR" "$DIR/etcd" "$DIR/logs"
chmod 700 "$DIR" "$DIR/etcd"

# Starts "$@" detached as the run-as user, its pid in $DIR/$name.pid.
start() {
  local name="$1"
  shift
  "${RUN_AS[@]}" setsid bash -c 'echo $$ > "$0"; exec "${@:2}" >>"$1" 2>&1' \
    "$DIR/$name.pid" "$DIR/logs/$name.log" "$@" </dev/null >/dev/null 2>&1 &
  disown
  for _ in $(seq 1 50); do [ -s "$DIR/$name.pid" ] && return 0; sleep 0.1; done
  die "$name did not start (see $DIR/logs/$name.log)"
}
# (The pid file is written by the shell that then execs the program: the
# pid is the program's. Nothing started here keeps this script's standard
# output or error open — `runuser` stays a parent — so a caller reading the
# script's output sees its end when the script exits.)

# --- etcd ---------------------------------------------------------------------
log "etcd on 127.0.0.1:$ETCD_CLIENT"
start etcd /usr/bin/etcd \
  --name soma-ha-etcd \
  --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "soma-ha-etcd=http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster-state new
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$ETCD_CLIENT/health" 2>/dev/null | grep -q '"health":"true"' && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$ETCD_CLIENT/health" | grep -q '"health":"true"' || die "etcd is not healthy"

# --- Patroni members ------------------------------------------------------------
member_config() {
  local name="$1" pg_port="$2" rest_port="$3"
  cat <<EOF
scope: $SCOPE
namespace: /soma/
name: $name

restapi:
  listen: 127.0.0.1:$rest_port
  connect_address: 127.0.0.1:$rest_port

etcd3:
  hosts: 127.0.0.1:$ETCD_CLIENT

bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 5
    maximum_lag_on_failover: 0
    primary_start_timeout: 0
    synchronous_mode: true
    synchronous_mode_strict: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        max_connections: 200
        synchronous_commit: "on"
  initdb:
    - encoding: UTF8
    - data-checksums
    - auth: trust

postgresql:
  listen: 127.0.0.1:$pg_port
  connect_address: 127.0.0.1:$pg_port
  data_dir: $DIR/$name
  bin_dir: $PG_BIN
  pgpass: $DIR/$name.pgpass
  authentication:
    superuser:
      username: postgres
      password: soma-ha
    replication:
      username: replicator
      password: soma-ha
    rewind:
      username: postgres
      password: soma-ha
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication replicator 127.0.0.1/32 trust
  parameters:
    unix_socket_directories: $DIR

tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
EOF
}

for i in 1 2; do
  name="pg$i"
  pg_port=$((BASE + 9 + i))
  rest_port=$((BASE + 19 + i))
  member_config "$name" "$pg_port" "$rest_port" >"$DIR/$name.yml"
  chown "$OWNER" "$DIR/$name.yml"
  log "patroni $name: PostgreSQL 127.0.0.1:$pg_port, REST 127.0.0.1:$rest_port"
  # Debian's /usr/bin/patroni runs on Debian's python3 (python3-etcd,
  # psycopg2), whatever python3 is first on PATH.
  start "patroni-$name" /usr/bin/patroni "$DIR/$name.yml"
done

# --- HAProxy --------------------------------------------------------------------
cat >"$DIR/haproxy.cfg" <<EOF
global
    maxconn 1000

defaults
    mode tcp
    retries 2
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 2s

listen primary
    bind 127.0.0.1:$HAPROXY_PORT
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
    server pg1 127.0.0.1:$((BASE + 10)) maxconn 200 check port $((BASE + 20))
    server pg2 127.0.0.1:$((BASE + 11)) maxconn 200 check port $((BASE + 21))
EOF
chown "$OWNER" "$DIR/haproxy.cfg"
log "haproxy on 127.0.0.1:$HAPROXY_PORT"
start haproxy /usr/sbin/haproxy -db -f "$DIR/haproxy.cfg"

# --- ready: a primary writable through HAProxy, and a synchronous standby ---------
URL="postgres://postgres@127.0.0.1:$HAPROXY_PORT/postgres"
deadline=$((SECONDS + WAIT_SECONDS))
log "waiting for a primary through HAProxy"
until psql "$URL?connect_timeout=2" -XAtqc "SELECT NOT pg_is_in_recovery()" 2>/dev/null | grep -qx t; do
  [ "$SECONDS" -lt "$deadline" ] || die "no writable primary through HAProxy within ${WAIT_SECONDS}s (logs in $DIR/logs)"
  sleep 0.5
done
log "waiting for a synchronous standby"
until curl -fsS "http://127.0.0.1:$((BASE + 20))/cluster" 2>/dev/null | grep -q '"role": *"sync_standby"'; do
  [ "$SECONDS" -lt "$deadline" ] || die "no synchronous standby within ${WAIT_SECONDS}s (logs in $DIR/logs)"
  sleep 0.5
done
# What a drill needs to find the primary: each member's REST API and data
# directory (its postmaster's pid is the first line of postmaster.pid).
cat >"$DIR/cluster.json" <<EOF
{"url": "$URL", "members": [
  {"name": "pg1", "rest": "http://127.0.0.1:$((BASE + 20))", "data_dir": "$DIR/pg1"},
  {"name": "pg2", "rest": "http://127.0.0.1:$((BASE + 21))", "data_dir": "$DIR/pg2"}
]}
EOF
log "up: $(curl -fsS "http://127.0.0.1:$((BASE + 20))/cluster" | tr -d '\n' | head -c 400)"
echo "$URL"

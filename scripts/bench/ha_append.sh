#!/usr/bin/env bash
# Durable ledger appends through HAProxy to the Patroni primary, with
# synchronous replication (strict), against pgbench single-row INSERTs
# through the same HAProxy to the same primary, measured in the same run:
#
#   - the HA stack of scripts/ops/ha-up.sh (etcd, two Patroni PostgreSQL 15
#     members, HAProxy routing to the primary) started in a temp dir;
#   - pgbench: BENCH_WRITERS clients, one INSERT of one row per transaction
#     into a table shaped like a ledger row, for BENCH_SECONDS;
#   - Analytics: the real service in-process with its group-committing
#     ledger writer on a fresh database of the same primary
#     (crates/soma/examples/ledger_bench.rs), BENCH_WRITERS mTLS clients
#     calling RecordBillingEvent in a loop for BENCH_SECONDS; every counted
#     append was acknowledged, so committed and synchronously replicated;
#   - BENCH_ROUNDS rounds alternate the two; the headline is the median of
#     the per-round ratios Analytics / pgbench (target >= 0.7).
#
# Targets are printed, never asserted: exit 0 when the measurements ran.
# Environment: BENCH_SECONDS (10), BENCH_WRITERS (16), BENCH_ROUNDS (3),
# SOMA_HA_BASE_PORT (as ha-up.sh: 25400).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
SECONDS_RUN="${BENCH_SECONDS:-10}"
WRITERS="${BENCH_WRITERS:-16}"
ROUNDS="${BENCH_ROUNDS:-3}"

command -v pgbench >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql-contrib >/dev/null; }

echo "### building (release)" >&2
cargo build --release -p soma --example ledger_bench >&2
examples="${CARGO_TARGET_DIR:-target}/release/examples"

# The HA stack, stopped and removed whatever happens.
ha_dir="$(mktemp -d -t soma-bench-ha.XXXXXX)"
cleanup() {
  scripts/ops/ha-down.sh "$ha_dir" >/dev/null 2>&1 || true
  rm -rf "$ha_dir"
}
trap cleanup EXIT
echo "### scripts/ops/ha-up.sh $ha_dir" >&2
url="$(scripts/ops/ha-up.sh "$ha_dir" </dev/null 2>>"$ha_dir.log" | tail -n 1)" || {
  cat "$ha_dir.log" >&2
  exit 1
}
rm -f "$ha_dir.log"
echo "    primary through HAProxy: $url" >&2
load_before="$(uptime)"

scratch="soma_pgbench_$$"
psql "$url" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $scratch" >/dev/null
scratch_url="${url%/*}/$scratch"
psql "$scratch_url" -q -v ON_ERROR_STOP=1 -c \
  "CREATE TABLE bench_insert (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, amount_micros BIGINT NOT NULL, mac BYTEA NOT NULL)" >/dev/null
script="$ha_dir/insert.sql"
cat >"$script" <<'SQL'
INSERT INTO bench_insert (event_id, tenant, amount_micros, mac) VALUES (md5(random()::text || clock_timestamp()::text), 'acme', 42, '\x00112233');
SQL
# Each side checks what it runs on: the primary, with a synchronous standby.
sync_state="$(psql "$url" -Atc "SELECT string_agg(application_name || ':' || sync_state, ',') FROM pg_stat_replication")"
sync_commit="$(psql "$url" -Atc "SHOW synchronous_commit")"
echo "    replication: $sync_state; synchronous_commit=$sync_commit" >&2
case "$sync_state" in
  *:sync*) ;;
  *) echo "no synchronous standby on the primary ($sync_state): the figures would describe something else" >&2; exit 1 ;;
esac

pg_rates=()
ours_rates=()
ratios=()
for round in $(seq 1 "$ROUNDS"); do
  pg_out="$(pgbench "$scratch_url" -n -c "$WRITERS" -j 2 -T "$SECONDS_RUN" -f "$script" 2>&1)"
  pg_tps="$(echo "$pg_out" | awk '/^tps = / {print $3; exit}')"
  [ -n "$pg_tps" ] || { echo "$pg_out" >&2; echo "pgbench printed no tps" >&2; exit 1; }
  ours_out="$(DATABASE_URL="$url" "$examples/ledger_bench" --writers "$WRITERS" --seconds "$SECONDS_RUN" 2>&1)"
  ours="$(echo "$ours_out" | awk -F= '/^result.appends_per_sec=/ {print $2}')"
  [ -n "$ours" ] || { echo "$ours_out" >&2; echo "ledger_bench printed no result" >&2; exit 1; }
  ratio="$(awk -v a="$ours" -v b="$pg_tps" 'BEGIN { printf "%.3f", a / b }')"
  printf '    round %d: pgbench %10.0f INSERT/s   Analytics %10.0f appends/s   ratio %s\n' \
    "$round" "$pg_tps" "$ours" "$ratio" >&2
  pg_rates+=("$pg_tps")
  ours_rates+=("$ours")
  ratios+=("$ratio")
done
load_after="$(uptime)"

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "== Durable appends through HAProxy to the Patroni primary (synchronous replication, strict), $WRITERS clients, $ROUNDS rounds x ${SECONDS_RUN}s each"
echo "   pgbench single-row INSERT: ${pg_rates[*]} /s   (median $(median "${pg_rates[@]}"))"
echo "   Analytics ledger appends:  ${ours_rates[*]} /s   (median $(median "${ours_rates[@]}"))"
echo "   ratio per round:           ${ratios[*]}"
echo "   ratio (median of rounds):  $(median "${ratios[@]}")x   (target >= 0.7x)"
echo "   load before: $load_before"
echo "   load after:  $load_after"

#!/usr/bin/env bash
# Performance of the Analytics ledger, each figure beside a baseline
# measured in the same run:
#
#   1. durable appends/s through the real service on PostgreSQL with 16
#      concurrent writers (crates/soma/examples/ledger_bench.rs), against
#      pgbench's single-row INSERT rate with 16 clients on the same server
#      (target >= 1.0x).
#
#      BENCH_APPEND_ROUNDS rounds (3) alternate pgbench and the ledger; the
#      ratio is the median of the per-round ratios (each round's pair ran
#      back to back, under the same disk and load), its spread printed, the
#      rates the medians of their rounds;
#   2. proofs on a 1,000,000-leaf ledger (crates/ledger/benches/proofs.rs):
#      inclusion/consistency generation and verification, against the O(n)
#      slice functions;
#   3. one signed export of BENCH_EXPORT_ROWS billing events through the real
#      service (crates/soma/examples/export_bench.rs): rows/s and peak RSS
#      growth during the export (targets: >= 250,000 rows/s for 1,000,000 rows,
#      <= 50 MB), against a plain SELECT of the same rows
#      streamed with sqlx in the same run.
#
#      BENCH_EXPORT_ROUNDS rounds alternate the SELECT and the export over the
#      same seeded rows; the figures are their medians (spread printed), the
#      memory growth the worst round's.
#
# Targets are printed, never asserted: exit 0 when the measurements ran.
# Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# BENCH_SECONDS (10), BENCH_WRITERS (16), BENCH_EXPORT_ROWS (1000000),
# BENCH_EXPORT_ROUNDS (3), BENCH_ONLY (all sections; `appends`, `proofs` or
# `export` runs that one alone, e.g. BENCH_ONLY=export for the export figure).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
SECONDS_RUN="${BENCH_SECONDS:-10}"
WRITERS="${BENCH_WRITERS:-16}"
EXPORT_ROWS="${BENCH_EXPORT_ROWS:-1000000}"
EXPORT_ROUNDS="${BENCH_EXPORT_ROUNDS:-3}"
ONLY="${BENCH_ONLY:-all}"
case "$ONLY" in all | appends | proofs | export) ;; *) echo "BENCH_ONLY must be appends, proofs or export" >&2; exit 64 ;; esac
section() { [ "$ONLY" = all ] || [ "$ONLY" = "$1" ]; }

command -v pgbench >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql-contrib >/dev/null; }
command -v psql >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql-client >/dev/null; }

echo "### building (release)" >&2
case "$ONLY" in
  export) cargo build --release -p soma --example export_bench >&2 ;;
  appends) cargo build --release -p soma --example ledger_bench >&2 ;;
  proofs) ;;
  *) cargo build --release -p soma --examples >&2 ;;
esac
# The examples land in CARGO_TARGET_DIR when it is set.
examples="${CARGO_TARGET_DIR:-target}/release/examples"

pg_tps="-"; ours="-"; append_ratio="-"; append_rounds=""
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
if section appends; then
APPEND_ROUNDS="${BENCH_APPEND_ROUNDS:-3}"
echo "### 1. durable appends/s: Analytics vs pgbench single-row INSERT, $WRITERS clients, $APPEND_ROUNDS rounds x ${SECONDS_RUN}s each" >&2
scratch="soma_pgbench_$$"
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $scratch" >/dev/null
base_url="${DATABASE_URL%/*}"
scratch_url="$base_url/$scratch"
cleanup() { psql "$DATABASE_URL" -q -c "DROP DATABASE IF EXISTS $scratch WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
psql "$scratch_url" -q -v ON_ERROR_STOP=1 -c \
  "CREATE TABLE bench_insert (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, amount_micros BIGINT NOT NULL, mac BYTEA NOT NULL)" >/dev/null
script="$(mktemp)"
cat >"$script" <<'SQL'
INSERT INTO bench_insert (event_id, tenant, amount_micros, mac) VALUES (md5(random()::text || clock_timestamp()::text), 'acme', 42, '\x00112233');
SQL
pg_rates=(); ours_rates=(); ratios=()
for round in $(seq 1 "$APPEND_ROUNDS"); do
  pg_out="$(pgbench "$scratch_url" -n -c "$WRITERS" -j 2 -T "$SECONDS_RUN" -f "$script" 2>&1)"
  round_pg="$(echo "$pg_out" | awk '/^tps = / {printf "%.1f", $3; exit}')"
  [ -n "$round_pg" ] || { echo "$pg_out" >&2; echo "pgbench printed no tps" >&2; exit 1; }
  ours_out="$("$examples/ledger_bench" --writers "$WRITERS" --seconds "$SECONDS_RUN")"
  round_ours="$(echo "$ours_out" | awk -F= '/^result.appends_per_sec=/ {print $2}')"
  [ -n "$round_ours" ] || { echo "$ours_out" >&2; echo "ledger_bench printed no result" >&2; exit 1; }
  round_ratio="$(awk -v a="$round_ours" -v b="$round_pg" 'BEGIN { printf "%.3f", a / b }')"
  printf '    round %d: pgbench %10.0f INSERT/s   Analytics %10.0f appends/s   ratio %sx\n' \
    "$round" "$round_pg" "$round_ours" "$round_ratio" >&2
  pg_rates+=("$round_pg"); ours_rates+=("$round_ours"); ratios+=("$round_ratio")
done
rm -f "$script"
pg_tps="$(printf '%.1f' "$(median "${pg_rates[@]}")")"
ours="$(printf '%.1f' "$(median "${ours_rates[@]}")")"
append_ratio="$(median "${ratios[@]}")"
append_rounds="$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { printf "min %.3fx, max %.3fx", v[1], v[NR] }')"
fi

proofs=""
if section proofs; then
echo "### 2. proofs on a 1,000,000-leaf ledger" >&2
proofs="$(cargo bench -p soma-ledger --bench proofs 2>/dev/null)"
echo "$proofs" >&2
fi

export_rate="-"; export_growth="-"; raw_rate="-"; export_spread=""
if section export; then
echo "### 3. signed export of $EXPORT_ROWS billing events vs a plain SELECT of the same rows, $EXPORT_ROUNDS rounds" >&2
export_out="$("$examples/export_bench" --rows "$EXPORT_ROWS" --writers 256 --rounds "$EXPORT_ROUNDS")"
echo "$export_out" >&2
field() { echo "$export_out" | awk -F= -v k="result.$1" '$1 == k {print $2}'; }
export_rate="$(field export_rows_per_sec)"
export_growth="$(field export_rss_growth_mb)"
raw_rate="$(field raw_rows_per_sec)"
export_spread="$(field export_rows_per_sec_rounds) / $(field raw_rows_per_sec_rounds) / $(field export_over_raw_rounds)"
fi

echo
echo "== SomaStack Analytics benchmark summary ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ))"
printf '| %-52s | %12s | %12s | %10s | %-22s |\n' measurement baseline analytics ratio target
printf '| %-52s | %12s | %12s | %10s | %-22s |\n' "durable appends/s, PostgreSQL, $WRITERS writers" "$pg_tps" "$ours" \
  "$([ "$append_ratio" = - ] && echo - || echo "${append_ratio}x")" ">= 1.0x"
echo "   baseline: pgbench, one single-row INSERT per transaction, same server, same run"
[ -z "$append_rounds" ] || {
  echo "   appends: $APPEND_ROUNDS rounds alternating pgbench and Analytics; ratio = median of the per-round ratios (${ratios[*]}), spread $append_rounds"
  echo "   per round: pgbench ${pg_rates[*]} /s, Analytics ${ours_rates[*]} /s (medians shown above)"
}
echo "$proofs" | grep -E "inclusion proof, latest|inclusion verify, latest|consistency proof|consistency verify" | sed 's/^/   /'
printf '| %-52s | %12s | %12s | %10s | %-22s |\n' "signed export rows/s, $EXPORT_ROWS rows, PostgreSQL" "$raw_rate" "$export_rate" \
  "$(awk -v a="$export_rate" -v b="$raw_rate" 'BEGIN { if (b > 0) printf "%.3fx", a / b; else print "-" }')" ">= 250000/s"
printf '| %-52s | %12s | %12s | %10s | %-22s |\n' "peak RSS growth during that export, MB" "-" "$export_growth" "-" "<= 50 MB"
echo "   baseline: SELECT * FROM billing_events WHERE tenant = \$1 ORDER BY occurred_at, ledger_index, sqlx fetch, same rows, same run"
[ -z "$export_spread" ] || echo "   export rounds (export rows/s / raw rows/s / ratio): $export_spread; RSS growth per round: $(field export_rss_growth_mb_rounds) MB"

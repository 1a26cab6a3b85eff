#!/usr/bin/env bash
# Scheduled failover drills (the seed's schedule_dr_drill): a thin wrapper
# over `soma drill schedule` (persists the schedule in DIR/drills/schedule.json)
# and, with `run` as its first argument, `soma drill scheduler` (runs the
# drills when they are due, each recorded in Analytics).
#
#   scripts/ops/schedule_dr_drill.sh --data-dir DIR --every 24h \
#       --target postgres --ha-dir HA_DIR --plan scripts/ops/dr_failover_drill.plan.json
#   scripts/ops/schedule_dr_drill.sh --data-dir DIR --list
#   scripts/ops/schedule_dr_drill.sh --data-dir DIR --remove ID
#   scripts/ops/schedule_dr_drill.sh run --data-dir DIR [--once]
#
# SOMA (default: target/release/soma, else target/debug/soma) names the binary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${SOMA:-}" ]; then
  if [ -x "$ROOT/target/release/soma" ]; then
    SOMA="$ROOT/target/release/soma"
  else
    SOMA="$ROOT/target/debug/soma"
  fi
fi
if [ "${1:-}" = run ]; then
  shift
  exec "$SOMA" drill scheduler "$@"
fi
exec "$SOMA" drill schedule "$@"

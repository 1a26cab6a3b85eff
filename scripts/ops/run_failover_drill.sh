#!/usr/bin/env bash
# A failover drill against a running stack (`soma up --database-url` on the
# HA stack of scripts/ops/ha-up.sh): a thin wrapper over `soma drill run`.
#
#   scripts/ops/run_failover_drill.sh --data-dir DIR --target postgres|analytics|both \
#       [--ha-dir HA_DIR] [--rto-target 15s] [--rpo-target 0]
#       [--plan scripts/ops/dr_failover_drill.plan.json | --capsule dr_failover_drill --environment production]
#       [--dry-run]
#
# With --capsule, the plan is the installed capsule's (reviewed and
# installed through CapsuleRepo: scripts/ops/schedule_dr_drill.sh import,
# docs/runbooks/drill-plan.md), resolved through the edge before anything
# is touched; exit 3 not installed, 4 its release revoked, 5 its run
# refused, 6 its plan refused by the plan's checks.
#
# Drives a steady write load through the JSON edge, kills the target with
# SIGKILL, waits for recovery, prints a progress line per step on standard
# error, records the drill in Analytics (/v1/drills/disaster) and prints
# `rto_seconds=<float> rpo_events=<int>` as its last line. Exit 0 only when
# both targets hold. SOMA (default: target/release/soma, else
# target/debug/soma) names the binary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${SOMA:-}" ]; then
  if [ -x "$ROOT/target/release/soma" ]; then
    SOMA="$ROOT/target/release/soma"
  else
    SOMA="$ROOT/target/debug/soma"
  fi
fi
exec "$SOMA" drill run "$@"

#!/usr/bin/env bash
# A failover drill against a running stack (`soma up --database-url` on the
# HA stack of scripts/ops/ha-up.sh): a thin wrapper over `soma drill run`.
#
#   scripts/ops/run_failover_drill.sh --data-dir DIR --target postgres|analytics|both \
#       [--ha-dir HA_DIR] [--rto-target 15s] [--rpo-target 0]
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

#!/usr/bin/env bash
# Performance of the gateway's edge (crates/soma/examples/edge_bench.rs),
# each figure against a baseline measured in the same run:
#
#   1. latency of GET /v1/ledger/checkpoint through the edge (HS256 token,
#      residency, capability, transcoding, signed claims envelope, mTLS hop
#      to Analytics) at a fixed rate, open loop, vs a direct mTLS gRPC
#      LedgerCheckpoint to the same Analytics carrying the gateway's
#      envelope; rounds alternate edge and direct; the p50 ratio is the
#      median of the per-round ratios (target <= 1.25x);
#      beside it, a reference: the same client's GET to a bare HTTP server
#      on its own thread (the loopback round trip that any edge adds);
#   2. the edge's CPU per request, closed loop: valid tokens vs hostile ones
#      (alg none, bad signature, expired, unknown kid, garbage), each as a
#      ratio to valid (target <= 1.0x).
#
# Targets are printed next to the measurements and never asserted: the exit
# status is 0 when the measurements ran, whatever they show.
#
# Environment (optional): BENCH_RATE (1000), BENCH_SECONDS (10),
# BENCH_WARMUP_SECONDS (3), BENCH_ROUNDS (3), BENCH_REQUESTS (20000),
# BENCH_CPU_ROUNDS (3), BENCH_EDGE_PROTOCOL (http1: HTTP/1.1 keep-alive, or
# h2c: HTTP/2 with prior knowledge on one connection).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

RATE="${BENCH_RATE:-1000}"
SECONDS_OPEN="${BENCH_SECONDS:-10}"
WARMUP_SECONDS="${BENCH_WARMUP_SECONDS:-3}"
ROUNDS="${BENCH_ROUNDS:-3}"
REQUESTS="${BENCH_REQUESTS:-20000}"
CPU_ROUNDS="${BENCH_CPU_ROUNDS:-3}"
PROTOCOL="${BENCH_EDGE_PROTOCOL:-http1}"

log() { printf '\n### %s\n' "$*" >&2; }

# --- tools ------------------------------------------------------------------
missing=()
command -v getconf >/dev/null 2>&1 || missing+=(libc-bin)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}"
fi

# --- build --------------------------------------------------------------------
log "cargo build --release -p soma --example edge_bench"
cargo build --release -p soma --example edge_bench
EXAMPLES="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples"

WORK="$(mktemp -d -t soma-bench-edge.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# Value of `result.KEY=VALUE` in FILE.
result() { sed -n "s/^result\.$2=//p" "$1"; }

# --- run ------------------------------------------------------------------------
log "edge vs direct mTLS call (examples/edge_bench, $PROTOCOL)"
"$EXAMPLES/edge_bench" --rate "$RATE" --seconds "$SECONDS_OPEN" --warmup-seconds "$WARMUP_SECONDS" \
    --rounds "$ROUNDS" --requests "$REQUESTS" --cpu-rounds "$CPU_ROUNDS" --protocol "$PROTOCOL" \
    | tee "$WORK/edge.txt"

# --- summary ------------------------------------------------------------------------
E="$WORK/edge.txt"
row() { printf '| %-44s | %14s | %14s | %14s | %-10s |\n' "$@"; }
rule() { printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..16})" \
    "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..12})"; }

echo
echo "== SomaStack edge benchmark summary ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ))"
echo "   baselines measured in the same run; targets are printed, not asserted (us = microseconds)"
echo
row "measurement" "baseline" "edge" "edge vs base" "target"
rule
row "latency p50 @ ${RATE}/s open loop ($(result "$E" protocol))" "$(result "$E" p50_us_direct) us" \
    "$(result "$E" p50_us_edge) us" "$(result "$E" p50_ratio)x" "<= $(result "$E" p50_ratio_target)x"
row "latency p99 @ ${RATE}/s open loop" "$(result "$E" p99_us_direct) us" "$(result "$E" p99_us_edge) us" \
    "$(result "$E" p99_ratio)x" "-"
row "edge p50 - direct p50 vs one bare HTTP hop p50" "$(result "$E" p50_us_hop) us" \
    "$(result "$E" p50_us_edge_minus_direct) us" "-" "reference"
for kind in alg_none bad_signature expired unknown_kid garbage; do
    row "edge CPU per request, $kind token" "$(result "$E" cpu_us_valid) us" "$(result "$E" "cpu_us_$kind") us" \
        "$(result "$E" "cpu_ratio_$kind")x" "<= $(result "$E" cpu_ratio_target)x"
done
echo
echo "   latency rows: baseline = direct mTLS gRPC LedgerCheckpoint to the same Analytics with the gateway's"
echo "   signed claims envelope; edge = GET /v1/ledger/checkpoint with a valid HS256 token (ledger:read);"
echo "   medians of $ROUNDS alternating rounds x $SECONDS_OPEN s; the ratio is the median of per-round ratios."
echo "   hop row: what the edge adds over the direct call, beside the p50 of the same client's GET to a bare"
echo "   HTTP server on its own thread (no admission, no forwarding): the loopback round trip alone."
echo "   CPU rows: baseline = the edge's CPU per request admitting a valid token (forwarded and answered);"
echo "   utime+stime of the edge runtime's threads, median of $CPU_ROUNDS rounds x $REQUESTS requests per kind."
echo "   Analytics authorized $(result "$E" backend_valid) of $(result "$E" backend_valid_sent) valid requests" \
    "and $(result "$E" backend_hostile) hostile ones."

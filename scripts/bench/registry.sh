#!/usr/bin/env bash
# Performance benchmarks of the tool registry, the four figures of its issue:
#
#   1. server CPU per call of ExecuteTool against an Analytics read of
#      similar size (InclusionProof), both through the mesh runtime
#      (crates/soma/examples/registry_bench.rs, part 1; target <= 1.5x);
#   2. executions/s sustained with the billing outbox draining into a real
#      Analytics in a process of its own: achieved rate, latency, outbox
#      backlog, the registry process's RSS flat within 10 % (Analytics'
#      RSS, which grows with its ledger by design, sampled beside it),
#      every execution billed (registry_bench, part 2);
#   3. the sandbox's instantiate + run against wasmtime's own on the same
#      module (cargo bench -p soma-sandbox; target <= 1.3x and <= 50 us);
#   4. release verification against the raw primitives
#      (cargo bench -p soma-release; target <= 1.15x).
#
# Targets are printed next to the measurements and never asserted: the exit
# status is 0 when the measurements ran, whatever they show. registry_bench
# itself fails when a call failed or Analytics does not hold exactly the
# executions made (then its figures would describe something else), and so
# does this script.
#
# Environment (optional): BENCH_REQUESTS (5000), BENCH_ROUNDS (3),
# BENCH_WARMUP (500), BENCH_EVENTS (300), BENCH_RATE (1000),
# BENCH_SECONDS (60), BENCH_RSS_WARMUP (5).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

REQUESTS="${BENCH_REQUESTS:-5000}"
ROUNDS="${BENCH_ROUNDS:-3}"
WARMUP="${BENCH_WARMUP:-500}"
EVENTS="${BENCH_EVENTS:-300}"
RATE="${BENCH_RATE:-1000}"
SECONDS_LOAD="${BENCH_SECONDS:-60}"
RSS_WARMUP="${BENCH_RSS_WARMUP:-5}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

log() { printf '\n### %s\n' "$*" >&2; }

missing=()
command -v getconf >/dev/null 2>&1 || missing+=(libc-bin)
command -v awk >/dev/null 2>&1 || missing+=(gawk)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}"
fi

WORK="$(mktemp -d -t soma-bench-registry.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

LOAD_BEFORE="$(uptime)"

# --- build ------------------------------------------------------------------
log "cargo build --release -p soma --example registry_bench"
cargo build --release -p soma --example registry_bench

# --- 1 + 2. registry_bench ---------------------------------------------------
log "1 + 2. ExecuteTool CPU vs InclusionProof; ${RATE}/s for ${SECONDS_LOAD} s (examples/registry_bench)"
"$TARGET_DIR/release/examples/registry_bench" \
    --requests "$REQUESTS" --rounds "$ROUNDS" --warmup "$WARMUP" --events "$EVENTS" \
    --rate "$RATE" --seconds "$SECONDS_LOAD" --rss-warmup "$RSS_WARMUP" \
    | tee "$WORK/registry.txt"
LOAD_AFTER_REGISTRY="$(uptime)"

# --- 3. sandbox ----------------------------------------------------------------
log "3. cargo bench -p soma-sandbox (Sandbox::run vs wasmtime InstancePre)"
cargo bench -p soma-sandbox --bench sandbox | tee "$WORK/sandbox.txt"

# --- 4. release verification -------------------------------------------------------
log "4. cargo bench -p soma-release (verify vs raw primitives)"
cargo bench -p soma-release --bench verify | tee "$WORK/release.txt"
LOAD_AFTER="$(uptime)"

# --- summary --------------------------------------------------------------------------
R="$WORK/registry.txt"
# Value of `result.KEY=VALUE` in the registry_bench output.
result() { sed -n "s/^result\.$1=//p" "$R"; }
# The number after `p50` on the first line of FILE matching PATTERN.
p50_of() { grep -m1 -- "$2" "$1" | sed -E 's/.*p50 +([0-9.]+).*/\1/'; }

SANDBOX_P50="$(p50_of "$WORK/sandbox.txt" '^(a) Sandbox::run')"
WASMTIME_P50="$(p50_of "$WORK/sandbox.txt" '^(b) wasmtime')"
SANDBOX_RATIO="$(sed -nE 's/^ratio \(a\)\/\(b\) of p50s: ([0-9.]+).*/\1/p' "$WORK/sandbox.txt")"
VERIFY_P50="$(p50_of "$WORK/release.txt" 'soma_release::verify')"
RAW_P50="$(p50_of "$WORK/release.txt" 'raw primitives')"
VERIFY_RATIO="$(sed -nE 's/^ +ratio ([0-9.]+) \(target.*/\1/p' "$WORK/release.txt")"

row() { printf '| %-46s | %-34s | %-16s |\n' "$@"; }
rule() { printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..48})" "$(printf -- '-%.0s' {1..36})" "$(printf -- '-%.0s' {1..18})"; }

echo
echo "== SomaStack tool registry benchmark summary ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ))"
echo "   targets are printed, not asserted (us = microseconds)"
echo "   load before: ${LOAD_BEFORE#*load average: }; after registry_bench: ${LOAD_AFTER_REGISTRY#*load average: };" \
    "at the end: ${LOAD_AFTER#*load average: }"
echo
row "measurement" "value" "target"
rule
row "1. server CPU per call: ExecuteTool" "$(result execute_cpu_us) us" "-"
row "   InclusionProof (Analytics read)" "$(result proof_cpu_us) us" "-"
row "   ratio ExecuteTool / InclusionProof" "$(result cpu_ratio)x" "<= $(result cpu_ratio_target)x"
row "   ratio, runtime threads only (no SQLite)" "$(result cpu_ratio_runtime)x" "-"
row "   sandbox epoch ticker (not in the ratio)" "$(result epoch_cpu_us_per_execute) us/call, $(result epoch_core_pct) % core" "-"
row "   ratio with the epoch ticker" "$(result cpu_ratio_with_epoch)x" "-"
row "2. ExecuteTool open loop, launched" "$(result load_launched_rate) /s for $(result load_seconds) s" ">= $(result load_rate_target) /s"
row "   answered" "$(result load_completed_rate) /s ($(result load_failures) failed)" ">= $(result load_rate_target) /s"
row "   latency p50 / p99" "$(result load_p50_us) / $(result load_p99_us) us" "-"
row "   outbox backlog max (oldest)" "$(result backlog_max) ($(result backlog_max_age_ms) ms)" "bounded"
row "   outbox backlog at load end, drained in" "$(result backlog_at_load_end), $(result backlog_drained_s) s" "-> 0"
row "   registry RSS after $(result rss_warmup_s) s, then min/max/last" \
    "$(result rss_base_mb) MB, $(result rss_min_mb) / $(result rss_max_mb) / $(result rss_last_mb)" "-"
row "   registry RSS max deviation" "$(result rss_dev_pct) %" "within +-$(result rss_dev_target_pct) %"
row "   Analytics RSS after $(result rss_warmup_s) s, then min/max/last" \
    "$(result analytics_rss_base_mb) MB, $(result analytics_rss_min_mb) / $(result analytics_rss_max_mb) / $(result analytics_rss_last_mb)" "-"
row "   Analytics RSS deviation (grows by design)" "$(result analytics_rss_dev_pct) %" "-"
row "   billing events in Analytics / executions" "$(result billing_events) / $(result billing_expected)" "equal"
row "3. sandbox run p50 (cached module)" "${SANDBOX_P50:-?} us (wasmtime ${WASMTIME_P50:-?} us)" "<= 50 us"
row "   ratio sandbox / wasmtime" "${SANDBOX_RATIO:-?}x" "<= 1.3x"
row "4. release verify p50 (2 KB manifest)" "${VERIFY_P50:-?} us (raw ${RAW_P50:-?} us)" "-"
row "   ratio verify / raw primitives" "${VERIFY_RATIO:-?}x" "<= 1.15x"
echo
echo "   1: median of $ROUNDS alternating rounds x $REQUESTS closed-loop calls per server; server CPU = utime+stime"
echo "      of the server's runtime thread and blocking pool (where the adapter runs), its SQLite connection"
echo "      threads and (Analytics) its ledger writer; both calls as the gateway with signed tenant claims;"
echo "      ExecuteTool request/response $(result execute_request_bytes)/$(result execute_response_bytes) B," \
    "InclusionProof $(result proof_request_bytes)/$(result proof_response_bytes) B (protobuf)."
echo "   2: one call launched every 1/${RATE} s on its own task over one connection; the registry's outbox"
echo "      delivers over mTLS to Analytics, served by a child process; every second the backlog, the VmRSS"
echo "      of the registry's process (its server thread and the client) and that of the Analytics process."

#!/usr/bin/env bash
# What observability costs the mesh runtime, each figure against a baseline
# measured in the same run (crates/soma/examples/observability_bench.rs):
#
#   1. metrics on, traces sampled at 0 % (OTEL_TRACES_SAMPLER=always_off,
#      exporting to a live OTLP receiver): server CPU per call against the
#      same runtime with metrics off (SOMA_METRICS=off), alternating rounds;
#      and the time of a /metrics scrape of the server under load;
#   2. the same with every trace sampled and exported (always_on): the cost,
#      printed.
#
# The OTLP receiver is the real one of the test suite
# (crates/soma/tests/interop/otlp_receiver.py: opentelemetry-proto + grpcio,
# from the suite's virtualenv). Targets are printed, never asserted.
# Environment: BENCH_REQUESTS (20000), BENCH_ROUNDS (3), SOMA_PYTHON.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
REQUESTS="${BENCH_REQUESTS:-20000}"
ROUNDS="${BENCH_ROUNDS:-3}"
PYTHON="${SOMA_PYTHON:-$ROOT/.venv/bin/python}"
if ! "$PYTHON" -c 'import grpc, opentelemetry.proto' 2>/dev/null; then
  [ -x "$ROOT/.venv/bin/python" ] || python3 -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/pip" install --quiet -r scripts/requirements-interop.txt
  PYTHON="$ROOT/.venv/bin/python"
fi

echo "### building (release)" >&2
cargo build --release -p soma --example observability_bench >&2
bench="${CARGO_TARGET_DIR:-target}/release/examples/observability_bench"

out="$(mktemp)"
"$PYTHON" crates/soma/tests/interop/otlp_receiver.py >"$out" &
receiver=$!
trap 'kill $receiver 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 1 100); do grep -q '^listening ' "$out" && break; sleep 0.1; done
port="$(awk '/^listening / {print $2; exit}' "$out")"
[ -n "$port" ] || { echo "the OTLP receiver did not start" >&2; exit 1; }

declare -A on off
for sampler in always_off always_on; do
  echo "### metrics on/off, traces $sampler, exporting to 127.0.0.1:$port" >&2
  result="$(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port" OTEL_TRACES_SAMPLER="$sampler" RUST_LOG=warn \
    "$bench" --requests "$REQUESTS" --rounds "$ROUNDS")"
  echo "$result"
  on[$sampler]="$(echo "$result" | awk -F= '/^result.cpu_us_on=/ {print $2}')"
  off[$sampler]="$(echo "$result" | awk -F= '/^result.cpu_us_off=/ {print $2}')"
done
echo "== the cost of sampling and exporting every trace (two consecutive runs, each against its own metrics-off rounds)"
awk -v a="${on[always_on]}" -v b="${off[always_on]}" -v c="${on[always_off]}" -v d="${off[always_off]}" 'BEGIN {
  printf "   CPU per call, metrics on: %.2f µs at 100 %% sampling, %.2f µs at 0 %%\n", a, c;
  printf "   100 %% / 0 %% sampling, each normalised by its own metrics-off rounds: %.3fx\n", (a / b) / (c / d) }'
echo "spans received by the OTLP receiver: $(($(wc -l <"$out") - 1))"

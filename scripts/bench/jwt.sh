#!/usr/bin/env bash
# Cost of the tenant JWT verifier (crates/auth/benches/jwt.rs), each figure
# against its target or baseline measured in the same run:
#
#   1. full `JwtVerifier::verify` of a valid HS256 token: target <= 2 us;
#   2. full verify of a valid EdDSA token against a raw ed25519-dalek
#      `VerifyingKey::verify` of the same signing input, measured right
#      before and right after it (the baseline is their mean): target <= 1.1x;
#   3. hostile tokens (alg none, bad signature, expired, unknown kid), each
#      as a ratio to the valid HS256 verify.
#
# Targets are printed next to the measurements and never asserted: the exit
# status is 0 when the measurements ran, whatever they show.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

cargo bench -p soma-auth --bench jwt

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
CRITERION="$TARGET_DIR/criterion/jwt"

# Median estimate of one benchmark, in nanoseconds.
median_ns() {
    local file="$CRITERION/$1/new/estimates.json"
    if [[ ! -f $file ]]; then
        echo "missing $file" >&2
        exit 1
    fi
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' "$file"
}

HS="$(median_ns hs256_valid)"
ED="$(median_ns eddsa_valid)"
RAW_BEFORE="$(median_ns dalek_raw_verify)"
RAW_AFTER="$(median_ns dalek_raw_verify_after)"
# The baseline brackets the EdDSA measurement: the mean of before and after.
RAW="$(awk -v a="$RAW_BEFORE" -v b="$RAW_AFTER" 'BEGIN { print (a + b) / 2 }')"

fmt_us() { awk -v n="$1" 'BEGIN { printf "%.3f us", n / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3fx", a / b }'; }
row() { printf '| %-34s | %12s | %12s | %-10s |\n' "$@"; }

echo
echo "== SomaStack JWT verifier benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ)); medians from criterion"
echo
row "measurement" "time" "ratio" "target"
row "----------------------------------" "------------" "------------" "----------"
row "verify HS256 (valid)" "$(fmt_us "$HS")" "$(ratio "$HS" 2000) target" "<= 2 us"
row "verify EdDSA (valid)" "$(fmt_us "$ED")" "$(ratio "$ED" "$RAW") raw" "<= 1.1x"
row "raw ed25519-dalek verify (baseline)" "$(fmt_us "$RAW")" "1.000x raw" "-"
row "  raw, measured before / after" "$(fmt_us "$RAW_BEFORE")" "$(fmt_us "$RAW_AFTER")" "-"
for name in alg_none bad_signature expired unknown_kid; do
    t="$(median_ns "hostile_$name")"
    row "hostile $name" "$(fmt_us "$t")" "$(ratio "$t" "$HS") hs256" "-"
done
echo
echo "   hostile ratios are against the valid HS256 verify (a refusal should cost no more than an acceptance);"
echo "   unknown_kid: a miss asks the key file's directory watch (one read of an empty inotify queue); the file is"
echo "   looked at only after its directory changed (rotation pickup), which it does not here."

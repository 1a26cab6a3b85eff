#!/usr/bin/env bash
# Scheduled failover drills (the seed's schedule_dr_drill): a thin wrapper
# over `soma drill schedule` (persists the schedule in DIR/drills/schedule.json)
# and, with `run` as its first argument, `soma drill scheduler` (runs the
# drills when they are due, each recorded in Analytics); with `import`, it
# imports the drill's plan as the capsule dr_failover_drill.
#
#   scripts/ops/schedule_dr_drill.sh --data-dir DIR --every 24h \
#       --target postgres --ha-dir HA_DIR --capsule dr_failover_drill --environment production
#   scripts/ops/schedule_dr_drill.sh --data-dir DIR --every 24h \
#       --target postgres --ha-dir HA_DIR --plan scripts/ops/dr_failover_drill.plan.json
#   scripts/ops/schedule_dr_drill.sh --data-dir DIR --list
#   scripts/ops/schedule_dr_drill.sh --data-dir DIR --remove ID
#   scripts/ops/schedule_dr_drill.sh run --data-dir DIR [--once]
#   scripts/ops/schedule_dr_drill.sh import --data-dir DIR [--region local] \
#       [--database-url URL] [--importer ops@drill] [--bundle scripts/ops/dr_failover_drill.capsule.json]
#
# `import` (needs curl and jq) brings the plan to where `soma drill run
# --capsule` finds it, as far as one person may take it:
#   1. the plan tool's release the bundle pins (drill-plan 1.0.0, the echo
#      module crates/sandbox/adapters/echo.wat with scripts/ops/drill-plan.manifest.json)
#      is published when the registry does not have it, signed by the
#      operator's publisher key DIR/secrets/ops-publisher/publisher.key
#      (created and registered as publisher `ops` when missing; with
#      PostgreSQL, --database-url is the server URL given to `soma up`);
#   2. the bundle is attested with the `ops` catalogue key `soma up` pins
#      (DIR/secrets/ops-catalogue.key) and imported (POST /v1/templates:import)
#      as the drill's tenant `drill`, by --importer;
#   3. it prints the submission id (`submission_id=ID`) and the commands that
#      follow: the review by a second person with a second factor (never the
#      importer), then the installation (docs/runbooks/drill-plan.md).
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
if [ "${1:-}" != import ]; then
  exec "$SOMA" drill schedule "$@"
fi
shift
# soma's own logs only when something is wrong: the output is the import's.
export RUST_LOG="${RUST_LOG:-warn}"

usage() {
  echo "schedule_dr_drill.sh import: $1" >&2
  exit 64
}
DATA=./data
REGION=local
DATABASE_URL_ARG=
IMPORTER=ops@drill
BUNDLE="$ROOT/scripts/ops/dr_failover_drill.capsule.json"
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA="${2:?--data-dir needs a value}"; shift 2 ;;
    --region) REGION="${2:?--region needs a value}"; shift 2 ;;
    --database-url) DATABASE_URL_ARG="${2:?--database-url needs a value}"; shift 2 ;;
    --importer) IMPORTER="${2:?--importer needs a value}"; shift 2 ;;
    --bundle) BUNDLE="${2:?--bundle needs a value}"; shift 2 ;;
    *) usage "unknown argument $1" ;;
  esac
done
# The registry's store is the data dir's unless --database-url names the
# server: an unrelated DATABASE_URL in the environment must not decide.
unset DATABASE_URL
# The drill runs as this tenant: the installation must be its own.
TENANT=drill
[ -f "$DATA/endpoints.json" ] || usage "$DATA/endpoints.json is missing (is soma up running on $DATA?)"
CATALOGUE_KEY="$DATA/secrets/ops-catalogue.key"
[ -f "$CATALOGUE_KEY" ] || usage "$CATALOGUE_KEY is missing (soma up creates it)"
[ -f "$BUNDLE" ] || usage "$BUNDLE is missing"
EDGE=$(jq -r .edge "$DATA/endpoints.json")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

TOOL=$(jq -r '.tools[0].tool' "$BUNDLE")
TOOL_VERSION=$(jq -r '.tools[0].version' "$BUNDLE")
READER=$("$SOMA" token --data-dir "$DATA" --tenant "$TENANT" --region "$REGION" --subject "$IMPORTER" --scope tools:read)
STATUS=$(curl -sS -o "$WORK/release.json" -w '%{http_code}' -H "authorization: Bearer $READER" \
  "$EDGE/v1/tools/$TOOL/releases/$TOOL_VERSION")
case "$STATUS" in
  200)
    echo "release $TOOL $TOOL_VERSION: published already" >&2
    ;;
  404)
    # The publisher key of the operator, registered once.
    PUBLISHER="$DATA/secrets/ops-publisher"
    if [ ! -f "$PUBLISHER/publisher.key" ]; then
      "$SOMA" release keygen --out "$PUBLISHER" >"$PUBLISHER.key-id.tmp"
      mv "$PUBLISHER.key-id.tmp" "$PUBLISHER/key-id"
    fi
    KEY_ID=$(cat "$PUBLISHER/key-id")
    STORE=(--data-dir "$DATA")
    if [ -n "$DATABASE_URL_ARG" ]; then
      # soma up's registry database on that server: soma_tool_registry.
      REGISTRY_URL=$(printf '%s' "$DATABASE_URL_ARG" | sed -E 's#^(postgres(ql)?://[^/?]*)(/[^?]*)?#\1/soma_tool_registry#')
      STORE+=(--database-url "$REGISTRY_URL")
    fi
    if ! "$SOMA" release publisher list "${STORE[@]}" | grep -q "$KEY_ID"; then
      "$SOMA" release publisher add "${STORE[@]}" --name ops --public-key "$PUBLISHER/publisher.pub" >&2
    fi
    cp "$ROOT/crates/sandbox/adapters/echo.wat" "$WORK/drill-plan.wat"
    "$SOMA" release sign --key "$PUBLISHER/publisher.key" --manifest "$ROOT/scripts/ops/drill-plan.manifest.json" \
      --module "$WORK/drill-plan.wat" --out "$WORK/release-envelope.json"
    PUBLISHER_TOKEN=$("$SOMA" token --data-dir "$DATA" --tenant "$TENANT" --region "$REGION" --subject "$IMPORTER" \
      --scope tools:publish --mfa)
    "$SOMA" release publish --data-dir "$DATA" --envelope "$WORK/release-envelope.json" --module "$WORK/drill-plan.wat" \
      --token "$PUBLISHER_TOKEN" >"$WORK/release.json"
    echo "release $TOOL $TOOL_VERSION: published" >&2
    ;;
  *)
    echo "schedule_dr_drill.sh import: reading release $TOOL $TOOL_VERSION: HTTP $STATUS: $(cat "$WORK/release.json")" >&2
    exit 1
    ;;
esac
# (A release that is not the module the bundle pins, or is revoked, makes
# CapsuleRepo refuse the import: release_digest_mismatch, release_revoked.)
"$SOMA" capsule attest --bundle "$BUNDLE" --key "$CATALOGUE_KEY" --out "$WORK/attestation.json"
IMPORTER_TOKEN=$("$SOMA" token --data-dir "$DATA" --tenant "$TENANT" --region "$REGION" --subject "$IMPORTER" \
  --scope "capsules:submit capsules:read")
"$SOMA" capsule import --edge "$EDGE" --token "$IMPORTER_TOKEN" --template "$(jq -r .name "$BUNDLE")" --catalogue ops \
  --bundle "$BUNDLE" --envelope "$WORK/attestation.json" >"$WORK/submission.json"
SUBMISSION=$(jq -r .submissionId "$WORK/submission.json")
NAME=$(jq -r .name "$BUNDLE")
VERSION=$(jq -r .version "$BUNDLE")
cat <<NEXT
imported $NAME $VERSION for tenant $TENANT: submission $SUBMISSION, pending review (submitter $IMPORTER)
Next, by another person than $IMPORTER, with a second factor (docs/runbooks/drill-plan.md, sections 1 to 3):
  export SOMA_DATA=$DATA REGION=$REGION SUBMISSION=$SUBMISSION ENVIRONMENT=production REVIEWER=<you>@$TENANT
1. review: read the plan, then start the review and approve it
  REVIEW=\$(soma token --data-dir "\$SOMA_DATA" --tenant $TENANT --region "\$REGION" --subject "\$REVIEWER" --scope "capsules:review capsules:read" --mfa)
  curl -fsS -H "authorization: Bearer \$REVIEW" "$EDGE/v1/submissions/\$SUBMISSION" | jq -r .bundle | base64 --decode | jq .parameters
  curl -fsS -X POST -H "authorization: Bearer \$REVIEW" -H 'content-type: application/json' "$EDGE/v1/submissions/\$SUBMISSION:review" -d '{"decision": "REVIEW_DECISION_START_REVIEW"}'
  curl -fsS -X POST -H "authorization: Bearer \$REVIEW" -H 'content-type: application/json' "$EDGE/v1/submissions/\$SUBMISSION:review" -d '{"decision": "REVIEW_DECISION_APPROVE"}'
2. install it in \$ENVIRONMENT (a new installation, or the next revision of the one there): the runbook's section 2
3. check the plan the next drill follows:
  soma drill run --data-dir "\$SOMA_DATA" --region "\$REGION" --target postgres --capsule $NAME --environment "\$ENVIRONMENT" --dry-run
Then schedule drills that follow the installed plan (each run resolves the revision installed then):
  scripts/ops/schedule_dr_drill.sh --data-dir $DATA --every 24h --target postgres --ha-dir HA_DIR --capsule $NAME --environment production
submission_id=$SUBMISSION
NEXT

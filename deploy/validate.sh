#!/usr/bin/env bash
# Offline validation of the SomaStack Kubernetes manifests under deploy/.
#
#   deploy/validate.sh              creates its own virtualenv in a temp dir
#   VENV=/path/to/venv deploy/validate.sh
#                                   uses that virtualenv (kubernetes-validate is
#                                   installed into it when missing)
#   K8S_VERSION=1.31.0 deploy/validate.sh
#                                   validates against that Kubernetes version
#                                   instead of kubernetes-validate's default
#
# 1. Every plain Kubernetes manifest is checked with
#      kubernetes-validate --strict FILE
#    (schemas bundled with the tool, unknown fields rejected). A kind without
#    a bundled schema fails here: plain manifests must use built-in kinds only.
#    Skipped, and said so: kustomization.yaml files (kustomize input, not
#    Kubernetes objects), files made only of custom resources (no schema is
#    bundled for them; they need their CRD in the cluster), and
#    observability/ (Prometheus configuration, alert rules and their unit
#    tests: promtool checks them in crates/soma/tests/observability.rs).
# 2. The SPIRE trust domain and cluster name agree across server.conf,
#    agent.conf and the spire-controller-manager configuration.
# 3. When kubectl or kustomize is on PATH, `kustomize build deploy/` is rendered
#    and the result validated the same way (custom resources excepted).
#
# Exits non-zero on any failure.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# API groups of custom resources used here; their schemas are not bundled.
CUSTOM_GROUPS="spire.spiffe.io"

if [[ -n "${VENV:-}" ]]; then
    venv="$VENV"
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
else
    venv="$WORK/venv"
    python3 -m venv "$venv"
fi
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate
fi
validator=("$venv/bin/kubernetes-validate" --strict)
if [[ -n "${K8S_VERSION:-}" ]]; then
    validator+=(--kubernetes-version "$K8S_VERSION")
fi

# Classifies each YAML file: "validate<TAB>path" or "skip<TAB>path<TAB>reason".
# PyYAML comes with kubernetes-validate.
classify() {
    "$venv/bin/python" - "$DEPLOY_DIR" "$CUSTOM_GROUPS" <<'PY'
import os
import sys

import yaml

root, custom = sys.argv[1], set(sys.argv[2].split())
status = 0
paths = []
for d, _, files in os.walk(root):
    paths += [os.path.join(d, f) for f in files if f.endswith((".yaml", ".yml"))]
for path in sorted(paths):
    rel = os.path.relpath(path, root)
    if os.path.basename(path) in ("kustomization.yaml", "kustomization.yml"):
        print(f"skip\t{rel}\tkustomization: kustomize input, not a Kubernetes object")
        continue
    if rel.startswith("observability" + os.sep):
        print(f"skip\t{rel}\tPrometheus configuration and rules: checked with promtool by the test suite")
        continue
    with open(path, encoding="utf-8") as f:
        docs = [doc for doc in yaml.safe_load_all(f) if doc is not None]
    groups = {str(doc.get("apiVersion", "")).rpartition("/")[0] for doc in docs}
    if docs and groups <= custom:
        kinds = ", ".join(sorted({str(doc.get("kind")) for doc in docs}))
        print(f"skip\t{rel}\tcustom resources ({kinds}, {', '.join(sorted(groups))}): "
              "no bundled schema, needs the CRD installed")
    elif groups & custom:
        print(f"mixed\t{rel}\tmixes custom resources with built-in kinds: keep them in separate files")
        status = 1
    else:
        print(f"validate\t{rel}")
sys.exit(status)
PY
}

failures=0
validated=0
skipped=0

# Runs the validator on one input; fails on an error or on a kind it has no
# schema for (unless that kind belongs to a custom resource group).
run_validator() {
    local label="$1" input="$2" allow_custom="$3" out rc=0
    out="$("${validator[@]}" "$input" 2>&1)" || rc=$?
    printf '%s\n' "$out" | sed "s|$input|$label|"
    if [[ $rc -ne 0 ]]; then
        return 1
    fi
    local missing
    missing="$(printf '%s\n' "$out" | grep "Couldn't find schema" || true)"
    if [[ -n "$missing" && "$allow_custom" == "yes" ]]; then
        local group
        for group in $CUSTOM_GROUPS; do
            missing="$(printf '%s\n' "$missing" | grep -v "api version $group/" || true)"
        done
    fi
    if [[ -n "$missing" ]]; then
        echo "FAIL $label: kind without a schema in a plain manifest"
        return 1
    fi
    return 0
}

echo "== kubernetes-validate --strict, file by file"
classification="$(classify)" || { printf '%s\n' "$classification" | grep '^mixed' >&2; failures=$((failures + 1)); }
while IFS=$'\t' read -r action rel reason; do
    case "$action" in
        validate)
            validated=$((validated + 1))
            run_validator "$rel" "$DEPLOY_DIR/$rel" no || failures=$((failures + 1))
            ;;
        skip)
            skipped=$((skipped + 1))
            echo "SKIP $rel: $reason"
            ;;
        mixed)
            echo "FAIL $rel: $reason"
            ;;
    esac
done <<< "$classification"

echo "== SPIRE names agree across configurations"
if ! "$venv/bin/python" - "$DEPLOY_DIR" <<'PY'
import re
import sys

import yaml

root = sys.argv[1]

def docs(path):
    with open(f"{root}/{path}", encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]

def configmap(path, name, key):
    for d in docs(path):
        if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == name:
            return d["data"][key]
    raise SystemExit(f"FAIL {path}: ConfigMap {name} with key {key} not found")

def one(pattern, text, where):
    found = re.findall(pattern, text, re.MULTILINE)
    if len(found) != 1:
        raise SystemExit(f"FAIL {where}: expected one match of {pattern!r}, found {found}")
    return found[0]

server = configmap("spire/server.yaml", "spire-server", "server.conf")
agent = configmap("spire/agent.yaml", "spire-agent", "agent.conf")
manager = yaml.safe_load(configmap("spire/server.yaml", "spire-controller-manager", "controller-manager.yaml"))
trust = {
    "server.conf": one(r'^\s*trust_domain\s*=\s*"([^"]+)"', server, "server.conf"),
    "agent.conf": one(r'^\s*trust_domain\s*=\s*"([^"]+)"', agent, "agent.conf"),
    "controller-manager.yaml": manager["trustDomain"],
}
cluster = {
    "server.conf (k8s_psat clusters)": one(r'^\s*"([^"]+)"\s*=\s*\{', server, "server.conf"),
    "agent.conf (k8s_psat cluster)": one(r'^\s*cluster\s*=\s*"([^"]+)"', agent, "agent.conf"),
    "controller-manager.yaml": manager["clusterName"],
}
bad = False
for what, values in (("trust domain", trust), ("cluster name", cluster)):
    if len(set(values.values())) != 1:
        print(f"FAIL {what} differs: {values}")
        bad = True
    else:
        print(f"ok   {what}: {next(iter(values.values()))}")
sys.exit(1 if bad else 0)
PY
then
    failures=$((failures + 1))
fi

echo "== kustomize build deploy/"
render=()
if command -v kubectl >/dev/null 2>&1; then
    render=(kubectl kustomize "$DEPLOY_DIR")
elif command -v kustomize >/dev/null 2>&1; then
    render=(kustomize build "$DEPLOY_DIR")
fi
if [[ ${#render[@]} -eq 0 ]]; then
    echo "SKIP rendered output: neither kubectl nor kustomize is on PATH"
elif ! "${render[@]}" > "$WORK/rendered.yaml"; then
    echo "FAIL kustomize build deploy/"
    failures=$((failures + 1))
else
    run_validator "kustomize build deploy/" "$WORK/rendered.yaml" yes || failures=$((failures + 1))
fi

echo "== summary: $validated file(s) validated, $skipped skipped, $failures failure(s)"
if [[ $failures -ne 0 ]]; then
    exit 1
fi

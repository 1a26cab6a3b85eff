#!/usr/bin/env bash
# The whole SomaStack test suite, on a fresh machine: a Python venv with the
# independent interop clients, PostgreSQL reachable (started if it is down),
# DATABASE_URL set so the storage tests run on SQLite and on PostgreSQL,
# then every Rust test of the workspace.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Python interop clients: grpcio (an independent gRPC + TLS stack), PyJWT and
# jwcrypto (independent JWT minting), schemathesis (OpenAPI fuzzing), grpcurl.
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import grpc, grpc_health.v1, grpc_reflection.v1alpha, spiffe, cryptography, rfc8785, jwt, jwcrypto, openapi_spec_validator, securesystemslib, in_toto, opentelemetry.proto.collector.trace.v1' 2>/dev/null \
  || [ ! -x "$venv/bin/grpcurl" ] || [ ! -x "$venv/bin/schemathesis" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/scripts/requirements-interop.txt"
fi
export SOMA_PYTHON="$venv/bin/python"

# Prometheus and promtool (Debian's prometheus): the observability tests
# scrape a live stack with a real server and lint every /metrics.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi

# Patroni, etcd and HAProxy (Debian's): the failover tests start the HA
# stack of scripts/ops/ha-up.sh on loopback ports.
if ! command -v patroni >/dev/null || ! command -v etcd >/dev/null || ! command -v haproxy >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patroni etcd-server haproxy >/dev/null
fi

# PostgreSQL.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

cargo test --workspace --all-targets "$@"

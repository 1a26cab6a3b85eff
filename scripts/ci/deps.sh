#!/usr/bin/env bash
# Dependency scanning, offline: the workspace's crate graph against the
# RustSec snapshot in ../shared/advisory-db (or SOMA_ADVISORY_DB), licences
# against deny.toml's allow-list, sources limited to crates.io.
#
# First a canary: a throwaway project that depends on a crate version with
# a known advisory (rsa 0.9.10, RUSTSEC-2023-0071) must be refused by the
# same scanner and database — so an empty or unreadable database can never
# pass the real scan. Exit non-zero on any finding.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
SNAPSHOT="${SOMA_ADVISORY_DB:-$ROOT/../shared/advisory-db}"
[ -d "$SNAPSHOT/crates" ] || { echo "deps: no advisory snapshot at $SNAPSHOT" >&2; exit 2; }

if ! command -v cargo-deny >/dev/null; then
  echo "deps: installing cargo-deny" >&2
  cargo install cargo-deny --locked --version 0.20.2
fi

# cargo-deny reads the database from a git checkout named after its URL.
DB_ROOT="$ROOT/target/advisory-dbs"
DB="$DB_ROOT/advisory-db-3157b0e258782691"
rm -rf "$DB"
mkdir -p "$DB"
cp -R "$SNAPSHOT/." "$DB/"
(
  cd "$DB"
  git init -q
  git add -A
  git -c user.name=soma -c user.email=soma@localhost -c commit.gpgsign=false commit -qm "advisory-db snapshot"
)
echo "deps: $(find "$DB/crates" -name 'RUSTSEC-*.md' | wc -l) advisories in the snapshot" >&2

# The canary.
CANARY="$(mktemp -d -t soma-deps-canary.XXXXXX)"
trap 'rm -rf "$CANARY"' EXIT
mkdir -p "$CANARY/src"
cat >"$CANARY/Cargo.toml" <<'TOML'
[package]
name = "soma-deps-canary"
version = "0.0.0"
edition = "2021"
publish = false
license = "Apache-2.0"

[dependencies]
rsa = { version = "=0.9.10", default-features = false }
TOML
echo "" >"$CANARY/src/lib.rs"
sed "s#^db-path = .*#db-path = \"$DB_ROOT\"#" deny.toml >"$CANARY/deny.toml"
# Its crates from crates.io (the registry is reachable; the scan itself then
# runs offline).
(cd "$CANARY" && cargo fetch -q)
if (cd "$CANARY" && cargo deny --offline --config deny.toml check advisories) >"$CANARY/out.txt" 2>&1; then
  cat "$CANARY/out.txt" >&2
  echo "deps: the canary (rsa 0.9.10) passed the advisory scan: the database is not being read" >&2
  exit 1
fi
grep -q "RUSTSEC-2023-0071" "$CANARY/out.txt" || {
  cat "$CANARY/out.txt" >&2
  echo "deps: the canary failed, but not for RUSTSEC-2023-0071" >&2
  exit 1
}
echo "deps: canary refused for RUSTSEC-2023-0071, as it must be" >&2

# The workspace.
cargo deny --offline --locked --config deny.toml check advisories licenses sources

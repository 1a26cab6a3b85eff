#!/usr/bin/env bash
# Performance benchmarks of the mesh layer, each against a baseline measured
# in the same run:
#
#   1. unary RPC cost (crates/soma/examples/mesh_bench.rs): server CPU per
#      grpc.health.v1.Health/Check and open-loop latency, the mesh runtime
#      (mTLS + authorization) against a bare plaintext tonic server;
#   2. full mTLS handshakes per second, the mesh runtime
#      (crates/soma/examples/bench_server.rs) against `openssl s_server`
#      with the same P-256 key and certificate (client certificate required,
#      no session tickets), both driven by the same client,
#      crates/soma/examples/handshake_client.rs: sequential connections, each
#      a full TLS 1.3 handshake with the client SVID, then the client's
#      close_notify and a read until the server closes. Only a handshake the
#      server confirmed that way counts: records are processed in order, so
#      the server has read and accepted the client's certificate,
#      CertificateVerify and Finished before it answers the close_notify
#      (a refusal is an alert, counted as failed). This is the measurement
#      fair to both servers: `openssl s_time -new` counted a handshake when
#      its own side was done and hung up at once, before the server had read
#      the client's last flight, crediting each server with handshakes it
#      never completed (the mesh's own /metrics showed 1.19x where s_time
#      said 1.60x). The mesh's /metrics count of completed handshakes is
#      printed beside the client's. Rounds alternate mesh and OpenSSL; the
#      figure is the median of the per-round ratios (target >= 1.3x), with
#      the spread; beside it, each server's CPU per handshake (utime+stime
#      of its whole process from /proc/PID/stat over the round);
#   3. idle RSS of each `soma serve` child of `soma up`;
#   4. unary RPC cost on the REAL process (crates/soma/examples/mesh_real_bench.rs):
#      `soma up` (SQLite, a temp data dir) is started, an operator SVID is
#      minted with `soma ca issue`, and the `soma serve analytics` child is
#      called over mTLS at a fixed rate, open loop, against a bare plaintext
#      tonic server the generator starts as its own child process; each
#      server's CPU is utime+stime of its whole process from /proc/PID/stat,
#      rounds alternate, the ratio is the median of the per-round ratios.
#
# Targets are printed next to the measurements and never asserted: the exit
# status is 0 when the measurements ran, whatever they show.
#
# Environment (optional): BENCH_REQUESTS (20000), BENCH_ROUNDS (3),
# BENCH_RATE (1000), BENCH_SECONDS (10), BENCH_HANDSHAKE_SECONDS (10),
# BENCH_HANDSHAKE_ROUNDS (3), BENCH_SECTIONS ("unary handshake rss real": the
# sections to run), BENCH_REAL_SECONDS (10, per server and round of section 4),
# BENCH_PERF_OUT (a file: section 4 records `perf record -g` of the analytics
# process over the whole generator run into it; it adds its own CPU to that
# process), BENCH_PERF_CALL_GRAPH (how `perf record` unwinds the stacks:
# `fp` by default, `dwarf` for complete stacks of a build without frame
# pointers, at a larger profile), BENCH_NO_BUILD (1: use the binaries
# already built).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

REQUESTS="${BENCH_REQUESTS:-20000}"
ROUNDS="${BENCH_ROUNDS:-3}"
RATE="${BENCH_RATE:-1000}"
SECONDS_OPEN="${BENCH_SECONDS:-10}"
HS_SECONDS="${BENCH_HANDSHAKE_SECONDS:-10}"
HS_ROUNDS="${BENCH_HANDSHAKE_ROUNDS:-3}"
SECTIONS=" ${BENCH_SECTIONS:-unary handshake rss real} "
REAL_SECONDS="${BENCH_REAL_SECONDS:-10}"
PERF_OUT="${BENCH_PERF_OUT:-}"
PERF_CALL_GRAPH="${BENCH_PERF_CALL_GRAPH:-fp}"
RSS_TARGET_MB=30
HS_TARGET=1.3

log() { printf '\n### %s\n' "$*" >&2; }

# --- tools ------------------------------------------------------------------
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
command -v ps >/dev/null 2>&1 || missing+=(procps)
command -v getconf >/dev/null 2>&1 || missing+=(libc-bin)
command -v awk >/dev/null 2>&1 || missing+=(gawk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}"
fi

# --- build --------------------------------------------------------------------
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    log "cargo build --release -p soma --bins --examples"
    cargo build --release -p soma --bins --examples
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
EXAMPLES="$BIN/examples"

WORK="$(mktemp -d -t soma-bench.XXXXXX)"
PIDS_TO_STOP=()
RSS_ROWS=()
cleanup() {
    local pid
    for pid in "${PIDS_TO_STOP[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS_TO_STOP[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

forget_pid() {
    local keep=() pid
    for pid in "${PIDS_TO_STOP[@]}"; do
        [[ $pid == "$1" ]] || keep+=("$pid")
    done
    PIDS_TO_STOP=("${keep[@]}")
}

# Value of `result.KEY=VALUE` in FILE.
result() { sed -n "s/^result\.$2=//p" "$1"; }

# --- 1. unary RPC cost ----------------------------------------------------------
if [[ $SECTIONS == *" unary "* ]]; then
    log "1. unary RPC: bare tonic vs mesh runtime (examples/mesh_bench)"
    "$EXAMPLES/mesh_bench" --requests "$REQUESTS" --rounds "$ROUNDS" --rate "$RATE" --seconds "$SECONDS_OPEN" \
        | tee "$WORK/unary.txt"
fi

# --- 2. handshakes per second -------------------------------------------------
if [[ $SECTIONS == *" handshake "* ]]; then
    log "2. full mTLS handshakes/s: mesh runtime vs openssl s_server (same key)"
    HS="$WORK/handshake"
    mkdir -p "$HS"
    mkfifo "$HS/server.stdin" "$HS/openssl.stdin"

    "$EXAMPLES/bench_server" "$HS" <"$HS/server.stdin" >"$HS/server.out" 2>"$HS/server.err" &
    SERVER_PID=$!
    PIDS_TO_STOP+=("$SERVER_PID")
    exec 3>"$HS/server.stdin" # held open: the server stops when it closes
    MESH_ADDR=""
    for _ in $(seq 1 200); do
        MESH_ADDR="$(sed -n 's/.*"addr":"\([^"]*\)".*/\1/p' "$HS/server.out" | head -n1)"
        [[ -n $MESH_ADDR ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $MESH_ADDR ]]; then
        cat "$HS/server.err" >&2
        echo "bench_server did not report its address" >&2
        exit 1
    fi
    MESH_ADMIN="$(sed -n 's/.*"admin":"\([^"]*\)".*/\1/p' "$HS/server.out" | head -n1)"
    echo "mesh runtime (Gateway) listening on $MESH_ADDR, admin http://$MESH_ADMIN"

    # Handshakes the mesh server itself completed (client SVID verified), from
    # its admin /metrics: beside the client's count, which must agree with it.
    mesh_verified() {
        curl -fsS "http://$MESH_ADMIN/metrics" | awk '/^soma_tls_handshakes_total\{outcome="ok"\}/ { print $2 }'
    }

    # A free port for s_server: bind, read, release.
    OPENSSL_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || true)"
    if [[ -z $OPENSSL_PORT ]]; then
        OPENSSL_PORT=$((20000 + RANDOM % 20000))
    fi
    # -num_tickets 0: the mesh sends no TLS 1.3 session tickets (resumption is
    # off), so OpenSSL is asked for the same work per handshake.
    openssl s_server -accept "127.0.0.1:$OPENSSL_PORT" \
        -cert "$HS/server/svid.pem" -key "$HS/server/key.pem" -CAfile "$HS/server/bundle.pem" \
        -Verify 1 -num_tickets 0 -naccept 100000000 -quiet \
        <"$HS/openssl.stdin" >"$HS/openssl.out" 2>"$HS/openssl.err" &
    OPENSSL_PID=$!
    PIDS_TO_STOP+=("$OPENSSL_PID")
    exec 4>"$HS/openssl.stdin" # s_server stops at the end of its standard input
    for _ in $(seq 1 100); do
        (exec 5<>"/dev/tcp/127.0.0.1/$OPENSSL_PORT") 2>/dev/null && break
        kill -0 "$OPENSSL_PID" 2>/dev/null || {
            cat "$HS/openssl.err" >&2
            echo "openssl s_server exited" >&2
            exit 1
        }
        sleep 0.1
    done
    echo "openssl s_server listening on 127.0.0.1:$OPENSSL_PORT"

    # Utime + stime of a whole process, in clock ticks (/proc/PID/stat
    # fields 14 and 15; the command name in parentheses may hold spaces).
    proc_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
    TICKS_PER_S="$(getconf CLK_TCK)"

    # One handshake_client run against ADDR; prints "HANDSHAKES SECONDS CPU_TICKS FAILED CLOSE_NOTIFY"
    # (CPU_TICKS: of server process PID over the run).
    hs_run() {
        local addr=$1 pid=$2 out t0 t1
        out="$WORK/hs.$RANDOM.txt"
        t0="$(proc_ticks "$pid")"
        "$EXAMPLES/handshake_client" --addr "$addr" --svid-dir "$HS/client" \
            --server-id "spiffe://somastack.bench/svc/gateway" --seconds "$HS_SECONDS" >"$out"
        t1="$(proc_ticks "$pid")"
        echo "$(result "$out" handshakes) $(result "$out" seconds) $((t1 - t0)) $(result "$out" failed) $(result "$out" close_notify)"
    }

    HS_ROWS=()
    for round in $(seq 1 "$HS_ROUNDS"); do
        ok_before="$(mesh_verified)"
        read -r mc ms mt mf mn <<<"$(hs_run "$MESH_ADDR" "$SERVER_PID")"
        ok=$(($(mesh_verified) - ok_before))
        read -r oc os ot of on <<<"$(hs_run "127.0.0.1:$OPENSSL_PORT" "$OPENSSL_PID")"
        row_line="$(awk -v mc="$mc" -v ms="$ms" -v mt="$mt" -v oc="$oc" -v os="$os" -v ot="$ot" -v hz="$TICKS_PER_S" 'BEGIN {
            mr = mc / ms; orate = oc / os;
            mcpu = mt / hz * 1e6 / mc; ocpu = ot / hz * 1e6 / oc;
            printf "%.1f %.1f %.3f %.1f %.1f %.3f", mr, orate, mr / orate, mcpu, ocpu, ocpu / mcpu }')"
        HS_ROWS+=("$row_line")
        read -r mr orate ratio mcpu ocpu cratio <<<"$row_line"
        # The server's count includes the client's one handshake before its clock starts.
        echo "round $round: mesh $mr/s ($mc confirmed, $mn with close_notify, $mf failed; the server's /metrics: $ok ok)" \
            "  openssl $orate/s ($oc confirmed, $on with close_notify, $of failed)   ratio ${ratio}x" \
            "  server CPU per handshake: mesh $mcpu us, openssl $ocpu us (openssl/mesh ${cratio}x)"
    done
    # Median and spread (min..max) of column COL of HS_ROWS.
    hs_stat() {
        printf '%s\n' "${HS_ROWS[@]}" | awk -v c="$1" '{ print $c }' | sort -g |
            awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
                   printf "%s %s..%s\n", m, v[1], v[NR] }'
    }
    read -r HS_MESH _ <<<"$(hs_stat 1)"
    read -r HS_OSSL _ <<<"$(hs_stat 2)"
    read -r HS_RATIO HS_RATIO_SPREAD <<<"$(hs_stat 3)"
    read -r HS_CPU_MESH _ <<<"$(hs_stat 4)"
    read -r HS_CPU_OSSL _ <<<"$(hs_stat 5)"
    read -r HS_CPU_RATIO HS_CPU_RATIO_SPREAD <<<"$(hs_stat 6)"
    HANDSHAKES_REFUSED="$(grep -c 'refused' "$HS/server.err" || true)"

    exec 4>&-
    kill "$OPENSSL_PID" 2>/dev/null || true
    wait "$OPENSSL_PID" 2>/dev/null || true
    forget_pid "$OPENSSL_PID"
    exec 3>&- # end of input: the mesh server drains and exits
    wait "$SERVER_PID" || echo "bench_server exited with status $?" >&2
    forget_pid "$SERVER_PID"
fi

# --- 3. idle RSS ------------------------------------------------------------------
if [[ $SECTIONS == *" rss "* ]]; then
    log "3. idle RSS of the soma serve children of soma up"
    UP_DIR="$(mktemp -d -t soma-bench-up.XXXXXX)"
    "$BIN/soma" up --data-dir "$UP_DIR" >"$WORK/up.out" 2>"$WORK/up.err" &
    UP_PID=$!
    PIDS_TO_STOP+=("$UP_PID")
    for _ in $(seq 1 600); do
        [[ -f $UP_DIR/endpoints.json ]] && break
        if ! kill -0 "$UP_PID" 2>/dev/null; then
            cat "$WORK/up.err" >&2
            echo "soma up exited before writing endpoints.json" >&2
            exit 1
        fi
        sleep 0.1
    done
    if [[ ! -f $UP_DIR/endpoints.json ]]; then
        echo "soma up wrote no endpoints.json within 60 s" >&2
        exit 1
    fi
    sleep 3
    RSS_ROWS=()
    UP_RSS_KB="$(awk '/^VmRSS:/ { print $2 }' "/proc/$UP_PID/status")"
    for child in $(pgrep -P "$UP_PID" -f 'soma serve' || true); do
        name="$(tr '\0' ' ' <"/proc/$child/cmdline" | awk '{ for (i = 1; i < NF; i++) if ($i == "serve") { print $(i + 1); exit } }')"
        kb="$(awk '/^VmRSS:/ { print $2 }' "/proc/$child/status")"
        RSS_ROWS+=("$name $child $kb")
        printf '  %-14s pid %-7s VmRSS %8s kB = %6.1f MB\n' "$name" "$child" "$kb" "$(awk -v k="$kb" 'BEGIN { print k / 1024 }')"
    done
    if ((${#RSS_ROWS[@]} == 0)); then
        echo "no soma serve children of soma up (pid $UP_PID)" >&2
        exit 1
    fi
    kill -TERM "$UP_PID"
    UP_STATUS=0
    wait "$UP_PID" || UP_STATUS=$?
    forget_pid "$UP_PID"
    echo "soma up stopped on SIGTERM with status $UP_STATUS"
    rm -rf "$UP_DIR"
fi

# --- 4. unary RPC cost on the real soma serve analytics ------------------------------
if [[ $SECTIONS == *" real "* ]]; then
    log "4. unary RPC: real soma serve analytics (soma up) vs bare tonic process (examples/mesh_real_bench)"
    REAL_DIR="$(mktemp -d -t soma-bench-real.XXXXXX)"
    # SQLite under the temp data dir whatever the environment says; the
    # edge on a free port, so that another soma up on 8080 does not matter.
    env -u DATABASE_URL "$BIN/soma" up --data-dir "$REAL_DIR" --edge-addr 127.0.0.1:0 \
        >"$WORK/real-up.out" 2>"$WORK/real-up.err" &
    REAL_UP_PID=$!
    PIDS_TO_STOP+=("$REAL_UP_PID")
    for _ in $(seq 1 600); do
        [[ -f $REAL_DIR/endpoints.json && -f $REAL_DIR/pids.json ]] && break
        if ! kill -0 "$REAL_UP_PID" 2>/dev/null; then
            cat "$WORK/real-up.err" >&2
            echo "soma up exited before writing endpoints.json" >&2
            exit 1
        fi
        sleep 0.1
    done
    if [[ ! -f $REAL_DIR/pids.json ]]; then
        echo "soma up wrote no endpoints.json / pids.json within 60 s" >&2
        exit 1
    fi
    # Both files are pretty-printed JSON objects: top-level keys are
    # indented by two spaces (the admin map's by four).
    top_level() { sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$1" | head -n1; }
    REAL_TD="$(top_level "$REAL_DIR/endpoints.json" trust_domain)"
    REAL_ADDR="$(top_level "$REAL_DIR/endpoints.json" analytics)"
    REAL_PID="$(top_level "$REAL_DIR/pids.json" analytics)"
    if [[ -z $REAL_TD || -z $REAL_ADDR || -z $REAL_PID ]]; then
        cat "$REAL_DIR/endpoints.json" "$REAL_DIR/pids.json" >&2
        echo "no analytics address / pid in endpoints.json / pids.json" >&2
        exit 1
    fi
    echo "soma serve analytics: pid $REAL_PID, grpc+mtls $REAL_ADDR, trust domain $REAL_TD"
    "$BIN/soma" ca issue --data-dir "$REAL_DIR" --spiffe-id "spiffe://$REAL_TD/operator/bench" \
        --out "$REAL_DIR/operator-bench" --ttl 4h
    PERF_PID=""
    if [[ -n $PERF_OUT ]]; then
        perf record -F 1999 --call-graph "$PERF_CALL_GRAPH" -p "$REAL_PID" -o "$PERF_OUT" >"$WORK/perf.out" 2>&1 &
        PERF_PID=$!
        PIDS_TO_STOP+=("$PERF_PID")
    fi
    "$EXAMPLES/mesh_real_bench" --addr "$REAL_ADDR" --pid "$REAL_PID" \
        --server-id "spiffe://$REAL_TD/svc/analytics" --svid-dir "$REAL_DIR/operator-bench" \
        --rate "$RATE" --seconds "$REAL_SECONDS" --rounds "$ROUNDS" | tee "$WORK/real.txt"
    if [[ -n $PERF_PID ]]; then
        kill -INT "$PERF_PID" 2>/dev/null || true
        wait "$PERF_PID" 2>/dev/null || true
        forget_pid "$PERF_PID"
        echo "perf profile of pid $REAL_PID: $PERF_OUT (perf report -i $PERF_OUT --no-children)"
    fi
    kill -TERM "$REAL_UP_PID"
    REAL_UP_STATUS=0
    wait "$REAL_UP_PID" || REAL_UP_STATUS=$?
    forget_pid "$REAL_UP_PID"
    echo "soma up stopped on SIGTERM with status $REAL_UP_STATUS"
    rm -rf "$REAL_DIR"
fi

# --- summary ------------------------------------------------------------------------
U="$WORK/unary.txt"
signed() { awk -v v="$1" 'BEGIN { printf "%+.1f", v }'; }
row() { printf '| %-44s | %14s | %14s | %16s | %-14s |\n' "$@"; }
rule() { printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..16})" \
    "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..18})" "$(printf -- '-%.0s' {1..16})"; }

echo
echo "== SomaStack mesh benchmark summary ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ))"
echo "   baselines measured in the same run; targets are printed, not asserted (us = microseconds)"
echo
row "measurement" "baseline" "mesh" "mesh vs base" "target"
rule
if [[ -f "$U" ]]; then
    row "server CPU per unary call (closed loop)" "$(result "$U" cpu_us_baseline) us" "$(result "$U" cpu_us_mesh) us" \
        "$(result "$U" cpu_ratio)x" "<= $(result "$U" cpu_ratio_target)x"
    row "latency p50 @ ${RATE}/s open loop" "$(result "$U" p50_us_baseline) us" "$(result "$U" p50_us_mesh) us" \
        "$(signed "$(result "$U" p50_us_added)") us" "<= +$(result "$U" p50_us_added_target) us"
    row "latency p99 @ ${RATE}/s open loop" "$(result "$U" p99_us_baseline) us" "$(result "$U" p99_us_mesh) us" \
        "$(signed "$(result "$U" p99_us_added)") us" "<= +$(result "$U" p99_us_added_target) us"
fi
if [[ -n ${HS_MESH:-} ]]; then
    row "full mTLS handshakes/s, server-confirmed" "$HS_OSSL /s" "$HS_MESH /s" "${HS_RATIO}x" ">= ${HS_TARGET}x"
    row "  per-round ratios (spread)" "-" "-" "$HS_RATIO_SPREAD" "-"
    row "server CPU per handshake (openssl/mesh)" "$HS_CPU_OSSL us" "$HS_CPU_MESH us" "${HS_CPU_RATIO}x" "-"
fi
for r in "${RSS_ROWS[@]}"; do
    read -r name pid kb <<<"$r"
    row "idle RSS, soma serve $name" "-" "$(awk -v k="$kb" 'BEGIN { printf "%.1f MB", k / 1024 }')" "-" \
        "<= ${RSS_TARGET_MB} MB"
done
if [[ -n ${UP_RSS_KB:-} ]]; then
    row "idle RSS, soma up (authority, for reference)" "-" "$(awk -v k="$UP_RSS_KB" 'BEGIN { printf "%.1f MB", k / 1024 }')" "-" "-"
fi
R="$WORK/real.txt"
if [[ -f "$R" ]]; then
    row "real analytics: server CPU per call @ ${RATE}/s" "$(result "$R" real_cpu_us_baseline) us" \
        "$(result "$R" real_cpu_us_mesh) us" "$(result "$R" real_cpu_ratio)x" "<= $(result "$R" real_cpu_ratio_target)x"
    row "  per-round ratios (spread)" "-" "-" "$(result "$R" real_cpu_ratio_rounds)" \
        "($(result "$R" real_cpu_ratio_spread))"
    row "real analytics: latency p50 @ ${RATE}/s" "$(result "$R" real_p50_us_baseline) us" \
        "$(result "$R" real_p50_us_mesh) us" "$(signed "$(result "$R" real_p50_us_added)") us" \
        "<= +$(result "$R" real_p50_us_added_target) us"
    row "real analytics: latency p99 @ ${RATE}/s" "$(result "$R" real_p99_us_baseline) us" \
        "$(result "$R" real_p99_us_mesh) us" "$(signed "$(result "$R" real_p99_us_added)") us" \
        "<= +$(result "$R" real_p99_us_added_target) us"
fi
echo
if [[ -f "$U" ]]; then
    echo "   unary rows: grpc.health.v1.Health/Check; server CPU = utime+stime of the server's only thread"
    echo "   (median of $ROUNDS rounds x $REQUESTS calls); latency from just before each call to its response."
    echo "   baseline of the unary rows: bare tonic HealthServer, plaintext, no layers;"
    echo "   mesh authorization dispatched $(result "$U" dispatched) of $(result "$U" dispatched_expected) measured calls."
fi
if [[ -n ${HS_MESH:-} ]]; then
    echo "   baseline of the handshake rows: openssl s_server (same P-256 key and chain, client cert required,"
    echo "   no tickets); both driven by examples/handshake_client (sequential TLS 1.3 handshakes, each counted"
    echo "   once the server answered the client's close_notify); median of $HS_ROUNDS alternating rounds x"
    echo "   ${HS_SECONDS} s of per-round ratios; CPU = utime+stime of each server process over its rounds."
    echo "   handshake refusals the mesh logged during the client runs: $HANDSHAKES_REFUSED."
fi
if [[ -f "$R" ]]; then
    echo "   real analytics rows: grpc.health.v1.Health/Check on the soma serve analytics child of soma up"
    echo "   (SQLite), mTLS with an operator SVID from soma ca issue, open loop at ${RATE}/s for ${REAL_SECONDS} s per"
    echo "   server and round, $ROUNDS alternating rounds; server CPU = utime+stime of the whole server process"
    echo "   (/proc/PID/stat); ratio = median of per-round ratios; baseline: bare tonic HealthServer, plaintext,"
    echo "   in its own process on the multi-thread runtime soma serve uses."
fi

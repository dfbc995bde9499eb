#!/usr/bin/env bash
# Benchmarks against a real release gateway, real simulated switches (as
# processes) and a real Postgres. Loopback only; every run is bounded.
#
#   benches/run.sh memory       idle RSS, then RSS with 10,000 idle TLS keep-alive connections
#   benches/run.sh withdrawals  10,000 concurrent withdrawals of 2 from 10,000 (one hot account)
#   benches/run.sh sustained    transactions per second at concurrency 64 on 64 accounts
#   benches/run.sh failover     concurrency 64, sim-1 killed after 5 s: errors, ejection time, p99 by second
#   benches/run.sh flood        legitimate load from 127.0.0.1 while 127.0.0.2 floods invalid tokens
#
# BENCH_TOML (optional) is appended to the gateway's config, e.g.
#   BENCH_TOML=$'[auth]\ncache_entries_max = 0' benches/run.sh sustained
#
# Postgres: DATABASE_URL from the environment or .env.test (a fresh database
# is created and dropped). Needs psql. Build first: cargo build --release.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SCENARIO="${1:?usage: benches/run.sh memory|withdrawals|sustained|failover}"
BIN="$ROOT/target/release/switchboard"
LOAD="$ROOT/target/release/switchboard-load"
[[ -x $BIN && -x $LOAD ]] || { echo "build first: cargo build --release" >&2; exit 1; }

if [[ -z ${DATABASE_URL:-} && -f .env.test ]]; then
    DATABASE_URL="$(sed -n 's/^DATABASE_URL=//p' .env.test | head -1)"
fi
: "${DATABASE_URL:?set DATABASE_URL or .env.test}"
DB="sb_bench_$(date +%s)"
ADMIN_URL="$DATABASE_URL"
BENCH_URL="${DATABASE_URL%/*}/$DB"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
"$BIN" certs --dir "$WORK/certs" >/dev/null
SECRET="bench-secret-0123456789abcdef0123456789abcdef"
export SWITCHBOARD__AUTH__DEV_HS256_SECRET="$SECRET"

SIM_PORTS=(9101 9102 9103)
SIM_PIDS=()
for i in 0 1 2; do
    "$BIN" sim --listen "127.0.0.1:${SIM_PORTS[$i]}" --name "sim-$((i + 1))" 2>"$WORK/sim-$i.log" &
    PIDS+=($!); SIM_PIDS+=($!)
done

# The flood scenario keeps the default per-IP limit; the others lift it.
PER_IP=1000000
[[ $SCENARIO == flood ]] && PER_IP=1000
cat >"$WORK/bench.toml" <<EOF
[server]
listen = "127.0.0.1:8543"
ops_listen = "127.0.0.1:9190"
tls_cert = "$WORK/certs/server.pem"
tls_key = "$WORK/certs/server.key"
[log]
level = "warn"
[database]
url = "$BENCH_URL"
connections_max = 32
# One client on one address drives the whole load: lift its limits.
[limits]
per_ip_per_s = $PER_IP
per_ip_burst = $((PER_IP * 2))
transactions_in_flight_max = 100000
[limits.roles.transact]
per_s = 1000000
burst = 1000000
[limits.roles.auditor]
per_s = 1000000
burst = 1000000
[limits.roles.operator]
per_s = 1000000
burst = 1000000
${BENCH_TOML:-}
[[switches]]
name = "sim-1"
url = "http://127.0.0.1:9101"
[[switches]]
name = "sim-2"
url = "http://127.0.0.1:9102"
[[switches]]
name = "sim-3"
url = "http://127.0.0.1:9103"
EOF
(cd "$WORK" && exec "$BIN" --config "$WORK/bench.toml" serve 2>"$WORK/gateway.log") &
GATEWAY=$!
PIDS+=($GATEWAY)
for _ in $(seq 1 200); do
    curl -fsS http://127.0.0.1:9190/readyz >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS http://127.0.0.1:9190/readyz >/dev/null || { cat "$WORK/gateway.log" >&2; exit 1; }

rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
load() { "$LOAD" --url https://127.0.0.1:8543 --cacert "$WORK/certs/ca.pem" --secret "$SECRET" "$@"; }

case "$SCENARIO" in
memory)
    echo "idle gateway RSS: $(rss_mib $GATEWAY) MiB"
    load --idle-connections 10000 --hold-s 15 >"$WORK/idle.out" &
    HOLDER=$!
    for _ in $(seq 1 600); do grep -q "^opened" "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
    cat "$WORK/idle.out"
    sleep 2
    echo "gateway RSS with those connections open: $(rss_mib $GATEWAY) MiB"
    echo "open connections (metric): $(curl -fsS http://127.0.0.1:9190/metrics | awk '/^switchboard_connections_open / { print $2 }')"
    wait $HOLDER
    ;;
withdrawals)
    load --accounts 1 --balance 10000 --amount 2 --requests 10000 --concurrency 256
    ;;
sustained)
    load --accounts 64 --balance 1000000000 --amount 1 --requests 30000 --concurrency 64
    ;;
failover)
    load --accounts 64 --balance 1000000000 --amount 1 --requests 1000000 --concurrency 64 \
        --max-duration-s 20 --window-s 1 >"$WORK/failover.out" &
    LOADER=$!
    sleep 5
    kill -9 "${SIM_PIDS[0]}"
    KILLED_AT=$(date +%s%N)
    OPERATOR=$("$BIN" --config "$WORK/bench.toml" token --sub bench-op --roles operator)
    while :; do
        in_rotation=$(curl -fsS --cacert "$WORK/certs/ca.pem" -H "Authorization: Bearer $OPERATOR" \
            https://localhost:8543/v1/switches --resolve localhost:8543:127.0.0.1 |
            python3 -c 'import json,sys; s=[x for x in json.load(sys.stdin)["switches"] if x["name"]=="sim-1"][0]; print(int(s["healthy"] and s["consecutiveForwardFailures"] < 3))')
        [[ $in_rotation == 0 ]] && break
        sleep 0.01
    done
    echo "sim-1 left the rotation $(( ($(date +%s%N) - KILLED_AT) / 1000000 )) ms after SIGKILL (at t=5 s)"
    wait $LOADER || true
    cat "$WORK/failover.out"
    ;;
flood)
    echo "== baseline: legitimate load alone (127.0.0.1)"
    load --accounts 64 --balance 1000000000 --amount 1 --requests 6000 --concurrency 32 | grep -v "^balance"
    echo "== with a flood of invalid tokens from 127.0.0.2 (64 connections)"
    load --local-ip 127.0.0.2 --garbage-tokens --requests 10000000 --concurrency 64 \
        --max-duration-s 20 >"$WORK/flood.out" &
    FLOODER=$!
    sleep 2
    load --accounts 64 --balance 1000000000 --amount 1 --requests 6000 --concurrency 32 | grep -v "^balance"
    wait "$FLOODER" || true
    echo "== the flood (20 s)"
    cat "$WORK/flood.out"
    curl -fsS http://127.0.0.1:9190/metrics | grep -E '^switchboard_requests_denied_total'
    ;;
*)
    echo "unknown scenario $SCENARIO" >&2; exit 64
    ;;
esac

#!/usr/bin/env bash
# Benchmarks against a real release gateway, real simulated switches (as
# processes) and a real Postgres. Loopback only; every load is bounded in
# count and in time, and everything started here is killed on exit.
#
#   benches/run.sh withdrawals  10,000 concurrent withdrawals of 2 from 10,000 (one hot account),
#                               256 connections; reference: pgbench doing only the 10,000 guarded
#                               UPDATEs from 50 connections on the same server
#   benches/run.sh spread       debits of 1 spread over 256 accounts, 64 connections, 20,000
#                               transactions; reference: an nginx TLS reverse proxy round-robin
#                               over the same three sims, same load shape (wrk)
#   benches/run.sh sustained    the same as spread
#   benches/run.sh memory       idle RSS, then RSS with 10,000 idle TLS keep-alive connections
#   benches/run.sh failover     concurrency 64, sim-1 killed after 5 s: errors, ejection time, p99 by second
#   benches/run.sh flood        legitimate load from 127.0.0.1 while 127.0.0.2 floods invalid tokens
#   benches/run.sh balancing    debits over 256 accounts, 64 connections, 6,000 transactions, three
#                               times: all sims fast (round_robin), then sim-3 `slow` (200 ms) under
#                               round_robin and under least_latency: tx/s, p50/p99, share per switch,
#                               and the p99 ratio against the all-fast run
#
# withdrawals and spread report, per gateway build: throughput, latency
# p50/p99/max, outcome counts (load tool, cross-checked against the database
# and the sims' /stats), CPU µs per committed transaction of each process
# (from /proc, before/after the load), the batch sizes from the gateway's
# switchboard_ledger_batch_size histogram; then the reference and the ratios.
#
# Environment (all optional):
#   SB_BIN, SB_LOAD    gateway and load tool (default target/release/switchboard{,-load})
#   BASELINE_BIN       a second gateway build: the scenario runs with it too (fresh
#                      database, fresh sims) and both are printed side by side; the
#                      load tool (SB_LOAD) and the sims (SIM_BIN) are the same for both
#   SIM_BIN            the binary whose `sim` runs the switches (default SB_BIN)
#   BENCH_TOML         appended to the gateway's config, e.g. $'[auth]\ncache_entries_max = 0'
#   BASELINE_TOML      appended to the baseline gateway's config instead (default: none)
#   REQUESTS           transactions (withdrawals: 10000, balance = REQUESTS; spread: 20000)
#   CONCURRENCY        connections (withdrawals: 256, spread: 64)
#   MAX_S              time bound of each load, seconds (default 300)
#   PGBENCH_CLIENTS    pgbench connections (default 50); PGBENCH_MODE (default prepared)
#   REFERENCE=0        skip the reference run
#   DRIVER             what drives the gateways: load (switchboard-load, the default:
#                      checks every answer) or wrk (benches/wrk-post.lua, the driver of
#                      the nginx reference: cheaper, so its ratio is like for like)
#
# Postgres: DATABASE_URL from the environment or .env.test (fresh databases are
# created and dropped). Postgres CPU is the whole server's (postmaster, its live
# children, and its exited children via the postmaster's cutime+cstime), so it
# is read from /proc of the same machine and includes any other activity on
# the server; the script says how many transactions other databases ran.
# Needs psql, pgbench, curl, python3; nginx (nginx-light) and wrk for spread.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
[[ $# -eq 1 ]] || { usage >&2; exit 64; }
SCENARIO="$1"
case "$SCENARIO" in
-h | --help) usage; exit 0 ;;
sustained) SCENARIO=spread ;;
withdrawals | spread | memory | failover | flood | balancing) ;;
*) echo "unknown scenario $SCENARIO" >&2; usage >&2; exit 64 ;;
esac

BIN="${SB_BIN:-$ROOT/target/release/switchboard}"
LOAD="${SB_LOAD:-$ROOT/target/release/switchboard-load}"
[[ -x $BIN && -x $LOAD ]] || { echo "build first: cargo build --release (or set SB_BIN and SB_LOAD)" >&2; exit 1; }
if [[ -n ${BASELINE_BIN:-} && ! -x $BASELINE_BIN ]]; then
    echo "BASELINE_BIN=$BASELINE_BIN is not executable" >&2; exit 1
fi
MAX_S="${MAX_S:-300}"
# One sim build for every run (both gateways and the nginx reference).
SIM_BIN="${SIM_BIN:-$BIN}"
DRIVER="${DRIVER:-load}"
case "$DRIVER" in
load) DRIVER_NAME="load tool" ;;
wrk) DRIVER_NAME="wrk" ;;
*) echo "DRIVER must be load or wrk" >&2; exit 64 ;;
esac

if [[ -z ${DATABASE_URL:-} && -f .env.test ]]; then
    DATABASE_URL="$(sed -n 's/^DATABASE_URL=//p' .env.test | head -1)"
fi
: "${DATABASE_URL:?set DATABASE_URL or .env.test}"
ADMIN_URL="$DATABASE_URL"
DB_PREFIX="sb_bench_$$"

SECRET="bench-secret-0123456789abcdef0123456789abcdef"
export SWITCHBOARD__AUTH__DEV_HS256_SECRET="$SECRET"
GATEWAY_PORT=8543
OPS_PORT=9190
NGINX_PORT=8643
SIM_PORTS=(9101 9102 9103)
CLK_TCK="$(getconf CLK_TCK)"

WORK="$(mktemp -d)"
# Everything runs in $WORK: the binaries read config/default.toml and .env
# from their working directory, and the checkout's may be newer than a binary.
BIN="$(realpath "$BIN")"
LOAD="$(realpath "$LOAD")"
[[ -z ${BASELINE_BIN:-} ]] || BASELINE_BIN="$(realpath "$BASELINE_BIN")"
SIM_BIN="$(realpath "$SIM_BIN")"
cd "$WORK"
PIDS=()
DBS=()
# descendants PID...: the pids and all their descendants (children first).
descendants() {
    local pid
    for pid in "$@"; do
        # shellcheck disable=SC2046
        [[ -z $(pgrep -P "$pid") ]] || descendants $(pgrep -P "$pid")
        echo "$pid"
    done
}

cleanup() {
    local pid db
    # Descendants too: `timeout` puts its command in a process group of its own.
    for pid in $(descendants "${PIDS[@]}"); do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for db in "${DBS[@]}"; do
        psql -Xq "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN" certs --dir "$WORK/certs" >/dev/null

# ---------------------------------------------------------------- processes

# Kills the given pids (started by this script) and waits for them.
stop() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
    forget "$@"
}

# forget PID...: no longer kill these (gone) pids on exit.
forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ " $* " == *" $p "* ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# start_sims BIN: three healthy sims on SIM_PORTS; sets SIM_PIDS.
start_sims() {
    local bin="$1" i
    SIM_PIDS=()
    for i in 0 1 2; do
        "$bin" sim --listen "127.0.0.1:${SIM_PORTS[$i]}" --name "sim-$((i + 1))" 2>"$WORK/sim-$i.log" &
        PIDS+=($!); SIM_PIDS+=($!)
    done
    for i in 0 1 2; do
        wait_for "http://127.0.0.1:${SIM_PORTS[$i]}/health" "sim-$((i + 1))" "$WORK/sim-$i.log"
    done
}

# wait_for URL NAME LOG: until URL answers 2xx (curl -k), at most 20 s.
wait_for() {
    local _
    for _ in $(seq 1 200); do
        curl -kfsS "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$2 did not come up ($1):" >&2
    cat "$3" >&2
    exit 1
}

# create_db NAME: a fresh database, dropped on exit; sets DB_URL.
create_db() {
    DBS+=("$1")
    psql -Xq "$ADMIN_URL" -c "CREATE DATABASE $1" >/dev/null
    DB_URL="${DATABASE_URL%/*}/$1"
}

drop_db() { psql -Xq "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null; }

# start_gateway BIN DB_URL EXTRA_TOML: writes $WORK/bench.toml, starts the
# gateway on GATEWAY_PORT/OPS_PORT in front of the sims; sets GATEWAY.
start_gateway() {
    local bin="$1" db_url="$2" extra="$3"
    # The flood scenario keeps the default per-IP limit; the others lift it.
    local per_ip=1000000
    [[ $SCENARIO == flood ]] && per_ip=1000
    cat >"$WORK/bench.toml" <<EOF
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
ops_listen = "127.0.0.1:$OPS_PORT"
tls_cert = "$WORK/certs/server.pem"
tls_key = "$WORK/certs/server.key"
[log]
level = "warn"
[database]
url = "$db_url"
connections_max = 32
# One client on one address drives the whole load: lift its limits.
[limits]
per_ip_per_s = $per_ip
per_ip_burst = $((per_ip * 2))
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
$extra
[[switches]]
name = "sim-1"
url = "http://127.0.0.1:${SIM_PORTS[0]}"
[[switches]]
name = "sim-2"
url = "http://127.0.0.1:${SIM_PORTS[1]}"
[[switches]]
name = "sim-3"
url = "http://127.0.0.1:${SIM_PORTS[2]}"
EOF
    "$bin" --config "$WORK/bench.toml" serve 2>"$WORK/gateway.log" &
    GATEWAY=$!
    PIDS+=($GATEWAY)
    wait_for "http://127.0.0.1:$OPS_PORT/readyz" gateway "$WORK/gateway.log"
}

load() { "$LOAD" --url "https://127.0.0.1:$GATEWAY_PORT" --cacert "$WORK/certs/ca.pem" --secret "$SECRET" "$@"; }
rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# ---------------------------------------------------------------- measuring

# tree_ticks PID...: CPU clock ticks of these processes and all their
# descendants: each one's utime+stime plus cutime+cstime (its exited, reaped
# children). 0 for a process that is gone. One ps, one cat, one awk: quick
# enough to take while a load runs.
tree_ticks() {
    local pids
    pids="$(ps -e -o pid= -o ppid= | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do {
                changed = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
            } while (changed)
            for (p in keep) printf "/proc/%s/stat\n", p
        }')"
    # Fields after "(comm) ": $2 ppid, $12 utime, $13 stime, $14 cutime, $15 cstime.
    # shellcheck disable=SC2086
    cat $pids 2>/dev/null | awk '{ sub(/.*\) /, ""); s += $12 + $13 + $14 + $15 } END { print s + 0 }'
}

# The postmaster: the parent of the checkpointer (a live child at all times).
postmaster_pid() {
    local child
    child="$(psql -XAtq "$ADMIN_URL" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")"
    if [[ -n $child && -r /proc/$child/stat ]]; then
        awk '{ sub(/.*\) /, ""); print $2 }' "/proc/$child/stat"
    else
        echo "Postgres is not a process on this machine: its CPU is not measured" >&2
        echo 0
    fi
}
PG_PID="$(postmaster_pid)"
pg_ticks() { if [[ $PG_PID == 0 ]]; then echo 0; else tree_ticks "$PG_PID"; fi; }

# Transactions committed or rolled back in databases other than $1 (a
# contamination check for the Postgres CPU figure; Postgres flushes these
# counters about once a second).
other_xacts() {
    psql -XAtq "${DATABASE_URL%/*}/$1" -c "SELECT coalesce(sum(xact_commit + xact_rollback), 0)
        FROM pg_stat_database WHERE datname IS DISTINCT FROM '$1'"
}

# sims_stats: received approved duplicates, summed over the three sims' /stats.
sims_stats() {
    local port
    for port in "${SIM_PORTS[@]}"; do curl -fsS "http://127.0.0.1:$port/stats"; echo; done |
        python3 -c '
import json, sys
s = [json.loads(l) for l in sys.stdin if l.strip()]
print(sum(x["received"] for x in s), sum(x["approved"] for x in s), sum(x["duplicates"] for x in s))'
}

# us_per TICKS N: CPU µs per unit.
us_per() { awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.0f", t * 1e6 / hz / n; else print "n/a" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }

# batch_histogram BEFORE AFTER: the batches between two /metrics scrapes, per
# series of switchboard_ledger_batch_size (label sets other than le).
batch_histogram() {
    python3 - "$1" "$2" <<'PY'
import re, sys
NAME = "switchboard_ledger_batch_size"
def scrape(path):
    found, data = False, {}
    for line in open(path):
        m = re.match(NAME + r"_(bucket|sum|count)(?:\{(.*)\})? (\S+)$", line.strip())
        if not m:
            continue
        found = True
        kind, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        pairs = re.findall(r'(\w+)="([^"]*)"', labels)
        le = dict(pairs).get("le")
        series = ",".join(f"{k}={v}" for k, v in pairs if k != "le") or "all"
        data[(series, kind, le)] = value
    return found, data
found, after = scrape(sys.argv[2])
if not found:
    print("not exported")
    sys.exit()
_, before = scrape(sys.argv[1])
delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
for series in sorted({k[0] for k in delta}):
    count = delta.get((series, "count", None), 0.0)
    total = delta.get((series, "sum", None), 0.0)
    les = sorted((float(k[2]), v) for k, v in delta.items() if k[0] == series and k[1] == "bucket")
    parts, prev = [], 0.0
    for le, cum in les:
        if cum - prev > 0:
            bound = "inf" if le == float("inf") else f"{le:g}"
            parts.append(f"<={bound}: {cum - prev:.0f}")
        prev = cum
    mean = f"{total / count:.1f}" if count else "n/a"
    print(f"{series}: {count:.0f} batches, {total:.0f} operations, mean {mean}; " + ("  ".join(parts) or "-"))
# Where a transaction's time goes: the mean of each latency histogram.
for name in ["switchboard_ledger_batch_duration_seconds", "switchboard_ledger_reserve_duration_seconds",
             "switchboard_switch_forward_duration_seconds", "switchboard_http_request_duration_seconds"]:
    NAME = name
    _, a = scrape(sys.argv[2])
    _, b = scrape(sys.argv[1])
    sums, counts = {}, {}
    for (series, kind, le), v in a.items():
        d = v - b.get((series, kind, le), 0.0)
        if kind == "sum":
            sums[series] = sums.get(series, 0.0) + d
        elif kind == "count":
            counts[series] = counts.get(series, 0.0) + d
    for series in sorted(counts):
        if counts[series] > 0:
            print(f"mean {name.removeprefix('switchboard_')}{{{series}}}: {sums[series] / counts[series] * 1000:.2f} ms over {counts[series]:.0f}")
PY
}

# ---------------------------------------------------------------- one gateway run

# gateway_run LABEL BIN EXTRA_TOML: fresh database, sims and gateway; drives
# the load (N debits of AMOUNT over ACCOUNTS accounts holding BALANCE each,
# CONNS connections) with DRIVER; writes `key value` lines to $WORK/res-LABEL.
gateway_run() {
    local label="$1" bin="$2" extra="$3"
    local res="$WORK/res-$label" db="${DB_PREFIX}_$label" db_url
    create_db "$db"
    db_url="$DB_URL"
    start_sims "$SIM_BIN"
    start_gateway "$bin" "$db_url" "$extra"

    # The driver runs in a subshell that records the driver's CPU (its
    # cutime+cstime) once it exits. The "before" readings are taken when the
    # measured part starts: the load tool creates its accounts, then prints
    # "run ..." to stderr; wrk starts once the load tool has created them.
    local driver=() run_id="bench-$label-$$"
    local load_args=(--accounts "$ACCOUNTS" --balance "$BALANCE" --amount "$AMOUNT" --run-id "$run_id")
    if [[ $DRIVER == wrk ]]; then
        load --requests 0 "${load_args[@]}" >/dev/null 2>"$WORK/accounts.err" ||
            { cat "$WORK/accounts.err" >&2; exit 1; }
        local token threads
        token="$("$bin" --config "$WORK/bench.toml" token --sub "$run_id-client" --roles transact)"
        threads="$(nproc)"
        rm -rf "$WORK/wrk.done" "$WORK/wrk.done.lock"
        driver=(wrk -t"$threads" -c"$CONNS" -d"${MAX_S}s" --timeout 30s -s "$ROOT/benches/wrk-post.lua"
            "https://127.0.0.1:$GATEWAY_PORT" -- "$run_id" $((N / threads)) "$WORK/wrk.done" "$threads"
            /v1/transactions "$token" "$run_id-acct-" "$ACCOUNTS" "$AMOUNT")
        echo "[$label] $bin: ${driver[*]/$token/TOKEN}" >&2
    else
        driver=("$LOAD" --url "https://127.0.0.1:$GATEWAY_PORT" --cacert "$WORK/certs/ca.pem" --secret "$SECRET"
            --max-duration-s "$MAX_S" --requests "$N" --concurrency "$CONNS" "${load_args[@]}")
        echo "[$label] $bin: switchboard-load ${load_args[*]} --requests $N --concurrency $CONNS" >&2
    fi
    # Batch sizes: scraped before the driver starts (the ledger's batch queues
    # carry only transactions, not account openings) and after it ends.
    curl -fsS "http://127.0.0.1:$OPS_PORT/metrics" >"$WORK/metrics.before"
    : >"$WORK/drive.err"
    (
        rc=0
        timeout -k 5 $((MAX_S + 60)) "${driver[@]}" >"$WORK/drive.out" 2>"$WORK/drive.err" || rc=$?
        awk '{ sub(/.*\) /, ""); print $14 + $15 }' "/proc/$BASHPID/stat" >"$WORK/drive.cpu"
        exit $rc
    ) &
    local loader=$!
    PIDS+=($loader)
    if [[ $DRIVER != wrk ]]; then
        until grep -q '^run ' "$WORK/drive.err"; do
            kill -0 "$loader" 2>/dev/null || break
            sleep 0.01
        done
    fi
    local gw0 pg0 sims0 load0 other0
    gw0="$(tree_ticks "$GATEWAY")"; pg0="$(pg_ticks)"; sims0="$(tree_ticks "${SIM_PIDS[@]}")"
    load0="$(tree_ticks "$loader")"
    other0="$(other_xacts "$db")"

    local rc=0
    wait "$loader" || rc=$?
    forget "$loader"
    local gw1 pg1 sims1 load1 other1
    gw1="$(tree_ticks "$GATEWAY")"; pg1="$(pg_ticks)"; sims1="$(tree_ticks "${SIM_PIDS[@]}")"
    load1="$(cat "$WORK/drive.cpu" 2>/dev/null || echo "$load0")"
    curl -fsS "http://127.0.0.1:$OPS_PORT/metrics" >"$WORK/metrics.after"
    sleep 1.1 # Postgres publishes its transaction counters about once a second.
    other1="$(other_xacts "$db")"
    cp "$WORK/drive.out" "$WORK/drive-$label.out"
    [[ $rc == 0 ]] || { echo "[$label] ${driver[0]} exited $rc:" >&2; cat "$WORK/drive.err" "$WORK/drive.out" >&2; }

    local requests wall throughput p50 p99 max committed insufficient other other_labels
    if [[ $DRIVER == wrk ]]; then
        kv() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/drive.out"; }
        requests="$(kv requests)"; wall="$(kv wall_s)"; throughput="$(kv throughput)"
        p50="$(kv p50_ms)"; p99="$(kv p99_ms)"; max="$(kv max_ms)"
        committed="$(kv committed)"; insufficient="$(kv insufficient)"
        other=$(($(kv other) + $(kv ok_200)))
        other_labels="not committed, not insufficient_funds: $other; socket errors $(kv socket_errors)"
    else
        # The load tool's figures; outcome lines are "outcome  <label words>  <n>".
        requests="$(awk '/^requests/ { print $2 }' "$WORK/drive.out")"
        wall="$(awk '/^wall time/ { print $3 }' "$WORK/drive.out")"
        throughput="$(awk '/^throughput/ { print $2 }' "$WORK/drive.out")"
        read -r p50 p99 max < <(awk '/^latency ms/ { for (i = 3; i < NF; i++) v[$i] = $(i + 1); print v["p50"], v["p99"], v["max"] }' "$WORK/drive.out")
        read -r committed insufficient other < <(awk '/^outcome/ {
                n = $NF; $1 = ""; $NF = ""
                if ($0 ~ /committed/) c += n; else if ($0 ~ /insufficient_funds/) f += n; else o += n
            } END { print c + 0, f + 0, o + 0 }' "$WORK/drive.out")
        other_labels="$(awk '/^outcome/ && !/committed|insufficient_funds/ { n = $NF; $1 = ""; $NF = ""; gsub(/^ +| +$/, ""); printf "%s%s=%s", sep, $0, n; sep = ", " }' "$WORK/drive.out")"
    fi

    # The database's view of the same run.
    local db_committed db_insufficient db_other balance_sum
    read -r db_committed db_insufficient db_other balance_sum < <(psql -XAtq -F ' ' "$db_url" -c "
        SELECT count(*) FILTER (WHERE status = 'committed'),
               count(*) FILTER (WHERE status = 'declined' AND reason = 'insufficient_funds'),
               count(*) FILTER (WHERE NOT (status = 'committed' OR (status = 'declined' AND reason = 'insufficient_funds'))),
               (SELECT coalesce(sum(balance), 0) FROM accounts WHERE kind = 'customer')
        FROM transactions")
    local sims_received sims_approved sims_duplicates
    read -r sims_received sims_approved sims_duplicates < <(sims_stats)

    batch_histogram "$WORK/metrics.before" "$WORK/metrics.after" >"$WORK/batches-$label"

    stop "$GATEWAY" "${SIM_PIDS[@]}"
    drop_db "$db"

    {
        echo "binary $bin"
        echo "load_rc $rc"
        echo "requests $requests"
        echo "wall_s $wall"
        echo "throughput $throughput"
        echo "committed_per_s $(awk -v c="$committed" -v w="$wall" 'BEGIN { printf "%.0f", (w > 0) ? c / w : 0 }')"
        echo "p50_ms $p50"
        echo "p99_ms $p99"
        echo "max_ms $max"
        echo "committed $committed"
        echo "insufficient $insufficient"
        echo "other $other"
        echo "other_labels ${other_labels:--}"
        echo "db_committed $db_committed"
        echo "db_insufficient $db_insufficient"
        echo "db_other $db_other"
        echo "balance_sum $balance_sum"
        echo "sims_received $sims_received"
        echo "sims_approved $sims_approved"
        echo "sims_duplicates $sims_duplicates"
        echo "cpu_gateway $(us_per $((gw1 - gw0)) "$committed")"
        echo "cpu_postgres $(us_per $((pg1 - pg0)) "$committed")"
        echo "cpu_sims $(us_per $((sims1 - sims0)) "$committed")"
        echo "cpu_load $(us_per $((load1 - load0)) "$committed")"
        echo "cpu_total $(us_per $((gw1 - gw0 + pg1 - pg0 + sims1 - sims0 + load1 - load0)) "$committed")"
        echo "other_xacts $((other1 - other0))"
    } >"$res"
}

# get LABEL KEY: one figure of a gateway run.
get() { awk -v k="$2" '$1 == k { $1 = ""; sub(/^ /, ""); print; found = 1 } END { if (!found) print "?" }' "$WORK/res-$1"; }

# check LABEL EXPECTED_COMMITTED EXPECTED_INSUFFICIENT EXPECTED_BALANCE_SUM:
# "ok" or what disagrees. Expected values may be empty (not checked).
check() {
    local l="$1" problems=()
    local c i o
    c="$(get "$l" committed)"; i="$(get "$l" insufficient)"; o="$(get "$l" other)"
    [[ $(get "$l" load_rc) == 0 ]] || problems+=("$DRIVER_NAME exit $(get "$l" load_rc)")
    [[ $(get "$l" db_committed) == "$c" ]] || problems+=("db committed $(get "$l" db_committed) != $c")
    [[ $(get "$l" db_insufficient) == "$i" ]] || problems+=("db insufficient_funds $(get "$l" db_insufficient) != $i")
    [[ $(get "$l" db_other) == "$o" ]] || problems+=("db other $(get "$l" db_other) != $o")
    [[ $(get "$l" sims_approved) == "$c" ]] || problems+=("sims approved $(get "$l" sims_approved) != $c")
    [[ $(get "$l" sims_received) == "$c" ]] || problems+=("sims received $(get "$l" sims_received) != $c")
    [[ $(get "$l" sims_duplicates) == 0 ]] || problems+=("sims duplicates $(get "$l" sims_duplicates)")
    [[ -z $2 || $c == "$2" ]] || problems+=("committed $c, expected $2")
    [[ -z $3 || $i == "$3" ]] || problems+=("insufficient_funds $i, expected $3")
    [[ -z $4 || $(get "$l" balance_sum) == "$4" ]] || problems+=("balance sum $(get "$l" balance_sum), expected $4")
    if ((${#problems[@]} == 0)); then echo ok; else echo "MISMATCH: $(printf '%s; ' "${problems[@]}")"; fi
}

# run_builds: the scenario with SB_BIN ("gateway") and, when set,
# BASELINE_BIN ("baseline"); sets LABELS.
run_builds() {
    LABELS=(gateway)
    gateway_run gateway "$BIN" "${BENCH_TOML:-}"
    if [[ -n ${BASELINE_BIN:-} ]]; then
        LABELS+=(baseline)
        gateway_run baseline "$BASELINE_BIN" "${BASELINE_TOML:-}"
    fi
}

# row TITLE FORMAT KEY...: one line of the side-by-side table.
row() {
    local title="$1" fmt="$2" l
    shift 2
    printf '%-40s' "$title"
    for l in "${LABELS[@]}"; do
        local values=() k
        for k in "$@"; do values+=("$(get "$l" "$k")"); done
        # shellcheck disable=SC2059
        printf '%26s' "$(printf "$fmt" "${values[@]}")"
    done
    echo
}

# report EXPECTED_COMMITTED EXPECTED_INSUFFICIENT EXPECTED_BALANCE_SUM
report() {
    local l
    printf '%-40s' ""; for l in "${LABELS[@]}"; do printf '%26s' "$l"; done; echo
    row "requests" "%s" requests
    row "wall time, s" "%s" wall_s
    row "throughput, req/s" "%s" throughput
    row "committed tx/s" "%s" committed_per_s
    row "latency ms p50 / p99 / max" "%s / %s / %s" p50_ms p99_ms max_ms
    row "$DRIVER_NAME: committed" "%s" committed
    row "$DRIVER_NAME: insufficient_funds" "%s" insufficient
    row "$DRIVER_NAME: other" "%s" other
    row "database: committed / insuf. / other" "%s / %s / %s" db_committed db_insufficient db_other
    row "database: sum of customer balances" "%s" balance_sum
    row "sims: received / approved / dup." "%s / %s / %s" sims_received sims_approved sims_duplicates
    row "CPU µs per committed tx: gateway" "%s" cpu_gateway
    row "  Postgres (whole server)" "%s" cpu_postgres
    row "  sims (three)" "%s" cpu_sims
    row "  $DRIVER_NAME" "%s" cpu_load
    row "  total" "%s" cpu_total
    row "other databases' transactions meanwhile" "%s" other_xacts
    for l in "${LABELS[@]}"; do
        awk -v w="$(get "$l" wall_s)" -v m="$MAX_S" 'BEGIN { exit !(w >= m - 1) }' &&
            echo "WARNING: $l: the load ran to its time bound (${MAX_S} s): its figures are not valid"
    done
    for l in "${LABELS[@]}"; do
        echo "$l: binary $(get "$l" binary)"
        [[ $(get "$l" other) == 0 ]] || echo "$l: other outcomes: $(get "$l" other_labels)"
        echo "$l: check: $(check "$l" "$@")"
        echo "$l: batch sizes (switchboard_ledger_batch_size):"
        sed 's/^/    /' "$WORK/batches-$l"
    done
}

header() {
    echo "== $SCENARIO: $1"
    echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run; gateway driven by $DRIVER_NAME"
}

# ---------------------------------------------------------------- references

# pgbench_reference N CLIENTS: N guarded UPDATEs of 2 on one account holding
# N from CLIENTS connections, in a fresh database; writes $WORK/res-pgbench.
pgbench_reference() {
    local n="$1" clients="$2" mode="${PGBENCH_MODE:-prepared}"
    local db="${DB_PREFIX}_pgbench" url per_client=$(( $1 / $2 ))
    create_db "$db"
    url="$DB_URL"
    psql -Xq "$url" -v ON_ERROR_STOP=1 >/dev/null <<EOF
CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0));
INSERT INTO accounts VALUES (1, $n);
EOF
    echo 'UPDATE accounts SET balance = balance - 2 WHERE id = 1 AND balance >= 2;' >"$WORK/withdraw.sql"
    local cmd=(pgbench -n -M "$mode" -c "$clients" -j "$(nproc)" -t "$per_client" -f "$WORK/withdraw.sql" "$url")
    echo "[pgbench] ${cmd[*]}" >&2
    local pg0 pg1 t0 t1 rc=0
    pg0="$(pg_ticks)"
    t0="$(date +%s%N)"
    (
        rc=0
        timeout -k 5 "$MAX_S" "${cmd[@]}" >"$WORK/pgbench.out" 2>&1 || rc=$?
        awk '{ sub(/.*\) /, ""); print $14 + $15 }' "/proc/$BASHPID/stat" >"$WORK/pgbench.cpu"
        exit $rc
    ) || rc=$?
    t1="$(date +%s%N)"
    pg1="$(pg_ticks)"
    [[ $rc == 0 ]] || { echo "pgbench exited $rc:" >&2; cat "$WORK/pgbench.out" >&2; }
    local balance done_tx
    balance="$(psql -XAtq "$url" -c "SELECT balance FROM accounts WHERE id = 1")"
    done_tx="$(awk -F': ' '/number of transactions actually processed/ { split($2, a, "/"); print a[1] }' "$WORK/pgbench.out")"
    drop_db "$db"
    {
        echo "command ${cmd[*]}"
        echo "rc $rc"
        echo "transactions ${done_tx:-?}"
        echo "wall_s $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')"
        echo "tps $(awk '/^tps/ { printf "%.0f", $3; exit }' "$WORK/pgbench.out")"
        echo "latency_avg_ms $(awk '/^latency average/ { print $4 }' "$WORK/pgbench.out")"
        echo "balance $balance"
        echo "cpu_postgres $(us_per $((pg1 - pg0)) "$n")"
        echo "cpu_pgbench $(us_per "$(cat "$WORK/pgbench.cpu" 2>/dev/null || echo 0)" "$n")"
    } >"$WORK/res-pgbench"
}

# nginx_reference N CONNECTIONS: an nginx TLS reverse proxy (the gateway's
# certificate) round-robin over three fresh sims with keep-alive upstream
# connections, driven by wrk: N POSTs with unique ids over CONNECTIONS
# keep-alive connections; writes $WORK/res-nginx.
nginx_reference() {
    local n="$1" conns="$2" threads
    threads="$(nproc)"
    command -v nginx >/dev/null && command -v wrk >/dev/null ||
        { echo "the nginx reference needs nginx and wrk: apt-get install nginx-light wrk" >&2; exit 1; }
    start_sims "$SIM_BIN"
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    keepalive_requests 1000000;
    upstream sims {
        server 127.0.0.1:${SIM_PORTS[0]};
        server 127.0.0.1:${SIM_PORTS[1]};
        server 127.0.0.1:${SIM_PORTS[2]};
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $WORK/certs/server.pem;
        ssl_certificate_key $WORK/certs/server.key;
        location / {
            proxy_pass http://sims;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/stderr" &
    local nginx_pid=$!
    PIDS+=($nginx_pid)
    wait_for "https://127.0.0.1:$NGINX_PORT/health" nginx "$WORK/nginx/stderr"

    local per_thread=$((n / threads))
    rm -rf "$WORK/wrk.done" "$WORK/wrk.done.lock"
    local cmd=(wrk -t"$threads" -c"$conns" -d"${MAX_S}s" --timeout 30s -s "$ROOT/benches/wrk-post.lua"
        "https://127.0.0.1:$NGINX_PORT" -- "nginx-$$" "$per_thread" "$WORK/wrk.done" "$threads" /transactions)
    echo "[nginx] ${cmd[*]}" >&2
    local ng0 ng1 sims0 sims1 rc=0
    ng0="$(tree_ticks "$nginx_pid")"; sims0="$(tree_ticks "${SIM_PIDS[@]}")"
    (
        rc=0
        timeout -k 5 $((MAX_S + 30)) "${cmd[@]}" >"$WORK/wrk.out" 2>&1 || rc=$?
        awk '{ sub(/.*\) /, ""); print $14 + $15 }' "/proc/$BASHPID/stat" >"$WORK/wrk.cpu"
        exit $rc
    ) || rc=$?
    ng1="$(tree_ticks "$nginx_pid")"; sims1="$(tree_ticks "${SIM_PIDS[@]}")"
    [[ $rc == 0 ]] || { echo "wrk exited $rc:" >&2; cat "$WORK/wrk.out" >&2; }
    local requests received
    requests="$(awk '$1 == "requests" { print $2 }' "$WORK/wrk.out")"
    read -r received _ _ < <(sims_stats)
    stop "$nginx_pid" "${SIM_PIDS[@]}"
    {
        echo "command ${cmd[*]}"
        echo "rc $rc"
        grep -E '^(requests|wall_s|throughput|p50_ms|p99_ms|max_ms|ok_200|other|socket_errors) ' "$WORK/wrk.out"
        echo "sims_received $received"
        echo "cpu_nginx $(us_per $((ng1 - ng0)) "${requests:-0}")"
        echo "cpu_sims $(us_per $((sims1 - sims0)) "${requests:-0}")"
        echo "cpu_wrk $(us_per "$(cat "$WORK/wrk.cpu" 2>/dev/null || echo 0)" "${requests:-0}")"
    } >"$WORK/res-nginx"
}

ref() { awk -v k="$2" '$1 == k { $1 = ""; sub(/^ /, ""); print; found = 1 } END { if (!found) print "?" }' "$WORK/res-$1"; }

# balancing_run LABEL MODE SLOW_MS: the load tool's load through a gateway
# with forwarding.balancing = MODE, sim-3 slow by SLOW_MS (0: fast); writes
# throughput, latency and each sim's share to $WORK/res-LABEL.
balancing_run() {
    local label="$1" mode="$2" slow_ms="$3" db="${DB_PREFIX}_$1"
    create_db "$db"
    start_sims "$SIM_BIN"
    if ((slow_ms > 0)); then
        curl -fsS -X PUT -H 'content-type: application/json' \
            -d "{\"mode\": \"slow\", \"latencyMs\": $slow_ms}" \
            "http://127.0.0.1:${SIM_PORTS[2]}/faults" >/dev/null
    fi
    start_gateway "$BIN" "$DB_URL" $'[forwarding]\nbalancing = "'"$mode"$'"\n'"${BENCH_TOML:-}"
    echo "[$label] balancing = $mode, sim-3 slow ${slow_ms} ms: switchboard-load --requests $N --concurrency $C" >&2
    load --accounts 256 --balance 1000000000 --amount 1 --requests "$N" --concurrency "$C" \
        --max-duration-s "$MAX_S" --run-id "bench-$label-$$" >"$WORK/drive-$label.out" 2>"$WORK/drive.err" ||
        { cat "$WORK/drive.err" "$WORK/drive-$label.out" >&2; exit 1; }
    local port shares=()
    for port in "${SIM_PORTS[@]}"; do
        shares+=("$(curl -fsS "http://127.0.0.1:$port/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["received"])')")
    done
    stop "$GATEWAY" "${SIM_PIDS[@]}"
    drop_db "$db"
    local out="$WORK/drive-$label.out" total=$((shares[0] + shares[1] + shares[2]))
    {
        echo "throughput $(awk '/^throughput/ { print $2 }' "$out")"
        awk '/^latency ms/ { for (i = 3; i < NF; i++) v[$i] = $(i + 1); print "p50_ms", v["p50"]; print "p99_ms", v["p99"] }' "$out"
        echo "committed $(awk '/^outcome/ && /committed/ { c += $NF } END { print c + 0 }' "$out")"
        echo "shares $(awk -v a="${shares[0]}" -v b="${shares[1]}" -v c="${shares[2]}" -v t="$total" \
            'BEGIN { if (t > 0) printf "%.1f%% / %.1f%% / %.1f%%", 100 * a / t, 100 * b / t, 100 * c / t; else print "n/a" }')"
        echo "slow_share $(awk -v c="${shares[2]}" -v t="$total" 'BEGIN { if (t > 0) printf "%.3f", c / t; else print "n/a" }')"
    } >"$WORK/res-$label"
}

# ---------------------------------------------------------------- scenarios

case "$SCENARIO" in
withdrawals)
    N="${REQUESTS:-10000}"
    C="${CONCURRENCY:-256}"
    CLIENTS="${PGBENCH_CLIENTS:-50}"
    header "$N concurrent withdrawals of 2 from one account holding $N, $C connections, three sims"
    ACCOUNTS=1 BALANCE="$N" AMOUNT=2 CONNS="$C"
    run_builds
    [[ ${REFERENCE:-1} == 0 ]] || pgbench_reference "$N" "$CLIENTS"
    report $((N / 2)) $((N - N / 2)) $((N - 2 * (N / 2)))
    if [[ ${REFERENCE:-1} != 0 ]]; then
        echo "== reference: pgbench, only the $N guarded UPDATEs, $CLIENTS connections, same server"
        echo "command: $(ref pgbench command)"
        echo "transactions $(ref pgbench transactions), wall time $(ref pgbench wall_s) s, $(ref pgbench tps) tps," \
            "latency average $(ref pgbench latency_avg_ms) ms, final balance $(ref pgbench balance) (expected $((N - 2 * (N / 2))))"
        echo "CPU µs per UPDATE: Postgres $(ref pgbench cpu_postgres), pgbench $(ref pgbench cpu_pgbench)"
        for l in "${LABELS[@]}"; do
            echo "ratio $l wall time / pgbench wall time: $(ratio "$(get "$l" wall_s)" "$(ref pgbench wall_s)")"
        done
    fi
    ;;
spread)
    N="${REQUESTS:-20000}"
    C="${CONCURRENCY:-64}"
    header "debits of 1 over 256 accounts, $C connections, $N transactions, three sims"
    ACCOUNTS=256 BALANCE=1000000000 AMOUNT=1 CONNS="$C"
    run_builds
    [[ ${REFERENCE:-1} == 0 ]] || nginx_reference "$N" "$C"
    report "$N" 0 $((256 * 1000000000 - N))
    if [[ ${REFERENCE:-1} != 0 ]]; then
        echo "== reference: nginx TLS reverse proxy, round-robin over three sims (keep-alive), $N POSTs, $C connections (wrk)"
        echo "command: $(ref nginx command)"
        echo "requests $(ref nginx requests) in $(ref nginx wall_s) s: $(ref nginx throughput) req/s;" \
            "latency ms p50 $(ref nginx p50_ms) / p99 $(ref nginx p99_ms) / max $(ref nginx max_ms)"
        echo "answers: 200 $(ref nginx ok_200), other $(ref nginx other), socket errors $(ref nginx socket_errors);" \
            "sims received $(ref nginx sims_received)"
        echo "CPU µs per request: nginx $(ref nginx cpu_nginx), sims $(ref nginx cpu_sims), wrk $(ref nginx cpu_wrk)"
        awk -v w="$(ref nginx wall_s)" -v m="$MAX_S" 'BEGIN { exit !(w >= m - 1) }' &&
            echo "WARNING: wrk ran to its time bound (-d ${MAX_S}s): its throughput is not valid"
        for l in "${LABELS[@]}"; do
            echo "ratio $l committed tx/s / nginx req/s: $(ratio "$(get "$l" committed_per_s)" "$(ref nginx throughput)")"
        done
    fi
    ;;
memory)
    start_sims "$SIM_BIN"
    create_db "${DB_PREFIX}_memory"
    start_gateway "$BIN" "$DB_URL" "${BENCH_TOML:-}"
    echo "idle gateway RSS: $(rss_mib "$GATEWAY") MiB"
    load --idle-connections 10000 --hold-s 15 >"$WORK/idle.out" &
    HOLDER=$!
    PIDS+=($HOLDER)
    for _ in $(seq 1 600); do grep -q "^opened" "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
    cat "$WORK/idle.out"
    sleep 2
    echo "gateway RSS with those connections open: $(rss_mib "$GATEWAY") MiB"
    echo "open connections (metric): $(curl -fsS "http://127.0.0.1:$OPS_PORT/metrics" | awk '/^switchboard_connections_open / { print $2 }')"
    wait "$HOLDER"
    ;;
failover)
    start_sims "$SIM_BIN"
    create_db "${DB_PREFIX}_failover"
    start_gateway "$BIN" "$DB_URL" "${BENCH_TOML:-}"
    load --accounts 64 --balance 1000000000 --amount 1 --requests 1000000 --concurrency 64 \
        --max-duration-s 20 --window-s 1 >"$WORK/failover.out" &
    LOADER=$!
    PIDS+=($LOADER)
    sleep 5
    kill -9 "${SIM_PIDS[0]}"
    KILLED_AT=$(date +%s%N)
    OPERATOR=$("$BIN" --config "$WORK/bench.toml" token --sub bench-op --roles operator)
    for _ in $(seq 1 3000); do
        in_rotation=$(curl -fsS --cacert "$WORK/certs/ca.pem" -H "Authorization: Bearer $OPERATOR" \
            "https://localhost:$GATEWAY_PORT/v1/switches" --resolve "localhost:$GATEWAY_PORT:127.0.0.1" |
            python3 -c 'import json,sys; s=[x for x in json.load(sys.stdin)["switches"] if x["name"]=="sim-1"][0]; print(int(s["healthy"] and s["consecutiveForwardFailures"] < 3))')
        [[ $in_rotation == 0 ]] && break
        sleep 0.01
    done
    echo "sim-1 left the rotation $((($(date +%s%N) - KILLED_AT) / 1000000)) ms after SIGKILL (at t=5 s)"
    wait "$LOADER" || true
    cat "$WORK/failover.out"
    ;;
balancing)
    N="${REQUESTS:-6000}"
    C="${CONCURRENCY:-64}"
    SLOW_MS="${SLOW_MS:-200}"
    header "balancing: debits of 1 over 256 accounts, $C connections, $N transactions, three sims"
    balancing_run fast round_robin 0
    balancing_run slow_rr round_robin "$SLOW_MS"
    balancing_run slow_ll least_latency "$SLOW_MS"
    printf '%-44s%12s%10s%10s%12s  %s\n' run "tx/s" "p50 ms" "p99 ms" committed "share sim-1 / sim-2 / sim-3"
    for l in fast slow_rr slow_ll; do
        case $l in
        fast) title="all fast, round_robin" ;;
        slow_rr) title="sim-3 slow $SLOW_MS ms, round_robin" ;;
        slow_ll) title="sim-3 slow $SLOW_MS ms, least_latency" ;;
        esac
        printf '%-44s%12s%10s%10s%12s  %s\n' "$title" "$(ref "$l" throughput)" "$(ref "$l" p50_ms)" \
            "$(ref "$l" p99_ms)" "$(ref "$l" committed)" "$(ref "$l" shares)"
    done
    for l in slow_rr slow_ll; do
        echo "ratio $l p99 / all-fast p99: $(ratio "$(ref "$l" p99_ms)" "$(ref fast p99_ms)");" \
            "slow switch share $(ref "$l" slow_share)"
    done
    echo "targets: least_latency p99 ratio <= 1.5, slow switch share < 0.10"
    ;;
flood)
    start_sims "$SIM_BIN"
    create_db "${DB_PREFIX}_flood"
    start_gateway "$BIN" "$DB_URL" "${BENCH_TOML:-}"
    echo "== baseline: legitimate load alone (127.0.0.1)"
    load --accounts 64 --balance 1000000000 --amount 1 --requests 6000 --concurrency 32 | grep -v "^balance"
    echo "== with a flood of invalid tokens from 127.0.0.2 (64 connections)"
    load --local-ip 127.0.0.2 --garbage-tokens --requests 10000000 --concurrency 64 \
        --max-duration-s 20 >"$WORK/flood.out" &
    FLOODER=$!
    PIDS+=($FLOODER)
    sleep 2
    load --accounts 64 --balance 1000000000 --amount 1 --requests 6000 --concurrency 32 | grep -v "^balance"
    wait "$FLOODER" || true
    echo "== the flood (20 s)"
    cat "$WORK/flood.out"
    curl -fsS "http://127.0.0.1:$OPS_PORT/metrics" | grep -E '^switchboard_requests_denied_total'
    ;;
esac

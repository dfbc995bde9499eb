#!/usr/bin/env bash
# The one test command: `scripts/test.sh [extra cargo test args...]`.
#
# Finds a PostgreSQL the integration tests can use, then runs
# `cargo test --all-targets` with DATABASE_URL exported. In order:
#
#   1. DATABASE_URL from the environment, else from `.env.test`, if that server
#      answers and its role may CREATE DATABASE (each test creates its own).
#   2. Otherwise a throwaway cluster from local Postgres binaries (`initdb` +
#      `pg_ctl`, on PATH or under /usr/lib/postgresql/*/bin, highest version)
#      on a free 127.0.0.1 port, in a temp dir removed on exit, whatever the
#      test result. As root it runs as the `postgres` user (created if missing).
#   3. Otherwise, as root with apt-get (Debian/Ubuntu), it installs the
#      `postgresql` package first, then retries 1 and 2.
#      Set SWITCHBOARD_NO_INSTALL=1 to forbid that.
#   4. Otherwise it fails, saying how to get a PostgreSQL.
#
# On a server it did not start, it first drops stale test databases of
# earlier runs: those named as tests/it/db.rs names them (`sb_<pid>_<uuid>`,
# or the older `sb_<uuid>`) that nobody is connected to and whose test
# process, when the name carries one, is gone. Each test drops its own
# database when it ends (panics included); this catches runs that were killed.
#
# Then it finds, starts or installs a Redis the same way (see "Redis" below)
# and exports REDIS_URL.
#
# Before it installs anything as root it says what and why, one line each.
#
# Environment:
#   DATABASE_URL            overrides `.env.test`.
#   REDIS_URL               overrides `.env.test`'s REDIS_URL.
#   SWITCHBOARD_TEST_CMD    if set, run `bash -c "$SWITCHBOARD_TEST_CMD"` (extra
#                           args as $1...) instead of cargo; for trying this
#                           script itself, e.g.
#                           SWITCHBOARD_TEST_CMD='psql "$DATABASE_URL" -c "select 1"'
#   SWITCHBOARD_NO_INSTALL  if 1, never install packages.
#   SWITCHBOARD_KEEP_TEST_DB if 1, the tests keep their databases (and this
#                           script still drops stale ones before the run).
#   SWITCHBOARD_KEEP_PG     if 1, leave the throwaway cluster's directory behind
#                           (the server is still stopped) for reading its log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf 'test.sh: %s\n' "$*" >&2; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# A URL fit for printing: the password, if any, masked.
redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# --- where DATABASE_URL comes from -------------------------------------------

# The value of KEY in a dotenv-style file, without sourcing it: last
# `KEY=value` (optionally `export KEY=value`) wins, surrounding quotes dropped.
dotenv_get() {
    local file=$1 key=$2 line val="" found=1
    [[ -f $file ]] || return 1
    while IFS= read -r line || [[ -n $line ]]; do
        line="${line%$'\r'}"
        [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?${key}[[:space:]]*=(.*)$ ]] || continue
        val="${BASH_REMATCH[2]}"
        val="${val#"${val%%[![:space:]]*}"}"   # trim leading space
        val="${val%"${val##*[![:space:]]}"}"   # trim trailing space
        if [[ $val =~ ^\"(.*)\"$ || $val =~ ^\'(.*)\'$ ]]; then
            val="${BASH_REMATCH[1]}"
        fi
        found=0
    done <"$file"
    [[ $found -eq 0 ]] && printf '%s\n' "$val"
}

URL_SOURCE=""
if [[ -n ${DATABASE_URL:-} ]]; then
    URL_SOURCE="from the environment"
elif DATABASE_URL="$(dotenv_get .env.test DATABASE_URL)" && [[ -n $DATABASE_URL ]]; then
    URL_SOURCE="from .env.test"
else
    DATABASE_URL=""
fi

# --- is a server at a URL usable? ---------------------------------------------

# host and port of a postgres:// URL, into URL_HOST / URL_PORT.
parse_host_port() {
    local rest=${1#*://}
    rest=${rest%%/*}; rest=${rest%%\?*}
    rest=${rest##*@}
    if [[ $rest =~ ^\[([^]]*)\](:([0-9]+))?$ ]]; then
        URL_HOST=${BASH_REMATCH[1]}; URL_PORT=${BASH_REMATCH[3]:-5432}
    else
        URL_HOST=${rest%%:*}; URL_PORT=5432
        [[ $rest == *:* ]] && URL_PORT=${rest##*:}
    fi
    URL_HOST=${URL_HOST:-localhost}
}

# Why the last usable() call said no, for the user.
NOT_USABLE_WHY=""

# True if the server at $1 answers and (when psql can tell) may CREATE DATABASE.
usable() {
    local url=$1 out
    NOT_USABLE_WHY=""
    if have psql; then
        if ! out="$(PGCONNECT_TIMEOUT=5 psql "$url" -X -At -v ON_ERROR_STOP=1 \
            -c 'select rolcreatedb or rolsuper from pg_roles where rolname = current_user' 2>&1)"; then
            NOT_USABLE_WHY="$(head -n 3 <<<"$out")"
            return 1
        fi
        if [[ $out != t ]]; then
            NOT_USABLE_WHY="its role may not CREATE DATABASE (the tests create one per test)"
            return 1
        fi
        return 0
    fi
    if have pg_isready; then
        if ! out="$(pg_isready -d "$url" -t 5 2>&1)"; then
            NOT_USABLE_WHY="$out"
            return 1
        fi
        return 0
    fi
    parse_host_port "$url"
    # shellcheck disable=SC2016  # $1/$2 expand in the inner bash
    if ! timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$URL_HOST" "$URL_PORT" 2>/dev/null; then
        NOT_USABLE_WHY="nothing listening on $URL_HOST:$URL_PORT"
        return 1
    fi
    return 0
}

show_max_connections() {
    have psql || return 0
    PGCONNECT_TIMEOUT=5 psql "$1" -X -At -c 'show max_connections' 2>/dev/null || true
}

# --- throwaway cluster ----------------------------------------------------------

PG_BIN=""     # directory holding initdb, pg_ctl and postgres
PG_DIR=""     # temp dir of the throwaway cluster, if started
PG_STARTED=0
CHILD_PID=""  # the running test command, if any

# Sets PG_BIN to a directory with initdb and pg_ctl: PATH first (symlinks
# resolved, so `postgres` is found beside them), else the highest
# /usr/lib/postgresql/<version>/bin.
find_pg_bin() {
    local initdb dir v best="" bestv=-1
    if have initdb && have pg_ctl; then
        initdb="$(readlink -f "$(command -v initdb)")"
        dir="$(dirname "$initdb")"
        if [[ -x $dir/pg_ctl && -x $dir/postgres ]]; then
            PG_BIN=$dir; return 0
        fi
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]] || continue
        v="$(basename "$(dirname "$dir")")"
        v="${v%%.*}"
        [[ $v =~ ^[0-9]+$ ]] || v=0
        if (( v > bestv )); then best=$dir; bestv=$v; fi
    done
    [[ -n $best ]] || return 1
    PG_BIN=$best
}

# A port on 127.0.0.1 that nothing listens on.
free_port() {
    local p
    if have python3 && p="$(python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null)" && [[ $p =~ ^[0-9]+$ ]]; then
        printf '%s\n' "$p"; return 0
    fi
    for ((p = 54320 + RANDOM % 1000; p < 65000; p++)); do
        # shellcheck disable=SC2016  # $1 expands in the inner bash
        if ! timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$p" 2>/dev/null; then
            printf '%s\n' "$p"; return 0
        fi
    done
    return 1
}

# Run a command as the cluster's owner: ourselves, or `postgres` when root
# (initdb and postgres refuse to run as root). Run from / so the current
# directory need not be readable by postgres.
# shellcheck disable=SC2317  # also invoked from the EXIT trap
as_owner() {
    if [[ $EUID -ne 0 ]]; then
        "$@"
    elif have runuser; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    fi
}

REDIS_DIR=""   # temp dir of the throwaway Redis, if started
REDIS_PID=""   # its process

# shellcheck disable=SC2317  # invoked from cleanup
stop_throwaway_redis() {
    if [[ -n $REDIS_PID ]]; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
    fi
    if [[ -n $REDIS_DIR && -d $REDIS_DIR ]]; then
        rm -rf -- "$REDIS_DIR" || true
    fi
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT
    # Interrupted while the tests run: stop them before the server goes away.
    if [[ -n $CHILD_PID ]] && kill -0 "$CHILD_PID" 2>/dev/null; then
        kill -TERM "$CHILD_PID" 2>/dev/null || true
        wait "$CHILD_PID" 2>/dev/null || true
    fi
    stop_throwaway_redis
    if [[ -n $PG_DIR && -d $PG_DIR ]]; then
        if [[ $PG_STARTED -eq 1 ]]; then
            as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
        fi
        if [[ ${SWITCHBOARD_KEEP_PG:-0} == 1 ]]; then
            say "kept throwaway Postgres directory $PG_DIR"
        else
            rm -rf -- "$PG_DIR" || true
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

start_throwaway() {
    find_pg_bin || return 1
    local version port base
    version="$("$PG_BIN/initdb" --version 2>/dev/null | awk '{print $3}')" || version="?"

    if [[ $EUID -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
        say "creating system user postgres to own the throwaway cluster"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin postgres 2>/dev/null \
            || adduser --system --group --no-create-home postgres >/dev/null \
            || die "cannot create the postgres user (initdb refuses to run as root)"
    fi

    base="${TMPDIR:-/tmp}"
    PG_DIR="$(mktemp -d "$base/switchboard-pg.XXXXXX" 2>/dev/null)" \
        || PG_DIR="$(mktemp -d /tmp/switchboard-pg.XXXXXX)"
    if [[ $EUID -eq 0 ]]; then
        chown postgres: "$PG_DIR"
        # The postgres user must reach it (e.g. TMPDIR under /root would not do).
        if ! as_owner test -w "$PG_DIR"; then
            rm -rf -- "$PG_DIR"
            PG_DIR="$(mktemp -d /tmp/switchboard-pg.XXXXXX)"
            chown postgres: "$PG_DIR"
        fi
    fi
    chmod 700 "$PG_DIR"

    port="$(free_port)" || die "no free port on 127.0.0.1"

    if ! as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres \
        -E UTF8 --locale=C --no-sync >"$PG_DIR/initdb.log" 2>&1; then
        cat "$PG_DIR/initdb.log" >&2
        die "initdb failed (log above)"
    fi
    PG_STARTED=1   # from here on, cleanup tries to stop it
    if ! as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
        -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null 2>&1; then
        tail -n 30 "$PG_DIR/postgres.log" >&2 || true
        die "pg_ctl start failed (log above)"
    fi

    DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    say "started throwaway Postgres $version on 127.0.0.1:$port ($PG_BIN, data in $PG_DIR, max_connections 300)"
}

install_postgres() {
    [[ $EUID -eq 0 ]] || return 1
    have apt-get || return 1
    [[ ${SWITCHBOARD_NO_INSTALL:-0} != 1 ]] || return 1
    say "will install (apt-get, as root): postgresql: no usable Postgres was found and the integration tests need one (SWITCHBOARD_NO_INSTALL=1 forbids installing)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

# --- pick a Postgres --------------------------------------------------------------

use_url() {
    local mc
    mc="$(show_max_connections "$DATABASE_URL")"
    say "using Postgres at $(redact "$DATABASE_URL") ($URL_SOURCE${mc:+, max_connections $mc})"
}

if [[ -n $DATABASE_URL ]] && usable "$DATABASE_URL"; then
    use_url
else
    if [[ -n $DATABASE_URL ]]; then
        say "Postgres at $(redact "$DATABASE_URL") ($URL_SOURCE) is not usable: ${NOT_USABLE_WHY:-no answer}"
    fi
    if ! start_throwaway; then
        if install_postgres; then
            if [[ -n $DATABASE_URL ]] && usable "$DATABASE_URL"; then
                use_url
            elif ! start_throwaway; then
                die "installed postgresql but found no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
            fi
        else
            die "no PostgreSQL found. Either install one (Debian/Ubuntu: sudo apt-get install postgresql; \
or run this script as root to have it installed) so initdb and pg_ctl are on PATH or under \
/usr/lib/postgresql/*/bin, or start a server whose role may CREATE DATABASE and set \
DATABASE_URL=postgres://USER@HOST:PORT/postgres in .env.test or the environment."
        fi
    fi
fi

export DATABASE_URL
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# --- stale test databases of earlier runs ------------------------------------------
# tests/it/db.rs names each test's database sb_<pid>_<uuid> (earlier versions:
# sb_<uuid>) and drops it when the test ends. A run that was killed leaves its
# databases behind; drop those nobody is connected to and whose process is
# gone. Without FORCE, so one that somebody connects to meanwhile stays.
# Other names (benches/run.sh's sb_bench_*, anything else) are never touched.

pid_alive() { [[ -d /proc/$1 ]] || kill -0 "$1" 2>/dev/null; }

drop_stale_test_databases() {
    local url=$1 name pid dropped=0 kept=0
    if ! have psql; then
        say "psql not found: not looking for stale test databases"
        return 0
    fi
    local names
    names="$(PGCONNECT_TIMEOUT=5 psql "$url" -X -At -v ON_ERROR_STOP=1 -c "
        SELECT d.datname FROM pg_database d
        WHERE d.datname ~ '^sb_([0-9]+_)?[0-9a-f]{32}\$'
          AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)
        ORDER BY 1" 2>/dev/null)" || { say "could not list databases: not looking for stale test databases"; return 0; }
    while IFS= read -r name; do
        [[ -n $name ]] || continue
        if [[ $name =~ ^sb_([0-9]+)_ ]]; then
            pid=${BASH_REMATCH[1]}
            if pid_alive "$pid"; then
                kept=$((kept + 1))
                continue
            fi
        fi
        if PGCONNECT_TIMEOUT=5 psql "$url" -X -q -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS \"$name\"" >/dev/null 2>&1; then
            dropped=$((dropped + 1))
        fi
    done <<<"$names"
    local note=""
    ((kept == 0)) || note="; kept $kept of test processes still running"
    if ((dropped > 0 || kept > 0)); then
        say "dropped $dropped stale test database(s) of earlier runs (sb_*, nobody connected)$note"
    fi
}

if [[ $PG_STARTED -eq 0 ]]; then
    drop_stale_test_databases "$DATABASE_URL"
fi

# --- Redis (tests/it/shared_limits.rs) ---------------------------------------------
# The shared-rate-limit tests need a Redis, at REDIS_URL, and the redis-server
# binary (some tests start one of their own on a free port, to kill it). In
# order:
#
#   1. REDIS_URL from the environment, else from `.env.test`, if it answers PING.
#   2. Otherwise redis://127.0.0.1:6379 if it answers (SWITCHBOARD_REDIS_DEFAULT_URL
#      names another, for trying this script).
#   3. Otherwise a throwaway redis-server (no persistence) on a free 127.0.0.1
#      port, in a temp dir, stopped and removed on exit whatever the result.
#
# Without redis-server, as root with apt-get it first installs Debian's
# `redis-server` package (saying so; SWITCHBOARD_NO_INSTALL=1 forbids it);
# otherwise it fails, saying how to get one.


# True if the Redis at URL $1 answers PING (redis-cli when there is one, else
# a bare RESP PING over /dev/tcp, which cannot authenticate).
redis_answers() {
    local url=$1 rest host port out
    if have redis-cli; then
        out="$(timeout 5 redis-cli -u "$url" ping 2>/dev/null)" || return 1
        [[ $out == PONG ]]
        return
    fi
    rest=${url#*://}; rest=${rest##*@}; rest=${rest%%/*}
    host=${rest%%:*}; port=6379
    [[ $rest == *:* ]] && port=${rest##*:}
    # shellcheck disable=SC2016  # $1/$2 expand in the inner bash
    timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "PING\r\n" >&3 && IFS= read -r line <&3 && [[ $line == +PONG* ]]' \
        _ "${host:-127.0.0.1}" "$port" 2>/dev/null
}

install_redis() {
    [[ $EUID -eq 0 ]] || return 1
    have apt-get || return 1
    [[ ${SWITCHBOARD_NO_INSTALL:-0} != 1 ]] || return 1
    say "will install (apt-get, as root): redis-server: tests/it/shared_limits.rs shares rate limits through a real Redis and starts redis-server processes of its own (SWITCHBOARD_NO_INSTALL=1 forbids installing)"
    if [[ ${APT_UPDATED:-0} != 1 ]]; then
        apt-get update -qq || die "apt-get update failed (see above)"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
        || die "apt-get could not install redis-server (see above)"
    hash -r
}

start_throwaway_redis() {
    local port base
    port="$(free_port)" || die "no free port on 127.0.0.1"
    base="${TMPDIR:-/tmp}"
    REDIS_DIR="$(mktemp -d "$base/switchboard-redis.XXXXXX" 2>/dev/null)" \
        || REDIS_DIR="$(mktemp -d /tmp/switchboard-redis.XXXXXX)"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$REDIS_DIR" --logfile "$REDIS_DIR/redis.log" &
    REDIS_PID=$!
    REDIS_URL="redis://127.0.0.1:$port"
    local i
    for ((i = 0; i < 50; i++)); do
        redis_answers "$REDIS_URL" && break
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ! redis_answers "$REDIS_URL"; then
        tail -n 20 "$REDIS_DIR/redis.log" >&2 || true
        die "redis-server did not start on 127.0.0.1:$port (log above)"
    fi
    say "started throwaway Redis $(redis-server --version | awk '{print $3}') on 127.0.0.1:$port (data in $REDIS_DIR)"
}


if ! have redis-server; then
    install_redis || die "redis-server not found (tests/it/shared_limits.rs starts its own Redis servers). \
Install it (Debian/Ubuntu: sudo apt-get install redis-server), or run this script as root to have it installed."
    have redis-server || die "installed redis-server, but no 'redis-server' command is on PATH"
fi

REDIS_SOURCE=""
if [[ -n ${REDIS_URL:-} ]]; then
    REDIS_SOURCE="from the environment"
elif REDIS_URL="$(dotenv_get .env.test REDIS_URL)" && [[ -n $REDIS_URL ]]; then
    REDIS_SOURCE="from .env.test"
else
    REDIS_URL=""
fi
REDIS_DEFAULT_URL="${SWITCHBOARD_REDIS_DEFAULT_URL:-redis://127.0.0.1:6379}"
if [[ -n $REDIS_URL ]] && redis_answers "$REDIS_URL"; then
    say "using Redis at $(redact "$REDIS_URL") ($REDIS_SOURCE)"
else
    if [[ -n $REDIS_URL ]]; then
        say "Redis at $(redact "$REDIS_URL") ($REDIS_SOURCE) does not answer PING"
    fi
    if redis_answers "$REDIS_DEFAULT_URL"; then
        REDIS_URL=$REDIS_DEFAULT_URL
        say "using Redis at $(redact "$REDIS_URL") (it answers there)"
    else
        start_throwaway_redis
    fi
fi
export REDIS_URL

# --- tools other tests drive: docker-compose, chromium, promtool ----------------
# tests/it/compose.rs runs `docker-compose config` on the compose files, the
# status-page test drives a headless chromium, and the alert rules are checked
# with promtool. Each comes from a Debian package (promtool from `prometheus`),
# installed as root with apt-get when missing, as is pip when schemathesis
# (next block) is missing and pip with it. `apt-get update` runs at most once
# (APT_UPDATED=1 says it already ran), and only when something is missing.

if [[ -z ${SWITCHBOARD_TEST_CMD:-} ]]; then
    tools_missing=()   # commands, for messages
    tools_pkgs=()      # Debian packages providing them
    tools_why=()       # why each package is needed, one line each
    have docker-compose || { tools_missing+=(docker-compose); tools_pkgs+=(docker-compose)
        tools_why+=("tests/it/compose.rs runs 'docker-compose config' on both compose files (no Docker engine)"); }
    have chromium || { tools_missing+=(chromium); tools_pkgs+=(chromium)
        tools_why+=("tests/it/status_page.rs and tests/it/openapi.rs render the status page and the API reference page in headless Chromium"); }
    have promtool || { tools_missing+=(promtool); tools_pkgs+=(prometheus)
        tools_why+=("for promtool: tests/it/ops_docs.rs checks and unit-tests ops/alerts.yml (the daemon is stopped again)"); }
    if ! have schemathesis && ! { have python3 && python3 -m pip --version >/dev/null 2>&1; }; then
        tools_missing+=("pip (for schemathesis)"); tools_pkgs+=(python3-pip)
        tools_why+=("pip installs schemathesis, which tests/it/openapi.rs runs against the live gateway")
    fi
    if ((${#tools_pkgs[@]} > 0)); then
        tools_hint="apt-get install --no-install-recommends ${tools_pkgs[*]}"
        [[ ${SWITCHBOARD_NO_INSTALL:-0} != 1 ]] \
            || die "not found: ${tools_missing[*]}; SWITCHBOARD_NO_INSTALL=1, so install them yourself (Debian/Ubuntu: sudo $tools_hint)"
        if [[ $EUID -ne 0 ]] || ! have apt-get; then
            die "not found: ${tools_missing[*]}; install them (Debian/Ubuntu: sudo $tools_hint), or run this script as root to have them installed"
        fi
        say "not found: ${tools_missing[*]}; as root, installing with apt-get (SWITCHBOARD_NO_INSTALL=1 forbids it):"
        for i in "${!tools_pkgs[@]}"; do
            say "  will install ${tools_pkgs[$i]}: ${tools_why[$i]}"
        done
        if [[ ${APT_UPDATED:-0} != 1 ]]; then
            apt-get update -qq || die "apt-get update failed (see above)"
            APT_UPDATED=1
        fi
        # No recommends: docker-compose's would bring a Docker engine.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${tools_pkgs[@]}" >/dev/null \
            || die "apt-get could not install ${tools_pkgs[*]} (see above)"
        # `prometheus` is here for promtool: under systemd, stop the daemon
        # its installation started.
        if [[ " ${tools_pkgs[*]} " == *" prometheus "* ]]; then
            if [[ -d /run/systemd/system ]]; then
                systemctl disable --now prometheus.service >/dev/null 2>&1 || true
            fi
            # Without systemd an init script may have started it: it would
            # hold port 9090, which the README test's demo needs.
            pkill -x prometheus >/dev/null 2>&1 || true
        fi
        hash -r
        for tool in docker-compose chromium promtool; do
            have "$tool" || die "installed ${tools_pkgs[*]}, but no '$tool' command is on PATH"
        done
    fi
fi

# --- schemathesis (tests/it/openapi.rs fuzzes the live gateway with it) -------

if [[ -z ${SWITCHBOARD_TEST_CMD:-} ]] && ! have schemathesis; then
    pip_hint="install it yourself: python3 -m pip install 'schemathesis>=4,<5'"
    [[ ${SWITCHBOARD_NO_INSTALL:-0} != 1 ]] \
        || die "schemathesis not found and SWITCHBOARD_NO_INSTALL=1: $pip_hint"
    if ! have python3 || ! python3 -m pip --version >/dev/null 2>&1; then
        die "schemathesis not found and pip is unavailable (Debian/Ubuntu: apt-get install python3-pip), then $pip_hint"
    fi
    say "will install (python3 -m pip): schemathesis: tests/it/openapi.rs fuzzes the live gateway with it (SWITCHBOARD_NO_INSTALL=1 forbids installing)"
    # A Debian system Python refuses plain installs (PEP 668): then --user.
    python3 -m pip install --quiet 'schemathesis>=4,<5' \
        || python3 -m pip install --quiet --user --break-system-packages 'schemathesis>=4,<5' \
        || die "pip could not install schemathesis (see above); $pip_hint"
    # pip's script directories need not be on PATH (pyenv, --user installs).
    PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(python3 -m site --user-base)/bin"
    hash -r
    have schemathesis || die "installed schemathesis, but no 'schemathesis' command is on PATH"
fi

# --- kubernetes-validate and checkov (tests/it/kubernetes.rs) -------------------
# tests/it/kubernetes.rs validates deploy/kubernetes/ against the Kubernetes
# schemas bundled in kubernetes-validate and scans it with checkov, offline.
# When either is missing from PATH, both are installed with pip into a virtual
# environment of their own, target/python-tools (checkov pins old versions of
# common packages such as `packaging`, which would replace newer ones other
# tools in the same Python use), and its bin/ goes on PATH.

K8S_TOOLS_DIR="$ROOT/target/python-tools"
K8S_TOOLS_PKGS=('kubernetes-validate>=1.37,<1.38' 'checkov>=3.2,<4')
if [[ -z ${SWITCHBOARD_TEST_CMD:-} ]]; then
    [[ -x $K8S_TOOLS_DIR/bin/checkov ]] && PATH="$PATH:$K8S_TOOLS_DIR/bin"
    if ! have kubernetes-validate || ! have checkov; then
        k8s_hint="install them yourself: python3 -m venv target/python-tools && target/python-tools/bin/pip install ${K8S_TOOLS_PKGS[*]}"
        [[ ${SWITCHBOARD_NO_INSTALL:-0} != 1 ]] \
            || die "kubernetes-validate or checkov not found and SWITCHBOARD_NO_INSTALL=1: $k8s_hint"
        have python3 || die "kubernetes-validate or checkov not found and there is no python3: $k8s_hint"
        # Debian's python3 creates virtual environments only with python3-venv.
        if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
            if [[ $EUID -ne 0 ]] || ! have apt-get; then
                die "python3 cannot create a virtual environment (Debian/Ubuntu: sudo apt-get install python3-venv), then $k8s_hint"
            fi
            say "installing python3-venv (apt-get): Python's virtual environments, for kubernetes-validate and checkov"
            if [[ ${APT_UPDATED:-0} != 1 ]]; then
                apt-get update -qq || die "apt-get update failed (see above)"
                APT_UPDATED=1
            fi
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
                || die "apt-get could not install python3-venv (see above)"
        fi
        say "installing kubernetes-validate (Kubernetes API schemas, offline) and checkov (policy scan) for tests/it/kubernetes.rs: pip into $K8S_TOOLS_DIR"
        { [[ -x $K8S_TOOLS_DIR/bin/pip ]] || python3 -m venv "$K8S_TOOLS_DIR"; } \
            || die "python3 -m venv $K8S_TOOLS_DIR failed (see above); $k8s_hint"
        "$K8S_TOOLS_DIR/bin/python" -m pip install --quiet "${K8S_TOOLS_PKGS[@]}" \
            || die "pip could not install kubernetes-validate and checkov (see above); $k8s_hint"
        PATH="$PATH:$K8S_TOOLS_DIR/bin"
        hash -r
        for tool in kubernetes-validate checkov; do
            have "$tool" || die "installed ${K8S_TOOLS_PKGS[*]}, but no '$tool' command is on PATH"
        done
    fi
fi

# --- run the tests ---------------------------------------------------------------

# The tests run as a child the script waits for, so that a SIGTERM/SIGINT to
# this script is acted on at once (bash defers traps until a foreground
# command ends): the trap stops the child, then the throwaway server.
# Background children get SIGINT/SIGQUIT ignored; `env --default-signal`
# restores them so Ctrl-C still reaches cargo and the test binaries.
DEFAULT_SIGNALS=()
if env --default-signal=INT,QUIT true 2>/dev/null; then
    DEFAULT_SIGNALS=(env "--default-signal=INT,QUIT")
fi
run() {
    "${DEFAULT_SIGNALS[@]}" "$@" &
    CHILD_PID=$!
    rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
}

rc=0
if [[ -n ${SWITCHBOARD_TEST_CMD:-} ]]; then
    say "running SWITCHBOARD_TEST_CMD: $SWITCHBOARD_TEST_CMD"
    run bash -c "$SWITCHBOARD_TEST_CMD" switchboard-test "$@"
else
    if ! have cargo && [[ -f $HOME/.cargo/env ]]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    have cargo || die "cargo not found: install Rust from https://rustup.rs"
    locked=()
    [[ -f Cargo.lock ]] && locked=(--locked)
    say "running: cargo test --all-targets ${locked[*]} $*"
    run cargo test --all-targets "${locked[@]}" "$@"
fi
exit "$rc"

#!/usr/bin/env bash
# shellcheck shell=bash
# Make PostgreSQL and Redis reachable for the test suite and export
#   TEST_DATABASE_URL  (postgresql://, role allowed to CREATE DATABASE, trust auth over TCP)
#   TEST_REDIS_URL     (redis://host:port/15)
#
# Usage:  . scripts/services.sh            # sets and exports both variables
#         stop_private_services            # stops only the private servers started here
#         eval "$(scripts/services.sh)"    # when executed: prints the export lines
#         scripts/services.sh stop
# Order: values already in the environment -> system servers on 5432/6379 ->
#        Debian cluster via pg_ctlcluster -> private servers in <repo>/.ci/state
#        (ports 54329/63790). SERVICES_FORCE_PRIVATE=1 goes straight to the private ones.
# No `set -e`/`set -u` changes are made; everything is safe under either.

_SVC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_SVC_STATE=$_SVC_ROOT/.ci/state
_SVC_PG_PORT=54329
_SVC_REDIS_PORT=63790

_svc_say() { echo "[services] $*" >&2; }

# Succeeds if the URL connects (never prompts for a password) as a role that may create databases.
# Asks with psql when it is installed, else with the virtualenv's psycopg (a server needs no client package).
_svc_pg_ok() {
    local query='select rolcreatedb or rolsuper from pg_roles where rolname = current_user' python
    if command -v psql >/dev/null 2>&1; then
        [ "$(PGCONNECT_TIMEOUT=3 psql -X -w "$1" -Atc "$query" 2>/dev/null)" = t ]
        return
    fi
    python=$_SVC_ROOT/.venv/bin/python
    [ -x "$python" ] || python=python3
    [ "$("$python" -c 'import sys, psycopg
with psycopg.connect(sys.argv[1], connect_timeout=3) as c: print("t" if c.execute(sys.argv[2]).fetchone()[0] else "f")' \
        "$1" "$query" 2>/dev/null)" = t ]
}

# PING host port -> 0 on PONG; uses redis-cli if present, else bash /dev/tcp.
_svc_redis_ping() {
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(timeout 3 redis-cli -h "$1" -p "$2" ping 2>/dev/null)" = PONG ]
    else
        ( exec 3<>"/dev/tcp/$1/$2" && printf 'PING\r\n' >&3 && IFS= read -r -t 3 l <&3 \
            && [[ $l == +PONG* ]] ) 2>/dev/null
    fi
}

_svc_apt_install() {
    [ "$(id -u)" -eq 0 ] || { _svc_say "need root to apt-get install $*"; return 1; }
    if [ -z "${_SVC_APT_UPDATED:-}" ]; then
        apt-get update -qq >&2 || { _svc_say "apt-get update failed"; return 1; }
        _SVC_APT_UPDATED=1
    fi
    _svc_say "installing $* ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 \
        || { _svc_say "apt-get install $* failed"; return 1; }
}

_svc_pg_bindir() {  # newest /usr/lib/postgresql/<ver>/bin that has initdb
    local v
    v=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$v" ] && [ -x "/usr/lib/postgresql/$v/bin/initdb" ] && echo "/usr/lib/postgresql/$v/bin"
}

# Run a PostgreSQL server binary as the `postgres` OS user (it refuses to run as root).
_svc_as_pg() {
    if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# Directory holding pgdata/ and pg.log: <repo>/.ci/state, unless the postgres user
# cannot reach it (e.g. repo under /root), then a per-repo dir in /var/tmp.
_svc_pg_dir() {
    if [ "$(id -u)" -ne 0 ] || runuser -u postgres -- test -x "$_SVC_STATE" 2>/dev/null; then
        echo "$_SVC_STATE"
    else
        echo "/var/tmp/services-pg-$(printf %s "$_SVC_ROOT" | cksum | cut -d' ' -f1)"
    fi
}

_svc_pg_private() {
    local url="postgresql://postgres@127.0.0.1:$_SVC_PG_PORT/postgres" bin dir
    if _svc_pg_ok "$url"; then TEST_DATABASE_URL=$url; _svc_say "PostgreSQL: 127.0.0.1:$_SVC_PG_PORT (private, reused)"; return 0; fi
    bin=$(_svc_pg_bindir) || { _svc_apt_install postgresql && bin=$(_svc_pg_bindir); } \
        || { _svc_say "PostgreSQL: no server binaries found"; return 1; }
    dir=$(_svc_pg_dir)
    mkdir -p "$dir/pgdata" && touch "$dir/pg.log" && chmod 700 "$dir/pgdata" || return 1
    [ "$(id -u)" -ne 0 ] || chown postgres: "$dir/pgdata" "$dir/pg.log" || return 1
    if [ ! -s "$dir/pgdata/PG_VERSION" ]; then
        _svc_as_pg "$bin/initdb" -D "$dir/pgdata" -A trust -U postgres >"$dir/initdb.log" 2>&1 \
            || { _svc_say "PostgreSQL: initdb failed, see $dir/initdb.log"; return 1; }
    fi
    _svc_as_pg "$bin/pg_ctl" -D "$dir/pgdata" -l "$dir/pg.log" -w -t 30 start \
        -o "-p $_SVC_PG_PORT -k /tmp -c listen_addresses=127.0.0.1" >/dev/null 2>&1 \
        && _svc_pg_ok "$url" \
        || { _svc_say "PostgreSQL: private cluster failed to start, see $dir/pg.log"; return 1; }
    TEST_DATABASE_URL=$url
    _svc_say "PostgreSQL: 127.0.0.1:$_SVC_PG_PORT (private cluster in $dir/pgdata, started)"
}

_svc_pg() {
    local url="postgresql://postgres@127.0.0.1:5432/test" ver
    if [ -n "${SERVICES_FORCE_PRIVATE:-}" ]; then _svc_pg_private; return; fi
    if [ -n "${TEST_DATABASE_URL:-}" ]; then
        if _svc_pg_ok "$TEST_DATABASE_URL"; then _svc_say "PostgreSQL: TEST_DATABASE_URL from environment"; return 0; fi
        _svc_say "PostgreSQL: TEST_DATABASE_URL from environment is not usable, looking elsewhere"
    fi
    if _svc_pg_ok "$url"; then TEST_DATABASE_URL=$url; _svc_say "PostgreSQL: 127.0.0.1:5432 (already running)"; return 0; fi
    ver=$(ls /etc/postgresql 2>/dev/null | head -n 1)
    if [ -n "$ver" ] && [ -d "/etc/postgresql/$ver/main" ] && command -v pg_ctlcluster >/dev/null 2>&1 \
        && pg_ctlcluster --skip-systemctl-redirect "$ver" main start >/dev/null 2>&1 && _svc_pg_ok "$url"; then
        TEST_DATABASE_URL=$url; _svc_say "PostgreSQL: 127.0.0.1:5432 (Debian cluster $ver/main, started)"; return 0
    fi
    _svc_pg_private
}

_svc_redis_private() {
    local port=$_SVC_REDIS_PORT
    if ! _svc_redis_ping 127.0.0.1 "$port"; then
        command -v redis-server >/dev/null 2>&1 || _svc_apt_install redis-server || return 1
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
            --dir "$_SVC_STATE" --logfile "$_SVC_STATE/redis.log" --pidfile "$_SVC_STATE/redis.pid" >/dev/null \
            || { _svc_say "Redis: redis-server failed to start"; return 1; }
        for _ in $(seq 50); do _svc_redis_ping 127.0.0.1 "$port" && break; sleep 0.2; done
        _svc_redis_ping 127.0.0.1 "$port" || { _svc_say "Redis: no PONG on $port, see $_SVC_STATE/redis.log"; return 1; }
        _svc_say "Redis: 127.0.0.1:$port (private, started)"
    else
        _svc_say "Redis: 127.0.0.1:$port (private, reused)"
    fi
    TEST_REDIS_URL="redis://127.0.0.1:$port/15"
}

_svc_redis() {
    local hp
    if [ -n "${SERVICES_FORCE_PRIVATE:-}" ]; then _svc_redis_private; return; fi
    if [ -n "${TEST_REDIS_URL:-}" ]; then
        hp=${TEST_REDIS_URL#*://}; hp=${hp##*@}; hp=${hp%%/*}   # host:port
        if _svc_redis_ping "${hp%%:*}" "${hp##*:}"; then _svc_say "Redis: TEST_REDIS_URL from environment"; return 0; fi
        _svc_say "Redis: TEST_REDIS_URL from environment is not reachable, looking elsewhere"
    fi
    if _svc_redis_ping 127.0.0.1 6379; then
        TEST_REDIS_URL="redis://127.0.0.1:6379/15"; _svc_say "Redis: 127.0.0.1:6379 (already running)"; return 0
    fi
    _svc_redis_private
}

# Stops only the servers living in this repo's state dirs (never the system ones).
stop_private_services() {
    local dir bin pid
    dir=$(_svc_pg_dir)
    if [ -s "$dir/pgdata/postmaster.pid" ] && bin=$(_svc_pg_bindir); then
        _svc_as_pg "$bin/pg_ctl" -D "$dir/pgdata" -m fast -w stop >/dev/null 2>&1 \
            && _svc_say "PostgreSQL: private cluster stopped"
    fi
    pid=$(cat "$_SVC_STATE/redis.pid" 2>/dev/null) || pid=
    if [ -n "$pid" ] && grep -q "redis-server.*:$_SVC_REDIS_PORT" "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid" && _svc_say "Redis: private server stopped"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$_SVC_STATE/redis.pid"
    return 0
}

_svc_main() {
    mkdir -p "$_SVC_STATE" || { _svc_say "cannot create $_SVC_STATE"; return 1; }
    _svc_pg || { _svc_say "ERROR: no usable PostgreSQL"; return 1; }
    _svc_redis || { _svc_say "ERROR: no usable Redis"; return 1; }
    export TEST_DATABASE_URL TEST_REDIS_URL
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then    # executed, not sourced
    if [ "${1:-}" = stop ]; then stop_private_services; exit; fi
    _svc_main || exit 1
    printf 'export TEST_DATABASE_URL=%q TEST_REDIS_URL=%q\n' "$TEST_DATABASE_URL" "$TEST_REDIS_URL"
else
    _svc_main || return 1
fi

#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the store tests.
#
#   eval "$(tests/pg.sh start)"      # prints: export SHOPTET_PROXY_TEST_PG_URL=postgres://...
#   SHOPTET_PROXY_REQUIRE_PG=1 cargo test --test store_pg
#   tests/pg.sh stop
#   tests/pg.sh pause | resume       # stop the server keeping its data, start it again (outages)
#
# The cluster lives in a fresh temp dir, listens on 127.0.0.1 on a free port, trusts local
# connections (test data only) and runs with fsync off. initdb refuses to run as root, so as root
# the server runs as the `postgres` user. Only the export line goes to stdout.
set -euo pipefail

STATE="${SHOPTET_PROXY_PG_STATE:-${TMPDIR:-/tmp}/shoptet-proxy-test-pg.state}"
DB=shoptet_proxy_test

pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/$1" ]; then echo "$d/$1"; return; fi
    done
    command -v "$1" || { echo "pg.sh: $1 not found" >&2; exit 1; }
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    if [ -s "$STATE" ]; then
        echo "pg.sh: a cluster is already running ($(cat "$STATE")); run '$0 stop' first" >&2
        exit 1
    fi
    local dir port opts started=""
    dir=$(mktemp -d "${TMPDIR:-/tmp}/shoptet-proxy-pg.XXXXXX")
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_pg "$(pg_bin initdb)" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + RANDOM % 40000))
        port_in_use "$port" && continue
        opts="-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300"
        if as_pg "$(pg_bin pg_ctl)" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
            -o "$opts" start >&2; then
            started=1
            break
        fi
    done
    echo "$opts" >"$dir/opts"
    [ -n "$started" ] || { echo "pg.sh: server did not start, see $dir/server.log" >&2; exit 1; }
    echo "$dir" >"$STATE"
    as_pg "$(pg_bin createdb)" -h 127.0.0.1 -p "$port" -U postgres "$DB"
    echo "export SHOPTET_PROXY_TEST_PG_URL=postgres://postgres@127.0.0.1:$port/$DB"
}

stop() {
    local dir
    dir=$(cat "$STATE" 2>/dev/null || true)
    if [ -z "$dir" ]; then echo "pg.sh: no cluster recorded in $STATE" >&2; exit 0; fi
    as_pg "$(pg_bin pg_ctl)" -D "$dir/data" -m fast -w stop >&2 || true
    rm -rf "$dir" "$STATE"
}

recorded_dir() {
    local dir
    dir=$(cat "$STATE" 2>/dev/null || true)
    [ -n "$dir" ] || { echo "pg.sh: no cluster recorded in $STATE" >&2; exit 1; }
    echo "$dir"
}

# A store outage on demand: the server goes away (connections closed, new ones refused) and
# comes back on the same port with the same data.
pause() {
    local dir
    dir=$(recorded_dir)
    as_pg "$(pg_bin pg_ctl)" -D "$dir/data" -m fast -w stop >&2
}

resume() {
    local dir
    dir=$(recorded_dir)
    as_pg "$(pg_bin pg_ctl)" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "$(cat "$dir/opts")" start >&2
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    pause) pause ;;
    resume) resume ;;
    *) echo "usage: $0 start|stop|pause|resume" >&2; exit 2 ;;
esac

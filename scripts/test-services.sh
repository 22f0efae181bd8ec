#!/usr/bin/env bash
# Starts the real PostgreSQL and Redis the tests use, each on a free port in
# a temporary directory, and prints the environment the tests read:
#
#   eval "$(scripts/test-services.sh start)"   # exports RTUNNEL_TEST_*
#   ...run the tests...
#   scripts/test-services.sh stop "$RTUNNEL_TEST_SERVICES_DIR"
#
# `pg-stop DIR` / `pg-start DIR` stop and start the PostgreSQL alone.
#
# Debian's `postgresql` and `redis-server` packages (installed by
# scripts/test-deps.sh). Nothing listens beyond 127.0.0.1; PostgreSQL trusts
# loopback (a throwaway cluster with fsync off), Redis saves nothing.
set -euo pipefail

# A port nothing listens on, below the kernel's ephemeral range (32768 and
# up): a port in that range can be held by an outgoing connection, which
# no connect probe sees, and the server then fails to bind it.
free_port() {
    local port
    while :; do
        port=$(shuf -i 20000-32000 -n 1)
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# Runs a command as the unprivileged `postgres` user when we are root
# (initdb and postgres refuse to run as root).
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local dir pg_bin pg_port redis_port
    dir=$(mktemp -d /tmp/rtunnel-test-services.XXXXXX)
    chmod 755 "$dir"
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$pg_bin" ]; then
        echo "test services: PostgreSQL is not installed (scripts/test-deps.sh installs it)" >&2
        exit 1
    fi
    mkdir -p "$dir/pg"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir/pg"
    pg_port=$(free_port)
    as_pg "$pg_bin/initdb" -D "$dir/pg/data" -U rtunnel --auth=trust -E UTF8 >"$dir/pg/initdb.log" 2>&1
    # In the cluster's own configuration, so a plain `pg-start` restarts it
    # the same way (tests stop and start it to see rtunnel ride it out).
    as_pg sh -c "cat >> '$dir/pg/data/postgresql.conf'" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/pg'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
CONF
    # The port goes in the cluster's own configuration (`port =`, the last
    # one wins), so a plain `pg-start` restarts it the same way. A port
    # taken meanwhile is replaced, a few times; then the log says why.
    local started=""
    for _ in 1 2 3 4 5; do
        pg_port=$(free_port)
        as_pg sh -c "echo 'port = $pg_port' >> '$dir/pg/data/postgresql.conf'"
        if pg_start "$dir" 2>/dev/null; then
            started=yes
            break
        fi
    done
    if [ -z "$started" ]; then
        echo "test services: PostgreSQL did not start; its log:" >&2
        cat "$dir/pg/server.log" >&2
        stop "$dir"
        exit 1
    fi
    started=""
    for _ in 1 2 3 4 5; do
        redis_port=$(free_port)
        redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
            --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
        for _ in $(seq 1 50); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; then
                started=yes
                break 2
            fi
            sleep 0.1
        done
        [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    done
    if [ -z "$started" ]; then
        echo "test services: Redis did not start; its log:" >&2
        cat "$dir/redis.log" >&2
        stop "$dir"
        exit 1
    fi
    echo "export RTUNNEL_TEST_SERVICES_DIR='$dir'"
    echo "export RTUNNEL_TEST_POSTGRES_URL='postgres://rtunnel@127.0.0.1:$pg_port/postgres'"
    echo "export RTUNNEL_TEST_REDIS_URL='redis://127.0.0.1:$redis_port'"
}

pg_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

pg_start() {
    as_pg "$(pg_bin)/pg_ctl" -D "$1/pg/data" -l "$1/pg/server.log" -w -t 60 start >/dev/null
}

pg_stop() {
    as_pg "$(pg_bin)/pg_ctl" -D "$1/pg/data" -m fast -w -t 60 stop >/dev/null
}

stop() {
    local dir="$1" pg_bin
    [ -d "$dir" ] || return 0
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -n "$pg_bin" ] && [ -d "$dir/pg/data" ]; then
        as_pg "$pg_bin/pg_ctl" -D "$dir/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ -f "$dir/redis.pid" ]; then
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:?the directory printed by start}" ;;
    # Stop or start only the PostgreSQL of a running set (outage tests).
    pg-stop) pg_stop "${2:?the directory printed by start}" ;;
    pg-start) pg_start "${2:?the directory printed by start}" ;;
    *) echo "usage: $0 start | stop DIR | pg-stop DIR | pg-start DIR" >&2; exit 2 ;;
esac

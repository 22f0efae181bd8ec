#!/usr/bin/env bash
# rtunnel's operator path side by side with rathole and with raw loopback,
# in one run on this machine: real clients (iperf3 for throughput,
# redis-benchmark for request rates) against real servers, through
#   raw       the client straight to the service;
#   rathole   rathole's server and client (0.5, plain TCP transport);
#   rtunnel   `rtunnel-agent forward` -> rtunnel-server -> rtunnel-agent,
#             three release processes, authenticated and audited;
#   relays    three plain per-connection TCP relays in a row (`relay` in
#             benches: accept, connect onwards, copy with rtunnel's relay
#             loop on one thread), for what three processes that only
#             copy reach here.
# Prints a table and rtunnel's ratio to rathole. A benchmark, not a test:
# CI does not run it. Needs iperf3, redis-server and redis-benchmark
# (installed from Debian if missing) and rathole (built once with
# `cargo install` into $RTUNNEL_BENCH_CACHE, ~/.cache/rtunnel-bench by
# default). Settings: BENCH_SECONDS (iperf3 run length, default 5),
# BENCH_REQUESTS (redis requests per run, default 100000), BENCH_PATHS
# (which paths to measure, default "raw rathole relays rtunnel"; each ratio
# column needs the two paths it compares), BENCH_BIN_DIR (use the rtunnel-server and
# rtunnel-agent found there instead of building; `target/profiling` for
# symbols), BENCH_ONLY (which phases to run, of "tput ping new", all by
# default; the rows of the others print 0), BENCH_PERF (a directory:
# `perf record` of the path's processes during the first run of the first
# phase in BENCH_ONLY, one file per path and measure, e.g.
# rtunnel-eight-streams.data; a profiling run, not one for the table:
# sampling slows the paths unevenly; BENCH_PERF_ARGS replaces `-g`,
# e.g. `--call-graph dwarf` for builds without frame pointers), BENCH_SERVER_ENV,
# BENCH_AGENT_ENV, BENCH_FORWARD_ENV (NAME=VALUE words for that process,
# e.g. TOKIO_WORKER_THREADS=1), BENCH_RUNS (runs of every path, interleaved,
# default 1: the table shows each measure's median). BENCH_NODES=2 runs rtunnel as a two-node
# cluster (a Redis of its own, one data directory) and adds the path
# "cross": `forward` on node B, the agent's tunnel on node A, the stream
# carried over the node mesh; its ratio to the local path is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

cache=${RTUNNEL_BENCH_CACHE:-$HOME/.cache/rtunnel-bench}
seconds=${BENCH_SECONDS:-5}
requests=${BENCH_REQUESTS:-100000}
mkdir -p "$cache"

need=()
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "bench: installing ${need[*]}" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
rathole="$cache/rathole/bin/rathole"
if [ ! -x "$rathole" ]; then
    echo "bench: building rathole 0.5.0 into $cache/rathole (once)" >&2
    # Not --locked: its lock file pins a `time` that no longer builds.
    cargo install rathole --version 0.5.0 --no-default-features \
        --features server,client --root "$cache/rathole" >&2
fi
if [ -n "${BENCH_BIN_DIR:-}" ]; then
    # Binaries built elsewhere (another commit, for a before/after).
    server_bin="$BENCH_BIN_DIR/rtunnel-server"
    agent_bin="$BENCH_BIN_DIR/rtunnel-agent"
else
    echo "bench: building rtunnel (release)" >&2
    cargo build --release --locked -p rtunnel-server -p rtunnel-agent --bins >&2
    server_bin="$root/target/release/rtunnel-server"
    agent_bin="$root/target/release/rtunnel-agent"
fi

# The paths to measure (checked once the services are up).
default_paths="raw rathole relays rtunnel"
[ "${BENCH_NODES:-1}" = 2 ] && default_paths="$default_paths cross"
read -r -a paths <<<"${BENCH_PATHS:-$default_paths}"
relay_bin=""
if [[ " ${paths[*]} " == *" relays "* ]]; then
    # Built from this tree even with BENCH_BIN_DIR: it is the same for
    # every build compared.
    echo "bench: building the plain relay (release)" >&2
    cargo build --release --locked -p rtunnel-benches --bin relay >&2
    relay_bin="$root/target/release/relay"
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Ports below the kernel's ephemeral range, free right now.
port() {
    python3 - <<'EOF'
import random, socket
while True:
    p = random.randint(20000, 31999)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        s.close()
        print(p)
        break
    except OSError:
        s.close()
EOF
}
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench: nothing listens on $1" >&2
    return 1
}

# The services.
iperf_port=$(port)
redis_port=$(port)
iperf3 -s -p "$iperf_port" >"$work/iperf3.log" 2>&1 &
pids+=($!)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    >"$work/redis.log" 2>&1 &
pids+=($!)
wait_port "$iperf_port"
wait_port "$redis_port"

# rathole: one server, one client, both services.
rathole_port=$(port)
rh_iperf=$(port)
rh_redis=$(port)
cat >"$work/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$rathole_port"
[server.services.iperf]
token = "bench"
bind_addr = "127.0.0.1:$rh_iperf"
[server.services.redis]
token = "bench"
bind_addr = "127.0.0.1:$rh_redis"
EOF
cat >"$work/rathole-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$rathole_port"
[client.services.iperf]
token = "bench"
local_addr = "127.0.0.1:$iperf_port"
[client.services.redis]
token = "bench"
local_addr = "127.0.0.1:$redis_port"
EOF
"$rathole" --server "$work/rathole-server.toml" >"$work/rathole-server.log" 2>&1 &
pids+=($!)
rathole_pids=($!)
wait_port "$rathole_port"
"$rathole" --client "$work/rathole-client.toml" >"$work/rathole-client.log" 2>&1 &
pids+=($!)
rathole_pids+=($!)
wait_port "$rh_iperf"
wait_port "$rh_redis"

# Three plain relays in a row for each service: three processes that only
# copy, as many as rtunnel's path has.
relay_pids=()
relay_chain() { # SERVICE-PORT -> prints the first relay's port
    local upstream=$1 listen _
    for _ in 1 2 3; do
        listen=$(port)
        "$relay_bin" "127.0.0.1:$listen" "127.0.0.1:$upstream" >>"$work/relay.log" 2>&1 &
        pids+=($!)
        relay_pids+=($!)
        wait_port "$listen"
        upstream=$listen
    done
    echo "$upstream"
}
if [ -n "$relay_bin" ]; then
    relay_chain "$iperf_port" >"$work/relay-iperf"
    relay_chain "$redis_port" >"$work/relay-redis"
fi

# rtunnel: server, agent, and one forward per service.
nodes=${BENCH_NODES:-1}
rt_port=$(port)
data="$work/rtunnel"
admin() { "$server_bin" --data-dir "$data" "$@"; }
node_args=()
if [ "$nodes" = 2 ]; then
    cluster_redis=$(port)
    redis-server --port "$cluster_redis" --bind 127.0.0.1 --save "" --appendonly no \
        >"$work/cluster-redis.log" 2>&1 &
    pids+=($!)
    wait_port "$cluster_redis"
    node_args=(--redis-url "redis://127.0.0.1:$cluster_redis")
fi
rt_serve() { # PORT NODE-ID LOG
    local cluster=()
    [ "$nodes" = 2 ] && cluster=("${node_args[@]}" --node-id "$2" --node-listen "127.0.0.1:$(port)")
    # shellcheck disable=SC2086 # a list of NAME=VALUE words
    env ${BENCH_SERVER_ENV:-} "$server_bin" serve --data-dir "$data" --listen "127.0.0.1:$1" \
        --max-streams-per-tunnel 1024 --max-streams-per-user 1024 "${cluster[@]}" \
        >"$3" 2>&1 &
}
rt_serve "$rt_port" node-a "$work/rtunnel-server.log"
pids+=($!)
rtunnel_pids=($!)
wait_port "$rt_port"
token=$(admin user add bench --role admin --token --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
system=$(admin system add bench-box --json)
key=$(echo "$system" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
secret=$(echo "$system" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
system_id=$(echo "$system" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
# shellcheck disable=SC2086
RTUNNEL_SECRET="$secret" env ${BENCH_AGENT_ENV:-} "$agent_bin" run --url "ws://127.0.0.1:$rt_port/api/v1/tunnel" \
    --key "$key" --no-terminal \
    --static-services "iperf=127.0.0.1:$iperf_port,redis=127.0.0.1:$redis_port" \
    >"$work/rtunnel-agent.log" 2>&1 &
pids+=($!)
rtunnel_pids+=($!)
session=""
for _ in $(seq 200); do
    session=$(curl -sf -H "Authorization: Bearer $token" \
        "http://127.0.0.1:$rt_port/api/v1/sessions?status=active&system_id=$system_id" |
        python3 -c 'import json,sys; items=json.load(sys.stdin)["items"]; print(items[0]["id"] if items else "")' || true)
    [ -n "$session" ] && break
    sleep 0.05
done
[ -n "$session" ] || { echo "bench: the agent did not connect" >&2; cat "$work"/rtunnel-*.log >&2; exit 1; }
forwards() { # SERVER-PORT LOG-SUFFIX IPERF-PORT REDIS-PORT; sets forward_pids (both)
    local pair
    forward_pids=()
    for pair in "iperf:$3" "redis:$4"; do
        # shellcheck disable=SC2086
        RTUNNEL_TOKEN="$token" env ${BENCH_FORWARD_ENV:-} "$agent_bin" forward --server "http://127.0.0.1:$1" \
            --session "$session" --service "${pair%%:*}" --listen "127.0.0.1:${pair##*:}" \
            >"$work/rtunnel-forward-${pair%%:*}$2.log" 2>&1 &
        pids+=($!)
        forward_pids+=($!)
        wait_port "${pair##*:}"
    done
}
rt_iperf=$(port)
rt_redis=$(port)
forwards "$rt_port" "" "$rt_iperf" "$rt_redis"
cross_pids=("${rtunnel_pids[@]}")
rtunnel_pids+=("${forward_pids[@]}")
if [ "$nodes" = 2 ]; then
    rt_port_b=$(port)
    rt_serve "$rt_port_b" node-b "$work/rtunnel-server-b.log"
    pids+=($!)
    cross_pids+=($!)
    wait_port "$rt_port_b"
    cross_iperf=$(port)
    cross_redis=$(port)
    forwards "$rt_port_b" "-b" "$cross_iperf" "$cross_redis"
    cross_pids+=("${forward_pids[@]}")
fi

# The measurements.
iperf() { # PORT STREAMS -> Gbit/s
    iperf3 -c 127.0.0.1 -p "$1" -P "$2" -t "$seconds" -J |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}
redis_ping() { # PORT CLIENTS KEEPALIVE [REQUESTS] -> "requests/s p50-latency-ms"
    redis-benchmark -h 127.0.0.1 -p "$1" -c "$2" -k "$3" -n "${4:-$requests}" -t ping_mbulk --csv 2>/dev/null |
        python3 -c 'import csv,sys
rows = [r for r in csv.reader(sys.stdin) if r and r[0] == "PING_MBULK"]
print("%.0f %s" % (float(rows[0][1]), rows[0][4]))'
}

cpu_ticks() { # PID... -> user+system clock ticks of those processes
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
process_name() { # PID -> the program and its first words, to tell processes apart
    tr '\0' ' ' <"/proc/$1/cmdline" | awk '{ n = split($1, p, "/"); w = p[n] " " $2; for (i = 3; i <= NF; i++) if ($i ~ /^--(node-id|service)$/) w = w " " $(i + 1); print w }'
}
per_request_us() { # TICKS-BEFORE TICKS-AFTER -> CPU microseconds per request
    python3 -c "print('%.0f' % (($2 - $1) * 1e6 / $(getconf CLK_TCK) / $requests))"
}
per_gigabyte_ms() { # TICKS-BEFORE TICKS-AFTER GBIT/S -> CPU milliseconds per GB moved
    python3 -c "g = $3 * $seconds / 8; print('%.0f' % ((($2 - $1) * 1e3 / $(getconf CLK_TCK) / g) if g else 0))"
}
perf_start() { # PATH RUN-NAME: records the path's processes until perf_stop
    [ -n "${BENCH_PERF:-}" ] || return 0
    mkdir -p "$BENCH_PERF"
    # shellcheck disable=SC2086 # BENCH_PERF_ARGS is a list of words
    perf record -q ${BENCH_PERF_ARGS:--g} -F 1999 -o "$BENCH_PERF/$1-$2.data" \
        -p "$(tr ' ' ',' <<<"${cpu_of[$1]}")" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 0.5
}
perf_stop() {
    [ -n "${BENCH_PERF:-}" ] || return 0
    kill -INT "$perf_pid" && wait "$perf_pid" || true
}

# Each process's share of a measure (stderr), to tell which hop costs what.
declare -A share_before=()
shares_start() { # PATH
    local pid
    for pid in ${cpu_of[$1]}; do share_before[$pid]=$(cpu_ticks "$pid"); done
}
shares_print() { # PATH LABEL per_request_us|per_gigabyte_ms [GBIT/S]
    local pid words=()
    for pid in ${cpu_of[$1]}; do
        words+=("$(process_name "$pid") $("$3" "${share_before[$pid]}" "$(cpu_ticks "$pid")" ${4:+"$4"})")
    done
    local joined
    joined=$(printf '%s, ' "${words[@]}")
    echo "bench: $1: $2 by process: ${joined%, }" >&2
}

declare -A result
declare -A cpu_of=([raw]="" [rathole]="${rathole_pids[*]}" [rtunnel]="${rtunnel_pids[*]}")
declare -A iperf_at=([raw]=$iperf_port [rathole]=$rh_iperf [rtunnel]=$rt_iperf)
declare -A redis_at=([raw]=$redis_port [rathole]=$rh_redis [rtunnel]=$rt_redis)
cpu_of[relays]="${relay_pids[*]}"
iperf_at[relays]=$(cat "$work/relay-iperf" 2>/dev/null || true)
redis_at[relays]=$(cat "$work/relay-redis" 2>/dev/null || true)
if [ "$nodes" = 2 ]; then
    cpu_of[cross]="${cross_pids[*]}"
    iperf_at[cross]=$cross_iperf
    redis_at[cross]=$cross_redis
fi
for p in "${paths[@]}"; do
    [ -n "${iperf_at[$p]+set}" ] && [ -n "${iperf_at[$p]}" ] || {
        echo "bench: BENCH_PATHS: unknown path '$p' (raw rathole relays rtunnel; cross with BENCH_NODES=2)" >&2
        exit 2
    }
done
# The phases to run: BENCH_ONLY is a list of them, all by default. perf
# (BENCH_PERF) records the first run of the first phase listed.
read -r -a phases <<<"${BENCH_ONLY:-tput ping new}"
for phase in "${phases[@]}"; do
    case $phase in tput | ping | new) ;; *)
        echo "bench: BENCH_ONLY: unknown phase '$phase' (tput, ping, new)" >&2
        exit 2
        ;;
    esac
done
[ "${#phases[@]}" -gt 0 ] || { echo "bench: BENCH_ONLY names no phase" >&2; exit 2; }
runs() { [[ " ${phases[*]} " == *" $1 "* ]]; }
perf_phase=${phases[0]}
keys=(tput1 tput8 tput8cpu ping1 ping50 ping50cpu new10 new10p50 new10cpu new1p50)
# BENCH_RUNS runs of every path, interleaved (each path once, then again):
# the table shows each measure's median.
bench_runs=${BENCH_RUNS:-1}
for p in "${paths[@]}"; do for k in "${keys[@]}"; do result[$p,$k]=""; done; done
for run in $(seq "$bench_runs"); do
    # perf records the first run only.
    [ "$run" = 1 ] || perf_phase=none
    for p in "${paths[@]}"; do
        echo "bench: $p (run $run of $bench_runs)" >&2
        declare -A cur=()
        for k in "${keys[@]}"; do cur[$k]=0; done
        if runs tput; then
            shares_start "$p"
            [ "$perf_phase" = tput ] && perf_start "$p" one-stream
            cur[tput1]=$(iperf "${iperf_at[$p]}" 1)
            [ "$perf_phase" = tput ] && perf_stop
            shares_print "$p" "CPU per GB moved, one stream (ms)" per_gigabyte_ms "${cur[tput1]}"
            # shellcheck disable=SC2086 # a list of pids
            before=$(cpu_ticks ${cpu_of[$p]})
            shares_start "$p"
            [ "$perf_phase" = tput ] && perf_start "$p" eight-streams
            cur[tput8]=$(iperf "${iperf_at[$p]}" 8)
            [ "$perf_phase" = tput ] && perf_stop
            # shellcheck disable=SC2086
            cur[tput8cpu]=$(per_gigabyte_ms "$before" "$(cpu_ticks ${cpu_of[$p]})" "${cur[tput8]}")
            shares_print "$p" "CPU per GB moved, 8 streams (ms)" per_gigabyte_ms "${cur[tput8]}"
        fi
        if runs ping; then
            [ "$perf_phase" = ping ] && perf_start "$p" ping-one-client
            read -r "cur[ping1]" _ <<<"$(redis_ping "${redis_at[$p]}" 1 1)"
            [ "$perf_phase" = ping ] && perf_stop
            # shellcheck disable=SC2086 # a list of pids
            before=$(cpu_ticks ${cpu_of[$p]})
            shares_start "$p"
            read -r "cur[ping50]" _ <<<"$(redis_ping "${redis_at[$p]}" 50 1)"
            # shellcheck disable=SC2086
            cur[ping50cpu]=$(per_request_us "$before" "$(cpu_ticks ${cpu_of[$p]})")
            shares_print "$p" "CPU per PING, 50 clients (us)" per_request_us
        fi
        if runs new; then
            # shellcheck disable=SC2086 # a list of pids
            before=$(cpu_ticks ${cpu_of[$p]})
            shares_start "$p"
            [ "$perf_phase" = new ] && perf_start "$p" new-connections
            read -r "cur[new10]" "cur[new10p50]" <<<"$(redis_ping "${redis_at[$p]}" 10 0)"
            [ "$perf_phase" = new ] && perf_stop
            # shellcheck disable=SC2086
            cur[new10cpu]=$(per_request_us "$before" "$(cpu_ticks ${cpu_of[$p]})")
            shares_print "$p" "CPU per new connection (us)" per_request_us
            # One client alone: how long opening a connection takes when the
            # machine is not saturated (round trips, not CPU).
            read -r _ "cur[new1p50]" <<<"$(redis_ping "${redis_at[$p]}" 1 0 $((requests / 20)))"
        fi
        for k in "${keys[@]}"; do result[$p,$k]+=" ${cur[$k]}"; done
    done
done

python3 - "$(nproc)" <<EOF
import sys
rows = [
    ("one stream throughput (Gbit/s)", "tput1"),
    ("8 parallel streams (Gbit/s)", "tput8"),
    ("  CPU of the path's processes per GB moved (ms)", "tput8cpu"),
    ("PING rate, 1 client (req/s)", "ping1"),
    ("PING rate, 50 clients (req/s)", "ping50"),
    ("  CPU of the path's processes per request (us)", "ping50cpu"),
    ("new connection + PING, 10 clients (req/s)", "new10"),
    ("  p50 latency of that (ms)", "new10p50"),
    ("  CPU of the path's processes per request (us)", "new10cpu"),
    ("new connection + PING, 1 client: p50 latency (ms)", "new1p50"),
]
import statistics
runs = {
$(for p in "${paths[@]}"; do for k in "${keys[@]}"; do echo "    ('$p', '$k'): [$(tr ' ' ',' <<<"${result[$p,$k]# }")],"; done; done)
}
r = {key: round(statistics.median(values), 3) for key, values in runs.items()}
if $bench_runs > 1:
    print(f"(median of $bench_runs interleaved runs)")
names = {"raw": "raw loopback", "rathole": "rathole 0.5", "relays": "3 plain relays",
         "rtunnel": "rtunnel forward", "cross": "rtunnel via another node"}
paths = [p for p in names if any(k[0] == p for k in r)]
relays = "rathole" in paths and "relays" in paths
ratio = "rathole" in paths and "rtunnel" in paths
cross = "cross" in paths and "rtunnel" in paths
head = ([f"measure ({sys.argv[1]} cores)"] + [names[p] for p in paths]
        + (["3 relays / rathole"] if relays else []) + (["rtunnel / rathole"] if ratio else [])
        + (["other node / local"] if cross else []))
print("| " + " | ".join(head) + " |")
print("|" + " --- |" * len(head))
for label, key in rows:
    cells = [label] + [f"{r[(p, key)]:g}" for p in paths]
    lower_is_better = key.endswith("p50") or key.endswith("cpu")
    def against(base, path):
        b, v = r[(base, key)], r[(path, key)]
        return f"{(b / v) if lower_is_better else (v / b):.2f}x" if b and v else ""
    if relays:
        cells.append(against("rathole", "relays"))
    if ratio:
        cells.append(against("rathole", "rtunnel"))
    if cross:
        cells.append(against("rtunnel", "cross"))
    print("| " + " | ".join(cells) + " |")
EOF

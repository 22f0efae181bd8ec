#!/usr/bin/env bash
# The server memory that tunnels keep after they carried bulk data: K
# agents (release processes, one iperf3 service behind them all), then
# for each agent a `rtunnel-agent forward` and one iperf3 download and one
# upload of 1 s through it, one agent after the other; prints the server's
# resident memory before and 3 s after, and the growth per agent. Run it
# with two values of K: memory that the allocator keeps is about the same
# for both, memory kept per tunnel doubles with K. A benchmark, not a
# test: CI does not run it. Usage: scripts/bench-bulk-idle.sh [K]
# (default 20); BENCH_BIN_DIR as in bench-peers.sh. Needs iperf3.
set -euo pipefail
K=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${BENCH_BIN_DIR:-}" ]; then
    BIN=$BENCH_BIN_DIR
else
    cargo build --release --locked -p rtunnel-server -p rtunnel-agent --bins >&2
    BIN=$root/target/release
fi
command -v iperf3 >/dev/null || apt-get install -y -qq iperf3 >&2
work=$(mktemp -d)
data=$work/data
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ip=$(port)
iperf3 -s -p "$ip" >/dev/null 2>&1 &
pids+=("$!")
sp=$(port)
"$BIN/rtunnel-server" serve --data-dir "$data" --listen "127.0.0.1:$sp" >"$work/server.log" 2>&1 &
spid=$!
pids+=("$spid")
wait_port "$sp"
wait_port "$ip"
token=$("$BIN/rtunnel-server" --data-dir "$data" user add b --role admin --token --json | json '["token"]')
declare -a ids
for i in $(seq "$K"); do
    j=$("$BIN/rtunnel-server" --data-dir "$data" system add "box$i" --json)
    ids[i]=$(json '["id"]' <<<"$j")
    RTUNNEL_SECRET=$(json '["secret"]' <<<"$j") "$BIN/rtunnel-agent" run \
        --url "ws://127.0.0.1:$sp/api/v1/tunnel" --key "$(json '["key"]' <<<"$j")" --no-terminal \
        --static-services "iperf=127.0.0.1:$ip" >"$work/agent$i.log" 2>&1 &
    pids+=("$!")
done
api() { curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$sp/api/v1/$1"; }
for _ in $(seq 300); do
    [ "$(api "sessions?status=active&page_size=500" | json '["items"].__len__()')" = "$K" ] && break
    sleep 0.1
done
rss() { awk '/VmRSS/{print $2}' "/proc/$spid/status"; }
sleep 2
r0=$(rss)
for i in $(seq "$K"); do
    session=$(api "sessions?status=active&system_id=${ids[i]}" | json '["items"][0]["id"]')
    fp=$(port)
    RTUNNEL_TOKEN=$token "$BIN/rtunnel-agent" forward --server "http://127.0.0.1:$sp" \
        --session "$session" --service iperf --listen "127.0.0.1:$fp" >"$work/fwd$i.log" 2>&1 &
    f=$!
    wait_port "$fp"
    iperf3 -c 127.0.0.1 -p "$fp" -t 1 -R >/dev/null 2>&1
    iperf3 -c 127.0.0.1 -p "$fp" -t 1 >/dev/null 2>&1
    kill "$f"
    wait "$f" 2>/dev/null || true
done
sleep 3
r1=$(rss)
echo "K=$K rss_before_kib=$r0 rss_after_kib=$r1 growth_per_tunnel_kib=$(((r1 - r0) / K))"

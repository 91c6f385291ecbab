#!/usr/bin/env bash
# Where a server's CPU goes under the echo load: user vs kernel time, system calls per message
# (strace -c) and a cpu-clock profile (perf record), for surge and native uWS alike.
#
# Usage: bash benches/profile.sh SYSTEM CONNECTIONS SIZE [SECONDS] [INFLIGHT]
#   SYSTEM: surge-epoll | surge-io_uring | surge-io_uring-poll | uws-cpp
# The server runs on CPU 0 and the load generator (surge-bench, the engine's client) on CPU 1.
# Three passes of SECONDS (default 5) each: plain (CPU split, msg/s), under strace -c (system calls
# per message; strace slows the server, the counts per message stay), under perf record (cpu-clock
# samples with call graphs: this machine's VM exposes no hardware counters, so instructions and
# cache misses per message are not available here). Output in target/profile/SYSTEM-N-SIZE/.
# SURGE_ECHO_ARGS adds flags to surge-io_uring (e.g. "--uring-max-recv-buffers 256").
# Build first: cargo build --release -p surge-bench --bins (and benches/peers/uws-cpp/build.sh).
set -euo pipefail
system="$1"; n="$2"; size="$3"; secs="${4:-5}"; inflight="${5:-1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release"
out="$root/target/profile/$system-$n-$size-$inflight"
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
case "$system" in
  surge-epoll) cmd=("$bin/surge-echo" --port "$port" --workers 1 --backend epoll) ;;
  surge-io_uring) cmd=("$bin/surge-echo" --port "$port" --workers 1 --backend io_uring ${SURGE_ECHO_ARGS:-}) ;;
  surge-io_uring-poll) cmd=("$bin/surge-echo" --port "$port" --workers 1 --backend io_uring --uring-recv poll) ;;
  uws-cpp) cmd=("${SURGE_UWS_CPP_DIR:-$root/target/uws-cpp}/uws-cpp-server" echo --port "$port") ;;
  *) echo "unknown system $system" >&2; exit 2 ;;
esac
taskset -c 0 "${cmd[@]}" > "$out/server.log" 2>&1 < /dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening "$out/server.log" && break; sleep 0.1; done
load() { # $1: pass name; runs the load for warm-up + SECONDS, the pass's tool in the background
  "$bin/surge-bench" echo --url "ws://127.0.0.1:$port/" -n "$n" -s "$size" --inflight "$inflight" \
    --duration "$secs" --warmup 1 --pin --json "$out/$1.json" > "$out/$1.txt" 2>/dev/null
}
ticks() { awk '{print $14, $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
# 1. plain
( sleep 1; ticks > "$out/t0"; sleep "$secs"; ticks > "$out/t1" ) &
tool=$!; load plain; wait "$tool"
msgs=$(jq '.results[0].msgs_per_s * '"$secs" "$out/plain.json")
read -r u0 s0 < "$out/t0"; read -r u1 s1 < "$out/t1"
python3 - "$msgs" "$u0" "$s0" "$u1" "$s1" "$hz" "$out/plain.json" > "$out/summary.txt" <<'PY'
import json, sys
msgs, u0, s0, u1, s1, hz = float(sys.argv[1]), *map(int, sys.argv[2:6]), int(sys.argv[6])
r = json.load(open(sys.argv[7]))["results"][0]
us = lambda t: t / hz * 1e6 / msgs
print(f"msg/s {r['msgs_per_s']:.0f}  p50 {r['p50_us']:.0f} us  p99 {r['p99_us']:.0f} us  rss {r.get('rss_bytes')}")
print(f"server CPU/msg: user {us(u1-u0):.2f} us + kernel {us(s1-s0):.2f} us = {us(u1-u0+s1-s0):.2f} us")
PY
# 2. system calls
( sleep 1; timeout "$secs" strace -c -f -q -p "$pid" -o "$out/syscalls.txt" || true ) &
tool=$!; load strace; wait "$tool"
smsgs=$(jq '.results[0].msgs_per_s * '"$secs" "$out/strace.json")
python3 - "$smsgs" "$out/syscalls.txt" >> "$out/summary.txt" <<'PY'
import sys
msgs = float(sys.argv[1]); calls = {}
for line in open(sys.argv[2]):
    w = line.split()
    if len(w) >= 5 and w[0][0].isdigit() and w[-1] != "total":
        calls[w[-1]] = int(w[3])
total = sum(calls.values())
print(f"system calls/msg: {total/msgs:.3f} (" + ", ".join(f"{k} {v/msgs:.3f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v/msgs >= 0.001) + ")")
PY
# 3. profile
( sleep 1; perf record -q -e cpu-clock -F 4999 -g -p "$pid" -o "$out/perf.data" -- sleep "$secs" 2>/dev/null || true ) &
tool=$!; load perf; wait "$tool"
perf report -i "$out/perf.data" --no-children --percent-limit 0.7 --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -45 > "$out/top.txt" || true
echo "== $system $n x $size B, $inflight in flight" | cat - "$out/summary.txt"
cat "$out/top.txt"

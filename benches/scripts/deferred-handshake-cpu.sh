#!/usr/bin/env bash
# Server CPU per handshake, immediate vs deferred (surge-echo --defer thread): 15,000 connections
# ramped, server threads' CPU (schedstat, ns) before and after, divided by the handshakes.
set -u
cd "$(dirname "$0")/../.."
cpu() { local s=0; for t in /proc/$1/task/*/schedstat; do read a b c < $t; s=$((s + a)); done; echo $s; }
for r in 1 2 3; do
  for be in epoll io_uring; do
    for defer in off thread; do
      port=$((9600 + RANDOM % 300))
      taskset -c 0 target/release/surge-echo --port $port --workers 1 --backend $be --defer $defer > /dev/null 2>&1 < /dev/null &
      pid=$!
      sleep 0.5
      c0=$(cpu $pid)
      taskset -c 1 target/release/surge-bench idle --url ws://127.0.0.1:$port/ -n 15000 --ramp-rate 50000 --hold 0 --duration 1 > /tmp/hs.txt 2>&1
      c1=$(cpu $pid)
      kill $pid; wait $pid 2>/dev/null
      rate=$(tr '\r' '\n' < /tmp/hs.txt | grep -E "^ws://" | awk '{print $4}')
      echo "$be $defer r$r: $(( (c1 - c0) / 15000 )) ns/handshake (incl. close), client-side rate $rate/s"
    done
  done
done

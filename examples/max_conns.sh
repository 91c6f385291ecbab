#!/bin/bash
# Connections one echo server process holds: starts `echo --workers 2 --backend BACKEND`, opens
# PROCS x PER_PROC idle WebSocket connections from examples/hold.py processes (each from its own
# 127.x.y.z source), then prints the established server-side connections and the server process fds.
# usage: max_conns.sh BACKEND PROCS PER_PROC  (run from the repo root, release echo built)
mkdir -p /tmp/meas
B=$1; P=$2; N=$3; PORT=$((9300 + RANDOM % 500))
target/release/examples/echo --port $PORT --workers 2 --backend $B > /tmp/meas/echo_$B.log 2>&1 &
SP=$!
sleep 0.5; head -1 /tmp/meas/echo_$B.log
pids=()
for i in $(seq 1 $P); do
  mkdir -p /tmp/meas; mkfifo /tmp/meas/in_$i 2>/dev/null
  python3 examples/hold.py 127.0.0.1 $PORT $N 127.$((RANDOM%200+20)).$((RANDOM%250+1)).$i < /tmp/meas/in_$i > /tmp/meas/out_$i.txt 2>&1 &
  pids+=($!)
  exec {fd}>/tmp/meas/in_$i; eval "fd_$i=$fd"
done
for t in $(seq 1 900); do
  done_n=$(cat /tmp/meas/out_*.txt 2>/dev/null | grep -c held)
  [ "$done_n" -ge "$P" ] && break; sleep 1
done
cat /tmp/meas/out_*.txt
sleep 2
EST=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
FDS=$(ls /proc/$SP/fd | wc -l)
echo "backend $B: server-side established $EST, server process fds $FDS, echo alive: $(kill -0 $SP && echo yes)"
grep -v listening /tmp/meas/echo_$B.log | head -3
true
for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait "${pids[@]}" 2>/dev/null
kill -INT $SP; wait $SP; rm -f /tmp/meas/in_* /tmp/meas/out_*

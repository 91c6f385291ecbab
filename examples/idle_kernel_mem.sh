#!/bin/bash
# Kernel memory per idle connection: starts the echo example on BACKEND, holds N idle WebSocket
# connections from examples/hold.py, prints per-connection slab and RSS deltas. Run from the repo
# root as root (drop_caches, slabinfo) after `cargo build --release -p surge --example echo`.
# usage: idle_kernel_mem.sh BACKEND N [RECV]   (RECV: io_uring's --uring-recv, multishot or poll)
# Prints the caches whose size moved by more than 16 B per connection.
B=$1; N=$2; RECV=${3:-multishot}; PORT=$((9500 + RANDOM % 300))
slab() { awk 'NR>2 {s+=$3*$4} END {print s}' /proc/slabinfo; }
sockmem() { awk '/^TCP:/ {print $NF}' /proc/net/sockstat; }
target/release/examples/echo --port $PORT --workers 2 --backend $B --uring-recv $RECV > /tmp/echo_m.log 2>&1 &
SP=$!
sleep 0.5; head -1 /tmp/echo_m.log
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
sleep 0.5
awk 'NR>2 {print $1, $3*$4}' /proc/slabinfo > /tmp/slab0_$B$RECV.txt; S0=$(slab); M0=$(sockmem); R0=$(awk '/VmRSS/ {print $2}' /proc/$SP/status)
mkfifo /tmp/hold_in_$$ ; exec 3<>/tmp/hold_in_$$
python3 examples/hold.py 127.0.0.1 $PORT $N 127.0.$((RANDOM%200+10)).$((RANDOM%200+10)) <&3 > /tmp/hold_out.txt 2>&1 &
HP=$!
for i in $(seq 1 600); do grep -q held /tmp/hold_out.txt && break; sleep 0.1; done
cat /tmp/hold_out.txt; N=$(awk '{print $2}' /tmp/hold_out.txt)
sleep 2
awk 'NR>2 {print $1, $3*$4}' /proc/slabinfo > /tmp/slab1_$B$RECV.txt; S1=$(slab); M1=$(sockmem); R1=$(awk '/VmRSS/ {print $2}' /proc/$SP/status)
FDS=$(ls /proc/$SP/fd | wc -l)
echo "backend $B ($RECV) conns $N: slab delta $(( (S1-S0)/N )) B/conn-pair, tcp mem pages delta $((M1-M0)), server RSS delta $(( (R1-R0)*1024/N )) B/conn, server fds $FDS"
awk -v n=$N 'NR==FNR {a[$1]=$2; next} {d=($2-a[$1])/n; if (d>16 || d<-16) printf "  %-24s %+8.0f B/conn\n", $1, d}' /tmp/slab0_$B$RECV.txt /tmp/slab1_$B$RECV.txt
grep -E "^(TCP|tcp|sock_inode|io_kiocb|kmalloc-(64|128|256|512|1k|2k|4k|8k|16k)|eventpoll_epi|filp|dentry|request_sock) " /proc/slabinfo | awk '{print $1, $2*$4}' > /tmp/slab_$B.txt
exec 3>&-; kill $HP; wait $HP 2>/dev/null; rm -f /tmp/hold_in_$$
kill -INT $SP; wait $SP

#!/usr/bin/env bash
# Metrics' cost per message: before metrics (b3b570c), metrics off, metrics on (--server-metrics:
# surge-echo --metrics-addr, so the loop-turn histogram is recorded and a listener runs).
# "before": surge-bench and surge-echo of a build without metrics (b3b570c) in $BEFORE
# (default target/premetrics).
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/bench17}; mkdir -p $OUT
for r in 1 2 3; do
  for v in pre off on; do
    exe=target/release/surge-bench; extra=""
    [ $v = pre ] && exe=${BEFORE:-target/premetrics}/surge-bench
    [ $v = on ] && extra="--server-metrics"
    for w in "-n 100 -s 20" "-n 5000 -s 512"; do
      tag=$(echo "$w" | tr -d ' -')
      $exe compare --systems surge-epoll,surge-io_uring --pin --rounds 1 --duration 5 $w $extra \
        --json $OUT/m-$v-$tag-r$r.json > $OUT/m-$v-$tag-r$r.txt 2>&1
      echo "$v $tag r$r: $(grep -E '^surge-(epoll|io_uring) ' $OUT/m-$v-$tag-r$r.txt | awk '{print $1, $(NF-2)}' | tr '\n' ' ')"
    done
  done
done

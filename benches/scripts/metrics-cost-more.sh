#!/usr/bin/env bash
# Rounds 4..7 of metrics off vs on (same commands as metrics.sh, without "before").
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/bench17}; mkdir -p $OUT
for r in 4 5 6 7; do
  for v in off on; do
    exe=target/release/surge-bench; extra=""
    [ $v = on ] && extra="--server-metrics"
    for w in "-n 100 -s 20" "-n 5000 -s 512"; do
      tag=$(echo "$w" | tr -d ' -')
      $exe compare --systems surge-epoll,surge-io_uring --pin --rounds 1 --duration 5 $w $extra \
        --json $OUT/m-$v-$tag-r$r.json > $OUT/m-$v-$tag-r$r.txt 2>&1
      echo "$v $tag r$r done"
    done
  done
done

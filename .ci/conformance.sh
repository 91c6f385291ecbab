#!/usr/bin/env bash
# Runs the whole Autobahn suite (kosoku) against the echo example on each driver and compares every
# case's outcome with .ci/expected/server-<driver>.txt. Usage: conformance.sh OUTDIR
# io_uring-poll: io_uring with --uring-recv poll (a readiness poll, then receives); every case on
# every receive mode, groups 12-13 (permessage-deflate) included.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
OUT=${1:-ci-out}
mkdir -p "$OUT"
ECHO=target/release/examples/echo
ran=()
skipped=()
# SURGE_BACKEND would override --backend: each run names its driver itself.
unset SURGE_BACKEND
for driver in ${SURGE_CI_DRIVERS:-epoll io_uring io_uring-poll}; do
  port=$(free_port)
  log="$OUT/echo-$driver.log"
  backend=$driver
  extra=()
  if [ "$driver" = io_uring-poll ]; then
    backend=io_uring
    extra=(--uring-recv poll)
  fi
  # permessage-deflate with context takeover, so that groups 12 and 13 run (and 1-10 through it).
  "$ECHO" --port "$port" --workers 2 --backend "$backend" "${extra[@]}" --deflate context >"$log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  unavailable=0
  for _ in $(seq 1 100); do
    grep -q "listening on" "$log" && break
    if ! kill -0 $pid 2>/dev/null; then
      # The kernel refuses io_uring here (too old, disabled, seccomp): skip that driver, say why.
      if grep -q "backend unavailable" "$log"; then unavailable=1; break; fi
      cat "$log"; echo "echo server died"; exit 1
    fi
    sleep 0.1
  done
  if [ "$unavailable" = 1 ]; then
    echo "conformance: SKIPPED driver $driver: $(grep -m1 'backend unavailable' "$log")"
    skipped+=("$driver")
    trap - EXIT
    continue
  fi
  grep -q "listening on" "$log" || { cat "$log"; echo "echo server did not start"; exit 1; }
  grep -q "(backend $backend)" "$log" || { cat "$log"; echo "echo server runs another backend"; exit 1; }
  rm -rf "$OUT/kosoku-$driver"
  # kosoku exits non-zero when any case is not OK (INFORMATIONAL ones included); the verdict is
  # autobahn.py's, from the report, so only a missing report is fatal here.
  kosoku -p 2 -o "$OUT/kosoku-$driver" "127.0.0.1:$port" >"$OUT/kosoku-$driver.log" 2>&1 || true
  [ -s "$OUT/kosoku-$driver/index.json" ] || {
    tail -20 "$OUT/kosoku-$driver.log"; echo "kosoku wrote no report"; exit 1; }
  kill -INT $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  trap - EXIT
  python3 .ci/autobahn.py "$OUT/kosoku-$driver/index.json" ".ci/expected/server-$driver.txt" ${SURGE_CI_UPDATE:+--update}
  ran+=("$driver")
done
echo "conformance: drivers run: ${ran[*]:-none}; skipped: ${skipped[*]:-none}"

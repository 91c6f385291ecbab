#!/usr/bin/env bash
# Runs the whole Autobahn suite against the engine's client: kosoku listens (-m fuzzingserver) and
# examples/autobahn_client runs every case on each driver, echoing every message; every case's
# outcome is compared with .ci/expected/client-<driver>.txt. Usage: conformance-client.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
OUT=${1:-ci-out}
mkdir -p "$OUT"
CLIENT=target/release/examples/autobahn_client
[ -x "$CLIENT" ] || cargo build --release --quiet -p surge --example autobahn_client
ran=()
skipped=()
# SURGE_BACKEND would override --backend: each run names its driver itself.
unset SURGE_BACKEND
for driver in ${SURGE_CI_DRIVERS:-epoll io_uring}; do
  if [ "$driver" = io_uring ]; then
    # The same probe the engine runs: skip the driver, saying why, where the kernel refuses it.
    if ! why=$("$CLIENT" --probe io_uring 2>&1); then
      echo "conformance-client: SKIPPED driver $driver: $why"
      skipped+=("$driver")
      continue
    fi
  fi
  dir="$OUT/kosoku-client-$driver"
  log="$OUT/kosoku-client-$driver.log"
  # A free port from the kernel; another job may take it meanwhile, so retry a few times.
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    rm -rf "$dir"
    # kosoku exits non-zero when any case is not OK (the UNIMPLEMENTED compression cases): the
    # verdict is autobahn.py's, from the report.
    PYTHONUNBUFFERED=1 kosoku -m fuzzingserver -o "$dir" "127.0.0.1:$port" >"$log" 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do
      grep -qs "listening on" "$log" && break
      kill -0 $pid 2>/dev/null || break
      sleep 0.1
    done
    grep -qs "listening on" "$log" && break
    kill $pid 2>/dev/null || true
    echo "kosoku did not start on port $port (attempt $attempt): $(tail -1 "$log")"
  done
  grep -q "listening on" "$log" || { cat "$log"; echo "kosoku did not start"; exit 1; }
  "$CLIENT" --url "ws://127.0.0.1:$port" --backend "$driver" >"$OUT/client-$driver.log" 2>&1 || {
    tail -20 "$OUT/client-$driver.log"; echo "autobahn_client failed"; exit 1; }
  grep -q "(backend $driver)" "$OUT/client-$driver.log" || {
    cat "$OUT/client-$driver.log"; echo "the client runs another backend"; exit 1; }
  # kosoku writes its report once updateReports is in; it keeps serving: stop it.
  for _ in $(seq 1 100); do grep -qs "wrote reports" "$log" && break; sleep 0.1; done
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  trap - EXIT
  [ -s "$dir/index.json" ] || { tail -20 "$log"; echo "kosoku wrote no report"; exit 1; }
  python3 .ci/autobahn.py "$dir/index.json" ".ci/expected/client-$driver.txt" ${SURGE_CI_UPDATE:+--update}
  ran+=("$driver")
done
echo "conformance-client: drivers run: ${ran[*]:-none}; skipped: ${skipped[*]:-none}"

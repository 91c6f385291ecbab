#!/usr/bin/env bash
# Runs the Autobahn suite (kosoku) against surge::blocking on both sides and compares every case's
# outcome with the committed expected results:
# - server: kosoku drives examples/blocking_echo (thread per connection) -> .ci/expected/blocking-server.txt
# - client: kosoku listens in fuzzingserver mode and examples/blocking_client (a Dialer) runs every
#   case against it -> .ci/expected/blocking-client.txt
# Usage: conformance-blocking.sh OUTDIR (builds both examples in release mode first).
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
OUT=${1:-ci-out}
mkdir -p "$OUT"
cargo build --release --quiet -p surge --example blocking_echo --example blocking_client
ECHO=target/release/examples/blocking_echo
CLIENT=target/release/examples/blocking_client

# Server side.
port=$(free_port)
log="$OUT/blocking-echo.log"
"$ECHO" --port "$port" --deflate context >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "listening on" "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log"; echo "blocking_echo died"; exit 1; }
  sleep 0.1
done
grep -q "listening on" "$log" || { cat "$log"; echo "blocking_echo did not start"; exit 1; }
rm -rf "$OUT/kosoku-blocking-server"
# Both sides run with permessage-deflate (context takeover), so that groups 12 and 13 run (and 1-10
# through it). kosoku exits non-zero when any case is not OK; the verdict is autobahn.py's, from the
# report, so only a missing report is fatal here.
timeout 900 kosoku -p 2 -o "$OUT/kosoku-blocking-server" "127.0.0.1:$port" \
  >"$OUT/kosoku-blocking-server.log" 2>&1 || true
[ -s "$OUT/kosoku-blocking-server/index.json" ] || {
  tail -20 "$OUT/kosoku-blocking-server.log"; echo "kosoku wrote no report (server side)"; exit 1; }
kill $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
trap - EXIT
python3 .ci/autobahn.py "$OUT/kosoku-blocking-server/index.json" .ci/expected/blocking-server.txt \
  ${SURGE_CI_UPDATE:+--update}

# Client side.
port=$(free_port)
rm -rf "$OUT/kosoku-blocking-client"
timeout 900 kosoku -m fuzzingserver -o "$OUT/kosoku-blocking-client" "127.0.0.1:$port" \
  >"$OUT/kosoku-blocking-client.log" 2>&1 &
kpid=$!
trap 'kill $kpid 2>/dev/null || true' EXIT
# The client retries its first dial while kosoku starts listening.
timeout 900 "$CLIENT" --server "ws://127.0.0.1:$port" --agent surge-blocking --deflate context \
  >"$OUT/blocking-client.log" 2>&1 || { tail -20 "$OUT/blocking-client.log"; echo "blocking_client failed"; exit 1; }
# kosoku writes the report on /updateReports; wait until it is whole (parses), not merely present.
for _ in $(seq 1 300); do
  python3 -c 'import json, sys; json.load(open(sys.argv[1]))' \
    "$OUT/kosoku-blocking-client/index.json" 2>/dev/null && break
  sleep 0.1
done
kill $kpid 2>/dev/null || true
wait $kpid 2>/dev/null || true
trap - EXIT
[ -s "$OUT/kosoku-blocking-client/index.json" ] || {
  tail -20 "$OUT/kosoku-blocking-client.log"; echo "kosoku wrote no report (client side)"; exit 1; }
python3 .ci/autobahn.py "$OUT/kosoku-blocking-client/index.json" .ci/expected/blocking-client.txt \
  ${SURGE_CI_UPDATE:+--update}
echo "conformance (blocking): server and client run"

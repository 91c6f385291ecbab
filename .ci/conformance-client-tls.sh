#!/usr/bin/env bash
# The Autobahn suite against the engine's client over wss://: kosoku's fuzzing server speaks plain
# TCP only, so Debian's socat terminates TLS in front of it (a certificate for localhost signed by
# a CA made here), and examples/autobahn_client connects to wss://localhost:PORT trusting that CA:
# client --TLS--> socat --TCP--> kosoku. Every case's outcome must equal the plain run's
# (.ci/expected/client-<driver>.txt: TLS changes nothing the cases see). Usage:
# conformance-client-tls.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
OUT=${1:-ci-out}
mkdir -p "$OUT"
CLIENT=${CARGO_TARGET_DIR:-target}/release/examples/autobahn_client
[ -x "$CLIENT" ] || cargo build --release --quiet -p surge --example autobahn_client
command -v socat >/dev/null || { echo "socat is missing (.ci/run installs it)"; exit 1; }
PKI=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=surge CI CA" -keyout "$PKI/ca.key" -out "$PKI/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$PKI/key.pem" -out "$PKI/req.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$PKI/ext.cnf"
openssl x509 -req -in "$PKI/req.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
  -days 2 -extfile "$PKI/ext.cnf" -out "$PKI/cert.pem" 2>/dev/null
ran=()
skipped=()
unset SURGE_BACKEND
for driver in ${SURGE_CI_DRIVERS:-epoll io_uring}; do
  if [ "$driver" = io_uring ]; then
    if ! why=$("$CLIENT" --probe io_uring 2>&1); then
      echo "conformance-client-tls: SKIPPED driver $driver: $why"
      skipped+=("$driver")
      continue
    fi
  fi
  dir="$OUT/kosoku-client-tls-$driver"
  log="$OUT/kosoku-client-tls-$driver.log"
  port=$(free_port)
  rm -rf "$dir"
  PYTHONUNBUFFERED=1 kosoku -m fuzzingserver -o "$dir" "127.0.0.1:$port" >"$log" 2>&1 &
  pid=$!
  socat_pid=
  trap 'kill $pid $socat_pid 2>/dev/null || true; rm -rf "$PKI"' EXIT
  for _ in $(seq 1 100); do
    grep -qs "listening on" "$log" && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  grep -q "listening on" "$log" || { cat "$log"; echo "kosoku did not start"; exit 1; }
  tls_port=$(free_port)
  # nodelay on both sides: with Nagle, small writes wait for delayed ACKs (40 ms each).
  socat OPENSSL-LISTEN:"$tls_port",bind=127.0.0.1,fork,reuseaddr,nodelay,cert="$PKI/cert.pem",key="$PKI/key.pem",verify=0 \
    TCP:127.0.0.1:"$port",nodelay 2>"$OUT/socat-client-$driver.log" &
  socat_pid=$!
  for _ in $(seq 1 50); do
    (exec 3<>/dev/tcp/127.0.0.1/"$tls_port") 2>/dev/null && break
    sleep 0.1
  done
  "$CLIENT" --url "wss://localhost:$tls_port" --tls-ca "$PKI/ca.pem" --backend "$driver" \
    >"$OUT/client-tls-$driver.log" 2>&1 || {
    tail -20 "$OUT/client-tls-$driver.log"; echo "autobahn_client failed"; exit 1; }
  grep -q "(backend $driver)" "$OUT/client-tls-$driver.log" || {
    cat "$OUT/client-tls-$driver.log"; echo "the client runs another backend"; exit 1; }
  for _ in $(seq 1 100); do grep -qs "wrote reports" "$log" && break; sleep 0.1; done
  kill $pid $socat_pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  wait $socat_pid 2>/dev/null || true
  trap - EXIT
  [ -s "$dir/index.json" ] || { tail -20 "$log"; echo "kosoku wrote no report"; exit 1; }
  python3 .ci/autobahn.py "$dir/index.json" ".ci/expected/client-$driver.txt"
  ran+=("$driver")
done
rm -rf "$PKI"
echo "conformance-client-tls: drivers run: ${ran[*]:-none}; skipped: ${skipped[*]:-none}"

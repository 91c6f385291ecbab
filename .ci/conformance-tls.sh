#!/usr/bin/env bash
# The Autobahn suite (kosoku) over TLS: examples/echo with --tls-cert/--tls-key on each driver,
# reached through Debian's socat (kosoku speaks plain TCP only): kosoku -> socat (TCP in, TLS out,
# verifying the certificate against a CA made here) -> echo. Every case's outcome is compared
# with .ci/expected/server-tls-<driver>.txt. Usage: conformance-tls.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
OUT=${1:-ci-out}
mkdir -p "$OUT"
ECHO=target/release/examples/echo
command -v socat >/dev/null || { echo "socat is missing (.ci/run installs it)"; exit 1; }
# A throwaway CA and a certificate for 127.0.0.1 and localhost, signed by it.
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
for driver in ${SURGE_CI_TLS_DRIVERS:-epoll io_uring}; do
  tls_port=$(free_port)
  port=$(free_port)
  log="$OUT/echo-tls-$driver.log"
  "$ECHO" --port "$tls_port" --workers 2 --backend "$driver" --deflate context \
    --tls-cert "$PKI/cert.pem" --tls-key "$PKI/key.pem" >"$log" 2>&1 &
  pid=$!
  socat_pid=
  trap 'kill $pid $socat_pid 2>/dev/null || true; rm -rf "$PKI"' EXIT
  unavailable=0
  for _ in $(seq 1 100); do
    grep -q "listening on" "$log" && break
    if ! kill -0 $pid 2>/dev/null; then
      if grep -q "backend unavailable" "$log"; then unavailable=1; break; fi
      cat "$log"; echo "echo server died"; exit 1
    fi
    sleep 0.1
  done
  if [ "$unavailable" = 1 ]; then
    echo "conformance-tls: SKIPPED driver $driver: $(grep -m1 'backend unavailable' "$log")"
    skipped+=("$driver")
    continue
  fi
  grep -q "(backend $driver, tls)" "$log" || { cat "$log"; echo "echo server did not start with TLS"; exit 1; }
  # nodelay on both sides: with Nagle, socat's small writes wait for delayed ACKs (40 ms each).
  socat TCP-LISTEN:"$port",bind=127.0.0.1,fork,reuseaddr,nodelay \
    OPENSSL:127.0.0.1:"$tls_port",cafile="$PKI/ca.pem",commonname=localhost,nodelay \
    2>"$OUT/socat-$driver.log" &
  socat_pid=$!
  for _ in $(seq 1 50); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    sleep 0.1
  done
  rm -rf "$OUT/kosoku-tls-$driver"
  kosoku -p 2 -o "$OUT/kosoku-tls-$driver" "127.0.0.1:$port" >"$OUT/kosoku-tls-$driver.log" 2>&1 || true
  [ -s "$OUT/kosoku-tls-$driver/index.json" ] || {
    tail -20 "$OUT/kosoku-tls-$driver.log"; echo "kosoku wrote no report"; exit 1; }
  kill $socat_pid 2>/dev/null || true
  wait $socat_pid 2>/dev/null || true
  kill -INT $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  python3 .ci/autobahn.py "$OUT/kosoku-tls-$driver/index.json" ".ci/expected/server-tls-$driver.txt" ${SURGE_CI_UPDATE:+--update}
  ran+=("$driver")
done
rm -rf "$PKI"
trap - EXIT
echo "conformance-tls: drivers run: ${ran[*]:-none}; skipped: ${skipped[*]:-none}"

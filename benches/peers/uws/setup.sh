#!/usr/bin/env bash
# Installs uWebSockets.js for the `uws` system of surge-bench into target/uws-peer/ (git-ignored).
# uWebSockets.js is the Node binding of uWebSockets (C++) and uSockets; the official package
# downloads from GitHub, so this uses @trufflesuite/uws-js-unofficial from the npm registry, which
# ships the same prebuilt binaries (v20.30, Node ABIs 93/108/115 for linux x64/arm64).
# Usage: bash benches/peers/uws/setup.sh   (needs node >= 16 and npm)
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
dir="${SURGE_UWS_DIR:-$root/target/uws-peer}"
version="20.30.0-unofficial.0"
command -v node >/dev/null || { echo "node not found: install Node.js (>= 16)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm not found" >&2; exit 1; }
mkdir -p "$dir"
[ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
npm install --prefix "$dir" --no-audit --no-fund "@trufflesuite/uws-js-unofficial@$version"
node -e "require('$root/benches/peers/uws/common.js').load(); console.log('uWebSockets.js (native) ready in $dir, node ' + process.version)"

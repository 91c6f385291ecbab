#!/usr/bin/env bash
# Builds native uWebSockets (C++) + uSockets for the `uws-cpp` system of surge-bench into
# target/uws-cpp/ (git-ignored): the program uws-cpp-server (echo and pub/sub roles, server.cpp).
#
# Usage: bash benches/peers/uws-cpp/build.sh UWEBSOCKETS_GIT USOCKETS_GIT
#   UWEBSOCKETS_GIT: a clone of https://github.com/uNetworking/uWebSockets (bare or not)
#   USOCKETS_GIT:    a clone of https://github.com/uNetworking/uSockets (default: the uSockets
#                    submodule of UWEBSOCKETS_GIT when it is checked out)
# The pinned commits below are exported with `git archive` (whatever the clones have checked out),
# then compiled as uWS's own build does, with these differences: no SSL (LIBUS_NO_SSL), epoll (the
# default eventing), -O3 with LTO, and generic x86-64 code (no -march=native: surge is built without
# target-cpu=native too). zlib is linked for permessage-deflate.
set -euo pipefail
UWS_COMMIT=fe7c01a477b688a7743f754fee33bdd78d52ad91      # uWebSockets v20.79.0
USOCKETS_COMMIT=86097c490263ab662d62e8e7b541390bdec7d149 # uSockets, v20.79.0's submodule pin

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${SURGE_UWS_CPP_DIR:-$root/target/uws-cpp}"
uws_git="${1:-}"
us_git="${2:-}"
if [ -z "$uws_git" ]; then
  echo "usage: bash benches/peers/uws-cpp/build.sh UWEBSOCKETS_GIT [USOCKETS_GIT]" >&2
  echo "  git clone https://github.com/uNetworking/uWebSockets && git clone https://github.com/uNetworking/uSockets" >&2
  exit 2
fi
[ -n "$us_git" ] || us_git="$uws_git/uSockets"
for t in git g++ gcc; do command -v "$t" >/dev/null || { echo "$t not found" >&2; exit 1; }; done
[ -f /usr/include/zlib.h ] || { echo "zlib headers not found (apt-get install zlib1g-dev)" >&2; exit 1; }

src="$out/src"
rm -rf "$src"
mkdir -p "$src/uWebSockets" "$src/uSockets"
git -C "$uws_git" archive "$UWS_COMMIT" | tar -x -C "$src/uWebSockets"
git -C "$us_git" archive "$USOCKETS_COMMIT" | tar -x -C "$src/uSockets"

flags=(-O3 -flto -march=x86-64 -mtune=generic -DNDEBUG)
cd "$src/uSockets"
gcc "${flags[@]}" -std=c11 -DLIBUS_NO_SSL -Isrc -c src/*.c src/eventing/*.c src/crypto/*.c
cd "$out"
g++ "${flags[@]}" -std=c++20 -DLIBUS_NO_SSL -I"$src/uWebSockets/src" -I"$src/uSockets/src" \
  "$here/server.cpp" "$src"/uSockets/*.o -lz -o "$out/uws-cpp-server"
printf '%s\n' "uWebSockets $UWS_COMMIT (v20.79.0), uSockets $USOCKETS_COMMIT, epoll, no SSL, ${flags[*]}" > "$out/VERSION"
echo "built $out/uws-cpp-server ($(cat "$out/VERSION"))"

#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Installs the statestream_client component of BUILD_DIR into a temporary
# prefix, builds install_test/ against it and runs it against a fresh
# `statestream serve`. Usage: run.sh BUILD_DIR SOURCE_DIR STATESTREAM_BIN
set -eu
build=$1 src=$2 bin=$3
tmp=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill -9 "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
cmake --install "$build" --prefix "$tmp/prefix" --component statestream_client >/dev/null
cmake -S "$src" -B "$tmp/build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" >/dev/null
mkfifo "$tmp/out"
"$bin" serve --listen=127.0.0.1:0 >"$tmp/out" &
server=$!
read -r line <"$tmp/out"
address=${line#listening on }
result=$("$tmp/build/consumer" "$address")
test "$result" = 5
echo "installed SDK works: committed_input_offset=$result"

#!/usr/bin/env bash
# Quick start: install dependencies, build, start the all-in-one server
# (`statestream serve`) on a free port, and run a short demo against it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target statestream
SS=build/cli/statestream
OUT=out/quickstart
mkdir -p "$OUT"

# The demo model: the trained tiny byte-level RWKV-7 from the shared test
# data when present, else a random-weight model made here.
MODEL=../shared/testdata/third_party/tiny-rwkv-7v0-834K-bf16.pth
if [ ! -f "$MODEL" ]; then
  MODEL=$OUT/random-x070.safetensors
  "$SS" model random --arch x070 --layers 4 --embd 256 --vocab 256 --out "$MODEL"
fi

start_server() {
  # Emptied here, not by the redirection below: that runs in the child,
  # after the wait may already have read a `listening on` line left by a
  # server of an earlier run.
  : >"$OUT/serve.out"
  "$SS" serve --listen 127.0.0.1:0 --data-dir "$OUT/data" --model "$MODEL" \
    >"$OUT/serve.out" 2>"$OUT/serve.err" &
  SERVER=$!
  # Up to 2 minutes (a busy machine loads the model slowly); then a clear
  # failure, never a demo against an empty address.
  local deadline=$((SECONDS + 120))
  until grep -q '^listening on ' "$OUT/serve.out" 2>/dev/null; do
    kill -0 $SERVER 2>/dev/null || { cat "$OUT/serve.err"; exit 1; }
    if ((SECONDS >= deadline)); then
      echo "error: statestream serve is not listening after 120 s" >&2
      cat "$OUT/serve.err" >&2
      kill -KILL $SERVER
      exit 1
    fi
    sleep 0.1
  done
  ADDR=$(sed -n 's/^listening on //p' "$OUT/serve.out")
  echo "   $(head -1 "$OUT/serve.out")"
}
stop_server() {
  kill -TERM $SERVER
  local code=0
  wait $SERVER || code=$?
  if [ "$code" -ne 0 ]; then
    echo "   server exited with status $code after SIGTERM" >&2
    exit 1
  fi
  echo "   server exited cleanly"
}

echo "== starting statestream serve (state persisted under $OUT/data)"
rm -rf "$OUT/data"
start_server
trap 'kill $SERVER 2>/dev/null || true' EXIT

echo "== gRPC health check against $ADDR"
STUBS=$OUT/py
mkdir -p "$STUBS"
# Compiled from a copy so the stubs don't shadow grpcio's own `grpc` package.
cp /usr/share/grpc-proto/grpc/health/v1/health.proto "$STUBS/health.proto"
protoc -I"$STUBS" --python_out="$STUBS" --grpc_python_out="$STUBS" \
  --plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)" \
  "$STUBS/health.proto"
/usr/bin/python3 examples/health_demo.py "$ADDR" "$STUBS"
protoc -Iproto --python_out="$STUBS" --grpc_python_out="$STUBS" \
  --plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)" \
  proto/statestream/v1/statestream.proto

echo "== a session: stream README.md into it in 64-byte chunks, generate"
/usr/bin/python3 examples/session_demo.py "$ADDR" "$STUBS" feed demo README.md |
  tee "$OUT/before.txt"

echo "== restarting the server"
stop_server
start_server
echo "== the session resumes from its persisted state"
/usr/bin/python3 examples/session_demo.py "$ADDR" "$STUBS" resume demo |
  tee "$OUT/after.txt"
if [ "$(grep '^position=' "$OUT/before.txt")" = "$(grep '^position=' "$OUT/after.txt")" ]; then
  echo "   same position, input offset and version after the restart"
else
  echo "   the session did not resume where it stopped" >&2
  exit 1
fi

echo "== stopping the server"
stop_server
trap - EXIT

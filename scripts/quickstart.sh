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
VOCAB=bytes
if [ ! -f "$MODEL" ]; then
  MODEL=$OUT/random-x070.safetensors
  "$SS" model random --arch x070 --layers 4 --embd 256 --vocab 256 --out "$MODEL"
fi

echo "== starting statestream serve"
"$SS" serve --listen 127.0.0.1:0 --data-dir "$OUT/data" --model "$MODEL" \
  >"$OUT/serve.out" 2>"$OUT/serve.err" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q '^listening on ' "$OUT/serve.out" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/serve.err"; exit 1; }
  sleep 0.1
done
ADDR=$(sed -n 's/^listening on //p' "$OUT/serve.out")
echo "   $(head -1 "$OUT/serve.out")"

echo "== gRPC health check against $ADDR"
STUBS=$OUT/py
mkdir -p "$STUBS"
# Compiled from a copy so the stubs don't shadow grpcio's own `grpc` package.
cp /usr/share/grpc-proto/grpc/health/v1/health.proto "$STUBS/health.proto"
protoc -I"$STUBS" --python_out="$STUBS" --grpc_python_out="$STUBS" \
  --plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)" \
  "$STUBS/health.proto"
/usr/bin/python3 examples/health_demo.py "$ADDR" "$STUBS"

echo "== the engine: model info"
"$SS" model info --model "$MODEL"
PROMPT="The quick brown fox"
TOKENS=$("$SS" tokenize --vocab "$VOCAB" "$PROMPT" | tr -d '[]')
echo "== tokenize '$PROMPT' -> $TOKENS"
echo "== eval the prompt, save the state, resume it with one more token"
"$SS" model eval --model "$MODEL" --tokens "$TOKENS" --state-out "$OUT/state.bin" |
  python3 -c 'import json,sys; l=json.loads(sys.stdin.read()); v=l["logits"]; b=max(range(len(v)), key=v.__getitem__); print(f"   next-token argmax after the prompt: {b} ({chr(b)!r}), logit {v[b]:.3f}")'
ls -l "$OUT/state.bin" | awk '{print "   state file: " $5 " bytes"}'
"$SS" model eval --model "$MODEL" --tokens 32 --state-in "$OUT/state.bin" |
  python3 -c 'import json,sys; l=json.loads(sys.stdin.read()); v=l["logits"]; b=max(range(len(v)), key=v.__getitem__); print(f"   after resuming with a space: argmax {b} ({chr(b)!r})")'

echo "== stopping the server"
kill -TERM $SERVER
wait $SERVER && echo "   server exited cleanly"
trap - EXIT

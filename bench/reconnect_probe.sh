#!/usr/bin/env bash
# How long a client verb (the C++ SDK) takes to reach a `serve` that was
# SIGKILLed and restarted on the same port 1 s after the verb started:
# prints the seconds from the restart ("listening") to the verb's answer.
#   bench/reconnect_probe.sh [BIN] [ROUNDS]
set -euo pipefail
BIN=${1:-build/cli/statestream}
ROUNDS=${2:-3}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  port=$((20000 + RANDOM % 20000))
  "$BIN" serve --listen "127.0.0.1:$port" >"$work/s1.out" 2>/dev/null &
  s1=$!
  until grep -q listening "$work/s1.out" 2>/dev/null; do sleep 0.05; done
  kill -9 "$s1"; wait "$s1" 2>/dev/null || true
  "$BIN" models --target "127.0.0.1:$port" --max-attempts 30 >/dev/null &
  client=$!
  sleep 1
  "$BIN" serve --listen "127.0.0.1:$port" >"$work/s2.out" 2>/dev/null &
  s2=$!
  until grep -q listening "$work/s2.out" 2>/dev/null; do sleep 0.01; done
  up=$(date +%s.%N)
  wait "$client"
  done_at=$(date +%s.%N)
  echo "round $round: answered $(echo "$done_at - $up" | bc) s after the restart"
  kill "$s2"; wait "$s2" 2>/dev/null || true
done

#!/usr/bin/env bash
# Local statestream cluster without Kubernetes: redis-server (AOF on,
# noeviction), 3 workers and 2 gateways as background processes on loopback.
#
#   deploy/local/cluster.sh up   [--dir DIR] [--bin PATH] [--model PATH]
#                                [--workers N] [--gateways N] [--timeout S]
#   deploy/local/cluster.sh stop [--dir DIR]
#
# `up` writes DIR/cluster.env (REDIS, WORKERS, GATEWAYS, ...: source it) and
# DIR/pids, and returns once every process has printed `listening on`.
# Logs: DIR/<name>.log. `stop` stops the gateways, then the workers (they
# drain and commit to Redis), then Redis: each tier gets SIGTERM and up to 15
# s before SIGKILL, and only processes that still run the executable
# DIR/pids recorded for them are signalled. DIR defaults to
# $STATESTREAM_CLUSTER_DIR, else /tmp/statestream-cluster-UID, and must
# belong to the user running the script.
set -euo pipefail
# Everything it writes (the internal token, logs, Redis' files) is the
# user's alone, in a --dir that already existed too.
umask 077

cmd="${1:-}"
[ -n "$cmd" ] && shift || true
dir="${STATESTREAM_CLUSTER_DIR:-/tmp/statestream-cluster-$(id -u)}"
bin="build/cli/statestream"
model=""
n_workers=3
n_gateways=2
timeout_s=30
while (($#)); do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --workers) n_workers="$2"; shift 2 ;;
    --gateways) n_gateways="$2"; shift 2 ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    *) echo "usage: $0 up|stop [--dir DIR] [--bin PATH] [--model PATH]" >&2; exit 2 ;;
  esac
done

# ours PID EXE NAME: whether PID still runs the executable recorded for it
# (a stale pid file must not get a recycled pid killed); one rebuilt or
# upgraded since reads "EXE (deleted)". A pid file of an older cluster.sh
# has no EXE: its command line must then name the program.
ours() {
  if [ -z "$2" ]; then
    local want=statestream
    [ "$3" = redis ] && want=redis-server
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "$want"
    return
  fi
  local running
  running=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
  running=${running% (deleted)}
  [ "$(readlink -f "$running" 2>/dev/null || echo "$running")" = "$2" ] ||
    [ "$running" = "$2" ]
}

# stop_tier PATTERN: SIGTERM to the recorded processes whose name matches,
# up to 15 s for them to exit, then SIGKILL.
stop_tier() {
  local pids=() p name exe
  while read -r p name exe; do
    # shellcheck disable=SC2053
    [[ "$name" == $1 ]] && ours "$p" "$exe" "$name" && pids+=("$p")
  done <"$dir/pids"
  ((${#pids[@]})) || return 0
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  local deadline=$((SECONDS + 15))
  for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}

stop_all() {
  [ -f "$dir/pids" ] || return 0
  # Gateways, then workers (they drain: commit resident sessions and
  # release leases, which needs Redis), then Redis.
  stop_tier 'gateway-*'
  stop_tier 'worker-*'
  stop_tier redis
  # The record goes only once none of its processes is left.
  local p name exe
  while read -r p name exe; do
    if ours "$p" "$exe" "$name"; then
      echo "error: $name (pid $p) still runs; $dir/pids kept" >&2
      return 1
    fi
  done <"$dir/pids"
  rm -f "$dir/pids" "$dir/cluster.env"
}

# The directory holds the pid file, the internal token and the logs: it
# must be this user's (not one another user made in /tmp beforehand).
check_dir() {
  [ -d "$dir" ] || return 0
  if [ ! -O "$dir" ] || [ -L "$dir" ]; then
    echo "error: $dir is not a directory of this user's" >&2
    exit 1
  fi
}

# wait_listening LOG PID NAME: waits for `listening on HOST:PORT`, prints HOST:PORT.
wait_listening() {
  local log="$1" pid="$2" name="$3" deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    if grep -q '^listening on ' "$log" 2>/dev/null; then
      grep -m1 '^listening on ' "$log" | awk '{print $3}'
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: $name exited before listening; log $log:" >&2
      tail -20 "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "error: $name not listening after ${timeout_s}s; log $log:" >&2
  tail -20 "$log" >&2
  return 1
}

# start NAME ARGV...: starts a process in the background, records its pid
# and its executable.
start() {
  local name="$1"; shift
  local exe
  exe=$(readlink -f "$(command -v "$1")")
  "$@" >"$dir/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid $name $exe" >>"$dir/pids"
  echo "$pid"
}

case "$cmd" in
  stop)
    check_dir
    stop_all
    echo "stopped"
    ;;
  up)
    [ -x "$bin" ] || { echo "error: no binary at $bin (--bin PATH)" >&2; exit 1; }
    bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
    for tool in redis-server redis-cli; do
      command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install redis-server)" >&2; exit 1; }
    done
    check_dir
    mkdir -p -m 700 "$dir"
    check_dir
    dir="$(cd "$dir" && pwd)"
    if [ -f "$dir/pids" ]; then
      echo "a cluster is already recorded in $dir/pids; stopping it first" >&2
      stop_all
    fi
    : >"$dir/pids"
    # Anything failing from here on tears down what was started.
    trap 'rc=$?; if [ $rc -ne 0 ]; then stop_all; fi; exit $rc' EXIT
    if [ -z "$model" ]; then
      model="$dir/model.pth"
      [ -f "$model" ] || "$bin" model random --layers 2 --embd 128 --vocab 256 --out "$model" >/dev/null
    fi

    mkdir -p "$dir/redis"
    # A port below the kernel's ephemeral range (where port-0 listeners and
    # outgoing connections land), tried again if taken; the Redis that
    # answers must be the one started (its process_id).
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    ((low > 11000)) || low=32768
    deadline=$((SECONDS + timeout_s))
    redis_pid=""
    for _ in $(seq 1 20); do
      redis_port=$((10000 + RANDOM % (low - 10000)))
      redis_pid=$(start redis redis-server --port "$redis_port" --bind 127.0.0.1 \
        --dir "$dir/redis" --appendonly yes --appendfsync everysec \
        --maxmemory-policy noeviction \
        --save "" --daemonize no --protected-mode yes)
      until timeout 2 redis-cli -p "$redis_port" info server 2>/dev/null |
          tr -d '\r' | grep -qx "process_id:$redis_pid"; do
        kill -0 "$redis_pid" 2>/dev/null || break
        ((SECONDS < deadline)) || { echo "error: redis not up" >&2; exit 1; }
        sleep 0.1
      done
      kill -0 "$redis_pid" 2>/dev/null && break
      # Exited (the port was taken): forget it and try another port.
      sed -i "/^$redis_pid redis /d" "$dir/pids"
      redis_pid=""
    done
    [ -n "$redis_pid" ] || { echo "error: redis exited" >&2; tail "$dir/redis.log" >&2; exit 1; }
    redis_addr="127.0.0.1:$redis_port"

    # The gateways' secret towards the workers: a fresh one per cluster.
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$dir/internal-token"
    chmod 600 "$dir/internal-token"

    workers=()
    wpids=()
    for i in $(seq 1 "$n_workers"); do
      wpids+=("$(start "worker-$i" "$bin" worker --listen 127.0.0.1:0 --redis "$redis_addr" \
        --model "$model" --worker-id "local-worker-$i" --shutdown-grace 5s \
        --internal-token-file "$dir/internal-token")")
    done
    for i in $(seq 1 "$n_workers"); do
      workers+=("$(wait_listening "$dir/worker-$i.log" "${wpids[$((i - 1))]}" "worker-$i")")
    done

    gateways=()
    gpids=()
    for i in $(seq 1 "$n_gateways"); do
      gpids+=("$(start "gateway-$i" "$bin" gateway --listen 127.0.0.1:0 --redis "$redis_addr" \
        --gateway-id "local-gateway-$i" --internal-token-file "$dir/internal-token")")
    done
    for i in $(seq 1 "$n_gateways"); do
      gateways+=("$(wait_listening "$dir/gateway-$i.log" "${gpids[$((i - 1))]}" "gateway-$i")")
    done

    IFS=,
    cat >"$dir/cluster.env" <<ENV
REDIS=$redis_addr
WORKERS=${workers[*]}
GATEWAYS=${gateways[*]}
MODEL=$model
PIDFILE=$dir/pids
ENV
    unset IFS
    trap - EXIT
    cat "$dir/cluster.env"
    ;;
  *)
    echo "usage: $0 up|stop [--dir DIR] [--bin PATH] [--model PATH]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Runs the benchmarks (BENCHMARKS.md) on this machine: builds release, starts the fake WeChat and a
# fresh `wxlogin serve` (in-memory store) for each scenario, runs `wxlogin-bench`, prints one
# JSON line per scenario (also appended to $RESULTS when set), and stops everything.
# Nothing is written to BENCHMARKS.md: copy the figures there by hand.
#
#   scripts/bench.sh                                  # the targets' sizes (churn: 600 s)
#   CHURN_DURATION=120 scripts/bench.sh               # a shorter churn
#   SCENARIOS="callbacks churn" CHURN_DURATION=60 scripts/bench.sh
#   SCENARIOS=redis-scan-to-push scripts/bench.sh     # several instances on one Redis
#   SCENARIOS=cluster-scan-to-push scripts/bench.sh   # the same on a three-primary Redis Cluster
#
# Sizes (defaults are the targets' sizes):
#   WAITERS_N=19000 WAITERS_RATE=1000 WAITERS_HOLD=20   waiters held (rate 0 = all at once)
#   BURST_N=5000                                        waiters opening all at once
#   CAP_N=19800 CAP_RATE=2000                           waiters past the stream cap (MAX_STREAMS
#                                                       defaults to the open-files limit less a
#                                                       reserve): the excess must get clean 503s
#   SCAN_N=10000 SCAN_RATE=1000 SCAN_OPEN_RATE=2000     scan-to-push
#   CB_CONCURRENCY=64 CB_DURATION=10                    callbacks, then /healthz
#   CHURN_RATE=500 CHURN_DURATION=600 CHURN_THINK_MS=500
#   CHURN_WARMUP   seconds before "RSS at start" is read (default: 120, at most duration/5;
#                  the service keeps a delivered result 60 s, so "start" is past that)
#   REDIS_SCAN_N=100000 REDIS_SCAN_RATE=1000 REDIS_SCAN_OPEN_RATE=2000
#                  redis-scan-to-push (not in the default SCENARIOS: it needs redis-server):
#                  REDIS_INSTANCES `wxlogin serve` sharing one private redis-server (no
#                  persistence, on a free loopback port from REDIS_PORT up), streams spread
#                  over the instances, each scan sent to another instance than the stream's
#                  (so every result crosses over Redis); RSS and CPU summed over the instances
#   REDIS_INSTANCES=6 REDIS_FIRST_PORT=18090  the instances listen on REDIS_FIRST_PORT,
#                  REDIS_FIRST_PORT+1, ...; each holds N/REDIS_INSTANCES streams (its MAX_STREAMS
#                  default is the open-files limit less a reserve, ~19,500 here)
#   REDIS_POOL_SIZE=1000  POOL_SIZE of each instance: with Redis the QR stock is shared, so
#                  this is the stock of all instances together, not of each
#   REDIS_PORT=18379 REDIS_SERVER=redis-server REDIS_CLI=redis-cli
#                  cluster-scan-to-push: the same as redis-scan-to-push (same sizes) on a Redis
#                  Cluster of three primaries (no replicas) on free ports from REDIS_PORT up,
#                  made with `redis-cli --cluster create`. Both Redis scenarios log the Redis
#                  commands the scenario cost (INFO stats of every node) per login.
# Setup:
#   SCENARIOS      default "waiters waiters-burst waiters-cap scan-to-push callbacks churn"
#   PORT=18080 FAKE_PORT=18081 POOL_SIZE=1000 SSE_KEEPALIVE_SECS=15 SSE_TIMEOUT_SECS=600
#   BENCH_THREADS=2
#   SERVER_RUST_LOG  the server's RUST_LOG (unset: the service's default, info)
#   RESULTS        a file to append the JSON lines to
#   SKIP_BUILD=1   use the release binaries as built; BIN_DIR=dir: use the binaries in dir
#   QUIET_WAIT=300 QUIET_MAX_CORES=0.3  before each scenario, wait up to QUIET_WAIT s for the
#                  rest of the machine to use under QUIET_MAX_CORES (the machine is shared; every
#                  JSON line also reports the CPU other processes took: cpu.other_s)
#   BENCH_NICE=-10 run the fake WeChat, the server and the tool at this nice level (root only
#                  for negative values), so other work on the machine disturbs the figures less
# The per-IP limits on streams are switched off (SSE_PER_IP_PER_MIN=0, SSE_PER_IP_OPEN=0): all
# the load comes from a few 127.0.0.x addresses. The fake WeChat has no quota, so neither has
# the service (QR_DAILY_BUDGET far above a scenario's codes). With Redis, the instances share a
# random LOGIN_TOKEN_SECRET (the service requires one, or a key file, when REDIS_URL is set).
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"waiters waiters-burst waiters-cap scan-to-push callbacks churn"}
PORT=${PORT:-18080}
FAKE_PORT=${FAKE_PORT:-18081}
POOL_SIZE=${POOL_SIZE:-1000}
SSE_KEEPALIVE_SECS=${SSE_KEEPALIVE_SECS:-15}
SSE_TIMEOUT_SECS=${SSE_TIMEOUT_SECS:-600}
WAITERS_N=${WAITERS_N:-19000}
WAITERS_RATE=${WAITERS_RATE:-1000}
WAITERS_HOLD=${WAITERS_HOLD:-20}
BURST_N=${BURST_N:-5000}
CAP_N=${CAP_N:-19800}
CAP_RATE=${CAP_RATE:-2000}
SCAN_N=${SCAN_N:-10000}
SCAN_RATE=${SCAN_RATE:-1000}
SCAN_OPEN_RATE=${SCAN_OPEN_RATE:-2000}
CB_CONCURRENCY=${CB_CONCURRENCY:-64}
CB_DURATION=${CB_DURATION:-10}
CHURN_RATE=${CHURN_RATE:-500}
CHURN_DURATION=${CHURN_DURATION:-600}
CHURN_THINK_MS=${CHURN_THINK_MS:-500}
CHURN_WARMUP=${CHURN_WARMUP:-}
REDIS_SCAN_N=${REDIS_SCAN_N:-100000}
REDIS_SCAN_RATE=${REDIS_SCAN_RATE:-1000}
REDIS_SCAN_OPEN_RATE=${REDIS_SCAN_OPEN_RATE:-2000}
REDIS_INSTANCES=${REDIS_INSTANCES:-6}
REDIS_FIRST_PORT=${REDIS_FIRST_PORT:-18090}
REDIS_POOL_SIZE=${REDIS_POOL_SIZE:-1000}
REDIS_PORT=${REDIS_PORT:-18379}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
QUIET_WAIT=${QUIET_WAIT:-300}
QUIET_MAX_CORES=${QUIET_MAX_CORES:-0.3}
BENCH_THREADS=${BENCH_THREADS:-2}
RESULTS=${RESULTS:-}
NICE=()
[ -z "${BENCH_NICE:-}" ] || NICE=(nice -n "$BENCH_NICE")

log() { printf '== %s\n' "$*" >&2; }

# One process may hold `ulimit -Hn` files; the server and the tool both need the most.
ulimit -n "$(ulimit -Hn)"
log "open files: $(ulimit -n); $(nproc) cores; $(uname -r)"

if [ -z "${SKIP_BUILD:-}" ] && [ -z "${BIN_DIR:-}" ]; then
  log "cargo build --release -p wxlogin -p wxlogin-bench"
  cargo build --release -p wxlogin -p wxlogin-bench
fi
BIN="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
[ -x "$BIN/wxlogin" ] && [ -x "$BIN/wxlogin-bench" ] || { echo "no release binaries in $BIN" >&2; exit 1; }

# Made-up credentials, shared by the fake WeChat, the service and the tool.
export APPID=wxbench00000001 SECRET_KEY=bench-secret-0123456789 MP_TOKEN=bench-mp-token-01
export API_TOKEN="bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/wxlogin-bench.XXXXXX")
log "server logs in $LOGS"
FAKE_PID=""
REDIS_PIDS=() REDIS_PORTS=() # one per redis-server
SERVER_PIDS=() # one per instance

stop_server() {
  local pid
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  SERVER_PIDS=()
}
stop_fake() {
  if [ -n "$FAKE_PID" ]; then
    kill "$FAKE_PID" 2>/dev/null || true
    wait "$FAKE_PID" 2>/dev/null || true
    FAKE_PID=""
  fi
}
stop_redis() {
  local pid
  for pid in "${REDIS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${REDIS_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  REDIS_PIDS=() REDIS_PORTS=()
}
cleanup() {
  stop_server
  stop_fake
  stop_redis
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # url, what, seconds; until the URL answers 200
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not come up (see $LOGS)" >&2
  exit 1
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; } # port

# Another process on our port would answer in place of ours (our server would fail to bind).
port_free() { # port, what
  if listening "$1"; then
    echo "port $1 ($2) is already in use: pick another (PORT, FAKE_PORT, REDIS_FIRST_PORT)" >&2
    exit 1
  fi
}

# A fresh fake WeChat per scenario too: it remembers every QR code it made.
start_fake() { # name, the port of the instance its phone calls back
  local i
  port_free "$FAKE_PORT" "the fake WeChat"
  "${NICE[@]}" "$BIN/wxlogin" fake-wechat --port "$FAKE_PORT" \
    --callback "http://127.0.0.1:${2:-$PORT}/wechat_event" >"$LOGS/fake-$1.log" 2>&1 &
  FAKE_PID=$!
  for ((i = 0; i < 100; i++)); do
    listening "$FAKE_PORT" && return 0
    sleep 0.1
  done
  echo "the fake WeChat did not come up (see $LOGS)" >&2
  exit 1
}

# A private redis-server: no persistence, its files in a temp dir, on the first free port from
# REDIS_PORT (after those taken already), with more arguments. Sets PORT_STARTED.
spawn_redis() { # name, more redis-server arguments...
  local name=$1 port=$REDIS_PORT i
  shift
  for ((i = 0; i < 100; i++)); do
    if listening "$port" || [[ " ${REDIS_PORTS[*]} " == *" $port "* ]]; then
      port=$((port + 1))
    else
      break
    fi
  done
  mkdir -p "$LOGS/redis-$name"
  "${NICE[@]}" "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$LOGS/redis-$name" --loglevel warning "$@" >"$LOGS/redis-$name.log" 2>&1 &
  REDIS_PIDS+=($!)
  REDIS_PORTS+=("$port")
  for ((i = 0; i < 100; i++)); do
    # Ours, not another process that took the port meanwhile: ours would have exited.
    listening "$port" && kill -0 "${REDIS_PIDS[-1]}" 2>/dev/null && {
      log "redis-server on port $port"
      PORT_STARTED=$port
      return 0
    }
    sleep 0.1
  done
  echo "redis-server did not come up (see $LOGS)" >&2
  exit 1
}

# One redis-server. Sets REDIS_VARS, the instances' settings for it.
start_redis() { # name
  spawn_redis "$1"
  REDIS_VARS=(REDIS_URL="redis://127.0.0.1:$PORT_STARTED")
}

# A Redis Cluster of three primaries. Sets REDIS_VARS.
start_cluster() { # name
  local i nodes=() urls=""
  command -v "$REDIS_CLI" >/dev/null || { echo "no $REDIS_CLI (apt-get install redis-tools)" >&2; return 1; }
  for i in 0 1 2; do
    spawn_redis "$1-$i" --cluster-enabled yes --cluster-node-timeout 5000 \
      --cluster-config-file "$LOGS/redis-$1-$i/nodes.conf"
    nodes+=("127.0.0.1:$PORT_STARTED")
    urls+="${urls:+,}redis://127.0.0.1:$PORT_STARTED"
  done
  "$REDIS_CLI" --cluster create "${nodes[@]}" --cluster-yes >"$LOGS/cluster-$1.log" 2>&1 || {
    echo "redis-cli --cluster create failed (see $LOGS/cluster-$1.log)" >&2
    exit 1
  }
  for ((i = 0; i < 300; i++)); do
    local ok=0 port
    for port in "${REDIS_PORTS[@]}"; do
      "$REDIS_CLI" -p "$port" CLUSTER INFO | grep -q '^cluster_state:ok' && ok=$((ok + 1))
    done
    [ "$ok" -eq "${#REDIS_PORTS[@]}" ] && { log "Redis Cluster of ${#REDIS_PORTS[@]} primaries up"; REDIS_VARS=(REDIS_CLUSTER_URLS="$urls"); return 0; }
    sleep 0.1
  done
  echo "the Redis Cluster did not come up (see $LOGS)" >&2
  exit 1
}

# Commands all the redis-servers have processed.
redis_commands() {
  local port total=0 n
  for port in "${REDIS_PORTS[@]}"; do
    n=$("$REDIS_CLI" -p "$port" INFO stats | tr -d '\r' | awk -F: '/^total_commands_processed:/{print $2}')
    total=$((total + ${n:-0}))
  done
  echo "$total"
}

# CPU seconds a process has used (utime + stime, in 1/100 s ticks).
cpu_secs() { awk '{sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / 100}' "/proc/$1/stat" 2>/dev/null; }

# A fresh server per scenario, so each starts from the same RSS. Streams wait up to
# SSE_TIMEOUT_SECS (600: longer than any scenario holds one); QR_TTL_SECS keeps the service's
# default (1800).
start_server() { # name, port, pool size, more VAR=value...
  local name=$1 port=$2 pool=$3
  shift 3
  local env=(BIND="127.0.0.1:$port" WECHAT_API_BASE="http://127.0.0.1:$FAKE_PORT"
    POOL_SIZE="$pool" SSE_TIMEOUT_SECS="$SSE_TIMEOUT_SECS"
    SSE_KEEPALIVE_SECS="$SSE_KEEPALIVE_SECS" SSE_PER_IP_PER_MIN=0
    SSE_PER_IP_OPEN=0 QR_DAILY_BUDGET=1000000000 "$@")
  [ -n "${SERVER_RUST_LOG:-}" ] && env+=(RUST_LOG="$SERVER_RUST_LOG")
  port_free "$port" "wxlogin $name"
  "${NICE[@]}" env "${env[@]}" "$BIN/wxlogin" serve >"$LOGS/serve-$name.log" 2>&1 &
  SERVER_PIDS+=($!)
  wait_for "http://127.0.0.1:$port/readyz" "wxlogin ($name)" 30
}

# Waits until the QR stock the server on `port` reports is full (with Redis: the shared one).
wait_stock() { # port, pool size
  local i stock
  for ((i = 0; i < 300; i++)); do
    stock=$(curl -fsS "http://127.0.0.1:$1/readyz" | grep -o '"stock":[0-9]*' | head -n 1 | cut -d: -f2)
    [ "${stock:-0}" -ge "$2" ] && return 0
    sleep 0.1
  done
  log "QR stock only ${stock:-0} of $2 after 30 s; going on"
}

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }

# Waits (up to QUIET_WAIT s) until the machine, besides us, is nearly idle for 3 s.
wait_quiet() {
  local waited=0 before after cores
  while :; do
    before=$(busy_ticks); sleep 3; after=$(busy_ticks)
    cores=$(awk -v d="$((after - before))" 'BEGIN{printf "%.2f", d/100/3}')
    if awk -v c="$cores" -v m="$QUIET_MAX_CORES" 'BEGIN{exit !(c <= m)}'; then
      log "background load: $cores cores"
      return 0
    fi
    if [ "$waited" -ge "$QUIET_WAIT" ]; then
      log "background load still $cores cores after ${waited}s; running anyway"
      return 0
    fi
    waited=$((waited + 3))
  done
}

# Runs the tool against the running servers, prints its line (and appends it to $RESULTS).
run_tool() { # name, targets (comma-separated), wxlogin-bench arguments...
  local name=$1 targets=$2 line pids
  shift 2
  pids=$(IFS=,; echo "${SERVER_PIDS[*]}")
  line=$("${NICE[@]}" "$BIN/wxlogin-bench" --target "$targets" --server-pid "$pids" \
    --threads "$BENCH_THREADS" "$@") || { cleanup; log "$name failed"; return 1; }
  log "$name: the fake WeChat used $(cpu_secs "$FAKE_PID") s of CPU"
  if ((${#REDIS_PIDS[@]})); then
    local pid cpu=""
    for pid in "${REDIS_PIDS[@]}"; do cpu+="${cpu:+ + }$(cpu_secs "$pid")"; done
    log "$name: redis-server used $cpu s of CPU"
    local commands=$(( $(redis_commands) - REDIS_COMMANDS_BEFORE ))
    log "$name: $commands Redis commands (those scripts run included) for $LOGINS logins:" \
      "$(awk -v c="$commands" -v n="$LOGINS" 'BEGIN{printf "%.1f", c/n}') per login"
  fi
  cleanup
  echo "$line"
  [ -z "$RESULTS" ] || echo "$line" >>"$RESULTS"
}

bench() { # name, wxlogin-bench arguments...
  local name=$1
  shift
  wait_quiet
  log "$name: wxlogin-bench $*"
  start_fake "$name"
  start_server "$name" "$PORT" "$POOL_SIZE"
  wait_stock "$PORT" "$POOL_SIZE"
  run_tool "$name" "http://127.0.0.1:$PORT" "$@"
}

# REDIS_INSTANCES instances on one redis-server (or a Redis Cluster), all with the same
# REDIS_URL (REDIS_CLUSTER_URLS) and login-token secret; the tool gets every instance as a
# target and every PID.
bench_redis() { # name, redis|cluster, wxlogin-bench arguments...
  local name=$1 kind=$2 i port targets="" secret
  shift 2
  [ "$REDIS_INSTANCES" -ge 2 ] || { echo "REDIS_INSTANCES must be at least 2" >&2; return 1; }
  if ((FAKE_PORT >= REDIS_FIRST_PORT && FAKE_PORT < REDIS_FIRST_PORT + REDIS_INSTANCES)); then
    echo "FAKE_PORT $FAKE_PORT is among the instances' ports (REDIS_FIRST_PORT)" >&2
    return 1
  fi
  command -v "$REDIS_SERVER" >/dev/null || { echo "no $REDIS_SERVER (apt-get install redis-server)" >&2; return 1; }
  wait_quiet
  log "$name: $REDIS_INSTANCES instances; wxlogin-bench $*"
  secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  start_fake "$name" "$REDIS_FIRST_PORT"
  "start_$kind" "$name"
  for ((i = 0; i < REDIS_INSTANCES; i++)); do
    port=$((REDIS_FIRST_PORT + i))
    start_server "$name-$i" "$port" "$REDIS_POOL_SIZE" "${REDIS_VARS[@]}" \
      LOGIN_TOKEN_SECRET="$secret"
    targets+="${targets:+,}http://127.0.0.1:$port"
  done
  wait_stock "$REDIS_FIRST_PORT" "$REDIS_POOL_SIZE"
  REDIS_COMMANDS_BEFORE=$(redis_commands)
  run_tool "$name" "$targets" "$@"
}

status=0
for scenario in $SCENARIOS; do
  case $scenario in
    waiters)
      bench waiters waiters --n "$WAITERS_N" --rate "$WAITERS_RATE" --hold-secs "$WAITERS_HOLD" || status=1 ;;
    waiters-burst)
      bench waiters-burst waiters --n "$BURST_N" --rate 0 || status=1 ;;
    waiters-cap)
      bench waiters-cap waiters --n "$CAP_N" --rate "$CAP_RATE" || status=1 ;;
    scan-to-push)
      bench scan-to-push scan-to-push --n "$SCAN_N" --rate "$SCAN_RATE" --open-rate "$SCAN_OPEN_RATE" || status=1 ;;
    callbacks)
      bench callbacks callbacks --concurrency "$CB_CONCURRENCY" --duration-secs "$CB_DURATION" || status=1 ;;
    redis-scan-to-push | cluster-scan-to-push)
      LOGINS=$REDIS_SCAN_N
      bench_redis "$scenario" "${scenario%%-*}" scan-to-push --n "$REDIS_SCAN_N" \
        --rate "$REDIS_SCAN_RATE" --open-rate "$REDIS_SCAN_OPEN_RATE" || status=1 ;;
    churn)
      bench churn churn --rate "$CHURN_RATE" --duration-secs "$CHURN_DURATION" \
        --think-ms "$CHURN_THINK_MS" ${CHURN_WARMUP:+--warmup-secs "$CHURN_WARMUP"} || status=1 ;;
    *) echo "unknown scenario: $scenario" >&2; status=1 ;;
  esac
done
exit $status

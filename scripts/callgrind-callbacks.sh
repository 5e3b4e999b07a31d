#!/usr/bin/env bash
# Counts the instructions (valgrind's callgrind) the release server spends per `/healthz` and
# per signed callback, for comparing two builds without the machine's noise (BENCHMARKS.md,
# "What a callback costs now against `a0fe7e2`").
#
#   scripts/callgrind-callbacks.sh <dir with wxlogin> <out dir> [N]
#
# Starts the fake WeChat and `wxlogin serve` under callgrind with the settings scripts/bench.sh
# gives the `callbacks` scenario (in-memory store), waits for the full QR stock, then sends
# 100 of each as a warm-up, N (2,000) `/healthz` and N signed callbacks for scenes nobody waits
# on (each with its own openid and nonce, as wxlogin-bench does), one at a time over one
# keep-alive connection. Counters are zeroed before the `/healthz` and dumped after each phase:
# <out>/callgrind.out.<pid>.1 is the `/healthz` phase, .2 the callbacks. Ir per request is the
# file's `summary:` line over N; `callgrind_annotate` splits it by function.
#
# Under valgrind, sha1 and sha2 cannot use the CPU's SHA extensions and fall back to their
# software code: SHA counts are far above what they cost natively.
set -euo pipefail
BIN=$1 OUT=$2 N=${3:-2000}
PORT=${PORT:-18280} FAKE_PORT=${FAKE_PORT:-18281}
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "no valgrind (apt-get install valgrind)" >&2; exit 1; }
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.out.*
export APPID=wxbench00000001 SECRET_KEY=bench-secret-0123456789 MP_TOKEN=bench-mp-token-01
export API_TOKEN="bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PORT" "$FAKE_PORT"; do
  if listening "$p"; then echo "port $p is in use (PORT, FAKE_PORT)" >&2; exit 1; fi
done
FAKE="" SERVER=""
cleanup() {
  local pid
  for pid in $SERVER $FAKE; do kill "$pid" 2>/dev/null || true; done
  for pid in $SERVER $FAKE; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
"$BIN/wxlogin" fake-wechat --port "$FAKE_PORT" \
  --callback "http://127.0.0.1:$PORT/wechat_event" >"$OUT/fake.log" 2>&1 &
FAKE=$!
env BIND="127.0.0.1:$PORT" WECHAT_API_BASE="http://127.0.0.1:$FAKE_PORT" \
  POOL_SIZE=1000 SSE_TIMEOUT_SECS=600 SSE_KEEPALIVE_SECS=15 SSE_PER_IP_PER_MIN=0 \
  SSE_PER_IP_OPEN=0 QR_DAILY_BUDGET=1000000000 \
  valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" \
  "$BIN/wxlogin" serve >"$OUT/serve.log" 2>&1 &
SERVER=$!
stock=0
for ((i = 0; i < 600; i++)); do
  stock=$(curl -fsS "http://127.0.0.1:$PORT/readyz" 2>/dev/null |
    grep -o '"stock":[0-9]*' | head -n 1 | cut -d: -f2 || true)
  [ "${stock:-0}" -ge 1000 ] && break
  sleep 0.5
done
[ "${stock:-0}" -ge 1000 ] || { echo "QR stock ${stock:-0} of 1000 (see $OUT)" >&2; exit 1; }
python3 scripts/callgrind_drive.py "$PORT" "$SERVER" "$N"
cleanup
SERVER="" FAKE=""
for f in "$OUT"/callgrind.out.*.[12]; do
  awk -v n="$N" -v f="$f" '/^desc: Trigger/{t=$4} /^summary:/{printf "%s: %s, %.0f Ir per request\n", f, t, $2/n}' "$f"
done

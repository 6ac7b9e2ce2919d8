#!/usr/bin/env bash
# make bench: bench-redis vs redis-benchmark, the workload at fixed query rates, the event
# path at rising rates, RSS throughout. Writes bench/results/<UTC date>.md and .json.
#
# Redis: our own redis-server on a free port in a temp dir (killed on exit), so runs never
# share a keyspace or a server with anything else. Postgres: .ci/services.sh (.local/).
#
# Environment (all optional):
#   BENCH_QUICK=1            smoke run: short durations, 1 repetition
#   BENCH_REPS=3             A/B repetitions of step 1 (medians quoted); BENCH_WORKLOAD_REPS
#   BENCH_RAW_SECONDS=10     duration of each bench-redis run (redis-benchmark gets equal ops)
#   BENCH_WORKLOAD_SECONDS=15
#   BENCH_CONNECTIONS=50 BENCH_PIPELINES="1 16" BENCH_KEYS=100000 BENCH_DATA_SIZE=32
#   BENCH_QUERY_RATES="1000 10000 50000 100000 1000000" BENCH_QUERY_EVENTS=200
#   BENCH_EVENT_RATES="1000 5000 20000 50000 100000" BENCH_EVENT_QUERIES=100
#   BENCH_STEPS="raw workload events"   (or "targets": make bench-targets; "efficiency":
#                            make bench-efficiency, bench/efficiency.py, its settings there)
#   BENCH_TARGET_SECONDS=60 BENCH_TARGET_WARMUP_SECONDS=15 BENCH_TARGET_RATE=100000
#   BENCH_TARGET_MAX_WORKERS=4000 BENCH_ACCURACY_RATES="10 100 1000 10000 100000"
#   BENCH_ACCURACY_SECONDS=10
#   BENCH_PIN=1              Redis on the first CPU, clients on the others (taskset)
#   NO_BUILD=1               use the existing release binary
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export BENCH_BIN="${BENCH_BIN:-$TARGET_DIR/release/analytics-demo}"
log() { printf '[bench] %s\n' "$*" >&2; }
# shellcheck source=.ci/lib.sh
. .ci/lib.sh

for tool in redis-server redis-cli redis-benchmark python3; do
    command -v "$tool" >/dev/null || { log "$tool is missing: apt-get install redis-tools redis-server python3"; exit 1; }
done
if [ -z "${NO_BUILD:-}" ]; then cargo build --release; fi
[ -x "$BENCH_BIN" ] || { log "$BENCH_BIN not found"; exit 1; }

if [[ " ${BENCH_STEPS:-raw workload events} " =~ \ (workload|events|targets|efficiency)\  ]]; then
    bash .ci/services.sh start
    set -a; . .local/env; set +a
    export BENCH_PSQL
    BENCH_PSQL="$(command -v psql)"
fi

# CPU split: Redis on the first usable CPU, the clients on the rest (with 2+ CPUs).
if [ "${BENCH_PIN:-1}" = 1 ]; then
    split_cpus
    if [ -n "$REDIS_CPUS" ]; then
        export BENCH_REDIS_CPUS="$REDIS_CPUS" BENCH_CLIENT_CPUS="$CLIENT_CPUS"
    fi
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/analytics-bench.XXXXXX")"
REDIS_PID=""
cleanup() {
    if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
        kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
export BENCH_REDIS_PORT
BENCH_REDIS_PORT="$(free_port)"
REDIS_CPUS="${BENCH_REDIS_CPUS:-}" redis_start "$TMP" "$BENCH_REDIS_PORT"
REDIS_PID=$!
redis_wait "$BENCH_REDIS_PORT" 10 || { log "redis-server did not start"; cat "$TMP/redis.log"; exit 1; }
log "redis-server $(redis-server --version | awk '{print $3}') on port $BENCH_REDIS_PORT (pid $REDIS_PID, CPUs ${BENCH_REDIS_CPUS:-any}); clients on CPUs ${BENCH_CLIENT_CPUS:-any}"

export BENCH_COMMAND="${BENCH_COMMAND:-${BENCH_QUICK:+BENCH_QUICK=1 }make bench}"
if [ "${BENCH_STEPS:-}" = efficiency ]; then
    # A flamegraph per point needs perf (Debian: linux-perf) and inferno, installed here once
    # like make perf-record does; without perf the table says it is missing.
    if command -v perf >/dev/null && [ "${EFF_FLAME_SECONDS:-}" != 0 ]; then
        ensure_inferno "$ROOT" || log "inferno could not be installed: no flamegraphs"
    fi
    python3 bench/efficiency.py bench/results   # make bench-efficiency
else
    python3 bench/harness.py bench/results
fi

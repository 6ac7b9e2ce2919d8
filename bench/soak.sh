#!/usr/bin/env bash
# make soak: the ultra preset (2000 events/s, 8000 queries/s) for SOAK_SECONDS against a Redis
# and a PostgreSQL of its own, each restarted once in the middle; RSS sampled from /proc; no
# panic, RSS drift, verify clean. Writes bench/results/soak-<UTC time>.md and .json. A
# benchmark, not CI: it takes the machine for the whole run.
#
# What it starts (in .local/soak/, all stopped on exit): redis-server with AOF
# (appendonly yes, appendfsync everysec) on a free port, restarted at a third of the run by
# SHUTDOWN (which fsyncs the AOF, so every acknowledged increment survives and verify must be
# clean; increments in flight at the shutdown are `unknown`, within verify's budget); a
# PostgreSQL cluster (.ci/services.sh start-postgres) on a free port, stopped (fast) and
# started again at two thirds; the release binary.
#
# RSS drift: median VmRSS of the last minute against the median of the second minute (the
# first is warm-up); with SOAK_SECONDS under 240 the windows are SOAK_SECONDS/4 long. It must
# grow less than SOAK_RSS_DRIFT_LIMIT percent (shrinking is fine). Runs under 4 minutes report
# it but do not judge it (their windows straddle the restarts).
#
# Environment (all optional):
#   SOAK_SECONDS=600              length of the run
#   EVENTS_PER_SECOND=2000 QUERIES_PER_SECOND=8000
#   SOAK_SAMPLE_SECONDS=10        RSS / rate sampling period
#   SOAK_REDIS_DOWN_SECONDS=5 SOAK_PG_DOWN_SECONDS=5
#   SOAK_REDIS_RESTART_AT / SOAK_PG_RESTART_AT   seconds into the run (default 1/3 and 2/3)
#   SOAK_RSS_DRIFT_LIMIT=5        percent
#   NO_BUILD=1                    use the existing release binary (APP_BIN to pick another)
#
# Exit status: 0 when every check passes, 1 when one fails, 2 on setup errors.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[soak] %s\n' "$*" >&2; }

for tool in redis-server redis-cli psql python3; do
    command -v "$tool" >/dev/null || { log "$tool is missing: bash .ci/services.sh install"; exit 2; }
done
if [ -z "${NO_BUILD:-}" ]; then cargo build --release; fi
# glommio registers memory with io_uring: raise the memlock limit where we may.
ulimit -l unlimited 2>/dev/null || true
export SOAK_COMMAND="${SOAK_COMMAND:-make soak${SOAK_SECONDS:+ SOAK_SECONDS=$SOAK_SECONDS}}"
exec python3 bench/soak.py

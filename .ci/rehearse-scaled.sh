#!/usr/bin/env bash
# One run of N instances against the local stack, started as a Kubernetes Indexed Job starts
# its pods: the same environment contract (JOB_COMPLETION_INDEX, INSTANCE_COUNT, RUN_NAME,
# the start barrier in PostgreSQL), then the run's aggregate (`report --run-name`) and
# verdict (`verify --run-name`).
#
#   bash .ci/rehearse-scaled.sh            (make rehearse-scaled INSTANCES=3 DURATION=30)
#
# Settings (environment): INSTANCES (3), DURATION (30 s of load), EVENTS_PER_SECOND (2000) and
# QUERIES_PER_SECOND (8000): the run's totals, each instance takes its share; SHARDS_PER_INSTANCE
# (1), APP_BIN (target/release/analytics-demo; NO_BUILD=1 skips cargo build), RUN_NAME
# (scaled-<time>), RATE_TOLERANCE_PERCENT (1).
#
# Redis and PostgreSQL are the project-local ones of .ci/services.sh (started here when they
# are not running, and stopped again at the end in that case). The instances get free ports.
#
# Exit status: 0 on PASS (every instance ended cleanly, aggregate rates within the tolerance
# of the targets, nothing skipped, verify CLEAN), 1 on FAIL, 2 on setup errors.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
INSTANCES="${INSTANCES:-3}"
DURATION="${DURATION:-30}"
EVENTS_PER_SECOND="${EVENTS_PER_SECOND:-2000}"
QUERIES_PER_SECOND="${QUERIES_PER_SECOND:-8000}"
SHARDS_PER_INSTANCE="${SHARDS_PER_INSTANCE:-1}"
TOLERANCE="${RATE_TOLERANCE_PERCENT:-1}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
APP_BIN="${APP_BIN:-$TARGET_DIR/release/analytics-demo}"
RUN_NAME="${RUN_NAME:-scaled-$(date -u +%Y%m%dT%H%M%SZ)-$$}"
WORK="$ROOT/.local/rehearse-scaled/$RUN_NAME"

say() { printf '[rehearse-scaled] %s\n' "$*" >&2; }
die() { printf '[rehearse-scaled] ERROR: %s\n' "$*" >&2; exit 2; }

case "$INSTANCES" in '' | *[!0-9]* | 0) die "INSTANCES must be a positive integer" ;; esac
case "$DURATION" in '' | *[!0-9]* | 0) die "DURATION must be a positive number of seconds" ;; esac

PIDS=() STOP_SERVICES=""
cleanup() {
    local rc=$?
    set +e
    [ "${#PIDS[@]}" -eq 0 ] || stop_pids "${PIDS[@]}"
    if [ -n "$STOP_SERVICES" ]; then bash .ci/services.sh stop >/dev/null 2>&1; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=.ci/lib.sh
. "$ROOT/.ci/lib.sh"

if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --quiet
fi
[ -x "$APP_BIN" ] || die "$APP_BIN not found (build failed?)"

if ! bash .ci/services.sh status 2>/dev/null | grep -q '^redis: *running' ||
    ! bash .ci/services.sh status 2>/dev/null | grep -q '^postgres: *running'; then
    STOP_SERVICES=1
fi
bash .ci/services.sh start >/dev/null
eval "$(bash .ci/services.sh env)"
mkdir -p "$WORK"

say "run $RUN_NAME: $INSTANCES instances, $EVENTS_PER_SECOND events/s + $QUERIES_PER_SECOND queries/s in total, ${DURATION} s"
ulimit -l unlimited 2>/dev/null || true
for i in $(seq 0 $((INSTANCES - 1))); do
    port="$(free_port)"
    env -u INSTANCE_INDEX RUN_NAME="$RUN_NAME" INSTANCE_COUNT="$INSTANCES" JOB_COMPLETION_INDEX="$i" \
        REDIS_URL="$REDIS_URL" DATABASE_URL="$DATABASE_URL" \
        EVENTS_PER_SECOND="$EVENTS_PER_SECOND" QUERIES_PER_SECOND="$QUERIES_PER_SECOND" \
        DURATION="$DURATION" SHARDS="$SHARDS_PER_INSTANCE" NO_PIN=1 LOG_FORMAT=json \
        BIND_ADDRESS="127.0.0.1:$port" PROGRESS_INTERVAL=10 \
        "$APP_BIN" >"$WORK/instance-$i.out" 2>"$WORK/instance-$i.log" </dev/null &
    PIDS+=("$!")
    say "instance $i: pid $!, http 127.0.0.1:$port, log $WORK/instance-$i.log"
done

failed=0
for i in "${!PIDS[@]}"; do
    if wait "${PIDS[$i]}"; then :; else
        rc=$?
        say "instance $i exited $rc:"
        tail -n 5 "$WORK/instance-$i.log" >&2
        failed=1
    fi
done
PIDS=()

"$APP_BIN" report --run-name "$RUN_NAME" --database-url "$DATABASE_URL" --json >"$WORK/report.json" ||
    die "report --run-name failed"
"$APP_BIN" report --run-name "$RUN_NAME" --database-url "$DATABASE_URL"
set +e
"$APP_BIN" verify --run-name "$RUN_NAME" --redis-url "$REDIS_URL" --database-url "$DATABASE_URL" \
    --json >"$WORK/verify.json" 2>"$WORK/verify.log"
verify_rc=$?
set -e

python3 - "$WORK/report.json" "$WORK/verify.json" "$TOLERANCE" "$INSTANCES" "$failed" "$verify_rc" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
try:
    verdict = json.load(open(sys.argv[2]))
except ValueError:
    verdict = {}
tolerance, instances = float(sys.argv[3]), int(sys.argv[4])
failed, verify_rc = sys.argv[5] == "1", int(sys.argv[6])
problems = []
if failed:
    problems.append("an instance did not end cleanly")
if report.get("instances_finished") != instances:
    problems.append(f"{report.get('instances_finished')} of {instances} instances recorded a summary")
for kind in ("events", "queries"):
    off = report.get(f"{kind}_rate_off_percent")
    if off is None or abs(off) > tolerance:
        problems.append(f"{kind} rate {report.get(kind + '_per_second'):.1f}/s is {off:+.2f}% off the target {report.get(kind + '_target_per_second')}/s (tolerance {tolerance}%)")
if report.get("skipped"):
    problems.append(f"{report['skipped']} operations skipped (the load did not hold)")
if verify_rc != 0 or not verdict.get("clean"):
    problems.append(f"verify exit {verify_rc}: lost {verdict.get('lost_acknowledged_increments')}, phantom {verdict.get('phantom_increments')}, problems {verdict.get('problems')}")
q, e = report["query_latency_ms"], report["event_latency_ms"]
print(f"\nrun {report['run_name']}: {report['instances_finished']}/{instances} instances, start skew {report.get('start_skew_ms') or 0:.1f} ms")
print(f"  events  {report['events_per_second']:.1f}/s of {report['events_target_per_second']}/s ({report['events_rate_off_percent']:+.2f}%), queries {report['queries_per_second']:.1f}/s of {report['queries_target_per_second']}/s ({report['queries_rate_off_percent']:+.2f}%), skipped {report['skipped']}")
print(f"  latency from schedule, merged: queries p50 {q['p50']} / p99 {q['p99']} / p99.9 {q['p999']} ms; events p99 {e['p99']} ms")
print(f"  verify: {'CLEAN' if verdict.get('clean') else 'NOT CLEAN'} ({verdict.get('keys_checked')} keys, {verdict.get('acked_total')} acknowledged increments, {len(verdict.get('runs_judged') or [])} runs judged)")
if problems:
    print("VERDICT: FAIL\n  - " + "\n  - ".join(problems))
    sys.exit(1)
print("VERDICT: PASS")
PY

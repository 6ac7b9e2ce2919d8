#!/usr/bin/env bash
# Rehearse a live Redis migration with analytics-demo and check the verdict.
#
#   bash .ci/migrate-demo.sh replicated   target replicates the source, switch, promote: expect CLEAN
#   bash .ci/migrate-demo.sh lossy        switch to an empty target that never replicated: expect LOSS
#   bash .ci/migrate-demo.sh failover     source replicated, then kill -9'd; promote the replica and
#                                         switch: expect no loss beyond the async-replication window
#
# What it starts (and stops again on exit, whatever happens): a source and a target
# redis-server on free ports (data and logs in .local/migrate/<mode>/), the release binary on
# the source with a freshly generated ADMIN_TOKEN, and, when they were not running yet, the
# project-local services of .ci/services.sh (PostgreSQL is used from there, in a database of its
# own, dropped and created on every run so `verify` only sees this run's events).
#
# Settings (environment): EVENTS_PER_SECOND (50), QUERIES_PER_SECOND (150), MIGRATE_SECONDS (10:
# seconds of load before the cutover and again after it), APP_PORT (a free port), APP_BIN
# (target/release/analytics-demo; NO_BUILD=1 skips cargo build), MIGRATE_DB
# (analytics_migrate_<mode>), FAILOVER_DETECT_SECONDS (1: how long the dead source goes
# unnoticed), LAG_WINDOW_SECONDS (1: what async replication may lose on a failover, see below),
# FAILOVER_REPLICA_LAG_SECONDS (0: freeze the replica that long before the kill, so the source
# acknowledges writes the replica never receives and verify shows the loss).
#
# Exit status: 0 when the verdict is the one the mode expects, 1 otherwise, 2 on setup errors.
set -euo pipefail

MODE="${1:-}"
case "$MODE" in
    replicated | lossy | failover) ;;
    *) echo "usage: $0 replicated|lossy|failover" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=.ci/lib.sh
. .ci/lib.sh
EVENTS_PER_SECOND="${EVENTS_PER_SECOND:-50}"
QUERIES_PER_SECOND="${QUERIES_PER_SECOND:-150}"
MIGRATE_SECONDS="${MIGRATE_SECONDS:-10}"
FAILOVER_DETECT_SECONDS="${FAILOVER_DETECT_SECONDS:-1}"
LAG_WINDOW_SECONDS="${LAG_WINDOW_SECONDS:-1}"
REPLICA_LAG_SECONDS="${FAILOVER_REPLICA_LAG_SECONDS:-0}"
# What async replication may lose: the replica's lag (normally well under a second; longer
# when the replica is frozen on purpose) plus LAG_WINDOW_SECONDS of margin.
WINDOW_SECONDS=$(( LAG_WINDOW_SECONDS + REPLICA_LAG_SECONDS ))
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
APP_BIN="${APP_BIN:-$TARGET_DIR/release/analytics-demo}"
DB_NAME="${MIGRATE_DB:-analytics_migrate_$MODE}"
WORK="$ROOT/.local/migrate/$MODE"

say() { printf '[migrate-demo %s] %s\n' "$MODE" "$*" >&2; }
die() { printf '[migrate-demo %s] ERROR: %s\n' "$MODE" "$*" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# Clean-up: everything started here is stopped on any exit.
# ---------------------------------------------------------------------------------------------
SOURCE_PID="" TARGET_PID="" APP_PID="" STOP_SERVICES=""
cleanup() {
    local rc=$?
    set +e
    [ -z "$APP_PID" ] || stop_pids "$APP_PID"
    for pid in $SOURCE_PID $TARGET_PID; do
        kill -KILL "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    if [ -n "$STOP_SERVICES" ]; then bash .ci/services.sh stop >/dev/null 2>&1; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
rcli() { redis-cli -h 127.0.0.1 -p "$@"; }

info_field() { # PORT FIELD (INFO replication)
    rcli "$1" info replication 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

wait_in_sync() { # wait until the target replica's link is up and it has caught up
    local i
    for i in $(seq 1 300); do
        if [ "$(info_field "$TARGET_PORT" master_link_status)" = up ]; then break; fi
        sleep 0.2
    done
    [ "$(info_field "$TARGET_PORT" master_link_status)" = up ] || die "target never synced with the source"
    say "target replica link up after initial sync ($(rcli "$TARGET_PORT" dbsize) keys)"
}

# Normal clients of a Redis other than this redis-cli (the app's connections).
app_clients() { rcli "$1" client list type normal 2>/dev/null | grep -vc 'cmd=client|list' || true; }

metric() { # NAME LABEL-FILTER: sum over matching samples of /metrics
    curl -fsS --max-time 5 "$APP_URL/metrics" 2>/dev/null \
        | awk -v n="$1" -v f="${2:-}" '(index($0, n "{") == 1 || index($0, n " ") == 1) && index($1, f) { s += $NF } END { printf "%d\n", s }'
}

psql_db() { psql -X -At -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "$1"; }

json_get() { # FILE PYTHON-EXPRESSION over `d`
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

# ---------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------
command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
    || die "redis-server/redis-cli missing: bash .ci/services.sh install"
command -v python3 >/dev/null || die "python3 is needed (free ports, JSON)"
command -v curl >/dev/null || die "curl is needed"
if [ -z "${NO_BUILD:-}" ]; then
    say "cargo build --release"
    cargo build --release --quiet
fi
[ -x "$APP_BIN" ] || die "$APP_BIN not found (build it, or set APP_BIN)"

if ! bash .ci/services.sh status 2>/dev/null | grep -q '^\(redis\|postgres\): *running'; then
    STOP_SERVICES=1 # nothing of ours ran before: stop what `start` starts
fi
mkdir -p "$ROOT/.local"
bash .ci/services.sh start >/dev/null 2>"$ROOT/.local/migrate-services.log" \
    || { cat "$ROOT/.local/migrate-services.log" >&2; die "bash .ci/services.sh start failed"; }
BASE_DATABASE_URL="$(sed -n 's/^DATABASE_URL=//p' .local/env | tail -n 1)"
[ -n "$BASE_DATABASE_URL" ] || die "no DATABASE_URL in .local/env"
ADMIN_DATABASE_URL="${BASE_DATABASE_URL%/*}/postgres"
DATABASE_URL="${BASE_DATABASE_URL%/*}/$DB_NAME"
psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_DATABASE_URL" \
    -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" -c "CREATE DATABASE $DB_NAME" >/dev/null \
    || die "could not create database $DB_NAME"

rm -rf "$WORK"
mkdir -p "$WORK"
SOURCE_PORT="$(free_port)"
redis_start "$WORK/source" "$SOURCE_PORT"; SOURCE_PID=$!
TARGET_PORT="$(free_port "$SOURCE_PORT")"
redis_start "$WORK/target" "$TARGET_PORT"; TARGET_PID=$!
for port in "$SOURCE_PORT" "$TARGET_PORT"; do
    redis_wait "$port" 30 || die "redis on port $port did not answer PING"
done
SOURCE_URL="redis://127.0.0.1:$SOURCE_PORT"
TARGET_URL="redis://127.0.0.1:$TARGET_PORT"
APP_PORT="${APP_PORT:-$(free_port)}"
APP_URL="http://127.0.0.1:$APP_PORT"
ADMIN_TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export ADMIN_TOKEN # for the app and for `analytics-demo switch`; never on a command line

say "source $SOURCE_URL, target $TARGET_URL, postgres database $DB_NAME, app $APP_URL"
say "load: $EVENTS_PER_SECOND events/s, $QUERIES_PER_SECOND queries/s; $MIGRATE_SECONDS s before and after the cutover"
(
    ulimit -l unlimited 2>/dev/null || true
    exec env EVENTS_PER_SECOND="$EVENTS_PER_SECOND" QUERIES_PER_SECOND="$QUERIES_PER_SECOND" \
        REDIS_URL="$SOURCE_URL" DATABASE_URL="$DATABASE_URL" BIND_ADDRESS="127.0.0.1:$APP_PORT" \
        "$APP_BIN" --log-format text </dev/null >"$WORK/app.log" 2>&1
) &
APP_PID=$!

for _ in $(seq 1 600); do
    kill -0 "$APP_PID" 2>/dev/null || { tail -n 30 "$WORK/app.log" >&2; die "the app exited at start-up"; }
    [ "$(metric analytics_events_total)" -gt 0 ] 2>/dev/null && break
    sleep 0.1
done
[ "$(metric analytics_events_total)" -gt 0 ] || { tail -n 30 "$WORK/app.log" >&2; die "the load did not start within 60 s"; }
say "load running on the source"

switch_to_target() {
    local i
    for i in $(seq 1 100); do # 503 "shards are still starting" right after start-up: retry
        # --wait: returns once every app connection is up on the target (exit 1 if not in 30 s).
        if "$APP_BIN" switch --to "$TARGET_URL" --admin-url "$APP_URL" --wait 30 >"$WORK/switch.json" 2>"$WORK/switch.err"; then
            break
        fi
        grep -q "still starting" "$WORK/switch.err" || { cat "$WORK/switch.err" >&2; die "analytics-demo switch failed"; }
        sleep 0.1
    done
    say "switched: $(cat "$WORK/switch.json")"
}

# Make-before-break: each shard connection moves once its new connection is up. Before the
# source stops being written to for good (promotion), wait until the app has no connection
# left on it, so no acknowledged write lands on the source after replication stopped.
wait_source_drained() {
    local n
    for _ in $(seq 1 100); do
        n="$(app_clients "$SOURCE_PORT")"
        [ "$n" = 0 ] && return 0
        sleep 0.05
    done
    say "warning: $n client connection(s) still on the source 5 s after the switch"
}

KILL_TS="" LAG_BYTES="n/a"
case "$MODE" in
    replicated)
        sleep "$MIGRATE_SECONDS"
        say "target: REPLICAOF source"
        rcli "$TARGET_PORT" replicaof 127.0.0.1 "$SOURCE_PORT" >/dev/null
        wait_in_sync
        switch_to_target
        wait_source_drained
        rcli "$TARGET_PORT" replicaof no one >/dev/null
        say "target promoted (REPLICAOF NO ONE)"
        ;;
    lossy)
        # 3 s more than MIGRATE_SECONDS: the report's "before" window ends 10 s before the
        # switch, and the cache-hit dip is measured against it.
        sleep $(( MIGRATE_SECONDS + 3 ))
        say "target left empty: it never replicated ($(rcli "$TARGET_PORT" dbsize) keys)"
        switch_to_target
        ;;
    failover)
        say "target: REPLICAOF source"
        rcli "$TARGET_PORT" replicaof 127.0.0.1 "$SOURCE_PORT" >/dev/null
        wait_in_sync
        sleep "$MIGRATE_SECONDS"
        # The replica's offset as the source knows it.
        repl="$(rcli "$SOURCE_PORT" info replication | tr -d '\r')"
        replica_off="$(sed -n 's/^slave0:.*offset=\([0-9]*\).*/\1/p' <<<"$repl")"
        if [ "$REPLICA_LAG_SECONDS" != 0 ]; then
            # A partition: freeze the replica and drop its link, so nothing more reaches it.
            kill -STOP "$TARGET_PID"
            rcli "$SOURCE_PORT" client kill type replica >/dev/null
            say "replica cut off (SIGSTOP + CLIENT KILL TYPE replica) for ${REPLICA_LAG_SECONDS}s: the source acks writes the replica never gets"
            sleep "$REPLICA_LAG_SECONDS"
        fi
        master_off="$(info_field "$SOURCE_PORT" master_repl_offset)"
        LAG_BYTES=$(( ${master_off:-0} - ${replica_off:-0} ))
        KILL_TS="$(date +%s.%N)"
        kill -KILL "$SOURCE_PID"
        wait "$SOURCE_PID" 2>/dev/null || true
        SOURCE_PID=""
        [ "$REPLICA_LAG_SECONDS" = 0 ] || kill -CONT "$TARGET_PID"
        say "source KILLED (kill -9); the replica was $LAG_BYTES bytes behind"
        sleep "$FAILOVER_DETECT_SECONDS"
        rcli "$TARGET_PORT" replicaof no one >/dev/null
        say "replica promoted (REPLICAOF NO ONE)"
        switch_to_target
        ;;
esac

sleep "$MIGRATE_SECONDS"
curl -fsS --max-time 10 "$APP_URL/metrics" >"$WORK/metrics.txt" || true
"$APP_BIN" report --admin-url "$APP_URL" >"$WORK/report.txt" || die "analytics-demo report failed"
"$APP_BIN" report --admin-url "$APP_URL" --json >"$WORK/report.json" || die "analytics-demo report --json failed"

say "stopping the app (SIGTERM: in-flight operations finish, every row is flushed)"
kill -TERM "$APP_PID"
app_rc=0
wait "$APP_PID" || app_rc=$?
APP_PID=""
[ "$app_rc" = 0 ] || { tail -n 30 "$WORK/app.log" >&2; die "the app exited with status $app_rc"; }

verify_rc=0
"$APP_BIN" verify --redis-url "$TARGET_URL" --database-url "$DATABASE_URL" >"$WORK/verify.txt" 2>&1 || verify_rc=$?
"$APP_BIN" verify --redis-url "$TARGET_URL" --database-url "$DATABASE_URL" --json >"$WORK/verify.json" 2>/dev/null || true
[ "$verify_rc" = 0 ] || [ "$verify_rc" = 1 ] || { cat "$WORK/verify.txt" >&2; die "verify could not run (exit $verify_rc)"; }

# ---------------------------------------------------------------------------------------------
# Verdict
# ---------------------------------------------------------------------------------------------
outcomes="$(psql_db "SELECT coalesce(sum((outcome = 0)::int), 0) || ' ' || coalesce(sum((outcome = 1)::int), 0) || ' ' || coalesce(sum((outcome = 2)::int), 0) FROM events")"
read -r ACKED FAILED UNKNOWN <<<"$outcomes"
LOST="$(json_get "$WORK/verify.json" 'd["lost_acknowledged_increments"]')"
PHANTOMS="$(json_get "$WORK/verify.json" 'd["phantom_increments"]')"
BUDGET="$(json_get "$WORK/verify.json" 'd["unknown_budget"]')"
LANDED="$(json_get "$WORK/verify.json" 'd["unknown_applied"]')"
MISSING="$(json_get "$WORK/verify.json" 'd["missing_keys"]')"
SW='d["migration"]["switches"][-1]'
CUTOVER="$(json_get "$WORK/report.json" "(lambda c: 'complete after %.3f s (%d connections)' % (c['seconds'], c['connections']) if c['complete'] else 'not complete: %d of %d connections' % (c['connections_on_target'], c['connections']))($SW['cutover'])")"
ERRWIN="$(json_get "$WORK/report.json" "(lambda w: '%.3f s' % w['seconds'] if w else 'none')($SW['error_window'])")"
FAILOPS="$(json_get "$WORK/report.json" "$SW['failed_operations']")"
BYKIND="$(json_get "$WORK/report.json" "json.dumps($SW['failures_by_kind'], sort_keys=True)")"
UNAVAIL="$(json_get "$WORK/report.json" "'%.1f' % $SW['longest_unavailability_ms']")"
HIT="$(json_get "$WORK/report.json" "(lambda c, p, s: 'natural: before %s, min after switch %s, back within 2 points after %s; steered: before %s, min %s' % (p(c['natural']['before']), p(c['natural']['min_after_switch']), s(c['natural']['recovered_within_2_points_after_seconds']), p(c['steered']['before']), p(c['steered']['min_after_switch'])))($SW['cache_hit'], lambda x: 'n/a' if x is None else '%.1f%%' % (100 * x), lambda x: 'n/a' if x is None else '%.1f s' % x)")"

pass=0
case "$MODE" in
    replicated)
        EXPECTED="verify exit 0: no acknowledged increment lost, no phantom"
        [ "$verify_rc" = 0 ] && pass=1
        ;;
    lossy)
        EXPECTED="verify exit 1: loss found (the target never had the source's counters)"
        [ "$verify_rc" = 1 ] && [ "$LOST" -gt 0 ] && [ "$PHANTOMS" = 0 ] && pass=1
        ;;
    failover)
        # Asynchronous replication acknowledges a write before the replica has it: what the
        # source acked in its last moments may be gone. Bound: acked events of the last
        # LAG_WINDOW_SECONDS before the kill (the replica was LAG_BYTES behind just before).
        WINDOW_ACKED="$(psql_db "SELECT count(*) FROM events WHERE outcome = 0 AND ts BETWEEN to_timestamp($KILL_TS - $WINDOW_SECONDS) AND to_timestamp($KILL_TS)")"
        EXPECTED="verify exit 0, or exit 1 with loss <= $WINDOW_ACKED (acked in the last ${WINDOW_SECONDS}s before the kill) and no phantom"
        if [ "$verify_rc" = 0 ]; then
            pass=1
        elif [ "$PHANTOMS" = 0 ] && [ "$LOST" -le "$WINDOW_ACKED" ]; then
            pass=1
        fi
        ;;
esac

echo
echo "==================== analytics-demo report (fetched before the app stopped) ===================="
cat "$WORK/report.txt"
echo
echo "==================== analytics-demo verify --redis-url $TARGET_URL ===================="
cat "$WORK/verify.txt"
echo
echo "==================== migrate-demo $MODE: summary ===================="
printf '  %-26s %s\n' \
    "scenario" "$(case "$MODE" in replicated) echo "replicate, switch, promote";; lossy) echo "switch to an empty target";; failover) echo "replicate, kill -9 source, promote replica, switch";; esac)" \
    "load" "$EVENTS_PER_SECOND events/s, $QUERIES_PER_SECOND queries/s, ${MIGRATE_SECONDS}s before/after" \
    "source -> target" "$SOURCE_URL -> $TARGET_URL" \
    "events (postgres)" "acked $ACKED, failed $FAILED, unknown $UNKNOWN" \
    "cutover" "$CUTOVER" \
    "error window" "$ERRWIN" \
    "failed operations" "$FAILOPS $BYKIND" \
    "longest unavailability" "$UNAVAIL ms" \
    "cache hit" "$HIT" \
    "verify exit" "$verify_rc" \
    "lost acked increments" "$LOST (missing keys $MISSING)" \
    "phantom increments" "$PHANTOMS" \
    "unknown budget" "$BUDGET ($LANDED landed)"
if [ "$MODE" = failover ]; then
    printf '  %-26s %s\n' "replica lag before kill" "$LAG_BYTES bytes" \
        "acked in last ${WINDOW_SECONDS}s" "$WINDOW_ACKED (what async replication could lose)"
fi
printf '  %-26s %s\n' "expected" "$EXPECTED" "files" "$WORK/"
if [ "$pass" = 1 ]; then
    case "$MODE" in
        lossy) echo "  RESULT                     PASS (expected: loss found)" ;;
        failover)
            if [ "$verify_rc" = 0 ]; then
                echo "  RESULT                     PASS (no acknowledged increment lost across the failover)"
            else
                echo "  RESULT                     PASS (expected: loss within the async-replication window, $LOST <= $WINDOW_ACKED)"
            fi ;;
        *) echo "  RESULT                     PASS (expected: clean)" ;;
    esac
    exit 0
fi
echo "  RESULT                     FAIL (unexpected verdict)"
exit 1

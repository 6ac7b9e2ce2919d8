#!/usr/bin/env bash
# make run (its start-app step): the release binary in the background with the Makefile's
# settings, stdout and stderr in APP_LOG (the previous one kept as APP_LOG.1), its pid in
# APP_PID. Returns once GET /health answers, or fails within HEALTH_TIMEOUT seconds with the
# last lines of the log (stopping nothing: `make stop` does).
#
#   bash .ci/start-app.sh [VAR=value ...] [-- APP_ARGS ...]
#
# VAR=value: the app's settings (the Makefile's APP_ENV); it also gets REDIS_URL and
# DATABASE_URL from LOCAL_DIR/env (.ci/services.sh). From the environment: APP_BIN, APP_LOG,
# APP_PID, LOCAL_DIR, HEALTH_TIMEOUT, BIND_ADDRESS with its HTTP_PORT and BIND_HOST ("" for
# every address), APP_URL, EVENTS_PER_SECOND, QUERIES_PER_SECOND, APP_ENV_SHOWN (the settings
# as the log shows them: no secret), RUN_GOAL (the make goal a "port in use" error suggests
# running again).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=.ci/lib.sh
. "$ROOT/.ci/lib.sh"

app_env=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    app_env+=("$1")
    shift
done
[ $# -gt 0 ] && shift
app_args=("$@")

if ! REUSEADDR=1 port_free "$HTTP_PORT" "$BIND_HOST"; then
    echo "error: port $HTTP_PORT is already in use by another process:"
    (ss -ltnp "sport = :$HTTP_PORT" 2>/dev/null || true) | sed 's/^/    /'
    echo "Pick another one, e.g.: make $RUN_GOAL APP_PORT=$((HTTP_PORT + 100))"
    exit 1
fi
mkdir -p "$LOCAL_DIR"
if [ -f "$APP_LOG" ]; then mv -f "$APP_LOG" "$APP_LOG.1"; fi
set -a
# shellcheck source=/dev/null
. "$LOCAL_DIR/env"
set +a
echo "# $(date -u +%FT%TZ) starting $APP_BIN${app_args[*]:+ ${app_args[*]}} with $APP_ENV_SHOWN REDIS_URL=$REDIS_URL DATABASE_URL=$DATABASE_URL" >"$APP_LOG"
ulimit -l unlimited 2>/dev/null || true
env "${app_env[@]}" nohup setsid "$APP_BIN" "${app_args[@]}" >>"$APP_LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$APP_PID"
echo "analytics-demo started (pid $pid): $EVENTS_PER_SECOND events/s, $QUERIES_PER_SECOND queries/s, http $BIND_ADDRESS"
echo "waiting for $APP_URL/health (up to ${HEALTH_TIMEOUT}s)..."
ok=""
for _ in $(seq 1 $((HEALTH_TIMEOUT * 2))); do
    if curl -fsS -o /dev/null --max-time 2 "$APP_URL/health" 2>/dev/null; then ok=1; break; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.5
done
if [ "$ok" != 1 ]; then
    if kill -0 "$pid" 2>/dev/null; then
        echo "error: the app (pid $pid) did not become healthy within ${HEALTH_TIMEOUT}s; it is still running (make stop to end it)"
    else
        rc=0
        wait "$pid" || rc=$?
        echo "error: the app exited during startup (exit status $rc)"
        rm -f "$APP_PID"
    fi
    echo "---- last lines of $APP_LOG ----"
    tail -n 40 "$APP_LOG"
    exit 1
fi
echo ""
echo "analytics-demo is running and healthy."
echo "  Health:   $APP_URL/health    (make health)"
echo "  Metrics:  $APP_URL/metrics   (make metrics)"
echo "  Logs:     $APP_LOG           (make logs)"
echo "  Redis:    $REDIS_URL"
echo "  Postgres: $DATABASE_URL"
echo "  Stop:     make stop            (app, then Redis and Postgres)"

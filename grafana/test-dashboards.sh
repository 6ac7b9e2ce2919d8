#!/usr/bin/env bash
# End-to-end check of the observability pieces (make test-dashboards):
#
#   1. docker/check.sh: prometheus.yml (promtool), compose file (docker-compose config), seccomp
#      profile, Dockerfile basics.
#   2. Throwaway Redis + PostgreSQL (.ci/services.sh in a temp dir), the release binary under
#      load on a free port, and our own Prometheus (Debian's `prometheus` package; its systemd
#      service is never used) scraping it every second into a temp TSDB on a free port.
#   3. Every PromQL expression of every panel of grafana/dashboards/*.json is evaluated through
#      /api/v1/query (with $instance/$shard = `.*` and again = the real values, $__rate_interval =
#      30s): an error, or no finite value, fails. Template variables must have values;
#      annotation queries must evaluate (empty is fine: no switch happened).
#   4. curl /metrics | promtool check metrics (problems other than missing HELP text fail; set
#      STRICT_METRICS_LINT=1 to fail on those too).
#   5. With chromium installed: a screenshot of the built-in dashboard (SCREENSHOT, default
#      /tmp/analytics-dashboard.png) and a browser test (DOM dumped twice: live, changing numbers).
#
# Everything started here is stopped and deleted at the end. Variables: NO_BUILD=1 (use the
# existing release binary), CARGO_TARGET_DIR, EVENTS_PER_SECOND/QUERIES_PER_SECOND (200/800),
# SCRAPES (scrapes to wait for, 15), SKIP_BROWSER=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EPS="${EVENTS_PER_SECOND:-200}"
QPS="${QUERIES_PER_SECOND:-800}"
SCRAPES="${SCRAPES:-15}"
SCREENSHOT="${SCREENSHOT:-/tmp/analytics-dashboard.png}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release/analytics-demo"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'test-dashboards: FAIL: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d /tmp/analytics-test-dashboards.XXXXXX)"
chmod 0755 "$WORK"   # the postgres account must reach the data dir below
APP_PID="" PROM_PID=""
SVC=(env ANALYTICS_LOCAL_DIR="$WORK/services" bash "$ROOT/.ci/services.sh")

cleanup() {
    local rc=$?
    set +e
    if [ -n "$PROM_PID" ] && kill -0 "$PROM_PID" 2>/dev/null; then
        kill -TERM "$PROM_PID"; wait "$PROM_PID" 2>/dev/null
    fi
    if [ -n "$APP_PID" ] && kill -0 "$APP_PID" 2>/dev/null; then
        kill -TERM "$APP_PID"
        for _ in $(seq 1 300); do kill -0 "$APP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$APP_PID" 2>/dev/null; wait "$APP_PID" 2>/dev/null
    fi
    if [ -d "$WORK/services" ]; then "${SVC[@]}" stop >/dev/null 2>&1; fi
    if [ $rc -ne 0 ]; then
        for f in app.log prometheus.log; do
            [ -f "$WORK/$f" ] && { echo "---- last lines of $f ----"; tail -n 30 "$WORK/$f"; }
        done
    fi
    rm -rf "$WORK"
    if [ $rc -eq 0 ]; then echo "test-dashboards: OK"; else echo "test-dashboards: FAILED ($rc)"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------------------------
say "tools"
need=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing ${need[*]} (install them, or run as root)"
    echo "installing ${need[*]} with apt-get (the prometheus package's own service is not used)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
prometheus --version 2>&1 | head -n 1

say "static checks (docker/check.sh)"
bash "$ROOT/docker/check.sh"

# ---------------------------------------------------------------------------------------------
say "services and app"
"${SVC[@]}" install >/dev/null
"${SVC[@]}" start
# shellcheck source=/dev/null
source <("${SVC[@]}" env)
if [ -z "${NO_BUILD:-}" ]; then cargo build --release; fi
[ -x "$BIN" ] || die "$BIN not found (build it, or set CARGO_TARGET_DIR)"
APP_PORT="$(free_port)"
APP="127.0.0.1:$APP_PORT"
ulimit -l unlimited 2>/dev/null || true
BIND_ADDRESS="$APP" EVENTS_PER_SECOND="$EPS" QUERIES_PER_SECOND="$QPS" LOG_FORMAT=text \
    "$BIN" --no-pin >"$WORK/app.log" 2>&1 </dev/null &
APP_PID=$!
for _ in $(seq 1 120); do
    curl -fsS -o /dev/null --max-time 2 "http://$APP/health" 2>/dev/null && break
    kill -0 "$APP_PID" 2>/dev/null || die "the app exited during startup"
    sleep 0.5
done
curl -fsS -o /dev/null "http://$APP/health" || die "the app did not become healthy"
echo "app pid $APP_PID on $APP: $EPS events/s, $QPS queries/s (not pinned: shared test hosts)"
rate=0
for _ in $(seq 1 60); do
    rate="$(curl -fsS "http://$APP/api/status" 2>/dev/null \
        | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["rates"]["events_per_second"]))' \
        2>/dev/null || echo 0)"
    [ "$rate" -gt 0 ] && break
    sleep 0.5
done
[ "$rate" -gt 0 ] || die "the app is healthy but produces no load (events/s = 0)"
echo "load is running: $rate events/s"

# ---------------------------------------------------------------------------------------------
say "prometheus"
PROM_PORT="$(free_port)"
PROM="http://127.0.0.1:$PROM_PORT"
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: analytics-demo
    static_configs:
      - targets: ["$APP"]
EOF
promtool check config "$WORK/prometheus.yml" >/dev/null
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
echo "prometheus pid $PROM_PID on $PROM, scraping $APP every 1s"
scrapes=0
for _ in $(seq 1 $((SCRAPES * 4 + 60))); do
    kill -0 "$PROM_PID" 2>/dev/null || die "prometheus exited"
    scrapes="$(curl -fsS "$PROM/api/v1/query" --data-urlencode \
        'query=sum(count_over_time(up{job="analytics-demo"}[10m]))' 2>/dev/null \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)' \
        2>/dev/null || echo 0)"
    [ "$scrapes" -ge "$SCRAPES" ] && break
    sleep 1
done
[ "$scrapes" -ge "$SCRAPES" ] || die "only $scrapes scrapes after waiting"
echo "$scrapes scrapes done"

# ---------------------------------------------------------------------------------------------
say "dashboard expressions"
python3 "$ROOT/grafana/eval-dashboards.py" --prometheus "$PROM" --instance "$APP" \
    "$ROOT"/grafana/dashboards/*.json

# ---------------------------------------------------------------------------------------------
say "promtool check metrics"
curl -fsS "http://$APP/metrics" >"$WORK/metrics.txt"
lint_rc=0
promtool check metrics <"$WORK/metrics.txt" >"$WORK/lint.txt" 2>&1 || lint_rc=$?
if [ ! -s "$WORK/lint.txt" ]; then
    echo "promtool check metrics: no problems (exit $lint_rc)"
else
    other="$(grep -v ' no help text$' "$WORK/lint.txt" || true)"
    nohelp="$(grep -c ' no help text$' "$WORK/lint.txt" || true)"
    if [ -n "$other" ]; then
        cat "$WORK/lint.txt"
        die "promtool check metrics reported problems"
    fi
    echo "promtool check metrics: $nohelp metric families without HELP text (src/metrics.rs"
    echo "should describe them, e.g. metrics::describe_counter!); no other problem:"
    sed 's/^/    /' "$WORK/lint.txt"
    [ -z "${STRICT_METRICS_LINT:-}" ] || die "STRICT_METRICS_LINT=1 and HELP text is missing"
fi

# ---------------------------------------------------------------------------------------------
say "built-in dashboard in a browser"
if [ -n "${SKIP_BROWSER:-}" ]; then
    echo "skipped (SKIP_BROWSER set)"
elif ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    echo "skipped: chromium is not installed (apt-get install -y chromium to enable this check)"
else
    SCREENSHOT="$SCREENSHOT" bash "$ROOT/grafana/browser-test.sh" "http://$APP/"
fi

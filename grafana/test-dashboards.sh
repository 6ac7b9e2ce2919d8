#!/usr/bin/env bash
# End-to-end check of the observability pieces (make test-dashboards):
#
#   1. docker/check.sh: prometheus.yml (promtool), compose file (docker-compose config), seccomp
#      profile, Dockerfile basics.
#   2. Throwaway Redis + PostgreSQL (.ci/services.sh in a temp dir), the release binary under
#      load on a free port; a throwaway Redis Cluster (3 primaries, no replicas, free ports, temp
#      dirs) and a second instance of the app on it (--redis-mode cluster, same PostgreSQL); our
#      own Prometheus (Debian's `prometheus` package; its systemd service is never used) scraping
#      both every second into a temp TSDB on a free port. While the cluster instance runs, the
#      slot of its busiest organization is moved to another primary by hand (CLUSTER SETSLOT
#      IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE), so it follows real MOVED (and ASK)
#      redirections; the step fails unless /metrics counts a MOVED.
#   3. Every PromQL expression of every panel of grafana/dashboards/*.json is evaluated through
#      /api/v1/query (with $instance/$shard = `.*` and again = the real values, $__rate_interval =
#      30s): an error, or no finite value, fails. The real $instance is the standalone app's,
#      except in the "Redis Cluster" row: the cluster app's. Template variables must have values;
#      annotation queries must evaluate (empty is fine: no switch happened).
#   4. curl /metrics | promtool check metrics (problems other than missing HELP text fail; set
#      STRICT_METRICS_LINT=1 to fail on those too).
#   5. With chromium installed: a screenshot of the built-in dashboard (SCREENSHOT, default
#      /tmp/analytics-dashboard.png) and a browser test (DOM dumped twice: live, changing numbers;
#      the Redis Cluster card hidden), then the same on the cluster app (SCREENSHOT_CLUSTER,
#      default /tmp/analytics-dashboard-cluster.png; the card shown with its 3 primaries up).
#
# Everything started here is stopped and deleted at the end. Variables: NO_BUILD=1 (use the
# existing release binary), CARGO_TARGET_DIR, EVENTS_PER_SECOND/QUERIES_PER_SECOND (200/800),
# CLUSTER_EVENTS_PER_SECOND/CLUSTER_QUERIES_PER_SECOND (the cluster app, 100/200), SCRAPES
# (scrapes of each app to wait for, 15), SKIP_BROWSER=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EPS="${EVENTS_PER_SECOND:-200}"
QPS="${QUERIES_PER_SECOND:-800}"
CLUSTER_EPS="${CLUSTER_EVENTS_PER_SECOND:-100}"
CLUSTER_QPS="${CLUSTER_QUERIES_PER_SECOND:-200}"
SCRAPES="${SCRAPES:-15}"
SCREENSHOT="${SCREENSHOT:-/tmp/analytics-dashboard.png}"
SCREENSHOT_CLUSTER="${SCREENSHOT_CLUSTER:-/tmp/analytics-dashboard-cluster.png}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release/analytics-demo"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'test-dashboards: FAIL: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d /tmp/analytics-test-dashboards.XXXXXX)"
chmod 0755 "$WORK"   # the postgres account must reach the data dir below
APP_PID="" CAPP_PID="" PROM_PID=""
CLUSTER_PIDS=() CLUSTER_PORTS=()
SVC=(env ANALYTICS_LOCAL_DIR="$WORK/services" bash "$ROOT/.ci/services.sh")

cleanup() {
    local rc=$?
    set +e
    if [ -n "$PROM_PID" ] && kill -0 "$PROM_PID" 2>/dev/null; then
        kill -TERM "$PROM_PID"; wait "$PROM_PID" 2>/dev/null
    fi
    local pid
    for pid in "$CAPP_PID" "$APP_PID"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
        fi
    done
    for pid in "${CLUSTER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    if [ -d "$WORK/services" ]; then "${SVC[@]}" stop >/dev/null 2>&1; fi
    if [ $rc -ne 0 ]; then
        for f in app.log app-cluster.log prometheus.log; do
            [ -f "$WORK/$f" ] && { echo "---- last lines of $f ----"; tail -n 30 "$WORK/$f"; }
        done
    fi
    rm -rf "$WORK"
    if [ $rc -eq 0 ]; then echo "test-dashboards: OK"; else echo "test-dashboards: FAILED ($rc)"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=.ci/lib.sh
. "$ROOT/.ci/lib.sh"

# wait_running ADDR PID: until GET /health answers 200 (60 s), then until events flow (30 s).
wait_running() {
    local addr="$1" pid="$2" rate=0
    for _ in $(seq 1 120); do
        curl -fsS -o /dev/null --max-time 2 "http://$addr/health" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || die "the app on $addr exited during startup"
        sleep 0.5
    done
    curl -fsS -o /dev/null "http://$addr/health" || die "the app on $addr did not become healthy"
    for _ in $(seq 1 60); do
        rate="$(curl -fsS "http://$addr/api/status" 2>/dev/null \
            | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["rates"]["events_per_second"]))' \
            2>/dev/null || echo 0)"
        [ "$rate" -gt 0 ] && break
        sleep 0.5
    done
    [ "$rate" -gt 0 ] || die "the app on $addr is healthy but produces no load (events/s = 0)"
    echo "load is running on $addr: $rate events/s"
}

# metric_sum ADDR NAME [LABEL_MATCH]: sum of the app's samples of NAME whose labels contain
# LABEL_MATCH (e.g. kind="moved").
metric_sum() {
    curl -fsS --max-time 5 "http://$1/metrics" 2>/dev/null \
        | awk -v name="$2" -v want="${3:-}" '
            index($0, name "{") == 1 || index($0, name " ") == 1 {
                if (want == "" || index($0, want) > 0) s += $NF
            }
            END { printf "%d\n", s }' || true
}

# rcli PORT ARGS...: redis-cli on a cluster node (no redirections followed).
rcli() { local port="$1"; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }

# owner_of SLOT: "<node id> <port>" of the primary serving SLOT (CLUSTER NODES of the first node).
owner_of() {
    rcli "${CLUSTER_PORTS[0]}" CLUSTER NODES | python3 -c '
import sys
slot = int(sys.argv[1])
for line in sys.stdin:
    f = line.split()
    if len(f) < 8 or "master" not in f[2].split(","):
        continue
    for r in f[8:]:
        if r.startswith("["):
            continue  # a slot being imported or migrated
        a, _, b = r.partition("-")
        if int(a) <= slot <= int(b or a):
            print(f[0], f[1].split("@")[0].rsplit(":", 1)[1])
' "$1"
}

# move_slot SLOT: moves SLOT and its keys to another primary, as redis-cli --cluster reshard
# does for each slot: IMPORTING on the target, MIGRATING on the source, MIGRATE the keys,
# then SETSLOT NODE on every node (target and source first).
move_slot() {
    local slot="$1" src_id src dst dst_id p keys n=0
    read -r src_id src <<<"$(owner_of "$slot")"
    [ -n "$src" ] || die "no primary serves slot $slot"
    for p in "${CLUSTER_PORTS[@]}"; do [ "$p" != "$src" ] && { dst="$p"; break; }; done
    dst_id="$(rcli "$dst" CLUSTER MYID)"
    [ "$(rcli "$dst" CLUSTER SETSLOT "$slot" IMPORTING "$src_id")" = OK ] || die "SETSLOT IMPORTING"
    [ "$(rcli "$src" CLUSTER SETSLOT "$slot" MIGRATING "$dst_id")" = OK ] || die "SETSLOT MIGRATING"
    while :; do
        mapfile -t keys < <(rcli "$src" CLUSTER GETKEYSINSLOT "$slot" 100)
        [ ${#keys[@]} -gt 0 ] && [ -n "${keys[0]}" ] || break
        n=$((n + ${#keys[@]}))
        [ $n -le 100000 ] || die "slot $slot: keys keep coming"
        rcli "$src" MIGRATE 127.0.0.1 "$dst" "" 0 5000 KEYS "${keys[@]}" >/dev/null
    done
    for p in "$dst" "$src" "${CLUSTER_PORTS[@]}"; do
        [ "$(rcli "$p" CLUSTER SETSLOT "$slot" NODE "$dst_id")" = OK ] || die "SETSLOT NODE on $p"
    done
    echo "slot $slot moved from 127.0.0.1:$src to 127.0.0.1:$dst ($n keys migrated)"
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
# Free ports, never the usual 6379/5432 (services.sh takes remembered ports when they are free).
mkdir -p "$WORK/services"
printf 'REDIS_PORT=%s\nPG_PORT=%s\n' "$(free_port)" "$(free_port)" >"$WORK/services/env"
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
echo "app pid $APP_PID on $APP: $EPS events/s, $QPS queries/s (not pinned: shared test hosts)"
wait_running "$APP" "$APP_PID"

# ---------------------------------------------------------------------------------------------
say "redis cluster and a second app in cluster mode"
for _ in 1 2 3; do
    port="$(free_port)"
    mkdir -p "$WORK/cluster/$port"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-port "$(free_port)" \
        --cluster-node-timeout 5000 --dir "$WORK/cluster/$port" --save "" --appendonly no \
        --daemonize no --logfile "$WORK/cluster/$port/redis.log" </dev/null &
    CLUSTER_PIDS+=($!)
    CLUSTER_PORTS+=("$port")
done
for port in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 1 100); do [ "$(rcli "$port" PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
    [ "$(rcli "$port" PING 2>/dev/null)" = PONG ] || die "cluster node on port $port does not answer"
done
redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
    >"$WORK/cluster-create.log" 2>&1 || { cat "$WORK/cluster-create.log"; die "redis-cli --cluster create"; }
for port in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 1 300); do
        [[ "$(rcli "$port" CLUSTER INFO)" == *cluster_state:ok* ]] && break
        sleep 0.1
    done
    [[ "$(rcli "$port" CLUSTER INFO)" == *cluster_state:ok* ]] || die "node $port: cluster_state is not ok"
done
SEEDS="$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")"
SEEDS="${SEEDS%,}"
echo "cluster of 3 primaries on ports ${CLUSTER_PORTS[*]} (pids ${CLUSTER_PIDS[*]}): cluster_state:ok"
CAPP="127.0.0.1:$(free_port)"
# 20 organizations: organization 1 (the busiest, zipf) is written every few milliseconds.
BIND_ADDRESS="$CAPP" EVENTS_PER_SECOND="$CLUSTER_EPS" QUERIES_PER_SECOND="$CLUSTER_QPS" \
    ORGANIZATIONS=20 LOG_FORMAT=text REDIS_URL="$SEEDS" \
    "$BIN" --no-pin --redis-mode cluster >"$WORK/app-cluster.log" 2>&1 </dev/null &
CAPP_PID=$!
echo "cluster app pid $CAPP_PID on $CAPP: $CLUSTER_EPS events/s, $CLUSTER_QPS queries/s"
wait_running "$CAPP" "$CAPP_PID"

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
      - targets: ["$APP", "$CAPP"]
EOF
promtool check config "$WORK/prometheus.yml" >/dev/null
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
echo "prometheus pid $PROM_PID on $PROM, scraping $APP and $CAPP every 1s"
# scrapes: the fewest scrapes of one of the two apps (0 until both have some).
scrapes() {
    curl -fsS "$PROM/api/v1/query" --data-urlencode \
        'query=count_over_time(up{job="analytics-demo"}[10m])' 2>/dev/null \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; v=[int(float(s["value"][1])) for s in r]; print(min(v) if len(v) == 2 else 0)' \
        2>/dev/null || echo 0
}
scrapes=0
for _ in $(seq 1 60); do
    scrapes="$(scrapes)"
    [ "$scrapes" -ge 3 ] && break
    sleep 0.5
done
[ "$scrapes" -ge 3 ] || die "prometheus does not scrape both apps ($scrapes scrapes)"

# A slot move under the cluster app's load: MOVED once the slot has its new owner.
move_slot "$(rcli "${CLUSTER_PORTS[0]}" CLUSTER KEYSLOT '{1}')"
moved=0
for _ in $(seq 1 60); do
    moved="$(metric_sum "$CAPP" analytics_redis_redirects_total 'kind="moved"')"
    [ "$moved" -gt 0 ] && break
    sleep 0.5
done
[ "$moved" -gt 0 ] || die "the cluster app counted no MOVED after the slot move"
echo "cluster app followed redirections: moved $moved, ask $(metric_sum "$CAPP" \
    analytics_redis_redirects_total 'kind="ask"')"

for _ in $(seq 1 $((SCRAPES * 4 + 60))); do
    kill -0 "$PROM_PID" 2>/dev/null || die "prometheus exited"
    scrapes="$(scrapes)"
    [ "$scrapes" -ge "$SCRAPES" ] && break
    sleep 1
done
[ "$scrapes" -ge "$SCRAPES" ] || die "only $scrapes scrapes after waiting"
# The MOVED counted must be in Prometheus, so the redirections panel has more than zeros.
in_prom="$(curl -fsS "$PROM/api/v1/query" --data-urlencode \
    'query=sum(analytics_redis_redirects_total{kind="moved"})' 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)' \
    2>/dev/null || echo 0)"
[ "$in_prom" -gt 0 ] || die "prometheus has no MOVED redirection of the cluster app"
echo "$scrapes scrapes of each app done; MOVED in prometheus: $in_prom"

# ---------------------------------------------------------------------------------------------
say "dashboard expressions"
python3 "$ROOT/grafana/eval-dashboards.py" --prometheus "$PROM" --instance "$APP" \
    --row-instance "Redis Cluster=$CAPP" "$ROOT"/grafana/dashboards/*.json

# ---------------------------------------------------------------------------------------------
say "promtool check metrics"
# Each app's /metrics (the cluster one also has the cluster families).
for addr in "$APP" "$CAPP"; do
    curl -fsS "http://$addr/metrics" >"$WORK/metrics.txt"
    lint_rc=0
    promtool check metrics <"$WORK/metrics.txt" >"$WORK/lint.txt" 2>&1 || lint_rc=$?
    if [ ! -s "$WORK/lint.txt" ]; then
        echo "promtool check metrics $addr: no problems (exit $lint_rc)"
        continue
    fi
    other="$(grep -v ' no help text$' "$WORK/lint.txt" || true)"
    nohelp="$(grep -c ' no help text$' "$WORK/lint.txt" || true)"
    if [ -n "$other" ]; then
        cat "$WORK/lint.txt"
        die "promtool check metrics reported problems on $addr"
    fi
    echo "promtool check metrics $addr: $nohelp metric families without HELP text (src/metrics.rs"
    echo "should describe them, e.g. metrics::describe_counter!); no other problem:"
    sed 's/^/    /' "$WORK/lint.txt"
    [ -z "${STRICT_METRICS_LINT:-}" ] || die "STRICT_METRICS_LINT=1 and HELP text is missing"
done

# ---------------------------------------------------------------------------------------------
say "built-in dashboard in a browser"
if [ -n "${SKIP_BROWSER:-}" ]; then
    echo "skipped (SKIP_BROWSER set)"
elif ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    echo "skipped: chromium is not installed (apt-get install -y chromium to enable this check)"
else
    SCREENSHOT="$SCREENSHOT" EXPECT_CLUSTER_NODES=0 bash "$ROOT/grafana/browser-test.sh" "http://$APP/"
    SCREENSHOT="$SCREENSHOT_CLUSTER" EXPECT_CLUSTER_NODES=3 WINDOW_SIZE=1400,1500 \
        bash "$ROOT/grafana/browser-test.sh" "http://$CAPP/"
fi

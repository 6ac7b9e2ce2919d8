#!/usr/bin/env bash
# Rehearse Redis Cluster topology changes under load with analytics-demo and check the verdict.
#
#   bash .ci/migrate-demo-cluster.sh reshard    a third of the slots moved to one primary while
#                                              the ultra preset runs, then rebalanced back:
#                                              expect 0 failed events and verify CLEAN
#   bash .ci/migrate-demo-cluster.sh failover   run 1: CLUSTER FAILOVER on a replica (graceful:
#                                              expect 0 failed events, verify CLEAN); run 2:
#                                              kill -9 of a primary (asynchronous replication:
#                                              loss bounded by what it acknowledged just before)
#   bash .ci/migrate-demo-cluster.sh to-cluster a standalone source under load copied into the
#                                              cluster (redis-cli --cluster import --cluster-copy),
#                                              then `switch --wait` to the cluster: the increments
#                                              made on the source after their key was copied are
#                                              lost, and verify must find exactly that many
#
# What it starts (and stops again on exit, whatever happens): 3 primaries + 3 replicas
# (`redis-server --cluster-enabled yes`, `redis-cli --cluster create --cluster-replicas 1`) on
# ports from CLUSTER_PORT_BASE (7300..7305, bus ports +10000; a busy one is replaced by a free
# one), data and logs in .local/migrate/cluster-<mode>/; a PostgreSQL of its own
# (.ci/services.sh start-postgres with ANALYTICS_LOCAL_DIR=.local/migrate/cluster-pg, port
# CLUSTER_PG_PORT=7391 or a free one), in a database of the mode's name, dropped and created
# on every run so `verify` only sees this run's events; the release binary on APP_PORT (7390).
#
# Settings (environment): EVENTS_PER_SECOND / QUERIES_PER_SECOND (reshard: 2000 / 8000, the
# ultra preset; failover: 300 / 700), PHASE_SECONDS (10: load before and after each change),
# RESHARD_SLOTS (5461: a third of the slots), CLUSTER_NODE_TIMEOUT_MS (2000: how long a killed
# primary goes unnoticed before its replica is promoted), LAG_WINDOW_SECONDS (1: what
# asynchronous replication may lose on a kill, see the verdict), APP_BIN
# (target/release/analytics-demo; NO_BUILD=1 skips cargo build).
#
# Exit status: 0 when the verdict is the expected one, 1 otherwise, 2 on setup errors.
set -euo pipefail

MODE="${1:-}"
case "$MODE" in
    reshard) DEFAULT_EPS=2000 DEFAULT_QPS=8000 ;;
    failover | to-cluster) DEFAULT_EPS=300 DEFAULT_QPS=700 ;;
    *) echo "usage: $0 reshard|failover|to-cluster" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EVENTS_PER_SECOND="${EVENTS_PER_SECOND:-$DEFAULT_EPS}"
QUERIES_PER_SECOND="${QUERIES_PER_SECOND:-$DEFAULT_QPS}"
PHASE_SECONDS="${PHASE_SECONDS:-10}"
RESHARD_SLOTS="${RESHARD_SLOTS:-5461}"
NODE_TIMEOUT_MS="${CLUSTER_NODE_TIMEOUT_MS:-2000}"
LAG_WINDOW_SECONDS="${LAG_WINDOW_SECONDS:-1}"
PORT_BASE="${CLUSTER_PORT_BASE:-7300}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
APP_BIN="${APP_BIN:-$TARGET_DIR/release/analytics-demo}"
DB_NAME="analytics_cluster_${MODE/-/_}"
WORK="$ROOT/.local/migrate/cluster-$MODE"
PG_LOCAL="$ROOT/.local/migrate/cluster-pg"

# shellcheck source=.ci/lib.sh
. "$ROOT/.ci/lib.sh"

say() { printf '[migrate-demo-cluster %s] %s\n' "$MODE" "$*" >&2; }
die() { printf '[migrate-demo-cluster %s] ERROR: %s\n' "$MODE" "$*" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# Clean-up: everything started here is stopped on any exit.
# ---------------------------------------------------------------------------------------------
NODE_PIDS=() APP_PID="" STOP_PG="" SOURCE_PID=""
stop_app() { [ -z "$APP_PID" ] || stop_pids "$APP_PID"; }
cleanup() {
    local rc=$? pid
    set +e
    stop_app
    for pid in "${NODE_PIDS[@]}" $SOURCE_PID; do
        kill -KILL "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    if [ -n "$STOP_PG" ]; then
        ANALYTICS_LOCAL_DIR="$PG_LOCAL" bash .ci/services.sh stop-postgres >/dev/null 2>&1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
pick_port() { # PREFERRED: it when free on 127.0.0.1, else a free one
    python3 - "$1" <<'PY'
import random, socket, sys
def free(p):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server and postgres bind
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
want = int(sys.argv[1])
if not free(want):
    want = next(p for p in (random.randint(20000, 29999) for _ in range(500)) if free(p))
print(want)
PY
}

rcli() { redis-cli -h 127.0.0.1 -p "$@"; }

cluster_info_ok() { rcli "$1" cluster info 2>/dev/null | tr -d '\r' | grep -q '^cluster_state:ok'; }

# Node id / role / primary's port of node PORT (its own CLUSTER NODES line).
my_line() { rcli "$1" cluster nodes | tr -d '\r' | awk '/myself/'; }
node_id() { rcli "$1" cluster myid | tr -d '\r'; }
is_primary() { [ "$(rcli "$1" role 2>/dev/null | head -n 1)" = master ]; }
replica_of() { # PORT of a primary -> port of its replica
    local p
    for p in "${PORTS[@]}"; do
        if [ "$(rcli "$p" role 2>/dev/null | sed -n 3p)" = "$1" ] && [ "$(rcli "$p" role | head -n 1)" = slave ]; then
            echo "$p"; return 0
        fi
    done
    die "no replica of $1"
}
owner_of_slot() { # SLOT -> port of the primary serving it
    local p
    for p in "${PORTS[@]}"; do
        [ -n "${DEAD:-}" ] && [ "$p" = "$DEAD" ] && continue
        if my_line "$p" | awk -v s="$1" '{for (i = 9; i <= NF; i++) { n = split($i, r, "-"); if (n == 1) r[2] = r[1]; if (r[1] ~ /^[0-9]+$/ && s >= r[1] && s <= r[2]) f = 1 }} END { exit !f }'; then
            echo "$p"; return 0
        fi
    done
    die "no primary serves slot $1"
}
replicas_synced() {
    local p info
    for p in "${PORTS[@]}"; do
        [ -n "${DEAD:-}" ] && [ "$p" = "$DEAD" ] && continue
        info="$(rcli "$p" info replication | tr -d '\r')"
        grep -q '^role:master' <<<"$info" && continue
        grep -q '^master_link_status:up' <<<"$info" && grep -q '^master_sync_in_progress:0' <<<"$info" || return 1
    done
}
roles_agreed() { # every node sees each node's role and primary as that node does, linked
    local p own view
    own="$(for p in "${PORTS[@]}"; do rcli "$p" cluster nodes | tr -d '\r' \
        | awk '$3 ~ /myself/ { print $1, ($3 ~ /slave/ ? "slave" : "master"), $4 }'; done | sort)"
    for p in "${PORTS[@]}"; do
        view="$(rcli "$p" cluster nodes | tr -d '\r' \
            | awk '$3 ~ /myself/ || $8 == "connected" { print $1, ($3 ~ /slave/ ? "slave" : "master"), $4 }' | sort)"
        [ "$view" = "$own" ] || return 1
    done
}
wait_for() { # SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s
    local secs="$1" what="$2" i
    shift 2
    for i in $(seq 1 $(( secs * 5 ))); do
        "$@" && return 0
        sleep 0.2
    done
    die "$what: not within ${secs}s"
}
all_ok() { local p; for p in "${PORTS[@]}"; do [ "$p" = "${DEAD:-}" ] || cluster_info_ok "$p" || return 1; done; }

metrics_to() { curl -fsS --max-time 10 "$APP_URL/metrics" >"$1" 2>/dev/null || : >"$1"; }
metric_in() { # FILE NAME LABEL-FILTER: sum over matching samples
    awk -v n="$2" -v f="${3:-}" '(index($0, n "{") == 1 || index($0, n " ") == 1) && index($1, f) { s += $NF } END { printf "%d\n", s }' "$1"
}
# p99 (ms) of histogram NAME{result="ok"} between two /metrics snapshots, interpolated linearly
# within its bucket as Prometheus' histogram_quantile does.
p99_between() { # FROM-FILE TO-FILE NAME
    python3 - "$@" <<'PY'
import re, sys
def buckets(path, name):
    out = {}
    for line in open(path):
        m = re.match(re.escape(name) + r'_bucket\{(.*)\} (\S+)$', line.strip())
        if m and 'result="ok"' in m.group(1):
            le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
            out[le] = out.get(le, 0.0) + float(m.group(2))
    return out
a, b = buckets(sys.argv[1], sys.argv[3]), buckets(sys.argv[2], sys.argv[3])
rows = sorted(((float(le), b[le] - a.get(le, 0.0)) for le in b), key=lambda r: r[0])
total = rows[-1][1] if rows else 0
if total <= 0:
    print("n/a")
else:
    rank, lo, below = 0.99 * total, 0.0, 0.0
    for le, n in rows:
        if n >= rank:
            break
        lo, below = le, n
    if le == float("inf"):
        print("> %g ms (%d ok)" % (lo * 1000, total))
    else:
        p = lo + (le - lo) * (rank - below) / max(n - below, 1e-9)
        print("%.1f ms (%d ok)" % (p * 1000, total))
PY
}

psql_db() { psql -X -At -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "$1"; }
json_get() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# Organizations (1..ORGANIZATIONS) whose keys ({org} hash tag) live on the slots node PORT
# serves now, as a SQL list.
orgs_on() {
    local ranges
    ranges="$(my_line "$1" | cut -d' ' -f9- | tr ' ' '\n' | grep -E '^[0-9]+(-[0-9]+)?$' | tr '\n' ' ')"
    python3 - "$ORGS" "$ranges" <<'PY'
import sys
def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc
ranges = [tuple(int(x) for x in (r.split("-") * 2)[:2]) for r in sys.argv[2].split()]
orgs = [o for o in range(1, int(sys.argv[1]) + 1)
        if any(a <= crc16(str(o).encode()) % 16384 <= b for a, b in ranges)]
print(",".join(map(str, orgs)) or "0")
PY
}

# ---------------------------------------------------------------------------------------------
# Set-up: the cluster, PostgreSQL, the binary
# ---------------------------------------------------------------------------------------------
command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
    || die "redis-server/redis-cli missing: bash .ci/services.sh install"
command -v python3 >/dev/null || die "python3 is needed (ports, JSON, slots)"
command -v curl >/dev/null || die "curl is needed"
command -v psql >/dev/null || die "psql is needed: bash .ci/services.sh install"
if [ -z "${NO_BUILD:-}" ]; then
    say "cargo build --release"
    cargo build --release --quiet
fi
[ -x "$APP_BIN" ] || die "$APP_BIN not found (build it, or set APP_BIN)"
ORGS="${ORGANIZATIONS:-500}"

rm -rf "$WORK"
mkdir -p "$WORK" "$PG_LOCAL"
PORTS=()
for i in 0 1 2 3 4 5; do
    port="$(pick_port $(( PORT_BASE + i )))"
    bus="$(pick_port $(( port + 10000 )))"
    dir="$WORK/node-$port"
    mkdir -p "$dir"
    redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --dir "$dir" \
        --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout "$NODE_TIMEOUT_MS" --repl-diskless-sync-delay 0 \
        --save '' --appendonly no --daemonize no --logfile "$dir/redis.log" </dev/null >/dev/null 2>&1 &
    NODE_PIDS+=($!)
    PORTS+=("$port")
done
for p in "${PORTS[@]}"; do
    wait_for 30 "redis on port $p answering PING" bash -c "[ \"\$(redis-cli -p $p ping 2>/dev/null)\" = PONG ]"
done
addrs=()
for p in "${PORTS[@]}"; do addrs+=("127.0.0.1:$p"); done
redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$WORK/create.log" 2>&1 \
    || { cat "$WORK/create.log" >&2; die "redis-cli --cluster create failed"; }
wait_for 60 "cluster_state:ok on every node" all_ok
wait_for 60 "replicas in sync" replicas_synced
# A primary ignores a manual failover request from a node it does not know yet as its replica.
wait_for 60 "every node agreeing who replicates whom" roles_agreed
SEEDS="$(printf 'redis://127.0.0.1:%s,' "${PORTS[@]}")"
SEEDS="${SEEDS%,}"
say "cluster: 3 primaries + 3 replicas on ${PORTS[*]} (node timeout ${NODE_TIMEOUT_MS} ms)"

if ! ANALYTICS_LOCAL_DIR="$PG_LOCAL" bash .ci/services.sh status 2>/dev/null | grep -q '^postgres: *running'; then
    STOP_PG=1
fi
pg_out="$(ANALYTICS_LOCAL_DIR="$PG_LOCAL" SERVICES_PG_PORT="$(pick_port "${CLUSTER_PG_PORT:-7391}")" \
    bash .ci/services.sh start-postgres 2>"$WORK/postgres-start.log")" \
    || { cat "$WORK/postgres-start.log" >&2; die "bash .ci/services.sh start-postgres failed"; }
BASE_DATABASE_URL="$(sed -n 's/^DATABASE_URL=//p' <<<"$pg_out" | tail -n 1)"
[ -n "$BASE_DATABASE_URL" ] || die "start-postgres gave no DATABASE_URL"
DATABASE_URL="${BASE_DATABASE_URL%/*}/$DB_NAME"
psql -X -q -v ON_ERROR_STOP=1 "${BASE_DATABASE_URL%/*}/postgres" \
    -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" -c "CREATE DATABASE $DB_NAME" >/dev/null \
    || die "could not create database $DB_NAME"

APP_PORT="$(pick_port "${APP_PORT:-7390}")"
APP_URL="http://127.0.0.1:$APP_PORT"
say "postgres database $DB_NAME, app $APP_URL"
say "load: $EVENTS_PER_SECOND events/s, $QUERIES_PER_SECOND queries/s; ${PHASE_SECONDS}s before and after each change"

RUN=0
start_app() { # the app in cluster mode on every seed; returns once events are counted
    RUN=$(( RUN + 1 ))
    (
        ulimit -l unlimited 2>/dev/null || true
        exec env EVENTS_PER_SECOND="$EVENTS_PER_SECOND" QUERIES_PER_SECOND="$QUERIES_PER_SECOND" \
            REDIS_URL="$SEEDS" REDIS_MODE=cluster DATABASE_URL="$DATABASE_URL" \
            BIND_ADDRESS="127.0.0.1:$APP_PORT" \
            "$APP_BIN" --log-format text </dev/null >"$WORK/app-$RUN.log" 2>&1
    ) &
    APP_PID=$!
    local n=0
    for _ in $(seq 1 600); do
        kill -0 "$APP_PID" 2>/dev/null || { tail -n 30 "$WORK/app-$RUN.log" >&2; die "the app exited at start-up"; }
        metrics_to "$WORK/metrics-start.txt"
        n="$(metric_in "$WORK/metrics-start.txt" analytics_events_total)"
        [ "${n:-0}" -gt 0 ] && break
        sleep 0.1
    done
    [ "${n:-0}" -gt 0 ] || { tail -n 30 "$WORK/app-$RUN.log" >&2; die "the load did not start within 60 s"; }
    say "run $RUN: load running"
}

# Stops the app (its status in APP_RC), after saving /report and `report` of the run.
finish_app() {
    "$APP_BIN" report --admin-url "$APP_URL" >"$WORK/report-$RUN.txt" 2>&1 || true
    "$APP_BIN" report --admin-url "$APP_URL" --json >"$WORK/report-$RUN.json" 2>/dev/null || echo '{}' >"$WORK/report-$RUN.json"
    say "run $RUN: stopping the app (SIGTERM: in-flight operations finish, every row is flushed)"
    kill -TERM "$APP_PID"
    APP_RC=0
    wait "$APP_PID" || APP_RC=$?
    APP_PID=""
    [ "$APP_RC" = 0 ] || { say "the app exited with status $APP_RC"; tail -n 30 "$WORK/app-$RUN.log" >&2; }
}

# `verify` of the cluster after run RUN: VERIFY_RC, LOST, PHANTOMS, verify-RUN.{txt,json}.
verify_cluster() {
    VERIFY_RC=0
    "$APP_BIN" verify --redis-url "$SEEDS" --redis-mode cluster --database-url "$DATABASE_URL" \
        >"$WORK/verify-$RUN.txt" 2>&1 || VERIFY_RC=$?
    "$APP_BIN" verify --redis-url "$SEEDS" --redis-mode cluster --database-url "$DATABASE_URL" --json \
        >"$WORK/verify-$RUN.json" 2>/dev/null || true
    [ "$VERIFY_RC" = 0 ] || [ "$VERIFY_RC" = 1 ] || { cat "$WORK/verify-$RUN.txt" >&2; die "verify could not run (exit $VERIFY_RC)"; }
    LOST="$(json_get "$WORK/verify-$RUN.json" 'd["lost_acknowledged_increments"]')"
    PHANTOMS="$(json_get "$WORK/verify-$RUN.json" 'd["phantom_increments"]')"
}

# Event outcomes of run RUN's rows (the runs table orders them): "acked failed unknown".
run_outcomes() {
    psql_db "SELECT coalesce(sum((outcome = 0)::int), 0) || ' ' || coalesce(sum((outcome = 1)::int), 0) || ' ' || coalesce(sum((outcome = 2)::int), 0) FROM events WHERE run_id = (SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1)"
}

redirects_in() { # FILE -> "moved M ask A tryagain T readonly R"
    local k out=""
    for k in moved ask tryagain clusterdown readonly; do
        out+="$k $(metric_in "$1" analytics_redis_redirects_total "kind=\"$k\"") "
    done
    echo "${out% }"
}

print_files() { # the report and verify of each run
    local r
    for r in $(seq 1 "$RUN"); do
        echo
        echo "==================== run $r: analytics-demo report (fetched before the app stopped) ===================="
        cat "$WORK/report-$r.txt"
        echo
        echo "==================== run $r: analytics-demo verify --redis-mode cluster ===================="
        cat "$WORK/verify-$r.txt"
    done
}

# Counter values (`a:{org}:ev:*`, the keys verify judges) of the Redis servers at the given
# ports, as JSON {key: value} on stdout: SCAN on each, GET pipelined (a cluster's primaries
# each hold their own keys).
counters_of() {
    python3 - "$@" <<'PY'
import json, socket, sys
def conn(port):
    s = socket.create_connection(("127.0.0.1", int(port)))
    return s, s.makefile("rb")
def send(s, *args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out)
def read(f):
    line = f.readline().rstrip(b"\r\n")
    t, rest = line[:1], line[1:]
    if t in (b"+", b":"):
        return rest
    if t == b"-":
        raise RuntimeError(rest.decode())
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data
    if t == b"*":
        return [read(f) for _ in range(int(rest))]
    raise RuntimeError("unexpected reply %r" % line)
values = {}
for port in sys.argv[1:]:
    s, f = conn(port)
    cursor, keys = b"0", []
    while True:
        send(s, "SCAN", cursor, "MATCH", "a:*:ev:*", "COUNT", 1000)
        cursor, batch = read(f)
        keys += batch
        if cursor == b"0":
            break
    for k in keys:
        send(s, "GET", k)
    for k in keys:
        v = read(f)
        if v is not None:
            values[k.decode()] = int(v)
print(json.dumps(values))
PY
}
primaries() { local p; for p in "${PORTS[@]}"; do is_primary "$p" && echo "$p"; done; }

pass=0
case "$MODE" in
    # -----------------------------------------------------------------------------------------
    reshard)
        start_app
        metrics_to "$WORK/metrics-0.txt"
        sleep "$PHASE_SECONDS"
        metrics_to "$WORK/metrics-1.txt"
        # The primary serving slot 0 receives RESHARD_SLOTS slots from the two others (the lowest
        # of each: every org's keys are hashed by their {org} tag, so some of those slots hold
        # the load's counters and cache entries).
        TO_PORT="$(owner_of_slot 0)"
        TO_ID="$(node_id "$TO_PORT")"
        FROM_IDS=""
        for p in "${PORTS[@]}"; do
            if [ "$p" != "$TO_PORT" ] && is_primary "$p"; then FROM_IDS+="$(node_id "$p"),"; fi
        done
        WRITTEN_ORGS="$(psql_db "SELECT count(DISTINCT org_id) FROM events")"
        TO_ORGS_BEFORE="$(orgs_on "$TO_PORT")"
        t0=$SECONDS
        say "reshard: $RESHARD_SLOTS slots to 127.0.0.1:$TO_PORT from the two other primaries"
        redis-cli --cluster reshard "127.0.0.1:$TO_PORT" --cluster-from "${FROM_IDS%,}" \
            --cluster-to "$TO_ID" --cluster-slots "$RESHARD_SLOTS" --cluster-yes >"$WORK/reshard.log" 2>&1 \
            || { tail -n 20 "$WORK/reshard.log" >&2; die "redis-cli --cluster reshard failed"; }
        RESHARD_S=$(( SECONDS - t0 ))
        SLOTS_AFTER="$(my_line "$TO_PORT" | cut -d' ' -f9- | tr ' ' '\n' | awk -F- '/^[0-9]/ { s += ($2 == "" ? 1 : $2 - $1 + 1) } END { print s }')"
        ORGS_MOVED="$(psql_db "SELECT count(DISTINCT org_id) FROM events WHERE org_id IN ($(orgs_on "$TO_PORT")) AND org_id NOT IN ($TO_ORGS_BEFORE)")"
        metrics_to "$WORK/metrics-2.txt"
        t0=$SECONDS
        say "rebalance back (redis-cli --cluster rebalance)"
        wait_for 30 "cluster_state:ok after the reshard" all_ok
        redis-cli --cluster rebalance "127.0.0.1:$TO_PORT" >"$WORK/rebalance.log" 2>&1 \
            || { tail -n 20 "$WORK/rebalance.log" >&2; die "redis-cli --cluster rebalance failed"; }
        REBALANCE_S=$(( SECONDS - t0 ))
        metrics_to "$WORK/metrics-3.txt"
        sleep "$PHASE_SECONDS"
        metrics_to "$WORK/metrics-4.txt"
        finish_app
        verify_cluster
        read -r ACKED FAILED UNKNOWN <<<"$(run_outcomes)"
        REDIRECTS="$(redirects_in "$WORK/metrics-4.txt")"
        MOVED_N="$(metric_in "$WORK/metrics-4.txt" analytics_redis_redirects_total 'kind="moved"')"
        ASK_N="$(metric_in "$WORK/metrics-4.txt" analytics_redis_redirects_total 'kind="ask"')"
        LOOPS="$(metric_in "$WORK/metrics-4.txt" analytics_redis_errors_total 'kind="redirect_loop"')"
        P99_BEFORE="$(p99_between "$WORK/metrics-0.txt" "$WORK/metrics-1.txt" analytics_query_duration_seconds)"
        P99_RESHARD="$(p99_between "$WORK/metrics-1.txt" "$WORK/metrics-2.txt" analytics_query_duration_seconds)"
        P99_REBALANCE="$(p99_between "$WORK/metrics-2.txt" "$WORK/metrics-3.txt" analytics_query_duration_seconds)"
        P99_AFTER="$(p99_between "$WORK/metrics-3.txt" "$WORK/metrics-4.txt" analytics_query_duration_seconds)"
        EV99_BEFORE="$(p99_between "$WORK/metrics-0.txt" "$WORK/metrics-1.txt" analytics_event_duration_seconds)"
        EV99_RESHARD="$(p99_between "$WORK/metrics-1.txt" "$WORK/metrics-2.txt" analytics_event_duration_seconds)"
        EXPECTED="app exit 0, no failed or unknown event, MOVED followed, verify exit 0 (no acknowledged increment lost)"
        [ "$APP_RC" = 0 ] && [ "$FAILED" = 0 ] && [ "$UNKNOWN" = 0 ] && [ "$MOVED_N" -gt 0 ] \
            && [ "$VERIFY_RC" = 0 ] && pass=1
        print_files
        echo
        echo "==================== migrate-demo-cluster reshard: summary ===================="
        printf '  %-26s %s\n' \
            "scenario" "3 primaries + 3 replicas; reshard $RESHARD_SLOTS slots to one primary, rebalance back" \
            "load" "$EVENTS_PER_SECOND events/s, $QUERIES_PER_SECOND queries/s, ${PHASE_SECONDS}s before/after" \
            "reshard" "${RESHARD_S}s; 127.0.0.1:$TO_PORT then served $SLOTS_AFTER slots; the moved ones hold $ORGS_MOVED of the $WRITTEN_ORGS organizations written" \
            "rebalance" "${REBALANCE_S}s" \
            "events (postgres)" "acked $ACKED, failed $FAILED, unknown $UNKNOWN" \
            "redirects followed" "$REDIRECTS" \
            "queries redirect_loop" "$LOOPS" \
            "query p99 from schedule" "before $P99_BEFORE; reshard $P99_RESHARD; rebalance $P99_REBALANCE; after $P99_AFTER" \
            "" "(successful queries, /metrics histogram between phases, interpolated in its bucket)" \
            "event p99 from schedule" "before $EV99_BEFORE; reshard $EV99_RESHARD" \
            "app exit" "$APP_RC" \
            "verify exit" "$VERIFY_RC" \
            "lost acked increments" "$LOST" \
            "phantom increments" "$PHANTOMS" \
            "expected" "$EXPECTED" \
            "files" "$WORK/"
        ;;
    # -----------------------------------------------------------------------------------------
    failover)
        # Run 1: the replica of the primary serving organization 1 (the busiest tenant) takes
        # over gracefully (CLUSTER FAILOVER: the primary pauses writes until the replica has
        # caught up, so nothing acknowledged is lost).
        HOT_SLOT="$(rcli "${PORTS[0]}" cluster keyslot '{1}')"
        OLD_PORT="$(owner_of_slot "$HOT_SLOT")"
        NEW_PORT="$(replica_of "$OLD_PORT")"
        start_app
        sleep "$PHASE_SECONDS"
        FO_TS="$(date +%s.%N)"
        rcli "$NEW_PORT" cluster failover >/dev/null
        wait_for 30 "promotion of 127.0.0.1:$NEW_PORT (CLUSTER FAILOVER)" is_primary "$NEW_PORT"
        FO_S="$(python3 -c "import time; print('%.2f' % (time.time() - $FO_TS))")"
        say "graceful failover: 127.0.0.1:$NEW_PORT took over from 127.0.0.1:$OLD_PORT (${FO_S}s)"
        sleep "$PHASE_SECONDS"
        metrics_to "$WORK/metrics-1.txt"
        FO_ORGS="$(orgs_on "$NEW_PORT")"
        # The longest gap between acknowledged events of the slots that changed hands around the
        # failover: how long writing them stood still (the schedule has several per second).
        FO_GAP="$(psql_db "SELECT coalesce(round(max(gap)::numeric * 1000), 0) FROM (SELECT extract(epoch FROM ts - lag(ts) OVER (ORDER BY ts)) AS gap FROM events WHERE outcome = 0 AND org_id IN ($FO_ORGS) AND ts BETWEEN to_timestamp($FO_TS - 2) AND to_timestamp($FO_TS + 5)) g")"
        finish_app
        FO_APP_RC=$APP_RC
        read -r FO_ACKED FO_FAILED FO_UNKNOWN <<<"$(run_outcomes)"
        verify_cluster
        FO_VERIFY_RC=$VERIFY_RC FO_LOST=$LOST FO_PHANTOMS=$PHANTOMS
        FO_REDIRECTS="$(redirects_in "$WORK/metrics-1.txt")"
        wait_for 30 "the demoted primary in sync as a replica" replicas_synced

        # Run 2: kill -9 of that same slot range's primary (now 127.0.0.1:$NEW_PORT): its replica
        # (the old primary) is promoted after CLUSTER_NODE_TIMEOUT_MS. Replication is
        # asynchronous: what the dead primary acknowledged in its last moments may be gone.
        start_app
        sleep "$PHASE_SECONDS"
        KILL_ORGS="$(orgs_on "$NEW_PORT")"
        KILL_PID="${NODE_PIDS[$(printf '%s\n' "${PORTS[@]}" | grep -nx "$NEW_PORT" | cut -d: -f1) - 1]}"
        repl="$(rcli "$NEW_PORT" info replication | tr -d '\r')"
        master_off="$(sed -n 's/^master_repl_offset://p' <<<"$repl")"
        replica_off="$(sed -n 's/^slave0:.*offset=\([0-9]*\).*/\1/p' <<<"$repl")"
        LAG_BYTES=$(( ${master_off:-0} - ${replica_off:-0} ))
        KILL_TS="$(date +%s.%N)"
        { kill -KILL "$KILL_PID"; wait "$KILL_PID"; } 2>/dev/null || true
        DEAD="$NEW_PORT"
        say "primary 127.0.0.1:$NEW_PORT KILLED (kill -9); its replica was $LAG_BYTES bytes behind just before"
        wait_for 60 "promotion of 127.0.0.1:$OLD_PORT after the kill" is_primary "$OLD_PORT"
        PROMOTED_S="$(python3 -c "import time; print('%.2f' % (time.time() - $KILL_TS))")"
        say "127.0.0.1:$OLD_PORT promoted ${PROMOTED_S}s after the kill"
        sleep "$PHASE_SECONDS"
        metrics_to "$WORK/metrics-2.txt"
        finish_app
        read -r ACKED FAILED UNKNOWN <<<"$(run_outcomes)"
        verify_cluster
        REDIRECTS="$(redirects_in "$WORK/metrics-2.txt")"
        ERRORS="$(json_get "$WORK/report-2.json" 'json.dumps(d.get("run", {}).get("errors", {}), sort_keys=True)')"
        OUTAGES="$(json_get "$WORK/report-2.json" "'; '.join('%s %.1f s%s' % (o['node'], o['duration_ms'] / 1000, ' (open)' if o['open'] else '') for o in ((d.get('redis_cluster') or {}).get('node_outages') or [])) or 'none'")"
        # What asynchronous replication may lose: acknowledged events of the dead primary's
        # slots in the last LAG_WINDOW_SECONDS before the kill (its replica was LAG_BYTES behind).
        WINDOW_ACKED="$(psql_db "SELECT count(*) FROM events WHERE outcome = 0 AND org_id IN ($KILL_ORGS) AND ts BETWEEN to_timestamp($KILL_TS - $LAG_WINDOW_SECONDS) AND to_timestamp($KILL_TS)")"
        # Unavailability of those slots: last acknowledged write before the kill to the first
        # after it; the failure window: first to last failed or unknown event (any slot).
        UNAVAIL="$(psql_db "SELECT coalesce(round(extract(epoch FROM (SELECT min(ts) FROM events WHERE outcome = 0 AND org_id IN ($KILL_ORGS) AND ts > to_timestamp($KILL_TS)) - (SELECT max(ts) FROM events WHERE outcome = 0 AND org_id IN ($KILL_ORGS) AND ts <= to_timestamp($KILL_TS)))::numeric, 2)::text, 'never')")"
        FAILWIN="$(psql_db "SELECT coalesce(round(extract(epoch FROM max(ts) - min(ts))::numeric, 2)::text || ' s, from ' || round((extract(epoch FROM min(ts)) - $KILL_TS)::numeric, 2) || ' s after the kill', 'none') FROM events WHERE outcome > 0 AND ts > to_timestamp($KILL_TS - 1)")"
        # Failed or unknown events of run 2 on the dead primary's slots and on the others (the
        # whole cluster answers CLUSTERDOWN while a slot has no primary: cluster-require-full-coverage).
        SPLIT="$(psql_db "SELECT coalesce(sum((org_id IN ($KILL_ORGS))::int), 0) || ' on its slots, ' || coalesce(sum((org_id NOT IN ($KILL_ORGS))::int), 0) || ' on the others' FROM events WHERE outcome > 0 AND run_id = (SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1)")"
        RESUMED="$(psql_db "SELECT count(*) FROM events WHERE outcome = 0 AND org_id IN ($KILL_ORGS) AND ts > to_timestamp($KILL_TS + $PROMOTED_S)")"
        EXPECTED="run 1: no failed or unknown event, verify exit 0; run 2: app exit 0, the dead primary's slots written again after the promotion, verify exit 0 or exit 1 with loss <= $WINDOW_ACKED (acked on its slots in the last ${LAG_WINDOW_SECONDS}s before the kill) and no phantom"
        if [ "$FO_APP_RC" = 0 ] && [ "$FO_FAILED" = 0 ] && [ "$FO_UNKNOWN" = 0 ] && [ "$FO_VERIFY_RC" = 0 ] \
            && [ "$APP_RC" = 0 ] && [ "$RESUMED" -gt 0 ] \
            && { [ "$VERIFY_RC" = 0 ] || { [ "$PHANTOMS" = 0 ] && [ "$LOST" -le "$WINDOW_ACKED" ]; }; }; then
            pass=1
        fi
        print_files
        echo
        echo "==================== migrate-demo-cluster failover: summary ===================="
        printf '  %-26s %s\n' \
            "scenario" "3 primaries + 3 replicas; run 1: CLUSTER FAILOVER; run 2: kill -9 of a primary" \
            "load" "$EVENTS_PER_SECOND events/s, $QUERIES_PER_SECOND queries/s, ${PHASE_SECONDS}s before/after" \
            "run 1 failover" "127.0.0.1:$OLD_PORT -> 127.0.0.1:$NEW_PORT in ${FO_S}s; longest write gap on its slots ${FO_GAP} ms" \
            "run 1 events (postgres)" "acked $FO_ACKED, failed $FO_FAILED, unknown $FO_UNKNOWN" \
            "run 1 redirects followed" "$FO_REDIRECTS" \
            "run 1 verify" "exit $FO_VERIFY_RC, lost $FO_LOST, phantom $FO_PHANTOMS" \
            "run 2 kill -9" "127.0.0.1:$NEW_PORT; replica 127.0.0.1:$OLD_PORT promoted after ${PROMOTED_S}s (node timeout ${NODE_TIMEOUT_MS} ms); replica lag $LAG_BYTES bytes" \
            "run 2 events (postgres)" "acked $ACKED, failed $FAILED, unknown $UNKNOWN ($SPLIT)" \
            "run 2 errors" "$ERRORS" \
            "unavailability" "dead primary's slots: no write acknowledged for $UNAVAIL s; failure window $FAILWIN" \
            "node outages (/report)" "$OUTAGES" \
            "run 2 redirects followed" "$REDIRECTS" \
            "written after promotion" "$RESUMED acked events on the dead primary's slots" \
            "run 2 app exit" "$APP_RC" \
            "run 2 verify" "exit $VERIFY_RC, lost $LOST, phantom $PHANTOMS" \
            "acked in last ${LAG_WINDOW_SECONDS}s" "$WINDOW_ACKED on the dead primary's slots (what async replication could lose)" \
            "expected" "$EXPECTED" \
            "files" "$WORK/"
        ;;
    # -----------------------------------------------------------------------------------------
    to-cluster)
        SOURCE_PORT="$(pick_port $(( PORT_BASE + 20 )))"
        mkdir -p "$WORK/source"
        redis_start "$WORK/source" "$SOURCE_PORT"
        SOURCE_PID=$!
        redis_wait "$SOURCE_PORT" 30 || die "the source on port $SOURCE_PORT does not answer PING"
        TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
        RUN=1
        (
            ulimit -l unlimited 2>/dev/null || true
            exec env EVENTS_PER_SECOND="$EVENTS_PER_SECOND" QUERIES_PER_SECOND="$QUERIES_PER_SECOND" \
                REDIS_URL="redis://127.0.0.1:$SOURCE_PORT" DATABASE_URL="$DATABASE_URL" \
                BIND_ADDRESS="127.0.0.1:$APP_PORT" ADMIN_TOKEN="$TOKEN" \
                "$APP_BIN" --log-format text </dev/null >"$WORK/app-1.log" 2>&1
        ) &
        APP_PID=$!
        acked_on_source() {
            metrics_to "$WORK/metrics-start.txt"
            [ "$(metric_in "$WORK/metrics-start.txt" analytics_events_total 'outcome="acked"')" -gt 0 ]
        }
        wait_for 60 "the load running on the source" acked_on_source
        say "load running on the standalone source 127.0.0.1:$SOURCE_PORT"
        sleep "$PHASE_SECONDS"
        metrics_to "$WORK/metrics-0.txt"
        IMPORT_TS="$(date +%s.%N)"
        say "redis-cli --cluster import --cluster-copy: the source's keys into the cluster, under load"
        redis-cli --cluster import "127.0.0.1:${PORTS[0]}" --cluster-from "127.0.0.1:$SOURCE_PORT" \
            --cluster-copy >"$WORK/import.log" 2>&1 \
            || { tail -n 20 "$WORK/import.log" >&2; die "redis-cli --cluster import failed"; }
        IMPORT_S="$(python3 -c "import time; print('%.2f' % (time.time() - $IMPORT_TS))")"
        IMPORTED="$(grep -c 'Migrating .*OK' "$WORK/import.log" || true)"
        # The cluster holds what was copied (nothing writes to it before the switch).
        counters_of $(primaries) >"$WORK/counters-copied.json"
        say "switch --wait 30 to the cluster"
        "$APP_BIN" switch --to "$SEEDS" --to-mode cluster --wait 30 --admin-url "$APP_URL" \
            --admin-token "$TOKEN" >"$WORK/switch.txt" 2>&1 \
            || { cat "$WORK/switch.txt" >&2; die "switch to the cluster failed"; }
        SWITCH_TS="$(date +%s.%N)"
        # Every connection is on the cluster; in-flight commands on the source drain within
        # the command timeout (1 s): after that the source no longer changes.
        sleep 2
        counters_of "$SOURCE_PORT" >"$WORK/counters-source.json"
        sleep "$PHASE_SECONDS"
        metrics_to "$WORK/metrics-1.txt"
        finish_app
        verify_cluster
        read -r ACKED FAILED UNKNOWN <<<"$(run_outcomes)"
        # Increments made on the source after their key was copied: its final value less the
        # copy (a key created after the copy counts in full).
        read -r EXPECTED_LOSS KEYS_BEHIND KEYS_SOURCE <<<"$(python3 - "$WORK/counters-source.json" "$WORK/counters-copied.json" <<'PY'
import json, sys
src, cp = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
behind = {k: v - cp.get(k, 0) for k, v in src.items() if v > cp.get(k, 0)}
print(sum(behind.values()), len(behind), len(src))
PY
)"
        KEYS_WITH_LOSS="$(json_get "$WORK/verify-1.json" 'd["keys_with_loss"]')"
        REDIRECTS="$(redirects_in "$WORK/metrics-1.txt")"
        CUTOVER="$(grep -o 'cutover complete after [0-9.]* s' "$WORK/switch.txt" | head -n 1)"
        P99_BEFORE="$(p99_between "$WORK/metrics-start.txt" "$WORK/metrics-0.txt" analytics_query_duration_seconds)"
        P99_AFTER="$(p99_between "$WORK/metrics-0.txt" "$WORK/metrics-1.txt" analytics_query_duration_seconds)"
        EXPECTED="app exit 0, no failed or unknown event, verify finds exactly the increments made on the source after their key was copied ($EXPECTED_LOSS), no phantom"
        if [ "$APP_RC" = 0 ] && [ "$FAILED" = 0 ] && [ "$UNKNOWN" = 0 ] && [ "$PHANTOMS" = 0 ] \
            && [ "$LOST" = "$EXPECTED_LOSS" ] \
            && { [ "$EXPECTED_LOSS" = 0 ] && [ "$VERIFY_RC" = 0 ] || [ "$VERIFY_RC" = 1 ]; }; then
            pass=1
        fi
        print_files
        echo
        echo "==================== migrate-demo-cluster to-cluster: summary ===================="
        printf '  %-26s %s\n' \
            "scenario" "standalone 127.0.0.1:$SOURCE_PORT under load -> redis-cli --cluster import --cluster-copy -> switch --wait to 3 primaries + 3 replicas" \
            "load" "$EVENTS_PER_SECOND events/s, $QUERIES_PER_SECOND queries/s, ${PHASE_SECONDS}s before the import and after the switch" \
            "import" "${IMPORT_S}s, $IMPORTED keys copied (MIGRATE COPY); the source kept taking writes meanwhile" \
            "switch" "${CUTOVER:-see $WORK/switch.txt}" \
            "events (postgres)" "acked $ACKED, failed $FAILED, unknown $UNKNOWN" \
            "redirects followed" "$REDIRECTS" \
            "query p99 from schedule" "before $P99_BEFORE; import, switch and after $P99_AFTER" \
            "written after the copy" "$EXPECTED_LOSS increments in $KEYS_BEHIND of the source's $KEYS_SOURCE counter keys (source at the switch minus the copy)" \
            "verify" "exit $VERIFY_RC, lost $LOST in $KEYS_WITH_LOSS keys, phantom $PHANTOMS" \
            "app exit" "$APP_RC" \
            "expected" "$EXPECTED" \
            "files" "$WORK/"
        ;;
esac

if [ "$pass" = 1 ]; then
    case "$MODE" in
        reshard) echo "  RESULT                     PASS (expected: clean across the reshard and the rebalance)" ;;
        failover)
            if [ "$VERIFY_RC" = 0 ]; then
                echo "  RESULT                     PASS (no acknowledged increment lost across either failover)"
            else
                echo "  RESULT                     PASS (graceful failover clean; kill -9 lost $LOST <= $WINDOW_ACKED, within the async-replication window)"
            fi ;;
        to-cluster)
            echo "  RESULT                     PASS (an import under live writes loses what the source took after each key's copy: $EXPECTED_LOSS increments; verify found exactly $LOST)" ;;
    esac
    exit 0
fi
echo "  RESULT                     FAIL (unexpected verdict)"
exit 1

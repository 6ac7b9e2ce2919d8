#!/usr/bin/env bash
# Project-local Redis + PostgreSQL for analytics-demo.
#
#   bash .ci/services.sh install   install redis-server/redis-tools/postgresql/postgresql-client if missing
#   bash .ci/services.sh start     start project-local instances (idempotent), wait until both answer
#   bash .ci/services.sh stop      stop what `start` started (pidfiles / our data dir only)
#   bash .ci/services.sh status    print state, ports and URLs
#   bash .ci/services.sh env       print `export REDIS_URL=... DATABASE_URL=...` lines
#   bash .ci/services.sh clean     stop, then delete the local data (.local/redis, .local/pg, .local/env)
#   bash .ci/services.sh start-postgres   only PostgreSQL (on SERVICES_PG_PORT as given, else as `start`);
#                                         prints DATABASE_URL=... on stdout
#   bash .ci/services.sh stop-postgres    only PostgreSQL (fast shutdown)
#
# ANALYTICS_LOCAL_DIR moves all of it elsewhere (bench/soak.sh keeps its own cluster there).
#
# Data lives under <repo>/.local/ (git-ignored). The host's own Redis/PostgreSQL services (for
# example the cluster the Debian package starts on 5432) are never used, stopped or reconfigured:
# if a preferred port (6379, 5432) is busy another free port is chosen and remembered in
# .local/env, which later starts reuse while that port stays free.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=.ci/lib.sh
. "$ROOT/.ci/lib.sh"
LOCAL="${ANALYTICS_LOCAL_DIR:-$ROOT/.local}"
ENV_FILE="$LOCAL/env"
REDIS_DIR="$LOCAL/redis"
REDIS_PID="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"
PG_ROOT="$LOCAL/pg"
PG_USER_OS="${PG_OS_USER:-postgres}"   # system account that runs postgres when we are root
PG_DB="analytics"
WAIT_SECONDS="${SERVICES_WAIT_SECONDS:-60}"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------------------------------------
# Binaries
# ---------------------------------------------------------------------------------------------

# psql / pg_isready: prefer the server's bin dir (same version), else PATH (Debian wrappers).
pg_client() {
    local name="$1" dir
    if dir="$(pg_bindir)" && [ -x "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
    command -v "$name" 2>/dev/null || return 1
}

missing_binaries() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-cli)
    pg_bindir >/dev/null 2>&1 || missing+=(postgres/initdb/pg_ctl)
    pg_client psql >/dev/null 2>&1 || missing+=(psql)
    pg_client pg_isready >/dev/null 2>&1 || missing+=(pg_isready)
    echo "${missing[*]:-}"
}

cmd_install() {
    local missing
    missing="$(missing_binaries)"
    if [ -z "$missing" ]; then
        log "redis-server, redis-cli, postgres ($(pg_bindir)), psql: all present"
        return 0
    fi
    log "missing: $missing"
    local sudo=()
    if ! is_root; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            die "not root and sudo is not available: install these packages yourself, then retry:
    apt-get install -y redis-server redis-tools postgresql postgresql-client"
        fi
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found: install Redis (redis-server, redis-cli) and PostgreSQL (server + psql) with your package manager"
    log "installing redis-server redis-tools postgresql postgresql-client (apt-get)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        redis-server redis-tools postgresql postgresql-client
    # The Debian packages may start host services (redis on 6379, cluster "main" on 5432).
    # They are left alone; `start` simply picks other ports when those are taken.
    missing="$(missing_binaries)"
    [ -z "$missing" ] || die "still missing after apt-get install: $missing"
    log "installed; postgres binaries in $(pg_bindir)"
}

# ---------------------------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------------------------

# Echo PREFERRED if free, else a free port (not AVOID).
pick_port() {
    local preferred="$1" avoid="${2:-}"
    if [ -n "$preferred" ] && [ "$preferred" != "$avoid" ] && port_free "$preferred"; then
        echo "$preferred"; return 0
    fi
    free_port "$avoid" || die "could not find a free TCP port"
}

env_get() { # KEY -> value from .local/env (empty if absent)
    [ -f "$ENV_FILE" ] || return 0
    sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1
}

write_env() { # REDIS_PORT PG_PORT
    mkdir -p "$LOCAL"
    local tmp="$ENV_FILE.tmp.$$"
    cat >"$tmp" <<EOF
# Written by .ci/services.sh: project-local services (plain KEY=value lines; source with set -a)
REDIS_PORT=$1
PG_PORT=$2
REDIS_URL=redis://127.0.0.1:$1
DATABASE_URL=postgres://postgres@127.0.0.1:$2/$PG_DB
EOF
    mv -f "$tmp" "$ENV_FILE"
}

# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------

redis_pid() { # pid of our redis-server if running
    [ -f "$REDIS_PID" ] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$REDIS_PID")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q redis || return 1
    echo "$pid"
}

redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = "PONG" ]; }

own_redis_start() {
    local port="$1" pid
    if pid="$(redis_pid)"; then
        log "redis already running (pid $pid, port $port)"
        return 0
    fi
    mkdir -p "$REDIS_DIR"
    rm -f "$REDIS_PID"
    redis_cmd "$REDIS_DIR" "$port" --protected-mode yes --daemonize yes --pidfile "$REDIS_PID"
    "${REDIS_CMD[@]}" \
        || { tail -n 20 "$REDIS_LOG" >&2 2>/dev/null || true; die "redis-server failed to start"; }
    if redis_wait "$port" "$WAIT_SECONDS"; then
        log "redis ready on 127.0.0.1:$port (pid $(redis_pid || echo '?'))"
        return 0
    fi
    tail -n 20 "$REDIS_LOG" >&2 2>/dev/null || true
    die "redis did not answer PING on port $port within ${WAIT_SECONDS}s (log: $REDIS_LOG)"
}

own_redis_stop() {
    local pid i
    if ! pid="$(redis_pid)"; then
        rm -f "$REDIS_PID"
        log "redis not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$REDIS_PID"
    log "redis stopped (pid $pid)"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------

# Where the cluster lives: .local/pg, or (when the postgres user cannot reach the repo, e.g. a
# checkout under /root) a directory under /var/tmp that .local/pg points to (symlink).
pg_home() { # -> real directory
    if [ -L "$PG_ROOT" ]; then readlink -f "$PG_ROOT"; else echo "$PG_ROOT"; fi
}
pg_data() { echo "$(pg_home)/data"; }

# Run a command as the cluster owner (postgres) when root; directly otherwise.
as_pg() {
    if is_root; then
        # cd /: the working directory may be unreadable for that account (all paths are absolute).
        if command -v runuser >/dev/null 2>&1; then
            (cd / && runuser -u "$PG_USER_OS" -- "$@")
        else
            local uid gid
            uid="$(id -u "$PG_USER_OS")"; gid="$(id -g "$PG_USER_OS")"
            (cd / && setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@")
        fi
    else
        "$@"
    fi
}

ensure_pg_user() {
    is_root || return 0
    id -u "$PG_USER_OS" >/dev/null 2>&1 && return 0
    log "creating system user '$PG_USER_OS' (PostgreSQL refuses to run as root)"
    useradd --system --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin "$PG_USER_OS" \
        || die "could not create user $PG_USER_OS"
}

# Make sure the postgres account can reach $PG_ROOT; otherwise relocate (symlink).
ensure_pg_home() {
    mkdir -p "$LOCAL"
    if [ -L "$PG_ROOT" ]; then
        mkdir -p "$(readlink -m "$PG_ROOT")"
    else
        mkdir -p "$PG_ROOT"
    fi
    is_root || return 0
    chown "$PG_USER_OS:" "$(pg_home)"
    chmod 0750 "$(pg_home)"
    if ! as_pg test -w "$(pg_home)" 2>/dev/null; then
        [ -L "$PG_ROOT" ] && die "user $PG_USER_OS cannot write $(pg_home)"
        local alt
        alt="/var/tmp/analytics-demo-pg-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
        log "user $PG_USER_OS cannot reach $PG_ROOT (a parent directory is private); using $alt (symlinked from $PG_ROOT)"
        [ -z "$(ls -A "$PG_ROOT" 2>/dev/null)" ] || die "$PG_ROOT is not empty but unreachable for $PG_USER_OS"
        rmdir "$PG_ROOT"
        mkdir -p "$alt"
        chown "$PG_USER_OS:" "$alt"
        chmod 0750 "$alt"
        ln -s "$alt" "$PG_ROOT"
    fi
}

# Unix socket directory inside .local/pg unless the socket path would be too long (108 bytes).
pg_socket_dir() {
    local d
    d="$(pg_home)/run"
    if [ $(( ${#d} + 20 )) -lt 100 ]; then echo "$d"; else echo ""; fi
}

pg_isready_port() {
    "$(pg_client pg_isready)" -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -t 2 >/dev/null 2>&1
}

pg_running() { # our cluster's postmaster is alive
    local data
    data="$(pg_data)"
    [ -f "$data/postmaster.pid" ] || return 1
    local pid
    pid="$(head -n 1 "$data/postmaster.pid" | tr -dc '0-9')"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

pg_running_port() { # port recorded in postmaster.pid (line 4)
    sed -n 4p "$(pg_data)/postmaster.pid" 2>/dev/null | tr -dc '0-9'
}

pg_init() {
    local bindir data
    bindir="$1"
    data="$(pg_data)"
    if [ -f "$data/PG_VERSION" ]; then return 0; fi
    log "initdb $data ($("$bindir/postgres" --version))"
    rm -rf "$data"
    as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        >"$(pg_home)/initdb.log" 2>&1 \
        || as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --no-locale \
            >"$(pg_home)/initdb.log" 2>&1 \
        || { tail -n 30 "$(pg_home)/initdb.log" >&2; die "initdb failed (log: $(pg_home)/initdb.log)"; }
    # Our settings live in an included file rewritten on every start (the port may change).
    printf "\ninclude_if_exists = 'analytics-demo.conf'\n" | as_pg tee -a "$data/postgresql.conf" >/dev/null
}

pg_write_conf() { # PORT
    local data sock
    data="$(pg_data)"
    sock="$(pg_socket_dir)"
    [ -n "$sock" ] && as_pg mkdir -p "$sock"
    as_pg tee "$data/analytics-demo.conf" >/dev/null <<EOF
# Written by .ci/services.sh on every start: project-local instance for analytics-demo.
port = $1
listen_addresses = '127.0.0.1'
unix_socket_directories = '${sock}'
max_connections = 200
shared_buffers = 256MB
synchronous_commit = off
logging_collector = off
EOF
}

pg_start() {
    local port="$1" bindir data i
    bindir="$(pg_bindir)" || die "PostgreSQL server binaries not found: run 'bash .ci/services.sh install'"
    ensure_pg_user
    ensure_pg_home
    data="$(pg_data)"
    if pg_running; then
        log "postgres already running (pid $(head -n 1 "$data/postmaster.pid"), port $(pg_running_port))"
    else
        pg_init "$bindir"
        pg_write_conf "$port"
        log "starting postgres on 127.0.0.1:$port"
        as_pg "$bindir/pg_ctl" -D "$data" -l "$(pg_home)/postgres.log" -w -t "$WAIT_SECONDS" start >/dev/null \
            || { tail -n 30 "$(pg_home)/postgres.log" >&2 2>/dev/null || true
                 die "postgres failed to start (log: $(pg_home)/postgres.log)"; }
    fi
    port="$(pg_running_port)"
    for ((i = 0; i < WAIT_SECONDS * 5; i++)); do
        pg_isready_port "$port" && break
        sleep 0.2
    done
    pg_isready_port "$port" || die "postgres not accepting connections on port $port (log: $(pg_home)/postgres.log)"
    local psql
    psql="$(pg_client psql)"
    if [ "$("$psql" -X -At -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            -c "select 1 from pg_database where datname = '$PG_DB'")" != "1" ]; then
        "$psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "create database $PG_DB" >/dev/null
        log "created database $PG_DB"
    fi
    log "postgres ready on 127.0.0.1:$port (database $PG_DB)"
}

pg_stop() {
    local bindir data
    data="$(pg_data)"
    if ! pg_running; then
        log "postgres not running"
        return 0
    fi
    bindir="$(pg_bindir)" || die "pg_ctl not found"
    as_pg "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null \
        || die "pg_ctl stop failed (log: $(pg_home)/postgres.log)"
    log "postgres stopped"
}

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

cmd_start() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        die "redis-server/redis-cli not found: run 'bash .ci/services.sh install'"
    fi
    pg_bindir >/dev/null || die "PostgreSQL not found: run 'bash .ci/services.sh install'"
    mkdir -p "$LOCAL"

    local redis_port pg_port want
    # Redis: keep the port of a running instance; else the remembered one if free; else 6379/free.
    if redis_pid >/dev/null; then
        redis_port="$(env_get REDIS_PORT)"
        redis_ping "${redis_port:-0}" || die "our redis (pid $(redis_pid)) does not answer on port '${redis_port}'; run 'bash .ci/services.sh stop' and retry"
    else
        want="$(env_get REDIS_PORT)"
        redis_port="$(pick_port "${want:-6379}")"
        [ -z "$want" ] || [ "$want" = "$redis_port" ] || log "remembered redis port $want is busy; using $redis_port"
    fi
    # Postgres: same policy (never the redis port).
    if [ -f "$(pg_data)/postmaster.pid" ] && pg_running; then
        pg_port="$(pg_running_port)"
    else
        want="$(env_get PG_PORT)"
        pg_port="$(pick_port "${want:-5432}" "$redis_port")"
        [ -z "$want" ] || [ "$want" = "$pg_port" ] || log "remembered postgres port $want is busy; using $pg_port"
    fi
    write_env "$redis_port" "$pg_port"

    own_redis_start "$redis_port"
    pg_start "$pg_port"
    log "environment: $ENV_FILE"
    sed -n 's/^\(REDIS_URL\|DATABASE_URL\)=/  &/p' "$ENV_FILE" >&2
}

cmd_stop() {
    own_redis_stop
    pg_stop
}

# Only PostgreSQL, for scripts that run their own Redis (bench/soak.sh restarts it mid-run).
cmd_start_postgres() {
    pg_bindir >/dev/null || die "PostgreSQL not found: run 'bash .ci/services.sh install'"
    mkdir -p "$LOCAL"
    local port want
    if [ -f "$(pg_data)/postmaster.pid" ] && pg_running; then
        port="$(pg_running_port)"
    elif [ -n "${SERVICES_PG_PORT:-}" ]; then
        # As given: a restart must come back on the same port (the bind check would refuse
        # it while the previous run's connections sit in TIME_WAIT; postgres itself binds).
        port="$SERVICES_PG_PORT"
    else
        want="$(env_get PG_PORT)"
        port="$(pick_port "${want:-5432}")"
        [ -z "$want" ] || [ "$want" = "$port" ] || log "postgres port $want is busy; using $port"
    fi
    pg_start "$port"
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:$(pg_running_port)/$PG_DB"
}

cmd_status() {
    local rc=0 pid port
    port="$(env_get REDIS_PORT)"
    if pid="$(redis_pid)"; then
        if redis_ping "$port"; then
            echo "redis:    running  pid $pid  port $port  ($REDIS_DIR)"
        else
            echo "redis:    running  pid $pid  port $port  but NOT answering PING"; rc=1
        fi
    else
        echo "redis:    stopped  ($REDIS_DIR)"; rc=1
    fi
    if pg_running; then
        port="$(pg_running_port)"
        if pg_isready_port "$port"; then
            echo "postgres: running  pid $(head -n 1 "$(pg_data)/postmaster.pid")  port $port  ($(pg_data))"
        else
            echo "postgres: running  port $port  but NOT accepting connections"; rc=1
        fi
    else
        echo "postgres: stopped  ($(pg_data))"; rc=1
    fi
    if [ -f "$ENV_FILE" ]; then
        echo "REDIS_URL=$(env_get REDIS_URL)"
        echo "DATABASE_URL=$(env_get DATABASE_URL)"
    fi
    return "$rc"
}

cmd_env() {
    [ -f "$ENV_FILE" ] || die "no $ENV_FILE yet: run 'bash .ci/services.sh start' first"
    echo "export REDIS_URL=$(env_get REDIS_URL)"
    echo "export DATABASE_URL=$(env_get DATABASE_URL)"
}

cmd_clean() {
    cmd_stop
    local target=""
    [ -L "$PG_ROOT" ] && target="$(readlink -f "$PG_ROOT")"
    rm -rf "$REDIS_DIR" "$PG_ROOT" "$ENV_FILE"
    if [ -n "$target" ] && [[ "$target" == /var/tmp/analytics-demo-pg-* ]]; then rm -rf "$target"; fi
    log "removed local service data"
}

usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    env) cmd_env ;;
    clean) cmd_clean ;;
    start-postgres) cmd_start_postgres ;;
    stop-postgres) pg_stop ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac

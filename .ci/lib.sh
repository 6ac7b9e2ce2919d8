# shellcheck shell=bash
# .ci/lib.sh: what the project's scripts share. Source it from a bash script
# (`. "$ROOT/.ci/lib.sh"`), or run one of its functions from elsewhere
# (`bash .ci/lib.sh free_port`, as bench/soak.py does).
#
#   port_free PORT [HOST]          true when HOST:PORT can be bound (HOST: 127.0.0.1 when not
#                                  given, "" for every address); REUSEADDR=1: as a server that
#                                  sets SO_REUSEADDR would bind it
#   free_port [AVOID]              a free port in 20000-31999 (below the ephemeral range), not AVOID
#   redis_start DIR PORT [ARG...]  redis-server in the background ($! is its pid): 127.0.0.1:PORT,
#                                  data and redis.log in DIR, no persistence; ARGs come last and
#                                  override; pinned with taskset -c $REDIS_CPUS when that is set
#   redis_exec DIR PORT [ARG...]   the same in the foreground (the shell becomes redis-server)
#   redis_wait PORT [SECONDS]      until 127.0.0.1:PORT answers PING (default 30 s); false after
#   split_cpus                     REDIS_CPUS (the first usable CPU) and CLIENT_CPUS (the others,
#                                  comma separated) when there are 2+ CPUs and taskset; else empty
#   pg_bindir                      the directory of initdb, pg_ctl and postgres: the highest
#                                  /usr/lib/postgresql/*/bin, else PATH; false when there is none
#   stop_pids PID...               SIGTERM to each, then SIGKILL to any still running 30 s later
#                                  (an app finishes its in-flight operations and flushes its rows)
#   ensure_inferno ROOT            puts ROOT/.local/bin on PATH and, when inferno-flamegraph is not
#                                  found there or on PATH, installs inferno into it (cargo install
#                                  --locked from crates.io); false when that fails

port_free() {
    local port="$1" host="${2-127.0.0.1}"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$port" "$host" "${REUSEADDR:-}" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
if sys.argv[3] == "1":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[2], int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
        return $?
    fi
    if command -v ss >/dev/null 2>&1; then
        if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then return 1; fi
        return 0
    fi
    # Last resort: something accepting connections means busy.
    ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

free_port() {
    local avoid="${1:-}" p _
    for _ in $(seq 1 500); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 12000 ))
        [ "$p" = "$avoid" ] && continue
        if port_free "$p"; then echo "$p"; return 0; fi
    done
    echo "free_port: no free TCP port in 20000-31999" >&2
    return 1
}

# The command line of every redis-server the scripts start (in the array REDIS_CMD).
redis_cmd() {
    local dir="$1" port="$2"
    shift 2
    REDIS_CMD=()
    [ -n "${REDIS_CPUS:-}" ] && REDIS_CMD=(taskset -c "$REDIS_CPUS")
    REDIS_CMD+=(redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no
        --daemonize no --logfile "$dir/redis.log" "$@")
}

redis_start() {
    mkdir -p "$1"
    redis_cmd "$@"
    "${REDIS_CMD[@]}" </dev/null >/dev/null 2>&1 &
}

redis_exec() {
    mkdir -p "$1"
    redis_cmd "$@"
    exec "${REDIS_CMD[@]}" </dev/null >/dev/null 2>&1
}

redis_wait() {
    local port="$1" tries=$(( ${2:-30} * 10 )) _
    for _ in $(seq 1 "$tries"); do
        [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    return 1
}

split_cpus() {
    local cpus
    REDIS_CPUS="" CLIENT_CPUS=""
    cpus=$(python3 -c 'import os; print(" ".join(map(str, sorted(os.sched_getaffinity(0)))))')
    read -r -a cpus <<<"$cpus"
    if [ "${#cpus[@]}" -ge 2 ] && command -v taskset >/dev/null; then
        REDIS_CPUS="${cpus[0]}"
        CLIENT_CPUS="$(IFS=,; echo "${cpus[*]:1}")"
    fi
}

pg_bindir() {
    local d best="" best_ver=-1 ver
    for d in /usr/lib/postgresql/*/bin; do
        if ! { [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; }; then continue; fi
        ver="$(basename "$(dirname "$d")")"
        [[ "$ver" =~ ^[0-9]+$ ]] || continue
        if [ "$ver" -gt "$best_ver" ]; then best_ver="$ver"; best="$d"; fi
    done
    if [ -n "$best" ]; then echo "$best"; return 0; fi
    if command -v pg_ctl >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1 \
        && command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    return 1
}

stop_pids() {
    local pid _
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "$@"; do
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
    return 0
}

ensure_inferno() {
    local root="$1"
    PATH="$root/.local/bin:$HOME/.cargo/bin:$PATH"
    export PATH
    if command -v inferno-flamegraph >/dev/null && command -v inferno-collapse-perf >/dev/null; then
        return 0
    fi
    printf 'installing inferno into %s/.local/bin (cargo install, about a minute)\n' "$root" >&2
    cargo install inferno --root "$root/.local" --locked >&2
}

# Run as a script: one function, e.g. `bash .ci/lib.sh free_port`.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
        port_free | free_port | redis_exec | redis_wait | pg_bindir) "$@" ;;
        *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
           exit 2 ;;
    esac
fi

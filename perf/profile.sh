#!/usr/bin/env bash
# make perf-record / make perf-stat: profile the workload at a preset (default: ultra,
# 2000 events/s + 8000 queries/s) against the project-local Redis + Postgres.
#
#   bash perf/profile.sh record   perf record -g, then a flamegraph (inferno) and top frames
#   bash perf/profile.sh stat     perf stat counters for one run
#
# Environment: PERF_SECONDS=20 EVENTS_PER_SECOND=2000 QUERIES_PER_SECOND=8000 PERF_FREQ=999
#   PERF_CALL_GRAPH=fp|dwarf (fp = plain -g; dwarf gives deeper Rust stacks, larger files)
#   NO_BUILD=1. Output: perf/out/ (git-ignored).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE="${1:-record}"
OUT="$ROOT/perf/out"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/analytics-demo"
SECS="${PERF_SECONDS:-20}"
EV="${EVENTS_PER_SECOND:-2000}"
Q="${QUERIES_PER_SECOND:-8000}"
log() { printf '[perf] %s\n' "$*" >&2; }
# shellcheck source=.ci/lib.sh
. .ci/lib.sh

command -v perf >/dev/null || { log "perf is missing: apt-get install linux-perf"; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then cargo build --release; fi
mkdir -p "$OUT"
bash .ci/services.sh start
set -a; . .local/env; set +a
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
app=("$BIN" --duration "$SECS" --events-per-second "$EV" --queries-per-second "$Q"
     --redis-url "$REDIS_URL" --database-url "$DATABASE_URL" --bind-address "127.0.0.1:$port")

# Hardware counters are often missing in VMs ("<not supported>"): fall back to the
# cpu-clock software event, which samples on a timer and works everywhere.
probe="$(perf stat -e cycles true 2>&1 || true)"
if grep -q '<not supported>' <<<"$probe"; then hw=0; else hw=1; fi

case "$MODE" in
record)
    event=(-e cycles); [ "$hw" = 1 ] || event=(-e cpu-clock)
    cg=(-g); [ "${PERF_CALL_GRAPH:-fp}" = dwarf ] && cg=(--call-graph dwarf,16384)
    log "perf record ${event[*]} ${cg[*]} for ${SECS}s: $EV events/s, $Q queries/s"
    perf record "${event[@]}" "${cg[@]}" -F "${PERF_FREQ:-999}" -o "$OUT/perf.data" -- \
        "${app[@]}" >"$OUT/app.stdout" 2>"$OUT/app.log"
    ensure_inferno "$ROOT"
    perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf >"$OUT/stacks.folded"
    inferno-flamegraph --title "analytics-demo $EV ev/s $Q q/s (${event[1]})" \
        <"$OUT/stacks.folded" >"$OUT/flamegraph.svg"
    # (`head` closes the pipe early: not an error.)
    { perf report -i "$OUT/perf.data" --no-children -g none --sort comm,symbol --stdio 2>/dev/null \
        | grep -v -e '^#' -e '^$' | head -40 >"$OUT/top-self.txt"; } || true
    { perf report -i "$OUT/perf.data" --no-children -g none --sort comm --stdio 2>/dev/null \
        | grep -v -e '^#' -e '^$' | head -15 >"$OUT/top-threads.txt"; } || true
    { perf report -i "$OUT/perf.data" --no-children -g none --sort dso --stdio 2>/dev/null \
        | grep -v -e '^#' -e '^$' | head -10 >"$OUT/top-dso.txt"; } || true
    log "flamegraph: $OUT/flamegraph.svg; top frames (self time):"
    head -25 "$OUT/top-self.txt" | sed 's/  *- *- *$//'
    log "by thread:"; cat "$OUT/top-threads.txt"
    log "by binary (kernel vs ours):"; cat "$OUT/top-dso.txt"
    ;;
stat)
    ev="task-clock,context-switches,cpu-migrations,page-faults"
    [ "$hw" = 1 ] && ev="$ev,cycles,instructions,branches,branch-misses,cache-misses"
    log "perf stat -e $ev for ${SECS}s: $EV events/s, $Q queries/s"
    perf stat -e "$ev" -o "$OUT/stat.txt" -- "${app[@]}" >"$OUT/app.stdout" 2>"$OUT/app.log"
    cat "$OUT/stat.txt"
    grep -E 'events/s|queries/s|query latency' "$OUT/app.stdout" | head -5 || true
    ;;
*) log "usage: $0 record|stat"; exit 2 ;;
esac

#!/usr/bin/env bash
# make perf-coop-taskrun: what IORING_SETUP_COOP_TASKRUN would give us (an experiment, not a build).
#
# glommio 0.9 (the newest release) creates its io_uring rings without IORING_SETUP_COOP_TASKRUN.
# Without it, every completion for a thread that is running in user space is announced with a
# reschedule IPI, sent from whoever completed it: here, Redis' `write` of a reply wakes our
# socket poll and kicks our CPU. In a VM an IPI is a VM exit; `perf record -p <redis>` under
# `bench-redis -P 16` shows 13-15% of Redis' CPU under `sock_def_readable`, against 3% with
# redis-benchmark (epoll does not interrupt a running thread).
#
# This script builds a second binary against a copy of glommio whose rings get the flag when
# EXP_COOP is set (nothing in the project changes: the copy and the build live in a temp dir,
# wired in with `cargo --config patch.crates-io...`), then runs `bench-redis` closed loop,
# alternating the flag off/on on one pinned redis-server, and prints ops/s and client CPU per op.
#
# Environment: COOP_RUNS=3 COOP_SECONDS=5 COOP_PIPELINE=16 COOP_CONNECTIONS=50
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUNS="${COOP_RUNS:-3}"
SECS="${COOP_SECONDS:-5}"
PIPE="${COOP_PIPELINE:-16}"
CONNS="${COOP_CONNECTIONS:-50}"
WORK="${COOP_WORKDIR:-${TMPDIR:-/tmp}/analytics-coop-taskrun}"
log() { printf '[coop] %s\n' "$*" >&2; }

src="$(cargo metadata --format-version 1 2>/dev/null | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "glommio").rsplit("/", 1)[0])')"
[ -f "$src/src/iou/mod.rs" ] || { log "glommio sources not found (cargo fetch first)"; exit 1; }
mkdir -p "$WORK"
rm -rf "$WORK/glommio"
cp -r "$src" "$WORK/glommio"
python3 - "$WORK/glommio/src/iou/mod.rs" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read()
old = "            params.flags = flags.bits();"
new = ("            params.flags = flags.bits() | if std::env::var_os(\"EXP_COOP\").is_some()"
       " && !flags.contains(SetupFlags::IOPOLL) { 1 << 8 } else { 0 }; // IORING_SETUP_COOP_TASKRUN")
if old not in s:
    sys.exit("glommio's ring setup changed: patch does not apply")
open(p, "w").write(s.replace(old, new))
EOF
# Build from a copy of the tracked files, so the patch never touches this checkout's Cargo.lock.
rm -rf "$WORK/project"
mkdir -p "$WORK/project"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$WORK/project"
log "building the experimental binary in $WORK/target (a few minutes the first time)"
(cd "$WORK/project" && cargo build --release --quiet --target-dir "$WORK/target" \
    --config "patch.crates-io.glommio.path=\"$WORK/glommio\"" --config "build.rustflags=[\"--cap-lints\", \"allow\"]")
BIN="$WORK/target/release/analytics-demo"

# shellcheck source=.ci/lib.sh
. .ci/lib.sh
split_cpus
client_pin=()
[ -n "$CLIENT_CPUS" ] && client_pin=(taskset -c "$CLIENT_CPUS")
port="$(free_port)"
redis_start "$WORK" "$port"
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null || true' EXIT
redis_wait "$port" 5 || true

run() {
    local env_flag=(env -u EXP_COOP)
    [ "$1" = on ] && env_flag=(env EXP_COOP=1)
    { /usr/bin/time -f 'CPU %U %S' "${env_flag[@]}" "${client_pin[@]}" "$BIN" bench-redis \
        --redis-url "redis://127.0.0.1:$port" --connections "$CONNS" --pipeline "$PIPE" \
        --ratio 1:1 --duration "$SECS" --json; } 2>&1 | python3 -c '
import json, re, sys
out = sys.stdin.read()
j = json.loads(next(l for l in out.splitlines() if l.startswith("{")))
u, s = map(float, re.search(r"CPU ([\d.]+) ([\d.]+)", out).groups())
ops_s, ops = j["ops_per_second"], j["ops"]
print("%-4s %10.0f ops/s  %.2f client CPU-us/op" % (sys.argv[1], ops_s, (u + s) / ops * 1e6))' "$1"
}
log "bench-redis -P $PIPE, $CONNS connections, SET:GET 1:1, ${SECS} s per run, $RUNS rounds"
for _ in $(seq 1 "$RUNS"); do
    run off
    run on
done

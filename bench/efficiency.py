#!/usr/bin/env python3
"""`make bench-efficiency`: client CPU per Redis command (started by bench/run.sh with
BENCH_STEPS=efficiency, which provides Redis pinned to the first CPU and Postgres).

What is measured, each point BENCH_REPS times (medians quoted; the tools alternate AB, BA, ...):
  1. The realistic workload at fixed rates giving ~1k, 10k and 50k Redis commands/s, plus idle
     (the lowest rates the app accepts: 0 events/s, 1 query/s), against memtier_benchmark at
     the same command rate (50 connections, --rate-limiting, SET:GET 1:10). For each run the
     client's CPU (utime + stime from /proc/<pid>/stat) and Redis' commands (INFO commandstats)
     are read at the start and the end of one window, after a warm-up: CPU per command is the
     ratio of the two deltas. A flamegraph of our process is recorded after the window (never
     during it: perf's sampling costs the sampled process CPU).
  2. Raw mode paced (`bench-redis --rate`, 50 connections, SET:GET 1:10, the same values and
     keys) against the same memtier runs, at memtier's rates: the same commands on both sides,
     so the two clients' costs per command compare directly (EFF_RAW_PACED=0 skips it).
     Beside them, `pacing-floor` (bench/pacing_floor.rs, built with rustc into target/): a
     client with nothing but exact pacing, on the grid our run used (its `pace_step_us`), one
     thread, blocking sockets, no runtime and no histogram; and the same with `--wakes-only`
     (it wakes at those grid points and sends nothing). What any client that sends each command
     at its own due time must pay here: the floor under the goal.
  3. Raw mode: `bench-redis` against redis-benchmark at -P 1 and -P 16 (bench/harness.py's
     step, the one of `make bench`).
memtier is used when MEMTIER_BIN is set or memtier_benchmark is on PATH; otherwise its columns
say what is missing. Nothing is ever downloaded.

The workload runs with --max-workers EFF_MAX_WORKERS (default 4000, as `make bench-targets`'
100k runs): the default 500 is about 13 ms of work at the 50k point, so a stall of the shared
machine would turn into skipped operations; with 4000 they run late and their latency shows it.

Environment: BENCH_REPS=3 EFF_WARMUP_SECONDS=5 EFF_WINDOW_SECONDS=10 EFF_IDLE_WINDOW_SECONDS=30
  EFF_MAX_WORKERS=4000 EFF_FLAME_SECONDS=5 (0 = no flamegraphs) EFF_POINTS="idle 1k 10k 50k" EFF_RAW_PACED=1 EFF_RAW=1
  MEMTIER_BIN
  EFF_LABEL (a word in the file name and the title, e.g. "before")
"""
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

import harness as h

E = os.environ
REPS = int(E.get("BENCH_REPS", "3"))
WARMUP = float(E.get("EFF_WARMUP_SECONDS", "5"))
WINDOW = float(E.get("EFF_WINDOW_SECONDS", "10"))
IDLE_WINDOW = float(E.get("EFF_IDLE_WINDOW_SECONDS", "30"))
FLAME = float(E.get("EFF_FLAME_SECONDS", "5"))
CONNS = 50
RAW_PACED = E.get("EFF_RAW_PACED", "1") == "1"
MAX_WORKERS = E.get("EFF_MAX_WORKERS", "4000")
LABEL = E.get("EFF_LABEL", "")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (events/s, queries/s, memtier commands/s). An event is 4 Redis commands (INCR, PFADD,
# 2x EXPIREAT); a query about 1.15 once the cache is warm. The rates are chosen so the
# commands/s measured land near the name; the table shows what they were.
POINTS = {
    "idle": (0, 1, None),
    "1k": (150, 350, 1000),
    "10k": (1500, 3500, 10000),
    "50k": (2000, 36000, 50000),
}


def log(*a):
    print("[efficiency]", *a, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def proc_cpu(pid):
    s = h.proc_cpu_rss(pid)
    return None if s is None else s[0]


def pinned(cmd):
    return (["taskset", "-c", h.CLIENT_CPUS] + cmd) if h.CLIENT_CPUS else cmd


def memtier_bin():
    b = E.get("MEMTIER_BIN") or shutil.which("memtier_benchmark")
    return b if b and os.access(b, os.X_OK) else None


def window(pid, secs):
    """(client CPU s, Redis commands, wall s) over `secs` of a running client."""
    c0, s0, t0 = proc_cpu(pid), h.commandstats(), time.monotonic()
    time.sleep(secs)
    c1, s1, t1 = proc_cpu(pid), h.commandstats(), time.monotonic()
    if c0 is None or c1 is None:
        return None
    return c1 - c0, h.redis_calls(s0, s1), t1 - t0


def per_cmd(w):
    """The rates of a window (client CPU s, Redis commands, wall s)."""
    cpu, cmds, wall = w
    return {"cmds_s": cmds / wall, "cpu_pct": 100 * cpu / wall,
            "us_per_cmd": cpu / cmds * 1e6 if cmds else None, "window_s": wall}


def windowed(cmd, total):
    """Run a fixed-rate client for `total` s: (its window after the warm-up, stdout, stderr,
    exit status)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(WARMUP)
    w = window(p.pid, WINDOW)
    out, err = finish(p, total + 30)
    return w, out, err, p.returncode


def flamegraph(pid, secs, name, outdir):
    """perf record of `pid` for `secs`, rendered with inferno; the path or a reason."""
    if secs <= 0:
        return "skipped (EFF_FLAME_SECONDS=0)"
    if not shutil.which("perf"):
        return "perf is missing (Debian: apt-get install linux-perf)"
    path = os.environ["PATH"] + os.pathsep + os.path.join(ROOT, ".local", "bin")
    collapse = shutil.which("inferno-collapse-perf", path=path)
    render = shutil.which("inferno-flamegraph", path=path)
    if not (collapse and render):
        return "inferno is missing (make bench-efficiency installs it into .local/bin: see its log)"
    os.makedirs(outdir, exist_ok=True)
    data = os.path.join(outdir, f"{name}.perf.data")
    r = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-p", str(pid),
                        "-o", data, "--", "sleep", str(secs)], capture_output=True, text=True)
    if r.returncode != 0:
        return f"perf record failed: {r.stderr.strip()[-200:]}"
    svg = os.path.join(outdir, f"{name}.svg")
    script = subprocess.run(["perf", "script", "-i", data], capture_output=True)
    folded = subprocess.run([collapse], input=script.stdout, capture_output=True)
    with open(svg, "wb") as fh:
        subprocess.run([render, "--title", f"analytics-demo, {name} ({secs:.0f} s, cpu-clock)"],
                       input=folded.stdout, stdout=fh)
    os.remove(data)
    return os.path.relpath(svg, ROOT)


def finish(p, timeout):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.terminate()
        out, err = p.communicate()
    return out or "", err or ""


def ours(point, flame_dir=None):
    events, queries, _ = POINTS[point]
    win = IDLE_WINDOW if point == "idle" else WINDOW
    flame = FLAME if flame_dir else 0
    total = WARMUP + win + flame + 2
    cmd = pinned([h.BIN, "--duration", str(int(total + 1)), "--events-per-second", str(events),
                  "--queries-per-second", str(queries), "--max-workers", MAX_WORKERS,
                  "--log-format", "json",
                  "--redis-url", h.REDIS_URL, "--database-url", h.DATABASE_URL,
                  "--bind-address", f"127.0.0.1:{h.free_port()}"])
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(WARMUP)
    w = window(p.pid, win)
    fg = flamegraph(p.pid, flame, f"flame-{point}", flame_dir) if flame_dir else None
    _, err = finish(p, total + 30)
    summary = None
    for line in err.splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        f = j.get("fields", {})
        if j.get("message") == "summary" or f.get("message") == "summary":
            s = j.get("summary") or f.get("summary")
            summary = json.loads(s) if isinstance(s, str) else s
    if w is None or summary is None:
        log(f"ours {point}: no result (exit {p.returncode}): {err[-600:]}")
        return None
    return {"tool": "ours", "point": point, "events_s": events, "queries_s": queries,
            "achieved_events_s": summary["events_per_second"],
            "achieved_queries_s": summary["queries_per_second"],
            "skipped": sum(summary["skipped"].values()),
            "q_p99_ms": summary["query_latency_ms"]["p99"], **per_cmd(w), "flamegraph": fg}


def ours_raw(point):
    """bench-redis paced at memtier's rate for `point`, measured like memtier."""
    rate = POINTS[point][2]
    if rate is None:
        return None
    total = WARMUP + WINDOW + 2
    cmd = pinned([h.BIN, "bench-redis", "--redis-url", h.REDIS_URL, "--rate", str(rate),
                  "--connections", str(CONNS), "--ratio", "1:10", "--data-size", str(h.DATA),
                  "--keys", str(h.KEYS), "--duration", str(int(total + 1)), "--json"])
    w, out, err, code = windowed(cmd, total)
    try:
        j = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        j = None
    if w is None or j is None:
        log(f"ours raw {point}: no result (exit {code}): {err[-600:]}")
        return None
    return {"tool": "ours_raw", "point": point, "rate": rate, **per_cmd(w),
            "missed": j.get("missed"), "pace_step_us": j.get("pace_step_us"),
            "p99_corrected_us": (j.get("latency_corrected_us") or {}).get("p99")}


FLOOR = os.path.join(E.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "pacing-floor")


def build_floor():
    """Build bench/pacing_floor.rs with rustc; None, or why there is no floor."""
    rustc = shutil.which("rustc")
    if not rustc:
        return "rustc is missing"
    r = subprocess.run([rustc, "--edition", "2021", "-O", "-o", FLOOR,
                        os.path.join(ROOT, "bench", "pacing_floor.rs")],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"rustc failed: {r.stderr.strip()[-300:]}"


def floor(point, grid_us, wakes_only):
    """pacing-floor at memtier's rate for `point`, on our run's grid, measured like memtier."""
    rate = POINTS[point][2]
    if rate is None or grid_us is None:
        return None
    total = WARMUP + WINDOW + 2
    cmd = pinned([FLOOR, "--addr", f"127.0.0.1:{h.REDIS_PORT}", "--rate", str(rate),
                  "--connections", str(CONNS), "--grid-us", str(grid_us),
                  "--keys", str(h.KEYS), "--data-size", str(h.DATA), "--seconds", str(total)]
                 + (["--wakes-only"] if wakes_only else []))
    w, _, err, code = windowed(cmd, total)
    if w is None or code != 0:
        log(f"pacing-floor {point}: no result (exit {code}): {err[-300:]}")
        return None
    # Per command due in the window (with --wakes-only nothing reaches Redis).
    cpu, _, wall = w
    return {"tool": "floor", "point": point, "rate": rate, "grid_us": grid_us,
            **per_cmd((cpu, rate * wall, wall))}


def memtier(point):
    rate = POINTS[point][2]
    binary = memtier_bin()
    if rate is None or binary is None:
        return None
    total = WARMUP + WINDOW + 2
    cmd = pinned([binary, "-s", "127.0.0.1", "-p", str(h.REDIS_PORT), "--protocol", "redis",
                  "-t", "1", "-c", str(CONNS), "--ratio", "1:10",
                  "--rate-limiting", str(max(1, rate // CONNS)), "--test-time", str(int(total)),
                  "-d", str(h.DATA), "--key-maximum", str(h.KEYS), "--hide-histogram"])
    w, _, _, code = windowed(cmd, total)
    if w is None:
        log(f"memtier {point}: no result (exit {code})")
        return None
    return {"tool": "memtier", "point": point, "rate": rate, **per_cmd(w)}


def med(runs, key):
    return h.med([r[key] for r in runs if r])


def step_rates(flame_dir, with_floor):
    rows = []
    for point in [p for p in E.get("EFF_POINTS", "idle 1k 10k 50k").split() if p in POINTS]:
        runs = {"ours": [], "memtier": [], "ours_raw": [], "floor": [], "floor_wakes": []}
        tools = ["ours", "memtier"] + (["ours_raw"] if RAW_PACED and POINTS[point][2] else [])
        for rep in range(REPS):
            order = tools[rep % len(tools):] + tools[:rep % len(tools)]
            for who in order:
                if who == "ours":
                    runs["ours"].append(ours(point, flame_dir if rep == 0 else None))
                elif who == "ours_raw":
                    runs["ours_raw"].append(ours_raw(point))
                else:
                    runs["memtier"].append(memtier(point))
            if "ours_raw" in tools and with_floor:
                raw = runs["ours_raw"][-1]
                grid = raw and raw.get("pace_step_us")
                runs["floor"].append(floor(point, grid, False))
                runs["floor_wakes"].append(floor(point, grid, True))
            log(f"{point} rep {rep + 1}/{REPS} done (load {loadavg()})")
        row = {"point": point, "runs": runs,
               "flamegraph": next((r["flamegraph"] for r in runs["ours"] if r), None)}
        for tool in ("ours", "memtier", "ours_raw", "floor", "floor_wakes"):
            row[tool] = {k: med(runs[tool], k) for k in ("cmds_s", "cpu_pct", "us_per_cmd")}
        a, b = row["ours"]["us_per_cmd"], row["memtier"]["us_per_cmd"]
        row["ratio"] = a / b if a and b else None
        a = row["ours_raw"]["us_per_cmd"]
        row["raw_ratio"] = a / b if a and b else None
        for tool in ("floor", "floor_wakes"):
            a = row[tool]["us_per_cmd"]
            row[tool + "_ratio"] = a / b if a and b else None
        row["grid_us"] = med([r for r in runs["ours_raw"] if r], "pace_step_us")
        r_ok = [r for r in runs["ours_raw"] if r]
        row["raw_missed"] = sum(r["missed"] or 0 for r in r_ok) if r_ok else None
        row["raw_p99_us"] = med(r_ok, "p99_corrected_us") if r_ok else None
        o = [r for r in runs["ours"] if r]
        row["skipped"] = sum(r["skipped"] for r in o)
        row["achieved"] = (med(o, "achieved_events_s"), med(o, "achieved_queries_s"))
        row["q_p99_ms"] = med(o, "q_p99_ms")
        rows.append(row)
    return rows


f = h.f  # "-" for None, else format(v, spec)


def markdown(res):
    m = [f"# Efficiency {res['started']}{' (' + LABEL + ')' if LABEL else ''}", "",
         f"`{res['command']}` on {res['host']['cpus']} CPUs ({res['host']['kernel']}), "
         f"binary `{res['binary']}`; Redis {res['redis']} pinned to CPU "
         f"`{E.get('BENCH_REDIS_CPUS') or 'any'}`, clients on `{h.CLIENT_CPUS or 'any'}`, "
         f"Postgres unpinned. Load average (1, 5, 15 min) before: {res['load_before']}, "
         f"after: {res['load_after']}. Medians of {REPS}; warm-up {WARMUP:.0f} s, then a "
         f"{WINDOW:.0f} s window ({IDLE_WINDOW:.0f} s idle) in which client CPU "
         "(/proc/<pid>/stat utime + stime) and Redis commands (INFO commandstats) are both "
         "counted.", "",
         f"memtier: {res['memtier']}.", ""]
    if res.get("rates"):
        m += ["## Client CPU per Redis command at fixed rates", "",
              "Ours: the realistic workload at the events/s + queries/s shown (an event is 4 "
              f"commands, a query ~1.15), `--max-workers {MAX_WORKERS}`. memtier: 1 thread, 50 connections, `--rate-limiting`, "
              "SET:GET 1:10, 32 B values. Ratio = ours / memtier (goal: at most 0.5).", "",
              "| point | ours: ev/s + q/s (achieved) | ours: Redis cmds/s | ours: CPU % | "
              "ours: µs/cmd | memtier: cmds/s | memtier: CPU % | memtier: µs/cmd | ratio | "
              "ours: query p99 ms | skipped | flamegraph |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["rates"]:
            o, t = r["ours"], r["memtier"]
            ev, q = POINTS[r["point"]][:2]
            a_ev, a_q = r["achieved"]
            m.append(f"| {r['point']} | {ev} + {q} ({f(a_ev, '.0f')} + {f(a_q, '.0f')}) | "
                     f"{f(o['cmds_s'], '.0f')} | "
                     f"{f(o['cpu_pct'], '.2f')} | {f(o['us_per_cmd'], '.1f')} | {f(t['cmds_s'], '.0f')} | "
                     f"{f(t['cpu_pct'], '.2f')} | {f(t['us_per_cmd'], '.1f')} | "
                     f"**{f(r['ratio'], '.2f')}** | {f(r['q_p99_ms'], '.2f')} | {r['skipped']} | "
                     f"{r['flamegraph'] or '-'} |")
        m.append("")
        paced = [r for r in res["rates"] if r.get("ours_raw", {}).get("us_per_cmd")]
        if paced:
            m += ["## The same commands: raw mode paced against memtier", "",
                  "Ours: `bench-redis --rate <memtier's rate> --connections 50 --ratio 1:10`, "
                  "same values and keys, measured the same way, against the memtier runs above. "
                  "Ratio = ours / memtier. p99 is from each command's due time (the pacing grid "
                  "and any wait for a free slot included); memtier's is from its send.", "",
                  f"Floor: `pacing-floor` ({res.get('floor')}), the same commands, rate and "
                  "connections on our run's grid, with nothing but the pacing: one thread, "
                  "blocking sockets, no runtime, no histogram. Wakes alone: the same with "
                  "`--wakes-only` (it wakes at the grid points and sends nothing), per command "
                  "due. Ratios are to memtier.", "",
                  "| point | rate | grid µs | ours: cmds/s | ours: CPU % | ours: µs/cmd | "
                  "memtier: µs/cmd | ratio | floor: µs/cmd (ratio) | wakes alone: µs/cmd "
                  "(ratio) | ours: p99 µs (corrected) | missed |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in paced:
                o, t = r["ours_raw"], r["memtier"]
                fl, fw = r["floor"], r["floor_wakes"]
                m.append(f"| {r['point']} | {POINTS[r['point']][2]} | {f(r['grid_us'], '.0f')} | "
                         f"{f(o['cmds_s'], '.0f')} | "
                         f"{f(o['cpu_pct'], '.2f')} | {f(o['us_per_cmd'], '.1f')} | "
                         f"{f(t['us_per_cmd'], '.1f')} | **{f(r['raw_ratio'], '.2f')}** | "
                         f"{f(fl['us_per_cmd'], '.1f')} ({f(r['floor_ratio'], '.2f')}) | "
                         f"{f(fw['us_per_cmd'], '.1f')} ({f(r['floor_wakes_ratio'], '.2f')}) | "
                         f"{f(r['raw_p99_us'], '.0f')} | {r['raw_missed']} |")
            m.append("")
    if res.get("raw"):
        # make bench's step 1 and its table (client CPU s / Mop = µs per operation).
        raw = h.markdown({k: res[k] for k in ("started", "command", "host", "raw")})
        m += ["## Raw mode (make bench's step 1, CPU over the whole process life)", ""]
        m += raw[raw.index("## Summary"):].splitlines()[2:]
    return "\n".join(m) + "\n"


def main():
    outdir = sys.argv[1]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    base = os.path.join(outdir, started + "-efficiency" + (f"-{LABEL}" if LABEL else ""))
    mt = memtier_bin()
    if mt:
        ver = subprocess.run([mt, "--version"], capture_output=True, text=True).stdout
        mt_desc = f"`{mt}` ({ver.splitlines()[0] if ver else '?'})"
    else:
        mt_desc = ("not found: set MEMTIER_BIN or put memtier_benchmark on PATH (it is not a "
                   "Debian package: build it from its public source); its columns are empty")
        log(mt_desc)
    redis = subprocess.run(["redis-cli", "-p", str(h.REDIS_PORT), "info", "server"],
                           capture_output=True, text=True).stdout
    res = {"started": started, "command": E.get("BENCH_COMMAND", "make bench-efficiency"),
           "label": LABEL, "binary": h.BIN, "memtier": mt_desc,
           "redis": next((l.split(":")[1].strip() for l in redis.splitlines()
                          if l.startswith("redis_version:")), "?"),
           "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
           "load_before": loadavg(), "points": POINTS,
           "settings": {k: v for k, v in E.items() if k.startswith(("BENCH_", "EFF_"))}}
    no_floor = build_floor() if RAW_PACED else "skipped (EFF_RAW_PACED=0)"
    res["floor"] = no_floor or "bench/pacing_floor.rs, built with rustc -O"
    log(f"load average before: {res['load_before']}; memtier: {mt_desc}; "
        f"pacing-floor: {res['floor']}")
    res["rates"] = step_rates(base if FLAME > 0 else None, no_floor is None)
    if E.get("EFF_RAW", "1") == "1":
        res["raw"] = h.step_raw()
    res["load_after"] = loadavg()
    h.write_results(base, res, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

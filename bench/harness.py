#!/usr/bin/env python3
"""The `make bench` harness (started by bench/run.sh, which provides Redis and Postgres).

Why Python: the harness samples /proc, scrapes /metrics, diffs INFO commandstats and takes
medians; that is a few lines here and a page of awk in bash. Standard library only.

Steps (each repeated BENCH_REPS times; medians are quoted):
  1. bench-redis vs redis-benchmark, same connections and pipeline depth, A/B alternated.
  2. the workload at fixed query rates.
  3. the event path at rising event rates, until Postgres or Redis saturates.
  4. max RSS of our process in every step (a column of every table).
Step "targets" (`make bench-targets`, BENCH_STEPS=targets) checks the project's performance
targets once each: 100k queries/s and 100k events/s for 60 s, RSS at the ultra preset, and
rate accuracy from 10/s to 100k/s.
"""
import datetime
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

E = os.environ
QUICK = E.get("BENCH_QUICK") == "1"
REPS = int(E.get("BENCH_REPS", "1" if QUICK else "3"))
WREPS = int(E.get("BENCH_WORKLOAD_REPS", "1" if QUICK else str(REPS)))
RAW_SECS = int(E.get("BENCH_RAW_SECONDS", "3" if QUICK else "10"))
WORK_SECS = int(E.get("BENCH_WORKLOAD_SECONDS", "5" if QUICK else "15"))
CONNS = int(E.get("BENCH_CONNECTIONS", "50"))
PIPELINES = [int(p) for p in E.get("BENCH_PIPELINES", "1 16").split()]
KEYS = int(E.get("BENCH_KEYS", "100000"))
DATA = int(E.get("BENCH_DATA_SIZE", "32"))
QUERY_RATES = [int(q) for q in E.get("BENCH_QUERY_RATES", "1000 10000 50000 100000 1000000").split()]
QUERY_EVENTS = int(E.get("BENCH_QUERY_EVENTS", "200"))
EVENT_RATES = [int(r) for r in E.get("BENCH_EVENT_RATES", "1000 5000 20000 50000 100000").split()]
EVENT_QUERIES = int(E.get("BENCH_EVENT_QUERIES", "100"))
BIN = E["BENCH_BIN"]
REDIS_PORT = int(E["BENCH_REDIS_PORT"])
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}"
DATABASE_URL = E.get("DATABASE_URL", "")
PSQL = E.get("BENCH_PSQL", "psql")
CLIENT_CPUS = E.get("BENCH_CLIENT_CPUS", "")  # taskset list for the clients, "" = no pinning
HZ = os.sysconf("SC_CLK_TCK")
STEPS = E.get("BENCH_STEPS", "raw workload events").split()


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commandstats():
    """{command: calls} from Redis' own INFO commandstats."""
    out = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "info", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_([^:]+):calls=(\d+)", out)}


def redis_calls(before, after, only=None):
    skip = ("info", "config", "flushall", "ping", "hello", "client")
    n = 0
    for cmd, calls in after.items():
        base = cmd.split("|")[0]
        if (only and base not in only) or (not only and base in skip):
            continue
        n += calls - before.get(cmd, 0)
    return n


def proc_cpu_rss(pid):
    """(cpu seconds = utime + stime, VmRSS kB) of a live or zombie process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError, ValueError):
        return None
    rss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return cpu, rss


def scrape_lag(port):
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return None
    m = re.search(r"^analytics_db_writer_lag_seconds(?:\{[^}]*\})? ([0-9.eE+-]+)$", body, re.M)
    return float(m.group(1)) if m else None


def run_client(cmd, metrics_port=None, only=None):
    """Runs one client process; samples CPU and RSS every 50 ms (and the writer lag every
    second), reads the final CPU from the zombie before reaping it, diffs commandstats."""
    if CLIENT_CPUS:
        cmd = ["taskset", "-c", CLIENT_CPUS] + cmd
    before = commandstats()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    max_rss, cpu, max_lag, last_scrape = 0, 0.0, None, 0.0
    out = {}
    readers = [threading.Thread(target=lambda k=k, s=s: out.__setitem__(k, s.read()))
               for k, s in (("stdout", p.stdout), ("stderr", p.stderr))]
    for r in readers:
        r.start()
    while True:
        exited = os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        s = proc_cpu_rss(p.pid)
        if s:
            cpu = max(cpu, s[0])
            max_rss = max(max_rss, s[1])
        if exited is not None:
            break
        now = time.monotonic()
        if metrics_port and now - last_scrape >= 1.0:
            last_scrape = now
            lag = scrape_lag(metrics_port)
            if lag is not None:
                max_lag = lag if max_lag is None else max(max_lag, lag)
        time.sleep(0.05)
    wall = time.monotonic() - t0
    _, status, rusage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    cpu = max(cpu, rusage.ru_utime + rusage.ru_stime)
    after = commandstats()
    return {"rc": p.returncode, "wall": wall, "cpu": cpu, "rss_kb": max_rss, "max_lag": max_lag,
            "server_ops": redis_calls(before, after, only), "stdout": out.get("stdout", ""),
            "stderr": out.get("stderr", "")}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ----------------------------------------------------------------------------------------
# Step 1: bench-redis vs redis-benchmark
# ----------------------------------------------------------------------------------------
def ours_raw(pipeline):
    r = run_client([BIN, "bench-redis", "--redis-url", REDIS_URL, "--connections", str(CONNS),
                    "--pipeline", str(pipeline), "--ratio", "1:1", "--keys", str(KEYS),
                    "--data-size", str(DATA), "--duration", str(RAW_SECS), "--json"],
                   only=("set", "get"))
    j = json.loads(r["stdout"].strip().splitlines()[-1])
    ops = j["ops"]
    return {"tool": "ours", "ops": ops, "server_ops_s": r["server_ops"] / r["wall"],
            "client_ops_s": j["ops_per_second"], "cpu_s_per_mop": r["cpu"] / ops * 1e6,
            "p50_ms": j["latency_us"]["p50"] / 1000, "p99_ms": j["latency_us"]["p99"] / 1000,
            "errors": j["errors"], "rss_mb": r["rss_kb"] / 1024, "wall": r["wall"]}


def theirs_raw(pipeline, ops):
    n = max(1000, ops // 2)  # -n is per test: SET then GET
    r = run_client(["redis-benchmark", "-h", "127.0.0.1", "-p", str(REDIS_PORT), "-t", "set,get",
                    "-c", str(CONNS), "-P", str(pipeline), "-n", str(n), "-r", str(KEYS),
                    "-d", str(DATA), "--threads", "1", "--csv"], only=("set", "get"))
    rows = {}
    for line in r["stdout"].splitlines():
        f = [c.strip('"') for c in line.split('","')]
        if len(f) >= 8 and f[0] in ("SET", "GET"):
            rows[f[0]] = f
    # Equal request counts per test: the mean of the two tests' percentiles.
    p50 = statistics.mean(float(f[4]) for f in rows.values())
    p99 = statistics.mean(float(f[6]) for f in rows.values())
    return {"tool": "redis-benchmark", "ops": 2 * n, "server_ops_s": r["server_ops"] / r["wall"],
            "client_ops_s": 2 * n / sum(2 * n / 2 / float(f[1]) for f in rows.values()),
            "cpu_s_per_mop": r["cpu"] / (2 * n) * 1e6, "p50_ms": p50, "p99_ms": p99,
            "errors": 0, "rss_mb": r["rss_kb"] / 1024, "wall": r["wall"]}


def step_raw():
    results = []
    for p in PIPELINES:
        runs = {"ours": [], "redis-benchmark": []}
        last_ops = None
        for rep in range(REPS):
            # Alternate the order (AB, BA, ...) so drift of a shared machine hits both.
            order = ["ours", "theirs"] if rep % 2 == 0 or last_ops is None else ["theirs", "ours"]
            for who in order:
                if who == "ours":
                    o = ours_raw(p)
                    last_ops = o["ops"]
                    runs["ours"].append(o)
                else:
                    runs["redis-benchmark"].append(theirs_raw(p, last_ops))
                log(f"raw P{p} rep {rep + 1}/{REPS} {who} done")
        row = {"pipeline": p, "connections": CONNS, "runs": runs}
        for tool, rs in runs.items():
            row[tool] = {k: med([r[k] for r in rs]) for k in
                         ("server_ops_s", "client_ops_s", "cpu_s_per_mop", "p50_ms", "p99_ms",
                          "rss_mb", "errors", "ops")}
        a, b = row["ours"], row["redis-benchmark"]
        row["ratio"] = {k: (a[k] / b[k] if b[k] else None)
                        for k in ("server_ops_s", "cpu_s_per_mop", "p50_ms", "p99_ms")}
        results.append(row)
    return results


# ----------------------------------------------------------------------------------------
# Steps 2 and 3: the workload
# ----------------------------------------------------------------------------------------
def psql_count(run_id):
    out = subprocess.run([PSQL, DATABASE_URL, "-tAc",
                          f"SELECT count(*) FROM events WHERE run_id = {int(run_id)}"],
                         capture_output=True, text=True)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def workload(events, queries, secs=None, extra=()):
    port = free_port()
    r = run_client([BIN, "--duration", str(secs or WORK_SECS), "--events-per-second", str(events),
                    "--queries-per-second", str(queries), "--log-format", "json",
                    "--redis-url", REDIS_URL, "--database-url", DATABASE_URL,
                    "--bind-address", f"127.0.0.1:{port}", *extra], metrics_port=port)
    summary = None
    for line in r["stderr"].splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("message") == "summary" or j.get("fields", {}).get("message") == "summary":
            s = j.get("summary") or j.get("fields", {}).get("summary")
            summary = json.loads(s) if isinstance(s, str) else s
    if summary is None:
        log(f"no summary line (exit {r['rc']}): {r['stderr'][-800:]}")
        return None
    rows = psql_count(summary["run_id"])
    return {"events_s": summary["events_per_second"], "queries_s": summary["queries_per_second"],
            "q_p50_ms": summary["query_latency_ms"]["p50"],
            "q_p99_ms": summary["query_latency_ms"]["p99"],
            "redis_ops_s": r["server_ops"] / r["wall"], "cpu_pct": 100 * r["cpu"] / r["wall"],
            "rss_mb": r["rss_kb"] / 1024, "max_lag_s": r["max_lag"],
            "events": summary["events"], "pg_rows": rows,
            "rows_dropped": summary["db_rows_dropped"], "rc": r["rc"],
            "q_p999_ms": summary["query_latency_ms"]["p999"],
            "pacer_p99_ms": summary.get("pacer_lateness_ms", {}).get("p99"),
            "pacer_max_ms": summary.get("pacer_lateness_ms", {}).get("max"),
            "skipped": sum(summary["skipped"].values())}


def medians(runs, keys):
    return {k: med([r[k] for r in runs if r]) for k in keys}


def step_workload():
    out = []
    for q in QUERY_RATES:
        runs = [workload(QUERY_EVENTS, q) for _ in range(WREPS)]
        log(f"workload {q} q/s done")
        row = {"target_q_s": q, "events_s_target": QUERY_EVENTS, "runs": runs}
        row.update(medians(runs, ("queries_s", "q_p50_ms", "q_p99_ms", "redis_ops_s",
                                  "cpu_pct", "rss_mb")))
        out.append(row)
    return out


def step_events():
    out = []
    for ev in EVENT_RATES:
        runs = [workload(ev, EVENT_QUERIES) for _ in range(WREPS)]
        log(f"events {ev}/s done")
        row = {"target_ev_s": ev, "runs": runs}
        row.update(medians(runs, ("events_s", "max_lag_s", "redis_ops_s", "cpu_pct", "rss_mb")))
        ok = [r for r in runs if r]
        row["rows_dropped"] = sum(r["rows_dropped"] for r in ok)
        row["pg_matches"] = all(r["pg_rows"] == r["events"] for r in ok) and bool(ok)
        row["saturated"] = (row["events_s"] or 0) < 0.9 * ev or (row["max_lag_s"] or 0) > 5
        out.append(row)
        if row["saturated"]:
            log(f"saturated at {ev} events/s: not going higher")
            break
    return out


# ----------------------------------------------------------------------------------------
# Step "targets": the performance targets of the project, each checked once
# ----------------------------------------------------------------------------------------
TARGET_SECS = int(E.get("BENCH_TARGET_SECONDS", "20" if QUICK else "60"))
TARGET_RATE = int(E.get("BENCH_TARGET_RATE", "100000"))
TARGET_WARMUP_SECS = int(E.get("BENCH_TARGET_WARMUP_SECONDS", "5" if QUICK else "15"))
# In flight at most during the 100k runs: the default 500 is 5 ms of work at 100k/s, so one
# scheduling hiccup of the machine skips operations (counted, never hidden) instead of
# running them late. A rate counts as held only with nothing skipped: an operation that was
# due and never started is a miss, however close the started rate came.
TARGET_MAX_WORKERS = E.get("BENCH_TARGET_MAX_WORKERS", "4000")
ACCURACY_RATES = [int(r) for r in E.get("BENCH_ACCURACY_RATES",
                                        "10 100 1000 10000 100000").split()]
ACCURACY_SECS = int(E.get("BENCH_ACCURACY_SECONDS", "5" if QUICK else "10"))


def within(achieved, target, tol=0.01):
    return achieved is not None and abs(achieved - target) <= tol * target


def held(achieved, target, skipped):
    """The rate was reached within 1% and no operation was skipped."""
    return within(achieved, target) and skipped == 0


def step_targets():
    """Returns rows of (target, measured, met)."""
    rows = []
    mw = ("--max-workers", TARGET_MAX_WORKERS)
    # Steady state: a first run fills the cache (the workload starts against a cold one and
    # its first seconds are Postgres-bound), then the measured run starts warm.
    workload(QUERY_EVENTS, TARGET_RATE, TARGET_WARMUP_SECS, mw)
    log(f"targets: {TARGET_WARMUP_SECS} s warm-up run done")
    q = workload(QUERY_EVENTS, TARGET_RATE, TARGET_SECS, mw)
    log(f"targets: {TARGET_RATE} q/s for {TARGET_SECS} s done")
    if q:
        rows.append({
            "target": f"{TARGET_RATE} queries/s for {TARGET_SECS} s, within 1%, none skipped",
            "measured": f"{q['queries_s']:.0f} q/s ({100 * q['queries_s'] / TARGET_RATE:.2f}%), "
                        f"{q['skipped']} skipped",
            "met": held(q["queries_s"], TARGET_RATE, q["skipped"])})
        rows.append({
            "target": "... with query p99 under 2 ms",
            "measured": f"p50 {q['q_p50_ms']:.3f} ms, p99 {q['q_p99_ms']:.3f} ms, "
                        f"p99.9 {q['q_p999_ms']:.3f} ms; pacer lateness p99 "
                        f"{f(q['pacer_p99_ms'], '.3f')} ms, max {f(q['pacer_max_ms'], '.3f')} ms; "
                        f"client CPU {q['cpu_pct']:.0f}%",
            "met": q["q_p99_ms"] < 2.0})
    e = workload(TARGET_RATE, EVENT_QUERIES, TARGET_SECS, mw)
    log(f"targets: {TARGET_RATE} ev/s for {TARGET_SECS} s done")
    if e:
        lost = e["rows_dropped"] + (0 if e["pg_rows"] == e["events"] else 1)
        rows.append({
            "target": f"{TARGET_RATE} events/s into Postgres for {TARGET_SECS} s, within 1%, "
                      "none skipped",
            "measured": f"{e['events_s']:.0f} ev/s ({100 * e['events_s'] / TARGET_RATE:.2f}%), "
                        f"{e['skipped']} skipped",
            "met": held(e["events_s"], TARGET_RATE, e["skipped"])})
        rows.append({
            "target": "... zero rows lost, writer lag under 1 s",
            "measured": f"{e['events']} events, {e['pg_rows']} rows, {e['rows_dropped']} dropped; "
                        f"max lag {f(e['max_lag_s'], '.2f')} s",
            "met": lost == 0 and e["max_lag_s"] is not None and e["max_lag_s"] < 1.0})
    u = workload(2000, 8000, TARGET_SECS)
    log("targets: ultra preset done")
    if u:
        rows.append({
            "target": f"RSS under 100 MiB at the ultra preset (2000 ev/s + 8000 q/s, {TARGET_SECS} s; "
                      "flatness over 10 min: make soak)",
            "measured": f"max RSS {u['rss_mb']:.1f} MiB",
            "met": u["rss_mb"] < 100})
    for kind in ("queries", "events"):
        for rate in ACCURACY_RATES:
            events, queries = (rate, 0) if kind == "events" else (0, rate)
            r = workload(events, queries, ACCURACY_SECS, mw if rate >= 50000 else ())
            log(f"targets: accuracy {kind} {rate}/s done")
            if not r:
                continue
            got = r["queries_s"] if kind == "queries" else r["events_s"]
            rows.append({
                "target": f"rate accuracy: {rate} {kind}/s within 1%, none skipped "
                          f"({ACCURACY_SECS} s)",
                "measured": f"{got:.1f}/s ({100 * got / rate:.2f}%), {r['skipped']} skipped",
                "met": held(got, rate, r["skipped"])})
    return rows


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------
def f(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def markdown(res):
    m = [f"# Benchmark {res['started']}", "",
         f"`{res['command']}` on {res['host']['cpus']} CPUs ({res['host']['kernel']}); "
         f"reps {REPS} (workload {WREPS}), raw {RAW_SECS} s, workload {WORK_SECS} s, "
         f"client CPUs `{CLIENT_CPUS or 'any'}`, Redis CPUs `{E.get('BENCH_REDIS_CPUS') or 'any'}`. "
         "Medians. A shared machine: treat the numbers as rough.", ""]
    if res.get("raw"):
        m += ["## Summary: bench-redis vs redis-benchmark (ratio = ours / redis-benchmark)", "",
              f"{CONNS} connections, SET:GET 1:1, {KEYS} keys, {DATA} B values.", "",
              "| pipeline | tool | server ops/s | client CPU s / Mop | p50 ms | p99 ms | max RSS MB |",
              "|---|---|---|---|---|---|---|"]
        for row in res["raw"]:
            for tool in ("ours", "redis-benchmark"):
                t = row[tool]
                m.append(f"| {row['pipeline']} | {tool} | {f(t['server_ops_s'])} | "
                         f"{f(t['cpu_s_per_mop'], '.2f')} | {f(t['p50_ms'], '.3f')} | "
                         f"{f(t['p99_ms'], '.3f')} | {f(t['rss_mb'], '.1f')} |")
            r = row["ratio"]
            m.append(f"| {row['pipeline']} | **ratio** | **{f(r['server_ops_s'], '.2f')}** | "
                     f"**{f(r['cpu_s_per_mop'], '.2f')}** | **{f(r['p50_ms'], '.2f')}** | "
                     f"**{f(r['p99_ms'], '.2f')}** | |")
        m.append("")
    if res.get("workload"):
        m += ["## Workload at fixed query rates", "",
              f"{QUERY_EVENTS} events/s alongside. The workload has no unlimited mode: the "
              "highest target stands in for it (achieved is what counts).", "",
              "| target q/s | achieved q/s | q p50 ms | q p99 ms | Redis ops/s | client CPU % | max RSS MB |",
              "|---|---|---|---|---|---|---|"]
        for r in res["workload"]:
            m.append(f"| {r['target_q_s']} | {f(r['queries_s'])} | {f(r['q_p50_ms'], '.2f')} | "
                     f"{f(r['q_p99_ms'], '.2f')} | {f(r['redis_ops_s'])} | {f(r['cpu_pct'])} | "
                     f"{f(r['rss_mb'], '.1f')} |")
        m.append("")
    if res.get("events"):
        m += ["## Event path at rising rates", "",
              f"{EVENT_QUERIES} queries/s alongside; rows lost must be 0 and the Postgres row "
              "count must equal the summary's events.", "",
              "| target ev/s | achieved ev/s | max writer lag s | rows lost | PG rows == events | "
              "Redis ops/s | client CPU % | max RSS MB | saturated |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in res["events"]:
            m.append(f"| {r['target_ev_s']} | {f(r['events_s'])} | {f(r['max_lag_s'], '.2f')} | "
                     f"{r['rows_dropped']} | {'yes' if r['pg_matches'] else 'NO'} | "
                     f"{f(r['redis_ops_s'])} | {f(r['cpu_pct'])} | {f(r['rss_mb'], '.1f')} | "
                     f"{'yes' if r['saturated'] else 'no'} |")
        m.append("")
    if res.get("targets"):
        m += ["## Targets", "",
              f"One run each; the 100k runs with `--max-workers {TARGET_MAX_WORKERS}`; the "
              f"{TARGET_RATE} q/s run follows a {TARGET_WARMUP_SECS} s run at the same rate that "
              "warms the cache (steady state).", "",
              "| target | measured | met |", "|---|---|---|"]
        for r in res["targets"]:
            m.append(f"| {r['target']} | {r['measured']} | {'yes' if r['met'] else '**no**'} |")
        m.append("")
    return "\n".join(m) + "\n"


def write_results(base, res, render):
    """Writes `res` to base.json and its markdown (`render(res)`) to base.md, and prints it."""
    os.makedirs(os.path.dirname(base), exist_ok=True)
    with open(base + ".json", "w") as fh:
        json.dump(res, fh, indent=1, default=str)
    md = render(res)
    with open(base + ".md", "w") as fh:
        fh.write(md)
    print(md)
    log(f"wrote {base}.md and {base}.json")


def main():
    outdir = sys.argv[1]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    res = {"started": started, "command": E.get("BENCH_COMMAND", "bench/run.sh"),
           "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
           "settings": {k: v for k, v in E.items() if k.startswith("BENCH_")}}
    if "raw" in STEPS:
        res["raw"] = step_raw()
    if "workload" in STEPS:
        res["workload"] = step_workload()
    if "events" in STEPS:
        res["events"] = step_events()
    if "targets" in STEPS:
        res["targets"] = step_targets()
    write_results(os.path.join(outdir, started + ("-quick" if QUICK else "")), res, markdown)
    lost = [r for r in res.get("events", []) if r["rows_dropped"] or not r["pg_matches"]]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""make soak: the ultra preset for SOAK_SECONDS with a Redis restart and a PostgreSQL restart
in the middle; RSS sampled from /proc, drift and panics checked, verify at the end.

Run through bench/soak.sh (it builds the binary and checks the tools). Everything it starts
lives in .local/soak/ and is stopped on exit: a redis-server with AOF on a free port, a
PostgreSQL cluster (.ci/services.sh with ANALYTICS_LOCAL_DIR) on a free port, and the app.

Writes bench/results/soak-<UTC time>.md and .json; exit 0 when every check passes, 1 when
one fails, 2 on setup errors. Settings: see the header of bench/soak.sh.
"""

import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, ".local", "soak")
RESULTS = os.path.join(ROOT, "bench", "results")


def env_num(name, default, kind=int):
    v = os.environ.get(name, "").strip()
    return kind(v) if v else default


SOAK_SECONDS = env_num("SOAK_SECONDS", 600)
SAMPLE_SECONDS = env_num("SOAK_SAMPLE_SECONDS", 10)
EVENTS = env_num("EVENTS_PER_SECOND", 2000)
QUERIES = env_num("QUERIES_PER_SECOND", 8000)
REDIS_DOWN = env_num("SOAK_REDIS_DOWN_SECONDS", 5)
PG_DOWN = env_num("SOAK_PG_DOWN_SECONDS", 5)
DRIFT_LIMIT = env_num("SOAK_RSS_DRIFT_LIMIT", 5.0, float)
APP_BIN = os.environ.get("APP_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "analytics-demo"
)
# Restarts at a third and two thirds of the run.
REDIS_RESTART_AT = env_num("SOAK_REDIS_RESTART_AT", SOAK_SECONDS / 3, float)
PG_RESTART_AT = env_num("SOAK_PG_RESTART_AT", 2 * SOAK_SECONDS / 3, float)
# Drift windows: the baseline is the second minute (the first holds the warm-up: caches fill,
# histograms and allocator arenas grow), the final one the last minute. Runs under 4 minutes
# (smoke runs) report it on windows of SOAK_SECONDS/4 but do not judge it: their windows
# straddle the restarts.
W = min(60.0, SOAK_SECONDS / 4)
DRIFT_JUDGED = SOAK_SECONDS >= 240


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"ERROR: {msg}")
    sys.exit(2)


LIB = os.path.join(ROOT, ".ci", "lib.sh")


def free_port():
    """A free port in 20000-31999 (below the ephemeral range), from .ci/lib.sh."""
    r = subprocess.run(["bash", LIB, "free_port"], capture_output=True, text=True, check=False)
    if r.returncode != 0 or not r.stdout.strip().isdigit():
        die(f"no free port: {r.stderr.strip()}")
    return int(r.stdout)


def run(cmd, env=None, check=True, capture=True):
    r = subprocess.run(
        cmd, env=env, stdin=subprocess.DEVNULL, capture_output=capture, text=True, check=False
    )
    if check and r.returncode != 0:
        die(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


# ---------------------------------------------------------------------------------------------
# The servers
# ---------------------------------------------------------------------------------------------


class Redis:
    """redis-server with AOF (appendfsync everysec), so a clean SHUTDOWN keeps every write."""

    def __init__(self, port):
        self.port = port
        self.dir = os.path.join(WORK, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None

    def start(self):
        # .ci/lib.sh's redis-server command line (bash execs it: the same process), with AOF.
        self.proc = subprocess.Popen(
            ["bash", LIB, "redis_exec", self.dir, str(self.port),
             "--appendonly", "yes", "--appendfsync", "everysec"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.cli("PING") == "PONG":
                return
            if self.proc.poll() is not None:
                die(f"redis-server exited; see {self.dir}/redis.log")
            time.sleep(0.1)
        die("redis-server did not answer PING")

    def cli(self, *args):
        r = run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args], check=False)
        return r.stdout.strip()

    def shutdown(self):
        """SHUTDOWN: the AOF is flushed and fsynced before the process exits."""
        self.cli("SHUTDOWN")
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            die("redis-server did not exit after SHUTDOWN")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"


class Postgres:
    """A cluster of its own in .local/soak/pg, managed by .ci/services.sh."""

    def __init__(self, port):
        self.port = port
        self.env = dict(os.environ, ANALYTICS_LOCAL_DIR=WORK, SERVICES_PG_PORT=str(port))

    def start(self):
        out = run(["bash", os.path.join(ROOT, ".ci", "services.sh"), "start-postgres"], env=self.env)
        m = re.search(r"DATABASE_URL=(\S+)", out.stdout)
        if not m or f":{self.port}/" not in m.group(1):
            die(f"postgres did not start on port {self.port}: {out.stdout}{out.stderr}")

    def stop(self):
        run(["bash", os.path.join(ROOT, ".ci", "services.sh"), "stop-postgres"], env=self.env)

    def psql(self, sql, db="analytics"):
        return run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
                    f"postgres://postgres@127.0.0.1:{self.port}/{db}", "-c", sql]).stdout.strip()

    @property
    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/analytics"


# ---------------------------------------------------------------------------------------------
# The app and what it exports
# ---------------------------------------------------------------------------------------------


def http_get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except Exception as e:  # noqa: BLE001 - any failure is "no answer"
        return 0, str(e)


SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def metric_sums(text):
    """name -> list of (labels dict, value)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def total(ms, name, **want):
    return sum(v for labels, v in ms.get(name, []) if all(labels.get(k) == w for k, w in want.items()))


def by_label(ms, name, label):
    out = {}
    for labels, v in ms.get(name, []):
        out[labels.get(label, "")] = out.get(labels.get(label, ""), 0.0) + v
    return out


class App:
    def __init__(self, redis, pg):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(WORK, "app.log")
        env = {k: v for k, v in os.environ.items()}
        env.update(
            EVENTS_PER_SECOND=str(EVENTS), QUERIES_PER_SECOND=str(QUERIES),
            REDIS_URL=redis.url, DATABASE_URL=pg.url, BIND_ADDRESS=f"127.0.0.1:{self.port}",
            LOG_FORMAT="json",
        )
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen([APP_BIN], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log_file, stderr=subprocess.STDOUT)
        self.started = time.time()

    def metrics(self):
        status, body = http_get(self.url + "/metrics")
        return metric_sums(body) if status == 200 else None

    def health(self):
        return http_get(self.url + "/health", timeout=2)[0]

    def alive(self):
        return self.proc.poll() is None

    def rss_and_cpu(self):
        """(VmRSS bytes, utime+stime seconds) from /proc."""
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            return rss, (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, StopIteration, IndexError, ValueError):
            return 0, 0.0

    def stop(self, timeout=120):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS: RSS and CPU from /proc, achieved rates, writer queue, /health."""

    def __init__(self, app):
        super().__init__(daemon=True)
        self.app = app
        self.samples = []
        self.stopped = threading.Event()

    def run(self):
        prev = None
        next_at = self.app.started
        while not self.stopped.is_set():
            next_at += SAMPLE_SECONDS
            self.stopped.wait(max(0.0, next_at - time.time()))
            if self.stopped.is_set() or not self.app.alive():
                break
            now = time.time()
            rss, cpu = self.app.rss_and_cpu()
            ms = self.app.metrics() or {}
            counts = (total(ms, "analytics_events_total"), total(ms, "analytics_queries_total"))
            s = {
                "t": round(now - self.app.started, 1),
                "rss_mib": round(rss / 2**20, 2),
                "health": self.app.health(),
                "writer_queue": total(ms, "analytics_db_writer_queue_depth"),
                "redis_connected": total(ms, "analytics_redis_connections", state="connected"),
            }
            if prev:
                dt = now - prev[0]
                s["cpu_pct"] = round(100 * (cpu - prev[1]) / dt, 1)
                s["events_per_s"] = round((counts[0] - prev[2][0]) / dt, 1)
                s["queries_per_s"] = round((counts[1] - prev[2][1]) / dt, 1)
            prev = (now, cpu, counts)
            self.samples.append(s)


def snapshot(app):
    ms = app.metrics() or {}
    return {
        "redis_errors": by_label(ms, "analytics_redis_errors_total", "kind"),
        "events": by_label(ms, "analytics_events_total", "outcome"),
        "query_errors": total(ms, "analytics_queries_total", cache="error"),
        "skipped": by_label(ms, "analytics_skipped_operations_total", "reason"),
        "db_write_errors": total(ms, "analytics_db_write_errors_total"),
        "rows_written": total(ms, "analytics_db_rows_written_total"),
        "writer_queue": total(ms, "analytics_db_writer_queue_depth"),
    }


def grown(before, after):
    """What grew between two snapshots (dict values compared key by key)."""
    out = {}
    for k, v in after.items():
        if isinstance(v, dict):
            d = {kk: round(vv - before[k].get(kk, 0.0)) for kk, vv in v.items()
                 if vv - before[k].get(kk, 0.0) > 0}
            out[k] = d
        elif k not in ("writer_queue",):
            out[k] = round(v - before[k])
    return out


def wait_for(cond, timeout, step=0.05):
    """Seconds until COND() held (None when it never did within TIMEOUT)."""
    start = time.time()
    while time.time() - start < timeout:
        if cond():
            return round(time.time() - start, 3)
        time.sleep(step)
    return None


def restart_redis(app, redis):
    log(f"restarting redis (SHUTDOWN, {REDIS_DOWN} s down, start with the AOF)")
    before = snapshot(app)
    redis.shutdown()
    down_at = time.time()
    saw_503 = wait_for(lambda: app.health() == 503, 10) is not None
    time.sleep(max(0.0, REDIS_DOWN - (time.time() - down_at)))
    redis.start()
    back = time.time()
    acked = before_acked = (snapshot(app)["events"]).get("acked", 0.0)

    def new_ack():
        nonlocal acked
        acked = snapshot(app)["events"].get("acked", 0.0)
        return acked > before_acked

    first_ack = wait_for(new_ack, 60)
    healthy = wait_for(lambda: app.health() == 200, 60)
    time.sleep(5)
    r = {
        "down_seconds": round(back - down_at, 2),
        "health_503_seen": saw_503,
        "first_acked_event_after_s": first_ack,
        "health_200_after_s": healthy,
        "costs": grown(before, snapshot(app)),
    }
    log(f"redis back: {r}")
    return r


def restart_postgres(app, pg):
    log(f"restarting postgres (fast stop, {PG_DOWN} s down)")
    before = snapshot(app)
    pg.stop()
    down_at = time.time()
    saw_503 = wait_for(lambda: app.health() == 503, 10) is not None
    max_queue = 0.0
    while time.time() - down_at < PG_DOWN:
        max_queue = max(max_queue, snapshot(app)["writer_queue"])
        time.sleep(0.5)
    pg.start()
    back = time.time()
    written = snapshot(app)["rows_written"]
    first_row = wait_for(lambda: snapshot(app)["rows_written"] > written, 60)
    drained = wait_for(lambda: snapshot(app)["writer_queue"] < 1000, 120)
    healthy = wait_for(lambda: app.health() == 200, 60)
    time.sleep(5)
    r = {
        "down_seconds": round(back - down_at, 2),
        "health_503_seen": saw_503,
        "writer_queue_max": max_queue,
        "first_row_written_after_s": first_row,
        "backlog_drained_after_s": drained,
        "health_200_after_s": healthy,
        "costs": grown(before, snapshot(app)),
    }
    log(f"postgres back: {r}")
    return r


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def summary_from_log(text):
    for line in reversed(text.splitlines()):
        if '"message":"summary"' in line:
            try:
                return json.loads(json.loads(line)["summary"])
            except (ValueError, KeyError):
                return None
    return None


def window_median(samples, lo, hi):
    vals = [s["rss_mib"] for s in samples if lo <= s["t"] <= hi and s["rss_mib"] > 0]
    return (round(statistics.median(vals), 2), len(vals)) if vals else (None, 0)


def drift_pct(a, b):
    return round(100 * (b - a) / a, 2) if a and b else None


def main():
    if not os.access(APP_BIN, os.X_OK):
        die(f"{APP_BIN} not found (build it, or set APP_BIN)")
    shutil.rmtree(os.path.join(WORK, "redis"), ignore_errors=True)
    os.makedirs(WORK, exist_ok=True)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    redis = Redis(free_port())
    pg = Postgres(free_port())
    app = None
    try:
        redis.start()
        pg.start()
        pg.psql("DROP DATABASE IF EXISTS analytics WITH (FORCE)", db="postgres")
        pg.psql("CREATE DATABASE analytics", db="postgres")
        log(f"redis {redis.url} (AOF), postgres {pg.url}; app: {EVENTS} events/s, {QUERIES} "
            f"queries/s for {SOAK_SECONDS} s; redis restart at {REDIS_RESTART_AT:.0f} s, "
            f"postgres restart at {PG_RESTART_AT:.0f} s")
        app = App(redis, pg)
        if wait_for(lambda: app.health() == 200 or not app.alive(), 120, 0.2) is None \
                or not app.alive():
            die(f"the app did not become healthy:\n{app.log()[-3000:]}")
        sampler = Sampler(app)
        sampler.start()
        events = []
        restarts = {}
        for at, name, action in sorted([
            (REDIS_RESTART_AT, "redis", lambda: restart_redis(app, redis)),
            (PG_RESTART_AT, "postgres", lambda: restart_postgres(app, pg)),
        ], key=lambda x: x[0]):
            time.sleep(max(0.0, app.started + at - time.time()))
            t = round(time.time() - app.started, 1)
            restarts[name] = dict(at_s=t, **action())
            events.append((t, name))
        end = app.started + SOAK_SECONDS
        while time.time() < end and app.alive():
            time.sleep(min(1.0, max(0.0, end - time.time())))
        alive_at_end = app.alive()
        sampler.stopped.set()
        sampler.join()
        code = app.stop()
        log(f"app exited with {code}")
        text = app.log()
        summary = summary_from_log(text)
        panics = text.count("panicked")
        v = run([APP_BIN, "verify", "--redis-url", redis.url, "--database-url", pg.url, "--json"],
                check=False)
        try:
            verdict = json.loads(v.stdout)
        except ValueError:
            verdict = None
        rows = pg.psql("SELECT count(*) FROM events")
    finally:
        if app:
            app.stop(timeout=30)
        redis.kill()
        pg.stop()

    samples = sampler.samples
    base, n_base = window_median(samples, W, 2 * W)
    last, n_last = window_median(samples, SOAK_SECONDS - W, SOAK_SECONDS)
    drift = drift_pct(base, last)
    # Also: from the window that starts W after the last restart (its one-time cost paid)
    # to the end, which tells a step caused by the restarts from a steady climb.
    settled_from = max(REDIS_RESTART_AT, PG_RESTART_AT) + W
    settled, n_settled = (None, 0)
    if settled_from + W <= SOAK_SECONDS - W:
        settled, n_settled = window_median(samples, settled_from, settled_from + W)
    checks = {
        "ran to the end": alive_at_end,
        "exit code 0": code == 0,
        "no panics": panics == 0,
        # Growth is what a leak looks like; memory given back (negative drift) passes.
        f"RSS drift under {DRIFT_LIMIT} %": (drift is not None and drift < DRIFT_LIMIT)
        if DRIFT_JUDGED else None,
        "verify clean (exit 0)": v.returncode == 0 and bool(verdict and verdict.get("clean")),
        "one row per event, none dropped": bool(summary) and str(summary.get("events")) == rows
        and summary.get("db_rows_dropped") == 0,
        "recovered from both restarts": all(
            r.get("health_200_after_s") is not None for r in restarts.values()),
    }
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "git_commit": run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False).stdout.strip(),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "redis_version": run(["redis-server", "--version"], check=False).stdout.split()[2],
        "settings": {
            "soak_seconds": SOAK_SECONDS, "events_per_second": EVENTS, "queries_per_second": QUERIES,
            "sample_seconds": SAMPLE_SECONDS, "redis_down_seconds": REDIS_DOWN,
            "postgres_down_seconds": PG_DOWN, "drift_window_seconds": W,
            "drift_limit_pct": DRIFT_LIMIT,
            "redis_persistence": "appendonly yes, appendfsync everysec; restarted by SHUTDOWN",
        },
        "rss": {"baseline_median_mib": base, "baseline_samples": n_base, "final_median_mib": last,
                "final_samples": n_last, "drift_pct": drift,
                "after_restarts_median_mib": settled, "after_restarts_samples": n_settled,
                "after_restarts_window_start_s": settled_from,
                "drift_after_restarts_pct": drift_pct(settled, last),
                "max_mib": max((s["rss_mib"] for s in samples), default=None)},
        "panics": panics,
        "restarts": restarts,
        "verify_exit": v.returncode,
        "verify": verdict,
        "postgres_rows": int(rows) if rows.isdigit() else rows,
        "summary": summary,
        "samples": samples,
        "checks": checks,
        "passed": all(v is not False for v in checks.values()),
    }
    stamp = started_at.strftime("%Y-%m-%dT%H%M%SZ")
    os.makedirs(RESULTS, exist_ok=True)
    base_name = os.path.join(RESULTS, f"soak-{stamp}")
    with open(base_name + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(base_name + ".md", "w") as f:
        f.write(render(result))
    log(f"wrote {base_name}.md and .json: {'PASS' if result['passed'] else 'FAIL'}")
    print(render(result))
    return 0 if result["passed"] else 1


def render(r):
    s = r["settings"]
    rss = r["rss"]
    summ = r["summary"] or {}
    v = r["verify"] or {}
    lines = [
        f"# Soak {r['started_at']} ({'PASS' if r['passed'] else 'FAIL'})",
        "",
        f"`{os.environ.get('SOAK_COMMAND', 'make soak')}` at commit `{r['git_commit']}`: "
        f"{s['events_per_second']} events/s + {s['queries_per_second']} queries/s for "
        f"{s['soak_seconds']} s on {r['host']['cpus']} CPUs (shared machine, noisy), redis-server "
        f"{r['redis_version']} ({s['redis_persistence']}) and PostgreSQL 15 of their own. Redis "
        f"shut down for {s['redis_down_seconds']} s at {r['restarts'].get('redis', {}).get('at_s')} s, "
        f"PostgreSQL stopped for {s['postgres_down_seconds']} s at "
        f"{r['restarts'].get('postgres', {}).get('at_s')} s.",
        "",
        "## Checks",
        "",
        "| check | result |",
        "|---|---|",
    ]
    shown = {True: "pass", False: "**FAIL**", None: "not judged (run under 4 minutes)"}
    lines += [f"| {k} | {shown[ok]} |" for k, ok in r["checks"].items()]
    lines += [
        "",
        "## Memory",
        "",
        f"RSS drift = (median RSS of the last {s['drift_window_seconds']:.0f} s - median of the "
        f"second {s['drift_window_seconds']:.0f}-second window) / the latter; the first window is "
        f"warm-up; growth fails the check, memory given back does not. Baseline {rss['baseline_median_mib']} MiB ({rss['baseline_samples']} samples), "
        f"final {rss['final_median_mib']} MiB ({rss['final_samples']} samples): "
        f"**drift {rss['drift_pct']} %** (limit {s['drift_limit_pct']} %); max {rss['max_mib']} MiB.",
        "",
        f"Not a check, to tell a step from a climb: from the window starting "
        f"{rss['after_restarts_window_start_s']:.0f} s (one window after the last restart) "
        f"to the last one: {rss['after_restarts_median_mib']} MiB -> {rss['final_median_mib']} MiB, "
        f"drift {rss['drift_after_restarts_pct']} % (n/a when the run is too short).",
        "",
        "## Restarts",
        "",
        "| | at (s) | down (s) | /health 503 seen | recovery | errors and costs during the restart window |",
        "|---|---|---|---|---|---|",
    ]
    for name, x in r["restarts"].items():
        if name == "redis":
            rec = (f"first acked event {x['first_acked_event_after_s']} s, /health 200 "
                   f"{x['health_200_after_s']} s")
        else:
            rec = (f"first row {x['first_row_written_after_s']} s, backlog drained "
                   f"{x['backlog_drained_after_s']} s, /health 200 {x['health_200_after_s']} s "
                   f"(queue max {x['writer_queue_max']:.0f} rows)")
        lines.append(f"| {name} | {x['at_s']} | {x['down_seconds']} | {x['health_503_seen']} | "
                     f"{rec} | `{json.dumps(x['costs'], sort_keys=True)}` |")
    lines += [
        "",
        "## Run",
        "",
        f"- panics in the log: {r['panics']}",
        f"- events {summ.get('events')} ({json.dumps(summ.get('events_by_outcome'))}), queries "
        f"{summ.get('queries')}, Postgres rows {r['postgres_rows']}, rows dropped "
        f"{summ.get('db_rows_dropped')}, errors {json.dumps(summ.get('errors'))}, skipped "
        f"{json.dumps(summ.get('skipped'))}",
        f"- verify (exit {r['verify_exit']}): clean {v.get('clean')}, keys checked "
        f"{v.get('keys_checked')}, lost acknowledged {v.get('lost_acknowledged_increments')}, "
        f"phantom {v.get('phantom_increments')}, unknown budget {v.get('unknown_budget')} "
        f"({v.get('unknown_applied')} landed), RESP{v.get('redis_protocol')}",
        "",
        "## Samples (every %s s)" % s["sample_seconds"],
        "",
        "| t (s) | RSS MiB | CPU % | events/s | queries/s | writer queue | redis conns | /health |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r["samples"]:
        lines.append(f"| {x['t']} | {x['rss_mib']} | {x.get('cpu_pct', '')} | "
                     f"{x.get('events_per_s', '')} | {x.get('queries_per_s', '')} | "
                     f"{x['writer_queue']:.0f} | {x['redis_connected']:.0f} | {x['health']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

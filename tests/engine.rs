//! End-to-end tests of the workload engine: the real binary against private Redis and
//! PostgreSQL servers (tests/common). Each test owns its servers, so tests run in parallel.
//!
//! Nothing here asserts on speed: the machine may be small and busy. Rates only need to be
//! high enough to produce some data; every wait has a generous timeout.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    metric_sum, run_binary, spawn_running, summary_from_log, wait_until, App, PgServer, RedisServer,
};
use serde_json::Value;

/// How long an app gets to become healthy (a cold debug binary on a busy machine).
const HEALTHY: Duration = Duration::from_secs(60);

/// Arguments for a run against REDIS_URL and PG_URL, plus EXTRA.
fn args(redis_url: &str, pg_url: &str, extra: &[&str]) -> Vec<String> {
    common::app_args(redis_url, pg_url, &["--seed", "7"], extra)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A single integer from SQL.
fn int(pg: &PgServer, sql: &str) -> i64 {
    let out = pg.psql(sql);
    out.parse()
        .unwrap_or_else(|e| panic!("{sql}: not an integer: {out:?} ({e})"))
}

/// Like `int`, but 0 while the query fails (e.g. the table does not exist yet).
fn try_int(pg: &PgServer, sql: &str) -> i64 {
    pg.try_psql(sql)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn u(v: &Value, path: &[&str]) -> u64 {
    at(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not an unsigned integer in {v}"))
}

/// The number at PATH in V (panics with V when it is not one).
fn num(v: &Value, path: &[&str]) -> f64 {
    at(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |cur, p| &cur[*p])
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One counter key's ground truth from the `events` table.
struct Truth {
    key: String,
    acked: u64,
    unknown: u64,
}

/// Every counter key with its acked and unknown counts, computed from `events` (not from the
/// rollups `verify` reads).
fn truths(pg: &PgServer) -> Vec<Truth> {
    let out = pg.psql(
        "SELECT org_id, bucket, event_type, count(*) FILTER (WHERE outcome = 0), \
         count(*) FILTER (WHERE outcome = 2) FROM events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 5, "bad row {l:?}");
            let ty: usize = f[2].parse().unwrap();
            Truth {
                key: format!("a:{{{}}}:ev:{}:{}", f[0], common::TYPE_NAMES[ty], f[1]),
                acked: f[3].parse().unwrap(),
                unknown: f[4].parse().unwrap(),
            }
        })
        .collect()
}

/// Values of KEYS in one `redis-cli MGET` call (None for a missing key).
fn mget(redis: &RedisServer, keys: &[&str]) -> Vec<Option<u64>> {
    if keys.is_empty() {
        return Vec::new();
    }
    let mut a = vec!["--no-raw", "MGET"];
    a.extend_from_slice(keys);
    let out = redis.cli(&a);
    // --no-raw: `1) "5"` or `1) (nil)`, one per line (a single key has no `1) ` prefix in
    // some versions: accept both).
    let values: Vec<Option<u64>> = out
        .lines()
        .map(|l| {
            let v = l.split_once(") ").map_or(l, |(_, v)| v).trim();
            if v == "(nil)" {
                None
            } else {
                Some(
                    v.trim_matches('"')
                        .parse()
                        .unwrap_or_else(|e| panic!("MGET value {v:?}: {e}")),
                )
            }
        })
        .collect();
    assert_eq!(values.len(), keys.len(), "MGET answered:\n{out}");
    values
}

/// `analytics-demo verify --json` against REDIS and PG: exit code and verdict.
fn verify(redis: &RedisServer, pg: &PgServer) -> (i32, Value) {
    common::verify_json(&redis.url(), &pg.url())
}

/// Wait for the app to exit within TIMEOUT and return its exit code and summary.
fn finish(app: &mut App, timeout: Duration) -> (i32, Value) {
    let status = app.wait(timeout).unwrap_or_else(|| {
        panic!(
            "analytics-demo did not exit within {timeout:?}:\n{}",
            app.log()
        )
    });
    let log = app.log();
    assert!(!log.contains("panicked"), "the app panicked:\n{log}");
    let code = status.code().unwrap_or(-1);
    assert_eq!(code, 0, "exit status {status}:\n{log}");
    assert!(
        log.contains("=== analytics-demo summary"),
        "no text summary on stdout:\n{log}"
    );
    let summary = summary_from_log(&log).unwrap_or_else(|| panic!("no summary line:\n{log}"));
    (code, summary)
}

fn metrics(app: &App) -> String {
    let (status, body) = app.get("/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

/// Events of the app's /metrics with OUTCOME (summed over types and shards).
fn events_with_outcome(app: &App, outcome: &str) -> f64 {
    metric_sum(
        &metrics(app),
        "analytics_events_total",
        &[("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

fn health(app: &App) -> (u16, Value) {
    let (status, body) = app.get("/health");
    let v = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, v)
}

/// The summary and the rows agree, every row is unique, nothing was dropped, verify is clean.
fn assert_reconciled(redis: &RedisServer, pg: &PgServer, summary: &Value) {
    let rows = int(pg, "SELECT count(*) FROM events") as u64;
    let events = u(summary, &["events"]);
    assert!(events > 0, "no events generated: {summary}");
    assert_eq!(events, rows, "summary events vs Postgres rows: {summary}");
    assert_eq!(
        u(summary, &["db_rows_written"]),
        rows,
        "db_rows_written: {summary}"
    );
    assert_eq!(
        u(summary, &["db_rows_dropped"]),
        0,
        "rows dropped: {summary}"
    );
    assert_eq!(
        int(pg, "SELECT count(DISTINCT event_id) FROM events") as u64,
        rows,
        "duplicate event ids"
    );
    let (code, v) = verify(redis, pg);
    assert_eq!(code, 0, "verify: {v}");
    assert_eq!(v["clean"], Value::Bool(true), "verify: {v}");
    assert_eq!(u(&v, &["lost_acknowledged_increments"]), 0, "verify: {v}");
    assert_eq!(u(&v, &["phantom_increments"]), 0, "verify: {v}");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn should_run_for_duration_and_reconcile() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = args(
        &redis.url(),
        &pg.url(),
        &[
            "--duration",
            "6",
            "--events-per-second",
            "300",
            "--queries-per-second",
            "600",
            "--organizations",
            "40",
            "--users-per-org",
            "50",
        ],
    );
    let mut app = spawn_running(&refs(&a), &[]);
    let (_, summary) = finish(&mut app, Duration::from_secs(90));

    // Summary against the table: exactly one row per event, all written.
    let rows = int(&pg, "SELECT count(*) FROM events") as u64;
    let events = u(&summary, &["events"]);
    assert!(events > 0, "no events: {summary}");
    assert!(u(&summary, &["queries"]) > 0, "no queries: {summary}");
    assert_eq!(events, rows, "summary events vs rows: {summary}");
    assert_eq!(u(&summary, &["db_rows_written"]), rows, "{summary}");
    assert_eq!(u(&summary, &["db_rows_dropped"]), 0, "{summary}");
    assert_eq!(
        int(&pg, "SELECT count(DISTINCT event_id) FROM events") as u64,
        rows,
        "duplicate event ids"
    );
    assert_eq!(
        int(&pg, "SELECT count(DISTINCT run_id) FROM events"),
        1,
        "one run"
    );

    // No faults: every event acknowledged, in the summary and in the table.
    assert_eq!(
        u(&summary, &["events_by_outcome", "acked"]),
        events,
        "{summary}"
    );
    assert_eq!(
        u(&summary, &["events_by_outcome", "failed"]),
        0,
        "{summary}"
    );
    assert_eq!(
        u(&summary, &["events_by_outcome", "unknown"]),
        0,
        "{summary}"
    );
    assert_eq!(
        int(&pg, "SELECT count(*) FROM events WHERE outcome <> 0"),
        0
    );

    // Per-type counts of the summary match the table.
    let by_type: BTreeMap<usize, u64> = pg
        .psql("SELECT event_type, count(*) FROM events GROUP BY 1")
        .lines()
        .map(|l| {
            let (t, n) = l.split_once('|').unwrap();
            (t.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    for (code, name) in common::TYPE_NAMES.iter().enumerate() {
        assert_eq!(
            u(&summary, &["events_by_type", name]),
            by_type.get(&code).copied().unwrap_or(0),
            "{name}: {summary}"
        );
    }
    // Shares are plausible (60/28/10/1.5/0.5 %): page_view leads, then click.
    let share = |code: usize| by_type.get(&code).copied().unwrap_or(0) as f64 / rows as f64;
    assert!(
        (0..5).all(|c| c == 0 || by_type.get(&0) > by_type.get(&c)),
        "page_view is not the most frequent type: {by_type:?}"
    );
    assert!(
        by_type.get(&1) > by_type.get(&2),
        "click should outnumber conversion: {by_type:?}"
    );
    if rows >= 500 {
        assert!(
            (0.45..0.75).contains(&share(0)),
            "page_view share {:.3}: {by_type:?}",
            share(0)
        );
        assert!(
            (0.15..0.40).contains(&share(1)),
            "click share {:.3}: {by_type:?}",
            share(1)
        );
    }

    // Independently of `verify`: every counter in Redis equals its acked count exactly.
    let truth = truths(&pg);
    assert!(!truth.is_empty());
    let keys: Vec<&str> = truth.iter().map(|t| t.key.as_str()).collect();
    let values = mget(&redis, &keys);
    let wrong: Vec<String> = truth
        .iter()
        .zip(&values)
        .filter(|(t, v)| **v != Some(t.acked))
        .map(|(t, v)| format!("{} acked {} redis {v:?}", t.key, t.acked))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} counters differ:\n{}",
        wrong.len(),
        truth.len(),
        wrong.join("\n")
    );
    // And Redis holds no counter that Postgres does not know.
    let in_redis = redis.cli(&["--scan", "--pattern", "a:{*}:ev:*"]);
    let in_redis = in_redis.lines().filter(|l| !l.is_empty()).count();
    assert_eq!(in_redis, truth.len(), "counter keys in Redis vs Postgres");

    // The rollups agree with the events.
    let mismatches = int(
        &pg,
        "SELECT count(*) FROM ( \
           SELECT org_id, bucket, event_type, count(*) AS events, \
                  count(*) FILTER (WHERE outcome = 0) AS acked, \
                  count(*) FILTER (WHERE outcome = 2) AS unknown \
           FROM events GROUP BY 1, 2, 3) e \
         FULL JOIN event_rollups r USING (org_id, bucket, event_type) \
         WHERE r.events IS DISTINCT FROM e.events OR r.acked IS DISTINCT FROM e.acked \
            OR r.unknown IS DISTINCT FROM e.unknown",
    );
    assert_eq!(mismatches, 0, "event_rollups disagree with events");
    assert_eq!(
        int(&pg, "SELECT coalesce(sum(rows), 0) FROM writer_batches") as u64,
        rows,
        "writer_batches rows vs events"
    );

    // verify agrees.
    let (code, v) = verify(&redis, &pg);
    assert_eq!(code, 0, "verify: {v}");
    assert_eq!(v["clean"], Value::Bool(true), "{v}");
    assert_eq!(u(&v, &["keys_checked"]), truth.len() as u64, "{v}");
    assert_eq!(u(&v, &["keys_matching"]), truth.len() as u64, "{v}");
    assert_eq!(u(&v, &["lost_acknowledged_increments"]), 0, "{v}");
    assert_eq!(u(&v, &["phantom_increments"]), 0, "{v}");
    assert_eq!(u(&v, &["missing_keys"]), 0, "{v}");
    assert_eq!(u(&v, &["unknown_budget"]), 0, "{v}");
    assert_eq!(u(&v, &["acked_total"]), rows, "{v}");
    assert_eq!(u(&v, &["stray_keys"]), 0, "{v}");
}

/// The app's connections as Redis lists them (`CLIENT LIST`, without redis-cli's own).
fn app_client_lines(redis: &RedisServer) -> Vec<String> {
    redis
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .map(str::to_string)
        .collect()
}

/// The whole workload in RESP3 (negotiated by HELLO 3) and, with `--redis-protocol 2`, in
/// RESP2: Redis sees every connection in that protocol, /health reports it, and the run
/// reconciles with `verify` clean (read in both protocols).
#[test]
fn should_run_clean_in_resp3_and_in_resp2() {
    for (flag, resp) in [("auto", "3"), ("3", "3"), ("2", "2")] {
        let redis = RedisServer::start();
        let pg = PgServer::start();
        let a = args(
            &redis.url(),
            &pg.url(),
            &[
                "--redis-protocol",
                flag,
                "--events-per-second",
                "300",
                "--queries-per-second",
                "600",
                "--organizations",
                "40",
                "--users-per-org",
                "50",
                "--redis-pool-size",
                "8",
            ],
        );
        let mut app = spawn_running(&refs(&a), &[]);
        std::thread::sleep(Duration::from_secs(3));
        let clients = app_client_lines(&redis);
        // 8 pool connections and the health check's.
        assert!(clients.len() >= 9, "--redis-protocol {flag}: {clients:?}");
        let want = format!("resp={resp}");
        assert!(
            clients
                .iter()
                .all(|l| l.split_whitespace().any(|field| field == want)),
            "--redis-protocol {flag}: not every connection speaks RESP{resp}:\n{}",
            clients.join("\n")
        );
        let (status, h) = health(&app);
        assert_eq!(status, 200, "{h}");
        assert_eq!(h["redis"]["protocol"], resp.parse::<u64>().unwrap(), "{h}");
        // Every reply path ran: cache hits and misses, realtime MGETs, acked events.
        let m = metrics(&app);
        for (query_type, cache) in [
            ("dashboard", "hit"),
            ("dashboard", "miss"),
            ("realtime", "none"),
        ] {
            let n = metric_sum(
                &m,
                "analytics_queries_total",
                &[("query_type", query_type), ("cache", cache)],
            );
            assert!(
                n.unwrap_or(0.0) > 0.0,
                "--redis-protocol {flag}: no {query_type}/{cache} queries"
            );
        }
        assert_eq!(
            metric_sum(&m, "analytics_queries_total", &[("cache", "error")]).unwrap_or(0.0),
            0.0,
            "--redis-protocol {flag}: query errors"
        );
        assert_eq!(
            metric_sum(&m, "analytics_redis_errors_total", &[]).unwrap_or(0.0),
            0.0,
            "--redis-protocol {flag}: redis errors"
        );
        app.signal(libc::SIGTERM);
        let (_, summary) = finish(&mut app, Duration::from_secs(60));
        assert_eq!(
            u(&summary, &["events_by_outcome", "acked"]),
            u(&summary, &["events"]),
            "--redis-protocol {flag}: {summary}"
        );
        assert_reconciled(&redis, &pg, &summary);
        // verify reads the same counters in either protocol.
        let (c2, v2) =
            common::verify_json_with(&redis.url(), &pg.url(), &["--redis-protocol", "2"]);
        let (c3, v3) =
            common::verify_json_with(&redis.url(), &pg.url(), &["--redis-protocol", "3"]);
        assert_eq!((c2, c3), (0, 0), "{v2}\n{v3}");
        assert_eq!(
            (u(&v2, &["redis_protocol"]), u(&v3, &["redis_protocol"])),
            (2, 3)
        );
        for key in [
            "keys_checked",
            "keys_matching",
            "acked_total",
            "unique_user_keys",
            "cache_keys",
        ] {
            assert_eq!(v2[key], v3[key], "{key}: {v2}\n{v3}");
        }
        eprintln!(
            "--redis-protocol {flag}: {} events, {} queries, {} connections in RESP{resp}, verify clean ({} keys)",
            summary["events"], summary["queries"], clients.len(), v3["keys_checked"]
        );
    }
}

/// A stall of the generator itself (here: the whole process frozen with SIGSTOP) shows as
/// pacer lateness, apart from Redis latency, and in the corrected query latency of the
/// operations that were due during it.
#[test]
fn should_show_a_frozen_generator_as_pacer_lateness() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = args(
        &redis.url(),
        &pg.url(),
        &[
            "--events-per-second",
            "200",
            "--queries-per-second",
            "500",
            "--organizations",
            "20",
        ],
    );
    let mut app = spawn_running(&refs(&a), &[]);
    assert!(app.wait_healthy(HEALTHY), "not healthy:\n{}", app.log());
    std::thread::sleep(Duration::from_secs(2));
    app.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(600));
    app.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(2));

    let m = metrics(&app);
    let series = |name: &str, labels: &[(&str, &str)]| {
        metric_sum(&m, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in /metrics"))
    };
    let wakes = series("analytics_pacer_lateness_seconds_count", &[("shard", "0")]);
    let under_half_second = series(
        "analytics_pacer_lateness_seconds_bucket",
        &[("shard", "0"), ("le", "0.5")],
    );
    assert!(wakes > 1000.0, "{wakes} pacer wakes in 4 s at 700 ops/s");
    assert!(
        under_half_second < wakes,
        "no wake-up later than 0.5 s after a 0.6 s freeze ({under_half_second} of {wakes})"
    );

    app.signal(libc::SIGTERM);
    let (_, summary) = finish(&mut app, Duration::from_secs(30));
    let stall = num(&summary, &["pacer_lateness_ms", "max"]);
    assert!(stall >= 550.0, "pacer lateness max {stall} ms: {summary}");
    assert!(stall < 60_000.0, "pacer lateness max {stall} ms: {summary}");
    // The operations due during the freeze started late, and their latency says so.
    assert!(
        num(&summary, &["query_latency_ms", "max"]) >= 500.0,
        "query latency max hides the freeze: {summary}"
    );
    assert_eq!(u(&summary, &["skipped", "max_workers"]), 0, "{summary}");
}

#[test]
fn should_flush_everything_on_sigterm() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = args(
        &redis.url(),
        &pg.url(),
        &[
            "--events-per-second",
            "300",
            "--queries-per-second",
            "300",
            "--organizations",
            "30",
            "--users-per-org",
            "50",
        ],
    );
    let mut app = spawn_running(&refs(&a), &[]);
    assert!(app.wait_healthy(HEALTHY), "not healthy:\n{}", app.log());
    std::thread::sleep(Duration::from_secs(4));
    assert!(app.alive(), "exited early:\n{}", app.log());
    app.signal(libc::SIGTERM);
    let (_, summary) = finish(&mut app, Duration::from_secs(30));
    assert!(
        app.log().contains("\"message\":\"stopping"),
        "no stop log line:\n{}",
        app.log()
    );
    assert_reconciled(&redis, &pg, &summary);
    assert_eq!(
        u(&summary, &["events_by_outcome", "acked"]),
        u(&summary, &["events"]),
        "{summary}"
    );
}

#[test]
fn should_report_unhealthy_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let pg = PgServer::start();
    let a = args(
        &redis.url(),
        &pg.url(),
        &[
            "--events-per-second",
            "100",
            "--queries-per-second",
            "100",
            "--organizations",
            "20",
            "--users-per-org",
            "20",
        ],
    );
    let mut app = spawn_running(&refs(&a), &[]);
    assert!(app.wait_healthy(HEALTHY), "not healthy:\n{}", app.log());
    let (status, h) = health(&app);
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["redis"]["status"], "up", "{h}");
    assert!(
        wait_until(Duration::from_secs(30), || try_int(
            &pg,
            "SELECT count(*) FROM events WHERE outcome = 0"
        ) > 0),
        "no acked rows before the outage:\n{}",
        app.log()
    );

    // Redis goes away.
    let failed_before = events_with_outcome(&app, "failed") + events_with_outcome(&app, "unknown");
    let stopped = Instant::now();
    redis.stop();
    let mut last = (0, Value::Null);
    assert!(
        wait_until(Duration::from_secs(15), || {
            last = health(&app);
            last.0 == 503 && last.1["redis"]["status"] == "down"
        }),
        "/health did not turn 503 with redis down: {last:?}\n{}",
        app.log()
    );
    eprintln!("/health 503 after {:?}", stopped.elapsed());
    assert_eq!(last.1["postgres"]["status"], "up", "{}", last.1);
    assert_eq!(last.1["status"], "degraded", "{}", last.1);

    // The load goes on; its counter writes fail (or end unknown) and are recorded so.
    assert!(
        wait_until(Duration::from_secs(20), || {
            events_with_outcome(&app, "failed") + events_with_outcome(&app, "unknown")
                > failed_before
        }),
        "no failed/unknown events in /metrics while redis is down"
    );
    assert!(
        wait_until(Duration::from_secs(30), || int(
            &pg,
            "SELECT count(*) FROM events WHERE outcome IN (1, 2)"
        ) > 0),
        "no failed/unknown rows in Postgres while redis is down:\n{}",
        app.log()
    );
    let errors = metric_sum(&metrics(&app), "analytics_redis_errors_total", &[]).unwrap_or(0.0);
    assert!(errors > 0.0, "analytics_redis_errors_total did not grow");
    assert!(app.alive(), "the app died with redis down:\n{}", app.log());

    // Redis comes back: healthy again and acknowledged writes resume.
    redis.restart();
    let back = unix_now();
    assert!(
        wait_until(Duration::from_secs(20), || app.get("/health").0 == 200),
        "/health not 200 after redis came back: {:?}\n{}",
        app.get("/health"),
        app.log()
    );
    let acked_after =
        format!("SELECT count(*) FROM events WHERE outcome = 0 AND ts > to_timestamp({back})");
    assert!(
        wait_until(Duration::from_secs(30), || int(&pg, &acked_after) > 0),
        "no acked rows after redis came back:\n{}",
        app.log()
    );
    assert_ne!(
        redis.cli(&["--scan", "--pattern", "a:{*}:ev:*"]),
        "",
        "no counters in the restarted redis"
    );

    app.signal(libc::SIGTERM);
    let (_, summary) = finish(&mut app, Duration::from_secs(30));
    let rows = int(&pg, "SELECT count(*) FROM events") as u64;
    assert_eq!(u(&summary, &["events"]), rows, "{summary}");
    assert_eq!(u(&summary, &["db_rows_dropped"]), 0, "{summary}");
    let not_acked = u(&summary, &["events_by_outcome", "failed"])
        + u(&summary, &["events_by_outcome", "unknown"]);
    assert!(not_acked > 0, "{summary}");
    assert_eq!(
        int(&pg, "SELECT count(*) FROM events WHERE outcome IN (1, 2)") as u64,
        not_acked,
        "failed+unknown rows vs summary: {summary}"
    );
    // The restart emptied Redis: the acknowledged increments from before are gone, and
    // verify says so.
    let (code, v) = verify(&redis, &pg);
    assert_eq!(code, 1, "verify after losing redis data: {v}");
    assert!(u(&v, &["lost_acknowledged_increments"]) > 0, "{v}");
}

/// The late-Postgres scenario: the app starts while nothing listens on the Postgres port,
/// waits (503, alive), then gets going once Postgres is up.
fn start_before_postgres(redis: &RedisServer) -> (App, PgServer) {
    let mut pg = PgServer::start();
    pg.stop(); // nothing listens on pg.port until the restart below
    let a = args(
        &redis.url(),
        &pg.url(),
        &[
            "--events-per-second",
            "100",
            "--queries-per-second",
            "100",
            "--organizations",
            "20",
            "--users-per-org",
            "20",
        ],
    );
    let app = App::spawn(&refs(&a), &[]);
    // The HTTP server answers, and says Postgres is down, for a while.
    assert!(
        wait_until(Duration::from_secs(30), || app.get("/health").0 != 0),
        "no HTTP answer while postgres is down:\n{}",
        app.log()
    );
    let until = Instant::now() + Duration::from_secs(4);
    let (mut saw_down, mut saw_waiting) = (false, false);
    while Instant::now() < until {
        let (status, h) = health(&app);
        assert_eq!(status, 503, "/health without postgres: {h}");
        assert_ne!(h["postgres"]["status"], "up", "{h}");
        assert_ne!(h["load"], "running", "{h}");
        saw_down |= h["postgres"]["status"] == "down";
        saw_waiting |= h["load"] == "waiting_for_postgres";
        assert!(app.alive(), "exited without postgres:\n{}", app.log());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(saw_down, "/health never reported postgres down");
    assert!(
        saw_waiting,
        "/health never said the load waits for postgres"
    );
    // It retries, and says so (every progress interval: 1 s here).
    let waiting = waiting_lines(&app.log());
    assert!(
        waiting.len() >= 2,
        "fewer than 2 'postgres not reachable; retrying' lines in 4 s:\n{}",
        app.log()
    );
    assert_eq!(
        metric_sum(&metrics(&app), "analytics_events_total", &[]).unwrap_or(0.0),
        0.0,
        "events generated before the schema exists"
    );
    assert!(app.alive(), "exited without postgres:\n{}", app.log());

    pg.restart();
    assert!(
        app.wait_healthy(Duration::from_secs(30)),
        "not healthy after postgres came up: {:?}\n{}",
        app.get("/health"),
        app.log()
    );
    assert_eq!(health(&app).1["load"], "running");
    assert!(
        app.log().contains("postgres answers: starting the load"),
        "{}",
        app.log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || common::load_running(&app)),
        "the load did not start after postgres came up:\n{}",
        app.log()
    );
    (app, pg)
}

/// The JSON log lines saying the app waits for Postgres: (attempts, waited_seconds, has the
/// DURATION note).
fn waiting_lines(log: &str) -> Vec<(u64, u64, bool)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .or(v["message"].as_str())
                .is_some_and(|m| m.starts_with("postgres not reachable; retrying"))
        })
        .map(|v| {
            let f = if v["fields"].is_object() {
                &v["fields"]
            } else {
                &v
            };
            let msg = f["message"].as_str().unwrap_or_default();
            (
                f["attempts"].as_u64().unwrap_or(0),
                f["waited_seconds"].as_u64().unwrap_or(0),
                msg.contains("DURATION"),
            )
        })
        .collect()
}

#[test]
fn should_wait_for_postgres_at_startup() {
    let redis = RedisServer::start();
    let (mut app, pg) = start_before_postgres(&redis);
    assert!(
        wait_until(Duration::from_secs(30), || try_int(
            &pg,
            "SELECT count(*) FROM events"
        ) > 0),
        "no rows after postgres came up:\n{}",
        app.log()
    );
    app.signal(libc::SIGTERM);
    let (_, summary) = finish(&mut app, Duration::from_secs(30));
    assert_reconciled(&redis, &pg, &summary);
}

/// A `--duration` run started while Postgres is down does not sit silent: it keeps saying
/// that it waits and that its DURATION starts with the load, and once Postgres is up it runs
/// for DURATION and exits 0 with every row written.
#[test]
fn should_say_it_waits_for_postgres_in_a_duration_run() {
    let redis = RedisServer::start();
    let mut pg = PgServer::start();
    pg.stop();
    let a = args(
        &redis.url(),
        &pg.url(),
        &[
            "--duration",
            "3",
            "--events-per-second",
            "100",
            "--queries-per-second",
            "100",
            "--organizations",
            "20",
        ],
    );
    let mut app = App::spawn(&refs(&a), &[]);
    // Longer than the run's DURATION: it must still be waiting, not finished.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        app.alive(),
        "exited while postgres was down:\n{}",
        app.log()
    );
    let waiting = waiting_lines(&app.log());
    eprintln!("waiting lines in 6 s: {waiting:?}");
    assert!(
        waiting.len() >= 3,
        "not saying it waits (progress interval 1 s):\n{}",
        app.log()
    );
    assert!(waiting.iter().all(|w| w.2), "no DURATION note: {waiting:?}");
    assert!(
        waiting
            .windows(2)
            .all(|w| w[1].0 > w[0].0 && w[1].1 >= w[0].1),
        "attempts and waited seconds do not grow: {waiting:?}"
    );
    assert!(waiting.last().is_some_and(|w| w.1 >= 4), "{waiting:?}");
    let (status, h) = health(&app);
    assert_eq!(
        (status, h["load"].as_str()),
        (503, Some("waiting_for_postgres")),
        "{h}"
    );

    pg.restart();
    let (_, summary) = finish(&mut app, Duration::from_secs(60));
    assert!(u(&summary, &["events"]) > 0, "{summary}");
    assert_reconciled(&redis, &pg, &summary);
}

#[test]
fn should_detect_loss_with_verify() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = args(
        &redis.url(),
        &pg.url(),
        &[
            "--duration",
            "4",
            "--events-per-second",
            "200",
            "--queries-per-second",
            "100",
            "--organizations",
            "10",
            "--users-per-org",
            "20",
        ],
    );
    let mut app = spawn_running(&refs(&a), &[]);
    let (_, summary) = finish(&mut app, Duration::from_secs(90));
    assert!(u(&summary, &["events"]) > 0, "{summary}");
    let (code, v) = verify(&redis, &pg);
    assert_eq!(code, 0, "clean before tampering: {v}");

    let mut truth = truths(&pg);
    assert!(
        truth.len() >= 2,
        "need two counter keys, have {}",
        truth.len()
    );
    truth.sort_by_key(|t| std::cmp::Reverse(t.acked));
    let (deleted, bumped) = (&truth[0], &truth[1]);
    assert!(deleted.acked > 0 && deleted.unknown == 0 && bumped.unknown == 0);
    assert_eq!(redis.cli(&["DEL", &deleted.key]), "1");
    assert_eq!(
        redis.cli(&["INCRBY", &bumped.key, "5"]),
        (bumped.acked + 5).to_string()
    );

    let (code, v) = verify(&redis, &pg);
    assert_eq!(code, 1, "verify after tampering: {v}");
    assert_eq!(v["clean"], Value::Bool(false), "{v}");
    assert_eq!(u(&v, &["keys_checked"]), truth.len() as u64, "{v}");
    assert_eq!(u(&v, &["keys_matching"]), truth.len() as u64 - 2, "{v}");
    assert_eq!(
        u(&v, &["lost_acknowledged_increments"]),
        deleted.acked,
        "lost should be the acked count of {}: {v}",
        deleted.key
    );
    assert_eq!(u(&v, &["keys_with_loss"]), 1, "{v}");
    assert_eq!(u(&v, &["missing_keys"]), 1, "{v}");
    assert_eq!(u(&v, &["phantom_increments"]), 5, "{v}");
    assert_eq!(u(&v, &["keys_with_phantoms"]), 1, "{v}");
}

/// Runs at TARGET percent and returns the `analytics_cache_hit_ratio` readings taken 18-24 s
/// into the load (the gauge covers the last 10 s).
fn hit_ratio_readings(target: &str) -> Vec<f64> {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = args(
        &redis.url(),
        &pg.url(),
        &[
            "--cache-hit-target",
            target,
            "--queries-per-second",
            "1500",
            "--events-per-second",
            "100",
            "--organizations",
            "50",
            "--users-per-org",
            "50",
        ],
    );
    let mut app = spawn_running(&refs(&a), &[]);
    assert!(app.wait_healthy(HEALTHY), "not healthy:\n{}", app.log());
    let started = Instant::now();
    let want = target.parse::<f64>().unwrap() / 100.0;
    let m = metrics(&app);
    assert_eq!(
        metric_sum(&m, "analytics_cache_hit_target_ratio", &[]),
        Some(want),
        "target gauge"
    );
    std::thread::sleep(Duration::from_secs(18));
    let mut readings = Vec::new();
    while started.elapsed() < Duration::from_secs(24) {
        let m = metrics(&app);
        if let Some(r) = metric_sum(&m, "analytics_cache_hit_ratio", &[]) {
            readings.push(r);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    app.signal(libc::SIGTERM);
    let (_, summary) = finish(&mut app, Duration::from_secs(30));
    assert!(u(&summary, &["queries"]) > 0, "{summary}");
    eprintln!(
        "target {target}: readings {readings:?}, run ratio {}",
        summary["cache_hit_ratio"]
    );
    readings
}

fn assert_hit_ratio(target: &str) {
    let want = target.parse::<f64>().unwrap() / 100.0;
    let readings = hit_ratio_readings(target);
    assert!(!readings.is_empty(), "no hit ratio readings");
    let mean = readings.iter().sum::<f64>() / readings.len() as f64;
    assert!(
        (mean - want).abs() <= 0.03,
        "hit ratio {mean:.4} not within 3 points of {want}: readings {readings:?}"
    );
}

#[test]
fn should_meet_hit_ratio_target_80() {
    assert_hit_ratio("80");
}

#[test]
fn should_meet_hit_ratio_target_95() {
    assert_hit_ratio("95");
}

#[test]
fn should_not_leak_the_redis_password() {
    const PW: &str = "plantedpw";
    let redis = RedisServer::start_with(&["--requirepass", PW]);
    let pg = PgServer::start();
    let url = format!("redis://:{PW}@127.0.0.1:{}", redis.port);
    assert_eq!(url, redis.url());
    let a = args(
        &url,
        &pg.url(),
        &[
            "--events-per-second",
            "100",
            "--queries-per-second",
            "100",
            "--organizations",
            "10",
            "--users-per-org",
            "20",
        ],
    );
    let mut app = spawn_running(&refs(&a), &[]);
    assert!(app.wait_healthy(HEALTHY), "not healthy:\n{}", app.log());
    assert!(
        wait_until(Duration::from_secs(30), || events_with_outcome(
            &app, "acked"
        ) > 0.0),
        "no acked events with a password-protected redis:\n{}",
        app.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    for path in ["/metrics", "/health", "/api/status", "/report", "/"] {
        let (status, body) = app.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(PW), "{path} leaks the password:\n{body}");
    }
    let (_, h) = health(&app);
    assert_eq!(h["redis"]["status"], "up", "{h}");
    app.signal(libc::SIGTERM);
    let (_, summary) = finish(&mut app, Duration::from_secs(30));
    let log = app.log();
    assert!(!log.contains(PW), "the logs leak the password:\n{log}");
    assert!(
        u(&summary, &["events_by_outcome", "acked"]) > 0,
        "{summary}"
    );
    assert_eq!(
        u(&summary, &["events_by_outcome", "acked"]),
        u(&summary, &["events"]),
        "{summary}"
    );
    assert!(
        !pg.psql("SELECT config::text FROM runs").contains(PW),
        "the runs table stores the password"
    );
    // verify with the same URL: clean, and its output does not echo the password either.
    let out = run_binary(
        &[
            "verify",
            "--redis-url",
            &url,
            "--database-url",
            &pg.url(),
            "--json",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains(PW) && !out.stderr.contains(PW));
}

/// Every start must start the load, even with several instances starting at once on a
/// busy machine (20 rounds of 3 concurrent starts, no retry). Guards against the start-up
/// hang: glommio 0.9 could park an executor that still had tasks to run, for ever when
/// nothing else was pending, as at a shard's start (see `executor.rs`).
#[test]
fn should_start_the_load_on_every_start() {
    const ROUNDS: usize = 20;
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let apps: Vec<App> = (0..3)
            .map(|_| {
                let a = args(
                    &redis.url(),
                    &pg.url(),
                    &[
                        "--duration",
                        "3",
                        "--events-per-second",
                        "100",
                        "--queries-per-second",
                        "1500",
                        "--organizations",
                        "50",
                    ],
                );
                App::spawn(&refs(&a), &[])
            })
            .collect();
        for (i, mut app) in apps.into_iter().enumerate() {
            match app.wait(Duration::from_secs(40)) {
                None => {
                    let m = metrics(&app);
                    failures.push(format!(
                        "round {round} app {i}: a --duration 3 run did not exit within 40 s; \
                         events so far {:?}, shard redis pool size {:?}\n{}",
                        metric_sum(&m, "analytics_events_total", &[]),
                        metric_sum(&m, "analytics_redis_pool_size", &[]),
                        app.log(),
                    ))
                }
                Some(status) => {
                    let events = summary_from_log(&app.log()).map(|s| s["events"].clone());
                    if !status.success()
                        || events.as_ref().and_then(Value::as_u64).unwrap_or(0) == 0
                    {
                        failures.push(format!(
                            "round {round} app {i}: exit {status}, summary events {events:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} starts never started the load:\n{}",
        failures.len(),
        ROUNDS * 3,
        failures.join("\n")
    );
}

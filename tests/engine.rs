//! End-to-end tests of the workload engine: the real binary against private Redis and
//! PostgreSQL servers (tests/common). Each test owns its servers, so tests run in parallel.
//!
//! Nothing here asserts on speed: the machine may be small and busy. Rates only need to be
//! high enough to produce some data; every wait has a generous timeout.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    assert_reconciled, finish, metric_sum, num, run_binary, u, wait_until, App, PgServer,
    RedisServer, TestContext,
};
use serde_json::Value;

/// A test's own Redis and PostgreSQL, and the app against them with this file's defaults.
fn context() -> TestContext {
    TestContext::new(&["--seed", "7"])
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

/// Events of the app's /metrics with OUTCOME (summed over types and shards).
fn events_with_outcome(app: &App, outcome: &str) -> f64 {
    metric_sum(
        &app.metrics(),
        "analytics_events_total",
        &[("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn should_run_for_duration_and_reconcile() {
    let t = context();
    let mut app = t
        .app()
        .duration(6)
        .events(300)
        .queries(600)
        .orgs(40)
        .users(50)
        .spawn_running();
    let (_, summary) = finish(&mut app, Duration::from_secs(90));

    // Summary against the table: exactly one row per event, all written.
    let rows = t.pg.int("SELECT count(*) FROM events") as u64;
    let events = u(&summary, &["events"]);
    assert!(events > 0, "no events: {summary}");
    assert!(u(&summary, &["queries"]) > 0, "no queries: {summary}");
    assert_eq!(events, rows, "summary events vs rows: {summary}");
    assert_eq!(u(&summary, &["db_rows_written"]), rows, "{summary}");
    assert_eq!(u(&summary, &["db_rows_dropped"]), 0, "{summary}");
    assert_eq!(
        t.pg.int("SELECT count(DISTINCT event_id) FROM events") as u64,
        rows,
        "duplicate event ids"
    );
    assert_eq!(
        t.pg.int("SELECT count(DISTINCT run_id) FROM events"),
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
        t.pg.int("SELECT count(*) FROM events WHERE outcome <> 0"),
        0
    );

    // Per-type counts of the summary match the table.
    let by_type: BTreeMap<usize, u64> =
        t.pg.psql("SELECT event_type, count(*) FROM events GROUP BY 1")
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
    let truth = truths(&t.pg);
    assert!(!truth.is_empty());
    let keys: Vec<&str> = truth.iter().map(|t| t.key.as_str()).collect();
    let values = mget(&t.redis, &keys);
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
    let in_redis = t.redis.cli(&["--scan", "--pattern", "a:{*}:ev:*"]);
    let in_redis = in_redis.lines().filter(|l| !l.is_empty()).count();
    assert_eq!(in_redis, truth.len(), "counter keys in Redis vs Postgres");

    // The rollups agree with the events.
    let mismatches = t.pg.int(
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
        t.pg.int("SELECT coalesce(sum(rows), 0) FROM writer_batches") as u64,
        rows,
        "writer_batches rows vs events"
    );

    // verify agrees.
    let (code, v) = t.verify(&[]);
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
        let t = context();
        let mut app = t
            .app()
            .arg("--redis-protocol", flag)
            .events(300)
            .queries(600)
            .orgs(40)
            .users(50)
            .arg("--redis-pool-size", "8")
            .spawn_running();
        std::thread::sleep(Duration::from_secs(3));
        let clients = app_client_lines(&t.redis);
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
        let (status, h) = app.health();
        assert_eq!(status, 200, "{h}");
        assert_eq!(h["redis"]["protocol"], resp.parse::<u64>().unwrap(), "{h}");
        // Every reply path ran: cache hits and misses, realtime MGETs, acked events.
        let m = app.metrics();
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
        assert_reconciled(&t, &summary);
        // verify reads the same counters in either protocol.
        let (c2, v2) = t.verify(&["--redis-protocol", "2"]);
        let (c3, v3) = t.verify(&["--redis-protocol", "3"]);
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
    let t = context();
    let mut app = t.app().events(200).queries(500).orgs(20).spawn_healthy();
    std::thread::sleep(Duration::from_secs(2));
    app.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(600));
    app.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(2));

    let m = app.metrics();
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

/// Voluntary context switches (sleeps) of the app's thread whose name starts with PREFIX.
fn thread_sleeps(app: &App, prefix: &str) -> u64 {
    let tasks = format!("/proc/{}/task", app.child.id());
    for task in std::fs::read_dir(&tasks).unwrap_or_else(|e| panic!("{tasks}: {e}")) {
        let dir = task.expect("task entry").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).expect("task status");
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches in /proc status");
    }
    panic!("no thread named {prefix}* in {tasks}")
}

/// An idle shard sleeps: its row flusher must not wake it when it has no rows (it woke it
/// every 10 ms, 100 of the ~127 sleeps a second of an idle shard), nor must an outside nudge
/// (every 50 ms, 20 more, while glommio could park with work to run). This counts how often
/// the shard thread goes to sleep (a count, not a speed): at 1 query/s the wakes left (the
/// query pacer, its reply, the report) are ~4 a second, since the warm-up stopped waking
/// every 200 ms to look for a stop and an idle connection's timeout sweeper stopped waking
/// every second (~10 before). The same for the control core: ~6 a second (the shards'
/// reports, health checks started together) since it stopped polling for signals and
/// closing windows on a timer of its own (~29), and the writer stopped waking every 500 ms
/// with nothing to write (~9).
#[test]
fn should_not_wake_an_idle_shard_without_work() {
    let t = context();
    let args = t.app().events(0).queries(1).orgs(20).command_line();
    // The start (connections, the first cache warm-up) is busy: count after it, which the
    // warm-up's debug line tells.
    let log_filter = (
        analytics_demo::config::LOG_FILTER_ENV,
        "info,analytics_demo::shard=debug",
    );
    let mut app = App::spawn(&common::refs(&args), &[log_filter]);
    assert!(
        app.wait_healthy(common::HEALTHY),
        "not healthy:\n{}",
        app.log()
    );
    let warm = wait_until(Duration::from_secs(60), || {
        app.log().contains("cache warmup done")
    });
    assert!(warm, "no cache warm-up within 60 s:\n{}", app.log());
    let before = (
        thread_sleeps(&app, "shard-"),
        thread_sleeps(&app, "control-"),
    );
    let window = Duration::from_secs(4);
    std::thread::sleep(window); // the window counted, not a wait for a condition
    let rate = |now: u64, then: u64| (now - then) as f64 / window.as_secs_f64();
    let shard = rate(thread_sleeps(&app, "shard-"), before.0);
    let control = rate(thread_sleeps(&app, "control-"), before.1);
    eprintln!("idle sleeps a second: shard {shard:.1}, control core {control:.1}");
    app.signal(libc::SIGTERM);
    finish(&mut app, Duration::from_secs(30));
    assert!(
        shard < 8.0,
        "the idle shard slept and woke {shard:.0} times a second"
    );
    // The control core sleeps until its next duty or a signal; polling for signals every
    // 50 ms it slept ~29 times a second.
    assert!(
        control < 8.0,
        "the idle control core slept and woke {control:.0} times a second"
    );
}

#[test]
fn should_flush_everything_on_sigterm() {
    let t = context();
    let mut app = t
        .app()
        .events(300)
        .queries(300)
        .orgs(30)
        .users(50)
        .spawn_healthy();
    std::thread::sleep(Duration::from_secs(4));
    assert!(app.alive(), "exited early:\n{}", app.log());
    app.signal(libc::SIGTERM);
    let (_, summary) = finish(&mut app, Duration::from_secs(30));
    assert!(
        app.log().contains("\"message\":\"stopping"),
        "no stop log line:\n{}",
        app.log()
    );
    assert_reconciled(&t, &summary);
    assert_eq!(
        u(&summary, &["events_by_outcome", "acked"]),
        u(&summary, &["events"]),
        "{summary}"
    );
}

#[test]
fn should_report_unhealthy_while_redis_is_down() {
    let mut t = context();
    let mut app = t
        .app()
        .events(100)
        .queries(100)
        .orgs(20)
        .users(20)
        .spawn_healthy();
    let (status, h) = app.health();
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["redis"]["status"], "up", "{h}");
    assert!(
        wait_until(Duration::from_secs(30), || t
            .pg
            .try_int("SELECT count(*) FROM events WHERE outcome = 0")
            > 0),
        "no acked rows before the outage:\n{}",
        app.log()
    );

    // Redis goes away.
    let failed_before = events_with_outcome(&app, "failed") + events_with_outcome(&app, "unknown");
    let stopped = Instant::now();
    t.redis.stop();
    let mut last = (0, Value::Null);
    assert!(
        wait_until(Duration::from_secs(15), || {
            last = app.health();
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
        wait_until(Duration::from_secs(30), || t
            .pg
            .int("SELECT count(*) FROM events WHERE outcome IN (1, 2)")
            > 0),
        "no failed/unknown rows in Postgres while redis is down:\n{}",
        app.log()
    );
    let errors = metric_sum(&app.metrics(), "analytics_redis_errors_total", &[]).unwrap_or(0.0);
    assert!(errors > 0.0, "analytics_redis_errors_total did not grow");
    assert!(app.alive(), "the app died with redis down:\n{}", app.log());

    // Redis comes back: healthy again and acknowledged writes resume.
    t.redis.restart();
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
        wait_until(Duration::from_secs(30), || t.pg.int(&acked_after) > 0),
        "no acked rows after redis came back:\n{}",
        app.log()
    );
    assert_ne!(
        t.redis.cli(&["--scan", "--pattern", "a:{*}:ev:*"]),
        "",
        "no counters in the restarted redis"
    );

    app.signal(libc::SIGTERM);
    let (_, summary) = finish(&mut app, Duration::from_secs(30));
    let rows = t.pg.int("SELECT count(*) FROM events") as u64;
    assert_eq!(u(&summary, &["events"]), rows, "{summary}");
    assert_eq!(u(&summary, &["db_rows_dropped"]), 0, "{summary}");
    let not_acked = u(&summary, &["events_by_outcome", "failed"])
        + u(&summary, &["events_by_outcome", "unknown"]);
    assert!(not_acked > 0, "{summary}");
    assert_eq!(
        t.pg.int("SELECT count(*) FROM events WHERE outcome IN (1, 2)") as u64,
        not_acked,
        "failed+unknown rows vs summary: {summary}"
    );
    // The restart emptied Redis: the acknowledged increments from before are gone, and
    // verify says so.
    let (code, v) = t.verify(&[]);
    assert_eq!(code, 1, "verify after losing redis data: {v}");
    assert!(u(&v, &["lost_acknowledged_increments"]) > 0, "{v}");
}

#[test]
fn should_detect_loss_with_verify() {
    let t = context();
    let mut app = t
        .app()
        .duration(4)
        .events(200)
        .queries(100)
        .orgs(10)
        .users(20)
        .spawn_running();
    let (_, summary) = finish(&mut app, Duration::from_secs(90));
    assert!(u(&summary, &["events"]) > 0, "{summary}");
    let (code, v) = t.verify(&[]);
    assert_eq!(code, 0, "clean before tampering: {v}");

    let mut truth = truths(&t.pg);
    assert!(
        truth.len() >= 2,
        "need two counter keys, have {}",
        truth.len()
    );
    truth.sort_by_key(|t| std::cmp::Reverse(t.acked));
    let (deleted, bumped) = (&truth[0], &truth[1]);
    assert!(deleted.acked > 0 && deleted.unknown == 0 && bumped.unknown == 0);
    assert_eq!(t.redis.cli(&["DEL", &deleted.key]), "1");
    assert_eq!(
        t.redis.cli(&["INCRBY", &bumped.key, "5"]),
        (bumped.acked + 5).to_string()
    );

    let (code, v) = t.verify(&[]);
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
    let t = context();
    let mut app = t
        .app()
        .arg("--cache-hit-target", target)
        .queries(1500)
        .events(100)
        .orgs(50)
        .users(50)
        .spawn_healthy();
    let started = Instant::now();
    let want = target.parse::<f64>().unwrap() / 100.0;
    let m = app.metrics();
    assert_eq!(
        metric_sum(&m, "analytics_cache_hit_target_ratio", &[]),
        Some(want),
        "target gauge"
    );
    std::thread::sleep(Duration::from_secs(18));
    let mut readings = Vec::new();
    while started.elapsed() < Duration::from_secs(24) {
        let m = app.metrics();
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
    let t = TestContext::with(
        RedisServer::start_with(&["--requirepass", PW]),
        PgServer::start(),
        &["--seed", "7"],
    );
    let url = format!("redis://:{PW}@127.0.0.1:{}", t.redis.port);
    assert_eq!(url, t.redis_url);
    let mut app = t
        .app()
        .events(100)
        .queries(100)
        .orgs(10)
        .users(20)
        .spawn_healthy();
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
    let (_, h) = app.health();
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
        !t.pg.psql("SELECT config::text FROM runs").contains(PW),
        "the runs table stores the password"
    );
    // verify with the same URL: clean, and its output does not echo the password either.
    let out = run_binary(
        &[
            "verify",
            "--redis-url",
            &url,
            "--database-url",
            &t.pg.url(),
            "--json",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains(PW) && !out.stderr.contains(PW));
}

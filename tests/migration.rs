//! The migration toolkit end to end: live switches between real redis-server processes
//! (replicated, unpromoted replica, fake servers answering LOADING / MASTERDOWN), the admin
//! endpoint's authorization, and `verify`'s exact counts and exit codes.
//!
//! Like tests/engine.rs: the real binary, private servers per test, no assertion on speed,
//! generous timeouts (the machine may be small and busy).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use analytics_demo::control::api::{self, Report, SwitchAnswer, SwitchReport, TargetMode};
use common::{
    free_port, metric_sum, run_binary, spawn_running, wait_until, App, PgServer, RedisCluster,
    RedisServer, RunOutput,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

const TOKEN: &str = "mig-test-token-5f1c9e2a7b";
const LONG: Duration = Duration::from_secs(60);

fn args(redis_url: &str, pg_url: &str, extra: &[&str]) -> Vec<String> {
    common::app_args(
        redis_url,
        pg_url,
        &[
            "--seed",
            "11",
            "--organizations",
            "20",
            "--users-per-org",
            "50",
        ],
        extra,
    )
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn metrics(app: &App) -> String {
    let (status, body) = app.get("/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

fn metric(app: &App, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&metrics(app), name, labels).unwrap_or(0.0)
}

fn events(app: &App, outcome: &str) -> f64 {
    metric(app, "analytics_events_total", &[("outcome", outcome)])
}

fn redis_errors(app: &App, kind: &str) -> f64 {
    metric(app, "analytics_redis_errors_total", &[("kind", kind)])
}

/// `analytics-demo switch --to URL` against APP with TOKEN (from the environment). Retries
/// while the app answers 503 "shards are still starting" (its command channels connect a
/// moment after /health turns 200).
fn switch(app: &App, to: &str, token: Option<&str>) -> RunOutput {
    switch_with(app, to, token, &[])
}

/// `switch` with EXTRA arguments (e.g. `--wait 30`).
fn switch_with(app: &App, to: &str, token: Option<&str>, extra: &[&str]) -> RunOutput {
    let admin = format!("http://{}", app.http);
    let env: Vec<(&str, &str)> = token.map(|t| ("ADMIN_TOKEN", t)).into_iter().collect();
    let mut argv = vec!["switch", "--to", to, "--admin-url", &admin];
    argv.extend_from_slice(extra);
    let mut out = run_binary(&argv, &env, LONG);
    for _ in 0..600 {
        if !out.stderr.contains("still starting") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        out = run_binary(&argv, &env, LONG);
    }
    out
}

/// The app's run id (from /health).
fn run_id(app: &App) -> String {
    let (_, body) = app.get("/health");
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["run_id"]
        .as_i64()
        .map(|i| i.to_string())
        .unwrap_or_else(|| panic!("no run_id: {body}"))
}

/// BODY read into its typed API document (`control::api`).
fn doc<T: DeserializeOwned>(body: &str) -> T {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A document for a failure message.
fn js<T: serde::Serialize>(doc: &T) -> String {
    api::to_body(doc)
}

fn switch_ok(app: &App, to: &str) -> SwitchAnswer {
    let out = switch(app, to, Some(TOKEN));
    assert_eq!(
        out.code(),
        Some(0),
        "switch to {to}:\nstdout {}\nstderr {}\napp log:\n{}",
        out.stdout,
        out.stderr,
        app.log()
    );
    doc(out.stdout.trim())
}

/// `analytics-demo verify --json` against REDIS_URL: exit code and verdict (Null when none).
fn verify(redis_url: &str, pg_url: &str) -> (i32, Value, String) {
    common::verify_output(redis_url, pg_url, &[])
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v}"))
}

/// Sum of every counter value in REDIS (a Lua script: one consistent snapshot).
fn counter_sum(redis: &RedisServer) -> u64 {
    let out = redis.cli(&[
        "EVAL",
        "local s = 0 for _, k in ipairs(redis.call('KEYS', 'a:{*}:ev:*')) do \
         s = s + tonumber(redis.call('GET', k)) end return s",
        "0",
    ]);
    out.parse()
        .unwrap_or_else(|e| panic!("counter sum {out:?}: {e}"))
}

/// Make REPLICA replicate PRIMARY and wait for the initial sync.
fn replicate(replica: &RedisServer, primary: &RedisServer) {
    assert_eq!(
        replica.cli(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]),
        "OK"
    );
    assert!(
        wait_until(LONG, || replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")),
        "the replica never synced:\n{}",
        replica.cli(&["INFO", "replication"])
    );
}

/// Client connections of the app (normal clients other than the redis-cli asking).
fn app_clients(redis: &RedisServer) -> usize {
    redis
        .cli(&["CLIENT", "LIST", "TYPE", "normal"])
        .lines()
        .filter(|l| !l.is_empty() && !l.contains("cmd=client|list"))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Switch under load
// ---------------------------------------------------------------------------------------------

/// Two Redis servers (A, B), a PostgreSQL, and the app loading A at RATES, with the admin token.
fn app_on_a_with_b(rates: &[&str]) -> (RedisServer, RedisServer, PgServer, App) {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let pg = PgServer::start();
    let argv = args(&a.url(), &pg.url(), rates);
    let app = spawn_running(&refs(&argv), &[("ADMIN_TOKEN", TOKEN)]);
    (a, b, pg, app)
}

#[test]
fn should_switch_under_load_to_a_replica_without_losing_acked_increments() {
    let (a, b, pg, mut app) =
        app_on_a_with_b(&["--events-per-second", "500", "--queries-per-second", "1000"]);
    replicate(&b, &a);
    std::thread::sleep(Duration::from_secs(2));

    let reply = switch_ok(&app, &b.url());
    assert_eq!(reply.switched, api::Switched::All(true), "{reply:?}");
    assert_eq!(reply.seq, 1, "{reply:?}");
    assert_eq!(reply.endpoint, b.url(), "{reply:?}");
    assert_eq!(reply.from, a.url(), "{reply:?}");
    // Make before break: once no app connection is left on A, promote B.
    assert!(
        wait_until(LONG, || app_clients(&a) == 0),
        "app connections still on A: {}",
        a.cli(&["CLIENT", "LIST", "TYPE", "normal"])
    );
    assert_eq!(b.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    let on_a = counter_sum(&a);
    let at_promotion = counter_sum(&b);
    let acked_at_promotion = events(&app, "acked");
    assert!(
        wait_until(LONG, || events(&app, "acked") >= acked_at_promotion + 200.0),
        "acked events did not resume after the promotion:\n{}",
        app.log()
    );
    let grown = counter_sum(&b);
    assert!(
        grown > at_promotion,
        "B's counters did not grow after the switch: {at_promotion} -> {grown}"
    );
    assert_eq!(counter_sum(&a), on_a, "A was written to after the switch");

    // /metrics: one switch, B is the current target.
    let m = metrics(&app);
    assert_eq!(
        metric_sum(&m, "analytics_redis_target_switches_total", &[]),
        Some(1.0),
        "switches_total"
    );
    let b_endpoint = format!("redis://127.0.0.1:{}", b.port);
    let a_endpoint = format!("redis://127.0.0.1:{}", a.port);
    assert_eq!(
        metric_sum(
            &m,
            "analytics_redis_target_info",
            &[("endpoint", &b_endpoint)]
        ),
        Some(1.0),
        "target info of B"
    );
    assert_eq!(
        metric_sum(
            &m,
            "analytics_redis_target_info",
            &[("endpoint", &a_endpoint)]
        ),
        Some(0.0),
        "target info of A"
    );
    assert!(metric_sum(&m, "analytics_redis_target_switch_timestamp_seconds", &[]) > Some(0.0));

    // The report, through the `report` subcommand, before the app stops.
    let admin = format!("http://{}", app.http);
    let report = report_of(&app);
    let switches = &report.migration.switches;
    assert_eq!(switches.len(), 1, "{}", js(&report));
    assert_eq!(switches[0].to, b_endpoint, "{}", js(&report));
    assert_eq!(switches[0].from, a_endpoint, "{}", js(&report));
    assert_eq!(report.redis_target, b_endpoint, "{}", js(&report));
    let text = run_binary(&["report", "--admin-url", &admin], &[], LONG);
    assert_eq!(text.code(), Some(0));
    assert!(
        text.stdout.contains("switch #1 at ") && text.stdout.contains(&b_endpoint),
        "{}",
        text.stdout
    );

    let status = app.terminate();
    assert!(status.success(), "exit {status}:\n{}", app.log());
    let (code, v, err) = verify(&b.url(), &pg.url());
    assert_eq!(code, 0, "verify against B: {v} {err}");
    assert_eq!(u(&v, "lost_acknowledged_increments"), 0, "{v}");
    assert_eq!(u(&v, "phantom_increments"), 0, "{v}");
    assert!(u(&v, "acked_total") > 0, "{v}");
}

/// `switch --wait` returns once every connection of every shard is up on the new Redis, and
/// the report says when that was; to a Redis that is not there it gives up with exit 1.
#[test]
fn should_wait_for_the_cutover_to_complete() {
    let (_a, b, _pg, mut app) =
        app_on_a_with_b(&["--events-per-second", "200", "--queries-per-second", "200"]);
    let admin = format!("http://{}", app.http);
    let env = [("ADMIN_TOKEN", TOKEN)];

    let out = run_binary(
        &[
            "switch",
            "--to",
            &b.url(),
            "--admin-url",
            &admin,
            "--wait",
            "30",
        ],
        &env,
        LONG,
    );
    assert_eq!(
        out.code(),
        Some(0),
        "switch --wait:\nstdout {}\nstderr {}\napp log:\n{}",
        out.stdout,
        out.stderr,
        app.log()
    );
    assert!(
        out.stdout.contains("cutover complete after"),
        "{}",
        out.stdout
    );
    let report = report_of(&app);
    let c = report.migration.switches[0].cutover;
    assert!(c.complete, "{}", js(&report));
    let connections = c.connections;
    assert!(connections > 0, "{}", js(&report));
    assert_eq!(c.connections_on_target, connections, "{}", js(&report));
    let secs = c.seconds.expect("seconds");
    assert!(
        (0.0..30.0).contains(&secs),
        "cutover seconds {secs}: {}",
        js(&report)
    );
    assert!(
        app_clients(&b) >= connections,
        "the report says {connections} connections moved, B has {}",
        app_clients(&b)
    );

    // Nothing listens on this port: the cutover cannot complete.
    let nowhere = format!("redis://127.0.0.1:{}", common::free_port());
    let out = run_binary(
        &[
            "switch",
            "--to",
            &nowhere,
            "--admin-url",
            &admin,
            "--wait",
            "2",
        ],
        &env,
        LONG,
    );
    assert_eq!(out.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("cutover not complete after 2 s: 0 of"),
        "{}",
        out.stderr
    );
    let report = report_of(&app);
    assert!(
        !report.migration.switches[1].cutover.complete,
        "{}",
        js(&report)
    );
    let text = run_binary(&["report", "--admin-url", &admin], &[], LONG);
    assert!(
        text.stdout.contains("cutover             complete after")
            && text
                .stdout
                .contains("cutover             in progress: 0 of"),
        "{}",
        text.stdout
    );
    let status = app.terminate();
    assert!(status.success(), "exit {status}:\n{}", app.log());
}

/// A lossy switch: the source freezes under load (its in-flight operations time out, and with
/// 32 workers at most the due ones are skipped), and the app is switched to an empty
/// target. /report gives, per phase, the answered, failed and skipped queries and events; the
/// natural hit ratio (the queries' own keys) dips on the empty target and comes back to its
/// pre-switch value while the steered one and the ad-hoc share are reported beside it. Then
/// the target dies and a switch goes nowhere: nothing is answered after it, and neither the
/// latency nor the cache counts as recovered.
#[test]
fn should_report_a_lossy_switch_per_phase_with_the_natural_hit_ratio() {
    let a = RedisServer::start();
    let mut b = RedisServer::start();
    let pg = PgServer::start();
    let argv = args(
        &a.url(),
        &pg.url(),
        &[
            "--events-per-second",
            "100",
            "--queries-per-second",
            "300",
            "--max-workers",
            "32",
            "--command-timeout-ms",
            "300",
            "--time-buckets",
            "1",
        ],
    );
    let mut app = spawn_running(&refs(&argv), &[("ADMIN_TOKEN", TOKEN)]);
    // The "before" phase ends 10 s before the switch: let it hold a few seconds.
    assert!(
        wait_until(LONG, || status(&app).history.len() >= 15),
        "no 15 s of history:\n{}",
        app.log()
    );
    let skipped = |app: &App| {
        metric(
            app,
            "analytics_skipped_operations_total",
            &[("operation", "query")],
        )
    };
    let skipped_before = skipped(&app);
    a.pause();
    assert!(
        wait_until(LONG, || skipped(&app) >= skipped_before + 50.0),
        "no skips with the source frozen:\n{}",
        app.log()
    );
    switch_ok(&app, &b.url());
    a.resume();
    let switch = |app: &App, i: usize| -> SwitchReport {
        report_of(app)
            .migration
            .switches
            .get(i)
            .cloned()
            .unwrap_or_default()
    };
    let mut sw = SwitchReport::default();
    assert!(
        wait_until(Duration::from_secs(120), || {
            sw = switch(&app, 0);
            sw.cache_hit
                .natural
                .recovered_within_2_points_after_seconds
                .is_some()
        }),
        "no recovery reported: {}",
        js(&sw)
    );
    let excerpt = serde_json::json!({
        "phases": &sw.phases, "cache_hit": &sw.cache_hit,
        "p99_back_to_baseline_after_seconds": sw.p99_back_to_baseline_after_seconds,
        "failures_by_kind": &sw.failures_by_kind,
    });
    eprintln!("/report, switch 1: {excerpt:#}");
    let during = &sw.phases.during;
    assert!(during.queries.error > 0, "{}", js(during));
    assert!(
        during.queries.skipped_by_reason.get("max_workers") > Some(&0),
        "{}",
        js(during)
    );
    assert!(during.events.error > 0, "{}", js(during));
    assert!(during.events.skipped > 0, "{}", js(during));
    let latency = &during.latency;
    assert!(
        latency.query_latency_including_misses_ms.percentiles.p99 >= latency.query_latency_ms.p99,
        "{}",
        js(during)
    );
    let before = &sw.phases.before;
    assert!(before.queries.ok > 0, "{}", js(before));
    let c = &sw.cache_hit;
    assert_eq!(c.recovery_measured_on, "natural", "{}", js(c));
    let nat = &c.natural;
    let x = |v: Option<f64>| v.unwrap_or_else(|| panic!("not a number in {}", js(c)));
    assert!(
        x(nat.before) >= 0.9,
        "the warmed cache should hit: {}",
        js(c)
    );
    assert!(
        x(nat.min_after_switch) < x(nat.before) - 0.1,
        "no natural dip on an empty target: {}",
        js(c)
    );
    assert!(
        x(nat.recovered_within_2_points_after_seconds) > 0.0,
        "{}",
        js(c)
    );
    // The steered ratio and the ad-hoc share are there beside it.
    assert!(x(c.steered.before) < x(nat.before), "{}", js(c));
    assert!(x(c.adhoc_fraction.before) > 0.0, "{}", js(c));
    assert!(c.steered.min_after_switch.is_some(), "{}", js(c));
    // Every second counted as recovered had answered queries (on a busy machine the latency
    // may not be back yet: skips and slow seconds count against it).
    for back in [
        sw.p99_back_to_baseline_after_seconds,
        nat.recovered_within_2_points_after_seconds,
    ]
    .into_iter()
    .flatten()
    {
        for p in sw.series.iter().filter(|p| p.t >= back).take(3) {
            assert!(
                p.queries_ok > 0,
                "an empty second counted as recovered: {p:?}"
            );
        }
    }

    // The target dies, and the next switch goes where nothing listens: no query is answered
    // after it, so nothing is recovered, however fast the failures are. (A point covers the
    // second before it: the first one after the switch may hold answers from before.)
    b.stop();
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    switch_ok(&app, &nowhere);
    let after = |sw: &SwitchReport| -> Vec<api::Point> {
        sw.series.iter().filter(|p| p.t >= 1.0).copied().collect()
    };
    let mut sw2 = SwitchReport::default();
    assert!(
        wait_until(LONG, || {
            sw2 = switch(&app, 1);
            after(&sw2).len() >= 5
        }),
        "no 5 s of series after the second switch: {}",
        js(&sw2)
    );
    let points = after(&sw2);
    assert!(points.iter().all(|p| p.queries_ok == 0), "{}", js(&sw2));
    assert!(points.iter().any(|p| p.queries_failed > 0), "{}", js(&sw2));
    assert!(
        sw2.p99_back_to_baseline_after_seconds.is_none(),
        "{}",
        js(&sw2)
    );
    assert!(
        sw2.cache_hit
            .natural
            .recovered_within_2_points_after_seconds
            .is_none(),
        "{}",
        js(&sw2)
    );
    let text = run_binary(
        &["report", "--admin-url", &format!("http://{}", app.http)],
        &[],
        LONG,
    );
    assert!(
        text.stdout.contains("cache hit natural") && text.stdout.contains("skipped"),
        "{}",
        text.stdout
    );
    let status = app.terminate();
    assert!(status.success(), "exit {status}:\n{}", app.log());
}

fn status(app: &App) -> api::Status {
    let (code, body) = app.get("/api/status");
    assert_eq!(code, 200, "/api/status: {body}");
    doc(&body)
}

/// The report, through `analytics-demo report --json`.
fn report_of(app: &App) -> Report {
    let admin = format!("http://{}", app.http);
    let out = run_binary(&["report", "--admin-url", &admin, "--json"], &[], LONG);
    assert_eq!(out.code(), Some(0), "report: {}", out.stderr);
    doc(out.stdout.trim())
}

// ---------------------------------------------------------------------------------------------
// verify: exact counts against real data
// ---------------------------------------------------------------------------------------------

/// One counter's truth from Postgres.
#[derive(Debug, Clone)]
struct Truth {
    key: String,
    acked: u64,
    unknown: u64,
}

/// A short run without faults; returns the servers and every counter's truth from
/// `event_rollups` (what `verify` reads), checked against `events`.
fn populated() -> (RedisServer, PgServer, Vec<Truth>) {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let argv = args(
        &redis.url(),
        &pg.url(),
        &[
            "--duration",
            "4",
            "--events-per-second",
            "200",
            "--queries-per-second",
            "100",
        ],
    );
    let mut app = spawn_running(&refs(&argv), &[]);
    let status = app
        .wait(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("the run did not end:\n{}", app.log()));
    assert!(status.success(), "exit {status}:\n{}", app.log());
    let rows = |sql: &str| -> Vec<Truth> {
        pg.psql(sql)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                Truth {
                    key: format!(
                        "a:{{{}}}:ev:{}:{}",
                        f[0],
                        common::TYPE_NAMES[f[2].parse::<usize>().unwrap()],
                        f[1]
                    ),
                    acked: f[3].parse().unwrap(),
                    unknown: f[4].parse().unwrap(),
                }
            })
            .collect()
    };
    let truths = rows(
        "SELECT org_id, bucket, event_type, acked, unknown FROM event_rollups ORDER BY 1, 2, 3",
    );
    let from_events = rows(
        "SELECT org_id, bucket, event_type, count(*) FILTER (WHERE outcome = 0), \
         count(*) FILTER (WHERE outcome = 2) FROM events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    );
    assert_eq!(
        format!("{truths:?}"),
        format!("{from_events:?}"),
        "rollups and events disagree"
    );
    assert!(truths.len() >= 3, "need 3 counter keys: {truths:?}");
    assert!(
        truths.iter().all(|t| t.unknown == 0),
        "a fault-free run had unknown outcomes"
    );
    (redis, pg, truths)
}

fn by_acked_desc(truths: &[Truth]) -> Vec<Truth> {
    let mut t = truths.to_vec();
    t.sort_by_key(|t| std::cmp::Reverse(t.acked));
    t
}

#[test]
fn should_verify_clean_data_with_exact_counts() {
    let (redis, pg, truths) = populated();
    let (code, v, err) = verify(&redis.url(), &pg.url());
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["clean"], Value::Bool(true), "{v}");
    let n = truths.len() as u64;
    assert_eq!(u(&v, "keys_checked"), n, "{v}");
    assert_eq!(u(&v, "keys_matching"), n, "{v}");
    assert_eq!(
        u(&v, "acked_total"),
        truths.iter().map(|t| t.acked).sum::<u64>(),
        "{v}"
    );
    for key in [
        "lost_acknowledged_increments",
        "keys_with_loss",
        "missing_keys",
        "phantom_increments",
        "keys_with_phantoms",
        "unknown_budget",
        "unknown_applied",
        "stray_keys",
        "explained_phantom_increments",
        "explained_stray_keys",
    ] {
        assert_eq!(u(&v, key), 0, "{key}: {v}");
    }
    assert_eq!(counter_sum(&redis), u(&v, "acked_total"));
    assert_eq!(v["runs_judged"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["runs_judged"][0]["state"], "clean", "{v}");
}

#[test]
fn should_verify_lost_increments_with_exact_counts() {
    let (redis, pg, truths) = populated();
    let t = by_acked_desc(&truths);
    let (d1, d2, dec) = (&t[0], &t[1], &t[2]);
    assert!(dec.acked >= 3, "{dec:?}");
    assert_eq!(redis.cli(&["DEL", &d1.key, &d2.key]), "2");
    assert_eq!(
        redis.cli(&["DECRBY", &dec.key, "3"]),
        (dec.acked - 3).to_string()
    );
    let (code, v, err) = verify(&redis.url(), &pg.url());
    assert_eq!(code, 1, "{v} {err}");
    assert_eq!(v["clean"], Value::Bool(false), "{v}");
    let n = truths.len() as u64;
    assert_eq!(u(&v, "keys_checked"), n, "{v}");
    assert_eq!(u(&v, "keys_matching"), n - 3, "{v}");
    assert_eq!(
        u(&v, "lost_acknowledged_increments"),
        d1.acked + d2.acked + 3,
        "{v}"
    );
    assert_eq!(u(&v, "keys_with_loss"), 3, "{v}");
    assert_eq!(u(&v, "missing_keys"), 2, "{v}");
    assert_eq!(u(&v, "phantom_increments"), 0, "{v}");
    assert_eq!(u(&v, "keys_with_phantoms"), 0, "{v}");
}

#[test]
fn should_verify_phantom_increments_with_exact_counts() {
    let (redis, pg, truths) = populated();
    let t = by_acked_desc(&truths);
    assert_eq!(
        redis.cli(&["INCRBY", &t[0].key, "7"]),
        (t[0].acked + 7).to_string()
    );
    assert_eq!(
        redis.cli(&["INCRBY", &t[1].key, "1"]),
        (t[1].acked + 1).to_string()
    );
    let (code, v, err) = verify(&redis.url(), &pg.url());
    assert_eq!(code, 1, "{v} {err}");
    assert_eq!(v["clean"], Value::Bool(false), "{v}");
    let n = truths.len() as u64;
    assert_eq!(u(&v, "keys_checked"), n, "{v}");
    assert_eq!(u(&v, "keys_matching"), n - 2, "{v}");
    assert_eq!(u(&v, "phantom_increments"), 8, "{v}");
    assert_eq!(u(&v, "keys_with_phantoms"), 2, "{v}");
    assert_eq!(u(&v, "lost_acknowledged_increments"), 0, "{v}");
    assert_eq!(u(&v, "stray_keys"), 0, "{v}");
    assert_eq!(
        v["problems"],
        serde_json::json!(["phantom increments"]),
        "{v}"
    );
}

#[test]
fn should_exit_2_when_verify_cannot_reach_redis_or_postgres() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    // A schema and a run, so only the unreachable server can fail.
    for file in ["sql/001_schema.sql", "sql/002_runs_verdict.sql"] {
        pg.psql(&std::fs::read_to_string(file).expect("schema"));
    }
    pg.psql("INSERT INTO runs (run_id, config) VALUES (1, '{\"time_buckets\": 24}')");
    // An empty Redis declares no run: not clean (exit 1), whatever Postgres holds.
    let (code, v, err) = verify(&redis.url(), &pg.url());
    assert_eq!(code, 1, "reachable servers, nothing declared: {v} {err}");
    assert_eq!(
        v["problems"],
        serde_json::json!(["the target declares no runs"]),
        "{v}"
    );
    // Naming the run: clean (it wrote nothing, and nothing is there).
    let (code, v) = common::verify_json_with(&redis.url(), &pg.url(), &["--run", "1"]);
    assert_eq!(code, 0, "the run named, empty data: {v}");

    let nobody = format!("redis://127.0.0.1:{}", free_port());
    let (code, v, err) = verify(&nobody, &pg.url());
    assert_eq!(code, 2, "unreachable Redis: {v} {err}");
    assert!(err.contains("error"), "{err}");

    let no_pg = format!("postgres://postgres@127.0.0.1:{}/analytics", free_port());
    let (code, v, err) = verify(&redis.url(), &no_pg);
    assert_eq!(code, 2, "unreachable Postgres: {v} {err}");
    assert!(err.contains("error"), "{err}");

    let (code, _, err) = verify(&redis.url(), "not a url");
    assert_eq!(code, 2, "bad database url: {err}");
}

// ---------------------------------------------------------------------------------------------
// Admin endpoint
// ---------------------------------------------------------------------------------------------

/// POST /admin/redis-target; retries while the app answers 503 "still starting".
fn post_switch(app: &App, auth: Option<&str>, body: &str) -> (u16, String) {
    let header = auth.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = header
        .as_deref()
        .map(|h| ("Authorization", h))
        .into_iter()
        .chain([("Content-Type", "application/json")])
        .collect();
    let mut reply = app.post("/admin/redis-target", &headers, body);
    for _ in 0..600 {
        if !(reply.0 == 503 && reply.1.contains("still starting")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        reply = app.post("/admin/redis-target", &headers, body);
    }
    reply
}

fn quiet_app(redis: &RedisServer, pg: &PgServer, extra: &[&str], env: &[(&str, &str)]) -> App {
    let argv = args(
        &redis.url(),
        &pg.url(),
        &[
            &["--events-per-second", "20", "--queries-per-second", "20"],
            extra,
        ]
        .concat(),
    );
    App::spawn_healthy(&refs(&argv), env, LONG)
}

#[test]
fn should_authorize_admin_requests() {
    let r1 = RedisServer::start();
    let r2 = RedisServer::start();
    let pg = PgServer::start();
    let body = format!("{{\"url\":\"{}\"}}", r2.url());

    let app = quiet_app(&r1, &pg, &[], &[("ADMIN_TOKEN", TOKEN)]);
    let (s, b) = post_switch(&app, None, &body);
    assert_eq!(s, 401, "no token: {b}");
    let (s, b) = post_switch(&app, Some("wrong-token"), &body);
    assert_eq!(s, 403, "wrong token: {b}");
    let (s, b) = post_switch(&app, Some(&format!("{TOKEN}x")), &body);
    assert_eq!(s, 403, "token with a suffix: {b}");
    let (s, b) = post_switch(&app, Some(TOKEN), "{\"url\":\"http://nope\"}");
    assert_eq!(s, 400, "bad URL: {b}");
    let (s, b) = post_switch(&app, Some(TOKEN), "not json");
    assert_eq!(s, 400, "bad body: {b}");
    assert_eq!(
        metric(&app, "analytics_redis_target_switches_total", &[]),
        0.0,
        "a refused request switched"
    );
    let (s, b) = post_switch(&app, Some(TOKEN), &body);
    assert_eq!(s, 200, "right token: {b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["switched"], Value::Bool(true), "{b}");
    assert_eq!(v["endpoint"], r2.url(), "{b}");
    // The CLI: wrong token exit 1, right token exit 0.
    let out = switch(&app, &r1.url(), Some("wrong-token"));
    assert_eq!(out.code(), Some(1), "{} {}", out.stdout, out.stderr);
    let out = switch(&app, &r1.url(), Some(TOKEN));
    assert_eq!(out.code(), Some(0), "{} {}", out.stdout, out.stderr);
    assert_eq!(
        metric(&app, "analytics_redis_target_switches_total", &[]),
        2.0
    );
    // The token never shows.
    for path in ["/metrics", "/report", "/health", "/api/status"] {
        let (_, text) = app.get(path);
        assert!(!text.contains(TOKEN), "{path} shows the admin token");
    }
    assert!(!app.log().contains(TOKEN), "the log shows the admin token");
    drop(app);

    // No ADMIN_TOKEN: refused, with or without a bearer token.
    let app = quiet_app(&r1, &pg, &[], &[]);
    let (s, b) = post_switch(&app, None, &body);
    assert_eq!(s, 403, "no ADMIN_TOKEN: {b}");
    let (s, b) = post_switch(&app, Some(TOKEN), &body);
    assert_eq!(s, 403, "no ADMIN_TOKEN, some token: {b}");
    drop(app);

    // No ADMIN_TOKEN, loopback allowed: a client on 127.0.0.1 may switch.
    let app = quiet_app(&r1, &pg, &["--admin-allow-unauthenticated-loopback"], &[]);
    let (s, b) = post_switch(&app, None, &body);
    assert_eq!(s, 200, "loopback allowed: {b}");
    let (s, b) = post_switch(&app, None, "{\"url\":\"redis://\"}");
    assert_eq!(s, 400, "loopback allowed, bad URL: {b}");
}

// ---------------------------------------------------------------------------------------------
// Server error replies during a cutover: READONLY, LOADING, MASTERDOWN
// ---------------------------------------------------------------------------------------------

#[test]
fn should_fail_writes_on_an_unpromoted_replica_and_resume_once_promoted() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let pg = PgServer::start();
    let argv = args(
        &a.url(),
        &pg.url(),
        &["--events-per-second", "200", "--queries-per-second", "200"],
    );
    let mut app = spawn_running(&refs(&argv), &[("ADMIN_TOKEN", TOKEN)]);
    replicate(&b, &a);
    // B replicated the run's declaration (a:runs) from A: the app's connections come up on
    // it while it is a replica (make before break), and the cutover completes.
    let out = switch_with(&app, &b.url(), Some(TOKEN), &["--wait", "30"]);
    assert_eq!(
        out.code(),
        Some(0),
        "{}{}\n{}",
        out.stdout,
        out.stderr,
        app.log()
    );
    assert_ne!(
        b.cli(&["ZSCORE", "a:runs", &run_id(&app)]),
        "",
        "B does not declare the run"
    );
    let failed_before = events(&app, "failed");
    assert!(
        wait_until(LONG, || redis_errors(&app, "readonly") > 0.0
            && events(&app, "failed") >= failed_before + 20.0),
        "no readonly failures on the replica:\n{}",
        metrics(&app)
    );
    assert!(app.alive(), "the app died:\n{}", app.log());
    assert_eq!(
        app.get("/health").0,
        200,
        "the replica answers PING: healthy"
    );
    // While B is a replica no event is acknowledged.
    let acked = events(&app, "acked");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        events(&app, "acked"),
        acked,
        "acked events on a read-only replica"
    );

    assert_eq!(b.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    assert!(
        wait_until(LONG, || events(&app, "acked") >= acked + 50.0),
        "acked events did not resume after the promotion:\n{}",
        app.log()
    );
    let status = app.terminate();
    assert!(status.success(), "exit {status}:\n{}", app.log());
    // Refused writes were recorded as failed, not as acknowledged: B holds every acked one.
    let (code, v, err) = verify(&b.url(), &pg.url());
    assert_eq!(code, 0, "{v} {err}");
    let failed: u64 = pg
        .psql("SELECT count(*) FROM events WHERE outcome = 1")
        .parse()
        .unwrap();
    assert!(failed >= 20, "failed rows in Postgres: {failed}");
}

#[test]
fn should_not_use_a_replica_that_does_not_declare_the_run() {
    let (a, c, pg, mut app) =
        app_on_a_with_b(&["--events-per-second", "100", "--queries-per-second", "50"]);
    // C replicates another primary, which never saw this run: C does not declare it, so no
    // connection may be used on it (after its promotion counters would land undeclared).
    let other = RedisServer::start();
    replicate(&c, &other);
    let out = switch_with(&app, &c.url(), Some(TOKEN), &["--wait", "3"]);
    assert_eq!(out.code(), Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("cutover not complete after 3 s: 0 of"),
        "{}",
        out.stderr
    );
    assert!(redis_errors(&app, "readonly") > 0.0, "{}", metrics(&app));
    assert_eq!(c.cli(&["ZCARD", "a:runs"]), "0");
    // Promoted, C takes the declaration first, then the counters.
    assert_eq!(c.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    let id = run_id(&app);
    assert!(
        wait_until(LONG, || !c.cli(&["ZSCORE", "a:runs", &id]).is_empty()
            && events(&app, "acked") > 0.0
            && !c.cli(&["--scan", "--pattern", "a:{*}:ev:*"]).is_empty()),
        "no declaration and counters on C after its promotion:\n{}",
        app.log()
    );
    let status = app.terminate();
    assert!(status.success(), "exit {status}:\n{}", app.log());
    // C judged: the run is declared; what it acknowledged on A is not on C.
    let (code, v, err) = verify(&c.url(), &pg.url());
    assert_eq!(code, 1, "{v} {err}");
    assert_eq!(
        v["runs_judged"][0]["run_id"]
            .as_i64()
            .map(|i| i.to_string()),
        Some(id),
        "{v}"
    );
    assert!(u(&v, "lost_acknowledged_increments") > 0, "{v}");
    assert_eq!(u(&v, "stray_keys"), 0, "{v}");
    drop(a);
}

/// A Redis impostor: answers PING/AUTH/SELECT and rejects everything else with one error line.
struct FakeRedis {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl FakeRedis {
    fn start(error_line: &'static str) -> FakeRedis {
        let listener = loop {
            if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, free_port())) {
                break l;
            }
        };
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = stream {
                    let stop3 = stop2.clone();
                    std::thread::spawn(move || serve_fake(s, error_line, stop3));
                }
            }
        });
        FakeRedis { port, stop }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

/// Parses one command (RESP array of bulk strings, or an inline line) from BUF: the command
/// name and the bytes used; None while incomplete.
fn parse_command(buf: &[u8]) -> Option<(String, usize)> {
    let line_end = |from: usize| {
        buf[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    let end = line_end(0)?;
    if buf.first() != Some(&b'*') {
        let line = String::from_utf8_lossy(&buf[..end]).to_string();
        let name = line.split_whitespace().next().unwrap_or("").to_string();
        return Some((name, end + 2));
    }
    let n: usize = std::str::from_utf8(&buf[1..end]).ok()?.parse().ok()?;
    let mut pos = end + 2;
    let mut name = String::new();
    for i in 0..n {
        let e = line_end(pos)?;
        let len: usize = std::str::from_utf8(&buf[pos + 1..e]).ok()?.parse().ok()?;
        let start = e + 2;
        if buf.len() < start + len + 2 {
            return None;
        }
        if i == 0 {
            name = String::from_utf8_lossy(&buf[start..start + len]).to_string();
        }
        pos = start + len + 2;
    }
    Some((name, pos))
}

fn serve_fake(mut s: TcpStream, error_line: &str, stop: Arc<AtomicBool>) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        let mut out = Vec::new();
        while let Some((name, used)) = parse_command(&buf) {
            buf.drain(..used);
            let reply = match name.to_ascii_uppercase().as_str() {
                "PING" => "+PONG\r\n".to_string(),
                "AUTH" | "SELECT" => "+OK\r\n".to_string(),
                _ => format!("-{error_line}\r\n"),
            };
            out.extend_from_slice(reply.as_bytes());
        }
        if !out.is_empty() && s.write_all(&out).is_err() {
            return;
        }
    }
}

/// The app on a server that refuses every command with ERROR_LINE: it stays up, counts
/// errors of KIND, records events as failed; a switch to a real Redis recovers.
fn refused_then_recovered(error_line: &'static str, kind: &str) {
    let fake = FakeRedis::start(error_line);
    let real = RedisServer::start();
    let pg = PgServer::start();
    let argv = args(
        &fake.url(),
        &pg.url(),
        &["--events-per-second", "100", "--queries-per-second", "100"],
    );
    let mut app = spawn_running(&refs(&argv), &[("ADMIN_TOKEN", TOKEN)]);
    assert!(
        wait_until(LONG, || redis_errors(&app, kind) > 0.0
            && events(&app, "failed") >= 20.0),
        "no {kind} errors:\n{}",
        metrics(&app)
    );
    assert_eq!(
        events(&app, "acked"),
        0.0,
        "acked on a server refusing everything"
    );
    assert_eq!(
        events(&app, "unknown"),
        0.0,
        "an error reply is a known outcome"
    );
    assert!(app.alive(), "the app died:\n{}", app.log());
    let other_kinds: f64 = ["readonly", "loading", "masterdown", "server_other"]
        .iter()
        .filter(|k| **k != kind)
        .map(|k| redis_errors(&app, k))
        .sum();
    assert_eq!(other_kinds, 0.0, "misclassified errors:\n{}", metrics(&app));

    switch_ok(&app, &real.url());
    assert!(
        wait_until(LONG, || events(&app, "acked") >= 50.0),
        "no acked events after switching to a real Redis:\n{}",
        app.log()
    );
    let status = app.terminate();
    assert!(status.success(), "exit {status}:\n{}", app.log());
    let (code, v, err) = verify(&real.url(), &pg.url());
    assert_eq!(code, 0, "{v} {err}");
}

#[test]
fn should_survive_a_loading_server_and_recover_after_a_switch() {
    refused_then_recovered("LOADING Redis is loading the dataset in memory", "loading");
}

#[test]
fn should_survive_a_masterdown_server_and_recover_after_a_switch() {
    refused_then_recovered(
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'",
        "masterdown",
    );
}

/// A server without HELLO (like Redis < 6, or a proxy that does not know it): with the
/// default `--redis-protocol auto` the app falls back to RESP2 and works as before; with
/// `--redis-protocol 3` it refuses the server, stays up, and says why in /health and the log.
#[test]
fn should_fall_back_to_resp2_without_hello_and_fail_clearly_when_resp3_is_required() {
    let fake = FakeRedis::start("ERR unknown command 'HELLO', with args beginning with: '3' ");
    let pg = PgServer::start();
    let health = |app: &App| -> (u16, Option<api::Health>) {
        let (status, body) = app.get("/health");
        (status, serde_json::from_str(&body).ok())
    };

    let argv = args(
        &fake.url(),
        &pg.url(),
        &["--events-per-second", "50", "--queries-per-second", "50"],
    );
    let mut app = spawn_running(&refs(&argv), &[]);
    assert!(
        wait_until(LONG, || health(&app).0 == 200),
        "auto: /health not 200 on a RESP2-only server: {:?}\n{}",
        health(&app),
        app.log()
    );
    let (_, h) = health(&app);
    assert_eq!(h.as_ref().and_then(|h| h.redis.protocol), Some(2), "{h:?}");
    // The refused HELLO is part of the handshake, not an error; the commands the impostor
    // refuses afterwards are.
    assert!(
        wait_until(LONG, || events(&app, "failed") >= 20.0),
        "{}",
        metrics(&app)
    );
    assert_eq!(redis_errors(&app, "connect"), 0.0, "{}", metrics(&app));
    assert!(app.terminate().success(), "{}", app.log());

    let argv = args(
        &fake.url(),
        &pg.url(),
        &[
            "--events-per-second",
            "50",
            "--queries-per-second",
            "50",
            "--redis-protocol",
            "3",
        ],
    );
    let mut app = spawn_running(&refs(&argv), &[]);
    assert!(
        wait_until(LONG, || {
            let (status, h) = health(&app);
            status == 503
                && h.and_then(|h| h.redis.error)
                    .is_some_and(|e| e.contains("does not support RESP3"))
        }),
        "--redis-protocol 3: /health does not say why: {:?}",
        health(&app)
    );
    let (_, h) = health(&app);
    eprintln!(
        "--redis-protocol 3 on a server without HELLO: /health redis = {:?}",
        h.map(|h| h.redis)
    );
    assert!(wait_until(LONG, || redis_errors(&app, "connect") > 0.0));
    assert_eq!(events(&app, "acked"), 0.0);
    let log = app.log();
    assert!(
        log.contains("does not support RESP3") && log.contains("--redis-protocol"),
        "the log does not say why:\n{log}"
    );
    assert!(app.alive(), "{log}");
    assert!(app.terminate().success(), "{}", app.log());
}

// ---------------------------------------------------------------------------------------------
// Switches to, between and from Redis Clusters

/// GET PATH read into its typed document.
fn get_doc<T: DeserializeOwned>(app: &App, path: &str) -> T {
    doc(&app.get(path).1)
}

fn health_of(app: &App) -> api::Health {
    get_doc(app, "/health")
}

/// Waits until acked events grew by N past their count now (the load runs on the new target).
fn acked_grows(app: &App, n: f64) {
    let from = events(app, "acked");
    assert!(
        wait_until(LONG, || events(app, "acked") >= from + n),
        "acked events stalled at {from}:\n{}",
        app.log()
    );
}

/// Keys in every primary of CLUSTER (each one got part of the load).
fn keys_per_primary(cluster: &RedisCluster) -> Vec<u64> {
    cluster
        .primaries()
        .into_iter()
        .map(|i| cluster.cli(i, &["DBSIZE"]).parse().unwrap_or(0))
        .collect()
}

/// `switch --to TO --wait 30` (and EXTRA) succeeds, to a target of MODE.
fn switched(app: &App, to: &str, extra: &[&str], mode: TargetMode) {
    let out = switch_with(app, to, Some(TOKEN), &[extra, &["--wait", "30"]].concat());
    let first = out.stdout.lines().next().unwrap_or_default();
    let answer = serde_json::from_str::<SwitchAnswer>(first).ok();
    assert_eq!(
        (out.code(), answer.map(|a| a.mode)),
        (Some(0), Some(mode)),
        "{} {}\n{}",
        out.stdout,
        out.stderr,
        app.log()
    );
}

#[test]
fn should_switch_from_standalone_to_a_cluster_to_another_cluster_and_back() {
    let r1 = RedisServer::start();
    let c1 = RedisCluster::start(3);
    let c2 = RedisCluster::start(3);
    let pg = PgServer::start();
    let argv = args(
        &r1.url(),
        &pg.url(),
        &["--events-per-second", "200", "--queries-per-second", "200"],
    );
    let mut app = App::spawn_healthy(&refs(&argv), &[("ADMIN_TOKEN", TOKEN)], LONG);
    acked_grows(&app, 200.0);
    let status: api::Status = get_doc(&app, "/api/status");
    assert_eq!(status.redis.mode, TargetMode::Standalone);

    // Standalone -> cluster: one seed, --to-mode auto (the target says cluster_enabled:1).
    switched(&app, &c1.url(), &[], TargetMode::Cluster);
    acked_grows(&app, 400.0);
    assert!(
        keys_per_primary(&c1).iter().all(|k| *k > 0),
        "{:?}",
        keys_per_primary(&c1)
    );
    // Health and status name every primary, the slots covered and the map's version.
    let ok = wait_until(LONG, || {
        health_of(&app)
            .redis_cluster
            .is_some_and(|c| c.slots_covered == 16384 && c.nodes.len() == 3)
    });
    assert!(ok, "{}", app.get("/health").1);
    let status: api::Status = get_doc(&app, "/api/status");
    assert_eq!(status.redis.mode, TargetMode::Cluster, "{}", js(&status));
    let cluster = status.redis.cluster.as_ref().expect("the cluster's state");
    assert_eq!(cluster.map_version, 1, "{}", js(&status));
    for n in &cluster.nodes {
        assert_eq!(n.status, "up", "{}", js(&status));
    }
    assert_eq!(metric(&app, "analytics_redis_cluster_node_up", &[]), 3.0);
    assert!(metric(&app, "analytics_redis_node_commands_total", &[]) > 0.0);
    let r1_keys_then: u64 = r1.cli(&["DBSIZE"]).parse().unwrap_or(0);

    // Cluster -> cluster, every seed given.
    switched(
        &app,
        &c2.seeds(),
        &["--to-mode", "cluster"],
        TargetMode::Cluster,
    );
    acked_grows(&app, 400.0);
    assert!(
        keys_per_primary(&c2).iter().all(|k| *k > 0),
        "{:?}",
        keys_per_primary(&c2)
    );
    // The first cluster's map has no place in the health check any more.
    let in_map = |nodes: &[String], cluster: &RedisCluster| {
        let ports: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!(":{}", n.port))
            .collect();
        nodes.iter().any(|n| ports.iter().any(|p| n.ends_with(p)))
    };
    let ok = wait_until(LONG, || {
        let nodes: Vec<String> = health_of(&app)
            .redis_cluster
            .map(|c| c.nodes.into_iter().map(|n| n.node).collect())
            .unwrap_or_default();
        in_map(&nodes, &c2) && !in_map(&nodes, &c1)
    });
    assert!(ok, "{}", app.get("/health").1);

    // Cluster -> standalone: back to the first server, which takes the load again.
    switched(&app, &r1.url(), &[], TargetMode::Standalone);
    let before = r1.cli(&["INFO", "stats"]);
    acked_grows(&app, 400.0);
    assert_ne!(before, r1.cli(&["INFO", "stats"]));
    assert!(
        wait_until(LONG, || health_of(&app).redis_cluster.is_none()),
        "{}",
        app.get("/health").1
    );
    assert!(r1.cli(&["DBSIZE"]).parse::<u64>().unwrap_or(0) >= r1_keys_then);
    assert_eq!(metric(&app, "analytics_redis_cluster_node_up", &[]), 0.0);

    // The report has the three cutovers, each complete.
    let report: Report = get_doc(&app, "/report");
    let switches = &report.migration.switches;
    assert_eq!(switches.len(), 3, "{}", js(&report));
    for s in switches {
        assert!(s.cutover.complete, "{}", js(s));
    }
    let cluster = report.redis_cluster.as_ref().expect("the cluster's part");
    assert!(cluster.redirects.contains_key("moved"), "{}", js(&report));
    assert!(cluster.node_outages.is_empty(), "{}", js(&report));
    // Make before break: no event failed or was left unknown across the three switches.
    let status = app.terminate();
    assert!(status.success(), "{}", app.log());
    let summary = common::summary_from_log(&app.log()).expect("summary");
    assert_eq!(
        (
            summary["events_by_outcome"]["failed"].as_u64(),
            summary["events_by_outcome"]["unknown"].as_u64()
        ),
        (Some(0), Some(0)),
        "{summary}"
    );
}

//! No latency figure may look better than what happened: successes, errors and skipped
//! operations are kept apart (metrics, /api/status, the end-of-run summary), and the
//! "including misses" percentile counts every failed or skipped operation as a miss.
//!
//! Like tests/faults.rs: the real binary against private servers, no assertion on speed; the
//! only latency bound is the command timeout, which a success on loopback stays far below.

mod common;

use std::time::Duration;

use common::{metric_sum, summary_from_log, wait_until, App, PgServer, RedisServer};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);
/// The command timeout of the skip test (ms): generous, so that the success p99 stays far below
/// it on a busy machine; a missed query counts as later than it.
const TIMEOUT_MS: f64 = 2000.0;

fn app(redis: &RedisServer, pg: &PgServer, extra: &[&str]) -> App {
    let argv = common::app_args(
        &redis.url(),
        &pg.url(),
        &[
            "--seed",
            "31",
            "--organizations",
            "20",
            "--users-per-org",
            "50",
            "--events-per-second",
            "100",
            "--queries-per-second",
            "200",
        ],
        extra,
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let app = App::spawn_healthy(&argv, &[], LONG);
    assert!(
        wait_until(LONG, || metric(
            &app,
            "analytics_query_duration_seconds_count",
            &[("result", "ok")]
        ) > 0.0),
        "no query answered:\n{}",
        app.log()
    );
    app
}

fn metric(app: &App, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, body) = app.get("/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    metric_sum(&body, name, labels).unwrap_or(0.0)
}

fn status(app: &App) -> Value {
    let (code, body) = app.get("/api/status");
    assert_eq!(code, 200, "/api/status: {body}");
    serde_json::from_str(&body).expect("status JSON")
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v}", path.join(".")))
}

/// A frozen Redis with two workers at most: due operations are skipped (`max_workers`) while
/// the two in flight wait for their timeout. The skips show in /api/status and the summary,
/// the p99 including misses reads as a miss (above the command timeout), and the p99 of
/// successes stays below the timeout: the skipped load is not hidden in it, nor does it
/// make the successes look slow.
#[test]
fn should_show_skips_and_count_them_as_misses_while_success_p99_stays_low() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let mut app = app(
        &redis,
        &pg,
        &["--max-workers", "2", "--command-timeout-ms", "2000"],
    );
    // Enough answered queries that a handful answered slowly right after the resume (their
    // commands waited for a new connection) stay under 1% of them.
    let ok = |app: &App| {
        metric(
            app,
            "analytics_query_duration_seconds_count",
            &[("result", "ok")],
        )
    };
    assert!(wait_until(LONG, || ok(&app) >= 1000.0), "{}", app.log());
    let skipped = |app: &App| {
        metric(
            app,
            "analytics_skipped_operations_total",
            &[("operation", "query"), ("reason", "max_workers")],
        )
    };
    let before = skipped(&app);

    redis.pause();
    assert!(
        wait_until(LONG, || skipped(&app) >= before + 100.0),
        "no max_workers skips with Redis frozen:\n{}",
        app.log()
    );
    let mut seen = Value::Null;
    let shows = wait_until(LONG, || {
        seen = status(&app);
        f(&seen, &["skipped_last_10s", "max_workers"]) > 0.0
            && f(
                &seen,
                &[
                    "query_outcomes_last_10s",
                    "skipped_by_reason",
                    "max_workers",
                ],
            ) > 0.0
            && f(&seen, &["query_latency_including_misses_ms", "p99"]) >= TIMEOUT_MS
    });
    redis.resume();
    eprintln!(
        "/api/status with Redis frozen: skipped_last_10s {}, query outcomes {}, p99 {} ms, \
         p99 including misses {} ms",
        seen["skipped_last_10s"],
        seen["query_outcomes_last_10s"],
        seen["query_latency_ms"]["p99"],
        seen["query_latency_including_misses_ms"]["p99"]
    );
    assert!(
        shows,
        "/api/status does not show the skips as misses: {seen}"
    );
    let answered = ok(&app);
    assert!(
        wait_until(LONG, || ok(&app) >= answered + 1000.0),
        "queries not answered again after the resume:\n{}",
        app.log()
    );
    // The skips are in the Prometheus histogram including misses too (+Inf bucket only). The
    // counter is read first: each skip is counted, then recorded, so later the histogram holds
    // at least as many misses (skips may go on meanwhile).
    let skips = skipped(&app);
    let (_, body) = app.get("/metrics");
    let bucket = |le: &str| {
        metric_sum(
            &body,
            "analytics_query_duration_including_misses_seconds_bucket",
            &[("le", le)],
        )
        .unwrap_or(0.0)
    };
    assert!(
        bucket("+Inf") - bucket("10") >= skips,
        "skips missing from the including-misses histogram"
    );

    let exit = app.terminate();
    assert!(exit.success(), "exit {exit}:\n{}", app.log());
    let s = summary_from_log(&app.log()).expect("summary in the log");
    let q = &s["query_outcomes"];
    eprintln!(
        "summary: query outcomes {q}, skipped {}, query p99 {} ms, p99 including misses {} ms",
        s["skipped"], s["query_latency_ms"]["p99"], s["query_latency_including_misses_ms"]["p99"]
    );
    assert!(f(&s, &["skipped", "max_workers"]) > 0.0, "{s}");
    assert!(
        f(q, &["skipped_by_reason", "max_workers"]) >= 100.0,
        "summary query outcomes: {q}"
    );
    assert_eq!(
        f(q, &["due"]),
        f(q, &["ok"]) + f(q, &["error"]) + f(q, &["skipped"]),
        "{q}"
    );
    let with = &s["query_latency_including_misses_ms"];
    assert!(
        f(with, &["missed"]) / f(with, &["operations"]) > 0.01,
        "the run missed under 1% of its queries; the test needs more: {with}"
    );
    assert!(
        f(with, &["p99"]) >= TIMEOUT_MS,
        "p99 including misses looks healthy with {} of {} queries missed: {with}",
        with["missed"],
        with["operations"]
    );
    assert_eq!(f(with, &["p99"]), f(with, &["miss_ms"]), "{with}");
    assert!(
        f(&s, &["query_latency_ms", "p99"]) < TIMEOUT_MS,
        "success p99 not below the command timeout: {}",
        s["query_latency_ms"]
    );
    let ev = &s["event_latency_including_misses_ms"];
    assert!(f(ev, &["missed"]) > 0.0, "{ev}");
}

/// Redis killed: every query fails fast ("no connection up"). Those failures go to the error
/// series, never to the success histogram, whose count stands still while errors grow.
#[test]
fn should_keep_fast_errors_out_of_the_success_histogram() {
    let mut redis = RedisServer::start();
    let pg = PgServer::start();
    let mut app = app(&redis, &pg, &["--command-timeout-ms", "300"]);
    let count = |app: &App, name: &str, result: &str| {
        metric(app, &format!("{name}_count"), &[("result", result)])
    };
    const Q: &str = "analytics_query_duration_seconds";
    const E: &str = "analytics_event_duration_seconds";

    redis.stop();
    assert!(
        wait_until(LONG, || count(&app, Q, "error") >= 20.0),
        "no query errors with Redis killed:\n{}",
        app.log()
    );
    const S: &str = "analytics_query_service_duration_seconds";
    let (q_ok, e_ok, s_ok) = (
        count(&app, Q, "ok"),
        count(&app, E, "ok"),
        count(&app, S, "ok"),
    );
    let (q_err, e_err) = (count(&app, Q, "error"), count(&app, E, "error"));
    assert!(
        wait_until(LONG, || count(&app, Q, "error") >= q_err + 100.0
            && count(&app, E, "error") >= e_err + 50.0),
        "errors stopped growing:\n{}",
        app.log()
    );
    assert_eq!(
        count(&app, Q, "ok"),
        q_ok,
        "failed queries in the success histogram"
    );
    assert_eq!(
        count(&app, E, "ok"),
        e_ok,
        "failed events in the success histogram"
    );
    assert_eq!(
        count(&app, S, "ok"),
        s_ok,
        "failed queries in the service-time successes"
    );
    // /api/status: once the last 10 s hold only failures, no success latency is shown, and
    // the p99 including misses is a miss.
    let mut seen = Value::Null;
    assert!(
        wait_until(LONG, || {
            seen = status(&app);
            f(&seen, &["query_outcomes_last_10s", "ok"]) == 0.0
                && f(&seen, &["query_outcomes_last_10s", "error"]) > 0.0
        }),
        "/api/status still shows answered queries: {seen}"
    );
    assert_eq!(f(&seen, &["query_latency_ms", "p99"]), 0.0, "{seen}");
    let with = &seen["query_latency_including_misses_ms"];
    assert_eq!(f(with, &["p99"]), f(with, &["miss_ms"]), "{with}");
    assert!(f(&seen, &["query_error_latency_ms", "max"]) > 0.0, "{seen}");
    let exit = app.terminate();
    assert!(exit.success(), "exit {exit}:\n{}", app.log());
    let s = summary_from_log(&app.log()).expect("summary in the log");
    assert!(f(&s, &["query_outcomes", "error"]) >= 100.0, "{s}");
    assert_eq!(
        f(&s, &["query_outcomes", "ok"]),
        q_ok,
        "{}",
        s["query_outcomes"]
    );
}

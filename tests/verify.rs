//! `analytics-demo verify` judges exactly what the checked Redis was given: the runs it
//! declares (`a:runs`), their rows in `run_rollups`, and every counter key in the window.
//! Real redis-server and PostgreSQL (tests/common); small loads, a few seconds each.

mod common;

use std::time::Duration;

use common::{refs, run_binary, summary_from_log, wait_until, App, PgServer, RedisServer};
use serde_json::Value;

/// Arguments of a small run: 200 events/s, few organizations, `extra` on top.
fn args(redis: &RedisServer, pg: &PgServer, extra: &[&str]) -> Vec<String> {
    common::app_args(
        &redis.url(),
        &pg.url(),
        &[
            "--events-per-second",
            "200",
            "--queries-per-second",
            "50",
            "--organizations",
            "8",
            "--users-per-org",
            "20",
        ],
        extra,
    )
}

/// A 3-second run to its end (exit 0) that made events; returns its summary.
fn one_run(redis: &RedisServer, pg: &PgServer) -> Value {
    let a = args(redis, pg, &["--duration", "3"]);
    let mut app = App::spawn(&refs(&a), &[]);
    let status = app
        .wait(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("the run did not end:\n{}", app.log()));
    let log = app.log();
    assert!(status.success(), "exit {status}:\n{log}");
    let summary = summary_from_log(&log).unwrap_or_else(|| panic!("no summary:\n{log}"));
    assert!(
        summary["events"].as_u64().unwrap_or(0) > 0,
        "no events:\n{log}"
    );
    summary
}

/// `verify --json` with EXTRA arguments: exit code and verdict.
fn verify(redis: &RedisServer, pg: &PgServer, extra: &[&str]) -> (i32, Value) {
    common::verify_json_with(&redis.url(), &pg.url(), extra)
}

/// `verify` (text) with EXTRA arguments: exit code and stdout, echoed for the log.
fn verify_text(redis: &RedisServer, pg: &PgServer, extra: &[&str], label: &str) -> (i32, String) {
    let mut a = vec![
        "verify",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
    ]
    .into_iter()
    .map(str::to_string)
    .collect::<Vec<_>>();
    a.extend(extra.iter().map(|s| s.to_string()));
    let out = run_binary(&refs(&a), &[], Duration::from_secs(60));
    eprintln!("--- verify text output ({label}) ---\n{}", out.stdout);
    (out.code().expect("verify killed"), out.stdout)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v}"))
}

/// The run ids verify judged.
fn judged(v: &Value) -> Vec<i64> {
    v["runs_judged"]
        .as_array()
        .unwrap_or_else(|| panic!("no runs_judged in {v}"))
        .iter()
        .map(|r| r["run_id"].as_i64().expect("run_id"))
        .collect()
}

/// (key, acked) of the run's counter keys without unknown outcomes, most acknowledged first,
/// from its `events` rows (not from the rollups `verify` reads).
fn run_counters(pg: &PgServer, run_id: i64) -> Vec<(String, u64)> {
    pg.psql(&format!(
        "SELECT org_id, bucket, event_type, count(*) FILTER (WHERE outcome = 0) AS acked \
         FROM events WHERE run_id = {run_id} GROUP BY 1, 2, 3 \
         HAVING count(*) FILTER (WHERE outcome = 2) = 0 ORDER BY acked DESC, 1, 2, 3"
    ))
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        let ty: usize = f[2].parse().unwrap();
        (
            format!("a:{{{}}}:ev:{}:{}", f[0], common::TYPE_NAMES[ty], f[1]),
            f[3].parse().unwrap(),
        )
    })
    .collect()
}

fn run_id(summary: &Value) -> i64 {
    summary["run_id"].as_i64().expect("run_id in the summary")
}

#[test]
fn should_judge_only_the_run_a_restarted_redis_was_given() {
    let mut redis = RedisServer::start();
    let pg = PgServer::start();
    let first = run_id(&one_run(&redis, &pg));
    // No persistence: the restarted server is empty, PostgreSQL keeps the first run's rows.
    redis.restart();
    assert_eq!(
        redis.cli(&["DBSIZE"]),
        "0",
        "the restarted redis is not empty"
    );
    let second = run_id(&one_run(&redis, &pg));
    assert_ne!(first, second);

    let (code, text) = verify_text(&redis, &pg, &[], "restart");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("verify: CLEAN"), "{text}");
    assert!(text.contains(&format!("run {second} ")), "{text}");
    assert!(!text.contains(&first.to_string()), "{text}");
    let (code, v) = verify(&redis, &pg, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(judged(&v), [second], "{v}");
    assert_eq!(v["runs_judged"][0]["state"], "clean", "{v}");
    assert_eq!(v["runs_from"], "declared", "{v}");
    assert!(u(&v, "keys_checked") > 0, "{v}");
    for key in [
        "lost_acknowledged_increments",
        "phantom_increments",
        "stray_keys",
    ] {
        assert_eq!(u(&v, key), 0, "{key}: {v}");
    }
    // Naming the first run too: its counters are not in this Redis.
    let both = format!("{first},{second}");
    let (code, v) = verify(&redis, &pg, &["--run", &both]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["runs_from"], "override", "{v}");
    assert!(u(&v, "lost_acknowledged_increments") > 0, "{v}");
}

/// Fresh servers after one clean run: the servers, the run id, and the run's counter with the
/// most acknowledged increments (and that count).
fn after_one_run() -> (RedisServer, PgServer, i64, String, u64) {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let id = run_id(&one_run(&redis, &pg));
    let (key, acked) = run_counters(&pg, id).swap_remove(0);
    (redis, pg, id, key, acked)
}

/// verify, text then JSON: both exit 1 for PROBLEM alone, the text says so; the JSON verdict.
fn fails_with(redis: &RedisServer, pg: &PgServer, problem: &str) -> Value {
    let (code, text) = verify_text(redis, pg, &[], problem);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("NOT CLEAN: {problem}\n")), "{text}");
    let (code, v) = verify(redis, pg, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["clean"], false, "{v}");
    assert_eq!(v["problems"], serde_json::json!([problem]), "{v}");
    v
}

#[test]
fn should_find_a_planted_loss_in_a_declared_run() {
    let (redis, pg, id, key, acked) = after_one_run();
    assert!(acked >= 3, "{key}: {acked}");
    assert_eq!(redis.cli(&["DECRBY", &key, "3"]), (acked - 3).to_string());
    let v = fails_with(&redis, &pg, "lost acknowledged increments");
    assert_eq!(judged(&v), [id], "{v}");
    assert_eq!(u(&v, "lost_acknowledged_increments"), 3, "{v}");
    assert_eq!(u(&v, "keys_with_loss"), 1, "{v}");
}

#[test]
fn should_fail_on_a_stray_counter_key_and_list_it() {
    let (redis, pg, _, key, _) = after_one_run();
    // Another organization's counter of the same hour: no row of the run explains it.
    let bucket = key.rsplit(':').next().unwrap();
    let stray = format!("a:{{999999}}:ev:click:{bucket}");
    assert_eq!(redis.cli(&["SET", &stray, "4"]), "OK");
    let (_, text) = verify_text(&redis, &pg, &[], "stray key listed");
    assert!(
        text.contains(&format!("holding 4 increments): {stray}\n")),
        "{text}"
    );
    let v = fails_with(&redis, &pg, "stray counter keys");
    assert_eq!(u(&v, "stray_keys"), 1, "{v}");
    assert_eq!(u(&v, "stray_increments"), 4, "{v}");
    assert_eq!(v["stray_sample"], serde_json::json!([stray]), "{v}");
}

#[test]
fn should_fail_on_a_planted_phantom_in_a_clean_run() {
    let (redis, pg, _, key, acked) = after_one_run();
    assert_eq!(redis.cli(&["INCRBY", &key, "5"]), (acked + 5).to_string());
    let v = fails_with(&redis, &pg, "phantom increments");
    assert_eq!(v["runs_judged"][0]["state"], "clean", "{v}");
    assert_eq!(u(&v, "phantom_increments"), 5, "{v}");
    assert_eq!(u(&v, "keys_with_phantoms"), 1, "{v}");
    assert_eq!(u(&v, "explained_phantom_increments"), 0, "{v}");
}

#[test]
fn should_name_a_killed_run_as_unclean() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = args(&redis, &pg, &[]);
    let mut app = App::spawn(&refs(&a), &[]);
    // Rows in PostgreSQL first (the load runs and the writer commits), then SIGKILL.
    assert!(
        wait_until(Duration::from_secs(60), || pg
            .try_psql("SELECT count(*) FROM events")
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .is_some_and(|n| n > 0)),
        "no rows before the kill:\n{}",
        app.log()
    );
    let id: i64 = pg.psql("SELECT run_id FROM runs").parse().expect("one run");
    app.signal(libc::SIGKILL);
    app.wait(Duration::from_secs(30))
        .expect("killed app reaped");

    // The run stops being seen: verify calls it "did not end" once its heartbeat is stale
    // (15 s), "running" until then.
    let mut last = Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (code, v) = verify(&redis, &pg, &[]);
            last = v;
            assert_eq!(
                code, 0,
                "a crash explains missing rows, it loses nothing: {last}"
            );
            let state = last["runs_judged"][0]["state"]
                .as_str()
                .unwrap_or("")
                .to_string();
            assert!(state == "running" || state == "did_not_end", "{last}");
            state == "did_not_end"
        }),
        "the killed run is never called unclean: {last}"
    );
    let v = last;
    assert_eq!(judged(&v), [id], "{v}");
    assert_eq!(v["unclean_runs"][0]["run_id"], id, "{v}");
    assert_eq!(v["unclean_runs"][0]["state"], "did_not_end", "{v}");
    assert_eq!(u(&v, "lost_acknowledged_increments"), 0, "{v}");
    assert_eq!(u(&v, "phantom_increments"), 0, "{v}");
    assert_eq!(u(&v, "stray_keys"), 0, "{v}");
    eprintln!(
        "killed run: explained phantoms {} in {} keys, explained stray keys {}, rows possibly missing {}",
        v["explained_phantom_increments"],
        v["keys_with_explained_phantoms"],
        v["explained_stray_keys"],
        v["unclean_runs"][0]["rows_possibly_missing"]
    );
    let (code, text) = verify_text(&redis, &pg, &[], "crash");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("run {id} ")) && text.contains("DID NOT END CLEANLY"),
        "{text}"
    );

    // A phantom on a key the killed run wrote is explained by it, not a failure; a loss
    // still fails.
    let explained = u(&v, "explained_phantom_increments");
    let (key, acked) = &run_counters(&pg, id)[0];
    redis.cli(&["INCRBY", key, "5"]);
    let (code, v) = verify(&redis, &pg, &[]);
    assert_eq!(code, 0, "{v}");
    assert!(
        u(&v, "explained_phantom_increments") >= explained + 5,
        "{v}"
    );
    assert_eq!(u(&v, "phantom_increments"), 0, "{v}");
    assert_eq!(redis.cli(&["SET", key, "0"]), "OK");
    let (code, v) = verify(&redis, &pg, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(u(&v, "lost_acknowledged_increments"), *acked, "{v}");
}

#[test]
fn should_fail_when_the_target_declares_no_runs_and_take_overrides() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let summary = one_run(&redis, &pg);
    let id = run_id(&summary);
    // The counters without their declaration (e.g. a migration that copied a:{*} only).
    assert_eq!(redis.cli(&["DEL", "a:runs"]), "1");

    let (code, text) = verify_text(&redis, &pg, &[], "no runs declared");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("the target declares no runs"), "{text}");
    assert!(
        text.contains("--run ID") && text.contains("--since"),
        "{text}"
    );
    let (code, v) = verify(&redis, &pg, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(judged(&v), Vec::<i64>::new(), "{v}");
    assert!(u(&v, "stray_keys") > 0, "every counter is unexplained: {v}");

    // Named by id (flag or env), or by start time: clean.
    let (code, v) = verify(&redis, &pg, &["--run", &id.to_string()]);
    assert_eq!((code, judged(&v)), (0, vec![id]), "{v}");
    let out = run_binary(
        &[
            "verify",
            "--redis-url",
            &redis.url(),
            "--database-url",
            &pg.url(),
            "--json",
        ],
        &[("VERIFY_RUN", &format!("{id}"))],
        Duration::from_secs(60),
    );
    assert_eq!(
        out.code(),
        Some(0),
        "VERIFY_RUN: {}{}",
        out.stdout,
        out.stderr
    );
    let started: i64 = pg
        .psql(&format!(
            "SELECT floor(extract(epoch FROM started_at))::int8 FROM runs WHERE run_id = {id}"
        ))
        .parse()
        .unwrap();
    let (code, v) = verify(&redis, &pg, &["--since", &started.to_string()]);
    assert_eq!((code, judged(&v)), (0, vec![id]), "{v}");
    // A run that did not write here: its counters are stray.
    let (code, v) = verify(&redis, &pg, &["--since", "2099-01-01T00:00:00Z"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        v["problems"][0], "no run matches --run/--since/--run-name",
        "{v}"
    );
    // A bad value is a usage error.
    let out = run_binary(
        &["verify", "--since", "last tuesday"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("--since (VERIFY_SINCE)"),
        "{}",
        out.stderr
    );
}

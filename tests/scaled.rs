//! Several instances as one run (RUN_NAME, INSTANCE_COUNT): the start barrier in PostgreSQL,
//! the rates split exactly, and `report --run-name` / `verify --run-name` over all of them.
//! Real redis-server and PostgreSQL; small loads.

mod common;

use std::time::Duration;

use common::{run_binary, App, PgServer, RedisServer};
use serde_json::Value;

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Instance INDEX of a run of COUNT named NAME, as a Kubernetes Indexed Job starts it
/// (JOB_COMPLETION_INDEX), with the run's total rates.
fn instance(
    redis: &RedisServer,
    pg: &PgServer,
    name: &str,
    count: &str,
    index: &str,
    extra: &[&str],
) -> App {
    let args = common::app_args(
        &redis.url(),
        &pg.url(),
        &[
            "--events-per-second",
            "301",
            "--queries-per-second",
            "300",
            "--organizations",
            "30",
            "--users-per-org",
            "20",
            "--bind-address",
            "127.0.0.1:0",
        ],
        extra,
    );
    App::spawn(
        &refs(&args),
        &[
            ("RUN_NAME", name),
            ("INSTANCE_COUNT", count),
            ("JOB_COMPLETION_INDEX", index),
        ],
    )
}

fn ended(app: &mut App) -> (i32, String) {
    let status = app
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the instance did not end:\n{}", app.log()));
    (status.code().unwrap_or(-1), app.log())
}

#[test]
fn should_start_every_instance_together_and_report_the_run_as_one() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let mut a = instance(&redis, &pg, "scaled-1", "3", "0", &["--duration", "4"]);
    let mut b = instance(&redis, &pg, "scaled-1", "3", "1", &["--duration", "4"]);
    // The third comes 3 s later: the first two wait for it at the barrier.
    std::thread::sleep(Duration::from_secs(3));
    let mut c = instance(&redis, &pg, "scaled-1", "3", "2", &["--duration", "4"]);
    for app in [&mut a, &mut b, &mut c] {
        let (code, log) = ended(app);
        assert_eq!(code, 0, "{log}");
        assert!(log.contains("every instance is there"), "{log}");
    }
    let out = run_binary(
        &[
            "report",
            "--run-name",
            "scaled-1",
            "--json",
            "--database-url",
            &pg.url(),
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let r: Value = serde_json::from_str(out.stdout.trim()).expect("JSON report");
    eprintln!("{r}");
    assert_eq!(
        (
            r["instances_found"].as_u64(),
            r["instances_finished"].as_u64()
        ),
        (Some(3), Some(3)),
        "{r}"
    );
    // The totals split exactly: 301 = 101 + 100 + 100.
    assert_eq!(r["events_target_per_second"], 301, "{r}");
    assert_eq!(r["queries_target_per_second"], 300, "{r}");
    let per: Vec<u64> = r["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_index"].as_u64().unwrap())
        .collect();
    assert_eq!(per, [0, 1, 2], "{r}");
    // Started at one instant (PostgreSQL's clock), although one came 3 s late.
    let skew = r["start_skew_ms"].as_f64().expect("skew");
    assert!(skew < 1000.0, "start skew {skew} ms: {r}");
    // Every instance's latency is in the merged histogram.
    assert!(r["events"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["events_by_outcome"]["failed"], 0, "{r}");
    // verify judges the three runs together.
    let (code, v) = common::verify_json_with(&redis.url(), &pg.url(), &["--run-name", "scaled-1"]);
    assert_eq!((code, &v["clean"]), (0, &Value::Bool(true)), "{v}");
    assert_eq!(v["runs_judged"].as_array().map(Vec::len), Some(3), "{v}");
}

#[test]
fn should_give_up_at_the_start_timeout_naming_the_missing_instances() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let mut a = instance(&redis, &pg, "scaled-2", "3", "0", &["--start-timeout", "2"]);
    let mut c = instance(&redis, &pg, "scaled-2", "3", "2", &["--start-timeout", "2"]);
    for app in [&mut a, &mut c] {
        let (code, log) = ended(app);
        assert_eq!(code, 1, "{log}");
        assert!(log.contains("2 of 3 instances registered"), "{log}");
        assert!(log.contains("missing instance index(es): 1"), "{log}");
    }
    // A run of another size under the same name is refused at once.
    let mut d = instance(
        &redis,
        &pg,
        "scaled-2",
        "2",
        "1",
        &["--start-timeout", "30"],
    );
    let (code, log) = ended(&mut d);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("is a run of 3 instances, but INSTANCE_COUNT is 2"),
        "{log}"
    );
}

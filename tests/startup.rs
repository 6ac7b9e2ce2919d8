//! End-to-end tests of the start of a run: the app waiting for PostgreSQL (an endless run and
//! a `--duration` run), and every start starting its load. The real binary against private
//! Redis and PostgreSQL servers (tests/common), as in `engine.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{
    assert_reconciled, finish, metric_sum, summary_from_log, u, wait_until, App, TestContext,
};
use serde_json::Value;

/// A test's own Redis and PostgreSQL, and the app against them with this file's defaults.
fn context() -> TestContext {
    TestContext::new(&["--seed", "7"])
}

/// The late-Postgres scenario: the app starts while nothing listens on the Postgres port,
/// waits (503, alive), then gets going once Postgres is up.
fn start_before_postgres(t: &mut TestContext) -> App {
    t.pg.stop(); // nothing listens on pg.port until the restart below
    let app = t.app().events(100).queries(100).orgs(20).users(20).spawn();
    // The HTTP server answers, and says Postgres is down, for a while.
    assert!(
        wait_until(Duration::from_secs(30), || app.get("/health").0 != 0),
        "no HTTP answer while postgres is down:\n{}",
        app.log()
    );
    let until = Instant::now() + Duration::from_secs(4);
    let (mut saw_down, mut saw_waiting) = (false, false);
    while Instant::now() < until {
        let (status, h) = app.health();
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
        metric_sum(&app.metrics(), "analytics_events_total", &[]).unwrap_or(0.0),
        0.0,
        "events generated before the schema exists"
    );
    assert!(app.alive(), "exited without postgres:\n{}", app.log());

    t.pg.restart();
    assert!(
        app.wait_healthy(Duration::from_secs(30)),
        "not healthy after postgres came up: {:?}\n{}",
        app.get("/health"),
        app.log()
    );
    assert_eq!(app.health().1["load"], "running");
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
    app
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
    let mut t = context();
    let mut app = start_before_postgres(&mut t);
    assert!(
        wait_until(Duration::from_secs(30), || t
            .pg
            .try_int("SELECT count(*) FROM events")
            > 0),
        "no rows after postgres came up:\n{}",
        app.log()
    );
    app.signal(libc::SIGTERM);
    let (_, summary) = finish(&mut app, Duration::from_secs(30));
    assert_reconciled(&t, &summary);
}

/// A `--duration` run started while Postgres is down does not sit silent: it keeps saying
/// that it waits and that its DURATION starts with the load, and once Postgres is up it runs
/// for DURATION and exits 0 with every row written.
#[test]
fn should_say_it_waits_for_postgres_in_a_duration_run() {
    let mut t = context();
    t.pg.stop();
    let mut app = t
        .app()
        .duration(3)
        .events(100)
        .queries(100)
        .orgs(20)
        .spawn();
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
    let (status, h) = app.health();
    assert_eq!(
        (status, h["load"].as_str()),
        (503, Some("waiting_for_postgres")),
        "{h}"
    );

    t.pg.restart();
    let (_, summary) = finish(&mut app, Duration::from_secs(60));
    assert!(u(&summary, &["events"]) > 0, "{summary}");
    assert_reconciled(&t, &summary);
}

/// Every start must start the load, even with several instances starting at once on a
/// busy machine (20 rounds of 3 concurrent starts, no retry). Guards against the start-up
/// hang: glommio 0.9 could park an executor that still had tasks to run, for ever when
/// nothing else was pending, as at a shard's start (see `src/rt/executor.rs`).
#[test]
fn should_start_the_load_on_every_start() {
    const ROUNDS: usize = 20;
    let t = context();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let apps: Vec<App> = (0..3)
            .map(|_| {
                t.app()
                    .duration(3)
                    .events(100)
                    .queries(1500)
                    .orgs(50)
                    .spawn()
            })
            .collect();
        for (i, mut app) in apps.into_iter().enumerate() {
            match app.wait(Duration::from_secs(40)) {
                None => {
                    let m = app.metrics();
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

/// A restart within a minute of the last run: connections the last run closed sit in
/// TIME_WAIT on its port, and the app must still listen there, as servers do.
#[test]
fn should_listen_on_a_port_with_connections_in_time_wait() {
    let t = context();
    let port = common::free_port();
    time_wait_on(port);
    let bind = format!("127.0.0.1:{port}");
    let mut app = App::spawn_healthy(
        &common::refs(&t.args(&[])),
        &[("BIND_ADDRESS", bind.as_str())],
        Duration::from_secs(60),
    );
    assert!(
        in_time_wait(port),
        "the TIME_WAIT socket is gone: the test proves nothing"
    );
    assert!(app.terminate().success(), "{}", app.log());
}

/// A port another process listens on stays an error (exit 2, the port named): the listener
/// takes TIME_WAIT leftovers, not a live server's port.
#[test]
fn should_refuse_a_port_another_process_listens_on() {
    let t = context();
    let port = common::free_port();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let bind = format!("127.0.0.1:{port}");
    let (status, log) = App::run(
        &common::refs(&t.args(&[])),
        &[("BIND_ADDRESS", bind.as_str())],
        Duration::from_secs(60),
    );
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains(&format!("cannot listen on {bind}")), "{log}");
}

/// Leaves a socket in TIME_WAIT on PORT: a connection whose server side closed first.
fn time_wait_on(port: u16) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    drop(server); // the side that closes first is the one left in TIME_WAIT
    let mut byte = [0u8; 1];
    assert_eq!(
        client.read(&mut byte).expect("read"),
        0,
        "EOF after the close"
    );
    drop(client);
    drop(listener);
    assert!(
        wait_until(Duration::from_secs(5), || in_time_wait(port)),
        "no TIME_WAIT socket on port {port}"
    );
}

/// Whether /proc/net/tcp has a socket in TIME_WAIT (state 06) on 127.0.0.1:PORT.
fn in_time_wait(port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[3] == "06"
        })
}

//! The application binary: spawned in the background or run to completion, its logs and
//! arguments, and `verify`.

use super::*;

/// The `analytics-demo` binary with every variable it reads (`config::ENV_VARS`) removed from
/// the inherited environment, so a test sees only what it passes.
pub fn app_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_analytics-demo"));
    for var in analytics_demo::config::ENV_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// The `analytics-demo` binary running as a child process.
pub struct App {
    pub child: Child,
    /// Where its HTTP server is reached (127.0.0.1 when bound to 0.0.0.0).
    pub http: SocketAddr,
    log_path: PathBuf,
    _dir: TempDir,
}

impl App {
    /// Run the binary with ARGS and ENV (on top of a cleaned environment). BIND_ADDRESS defaults
    /// to 127.0.0.1:<free port>. stdout and stderr go to a log file (`log()`).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> App {
        let dir = temp_dir("ad-app-");
        let log_path = dir.path().join("app.log");
        let bind = env
            .iter()
            .rev()
            .find(|(k, _)| *k == "BIND_ADDRESS")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let mut http: SocketAddr = bind
            .parse()
            .unwrap_or_else(|e| panic!("BIND_ADDRESS {bind:?} is not host:port: {e}"));
        if http.ip().is_unspecified() {
            http.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let (out, err) = log_stdio(&log_path);
        let child = app_command()
            .env("BIND_ADDRESS", &bind)
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn analytics-demo: {e}"));
        App {
            child,
            http,
            log_path,
            _dir: dir,
        }
    }

    /// `spawn` and wait until /health answers 200. Panics with the log when it never gets
    /// healthy (its default port comes from `free_port`, reserved for this process: no retry).
    pub fn spawn_healthy(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> App {
        let app = App::spawn(args, env);
        if !app.wait_healthy(timeout) {
            panic!(
                "analytics-demo did not become healthy within {timeout:?}:\n{}",
                app.log()
            );
        }
        app
    }

    /// Run the binary to completion (for subcommands such as `verify`): exit status and log.
    pub fn run(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> (ExitStatus, String) {
        let mut app = App::spawn(args, env);
        let status = app.wait(timeout).unwrap_or_else(|| {
            let _ = app.child.kill();
            panic!(
                "analytics-demo {args:?} did not finish within {timeout:?}:\n{}",
                app.log()
            )
        });
        (status, app.log())
    }

    /// Poll GET /health until it answers 200 (false on timeout or when the process exited).
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.alive() {
                return false;
            }
            if self.get("/health").0 == 200 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// True while the process has not exited (a zombie counts as exited).
    pub fn alive(&self) -> bool {
        match fs::read_to_string(format!("/proc/{}/stat", self.child.id())) {
            // Field 3, after "pid (comm)", is the state; Z = zombie, X = dead.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        }
    }

    /// GET PATH: (status, body). Status 0 (and the error text as body) when no HTTP answer.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_request(self.http, "GET", path, &[], "")
    }

    /// GET /metrics (asserts a 200).
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// GET /health: the status and the JSON body (null when it is not JSON).
    pub fn health(&self) -> (u16, serde_json::Value) {
        let (status, body) = self.get("/health");
        (status, serde_json::from_str(&body).unwrap_or_default())
    }

    /// POST BODY to PATH with extra HEADERS: (status, body).
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        http_request(self.http, "POST", path, headers, body)
    }

    /// SIGTERM, then wait (60 s at most, then SIGKILL).
    pub fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        signal(self.child.id(), libc::SIGTERM);
        match self.wait(Duration::from_secs(60)) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                self.child.wait().expect("reap analytics-demo")
            }
        }
    }

    /// Send a signal (e.g. `libc::SIGINT`).
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.child.id(), sig);
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, timeout)
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for engine tests: one-shot runs with stdout/stderr apart, polling, log and metric parsing
// ---------------------------------------------------------------------------------------------

/// What a run of the binary to completion printed, stdout and stderr apart.
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// The exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Run the binary with ARGS and ENV (on top of the cleaned environment, like `App::spawn`) to
/// completion, keeping stdout and stderr apart. Panics when it does not finish within TIMEOUT.
pub fn run_binary(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> RunOutput {
    let dir = temp_dir("ad-run-");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let out = File::create(&out_path).expect("create stdout file");
    let err = File::create(&err_path).expect("create stderr file");
    let mut child = app_command()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn analytics-demo: {e}"));
    let status = wait_timeout(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "analytics-demo {args:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            read_lossy(&out_path),
            read_lossy(&err_path)
        )
    });
    RunOutput {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    }
}

/// True once the app started its load: /metrics counts at least one event (of any outcome).
pub fn load_running(app: &App) -> bool {
    let (status, body) = app.get("/metrics");
    status == 200 && metric_sum(&body, "analytics_events_total", &[]).unwrap_or(0.0) > 0.0
}

/// Spawns the app and waits until its load runs (events counted in /metrics), or until a
/// short `--duration` run has finished having made events. Every start must start the load:
/// one that does not within 60 s fails the test with the app's log (no retry).
pub fn spawn_running(args: &[&str], env: &[(&str, &str)]) -> App {
    let app = App::spawn(args, env);
    let settled = wait_until(Duration::from_secs(60), || {
        !app.alive() || load_running(&app)
    });
    let finished_with_events =
        || summary_from_log(&app.log()).is_some_and(|s| s["events"].as_u64().unwrap_or(0) > 0);
    if settled && (app.alive() || finished_with_events()) {
        return app;
    }
    panic!("the load did not start within 60 s:\n{}", app.log())
}

/// The run summary from a `--log-format json` log: the JSON log line with
/// `"message":"summary"`, whose `summary` field holds the summary as a JSON string.
pub fn summary_from_log(log: &str) -> Option<serde_json::Value> {
    log.lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("message").and_then(|m| m.as_str()) == Some("summary"))
        .filter_map(|v| {
            let s = v.get("summary")?.as_str()?.to_string();
            serde_json::from_str(&s).ok()
        })
        .next()
}

/// Event type names by their `event_type` code (the app's `EventType` order).
pub const TYPE_NAMES: [&str; 5] = ["page_view", "click", "conversion", "signup", "purchase"];

/// Arguments of a workload run against the given servers: one unpinned shard, JSON logs, a
/// progress line every second, then `defaults` (a test file's own) and `extra` (a test's).
/// argh refuses a repeated option, so `extra` must not repeat one of `defaults`.
pub fn app_args(redis_url: &str, pg_url: &str, defaults: &[&str], extra: &[&str]) -> Vec<String> {
    let base = [
        "--redis-url",
        redis_url,
        "--database-url",
        pg_url,
        "--shards",
        "1",
        "--no-pin",
        "--log-format",
        "json",
        "--progress-interval",
        "1",
    ];
    base.iter()
        .chain(defaults)
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// `analytics-demo verify --json` against the given servers: exit code and the verdict.
/// Panics (with its stderr) when it prints no JSON.
pub fn verify_json(redis_url: &str, pg_url: &str) -> (i32, serde_json::Value) {
    verify_json_with(redis_url, pg_url, &[])
}

/// `verify --json` against REDIS_URL and PG_URL, then EXTRA: its exit code, the JSON it
/// printed (Null when it printed none: a usage or connection error) and its stderr.
pub fn verify_output(
    redis_url: &str,
    pg_url: &str,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut args = vec![
        "verify",
        "--redis-url",
        redis_url,
        "--database-url",
        pg_url,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = run_binary(&args, &[], Duration::from_secs(60));
    let code = out.code().expect("verify killed by a signal");
    let verdict = serde_json::from_str(out.stdout.trim()).unwrap_or(serde_json::Value::Null);
    (code, verdict, out.stderr)
}

/// `verify_output` of a verify that must print its verdict: the exit code and the verdict.
pub fn verify_json_with(redis_url: &str, pg_url: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let (code, verdict, stderr) = verify_output(redis_url, pg_url, extra);
    assert!(
        !verdict.is_null(),
        "verify (exit {code}) printed no JSON verdict; stderr:\n{stderr}"
    );
    (code, verdict)
}

/// A test's own Redis and PostgreSQL and the app's command line against them (as redis-rs's
/// `TestContext`): `app_args`'s base, then the test file's `defaults`, then each start's own
/// options. The servers stay reachable as fields (stop, restart, query them).
pub struct TestContext {
    pub redis: RedisServer,
    pub pg: PgServer,
    /// The Redis URL the app gets (`redis.url()` unless set).
    pub redis_url: String,
    defaults: Vec<String>,
}

impl TestContext {
    /// Starts a Redis and a PostgreSQL for the test.
    pub fn new(defaults: &[&str]) -> TestContext {
        TestContext::with(RedisServer::start(), PgServer::start(), defaults)
    }

    /// Servers the test started itself (with options of its own).
    pub fn with(redis: RedisServer, pg: PgServer, defaults: &[&str]) -> TestContext {
        TestContext {
            redis_url: redis.url(),
            redis,
            pg,
            defaults: defaults.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The app's arguments with EXTRA (which must not repeat a default: argh refuses it).
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let defaults: Vec<&str> = self.defaults.iter().map(String::as_str).collect();
        app_args(&self.redis_url, &self.pg.url(), &defaults, extra)
    }

    /// `App::spawn` with `args(extra)`.
    pub fn spawn(&self, extra: &[&str]) -> App {
        App::spawn(&refs(&self.args(extra)), &[])
    }

    /// `spawn_running` with `args(extra)`: returns once the load runs.
    pub fn spawn_running(&self, extra: &[&str]) -> App {
        spawn_running(&refs(&self.args(extra)), &[])
    }

    /// A run to start against the servers, its options set one by one:
    /// `t.app().events(200).queries(500).orgs(20).spawn_healthy()`.
    pub fn app(&self) -> AppRun<'_> {
        AppRun {
            t: self,
            extra: Vec::new(),
        }
    }

    /// `analytics-demo verify --json` against the servers, with EXTRA.
    pub fn verify(&self, extra: &[&str]) -> (i32, serde_json::Value) {
        verify_json_with(&self.redis_url, &self.pg.url(), extra)
    }
}

/// `&str`s of owned arguments.
pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// How long a run gets to become healthy (a cold debug binary on a busy machine).
pub const HEALTHY: Duration = Duration::from_secs(60);

/// The options of one run of a [`TestContext`] (see [`TestContext::app`]).
pub struct AppRun<'a> {
    t: &'a TestContext,
    extra: Vec<String>,
}

impl AppRun<'_> {
    /// `FLAG VALUE`.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.extra.push(flag.to_string());
        self.extra.push(value.to_string());
        self
    }

    /// Options as given.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn events(self, per_second: u64) -> Self {
        self.arg("--events-per-second", per_second)
    }

    pub fn queries(self, per_second: u64) -> Self {
        self.arg("--queries-per-second", per_second)
    }

    pub fn orgs(self, organizations: u32) -> Self {
        self.arg("--organizations", organizations)
    }

    pub fn users(self, per_org: u32) -> Self {
        self.arg("--users-per-org", per_org)
    }

    /// `--duration SECONDS`.
    pub fn duration(self, seconds: u64) -> Self {
        self.arg("--duration", seconds)
    }

    /// The whole command line.
    pub fn command_line(&self) -> Vec<String> {
        self.t.args(&refs(&self.extra))
    }

    pub fn spawn(self) -> App {
        App::spawn(&refs(&self.command_line()), &[])
    }

    /// Returns once the load runs (see [`spawn_running`]).
    pub fn spawn_running(self) -> App {
        spawn_running(&refs(&self.command_line()), &[])
    }

    /// [`AppRun::spawn_running`], and /health answers 200 within [`HEALTHY`].
    pub fn spawn_healthy(self) -> App {
        let app = self.spawn_running();
        assert!(app.wait_healthy(HEALTHY), "not healthy:\n{}", app.log());
        app
    }
}

/// The value at PATH in V (keys of nested objects).
pub fn at<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a serde_json::Value {
    path.iter().fold(v, |cur, p| &cur[*p])
}

/// The unsigned integer at PATH in V (panics with V when it is not one).
pub fn u(v: &serde_json::Value, path: &[&str]) -> u64 {
    at(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not an unsigned integer in {v}"))
}

/// The number at PATH in V (panics with V when it is not one).
pub fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    at(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

/// Waits for the app to exit cleanly within TIMEOUT (exit 0, no panic, a text summary) and
/// returns its exit code and summary.
pub fn finish(app: &mut App, timeout: Duration) -> (i32, serde_json::Value) {
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

/// The summary and the rows agree, every row is unique, nothing was dropped, verify is clean.
pub fn assert_reconciled(t: &TestContext, summary: &serde_json::Value) {
    let pg = &t.pg;
    let rows = pg.int("SELECT count(*) FROM events") as u64;
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
        pg.int("SELECT count(DISTINCT event_id) FROM events") as u64,
        rows,
        "duplicate event ids"
    );
    let (code, v) = t.verify(&[]);
    assert_eq!(code, 0, "verify: {v}");
    assert_eq!(v["clean"], serde_json::Value::Bool(true), "verify: {v}");
    assert_eq!(u(&v, &["lost_acknowledged_increments"]), 0, "verify: {v}");
    assert_eq!(u(&v, &["phantom_increments"]), 0, "verify: {v}");
}

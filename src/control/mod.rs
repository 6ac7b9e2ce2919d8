//! The control core: Postgres writer, HTTP endpoints, health checks, the once-a-second
//! merge of shard reports (progress lines, gauges), and the orderly stop.

pub mod aggregate;
pub mod barrier;
pub mod health;
pub mod migration;
pub mod process;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::SharedReceiver;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::http::{self, Req, Resp};
use crate::metrics as m;
use crate::pg::writer::{self, Backlog, RowBatch, WriterConfig, WriterStatus};
use crate::resp::{PoolConfig, RedisMode, RedisUrl, Target};
use crate::shard::stats::{Op, ShardReport};
use crate::shard::ShardCommand;
use aggregate::{percentiles, Aggregate, Summary};
use glommio::channels::shared_channel::{ConnectedSender, SharedSender};
use health::Health;

/// What the control core is started with.
pub struct ControlParams {
    pub bind: std::net::SocketAddr,
    /// The Redis server or cluster the shards start on.
    pub redis: Target,
    pub redis_cfg: PoolConfig,
    pub pg: crate::pg::PgConfig,
    pub run_id: i64,
    pub duration: Option<Duration>,
    pub progress_interval: Duration,
    pub targets: (u64, u64),
    pub hit_target: f64,
    pub batch_size: usize,
    pub retention_hours: u32,
    /// Bound of each PostgreSQL operation (`DB_TIMEOUT_MS`): connect, schema, writer batches.
    pub db_timeout: Duration,
    pub config_json: serde_json::Value,
    pub shards: usize,
    pub start_unix: f64,
    /// Bearer token of the admin endpoints (None: refused, see below).
    pub admin_token: Option<String>,
    /// Without a token, accept admin requests from loopback clients.
    pub admin_allow_loopback: bool,
    /// A named run (`RUN_NAME`): this instance's place in it (start barrier, final record).
    pub member: Option<barrier::Member>,
}

/// Shared flags between the process's threads.
#[derive(Clone, Default)]
pub struct Flags {
    /// Set by SIGINT/SIGTERM.
    pub term: Arc<AtomicBool>,
    /// Set by the control core once the schema is in place: shards start their load.
    pub ready: Arc<AtomicBool>,
    /// Set by the control core to stop the shards.
    pub stopping: Arc<AtomicBool>,
}

struct State {
    p: ControlParams,
    prom: PrometheusHandle,
    health: Rc<RefCell<Health>>,
    agg: Rc<RefCell<Aggregate>>,
    writer: Rc<RefCell<WriterStatus>>,
    backlogs: Vec<Arc<Backlog>>,
    target: Rc<RefCell<Target>>,
    migration: RefCell<migration::Migration>,
    /// Filled in by a task as shards connect (connecting waits for the peer).
    commands: RefCell<Vec<Rc<ConnectedSender<ShardCommand>>>>,
    /// Where the run is: /health says 503 until the load runs.
    load: std::cell::Cell<Load>,
    /// A switch is being delivered to the shards (one at a time, so shards never end on
    /// different targets).
    switching: std::cell::Cell<bool>,
}

/// The run's phase, as /health reports it (`"load"`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Load {
    /// Applying the schema (first attempt).
    Starting,
    /// PostgreSQL did not answer yet: retrying; no operation has started.
    WaitingForPostgres,
    /// A named run's start barrier: waiting for the other instances.
    WaitingForInstances,
    Running,
}

impl Load {
    fn as_str(self) -> &'static str {
        match self {
            Load::Starting => "starting",
            Load::WaitingForPostgres => "waiting_for_postgres",
            Load::WaitingForInstances => "waiting_for_instances",
            Load::Running => "running",
        }
    }
}

/// Runs the control core to the end of the run; returns the process exit code.
pub async fn run(
    p: ControlParams,
    prom: PrometheusHandle,
    rows: Vec<SharedReceiver<RowBatch>>,
    reports: Vec<SharedReceiver<ShardReport>>,
    backlogs: Vec<Arc<Backlog>>,
    commands: Vec<SharedSender<ShardCommand>>,
    flags: Flags,
) -> i32 {
    let listener = match http::bind(p.bind) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {} (BIND_ADDRESS): {e}", p.bind);
            flags.stopping.store(true, Ordering::SeqCst);
            flags.ready.store(true, Ordering::SeqCst);
            drain_without_writer(rows, reports).await;
            return 2;
        }
    };
    let state = Rc::new(State {
        target: Rc::new(RefCell::new(p.redis.clone())),
        migration: RefCell::default(),
        commands: RefCell::default(),
        load: std::cell::Cell::new(Load::Starting),
        switching: std::cell::Cell::new(false),
        health: Rc::default(),
        agg: Rc::new(RefCell::new(Aggregate::new(p.shards))),
        writer: Rc::default(),
        backlogs: backlogs.clone(),
        prom,
        p,
    });
    tracing::info!(address = %state.p.bind, "http listening: /metrics /health /report");
    {
        let st = state.clone();
        glommio::spawn_local(async move {
            for c in commands {
                let c = crate::notify::awake(c.connect()).await;
                st.commands.borrow_mut().push(Rc::new(c));
            }
        })
        .detach();
    }
    let server = {
        let st = state.clone();
        let handler: http::Handler = Rc::new(move |req: Req| {
            let st = st.clone();
            Box::pin(async move { route(&st, req).await })
        });
        glommio::spawn_local(http::serve(listener, handler))
    };
    let checks = [
        glommio::spawn_local(health::redis_loop(
            state.health.clone(),
            {
                let target = state.target.clone();
                move || target.borrow().clone()
            },
            state.p.redis_cfg.clone(),
        )),
        glommio::spawn_local(health::postgres_loop(
            state.health.clone(),
            state.p.pg.clone(),
        )),
    ];
    static_gauges(&state.p);

    wait_for_schema(&state, &flags).await;
    if let Some(me) = state.p.member.clone() {
        if let Err(e) = start_together(&state, &me, &flags).await {
            tracing::error!(error = %e, "start barrier: giving up");
            eprintln!("error: {e}");
            flags.stopping.store(true, Ordering::SeqCst);
            flags.ready.store(true, Ordering::SeqCst);
            drain_without_writer(rows, reports).await;
            return 1;
        }
    }
    state.load.set(Load::Running);
    state.agg.borrow_mut().load_started();
    flags.ready.store(true, Ordering::SeqCst);
    tracing::info!(run_id = state.p.run_id, "load started");

    // When the stop was asked for: the writer's shutdown grace counts from it.
    let stopped_at: Rc<std::cell::Cell<Option<Instant>>> = Rc::default();
    let writer_task = glommio::spawn_local(writer::run(
        WriterConfig {
            pg: state.p.pg.clone(),
            run_id: state.p.run_id,
            batch_size: state.p.batch_size,
            retention_hours: state.p.retention_hours,
            db_timeout: state.p.db_timeout,
            shutdown_grace: writer::SHUTDOWN_GRACE,
        },
        rows,
        backlogs,
        stopped_at.clone(),
        state.writer.clone(),
    ));
    let open_reports = Rc::new(std::cell::Cell::new(reports.len()));
    for rx in reports {
        let (st, open) = (state.clone(), open_reports.clone());
        glommio::spawn_local(async move {
            let rx = crate::notify::awake(rx.connect()).await;
            while let Some(r) = rx.recv().await {
                st.agg.borrow_mut().add(&r);
                let shards = st.agg.borrow().shards.len();
                st.migration.borrow_mut().on_report(&r, shards);
            }
            open.set(open.get() - 1);
        })
        .detach();
    }

    let started = Instant::now();
    let mut last_tick = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        glommio::timer::sleep(Duration::from_millis(50)).await;
        let term = flags.term.load(Ordering::Relaxed);
        let timed_out = state.p.duration.is_some_and(|d| started.elapsed() >= d);
        if term || timed_out {
            tracing::info!(
                reason = if term { "signal" } else { "duration reached" },
                "stopping: finishing in-flight operations and flushing rows"
            );
            break;
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            tick(&state);
        }
        if last_progress.elapsed() >= state.p.progress_interval {
            last_progress = Instant::now();
            progress(&state);
        }
    }
    stopped_at.set(Some(Instant::now()));
    flags.stopping.store(true, Ordering::SeqCst);
    writer_task.await;
    while open_reports.get() > 0 {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    tick(&state);
    let summary = Summary::build(
        state.p.run_id,
        &state.agg.borrow(),
        state.p.targets,
        state.p.hit_target,
        &state.writer.borrow(),
    );
    tracing::info!(
        events = summary.events,
        queries = summary.queries,
        rows_written = summary.db_rows_written,
        rows_dropped = summary.db_rows_dropped,
        "run finished"
    );
    if let Ok(j) = serde_json::to_string(&summary) {
        tracing::info!(summary = %j, "summary");
    }
    println!("{}", summary.render());
    if state.p.member.is_some() {
        let record = json!({
            "summary": summary,
            "query_latency_us": barrier::histogram_pairs(&state.agg.borrow().total.query_latency),
            "event_latency_us": barrier::histogram_pairs(&state.agg.borrow().total.event_latency),
        });
        let p = &state.p;
        if let Err(e) = barrier::record_summary(p.run_id, &record, &p.pg, p.db_timeout).await {
            tracing::warn!(error = %e, "could not store the run's summary for report --run-name");
        }
    }
    drop(server);
    for c in checks {
        drop(c);
    }
    0
}

/// Bind failed: let the shards stop cleanly and discard what they send.
async fn drain_without_writer(
    rows: Vec<SharedReceiver<RowBatch>>,
    reports: Vec<SharedReceiver<ShardReport>>,
) {
    let mut tasks = Vec::new();
    for rx in rows {
        tasks.push(glommio::spawn_local(async move {
            let rx = crate::notify::awake(rx.connect()).await;
            while rx.recv().await.is_some() {}
        }));
    }
    for rx in reports {
        tasks.push(glommio::spawn_local(async move {
            let rx = crate::notify::awake(rx.connect()).await;
            while rx.recv().await.is_some() {}
        }));
    }
    for t in tasks {
        t.await;
    }
}

/// A named run's start: waits at the barrier (see [`barrier`]), then records the start.
async fn start_together(state: &State, me: &barrier::Member, flags: &Flags) -> Result<(), String> {
    let p = &state.p;
    state.load.set(Load::WaitingForInstances);
    tracing::info!(run_name = %me.run_name, instance = me.index, instances = me.count,
        timeout_seconds = me.timeout.as_secs(), "waiting for every instance of the run");
    let waited = Instant::now();
    match barrier::wait(me, p.run_id, &p.pg, p.db_timeout, &flags.term).await? {
        barrier::Passed::Together => tracing::info!(run_name = %me.run_name,
            waited_seconds = waited.elapsed().as_secs_f64(), "every instance is there: starting together"),
        barrier::Passed::Late {
            seconds_after_start,
        } => tracing::warn!(run_name = %me.run_name,
            seconds_after_start, "the run started before this instance: joining it late"),
        barrier::Passed::Stopped => {}
    }
    Ok(())
}

/// Applies the schema, waiting for PostgreSQL as long as it takes (or until SIGINT/SIGTERM):
/// no event may be made in Redis without the table for its row. While it waits it says so
/// every progress interval (a `--duration` run would otherwise sit silent: its clock starts
/// with the load), and /health answers 503 with `"load": "waiting_for_postgres"`.
async fn wait_for_schema(state: &State, flags: &Flags) {
    const RETRY_EVERY: Duration = Duration::from_millis(500);
    let since = Instant::now();
    let mut attempts = 0u32;
    let mut next_log = since;
    while !flags.term.load(Ordering::Relaxed) {
        let e = match prepare_db(&state.p).await {
            Ok(()) => {
                if attempts > 0 {
                    tracing::info!(
                        waited_seconds = since.elapsed().as_secs(),
                        attempts,
                        "postgres answers: starting the load"
                    );
                }
                return;
            }
            Err(e) => e,
        };
        attempts += 1;
        state.load.set(Load::WaitingForPostgres);
        if Instant::now() >= next_log {
            next_log = Instant::now() + state.p.progress_interval;
            let waited_seconds = since.elapsed().as_secs();
            match state.p.duration {
                Some(d) => tracing::warn!(
                    error = %e,
                    attempts,
                    waited_seconds,
                    duration_seconds = d.as_secs(),
                    "postgres not reachable; retrying every 0.5 s: no operation starts until it \
                     answers, and the run's DURATION counts from then"
                ),
                None => tracing::warn!(
                    error = %e,
                    attempts,
                    waited_seconds,
                    "postgres not reachable; retrying every 0.5 s: no operation starts until it \
                     answers"
                ),
            }
        }
        glommio::timer::sleep(RETRY_EVERY).await;
    }
}

/// Connects, applies the schema and records the run, each step within `DB_TIMEOUT_MS`.
async fn prepare_db(p: &ControlParams) -> Result<(), String> {
    let statement_timeout = crate::pg::statement_timeout_for(p.db_timeout);
    let client = crate::pg::connect(&p.pg, p.db_timeout, Some(statement_timeout)).await?;
    let result = async {
        crate::pg::within(p.db_timeout, async {
            crate::pg::apply_schema(&client)
                .await
                .map_err(crate::pg::DbError::Failed)
        })
        .await?;
        crate::pg::within(
            p.db_timeout,
            client.execute(
                "INSERT INTO runs (run_id, config, last_seen) VALUES ($1, $2::text::jsonb, now()) \
                 ON CONFLICT (run_id) DO NOTHING",
                &[&p.run_id, &p.config_json.to_string()],
            ),
        )
        .await?;
        Ok::<(), crate::pg::DbError>(())
    }
    .await;
    if result.is_err() {
        client.mark_broken();
    }
    Ok(result?)
}

/// How long a switch may wait for the shards' command queues.
const SWITCH_DELIVERY: Duration = Duration::from_secs(5);

fn static_gauges(p: &ControlParams) {
    metrics::gauge!(m::CACHE_HIT_TARGET_RATIO).set(p.hit_target);
    metrics::gauge!(m::TARGET_RATE, "kind" => "events").set(p.targets.0 as f64);
    metrics::gauge!(m::TARGET_RATE, "kind" => "queries").set(p.targets.1 as f64);
    metrics::gauge!(m::REDIS_TARGET_INFO, "endpoint" => p.redis.label()).set(1.0);
    metrics::counter!(m::REDIS_TARGET_SWITCHES_TOTAL).absolute(0);
    metrics::gauge!(m::REDIS_TARGET_SWITCH_TIMESTAMP).set(0.0);
    for kind in crate::pg::DbError::WRITE_KINDS {
        metrics::counter!(m::DB_WRITE_ERRORS_TOTAL, "kind" => kind).absolute(0);
    }
    metrics::counter!(m::DB_ROWS_WRITTEN_TOTAL).absolute(0);
    metrics::counter!(m::DB_ROWS_DROPPED_TOTAL).absolute(0);
    metrics::gauge!(m::DB_WRITER_QUEUE_DEPTH).set(0.0);
    metrics::gauge!(m::CONVERSION_RATE).set(0.0);
    metrics::gauge!(m::CACHE_HIT_RATIO).set(0.0);
    metrics::gauge!(m::CACHE_NATURAL_HIT_RATIO).set(0.0);
    metrics::gauge!(m::CACHE_ADHOC_FRACTION).set(0.0);
}

/// Once a second: close the aggregate's window, refresh gauges, run metric upkeep.
fn tick(st: &State) {
    let mut agg = st.agg.borrow_mut();
    agg.tick();
    if let Some(w) = agg.recent.back() {
        st.migration.borrow_mut().on_window(w);
    }
    let recent = agg.recent(10);
    if let Some(h) = recent.hit_ratio() {
        metrics::gauge!(m::CACHE_HIT_RATIO).set(h);
    }
    if let Some(h) = recent.natural_hit_ratio() {
        metrics::gauge!(m::CACHE_NATURAL_HIT_RATIO).set(h);
    }
    if let Some(f) = recent.adhoc_fraction() {
        metrics::gauge!(m::CACHE_ADHOC_FRACTION).set(f);
    }
    if let Some(c) = agg.recent(60).conversion_rate() {
        metrics::gauge!(m::CONVERSION_RATE).set(c);
    }
    let pending: u64 = st.backlogs.iter().map(|b| b.pending()).sum();
    metrics::gauge!(m::DB_WRITER_QUEUE_DEPTH).set(pending as f64);
    drop(agg);
    st.prom.run_upkeep();
}

/// The progress line: achieved rates against target, latency, hit ratio, errors.
fn progress(st: &State) {
    let (w, d) = st.agg.borrow_mut().take_interval();
    let secs = d.as_secs_f64().max(1e-9);
    let p = percentiles(&w.query_latency);
    let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |h| format!("{:.1}%", h * 100.0));
    let hit = pct(w.hit_ratio());
    let pending: u64 = st.backlogs.iter().map(|b| b.pending()).sum();
    let writer = st.writer.borrow();
    let agg = st.agg.borrow();
    let redis_up: usize = agg.shards.iter().map(|s| s.redis_connected).sum();
    let redis_size: usize = agg
        .shards
        .iter()
        .map(|s| s.redis_connected.max(s.redis_pool_size))
        .sum();
    let errors: Vec<String> = w.errors.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    tracing::info!(
        events_per_s = format!("{:.1}/{}", w.events_total() as f64 / secs, st.p.targets.0),
        queries_per_s = format!("{:.1}/{}", w.queries_total() as f64 / secs, st.p.targets.1),
        p50_ms = format!("{:.3}", p.p50),
        p99_ms = format!("{:.3}", p.p99),
        p99_incl_misses_ms = format!("{:.3}", w.query_latency_with_misses().percentiles.p99),
        pacer_max_ms = format!("{:.3}", w.pacer_lateness.max() as f64 / 1000.0),
        hit = hit,
        natural_hit = pct(w.natural_hit_ratio()),
        hit_target = format!("{:.1}%", st.p.hit_target * 100.0),
        errors = w.errors_total(),
        error_kinds = errors.join(","),
        skipped = w.skipped_total(),
        redis_conns = format!("{redis_up}/{redis_size}"),
        db_pending = pending,
        db_lag_s = format!("{:.2}", writer.lag_seconds),
        "progress"
    );
}

async fn route(st: &State, req: Req) -> Resp {
    use hyper::Method;
    match (&req.method, req.path.as_str()) {
        (&Method::GET, "/metrics") => {
            let mut body = st.prom.render();
            body.push_str(&process::render(st.p.start_unix));
            Resp {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body,
            }
        }
        (&Method::GET, "/health") => health_response(st),
        (&Method::GET, "/report") => {
            let s = Summary::build(
                st.p.run_id,
                &st.agg.borrow(),
                st.p.targets,
                st.p.hit_target,
                &st.writer.borrow(),
            );
            let body = json!({
                "run": s,
                "redis_target": st.target.borrow().label(),
                "migration": st.migration.borrow().to_json(st.p.hit_target),
                "redis_cluster": cluster_report(st),
            });
            Resp::json(200, body.to_string())
        }
        (&Method::POST, "/admin/redis-target") => switch_target(st, &req).await,
        (&Method::GET, "/api/status") => Resp::json(200, status_json(st).to_string()),
        (&Method::GET, "/") => crate::dashboard::index(),
        (_, "/metrics" | "/health" | "/report" | "/api/status" | "/" | "/admin/redis-target") => {
            Resp::text(
                405,
                "method not allowed
",
            )
        }
        _ => Resp::text(404, "not found\n"),
    }
}

fn health_response(st: &State) -> Resp {
    let h = st.health.borrow();
    let now = Instant::now();
    let age = |d: &health::DepStatus| {
        let mut d = d.clone();
        d.checked_seconds_ago = d.checked_at.map(|t| now.duration_since(t).as_secs_f64());
        if d.checked_at.is_none() {
            d.status = "unknown";
        }
        d
    };
    let agg = st.agg.borrow();
    let writer = st.writer.borrow();
    let load = st.load.get();
    let up = h.redis.is_up() && h.postgres.is_up() && load == Load::Running;
    let body = json!({
        "status": if up { "ok" } else { "degraded" },
        "load": load.as_str(),
        "run_id": st.p.run_id,
        "uptime_seconds": agg.started.elapsed().as_secs_f64(),
        "redis": age(&h.redis),
        "redis_cluster": &h.cluster,
        "postgres": age(&h.postgres),
        "shards": agg.shards.iter().enumerate().map(|(i, s)| json!({
            "shard": i,
            "redis_connections_up": s.redis_connected,
            "redis_pool_size": s.redis_pool_size,
            "postgres_read_connected": s.pg_read_connected,
            "inflight_operations": s.inflight_ops,
        })).collect::<Vec<_>>(),
        "writer": {
            "connected": writer.connected,
            "rows_written": writer.rows_written,
            "pending_rows": st.backlogs.iter().map(|b| b.pending()).sum::<u64>(),
            "lag_seconds": writer.lag_seconds,
            "write_errors": writer.errors,
        },
    });
    Resp::json(if up { 200 } else { 503 }, body.to_string())
}

/// Live state for the built-in dashboard: recent rates and latency against targets, the
/// last minute second by second, errors, writer and Redis state.
fn status_json(st: &State) -> serde_json::Value {
    let agg = st.agg.borrow();
    let last5 = agg.recent(5);
    let last10 = agg.recent(10);
    let secs5 = agg.recent.len().clamp(1, 5) as f64;
    let h = st.health.borrow();
    let writer = st.writer.borrow();
    let history: Vec<_> = agg
        .recent
        .iter()
        .map(|w| {
            json!({
                "t": w.at_unix,
                "events": w.events_total(),
                "queries": w.queries_total(),
                "hit_ratio": w.hit_ratio(),
                "natural_hit_ratio": w.natural_hit_ratio(),
                "adhoc_fraction": w.adhoc_fraction(),
                "p50_ms": percentiles(&w.query_latency).p50,
                "p99_ms": percentiles(&w.query_latency).p99,
                "p99_including_misses_ms": w.query_latency_with_misses().percentiles.p99,
                "queries_failed": w.queries_failed(),
                "errors": w.errors_total(),
                "skipped": w.skipped_total(),
            })
        })
        .collect();
    json!({
        "run_id": st.p.run_id,
        "uptime_seconds": agg.started.elapsed().as_secs_f64(),
        "targets": {
            "events_per_second": st.p.targets.0,
            "queries_per_second": st.p.targets.1,
            "cache_hit_ratio": st.p.hit_target,
        },
        "rates": {
            "events_per_second": last5.events_total() as f64 / secs5,
            "queries_per_second": last5.queries_total() as f64 / secs5,
        },
        "query_outcomes_last_10s": last10.outcomes(Op::Query),
        "event_outcomes_last_10s": last10.outcomes(Op::Event),
        "query_outcomes_total": agg.total.outcomes(Op::Query),
        "event_outcomes_total": agg.total.outcomes(Op::Event),
        "query_latency_ms": percentiles(&last10.query_latency),
        "query_error_latency_ms": percentiles(&last10.query_error_latency),
        "query_latency_including_misses_ms": last10.query_latency_with_misses(),
        "query_latency_uncorrected_ms": percentiles(&last10.query_service),
        "event_latency_ms": percentiles(&last10.event_latency),
        "event_error_latency_ms": percentiles(&last10.event_error_latency),
        "event_latency_including_misses_ms": last10.event_latency_with_misses(),
        "pacer_lateness_ms": percentiles(&last10.pacer_lateness),
        "cache_hit_ratio": last10.hit_ratio(),
        "cache_natural_hit_ratio": last10.natural_hit_ratio(),
        "cache_adhoc_fraction": last10.adhoc_fraction(),
        "errors_last_10s": last10.errors,
        "errors_total": agg.total.errors,
        "skipped_last_10s": last10.skipped_by_reason(),
        "skipped_total": agg.total.skipped_by_reason(),
        "totals": { "events": agg.total.events_total(), "queries": agg.total.queries_total() },
        "writer": {
            "connected": writer.connected,
            "rows_written": writer.rows_written,
            "pending_rows": st.backlogs.iter().map(|b| b.pending()).sum::<u64>(),
            "lag_seconds": writer.lag_seconds,
            "write_errors": writer.errors,
            "rows_dropped": writer.rows_dropped,
        },
        "redis": {
            "target": st.target.borrow().label(),
            "mode": if st.target.borrow().is_cluster() { "cluster" } else { "standalone" },
            "connections_up": agg.shards.iter().map(|s| s.redis_connected).sum::<usize>(),
            "pool_size": agg.shards.iter().map(|s| s.redis_pool_size).sum::<usize>(),
            "status": h.redis.status,
            "cluster": &h.cluster,
            "redirects_total": redirects_by_kind(),
        },
        "postgres": { "status": h.postgres.status },
        "migration": {
            "switches": st.migration.borrow().switches.iter().map(|s| json!({
                "seq": s.seq, "at_unix": s.at_unix, "from": s.from, "to": s.to,
                "error_window_seconds": match (s.first_failure, s.last_failure) { (Some(a), Some(b)) => Some(b - a), _ => None },
                "failed_operations": s.during.errors_total() + s.after.errors_total(),
                "longest_unavailability_ms": s.outages.iter().map(|o| o.duration_ms).fold(0.0, f64::max),
            })).collect::<Vec<_>>(),
        },
        "history": history,
    })
}

/// The report's Redis Cluster part: redirections followed, by kind, and the primaries'
/// outages the health check saw (1 s resolution); null for a run that never used one.
fn cluster_report(st: &State) -> serde_json::Value {
    let h = st.health.borrow();
    if !st.target.borrow().is_cluster() && !h.cluster_seen {
        return serde_json::Value::Null;
    }
    json!({
        "redirects": redirects_by_kind(),
        "node_outages": h.node_outages,
        "slots_covered": h.cluster.as_ref().map(|c| c.slots_covered),
        "map_version": h.cluster.as_ref().map(|c| c.map_version),
    })
}

/// Redirections followed so far by every router of the process, by kind (all kinds, 0 included).
fn redirects_by_kind() -> serde_json::Map<String, serde_json::Value> {
    crate::resp::cluster::redirect::seen_so_far()
        .into_iter()
        .map(|(k, n)| (k.to_string(), n.into()))
        .collect()
}

fn shard_count(st: &State) -> usize {
    st.p.shards
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Admin authorization: a bearer token when `ADMIN_TOKEN` is set; without one, refused
/// unless `--admin-allow-unauthenticated-loopback` and the client is on loopback.
fn authorize(st: &State, req: &Req) -> Result<(), Resp> {
    let given = req
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match (&st.p.admin_token, given) {
        (Some(want), Some(got)) if constant_time_eq(want.as_bytes(), got.as_bytes()) => Ok(()),
        (Some(_), Some(_)) => Err(Resp::json(403, json!({"error": "invalid admin token"}).to_string())),
        (Some(_), None) => Err(Resp::json(
            401,
            json!({"error": "missing bearer token (Authorization: Bearer <ADMIN_TOKEN>)"}).to_string(),
        )),
        (None, _) if st.p.admin_allow_loopback && req.peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
        (None, _) => Err(Resp::json(
            403,
            json!({"error": "admin endpoints are disabled: set ADMIN_TOKEN (or --admin-allow-unauthenticated-loopback for local use)"}).to_string(),
        )),
    }
}

/// `POST /admin/redis-target {"url": "redis://..."}`: switches every shard to a new Redis.
///
/// Each shard's command is awaited (a full queue delays, never drops it). A shard that cannot
/// take it (its run is stopping, or it does not take it within `SWITCH_DELIVERY`) leaves a
/// partial switch: it is recorded all the same, since the shards before it did switch, and
/// the answer (503) says how many took it.
async fn switch_target(st: &State, req: &Req) -> Resp {
    if let Err(r) = authorize(st, req) {
        return r;
    }
    #[derive(serde::Deserialize)]
    struct Body {
        url: String,
        mode: Option<String>,
    }
    let bad = |msg: String| Resp::json(400, json!({ "error": msg }).to_string());
    let body: Body = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(_) => {
            return bad(
                "body must be JSON: {\"url\": \"redis://host:port[,redis://seed2...]\", \"mode\": \"auto|standalone|cluster\"}"
                    .into(),
            )
        }
    };
    let mode = match body.mode.as_deref() {
        None => RedisMode::Auto,
        Some(m) => match RedisMode::CHOICES.iter().find(|(name, _)| *name == m) {
            Some((_, mode)) => *mode,
            None => {
                return bad(format!(
                    "invalid mode '{m}': one of auto, standalone, cluster"
                ))
            }
        },
    };
    let mut seeds = Vec::new();
    for item in body.url.split(',').map(str::trim) {
        match RedisUrl::parse(item) {
            Ok(u) => seeds.push(u),
            Err(e) => return bad(format!("invalid url: {e}")),
        }
    }
    let (url, guessed) = match switch_target_of(st, seeds, mode).await {
        Ok(t) => t,
        Err((status, msg)) => return Resp::json(status, json!({ "error": msg }).to_string()),
    };
    let from = st.target.borrow().label();
    let to = url.label();
    let commands: Vec<_> = st.commands.borrow().clone();
    if commands.len() < shard_count(st) {
        return Resp::json(
            503,
            json!({"error": "shards are still starting; retry"}).to_string(),
        );
    }
    if st.switching.replace(true) {
        return Resp::json(
            409,
            json!({"error": "another switch is being delivered; retry"}).to_string(),
        );
    }
    let deadline = Instant::now() + SWITCH_DELIVERY;
    let mut delivered = 0;
    for tx in commands.iter() {
        let sent = crate::notify::until(deadline, tx.send(ShardCommand::SetTarget(url.clone())));
        if !matches!(sent.await, Some(Ok(()))) {
            break;
        }
        delivered += 1;
    }
    st.switching.set(false);
    let shards = commands.len();
    if delivered == 0 {
        tracing::error!(to = %to, "no shard took the switch (the run is stopping?)");
        return Resp::json(
            503,
            json!({"error": "no shard took the switch; the target is unchanged"}).to_string(),
        );
    }
    let at = crate::workload::time::unix_now();
    *st.target.borrow_mut() = url;
    st.migration
        .borrow_mut()
        .switched(at, from.clone(), to.clone(), &st.agg.borrow().recent);
    metrics::gauge!(m::REDIS_TARGET_INFO, "endpoint" => from.clone()).set(0.0);
    metrics::gauge!(m::REDIS_TARGET_INFO, "endpoint" => to.clone()).set(1.0);
    metrics::counter!(m::REDIS_TARGET_SWITCHES_TOTAL).increment(1);
    metrics::gauge!(m::REDIS_TARGET_SWITCH_TIMESTAMP).set(at);
    let seq = st.migration.borrow().switches.len();
    let mode = if st.target.borrow().is_cluster() {
        "cluster"
    } else {
        "standalone"
    };
    if delivered < shards {
        tracing::error!(from = %from, to = %to, seq, delivered, shards, "redis target switch reached only some shards");
        return Resp::json(
            503,
            json!({"switched": "partial", "error": format!("only {delivered} of {shards} shards took the switch"),
                   "seq": seq, "from": from, "endpoint": to, "mode": mode, "at_unix": at, "shards_switched": delivered, "shards": shards})
                .to_string(),
        );
    }
    tracing::warn!(from = %from, to = %to, seq, "redis target switched");
    Resp::json(
        200,
        json!({"switched": true, "seq": seq, "from": from, "endpoint": to, "mode": mode,
               "mode_note": guessed, "at_unix": at, "shards_switched": delivered, "shards": shards})
        .to_string(),
    )
}

/// What a switch names: one server or a Redis Cluster. Several URLs are a cluster's seeds;
/// `auto` asks the target (`INFO cluster`), and a target that does not answer is taken as a
/// standalone server, as before cluster mode (the second value then says so).
async fn switch_target_of(
    st: &State,
    seeds: Vec<RedisUrl>,
    mode: RedisMode,
) -> Result<(Target, Option<String>), (u16, String)> {
    let mut guessed = None;
    let cluster = match mode {
        RedisMode::Standalone if seeds.len() > 1 => {
            return Err((
                400,
                format!(
                    "{} URLs given, but several seed nodes are only for a Redis Cluster: give one \
                     URL, or mode \"cluster\"",
                    seeds.len()
                ),
            ))
        }
        RedisMode::Auto if seeds.len() > 1 => true,
        mode => match crate::resp::cluster::resolve_mode(mode, &seeds, &st.p.redis_cfg).await {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(error = %why, "switch: the target does not answer INFO; taken as a standalone server");
                guessed = Some(format!(
                    "the target did not answer INFO ({why}): taken as a standalone server; \
                         give mode \"cluster\" to switch to a cluster"
                ));
                false
            }
        },
    };
    if cluster && seeds.iter().any(|s| s.db != 0) {
        return Err((
            400,
            "the URL names a database, but a Redis Cluster has only database 0".into(),
        ));
    }
    match Target::new(seeds, cluster) {
        Some(t) => Ok((t, guessed)),
        None => Err((400, "no URL given".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn should_compare_tokens_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}

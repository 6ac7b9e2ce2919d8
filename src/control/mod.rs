//! The control core: its startup (listener, health checks, schema, start barrier), the
//! Postgres writer, the merge of shard reports into one-second windows (each closed once every
//! shard has reported into it; progress lines, gauges), and the orderly stop. Between its
//! duties it sleeps until the next one or a signal. The HTTP API is in `http_api` (its
//! documents in `api`, the admin authorization in `auth`), the shared state in `state`.

pub mod aggregate;
pub mod api;
mod auth;
pub mod barrier;
pub mod health;
mod http_api;
pub mod migration;
pub mod process;
mod state;
pub mod summary;

pub use state::ControlParams;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::http::{self, Req};
use crate::metrics as m;
use crate::pg::writer::{self, Backlog, RowBatch, WriterConfig};
use crate::rt::{self, sync::Notify};
use crate::shard::stats::ShardReport;
use crate::shard::ShardCommand;
use aggregate::{percentiles, Aggregate};
use api::Load;
use state::State;
use summary::Summary;

/// Shared flags between the process's threads.
#[derive(Clone, Default)]
pub struct Flags {
    /// Set by SIGINT/SIGTERM.
    pub term: Arc<AtomicBool>,
    /// Set by the control core once the schema is in place: shards start their load.
    pub ready: Arc<AtomicBool>,
    /// Set by the control core to stop the shards.
    pub stopping: Arc<AtomicBool>,
    /// Receives a byte whenever `term` is set (`rt::signal_bell`): the control core sleeps
    /// until its next periodic duty or this, instead of polling `term`.
    pub term_bell: Option<Arc<std::os::unix::net::UnixStream>>,
}

/// How long the current one-second window waits for a shard's report before it is closed
/// without it.
const WINDOW_LATE: Duration = Duration::from_secs(2);

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
                let c = rt::time::awake(c.connect()).await;
                st.commands.borrow_mut().push(Rc::new(c));
            }
        })
        .detach();
    }
    let server = {
        let st = state.clone();
        let handler: http::Handler = Rc::new(move |req: Req| {
            let st = st.clone();
            Box::pin(async move { http_api::route(&st, req).await })
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
    // Wakes the main loop below: a signal, or a window closed by the shards' reports.
    let bell = Rc::new(Notify::default());
    let open_reports = Rc::new(std::cell::Cell::new(reports.len()));
    for rx in reports {
        let (st, open, bell) = (state.clone(), open_reports.clone(), bell.clone());
        glommio::spawn_local(async move {
            let rx = rt::time::awake(rx.connect()).await;
            while let Some(r) = rx.recv().await {
                st.agg.borrow_mut().add(&r);
                let shards = st.agg.borrow().shards.len();
                st.migration.borrow_mut().on_report(&r, shards);
                if st.agg.borrow().window_complete() {
                    tick(&st);
                    // The main loop's wait for a late report starts again from this close.
                    bell.notify();
                }
            }
            open.set(open.get() - 1);
        })
        .detach();
    }

    let started = Instant::now();
    let mut last_progress = Instant::now();
    // Whether a signal rings `bell`; without that the loop polls `term`.
    let signals_ring = match flags.term_bell.as_deref().and_then(bell_reader) {
        Some(mut stream) => {
            let bell = bell.clone();
            glommio::spawn_local(async move {
                let mut buf = [0u8; 16];
                while let Ok(1..) = stream.read(&mut buf).await {
                    bell.notify();
                }
            })
            .detach();
            true
        }
        None => false,
    };
    loop {
        // Asleep until a late report, the next progress line or the end of the run, or a
        // stop. (The one-second windows are closed by the shards' reports, above.)
        let window_late = state.agg.borrow().window_opened_at() + WINDOW_LATE;
        let mut next = window_late.min(last_progress + state.p.progress_interval);
        if let Some(d) = state.p.duration {
            next = next.min(started + d);
        }
        if signals_ring {
            rt::time::until(next, bell.notified()).await;
        } else {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        let term = flags.term.load(Ordering::Relaxed);
        let timed_out = state.p.duration.is_some_and(|d| started.elapsed() >= d);
        if term || timed_out {
            tracing::info!(
                reason = if term { "signal" } else { "duration reached" },
                "stopping: finishing in-flight operations and flushing rows"
            );
            break;
        }
        if state.agg.borrow().window_opened_at().elapsed() >= WINDOW_LATE {
            // A shard is late with its report (stalled, or gone): the window closes without
            // it, so the series, gauges and progress go on.
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
    if state.agg.borrow().window_started() {
        tick(&state);
    }
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
            let rx = rt::time::awake(rx.connect()).await;
            while rx.recv().await.is_some() {}
        }));
    }
    for rx in reports {
        tasks.push(glommio::spawn_local(async move {
            let rx = rt::time::awake(rx.connect()).await;
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
    let pending = st.pending_rows();
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
    let pending = st.pending_rows();
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

/// The bell's read end as a glommio stream, on a duplicate of its fd (the original is shared
/// through `Flags`, which every clone keeps). None when the fd cannot be duplicated: the loop
/// then polls.
fn bell_reader(bell: &std::os::unix::net::UnixStream) -> Option<glommio::net::UnixStream> {
    use std::os::unix::io::{AsRawFd, FromRawFd};
    // SAFETY: dup returns a new fd we own exclusively, or -1 (checked).
    let fd = unsafe { libc::dup(bell.as_raw_fd()) };
    if fd < 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "signal bell unavailable; polling for signals");
        return None;
    }
    // SAFETY: fd is a fresh, open socket fd owned by nobody else.
    Some(unsafe { glommio::net::UnixStream::from_raw_fd(fd) })
}

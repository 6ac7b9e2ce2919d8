//! A shard: one glommio executor pinned to one CPU, owning its Redis pool, Postgres read
//! connection, RNG stream, generators and counters. Shards share nothing mutable with each
//! other; they talk to the control core through bounded channels only.

pub mod counts;
pub mod events;
pub mod outage;
pub mod pacer;
pub mod queries;
pub mod sketch;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::{ConnectedSender, SharedSender};

use crate::pg::reader::Reader;
use crate::pg::writer::{Backlog, EventRow, RowBatch};
use crate::resp::{Pool, PoolConfig, Target};
use crate::workload::{Rng, Skewed, Weighted, EVENT_TYPES, QUERY_TYPES};
use stats::{ShardMetrics, ShardReport, ShardStats};

/// Everything a shard needs, moved into its executor thread.
#[derive(Clone)]
pub struct ShardParams {
    pub index: usize,
    pub shards: usize,
    pub events_per_second: u64,
    pub queries_per_second: u64,
    /// Organization ids this shard owns (1-based ids; rank 0 is the largest tenant).
    pub orgs: Vec<u32>,
    pub users_per_org: u32,
    pub zipf_exponent: Option<f64>,
    pub cache_hit_target: f64,
    pub max_inflight: usize,
    pub cache_ttl: Duration,
    pub warmup_interval: Duration,
    pub time_buckets: u32,
    /// The Redis server, or the cluster's seed nodes.
    pub redis: Target,
    pub pool: PoolConfig,
    pub pg: crate::pg::PgConfig,
    /// Bound of connecting the read connection (in the background; reads fail fast meanwhile).
    pub db_timeout: Duration,
    /// Bound of one cache-miss read.
    pub db_read_timeout: Duration,
    pub backlog_cap: u64,
    pub seed: u64,
    /// Operations more than this far behind their schedule are skipped as late.
    pub late_limit: Duration,
    /// The pacing grid (`pacer::pace_step`).
    pub pace_step: Duration,
    pub report_every: Duration,
}

/// What the control core can ask of a shard.
#[derive(Clone, Debug)]
pub enum ShardCommand {
    /// Live cutover to another Redis.
    SetTarget(Target),
}

/// The channels and shared flags a shard is started with.
pub struct ShardLinks {
    pub commands: glommio::channels::shared_channel::SharedReceiver<ShardCommand>,
    pub rows: SharedSender<RowBatch>,
    pub reports: SharedSender<ShardReport>,
    pub backlog: Arc<Backlog>,
    pub stopping: Arc<AtomicBool>,
    /// Set once the schema is in place; the load waits for it.
    pub ready: Arc<AtomicBool>,
}

/// Shard-local state shared by the shard's tasks (single-threaded: `Rc`/`Cell`).
pub struct Shard {
    pub p: ShardParams,
    pub pool: Rc<Pool>,
    pub reader: Rc<Reader>,
    pub rng: RefCell<Rng>,
    pub org_pick: Skewed,
    pub user_pick: Skewed,
    pub event_pick: Weighted<crate::workload::EventType>,
    pub query_pick: Weighted<crate::workload::QueryType>,
    pub inflight: Cell<usize>,
    pub next_seq: Cell<i64>,
    pub rows: RefCell<Vec<EventRow>>,
    /// Rung when a row lands in an empty `rows`, and at shutdown: the flusher sleeps on it
    /// while there is nothing to flush (no wake-ups on a shard without events).
    pub(crate) rows_pushed: crate::rt::sync::Notify,
    pub backlog: Arc<Backlog>,
    pub stats: RefCell<ShardStats>,
    pub metrics: ShardMetrics,
    /// Fraction of cacheable queries sent to one-off (ad-hoc) keys; steered so the hit
    /// ratio of cacheable queries meets `CACHE_HIT_TARGET` (see `queries.rs`).
    pub adhoc_fraction: Cell<f64>,
    /// Filter windows (hours) that fit in `TIME_BUCKETS`.
    pub windows: Vec<u32>,
    /// Where the next report's interval starts.
    pub report_from: Cell<Instant>,
    /// When the pacing loops stopped: reports never count time after it, so rates are
    /// operations started over the time they were being started (the drain that follows
    /// can take up to a command timeout, and a report due during it must not dilute them).
    pub load_end: Cell<Option<Instant>>,
}

/// How often the queued rows go to the writer (one message, however many rows). Each message
/// wakes both cores (the writer to take it, this shard when glommio's channel reports the
/// room), and the writer gathers rows for up to 100 ms before a COPY anyway: every 10 ms cost
/// about 170 wakes a second at 500 operations/s, for rows in PostgreSQL at most 40 ms sooner.
const ROW_FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Initial capacity of the row queue (not a cap).
const ROW_MESSAGE_MAX: usize = 512;

/// Runs a shard until `stopping` is set, then drains it: no new operations, in-flight
/// ones finish, every row goes to the writer, a final report goes to the control core.
pub async fn run(p: ShardParams, links: ShardLinks) {
    let rows_tx = crate::rt::time::awake(links.rows.connect()).await;
    let reports_tx = crate::rt::time::awake(links.reports.connect()).await;
    let pool = Pool::for_target(&p.redis, p.pool.clone());
    let reader = Reader::new(p.pg.clone(), p.db_timeout, p.db_read_timeout, p.index);
    let org_pick = match p.zipf_exponent {
        Some(s) => Skewed::zipf(p.orgs.len(), s),
        None => Skewed::uniform(p.orgs.len() as u64),
    };
    let user_pick = match p.zipf_exponent {
        Some(s) => Skewed::zipf(p.users_per_org as usize, s),
        None => Skewed::uniform(u64::from(p.users_per_org)),
    };
    let shard = Rc::new(Shard {
        rng: RefCell::new(Rng::for_shard(p.seed, p.index)),
        metrics: ShardMetrics::new(p.index),
        stats: RefCell::new(ShardStats::new(p.orgs.len())),
        adhoc_fraction: Cell::new(0.0),
        windows: queries::windows(p.time_buckets),
        pool,
        reader,
        org_pick,
        user_pick,
        event_pick: Weighted::new(&EVENT_TYPES),
        query_pick: Weighted::new(&QUERY_TYPES),
        inflight: Cell::new(0),
        next_seq: Cell::new(1),
        rows: RefCell::new(Vec::with_capacity(ROW_MESSAGE_MAX)),
        rows_pushed: Default::default(),
        report_from: Cell::new(Instant::now()),
        load_end: Cell::new(None),
        backlog: links.backlog,
        p,
    });
    let commands = {
        let (s, rx) = (shard.clone(), links.commands);
        glommio::spawn_local(async move {
            let rx = crate::rt::time::awake(rx.connect()).await;
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    ShardCommand::SetTarget(t) => s.pool.set_target(t),
                }
            }
        })
    };
    let stopping = links.stopping;
    while !links.ready.load(Ordering::Relaxed) && !stopping.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    shard.pool.wait_connected(Duration::from_secs(2)).await;
    if let Err(e) = shard.reader.connect_now().await {
        tracing::warn!(shard = shard.p.index, error = %e, "postgres read connection not ready");
    }
    let start = Instant::now();
    shard.report_from.set(start);
    let mut tasks = Vec::new();
    if shard.p.events_per_second > 0 {
        let (s, stop) = (shard.clone(), stopping.clone());
        tasks.push(glommio::spawn_local(async move {
            let rate = s.p.events_per_second;
            pace(&s, &stop, start, rate, stats::Op::Event, events::start).await
        }));
    }
    if shard.p.queries_per_second > 0 {
        let (s, stop) = (shard.clone(), stopping.clone());
        tasks.push(glommio::spawn_local(async move {
            let rate = s.p.queries_per_second;
            pace(&s, &stop, start, rate, stats::Op::Query, queries::start).await
        }));
    }
    let warmup = {
        let (s, stop) = (shard.clone(), stopping.clone());
        glommio::spawn_local(async move { queries::warmup_loop(&s, &stop).await })
    };
    let rows_tx = Rc::new(rows_tx);
    let flusher = {
        let (s, stop, tx) = (shard.clone(), stopping.clone(), rows_tx.clone());
        glommio::spawn_local(async move {
            while !stop.load(Ordering::Relaxed) {
                if s.rows.borrow().is_empty() {
                    s.rows_pushed.notified().await;
                    continue;
                }
                glommio::timer::sleep(ROW_FLUSH_EVERY).await;
                flush_rows(&s, &tx).await;
            }
        })
    };
    let reporter = {
        let (s, stop) = (shard.clone(), stopping.clone());
        glommio::spawn_local(async move {
            while !stop.load(Ordering::Relaxed) {
                glommio::timer::sleep(s.p.report_every).await;
                let report = stats::take_report(&s, false);
                queries::steer_hit_ratio(&s);
                if reports_tx.send(report).await.is_err() {
                    break;
                }
            }
            reports_tx
        })
    };

    for t in tasks {
        t.await;
    }
    shard.load_end.set(Some(Instant::now()));
    // Drain: wait for in-flight operations (bounded by the Redis command timeout, and a query
    // by two commands and one Postgres read).
    let drain_limit = Instant::now()
        + shard.p.pool.command_timeout * 3
        + shard.p.db_read_timeout
        + Duration::from_secs(2);
    while shard.inflight.get() > 0 && Instant::now() < drain_limit {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if shard.inflight.get() > 0 {
        tracing::warn!(
            shard = shard.p.index,
            inflight = shard.inflight.get(),
            "operations still in flight at shutdown"
        );
    }
    warmup.cancel().await;
    shard.rows_pushed.notify(); // `stopping` is set: the flusher leaves its wait and ends
    flusher.await;
    flush_rows(&shard, &rows_tx).await;
    let reports_tx = reporter.await;
    let report = stats::take_report(&shard, true);
    let _ = reports_tx.send(report).await;
    commands.cancel().await;
    shard.pool.close().await;
    drop(rows_tx);
}

async fn flush_rows(s: &Shard, tx: &ConnectedSender<RowBatch>) {
    loop {
        let batch = {
            let mut rows = s.rows.borrow_mut();
            if rows.is_empty() {
                return;
            }
            std::mem::replace(&mut *rows, Vec::with_capacity(ROW_MESSAGE_MAX))
        };
        if tx.send(batch).await.is_err() {
            tracing::error!(shard = s.p.index, "writer channel closed; rows lost");
            return;
        }
    }
}

/// Queues a row for the writer (the flusher sends the queue every `ROW_FLUSH_EVERY`).
pub fn push_row(s: &Shard, row: EventRow) {
    let mut rows = s.rows.borrow_mut();
    if rows.is_empty() {
        s.rows_pushed.notify();
    }
    rows.push(row);
}

/// Drives one open-loop stream (KIND): starts every due operation (as its own task), counts
/// the ones skipped because the in-flight cap is reached or they are too late (by stream and
/// reason; they are misses in the "including misses" latency).
async fn pace(
    s: &Rc<Shard>,
    stop: &AtomicBool,
    start: Instant,
    rate: u64,
    kind: stats::Op,
    op: impl Fn(Rc<Shard>, Instant),
) {
    let mut sched = pacer::Schedule::new(start, rate);
    // Operations start on the grid point nearest their due time (`pacer::Schedule::next_wake`).
    let lead = pacer::lead(s.p.pace_step);
    // When this loop meant to run again: how late it actually ran is the generator's own
    // stall (a busy or descheduled CPU), kept apart from the latency of Redis.
    let mut wake: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if let Some(w) = wake.take() {
            s.record_pacer_late(now.saturating_duration_since(w));
        }
        let due = sched.take_due(now + lead, s.p.late_limit);
        if due.late > 0 {
            s.record_skip(kind, stats::Skip::Late, due.late);
        }
        for k in due.from..due.to {
            if s.inflight.get() >= s.p.max_inflight {
                s.record_skip(kind, stats::Skip::MaxWorkers, 1);
                continue;
            }
            // Latency runs from the due time, or from now for one started early.
            op(s.clone(), sched.at(k).min(now));
        }
        // Both streams of a shard share `start`, so their wakes coincide.
        let next = sched.next_wake(s.p.pace_step);
        wake = Some(next);
        let now = Instant::now();
        if next > now {
            glommio::timer::sleep(next - now).await;
        } else {
            glommio::yield_if_needed().await;
        }
    }
}

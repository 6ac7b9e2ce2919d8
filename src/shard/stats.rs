//! Shard-local counts ([`Counts`]), recording them with Prometheus, and the report each shard
//! sends the control core every second (the control core merges them for progress lines,
//! gauges and the summary).
//!
//! Prometheus series are updated directly through cached handles labelled with the shard,
//! so no two cores write the same atomic.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use metrics::{Counter, Gauge, Histogram as PromHistogram};

use super::counts::Counts;
pub use super::outage::Outage;
use super::outage::Outages;
use super::sketch::UserSketch;
use super::Shard;
use crate::metrics as m;
use crate::workload::{EventType, Outcome, QueryType};

/// Why an operation was not started.
#[derive(Clone, Copy, Debug)]
pub enum Skip {
    /// `MAX_WORKERS` operations already in flight.
    MaxWorkers = 0,
    /// Further behind schedule than the late limit (after a stall).
    Late = 1,
    /// The Postgres writer is too far behind: the event is not started, so it is never
    /// INCRed without its row.
    DbBacklog = 2,
}

impl Skip {
    pub const ALL: [Skip; 3] = [Skip::MaxWorkers, Skip::Late, Skip::DbBacklog];
    /// The reasons that can apply to OP (`db_backlog` holds back events only).
    pub fn applies_to(self, op: Op) -> bool {
        !matches!((self, op), (Skip::DbBacklog, Op::Query))
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::MaxWorkers => "max_workers",
            Skip::Late => "late",
            Skip::DbBacklog => "db_backlog",
        }
    }
}

/// The two open-loop streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Event = 0,
    Query = 1,
}

impl Op {
    pub const ALL: [Op; 2] = [Op::Event, Op::Query];
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Event => "event",
            Op::Query => "query",
        }
    }
}

/// What an operation that was due came to, for the latency figures: `ok` (completed and
/// succeeded), `error` (completed and failed: a Redis or Postgres error, or an event whose
/// outcome is failed or unknown). Skipped operations never completed; they are counted
/// apart (`Skip`) and enter only the "including misses" figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    Ok = 0,
    Error = 1,
}

impl OpResult {
    pub const ALL: [OpResult; 2] = [OpResult::Ok, OpResult::Error];
    pub fn as_str(self) -> &'static str {
        match self {
            OpResult::Ok => "ok",
            OpResult::Error => "error",
        }
    }
}

/// An event succeeded when its counter write was acknowledged.
pub fn event_result(o: Outcome) -> OpResult {
    match o {
        Outcome::Acked => OpResult::Ok,
        Outcome::Failed | Outcome::Unknown => OpResult::Error,
    }
}

/// What a missed operation (an error or a skip) counts as in the "including misses"
/// latency figures: later than any deadline. 600 s is the top of the histograms kept here,
/// the cap of the command timeout, and above every Prometheus bucket (10 s), so a
/// percentile that falls among the misses reads 600 000 ms here and `+Inf` bucket there.
pub const MISS_MICROS: u64 = 600_000_000;

/// How a query was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit = 0,
    Miss = 1,
    /// Not a cacheable query (real-time).
    None = 2,
    Error = 3,
}

impl CacheOutcome {
    pub fn result(self) -> OpResult {
        match self {
            CacheOutcome::Error => OpResult::Error,
            _ => OpResult::Ok,
        }
    }
    pub const ALL: [CacheOutcome; 4] = [
        CacheOutcome::Hit,
        CacheOutcome::Miss,
        CacheOutcome::None,
        CacheOutcome::Error,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::None => "none",
            CacheOutcome::Error => "error",
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 10 min at 2 significant digits (1% resolution): ~25 KiB, so the control
    // core can keep a minute of one-second windows cheaply. Constant bounds cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("constant histogram bounds are valid")
}

/// What a shard keeps between two reports.
pub struct ShardStats {
    /// Counts since the last report (taken by every report).
    pub counts: Counts,
    /// Hits and lookups of cacheable queries on their natural keys since the steering loop
    /// last used them (`queries::steer_hit_ratio`).
    pub steer_hits: u64,
    pub steer_lookups: u64,
    /// Unix second each owned organization last had an event (indexed by org rank).
    pub org_last_seen: Vec<u32>,
    pub users_now: UserSketch,
    pub users_prev: usize,
    pub users_window_start: u64,
    pub outages: Outages,
}

impl ShardStats {
    pub fn new(orgs: usize) -> ShardStats {
        ShardStats {
            counts: Counts::default(),
            steer_hits: 0,
            steer_lookups: 0,
            org_last_seen: vec![0; orgs],
            users_now: Default::default(),
            users_prev: 0,
            users_window_start: 0,
            outages: Outages::default(),
        }
    }

    /// A Redis operation that started at `started` failed with an error of `kind`.
    pub fn redis_failed(&mut self, started: Instant, kind: &'static str) {
        self.counts.error(kind);
        self.outages.failed(started);
    }
}

/// Recording what a shard did: Prometheus, and the counts and histograms of its reports, in
/// one place.
impl Shard {
    /// An event completed with `outcome`, `latency` after it was due.
    pub fn record_event(&self, ty: EventType, outcome: Outcome, latency: Duration) {
        self.metrics.event(ty, outcome, latency.as_secs_f64());
        self.stats.borrow_mut().counts.event(ty, outcome, latency);
    }

    /// A query completed as `cache`: `corrected` after it was due, `service` after it started.
    pub fn record_query(
        &self,
        qt: QueryType,
        cache: CacheOutcome,
        corrected: Duration,
        service: Duration,
    ) {
        self.metrics
            .query(qt, cache, corrected.as_secs_f64(), service.as_secs_f64());
        self.stats
            .borrow_mut()
            .counts
            .query(qt, cache, corrected, service);
    }

    /// `n` operations of stream `op` were not started, for reason `why`.
    pub fn record_skip(&self, op: Op, why: Skip, n: u64) {
        self.metrics.skipped(op, why, n);
        self.stats.borrow_mut().counts.skip(op, why, n);
    }

    /// A pacer woke `late` after it meant to.
    pub fn record_pacer_late(&self, late: Duration) {
        self.metrics.pacer_lateness.record(late.as_secs_f64());
        self.stats.borrow_mut().counts.pacer_late(late);
    }
}

/// What one shard tells the control core, once a second and once more at the end.
#[derive(Clone)]
pub struct ShardReport {
    pub shard: usize,
    pub last: bool,
    pub interval: Duration,
    /// Counts since the previous report.
    pub counts: Counts,
    pub active_orgs: u64,
    pub active_users: u64,
    pub redis_connected: usize,
    pub redis_pool_size: usize,
    /// Connections up on the current target (after a switch: the ones already moved).
    pub redis_on_target: usize,
    /// Unix time at which all of them were first up on it (this shard's cutover done).
    pub redis_all_on_target_at: Option<f64>,
    pub redis_inflight: usize,
    pub pg_read_connected: bool,
    pub inflight_ops: usize,
    pub adhoc_fraction: f64,
    pub db_pending: u64,
    /// Outages that ended in this interval.
    pub outages: Vec<Outage>,
    /// An outage still going on at report time: (start, milliseconds so far).
    pub open_outage: Option<(f64, f64)>,
    pub first_failure_unix: Option<f64>,
    pub last_failure_unix: Option<f64>,
    pub redis_target: String,
}

/// Builds the report since the previous one (up to the end of the load) and resets the
/// interval counters.
pub fn take_report(s: &Shard, last: bool) -> ShardReport {
    let at = Instant::now();
    let end = s.load_end.get().map_or(at, |e| e.min(at));
    let interval = end.saturating_duration_since(s.report_from.get());
    s.report_from.set(end.max(s.report_from.get()));
    let now = crate::workload::time::unix_now() as u64;
    let mut st = s.stats.borrow_mut();
    if now >= st.users_window_start + 60 {
        st.users_prev = st.users_now.estimate();
        st.users_now.clear();
        st.users_window_start = now;
    }
    let active_orgs = st
        .org_last_seen
        .iter()
        .filter(|&&t| t != 0 && u64::from(t) + 60 > now)
        .count() as u64;
    let active_users = st.users_prev.max(st.users_now.estimate()) as u64;
    s.metrics.active_orgs.set(active_orgs as f64);
    s.metrics.active_users.set(active_users as f64);
    s.metrics.inflight.set(s.inflight.get() as f64);
    s.pool.publish_gauges();
    ShardReport {
        shard: s.p.index,
        last,
        interval,
        counts: st.counts.take(),
        active_orgs,
        active_users,
        redis_connected: s.pool.connected(),
        redis_pool_size: s.p.pool.size,
        redis_on_target: s.pool.connected_to_target(),
        redis_all_on_target_at: s.pool.all_on_target_at(),
        redis_inflight: s.pool.inflight(),
        pg_read_connected: s.reader.is_connected(),
        inflight_ops: s.inflight.get(),
        adhoc_fraction: s.adhoc_fraction.get(),
        db_pending: s.backlog.pending(),
        outages: std::mem::take(&mut st.outages.ended),
        open_outage: st.outages.open_span(),
        first_failure_unix: st.outages.first_failure_unix.take(),
        last_failure_unix: st.outages.last_failure_unix.take(),
        redis_target: s.pool.target_label(),
    }
}

/// Cached Prometheus handles of one shard (no registry lookup on the hot path). Every label
/// combination is registered up front, so each series shows from the start at 0.
pub struct ShardMetrics {
    /// By `EventType`, then `Outcome`.
    pub events: [[Counter; Outcome::ALL.len()]; EventType::ALL.len()],
    /// By `OpResult`.
    pub event_duration: [PromHistogram; OpResult::ALL.len()],
    pub event_with_misses: PromHistogram,
    pub pacer_lateness: PromHistogram,
    /// By `QueryType`, then `CacheOutcome`.
    pub queries: [[Counter; CacheOutcome::ALL.len()]; QueryType::ALL.len()],
    pub query_duration: [[PromHistogram; CacheOutcome::ALL.len()]; QueryType::ALL.len()],
    pub query_service: [[PromHistogram; CacheOutcome::ALL.len()]; QueryType::ALL.len()],
    pub query_with_misses: PromHistogram,
    /// By `Op`, then `Skip`.
    pub skipped: [[Counter; Skip::ALL.len()]; Op::ALL.len()],
    pub warmups: Counter,
    pub inflight: Gauge,
    pub active_orgs: Gauge,
    pub active_users: Gauge,
}

impl ShardMetrics {
    pub fn new(shard: usize) -> ShardMetrics {
        let sh = shard.to_string();
        let query_labels = |qt: QueryType, c: CacheOutcome| {
            [
                ("query_type", qt.as_str().to_string()),
                ("cache", c.as_str().to_string()),
                ("result", c.result().as_str().to_string()),
                ("shard", sh.clone()),
            ]
        };
        let by_query = |name: &'static str| {
            QueryType::ALL.map(|qt| {
                CacheOutcome::ALL.map(|c| metrics::histogram!(name, &query_labels(qt, c)))
            })
        };
        ShardMetrics {
            events: EventType::ALL.map(|ty| {
                Outcome::ALL.map(|o| metrics::counter!(m::EVENTS_TOTAL, "type" => ty.as_str(), "outcome" => o.as_str(), "shard" => sh.clone()))
            }),
            event_duration: OpResult::ALL.map(|r| {
                metrics::histogram!(m::EVENT_DURATION, "result" => r.as_str(), "shard" => sh.clone())
            }),
            event_with_misses: metrics::histogram!(m::EVENT_DURATION_WITH_MISSES, "shard" => sh.clone()),
            pacer_lateness: metrics::histogram!(m::PACER_LATENESS, "shard" => sh.clone()),
            queries: QueryType::ALL.map(|qt| {
                CacheOutcome::ALL.map(|c| metrics::counter!(m::QUERIES_TOTAL, "query_type" => qt.as_str(), "cache" => c.as_str(), "shard" => sh.clone()))
            }),
            query_duration: by_query(m::QUERY_DURATION),
            query_service: by_query(m::QUERY_DURATION_UNCORRECTED),
            query_with_misses: metrics::histogram!(m::QUERY_DURATION_WITH_MISSES, "shard" => sh.clone()),
            skipped: Op::ALL.map(|op| {
                Skip::ALL.map(|r| metrics::counter!(m::SKIPPED_OPERATIONS_TOTAL, "operation" => op.as_str(), "reason" => r.as_str(), "shard" => sh.clone()))
            }),
            warmups: metrics::counter!(m::WARMUP_REFRESHES_TOTAL, "shard" => sh.clone()),
            inflight: metrics::gauge!(m::INFLIGHT_OPERATIONS, "shard" => sh.clone()),
            active_orgs: metrics::gauge!(m::ACTIVE_ORGANIZATIONS, "shard" => sh.clone()),
            active_users: metrics::gauge!(m::ACTIVE_USERS, "shard" => sh.clone()),
        }
    }

    /// N operations of stream OP were not started: counted by reason, and as misses in the
    /// "including misses" histogram.
    pub fn skipped(&self, op: Op, why: Skip, n: u64) {
        self.skipped[op as usize][why as usize].increment(n);
        let miss = MISS_MICROS as f64 / 1e6;
        let h = match op {
            Op::Event => &self.event_with_misses,
            Op::Query => &self.query_with_misses,
        };
        h.record_many(miss, n as usize);
    }

    pub fn event(&self, ty: EventType, o: Outcome, secs: f64) {
        self.events[ty as usize][o as usize].increment(1);
        let r = event_result(o);
        self.event_duration[r as usize].record(secs);
        self.event_with_misses.record(match r {
            OpResult::Ok => secs,
            OpResult::Error => MISS_MICROS as f64 / 1e6,
        });
    }

    pub fn query(&self, qt: QueryType, c: CacheOutcome, corrected: f64, service: f64) {
        let (q, c_) = (qt as usize, c as usize);
        self.queries[q][c_].increment(1);
        self.query_duration[q][c_].record(corrected);
        self.query_service[q][c_].record(service);
        self.query_with_misses.record(match c.result() {
            OpResult::Ok => corrected,
            OpResult::Error => MISS_MICROS as f64 / 1e6,
        });
    }
}

//! Shard-local counters and histograms, and the report each shard sends the control core
//! every second (the control core merges them for progress lines, gauges and the summary).
//!
//! Prometheus series are updated directly through cached handles labelled with the shard,
//! so no two cores write the same atomic.

use std::collections::HashMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use metrics::{Counter, Gauge, Histogram as PromHistogram};

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

/// A span during which a shard's Redis operations failed: from the start of the first
/// failed operation to the completion of the first later-started one that succeeded.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outage {
    pub shard: usize,
    pub start_unix: f64,
    pub duration_ms: f64,
    pub failed_operations: u64,
}

/// An outage in progress.
#[derive(Clone, Copy, Debug)]
pub struct OpenOutage {
    pub since: std::time::Instant,
    pub since_unix: f64,
    pub failed: u64,
}

/// Distinct (organization, user) pairs seen in the current minute, estimated with a
/// HyperLogLog of 2^14 one-byte registers (16 KiB, about 0.8% standard error). One insert
/// per event: an exact hash set of up to a few hundred thousand ids showed at 3-4% of the
/// event path, its inserts missing the cache; the sketch stays in L1.
pub struct UserSketch {
    registers: Box<[u8; UserSketch::M]>,
}

impl Default for UserSketch {
    fn default() -> Self {
        UserSketch {
            registers: Box::new([0; UserSketch::M]),
        }
    }
}

impl UserSketch {
    const P: u32 = 14;
    const M: usize = 1 << Self::P;

    pub fn insert(&mut self, id: u64) {
        // MurmurHash3's 64-bit finalizer: sequential ids spread over all bits.
        let mut h = id;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        let index = (h >> (64 - Self::P)) as usize;
        // Rank of the first 1 bit in the remaining 50 bits (a guard bit bounds it).
        let rest = (h << Self::P) | (1 << (Self::P - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        let r = &mut self.registers[index];
        if rank > *r {
            *r = rank;
        }
    }

    /// The estimated number of distinct ids inserted since the last clear.
    pub fn estimate(&self) -> usize {
        let m = Self::M as f64;
        let (mut sum, mut zeros) = (0.0f64, 0usize);
        for &r in self.registers.iter() {
            sum += 1.0 / f64::from(1u32 << r.min(31));
            zeros += usize::from(r == 0);
        }
        let raw = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
        let est = if raw <= 2.5 * m && zeros > 0 {
            // Linear counting: exact enough for small sets.
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        est.round() as usize
    }

    pub fn clear(&mut self) {
        self.registers.fill(0);
    }
}

/// Counts since the last report (reset on every report).
pub struct ShardStats {
    pub events: [[u64; 3]; 5],
    pub queries: [[u64; 4]; 3],
    /// Hits and lookups of cacheable queries on their natural keys (not ad-hoc ones), since
    /// the last report.
    pub natural_hits: u64,
    pub natural_lookups: u64,
    /// The same since the steering loop last used them (`queries::steer_hit_ratio`).
    pub steer_hits: u64,
    pub steer_lookups: u64,
    /// Skipped operations, by stream (`Op`) and reason (`Skip`).
    pub skipped: [[u64; 3]; 2],
    pub errors: HashMap<&'static str, u64>,
    /// Latency from the scheduled start (µs) of successful queries.
    pub query_latency: Histogram<u64>,
    /// The same for failed queries (kept apart: a fast failure is no fast answer).
    pub query_error_latency: Histogram<u64>,
    /// Successful queries' latency from the actual start (µs): what a closed-loop tool
    /// would report.
    pub query_service: Histogram<u64>,
    /// Latency of acknowledged events, and of failed or unknown ones.
    pub event_latency: Histogram<u64>,
    pub event_error_latency: Histogram<u64>,
    /// How late the pacers woke for their schedule (µs), one value per wake-up.
    pub pacer_lateness: Histogram<u64>,
    pub warmups: u64,
    /// Unix second each owned organization last had an event (indexed by org rank).
    pub org_last_seen: Vec<u32>,
    pub users_now: UserSketch,
    pub users_prev: usize,
    pub users_window_start: u64,
    pub outage: Option<OpenOutage>,
    pub outages: Vec<Outage>,
    pub first_failure_unix: Option<f64>,
    pub last_failure_unix: Option<f64>,
}

impl ShardStats {
    /// A Redis operation that started at `started` failed.
    pub fn redis_failed(&mut self, started: std::time::Instant, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
        let now = crate::workload::time::unix_now();
        let started_unix = now - started.elapsed().as_secs_f64();
        self.first_failure_unix.get_or_insert(started_unix);
        self.last_failure_unix = Some(now);
        match &mut self.outage {
            Some(o) => o.failed += 1,
            None => {
                self.outage = Some(OpenOutage {
                    since: started,
                    since_unix: started_unix,
                    failed: 1,
                })
            }
        }
    }

    /// A Redis operation that started at `started` succeeded: closes an outage that began
    /// before it started.
    pub fn redis_ok(&mut self, shard: usize, started: std::time::Instant) {
        if let Some(o) = self.outage {
            if started >= o.since {
                self.outage = None;
                if self.outages.len() < 10_000 {
                    self.outages.push(Outage {
                        shard,
                        start_unix: o.since_unix,
                        duration_ms: o.since.elapsed().as_secs_f64() * 1000.0,
                        failed_operations: o.failed,
                    });
                }
            }
        }
    }
}

impl ShardStats {
    pub fn new(orgs: usize) -> ShardStats {
        ShardStats {
            events: [[0; 3]; 5],
            queries: [[0; 4]; 3],
            natural_hits: 0,
            natural_lookups: 0,
            steer_hits: 0,
            steer_lookups: 0,
            skipped: [[0; 3]; 2],
            errors: HashMap::new(),
            query_latency: new_histogram(),
            query_error_latency: new_histogram(),
            query_service: new_histogram(),
            event_latency: new_histogram(),
            event_error_latency: new_histogram(),
            pacer_lateness: new_histogram(),
            warmups: 0,
            org_last_seen: vec![0; orgs],
            users_now: Default::default(),
            users_prev: 0,
            users_window_start: 0,
            outage: None,
            outages: Vec::new(),
            first_failure_unix: None,
            last_failure_unix: None,
        }
    }
}

/// What one shard tells the control core, once a second and once more at the end.
#[derive(Clone)]
pub struct ShardReport {
    pub shard: usize,
    pub last: bool,
    pub interval: Duration,
    pub events: [[u64; 3]; 5],
    pub queries: [[u64; 4]; 3],
    pub natural_hits: u64,
    pub natural_lookups: u64,
    pub skipped: [[u64; 3]; 2],
    pub errors: Vec<(&'static str, u64)>,
    pub query_latency: Histogram<u64>,
    pub query_error_latency: Histogram<u64>,
    pub query_service: Histogram<u64>,
    pub event_latency: Histogram<u64>,
    pub event_error_latency: Histogram<u64>,
    pub pacer_lateness: Histogram<u64>,
    pub warmups: u64,
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
    let at = std::time::Instant::now();
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
    let report = ShardReport {
        shard: s.p.index,
        last,
        interval,
        events: st.events,
        queries: st.queries,
        natural_hits: st.natural_hits,
        natural_lookups: st.natural_lookups,
        skipped: st.skipped,
        errors: st.errors.drain().collect(),
        query_latency: st.query_latency.clone(),
        query_error_latency: st.query_error_latency.clone(),
        query_service: st.query_service.clone(),
        event_latency: st.event_latency.clone(),
        event_error_latency: st.event_error_latency.clone(),
        pacer_lateness: st.pacer_lateness.clone(),
        warmups: st.warmups,
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
        outages: std::mem::take(&mut st.outages),
        open_outage: st
            .outage
            .map(|o| (o.since_unix, o.since.elapsed().as_secs_f64() * 1000.0)),
        first_failure_unix: st.first_failure_unix.take(),
        last_failure_unix: st.last_failure_unix.take(),
        redis_target: s.pool.target_label(),
    };
    st.events = [[0; 3]; 5];
    st.queries = [[0; 4]; 3];
    st.natural_hits = 0;
    st.natural_lookups = 0;
    st.skipped = [[0; 3]; 2];
    st.warmups = 0;
    st.query_latency.reset();
    st.query_error_latency.reset();
    st.query_service.reset();
    st.event_latency.reset();
    st.event_error_latency.reset();
    st.pacer_lateness.reset();
    report
}

/// Cached Prometheus handles of one shard (no registry lookup on the hot path).
pub struct ShardMetrics {
    pub events: Vec<Counter>,
    /// Indexed by `OpResult`.
    pub event_duration: [PromHistogram; 2],
    pub event_with_misses: PromHistogram,
    pub pacer_lateness: PromHistogram,
    pub queries: Vec<Counter>,
    pub query_duration: Vec<PromHistogram>,
    pub query_service: Vec<PromHistogram>,
    pub query_with_misses: PromHistogram,
    /// Indexed by `Op` x `Skip` (all six registered, so each shows from the start at 0).
    pub skipped: Vec<Counter>,
    pub warmups: Counter,
    pub inflight: Gauge,
    pub active_orgs: Gauge,
    pub active_users: Gauge,
}

impl ShardMetrics {
    pub fn new(shard: usize) -> ShardMetrics {
        let sh = shard.to_string();
        let mut events = Vec::new();
        for ty in EventType::ALL {
            for o in Outcome::ALL {
                events.push(metrics::counter!(m::EVENTS_TOTAL, "type" => ty.as_str(), "outcome" => o.as_str(), "shard" => sh.clone()));
            }
        }
        let mut queries = Vec::new();
        let mut query_duration = Vec::new();
        let mut query_service = Vec::new();
        for qt in QueryType::ALL {
            for c in CacheOutcome::ALL {
                let counter_labels = [
                    ("query_type", qt.as_str().to_string()),
                    ("cache", c.as_str().to_string()),
                    ("shard", sh.clone()),
                ];
                queries.push(metrics::counter!(m::QUERIES_TOTAL, &counter_labels));
                let labels = [
                    ("query_type", qt.as_str().to_string()),
                    ("cache", c.as_str().to_string()),
                    ("result", c.result().as_str().to_string()),
                    ("shard", sh.clone()),
                ];
                query_duration.push(metrics::histogram!(m::QUERY_DURATION, &labels));
                query_service.push(metrics::histogram!(m::QUERY_DURATION_UNCORRECTED, &labels));
            }
        }
        let mut skipped = Vec::new();
        for op in Op::ALL {
            for r in Skip::ALL {
                skipped.push(metrics::counter!(m::SKIPPED_OPERATIONS_TOTAL, "operation" => op.as_str(), "reason" => r.as_str(), "shard" => sh.clone()));
            }
        }
        let event_duration = OpResult::ALL.map(|r| {
            metrics::histogram!(m::EVENT_DURATION, "result" => r.as_str(), "shard" => sh.clone())
        });
        ShardMetrics {
            events,
            event_duration,
            event_with_misses: metrics::histogram!(m::EVENT_DURATION_WITH_MISSES, "shard" => sh.clone()),
            pacer_lateness: metrics::histogram!(m::PACER_LATENESS, "shard" => sh.clone()),
            queries,
            query_duration,
            query_service,
            query_with_misses: metrics::histogram!(m::QUERY_DURATION_WITH_MISSES, "shard" => sh.clone()),
            skipped,
            warmups: metrics::counter!(m::WARMUP_REFRESHES_TOTAL, "shard" => sh.clone()),
            inflight: metrics::gauge!(m::INFLIGHT_OPERATIONS, "shard" => sh.clone()),
            active_orgs: metrics::gauge!(m::ACTIVE_ORGANIZATIONS, "shard" => sh.clone()),
            active_users: metrics::gauge!(m::ACTIVE_USERS, "shard" => sh),
        }
    }

    /// N operations of stream OP were not started: counted by reason, and as misses in the
    /// "including misses" histogram.
    pub fn skipped(&self, op: Op, why: Skip, n: u64) {
        self.skipped[op as usize * 3 + why as usize].increment(n);
        let miss = MISS_MICROS as f64 / 1e6;
        let h = match op {
            Op::Event => &self.event_with_misses,
            Op::Query => &self.query_with_misses,
        };
        h.record_many(miss, n as usize);
    }

    pub fn event(&self, ty: EventType, o: Outcome, secs: f64) {
        self.events[ty as usize * 3 + o as usize].increment(1);
        let r = event_result(o);
        self.event_duration[r as usize].record(secs);
        self.event_with_misses.record(match r {
            OpResult::Ok => secs,
            OpResult::Error => MISS_MICROS as f64 / 1e6,
        });
    }

    pub fn query(&self, qt: QueryType, c: CacheOutcome, corrected: f64, service: f64) {
        let i = qt as usize * 4 + c as usize;
        self.queries[i].increment(1);
        self.query_duration[i].record(corrected);
        self.query_service[i].record(service);
        self.query_with_misses.record(match c.result() {
            OpResult::Ok => corrected,
            OpResult::Error => MISS_MICROS as f64 / 1e6,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_estimate_distinct_users_within_a_few_percent() {
        let mut u = UserSketch::default();
        assert_eq!(u.estimate(), 0);
        for user in 1..=10u64 {
            u.insert((3 << 32) | user);
            u.insert((3 << 32) | user);
        }
        assert_eq!(u.estimate(), 10);
        for n in [1_000u64, 50_000, 500_000] {
            u.clear();
            for i in 0..n {
                let (org, user) = (1 + i % 500, 1 + i / 500);
                u.insert((org << 32) | user);
                if i % 3 == 0 {
                    u.insert((org << 32) | user);
                }
            }
            let err = (u.estimate() as f64 - n as f64).abs() / n as f64;
            assert!(err < 0.03, "{n} distinct estimated as {}", u.estimate());
        }
    }
}

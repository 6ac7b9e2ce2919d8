//! Merges the shards' per-second reports into windows of counts (a second, a progress
//! interval, the whole run), and the figures made from them: outcomes, latency percentiles
//! (misses counted), cache ratios. The end-of-run summary is in `summary`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::shard::counts::{ByName, Counts};
use crate::shard::stats::{Op, ShardReport, MISS_MICROS};

/// Counts over some span (a second, a progress interval, or the whole run): the shards'
/// [`Counts`] merged, read through `Deref`, with the figures made from them.
#[derive(Clone, Default)]
pub struct Window {
    pub counts: Counts,
    /// Unix time at which this window was closed (one-second windows only).
    pub at_unix: f64,
}

impl std::ops::Deref for Window {
    type Target = Counts;
    fn deref(&self) -> &Counts {
        &self.counts
    }
}

impl std::ops::DerefMut for Window {
    fn deref_mut(&mut self) -> &mut Counts {
        &mut self.counts
    }
}

impl Window {
    /// Every operation of OP that was due: ok, error and skipped.
    pub fn outcomes(&self, op: Op) -> Outcomes {
        let (ok, error) = match op {
            Op::Event => (self.events_ok(), self.events_failed()),
            Op::Query => (self.queries_ok(), self.queries_failed()),
        };
        let skipped = self.skipped_of(op);
        Outcomes {
            due: ok + error + skipped,
            ok,
            error,
            skipped,
            skipped_by_reason: self.skipped_reasons_of(op),
        }
    }

    /// Latency of successful queries with every failed and skipped one as a miss.
    pub fn query_latency_with_misses(&self) -> WithMisses {
        let misses = self.queries_failed() + self.skipped_of(Op::Query);
        percentiles_with_misses(&self.query_latency, misses)
    }

    /// Latency of acknowledged events with every failed, unknown and skipped one as a miss.
    pub fn event_latency_with_misses(&self) -> WithMisses {
        let misses = self.events_failed() + self.skipped_of(Op::Event);
        percentiles_with_misses(&self.event_latency, misses)
    }

    pub fn latencies(&self) -> Latencies {
        Latencies {
            query_latency_ms: percentiles(&self.query_latency),
            query_error_latency_ms: percentiles(&self.query_error_latency),
            query_latency_including_misses_ms: self.query_latency_with_misses(),
            event_latency_ms: percentiles(&self.event_latency),
            event_error_latency_ms: percentiles(&self.event_error_latency),
            event_latency_including_misses_ms: self.event_latency_with_misses(),
        }
    }

    pub fn figures(&self) -> Figures {
        Figures {
            latency: self.latencies(),
            query_latency_uncorrected_ms: percentiles(&self.query_service),
            pacer_lateness_ms: percentiles(&self.pacer_lateness),
            cache: self.cache_ratios(),
        }
    }

    pub fn cache_ratios(&self) -> CacheRatios {
        CacheRatios {
            cache_hit_ratio: self.hit_ratio(),
            cache_natural_hit_ratio: self.natural_hit_ratio(),
            cache_adhoc_fraction: self.adhoc_fraction(),
        }
    }
}

/// The latencies of a span (ms), as the summary, the status and each switch phase carry them.
#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug)]
pub struct Latencies {
    /// Successful queries only, from the scheduled start.
    pub query_latency_ms: Percentiles,
    /// Failed queries only (a fast failure is no fast answer: kept apart).
    pub query_error_latency_ms: Percentiles,
    /// Every query that was due, each failed or skipped one counted as a miss (`MISS_MS`).
    pub query_latency_including_misses_ms: WithMisses,
    /// Acknowledged events only.
    pub event_latency_ms: Percentiles,
    /// Failed and unknown-outcome events.
    pub event_error_latency_ms: Percentiles,
    pub event_latency_including_misses_ms: WithMisses,
}

/// A span's figures as the summary (the whole run) and the status (the last 10 s) have them.
#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug)]
pub struct Figures {
    #[serde(flatten)]
    pub latency: Latencies,
    /// Successful queries, from the actual start.
    pub query_latency_uncorrected_ms: Percentiles,
    /// How late the load generator woke for its schedule: its own stalls (CPU starvation,
    /// a paused VM), which also show in the latencies.
    pub pacer_lateness_ms: Percentiles,
    #[serde(flatten)]
    pub cache: CacheRatios,
}

/// The cache hit ratios of a span (None when no cacheable lookup completed).
#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug)]
pub struct CacheRatios {
    /// Steered: every cacheable lookup, the one-off keys of the steering loop included.
    pub cache_hit_ratio: Option<f64>,
    /// Natural: cacheable lookups on their own keys only.
    pub cache_natural_hit_ratio: Option<f64>,
    /// Share of cacheable lookups the steering loop sent to one-off keys.
    pub cache_adhoc_fraction: Option<f64>,
}

/// Latency percentiles in milliseconds.
#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What a percentile reads when it falls among missed operations (ms).
pub const MISS_MS: f64 = MISS_MICROS as f64 / 1000.0;

/// Latency percentiles (ms) of every operation that was due, each missed one (an error or a
/// skip) counted as later than any deadline: a percentile that falls among them reads
/// `MISS_MS`. So a run that missed 2% of its operations has a p99 of `MISS_MS`, however fast
/// the rest were.
#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug)]
pub struct WithMisses {
    #[serde(flatten)]
    pub percentiles: Percentiles,
    /// Operations due: completed and skipped.
    pub operations: u64,
    /// Of them, missed: failed or skipped.
    pub missed: u64,
    /// What a percentile among the misses reads.
    pub miss_ms: f64,
}

pub fn percentiles_with_misses(ok: &Histogram<u64>, misses: u64) -> WithMisses {
    let n = ok.len();
    let total = n + misses;
    let at = |q: f64| {
        if total == 0 {
            return 0.0;
        }
        // Rank of the q-quantile among all operations (1-based), misses ranked last.
        let rank = ((q * total as f64) - 1e-9).ceil().max(1.0) as u64;
        if rank > n {
            MISS_MS
        } else {
            ok.value_at_quantile((rank as f64 - 0.5) / n as f64) as f64 / 1000.0
        }
    };
    WithMisses {
        percentiles: Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: if misses > 0 {
                MISS_MS
            } else {
                ok.max() as f64 / 1000.0
            },
        },
        operations: total,
        missed: misses,
        miss_ms: MISS_MS,
    }
}

/// Every operation of one stream that was due, by what came of it.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Outcomes {
    pub due: u64,
    pub ok: u64,
    pub error: u64,
    pub skipped: u64,
    pub skipped_by_reason: ByName,
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Percentiles {
        p50: ms(0.5),
        p90: ms(0.9),
        p99: ms(0.99),
        p999: ms(0.999),
        max: h.max() as f64 / 1000.0,
    }
}

/// Latest per-shard state (gauges of the report, not counters).
#[derive(Clone, Default)]
pub struct ShardState {
    pub redis_connected: usize,
    pub redis_pool_size: usize,
    pub redis_inflight: usize,
    pub pg_read_connected: bool,
    pub inflight_ops: usize,
    pub active_orgs: u64,
    pub active_users: u64,
    pub adhoc_fraction: f64,
    pub done: bool,
}

/// Everything the control core knows about the run so far.
pub struct Aggregate {
    pub started: Instant,
    pub total: Window,
    pub interval: Window,
    pub interval_started: Instant,
    /// The last 60 one-second windows of counts (for ratios over a recent span).
    pub recent: VecDeque<Window>,
    pub current: Window,
    pub shards: Vec<ShardState>,
    /// Seconds covered by each shard's reports: in the progress interval, and in total.
    /// Rates divide counts by these (not by wall time), so a late report cannot skew them.
    interval_secs: Vec<f64>,
    total_secs: Vec<f64>,
    /// Which shards have reported into `current`, and when it was last closed.
    reported: Vec<bool>,
    closed_at: Instant,
}

impl Aggregate {
    pub fn new(shards: usize) -> Aggregate {
        Aggregate {
            started: Instant::now(),
            total: Window::default(),
            interval: Window::default(),
            interval_started: Instant::now(),
            recent: VecDeque::new(),
            current: Window::default(),
            shards: vec![ShardState::default(); shards],
            interval_secs: vec![0.0; shards],
            total_secs: vec![0.0; shards],
            reported: vec![false; shards],
            closed_at: Instant::now(),
        }
    }

    pub fn add(&mut self, r: &ShardReport) {
        for w in [&mut self.total, &mut self.interval, &mut self.current] {
            w.merge(&r.counts);
        }
        if let Some(t) = self.interval_secs.get_mut(r.shard) {
            *t += r.interval.as_secs_f64();
        }
        if let Some(t) = self.total_secs.get_mut(r.shard) {
            *t += r.interval.as_secs_f64();
        }
        if let Some(x) = self.reported.get_mut(r.shard) {
            *x = true;
        }
        if let Some(s) = self.shards.get_mut(r.shard) {
            *s = ShardState {
                redis_connected: r.redis_connected,
                redis_pool_size: r.redis_pool_size,
                redis_inflight: r.redis_inflight,
                pg_read_connected: r.pg_read_connected,
                inflight_ops: r.inflight_ops,
                active_orgs: r.active_orgs,
                active_users: r.active_users,
                adhoc_fraction: r.adhoc_fraction,
                done: r.last,
            };
        }
    }

    /// Whether every shard still running has reported into the current window: the shards
    /// report once a second each, so the window is then a second of the whole run, and is
    /// closed at once (a window closed on a timer of its own could lock onto a phase where a
    /// report lands just after each close, and count every report a second late).
    pub fn window_complete(&self) -> bool {
        self.shards
            .iter()
            .zip(&self.reported)
            .all(|(s, &reported)| reported || s.done)
    }

    /// Whether some shard has reported into the current window.
    pub fn window_started(&self) -> bool {
        self.reported.iter().any(|&r| r)
    }

    /// When the current window was opened (the last one closed).
    pub fn window_opened_at(&self) -> Instant {
        self.closed_at
    }

    /// Closes the current one-second window: when every shard has reported into it, or
    /// when a report is late.
    pub fn tick(&mut self) {
        self.closed_at = Instant::now();
        self.reported.iter_mut().for_each(|r| *r = false);
        let mut w = std::mem::take(&mut self.current);
        w.at_unix = crate::workload::time::unix_now();
        self.recent.push_back(w);
        while self.recent.len() > 60 {
            self.recent.pop_front();
        }
    }

    /// Everything over the last `secs` one-second windows.
    pub fn recent(&self, secs: usize) -> Window {
        let mut w = Window::default();
        for r in self.recent.iter().rev().take(secs) {
            w.merge(r);
        }
        w
    }

    /// Takes the progress interval's window and the seconds it covers.
    pub fn take_interval(&mut self) -> (Window, Duration) {
        let wall = self.interval_started.elapsed();
        self.interval_started = Instant::now();
        let covered = mean(&self.interval_secs);
        self.interval_secs.iter_mut().for_each(|t| *t = 0.0);
        let d = if covered > 0.0 {
            Duration::from_secs_f64(covered)
        } else {
            wall
        };
        (std::mem::take(&mut self.interval), d)
    }

    /// Seconds of load the totals cover (mean over shards).
    pub fn load_seconds(&self) -> f64 {
        mean(&self.total_secs)
    }

    /// Marks the start of the load (after the schema is ready).
    pub fn load_started(&mut self) {
        self.started = Instant::now();
        self.interval_started = Instant::now();
        self.closed_at = Instant::now();
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::stats::{new_histogram, CacheOutcome, Skip};
    use crate::workload::QueryType;

    fn hist(values_us: &[u64]) -> Histogram<u64> {
        let mut h = new_histogram();
        for &v in values_us {
            h.record(v).expect("in range");
        }
        h
    }

    #[test]
    fn should_count_misses_as_later_than_any_latency() {
        // 98 fast successes (1 ms) and 2 misses: 2% missed, so p99 is a miss.
        let ok = hist(&[1000; 98]);
        let m = percentiles_with_misses(&ok, 2);
        assert_eq!(m.operations, 100);
        assert_eq!(m.missed, 2);
        assert!((m.percentiles.p50 - 1.0).abs() < 0.02, "{m:?}");
        assert!((m.percentiles.p90 - 1.0).abs() < 0.02, "{m:?}");
        assert_eq!(m.percentiles.p99, MISS_MS, "{m:?}");
        assert_eq!(m.percentiles.max, MISS_MS, "{m:?}");
        // The success-only p99 of the same run stays at 1 ms.
        assert!((percentiles(&ok).p99 - 1.0).abs() < 0.02);

        // 10 slow successes and 1 miss in 1000: p99 and p99.9 are slow successes, max a miss.
        let mut values = vec![1000; 989];
        values.extend([50_000; 10]);
        let ok = hist(&values);
        let m = percentiles_with_misses(&ok, 1);
        assert!((m.percentiles.p99 - 50.0).abs() < 0.6, "{m:?}");
        assert!((m.percentiles.p999 - 50.0).abs() < 0.6, "{m:?}");
        assert_eq!(m.percentiles.max, MISS_MS);
        // Without misses it agrees with the plain percentiles.
        let plain = percentiles(&ok);
        let m = percentiles_with_misses(&ok, 0);
        assert_eq!(m.percentiles.p50, plain.p50);
        assert_eq!(m.percentiles.p99, plain.p99);
        assert_eq!(m.percentiles.max, plain.max);
        // Only misses, or nothing at all.
        let empty = new_histogram();
        assert_eq!(percentiles_with_misses(&empty, 3).percentiles.p50, MISS_MS);
        assert_eq!(percentiles_with_misses(&empty, 0).percentiles.p99, 0.0);
    }

    /// A shard's one-second report with `hits` dashboard queries served from the cache.
    fn shard_report(shard: usize, last: bool, hits: u64) -> ShardReport {
        let mut counts = Counts::default();
        counts.queries[QueryType::Dashboard as usize][CacheOutcome::Hit as usize] = hits;
        ShardReport {
            shard,
            last,
            interval: Duration::from_secs(1),
            counts,
            active_orgs: 0,
            active_users: 0,
            redis_connected: 1,
            redis_pool_size: 1,
            redis_on_target: 1,
            redis_all_on_target_at: None,
            redis_inflight: 0,
            pg_read_connected: true,
            inflight_ops: 0,
            adhoc_fraction: 0.0,
            db_pending: 0,
            outages: Vec::new(),
            open_outage: None,
            first_failure_unix: None,
            last_failure_unix: None,
            redis_target: String::new(),
        }
    }

    #[test]
    fn should_close_a_window_once_every_running_shard_has_reported() {
        let mut agg = Aggregate::new(3);
        assert!(!agg.window_started());
        agg.add(&shard_report(0, false, 1));
        agg.add(&shard_report(2, false, 2));
        assert!(agg.window_started());
        assert!(!agg.window_complete(), "shard 1 has not reported");
        agg.add(&shard_report(1, false, 4));
        assert!(agg.window_complete());
        agg.tick();
        assert_eq!(agg.recent.back().map(|w| w.queries_total()), Some(7));
        assert!(!agg.window_started() && !agg.window_complete());

        // A shard that has sent its last report is not waited for.
        agg.add(&shard_report(1, true, 8));
        agg.add(&shard_report(0, false, 16));
        assert!(!agg.window_complete(), "shard 2 has not reported");
        agg.add(&shard_report(2, false, 32));
        assert!(agg.window_complete());
        agg.tick();
        assert_eq!(agg.recent.back().map(|w| w.queries_total()), Some(56));
        agg.add(&shard_report(2, false, 64));
        assert!(!agg.window_complete(), "shard 0 has not reported");
        agg.add(&shard_report(0, true, 128));
        assert!(agg.window_complete());
    }

    /// A window with these dashboard query counts (hit, miss, error).
    fn dashboards(hit: u64, miss: u64, error: u64) -> Window {
        let mut w = Window::default();
        w.queries[QueryType::Dashboard as usize] = [hit, miss, 0, error];
        w
    }

    #[test]
    fn should_keep_errors_and_skips_apart_and_count_them_as_misses() {
        let mut w = dashboards(90, 5, 3);
        w.skipped[Op::Query as usize][Skip::MaxWorkers as usize] = 2;
        w.skipped[Op::Event as usize][Skip::DbBacklog as usize] = 7;
        for _ in 0..95 {
            w.query_latency.record(500).expect("in range");
        }
        for _ in 0..3 {
            w.query_error_latency.record(20).expect("in range");
        }
        let q = w.outcomes(Op::Query);
        assert_eq!((q.due, q.ok, q.error, q.skipped), (100, 95, 3, 2));
        assert_eq!(q.skipped_by_reason.get("max_workers"), Some(&2));
        assert_eq!(q.skipped_by_reason.get("db_backlog"), None);
        assert_eq!(w.outcomes(Op::Event).skipped, 7);
        assert_eq!(w.skipped_by_reason().get("db_backlog"), Some(&7));
        // Fast errors do not pull the success latency down.
        assert!((percentiles(&w.query_latency).p50 - 0.5).abs() < 0.01);
        let m = w.query_latency_with_misses();
        assert_eq!((m.operations, m.missed), (100, 5));
        assert_eq!(m.percentiles.p99, MISS_MS);
    }

    #[test]
    fn should_tell_natural_from_steered_hit_ratio() {
        // 100 cacheable lookups: 80 natural (76 hits), 20 ad-hoc (all misses).
        let mut w = dashboards(76, 24, 0);
        w.queries[QueryType::Realtime as usize][CacheOutcome::None as usize] = 10;
        w.natural_hits = 76;
        w.natural_lookups = 80;
        assert_eq!(w.hit_ratio(), Some(0.76));
        assert_eq!(w.natural_hit_ratio(), Some(0.95));
        assert_eq!(w.adhoc_fraction(), Some(0.2));
        assert_eq!(Window::default().natural_hit_ratio(), None);
    }
}

//! Merges the shards' per-second reports: progress lines, gauges, and the final summary.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::shard::stats::{new_histogram, CacheOutcome, ShardReport, Skip};
use crate::workload::{EventType, Outcome, QueryType};

/// Counts over some span (a second, a progress interval, or the whole run).
#[derive(Clone)]
pub struct Window {
    pub events: [[u64; 3]; 5],
    pub queries: [[u64; 4]; 3],
    pub skipped: [u64; 3],
    pub errors: BTreeMap<&'static str, u64>,
    pub query_latency: Histogram<u64>,
    pub query_service: Histogram<u64>,
    pub event_latency: Histogram<u64>,
    /// How late the shards' pacers woke (µs): stalls of the generator itself.
    pub pacer_lateness: Histogram<u64>,
    pub warmups: u64,
    /// Unix time at which this window was closed (one-second windows only).
    pub at_unix: f64,
}

impl Default for Window {
    fn default() -> Window {
        Window {
            events: [[0; 3]; 5],
            queries: [[0; 4]; 3],
            skipped: [0; 3],
            errors: BTreeMap::new(),
            query_latency: new_histogram(),
            query_service: new_histogram(),
            event_latency: new_histogram(),
            pacer_lateness: new_histogram(),
            warmups: 0,
            at_unix: 0.0,
        }
    }
}

impl Window {
    /// A shard report's counts as a window.
    pub fn from_report(r: &ShardReport) -> Window {
        Window {
            events: r.events,
            queries: r.queries,
            skipped: r.skipped,
            errors: r.errors.iter().copied().collect(),
            query_latency: r.query_latency.clone(),
            query_service: r.query_service.clone(),
            event_latency: r.event_latency.clone(),
            pacer_lateness: r.pacer_lateness.clone(),
            warmups: r.warmups,
            at_unix: 0.0,
        }
    }

    /// Adds another window (counts, errors and histograms).
    pub fn merge(&mut self, other: &Window) {
        let pairs = self
            .events
            .iter_mut()
            .flatten()
            .zip(other.events.iter().flatten());
        pairs.for_each(|(a, b)| *a += b);
        let pairs = self
            .queries
            .iter_mut()
            .flatten()
            .zip(other.queries.iter().flatten());
        pairs.for_each(|(a, b)| *a += b);
        let pairs = self.skipped.iter_mut().zip(&other.skipped);
        pairs.for_each(|(a, b)| *a += b);
        for (k, n) in &other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        let _ = self.query_latency.add(&other.query_latency);
        let _ = self.query_service.add(&other.query_service);
        let _ = self.event_latency.add(&other.event_latency);
        let _ = self.pacer_lateness.add(&other.pacer_lateness);
        self.warmups += other.warmups;
    }

    pub fn events_total(&self) -> u64 {
        self.events.iter().flatten().sum()
    }

    pub fn queries_total(&self) -> u64 {
        self.queries.iter().flatten().sum()
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.iter().sum()
    }

    /// Hits / (hits + misses) of cacheable queries; None before any lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let hits: u64 = self
            .queries
            .iter()
            .map(|q| q[CacheOutcome::Hit as usize])
            .sum();
        let misses: u64 = self
            .queries
            .iter()
            .map(|q| q[CacheOutcome::Miss as usize])
            .sum();
        (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64)
    }

    pub fn conversion_rate(&self) -> Option<f64> {
        let views: u64 = self.events[EventType::PageView as usize].iter().sum();
        let conv: u64 = self.events[EventType::Conversion as usize].iter().sum();
        (views > 0).then(|| conv as f64 / views as f64)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Serialize, Clone, Copy, Default, Debug)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
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
        }
    }

    pub fn add(&mut self, r: &ShardReport) {
        let w = Window::from_report(r);
        self.total.merge(&w);
        self.interval.merge(&w);
        self.current.merge(&w);
        if let Some(t) = self.interval_secs.get_mut(r.shard) {
            *t += r.interval.as_secs_f64();
        }
        if let Some(t) = self.total_secs.get_mut(r.shard) {
            *t += r.interval.as_secs_f64();
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

    /// Closes the current one-second window (called once a second).
    pub fn tick(&mut self) {
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
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The end-of-run summary, also served as JSON.
#[derive(Serialize, Debug)]
pub struct Summary {
    pub run_id: i64,
    pub elapsed_seconds: f64,
    pub events: u64,
    pub events_per_second: f64,
    pub events_target_per_second: u64,
    pub events_by_type: BTreeMap<&'static str, u64>,
    pub events_by_outcome: BTreeMap<&'static str, u64>,
    pub queries: u64,
    pub queries_per_second: f64,
    pub queries_target_per_second: u64,
    pub queries_by_type: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub query_latency_ms: Percentiles,
    pub query_latency_uncorrected_ms: Percentiles,
    pub event_latency_ms: Percentiles,
    /// How late the load generator woke for its schedule: its own stalls (CPU starvation,
    /// a paused VM), which also show in the latencies above.
    pub pacer_lateness_ms: Percentiles,
    pub cache_hit_ratio: Option<f64>,
    pub cache_hit_target_ratio: f64,
    pub skipped: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub db_rows_written: u64,
    pub db_rows_dropped: u64,
    pub db_write_errors: u64,
}

impl Summary {
    pub fn build(
        run_id: i64,
        a: &Aggregate,
        targets: (u64, u64),
        hit_target: f64,
        db: &crate::pg::writer::WriterStatus,
    ) -> Summary {
        let t = &a.total;
        let secs = match a.load_seconds() {
            s if s > 0.0 => s,
            _ => a.started.elapsed().as_secs_f64().max(1e-9),
        };
        let mut by_type = BTreeMap::new();
        let mut by_outcome = BTreeMap::new();
        for ty in EventType::ALL {
            by_type.insert(ty.as_str(), t.events[ty as usize].iter().sum());
        }
        for o in Outcome::ALL {
            by_outcome.insert(o.as_str(), t.events.iter().map(|e| e[o as usize]).sum());
        }
        let mut queries_by_type = BTreeMap::new();
        for qt in QueryType::ALL {
            let mut m = BTreeMap::new();
            for c in CacheOutcome::ALL {
                m.insert(c.as_str(), t.queries[qt as usize][c as usize]);
            }
            queries_by_type.insert(qt.as_str(), m);
        }
        Summary {
            run_id,
            elapsed_seconds: secs,
            events: t.events_total(),
            events_per_second: t.events_total() as f64 / secs,
            events_target_per_second: targets.0,
            events_by_type: by_type,
            events_by_outcome: by_outcome,
            queries: t.queries_total(),
            queries_per_second: t.queries_total() as f64 / secs,
            queries_target_per_second: targets.1,
            queries_by_type,
            query_latency_ms: percentiles(&t.query_latency),
            query_latency_uncorrected_ms: percentiles(&t.query_service),
            event_latency_ms: percentiles(&t.event_latency),
            pacer_lateness_ms: percentiles(&t.pacer_lateness),
            cache_hit_ratio: t.hit_ratio(),
            cache_hit_target_ratio: hit_target,
            skipped: Skip::ALL
                .iter()
                .map(|s| (s.as_str(), t.skipped[*s as usize]))
                .collect(),
            errors: t.errors.clone(),
            db_rows_written: db.rows_written,
            db_rows_dropped: db.rows_dropped,
            db_write_errors: db.errors,
        }
    }

    /// A readable block for the terminal.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{:.2}%", v * 100.0));
        let lat = |p: &Percentiles| {
            format!(
                "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
                p.p50, p.p90, p.p99, p.p999, p.max
            )
        };
        s.push_str(&format!(
            "=== analytics-demo summary (run {}) ===\n",
            self.run_id
        ));
        s.push_str(&format!(
            "elapsed            {:.1} s\n",
            self.elapsed_seconds
        ));
        s.push_str(&format!(
            "events             {} ({:.1}/s, target {}/s)\n",
            self.events, self.events_per_second, self.events_target_per_second
        ));
        s.push_str(&format!("  by type          {:?}\n", self.events_by_type));
        s.push_str(&format!(
            "  by outcome       {:?}\n",
            self.events_by_outcome
        ));
        s.push_str(&format!(
            "queries            {} ({:.1}/s, target {}/s)\n",
            self.queries, self.queries_per_second, self.queries_target_per_second
        ));
        for (qt, m) in &self.queries_by_type {
            s.push_str(&format!("  {qt:<16} {m:?}\n"));
        }
        s.push_str(&format!(
            "query latency      {} (from schedule)\n",
            lat(&self.query_latency_ms)
        ));
        s.push_str(&format!(
            "  uncorrected      {}\n",
            lat(&self.query_latency_uncorrected_ms)
        ));
        s.push_str(&format!(
            "event latency      {}\n",
            lat(&self.event_latency_ms)
        ));
        s.push_str(&format!(
            "pacer lateness     {} (stalls of this process)\n",
            lat(&self.pacer_lateness_ms)
        ));
        s.push_str(&format!(
            "cache hit ratio    {} (target {:.2}%)\n",
            pct(self.cache_hit_ratio),
            self.cache_hit_target_ratio * 100.0
        ));
        s.push_str(&format!("skipped            {:?}\n", self.skipped));
        s.push_str(&format!("errors             {:?}\n", self.errors));
        s.push_str(&format!(
            "postgres           {} rows written, {} dropped, {} write errors\n",
            self.db_rows_written, self.db_rows_dropped, self.db_write_errors
        ));
        s
    }
}

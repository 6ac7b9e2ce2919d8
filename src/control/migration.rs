//! The migration record: every Redis target switch, and what the load saw around it.
//!
//! Per switch at time T: query latency before (T-70 s .. T-10 s), during (T±10 s) and after
//! (T+10 s .. T+70 s); the error window (first to last failed Redis operation from T-10 s
//! until the next switch); each shard's longest unavailability (outages as the shards
//! measured them, see `shard::stats::Outage`); failures by kind; per phase, what came of
//! every query and event that was due (ok, error, skipped by reason) with the latency of
//! successes, of errors and including misses kept apart; the natural cache-hit dip and the
//! time until the natural ratio is back within 2 points of its pre-switch value (the steered
//! ratio and the ad-hoc share beside it); when p99 came back to its baseline.
//!
//! A second counts towards a recovery only if queries completed successfully in it: an
//! empty second (nothing answered, or only errors) is never "recovered".

use std::collections::{BTreeMap, VecDeque};

use super::aggregate::{percentiles, Window};
use super::api::{
    self, CacheHit, Cutover, ErrorWindow, MigrationReport, NaturalHit, OpenOutage, Phase,
    PhaseLatency, Phases, Point, Report, SteeredHit, SwitchReport,
};
use crate::shard::stats::{Op, Outage, ShardReport};

const DURING: f64 = 10.0;
const SPAN: f64 = 60.0;
/// Seconds of per-second series kept per switch.
const SERIES_SECONDS: f64 = 600.0;

pub struct Switch {
    pub seq: u64,
    pub at_unix: f64,
    pub from: String,
    pub to: String,
    pub before: Window,
    pub during: Window,
    pub after: Window,
    pub first_failure: Option<f64>,
    pub last_failure: Option<f64>,
    pub series: Vec<Point>,
    pub outages: Vec<Outage>,
    /// Per shard, from its latest report since the switch: (connections up on the new
    /// target, pool size, when all of them were up on it).
    pub on_target: BTreeMap<usize, (usize, usize, Option<f64>)>,
    /// When every connection of every shard was up on the new target (the cutover is done).
    pub completed_at: Option<f64>,
}

#[derive(Default)]
pub struct Migration {
    pub switches: Vec<Switch>,
    /// Failure spans reported in the last minute (for the error window of a new switch).
    recent_failures: VecDeque<(f64, f64)>,
    recent_outages: VecDeque<Outage>,
    /// Per shard: an outage still open at its last report (start, ms so far).
    pub open_outages: BTreeMap<usize, (f64, f64)>,
}

fn min_opt(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn max_opt(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.max(b)))
}

impl Migration {
    /// Records a switch at `at_unix`; `recent` are the last minute's one-second windows.
    pub fn switched(&mut self, at_unix: f64, from: String, to: String, recent: &VecDeque<Window>) {
        let mut sw = Switch {
            seq: self.switches.len() as u64 + 1,
            at_unix,
            from,
            to,
            before: Window::default(),
            during: Window::default(),
            after: Window::default(),
            first_failure: None,
            last_failure: None,
            series: Vec::new(),
            outages: Vec::new(),
            on_target: BTreeMap::new(),
            completed_at: None,
        };
        for w in recent {
            let t = w.at_unix - at_unix;
            if t < -DURING {
                sw.before.merge(w);
            } else {
                sw.during.merge(w);
                sw.series.push(point(w, t));
            }
        }
        for &(first, last) in &self.recent_failures {
            if last >= at_unix - DURING {
                sw.first_failure = min_opt(sw.first_failure, first.max(at_unix - DURING));
                sw.last_failure = max_opt(sw.last_failure, last);
            }
        }
        for o in &self.recent_outages {
            if o.start_unix + o.duration_ms / 1000.0 >= at_unix - DURING {
                sw.outages.push(o.clone());
            }
        }
        self.switches.push(sw);
    }

    /// Takes in a shard report's failure marks, outages and connections; `shards` is the
    /// number of shards (a cutover is complete once all of them report every connection on
    /// the new target).
    pub fn on_report(&mut self, r: &ShardReport, shards: usize) {
        let now = crate::workload::time::unix_now();
        if let Some(sw) = self.switches.last_mut() {
            if sw.completed_at.is_none() {
                let state = if r.redis_target == sw.to {
                    (
                        r.redis_on_target,
                        r.redis_pool_size,
                        r.redis_all_on_target_at,
                    )
                } else {
                    (0, r.redis_pool_size, None)
                };
                sw.on_target.insert(r.shard, state);
                // Done when every shard's pool has been fully on the new target: at the
                // latest of the moments each got there (not at this report's time).
                let done: Option<Vec<f64>> = sw.on_target.values().map(|v| v.2).collect();
                if let Some(done) = done.filter(|d| d.len() >= shards) {
                    sw.completed_at = Some(done.into_iter().fold(sw.at_unix, f64::max));
                }
            }
        }
        if let (Some(first), Some(last)) = (r.first_failure_unix, r.last_failure_unix) {
            self.recent_failures.push_back((first, last));
            if let Some(sw) = self.switches.last_mut() {
                if last >= sw.at_unix - DURING {
                    sw.first_failure = min_opt(sw.first_failure, first.max(sw.at_unix - DURING));
                    sw.last_failure = max_opt(sw.last_failure, last);
                }
            }
        }
        while self
            .recent_failures
            .front()
            .is_some_and(|f| f.1 < now - SPAN)
        {
            self.recent_failures.pop_front();
        }
        for o in &r.outages {
            self.recent_outages.push_back(o.clone());
            if let Some(sw) = self.switches.last_mut() {
                if o.start_unix + o.duration_ms / 1000.0 >= sw.at_unix - DURING
                    && sw.outages.len() < 10_000
                {
                    sw.outages.push(o.clone());
                }
            }
        }
        while self
            .recent_outages
            .front()
            .is_some_and(|o| o.start_unix < now - SPAN)
        {
            self.recent_outages.pop_front();
        }
        match r.open_outage {
            Some(o) => self.open_outages.insert(r.shard, o),
            None => self.open_outages.remove(&r.shard),
        };
    }

    /// Takes in a closed one-second window.
    pub fn on_window(&mut self, w: &Window) {
        let n = self.switches.len();
        for (i, sw) in self.switches.iter_mut().enumerate() {
            let t = w.at_unix - sw.at_unix;
            let is_last = i + 1 == n;
            if t <= DURING {
                sw.during.merge(w);
            } else if t <= DURING + SPAN && is_last {
                sw.after.merge(w);
            }
            if t <= SERIES_SECONDS && (is_last || t <= DURING) {
                sw.series.push(point(w, t));
            }
        }
    }

    /// The report's `migration` part.
    pub fn report(&self, hit_target: f64) -> MigrationReport {
        MigrationReport {
            switches: self.switches.iter().map(|s| s.report(hit_target)).collect(),
            open_outages: self
                .open_outages
                .iter()
                .map(|(shard, (start, ms))| OpenOutage {
                    shard: *shard,
                    start_unix: *start,
                    duration_ms_so_far: *ms,
                })
                .collect(),
        }
    }
}

fn point(w: &Window, t: f64) -> Point {
    Point {
        t,
        hit_ratio: w.hit_ratio(),
        natural_hit_ratio: w.natural_hit_ratio(),
        adhoc_fraction: w.adhoc_fraction(),
        p99_ms: percentiles(&w.query_latency).p99,
        p99_including_misses_ms: w.query_latency_with_misses().percentiles.p99,
        queries: w.queries_total(),
        queries_ok: w.queries_ok(),
        queries_failed: w.queries_failed(),
        queries_skipped: w.skipped_of(Op::Query),
        errors: w.errors_total(),
    }
}

/// A second in which queries completed successfully and, counting failed and skipped ones as
/// misses, the p99 is within the band of BASELINE_P99 (ms): nothing answered is no recovery.
fn latency_recovered(p: &Point, baseline_p99: f64) -> bool {
    p.queries_ok > 0 && p.p99_including_misses_ms <= baseline_p99 * 1.2 + 0.2
}

/// A second whose natural hit ratio (completed lookups required) is within 2 points of BEFORE.
fn cache_recovered(p: &Point, before: f64) -> bool {
    p.natural_hit_ratio.is_some_and(|h| h >= before - 0.02)
}

/// Everything one phase (before, during, after) saw.
fn phase(w: &Window) -> Phase {
    Phase {
        queries: w.outcomes(Op::Query),
        events: w.outcomes(Op::Event),
        errors_by_kind: w.errors_by_kind(),
        latency: w.latencies(),
        cache: w.cache_ratios(),
    }
}

/// A phase's query latency in brief.
fn latency(w: &Window) -> PhaseLatency {
    let p = percentiles(&w.query_latency);
    PhaseLatency {
        p50: p.p50,
        p99: p.p99,
        p99_including_misses: w.query_latency_with_misses().percentiles.p99,
        queries: w.queries_ok(),
        errors: w.queries_failed(),
        skipped: w.skipped_of(Op::Query),
    }
}

/// Lowest value of F over the points from the switch on.
fn min_after(series: &[Point], f: impl Fn(&Point) -> Option<f64>) -> Option<f64> {
    series
        .iter()
        .filter(|p| p.t >= 0.0)
        .filter_map(f)
        .fold(None, |m: Option<f64>, h| Some(m.map_or(h, |m| m.min(h))))
}

/// The first `t >= 0` from which `ok` holds for `hold` consecutive points.
fn settled_after(series: &[Point], hold: usize, ok: impl Fn(&Point) -> bool) -> Option<f64> {
    let after: Vec<&Point> = series.iter().filter(|p| p.t >= 0.0).collect();
    (0..after.len()).find_map(|i| {
        let run = &after[i..(i + hold).min(after.len())];
        (run.len() == hold && run.iter().all(|p| ok(p))).then(|| after[i].t)
    })
}

impl Switch {
    /// F of each phase.
    fn phases<T>(&self, f: impl Fn(&Window) -> T) -> Phases<T> {
        Phases {
            before: f(&self.before),
            during: f(&self.during),
            after: f(&self.after),
        }
    }

    /// This switch in the report.
    pub fn report(&self, hit_target: f64) -> SwitchReport {
        let mut by_shard: BTreeMap<usize, f64> = BTreeMap::new();
        for o in &self.outages {
            let e = by_shard.entry(o.shard).or_default();
            *e = e.max(o.duration_ms);
        }
        let longest = by_shard.values().copied().fold(0.0, f64::max);
        let mut failures = self.during.errors_by_kind();
        for (k, n) in self.after.errors_by_kind() {
            *failures.entry(k).or_default() += n;
        }
        let baseline_p99 = percentiles(&self.before.query_latency).p99;
        let p99_back = (self.before.queries_ok() > 0)
            .then(|| settled_after(&self.series, 3, |p| latency_recovered(p, baseline_p99)))
            .flatten();
        // Natural: how full the cache really is; measured against its own pre-switch value.
        let natural_before = self.before.natural_hit_ratio();
        let natural_min = min_after(&self.series, |p| p.natural_hit_ratio);
        // From the switch: 0 when the ratio never left the band.
        let natural_recovered =
            natural_before.and_then(|b| settled_after(&self.series, 3, |p| cache_recovered(p, b)));
        let steered_before = self.before.hit_ratio();
        let steered_min = min_after(&self.series, |p| p.hit_ratio);
        let steered_recovered = settled_after(&self.series, 3, |p| {
            p.hit_ratio.is_some_and(|h| h >= hit_target - 0.02)
        });
        let dip = |b: Option<f64>, m: Option<f64>| match (b, m) {
            (Some(b), Some(m)) => Some(((b - m) * 100.0).max(0.0)),
            _ => None,
        };
        SwitchReport {
            seq: self.seq,
            at_unix: self.at_unix,
            from: self.from.clone(),
            to: self.to.clone(),
            error_window: match (self.first_failure, self.last_failure) {
                (Some(a), Some(b)) => Some(ErrorWindow {
                    first_failure_unix: a,
                    last_failure_unix: b,
                    seconds: (b - a).max(0.0),
                }),
                _ => None,
            },
            cutover: Cutover {
                complete: self.completed_at.is_some(),
                completed_at_unix: self.completed_at,
                seconds: self.completed_at.map(|c| (c - self.at_unix).max(0.0)),
                connections_on_target: self.on_target.values().map(|v| v.0).sum(),
                connections: self.on_target.values().map(|v| v.1).sum(),
            },
            failed_operations: failures.values().sum(),
            failures_by_kind: failures,
            unavailability_ms_by_shard: by_shard,
            longest_unavailability_ms: longest,
            phases: self.phases(phase),
            query_latency_ms: self.phases(latency),
            p99_back_to_baseline_after_seconds: p99_back,
            cache_hit: CacheHit {
                target: hit_target,
                recovery_measured_on: "natural".into(),
                natural: NaturalHit {
                    before: natural_before,
                    min_after_switch: natural_min,
                    dip_points: dip(natural_before, natural_min),
                    recovered_within_2_points_after_seconds: natural_recovered,
                },
                steered: SteeredHit {
                    before: steered_before,
                    min_after_switch: steered_min,
                    dip_points: dip(steered_before, steered_min),
                    recovered_within_2_points_of_target_after_seconds: steered_recovered,
                },
                adhoc_fraction: self.phases(|w| w.adhoc_fraction()),
            },
            series: self.series.clone(),
        }
    }
}

/// The readable form of a `/report` document (for `analytics-demo report`).
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let f = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.3}"));
    let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{:.1}%", x * 100.0));
    let run = &report.run;
    s.push_str(&format!(
        "run {}: {} events ({} /s), {} queries ({} /s), hit ratio {}\n",
        run.run_id,
        run.events,
        f(Some(run.events_per_second)),
        run.queries,
        f(Some(run.queries_per_second)),
        pct(run.figures.cache.cache_hit_ratio)
    ));
    s.push_str(&format!("current redis target: {}\n", report.redis_target));
    let switches = &report.migration.switches;
    if switches.is_empty() {
        s.push_str("no switches yet\n");
    }
    for sw in switches {
        s.push_str(&format!(
            "\nswitch #{} at {} : {} -> {}\n",
            sw.seq,
            f(Some(sw.at_unix)),
            sw.from,
            sw.to
        ));
        let c = &sw.cutover;
        if c.complete {
            s.push_str(&format!(
                "  cutover             complete after {} s ({} connections on the new target)\n",
                f(c.seconds),
                c.connections
            ));
        } else {
            s.push_str(&format!(
                "  cutover             in progress: {} of {} connections on the new target\n",
                c.connections_on_target, c.connections
            ));
        }
        match &sw.error_window {
            Some(w) => s.push_str(&format!("  error window        {} s\n", f(Some(w.seconds)))),
            None => s.push_str("  error window        none (no failed operation)\n"),
        }
        s.push_str(&format!(
            "  failed operations   {} {}\n",
            sw.failed_operations,
            api::to_body(&sw.failures_by_kind)
        ));
        s.push_str(&format!(
            "  unavailability      longest {} ms; by shard {}\n",
            f(Some(sw.longest_unavailability_ms)),
            api::to_body(&sw.unavailability_ms_by_shard)
        ));
        let p = &sw.phases;
        for (name, p) in [
            ("before", &p.before),
            ("during", &p.during),
            ("after", &p.after),
        ] {
            let (q, e, l, c) = (&p.queries, &p.events, &p.latency, &p.cache);
            s.push_str(&format!(
                "  {:<6} queries {} ok / {} error / {} skipped {}; events {} ok / {} error / {} skipped {}\n",
                name,
                q.ok,
                q.error,
                q.skipped,
                api::to_body(&q.skipped_by_reason),
                e.ok,
                e.error,
                e.skipped,
                api::to_body(&e.skipped_by_reason)
            ));
            s.push_str(&format!(
                "         query p50/p99 {} / {} ms (successes), p99 errors {} ms, p99 including misses {} ms\n",
                f(Some(l.query_latency_ms.p50)),
                f(Some(l.query_latency_ms.p99)),
                f(Some(l.query_error_latency_ms.p99)),
                f(Some(l.query_latency_including_misses_ms.percentiles.p99))
            ));
            s.push_str(&format!(
                "         cache hit natural {}, steered {}, ad-hoc share {}\n",
                pct(c.cache_natural_hit_ratio),
                pct(c.cache_hit_ratio),
                pct(c.cache_adhoc_fraction)
            ));
        }
        s.push_str(&format!(
            "  p99 back to baseline after {} s (seconds with answered queries only, misses counted)\n",
            f(sw.p99_back_to_baseline_after_seconds)
        ));
        let (n, st) = (&sw.cache_hit.natural, &sw.cache_hit.steered);
        s.push_str(&format!(
            "  cache hit natural   before {}, min {}, dip {} points, back within 2 points after {} s\n",
            pct(n.before),
            pct(n.min_after_switch),
            f(n.dip_points),
            f(n.recovered_within_2_points_after_seconds)
        ));
        s.push_str(&format!(
            "  cache hit steered   before {}, min {}, within 2 points of the target after {} s\n",
            pct(st.before),
            pct(st.min_after_switch),
            f(st.recovered_within_2_points_of_target_after_seconds)
        ));
    }
    if let Some(cluster) = &report.redis_cluster {
        s.push_str(&format!(
            "\nredis cluster: redirections followed {}; slots covered {}; map version {}\n",
            api::to_body(&cluster.redirects),
            api::to_body(&cluster.slots_covered),
            api::to_body(&cluster.map_version)
        ));
        if cluster.node_outages.is_empty() {
            s.push_str("  no primary stopped answering the health check\n");
        }
        for o in &cluster.node_outages {
            s.push_str(&format!(
                "  node {} unavailable {} ms from {}{}\n",
                o.node,
                f(Some(o.duration_ms)),
                f(Some(o.start_unix)),
                if o.open { " (still down)" } else { "" }
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: f64, hit: f64, p99: f64) -> Point {
        Point {
            t,
            hit_ratio: Some(hit),
            natural_hit_ratio: Some(hit),
            p99_ms: p99,
            p99_including_misses_ms: p99,
            queries: 10,
            queries_ok: 10,
            ..Point::default()
        }
    }

    #[test]
    fn should_find_when_a_series_settles() {
        let s = [
            p(-1.0, 0.9, 1.0),
            p(0.0, 0.2, 9.0),
            p(1.0, 0.5, 5.0),
            p(2.0, 0.95, 1.0),
            p(3.0, 0.95, 1.0),
            p(4.0, 0.96, 1.0),
        ];
        assert_eq!(settled_after(&s, 3, |x| x.p99_ms <= 1.5), Some(2.0));
        assert_eq!(
            settled_after(&s, 3, |x| x.hit_ratio.unwrap_or(0.0) >= 0.93),
            Some(2.0)
        );
        assert_eq!(settled_after(&s, 3, |x| x.p99_ms <= 0.5), None);
    }

    /// A second with nothing answered, or only errors, is never a recovered second, even when
    /// its (empty or error-only) latency looks fine.
    #[test]
    fn should_not_count_an_empty_second_as_recovered() {
        let empty = |t: f64| Point {
            t,
            queries: 0,
            ..Point::default()
        };
        let errors_only = |t: f64| Point {
            t,
            queries: 50,
            queries_failed: 50,
            errors: 50,
            p99_ms: 0.0,
            p99_including_misses_ms: crate::control::aggregate::MISS_MS,
            ..Point::default()
        };
        let ok = |t: f64| p(t, 0.97, 1.0);
        let s = [
            ok(-1.0),
            empty(0.0),
            empty(1.0),
            errors_only(2.0),
            empty(3.0),
            ok(4.0),
            ok(5.0),
            ok(6.0),
        ];
        assert_eq!(
            settled_after(&s, 3, |x| latency_recovered(x, 1.0)),
            Some(4.0)
        );
        assert_eq!(
            settled_after(&s, 3, |x| cache_recovered(x, 0.98)),
            Some(4.0)
        );
        // Nothing answered after the switch at all: no recovery.
        let s = [
            ok(-1.0),
            empty(0.0),
            errors_only(1.0),
            empty(2.0),
            empty(3.0),
        ];
        assert_eq!(settled_after(&s, 3, |x| latency_recovered(x, 1.0)), None);
        assert_eq!(settled_after(&s, 3, |x| cache_recovered(x, 0.9)), None);
        // Answers, but with 2% of the queries skipped: the p99 counting misses is no recovery.
        let lossy = |t: f64| Point {
            p99_including_misses_ms: crate::control::aggregate::MISS_MS,
            queries_skipped: 2,
            ..p(t, 0.97, 1.0)
        };
        let s = [lossy(0.0), lossy(1.0), lossy(2.0), lossy(3.0)];
        assert_eq!(settled_after(&s, 3, |x| latency_recovered(x, 1.0)), None);
    }
}

//! What a shard did over some span, counted: events by type and outcome, queries by type and
//! cache outcome, skips by stream and reason, errors by kind, cache lookups, warmups, and the
//! latency histograms. One type for the shard's running counts, the report it sends each
//! second, and the control core's windows (a second, a progress interval, the whole run).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::stats::{event_result, new_histogram, CacheOutcome, Op, OpResult, Skip};
use crate::workload::{EventType, Outcome, QueryType};

/// Counts by name (reason, kind), as the JSON documents carry them: the names are the
/// enums' `&'static str` (borrowed, no copy) here, and owned strings when read back.
pub type ByName = BTreeMap<Cow<'static, str>, u64>;

const EVENT_TYPES: usize = EventType::ALL.len();
const OUTCOMES: usize = Outcome::ALL.len();
const QUERY_TYPES: usize = QueryType::ALL.len();
const CACHE_OUTCOMES: usize = CacheOutcome::ALL.len();
const OPS: usize = Op::ALL.len();
const SKIPS: usize = Skip::ALL.len();

/// Counts and latencies over some span; see the module doc.
#[derive(Clone, Debug)]
pub struct Counts {
    /// By `EventType`, then `Outcome`.
    pub events: [[u64; OUTCOMES]; EVENT_TYPES],
    /// By `QueryType`, then `CacheOutcome`.
    pub queries: [[u64; CACHE_OUTCOMES]; QUERY_TYPES],
    /// Skipped operations, by stream (`Op`), then reason (`Skip`).
    pub skipped: [[u64; SKIPS]; OPS],
    /// Hits and lookups of cacheable queries on their own keys (the steered one-off ones
    /// left out).
    pub natural_hits: u64,
    pub natural_lookups: u64,
    pub warmups: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// Successful queries, from the scheduled start (µs).
    pub query_latency: Histogram<u64>,
    /// Failed queries, from the scheduled start (µs): a fast failure is no fast answer.
    pub query_error_latency: Histogram<u64>,
    /// Successful queries, from the actual start (µs): what a closed-loop tool would report.
    pub query_service: Histogram<u64>,
    /// Acknowledged events, and failed or unknown ones (µs).
    pub event_latency: Histogram<u64>,
    pub event_error_latency: Histogram<u64>,
    /// How late the pacers woke for their schedule (µs), one value per wake-up: stalls of
    /// the generator itself.
    pub pacer_lateness: Histogram<u64>,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            events: Default::default(),
            queries: Default::default(),
            skipped: Default::default(),
            natural_hits: 0,
            natural_lookups: 0,
            warmups: 0,
            errors: BTreeMap::new(),
            query_latency: new_histogram(),
            query_error_latency: new_histogram(),
            query_service: new_histogram(),
            event_latency: new_histogram(),
            event_error_latency: new_histogram(),
            pacer_lateness: new_histogram(),
        }
    }
}

/// A latency in whole microseconds, at least 1 (the histograms' floor).
fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

impl Counts {
    /// Everything counted so far; the counts start again from zero.
    pub fn take(&mut self) -> Counts {
        std::mem::take(self)
    }

    /// Adds another span's counts (counts, errors and histograms).
    pub fn merge(&mut self, other: &Counts) {
        fn add<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
        self.events
            .iter_mut()
            .zip(&other.events)
            .for_each(|(a, b)| add(a, b));
        self.queries
            .iter_mut()
            .zip(&other.queries)
            .for_each(|(a, b)| add(a, b));
        self.skipped
            .iter_mut()
            .zip(&other.skipped)
            .for_each(|(a, b)| add(a, b));
        self.natural_hits += other.natural_hits;
        self.natural_lookups += other.natural_lookups;
        self.warmups += other.warmups;
        for (k, n) in &other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (a, b) in self.histograms_mut().into_iter().zip(other.histograms()) {
            let _ = a.add(b);
        }
    }

    fn histograms(&self) -> [&Histogram<u64>; 6] {
        [
            &self.query_latency,
            &self.query_error_latency,
            &self.query_service,
            &self.event_latency,
            &self.event_error_latency,
            &self.pacer_lateness,
        ]
    }

    fn histograms_mut(&mut self) -> [&mut Histogram<u64>; 6] {
        [
            &mut self.query_latency,
            &mut self.query_error_latency,
            &mut self.query_service,
            &mut self.event_latency,
            &mut self.event_error_latency,
            &mut self.pacer_lateness,
        ]
    }

    /// An event completed with `outcome`, `latency` after it was due.
    pub fn event(&mut self, ty: EventType, outcome: Outcome, latency: Duration) {
        self.events[ty as usize][outcome as usize] += 1;
        let _ = match event_result(outcome) {
            OpResult::Ok => self.event_latency.record(micros(latency)),
            OpResult::Error => self.event_error_latency.record(micros(latency)),
        };
    }

    /// A query completed as `cache`: `corrected` after it was due, `service` after it started.
    pub fn query(
        &mut self,
        qt: QueryType,
        cache: CacheOutcome,
        corrected: Duration,
        service: Duration,
    ) {
        self.queries[qt as usize][cache as usize] += 1;
        if cache == CacheOutcome::Error {
            let _ = self.query_error_latency.record(micros(corrected));
        } else {
            let _ = self.query_latency.record(micros(corrected));
            let _ = self.query_service.record(micros(service));
        }
    }

    /// `n` operations of stream `op` were not started, for reason `why`.
    pub fn skip(&mut self, op: Op, why: Skip, n: u64) {
        self.skipped[op as usize][why as usize] += n;
    }

    /// A pacer woke `late` after it meant to.
    pub fn pacer_late(&mut self, late: Duration) {
        let _ = self.pacer_lateness.record(micros(late));
    }

    /// An error of `kind` (a Redis error kind, `postgres`, `postgres_timeout`).
    pub fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
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
        self.skipped.iter().flatten().sum()
    }

    /// Skipped operations of one stream.
    pub fn skipped_of(&self, op: Op) -> u64 {
        self.skipped[op as usize].iter().sum()
    }

    /// Skipped operations by reason (both streams).
    pub fn skipped_by_reason(&self) -> ByName {
        Skip::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str().into(),
                    self.skipped.iter().map(|s| s[*r as usize]).sum(),
                )
            })
            .collect()
    }

    /// Skipped operations of one stream by the reasons that apply to it.
    pub fn skipped_reasons_of(&self, op: Op) -> ByName {
        Skip::ALL
            .iter()
            .filter(|r| r.applies_to(op))
            .map(|r| (r.as_str().into(), self.skipped[op as usize][*r as usize]))
            .collect()
    }

    /// Failed operations by kind.
    pub fn errors_by_kind(&self) -> ByName {
        self.errors.iter().map(|(k, n)| ((*k).into(), *n)).collect()
    }

    /// Queries answered as `cache`, all query types together.
    fn queries_as(&self, cache: CacheOutcome) -> u64 {
        self.queries.iter().map(|q| q[cache as usize]).sum()
    }

    /// Queries that failed (Redis or Postgres error).
    pub fn queries_failed(&self) -> u64 {
        self.queries_as(CacheOutcome::Error)
    }

    /// Queries answered.
    pub fn queries_ok(&self) -> u64 {
        self.queries_total() - self.queries_failed()
    }

    /// Events whose counter write was acknowledged.
    pub fn events_ok(&self) -> u64 {
        self.events.iter().map(|e| e[Outcome::Acked as usize]).sum()
    }

    /// Events whose counter write failed or has an unknown outcome.
    pub fn events_failed(&self) -> u64 {
        self.events_total() - self.events_ok()
    }

    /// Hits and hits + misses of every cacheable query (ad-hoc ones included).
    fn cacheable(&self) -> (u64, u64) {
        let hits = self.queries_as(CacheOutcome::Hit);
        (hits, hits + self.queries_as(CacheOutcome::Miss))
    }

    /// The steered hit ratio: hits / (hits + misses) of every cacheable query, the one-off
    /// keys the steering loop adds included; None before any lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let (hits, lookups) = self.cacheable();
        (lookups > 0).then(|| hits as f64 / lookups as f64)
    }

    /// The natural hit ratio: cacheable queries on their own keys only (how full the cache
    /// really is); None before any such lookup completed.
    pub fn natural_hit_ratio(&self) -> Option<f64> {
        (self.natural_lookups > 0).then(|| self.natural_hits as f64 / self.natural_lookups as f64)
    }

    /// Share of the cacheable lookups that the steering loop sent to one-off keys.
    pub fn adhoc_fraction(&self) -> Option<f64> {
        let (_, lookups) = self.cacheable();
        let adhoc = lookups.saturating_sub(self.natural_lookups);
        (lookups > 0).then(|| adhoc as f64 / lookups as f64)
    }

    pub fn conversion_rate(&self) -> Option<f64> {
        let views: u64 = self.events[EventType::PageView as usize].iter().sum();
        let conv: u64 = self.events[EventType::Conversion as usize].iter().sum();
        (views > 0).then(|| conv as f64 / views as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_merge_and_take_every_count_and_histogram() {
        let ms = Duration::from_millis;
        let mut a = Counts::default();
        a.event(EventType::Click, Outcome::Acked, ms(2));
        a.event(EventType::Click, Outcome::Unknown, ms(3));
        a.query(QueryType::Dashboard, CacheOutcome::Hit, ms(4), ms(1));
        a.query(QueryType::Filtered, CacheOutcome::Error, ms(5), ms(5));
        a.skip(Op::Query, Skip::Late, 3);
        a.pacer_late(ms(1));
        a.error("timeout");
        a.natural_hits = 1;
        a.natural_lookups = 2;
        a.warmups = 4;
        let mut total = Counts::default();
        total.merge(&a);
        total.merge(&a.take());
        assert_eq!(a.events_total() + a.queries_total() + a.skipped_total(), 0);
        assert_eq!(a.event_latency.len() + a.errors.len() as u64, 0);
        assert_eq!(
            (
                total.events_ok(),
                total.events_failed(),
                total.queries_ok(),
                total.queries_failed()
            ),
            (2, 2, 2, 2)
        );
        assert_eq!(
            (total.skipped_of(Op::Query), total.skipped_of(Op::Event)),
            (6, 0)
        );
        assert_eq!(total.skipped_by_reason()["late"], 6);
        assert_eq!(total.errors["timeout"], 2);
        assert_eq!(
            (total.natural_hits, total.natural_lookups, total.warmups),
            (2, 4, 8)
        );
        let lens = total.histograms().map(|h| h.len());
        assert_eq!(lens, [2, 2, 2, 2, 2, 2]);
        assert_eq!(total.hit_ratio(), Some(1.0));
    }
}

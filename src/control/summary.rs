//! The end-of-run summary: printed when the run ends, logged as JSON, served as `/report`'s
//! `run`, and stored for `report --run-name`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::aggregate::{Aggregate, Figures, Outcomes, Percentiles, WithMisses};
use crate::shard::counts::ByName;
use crate::shard::stats::{CacheOutcome, Op};
use crate::workload::{EventType, Outcome, QueryType};

/// The end-of-run summary, also served as JSON (`/report`'s `run`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Summary {
    pub run_id: i64,
    pub elapsed_seconds: f64,
    pub events: u64,
    pub events_per_second: f64,
    pub events_target_per_second: u64,
    pub events_by_type: ByName,
    pub events_by_outcome: ByName,
    pub queries: u64,
    pub queries_per_second: f64,
    pub queries_target_per_second: u64,
    pub queries_by_type: BTreeMap<Cow<'static, str>, ByName>,
    /// Every query and event that was due: ok, error, skipped (by reason).
    pub query_outcomes: Outcomes,
    pub event_outcomes: Outcomes,
    #[serde(flatten)]
    pub figures: Figures,
    pub cache_hit_target_ratio: f64,
    /// Skipped operations by reason (events and queries).
    pub skipped: ByName,
    pub errors: ByName,
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
            by_type.insert(ty.as_str().into(), t.events[ty as usize].iter().sum());
        }
        for o in Outcome::ALL {
            by_outcome.insert(
                o.as_str().into(),
                t.events.iter().map(|e| e[o as usize]).sum(),
            );
        }
        let mut queries_by_type = BTreeMap::new();
        for qt in QueryType::ALL {
            let mut m = BTreeMap::new();
            for c in CacheOutcome::ALL {
                m.insert(c.as_str().into(), t.queries[qt as usize][c as usize]);
            }
            queries_by_type.insert(qt.as_str().into(), m);
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
            query_outcomes: t.outcomes(Op::Query),
            event_outcomes: t.outcomes(Op::Event),
            figures: t.figures(),
            cache_hit_target_ratio: hit_target,
            skipped: t.skipped_by_reason(),
            errors: t.errors_by_kind(),
            db_rows_written: db.rows_written,
            db_rows_dropped: db.rows_dropped,
            db_write_errors: db.errors,
        }
    }

    /// A readable block for the terminal.
    pub fn render(&self) -> String {
        let fig = &self.figures;
        let (l, c) = (&fig.latency, &fig.cache);
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
        let outcomes = |o: &Outcomes| {
            format!(
                "{} due: {} ok, {} error, {} skipped {:?}",
                o.due, o.ok, o.error, o.skipped, o.skipped_by_reason
            )
        };
        let errors = |o: &Outcomes, p: &Percentiles| match o.error {
            0 => "none".to_string(),
            _ => lat(p),
        };
        let misses = |m: &WithMisses| {
            format!(
                "{} (a miss reads {:.0} ms; {} of {} missed)",
                lat(&m.percentiles),
                m.miss_ms,
                m.missed,
                m.operations
            )
        };
        s.push_str(&format!(
            "  outcomes         {}\n",
            outcomes(&self.query_outcomes)
        ));
        s.push_str(&format!(
            "query latency      {} (successes, from schedule)\n",
            lat(&l.query_latency_ms)
        ));
        s.push_str(&format!(
            "  errors           {}\n",
            errors(&self.query_outcomes, &l.query_error_latency_ms)
        ));
        s.push_str(&format!(
            "  incl. misses     {}\n",
            misses(&l.query_latency_including_misses_ms)
        ));
        s.push_str(&format!(
            "  uncorrected      {}\n",
            lat(&fig.query_latency_uncorrected_ms)
        ));
        s.push_str(&format!(
            "event outcomes     {}\n",
            outcomes(&self.event_outcomes)
        ));
        s.push_str(&format!(
            "event latency      {} (acked)\n",
            lat(&l.event_latency_ms)
        ));
        s.push_str(&format!(
            "  errors           {}\n",
            errors(&self.event_outcomes, &l.event_error_latency_ms)
        ));
        s.push_str(&format!(
            "  incl. misses     {}\n",
            misses(&l.event_latency_including_misses_ms)
        ));
        s.push_str(&format!(
            "pacer lateness     {} (stalls of this process)\n",
            lat(&fig.pacer_lateness_ms)
        ));
        s.push_str(&format!(
            "cache hit ratio    {} steered (target {:.2}%), {} natural, ad-hoc share {}\n",
            pct(c.cache_hit_ratio),
            self.cache_hit_target_ratio * 100.0,
            pct(c.cache_natural_hit_ratio),
            pct(c.cache_adhoc_fraction)
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

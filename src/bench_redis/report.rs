//! The `bench-redis` result: shards merged, printed as text or as one JSON object (the form
//! `bench/run.sh` reads).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::shard::{histogram, ShardResult};
use crate::config::BenchRedisArgs;

/// Every shard's measurements together.
pub struct Summary {
    pub shards: usize,
    /// Primaries in cluster mode (their connections share `connections`); 0 standalone.
    pub cluster_nodes: usize,
    pub connections: usize,
    pub connected: usize,
    pub pipeline: usize,
    pub rate: u64,
    pub ratio: String,
    pub keys: u64,
    pub key_pattern: &'static str,
    pub data_size: usize,
    pub sets: u64,
    pub gets: u64,
    pub hits: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub missed: u64,
    /// Paced: the coarsest pacing grid of the shards (their rates may fall either side of
    /// the automatic step's threshold).
    pub pace_step: Duration,
    /// The longest shard run (shards start within milliseconds of each other).
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub corrected: Option<Histogram<u64>>,
}

impl Summary {
    pub fn merge(args: &BenchRedisArgs, shards: usize, results: Vec<ShardResult>) -> Summary {
        let mut s = Summary {
            shards,
            cluster_nodes: 0,
            connections: args.connections,
            connected: 0,
            pipeline: args.pipeline,
            rate: args.rate,
            ratio: args.ratio.to_string(),
            keys: args.keys,
            key_pattern: args.key_pattern.as_str(),
            data_size: args.data_size,
            sets: 0,
            gets: 0,
            hits: 0,
            errors: BTreeMap::new(),
            missed: 0,
            pace_step: Duration::ZERO,
            elapsed: Duration::ZERO,
            latency: histogram(),
            corrected: (args.rate > 0).then(histogram),
        };
        for r in results {
            s.connected += r.connected;
            s.sets += r.sets;
            s.gets += r.gets;
            s.hits += r.hits;
            s.missed += r.missed;
            s.pace_step = s.pace_step.max(r.pace_step);
            s.elapsed = s.elapsed.max(r.elapsed);
            for (k, v) in r.errors {
                *s.errors.entry(k).or_default() += v;
            }
            // Same bounds on both sides: `add` cannot fail.
            let _ = s.latency.add(&r.latency);
            if let (Some(all), Some(h)) = (&mut s.corrected, &r.corrected) {
                let _ = all.add(h);
            }
        }
        s
    }

    /// Commands that got a reply.
    pub fn ops(&self) -> u64 {
        self.sets + self.gets
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn ops_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops() as f64 / secs
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "mode": if self.rate > 0 { "paced" } else { "closed_loop" },
            "target_rate": self.rate,
            "pace_step_us": (self.rate > 0).then_some(self.pace_step.as_micros() as u64),
            "shards": self.shards,
            "redis_mode": if self.cluster_nodes > 0 { "cluster" } else { "standalone" },
            "cluster_nodes": self.cluster_nodes,
            "connections": self.connections,
            "connected": self.connected,
            "pipeline": self.pipeline,
            "ratio": self.ratio,
            "keys": self.keys,
            "key_pattern": self.key_pattern,
            "data_size": self.data_size,
            "duration_seconds": round3(self.elapsed.as_secs_f64()),
            "ops": self.ops(),
            "ops_per_second": round3(self.ops_per_second()),
            "sets": self.sets,
            "gets": self.gets,
            "get_hits": self.hits,
            "errors": self.errors_total(),
            "errors_by_kind": self.errors,
            "missed": self.missed,
            "latency_us": percentiles(&self.latency),
            "latency_corrected_us": self.corrected.as_ref().map(percentiles),
        })
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let mode = if self.rate > 0 {
            format!(
                "{} ops/s paced ({} us grid)",
                self.rate,
                self.pace_step.as_micros()
            )
        } else {
            "unlimited (closed loop)".to_string()
        };
        if self.cluster_nodes > 0 {
            let _ = writeln!(
                o,
                "Redis Cluster of {} primaries: each command to its slot's owner, keys tagged \
                 per connection",
                self.cluster_nodes
            );
        }
        let _ = writeln!(
            o,
            "bench-redis: {} shard(s), {} connection(s) ({} up), pipeline {}, SET:GET {}, \
             {} keys {}, {} B values, rate {mode}",
            self.shards,
            self.connections,
            self.connected,
            self.pipeline,
            self.ratio,
            self.keys,
            self.key_pattern,
            self.data_size
        );
        let hit = if self.gets > 0 {
            format!("{:.1}%", 100.0 * self.hits as f64 / self.gets as f64)
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            o,
            "  ops        {} in {:.2} s = {:.0} ops/s (SET {}, GET {}, GET hits {hit})",
            self.ops(),
            self.elapsed.as_secs_f64(),
            self.ops_per_second(),
            self.sets,
            self.gets
        );
        let line = |h: &Histogram<u64>| {
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            format!(
                "p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us",
                us(0.5),
                us(0.99),
                us(0.999),
                h.max() as f64 / 1000.0
            )
        };
        let _ = writeln!(o, "  latency    {} (from send)", line(&self.latency));
        if let Some(c) = &self.corrected {
            let _ = writeln!(o, "  corrected  {} (from due time)", line(c));
            let _ = writeln!(o, "  missed     {} (due, but no free slot)", self.missed);
        }
        let kinds: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            o,
            "  errors     {}{}",
            self.errors_total(),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            }
        );
        o
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// p50/p99/p99.9/max/mean in microseconds (the histogram holds nanoseconds).
fn percentiles(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| round3(ns as f64 / 1000.0);
    json!({
        "count": h.len(),
        "p50": us(h.value_at_quantile(0.5)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
        "mean": round3(h.mean() / 1000.0),
    })
}

//! The JSON documents of the HTTP API, typed: `/health`, `/api/status`, `/report` and the
//! answers of `POST /admin/redis-target`. The server builds them (control/http_api.rs,
//! control/migration.rs), the CLI (`report`, `switch --wait`) and the tests read them back
//! into the same structs, and the dashboard's page reads what they serialize to.
//!
//! [`to_body`] writes a document with its keys sorted at every level, as the documents were
//! always written, so a reader comparing bytes or an eye scanning keys sees no change.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::aggregate::{CacheRatios, Figures, Latencies, Outcomes};
use super::health::{ClusterHealth, DepStatus, NodeOutage};
use super::summary::Summary;
use crate::shard::counts::ByName;

/// A document as the API writes it: compact JSON, keys sorted at every level.
pub fn to_body<T: Serialize>(doc: &T) -> String {
    match serde_json::to_value(doc) {
        Ok(v) => v.to_string(),
        Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
    }
}

/// The run's phase, as /health reports it (`"load"`).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// Applying the schema (first attempt).
    #[default]
    Starting,
    /// PostgreSQL did not answer yet: retrying; no operation has started.
    WaitingForPostgres,
    /// A named run's start barrier: waiting for the other instances.
    WaitingForInstances,
    Running,
}

/// What the Redis target is: one server or a Redis Cluster.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
pub enum TargetMode {
    #[default]
    Standalone,
    Cluster,
}

impl TargetMode {
    pub fn of(cluster: bool) -> TargetMode {
        if cluster {
            TargetMode::Cluster
        } else {
            TargetMode::Standalone
        }
    }
}

// ---- GET /health -------------------------------------------------------------------------

/// `GET /health` (200 when Redis and PostgreSQL answer and the load runs, else 503).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Health {
    /// `"ok"` or `"degraded"`.
    pub status: Cow<'static, str>,
    pub load: Load,
    pub run_id: i64,
    pub uptime_seconds: f64,
    pub redis: DepStatus,
    /// A Redis Cluster target's per-node state; null for a standalone server.
    pub redis_cluster: Option<ClusterHealth>,
    pub postgres: DepStatus,
    pub shards: Vec<ShardHealth>,
    pub writer: Writer,
}

/// One shard's connections, in /health.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ShardHealth {
    pub shard: usize,
    pub redis_connections_up: usize,
    pub redis_pool_size: usize,
    pub postgres_read_connected: bool,
    pub inflight_operations: usize,
}

/// The PostgreSQL writer, in /health.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Writer {
    pub connected: bool,
    pub rows_written: u64,
    pub pending_rows: u64,
    pub lag_seconds: f64,
    pub write_errors: u64,
}

// ---- GET /api/status ---------------------------------------------------------------------

/// `GET /api/status`: the live state the dashboard polls: recent rates and latency against
/// the targets, the last minute second by second, errors, writer and Redis state.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Status {
    pub run_id: i64,
    pub uptime_seconds: f64,
    pub targets: Targets,
    /// Over the last 5 seconds.
    pub rates: Rates,
    pub query_outcomes_last_10s: Outcomes,
    pub event_outcomes_last_10s: Outcomes,
    pub query_outcomes_total: Outcomes,
    pub event_outcomes_total: Outcomes,
    /// Latencies and cache ratios over the last 10 seconds.
    #[serde(flatten)]
    pub figures: Figures,
    pub errors_last_10s: ByName,
    pub errors_total: ByName,
    pub skipped_last_10s: ByName,
    pub skipped_total: ByName,
    pub totals: Totals,
    pub writer: StatusWriter,
    pub redis: StatusRedis,
    pub postgres: StatusPostgres,
    pub migration: StatusMigration,
    /// The last minute, one point a second (oldest first).
    pub history: Vec<HistoryPoint>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Targets {
    pub events_per_second: u64,
    pub queries_per_second: u64,
    pub cache_hit_ratio: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Rates {
    pub events_per_second: f64,
    pub queries_per_second: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Totals {
    pub events: u64,
    pub queries: u64,
}

/// The writer as /health has it, and the rows dropped.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StatusWriter {
    #[serde(flatten)]
    pub writer: Writer,
    pub rows_dropped: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StatusRedis {
    /// The current target (redacted).
    pub target: String,
    pub mode: TargetMode,
    pub connections_up: usize,
    pub pool_size: usize,
    /// The health check's `"up"`, `"down"` or `"unknown"`.
    pub status: Cow<'static, str>,
    pub cluster: Option<ClusterHealth>,
    /// Redirections followed so far, by kind (every kind, 0 included).
    pub redirects_total: ByName,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StatusPostgres {
    pub status: Cow<'static, str>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StatusMigration {
    pub switches: Vec<SwitchBrief>,
}

/// A switch as the dashboard's timeline shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct SwitchBrief {
    pub seq: u64,
    pub at_unix: f64,
    pub from: String,
    pub to: String,
    pub error_window_seconds: Option<f64>,
    pub failed_operations: u64,
    pub longest_unavailability_ms: f64,
}

/// One second of the dashboard's history.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct HistoryPoint {
    pub t: f64,
    pub events: u64,
    pub queries: u64,
    pub hit_ratio: Option<f64>,
    pub natural_hit_ratio: Option<f64>,
    pub adhoc_fraction: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p99_including_misses_ms: f64,
    pub queries_failed: u64,
    pub errors: u64,
    pub skipped: u64,
}

// ---- GET /report -------------------------------------------------------------------------

/// `GET /report` (and `analytics-demo report --json`): the run so far and every switch.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Report {
    pub run: Summary,
    pub redis_target: String,
    pub migration: MigrationReport,
    /// Null for a run that never used a Redis Cluster.
    pub redis_cluster: Option<ClusterReport>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct MigrationReport {
    pub switches: Vec<SwitchReport>,
    /// Shards whose Redis was unavailable at their last report.
    pub open_outages: Vec<OpenOutage>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct OpenOutage {
    pub shard: usize,
    pub start_unix: f64,
    pub duration_ms_so_far: f64,
}

/// One switch and what the load saw around it (see control/migration.rs).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct SwitchReport {
    pub seq: u64,
    pub at_unix: f64,
    pub from: String,
    pub to: String,
    /// First to last failed Redis operation; null when none failed.
    pub error_window: Option<ErrorWindow>,
    pub cutover: Cutover,
    pub failed_operations: u64,
    pub failures_by_kind: ByName,
    pub unavailability_ms_by_shard: BTreeMap<usize, f64>,
    pub longest_unavailability_ms: f64,
    pub phases: Phases<Phase>,
    pub query_latency_ms: Phases<PhaseLatency>,
    pub p99_back_to_baseline_after_seconds: Option<f64>,
    pub cache_hit: CacheHit,
    pub series: Vec<Point>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct ErrorWindow {
    pub first_failure_unix: f64,
    pub last_failure_unix: f64,
    pub seconds: f64,
}

/// Whether every connection of every shard is up on the new target, and since when.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct Cutover {
    pub complete: bool,
    pub completed_at_unix: Option<f64>,
    pub seconds: Option<f64>,
    pub connections_on_target: usize,
    pub connections: usize,
}

/// Before (T-70 s .. T-10 s), during (T±10 s) and after (T+10 s .. T+70 s) a switch at T.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Phases<T> {
    pub before: T,
    pub during: T,
    pub after: T,
}

/// Everything one phase saw.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Phase {
    pub queries: Outcomes,
    pub events: Outcomes,
    pub errors_by_kind: ByName,
    #[serde(flatten)]
    pub latency: Latencies,
    #[serde(flatten)]
    pub cache: CacheRatios,
}

/// A phase's query latency in brief.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct PhaseLatency {
    pub p50: f64,
    pub p99: f64,
    pub p99_including_misses: f64,
    pub queries: u64,
    pub errors: u64,
    pub skipped: u64,
}

/// The cache around a switch: the natural ratio (the queries' own keys) measures recovery,
/// the steered one and the ad-hoc share are beside it.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct CacheHit {
    pub target: f64,
    /// Always `"natural"`.
    pub recovery_measured_on: Cow<'static, str>,
    pub natural: NaturalHit,
    pub steered: SteeredHit,
    pub adhoc_fraction: Phases<Option<f64>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct NaturalHit {
    pub before: Option<f64>,
    pub min_after_switch: Option<f64>,
    pub dip_points: Option<f64>,
    pub recovered_within_2_points_after_seconds: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct SteeredHit {
    pub before: Option<f64>,
    pub min_after_switch: Option<f64>,
    pub dip_points: Option<f64>,
    pub recovered_within_2_points_of_target_after_seconds: Option<f64>,
}

/// One second around a switch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct Point {
    pub t: f64,
    /// Steered hit ratio (every cacheable lookup, the one-off keys included).
    pub hit_ratio: Option<f64>,
    /// Natural hit ratio (lookups on the queries' own keys); None when none completed.
    pub natural_hit_ratio: Option<f64>,
    pub adhoc_fraction: Option<f64>,
    /// p99 of the successful queries.
    pub p99_ms: f64,
    /// p99 of every query due, failed and skipped ones as misses.
    pub p99_including_misses_ms: f64,
    /// Queries completed (ok + error), answered, failed, and skipped.
    pub queries: u64,
    pub queries_ok: u64,
    pub queries_failed: u64,
    pub queries_skipped: u64,
    /// Failed operations (events and queries, every kind).
    pub errors: u64,
}

/// The report's Redis Cluster part: redirections followed, by kind, and the primaries'
/// outages the health check saw (1 s resolution).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ClusterReport {
    pub redirects: ByName,
    pub node_outages: Vec<NodeOutage>,
    pub slots_covered: Option<u32>,
    pub map_version: Option<u64>,
}

// ---- POST /admin/redis-target ------------------------------------------------------------

/// The answer to a switch: 200 when every shard took it, 503 (`"switched": "partial"`, with
/// `error`) when only some did.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct SwitchAnswer {
    pub switched: Switched,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seq: u64,
    pub from: String,
    pub endpoint: String,
    pub mode: TargetMode,
    /// Set when `auto` could not ask the target and took it as a standalone server.
    pub mode_note: Option<String>,
    pub at_unix: f64,
    pub shards_switched: usize,
    pub shards: usize,
}

/// `true`, or `"partial"`.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(untagged)]
pub enum Switched {
    All(bool),
    Partial(PartialTag),
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum PartialTag {
    Partial,
}

impl Default for Switched {
    fn default() -> Switched {
        Switched::All(true)
    }
}

/// Any refusal: `{"error": "..."}`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ErrorAnswer {
    pub error: String,
}

impl ErrorAnswer {
    pub fn body(error: impl Into<String>) -> String {
        to_body(&ErrorAnswer {
            error: error.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use serde::de::DeserializeOwned;
    use serde_json::Value;

    use super::*;
    use crate::control::aggregate::{Aggregate, Window};
    use crate::control::health::NodeStatus;
    use crate::control::migration::{render, Migration};
    use crate::shard::outage::Outage;
    use crate::shard::stats::{CacheOutcome, Op, Skip};
    use crate::workload::{EventType, Outcome, QueryType};

    /// DOC written, read back and written again: the same JSON (fields, types, values). And
    /// its body reads back as the same JSON as well (serde_json's text parser may round a
    /// float's last bit: the text is compared with itself parsed).
    fn round_trip<T: Serialize + DeserializeOwned>(doc: &T) -> T {
        let written = serde_json::to_value(doc).expect("serializes");
        let back: T = serde_json::from_value(written.clone()).expect("reads back");
        assert_eq!(serde_json::to_value(&back).expect("serializes"), written);
        let body = to_body(doc);
        let text: Value = serde_json::from_str(&body).expect("JSON");
        let read: T = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(serde_json::to_value(&read).expect("serializes"), text);
        back
    }

    /// A second of load at UNIX time AT: answered, failed and skipped queries and events.
    fn second(at: f64, failing: bool) -> Window {
        let mut w = Window {
            at_unix: at,
            ..Window::default()
        };
        let ms = Duration::from_millis;
        for i in 0..20 {
            w.query(QueryType::Dashboard, CacheOutcome::Hit, ms(1 + i), ms(1));
            w.event(EventType::Click, Outcome::Acked, ms(2));
        }
        w.query(QueryType::Filtered, CacheOutcome::Miss, ms(30), ms(25));
        w.natural_hits = 19;
        w.natural_lookups = 21;
        w.pacer_late(ms(3));
        if failing {
            w.query(QueryType::Dashboard, CacheOutcome::Error, ms(900), ms(900));
            w.event(EventType::Purchase, Outcome::Unknown, ms(1000));
            w.skip(Op::Query, Skip::MaxWorkers, 4);
            w.skip(Op::Event, Skip::DbBacklog, 2);
            w.error("timeout");
            w.error("connection");
        }
        w
    }

    /// A run with a switch at t = 100: a minute of load before, failures around it.
    fn migration() -> Migration {
        let recent: VecDeque<Window> = (40..100).map(|t| second(f64::from(t), t > 95)).collect();
        let mut m = Migration::default();
        m.switched(100.0, "redis://a:1".into(), "redis://b:2".into(), &recent);
        for t in 101..120 {
            m.on_window(&second(f64::from(t), t < 104));
        }
        let sw = &mut m.switches[0];
        sw.first_failure = Some(96.5);
        sw.last_failure = Some(103.25);
        sw.outages.push(Outage {
            shard: 1,
            start_unix: 99.0,
            duration_ms: 1250.5,
            failed_operations: 7,
        });
        sw.on_target.insert(0, (4, 4, Some(100.75)));
        sw.on_target.insert(1, (3, 4, None));
        m.open_outages.insert(1, (118.0, 500.0));
        m
    }

    fn summary() -> Summary {
        let mut agg = Aggregate::new(2);
        for t in 0..5 {
            agg.total.merge(&second(f64::from(t), t == 3));
        }
        let db = crate::pg::writer::WriterStatus {
            rows_written: 100,
            rows_dropped: 2,
            ..Default::default()
        };
        Summary::build(7, &agg, (100, 200), 0.95, &db)
    }

    fn cluster() -> ClusterHealth {
        let node = |name: &str, up: bool| NodeStatus {
            node: name.into(),
            slots: 8192,
            status: if up { "up" } else { "down" }.into(),
            latency_ms: up.then_some(0.25),
            error: (!up).then(|| "connection refused".to_string()),
        };
        let outage = NodeOutage {
            node: "10.0.0.2:7001".into(),
            start_unix: 98.0,
            duration_ms: 2000.0,
            open: true,
        };
        ClusterHealth {
            slots_assigned: 16384,
            slots_covered: 8192,
            map_version: 3,
            map_from: "10.0.0.1:7000".into(),
            nodes: vec![node("10.0.0.1:7000", true), node("10.0.0.2:7001", false)],
            node_outages: vec![outage],
        }
    }

    fn report() -> Report {
        let c = cluster();
        Report {
            run: summary(),
            redis_target: "redis://b:2".into(),
            migration: migration().report(0.95),
            redis_cluster: Some(ClusterReport {
                redirects: [("moved".into(), 3), ("ask".into(), 0)].into(),
                node_outages: c.node_outages.clone(),
                slots_covered: Some(c.slots_covered),
                map_version: Some(c.map_version),
            }),
        }
    }

    #[test]
    fn should_read_back_the_report_as_written() {
        let doc = report();
        let back = round_trip(&doc);
        let sw = &back.migration.switches[0];
        assert_eq!(
            (sw.seq, sw.from.as_str(), sw.to.as_str()),
            (1, "redis://a:1", "redis://b:2")
        );
        assert_eq!(sw.error_window.map(|w| w.seconds), Some(6.75));
        assert_eq!(
            (sw.cutover.connections_on_target, sw.cutover.connections),
            (7, 8)
        );
        assert!(!sw.cutover.complete);
        assert_eq!(sw.unavailability_ms_by_shard.get(&1), Some(&1250.5));
        assert_eq!(
            sw.failures_by_kind.get("timeout"),
            sw.failures_by_kind.get("connection")
        );
        assert!(sw.failed_operations > 0 && !sw.series.is_empty());
        assert!(sw.phases.during.queries.skipped_by_reason["max_workers"] > 0);
        assert_eq!(sw.cache_hit.recovery_measured_on, "natural");
        assert_eq!(back.run.run_id, 7);
        assert_eq!(back.run.events_by_outcome["unknown"], 1);
        assert_eq!(back.run.queries_by_type["dashboard"]["error"], 1);
        assert_eq!(back.migration.open_outages[0].duration_ms_so_far, 500.0);
        // The terminal form reads the typed report.
        let text = render(&back);
        assert!(text.contains("run 7: "), "{text}");
        assert!(
            text.contains("switch #1 at 100.000 : redis://a:1 -> redis://b:2"),
            "{text}"
        );
        assert!(text.contains("in progress: 7 of 8 connections"), "{text}");
        assert!(text.contains("by shard {\"1\":1250.5}"), "{text}");
        assert!(
            text.contains("node 10.0.0.2:7001 unavailable 2000.000 ms from 98.000 (still down)")
        );
    }

    #[test]
    fn should_read_back_status_and_health_as_written() {
        let w = second(5.0, true);
        let m = migration();
        let c = cluster();
        let status = Status {
            run_id: -3,
            uptime_seconds: 12.5,
            targets: Targets {
                events_per_second: 100,
                queries_per_second: 200,
                cache_hit_ratio: 0.95,
            },
            query_outcomes_last_10s: w.outcomes(Op::Query),
            event_outcomes_total: w.outcomes(Op::Event),
            figures: w.figures(),
            errors_last_10s: w.errors_by_kind(),
            skipped_total: w.skipped_by_reason(),
            redis: StatusRedis {
                mode: TargetMode::Cluster,
                status: "up".into(),
                cluster: Some(c.clone()),
                ..StatusRedis::default()
            },
            migration: StatusMigration {
                switches: vec![SwitchBrief {
                    seq: 1,
                    error_window_seconds: Some(1.5),
                    ..SwitchBrief::default()
                }],
            },
            history: vec![HistoryPoint {
                t: 5.0,
                hit_ratio: w.hit_ratio(),
                ..HistoryPoint::default()
            }],
            ..Status::default()
        };
        let back = round_trip(&status);
        assert_eq!(back.redis.mode, TargetMode::Cluster);
        assert_eq!(back.errors_last_10s["timeout"], 1);
        assert_eq!(back.redis.cluster.map(|c| c.nodes.len()), Some(2));
        let health = Health {
            status: "degraded".into(),
            load: Load::WaitingForPostgres,
            run_id: 1,
            redis: DepStatus {
                status: "up".into(),
                protocol: Some(3),
                ..DepStatus::default()
            },
            redis_cluster: Some(c),
            shards: vec![ShardHealth::default(); 2],
            ..Health::default()
        };
        let back = round_trip(&health);
        assert_eq!(back.load, Load::WaitingForPostgres);
        assert_eq!(back.redis.protocol, Some(3));
        assert!(to_body(&health).contains("\"load\":\"waiting_for_postgres\""));
        assert_eq!(m.report(0.95).switches.len(), 1);
    }

    /// The switch answers keep their form: `true` or `"partial"` (with the error), keys sorted.
    #[test]
    fn should_read_back_switch_answers_as_written() {
        let answer = SwitchAnswer {
            seq: 2,
            from: "redis://a:1".into(),
            endpoint: "redis://b:2".into(),
            shards_switched: 2,
            shards: 2,
            ..SwitchAnswer::default()
        };
        let body = to_body(&answer);
        assert!(body.starts_with("{\"at_unix\":0.0,\"endpoint\":"), "{body}");
        assert!(
            body.contains("\"switched\":true") && !body.contains("error"),
            "{body}"
        );
        assert_eq!(round_trip(&answer).switched, Switched::All(true));
        let partial = SwitchAnswer {
            switched: Switched::Partial(PartialTag::Partial),
            error: Some("only 1 of 2 shards took the switch".into()),
            shards_switched: 1,
            ..answer
        };
        assert!(to_body(&partial).contains("\"switched\":\"partial\""));
        let back = round_trip(&partial);
        assert_eq!(back.switched, Switched::Partial(PartialTag::Partial));
        assert_eq!(back.error.as_deref(), partial.error.as_deref());
        assert_eq!(ErrorAnswer::body("no"), "{\"error\":\"no\"}");
    }
}

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

use super::aggregate::{CacheRatios, Latencies, Outcomes, Percentiles, Summary};
use super::health::{ClusterHealth, DepStatus, NodeOutage};
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
    /// The latencies and cache ratios are over the last 10 seconds.
    #[serde(flatten)]
    pub latency: Latencies,
    pub query_latency_uncorrected_ms: Percentiles,
    pub pacer_lateness_ms: Percentiles,
    #[serde(flatten)]
    pub cache: CacheRatios,
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

//! Every metric name the process exports, in one place, and the recorder set-up.
//!
//! Names follow Prometheus conventions: one `analytics_` prefix, base units (seconds,
//! bytes, ratios), `_total` for counters. Labels are bounded sets; credentials never
//! appear in them. Dashboards and scripts depend on these names: treat them as API.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS_TOTAL: &str = "analytics_events_total";
pub const QUERIES_TOTAL: &str = "analytics_queries_total";
pub const QUERY_DURATION: &str = "analytics_query_duration_seconds";
pub const QUERY_DURATION_UNCORRECTED: &str = "analytics_query_service_duration_seconds";
pub const EVENT_DURATION: &str = "analytics_event_duration_seconds";
pub const REDIS_COMMAND_DURATION: &str = "analytics_redis_command_duration_seconds";
pub const REDIS_COMMANDS_TOTAL: &str = "analytics_redis_commands_total";
pub const REDIS_ERRORS_TOTAL: &str = "analytics_redis_errors_total";
pub const REDIS_CONNECTIONS: &str = "analytics_redis_connections";
pub const REDIS_RECONNECTS_TOTAL: &str = "analytics_redis_reconnects_total";
pub const REDIS_POOL_SIZE: &str = "analytics_redis_pool_size";
pub const REDIS_INFLIGHT: &str = "analytics_redis_inflight";
pub const CACHE_HIT_RATIO: &str = "analytics_cache_hit_ratio";
pub const CACHE_HIT_TARGET_RATIO: &str = "analytics_cache_hit_target_ratio";
pub const DB_QUERY_DURATION: &str = "analytics_db_query_duration_seconds";
pub const DB_ROWS_WRITTEN_TOTAL: &str = "analytics_db_rows_written_total";
pub const DB_WRITER_QUEUE_DEPTH: &str = "analytics_db_writer_queue_depth";
pub const DB_WRITE_ERRORS_TOTAL: &str = "analytics_db_write_errors_total";
pub const DB_WRITER_LAG: &str = "analytics_db_writer_lag_seconds";
pub const DB_BATCH_ROWS: &str = "analytics_db_batch_rows";
pub const DB_ROWS_DROPPED_TOTAL: &str = "analytics_db_rows_dropped_total";
pub const DB_READ_ERRORS_TOTAL: &str = "analytics_db_read_errors_total";
pub const SKIPPED_OPERATIONS_TOTAL: &str = "analytics_skipped_operations_total";
pub const INFLIGHT_OPERATIONS: &str = "analytics_inflight_operations";
pub const TARGET_RATE: &str = "analytics_target_rate_per_second";
pub const ACTIVE_ORGANIZATIONS: &str = "analytics_active_organizations";
pub const CONVERSION_RATE: &str = "analytics_conversion_rate_ratio";
pub const ACTIVE_USERS: &str = "analytics_active_users";
pub const REDIS_TARGET_INFO: &str = "analytics_redis_target_info";
pub const REDIS_TARGET_SWITCHES_TOTAL: &str = "analytics_redis_target_switches_total";
pub const REDIS_TARGET_SWITCH_TIMESTAMP: &str = "analytics_redis_target_switch_timestamp_seconds";
pub const WARMUP_REFRESHES_TOTAL: &str = "analytics_cache_warmup_refreshes_total";
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";

/// Latency buckets in seconds: 50 µs to 10 s, roughly x2 per step with 1-2-5 fill below
/// 10 ms, so loopback Redis latency (tens to hundreds of µs) lands in distinct buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Batch-size buckets (rows per COPY).
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
];

/// Installs the global recorder (no listener of its own: our HTTP server renders it).
///
/// Must run before any handle is created: handles made earlier are silent no-ops.
pub fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DB_BATCH_ROWS.into()), BATCH_BUCKETS))
        .map_err(|e| format!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))
}

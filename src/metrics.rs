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
pub const QUERY_DURATION_WITH_MISSES: &str = "analytics_query_duration_including_misses_seconds";
pub const EVENT_DURATION_WITH_MISSES: &str = "analytics_event_duration_including_misses_seconds";
pub const PACER_LATENESS: &str = "analytics_pacer_lateness_seconds";
pub const REDIS_COMMAND_DURATION: &str = "analytics_redis_command_duration_seconds";
pub const REDIS_COMMANDS_TOTAL: &str = "analytics_redis_commands_total";
pub const REDIS_ERRORS_TOTAL: &str = "analytics_redis_errors_total";
pub const REDIS_CONNECTIONS: &str = "analytics_redis_connections";
pub const REDIS_RECONNECTS_TOTAL: &str = "analytics_redis_reconnects_total";
pub const REDIS_PUSH_MESSAGES_TOTAL: &str = "analytics_redis_push_messages_total";
pub const REDIS_POOL_SIZE: &str = "analytics_redis_pool_size";
pub const REDIS_INFLIGHT: &str = "analytics_redis_inflight";
pub const REDIS_REDIRECTS_TOTAL: &str = "analytics_redis_redirects_total";
pub const REDIS_CLUSTER_MAP_REFRESHES_TOTAL: &str = "analytics_redis_cluster_map_refreshes_total";
pub const REDIS_CLUSTER_NODE_UP: &str = "analytics_redis_cluster_node_up";
pub const REDIS_CLUSTER_SLOTS: &str = "analytics_redis_cluster_slots";
pub const REDIS_CLUSTER_MAP_VERSION: &str = "analytics_redis_cluster_map_version";
pub const REDIS_NODE_COMMANDS_TOTAL: &str = "analytics_redis_node_commands_total";
pub const REDIS_NODE_COMMAND_DURATION: &str = "analytics_redis_node_command_duration_seconds";
pub const CACHE_HIT_RATIO: &str = "analytics_cache_hit_ratio";
pub const CACHE_HIT_TARGET_RATIO: &str = "analytics_cache_hit_target_ratio";
pub const CACHE_NATURAL_HIT_RATIO: &str = "analytics_cache_natural_hit_ratio";
pub const CACHE_ADHOC_FRACTION: &str = "analytics_cache_adhoc_fraction";
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

/// HELP text of every family (Prometheus tooling flags families without one).
fn describe() {
    metrics::describe_gauge!(
        CACHE_HIT_RATIO,
        "Steered cache hit ratio over the last 10 s: hit / (hit + miss) of every cacheable query, the one-off (ad-hoc) keys included; held near CACHE_HIT_TARGET by the steering loop"
    );
    metrics::describe_gauge!(
        CACHE_NATURAL_HIT_RATIO,
        "Natural cache hit ratio over the last 10 s: hit / (hit + miss) of cacheable queries on their own keys, the steered one-off ones left out: how full the cache really is"
    );
    metrics::describe_gauge!(
        CACHE_ADHOC_FRACTION,
        "Share of cacheable queries over the last 10 s that the steering loop sent to one-off keys (always a miss) to bring the hit ratio down to CACHE_HIT_TARGET"
    );
    metrics::describe_gauge!(CACHE_HIT_TARGET_RATIO, "CACHE_HIT_TARGET as a ratio");
    metrics::describe_counter!(DB_ROWS_WRITTEN_TOTAL, "Event rows committed to PostgreSQL");
    metrics::describe_histogram!(DB_BATCH_ROWS, "Rows per COPY batch");
    metrics::describe_gauge!(
        DB_WRITER_QUEUE_DEPTH,
        "Rows waiting for the writer (all shards)"
    );
    metrics::describe_gauge!(DB_WRITER_LAG, "Age of the oldest row not yet written");
    metrics::describe_counter!(DB_WRITE_ERRORS_TOTAL, "Failed writer attempts (retried), by kind: timeout (no answer within DB_TIMEOUT_MS: the connection is dropped and reopened; or the server's statement_timeout), connect (no connection), error (the server refused or the connection broke)");
    metrics::describe_counter!(
        DB_ROWS_DROPPED_TOTAL,
        "Rows given up on (the Postgres truth misses them: verification is weaker)"
    );
    metrics::describe_gauge!(
        CONVERSION_RATE,
        "Conversions / page views over the last minute"
    );
    metrics::describe_counter!(
        REDIS_TARGET_SWITCHES_TOTAL,
        "Run-time switches of the Redis target"
    );
    metrics::describe_gauge!(
        REDIS_TARGET_SWITCH_TIMESTAMP,
        "Unix time of the last switch (0 = never)"
    );
    metrics::describe_counter!(EVENTS_TOTAL, "Events generated. type: page_view, click, conversion, signup, purchase. outcome of the Redis counter write: acked (reply received), failed (known not applied), unknown (sent, no reply: the connection died)");
    metrics::describe_counter!(QUERIES_TOTAL, "Queries run. query_type: dashboard, filtered, realtime. cache: hit, miss (Postgres read, then SET), none (never cached: realtime), error");
    metrics::describe_histogram!(QUERY_DURATION, "Query latency measured from the *scheduled* start (coordinated omission corrected: includes time spent waiting behind a slow Redis). result: ok (answered), error (failed: kept apart, a fast failure is no fast answer)");
    metrics::describe_histogram!(QUERY_DURATION_UNCORRECTED, "Query latency from the actual start (uncorrected service time). A growing gap to the corrected figure means operations start late. result: ok, error");
    metrics::describe_histogram!(
        EVENT_DURATION,
        "Event path latency (counter INCR + unique-user record), from the scheduled start. result: ok (acked), error (failed or unknown)"
    );
    metrics::describe_histogram!(QUERY_DURATION_WITH_MISSES, "Every query that was due: successful ones with their latency from the scheduled start, failed and skipped ones as misses recorded at 600 s (only the +Inf bucket), so a quantile that falls among the misses reads as the top bucket. Its _sum is no latency sum");
    metrics::describe_histogram!(EVENT_DURATION_WITH_MISSES, "Every event that was due: acked ones with their latency from the scheduled start, failed, unknown and skipped ones as misses recorded at 600 s (only the +Inf bucket). Its _sum is no latency sum");
    metrics::describe_histogram!(PACER_LATENESS, "How late the load generator woke for its schedule, per pacing wake-up. Large values are stalls of this process or its (virtual) CPU, not of Redis: operations due during one start late and their latency from the schedule includes it");
    metrics::describe_histogram!(REDIS_COMMAND_DURATION, "Round trip of each Redis command (GET, SET, INCR, MGET, PFADD, PFCOUNT, EXPIREAT, PING, ..., other)");
    metrics::describe_counter!(REDIS_COMMANDS_TOTAL, "Redis commands sent");
    metrics::describe_counter!(REDIS_ERRORS_TOTAL, "Redis errors by kind: connect, io, timeout, closed, not_connected, protocol, err, wrongtype, oom, readonly, loading, busy, masterdown, noauth, auth, redirect, reply_too_large, server_other, cross_slot, redirect_loop");
    metrics::describe_counter!(
        REDIS_REDIRECTS_TOTAL,
        "Redis Cluster redirections and transient refusals answered by resending: moved, ask, tryagain, clusterdown, loading, masterdown, readonly"
    );
    metrics::describe_counter!(
        REDIS_CLUSTER_MAP_REFRESHES_TOTAL,
        "Redis Cluster slot maps loaded by each shard's router (at start, after MOVED, READONLY or a lost node)"
    );
    metrics::describe_gauge!(
        REDIS_CLUSTER_NODE_UP,
        "Redis Cluster primaries in the health check's slot map: 1 if the node answered the last PING, 0 if not or if it left the map"
    );
    metrics::describe_gauge!(
        REDIS_CLUSTER_SLOTS,
        "Redis Cluster slots (of 16384) by state: assigned (a primary serves them), covered (their primary answered the last health check)"
    );
    metrics::describe_gauge!(
        REDIS_CLUSTER_MAP_VERSION,
        "Changes of the Redis Cluster slot map seen by the health check (1 for the first map)"
    );
    metrics::describe_counter!(
        REDIS_NODE_COMMANDS_TOTAL,
        "Redis Cluster: commands sent to each node (all shards), redirected attempts included"
    );
    metrics::describe_histogram!(
        REDIS_NODE_COMMAND_DURATION,
        "Redis Cluster: round trip of each command, by node (all shards)"
    );
    metrics::describe_gauge!(
        REDIS_CONNECTIONS,
        "Pool connections by state: connected, connecting, disconnected"
    );
    metrics::describe_gauge!(
        REDIS_POOL_SIZE,
        "Configured pool size (REDIS_POOL_SIZE, split over shards)"
    );
    metrics::describe_gauge!(REDIS_INFLIGHT, "Redis commands sent and not answered yet");
    metrics::describe_counter!(
        REDIS_RECONNECTS_TOTAL,
        "Connections re-established after a failure"
    );
    metrics::describe_counter!(
        REDIS_PUSH_MESSAGES_TOTAL,
        "RESP3 push messages received (out of band: never taken as a command's reply)"
    );
    metrics::describe_counter!(
        WARMUP_REFRESHES_TOTAL,
        "Dashboard cache entries refreshed by the warmup scheduler (WARMUP_INTERVAL)"
    );
    metrics::describe_histogram!(DB_QUERY_DURATION, "PostgreSQL latency per operation: copy (writer batch), dashboard / filtered (cache-miss reads)");
    metrics::describe_counter!(DB_READ_ERRORS_TOTAL, "Failed cache-miss reads, by kind: timeout (no answer within DB_READ_TIMEOUT_MS: the connection is dropped; or the server's statement_timeout), not_connected (failed fast while the connection is being reopened), error (the server refused or the connection broke)");
    metrics::describe_counter!(SKIPPED_OPERATIONS_TOTAL, "Operations not run, by operation (event, query) and reason: late (too far behind schedule), max_workers (MAX_WORKERS in flight), db_backlog (writer queue full; events only)");
    metrics::describe_gauge!(INFLIGHT_OPERATIONS, "Events + queries in progress");
    metrics::describe_gauge!(
        TARGET_RATE,
        "Configured rate: events (EVENTS_PER_SECOND), queries (QUERIES_PER_SECOND)"
    );
    metrics::describe_gauge!(
        ACTIVE_ORGANIZATIONS,
        "Organizations with activity in the recent window"
    );
    metrics::describe_gauge!(ACTIVE_USERS, "Distinct active users (engagement)");
    metrics::describe_gauge!(
        REDIS_TARGET_INFO,
        "1 for the Redis endpoint currently in use (credentials removed)"
    );
}

/// Installs the global recorder (no listener of its own: our HTTP server renders it).
///
/// Must run before any handle is created: handles made earlier are silent no-ops.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DB_BATCH_ROWS.into()), BATCH_BUCKETS))
        .map_err(|e| format!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

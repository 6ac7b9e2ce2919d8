//! The built-in live dashboard served at `GET /`: one HTML page (inline CSS, vanilla JS, SVG
//! sparklines) embedded in the binary. It polls `GET /api/status` once a second; nothing is
//! downloaded from elsewhere when it is viewed.

use crate::http::Resp;

/// The page, compiled into the binary.
pub const INDEX_HTML: &str = include_str!("index.html");

/// Fields of `GET /api/status` the page reads (dotted paths; `history[].x` = a field of every
/// history point). `tests/dashboard.rs` checks them against a live instance, so renaming a
/// field of the status JSON without updating the page fails a test.
pub const STATUS_FIELDS: &[&str] = &[
    "run_id",
    "uptime_seconds",
    "targets.events_per_second",
    "targets.queries_per_second",
    "targets.cache_hit_ratio",
    "rates.events_per_second",
    "rates.queries_per_second",
    "query_latency_ms.p50",
    "query_latency_ms.p90",
    "query_latency_ms.p99",
    "query_latency_ms.p999",
    "query_latency_ms.max",
    "query_latency_uncorrected_ms.p99",
    "query_error_latency_ms.p99",
    "query_latency_including_misses_ms.p99",
    "query_latency_including_misses_ms.miss_ms",
    "event_latency_ms.p99",
    "event_latency_including_misses_ms.p99",
    "query_outcomes_last_10s.due",
    "query_outcomes_last_10s.ok",
    "query_outcomes_last_10s.error",
    "query_outcomes_last_10s.skipped",
    "cache_hit_ratio",
    "cache_natural_hit_ratio",
    "cache_adhoc_fraction",
    "errors_last_10s",
    "errors_total",
    "skipped_total",
    "skipped_last_10s",
    "totals.events",
    "totals.queries",
    "writer.connected",
    "writer.rows_written",
    "writer.pending_rows",
    "writer.lag_seconds",
    "writer.write_errors",
    "writer.rows_dropped",
    "redis.target",
    "redis.connections_up",
    "redis.pool_size",
    "redis.status",
    "redis.mode",
    "redis.cluster",
    "redis.redirects_total",
    "postgres.status",
    "migration.switches",
    "history[].t",
    "history[].events",
    "history[].queries",
    "history[].hit_ratio",
    "history[].natural_hit_ratio",
    "history[].p50_ms",
    "history[].p99_ms",
    "history[].errors",
    "history[].skipped",
];

/// Fields the page's Redis Cluster card reads when `redis.mode` is `"cluster"` (`redis.cluster`
/// is null otherwise). `tests/dashboard.rs` checks them against an instance on a cluster.
pub const CLUSTER_STATUS_FIELDS: &[&str] = &[
    "redis.cluster.slots_assigned",
    "redis.cluster.slots_covered",
    "redis.cluster.map_version",
    "redis.cluster.map_from",
    "redis.cluster.nodes[].node",
    "redis.cluster.nodes[].slots",
    "redis.cluster.nodes[].status",
    "redis.cluster.nodes[].latency_ms",
    "redis.cluster.nodes[].error",
    "redis.cluster.node_outages",
    "redis.redirects_total.moved",
    "redis.redirects_total.ask",
];

/// `GET /`: the dashboard page.
pub fn index() -> Resp {
    Resp {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: INDEX_HTML.to_string(),
    }
}

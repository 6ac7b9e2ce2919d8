//! The control core's HTTP API: `/metrics`, `/health`, `/report`, `/api/status`, the
//! dashboard page, and `POST /admin/redis-target` (authorized in [`super::auth`]). The JSON
//! documents are the typed ones of [`super::api`], built here from the state.

use std::time::{Duration, Instant};

use hyper::Method;

use super::aggregate::percentiles;
use super::api::{self, ErrorAnswer, TargetMode};
use super::health::DepStatus;
use super::state::State;
use super::summary::Summary;
use super::{auth, process};
use crate::http::{Req, Resp};
use crate::metrics as m;
use crate::resp::{RedisMode, RedisUrl, Target};
use crate::shard::counts::ByName;
use crate::shard::stats::Op;
use crate::shard::ShardCommand;

/// How long a switch may wait for the shards' command queues.
const SWITCH_DELIVERY: Duration = Duration::from_secs(5);

pub(super) async fn route(st: &State, req: Req) -> Resp {
    match (&req.method, req.path.as_str()) {
        (&Method::GET, "/metrics") => {
            let mut body = st.prom.render();
            body.push_str(&process::render(st.p.start_unix));
            Resp {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body,
            }
        }
        (&Method::GET, "/health") => {
            let doc = health(st);
            let code = if doc.status == "ok" { 200 } else { 503 };
            Resp::json(code, api::to_body(&doc))
        }
        (&Method::GET, "/report") => Resp::json(200, api::to_body(&report(st))),
        (&Method::POST, "/admin/redis-target") => match switch_target(st, &req).await {
            Ok((code, answer)) => Resp::json(code, api::to_body(&answer)),
            Err((code, error)) => Resp::json(code, ErrorAnswer::body(error)),
        },
        (&Method::GET, "/api/status") => Resp::json(200, api::to_body(&status(st))),
        (&Method::GET, "/") => crate::dashboard::index(),
        (_, "/metrics" | "/health" | "/report" | "/api/status" | "/" | "/admin/redis-target") => {
            Resp::text(405, "method not allowed\n")
        }
        _ => Resp::text(404, "not found\n"),
    }
}

/// `GET /health`: `"ok"` when Redis and PostgreSQL answer and the load runs.
fn health(st: &State) -> api::Health {
    let h = st.health.borrow();
    let now = Instant::now();
    let age = |d: &DepStatus| {
        let mut d = d.clone();
        d.checked_seconds_ago = d.checked_at.map(|t| now.duration_since(t).as_secs_f64());
        if d.checked_at.is_none() {
            d.status = "unknown".into();
        }
        d
    };
    let agg = st.agg.borrow();
    let load = st.load.get();
    let up = h.redis.is_up() && h.postgres.is_up() && load == api::Load::Running;
    api::Health {
        status: if up { "ok" } else { "degraded" }.into(),
        load,
        run_id: st.p.run_id,
        uptime_seconds: agg.started.elapsed().as_secs_f64(),
        redis: age(&h.redis),
        redis_cluster: h.cluster.clone(),
        postgres: age(&h.postgres),
        shards: agg
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| api::ShardHealth {
                shard: i,
                redis_connections_up: s.redis_connected,
                redis_pool_size: s.redis_pool_size,
                postgres_read_connected: s.pg_read_connected,
                inflight_operations: s.inflight_ops,
            })
            .collect(),
        writer: writer(st),
    }
}

fn writer(st: &State) -> api::Writer {
    let w = st.writer.borrow();
    api::Writer {
        connected: w.connected,
        rows_written: w.rows_written,
        pending_rows: st.pending_rows(),
        lag_seconds: w.lag_seconds,
        write_errors: w.errors,
    }
}

/// `GET /api/status`: live state for the built-in dashboard.
fn status(st: &State) -> api::Status {
    let agg = st.agg.borrow();
    let last5 = agg.recent(5);
    let last10 = agg.recent(10);
    let secs5 = agg.recent.len().clamp(1, 5) as f64;
    let h = st.health.borrow();
    let target = st.target.borrow();
    let history = agg
        .recent
        .iter()
        .map(|w| api::HistoryPoint {
            t: w.at_unix,
            events: w.events_total(),
            queries: w.queries_total(),
            hit_ratio: w.hit_ratio(),
            natural_hit_ratio: w.natural_hit_ratio(),
            adhoc_fraction: w.adhoc_fraction(),
            p50_ms: percentiles(&w.query_latency).p50,
            p99_ms: percentiles(&w.query_latency).p99,
            p99_including_misses_ms: w.query_latency_with_misses().percentiles.p99,
            queries_failed: w.queries_failed(),
            errors: w.errors_total(),
            skipped: w.skipped_total(),
        })
        .collect();
    let switches = st
        .migration
        .borrow()
        .switches
        .iter()
        .map(|s| api::SwitchBrief {
            seq: s.seq,
            at_unix: s.at_unix,
            from: s.from.clone(),
            to: s.to.clone(),
            error_window_seconds: match (s.first_failure, s.last_failure) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
            failed_operations: s.during.errors_total() + s.after.errors_total(),
            longest_unavailability_ms: s.outages.iter().map(|o| o.duration_ms).fold(0.0, f64::max),
        })
        .collect();
    api::Status {
        run_id: st.p.run_id,
        uptime_seconds: agg.started.elapsed().as_secs_f64(),
        targets: api::Targets {
            events_per_second: st.p.targets.0,
            queries_per_second: st.p.targets.1,
            cache_hit_ratio: st.p.hit_target,
        },
        rates: api::Rates {
            events_per_second: last5.events_total() as f64 / secs5,
            queries_per_second: last5.queries_total() as f64 / secs5,
        },
        query_outcomes_last_10s: last10.outcomes(Op::Query),
        event_outcomes_last_10s: last10.outcomes(Op::Event),
        query_outcomes_total: agg.total.outcomes(Op::Query),
        event_outcomes_total: agg.total.outcomes(Op::Event),
        figures: last10.figures(),
        errors_last_10s: last10.errors_by_kind(),
        errors_total: agg.total.errors_by_kind(),
        skipped_last_10s: last10.skipped_by_reason(),
        skipped_total: agg.total.skipped_by_reason(),
        totals: api::Totals {
            events: agg.total.events_total(),
            queries: agg.total.queries_total(),
        },
        writer: api::StatusWriter {
            writer: writer(st),
            rows_dropped: st.writer.borrow().rows_dropped,
        },
        redis: api::StatusRedis {
            target: target.label(),
            mode: TargetMode::of(target.is_cluster()),
            connections_up: agg.shards.iter().map(|s| s.redis_connected).sum(),
            pool_size: agg.shards.iter().map(|s| s.redis_pool_size).sum(),
            status: h.redis.status.clone(),
            cluster: h.cluster.clone(),
            redirects_total: redirects_by_kind(),
        },
        postgres: api::StatusPostgres {
            status: h.postgres.status.clone(),
        },
        migration: api::StatusMigration { switches },
        history,
    }
}

/// `GET /report`: the run so far, the current target, every switch, the cluster's part.
fn report(st: &State) -> api::Report {
    api::Report {
        run: Summary::build(
            st.p.run_id,
            &st.agg.borrow(),
            st.p.targets,
            st.p.hit_target,
            &st.writer.borrow(),
        ),
        redis_target: st.target.borrow().label(),
        migration: st.migration.borrow().report(st.p.hit_target),
        redis_cluster: cluster_report(st),
    }
}

/// The report's Redis Cluster part: None for a run that never used one.
fn cluster_report(st: &State) -> Option<api::ClusterReport> {
    let h = st.health.borrow();
    if !st.target.borrow().is_cluster() && !h.cluster_seen {
        return None;
    }
    Some(api::ClusterReport {
        redirects: redirects_by_kind(),
        node_outages: h.node_outages.clone(),
        slots_covered: h.cluster.as_ref().map(|c| c.slots_covered),
        map_version: h.cluster.as_ref().map(|c| c.map_version),
    })
}

/// Redirections followed so far by every router of the process, by kind (all kinds, 0 included).
fn redirects_by_kind() -> ByName {
    crate::resp::cluster::redirect::seen_so_far()
        .into_iter()
        .map(|(k, n)| (k.into(), n))
        .collect()
}

/// A refusal: the HTTP status and the error.
type Refused = (u16, String);

/// `POST /admin/redis-target {"url": "redis://..."}`: switches every shard to a new Redis.
///
/// Each shard's command is awaited (a full queue delays, never drops it). A shard that cannot
/// take it (its run is stopping, or it does not take it within `SWITCH_DELIVERY`) leaves a
/// partial switch: it is recorded all the same, since the shards before it did switch, and
/// the answer (503) says how many took it.
async fn switch_target(st: &State, req: &Req) -> Result<(u16, api::SwitchAnswer), Refused> {
    auth::authorize(st.p.admin_token.as_deref(), st.p.admin_allow_loopback, req)?;
    #[derive(serde::Deserialize)]
    struct Body {
        url: String,
        mode: Option<String>,
    }
    let body: Body = serde_json::from_slice(&req.body).map_err(|_| {
        (
            400,
            "body must be JSON: {\"url\": \"redis://host:port[,redis://seed2...]\", \"mode\": \"auto|standalone|cluster\"}"
                .to_string(),
        )
    })?;
    let mode = match body.mode.as_deref() {
        None => RedisMode::Auto,
        Some(m) => match RedisMode::CHOICES.iter().find(|(name, _)| *name == m) {
            Some((_, mode)) => *mode,
            None => {
                return Err((
                    400,
                    format!("invalid mode '{m}': one of auto, standalone, cluster"),
                ))
            }
        },
    };
    let mut seeds = Vec::new();
    for item in body.url.split(',').map(str::trim) {
        seeds.push(RedisUrl::parse(item).map_err(|e| (400, format!("invalid url: {e}")))?);
    }
    let (url, guessed) = switch_target_of(st, seeds, mode).await?;
    let from = st.target.borrow().label();
    let to = url.label();
    let commands: Vec<_> = st.commands.borrow().clone();
    if commands.len() < st.p.shards {
        return Err((503, "shards are still starting; retry".into()));
    }
    if st.switching.replace(true) {
        return Err((409, "another switch is being delivered; retry".into()));
    }
    let deadline = Instant::now() + SWITCH_DELIVERY;
    let mut delivered = 0;
    for tx in commands.iter() {
        let sent = crate::rt::time::until(deadline, tx.send(ShardCommand::SetTarget(url.clone())));
        if !matches!(sent.await, Some(Ok(()))) {
            break;
        }
        delivered += 1;
    }
    st.switching.set(false);
    let shards = commands.len();
    if delivered == 0 {
        tracing::error!(to = %to, "no shard took the switch (the run is stopping?)");
        return Err((
            503,
            "no shard took the switch; the target is unchanged".into(),
        ));
    }
    let at = crate::workload::time::unix_now();
    *st.target.borrow_mut() = url;
    st.migration
        .borrow_mut()
        .switched(at, from.clone(), to.clone(), &st.agg.borrow().recent);
    metrics::gauge!(m::REDIS_TARGET_INFO, "endpoint" => from.clone()).set(0.0);
    metrics::gauge!(m::REDIS_TARGET_INFO, "endpoint" => to.clone()).set(1.0);
    metrics::counter!(m::REDIS_TARGET_SWITCHES_TOTAL).increment(1);
    metrics::gauge!(m::REDIS_TARGET_SWITCH_TIMESTAMP).set(at);
    let seq = st.migration.borrow().switches.len() as u64;
    let mut answer = api::SwitchAnswer {
        switched: api::Switched::All(true),
        error: None,
        seq,
        from,
        endpoint: to,
        mode: TargetMode::of(st.target.borrow().is_cluster()),
        mode_note: guessed,
        at_unix: at,
        shards_switched: delivered,
        shards,
    };
    if delivered < shards {
        tracing::error!(from = %answer.from, to = %answer.endpoint, seq, delivered, shards,
            "redis target switch reached only some shards");
        answer.switched = api::Switched::Partial(api::PartialTag::Partial);
        answer.error = Some(format!(
            "only {delivered} of {shards} shards took the switch"
        ));
        return Ok((503, answer));
    }
    tracing::warn!(from = %answer.from, to = %answer.endpoint, seq, "redis target switched");
    Ok((200, answer))
}

/// What a switch names: one server or a Redis Cluster. Several URLs are a cluster's seeds;
/// `auto` asks the target (`INFO cluster`), and a target that does not answer is taken as a
/// standalone server, as before cluster mode (the second value then says so).
async fn switch_target_of(
    st: &State,
    seeds: Vec<RedisUrl>,
    mode: RedisMode,
) -> Result<(Target, Option<String>), Refused> {
    let mut guessed = None;
    let cluster = match mode {
        RedisMode::Standalone if seeds.len() > 1 => {
            return Err((
                400,
                format!(
                    "{} URLs given, but several seed nodes are only for a Redis Cluster: give one \
                     URL, or mode \"cluster\"",
                    seeds.len()
                ),
            ))
        }
        RedisMode::Auto if seeds.len() > 1 => true,
        mode => match crate::resp::cluster::resolve_mode(mode, &seeds, &st.p.redis_cfg).await {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(error = %why, "switch: the target does not answer INFO; taken as a standalone server");
                guessed = Some(format!(
                    "the target did not answer INFO ({why}): taken as a standalone server; \
                         give mode \"cluster\" to switch to a cluster"
                ));
                false
            }
        },
    };
    if cluster && seeds.iter().any(|s| s.db != 0) {
        return Err((
            400,
            "the URL names a database, but a Redis Cluster has only database 0".into(),
        ));
    }
    match Target::new(seeds, cluster) {
        Some(t) => Ok((t, guessed)),
        None => Err((400, "no URL given".into())),
    }
}

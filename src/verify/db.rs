//! `verify`'s reads of PostgreSQL: the judged runs and their per-run rollups.

use std::time::Duration;

use super::RunRecord;
use crate::workload::EventType;

/// Bound of each PostgreSQL query of `verify` (90% of it is the session's statement_timeout):
/// generous, since its reads can be large, but a frozen server ends the check with exit 2.
pub(super) const DB_TIMEOUT: Duration = Duration::from_secs(60);

/// The runs with these ids, or started at or after `since` (unix seconds), or of the
/// instances of the named run (`to_jsonb`: a database of an older version, without the
/// column, is read as well).
pub(super) async fn load_runs(
    client: &tokio_postgres::Client,
    ids: &[i64],
    since: Option<i64>,
    run_name: Option<&str>,
) -> Result<Vec<RunRecord>, String> {
    let d = |e: tokio_postgres::Error| crate::pg::describe(&e);
    let since = since.map(|s| s as f64);
    let rows = crate::pg::within(
        DB_TIMEOUT,
        client.query(
            "SELECT r.run_id, extract(epoch FROM r.started_at)::float8, \
             (r.config->>'time_buckets')::int4, (r.config->>'organizations')::int4, \
             extract(epoch FROM r.ended_at)::float8, r.end_state, r.rows_dropped, \
             extract(epoch FROM r.last_seen)::float8, \
             extract(epoch FROM now() - coalesce(r.last_seen, r.started_at))::float8, \
             r.events_started, \
             (SELECT coalesce(sum(events), 0)::int8 FROM run_rollups x WHERE x.run_id = r.run_id) \
             FROM runs r WHERE r.run_id = ANY($1) OR r.started_at >= to_timestamp($2) \
             OR to_jsonb(r)->>'run_name' = $3 ORDER BY r.started_at, r.run_id",
            &[&ids, &since, &run_name],
        ),
    )
    .await
    .map_err(String::from)?;
    let secs = |v: Option<f64>| v.map(|s| s.floor() as i64);
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let num = |i: usize| r.try_get::<_, Option<i32>>(i).ok().flatten();
        out.push(RunRecord {
            run_id: r.try_get(0).map_err(d)?,
            started: secs(r.try_get(1).map_err(d)?).unwrap_or(0),
            time_buckets: num(2).map(|v| v.max(1) as u32),
            organizations: num(3).map(|v| v.max(1) as u32),
            ended: secs(r.try_get(4).map_err(d)?),
            end_state: r.try_get(5).map_err(d)?,
            rows_dropped: r.try_get(6).map_err(d)?,
            last_seen: secs(r.try_get(7).map_err(d)?),
            seen_ago: r.try_get::<_, Option<f64>>(8).map_err(d)?.unwrap_or(0.0),
            events_started: r.try_get(9).map_err(d)?,
            rows_in_postgres: r.try_get::<_, i64>(10).map_err(d)?.max(0) as u64,
        });
    }
    Ok(out)
}

pub(super) type RollupRow = (i64, u32, i32, EventType, u64, u64);

/// The `run_rollups` rows of `runs` from `first_bucket` on.
pub(super) async fn load_rollups(
    client: &tokio_postgres::Client,
    runs: &[i64],
    first_bucket: i32,
) -> Result<Vec<RollupRow>, String> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let rows = crate::pg::within(
        DB_TIMEOUT,
        client.query(
            "SELECT run_id, org_id, bucket, event_type, acked, unknown FROM run_rollups \
             WHERE run_id = ANY($1) AND bucket >= $2",
            &[&runs, &first_bucket],
        ),
    )
    .await
    .map_err(String::from)?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let ty = EventType::from_code(r.get(3))?;
            let (acked, unknown): (i64, i64) = (r.get(4), r.get(5));
            Some((
                r.get(0),
                r.get::<_, i32>(1).max(0) as u32,
                r.get(2),
                ty,
                acked.max(0) as u64,
                unknown.max(0) as u64,
            ))
        })
        .collect())
}

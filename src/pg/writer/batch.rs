//! One batch of event rows as PostgreSQL takes it: the rows by binary COPY, then the rollups,
//! the run's progress and the batch's record in one statement, all in one transaction, with
//! both statements prepared once per connection.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Statement;

use super::EventRow;
use crate::metrics as m;
use crate::pg::Conn;
use crate::workload::Outcome;

/// A batch's two statements, prepared once per connection (a statement given as text is
/// parsed again on every call, a round trip each).
pub(super) struct Prepared {
    copy: Statement,
    /// The rollups, the run's progress and the batch's record, as one statement.
    after_copy: Statement,
}

impl Prepared {
    pub(super) async fn new(client: &Conn) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            copy: client
                .prepare(
                    "COPY events (run_id, event_id, ts, bucket, org_id, user_id, event_type, \
                     outcome) FROM STDIN BINARY",
                )
                .await?,
            after_copy: client.prepare(AFTER_COPY).await?,
        })
    }
}

/// What a batch writes besides its rows, in one statement (one round trip instead of four):
/// the rollups ($2-$7 are the batch's rollup columns), the run's progress as of this commit
/// (what `verify` says a crashed run may miss: $8 events started, $9 rows written), and the
/// batch's record ($10 its number, $11 its rows), which makes a retried batch land once.
const AFTER_COPY: &str = "\
    WITH org AS ( \
        INSERT INTO event_rollups (org_id, bucket, event_type, events, acked, unknown) \
        SELECT * FROM UNNEST($2::int4[], $3::int4[], $4::int2[], $5::int8[], $6::int8[], $7::int8[]) \
        ON CONFLICT (org_id, bucket, event_type) DO UPDATE SET \
        events = event_rollups.events + excluded.events, \
        acked = event_rollups.acked + excluded.acked, \
        unknown = event_rollups.unknown + excluded.unknown \
    ), run AS ( \
        INSERT INTO run_rollups (run_id, org_id, bucket, event_type, events, acked, unknown) \
        SELECT $1::int8, * FROM UNNEST($2::int4[], $3::int4[], $4::int2[], $5::int8[], $6::int8[], $7::int8[]) \
        ON CONFLICT (run_id, org_id, bucket, event_type) DO UPDATE SET \
        events = run_rollups.events + excluded.events, \
        acked = run_rollups.acked + excluded.acked, \
        unknown = run_rollups.unknown + excluded.unknown \
    ), progress AS ( \
        UPDATE runs SET last_seen = now(), events_started = $8, rows_written = $9 \
        WHERE run_id = $1 \
    ) \
    INSERT INTO writer_batches (run_id, batch_seq, rows) VALUES ($1, $10, $11)";

/// Writes `batch` as batch number `seq` of run `run_id`, in one transaction; `progress` is
/// (events started, rows committed before it). `retry`: an earlier attempt may have committed
/// with its reply lost, so a batch already recorded is not written again.
pub(super) async fn write(
    client: &mut Conn,
    prepared: &Prepared,
    run_id: i64,
    batch: &[EventRow],
    seq: i64,
    retry: bool,
    progress: (i64, i64),
) -> Result<(), String> {
    let d = |e: tokio_postgres::Error| crate::pg::describe(&e);
    if retry {
        // The previous attempt may have committed with its reply lost.
        let done = client
            .query_opt(
                "SELECT 1 FROM writer_batches WHERE run_id = $1 AND batch_seq = $2",
                &[&run_id, &seq],
            )
            .await
            .map_err(d)?;
        if done.is_some() {
            return Ok(());
        }
    }
    let started = Instant::now();
    let tx = client.transaction().await.map_err(d)?;
    let sink = tx.copy_in(&prepared.copy).await.map_err(d)?;
    let types = [
        Type::INT8,
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::INT4,
        Type::INT4,
        Type::INT4,
        Type::INT2,
        Type::INT2,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    let mut writer = std::pin::pin!(writer);
    for r in batch {
        let ts = UNIX_EPOCH + Duration::from_micros(r.ts_micros.max(0) as u64);
        writer
            .as_mut()
            .write(&[
                &run_id,
                &r.event_id,
                &ts as &SystemTime,
                &r.bucket,
                &r.org,
                &r.user,
                &r.ty,
                &r.outcome,
            ])
            .await
            .map_err(d)?;
    }
    writer.as_mut().finish().await.map_err(d)?;

    let roll = rollup(batch);
    let (events_started, written) = progress;
    tx.execute(
        &prepared.after_copy,
        &[
            &run_id,
            &roll.org,
            &roll.bucket,
            &roll.ty,
            &roll.events,
            &roll.acked,
            &roll.unknown,
            &events_started,
            &(written + batch.len() as i64),
            &seq,
            &(batch.len() as i32),
        ],
    )
    .await
    .map_err(d)?;
    tx.commit().await.map_err(d)?;
    metrics::histogram!(m::DB_QUERY_DURATION, "op" => "copy")
        .record(started.elapsed().as_secs_f64());
    Ok(())
}

#[derive(Default)]
struct Rollup {
    org: Vec<i32>,
    bucket: Vec<i32>,
    ty: Vec<i16>,
    events: Vec<i64>,
    acked: Vec<i64>,
    unknown: Vec<i64>,
}

/// Aggregates a batch per (org, bucket, type), sorted so concurrent writers lock in order.
fn rollup(batch: &[EventRow]) -> Rollup {
    let mut agg: HashMap<(i32, i32, i16), [i64; 3]> = HashMap::new();
    for r in batch {
        let e = agg.entry((r.org, r.bucket, r.ty)).or_default();
        e[0] += 1;
        if r.outcome == Outcome::Acked.code() {
            e[1] += 1;
        } else if r.outcome == Outcome::Unknown.code() {
            e[2] += 1;
        }
    }
    let mut keys: Vec<_> = agg.into_iter().collect();
    keys.sort_unstable_by_key(|(k, _)| *k);
    let mut out = Rollup::default();
    for ((org, bucket, ty), [events, acked, unknown]) in keys {
        out.org.push(org);
        out.bucket.push(bucket);
        out.ty.push(ty);
        out.events.push(events);
        out.acked.push(acked);
        out.unknown.push(unknown);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(org: i32, ty: i16, outcome: Outcome) -> EventRow {
        EventRow {
            event_id: 0,
            ts_micros: 0,
            bucket: 2026112517,
            org,
            user: 1,
            ty,
            outcome: outcome.code(),
        }
    }

    #[test]
    fn should_roll_up_outcomes_per_key() {
        let batch = [
            row(2, 0, Outcome::Acked),
            row(1, 0, Outcome::Acked),
            row(2, 0, Outcome::Unknown),
            row(2, 0, Outcome::Failed),
            row(2, 1, Outcome::Acked),
        ];
        let r = rollup(&batch);
        assert_eq!(r.org, vec![1, 2, 2]);
        assert_eq!(r.ty, vec![0, 0, 1]);
        assert_eq!(r.events, vec![1, 3, 1]);
        assert_eq!(r.acked, vec![1, 1, 1]);
        assert_eq!(r.unknown, vec![0, 1, 0]);
    }
}

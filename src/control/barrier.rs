//! A named run of several instances (`RUN_NAME`, `INSTANCE_COUNT` > 1): the start barrier, and
//! the final record `report --run-name` aggregates.
//!
//! Each instance registers in `run_instances` under its index and polls until all
//! `INSTANCE_COUNT` indexes are there. The first to see that sets `scaled_runs.start_at` to
//! PostgreSQL's clock plus [`START_DELAY`] (once: `WHERE start_at IS NULL`); every instance
//! then sleeps until that instant, measured on PostgreSQL's clock, so the instances' own
//! clocks do not matter. An instance that finds the start already past (a restarted pod)
//! joins at once. Past `START_TIMEOUT` without everyone, it gives up naming the missing
//! indexes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::pg::{DbError, PgConfig};

/// From the moment the last instance registers to the start: long enough for every instance
/// to see the start instant (they poll every [`POLL_EVERY`]).
pub const START_DELAY: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(200);

/// This instance's place in a named run.
#[derive(Clone, Debug)]
pub struct Member {
    pub run_name: String,
    pub index: u32,
    pub count: u32,
    pub timeout: Duration,
}

/// How the barrier ended.
#[derive(Debug, PartialEq)]
pub enum Passed {
    /// Everyone is there: the load starts now, with everyone else's.
    Together,
    /// The run had started already (this instance restarted, or came late).
    Late { seconds_after_start: f64 },
    /// SIGINT/SIGTERM while waiting.
    Stopped,
}

/// Registers `me` and waits for the run's start (see the module doc). `Err` is for the user:
/// a run of another size under the same name, or the instances missing at the timeout.
pub async fn wait(
    me: &Member,
    run_id: i64,
    pg: &PgConfig,
    db_timeout: Duration,
    term: &AtomicBool,
) -> Result<Passed, String> {
    let since = Instant::now();
    let mut conn: Option<crate::pg::Conn> = None;
    let mut registered = false;
    let mut last_error = String::new();
    loop {
        if term.load(Ordering::Relaxed) {
            return Ok(Passed::Stopped);
        }
        if since.elapsed() >= me.timeout {
            return Err(timeout_message(me, conn.as_ref(), &last_error, db_timeout).await);
        }
        if conn.as_ref().is_none_or(|c| !c.is_usable()) {
            conn = crate::pg::connect(pg, db_timeout, None).await.ok();
        }
        let Some(c) = conn.as_ref() else {
            last_error = "PostgreSQL not reachable".into();
            glommio::timer::sleep(POLL_EVERY).await;
            continue;
        };
        let step = async {
            if !registered {
                register(c, me, run_id, db_timeout).await?;
                registered = true;
            }
            poll(c, me, db_timeout).await
        };
        let passed = match step.await {
            Ok(Some(delay)) if delay >= 0.0 => {
                glommio::timer::sleep(Duration::from_secs_f64(delay)).await;
                Passed::Together
            }
            Ok(Some(delay)) => Passed::Late {
                seconds_after_start: -delay,
            },
            Ok(None) => {
                glommio::timer::sleep(POLL_EVERY).await;
                continue;
            }
            Err(Refused(msg)) => return Err(msg),
            Err(Db(e)) => {
                last_error = e.to_string();
                c.mark_broken();
                glommio::timer::sleep(POLL_EVERY).await;
                continue;
            }
        };
        // When the load starts, on PostgreSQL's clock, over the connection already open (one
        // round trip): the instances' start skew is measured on one clock.
        let started = crate::pg::within(
            db_timeout,
            c.execute(
                "UPDATE runs SET load_started_at = clock_timestamp() WHERE run_id = $1",
                &[&run_id],
            ),
        )
        .await;
        if let Err(e) = started {
            tracing::warn!(error = %e, "could not record the load's start time");
        }
        return Ok(passed);
    }
}

enum StepError {
    /// Not worth retrying: the user's to fix.
    Refused(String),
    Db(DbError),
}
use StepError::{Db, Refused};

impl From<DbError> for StepError {
    fn from(e: DbError) -> StepError {
        Db(e)
    }
}

/// The run's row (created by the first instance) must say the same instance count; then this
/// instance takes its index (over a previous holder: a restarted instance).
async fn register(
    c: &crate::pg::Conn,
    me: &Member,
    run_id: i64,
    limit: Duration,
) -> Result<(), StepError> {
    let count = me.count as i32;
    crate::pg::within(
        limit,
        c.execute(
            "INSERT INTO scaled_runs (run_name, instance_count) VALUES ($1, $2) \
             ON CONFLICT (run_name) DO NOTHING",
            &[&me.run_name, &count],
        ),
    )
    .await?;
    let row = crate::pg::within(
        limit,
        c.query_one(
            "SELECT instance_count FROM scaled_runs WHERE run_name = $1",
            &[&me.run_name],
        ),
    )
    .await?;
    let theirs: i32 = row.get(0);
    if theirs != count {
        return Err(Refused(format!(
            "RUN_NAME '{}' is a run of {theirs} instances, but INSTANCE_COUNT is {count}: give \
             this run a new name, or the same count",
            me.run_name
        )));
    }
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let index = me.index as i32;
    crate::pg::within(
        limit,
        c.execute(
            "INSERT INTO run_instances (run_name, instance_index, run_id, host) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (run_name, instance_index) DO UPDATE \
             SET run_id = EXCLUDED.run_id, host = EXCLUDED.host, registered_at = now()",
            &[&me.run_name, &index, &run_id, &host],
        ),
    )
    .await?;
    crate::pg::within(
        limit,
        c.execute(
            "UPDATE runs SET run_name = $2, instance_index = $3, instance_count = $4 \
             WHERE run_id = $1",
            &[&run_id, &me.run_name, &index, &count],
        ),
    )
    .await?;
    Ok(())
}

/// Seconds until the agreed start on PostgreSQL's clock (negative: it is past), once known;
/// sets it when every index is registered.
async fn poll(c: &crate::pg::Conn, me: &Member, limit: Duration) -> Result<Option<f64>, StepError> {
    let start = "SELECT EXTRACT(EPOCH FROM (start_at - clock_timestamp()))::float8 \
                 FROM scaled_runs WHERE run_name = $1 AND start_at IS NOT NULL";
    if let Some(row) = crate::pg::within(limit, c.query_opt(start, &[&me.run_name])).await? {
        return Ok(Some(row.get(0)));
    }
    if registered_indexes(c, me, limit).await?.len() < me.count as usize {
        return Ok(None);
    }
    let delay = START_DELAY.as_secs_f64();
    crate::pg::within(
        limit,
        c.execute(
            "UPDATE scaled_runs SET start_at = clock_timestamp() + make_interval(secs => $2) \
             WHERE run_name = $1 AND start_at IS NULL",
            &[&me.run_name, &delay],
        ),
    )
    .await?;
    let row = crate::pg::within(limit, c.query_opt(start, &[&me.run_name])).await?;
    Ok(row.map(|r| r.get(0)))
}

async fn registered_indexes(
    c: &crate::pg::Conn,
    me: &Member,
    limit: Duration,
) -> Result<Vec<i32>, DbError> {
    let rows = crate::pg::within(
        limit,
        c.query(
            "SELECT instance_index FROM run_instances WHERE run_name = $1 \
             ORDER BY instance_index",
            &[&me.run_name],
        ),
    )
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn timeout_message(
    me: &Member,
    conn: Option<&crate::pg::Conn>,
    last_error: &str,
    limit: Duration,
) -> String {
    let waited = me.timeout.as_secs();
    let registered = match conn {
        Some(c) if c.is_usable() => registered_indexes(c, me, limit).await.ok(),
        _ => None,
    };
    match registered {
        Some(have) => {
            let missing: Vec<String> = (0..me.count as i32)
                .filter(|i| !have.contains(i))
                .map(|i| i.to_string())
                .collect();
            format!(
                "RUN_NAME '{}': {} of {} instances registered within START_TIMEOUT ({waited} s); \
                 missing instance index(es): {}",
                me.run_name,
                have.len(),
                me.count,
                missing.join(", ")
            )
        }
        None => format!(
            "RUN_NAME '{}': could not register at the start barrier within START_TIMEOUT \
             ({waited} s): {last_error}",
            me.run_name
        ),
    }
}

/// Stores the run's final summary and its latency histograms (every recorded value with its
/// count, in microseconds) so `report --run-name` can merge the instances exactly.
pub async fn record_summary(
    run_id: i64,
    summary: &serde_json::Value,
    pg: &PgConfig,
    limit: Duration,
) -> Result<(), DbError> {
    let c = crate::pg::connect(pg, limit, None).await?;
    crate::pg::within(
        limit,
        c.execute(
            "UPDATE runs SET summary = $2::text::jsonb WHERE run_id = $1",
            &[&run_id, &summary.to_string()],
        ),
    )
    .await?;
    Ok(())
}

/// A histogram as `[[value, count], ...]` of its recorded values.
pub fn histogram_pairs(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    h.iter_recorded()
        .map(|v| serde_json::json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}

//! The Postgres writer: runs on the control core, merges the shards' event rows, and writes
//! them in batches (by size, or 100 ms after the first row of a batch) with binary COPY.
//!
//! Nothing acknowledged is dropped quietly: a batch is retried with backoff until Postgres
//! takes it; a retried batch is written once (see `writer_batches`). Memory stays bounded
//! because shards stop starting events when their rows-not-yet-committed reach their share
//! of `DB_BUFFER_ROWS` (counted as skipped, reason `db_backlog`).
//!
//! Every attempt (connecting included) is bounded by `DB_TIMEOUT_MS`, so a frozen or
//! unreachable Postgres cannot hold the writer: a timed-out attempt drops its connection and
//! the batch is retried on a new one. After a stop the writer keeps trying for
//! `SHUTDOWN_GRACE` counted from the stop; what is still unwritten then is dropped and counted.
//! What one batch sends PostgreSQL is in `batch`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod batch;

use super::{Conn, DbError, PgConfig};
use batch::Prepared;
use glommio::channels::shared_channel::SharedReceiver;

use crate::metrics as m;
use crate::rt::{self, sync::Notify};
use crate::workload::time;

/// One event as stored in Postgres.
#[derive(Clone, Copy, Debug)]
pub struct EventRow {
    pub event_id: i64,
    pub ts_micros: i64,
    pub bucket: i32,
    pub org: i32,
    pub user: i32,
    pub ty: i16,
    pub outcome: i16,
}

/// Rows a shard sends in one message.
pub type RowBatch = Vec<EventRow>;

/// Shared between one shard (adds rows it creates) and the writer (subtracts rows it
/// commits or, at a give-up on shutdown, drops). Only two threads ever touch it.
#[derive(Default, Debug)]
pub struct Backlog {
    pub pending: AtomicI64,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
}

impl Backlog {
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed).max(0) as u64
    }
}

/// Longest wait between two attempts at a failed batch.
const WRITE_RETRY_MAX: Duration = Duration::from_millis(250);

/// How long the writer keeps trying to write pending rows after a stop, counted from the stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub struct WriterConfig {
    pub pg: PgConfig,
    pub run_id: i64,
    pub batch_size: usize,
    pub retention_hours: u32,
    /// Bound of each attempt at a batch (connecting included) and of retention; a little more
    /// than the connection's `statement_timeout`.
    pub db_timeout: Duration,
    /// How long to keep retrying pending rows after the stop (counted from the stop).
    pub shutdown_grace: Duration,
}

/// What the control core shows about the writer (health, progress, summary).
#[derive(Default, Debug, Clone)]
pub struct WriterStatus {
    pub connected: bool,
    pub rows_written: u64,
    pub batches: u64,
    pub errors: u64,
    pub rows_dropped: u64,
    pub last_error: Option<String>,
    pub lag_seconds: f64,
}

const FLUSH_AFTER: Duration = Duration::from_millis(100);
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// How often the run's `runs.last_seen` is refreshed; `verify` takes a run not seen for
/// three times this (and not ended) as one that did not end cleanly.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

fn shard_of(event_id: i64) -> usize {
    (event_id >> 48) as usize
}

/// Runs until every shard's channel is closed and every row is written (or `shutdown_grace`
/// after the stop, set in `stopped_at`, has passed with Postgres still failing: then the rest
/// are counted as dropped).
pub async fn run(
    cfg: WriterConfig,
    receivers: Vec<SharedReceiver<RowBatch>>,
    backlogs: Vec<Arc<Backlog>>,
    stopped_at: Rc<Cell<Option<Instant>>>,
    status: Rc<RefCell<WriterStatus>>,
) {
    let queue: Rc<RefCell<VecDeque<RowBatch>>> = Rc::default();
    let bell = Rc::new(Notify::default());
    let open = Rc::new(std::cell::Cell::new(receivers.len()));
    for rx in receivers {
        let (queue, bell, open) = (queue.clone(), bell.clone(), open.clone());
        glommio::spawn_local(async move {
            let rx = rt::time::awake(rx.connect()).await;
            while let Some(rows) = rx.recv().await {
                queue.borrow_mut().push_back(rows);
                bell.notify();
            }
            open.set(open.get() - 1);
            bell.notify();
        })
        .detach();
    }

    let mut w = Writer {
        cfg,
        client: None,
        batch_seq: 0,
        backlogs,
        status,
        last_retention: Instant::now(),
        // The run's row was inserted with `last_seen = now()` at start (how `verify` tells a
        // live run from a dead one); every commit and every HEARTBEAT_EVERY refresh it.
        last_heartbeat: Instant::now(),
        backoff: Duration::from_millis(50),
    };
    let mut batch: Vec<EventRow> = Vec::with_capacity(w.cfg.batch_size * 2);
    let mut first_at: Option<Instant> = None;
    loop {
        while let Some(rows) = queue.borrow_mut().pop_front() {
            if first_at.is_none() {
                first_at = Some(Instant::now());
            }
            batch.extend_from_slice(&rows);
            if batch.len() >= w.cfg.batch_size {
                break;
            }
        }
        let all_closed = open.get() == 0 && queue.borrow().is_empty();
        let due = first_at.is_some_and(|t| t.elapsed() >= FLUSH_AFTER);
        if !batch.is_empty() && (batch.len() >= w.cfg.batch_size || due || all_closed) {
            w.flush(&mut batch, &stopped_at).await;
            first_at = None;
            continue;
        }
        if all_closed {
            break;
        }
        if w.last_retention.elapsed() >= RETENTION_EVERY {
            w.retention().await;
        }
        if w.last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
            w.heartbeat(None, &stopped_at).await;
        }
        match first_at {
            Some(t) => {
                rt::time::until(t + FLUSH_AFTER, bell.notified()).await;
            }
            None => {
                // Asleep until rows come, the channels close, or the next duty above.
                let duty =
                    (w.last_retention + RETENTION_EVERY).min(w.last_heartbeat + HEARTBEAT_EVERY);
                rt::time::until(duty, bell.notified()).await;
            }
        }
    }
    w.record_end(&stopped_at).await;
    w.status.borrow_mut().connected = false;
}

/// Resolves once `grace` has passed since the stop (never before a stop).
/// How long the run's end record may take (it comes after the shutdown grace when PostgreSQL
/// is failing, and only delays the exit).
const END_RECORD_BOUND: Duration = Duration::from_secs(2);

/// Runs `op`, cut short when the shutdown grace ends: an operation under way at a stop ends
/// with the grace at the latest.
async fn within_grace<T>(
    stopped_at: &Cell<Option<Instant>>,
    grace: Duration,
    op: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    let started = Instant::now();
    let cut = async {
        grace_over(stopped_at, grace).await;
        Err(DbError::Timeout(started.elapsed()))
    };
    futures_lite::future::or(op, cut).await
}

async fn grace_over(stopped_at: &Cell<Option<Instant>>, grace: Duration) {
    const CHECK_EVERY: Duration = Duration::from_millis(100);
    loop {
        let wait = match stopped_at.get() {
            Some(t) => match (t + grace).checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => return,
            },
            None => CHECK_EVERY,
        };
        glommio::timer::sleep(wait.min(CHECK_EVERY)).await;
    }
}

struct Writer {
    cfg: WriterConfig,
    /// The connection, with the batch's statements prepared on it.
    client: Option<(Conn, Prepared)>,
    batch_seq: i64,
    backlogs: Vec<Arc<Backlog>>,
    status: Rc<RefCell<WriterStatus>>,
    last_retention: Instant,
    last_heartbeat: Instant,
    backoff: Duration,
}

impl Writer {
    async fn ensure_client(&mut self) -> Result<(), DbError> {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_usable()) {
            return Ok(());
        }
        self.client = None;
        self.status.borrow_mut().connected = false;
        let t = self.cfg.db_timeout;
        let client = super::connect(&self.cfg.pg, t, Some(super::statement_timeout_for(t))).await?;
        let prepared = Prepared::new(&client).await?;
        self.client = Some((client, prepared));
        self.status.borrow_mut().connected = true;
        tracing::info!(db = %super::redacted(&self.cfg.pg), "writer connected to postgres");
        Ok(())
    }

    /// Writes `batch` (then clears it), retrying until it lands or the shutdown grace ends.
    /// Each attempt is bounded by `db_timeout` and, after a stop, by the end of the grace.
    async fn flush(&mut self, batch: &mut Vec<EventRow>, stopped_at: &Cell<Option<Instant>>) {
        self.batch_seq += 1;
        let seq = self.batch_seq;
        let mut attempt = 0u32;
        loop {
            let now = Instant::now();
            let give_up_at = stopped_at.get().map(|t| t + self.cfg.shutdown_grace);
            if give_up_at.is_some_and(|t| now >= t) {
                self.dropped(batch);
                batch.clear();
                return;
            }
            attempt += 1;
            let grace = self.cfg.shutdown_grace;
            let attempt_once = super::within(self.cfg.db_timeout, async {
                self.ensure_client().await?;
                self.write_once(batch, seq, attempt > 1)
                    .await
                    .map_err(DbError::Failed)
            });
            let result = within_grace(stopped_at, grace, attempt_once).await;
            match result {
                Ok(()) => {
                    self.committed(batch);
                    self.backoff = Duration::from_millis(50);
                    batch.clear();
                    return;
                }
                Err(e) => {
                    metrics::counter!(m::DB_WRITE_ERRORS_TOTAL, "kind" => e.kind()).increment(1);
                    {
                        let mut st = self.status.borrow_mut();
                        st.errors += 1;
                        st.last_error = Some(e.to_string());
                    }
                    tracing::warn!(error = %e, kind = e.kind(), rows = batch.len(), attempt, "postgres write failed; retrying");
                    self.drop_client_if(&e);
                    glommio::timer::sleep(self.backoff).await;
                    // Capped low: the retry after Postgres returns starts within this, and the
                    // promise is rows flowing again within a second of its return. A refused
                    // connection four times a second costs Postgres nothing.
                    self.backoff = (self.backoff * 2).min(WRITE_RETRY_MAX);
                }
            }
        }
    }

    /// After a failure: a timed-out connection is not trusted again, a closed one is gone.
    fn drop_client_if(&mut self, e: &DbError) {
        if let Some((c, _)) = &self.client {
            if e.breaks_connection() {
                c.mark_broken();
            }
            if !c.is_usable() {
                self.client = None;
                self.status.borrow_mut().connected = false;
            }
        }
    }

    fn committed(&mut self, batch: &[EventRow]) {
        let mut per_shard: HashMap<usize, i64> = HashMap::new();
        let mut oldest = i64::MAX;
        for r in batch {
            *per_shard.entry(shard_of(r.event_id)).or_default() += 1;
            oldest = oldest.min(r.ts_micros);
        }
        for (shard, n) in per_shard {
            if let Some(b) = self.backlogs.get(shard) {
                b.pending.fetch_sub(n, Ordering::Relaxed);
                b.written.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        let lag = (time::unix_micros_now() - oldest).max(0) as f64 / 1e6;
        metrics::counter!(m::DB_ROWS_WRITTEN_TOTAL).increment(batch.len() as u64);
        metrics::histogram!(m::DB_BATCH_ROWS).record(batch.len() as f64);
        metrics::gauge!(m::DB_WRITER_LAG).set(lag);
        let mut st = self.status.borrow_mut();
        st.rows_written += batch.len() as u64;
        st.batches += 1;
        st.lag_seconds = lag;
    }

    fn dropped(&mut self, batch: &[EventRow]) {
        for r in batch {
            if let Some(b) = self.backlogs.get(shard_of(r.event_id)) {
                b.pending.fetch_sub(1, Ordering::Relaxed);
                b.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        metrics::counter!(m::DB_ROWS_DROPPED_TOTAL).increment(batch.len() as u64);
        self.status.borrow_mut().rows_dropped += batch.len() as u64;
        tracing::error!(
            rows = batch.len(),
            grace_seconds = self.cfg.shutdown_grace.as_secs(),
            "postgres still failing after the shutdown grace period: rows dropped"
        );
    }

    /// Events started and rows committed so far, all shards together.
    fn progress(&self) -> (i64, i64) {
        let (mut started, mut written) = (0u64, 0u64);
        for b in &self.backlogs {
            let w = b.written.load(Ordering::Relaxed);
            started += b.pending() + w + b.dropped.load(Ordering::Relaxed);
            written += w;
        }
        (started as i64, written as i64)
    }

    /// Records that the run is alive (`end`: None), or how it ended (`end`: the state and
    /// the rows that never reached PostgreSQL). Best effort: a failure is logged.
    async fn heartbeat(&mut self, end: Option<(&str, i64)>, stopped_at: &Cell<Option<Instant>>) {
        self.last_heartbeat = Instant::now();
        let (started, written) = self.progress();
        let run_id = self.cfg.run_id;
        // Bounded like every write, and never past the shutdown grace (the end record, made
        // after it, gets END_RECORD_BOUND): a frozen PostgreSQL must not hold up the writer.
        let limit = if end.is_some() {
            self.cfg.db_timeout.min(END_RECORD_BOUND)
        } else {
            self.cfg.db_timeout
        };
        let grace = self.cfg.shutdown_grace;
        let attempt = super::within(limit, async {
            self.ensure_client().await?;
            let Some((client, _)) = self.client.as_ref() else {
                return Err(DbError::NotConnected);
            };
            match end {
                None => client
                    .execute(
                        "UPDATE runs SET last_seen = now(), events_started = $2, \
                         rows_written = $3 WHERE run_id = $1",
                        &[&run_id, &started, &written],
                    )
                    .await
                    .map_err(DbError::from),
                Some((state, dropped)) => client
                    .execute(
                        "UPDATE runs SET last_seen = now(), events_started = $2, \
                         rows_written = $3, ended_at = now(), end_state = $4, rows_dropped = $5 \
                         WHERE run_id = $1",
                        &[&run_id, &started, &written, &state, &dropped],
                    )
                    .await
                    .map_err(DbError::from),
            }
        });
        let r = match end {
            None => within_grace(stopped_at, grace, attempt).await,
            // Made after the grace: bounded by `limit` alone.
            Some(_) => attempt.await,
        };
        match r {
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), ended = end.is_some(), "recording the run's progress failed");
                self.drop_client_if(&e);
            }
            Ok(_) => {
                if let Some((state, dropped)) = end {
                    tracing::info!(state, rows_dropped = dropped, "run end recorded");
                }
            }
        }
    }

    /// At the end: rows dropped after the shutdown grace, plus rows of events started that
    /// never reached the writer (still counted as pending), make the run end 'rows_dropped'.
    async fn record_end(&mut self, stopped_at: &Cell<Option<Instant>>) {
        let pending: u64 = self.backlogs.iter().map(|b| b.pending()).sum();
        let dropped = self.status.borrow().rows_dropped + pending;
        let state = if dropped == 0 {
            "clean"
        } else {
            "rows_dropped"
        };
        self.heartbeat(Some((state, dropped as i64)), stopped_at)
            .await;
    }

    /// One attempt at `batch` on the current connection (`batch::write`).
    async fn write_once(
        &mut self,
        batch: &[EventRow],
        seq: i64,
        retry: bool,
    ) -> Result<(), String> {
        let run_id = self.cfg.run_id;
        let progress = self.progress();
        let (client, prepared) = self.client.as_mut().ok_or("not connected")?;
        batch::write(client, prepared, run_id, batch, seq, retry, progress).await
    }

    /// Deletes what no counter can still need: events and rollups older than
    /// `TIME_BUCKETS` + 1 hours. Bounded by `db_timeout` like a batch.
    async fn retention(&mut self) {
        self.last_retention = Instant::now();
        let Some((client, _)) = self.client.as_ref() else {
            return;
        };
        let hours = f64::from(self.cfg.retention_hours + 1);
        let cutoff_bucket =
            time::bucket_hours_ago(time::unix_now() as i64, self.cfg.retention_hours + 1);
        let started = Instant::now();
        let r = super::within(self.cfg.db_timeout, async {
            let ev = client
                .execute(
                    "DELETE FROM events WHERE ts < now() - make_interval(secs => $1)",
                    &[&(hours * 3600.0)],
                )
                .await?;
            for sql in [
                "DELETE FROM event_rollups WHERE bucket < $1",
                "DELETE FROM run_rollups WHERE bucket < $1",
            ] {
                client.execute(sql, &[&cutoff_bucket]).await?;
            }
            client
                .execute(
                    "DELETE FROM writer_batches WHERE committed_at < now() - make_interval(secs => $1)",
                    &[&(hours * 3600.0)],
                )
                .await?;
            Ok::<u64, tokio_postgres::Error>(ev)
        })
        .await;
        metrics::histogram!(m::DB_QUERY_DURATION, "op" => "retention")
            .record(started.elapsed().as_secs_f64());
        match r {
            Ok(n) if n > 0 => tracing::info!(rows = n, "retention removed old events"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), "retention failed");
                self.drop_client_if(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_find_shard_in_event_id() {
        assert_eq!(shard_of((3 << 48) | 12345), 3);
        assert_eq!(shard_of(77), 0);
    }
}

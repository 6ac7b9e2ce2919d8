//! A shard's own read connection for cache misses and warmup, so reads never queue behind
//! the writer's COPYs. Queries from many tasks are pipelined on the one connection.
//!
//! Every read is bounded by `DB_READ_TIMEOUT_MS`, so a frozen or unreachable Postgres holds
//! an in-flight slot no longer than that. A read that times out drops the connection (it
//! cannot be trusted: an answer may still come for a query we gave up on). Without a
//! connection, reads fail fast while one reconnect at a time runs in the background, bounded
//! by `DB_TIMEOUT_MS` and spaced by a backoff of 50 ms doubling to 1 s.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Conn, DbError, PgConfig};
use tokio_postgres::Statement;

use crate::metrics as m;

struct ReadConn {
    conn: Conn,
    dashboard: Statement,
    filtered: Statement,
}

pub struct Reader {
    cfg: PgConfig,
    /// Bound of one reconnect (connect, login, `SET`, prepare).
    connect_timeout: Duration,
    /// Bound of one read; a little more than the session's `statement_timeout`.
    read_timeout: Duration,
    conn: RefCell<Option<Rc<ReadConn>>>,
    connecting: Cell<bool>,
    next_attempt: Cell<Instant>,
    backoff: Cell<Duration>,
    shard: String,
}

/// Totals per event type (indexed by `EventType as usize`) over a window.
pub type TypeTotals = [i64; 5];

/// The read operations, for the `op` label.
pub const OPS: [&str; 2] = ["dashboard", "filtered"];

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Reader {
    pub fn new(
        cfg: PgConfig,
        connect_timeout: Duration,
        read_timeout: Duration,
        shard: usize,
    ) -> Rc<Reader> {
        let shard = shard.to_string();
        // Every (op, kind) series from the start, at zero.
        for op in OPS {
            for kind in DbError::READ_KINDS {
                metrics::counter!(m::DB_READ_ERRORS_TOTAL, "op" => op, "kind" => kind, "shard" => shard.clone())
                    .absolute(0);
            }
        }
        Rc::new(Reader {
            cfg,
            connect_timeout,
            read_timeout,
            conn: RefCell::new(None),
            connecting: Cell::new(false),
            next_attempt: Cell::new(Instant::now()),
            backoff: Cell::new(BACKOFF_MIN),
            shard,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.conn
            .borrow()
            .as_ref()
            .is_some_and(|c| c.conn.is_usable())
    }

    /// Opens the connection now (at shard start), so the first queries do not fail fast.
    pub async fn connect_now(&self) -> Result<(), DbError> {
        self.reconnect().await
    }

    /// The connection, or `NotConnected` at once; then a reconnect starts in the background
    /// when none is running and the backoff allows.
    fn current(self: &Rc<Self>) -> Result<Rc<ReadConn>, DbError> {
        if let Some(c) = self.conn.borrow().as_ref() {
            if c.conn.is_usable() {
                return Ok(c.clone());
            }
        }
        *self.conn.borrow_mut() = None;
        if !self.connecting.get() && Instant::now() >= self.next_attempt.get() {
            let me = self.clone();
            glommio::spawn_local(async move {
                let _ = me.reconnect().await;
            })
            .detach();
        }
        Err(DbError::NotConnected)
    }

    async fn reconnect(&self) -> Result<(), DbError> {
        if self.connecting.replace(true) {
            return Err(DbError::NotConnected);
        }
        let r = super::within(self.connect_timeout, self.open()).await;
        self.connecting.set(false);
        match r {
            Ok(c) => {
                self.backoff.set(BACKOFF_MIN);
                *self.conn.borrow_mut() = Some(Rc::new(c));
                Ok(())
            }
            Err(e) => {
                let b = self.backoff.get();
                self.next_attempt.set(Instant::now() + b);
                self.backoff.set((b * 2).min(BACKOFF_MAX));
                tracing::debug!(shard = %self.shard, error = %e, "postgres read connection failed");
                Err(e)
            }
        }
    }

    async fn open(&self) -> Result<ReadConn, DbError> {
        let statement_timeout = super::statement_timeout_for(self.read_timeout);
        let conn = super::connect(&self.cfg, self.connect_timeout, Some(statement_timeout)).await?;
        let prepared = async {
            let dashboard = conn
                .prepare(
                    "SELECT event_type, sum(events)::int8 FROM event_rollups \
                     WHERE org_id = $1 AND bucket >= $2 GROUP BY event_type",
                )
                .await?;
            let filtered = conn
                .prepare(
                    "SELECT coalesce(sum(events), 0)::int8 FROM event_rollups \
                     WHERE org_id = $1 AND event_type = $2 AND bucket >= $3",
                )
                .await?;
            Ok::<_, tokio_postgres::Error>((dashboard, filtered))
        }
        .await;
        match prepared {
            Ok((dashboard, filtered)) => Ok(ReadConn {
                conn,
                dashboard,
                filtered,
            }),
            Err(e) => {
                conn.mark_broken();
                Err(e.into())
            }
        }
    }

    /// Runs one read on the connection within the read timeout; counts a failure by kind.
    /// A timeout drops the connection: the next read fails fast and starts a reconnect.
    async fn read<T, F>(
        self: &Rc<Self>,
        op: &'static str,
        run: impl FnOnce(Rc<ReadConn>) -> F,
    ) -> Result<T, DbError>
    where
        F: std::future::Future<Output = Result<T, DbError>>,
    {
        let started = Instant::now();
        let result = match self.current() {
            Ok(c) => {
                let r = super::within(self.read_timeout, run(c.clone())).await;
                if r.as_ref().is_err_and(DbError::breaks_connection) {
                    c.conn.mark_broken();
                    let mut slot = self.conn.borrow_mut();
                    if slot.as_ref().is_some_and(|s| Rc::ptr_eq(s, &c)) {
                        *slot = None;
                    }
                }
                r
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => metrics::histogram!(m::DB_QUERY_DURATION, "op" => op)
                .record(started.elapsed().as_secs_f64()),
            Err(e) => {
                metrics::counter!(m::DB_READ_ERRORS_TOTAL, "op" => op, "kind" => e.kind(), "shard" => self.shard.clone())
                    .increment(1);
            }
        }
        result
    }

    /// Event totals per type for `org` from bucket `from_bucket` on.
    pub async fn dashboard(
        self: &Rc<Self>,
        org: i32,
        from_bucket: i32,
    ) -> Result<TypeTotals, DbError> {
        self.read("dashboard", |c| async move {
            let rows = c.conn.query(&c.dashboard, &[&org, &from_bucket]).await?;
            let mut totals = [0i64; 5];
            for row in rows {
                let ty: i16 = row.try_get(0)?;
                let n: i64 = row.try_get(1)?;
                if let Some(slot) = usize::try_from(ty).ok().and_then(|i| totals.get_mut(i)) {
                    *slot = n;
                }
            }
            Ok(totals)
        })
        .await
    }

    /// Events of one type for `org` from bucket `from_bucket` on.
    pub async fn filtered(
        self: &Rc<Self>,
        org: i32,
        ty: i16,
        from_bucket: i32,
    ) -> Result<i64, DbError> {
        self.read("filtered", |c| async move {
            let row = c
                .conn
                .query_one(&c.filtered, &[&org, &ty, &from_bucket])
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }
}

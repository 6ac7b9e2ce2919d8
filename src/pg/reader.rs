//! A shard's own read connection for cache misses and warmup, so reads never queue behind
//! the writer's COPYs. Queries from many tasks are pipelined on the one connection.
//! When Postgres is away, calls fail fast while one reconnect attempt runs at a time.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::PgConfig;
use tokio_postgres::{Client, Statement};

use crate::metrics as m;

struct Conn {
    client: Rc<Client>,
    dashboard: Statement,
    filtered: Statement,
}

pub struct Reader {
    cfg: PgConfig,
    connect_timeout: Duration,
    conn: RefCell<Option<Rc<Conn>>>,
    connecting: Cell<bool>,
    next_attempt: Cell<Instant>,
    backoff: Cell<Duration>,
    shard: String,
}

/// Totals per event type (indexed by `EventType as usize`) over a window.
pub type TypeTotals = [i64; 5];

impl Reader {
    pub fn new(cfg: PgConfig, connect_timeout: Duration, shard: usize) -> Rc<Reader> {
        Rc::new(Reader {
            cfg,
            connect_timeout,
            conn: RefCell::new(None),
            connecting: Cell::new(false),
            next_attempt: Cell::new(Instant::now()),
            backoff: Cell::new(Duration::from_millis(50)),
            shard: shard.to_string(),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.conn
            .borrow()
            .as_ref()
            .is_some_and(|c| !c.client.is_closed())
    }

    /// Opens the connection now (at shard start), so the first queries do not fail fast.
    pub async fn connect_now(&self) -> Result<(), String> {
        self.conn().await.map(|_| ())
    }

    async fn conn(&self) -> Result<Rc<Conn>, String> {
        if let Some(c) = self.conn.borrow().as_ref() {
            if !c.client.is_closed() {
                return Ok(c.clone());
            }
        }
        if self.connecting.get() || Instant::now() < self.next_attempt.get() {
            return Err("postgres not connected".into());
        }
        self.connecting.set(true);
        let r = self.open().await;
        self.connecting.set(false);
        match r {
            Ok(c) => {
                self.backoff.set(Duration::from_millis(50));
                *self.conn.borrow_mut() = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                *self.conn.borrow_mut() = None;
                let b = self.backoff.get();
                self.next_attempt.set(Instant::now() + b);
                self.backoff.set((b * 2).min(Duration::from_secs(1)));
                Err(e)
            }
        }
    }

    async fn open(&self) -> Result<Rc<Conn>, String> {
        let client = super::connect(&self.cfg, self.connect_timeout).await?;
        let d = |e: tokio_postgres::Error| super::describe(&e);
        let dashboard = client
            .prepare(
                "SELECT event_type, sum(events)::int8 FROM event_rollups \
                 WHERE org_id = $1 AND bucket >= $2 GROUP BY event_type",
            )
            .await
            .map_err(d)?;
        let filtered = client
            .prepare(
                "SELECT coalesce(sum(events), 0)::int8 FROM event_rollups \
                 WHERE org_id = $1 AND event_type = $2 AND bucket >= $3",
            )
            .await
            .map_err(d)?;
        Ok(Rc::new(Conn {
            client: Rc::new(client),
            dashboard,
            filtered,
        }))
    }

    fn failed(&self, op: &'static str, e: String) -> String {
        metrics::counter!(m::DB_READ_ERRORS_TOTAL, "op" => op, "shard" => self.shard.clone())
            .increment(1);
        e
    }

    /// Event totals per type for `org` from bucket `from_bucket` on.
    pub async fn dashboard(&self, org: i32, from_bucket: i32) -> Result<TypeTotals, String> {
        let started = Instant::now();
        let c = self.conn().await.map_err(|e| self.failed("dashboard", e))?;
        let rows = c
            .client
            .query(&c.dashboard, &[&org, &from_bucket])
            .await
            .map_err(|e| self.failed("dashboard", super::describe(&e)))?;
        let mut totals = [0i64; 5];
        for row in rows {
            let ty: i16 = row.try_get(0).map_err(|e| super::describe(&e))?;
            let n: i64 = row.try_get(1).map_err(|e| super::describe(&e))?;
            if let Some(slot) = usize::try_from(ty).ok().and_then(|i| totals.get_mut(i)) {
                *slot = n;
            }
        }
        metrics::histogram!(m::DB_QUERY_DURATION, "op" => "dashboard")
            .record(started.elapsed().as_secs_f64());
        Ok(totals)
    }

    /// Events of one type for `org` from bucket `from_bucket` on.
    pub async fn filtered(&self, org: i32, ty: i16, from_bucket: i32) -> Result<i64, String> {
        let started = Instant::now();
        let c = self.conn().await.map_err(|e| self.failed("filtered", e))?;
        let row = c
            .client
            .query_one(&c.filtered, &[&org, &ty, &from_bucket])
            .await
            .map_err(|e| self.failed("filtered", super::describe(&e)))?;
        let n: i64 = row.try_get(0).map_err(|e| super::describe(&e))?;
        metrics::histogram!(m::DB_QUERY_DURATION, "op" => "filtered")
            .record(started.elapsed().as_secs_f64());
        Ok(n)
    }
}

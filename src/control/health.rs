//! Dependency checks for /health: a PING on our own Redis connection and a `SELECT 1` on
//! our own Postgres connection, once a second, so /health answers instantly.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::resp::{Connection, PoolConfig, RedisUrl};

#[derive(Serialize, Clone, Debug, Default)]
pub struct DepStatus {
    pub status: &'static str,
    pub endpoint: String,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    pub checked_seconds_ago: Option<f64>,
    /// Redis only: the RESP version the check's connection negotiated (2 or 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    #[serde(skip)]
    pub checked_at: Option<Instant>,
}

impl DepStatus {
    fn checked(endpoint: String, latency_ms: Option<f64>, error: Option<String>) -> DepStatus {
        DepStatus {
            status: if error.is_none() { "up" } else { "down" },
            endpoint,
            latency_ms,
            error,
            checked_seconds_ago: None,
            protocol: None,
            checked_at: Some(Instant::now()),
        }
    }

    pub fn is_up(&self) -> bool {
        self.status == "up"
    }
}

#[derive(Default)]
pub struct Health {
    pub redis: DepStatus,
    pub postgres: DepStatus,
}

const CHECK_EVERY: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_millis(900);

/// Checks Redis at the current target (`target()` is read before every check, so a
/// switched target is checked from the next second on).
pub async fn redis_loop(
    health: Rc<RefCell<Health>>,
    target: impl Fn() -> RedisUrl,
    mut cfg: PoolConfig,
) {
    cfg.command_timeout = CHECK_TIMEOUT;
    cfg.connect_timeout = CHECK_TIMEOUT;
    let mut conn: Option<(RedisUrl, Rc<Connection>)> = None;
    let mut logged_protocol = None;
    loop {
        let url = target();
        let started = Instant::now();
        if conn
            .as_ref()
            .is_some_and(|(u, c)| *u != url || c.is_closed())
        {
            conn = None;
        }
        let result = match &conn {
            Some((_, c)) => c.cmd(&[b"PING"]).await.map(|_| ()),
            None => match Connection::connect(&url, &cfg).await {
                Ok(c) => {
                    let r = c.cmd(&[b"PING"]).await.map(|_| ());
                    conn = Some((url.clone(), c));
                    r
                }
                Err(e) => Err(e),
            },
        };
        let status = match result {
            Ok(()) => {
                let mut s = DepStatus::checked(
                    url.redacted(),
                    Some(started.elapsed().as_secs_f64() * 1000.0),
                    None,
                );
                s.protocol = conn.as_ref().map(|(_, c)| c.protocol());
                if let Some(p) = s.protocol.filter(|p| Some(*p) != logged_protocol) {
                    logged_protocol = Some(p);
                    tracing::info!(url = %url, protocol = p, "redis speaks RESP{p}");
                }
                s
            }
            Err(e) => {
                conn = None;
                DepStatus::checked(url.redacted(), None, Some(format!("{} ({})", e, e.kind())))
            }
        };
        health.borrow_mut().redis = status;
        glommio::timer::sleep(CHECK_EVERY).await;
    }
}

pub async fn postgres_loop(health: Rc<RefCell<Health>>, cfg: crate::pg::PgConfig) {
    let endpoint = crate::pg::redacted(&cfg);
    let mut client: Option<crate::pg::Conn> = None;
    loop {
        let started = Instant::now();
        if client.as_ref().is_some_and(|c| !c.is_usable()) {
            client = None;
        }
        // Connecting and the query together stay within the check's timeout, so a frozen
        // server shows as down within a second, like a stopped one.
        let result = crate::pg::within(CHECK_TIMEOUT, async {
            if client.is_none() {
                client = Some(crate::pg::connect(&cfg, CHECK_TIMEOUT, None).await?);
            }
            let c = client.as_ref().ok_or(crate::pg::DbError::NotConnected)?;
            c.simple_query("SELECT 1").await?;
            Ok::<(), crate::pg::DbError>(())
        })
        .await;
        let status = match result {
            Ok(()) => DepStatus::checked(
                endpoint.clone(),
                Some(started.elapsed().as_secs_f64() * 1000.0),
                None,
            ),
            Err(e) => {
                if let Some(c) = client.take() {
                    c.mark_broken();
                }
                DepStatus::checked(endpoint.clone(), None, Some(e.to_string()))
            }
        };
        health.borrow_mut().postgres = status;
        glommio::timer::sleep(CHECK_EVERY).await;
    }
}

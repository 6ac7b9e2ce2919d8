//! PostgreSQL: the source of truth. tokio-postgres runs on glommio through `connect_raw`
//! over a glommio TCP stream (no tokio reactor needed), so the writer core and the shards'
//! read connections live on the same executors as everything else.

pub mod reader;
pub mod writer;

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// Schema files, applied in order. Each is idempotent.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../sql/001_schema.sql"))];

/// Parses a `postgres://` URL or key=value string into a driver config.
pub fn parse_config(url: &str) -> Result<Config, String> {
    Config::from_str(url).map_err(|e| format!("invalid DATABASE_URL: {e}"))
}

/// Where to connect, for logs and /health: `host:port/db` with no user or password.
pub fn redacted(cfg: &Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{host}:{port}/{}",
        cfg.get_dbname().unwrap_or("postgres")
    )
}

async fn resolve(host: String, port: u16) -> std::io::Result<SocketAddr> {
    let found = glommio::executor()
        .spawn_blocking(move || {
            (host.as_str(), port)
                .to_socket_addrs()
                .map(|mut a| a.next())
        })
        .await?;
    found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address found"))
}

/// Opens one connection on the current glommio executor and spawns its driver task.
pub async fn connect(cfg: &Config, timeout: Duration) -> Result<Client, String> {
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(_)) => {
            return Err("unix-socket DATABASE_URL is not supported; use host=127.0.0.1".into())
        }
        None => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let addr = resolve(host.clone(), port)
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let stream = glommio::net::TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (client, conn) = glommio::timer::timeout(timeout, async {
        cfg.connect_raw(stream.compat(), NoTls)
            .await
            .map_err(|e| glommio::GlommioError::IoError(std::io::Error::other(describe(&e))))
    })
    .await
    .map_err(|e| format!("postgres handshake: {e}"))?;
    glommio::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %describe(&e), "postgres connection ended");
        }
    })
    .detach();
    Ok(client)
}

/// A one-line description of a driver error (its Display alone says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// Applies the schema files not yet recorded, under an advisory lock.
pub async fn apply_schema(client: &Client) -> Result<(), String> {
    let run = |sql: &'static str| async move {
        client.batch_execute(sql).await.map_err(|e| describe(&e))
    };
    run("SELECT pg_advisory_lock(727274); \
         CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now())")
    .await?;
    let result = async {
        for &(version, sql) in MIGRATIONS {
            let done = client
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[&version],
                )
                .await
                .map_err(|e| describe(&e))?;
            if done.is_none() {
                client.batch_execute(sql).await.map_err(|e| describe(&e))?;
                client
                    .execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING",
                        &[&version],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                tracing::info!(version, "applied schema migration");
            }
        }
        Ok(())
    }
    .await;
    run("SELECT pg_advisory_unlock(727274)").await?;
    result
}

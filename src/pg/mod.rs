//! PostgreSQL: the source of truth. tokio-postgres runs on glommio through `connect_raw`
//! over a glommio TCP stream (no tokio reactor needed), so the writer core and the shards'
//! read connections live on the same executors as everything else.

pub mod reader;
#[cfg(test)]
mod timeout_tests;
mod tls;
pub mod writer;

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::io::AsRawFd;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;
use tokio_postgres::config::Host;
use tokio_postgres::tls::TlsConnect;
use tokio_postgres::{Client, Config, NoTls};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::tls::{PemPath, TlsFiles, Verify};

/// Schema files, applied in order. Each is idempotent.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../sql/001_schema.sql")),
    (2, include_str!("../../sql/002_runs_verdict.sql")),
    (3, include_str!("../../sql/003_scaled_runs.sql")),
];

/// `sslmode` of DATABASE_URL, with libpq's meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, else plain; the certificate is not checked (default).
    Prefer,
    /// TLS or fail; the certificate is not checked.
    Require,
    /// TLS, certificate signed by a trusted CA (any host name).
    VerifyCa,
    /// TLS, certificate signed by a trusted CA and valid for the host.
    VerifyFull,
}

impl SslMode {
    const NAMES: [(&'static str, SslMode); 5] = [
        ("disable", SslMode::Disable),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    fn parse(text: &str) -> Result<SslMode, String> {
        if let Some((_, m)) = Self::NAMES.iter().find(|(n, _)| *n == text) {
            return Ok(*m);
        }
        let shown: String = text.escape_debug().take(40).collect();
        let why = if text == "allow" {
            "'allow' is not supported"
        } else {
            "unknown value"
        };
        Err(format!(
            "sslmode '{shown}': {why} (expected disable, prefer, require, verify-ca or verify-full)"
        ))
    }

    fn verify(self) -> Verify {
        match self {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Verify::None,
            SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::Full,
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("prefer", |(n, _)| n)
    }
}

/// Where and how to reach PostgreSQL: the driver's settings, TLS and credentials. Built (and
/// its files read) once at startup; cheap to clone.
#[derive(Clone)]
pub struct PgConfig {
    /// The driver's settings: `sslmode` mapped to what it knows, password applied.
    pub driver: Config,
    pub sslmode: SslMode,
    files: TlsFiles,
    /// `None` with `sslmode=disable`.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Query parameters of DATABASE_URL that we handle (the driver knows none but `sslmode`,
/// and not all of its values).
const OUR_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl PgConfig {
    /// Parses a `postgres://` URL. `url_label` names the option that gave it; `password`
    /// (from DATABASE_PASSWORD or its file) replaces the URL's; `ca_file`
    /// (DATABASE_CA_FILE) replaces `sslrootcert`. TLS files are read and checked here.
    ///
    /// `sslrootcert=system` means the system store, as does giving no CA at all.
    pub fn parse(
        url: &str,
        url_label: &str,
        password: Option<&str>,
        ca_file: Option<PemPath>,
    ) -> Result<PgConfig, PgConfigError> {
        let bad_url = PgConfigError::Url;
        let mut u = url::Url::parse(url).map_err(|e| bad_url(format!("not a URL ({e})")))?;
        let mut ours: Vec<(String, String)> = Vec::new();
        let rest: Vec<(String, String)> = u
            .query_pairs()
            .filter_map(|(k, v)| {
                if OUR_PARAMS.contains(&k.as_ref()) {
                    ours.push((k.into_owned(), v.into_owned()));
                    None
                } else {
                    Some((k.into_owned(), v.into_owned()))
                }
            })
            .collect();
        if rest.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(rest);
        }
        let param = |name: &str| {
            ours.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let sslmode = match param("sslmode") {
            Some(m) => SslMode::parse(m).map_err(bad_url)?,
            None => SslMode::Prefer,
        };
        let mut driver = Config::from_str(u.as_str()).map_err(|e| bad_url(describe(&e)))?;
        driver.ssl_mode(match sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if let Some(pw) = password {
            driver.password(pw);
        }
        let in_url = |p: &str| format!("{p} in {url_label}");
        let ca = ca_file.or_else(|| {
            param("sslrootcert")
                .filter(|p| *p != "system")
                .map(|p| PemPath::new(in_url("sslrootcert"), p))
        });
        let files = TlsFiles::load(
            ca,
            param("sslcert").map(|p| PemPath::new(in_url("sslcert"), p)),
            param("sslkey").map(|p| PemPath::new(in_url("sslkey"), p)),
            [&in_url("sslcert"), &in_url("sslkey")],
        )
        .map_err(PgConfigError::Files)?;
        let tls = match sslmode {
            SslMode::Disable => None,
            m => Some(
                files
                    .client_config(m.verify())
                    .map_err(PgConfigError::Files)?,
            ),
        };
        Ok(PgConfig {
            driver,
            sslmode,
            files,
            tls,
        })
    }
}

/// Why [`PgConfig::parse`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgConfigError {
    /// The URL itself (the message does not repeat it).
    Url(String),
    /// A TLS file; the message names the option and the file.
    Files(String),
}

impl std::fmt::Display for PgConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgConfigError::Url(m) | PgConfigError::Files(m) => f.write_str(m),
        }
    }
}

impl PartialEq for PgConfig {
    fn eq(&self, other: &PgConfig) -> bool {
        self.driver == other.driver && self.sslmode == other.sslmode && self.files == other.files
    }
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The driver's own Debug hides the password.
        f.debug_struct("PgConfig")
            .field("driver", &self.driver)
            .field("sslmode", &self.sslmode)
            .field("files", &self.files)
            .finish()
    }
}

/// Where to connect, for logs and /health: `host:port/db` with no user or password (and the
/// sslmode when it is not the default).
pub fn redacted(cfg: &PgConfig) -> String {
    let d = &cfg.driver;
    let host = match d.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = d.get_ports().first().copied().unwrap_or(5432);
    let mode = match cfg.sslmode {
        SslMode::Prefer => String::new(),
        m => format!("?sslmode={}", m.name()),
    };
    format!(
        "postgres://{host}:{port}/{}{mode}",
        d.get_dbname().unwrap_or("postgres")
    )
}

async fn resolve(host: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let found = glommio::executor()
        .spawn_blocking(move || {
            (host.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>())
        })
        .await?;
    if found.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address found",
        ));
    }
    Ok(found)
}

/// How a PostgreSQL operation failed: the `kind` label of the error counters, and a message
/// for logs (never with credentials: the driver's errors and ours name no password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// No answer within the bound. The connection is dropped: a frozen or unreachable server's
    /// connection cannot be trusted (a reply may still arrive for a request we gave up on).
    Timeout(Duration),
    /// The server cancelled a statement that ran past the session's `statement_timeout`; the
    /// connection is fine.
    StatementTimeout(String),
    /// No connection could be opened (refused, unresolvable, TLS or login failed).
    Connect(String),
    /// Reads only: no connection, and the next attempt is not due yet or is under way (reads
    /// fail fast meanwhile instead of waiting).
    NotConnected,
    /// The server answered with an error, or the connection broke.
    Failed(String),
}

impl DbError {
    /// The `kind` values a read can fail with (reads never connect themselves), and those of
    /// writer operations: every series is created at zero.
    pub const READ_KINDS: [&'static str; 3] = ["timeout", "not_connected", "error"];
    pub const WRITE_KINDS: [&'static str; 3] = ["timeout", "connect", "error"];

    pub fn kind(&self) -> &'static str {
        match self {
            DbError::Timeout(_) | DbError::StatementTimeout(_) => "timeout",
            DbError::Connect(_) => "connect",
            DbError::NotConnected => "not_connected",
            DbError::Failed(_) => "error",
        }
    }

    /// Either side gave up waiting.
    pub fn is_timeout(&self) -> bool {
        self.kind() == "timeout"
    }

    /// The client gave up waiting: the connection must not be used again.
    pub fn breaks_connection(&self) -> bool {
        matches!(self, DbError::Timeout(_))
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Timeout(d) => write!(f, "no answer from postgres within {d:?}"),
            DbError::StatementTimeout(m) => write!(f, "statement timeout: {m}"),
            DbError::Connect(m) => write!(f, "cannot connect to postgres: {m}"),
            DbError::NotConnected => f.write_str("postgres not connected"),
            DbError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        // We never send cancel requests: a cancelled statement ran past `statement_timeout`.
        if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
            DbError::StatementTimeout(describe(&e))
        } else {
            DbError::Failed(describe(&e))
        }
    }
}

/// The `statement_timeout` for a client-side bound of `limit`: a little shorter, so that on a
/// live but slow server the server cancels the statement (and the connection stays usable)
/// before the client gives up on the connection.
pub fn statement_timeout_for(limit: Duration) -> Duration {
    (limit * 9 / 10).max(Duration::from_millis(1))
}

impl From<DbError> for String {
    fn from(e: DbError) -> String {
        e.to_string()
    }
}

/// Runs `op` for at most `limit`: the client's own bound, which holds even when the server is
/// frozen and can enforce nothing (`statement_timeout` covers the other case, a live server
/// with a slow statement). Dropping `op` at the limit cancels whatever it awaited.
pub async fn within<T, E: Into<DbError>>(
    limit: Duration,
    op: impl Future<Output = Result<T, E>>,
) -> Result<T, DbError> {
    match crate::rt::time::timeout(limit, op).await {
        Some(done) => done.map_err(Into::into),
        None => Err(DbError::Timeout(limit)),
    }
}

/// TCP keepalive on PostgreSQL sockets: an idle connection to a host that went away (network
/// cut, machine gone) is found dead after about `KEEPALIVE_IDLE + KEEPALIVE_COUNT *
/// KEEPALIVE_INTERVAL` (30 s) instead of the system's two hours. A frozen server process is
/// not found this way (its kernel still answers probes): the timeouts handle that case.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_COUNT: u32 = 3;

fn set_keepalive(fd: std::os::unix::io::RawFd) -> std::io::Result<()> {
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt on an open socket we own, with a pointer to a live c_int and its
        // size; the kernel copies the value.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        KEEPALIVE_IDLE.as_secs() as libc::c_int,
    )?;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        KEEPALIVE_INTERVAL.as_secs() as libc::c_int,
    )?;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        KEEPALIVE_COUNT as libc::c_int,
    )
}

/// One connection: the driver's client and its connection task. Derefs to the client.
pub struct Conn {
    client: Client,
    driver: glommio::task::JoinHandle<()>,
    broken: std::cell::Cell<bool>,
}

impl Conn {
    /// Marks the connection as not to be trusted (an operation on it timed out): it is no
    /// longer usable, and dropping it stops its task and closes the socket at once, instead
    /// of leaving the task waiting on a server that may never answer.
    pub fn mark_broken(&self) {
        self.broken.set(true);
    }

    /// Neither closed nor marked broken.
    pub fn is_usable(&self) -> bool {
        !self.broken.get() && !self.client.is_closed()
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A healthy connection's task ends by itself once the client is gone (it says goodbye
        // to the server first); a broken one's might wait forever.
        if self.broken.get() {
            self.driver.cancel();
        }
    }
}

/// Opens one connection on the current glommio executor and spawns its driver task, all
/// within `limit` (resolving, TCP, TLS, login, and the `SET`). With `statement_timeout`, the
/// server cancels any statement of this session that runs longer (see
/// [`statement_timeout_for`]).
pub async fn connect(
    cfg: &PgConfig,
    limit: Duration,
    statement_timeout: Option<Duration>,
) -> Result<Conn, DbError> {
    let deadline = Instant::now() + limit;
    let left = || deadline.saturating_duration_since(Instant::now());
    let host = match cfg.driver.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(_)) => {
            return Err(DbError::Connect(
                "unix-socket DATABASE_URL is not supported; use host=127.0.0.1".into(),
            ))
        }
        None => "localhost".to_string(),
    };
    let port = cfg.driver.get_ports().first().copied().unwrap_or(5432);
    let addrs = within(left(), async {
        resolve(host.clone(), port)
            .await
            .map_err(|e| DbError::Connect(format!("resolving {host}: {e}")))
    })
    .await?;
    // Every address in turn: `localhost` may resolve to ::1 first, the server listen on 127.0.0.1.
    let mut last = String::new();
    let mut connected = None;
    for addr in addrs {
        let wait = left();
        if wait.is_zero() {
            return Err(DbError::Timeout(limit));
        }
        match glommio::net::TcpStream::connect_timeout(addr, wait).await {
            Ok(s) => {
                connected = Some(s);
                break;
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    let stream = connected.ok_or(DbError::Connect(last))?;
    let _ = stream.set_nodelay(true);
    if let Err(e) = set_keepalive(stream.as_raw_fd()) {
        tracing::debug!(error = %e, "postgres socket: cannot set TCP keepalive");
    }
    let conn = match &cfg.tls {
        None => start(cfg, stream, NoTls, left()).await,
        Some(config) => {
            let name = crate::tls::server_name(&host).map_err(DbError::Connect)?;
            let config = config.clone();
            start(cfg, stream, tls::PgTls { config, name }, left()).await
        }
    }
    .map_err(|e| match e {
        DbError::Timeout(_) => DbError::Timeout(limit),
        e => e,
    })?;
    if let Some(t) = statement_timeout {
        let set = format!("SET statement_timeout = {}", t.as_millis().max(1));
        if let Err(e) = within(left(), conn.batch_execute(&set)).await {
            conn.mark_broken();
            return Err(match e {
                DbError::Timeout(_) => DbError::Timeout(limit),
                e => e,
            });
        }
    }
    Ok(conn)
}

/// Startup (TLS, authentication) within `limit`, then the driver task.
async fn start<T>(
    cfg: &PgConfig,
    stream: TcpStream,
    tls: T,
    limit: Duration,
) -> Result<Conn, DbError>
where
    T: TlsConnect<Compat<TcpStream>>,
    T::Stream: 'static,
{
    let handshake = async {
        cfg.driver
            .connect_raw(stream.compat(), tls)
            .await
            .map_err(|e| DbError::Connect(format!("postgres handshake: {}", describe(&e))))
    };
    let (client, conn) = within(limit, handshake).await?;
    let driver = glommio::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %describe(&e), "postgres connection ended");
        }
    })
    .detach();
    Ok(Conn {
        client,
        driver,
        broken: std::cell::Cell::new(false),
    })
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

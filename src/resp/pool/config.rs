//! A pool's settings, its target (one server or a cluster's seeds), and the run every
//! workload connection declares before it takes a command.

use crate::resp::conn::Connection;
use crate::resp::{Protocol, RedisError, RedisUrl, Reply};
use std::sync::Arc;
use std::time::Duration;

/// Pool settings; see the field docs for units and meaning.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Connections in this pool (at least 1).
    pub size: usize,
    /// Per command, from enqueue to reply.
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    /// A reply larger than this is a connection error (`reply_too_large`).
    pub max_reply_bytes: usize,
    /// Reconnect backoff floor.
    pub backoff_min: Duration,
    /// Reconnect backoff cap.
    pub backoff_max: Duration,
    /// Metric label "shard".
    pub shard: usize,
    /// RESP version to negotiate (`--redis-protocol`).
    pub protocol: Protocol,
    /// TLS settings for `rediss://` targets (`None`: system CAs, no client certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The workload's pools declare their run on every connection they open (see
    /// [`RunDeclaration`]); `None` for `verify`, `bench-redis` and health probes.
    pub declare_run: Option<RunDeclaration>,
}

/// The key every workload run declares itself in: a sorted set of run ids scored by their
/// start (unix seconds). It travels with the data (a replica, a copy, a dump), so `verify`
/// judges a target against the runs that actually wrote to it.
pub const RUNS_KEY: &[u8] = b"a:runs";

/// Where a pool sends its commands: one server, or a Redis Cluster reached through its
/// seed nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub(super) seeds: Vec<RedisUrl>,
    pub(super) cluster: bool,
}

impl Target {
    /// One server.
    pub fn standalone(url: RedisUrl) -> Target {
        Target {
            seeds: vec![url],
            cluster: false,
        }
    }

    /// One server (`cluster` false: `seeds` must then name one) or a Redis Cluster reached
    /// through `seeds`; `None` when that does not hold.
    pub fn new(seeds: Vec<RedisUrl>, cluster: bool) -> Option<Target> {
        let fits = match cluster {
            true => !seeds.is_empty(),
            false => seeds.len() == 1,
        };
        fits.then_some(Target { seeds, cluster })
    }

    /// The server, or the first seed: the template of every cluster node's URL.
    pub fn first(&self) -> &RedisUrl {
        &self.seeds[0]
    }

    pub fn seeds(&self) -> &[RedisUrl] {
        &self.seeds
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The URLs without their passwords, comma separated: how reports and metrics name it.
    pub fn label(&self) -> String {
        let urls: Vec<String> = self.seeds.iter().map(RedisUrl::redacted).collect();
        urls.join(",")
    }

    /// The URLs with their passwords, comma separated (for a switch request's body only).
    pub fn to_full_string(&self) -> String {
        let urls: Vec<String> = self.seeds.iter().map(RedisUrl::to_full_string).collect();
        urls.join(",")
    }
}

/// How often a live connection declares its run again, so the key outlives the run's last
/// counters however long the run and its connections last.
pub(super) const DECLARE_EVERY: Duration = Duration::from_secs(600);

/// What a connection of a workload pool writes before it takes commands:
/// `ZADD a:runs <start> <run_id>` and `EXPIRE a:runs <ttl>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDeclaration {
    pub run_id: i64,
    /// Unix seconds at which the run started.
    pub start_unix: i64,
    /// At least the lifetime of a counter written now (`TIME_BUCKETS` + 1 hours) plus the
    /// time between two declarations; see [`RunDeclaration::new`].
    pub ttl_seconds: u64,
}

impl RunDeclaration {
    /// A counter lives until its hour ends plus `time_buckets` hours; the key gets that, one
    /// more hour, and the re-declaration period on top.
    pub fn new(run_id: i64, start_unix: i64, time_buckets: u32) -> RunDeclaration {
        RunDeclaration {
            run_id,
            start_unix,
            ttl_seconds: (u64::from(time_buckets) + 2) * 3600 + DECLARE_EVERY.as_secs(),
        }
    }

    /// Sends the declaration on `conn`. A server error reply is returned as such (its kind
    /// counts, e.g. `loading`); anything else as a connect error naming the step.
    ///
    /// A replica refuses the write (READONLY), and every counter write with it; in a
    /// cutover it is switched to before its promotion. It declares the run when it has
    /// replicated the declaration from the source (`ZSCORE`): then the connection is fine.
    /// Otherwise the READONLY error stands (the connection is not used).
    pub(crate) async fn send(&self, conn: &Connection) -> Result<(), RedisError> {
        let (score, member, ttl) = (
            self.start_unix.to_string(),
            self.run_id.to_string(),
            self.ttl_seconds.to_string(),
        );
        let step = |e: RedisError| match e {
            RedisError::Server { .. } => e,
            e => RedisError::Connect {
                msg: format!("declaring the run in a:runs: {e}"),
            },
        };
        let zadd: [&[u8]; 4] = [b"ZADD", RUNS_KEY, score.as_bytes(), member.as_bytes()];
        match conn.probe(&zadd).await {
            Ok(_) => {}
            Err(
                e @ RedisError::Server {
                    kind: "readonly", ..
                },
            ) => {
                return match conn.probe(&[b"ZSCORE", RUNS_KEY, member.as_bytes()]).await {
                    Ok(Reply::Bulk(_)) => Ok(()),
                    Ok(_) => Err(e),
                    Err(other) => Err(step(other)),
                };
            }
            Err(e) => return Err(step(e)),
        }
        conn.probe(&[b"EXPIRE", RUNS_KEY, ttl.as_bytes()])
            .await
            .map(|_| ())
            .map_err(step)
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 4,
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_reply_bytes: 64 << 20,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            shard: 0,
            protocol: Protocol::Auto,
            tls: None,
            declare_run: None,
        }
    }
}

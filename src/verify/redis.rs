//! `verify`'s reads of Redis: one server or a cluster, the Redis clock, the declared runs,
//! counter values in pipelined chunks, and SCAN over every primary.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::Truth;
use crate::config::VerifyArgs;
use crate::resp::{Connection, Pool, PoolConfig, RedisError, RedisUrl, Reply, RUNS_KEY};

/// Keys per pipeline of value reads.
const CHUNK: usize = 1000;

/// Where `verify` reads: one server, or a cluster (every key from its slot's owner, SCAN on
/// every primary).
pub enum Redis {
    One(Rc<Connection>),
    Cluster(Rc<Pool>),
}

impl Redis {
    /// Connects as `args` say (`--redis-mode auto` asks the server whether it is a cluster).
    pub async fn connect(
        args: &VerifyArgs,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Redis, String> {
        let cfg = PoolConfig {
            size: 1,
            command_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            protocol: args.redis_protocol,
            tls,
            ..PoolConfig::default()
        };
        let cluster =
            crate::resp::cluster::resolve_mode(args.redis_mode, &args.redis_seeds, &cfg).await?;
        if !cluster {
            return Connection::connect(&args.redis_url, &cfg)
                .await
                .map(Redis::One)
                .map_err(|e| e.to_string());
        }
        let others = args.redis_seeds.iter().skip(1).cloned().collect();
        let pool = Pool::cluster(args.redis_url.clone(), others, cfg.clone());
        if !pool.wait_connected(cfg.connect_timeout * 2).await {
            return Err(format!(
                "cannot load the Redis Cluster's slot map from {}",
                args.redis_seeds
                    .iter()
                    .map(RedisUrl::redacted)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for p in pool.node_pools() {
            p.wait_connected(cfg.connect_timeout).await;
        }
        Ok(Redis::Cluster(pool))
    }

    async fn cmd(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        match self {
            Redis::One(c) => c.cmd(args).await,
            Redis::Cluster(p) => p.cmd(args).await,
        }
    }

    /// GETs (or other one-key commands) together: one pipeline on one server; on a
    /// cluster, one pipeline per slot. One result per command, in order.
    async fn pipeline(&self, cmds: &[&[&[u8]]]) -> Vec<Result<Reply, RedisError>> {
        let p = match self {
            Redis::One(c) => return c.pipeline(cmds).await,
            Redis::Cluster(p) => p,
        };
        let mut by_slot: std::collections::BTreeMap<Option<u16>, Vec<usize>> = Default::default();
        for (i, c) in cmds.iter().enumerate() {
            let slot = crate::resp::cluster::slot::command_slot(c).ok().flatten();
            by_slot.entry(slot).or_default().push(i);
        }
        let mut out: Vec<Result<Reply, RedisError>> =
            vec![Err(RedisError::NotConnected); cmds.len()];
        for idx in by_slot.values() {
            let group: Vec<&[&[u8]]> = idx.iter().map(|i| cmds[*i]).collect();
            for (i, r) in idx.iter().zip(p.pipeline(&group).await) {
                out[*i] = r;
            }
        }
        out
    }

    /// The RESP version in use.
    pub(super) fn protocol(&self) -> u8 {
        match self {
            Redis::One(c) => c.protocol(),
            Redis::Cluster(p) => p.protocol(),
        }
    }

    /// One SCAN target per server: the connection, or every primary's pool.
    fn scan_targets(&self) -> Vec<ScanTarget> {
        match self {
            Redis::One(c) => vec![ScanTarget::One(c.clone())],
            Redis::Cluster(p) => p.node_pools().into_iter().map(ScanTarget::Node).collect(),
        }
    }
}

enum ScanTarget {
    One(Rc<Connection>),
    Node(Rc<Pool>),
}

impl ScanTarget {
    async fn cmd(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        match self {
            ScanTarget::One(c) => c.cmd(args).await,
            ScanTarget::Node(p) => p.cmd(args).await,
        }
    }
}

/// The Redis server's clock, unix seconds (`TIME`).
pub(super) async fn redis_time(redis: &Redis) -> Result<i64, String> {
    let reply = redis.cmd(&[b"TIME"]).await.map_err(|e| e.to_string())?;
    let secs = match &reply {
        Reply::Array(parts) => parts
            .first()
            .and_then(Reply::as_bytes)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<i64>().ok()),
        _ => None,
    };
    secs.ok_or_else(|| format!("unexpected TIME reply {reply:?}"))
}

/// Members of `a:runs` (run ids as text), oldest start first.
pub(super) async fn declared_runs(redis: &Redis) -> Result<Vec<String>, String> {
    let reply = redis
        .cmd(&[b"ZRANGE", RUNS_KEY, b"0", b"-1"])
        .await
        .map_err(|e| format!("reading a:runs: {e}"))?;
    let Reply::Array(items) = reply else {
        return Err(format!("unexpected reply to ZRANGE a:runs: {reply:?}"));
    };
    Ok(items
        .iter()
        .filter_map(Reply::as_bytes)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect())
}

/// GETs the keys in pipelined chunks: the value of each (None when it does not exist).
/// With `strict`, a value that is not a counter is an error; without, it counts as 0.
pub async fn values(
    redis: &Redis,
    truths: &[Truth],
    strict: bool,
) -> Result<Vec<Option<u64>>, String> {
    let mut out = Vec::with_capacity(truths.len());
    for chunk in truths.chunks(CHUNK) {
        let cmds: Vec<[&[u8]; 2]> = chunk.iter().map(|t| [&b"GET"[..], &t.key[..]]).collect();
        let refs: Vec<&[&[u8]]> = cmds.iter().map(|c| &c[..]).collect();
        let replies = redis.pipeline(&refs).await;
        for (t, r) in chunk.iter().zip(replies) {
            let shown = || String::from_utf8_lossy(&t.key).into_owned();
            let value = match r {
                Ok(Reply::Nil) => None,
                Ok(Reply::Bulk(b)) => match std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(n) => Some(n),
                    None if strict => return Err(format!("counter {} is not a number", shown())),
                    None => Some(0),
                },
                Err(crate::resp::RedisError::Server { .. }) | Ok(_) if !strict => Some(0),
                Ok(other) => return Err(format!("unexpected reply {other:?} for {}", shown())),
                Err(e) => return Err(e.to_string()),
            };
            out.push(value);
        }
    }
    Ok(out)
}

/// All keys matching `pattern` (SCAN, so a big keyspace does not block Redis), on every
/// primary of a cluster.
pub async fn scan(redis: &Redis, pattern: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for target in redis.scan_targets() {
        scan_one(&target, pattern, &mut out).await?;
    }
    // SCAN may return a key twice (a rehash during the scan).
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

async fn scan_one(redis: &ScanTarget, pattern: &str, out: &mut Vec<Vec<u8>>) -> Result<(), String> {
    let mut cursor = b"0".to_vec();
    loop {
        let reply = redis
            .cmd(&[
                b"SCAN",
                &cursor,
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"1000",
            ])
            .await
            .map_err(|e| e.to_string())?;
        let Reply::Array(parts) = reply else {
            return Err("unexpected SCAN reply".into());
        };
        let mut it = parts.into_iter();
        let (Some(Reply::Bulk(next)), Some(Reply::Array(found))) = (it.next(), it.next()) else {
            return Err("unexpected SCAN reply".into());
        };
        out.extend(found.into_iter().filter_map(|k| match k {
            Reply::Bulk(b) => Some(b.to_vec()),
            _ => None,
        }));
        if next.as_ref() == b"0" {
            return Ok(());
        }
        cursor = next.to_vec();
    }
}

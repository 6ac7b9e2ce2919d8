//! `analytics-demo bench-redis`: its options resolved from the shared table, with the
//! cross-option rules (connections per shard, value size against the reply cap, zipf size).

use std::time::Duration;

use super::cli::{opt, BenchRedisCli};
use super::resolve::{redis_flags, Resolver};
use crate::bench_redis::mix::{KeyPattern, Ratio, MAX_KEYS, MAX_ZIPF_KEYS};
use crate::resp::{Protocol, RedisMode, RedisUrl};
use crate::tls::TlsFiles;

/// `analytics-demo bench-redis`. See `analytics-demo bench-redis --help`.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRedisArgs {
    /// With the password of REDIS_PASSWORD_FILE when given; the first seed in cluster mode.
    pub redis_url: RedisUrl,
    /// Every URL of REDIS_URL (a cluster's seed nodes; `redis_url` first).
    pub redis_seeds: Vec<RedisUrl>,
    pub redis_mode: RedisMode,
    pub redis_protocol: Protocol,
    pub redis_tls: TlsFiles,
    /// All shards together; at least one per shard. In cluster mode, all nodes together
    /// (as `redis-benchmark --cluster -c`).
    pub connections: usize,
    /// Commands in flight per connection.
    pub pipeline: usize,
    pub ratio: Ratio,
    pub keys: u64,
    pub key_pattern: KeyPattern,
    pub zipf_exponent: f64,
    pub data_size: usize,
    /// Commands per second, all shards; 0 = closed loop (as fast as replies come back).
    pub rate: u64,
    /// `None` = until SIGINT/SIGTERM.
    pub duration: Option<Duration>,
    /// 0 = auto, as for the workload (`Config::resolved_shards`).
    pub shards: usize,
    pub seed: Option<u64>,
    pub command_timeout: Duration,
    pub max_reply_bytes: usize,
    pub pin: bool,
    pub json: bool,
}

/// Bytes of a GET reply beyond the value itself (`$<len>\r\n...\r\n`), rounded up.
const REPLY_OVERHEAD: usize = 32;
const MAX_DATA_SIZE: u64 = 64 << 20;
const MAX_CONNECTIONS: u64 = 100_000;
const MAX_PIPELINE: u64 = 10_000;
/// One task per command in flight: keep the total sane.
const MAX_IN_FLIGHT: u64 = 1_000_000;

pub(super) fn resolve(c: BenchRedisCli, r: &Resolver) -> Result<BenchRedisArgs, String> {
    const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
    let ratio_text = r.raw(&opt::ratio, c.ratio).unwrap_or_default();
    let redis_mode_flag = c.redis_mode.clone();
    let (redis_seeds, redis_protocol, redis_tls) = r.redis_endpoints(redis_flags!(c))?;
    let args = BenchRedisArgs {
        redis_mode: r.redis_mode(redis_mode_flag, &redis_seeds)?,
        redis_url: redis_seeds[0].clone(),
        redis_seeds,
        redis_protocol,
        redis_tls,
        connections: r.uint(&opt::connections, c.connections, 1, MAX_CONNECTIONS)? as usize,
        pipeline: r.uint(&opt::pipeline, c.pipeline, 1, MAX_PIPELINE)? as usize,
        ratio: Ratio::parse(&ratio_text).map_err(|why| {
            format!(
                "invalid value '{}' for {}: expected {why}",
                ratio_text.trim().escape_debug(),
                opt::ratio.label()
            )
        })?,
        keys: r.uint(&opt::keys, c.keys, 1, MAX_KEYS)?,
        key_pattern: r.choice(&opt::key_pattern, c.key_pattern, &KeyPattern::CHOICES)?,
        zipf_exponent: r.number(
            &opt::zipf_exponent,
            c.zipf_exponent,
            |v| v > 0.0 && v <= 5.0,
            "greater than 0 and at most 5",
        )?,
        data_size: r.uint(&opt::data_size, c.data_size, 1, MAX_DATA_SIZE)? as usize,
        rate: r.uint(&opt::rate, c.rate, 0, u64::MAX)?,
        duration: Some(r.seconds(&opt::duration, c.duration, 0, TEN_YEARS)?)
            .filter(|d| !d.is_zero()),
        shards: r.uint(&opt::shards, c.shards, 0, 1024)? as usize,
        seed: r.opt_uint(&opt::seed, c.seed)?,
        command_timeout: Duration::from_millis(r.uint(
            &opt::command_timeout_ms,
            c.command_timeout_ms,
            1,
            600_000,
        )?),
        max_reply_bytes: r.uint(
            &opt::max_reply_bytes,
            c.max_reply_bytes,
            1024,
            usize::MAX as u64,
        )? as usize,
        pin: !r.switch(&opt::no_pin, c.no_pin)?,
        json: c.json,
    };
    args.validate()?;
    Ok(args)
}

impl BenchRedisArgs {
    /// Rules between options (single-option rules are checked while resolving).
    fn validate(&self) -> Result<(), String> {
        if self.key_pattern == KeyPattern::Zipf && self.keys > MAX_ZIPF_KEYS {
            return Err(format!(
                "{} ({}) is above {MAX_ZIPF_KEYS} with {} zipf: the zipf table holds 8 bytes \
                 per key per shard; lower {} or use uniform",
                opt::keys.label(),
                self.keys,
                opt::key_pattern.label(),
                opt::keys.flag()
            ));
        }
        if self.data_size + REPLY_OVERHEAD > self.max_reply_bytes {
            return Err(format!(
                "{} ({}) does not fit in {} ({}): a GET reply would be refused; lower the \
                 first or raise the second",
                opt::data_size.label(),
                self.data_size,
                opt::max_reply_bytes.label(),
                self.max_reply_bytes
            ));
        }
        if self.connections as u64 * self.pipeline as u64 > MAX_IN_FLIGHT {
            return Err(format!(
                "{} x {} ({} x {}) is above {MAX_IN_FLIGHT} commands in flight",
                opt::connections.label(),
                opt::pipeline.label(),
                self.connections,
                self.pipeline
            ));
        }
        if self.shards != 0 {
            self.validate_against_shards(self.shards)?;
        }
        Ok(())
    }

    /// Checks that need the shard count; `parse` runs it when `--shards` is explicit, the
    /// caller must run it once the automatic count is known.
    pub fn validate_against_shards(&self, shards: usize) -> Result<(), String> {
        if self.connections < shards {
            return Err(format!(
                "{} ({}) is smaller than the number of shards ({shards}): every shard needs at \
                 least one connection; raise {} or lower {}",
                opt::connections.label(),
                self.connections,
                opt::connections.flag(),
                opt::shards.label()
            ));
        }
        Ok(())
    }
}

//! `analytics-demo bench-redis`: its options resolved from the shared table, with the
//! cross-option rules (connections per shard, value size against the reply cap, zipf size).

use super::cli::{opt, BenchRedisCli};
use super::connect::redis_flags;
use super::resolve::{run_flags, Resolver};
use super::RunOptions;
use crate::resp::{Protocol, RedisMode, RedisUrl};
use crate::tls::TlsFiles;
use crate::workload::bench_mix::{KeyPattern, Ratio, MAX_ZIPF_KEYS};

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
    pub data_size: usize,
    /// Commands per second, all shards; 0 = closed loop (as fast as replies come back).
    pub rate: u64,
    /// The shards' pacing grid when paced; zero = auto (see `shard::pacer::pace_step`).
    pub pace_step: std::time::Duration,
    /// Shards, duration, seed, Redis command bounds, pinning (as for the workload).
    pub run: RunOptions,
    pub json: bool,
}

/// Bytes of a GET reply beyond the value itself (`$<len>\r\n...\r\n`), rounded up.
const REPLY_OVERHEAD: usize = 32;
/// One task per command in flight: keep the total sane.
const MAX_IN_FLIGHT: u64 = 1_000_000;

pub(super) fn resolve(c: BenchRedisCli, r: &Resolver) -> Result<BenchRedisArgs, String> {
    let ratio_text = r.raw(&opt::ratio, c.ratio).unwrap_or_default();
    let redis_mode_flag = c.redis_mode.clone();
    let (redis_seeds, redis_protocol, redis_tls) = r.redis_endpoints(redis_flags!(c))?;
    let args = BenchRedisArgs {
        redis_mode: r.redis_mode(redis_mode_flag, &redis_seeds)?,
        redis_url: redis_seeds[0].clone(),
        redis_seeds,
        redis_protocol,
        redis_tls,
        connections: r.uint(&opt::connections, c.connections)?,
        pipeline: r.uint(&opt::pipeline, c.pipeline)?,
        ratio: Ratio::parse(&ratio_text).map_err(|why| {
            format!(
                "invalid value '{}' for {}: expected {why}",
                ratio_text.trim().escape_debug(),
                opt::ratio.label()
            )
        })?,
        keys: r.uint(&opt::keys, c.keys)?,
        key_pattern: r.choice(&opt::key_pattern, c.key_pattern, &KeyPattern::CHOICES)?,
        data_size: r.uint(&opt::data_size, c.data_size)?,
        rate: r.uint(&opt::rate, c.rate)?,
        pace_step: r
            .uint(&opt::pace_step_us, c.pace_step_us)
            .map(std::time::Duration::from_micros)?,
        run: r.run_options(run_flags!(c))?,
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
        if self.data_size + REPLY_OVERHEAD > self.run.max_reply_bytes {
            return Err(format!(
                "{} ({}) does not fit in {} ({}): a GET reply would be refused; lower the \
                 first or raise the second",
                opt::data_size.label(),
                self.data_size,
                opt::max_reply_bytes.label(),
                self.run.max_reply_bytes
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
        if self.run.shards != 0 {
            self.validate_against_shards(self.run.shards)?;
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

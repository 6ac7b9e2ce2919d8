//! # analytics-demo
//!
//! A thread-per-core analytics workload on Redis (counters, cache) and PostgreSQL (source of
//! truth), built to watch a Redis migration live and prove what it lost.
//!
//! # Layout
//! - [`config`]: every option (flag, env var, default, help) and its validation.
//! - [`engine`]: the topology: which CPU runs the control core and which run shards.
//! - [`rt`]: the runtime: executors (and the guard against glommio's parking bug), CPUs,
//!   seeds, signals, timeouts, single-threaded wake-ups.
//! - [`shard`]: one pinned executor: pacing, the event and query paths, shard stats.
//! - [`control`]: the control core: writer, HTTP, health, progress, orderly stop.
//! - [`resp`]: our Redis client (RESP2 and RESP3 over glommio TCP, pipelined, reconnecting,
//!   standalone or cluster).
//! - [`pg`]: Postgres connections on glommio, the batch writer, the shards' readers.
//! - [`tls`]: the TLS client side both use (PEM files, trust roots, verification levels).
//! - [`workload`]: event/query mixes, skewed tenants, the Redis key layout, hour buckets.
//! - [`bench_redis`]: the `bench-redis` subcommand: raw SET/GET load on the same shards and pool.
//! - [`verify`]: the `verify` subcommand: acknowledged increments against Redis.
//! - [`metrics`]: every exported metric name; [`http`]: hyper on glommio.

pub mod bench_redis;
pub mod cli;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod pg;
pub mod resp;
pub mod rt;
pub mod run_report;
pub mod shard;
pub mod tls;
pub mod verify;
pub mod workload;

/// Helpers shared by the unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    /// Runs `f`'s future to completion on a fresh glommio executor thread.
    pub fn run<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        crate::rt::executor::spawn(
            "test",
            glommio::Placement::Unbound,
            crate::rt::executor::ONE_SHOT_PREEMPT,
            f,
        )
        .unwrap()
        .join()
        .unwrap();
    }
}

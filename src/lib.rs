//! # analytics-demo
//!
//! A thread-per-core analytics workload on Redis (counters, cache) and PostgreSQL (source of
//! truth), built to watch a Redis migration live and prove what it lost.

pub mod config;
pub mod metrics;
pub mod workload;
pub mod resp;
pub mod notify;
pub mod pg;
pub mod control;
pub mod http;
pub mod shard;
pub mod cli;
pub mod config;
pub mod engine;
pub mod verify;

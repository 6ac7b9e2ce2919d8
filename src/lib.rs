//! # analytics-demo
//!
//! A thread-per-core analytics workload on Redis (counters, cache) and PostgreSQL (source of
//! truth), built to watch a Redis migration live and prove what it lost.

pub mod config;
pub mod metrics;
pub mod resp;

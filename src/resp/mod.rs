//! Our Redis client: RESP2 and RESP3 over glommio TCP.
//!
//! # Layout
//! - [`frame`]: encode commands, scan and decode replies (RESP2 and RESP3) under a size cap.
//! - [`conn`]: one pipelined connection (reader, writer and timeout tasks).
//! - [`handshake`]: `HELLO 3` (falling back to RESP2), AUTH, SELECT.
//! - [`pool`]: a shard's connections, supervised and reconnected, with live cutover.
//! - [`cluster`]: Redis Cluster: slots, the slot map, routing and redirections.
//! - [`error`]: the error type and its bounded `kind()` labels.
//! - `dial`: resolve and connect; `transport`: plain TCP or TLS under a connection;
//!   `stats`: cached metric handles.

pub mod cluster;
pub mod conn;
mod dial;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod pool;
mod stats;
mod transport;
pub mod url;

pub use cluster::RedisMode;
pub use conn::Connection;
pub use error::RedisError;
pub use frame::Reply;
pub use handshake::Protocol;
pub use pool::{Pool, PoolConfig, RunDeclaration, Target, RUNS_KEY};
pub use url::RedisUrl;

#[cfg(test)]
mod tests;

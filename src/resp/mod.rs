//! Our Redis client: RESP2 frames (via `redis-protocol`) over glommio TCP.

pub mod url;

pub use url::RedisUrl;

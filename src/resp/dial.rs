//! Name resolution and TCP connect for one Redis endpoint.
//!
//! glommio's `TcpStream::connect` resolves with blocking std calls on the executor thread and
//! panics when a name resolves to nothing, so we resolve on the executor's blocking thread,
//! bounded by the connect timeout, on every (re)connect (cloud cutovers flip DNS), and then
//! connect to plain `SocketAddr`s.

use crate::resp::{RedisError, RedisUrl};
use glommio::net::TcpStream;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Resolves off the executor thread (every call: DNS may flip during a cutover), then tries
/// each address with the connect timeout. glommio's own resolution blocks and can panic.
pub(crate) async fn dial(url: &RedisUrl, timeout: Duration) -> Result<TcpStream, RedisError> {
    let err = |msg: String| RedisError::Connect { msg };
    let timeout = timeout.max(Duration::from_millis(1));
    let (host, port) = (url.host.clone(), url.port);
    let resolve = glommio::executor().spawn_blocking(move || {
        (host.as_str(), port)
            .to_socket_addrs()
            .map(|a| a.collect::<Vec<SocketAddr>>())
            .map_err(|e| e.to_string())
    });
    let addrs = crate::rt::time::timeout(timeout, resolve)
        .await
        .unwrap_or_else(|| Err("resolution timed out".to_string()))
        .map_err(|e| err(format!("resolve {}: {e}", url.redacted())))?;
    let mut last = format!("{} resolved to no address", url.redacted());
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{} ({addr}): {e}", url.redacted()),
        }
    }
    Err(err(last))
}

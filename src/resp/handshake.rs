//! The connection handshake: protocol version, credentials, database.
//!
//! With `auto` (the default) and `3` a connection opens with `HELLO 3 [AUTH user pass]`, so
//! Redis 6+ answers in RESP3. A server that answers HELLO with an error (Redis < 6: unknown
//! command; NOPROTO; a proxy that does not know it) gets what older versions of this client
//! sent: RESP2 and a plain `AUTH` — unless `3` was asked for, which then fails with a message
//! saying so. `2` never sends HELLO. Then `SELECT` when the URL names a database.
//!
//! The decoder reads both protocols ([`crate::resp::frame`]) and maps RESP3 replies onto the
//! same [`Reply`] shapes, so nothing above the connection depends on the outcome; it is
//! reported ([`Connection::protocol`], /health) so a user can see what was negotiated.
//!
//! Kept apart from the transport (`conn.rs`): this only needs a connection that runs commands.

use crate::resp::{Connection, RedisError, RedisUrl, Reply};

/// Which RESP version to ask the server for (`--redis-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP3 where the server supports it, else RESP2.
    #[default]
    Auto,
    /// RESP2 only: no HELLO.
    Resp2,
    /// RESP3 or no connection.
    Resp3,
}

impl Protocol {
    /// The option's values, for the configuration parser.
    pub const CHOICES: [(&'static str, Protocol); 3] = [
        ("auto", Protocol::Auto),
        ("2", Protocol::Resp2),
        ("3", Protocol::Resp3),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::Resp2 => "2",
            Protocol::Resp3 => "3",
        }
    }
}

/// Runs the handshake on a fresh connection; returns the RESP version in use (2 or 3).
/// Errors: `Server { kind: "auth" }` for refused credentials, `Connect` otherwise (including
/// a server without RESP3 when `Protocol::Resp3` was asked for).
pub(crate) async fn handshake(
    conn: &Connection,
    url: &RedisUrl,
    protocol: Protocol,
) -> Result<u8, RedisError> {
    let version = match protocol {
        Protocol::Resp2 => {
            auth(conn, url).await?;
            2
        }
        Protocol::Auto | Protocol::Resp3 => match hello3(conn, url).await? {
            None => 3,
            Some(_) if protocol == Protocol::Auto => {
                auth(conn, url).await?;
                2
            }
            Some(why) => {
                return Err(RedisError::Connect {
                    msg: format!(
                        "the server does not support RESP3 ({why}); use --redis-protocol auto \
                         or 2 (REDIS_PROTOCOL)"
                    ),
                })
            }
        },
    };
    if url.db != 0 {
        let db = url.db.to_string();
        match conn.probe(&[b"SELECT", db.as_bytes()]).await {
            Ok(_) => {}
            Err(e @ RedisError::Server { .. }) => return Err(e),
            Err(e) => return Err(connect_err("SELECT", e)),
        }
    }
    Ok(version)
}

/// `HELLO 3`, authenticating in the same command when the URL has a password (a server that
/// requires a password refuses HELLO without one). `Ok(None)`: RESP3 is on. `Ok(Some(why))`:
/// the server declined, nothing changed on the connection.
async fn hello3(conn: &Connection, url: &RedisUrl) -> Result<Option<String>, RedisError> {
    let user = url.username.as_deref().unwrap_or("default");
    let reply = match url.password() {
        Some(pass) => {
            conn.probe(&[b"HELLO", b"3", b"AUTH", user.as_bytes(), pass.as_bytes()])
                .await
        }
        None => conn.probe(&[b"HELLO", b"3"]).await,
    };
    match reply {
        Ok(r) if r.field(b"proto") == Some(&Reply::Int(3)) => Ok(None),
        Ok(r) => Ok(Some(format!(
            "HELLO 3 answered without proto 3: {}",
            describe(&r)
        ))),
        // Wrong credentials are wrong in either protocol: no fallback.
        Err(RedisError::Server { kind: "auth", msg }) => {
            Err(RedisError::Server { kind: "auth", msg })
        }
        Err(RedisError::Server { msg, .. }) => Ok(Some(format!("HELLO 3 answered: {msg}"))),
        Err(e) => Err(connect_err("HELLO", e)),
    }
}

/// RESP2 authentication: `AUTH [user] pass` when the URL has a password.
async fn auth(conn: &Connection, url: &RedisUrl) -> Result<(), RedisError> {
    let Some(pass) = url.password() else {
        return Ok(());
    };
    let r = match &url.username {
        Some(user) => {
            conn.probe(&[b"AUTH", user.as_bytes(), pass.as_bytes()])
                .await
        }
        None => conn.probe(&[b"AUTH", pass.as_bytes()]).await,
    };
    match r {
        Ok(_) => Ok(()),
        Err(RedisError::Server { msg, .. }) => Err(RedisError::Server { kind: "auth", msg }),
        Err(e) => Err(connect_err("AUTH", e)),
    }
}

fn connect_err(step: &str, e: RedisError) -> RedisError {
    RedisError::Connect {
        msg: format!("{step}: {e}"),
    }
}

/// A short, bounded rendering of an unexpected HELLO reply for an error message.
fn describe(r: &Reply) -> String {
    let mut s = format!("{r:?}");
    if s.len() > 120 {
        let mut end = 120;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

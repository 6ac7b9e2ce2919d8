//! The one error type of the Redis client, classified for metrics and retry decisions.
//!
//! The engine has to decide, per failed command, whether the write *may* have been applied
//! (to account for it when proving what a migration lost), so every variant that can follow
//! a write carries whether the command had already been handed to the socket.

use std::fmt;

/// Why a Redis command or connection failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisError {
    /// Resolving, connecting or the handshake failed (not a server error reply).
    Connect { msg: String },
    /// No reply within `command_timeout` of enqueueing.
    Timeout { sent: bool },
    /// The socket failed.
    Io { sent: bool, msg: String },
    /// The connection closed (peer EOF, stall, shutdown or cutover) before the reply came.
    Closed { sent: bool },
    /// No connection of the pool was up; the command was never sent.
    NotConnected,
    /// The server sent bytes that are not RESP2; the connection was dropped.
    Protocol { sent: bool, msg: String },
    /// A reply exceeded `max_reply_bytes`; the connection was dropped.
    ReplyTooLarge { sent: bool, limit: usize },
    /// The server answered with an error reply (`-ERR ...`, `-WRONGTYPE ...`).
    /// `kind` is one of the bounded labels of [`RedisError::kind`].
    Server { kind: &'static str, msg: String },
    /// Cluster routing refused or gave up on the command (`cross_slot`: its keys span
    /// slots, never sent; `redirect_loop`: every attempt was redirected, so none applied).
    Cluster { kind: &'static str, msg: String },
}

impl RedisError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisError::Connect { .. } => "connect",
            RedisError::Timeout { .. } => "timeout",
            RedisError::Io { .. } => "io",
            RedisError::Closed { .. } => "closed",
            RedisError::NotConnected => "not_connected",
            RedisError::Protocol { .. } => "protocol",
            RedisError::ReplyTooLarge { .. } => "reply_too_large",
            RedisError::Server { kind, .. } | RedisError::Cluster { kind, .. } => kind,
        }
    }

    /// True when the command may have reached the server but no reply came: the write
    /// outcome is unknown. False when it was certainly never sent or the server answered.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            RedisError::Timeout { sent }
            | RedisError::Io { sent, .. }
            | RedisError::Closed { sent }
            | RedisError::Protocol { sent, .. }
            | RedisError::ReplyTooLarge { sent, .. } => *sent,
            RedisError::Connect { .. }
            | RedisError::NotConnected
            | RedisError::Server { .. }
            | RedisError::Cluster { .. } => false,
        }
    }

    /// True when this is the server's own error reply (the command was not applied).
    pub fn is_server_reply(&self) -> bool {
        matches!(self, RedisError::Server { .. })
    }

    /// Classifies a server error reply by its first word.
    pub(crate) fn from_server(msg: &[u8]) -> RedisError {
        let word = msg.split(|b| *b == b' ').next().unwrap_or(b"");
        let kind = match word {
            b"ERR" => "err",
            b"WRONGTYPE" => "wrongtype",
            b"LOADING" => "loading",
            b"READONLY" => "readonly",
            b"MASTERDOWN" => "masterdown",
            b"BUSY" => "busy",
            b"OOM" => "oom",
            b"NOAUTH" => "noauth",
            b"WRONGPASS" | b"NOPERM" => "auth",
            b"MOVED" | b"ASK" | b"TRYAGAIN" | b"CLUSTERDOWN" => "redirect",
            _ => "server_other",
        };
        RedisError::Server {
            kind,
            msg: String::from_utf8_lossy(msg).into_owned(),
        }
    }

    /// The same failure for a command that was (or was not) already written.
    pub(crate) fn with_sent(&self, was_sent: bool) -> RedisError {
        let mut e = self.clone();
        match &mut e {
            RedisError::Timeout { sent }
            | RedisError::Io { sent, .. }
            | RedisError::Closed { sent }
            | RedisError::Protocol { sent, .. }
            | RedisError::ReplyTooLarge { sent, .. } => *sent = was_sent,
            _ => {}
        }
        e
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sent = |s: &bool| if *s { " (outcome unknown)" } else { "" };
        match self {
            RedisError::Connect { msg } => write!(f, "redis connect failed: {msg}"),
            RedisError::Timeout { sent: s } => write!(f, "redis command timed out{}", sent(s)),
            RedisError::Io { sent: s, msg } => write!(f, "redis I/O error: {msg}{}", sent(s)),
            RedisError::Closed { sent: s } => write!(f, "redis connection closed{}", sent(s)),
            RedisError::NotConnected => f.write_str("redis not connected"),
            RedisError::Protocol { sent: s, msg } => {
                write!(f, "redis protocol error: {msg}{}", sent(s))
            }
            RedisError::ReplyTooLarge { sent: s, limit } => {
                write!(f, "redis reply larger than {limit} bytes{}", sent(s))
            }
            RedisError::Server { msg, .. } => write!(f, "redis error reply: {msg}"),
            RedisError::Cluster { msg, .. } => write!(f, "redis cluster: {msg}"),
        }
    }
}

impl std::error::Error for RedisError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_classify_server_errors() {
        let cases: [(&[u8], &str); 8] = [
            (b"ERR unknown command", "err"),
            (b"WRONGTYPE Operation", "wrongtype"),
            (b"LOADING Redis is loading", "loading"),
            (b"READONLY You can't write", "readonly"),
            (b"MOVED 3999 127.0.0.1:6381", "redirect"),
            (b"WRONGPASS invalid", "auth"),
            (b"NOAUTH Authentication required.", "noauth"),
            (b"WHATEVER x", "server_other"),
        ];
        for (msg, kind) in cases {
            let e = RedisError::from_server(msg);
            assert_eq!(e.kind(), kind);
            assert!(e.is_server_reply() && !e.outcome_unknown());
        }
    }

    #[test]
    fn should_track_outcome() {
        assert!(RedisError::Timeout { sent: true }.outcome_unknown());
        assert!(!RedisError::Timeout { sent: false }.outcome_unknown());
        assert!(!RedisError::NotConnected.outcome_unknown());
        let e = RedisError::Closed { sent: false }.with_sent(true);
        assert!(e.outcome_unknown());
    }
}

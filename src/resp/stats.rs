//! Cached metric handles for one shard's Redis client.
//!
//! The engine runs 100k+ commands/s per core, so handles are looked up once per pool (a
//! registry lookup costs more than the record itself) and indexed by a small command table.

use crate::metrics as names;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

/// Command labels we export; anything else is "other" so the label set stays bounded.
const COMMANDS: [&str; 16] = [
    "GET", "SET", "INCR", "PFADD", "PFCOUNT", "MGET", "EXPIRE", "EXPIREAT", "PING", "AUTH",
    "HELLO", "SELECT", "SCAN", "INFO", "DEL", "other",
];

/// Every error kind label, exported at zero from the start.
pub(crate) const ERROR_KINDS: [&str; 20] = [
    "connect",
    "timeout",
    "io",
    "closed",
    "not_connected",
    "protocol",
    "reply_too_large",
    "auth",
    "loading",
    "readonly",
    "masterdown",
    "busy",
    "oom",
    "wrongtype",
    "noauth",
    "redirect",
    "err",
    "server_other",
    "cross_slot",
    "redirect_loop",
];

/// Connection states of the `REDIS_CONNECTIONS{state}` gauge.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ConnState {
    Connected = 0,
    Connecting = 1,
    Disconnected = 2,
}

pub(crate) struct Stats {
    duration: Vec<Histogram>,
    commands: Vec<Counter>,
    errors: Vec<Counter>,
    pub(crate) connections: [Gauge; 3],
    pub(crate) pool_size: Gauge,
    pub(crate) inflight: Gauge,
    pub(crate) reconnects: Counter,
    /// RESP3 push frames received (out of band, matched to no command).
    pub(crate) pushes: Counter,
    /// A cluster node's pool: the router resends after MOVED, ASK, TRYAGAIN and CLUSTERDOWN
    /// (`analytics_redis_redirects_total` counts each), so those replies (kind `redirect`)
    /// are not errors here; a command that exhausts its redirections is (`redirect_loop`).
    /// LOADING, MASTERDOWN and READONLY replies still count (a server state worth seeing).
    pub(crate) cluster_node: std::cell::Cell<bool>,
    /// A cluster node's pool: its node's command count and round trips (all shards).
    node: std::cell::OnceCell<(Counter, Histogram)>,
}

impl Stats {
    pub(crate) fn new(shard: usize) -> Stats {
        let shard = shard.to_string();
        let s = || shard.clone();
        Stats {
            duration: COMMANDS
                .iter()
                .map(|c| histogram!(names::REDIS_COMMAND_DURATION, "shard" => s(), "command" => *c))
                .collect(),
            commands: COMMANDS
                .iter()
                .map(|c| counter!(names::REDIS_COMMANDS_TOTAL, "shard" => s(), "command" => *c))
                .collect(),
            errors: ERROR_KINDS
                .iter()
                .map(|k| {
                    let c = counter!(names::REDIS_ERRORS_TOTAL, "shard" => s(), "kind" => *k);
                    c.increment(0);
                    c
                })
                .collect(),
            connections: ["connected", "connecting", "disconnected"]
                .map(|st| gauge!(names::REDIS_CONNECTIONS, "shard" => s(), "state" => st)),
            pool_size: gauge!(names::REDIS_POOL_SIZE, "shard" => s()),
            inflight: gauge!(names::REDIS_INFLIGHT, "shard" => s()),
            reconnects: counter!(names::REDIS_RECONNECTS_TOTAL, "shard" => s()),
            pushes: counter!(names::REDIS_PUSH_MESSAGES_TOTAL, "shard" => s()),
            cluster_node: std::cell::Cell::new(false),
            node: std::cell::OnceCell::new(),
        }
    }

    /// Makes these the stats of the cluster node `addr` (`host:port`).
    pub(crate) fn mark_node(&self, addr: &str) {
        self.cluster_node.set(true);
        let node = addr.to_string();
        let _ = self.node.set((
            counter!(names::REDIS_NODE_COMMANDS_TOTAL, "node" => node.clone()),
            histogram!(names::REDIS_NODE_COMMAND_DURATION, "node" => node),
        ));
    }

    /// Index of a command's label (case-insensitive match on the command name). It runs
    /// for every command: the name is folded into one word (bit 5 of each byte cleared, which
    /// upper-cases ASCII letters) and compared with the table's words, and only a match is
    /// checked byte by byte.
    pub(crate) fn command_index(name: &[u8]) -> usize {
        const OTHER: usize = COMMANDS.len() - 1;
        const WORDS: [u64; OTHER] = {
            let mut w = [0u64; OTHER];
            let mut i = 0;
            while i < OTHER {
                w[i] = folded(COMMANDS[i].as_bytes());
                i += 1;
            }
            w
        };
        if name.is_empty() || name.len() > 8 {
            return OTHER;
        }
        let w = folded(name);
        match WORDS.iter().position(|&c| c == w) {
            Some(i) if COMMANDS[i].as_bytes().eq_ignore_ascii_case(name) => i,
            _ => OTHER,
        }
    }

    pub(crate) fn record(&self, cmd: usize, seconds: f64) {
        self.duration[cmd].record(seconds);
        self.commands[cmd].increment(1);
        if let Some((count, duration)) = self.node.get() {
            count.increment(1);
            duration.record(seconds);
        }
    }

    /// An attempt that never reached a connection (no duration to record).
    pub(crate) fn count(&self, cmd: usize) {
        self.commands[cmd].increment(1);
    }

    pub(crate) fn error(&self, kind: &str) {
        if self.cluster_node.get() && kind == "redirect" {
            return;
        }
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i].increment(1);
        }
    }

    pub(crate) fn move_state(&self, from: Option<ConnState>, to: Option<ConnState>) {
        if let Some(f) = from {
            self.connections[f as usize].decrement(1.0);
        }
        if let Some(t) = to {
            self.connections[t as usize].increment(1.0);
        }
    }
}

/// The first 8 bytes of a name as one word, zero-padded, with bit 5 of each byte cleared
/// (upper-case ASCII letters are unchanged).
const fn folded(name: &[u8]) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < name.len() && i < 8 {
        w |= ((name[i] & !0x20) as u64) << (8 * i);
        i += 1;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_map_command_labels() {
        assert_eq!(COMMANDS[Stats::command_index(b"get")], "GET");
        assert_eq!(COMMANDS[Stats::command_index(b"ExpireAt")], "EXPIREAT");
        assert_eq!(COMMANDS[Stats::command_index(b"HSET")], "other");
        assert_eq!(COMMANDS[Stats::command_index(b"other")], "other");
        assert_eq!(COMMANDS[Stats::command_index(b"")], "other");
        assert_eq!(COMMANDS[Stats::command_index(b"EXPIREATX")], "other");
        assert_eq!(COMMANDS[Stats::command_index(b"GE")], "other");
        assert_eq!(COMMANDS[Stats::command_index(b"GET\0")], "other");
        assert_eq!(COMMANDS[Stats::command_index(b"G\xc5T")], "other");
        assert_eq!(COMMANDS[Stats::command_index(b"G%T")], "other");
        for (i, c) in COMMANDS[..COMMANDS.len() - 1].iter().enumerate() {
            assert!(c.bytes().all(|b| b.is_ascii_uppercase()), "{c}");
            assert_eq!(Stats::command_index(c.as_bytes()), i);
            assert_eq!(Stats::command_index(c.to_lowercase().as_bytes()), i);
        }
        // Every table name with any one byte replaced, and with a byte added: the same
        // answer as a plain case-insensitive search.
        let reference = |name: &[u8]| {
            COMMANDS[..COMMANDS.len() - 1]
                .iter()
                .position(|c| c.as_bytes().eq_ignore_ascii_case(name))
                .unwrap_or(COMMANDS.len() - 1)
        };
        for c in &COMMANDS[..COMMANDS.len() - 1] {
            for at in 0..=c.len() {
                for b in 0..=255u8 {
                    let mut name = c.as_bytes().to_vec();
                    match name.get_mut(at) {
                        Some(x) => *x = b,
                        None => name.push(b),
                    }
                    assert_eq!(Stats::command_index(&name), reference(&name), "{name:?}");
                }
            }
        }
    }
}

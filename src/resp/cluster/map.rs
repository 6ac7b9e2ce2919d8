//! The slot map: which primary serves each of the 16384 slots, parsed from `CLUSTER SHARDS`
//! (Redis 7+) or `CLUSTER SLOTS`. A lookup is an array index, with no allocation.

use super::slot::SLOTS;
use crate::resp::Reply;

/// A slot no node serves (the map is incomplete, e.g. during a cluster's creation).
pub const UNASSIGNED: u16 = u16::MAX;

/// A node's address as `host:port` (what MOVED and ASK replies carry).
pub type NodeAddr = String;

/// Slot ranges and the primaries serving them, as a node reported them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Topology {
    /// Primaries, each once.
    pub nodes: Vec<NodeAddr>,
    /// (first slot, last slot, index in `nodes`), inclusive.
    pub ranges: Vec<(u16, u16, usize)>,
}

impl Topology {
    fn node(&mut self, addr: NodeAddr) -> usize {
        match self.nodes.iter().position(|n| *n == addr) {
            Some(i) => i,
            None => {
                self.nodes.push(addr);
                self.nodes.len() - 1
            }
        }
    }

    fn range(&mut self, first: i64, last: i64, node: usize) -> Result<(), String> {
        let ok = |s: i64| (0..SLOTS as i64).contains(&s);
        if !ok(first) || !ok(last) || first > last {
            return Err(format!("bad slot range {first}-{last}"));
        }
        self.ranges.push((first as u16, last as u16, node));
        Ok(())
    }

    /// Slots no range covers.
    pub fn unassigned(&self) -> usize {
        let mut covered = vec![false; SLOTS];
        for &(a, b, _) in &self.ranges {
            covered[usize::from(a)..=usize::from(b)].fill(true);
        }
        covered.iter().filter(|c| !**c).count()
    }
}

fn text(r: &Reply) -> Option<String> {
    r.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn addr(host: &str, port: i64) -> Result<NodeAddr, String> {
    if !(1..=65535).contains(&port) {
        return Err(format!("bad port {port}"));
    }
    Ok(match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    })
}

/// Parses a `CLUSTER SLOTS` reply. A node reported with an empty or `?` host is the node
/// asked (`asked_host`).
pub fn parse_slots(reply: &Reply, asked_host: &str) -> Result<Topology, String> {
    let Reply::Array(entries) = reply else {
        return Err("CLUSTER SLOTS: not an array".into());
    };
    let mut t = Topology::default();
    for e in entries {
        let Reply::Array(f) = e else {
            return Err("CLUSTER SLOTS: entry is not an array".into());
        };
        let (Some(first), Some(last), Some(Reply::Array(primary))) = (
            f.first().and_then(Reply::as_int),
            f.get(1).and_then(Reply::as_int),
            f.get(2),
        ) else {
            return Err("CLUSTER SLOTS: entry without slots and primary".into());
        };
        let host = primary.first().and_then(text).unwrap_or_default();
        let host = if host.is_empty() || host == "?" {
            asked_host.to_string()
        } else {
            host
        };
        let port = primary
            .get(1)
            .and_then(Reply::as_int)
            .ok_or("CLUSTER SLOTS: primary without a port")?;
        let node = t.node(addr(&host, port)?);
        t.range(first, last, node)
            .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
    }
    Ok(t)
}

/// Parses a `CLUSTER SHARDS` reply (RESP2 or RESP3: maps are key/value arrays). Each shard's
/// primary is its node with role `master`; with `tls`, its `tls-port` is used when given.
pub fn parse_shards(reply: &Reply, asked_host: &str, tls: bool) -> Result<Topology, String> {
    let Reply::Array(shards) = reply else {
        return Err("CLUSTER SHARDS: not an array".into());
    };
    let mut t = Topology::default();
    for shard in shards {
        let (Some(Reply::Array(slots)), Some(Reply::Array(nodes))) =
            (shard.field(b"slots"), shard.field(b"nodes"))
        else {
            return Err("CLUSTER SHARDS: shard without slots and nodes".into());
        };
        if slots.is_empty() {
            continue;
        }
        // Redis 7.2+ groups a failed primary with the replica that replaced it: the one
        // online is the primary.
        let master = |n: &&Reply| n.field(b"role").and_then(Reply::as_bytes) == Some(b"master");
        let online = |n: &&Reply| n.field(b"health").and_then(Reply::as_bytes) == Some(b"online");
        let primary = nodes
            .iter()
            .filter(master)
            .find(online)
            .or_else(|| nodes.iter().find(master))
            .ok_or("CLUSTER SHARDS: shard with slots but no primary")?;
        let host = ["endpoint", "ip"]
            .iter()
            .filter_map(|k| primary.field(k.as_bytes()).and_then(text))
            .find(|h| !h.is_empty() && h != "?")
            .unwrap_or_else(|| asked_host.to_string());
        let port = match tls {
            true => primary.field(b"tls-port").or(primary.field(b"port")),
            false => primary.field(b"port"),
        }
        .and_then(Reply::as_int)
        .ok_or("CLUSTER SHARDS: primary without a port")?;
        let node = t.node(addr(&host, port)?);
        for pair in slots.chunks(2) {
            let (Some(a), Some(b)) = (
                pair.first().and_then(Reply::as_int),
                pair.get(1).and_then(Reply::as_int),
            ) else {
                return Err("CLUSTER SHARDS: odd slot list".into());
            };
            t.range(a, b, node)
                .map_err(|e| format!("CLUSTER SHARDS: {e}"))?;
        }
    }
    Ok(t)
}

/// For every slot, the index of the node serving it (`UNASSIGNED` when none).
pub struct SlotMap {
    owner: Box<[u16]>,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap {
            owner: vec![UNASSIGNED; SLOTS].into_boxed_slice(),
        }
    }
}

impl SlotMap {
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)).copied() {
            None | Some(UNASSIGNED) => None,
            Some(n) => Some(usize::from(n)),
        }
    }

    pub fn set(&mut self, slot: u16, node: usize) {
        if let Some(o) = self.owner.get_mut(usize::from(slot)) {
            *o = node as u16;
        }
    }

    /// Replaces the whole map with `t`'s ranges; `index` gives our index of `t`'s nodes.
    pub fn apply(&mut self, t: &Topology, index: impl Fn(usize) -> usize) {
        self.owner.fill(UNASSIGNED);
        for &(a, b, n) in &t.ranges {
            self.owner[usize::from(a)..=usize::from(b)].fill(index(n) as u16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn b(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }
    fn i(v: i64) -> Reply {
        Reply::Int(v)
    }
    fn a(v: Vec<Reply>) -> Reply {
        Reply::Array(v)
    }

    #[test]
    fn should_parse_cluster_slots() {
        let reply = a(vec![
            a(vec![
                i(0),
                i(5460),
                a(vec![b("10.0.0.1"), i(7000), b("id1")]),
                a(vec![b("10.0.0.4"), i(7003), b("id4")]),
            ]),
            a(vec![i(5461), i(10922), a(vec![b(""), i(7001), b("id2")])]),
            a(vec![i(10923), i(16383), a(vec![b("10.0.0.1"), i(7000)])]),
        ]);
        let t = parse_slots(&reply, "seed").unwrap();
        assert_eq!(t.nodes, vec!["10.0.0.1:7000", "seed:7001"]);
        assert_eq!(
            t.ranges,
            vec![(0, 5460, 0), (5461, 10922, 1), (10923, 16383, 0)]
        );
        assert_eq!(t.unassigned(), 0);
        let mut m = SlotMap::default();
        m.apply(&t, |n| n + 3);
        assert_eq!(m.owner(0), Some(3));
        assert_eq!(m.owner(5461), Some(4));
        assert_eq!(m.owner(16383), Some(3));
        m.set(5461, 7);
        assert_eq!(m.owner(5461), Some(7));
    }

    #[test]
    fn should_reject_bad_cluster_slots() {
        assert!(parse_slots(&b("x"), "h").is_err());
        assert!(parse_slots(
            &a(vec![a(vec![i(0), i(20000), a(vec![b("h"), i(1)])])]),
            "h"
        )
        .is_err());
        assert!(parse_slots(&a(vec![a(vec![i(5), i(1), a(vec![b("h"), i(1)])])]), "h").is_err());
        assert!(parse_slots(&a(vec![a(vec![i(0), i(1), a(vec![b("h"), i(0)])])]), "h").is_err());
        assert!(parse_slots(&a(vec![a(vec![i(0), i(1)])]), "h").is_err());
        let partial = parse_slots(&a(vec![a(vec![i(0), i(99), a(vec![b("h"), i(1)])])]), "h");
        assert_eq!(partial.unwrap().unassigned(), SLOTS - 100);
    }

    fn node(ip: &str, port: i64, role: &str) -> Reply {
        a(vec![
            b("id"),
            b("abc"),
            b("port"),
            i(port),
            b("tls-port"),
            i(port + 100),
            b("ip"),
            b(ip),
            b("endpoint"),
            b(ip),
            b("role"),
            b(role),
            b("health"),
            b("online"),
        ])
    }

    #[test]
    fn should_parse_cluster_shards() {
        let reply = a(vec![
            a(vec![
                b("slots"),
                a(vec![i(0), i(100), i(200), i(16383)]),
                b("nodes"),
                a(vec![
                    node("10.0.0.2", 7001, "replica"),
                    node("10.0.0.1", 7000, "master"),
                ]),
            ]),
            a(vec![
                b("slots"),
                a(vec![i(101), i(199)]),
                b("nodes"),
                a(vec![node("::1", 7002, "master")]),
            ]),
            // A primary without slots is not in the map.
            a(vec![
                b("slots"),
                a(vec![]),
                b("nodes"),
                a(vec![node("h", 1, "master")]),
            ]),
        ]);
        let t = parse_shards(&reply, "seed", false).unwrap();
        assert_eq!(t.nodes, vec!["10.0.0.1:7000", "[::1]:7002"]);
        assert_eq!(t.ranges, vec![(0, 100, 0), (200, 16383, 0), (101, 199, 1)]);
        assert_eq!(t.unassigned(), 0);
        let tls = parse_shards(&reply, "seed", true).unwrap();
        assert_eq!(tls.nodes[0], "10.0.0.1:7100");
        // A failed primary listed with the replica that took over (Redis 7.2+).
        let mut failed = node("10.0.0.9", 7009, "master");
        if let Reply::Array(f) = &mut failed {
            f[13] = b("failed");
        }
        let taken_over = a(vec![a(vec![
            b("slots"),
            a(vec![i(0), i(16383)]),
            b("nodes"),
            a(vec![failed, node("10.0.0.2", 7001, "master")]),
        ])]);
        let t = parse_shards(&taken_over, "seed", false).unwrap();
        assert_eq!(t.nodes, vec!["10.0.0.2:7001"]);
        let no_primary = a(vec![a(vec![
            b("slots"),
            a(vec![i(0), i(1)]),
            b("nodes"),
            a(vec![node("h", 1, "replica")]),
        ])]);
        assert!(parse_shards(&no_primary, "seed", false).is_err());
        let odd = a(vec![a(vec![
            b("slots"),
            a(vec![i(0)]),
            b("nodes"),
            a(vec![node("h", 1, "master")]),
        ])]);
        assert!(parse_shards(&odd, "seed", false).is_err());
    }
}

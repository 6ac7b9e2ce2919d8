//! Dependency checks for /health: a PING on our own Redis connection and a `SELECT 1` on
//! our own Postgres connection, once a second, so /health answers instantly.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics as m;
use crate::resp::cluster::map::Topology;
use crate::resp::cluster::slot::SLOTS;
use crate::resp::cluster::{node_url, topology};
use crate::resp::{Connection, PoolConfig, RedisError, RedisUrl, Target};
use crate::shard::pacer::grid_ceil;

/// A dependency as /health reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct DepStatus {
    /// `"up"`, `"down"`, or `"unknown"` before the first check.
    pub status: Cow<'static, str>,
    pub endpoint: String,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    pub checked_seconds_ago: Option<f64>,
    /// Redis only: the RESP version the check's connection negotiated (2 or 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    #[serde(skip)]
    pub checked_at: Option<Instant>,
}

impl DepStatus {
    fn checked(endpoint: String, latency_ms: Option<f64>, error: Option<String>) -> DepStatus {
        DepStatus {
            status: if error.is_none() { "up" } else { "down" }.into(),
            endpoint,
            latency_ms,
            error,
            checked_seconds_ago: None,
            protocol: None,
            checked_at: Some(Instant::now()),
        }
    }

    pub fn is_up(&self) -> bool {
        self.status == "up"
    }
}

#[derive(Default)]
pub struct Health {
    pub redis: DepStatus,
    pub postgres: DepStatus,
    /// A Redis Cluster target: its per-node state (`None` for a standalone server).
    pub cluster: Option<ClusterHealth>,
    /// Every cluster primary's outages seen so far (kept after a switch away).
    pub node_outages: Vec<NodeOutage>,
    /// A cluster was checked at some point of the run.
    pub cluster_seen: bool,
}

const CHECK_EVERY: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_millis(900);

/// Sleeps until the next check is due. The checks share one grid, every `CHECK_EVERY` from
/// the first check of the process, so the Redis and PostgreSQL checks start on one wake of
/// the control core instead of two.
async fn until_next_check() {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let now = Instant::now();
    // The first grid point strictly after now.
    let at = grid_ceil(origin, now + Duration::from_nanos(1), CHECK_EVERY);
    glommio::timer::sleep(at.saturating_duration_since(now)).await;
}

/// Checks Redis at the current target (`target()` is read before every check, so a
/// switched target is checked from the next second on): a standalone server with a PING,
/// a cluster with [`ClusterCheck`].
pub async fn redis_loop(
    health: Rc<RefCell<Health>>,
    target: impl Fn() -> Target,
    mut cfg: PoolConfig,
) {
    cfg.command_timeout = CHECK_TIMEOUT;
    cfg.connect_timeout = CHECK_TIMEOUT;
    let mut conn: Option<(RedisUrl, Rc<Connection>)> = None;
    let mut cluster = ClusterCheck::default();
    let mut logged_protocol = None;
    loop {
        let t = target();
        if t.is_cluster() {
            conn = None;
            let (status, state) = cluster.check(&t, &cfg).await;
            {
                let mut h = health.borrow_mut();
                h.redis = status;
                h.node_outages.clone_from(&state.node_outages);
                h.cluster_seen = true;
                h.cluster = Some(state);
            }
            until_next_check().await;
            continue;
        }
        if health.borrow_mut().cluster.take().is_some() {
            cluster.forget();
        }
        let url = t.first().clone();
        let started = Instant::now();
        if conn
            .as_ref()
            .is_some_and(|(u, c)| *u != url || c.is_closed())
        {
            conn = None;
        }
        let result = match &conn {
            Some((_, c)) => c.cmd(&[b"PING"]).await.map(|_| ()),
            None => match Connection::connect(&url, &cfg).await {
                Ok(c) => {
                    let r = c.cmd(&[b"PING"]).await.map(|_| ());
                    conn = Some((url.clone(), c));
                    r
                }
                Err(e) => Err(e),
            },
        };
        let status = match result {
            Ok(()) => {
                let mut s = DepStatus::checked(
                    url.redacted(),
                    Some(started.elapsed().as_secs_f64() * 1000.0),
                    None,
                );
                s.protocol = conn.as_ref().map(|(_, c)| c.protocol());
                if let Some(p) = s.protocol.filter(|p| Some(*p) != logged_protocol) {
                    logged_protocol = Some(p);
                    tracing::info!(url = %url, protocol = p, "redis speaks RESP{p}");
                }
                s
            }
            Err(e) => {
                conn = None;
                DepStatus::checked(url.redacted(), None, Some(format!("{} ({})", e, e.kind())))
            }
        };
        health.borrow_mut().redis = status;
        until_next_check().await;
    }
}

/// A Redis Cluster as the health check sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ClusterHealth {
    /// Slots (of 16384) a primary serves in the map.
    pub slots_assigned: u32,
    /// Slots whose primary answered the last PING.
    pub slots_covered: u32,
    /// Changes of the slot map seen so far (1 for the first map).
    pub map_version: u64,
    /// The node the map was read from.
    pub map_from: String,
    pub nodes: Vec<NodeStatus>,
    /// Primaries that stopped answering (the open outages and the past ones).
    pub node_outages: Vec<NodeOutage>,
}

/// A primary that did not answer the health check's PINGs (seen at 1 s resolution).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct NodeOutage {
    pub node: String,
    /// Unix time of the first check it failed.
    pub start_unix: f64,
    /// Until the first check it answered again (so far, while `open`).
    pub duration_ms: f64,
    pub open: bool,
}

/// One primary of the map.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct NodeStatus {
    /// `host:port` as the cluster announces it.
    pub node: String,
    pub slots: u32,
    /// `"up"` or `"down"`.
    pub status: Cow<'static, str>,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
}

/// The cluster check: each second the slot map (`CLUSTER SHARDS`, else `CLUSTER SLOTS`)
/// from a node that answers, then a PING to every primary of it, each on a connection kept
/// between checks.
#[derive(Default)]
struct ClusterCheck {
    conns: Vec<(String, Rc<Connection>)>,
    /// The last map's slot ranges, by node address.
    ranges: Vec<(u16, u16, String)>,
    version: u64,
    /// Nodes whose up gauge was set (set to 0 once they leave the map).
    gauged: Vec<String>,
    /// The target checked (a switch to another cluster starts over).
    label: String,
    /// Primaries' outages, the open ones included (most recent last; bounded).
    outages: Vec<NodeOutage>,
}

/// Outages kept for the report.
const OUTAGES_KEPT: usize = 1000;

impl ClusterCheck {
    /// A connection to `addr`, kept for the next checks.
    async fn conn(
        &mut self,
        first: &RedisUrl,
        addr: &str,
        cfg: &PoolConfig,
    ) -> Result<Rc<Connection>, RedisError> {
        self.conns.retain(|(_, c)| !c.is_closed());
        if let Some((_, c)) = self.conns.iter().find(|(a, _)| a == addr) {
            return Ok(c.clone());
        }
        let c = Connection::connect(&node_url(first, addr), cfg).await?;
        self.conns.push((addr.to_string(), c.clone()));
        Ok(c)
    }

    /// The map from a node already known, else from a seed; with the node it came from.
    async fn topology(
        &mut self,
        t: &Target,
        cfg: &PoolConfig,
    ) -> Result<(Topology, String), String> {
        let tls = t.first().tls;
        let mut why = String::from("no node answered");
        let known: Vec<String> = self.ranges.iter().map(|r| r.2.clone()).collect();
        let seeds = t.seeds().iter().map(|s| format!("{}:{}", s.host, s.port));
        let mut tried: Vec<String> = Vec::new();
        for addr in known.into_iter().chain(seeds) {
            if tried.contains(&addr) {
                continue;
            }
            tried.push(addr.clone());
            let c = match self.conn(t.first(), &addr, cfg).await {
                Ok(c) => c,
                Err(e) => {
                    why = format!("{addr}: {e}");
                    continue;
                }
            };
            let host = node_url(t.first(), &addr).host;
            let shards = c.cmd(&[b"CLUSTER", b"SHARDS"]).await;
            let slots = || c.cmd(&[b"CLUSTER", b"SLOTS"]);
            match topology(shards, slots, &host, tls).await {
                Ok(top) => return Ok((top, addr)),
                Err(e) => why = format!("{addr}: {e}"),
            }
        }
        Err(why)
    }

    async fn check(&mut self, t: &Target, cfg: &PoolConfig) -> (DepStatus, ClusterHealth) {
        let started = Instant::now();
        if self.label != t.label() {
            self.forget();
            self.version = 0;
            self.label = t.label();
        }
        let (top, from) = match self.topology(t, cfg).await {
            Ok(x) => x,
            Err(why) => {
                let error = format!("cannot read the cluster's slot map: {why}");
                let state = ClusterHealth {
                    map_version: self.version,
                    ..ClusterHealth::default()
                };
                self.gauge(&state);
                return (DepStatus::checked(t.label(), None, Some(error)), state);
            }
        };
        let mut ranges: Vec<(u16, u16, String)> = top
            .ranges
            .iter()
            .map(|(a, b, n)| (*a, *b, top.nodes[*n].clone()))
            .collect();
        ranges.sort();
        if ranges != self.ranges {
            self.version += 1;
            self.ranges = ranges;
        }
        let mut nodes = Vec::new();
        for addr in &top.nodes {
            let slots: u32 = self
                .ranges
                .iter()
                .filter(|r| r.2 == *addr)
                .map(|r| u32::from(r.1 - r.0) + 1)
                .sum();
            let at = Instant::now();
            let r = match self.conn(t.first(), addr, cfg).await {
                Ok(c) => c.cmd(&[b"PING"]).await.map(|_| ()),
                Err(e) => Err(e),
            };
            let (status, latency_ms, error) = match r {
                Ok(()) => ("up", Some(at.elapsed().as_secs_f64() * 1000.0), None),
                Err(e) => ("down", None, Some(format!("{} ({})", e, e.kind()))),
            };
            nodes.push(NodeStatus {
                node: addr.clone(),
                slots,
                status: status.into(),
                latency_ms,
                error,
            });
        }
        // Connections to nodes that left the map go.
        self.conns.retain(|(a, c)| {
            let keep = *a == from || top.nodes.contains(a);
            if !keep {
                c.close();
            }
            keep
        });
        self.track_outages(&nodes);
        let slots_assigned: u32 = nodes.iter().map(|n| n.slots).sum();
        let slots_covered: u32 = nodes
            .iter()
            .filter(|n| n.status == "up")
            .map(|n| n.slots)
            .sum();
        let state = ClusterHealth {
            slots_assigned,
            slots_covered,
            map_version: self.version,
            map_from: from,
            nodes,
            node_outages: self.outages.clone(),
        };
        self.gauge(&state);
        let all = SLOTS as u32;
        let error = (slots_covered < all).then(|| {
            let down: Vec<&str> = state.nodes.iter().filter(|n| n.status == "down").map(|n| n.node.as_str()).collect();
            format!(
                "{} of {all} slots served by a primary that answers (unassigned: {}; primaries down: {})",
                slots_covered,
                all - slots_assigned,
                if down.is_empty() { "none".to_string() } else { down.join(", ") }
            )
        });
        let latency = error
            .is_none()
            .then(|| started.elapsed().as_secs_f64() * 1000.0);
        (DepStatus::checked(t.label(), latency, error), state)
    }

    /// Opens an outage for a primary that stopped answering, extends the open ones, and
    /// closes those of primaries that answer again or left the map.
    fn track_outages(&mut self, nodes: &[NodeStatus]) {
        let now = crate::workload::time::unix_now();
        for o in self.outages.iter_mut().filter(|o| o.open) {
            o.duration_ms = (now - o.start_unix) * 1000.0;
            let down = nodes.iter().any(|n| n.node == o.node && n.status == "down");
            o.open = down;
        }
        for n in nodes.iter().filter(|n| n.status == "down") {
            if !self.outages.iter().any(|o| o.open && o.node == n.node) {
                self.outages.push(NodeOutage {
                    node: n.node.clone(),
                    start_unix: now,
                    duration_ms: 0.0,
                    open: true,
                });
            }
        }
        let over = self.outages.len().saturating_sub(OUTAGES_KEPT);
        self.outages.drain(..over);
    }

    fn gauge(&mut self, state: &ClusterHealth) {
        metrics::gauge!(m::REDIS_CLUSTER_SLOTS, "state" => "assigned")
            .set(f64::from(state.slots_assigned));
        metrics::gauge!(m::REDIS_CLUSTER_SLOTS, "state" => "covered")
            .set(f64::from(state.slots_covered));
        metrics::gauge!(m::REDIS_CLUSTER_MAP_VERSION).set(state.map_version as f64);
        for n in &state.nodes {
            let up = if n.status == "up" { 1.0 } else { 0.0 };
            metrics::gauge!(m::REDIS_CLUSTER_NODE_UP, "node" => n.node.clone()).set(up);
            if !self.gauged.contains(&n.node) {
                self.gauged.push(n.node.clone());
            }
        }
        self.gauged.retain(|g| {
            let present = state.nodes.iter().any(|n| n.node == *g);
            if !present {
                metrics::gauge!(m::REDIS_CLUSTER_NODE_UP, "node" => g.clone()).set(0.0);
            }
            present
        });
    }

    /// After a switch away from the cluster: its connections closed, its nodes gauged 0.
    fn forget(&mut self) {
        for (_, c) in self.conns.drain(..) {
            c.close();
        }
        self.ranges.clear();
        self.gauge(&ClusterHealth {
            map_version: self.version,
            ..ClusterHealth::default()
        });
    }
}

pub async fn postgres_loop(health: Rc<RefCell<Health>>, cfg: crate::pg::PgConfig) {
    let endpoint = crate::pg::redacted(&cfg);
    let mut client: Option<crate::pg::Conn> = None;
    loop {
        let started = Instant::now();
        if client.as_ref().is_some_and(|c| !c.is_usable()) {
            client = None;
        }
        // Connecting and the query together stay within the check's timeout, so a frozen
        // server shows as down within a second, like a stopped one.
        let result = crate::pg::within(CHECK_TIMEOUT, async {
            if client.is_none() {
                client = Some(crate::pg::connect(&cfg, CHECK_TIMEOUT, None).await?);
            }
            let c = client.as_ref().ok_or(crate::pg::DbError::NotConnected)?;
            c.simple_query("SELECT 1").await?;
            Ok::<(), crate::pg::DbError>(())
        })
        .await;
        let status = match result {
            Ok(()) => DepStatus::checked(
                endpoint.clone(),
                Some(started.elapsed().as_secs_f64() * 1000.0),
                None,
            ),
            Err(e) => {
                if let Some(c) = client.take() {
                    c.mark_broken();
                }
                DepStatus::checked(endpoint.clone(), None, Some(e.to_string()))
            }
        };
        health.borrow_mut().postgres = status;
        until_next_check().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, up: bool) -> NodeStatus {
        NodeStatus {
            node: name.into(),
            slots: 1,
            status: if up { "up" } else { "down" }.into(),
            latency_ms: None,
            error: None,
        }
    }

    #[test]
    fn should_track_a_primary_outage_from_its_first_failed_check_to_its_return() {
        let mut c = ClusterCheck::default();
        c.track_outages(&[node("a:1", true), node("b:2", true)]);
        assert!(c.outages.is_empty());
        c.track_outages(&[node("a:1", true), node("b:2", false)]);
        c.track_outages(&[node("a:1", true), node("b:2", false)]);
        assert_eq!(c.outages.len(), 1);
        assert!(c.outages[0].open);
        assert_eq!(c.outages[0].node, "b:2");
        c.track_outages(&[node("a:1", true), node("b:2", true)]);
        assert_eq!(c.outages.len(), 1);
        assert!(!c.outages[0].open);
        assert!(c.outages[0].duration_ms >= 0.0);
        // Down again: a second outage; a node leaving the map ends its outage.
        c.track_outages(&[node("a:1", true), node("b:2", false)]);
        c.track_outages(&[node("a:1", true)]);
        assert_eq!(c.outages.len(), 2);
        assert!(c.outages.iter().all(|o| !o.open));
    }
}

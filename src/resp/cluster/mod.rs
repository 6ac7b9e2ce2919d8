//! Redis Cluster: slot computation, the slot map, and a shard's router over one [`Pool`] per
//! primary.
//!
//! - [`slot`]: CRC16 and hash tags; the slot of a command or pipeline (cross-slot refused).
//! - [`map`]: `CLUSTER SHARDS` / `CLUSTER SLOTS` parsing and the 16384-entry slot map.
//! - [`redirect`]: MOVED / ASK / TRYAGAIN / CLUSTERDOWN / LOADING / MASTERDOWN / READONLY and
//!   what to do about each, with the bound on redirections.
//! - `route`: a command or a one-slot pipeline to the slot's owner, redirections followed.
//! - `discover`: the topology from a node or a seed, the run's declaration, and the task
//!   that loads the map and keeps it fresh.
//! - Here: the router's state, its node pools, and which pool owns a slot.
//!
//! The router is per shard (single executor, `Rc`/`RefCell`). Every node gets a pool of
//! the configured per-shard size with the standalone handshake (TLS, AUTH, RESP3). A
//! command goes to its slot's owner; a redirection reply (proof the command was not
//! applied) resends it, at most [`redirect::MAX_REDIRECTS`] times. A timeout or a dropped
//! connection is returned as is (outcome unknown) and never resent.
//!
//! The map is refreshed when a redirection or a lost node (a command that found no
//! connection, or lost its own) asks for it, at most every `REFRESH_EVERY`; while a slot has
//! no reachable primary it is refreshed that often unasked, so a replica promoted after its
//! primary was killed is found without a MOVED. A node a refresh gives no slot (it left, was
//! emptied, or demoted by a failover) has its pool closed. The first attempt of a command
//! allocates nothing for routing (an array lookup, then the node pool); only a redirection
//! does.

mod discover;
pub mod map;
pub mod redirect;
mod route;
pub mod slot;

pub(crate) use discover::{node_url, topology, topology_from_seeds};

use crate::resp::pool::RunDeclaration;
use crate::resp::stats::Stats;
use crate::resp::{Connection, Pool, PoolConfig, RedisUrl};
use crate::rt::sync::Notify;
use discover::maintain;
use map::{SlotMap, Topology};
use metrics::Counter;
use redirect::REDIRECT_KINDS;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Map refreshes asked for by MOVED replies happen at most this often.
const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// How often the run is declared again (as the standalone pools do per connection).
const DECLARE_EVERY: Duration = Duration::from_secs(600);

/// `--redis-mode`: how to talk to the Redis target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// Cluster when the first reachable seed's `INFO cluster` says `cluster_enabled:1`.
    Auto,
    Standalone,
    Cluster,
}

impl RedisMode {
    pub const CHOICES: [(&'static str, RedisMode); 3] = [
        ("auto", RedisMode::Auto),
        ("standalone", RedisMode::Standalone),
        ("cluster", RedisMode::Cluster),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Auto => "auto",
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
        }
    }
}

/// Whether to use cluster mode: `Auto` asks the first seed that answers for `INFO cluster`
/// (`cluster_enabled:1`). `Err` when no seed answers.
pub async fn resolve_mode(
    mode: RedisMode,
    seeds: &[RedisUrl],
    cfg: &PoolConfig,
) -> Result<bool, String> {
    match mode {
        RedisMode::Standalone => return Ok(false),
        RedisMode::Cluster => return Ok(true),
        RedisMode::Auto => {}
    }
    let mut cfg = cfg.clone();
    cfg.declare_run = None;
    let mut why = String::from("no Redis URL");
    for seed in seeds {
        let info = match Connection::connect(seed, &cfg).await {
            Ok(c) => c.cmd(&[b"INFO", b"cluster"]).await,
            Err(e) => Err(e),
        };
        match info {
            Ok(r) => {
                let text = r.as_bytes().unwrap_or_default();
                return Ok(text
                    .split(|b| *b == b'\n')
                    .any(|l| l.trim_ascii() == b"cluster_enabled:1"));
            }
            Err(e) => why = format!("{}: {e}", seed.redacted()),
        }
    }
    Err(why)
}

struct Node {
    addr: String,
    pool: Rc<Pool>,
    /// The last map applied (or a MOVED since) gives it slots.
    in_map: Cell<bool>,
    /// When a MOVED or ASK last sent commands here: a node without slots (one importing its
    /// first slot, answered ASK for) is kept `LINGER` after that.
    redirected_at: Cell<Option<Instant>>,
}

/// A shard's view of a cluster: the slot map and a pool per primary.
pub struct Cluster {
    /// The first seed: the template of every node's URL (user, password, TLS).
    first: RedisUrl,
    /// Every seed, `first` included.
    seeds: Vec<RedisUrl>,
    /// The node pools' settings (they declare nothing: the router does, routed).
    cfg: PoolConfig,
    declare: Option<RunDeclaration>,
    map: RefCell<SlotMap>,
    /// Indexed by the map's node numbers; a node that left is `None` (its number is reused).
    nodes: RefCell<Vec<Option<Node>>>,
    /// The map was loaded (and the run declared, for a workload pool).
    ready: Cell<bool>,
    refresh: Notify,
    /// Maps applied so far (a READONLY reply waits for the next one).
    refreshes: Cell<u64>,
    closed: Cell<bool>,
    stats: Rc<Stats>,
    redirects: Vec<Counter>,
    map_refreshes: Counter,
}

/// A node that owns no slot any more stays this long after a redirection sent commands to
/// it (see `Node::redirected_at`), then its pool is closed.
const LINGER: Duration = Duration::from_secs(5);

impl Cluster {
    /// The router, with its discovery and refresh task started on the current executor.
    pub(crate) fn start(
        first: RedisUrl,
        others: Vec<RedisUrl>,
        cfg: PoolConfig,
    ) -> (Rc<Cluster>, glommio::Task<()>) {
        let seeds = std::iter::once(first.clone()).chain(others).collect();
        let shard = cfg.shard.to_string();
        let redirects = REDIRECT_KINDS
            .iter()
            .map(|k| {
                let c = metrics::counter!(crate::metrics::REDIS_REDIRECTS_TOTAL,
                    "shard" => shard.clone(), "kind" => *k);
                c.increment(0);
                c
            })
            .collect();
        let mut node_cfg = cfg.clone();
        let declare = node_cfg.declare_run.take();
        let c = Rc::new(Cluster {
            first,
            seeds,
            stats: Rc::new(Stats::new(cfg.shard)),
            cfg: node_cfg,
            declare,
            map: RefCell::new(SlotMap::default()),
            nodes: RefCell::new(Vec::new()),
            ready: Cell::new(false),
            refresh: Notify::default(),
            refreshes: Cell::new(0),
            closed: Cell::new(false),
            map_refreshes: metrics::counter!(crate::metrics::REDIS_CLUSTER_MAP_REFRESHES_TOTAL,
                "shard" => shard.clone()),
            redirects,
        });
        let task = glommio::spawn_local(maintain(Rc::downgrade(&c)));
        (c, task)
    }

    pub(crate) fn ready(&self) -> bool {
        self.ready.get()
    }

    /// The node pools (every primary known so far).
    pub(crate) fn pools(&self) -> Vec<Rc<Pool>> {
        self.nodes
            .borrow()
            .iter()
            .flatten()
            .map(|n| n.pool.clone())
            .collect()
    }

    pub(crate) async fn close(&self) {
        self.closed.set(true);
        self.refresh.notify();
        for p in self.pools() {
            p.close_direct().await;
        }
    }

    /// Our index of the node at `addr`, adding a pool for it if it is new (`true`).
    fn node_for(&self, addr: &str) -> (usize, bool) {
        let mut nodes = self.nodes.borrow_mut();
        if let Some(i) = nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.addr == addr))
        {
            return (i, false);
        }
        let url = node_url(&self.first, addr);
        tracing::info!(shard = self.cfg.shard, node = %url, "redis cluster node added");
        let pool = Pool::new(url, self.cfg.clone());
        pool.mark_cluster_node(addr);
        let node = Some(Node {
            addr: addr.to_string(),
            pool,
            in_map: Cell::new(false),
            redirected_at: Cell::new(None),
        });
        match nodes.iter().position(Option::is_none) {
            Some(i) => {
                nodes[i] = node;
                (i, true)
            }
            None => {
                nodes.push(node);
                (nodes.len() - 1, true)
            }
        }
    }

    /// The node at `addr` (added if new) that a redirection sends commands to now, once it
    /// has a connection up or the connect timeout passed: a node just learnt of does not
    /// fail its first commands `not_connected`.
    async fn redirected_to(&self, addr: &str) -> usize {
        let (n, _) = self.node_for(addr);
        let pool = match &self.nodes.borrow()[n] {
            Some(node) => {
                node.redirected_at.set(Some(Instant::now()));
                node.pool.clone()
            }
            None => return n,
        };
        if pool.connected() == 0 {
            pool.wait_connected(self.cfg.connect_timeout).await;
        }
        // Kept meanwhile (`LINGER`), so at the same index: looked up again all the same.
        self.node_for(addr).0
    }

    /// Pools for `t`'s primaries that we have none for yet (created now, connecting).
    fn add_nodes(&self, t: &Topology) -> Vec<Rc<Pool>> {
        t.nodes
            .iter()
            .filter_map(|a| match self.node_for(a) {
                (n, true) => self.node_pool(n),
                (_, false) => None,
            })
            .collect()
    }

    /// `t` becomes the map, with a pool for every primary it names; the pools of nodes it
    /// gives no slot (they left, were emptied or demoted) are closed, unless a redirection
    /// sent commands there within `LINGER`.
    fn apply(&self, t: &Topology) {
        let index: Vec<usize> = t.nodes.iter().map(|a| self.node_for(a).0).collect();
        self.map.borrow_mut().apply(t, |n| index[n]);
        let mut nodes = self.nodes.borrow_mut();
        for (i, slot) in nodes.iter_mut().enumerate() {
            let keep = slot.as_ref().is_none_or(|node| {
                let in_map = index.contains(&i);
                node.in_map.set(in_map);
                in_map
                    || node
                        .redirected_at
                        .get()
                        .is_some_and(|at| at.elapsed() < LINGER)
            });
            if keep {
                continue;
            }
            if let Some(node) = slot.take() {
                tracing::info!(shard = self.cfg.shard, node = %node.addr,
                    "redis cluster node removed: it serves no slot; its connections are closed");
                glommio::spawn_local(async move { node.pool.close_direct().await }).detach();
            }
        }
    }

    /// Whether the map needs refreshing without waiting for a redirection: slots without a
    /// primary, a slot owner with no connection up (killed, or not reachable yet), or a node
    /// kept for `LINGER` that is to be closed once that has passed.
    fn degraded(&self, unassigned: usize) -> bool {
        unassigned > 0
            || self
                .nodes
                .borrow()
                .iter()
                .flatten()
                .any(|n| !n.in_map.get() || n.pool.connected() == 0)
    }

    fn node_pool(&self, i: usize) -> Option<Rc<Pool>> {
        self.nodes
            .borrow()
            .get(i)
            .and_then(|n| n.as_ref().map(|n| n.pool.clone()))
    }

    /// The pool for a command of `slot` (`None`: a keyless command, any node with a
    /// connection up); `None` when the slot has no known owner.
    fn owner(&self, slot: Option<u16>) -> Option<Rc<Pool>> {
        match slot {
            Some(s) => {
                let n = self.map.borrow().owner(s)?;
                self.node_pool(n)
            }
            None => {
                let nodes = self.nodes.borrow();
                let mut live = nodes.iter().flatten();
                let any = live.clone().next();
                live.find(|n| n.pool.connected() > 0)
                    .or(any)
                    .map(|n| n.pool.clone())
            }
        }
    }
}

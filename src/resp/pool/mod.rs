//! A shard's set of Redis connections, each kept alive by a supervisor task.
//!
//! A supervisor per slot connects, waits for the connection to die (or for a cutover or
//! shutdown), and reconnects with capped exponential backoff and jitter, re-resolving the
//! host each time. Commands never wait for a connection: with none up they fail at once
//! with `NotConnected`, so a load generator keeps its schedule and counts the failure.
//!
//! - Here: the pool, how a command picks its connection (or the cluster router, or the
//!   successor after a switch), and what it reports.
//! - [`config`]: its settings, the target, and the run every connection declares.
//! - [`switch`]: a live cutover to another target, and closing.
//! - [`slots`]: the connections themselves and the supervisor task that keeps each one up.

mod config;
mod slots;
mod switch;

pub use config::{PoolConfig, RunDeclaration, Target, RUNS_KEY};

use crate::resp::cluster::Cluster;
use crate::resp::stats::{ConnState, Stats};
use crate::resp::{RedisError, RedisUrl, Reply};
use crate::rt::sync::Notify;
use glommio::Task;
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use slots::{supervise, Shared, Slot};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A per-shard pool of pipelined connections (single executor; share it as `Rc<Pool>`).
pub struct Pool {
    sh: Rc<Shared>,
    /// Dropping a glommio `Task` cancels it: dropping the pool stops its supervisors.
    supervisors: RefCell<Vec<Task<()>>>,
    /// Cluster mode: the router over one pool per primary (this pool then has no
    /// connection of its own and every method goes through the router).
    cluster: Option<Rc<Cluster>>,
    /// What it was created for (a standalone switch changes `Shared::target`, not this).
    kind_cluster: bool,
    /// After a switch that the pool's own connections cannot follow (standalone to cluster,
    /// cluster to anything): the pool that serves now. It never has a `next` of its own (a
    /// later switch replaces it), so every method forwards at most once.
    next: RefCell<Option<Rc<Pool>>>,
    /// Such a switch in progress: the new pool, still connecting, and the task that hands
    /// the commands over to it once it is up (make before break).
    handover: RefCell<Option<Rc<Pool>>>,
    /// Switches so far: a handover applies only if no switch came after it.
    switch_generation: Cell<u64>,
    /// The target's label (`Target::label`), kept current by standalone switches.
    label: RefCell<String>,
}

impl Pool {
    /// Creates the pool and starts its supervisors on the current executor; does not wait.
    pub fn new(url: RedisUrl, cfg: PoolConfig) -> Rc<Pool> {
        let size = cfg.size.max(1);
        let stats = Rc::new(Stats::new(cfg.shard));
        stats.pool_size.increment(size as f64);
        // Seeded per pool so shards and processes do not reconnect in lockstep.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = now ^ (cfg.shard as u64).rotate_left(32) ^ u64::from(std::process::id());
        let sh = Rc::new(Shared {
            target: RefCell::new(url),
            generation: Cell::new(0),
            slots: (0..size)
                .map(|_| Slot {
                    conn: RefCell::new(None),
                    conn_generation: Cell::new(0),
                    state: Cell::new(None),
                    wake: Notify::default(),
                })
                .collect(),
            rr: Cell::new(0),
            current: Cell::new(0),
            all_on_target_at: Cell::new(None),
            stats,
            size_counted: Cell::new(true),
            closed: Cell::new(false),
            rng: RefCell::new(Xoshiro256PlusPlus::seed_from_u64(seed)),
            cfg,
        });
        let supervisors = (0..size)
            .map(|i| {
                sh.set_state(i, Some(ConnState::Disconnected));
                glommio::spawn_local(supervise(sh.clone(), i))
            })
            .collect();
        let label = RefCell::new(sh.target.borrow().redacted());
        Rc::new(Pool {
            sh,
            supervisors: RefCell::new(supervisors),
            cluster: None,
            kind_cluster: false,
            next: RefCell::new(None),
            handover: RefCell::new(None),
            switch_generation: Cell::new(0),
            label,
        })
    }

    /// A pool for `target`: [`Pool::new`] or [`Pool::cluster`].
    pub fn for_target(target: &Target, cfg: PoolConfig) -> Rc<Pool> {
        match target.cluster {
            false => Pool::new(target.first().clone(), cfg),
            true => Pool::cluster(target.first().clone(), target.seeds[1..].to_vec(), cfg),
        }
    }

    /// A pool for a Redis Cluster reached through the seed nodes `first` and `others` (every
    /// node's URL takes `first`'s user, password and TLS): it loads the slot map in the
    /// background and keeps a pool of `cfg.size` connections per primary; until the map is
    /// loaded (and the run declared) commands fail `not_connected`.
    pub fn cluster(first: RedisUrl, others: Vec<RedisUrl>, cfg: PoolConfig) -> Rc<Pool> {
        let label = std::iter::once(&first)
            .chain(&others)
            .map(RedisUrl::redacted)
            .collect::<Vec<_>>()
            .join(",");
        let (cluster, task) = Cluster::start(first.clone(), others, cfg.clone());
        let sh = Rc::new(Shared {
            target: RefCell::new(first),
            generation: Cell::new(0),
            slots: Vec::new(),
            rr: Cell::new(0),
            current: Cell::new(0),
            all_on_target_at: Cell::new(None),
            stats: Rc::new(Stats::new(cfg.shard)),
            size_counted: Cell::new(false),
            closed: Cell::new(false),
            rng: RefCell::new(Xoshiro256PlusPlus::seed_from_u64(0)),
            cfg,
        });
        Rc::new(Pool {
            sh,
            supervisors: RefCell::new(vec![task]),
            cluster: Some(cluster),
            kind_cluster: true,
            next: RefCell::new(None),
            handover: RefCell::new(None),
            switch_generation: Cell::new(0),
            label: RefCell::new(label),
        })
    }

    /// The pool that serves now: a successor after a switch across kinds, else this one.
    fn next(&self) -> Option<Rc<Pool>> {
        self.next.borrow().clone()
    }

    /// In cluster mode, the pool of every primary known so far (for per-node work such as
    /// `verify`'s SCAN); empty in standalone mode.
    pub fn node_pools(&self) -> Vec<Rc<Pool>> {
        if let Some(n) = self.next() {
            return n.node_pools();
        }
        self.cluster.as_ref().map_or_else(Vec::new, |c| c.pools())
    }

    /// Marks this pool as the cluster node `addr`'s (see `Stats::cluster_node`).
    pub(crate) fn mark_cluster_node(&self, addr: &str) {
        self.sh.stats.mark_node(addr);
    }

    pub fn is_cluster(&self) -> bool {
        if let Some(n) = self.next() {
            return n.is_cluster();
        }
        self.cluster.is_some()
    }

    /// The RESP version of a connection that is up (of a node's, in cluster mode); 0 if none.
    pub fn protocol(&self) -> u8 {
        if let Some(n) = self.next() {
            return n.protocol();
        }
        if let Some(c) = &self.cluster {
            return c
                .pools()
                .iter()
                .map(|p| p.protocol())
                .find(|v| *v != 0)
                .unwrap_or(0);
        }
        self.sh
            .slots
            .iter()
            .find_map(|s| s.conn.borrow().as_ref().map(|c| c.protocol()))
            .unwrap_or(0)
    }

    /// Resolves once at least one connection is up or `timeout` passes; returns whether one is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.up() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            glommio::timer::sleep(left.min(Duration::from_millis(5))).await;
        }
    }

    /// A connection is up (in cluster mode: the map is loaded and the run declared).
    fn up(&self) -> bool {
        if let Some(n) = self.next() {
            return n.up();
        }
        self.connected() > 0 && self.cluster.as_ref().is_none_or(|c| c.ready())
    }

    /// One command on the least busy connection; none up => `NotConnected`, never sent.
    pub async fn cmd(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let next = self.next();
        next.as_deref().unwrap_or(self).routed_cmd(args).await
    }

    async fn routed_cmd(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        if let Some(c) = &self.cluster {
            return c.run_one(args, None).await;
        }
        self.direct_cmd(None, args).await
    }

    /// `cmd` (`index` None) or `cmd_on` on this pool's own connections (not routed).
    pub(crate) async fn direct_cmd(
        &self,
        index: Option<usize>,
        args: &[&[u8]],
    ) -> Result<Reply, RedisError> {
        let conn = match index {
            Some(i) => self.sh.pick_at(i),
            None => self.sh.pick(),
        };
        match conn {
            Some(c) => c.cmd(args).await,
            None => Err(self.sh.not_connected(args)),
        }
    }

    /// `pipeline` (`index` None) or `pipeline_on` on this pool's own connections.
    pub(crate) async fn direct_pipeline(
        &self,
        index: Option<usize>,
        cmds: &[&[&[u8]]],
    ) -> Vec<Result<Reply, RedisError>> {
        let conn = match index {
            Some(i) => self.sh.pick_at(i),
            None => self.sh.pick(),
        };
        match conn {
            Some(c) => c.pipeline(cmds).await,
            None => cmds.iter().map(|c| Err(self.sh.not_connected(c))).collect(),
        }
    }

    /// One command on connection `index` (modulo the pool size) when it is up: for load
    /// generation that must spread evenly over a fixed number of connections.
    pub async fn cmd_on(&self, index: usize, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let next = self.next();
        next.as_deref()
            .unwrap_or(self)
            .routed_cmd_on(index, args)
            .await
    }

    async fn routed_cmd_on(&self, index: usize, args: &[&[u8]]) -> Result<Reply, RedisError> {
        if let Some(c) = &self.cluster {
            return c.run_one(args, Some(index)).await;
        }
        self.direct_cmd(Some(index), args).await
    }

    /// Several commands in one write on one connection; one result per command, in order.
    pub async fn pipeline(&self, cmds: &[&[&[u8]]]) -> Vec<Result<Reply, RedisError>> {
        let next = self.next();
        next.as_deref()
            .unwrap_or(self)
            .routed_pipeline(None, cmds)
            .await
    }

    /// `pipeline` (`index` None) or `pipeline_on`, routed in cluster mode.
    async fn routed_pipeline(
        &self,
        index: Option<usize>,
        cmds: &[&[&[u8]]],
    ) -> Vec<Result<Reply, RedisError>> {
        if let Some(c) = &self.cluster {
            return c.run(cmds, index).await;
        }
        self.direct_pipeline(index, cmds).await
    }

    /// Several commands in one write on connection `index` (modulo the pool size).
    pub async fn pipeline_on(
        &self,
        index: usize,
        cmds: &[&[&[u8]]],
    ) -> Vec<Result<Reply, RedisError>> {
        let next = self.next();
        next.as_deref()
            .unwrap_or(self)
            .routed_pipeline(Some(index), cmds)
            .await
    }

    /// Sets the sampled gauges (commands in flight): once per report, not per command.
    pub fn publish_gauges(&self) {
        if let Some(n) = self.next() {
            return n.publish_gauges();
        }
        if let Some(c) = &self.cluster {
            // The node pools share this shard's gauge: publish their sum once.
            let n: usize = c.pools().iter().map(|p| p.inflight()).sum();
            self.sh.stats.inflight.set(n as f64);
            return;
        }
        self.sh.stats.inflight.set(self.inflight() as f64);
    }

    /// The server, or the first seed of the cluster, commands go to now.
    pub fn target(&self) -> RedisUrl {
        if let Some(n) = self.next() {
            return n.target();
        }
        self.sh.target.borrow().clone()
    }

    /// The current target's label: its URLs without passwords (see [`Target::label`]).
    pub fn target_label(&self) -> String {
        if let Some(n) = self.next() {
            return n.target_label();
        }
        self.label.borrow().clone()
    }

    /// Connections currently up and taking commands.
    pub fn connected(&self) -> usize {
        if let Some(n) = self.next() {
            return n.connected();
        }
        if let Some(c) = &self.cluster {
            return c.pools().iter().map(|p| p.connected()).sum();
        }
        self.sh
            .slots
            .iter()
            .filter(|s| s.conn.borrow().as_ref().is_some_and(|c| c.is_usable()))
            .count()
    }

    /// Connections up on the current target (after a cutover, the slots already moved).
    pub fn connected_to_target(&self) -> usize {
        if let Some(n) = self.next() {
            return n.connected_to_target();
        }
        if self.cluster.is_some() {
            return self.connected();
        }
        self.sh.connected_to_target()
    }

    /// When every connection was first up on the current target (None while one is not yet).
    pub fn all_on_target_at(&self) -> Option<f64> {
        if let Some(n) = self.next() {
            return n.all_on_target_at();
        }
        self.sh.all_on_target_at.get()
    }

    /// Commands enqueued on the pool's connections and awaiting a reply.
    pub fn inflight(&self) -> usize {
        if let Some(n) = self.next() {
            return n.inflight();
        }
        if let Some(c) = &self.cluster {
            return c.pools().iter().map(|p| p.inflight()).sum();
        }
        self.sh
            .slots
            .iter()
            .filter_map(|s| s.conn.borrow().as_ref().map(|c| c.inflight()))
            .sum()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.sh.closed.set(true);
        for i in 0..self.sh.slots.len() {
            self.sh.set_state(i, None);
            if let Some(c) = self.sh.slots[i].conn.borrow_mut().take() {
                c.close();
            }
        }
        self.sh.uncount_size();
    }
}

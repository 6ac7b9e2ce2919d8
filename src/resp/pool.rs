//! A shard's set of Redis connections, each kept alive by a supervisor task.
//!
//! A supervisor per slot connects, waits for the connection to die (or for a cutover or
//! shutdown), and reconnects with capped exponential backoff and jitter, re-resolving the
//! host each time. Commands never wait for a connection: with none up they fail at once
//! with `NotConnected`, so a load generator keeps its schedule and counts the failure.

use crate::resp::cluster::Cluster;
use crate::resp::conn::Connection;
use crate::resp::stats::{ConnState, Stats};
use crate::resp::{Protocol, RedisError, RedisUrl, Reply};
use crate::rt::sync::Notify;
use futures_lite::future::or;
use glommio::Task;
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Commands in flight on the connection in use before new ones spill to another.
const STICKY_INFLIGHT: usize = 32;

/// Pool settings; see the field docs for units and meaning.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Connections in this pool (at least 1).
    pub size: usize,
    /// Per command, from enqueue to reply.
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    /// A reply larger than this is a connection error (`reply_too_large`).
    pub max_reply_bytes: usize,
    /// Reconnect backoff floor.
    pub backoff_min: Duration,
    /// Reconnect backoff cap.
    pub backoff_max: Duration,
    /// Metric label "shard".
    pub shard: usize,
    /// RESP version to negotiate (`--redis-protocol`).
    pub protocol: Protocol,
    /// TLS settings for `rediss://` targets (`None`: system CAs, no client certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The workload's pools declare their run on every connection they open (see
    /// [`RunDeclaration`]); `None` for `verify`, `bench-redis` and health probes.
    pub declare_run: Option<RunDeclaration>,
}

/// The key every workload run declares itself in: a sorted set of run ids scored by their
/// start (unix seconds). It travels with the data (a replica, a copy, a dump), so `verify`
/// judges a target against the runs that actually wrote to it.
pub const RUNS_KEY: &[u8] = b"a:runs";

/// Where a pool sends its commands: one server, or a Redis Cluster reached through its
/// seed nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    seeds: Vec<RedisUrl>,
    cluster: bool,
}

impl Target {
    /// One server.
    pub fn standalone(url: RedisUrl) -> Target {
        Target {
            seeds: vec![url],
            cluster: false,
        }
    }

    /// One server (`cluster` false: `seeds` must then name one) or a Redis Cluster reached
    /// through `seeds`; `None` when that does not hold.
    pub fn new(seeds: Vec<RedisUrl>, cluster: bool) -> Option<Target> {
        let fits = match cluster {
            true => !seeds.is_empty(),
            false => seeds.len() == 1,
        };
        fits.then_some(Target { seeds, cluster })
    }

    /// The server, or the first seed: the template of every cluster node's URL.
    pub fn first(&self) -> &RedisUrl {
        &self.seeds[0]
    }

    pub fn seeds(&self) -> &[RedisUrl] {
        &self.seeds
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The URLs without their passwords, comma separated: how reports and metrics name it.
    pub fn label(&self) -> String {
        let urls: Vec<String> = self.seeds.iter().map(RedisUrl::redacted).collect();
        urls.join(",")
    }

    /// The URLs with their passwords, comma separated (for a switch request's body only).
    pub fn to_full_string(&self) -> String {
        let urls: Vec<String> = self.seeds.iter().map(RedisUrl::to_full_string).collect();
        urls.join(",")
    }
}

/// How often a live connection declares its run again, so the key outlives the run's last
/// counters however long the run and its connections last.
const DECLARE_EVERY: Duration = Duration::from_secs(600);

/// What a connection of a workload pool writes before it takes commands:
/// `ZADD a:runs <start> <run_id>` and `EXPIRE a:runs <ttl>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDeclaration {
    pub run_id: i64,
    /// Unix seconds at which the run started.
    pub start_unix: i64,
    /// At least the lifetime of a counter written now (`TIME_BUCKETS` + 1 hours) plus the
    /// time between two declarations; see [`RunDeclaration::new`].
    pub ttl_seconds: u64,
}

impl RunDeclaration {
    /// A counter lives until its hour ends plus `time_buckets` hours; the key gets that, one
    /// more hour, and the re-declaration period on top.
    pub fn new(run_id: i64, start_unix: i64, time_buckets: u32) -> RunDeclaration {
        RunDeclaration {
            run_id,
            start_unix,
            ttl_seconds: (u64::from(time_buckets) + 2) * 3600 + DECLARE_EVERY.as_secs(),
        }
    }

    /// Sends the declaration on `conn`. A server error reply is returned as such (its kind
    /// counts, e.g. `loading`); anything else as a connect error naming the step.
    ///
    /// A replica refuses the write (READONLY), and every counter write with it; in a
    /// cutover it is switched to before its promotion. It declares the run when it has
    /// replicated the declaration from the source (`ZSCORE`): then the connection is fine.
    /// Otherwise the READONLY error stands (the connection is not used).
    pub(crate) async fn send(&self, conn: &Connection) -> Result<(), RedisError> {
        let (score, member, ttl) = (
            self.start_unix.to_string(),
            self.run_id.to_string(),
            self.ttl_seconds.to_string(),
        );
        let step = |e: RedisError| match e {
            RedisError::Server { .. } => e,
            e => RedisError::Connect {
                msg: format!("declaring the run in a:runs: {e}"),
            },
        };
        let zadd: [&[u8]; 4] = [b"ZADD", RUNS_KEY, score.as_bytes(), member.as_bytes()];
        match conn.probe(&zadd).await {
            Ok(_) => {}
            Err(
                e @ RedisError::Server {
                    kind: "readonly", ..
                },
            ) => {
                return match conn.probe(&[b"ZSCORE", RUNS_KEY, member.as_bytes()]).await {
                    Ok(Reply::Bulk(_)) => Ok(()),
                    Ok(_) => Err(e),
                    Err(other) => Err(step(other)),
                };
            }
            Err(e) => return Err(step(e)),
        }
        conn.probe(&[b"EXPIRE", RUNS_KEY, ttl.as_bytes()])
            .await
            .map(|_| ())
            .map_err(step)
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 4,
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_reply_bytes: 64 << 20,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            shard: 0,
            protocol: Protocol::Auto,
            tls: None,
            declare_run: None,
        }
    }
}

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

struct Shared {
    cfg: PoolConfig,
    target: RefCell<RedisUrl>,
    generation: Cell<u64>,
    slots: Vec<Slot>,
    rr: Cell<usize>,
    /// The connection new commands go to while it has room (see `pick`).
    current: Cell<usize>,
    /// Unix time at which every slot was first up on the current target (reset by a switch):
    /// when this pool's part of a cutover was done.
    all_on_target_at: Cell<Option<f64>>,
    stats: Rc<Stats>,
    /// The slots are counted in the pool size gauge (until closed or dropped).
    size_counted: Cell<bool>,
    closed: Cell<bool>,
    rng: RefCell<Xoshiro256PlusPlus>,
}

struct Slot {
    conn: RefCell<Option<Rc<Connection>>>,
    /// Target generation of `conn` (it can still be the previous one during a cutover).
    conn_generation: Cell<u64>,
    state: Cell<Option<ConnState>>,
    /// Wakes the supervisor for a cutover or shutdown.
    wake: Notify,
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

    /// Live cutover to `target`, make before break.
    ///
    /// - Standalone to standalone: every slot connects to the new server; each keeps serving
    ///   on its old connection until the new one is up, then the old one stops taking
    ///   commands and its in-flight ones finish or fail. If the new target cannot be
    ///   reached, the old connection is retired at the first failed attempt and the slot
    ///   keeps retrying.
    /// - To or from a cluster, or to another cluster: a new pool of the target's kind starts
    ///   beside the current one, which keeps serving until the new one is up (a connection,
    ///   or for a cluster its map loaded and the run declared) or `HANDOVER_WAIT` has passed
    ///   (an unreachable target: its errors then show). Then every new command goes to the
    ///   new pool and the old one drains and closes. A later switch abandons a handover not
    ///   yet done.
    pub fn set_target(self: &Rc<Pool>, target: Target) {
        let generation = self.switch_generation.get() + 1;
        self.switch_generation.set(generation);
        if let Some(abandoned) = self.handover.borrow_mut().take() {
            close_later(abandoned, false);
        }
        let serving = self.next().unwrap_or_else(|| self.clone());
        if !target.cluster && !serving.kind_cluster {
            serving.switch_direct(target.first().clone());
            return;
        }
        tracing::info!(from = %serving.label.borrow(), to = %target.label(),
            cluster = target.cluster, "redis target switch to a new pool");
        let fresh = Pool::for_target(&target, self.sh.cfg.clone());
        *self.handover.borrow_mut() = Some(fresh.clone());
        let pool = Rc::downgrade(self);
        let wait = HANDOVER_WAIT.max(self.sh.cfg.connect_timeout * 2);
        glommio::spawn_local(async move {
            fresh.wait_connected(wait).await;
            let Some(pool) = pool.upgrade() else { return };
            if pool.switch_generation.get() != generation {
                return; // A later switch closed `fresh`.
            }
            pool.handover.borrow_mut().take();
            match pool.next.replace(Some(fresh.clone())) {
                Some(old) => close_later(old, false),
                None => close_later(pool.clone(), true),
            }
            drop(pool);
            tracing::info!(to = %fresh.label.borrow(), up = fresh.up(), "redis target switch handed over");
            // The cutover is complete when the new pool is fully up, and not before the
            // commands went to it.
            fresh.sh.all_on_target_at.set(None);
            while !fresh.sh.closed.get() {
                let full = match &fresh.cluster {
                    Some(c) => c.ready(),
                    None => fresh.sh.connected_to_target() == fresh.sh.slots.len(),
                };
                if full {
                    fresh
                        .sh
                        .all_on_target_at
                        .set(Some(crate::workload::time::unix_now()));
                    return;
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        })
        .detach();
    }

    /// The standalone cutover of `set_target` on this pool's own connections.
    fn switch_direct(&self, url: RedisUrl) {
        tracing::info!(from = %self.sh.target.borrow(), to = %url, "redis target switch");
        *self.label.borrow_mut() = url.redacted();
        *self.sh.target.borrow_mut() = url;
        self.sh.generation.set(self.sh.generation.get() + 1);
        self.sh.all_on_target_at.set(None);
        // Make before break: each slot keeps serving on its old connection until its
        // connection to the new target is up (or failed), then retires the old one.
        for s in &self.sh.slots {
            s.wake.notify();
        }
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

    /// Stops the supervisors, lets in-flight commands finish (up to `command_timeout`),
    /// closes the sockets.
    pub async fn close(&self) {
        self.switch_generation.set(self.switch_generation.get() + 1);
        let handover = self.handover.borrow_mut().take();
        if let Some(p) = handover {
            p.close_own().await;
        }
        let next = self.next();
        if let Some(n) = next {
            n.close_own().await;
        }
        self.close_own().await;
    }

    /// `close` for this pool's own connections or router (not its successor's).
    async fn close_own(&self) {
        if let Some(c) = &self.cluster {
            if !self.sh.closed.replace(true) {
                c.close().await;
                self.supervisors.borrow_mut().clear();
            }
            return;
        }
        self.close_direct().await;
    }

    /// `close` for a pool with connections of its own (a standalone pool, a cluster node's).
    pub(crate) async fn close_direct(&self) {
        if self.sh.closed.replace(true) {
            return;
        }
        let conns: Vec<Rc<Connection>> = self
            .sh
            .slots
            .iter()
            .filter_map(|s| s.conn.borrow_mut().take())
            .collect();
        for s in &self.sh.slots {
            s.wake.notify();
        }
        let deadline = Instant::now() + self.sh.cfg.command_timeout;
        for c in &conns {
            c.stop_taking_commands();
        }
        for c in conns {
            c.drain(deadline).await;
        }
        let tasks = std::mem::take(&mut *self.supervisors.borrow_mut());
        for t in tasks {
            t.await;
        }
        self.sh.uncount_size();
    }
}

/// How long a switch that needs a new pool keeps the old one serving while the new one
/// connects (at least twice the connect timeout).
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// Closes `pool` in the background: its own connections (`own`: the pool itself, serving
/// under a successor now) or all of it (a pool that was a successor or a handover).
fn close_later(pool: Rc<Pool>, own: bool) {
    glommio::spawn_local(async move {
        match own {
            true => pool.close_own().await,
            false => pool.close().await,
        }
    })
    .detach();
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

impl Shared {
    /// Counts a command that found no connection up (never sent) and returns its error.
    fn not_connected(&self, args: &[&[u8]]) -> RedisError {
        let cmd = Stats::command_index(args.first().copied().unwrap_or(b""));
        self.stats.count(cmd);
        self.stats.error("not_connected");
        RedisError::NotConnected
    }

    /// Takes this pool's connections out of the pool size gauge (once).
    fn uncount_size(&self) {
        if self.size_counted.replace(false) {
            self.stats.pool_size.decrement(self.slots.len() as f64);
        }
    }

    fn connected_to_target(&self) -> usize {
        let generation = self.generation.get();
        self.slots
            .iter()
            .filter(|s| s.conn_generation.get() == generation)
            .filter(|s| s.conn.borrow().as_ref().is_some_and(|c| c.is_usable()))
            .count()
    }

    fn set_state(&self, i: usize, to: Option<ConnState>) {
        let from = self.slots[i].state.replace(to);
        if from != to {
            self.stats.move_state(from, to);
        }
    }

    /// The connection in use while it has fewer than `STICKY_INFLIGHT` commands in flight,
    /// else the least busy one (which becomes the one in use). Commands issued together then
    /// share one connection and leave in one write: one syscall and one Redis wake-up for
    /// many commands instead of one each. Load spreads once a connection is busy.
    fn pick(&self) -> Option<Rc<Connection>> {
        let cur = self.current.get();
        if let Some(c) = self.slots[cur % self.slots.len()]
            .conn
            .borrow()
            .as_ref()
            .filter(|c| c.is_usable() && c.inflight() < STICKY_INFLIGHT)
        {
            return Some(c.clone());
        }
        let (i, c) = self.least_busy()?;
        self.current.set(i);
        Some(c)
    }

    /// Connection `index` (modulo the pool size) if it is up, else `pick`'s choice.
    fn pick_at(&self, index: usize) -> Option<Rc<Connection>> {
        let slot = &self.slots[index % self.slots.len()];
        if let Some(c) = slot.conn.borrow().as_ref().filter(|c| c.is_usable()) {
            return Some(c.clone());
        }
        self.pick()
    }

    /// Least in-flight usable connection, scanning from a rotating start so ties spread.
    fn least_busy(&self) -> Option<(usize, Rc<Connection>)> {
        let n = self.slots.len();
        let start = self.rr.get();
        self.rr.set(start.wrapping_add(1));
        let mut best: Option<(usize, usize, Rc<Connection>)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let slot = self.slots[i].conn.borrow();
            let Some(c) = slot.as_ref().filter(|c| c.is_usable()) else {
                continue;
            };
            let load = c.inflight();
            if best.as_ref().is_none_or(|(b, _, _)| load < *b) {
                best = Some((load, i, c.clone()));
                if load == 0 {
                    break;
                }
            }
        }
        best.map(|(_, i, c)| (i, c))
    }

    /// Capped exponential backoff with jitter: uniform in [min, min * 2^failures] (capped),
    /// so reconnecting slots and shards spread out but never spin.
    fn backoff(&self, failures: u32) -> Duration {
        let min = self
            .cfg
            .backoff_min
            .max(Duration::from_millis(1))
            .as_micros() as u64;
        let max = (self.cfg.backoff_max.as_micros() as u64).max(min);
        let cap = min.saturating_mul(1u64 << failures.min(30)).min(max);
        let jitter = self.rng.borrow_mut().next_u64() % (cap - min + 1);
        Duration::from_micros(min + jitter)
    }

    fn stale(&self, generation: u64) -> bool {
        self.closed.get() || self.generation.get() != generation
    }
}

/// Stops routing to `conn` and lets its in-flight commands finish in the background.
fn retire(sh: &Shared, conn: Rc<Connection>) {
    conn.stop_taking_commands();
    let deadline = Instant::now() + sh.cfg.command_timeout;
    glommio::spawn_local(async move { conn.drain(deadline).await }).detach();
}

/// Declares the run again every `DECLARE_EVERY` while `conn` lives; never returns (a pool
/// without a declaration waits forever). A failure is logged and counted; the key still has
/// at least an hour to live, and the next attempt comes in `DECLARE_EVERY`.
async fn redeclare(cfg: &PoolConfig, conn: &Connection) {
    let Some(d) = &cfg.declare_run else {
        return futures_lite::future::pending().await;
    };
    loop {
        glommio::timer::sleep(DECLARE_EVERY).await;
        if let Err(e) = d.send(conn).await {
            conn.count_error(&e);
            tracing::warn!(kind = e.kind(), error = %e, "declaring the run in a:runs again failed");
        }
    }
}

async fn supervise(sh: Rc<Shared>, i: usize) {
    let slot = &sh.slots[i];
    let mut failures: u32 = 0;
    let mut attempts: u64 = 0;
    // During a cutover: the previous target's connection, still in the slot and serving
    // until the new one is up.
    let mut previous: Option<Rc<Connection>> = None;
    while !sh.closed.get() {
        if attempts > 0 {
            sh.stats.reconnects.increment(1);
        }
        attempts += 1;
        let url = sh.target.borrow().clone();
        let generation = sh.generation.get();
        if previous.is_none() {
            sh.set_state(i, Some(ConnState::Connecting));
        }
        let open = async { Some(Connection::open(&url, &sh.cfg, sh.stats.clone()).await) };
        let cancelled = async {
            loop {
                slot.wake.notified().await;
                if sh.stale(generation) {
                    return None;
                }
            }
        };
        match or(open, cancelled).await {
            None => continue,
            Some(Ok(conn)) => {
                if sh.stale(generation) {
                    conn.close();
                    continue;
                }
                failures = 0;
                *slot.conn.borrow_mut() = Some(conn.clone());
                slot.conn_generation.set(generation);
                if let Some(old) = previous.take() {
                    retire(&sh, old);
                }
                sh.set_state(i, Some(ConnState::Connected));
                if sh.all_on_target_at.get().is_none() && sh.connected_to_target() == sh.slots.len()
                {
                    sh.all_on_target_at
                        .set(Some(crate::workload::time::unix_now()));
                }
                let woken = async {
                    loop {
                        slot.wake.notified().await;
                        if sh.stale(generation) {
                            return;
                        }
                    }
                };
                or(or(conn.closed(), woken), redeclare(&sh.cfg, &conn)).await;
                if !conn.is_closed() {
                    if sh.closed.get() {
                        slot.conn.borrow_mut().take();
                        break; // `Pool::close` drains it.
                    }
                    // Cutover: keep serving on this connection while the new one connects.
                    previous = Some(conn);
                    continue;
                }
                slot.conn.borrow_mut().take();
                sh.set_state(i, Some(ConnState::Disconnected));
                failures = 1;
            }
            Some(Err(e)) => {
                if let Some(old) = previous.take() {
                    slot.conn.borrow_mut().take();
                    retire(&sh, old);
                }
                sh.set_state(i, Some(ConnState::Disconnected));
                if failures == 0 {
                    tracing::warn!(url = %url, kind = e.kind(), error = %e, "redis connect failed");
                } else {
                    tracing::debug!(url = %url, kind = e.kind(), error = %e, "redis connect failed");
                }
                failures = failures.saturating_add(1);
            }
        }
        let nap = sh.backoff(failures);
        let woken = async {
            loop {
                slot.wake.notified().await;
                if sh.stale(generation) {
                    return;
                }
            }
        };
        or(glommio::timer::sleep(nap), woken).await;
    }
    sh.set_state(i, None);
}

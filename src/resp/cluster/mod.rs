//! Redis Cluster: slot computation, the slot map, and a shard's router over one [`Pool`] per
//! primary.
//!
//! - [`slot`]: CRC16 and hash tags; the slot of a command or pipeline (cross-slot refused).
//! - [`map`]: `CLUSTER SHARDS` / `CLUSTER SLOTS` parsing and the 16384-entry slot map.
//! - [`redirect`]: MOVED / ASK / TRYAGAIN / CLUSTERDOWN / LOADING / MASTERDOWN / READONLY and
//!   what to do about each, with the bound on redirections.
//!
//! The router is per shard (single executor, `Rc`/`RefCell`). Every node gets a pool of
//! the configured per-shard size with the standalone handshake (TLS, AUTH, RESP3). A
//! command goes to its slot's owner; a redirection reply (proof the command was not
//! applied) resends it, at most [`redirect::MAX_REDIRECTS`] times. A timeout or a dropped
//! connection is returned as is (outcome unknown) and never resent.

pub mod map;
pub mod redirect;
pub mod slot;

use crate::resp::pool::RunDeclaration;
use crate::resp::stats::Stats;
use crate::resp::sync::Notify;
use crate::resp::{Connection, Pool, PoolConfig, RedisError, RedisUrl, Reply, RUNS_KEY};
use map::{SlotMap, Topology};
use metrics::Counter;
use redirect::{decide, Action, Redirect, REDIRECT_KINDS};
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
    nodes: RefCell<Vec<Node>>,
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
        self.nodes.borrow().iter().map(|n| n.pool.clone()).collect()
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
        if let Some(i) = self.nodes.borrow().iter().position(|n| n.addr == addr) {
            return (i, false);
        }
        let url = node_url(&self.first, addr);
        tracing::info!(shard = self.cfg.shard, node = %url, "redis cluster node added");
        let pool = Pool::new(url, self.cfg.clone());
        pool.mark_cluster_node(addr);
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node {
            addr: addr.to_string(),
            pool,
        });
        (nodes.len() - 1, true)
    }

    /// `t` becomes the map, with a pool for every primary it names.
    fn apply(&self, t: &Topology) {
        let index: Vec<usize> = t.nodes.iter().map(|a| self.node_for(a).0).collect();
        self.map.borrow_mut().apply(t, |n| index[n]);
    }

    fn node_pool(&self, i: usize) -> Option<Rc<Pool>> {
        self.nodes.borrow().get(i).map(|n| n.pool.clone())
    }

    /// The node for a command of `slot` (`None`: a keyless command, any node with a
    /// connection up).
    fn owner(&self, slot: Option<u16>) -> Option<usize> {
        match slot {
            Some(s) => self.map.borrow().owner(s),
            None => {
                let nodes = self.nodes.borrow();
                nodes
                    .iter()
                    .position(|n| n.pool.connected() > 0)
                    .or((!nodes.is_empty()).then_some(0))
            }
        }
    }

    fn count_redirect(&self, r: &Redirect) {
        if let Some(i) = REDIRECT_KINDS.iter().position(|k| *k == r.kind()) {
            self.redirects[i].increment(1);
            redirect::seen(i);
        }
    }

    /// Fails every command of `cmds` with `e`, counted (for commands never sent).
    fn fail_all(&self, cmds: &[&[&[u8]]], e: RedisError) -> Vec<Result<Reply, RedisError>> {
        cmds.iter()
            .map(|c| {
                self.stats
                    .count(Stats::command_index(c.first().copied().unwrap_or(b"")));
                self.stats.error(e.kind());
                Err(e.clone())
            })
            .collect()
    }

    /// Commands of one slot (or keyless) sent together to the slot's owner, on connection
    /// `on` of that node's pool when given; redirected ones are resent together (see the
    /// module doc). One result per command, in order.
    pub(crate) async fn run(
        &self,
        cmds: &[&[&[u8]]],
        on: Option<usize>,
    ) -> Vec<Result<Reply, RedisError>> {
        // As a standalone connection takes no command before it declared the run, no counter
        // lands on a cluster that does not name the run.
        if self.declare.is_some() && !self.ready.get() {
            return self.fail_all(cmds, RedisError::NotConnected);
        }
        self.route(cmds, on).await
    }

    /// `run` without the wait for the run's declaration (which goes through here).
    async fn route(&self, cmds: &[&[&[u8]]], on: Option<usize>) -> Vec<Result<Reply, RedisError>> {
        let slot = match slot::pipeline_slot(cmds) {
            Ok(s) => s,
            Err(x) => {
                debug_assert!(false, "commands across slots {} and {}", x.first, x.other);
                let msg = format!(
                    "keys in different cluster slots ({} and {}): not sent",
                    x.first, x.other
                );
                return self.fail_all(
                    cmds,
                    RedisError::Cluster {
                        kind: "cross_slot",
                        msg,
                    },
                );
            }
        };
        let mut out: Vec<Option<Result<Reply, RedisError>>> = vec![None; cmds.len()];
        let mut pending: Vec<usize> = (0..cmds.len()).collect();
        let mut taken = 0;
        let mut ask: Option<usize> = None;
        while !pending.is_empty() {
            let asking = ask.is_some();
            let Some(pool) = ask
                .take()
                .or_else(|| self.owner(slot))
                .and_then(|n| self.node_pool(n))
            else {
                let sub: Vec<&[&[u8]]> = pending.iter().map(|i| cmds[*i]).collect();
                for (i, r) in pending
                    .iter()
                    .zip(self.fail_all(&sub, RedisError::NotConnected))
                {
                    out[*i] = Some(r);
                }
                break;
            };
            let replies = send(&pool, cmds, &pending, asking, on).await;
            let mut again = Vec::new();
            let mut redirect = None;
            for (i, r) in pending.iter().zip(replies) {
                if let Err(RedisError::Server { msg, .. }) = &r {
                    if let Some(rd) = Redirect::parse(msg) {
                        redirect.get_or_insert(rd);
                        again.push(*i);
                        // Until resent, the reply stands (a redirect_loop keeps its message).
                        out[*i] = Some(r);
                        continue;
                    }
                }
                out[*i] = Some(r);
            }
            let Some(rd) = redirect else {
                break;
            };
            self.count_redirect(&rd);
            match decide(&rd, taken) {
                Action::GiveUp => {
                    for i in &again {
                        let last = match out[*i].take() {
                            Some(Err(e)) => e.to_string(),
                            _ => String::new(),
                        };
                        let e = RedisError::Cluster {
                            kind: "redirect_loop",
                            msg: format!(
                                "{} redirections, the last: {last}",
                                redirect::MAX_REDIRECTS + 1
                            ),
                        };
                        self.stats.error(e.kind());
                        out[*i] = Some(Err(e));
                    }
                    break;
                }
                Action::Moved { slot: s, addr } => {
                    let (n, fresh) = self.node_for(&addr);
                    self.map.borrow_mut().set(s, n);
                    self.refresh.notify();
                    if fresh {
                        self.connect_new(n).await;
                    }
                }
                Action::Ask { addr } => {
                    let (n, fresh) = self.node_for(&addr);
                    if fresh {
                        self.connect_new(n).await;
                    }
                    ask = Some(n);
                }
                Action::Backoff(d) => glommio::timer::sleep(d).await,
                Action::Refresh(d) => {
                    glommio::timer::sleep(d).await;
                    self.await_refresh().await;
                }
            }
            taken += 1;
            pending = again;
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Err(RedisError::NotConnected)))
            .collect()
    }

    /// Asks for a map refresh and waits until one is applied (bounded: the refresh task's
    /// rate limit plus a connect timeout).
    async fn await_refresh(&self) {
        let seen = self.refreshes.get();
        self.refresh.notify();
        let deadline = Instant::now() + REFRESH_EVERY * 2 + self.cfg.connect_timeout;
        while self.refreshes.get() == seen && Instant::now() < deadline && !self.closed.get() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A node just learnt from a redirection: its first commands wait for a connection
    /// (up to the connect timeout) instead of failing `not_connected` at once.
    async fn connect_new(&self, n: usize) {
        if let Some(p) = self.node_pool(n) {
            p.wait_connected(self.cfg.connect_timeout).await;
        }
    }

    /// The cluster's topology from a node we have a connection to, else from a seed.
    async fn fetch_topology(&self) -> Result<Topology, String> {
        let tls = self.first.tls;
        let mut why = String::from("no node reachable");
        for p in self.pools() {
            if p.connected() == 0 {
                continue;
            }
            let host = p.target().host;
            let shards = p.direct_cmd(None, &[b"CLUSTER", b"SHARDS"]).await;
            let slots = || p.direct_cmd(None, &[b"CLUSTER", b"SLOTS"]);
            match topology(shards, slots, &host, tls).await {
                Ok(t) => return Ok(t),
                Err(e) => why = e,
            }
        }
        topology_from_seeds(&self.seeds, &self.cfg)
            .await
            .map_err(|e| if e.is_empty() { why } else { e })
    }

    /// `ZADD a:runs` + `EXPIRE`, routed to the key's owner.
    async fn declare(&self) -> Result<(), RedisError> {
        let Some(d) = &self.declare else {
            return Ok(());
        };
        let (score, member, ttl) = (
            d.start_unix.to_string(),
            d.run_id.to_string(),
            d.ttl_seconds.to_string(),
        );
        for r in self
            .route(
                &[
                    &[b"ZADD", RUNS_KEY, score.as_bytes(), member.as_bytes()],
                    &[b"EXPIRE", RUNS_KEY, ttl.as_bytes()],
                ],
                None,
            )
            .await
        {
            r?;
        }
        Ok(())
    }
}

/// Sends `cmds[pending]` to `pool` (each after an `ASKING` when `asking`), on connection
/// `on` when given; one result per pending command.
async fn send(
    pool: &Pool,
    cmds: &[&[&[u8]]],
    pending: &[usize],
    asking: bool,
    on: Option<usize>,
) -> Vec<Result<Reply, RedisError>> {
    const ASKING: &[&[u8]] = &[b"ASKING"];
    if !asking && pending.len() == cmds.len() {
        // The first attempt: no copy of the command list.
        return match cmds.len() {
            1 => vec![pool.direct_cmd(on, cmds[0]).await],
            _ => pool.direct_pipeline(on, cmds).await,
        };
    }
    let mut sub: Vec<&[&[u8]]> = Vec::with_capacity(pending.len() * (1 + usize::from(asking)));
    for i in pending {
        if asking {
            sub.push(ASKING);
        }
        sub.push(cmds[*i]);
    }
    let replies = match sub.len() {
        1 => vec![pool.direct_cmd(on, sub[0]).await],
        _ => pool.direct_pipeline(on, &sub).await,
    };
    match asking {
        // The reply to ASKING is OK (or the same failure as the command's).
        true => replies.into_iter().skip(1).step_by(2).collect(),
        false => replies,
    }
}

/// The URL of the node at `addr` (`host:port`, as MOVED and the map give it): `first`'s
/// user, password and TLS, database 0.
pub(crate) fn node_url(first: &RedisUrl, addr: &str) -> RedisUrl {
    let mut url = first.clone();
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => (addr, ""),
    };
    url.host = host.to_string();
    // `Redirect::parse` and `map` only pass addresses with a valid port.
    url.port = port.parse().unwrap_or(url.port);
    url.db = 0;
    url
}

/// The topology from the first of `seeds` that gives one (on a connection of its own);
/// `Err` says why the last one did not (empty: no seed).
pub(crate) async fn topology_from_seeds(
    seeds: &[RedisUrl],
    cfg: &PoolConfig,
) -> Result<Topology, String> {
    let mut why = String::new();
    for seed in seeds {
        let conn = match Connection::connect(seed, cfg).await {
            Ok(c) => c,
            Err(e) => {
                why = format!("{}: {e}", seed.redacted());
                continue;
            }
        };
        let shards = conn.cmd(&[b"CLUSTER", b"SHARDS"]).await;
        let slots = || conn.cmd(&[b"CLUSTER", b"SLOTS"]);
        match topology(shards, slots, &seed.host, seed.tls).await {
            Ok(t) => return Ok(t),
            Err(e) => why = format!("{}: {e}", seed.redacted()),
        }
    }
    Err(why)
}

/// A topology from a `CLUSTER SHARDS` reply, else (Redis before 7) from `CLUSTER SLOTS`.
pub(crate) async fn topology<F: std::future::Future<Output = Result<Reply, RedisError>>>(
    shards: Result<Reply, RedisError>,
    slots: impl FnOnce() -> F,
    host: &str,
    tls: bool,
) -> Result<Topology, String> {
    let t = match shards {
        Ok(r) => map::parse_shards(&r, host, tls)?,
        Err(RedisError::Server { .. }) => {
            let r = slots().await.map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
            map::parse_slots(&r, host)?
        }
        Err(e) => return Err(format!("CLUSTER SHARDS: {e}")),
    };
    if t.nodes.is_empty() {
        return Err("the cluster serves no slot".into());
    }
    Ok(t)
}

/// Loads the map (retrying with backoff), declares the run, then refreshes the map when a
/// redirection asks for it (at most every `REFRESH_EVERY`) and re-declares the run every
/// `DECLARE_EVERY`. Ends when the cluster is closed or dropped.
async fn maintain(c: std::rc::Weak<Cluster>) {
    let mut failures: u32 = 0;
    let mut declared_at: Option<Instant> = None;
    let mut declare_warned = false;
    loop {
        let Some(cl) = c.upgrade() else { return };
        if cl.closed.get() {
            return;
        }
        match cl.fetch_topology().await {
            Ok(t) => {
                let unassigned = t.unassigned();
                if unassigned > 0 {
                    tracing::warn!(
                        shard = cl.cfg.shard,
                        unassigned,
                        "redis cluster: slots without a primary"
                    );
                }
                cl.apply(&t);
                cl.refreshes.set(cl.refreshes.get() + 1);
                cl.map_refreshes.increment(1);
                failures = 0;
                if !cl.ready.get() {
                    // The first commands (the declaration) wait for the new pools.
                    for p in cl.pools() {
                        p.wait_connected(cl.cfg.connect_timeout).await;
                    }
                }
            }
            Err(why) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(shard = cl.cfg.shard, error = %why, "redis cluster: cannot load the slot map");
                }
            }
        }
        let due = declared_at.is_none_or(|at| at.elapsed() >= DECLARE_EVERY);
        if failures == 0 && due {
            match cl.declare().await {
                Ok(()) => {
                    declare_warned = false;
                    declared_at = Some(Instant::now());
                    cl.ready.set(true);
                }
                Err(e) => {
                    failures += 1;
                    if !std::mem::replace(&mut declare_warned, true) {
                        tracing::warn!(shard = cl.cfg.shard, kind = e.kind(), error = %e,
                            "redis cluster: declaring the run in a:runs failed");
                    }
                }
            }
        }
        let nap = if failures > 0 {
            redirect::backoff(failures.min(6)) * 5
        } else {
            REFRESH_EVERY
        };
        let ready = cl.ready.get();
        drop(cl);
        glommio::timer::sleep(nap).await;
        if ready && failures == 0 {
            // Wait for a redirection to ask for a refresh, or for the next declaration.
            let Some(cl) = c.upgrade() else { return };
            let wait =
                DECLARE_EVERY.saturating_sub(declared_at.map_or(Duration::ZERO, |a| a.elapsed()));
            futures_lite::future::or(cl.refresh.notified(), glommio::timer::sleep(wait)).await;
        }
    }
}

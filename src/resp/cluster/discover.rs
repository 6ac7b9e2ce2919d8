//! Discovery: the cluster's topology from a node or a seed, the run's declaration, and the
//! task that loads the map and keeps it fresh.

use super::map::{self, Topology};
use super::redirect;
use super::{Cluster, DECLARE_EVERY, REFRESH_EVERY};
use crate::resp::{Connection, PoolConfig, RedisError, RedisUrl, Reply, RUNS_KEY};
use std::time::{Duration, Instant};

impl Cluster {
    /// Asks for a map refresh and waits until one is applied (bounded: the refresh task's
    /// rate limit plus a connect timeout).
    pub(super) async fn await_refresh(&self) {
        let seen = self.refreshes.get();
        self.refresh.notify();
        let deadline = Instant::now() + REFRESH_EVERY * 2 + self.cfg.connect_timeout;
        while self.refreshes.get() == seen && Instant::now() < deadline && !self.closed.get() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
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
/// redirection or a lost node asks for it (at most every `REFRESH_EVERY`) and re-declares
/// the run every `DECLARE_EVERY`. While the map is degraded (slots without a primary, an
/// owner with no connection up, e.g. a killed primary before its replica's promotion) it
/// refreshes every `REFRESH_EVERY` without being asked, so a promoted replica is found
/// without a MOVED. Ends when the cluster is closed or dropped.
pub(super) async fn maintain(c: std::rc::Weak<Cluster>) {
    let mut failures: u32 = 0;
    let mut declared_at: Option<Instant> = None;
    let mut declare_warned = false;
    let mut last_unassigned = 0;
    let mut degraded = false;
    loop {
        let Some(cl) = c.upgrade() else { return };
        if cl.closed.get() {
            return;
        }
        match cl.fetch_topology().await {
            Ok(t) => {
                let unassigned = t.unassigned();
                if unassigned > 0 && unassigned != last_unassigned {
                    tracing::warn!(
                        shard = cl.cfg.shard,
                        unassigned,
                        "redis cluster: slots without a primary"
                    );
                }
                last_unassigned = unassigned;
                // New primaries get their pool before the map sends them commands: the first
                // ones wait for a connection (bounded) instead of failing not_connected.
                let waiting = match cl.ready.get() {
                    true => cl.add_nodes(&t),
                    false => {
                        cl.add_nodes(&t);
                        cl.pools()
                    }
                };
                for p in waiting {
                    p.wait_connected(cl.cfg.connect_timeout).await;
                }
                cl.apply(&t);
                cl.refreshes.set(cl.refreshes.get() + 1);
                cl.map_refreshes.increment(1);
                failures = 0;
                let now = cl.degraded(unassigned);
                if now && !degraded {
                    tracing::warn!(
                        shard = cl.cfg.shard,
                        unassigned,
                        "redis cluster: a slot has no reachable primary; refreshing the map until it has"
                    );
                } else if degraded && !now {
                    tracing::info!(
                        shard = cl.cfg.shard,
                        "redis cluster: every slot has a reachable primary again"
                    );
                }
                degraded = now;
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
        if ready && failures == 0 && !degraded {
            // Wait for a redirection or a lost node to ask for a refresh, or for the next
            // declaration.
            let Some(cl) = c.upgrade() else { return };
            let wait =
                DECLARE_EVERY.saturating_sub(declared_at.map_or(Duration::ZERO, |a| a.elapsed()));
            futures_lite::future::or(cl.refresh.notified(), glommio::timer::sleep(wait)).await;
        }
    }
}
